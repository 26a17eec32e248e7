//! A scripted RTSP RECORD server for integration tests (std only: threads + `std::net`).
//!
//! Include it from a test binary with
//! `#[path = "common/scripted_server.rs"] mod scripted_server;`
//!
//! The server binds `127.0.0.1:0`, accepts any number of connections (each one served
//! concurrently by a reader thread and a writer thread), and by default behaves like a
//! well-behaved ZLMediaKit-style RECORD server:
//!
//! | request        | default answer                                                          |
//! |----------------|-------------------------------------------------------------------------|
//! | `ANNOUNCE`     | `200` (`400` if the body is empty); `Session` only with [`Script::session_on_announce`]; `Content-Base` if configured |
//! | `SETUP`        | `200` echoing the client's `Transport` (+ `;ssrc=` if configured), `Session: <id>;timeout=60`; `455` before any ANNOUNCE on the connection, `461` without `Transport`. A UDP `client_port=` request gets a bound UDP pair announced in `server_port=` whose datagrams are recorded ([`ScriptedServer::udp_datagrams`]) |
//! | `RECORD`       | `200` with `Session` and `RTP-Info: url=<setup uri>,...`; `455` before any SETUP |
//! | `TEARDOWN`     | `200`                                                                    |
//! | `OPTIONS`      | `200` with `Public`                                                      |
//! | `GET_PARAMETER`| `200`                                                                    |
//! | anything else  | `501 Not Implemented`                                                    |
//!
//! Every response echoes the request's `CSeq` verbatim. Every request, every interleaved
//! frame (`$`, channel, u16 BE length, payload — in any order with requests), every response
//! the client sends to a server-initiated request, and every connection's fate are recorded in
//! a [`Snapshot`]. Tests wait on it with [`ScriptedServer::wait_for`] (condvar based, no
//! polling).
//!
//! Misbehaviour is scripted with the [`Script`] builder: per-method [`Action`]s (status codes,
//! never answering, garbage, closing, custom closures), optionally limited to the first `n`
//! matching requests ([`Script::times`]) or to one connection ([`Script::on_connection`]),
//! per-method delays, extra headers, transport rewriting, stopping to read after RECORD
//! (backpressure), and requests sent to the client after RECORD.
//!
//! Dropping the server (or [`ScriptedServer::stop`]) shuts down every socket and joins every
//! thread. The server never panics on malformed input: it records a protocol error in
//! [`Snapshot::protocol_errors`] and closes that connection.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Session id used when [`Script::session_id`] is not set.
pub const DEFAULT_SESSION_ID: &str = "KPUZ49ejotyD";
/// Bytes sent by [`Script::garbage`]: an HTTP answer, which is not RTSP.
pub const DEFAULT_GARBAGE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";
/// Value of the `Server` header on every response.
pub const SERVER_NAME: &str = "ScriptedServer/1.0";

/// Largest request/response head (start line + headers) accepted from the client.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest body accepted from the client.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Recordings
// ---------------------------------------------------------------------------------------------

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One request received from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Index of the connection it arrived on (0 for the first accepted connection).
    pub conn: usize,
    pub method: String,
    pub uri: String,
    /// Protocol version from the request line, e.g. `RTSP/1.0`.
    pub version: String,
    /// Headers in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl RecordedRequest {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    /// The CSeq header parsed as a number.
    pub fn cseq(&self) -> Option<u32> {
        self.header("cseq").and_then(|v| v.trim().parse().ok())
    }
    /// The body as (lossy) UTF-8.
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One response the client sent to a request of the server (see
/// [`Script::request_after_record`] and [`ScriptedServer::send_request`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedResponse {
    pub conn: usize,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl RecordedResponse {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn cseq(&self) -> Option<u32> {
        self.header("cseq").and_then(|v| v.trim().parse().ok())
    }
}

/// One interleaved frame received from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub conn: usize,
    pub channel: u8,
    /// Payload (empty if [`Script::keep_frame_data`]`(false)`; see `len`).
    pub data: Vec<u8>,
    /// Payload length as announced by the frame header.
    pub len: usize,
    /// Whether a 2xx answer to RECORD had been sent on this connection before this frame
    /// was read.
    pub after_record: bool,
    pub at: Instant,
}

/// What happened to one accepted connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub index: usize,
    pub peer: SocketAddr,
    pub accepted_at: Instant,
    /// A 2xx answer to RECORD has been sent.
    pub record_sent: bool,
    /// The client closed (EOF) or reset the connection (and the server had not closed it).
    pub closed_by_client: bool,
    /// The server closed it (script `Close`, protocol error, early media, `drop_connection`).
    pub closed_by_server: bool,
    /// The connection is finished (reader thread done).
    pub ended: bool,
}

/// Everything the server has recorded so far.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub requests: Vec<RecordedRequest>,
    pub frames: Vec<Frame>,
    pub responses: Vec<RecordedResponse>,
    pub connections: Vec<ConnInfo>,
    /// `(connection index, description)` of malformed input; the connection was closed.
    pub protocol_errors: Vec<(usize, String)>,
}

impl Snapshot {
    /// Methods of all requests, in arrival order.
    pub fn methods(&self) -> Vec<&str> {
        self.requests.iter().map(|r| r.method.as_str()).collect()
    }
    /// Methods of the requests received on one connection.
    pub fn methods_on(&self, conn: usize) -> Vec<&str> {
        self.requests
            .iter()
            .filter(|r| r.conn == conn)
            .map(|r| r.method.as_str())
            .collect()
    }
    /// Number of requests with this method (case-insensitive).
    pub fn count(&self, method: &str) -> usize {
        self.requests
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method))
            .count()
    }
    /// First request with this method.
    pub fn first(&self, method: &str) -> Option<&RecordedRequest> {
        self.requests
            .iter()
            .find(|r| r.method.eq_ignore_ascii_case(method))
    }
    /// Last request with this method.
    pub fn last(&self, method: &str) -> Option<&RecordedRequest> {
        self.requests
            .iter()
            .rev()
            .find(|r| r.method.eq_ignore_ascii_case(method))
    }
    /// Frames received on one interleaved channel.
    pub fn frames_on(&self, channel: u8) -> Vec<&Frame> {
        self.frames
            .iter()
            .filter(|f| f.channel == channel)
            .collect()
    }
    /// Number of connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }
    /// The latest connection was closed by the client.
    pub fn client_closed(&self) -> bool {
        self.connections.last().is_some_and(|c| c.closed_by_client)
    }
}

// ---------------------------------------------------------------------------------------------
// Script
// ---------------------------------------------------------------------------------------------

/// Signature of [`Action::Custom`] closures.
pub type CustomFn = dyn Fn(&RecordedRequest) -> Action + Send + Sync;

/// How to answer one request.
#[derive(Clone)]
pub enum Action {
    /// The default, well-behaved answer.
    Normal,
    /// `RTSP/1.0 <code> <reason>` with the echoed CSeq, `Server`, these headers and body.
    Respond {
        code: u16,
        reason: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Read the request, never answer; the connection stays open and later requests are
    /// answered normally.
    NeverAnswer,
    /// Send these bytes instead of a response.
    Garbage(Vec<u8>),
    /// Close the connection (after the method's delay, if any).
    Close,
    /// Decide per request. Returning another `Custom` is treated as `Normal`.
    Custom(Arc<CustomFn>),
}

impl Action {
    /// `Action::Respond` with no extra header and no body.
    pub fn status(code: u16, reason: &str) -> Action {
        Action::Respond {
            code,
            reason: reason.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    /// Adds a header to an `Action::Respond` (no effect on other variants).
    pub fn with_header(mut self, name: &str, value: &str) -> Action {
        if let Action::Respond { headers, .. } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }
    /// `Action::Custom` from a closure.
    pub fn custom(f: impl Fn(&RecordedRequest) -> Action + Send + Sync + 'static) -> Action {
        Action::Custom(Arc::new(f))
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Normal => f.write_str("Normal"),
            Action::Respond {
                code,
                reason,
                headers,
                body,
            } => f
                .debug_struct("Respond")
                .field("code", code)
                .field("reason", reason)
                .field("headers", headers)
                .field("body_len", &body.len())
                .finish(),
            Action::NeverAnswer => f.write_str("NeverAnswer"),
            Action::Garbage(b) => write!(f, "Garbage({} bytes)", b.len()),
            Action::Close => f.write_str("Close"),
            Action::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

#[derive(Clone, Debug)]
struct Rule {
    method: String,
    action: Action,
    /// `Some(n)`: applies to the next `n` matching requests only.
    remaining: Option<usize>,
    /// `Some(i)`: applies on connection `i` only.
    conn: Option<usize>,
}

fn method_matches(pattern: &str, method: &str) -> bool {
    pattern == "*" || pattern.eq_ignore_ascii_case(method)
}

/// What the server does. Build with `Script::new()` (well-behaved) and the builder methods.
/// A `method` argument matches case-insensitively; `"*"` matches every method.
#[derive(Clone, Debug)]
pub struct Script {
    rules: Vec<Rule>,
    delays: Vec<(String, Duration)>,
    extra_headers: Vec<(String, String, String)>,
    transport_overrides: Vec<String>,
    content_base: Option<String>,
    session_id: String,
    session_timeout: Option<u32>,
    session_on_announce: bool,
    ssrc: Option<String>,
    stop_reading_after_record: bool,
    /// Read at most this many bytes a second (a slow link).
    read_rate: Option<u64>,
    requests_after_record: Vec<String>,
    close_on_early_media: bool,
    strict_session: bool,
    keep_frame_data: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            rules: Vec::new(),
            delays: Vec::new(),
            extra_headers: Vec::new(),
            transport_overrides: Vec::new(),
            content_base: None,
            session_id: DEFAULT_SESSION_ID.to_string(),
            session_timeout: Some(60),
            session_on_announce: false,
            ssrc: None,
            stop_reading_after_record: false,
            read_rate: None,
            requests_after_record: Vec::new(),
            close_on_early_media: false,
            strict_session: false,
            keep_frame_data: true,
        }
    }
}

impl Script {
    /// A well-behaved server.
    pub fn new() -> Script {
        Script::default()
    }

    /// Answer `method` with `action`. Rules are tried in the order added; the first one that
    /// matches (method, connection, remaining count) wins.
    pub fn on(mut self, method: &str, action: Action) -> Script {
        self.rules.push(Rule {
            method: method.to_string(),
            action,
            remaining: None,
            conn: None,
        });
        self
    }
    /// Limit the last added rule to the next `n` matching requests (then it no longer applies,
    /// e.g. `respond_status("ANNOUNCE", 406, "Not Acceptable").times(2)` then 200).
    pub fn times(mut self, n: usize) -> Script {
        if let Some(r) = self.rules.last_mut() {
            r.remaining = Some(n);
        }
        self
    }
    /// Limit the last added rule to connection `index` (0-based, in accept order).
    pub fn on_connection(mut self, index: usize) -> Script {
        if let Some(r) = self.rules.last_mut() {
            r.conn = Some(index);
        }
        self
    }
    /// Answer `method` with `code reason` (e.g. 404 on ANNOUNCE, 461 on SETUP).
    pub fn respond_status(self, method: &str, code: u16, reason: &str) -> Script {
        self.on(method, Action::status(code, reason))
    }
    /// Answer `method` with `code reason` and these headers (e.g. 401 + WWW-Authenticate,
    /// 302 + Location).
    pub fn respond_with_headers(
        self,
        method: &str,
        code: u16,
        reason: &str,
        headers: &[(&str, &str)],
    ) -> Script {
        let mut a = Action::status(code, reason);
        for (n, v) in headers {
            a = a.with_header(n, v);
        }
        self.on(method, a)
    }
    /// Read `method` requests but never answer them (the socket stays open).
    pub fn never_answer(self, method: &str) -> Script {
        self.on(method, Action::NeverAnswer)
    }
    /// Answer `method` with [`DEFAULT_GARBAGE`] (an HTTP response).
    pub fn garbage(self, method: &str) -> Script {
        self.garbage_bytes(method, DEFAULT_GARBAGE)
    }
    /// Answer `method` with these bytes.
    pub fn garbage_bytes(self, method: &str, bytes: &[u8]) -> Script {
        self.on(method, Action::Garbage(bytes.to_vec()))
    }
    /// Close the connection on receiving `method`.
    pub fn close_on(self, method: &str) -> Script {
        self.on(method, Action::Close)
    }
    /// Decide the answer to `method` per request with a closure (e.g. check Authorization).
    pub fn custom(
        self,
        method: &str,
        f: impl Fn(&RecordedRequest) -> Action + Send + Sync + 'static,
    ) -> Script {
        self.on(method, Action::custom(f))
    }
    /// Delay whatever answer `method` gets by `d` (measured from reception; the reader keeps
    /// reading meanwhile, so frames sent early are recorded with `after_record == false`).
    /// Responses stay in order: a delayed answer also delays the ones after it.
    pub fn delay(mut self, method: &str, d: Duration) -> Script {
        self.delays.push((method.to_string(), d));
        self
    }
    /// Add a header to every answer to `method` (`"*"`: all), normal or scripted status.
    pub fn extra_header(mut self, method: &str, name: &str, value: &str) -> Script {
        self.extra_headers
            .push((method.to_string(), name.to_string(), value.to_string()));
        self
    }
    /// Reply to SETUP with this Transport instead of echoing the client's. Call several times
    /// for several tracks: the k-th SETUP of a connection gets the k-th value (the last one is
    /// reused).
    pub fn transport_override(mut self, transport: &str) -> Script {
        self.transport_overrides.push(transport.to_string());
        self
    }
    /// Send `Content-Base` on the ANNOUNCE answer.
    pub fn content_base(mut self, base: &str) -> Script {
        self.content_base = Some(base.to_string());
        self
    }
    /// Session id (default [`DEFAULT_SESSION_ID`]).
    pub fn session_id(mut self, id: &str) -> Script {
        self.session_id = id.to_string();
        self
    }
    /// `;timeout=` of the Session header (default `Some(60)`, `None`: no parameter).
    pub fn session_timeout(mut self, secs: Option<u32>) -> Script {
        self.session_timeout = secs;
        self
    }
    /// Send the Session header already on the ANNOUNCE answer (ZLMediaKit style).
    pub fn session_on_announce(mut self, yes: bool) -> Script {
        self.session_on_announce = yes;
        self
    }
    /// Append `;ssrc=<ssrc>` to the echoed Transport of SETUP answers.
    pub fn setup_ssrc(mut self, ssrc: &str) -> Script {
        self.ssrc = Some(ssrc.to_string());
        self
    }
    /// Stop reading the socket right after answering RECORD with 2xx (backpressure);
    /// Reads interleaved data no faster than `bytes_per_sec`, as a slow uplink would take it.
    pub fn read_rate(mut self, bytes_per_sec: u64) -> Script {
        self.read_rate = Some(bytes_per_sec.max(1));
        self
    }

    /// [`ScriptedServer::resume_reading`] resumes.
    pub fn stop_reading_after_record(mut self) -> Script {
        self.stop_reading_after_record = true;
        self
    }
    /// Right after the RECORD 2xx, send the client a `<method> <announce uri> RTSP/1.0`
    /// request with the server's own CSeq and the Session; the client's answer is recorded
    /// in [`Snapshot::responses`]. May be called several times.
    pub fn request_after_record(mut self, method: &str) -> Script {
        self.requests_after_record.push(method.to_string());
        self
    }
    /// Close the connection when an interleaved frame arrives before the RECORD 2xx
    /// (MediaMTX style). The frame is still recorded.
    pub fn close_on_early_media(mut self) -> Script {
        self.close_on_early_media = true;
        self
    }
    /// Answer `454 Session Not Found` to SETUP (after the session exists), RECORD, TEARDOWN
    /// and GET_PARAMETER whose Session header is not exactly the session id (a `;param`
    /// is rejected too, as MediaMTX does).
    pub fn strict_session(mut self) -> Script {
        self.strict_session = true;
        self
    }
    /// Keep frame payloads (default true). With false only `Frame::len` is kept.
    pub fn keep_frame_data(mut self, keep: bool) -> Script {
        self.keep_frame_data = keep;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Server internals
// ---------------------------------------------------------------------------------------------

enum OutKind {
    Bytes(Vec<u8>),
    Close,
}

struct Out {
    at: Instant,
    kind: OutKind,
    /// Popping this item marks the connection's RECORD as answered.
    marks_record: bool,
}

struct ConnRt {
    /// Clone of the socket, to shut it down from other threads.
    stream: Option<TcpStream>,
    queue: VecDeque<Out>,
    paused: bool,
    next_cseq: u32,
    announce_uri: Option<String>,
    setup_uris: Vec<String>,
    has_session: bool,
}

struct Inner {
    snap: Snapshot,
    conns: Vec<ConnRt>,
    rules: Vec<Rule>,
    shutdown: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    cv: Condvar,
    script: Script,
    udp: Arc<UdpLog>,
}

// ----- UDP mode --------------------------------------------------------------------------------

/// One datagram the client sent to a server port pair announced in a UDP SETUP answer.
#[derive(Clone, Debug)]
pub struct UdpDatagram {
    pub conn: usize,
    /// Arrived on the RTCP port (else the RTP port).
    pub rtcp: bool,
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

/// A server port pair bound for one UDP SETUP.
#[derive(Clone, Debug)]
pub struct UdpPair {
    pub conn: usize,
    pub track: usize,
    pub server_ports: (u16, u16),
    /// From the client's `client_port=`, at the connection's peer address.
    pub client_rtp: SocketAddr,
    pub client_rtcp: SocketAddr,
}

#[derive(Default)]
struct UdpInner {
    datagrams: Vec<UdpDatagram>,
    pairs: Vec<(UdpPair, UdpSocket)>,
    threads: Vec<JoinHandle<()>>,
    shutdown: bool,
}

#[derive(Default)]
struct UdpLog {
    inner: Mutex<UdpInner>,
    cv: Condvar,
}

impl UdpLog {
    fn lock(&self) -> MutexGuard<'_, UdpInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds a pair on 127.0.0.1 and records what arrives on it until shutdown.
    fn bind(
        self: &Arc<Self>,
        conn: usize,
        track: usize,
        peer: SocketAddr,
        client: (u16, u16),
    ) -> io::Result<(u16, u16)> {
        let rtp = UdpSocket::bind("127.0.0.1:0")?;
        let rtcp = UdpSocket::bind("127.0.0.1:0")?;
        let ports = (rtp.local_addr()?.port(), rtcp.local_addr()?.port());
        let pair = UdpPair {
            conn,
            track,
            server_ports: ports,
            client_rtp: SocketAddr::new(peer.ip(), client.0),
            client_rtcp: SocketAddr::new(peer.ip(), client.1),
        };
        let mut inner = self.lock();
        inner.pairs.push((pair, rtcp.try_clone()?));
        for (sock, is_rtcp) in [(rtp, false), (rtcp, true)] {
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            let log = self.clone();
            let h = thread::Builder::new()
                .name(format!("scripted-udp{conn}.{track}"))
                .spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        if log.lock().shutdown {
                            return;
                        }
                        let Ok((n, from)) = sock.recv_from(&mut buf) else {
                            continue;
                        };
                        log.lock().datagrams.push(UdpDatagram {
                            conn,
                            rtcp: is_rtcp,
                            from,
                            data: buf[..n].to_vec(),
                        });
                        log.cv.notify_all();
                    }
                })?;
            inner.threads.push(h);
        }
        Ok(ports)
    }

    fn shutdown(&self) {
        let threads = {
            let mut inner = self.lock();
            inner.shutdown = true;
            std::mem::take(&mut inner.threads)
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

/// `client_port=a-b` of a UDP transport request (not for TCP).
fn udp_client_ports(transport: &str) -> Option<(u16, u16)> {
    let spec = transport.split(',').next()?;
    let mut parts = spec.split(';');
    if parts.next()?.to_ascii_uppercase().ends_with("/TCP") {
        return None;
    }
    parts.find_map(|p| {
        let v = p.trim().strip_prefix("client_port=")?;
        let (a, b) = v.split_once('-').unwrap_or((v, v));
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    })
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn wait<'a>(&self, g: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        self.cv.wait(g).unwrap_or_else(|e| e.into_inner())
    }
    fn wait_timeout<'a>(&self, g: MutexGuard<'a, Inner>, d: Duration) -> MutexGuard<'a, Inner> {
        match self.cv.wait_timeout(g, d) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
    }
}

/// The last connection that is still open and not being closed by the server.
fn live_conn(inner: &Inner) -> Option<usize> {
    inner
        .snap
        .connections
        .iter()
        .rposition(|c| !c.ended && !c.closed_by_server)
}

fn enqueue(shared: &Shared, inner: &mut Inner, conn: usize, out: Out) {
    inner.conns[conn].queue.push_back(out);
    shared.cv.notify_all();
}

fn server_request_bytes(
    inner: &mut Inner,
    script: &Script,
    conn: usize,
    method: &str,
) -> (u32, Vec<u8>) {
    let rt = &mut inner.conns[conn];
    let cseq = rt.next_cseq;
    rt.next_cseq += 1;
    let uri = rt.announce_uri.clone().unwrap_or_else(|| "*".to_string());
    let mut s = format!("{method} {uri} RTSP/1.0\r\nCSeq: {cseq}\r\n");
    if rt.has_session {
        s.push_str(&format!("Session: {}\r\n", script.session_id));
    }
    s.push_str(&format!("User-Agent: {SERVER_NAME}\r\n\r\n"));
    (cseq, s.into_bytes())
}

fn response_bytes(
    code: u16,
    reason: &str,
    cseq: Option<&str>,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut s = format!("RTSP/1.0 {code} {reason}\r\n");
    if let Some(c) = cseq {
        s.push_str(&format!("CSeq: {c}\r\n"));
    }
    s.push_str(&format!("Server: {SERVER_NAME}\r\n"));
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    s.push_str("\r\n");
    let mut out = s.into_bytes();
    out.extend_from_slice(body);
    out
}

// ----- reading ---------------------------------------------------------------------------------

enum ReadErr {
    /// EOF or I/O error: the peer (or our own shutdown) closed the socket.
    Closed,
    Protocol(String),
}

impl From<io::Error> for ReadErr {
    fn from(_: io::Error) -> Self {
        ReadErr::Closed
    }
}

enum Msg {
    Frame { channel: u8, data: Vec<u8> },
    Request(RecordedRequest),
    Response(RecordedResponse),
}

type Reader = BufReader<TcpStream>;

fn read_msg(r: &mut Reader, conn: usize) -> Result<Msg, ReadErr> {
    // Skip stray line ends between messages.
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReadErr::Closed),
        };
        match buf.first() {
            None => return Err(ReadErr::Closed),
            Some(b'\r') | Some(b'\n') => r.consume(1),
            Some(b'$') => {
                let mut hdr = [0u8; 4];
                r.read_exact(&mut hdr)?;
                let len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
                let mut data = vec![0u8; len];
                r.read_exact(&mut data)?;
                return Ok(Msg::Frame {
                    channel: hdr[1],
                    data,
                });
            }
            Some(_) => break,
        }
    }

    let mut lines: Vec<String> = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = Vec::new();
        let limit = (MAX_HEAD_BYTES - total + 1) as u64;
        let n = r.by_ref().take(limit).read_until(b'\n', &mut line)?;
        total += n;
        if total > MAX_HEAD_BYTES {
            return Err(ReadErr::Protocol(format!(
                "message head larger than {MAX_HEAD_BYTES} bytes"
            )));
        }
        if n == 0 || !line.ends_with(b"\n") {
            return Err(ReadErr::Closed);
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        if line.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        if text.starts_with([' ', '\t']) && lines.len() > 1 {
            // Obsolete header line folding.
            let last = lines.last_mut().expect("checked len");
            last.push(' ');
            last.push_str(text.trim());
        } else {
            lines.push(text);
        }
    }

    let start = lines.remove(0);
    let mut headers = Vec::with_capacity(lines.len());
    for l in &lines {
        match l.split_once(':') {
            Some((n, v)) if !n.trim().is_empty() => {
                headers.push((n.trim().to_string(), v.trim().to_string()))
            }
            _ => return Err(ReadErr::Protocol(format!("malformed header line {l:?}"))),
        }
    }
    let body_len = match find_header(&headers, "content-length") {
        None => 0,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n <= MAX_BODY_BYTES => n,
            _ => return Err(ReadErr::Protocol(format!("bad Content-Length {v:?}"))),
        },
    };
    let mut body = vec![0u8; body_len];
    r.read_exact(&mut body)?;
    let at = Instant::now();

    let parts: Vec<&str> = start.splitn(3, ' ').collect();
    if start.starts_with("RTSP/") {
        let status = parts.get(1).and_then(|s| s.trim().parse::<u16>().ok());
        match status {
            Some(status) => Ok(Msg::Response(RecordedResponse {
                conn,
                status,
                reason: parts.get(2).unwrap_or(&"").trim().to_string(),
                headers,
                body,
                at,
            })),
            None => Err(ReadErr::Protocol(format!(
                "malformed status line {start:?}"
            ))),
        }
    } else if parts.len() == 3
        && !parts[0].is_empty()
        && parts[0].bytes().all(|b| b.is_ascii_graphic())
        && parts[2].starts_with("RTSP/")
    {
        Ok(Msg::Request(RecordedRequest {
            conn,
            method: parts[0].to_string(),
            uri: parts[1].to_string(),
            version: parts[2].trim().to_string(),
            headers,
            body,
            at,
        }))
    } else {
        Err(ReadErr::Protocol(format!(
            "malformed request line {start:?}"
        )))
    }
}

// ----- answering -------------------------------------------------------------------------------

fn pick_action(inner: &mut Inner, req: &RecordedRequest) -> Action {
    for rule in inner.rules.iter_mut() {
        if !method_matches(&rule.method, &req.method) {
            continue;
        }
        if rule.conn.is_some_and(|c| c != req.conn) {
            continue;
        }
        match &mut rule.remaining {
            Some(0) => continue,
            Some(n) => *n -= 1,
            None => {}
        }
        return rule.action.clone();
    }
    Action::Normal
}

fn session_value(script: &Script) -> String {
    match script.session_timeout {
        Some(t) => format!("{};timeout={t}", script.session_id),
        None => script.session_id.clone(),
    }
}

/// Builds the well-behaved answer; updates the connection state. Returns (code, reason,
/// headers, body).
fn normal_answer(
    inner: &mut Inner,
    script: &Script,
    udp: &Arc<UdpLog>,
    req: &RecordedRequest,
) -> (u16, String, Vec<(String, String)>) {
    let peer = inner.snap.connections[req.conn].peer;
    let rt = &mut inner.conns[req.conn];
    let mut h: Vec<(String, String)> = Vec::new();
    let m = req.method.to_ascii_uppercase();

    if script.strict_session {
        let needs = match m.as_str() {
            "RECORD" | "TEARDOWN" | "GET_PARAMETER" => true,
            "SETUP" => rt.has_session,
            _ => false,
        };
        if needs && req.header("session").map(str::trim) != Some(script.session_id.as_str()) {
            return (454, "Session Not Found".into(), h);
        }
    }

    let ok = (200, "OK".to_string());
    match m.as_str() {
        "ANNOUNCE" => {
            if req.body.is_empty() {
                return (400, "Bad Request".into(), h);
            }
            rt.announce_uri = Some(req.uri.clone());
            rt.setup_uris.clear();
            if let Some(base) = &script.content_base {
                h.push(("Content-Base".into(), base.clone()));
            }
            if script.session_on_announce {
                rt.has_session = true;
                h.push(("Session".into(), session_value(script)));
            }
            (ok.0, ok.1, h)
        }
        "SETUP" => {
            if rt.announce_uri.is_none() {
                return (455, "Method Not Valid in This State".into(), h);
            }
            let Some(client_transport) = req.header("transport") else {
                return (461, "Unsupported Transport".into(), h);
            };
            let udp_ports = udp_client_ports(client_transport);
            let transport =
                if let (Some(client), true) = (udp_ports, script.transport_overrides.is_empty()) {
                    let track = rt.setup_uris.len();
                    let Ok((a, b)) = udp.bind(req.conn, track, peer, client) else {
                        return (500, "Internal Server Error".into(), h);
                    };
                    let mut t = format!(
                        "RTP/AVP;unicast;client_port={}-{};server_port={a}-{b}",
                        client.0, client.1
                    );
                    if let Some(ssrc) = &script.ssrc {
                        t.push_str(&format!(";ssrc={ssrc}"));
                    }
                    t
                } else if script.transport_overrides.is_empty() {
                    match &script.ssrc {
                        Some(ssrc) => format!("{client_transport};ssrc={ssrc}"),
                        None => client_transport.to_string(),
                    }
                } else {
                    let k = rt
                        .setup_uris
                        .len()
                        .min(script.transport_overrides.len() - 1);
                    script.transport_overrides[k].clone()
                };
            rt.setup_uris.push(req.uri.clone());
            rt.has_session = true;
            h.push(("Transport".into(), transport));
            h.push(("Session".into(), session_value(script)));
            (ok.0, ok.1, h)
        }
        "RECORD" => {
            if rt.setup_uris.is_empty() {
                return (455, "Method Not Valid in This State".into(), h);
            }
            h.push(("Session".into(), session_value(script)));
            let info: Vec<String> = rt.setup_uris.iter().map(|u| format!("url={u}")).collect();
            h.push(("RTP-Info".into(), info.join(",")));
            (ok.0, ok.1, h)
        }
        "TEARDOWN" | "GET_PARAMETER" => {
            if rt.has_session {
                h.push(("Session".into(), session_value(script)));
            }
            (ok.0, ok.1, h)
        }
        "OPTIONS" => {
            h.push((
                "Public".into(),
                "OPTIONS, ANNOUNCE, SETUP, RECORD, TEARDOWN, GET_PARAMETER".into(),
            ));
            (ok.0, ok.1, h)
        }
        _ => (501, "Not Implemented".into(), h),
    }
}

fn handle_request(shared: &Shared, req: RecordedRequest) {
    let script = &shared.script;
    let mut action = {
        let mut inner = shared.lock();
        inner.snap.requests.push(req.clone());
        shared.cv.notify_all();
        pick_action(&mut inner, &req)
    };
    // Custom closures run without the lock held.
    if let Action::Custom(f) = &action {
        action = match f(&req) {
            Action::Custom(_) => Action::Normal,
            a => a,
        };
    }
    let delay = script
        .delays
        .iter()
        .find(|(m, _)| method_matches(m, &req.method))
        .map(|(_, d)| *d)
        .unwrap_or_default();
    let at = req.at + delay;
    let extra: Vec<(String, String)> = script
        .extra_headers
        .iter()
        .filter(|(m, _, _)| method_matches(m, &req.method))
        .map(|(_, n, v)| (n.clone(), v.clone()))
        .collect();
    let cseq = req.header("cseq");
    let is_record = req.method.eq_ignore_ascii_case("RECORD");

    let mut inner = shared.lock();
    let (code, bytes) = match action {
        Action::Normal | Action::Custom(_) => {
            let (code, reason, mut h) = normal_answer(&mut inner, script, &shared.udp, &req);
            h.extend(extra);
            (Some(code), response_bytes(code, &reason, cseq, &h, &[]))
        }
        Action::Respond {
            code,
            reason,
            mut headers,
            body,
        } => {
            headers.extend(extra);
            (
                Some(code),
                response_bytes(code, &reason, cseq, &headers, &body),
            )
        }
        Action::NeverAnswer => return,
        Action::Garbage(b) => (None, b),
        Action::Close => {
            enqueue(
                shared,
                &mut inner,
                req.conn,
                Out {
                    at,
                    kind: OutKind::Close,
                    marks_record: false,
                },
            );
            return;
        }
    };
    let record_ok = is_record && code.is_some_and(|c| (200..300).contains(&c));
    enqueue(
        shared,
        &mut inner,
        req.conn,
        Out {
            at,
            kind: OutKind::Bytes(bytes),
            marks_record: record_ok,
        },
    );
    if record_ok {
        for m in &script.requests_after_record {
            let (_, b) = server_request_bytes(&mut inner, script, req.conn, m);
            enqueue(
                shared,
                &mut inner,
                req.conn,
                Out {
                    at,
                    kind: OutKind::Bytes(b),
                    marks_record: false,
                },
            );
        }
        if script.stop_reading_after_record {
            inner.conns[req.conn].paused = true;
        }
    }
}

// ----- threads ---------------------------------------------------------------------------------

fn close_conn_by_server(shared: &Shared, inner: &mut Inner, conn: usize) {
    let c = &mut inner.snap.connections[conn];
    if !c.ended && !c.closed_by_client {
        c.closed_by_server = true;
    }
    if let Some(s) = &inner.conns[conn].stream {
        let _ = s.shutdown(Shutdown::Both);
    }
    shared.cv.notify_all();
}

fn reader_loop(shared: &Shared, conn: usize, stream: TcpStream) {
    let mut r = BufReader::new(stream);
    let started = Instant::now();
    let mut media_bytes = 0u64;
    loop {
        // A slow link: the rate limit is the point here, so this sleep is the simulation.
        if let Some(rate) = shared.script.read_rate {
            let due = Duration::from_secs_f64(media_bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        {
            let mut inner = shared.lock();
            while inner.conns[conn].paused
                && !inner.shutdown
                && !inner.snap.connections[conn].closed_by_server
            {
                inner = shared.wait(inner);
            }
            if inner.shutdown {
                break;
            }
        }
        match read_msg(&mut r, conn) {
            Ok(Msg::Frame { channel, data }) => {
                media_bytes += 4 + data.len() as u64;
                let mut inner = shared.lock();
                let after_record = inner.snap.connections[conn].record_sent;
                let len = data.len();
                inner.snap.frames.push(Frame {
                    conn,
                    channel,
                    data: if shared.script.keep_frame_data {
                        data
                    } else {
                        Vec::new()
                    },
                    len,
                    after_record,
                    at: Instant::now(),
                });
                shared.cv.notify_all();
                if !after_record && shared.script.close_on_early_media {
                    inner
                        .snap
                        .protocol_errors
                        .push((conn, "interleaved frame before RECORD answer".into()));
                    close_conn_by_server(shared, &mut inner, conn);
                    break;
                }
            }
            Ok(Msg::Request(req)) => handle_request(shared, req),
            Ok(Msg::Response(resp)) => {
                let mut inner = shared.lock();
                inner.snap.responses.push(resp);
                shared.cv.notify_all();
            }
            Err(ReadErr::Closed) => break,
            Err(ReadErr::Protocol(e)) => {
                let mut inner = shared.lock();
                inner.snap.protocol_errors.push((conn, e));
                close_conn_by_server(shared, &mut inner, conn);
                break;
            }
        }
    }
    let mut inner = shared.lock();
    let shutdown = inner.shutdown;
    let c = &mut inner.snap.connections[conn];
    if !c.closed_by_server && !shutdown {
        c.closed_by_client = true;
    }
    c.ended = true;
    let _ = r.get_ref().shutdown(Shutdown::Both);
    shared.cv.notify_all();
}

fn writer_loop(shared: &Shared, conn: usize, mut stream: TcpStream) {
    loop {
        let out = {
            let mut inner = shared.lock();
            loop {
                if inner.shutdown || inner.snap.connections[conn].ended {
                    return;
                }
                let now = Instant::now();
                match inner.conns[conn].queue.front().map(|o| o.at) {
                    Some(at) if at <= now => {
                        let out = inner.conns[conn].queue.pop_front().expect("front exists");
                        if out.marks_record {
                            inner.snap.connections[conn].record_sent = true;
                            shared.cv.notify_all();
                        }
                        break out;
                    }
                    Some(at) => inner = shared.wait_timeout(inner, at - now),
                    None => inner = shared.wait(inner),
                }
            }
        };
        match out.kind {
            OutKind::Bytes(b) => {
                if stream.write_all(&b).and_then(|_| stream.flush()).is_err() {
                    return;
                }
            }
            OutKind::Close => {
                let mut inner = shared.lock();
                close_conn_by_server(shared, &mut inner, conn);
                return;
            }
        }
    }
}

fn serve_conn(shared: Arc<Shared>, conn: usize, stream: TcpStream, writer_stream: TcpStream) {
    let s2 = shared.clone();
    let writer = thread::Builder::new()
        .name(format!("scripted-w{conn}"))
        .spawn(move || writer_loop(&s2, conn, writer_stream));
    if writer.is_err() {
        let mut inner = shared.lock();
        close_conn_by_server(&shared, &mut inner, conn);
    }
    reader_loop(&shared, conn, stream);
    if let Ok(w) = writer {
        let _ = w.join();
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            if shared.lock().shutdown {
                break;
            }
            continue;
        };
        let mut inner = shared.lock();
        if inner.shutdown {
            break;
        }
        let _ = stream.set_nodelay(true);
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let index = inner.snap.connections.len();
        inner.snap.connections.push(ConnInfo {
            index,
            peer,
            accepted_at: Instant::now(),
            record_sent: false,
            closed_by_client: false,
            closed_by_server: false,
            ended: false,
        });
        inner.conns.push(ConnRt {
            stream: stream.try_clone().ok(),
            queue: VecDeque::new(),
            paused: false,
            next_cseq: 1,
            announce_uri: None,
            setup_uris: Vec::new(),
            has_session: false,
        });
        shared.cv.notify_all();
        let writer_stream = match stream.try_clone() {
            Ok(s) if inner.conns[index].stream.is_some() => s,
            _ => {
                let c = &mut inner.snap.connections[index];
                c.closed_by_server = true;
                c.ended = true;
                continue;
            }
        };
        drop(inner);
        let s2 = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("scripted-r{index}"))
            .spawn(move || serve_conn(s2, index, stream, writer_stream));
        match spawned {
            Ok(h) => handles.push(h),
            Err(_) => {
                let mut inner = shared.lock();
                close_conn_by_server(&shared, &mut inner, index);
                inner.snap.connections[index].ended = true;
            }
        }
        handles.retain(|h| !h.is_finished());
    }
    for h in handles {
        let _ = h.join();
    }
}

// ---------------------------------------------------------------------------------------------
// Public handle
// ---------------------------------------------------------------------------------------------

/// A running scripted server. Dropping it shuts everything down and joins its threads.
pub struct ScriptedServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl ScriptedServer {
    /// Binds 127.0.0.1:0 and starts serving `script`.
    pub fn start(script: Script) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        if script.read_rate.is_some() {
            // A slow link has a small window: without this the kernel would take megabytes
            // (receive buffers autotune up to 32 MB here) whatever the reading rate.
            let _ = socket2::SockRef::from(&listener).set_recv_buffer_size(64 * 1024);
        }
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                snap: Snapshot::default(),
                conns: Vec::new(),
                rules: script.rules.clone(),
                shutdown: false,
            }),
            cv: Condvar::new(),
            script,
            udp: Arc::default(),
        });
        let s2 = shared.clone();
        let accept = thread::Builder::new()
            .name("scripted-accept".into())
            .spawn(move || accept_loop(s2, listener))
            .expect("spawn accept thread");
        ScriptedServer {
            shared,
            addr,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `rtsp://127.0.0.1:PORT{path}` (`path` should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("rtsp://127.0.0.1:{}{}", self.addr.port(), path)
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.lock().snap.clone()
    }
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().snap.requests.clone()
    }
    pub fn frames(&self) -> Vec<Frame> {
        self.shared.lock().snap.frames.clone()
    }
    pub fn responses(&self) -> Vec<RecordedResponse> {
        self.shared.lock().snap.responses.clone()
    }
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.shared.lock().snap.connections.clone()
    }
    pub fn connection_count(&self) -> usize {
        self.shared.lock().snap.connections.len()
    }
    pub fn frame_count(&self) -> usize {
        self.shared.lock().snap.frames.len()
    }

    /// Waits until `pred` holds (re-evaluated on every recorded event) or `timeout` passes.
    /// Returns whether it holds. The predicate runs with the server's lock held: keep it
    /// short and do not call the server from it.
    pub fn wait_for(&self, pred: impl Fn(&Snapshot) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        loop {
            if pred(&inner.snap) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            inner = self.shared.wait_timeout(inner, deadline - now);
        }
    }
    /// Waits until the latest connection has been closed by the client. Note that a paused
    /// reader ([`Script::stop_reading_after_record`]) does not notice the close.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        self.wait_for(|s| s.client_closed(), timeout)
    }
    /// Waits until `n` requests with `method` have been received.
    pub fn wait_requests(&self, method: &str, n: usize, timeout: Duration) -> bool {
        self.wait_for(|s| s.count(method) >= n, timeout)
    }
    /// Waits until `n` frames (all channels) have been received.
    pub fn wait_frames(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(|s| s.frames.len() >= n, timeout)
    }
    /// Waits until `n` connections have been accepted.
    pub fn wait_connections(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(|s| s.connections.len() >= n, timeout)
    }
    /// Waits until `n` responses from the client have been received.
    pub fn wait_responses(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(|s| s.responses.len() >= n, timeout)
    }

    /// Resumes reading on connections paused by [`Script::stop_reading_after_record`]
    /// (later RECORDs pause again).
    pub fn resume_reading(&self) {
        let mut inner = self.shared.lock();
        for c in inner.conns.iter_mut() {
            c.paused = false;
        }
        self.shared.cv.notify_all();
    }

    /// Sends `<method> <announce uri or *> RTSP/1.0` with the server's next CSeq (and Session
    /// if one exists) on the latest open connection, queued after pending answers. Returns
    /// the CSeq, or `None` without an open connection.
    pub fn send_request(&self, method: &str) -> Option<u32> {
        let mut inner = self.shared.lock();
        let conn = live_conn(&inner)?;
        let (cseq, b) = server_request_bytes(&mut inner, &self.shared.script, conn, method);
        enqueue(&self.shared, &mut inner, conn, Self::now_out(b));
        Some(cseq)
    }
    /// Sends an interleaved frame (e.g. an RTCP receiver report on channel 1) to the client on
    /// the latest open connection. False without an open connection.
    pub fn send_interleaved(&self, channel: u8, data: &[u8]) -> bool {
        let len = u16::try_from(data.len()).expect("interleaved payload fits u16");
        let mut b = vec![b'$', channel];
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(data);
        self.send_raw(&b)
    }
    /// Sends raw bytes to the client on the latest open connection.
    pub fn send_raw(&self, bytes: &[u8]) -> bool {
        let mut inner = self.shared.lock();
        let Some(conn) = live_conn(&inner) else {
            return false;
        };
        enqueue(
            &self.shared,
            &mut inner,
            conn,
            Self::now_out(bytes.to_vec()),
        );
        true
    }
    /// Every datagram received on the UDP pairs of UDP SETUPs so far.
    pub fn udp_datagrams(&self) -> Vec<UdpDatagram> {
        self.shared.udp.lock().datagrams.clone()
    }

    /// The UDP pairs bound for UDP SETUPs so far.
    pub fn udp_pairs(&self) -> Vec<UdpPair> {
        self.shared
            .udp
            .lock()
            .pairs
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Waits until `pred` holds for the datagrams received (true) or `timeout` passes.
    pub fn wait_udp(&self, pred: impl Fn(&[UdpDatagram]) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.udp.lock();
        loop {
            if pred(&g.datagrams) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = match self.shared.udp.cv.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Sends `data` (e.g. an RTCP receiver report) from the RTCP port of the latest pair bound
    /// for `track` to the client's RTCP port. False if there is no such pair.
    pub fn send_udp_rtcp(&self, track: usize, data: &[u8]) -> bool {
        let g = self.shared.udp.lock();
        let Some((pair, sock)) = g.pairs.iter().rev().find(|(p, _)| p.track == track) else {
            return false;
        };
        sock.send_to(data, pair.client_rtcp).is_ok()
    }

    /// Closes the latest open connection from the server side right now (kick / crash).
    pub fn drop_connection(&self) -> bool {
        let mut inner = self.shared.lock();
        let Some(conn) = live_conn(&inner) else {
            return false;
        };
        close_conn_by_server(&self.shared, &mut inner, conn);
        true
    }

    fn now_out(b: Vec<u8>) -> Out {
        Out {
            at: Instant::now(),
            kind: OutKind::Bytes(b),
            marks_record: false,
        }
    }

    /// Stops the server: closes the listener and every connection, joins all threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.udp.shutdown();
        {
            let mut inner = self.shared.lock();
            inner.shutdown = true;
            for c in &inner.conns {
                if let Some(s) = &c.stream {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
            self.shared.cv.notify_all();
        }
        // Unblock accept() with a self-connection; if that fails, leave the thread detached
        // rather than hang.
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).is_ok() {
            let _ = accept.join();
        }
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for ScriptedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedServer")
            .field("addr", &self.addr)
            .finish()
    }
}
