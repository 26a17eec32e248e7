//! A hostile RTSP RECORD server for the robustness harness (`tests/hostile.rs`).
//!
//! Include it with `#[path = "common/hostile_server.rs"] mod hostile_server;`.
//!
//! The server listens on 127.0.0.1 (port 0) and plays the RECORD handshake the way one real
//! server does ([`Profile`]): which answer carries `Session`, whether SETUP's answer names a
//! `mode`, whether RECORD's answer has `RTP-Info`, which requests it refuses, whether and how it
//! sends RTCP receiver reports, how it ends. Over UDP (`client_port=` in SETUP) it binds a pair of
//! OS-chosen ports per track and answers with `server_port=`.
//!
//! On top of that a [`Plan`] injects faults at chosen [`Step`]s of the exchange: mutated answers
//! (flipped bytes, truncation, duplicated or missing headers, bad CSeq or Content-Length, other
//! status codes), odd delivery (byte by byte, one byte per second, never), a close or a reset
//! (SO_LINGER 0), a reader that stops reading, interleaved frames on any channel and of any
//! length, and requests sent by the server (valid, unknown and malformed methods).
//!
//! Everything runs on plain threads (accept, a reader and a writer per connection, one per UDP
//! socket); dropping the server shuts every socket down and joins every thread. The server never
//! panics on what the client sends. Tests wait for exact moments (a held answer, a stopped
//! reader, a connection) with [`HostileServer::wait_for`], a condition variable, not sleeps.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Deterministic randomness
// ---------------------------------------------------------------------------------------------

/// splitmix64: small, fast, and the same sequence for a seed everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// What the server does
// ---------------------------------------------------------------------------------------------

/// Which real server's habits the handshake follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// gst-rtsp-server in RECORD mode: Session (`;timeout=60`) from SETUP, `mode="RECORD"` echoed,
    /// receiver reports over TCP and UDP, closes after answering TEARDOWN.
    GstRtspServer,
    /// FFmpeg's listener (`-rtsp_flags listen`): refuses a SETUP without exact lower-case
    /// `mode=record` (461, then closes), refuses GET_PARAMETER, closes once every track sent its
    /// RTCP BYE, takes one connection only (later ones are reset).
    Ffmpeg,
    /// ZLMediaKit: Session already on the ANNOUNCE answer, `ssrc=` and x- headers on SETUP,
    /// `RTP-Info` on RECORD, receiver reports (reporter SSRC = media SSRC + 1, plus an SDES
    /// carrying the pusher's SSRC) on TCP and UDP.
    ZlMediaKit,
    /// MediaMTX / gortsplib: Session with `;timeout=60` on SETUP, no `mode` in SETUP's answer,
    /// 454 for a Session header with parameters, 501 for PAUSE, closes on media before RECORD's
    /// answer, receiver reports over UDP only.
    MediaMtx,
    /// xiu: never answers TEARDOWN (the connection stays open).
    Xiu,
}

pub const PROFILES: [Profile; 5] = [
    Profile::GstRtspServer,
    Profile::Ffmpeg,
    Profile::ZlMediaKit,
    Profile::MediaMtx,
    Profile::Xiu,
];

impl Profile {
    fn server_header(self) -> &'static str {
        match self {
            Profile::GstRtspServer => "GStreamer RTSP server",
            Profile::Ffmpeg => "Lavf59.27.100",
            Profile::ZlMediaKit => "ZLMediaKit(git hash:1a2b3c4d,branch:master)",
            Profile::MediaMtx => "gortsplib",
            Profile::Xiu => "xiu",
        }
    }
    /// Whether it sends receiver reports over TCP / over UDP.
    fn reports(self) -> (bool, bool) {
        match self {
            Profile::GstRtspServer | Profile::ZlMediaKit | Profile::Ffmpeg => (true, true),
            Profile::MediaMtx => (false, true),
            Profile::Xiu => (false, false),
        }
    }
}

/// A point of the exchange where a fault can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Right after accepting the connection (or instead of accepting it).
    Accept,
    Announce,
    /// The n-th SETUP of the connection (= track n).
    Setup(u8),
    Record,
    /// A GET_PARAMETER or OPTIONS of the client after RECORD (its keep-alive).
    KeepAlive,
    Teardown,
    /// When the n-th media packet after RECORD's answer arrives (TCP frame or UDP datagram).
    Media(u32),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Accept => f.write_str("accept"),
            Step::Announce => f.write_str("ANNOUNCE"),
            Step::Setup(n) => write!(f, "SETUP#{n}"),
            Step::Record => f.write_str("RECORD"),
            Step::KeepAlive => f.write_str("keep-alive"),
            Step::Teardown => f.write_str("TEARDOWN"),
            Step::Media(n) => write!(f, "media#{n}"),
        }
    }
}

/// What becomes of the connection after a truncated answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    Close,
    Reset,
    StayOpen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CSeqFault {
    Missing,
    /// Another request's number.
    Wrong,
    /// Not a number.
    Garbage,
    /// Does not fit 32 bits.
    Huge,
    /// Two CSeq headers, the right one second.
    Twice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LenFault {
    /// Far over any limit.
    Huge,
    Negative,
    /// More than the body: the client waits for bytes that never come.
    TooLong,
    /// Less than the body: the rest is read as the next message.
    TooShort,
    Garbage,
}

/// A request the server sends to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRequest {
    pub method: String,
    /// SET_PARAMETER / ANNOUNCE get a body (text/parameters, application/sdp).
    pub body: bool,
    /// Odd headers too: a name starting with a digit, one named `uri`, a value that is not
    /// UTF-8.
    pub odd_headers: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Flip this many bytes of the answer.
    Flip(u8),
    /// Send only the first `permille`/1000 of the answer.
    Truncate {
        permille: u16,
        then: Then,
    },
    /// The header a second time, with another value.
    DupHeader(&'static str),
    DropHeader(&'static str),
    CSeq(CSeqFault),
    ContentLength(LenFault),
    /// Answer with this status instead (3xx with a Location, 401 with a challenge).
    Status(u16),
    /// The answer one byte per write.
    Split,
    /// The answer one byte per second.
    Drip,
    /// Never answer; the connection stays open.
    Hold,
    /// Close (FIN) before answering, or right after.
    Close {
        after_reply: bool,
    },
    /// Reset (SO_LINGER 0) before answering, or right after.
    Reset {
        after_reply: bool,
    },
    /// Stop reading the connection (after the answer, if any).
    StopReading,
    /// An interleaved frame, before or after the answer.
    Junk {
        channel: u8,
        len: u16,
        before: bool,
    },
    /// A request from the server (after the answer, if any).
    Request(ServerRequest),
    /// Never accept: the listen backlog is full, so the client's connect hangs.
    HoldAccept,
    /// The header set to this value (added if absent). `{port}` is the server's port.
    Header(&'static str, String),
    /// A raw line among the headers (bytes that need not be UTF-8 nor `name: value`).
    RawLine(Vec<u8>),
    /// This many extra headers.
    ManyHeaders(u16),
    /// A body of this many bytes (with its right Content-Length).
    Body(u32),
    /// The status line replaced by this one.
    StatusLine(String),
    /// An RTCP packet on the track's RTCP channel (TCP) or port (UDP).
    Rtcp(RtcpKind),
    /// Shut the write side (FIN) and keep reading.
    HalfClose,
    /// An answer to a request nobody sent (CSeq 999), and one without CSeq.
    Unsolicited,
    /// `302` with this Location (`{port}`: the server's port).
    Redirect(String),
    /// `401` with this WWW-Authenticate.
    Challenge(String),
    /// The Session header's `;timeout=` set to this text (the id stays right).
    SessionTimeout(String),
    /// The fault on every request at the step, not only the first (a server that says 401
    /// `stale=true` to every attempt, say).
    Always(Box<Fault>),
}

/// RTCP the server sends that a client must survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtcpKind {
    /// A receiver report about the pusher's SSRC with random loss, jitter, LSR and DLSR.
    WildReport,
    /// A header whose count and length promise more than the packet holds.
    LyingLength,
    /// A sender report from the server, with report blocks.
    SenderReport,
    /// RTCP version 0, random bytes.
    NotRtcp,
    /// A BYE from the server.
    Bye,
}

/// One fault at one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    pub step: Step,
    pub fault: Fault,
    /// On every connection (reconnects meet it again), else on the first one only.
    pub every_connection: bool,
}

impl fmt::Display for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} at {}{}",
            self.fault,
            self.step,
            if self.every_connection {
                " (every connection)"
            } else {
                ""
            }
        )
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub profile: Profile,
    pub injections: Vec<Injection>,
    /// `;timeout=` the server announces (None: the profile's own habit).
    pub session_timeout: Option<u32>,
    /// How often receiver reports go out (real servers: 5 to 10 s; compressed here).
    pub report_interval: Duration,
}

impl Plan {
    pub fn clean(profile: Profile) -> Plan {
        Plan {
            seed: 0,
            profile,
            injections: Vec::new(),
            session_timeout: None,
            report_interval: Duration::from_millis(150),
        }
    }
    fn holds_accept(&self) -> bool {
        self.injections.iter().any(|i| i.fault == Fault::HoldAccept)
    }
}

// ---------------------------------------------------------------------------------------------
// What tests can see
// ---------------------------------------------------------------------------------------------

/// An answer the client gave to a request of the server.
#[derive(Clone, Debug)]
pub struct ClientAnswer {
    pub conn: usize,
    pub status: u16,
    pub cseq: Option<u32>,
}

/// A request the server sent.
#[derive(Clone, Debug)]
pub struct SentRequest {
    pub conn: usize,
    pub method: String,
    pub cseq: u32,
    pub sent_at: Instant,
}

/// Everything observable so far. Tests wait on it with [`HostileServer::wait_for`].
#[derive(Clone, Debug, Default)]
pub struct View {
    pub connections: usize,
    /// (connection, method) of every request received.
    pub requests: Vec<(usize, String)>,
    /// When the client's TEARDOWN arrived, per connection that got one.
    pub teardown_at: Vec<(usize, Instant)>,
    /// Answers being held back (never sent), by connection and step.
    pub holding: Vec<(usize, Step)>,
    /// Connections whose reader stopped reading.
    pub stopped_reading: Vec<usize>,
    /// RECORD answered with 2xx, per connection.
    pub recording: Vec<usize>,
    /// Media packets received after RECORD's answer, all connections.
    pub media: u64,
    /// The same, per connection.
    pub media_on: Vec<u64>,
    pub server_requests: Vec<SentRequest>,
    pub client_answers: Vec<ClientAnswer>,
    /// Connections that ended (either side), and when.
    pub ended: Vec<usize>,
    pub ended_at: Vec<(usize, Instant)>,
    /// What the client sent that the server could not parse.
    pub protocol_errors: Vec<String>,
    /// The server's own timeline, for failure reports.
    pub log: Vec<String>,
}

impl View {
    pub fn is_holding(&self, step: Step) -> bool {
        self.holding.iter().any(|(_, s)| *s == step)
    }
}

// ---------------------------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------------------------

enum Mode {
    Whole,
    Split,
    Drip,
}

enum Out {
    Bytes(Vec<u8>, Mode),
    Close,
    Reset,
    HalfClose,
    /// Stop the reader once what came before is written.
    StopReading,
    Udp {
        sock: Arc<UdpSocket>,
        to: SocketAddr,
        data: Vec<u8>,
    },
}

struct UdpTrack {
    rtcp: Arc<UdpSocket>,
    client_rtcp: SocketAddr,
}

#[derive(Default, Clone, Copy)]
struct TrackSeen {
    ssrc: Option<u32>,
    highest_seq: u16,
    packets: u32,
    bye: bool,
}

struct Conn {
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    out: VecDeque<Out>,
    paused: bool,
    ended: bool,
    announce_uri: Option<String>,
    setups: Vec<String>,
    /// Per track: UDP sockets, when the track was set up over UDP.
    udp: Vec<Option<UdpTrack>>,
    /// Interleaved RTCP channel per track, when over TCP.
    rtcp_channels: Vec<Option<u8>>,
    seen: Vec<TrackSeen>,
    session: String,
    session_given: bool,
    record_sent: bool,
    media: u32,
    next_cseq: u32,
    next_report: Option<Instant>,
    /// Request steps whose faults were applied: a request sent again (after a 401, say) at the
    /// same step gets the normal answer.
    fired: Vec<Step>,
}

struct Inner {
    shutdown: bool,
    conns: Vec<Conn>,
    view: View,
    rng: Rng,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    plan: Plan,
    port: u16,
    inner: Mutex<Inner>,
    cv: Condvar,
    t0: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn wait_timeout<'a>(&self, g: MutexGuard<'a, Inner>, d: Duration) -> MutexGuard<'a, Inner> {
        match self.cv.wait_timeout(g, d) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
    }
    fn log(&self, inner: &mut Inner, text: String) {
        let t = self.t0.elapsed();
        inner.view.log.push(format!(
            "{:>5}.{:03} {text}",
            t.as_secs(),
            t.subsec_millis()
        ));
        self.cv.notify_all();
    }
    /// The injections that apply at `step` on connection `conn` (`again`: not the first
    /// request at that step, so only `Always` faults).
    fn faults_at(&self, conn: usize, step: Step, again: bool) -> Vec<Fault> {
        self.plan
            .injections
            .iter()
            .filter(|i| i.step == step && (i.every_connection || conn == 0))
            .filter_map(|i| match &i.fault {
                Fault::Always(f) => Some((**f).clone()),
                f if !again => Some(f.clone()),
                _ => None,
            })
            .collect()
    }
}

fn spawn(shared: &Arc<Shared>, inner: &mut Inner, name: String, f: impl FnOnce() + Send + 'static) {
    let _ = shared;
    match thread::Builder::new().name(name).spawn(f) {
        Ok(h) => inner.threads.push(h),
        Err(e) => inner.view.log.push(format!("cannot spawn a thread: {e}")),
    }
}

/// Closes the connection with a FIN.
fn close_stream(s: &TcpStream) {
    let _ = s.shutdown(Shutdown::Both);
}

/// Closes the connection with a RST: linger 0, then a disconnect (connect to AF_UNSPEC), which
/// resets it even while other threads hold the socket.
fn reset_stream(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed sockaddr with family AF_UNSPEC is a valid argument for connect(2) on a
    // socket we own; it only disconnects it.
    let rc = unsafe {
        let mut addr: libc::sockaddr = std::mem::zeroed();
        addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            s.as_raw_fd(),
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        close_stream(s);
    } else {
        // Wake a reader that might still sleep on it.
        let _ = s.shutdown(Shutdown::Both);
    }
}

fn end_conn(shared: &Shared, inner: &mut Inner, conn: usize, why: &str) {
    let c = &mut inner.conns[conn];
    if c.ended {
        return;
    }
    c.ended = true;
    c.paused = false;
    close_stream(&c.stream);
    inner.view.ended.push(conn);
    inner.view.ended_at.push((conn, Instant::now()));
    shared.log(inner, format!("conn {conn}: ended ({why})"));
}

fn enqueue(shared: &Shared, inner: &mut Inner, conn: usize, out: Out) {
    inner.conns[conn].out.push_back(out);
    shared.cv.notify_all();
}

// ----- messages from the client -----------------------------------------------------------------

struct Req {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

enum Msg {
    Frame(u8, Vec<u8>),
    Request(Req),
    Answer(u16, Option<u32>),
}

enum ReadErr {
    Closed,
    Protocol(String),
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1 << 20;

fn read_msg(r: &mut impl BufRead) -> Result<Msg, ReadErr> {
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReadErr::Closed),
        };
        match buf.first() {
            None => return Err(ReadErr::Closed),
            Some(b'\r' | b'\n') => r.consume(1),
            Some(b'$') => {
                let mut hdr = [0u8; 4];
                r.read_exact(&mut hdr).map_err(|_| ReadErr::Closed)?;
                let len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
                let mut data = vec![0u8; len];
                r.read_exact(&mut data).map_err(|_| ReadErr::Closed)?;
                return Ok(Msg::Frame(hdr[1], data));
            }
            Some(_) => break,
        }
    }
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = r
            .by_ref()
            .take((MAX_HEAD - total + 1) as u64)
            .read_until(b'\n', &mut line)
            .map_err(|_| ReadErr::Closed)?;
        total += n;
        if total > MAX_HEAD {
            return Err(ReadErr::Protocol("head over 64 KiB".into()));
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
        lines.push(String::from_utf8_lossy(&line).into_owned());
    }
    let start = lines.remove(0);
    let mut headers = Vec::new();
    for l in &lines {
        match l.split_once(':') {
            Some((n, v)) => headers.push((n.trim().to_string(), v.trim().to_string())),
            None => return Err(ReadErr::Protocol(format!("header line {l:?}"))),
        }
    }
    let len = match headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        None => 0,
        Some((_, v)) => match v.parse::<usize>() {
            Ok(n) if n <= MAX_BODY => n,
            _ => return Err(ReadErr::Protocol(format!("Content-Length {v:?}"))),
        },
    };
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|_| ReadErr::Closed)?;
    let parts: Vec<&str> = start.split(' ').collect();
    if start.starts_with("RTSP/") {
        let status = parts
            .get(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ReadErr::Protocol(format!("status line {start:?}")))?;
        let cseq = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("cseq"))
            .and_then(|(_, v)| v.parse().ok());
        return Ok(Msg::Answer(status, cseq));
    }
    if parts.len() != 3 || !parts[2].starts_with("RTSP/") {
        return Err(ReadErr::Protocol(format!("request line {start:?}")));
    }
    Ok(Msg::Request(Req {
        method: parts[0].to_string(),
        uri: parts[1].to_string(),
        headers,
        body,
    }))
}

// ----- answers --------------------------------------------------------------------------------

struct Reply {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Content-Length as written (None: from the body, omitted when empty).
    content_length: Option<String>,
    /// The server closes the connection once this answer is out.
    close_after: bool,
    /// Raw lines written after the headers.
    raw_lines: Vec<Vec<u8>>,
    /// Replaces `RTSP/1.0 <status> <reason>`.
    status_line: Option<String>,
}

impl Reply {
    fn new(status: u16, reason: &str) -> Reply {
        Reply {
            status,
            reason: reason.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            content_length: None,
            close_after: false,
            raw_lines: Vec::new(),
            status_line: None,
        }
    }
    fn header(mut self, n: &str, v: impl Into<String>) -> Reply {
        self.headers.push((n.to_string(), v.into()));
        self
    }
    fn to_bytes(&self) -> Vec<u8> {
        let mut b: Vec<u8> = match &self.status_line {
            Some(l) => format!("{l}\r\n"),
            None => format!("RTSP/1.0 {} {}\r\n", self.status, self.reason),
        }
        .into_bytes();
        for (n, v) in &self.headers {
            b.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        // Raw lines may be any bytes. A folded line continues a header of its own, not
        // whichever came last.
        for l in &self.raw_lines {
            if l.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                b.extend_from_slice(b"X-Folded: start\r\n");
            }
            b.extend_from_slice(l);
            b.extend_from_slice(b"\r\n");
        }
        match &self.content_length {
            Some(v) => b.extend_from_slice(format!("Content-Length: {v}\r\n").as_bytes()),
            None if !self.body.is_empty() => {
                b.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes())
            }
            None => {}
        }
        b.extend_from_slice(b"\r\n");
        b.extend_from_slice(&self.body);
        b
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        453 => "Not Enough Bandwidth",
        454 => "Session Not Found",
        455 => "Method Not Valid in This State",
        459 => "Aggregate Operation Not Allowed",
        461 => "Unsupported Transport",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// `client_port=a-b` of a UDP Transport request.
fn client_ports(transport: &str) -> Option<(u16, u16)> {
    let spec = transport.split(',').next()?;
    let mut parts = spec.split(';');
    if parts.next()?.to_ascii_uppercase().contains("/TCP") {
        return None;
    }
    parts.find_map(|p| {
        let v = p.trim().strip_prefix("client_port=")?;
        let (a, b) = v.split_once('-').unwrap_or((v, v));
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    })
}

/// `interleaved=a-b` of a TCP Transport request.
fn interleaved(transport: &str) -> Option<(u8, u8)> {
    transport.split(';').find_map(|p| {
        let v = p.trim().strip_prefix("interleaved=")?;
        let (a, b) = v.split_once('-').unwrap_or((v, v));
        let a: u8 = a.trim().parse().ok()?;
        Some((a, b.trim().parse().unwrap_or(a.wrapping_add(1))))
    })
}

/// What the profile answers when all goes well. Updates the connection's state.
fn normal_reply(shared: &Arc<Shared>, inner: &mut Inner, conn: usize, req: &Req) -> Reply {
    let profile = shared.plan.profile;
    let timeout = shared.plan.session_timeout;
    let port = shared.port;
    let c = &mut inner.conns[conn];
    let session_value = |c: &Conn, default_timeout: Option<u32>| match timeout.or(default_timeout) {
        Some(t) => format!("{};timeout={t}", c.session),
        None => c.session.clone(),
    };
    let base = |r: Reply| {
        r.header("Server", profile.server_header())
            .header("Date", "Tue, 26 Mar 2019 09:10:10 GMT")
    };
    let strict_session = matches!(profile, Profile::MediaMtx | Profile::Ffmpeg);
    let m = req.method.as_str();
    if strict_session
        && c.session_given
        && matches!(m, "SETUP" | "RECORD" | "GET_PARAMETER" | "TEARDOWN")
        && req.header("session") != Some(c.session.as_str())
    {
        return base(Reply::new(454, "Session Not Found"));
    }
    match m {
        "OPTIONS" => base(Reply::new(200, "OK")).header(
            "Public",
            "OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, RECORD, PAUSE, GET_PARAMETER, TEARDOWN",
        ),
        "ANNOUNCE" => {
            if req.body.is_empty() {
                return base(Reply::new(400, "Bad Request"));
            }
            c.announce_uri = Some(req.uri.clone());
            c.setups.clear();
            let mut r = base(Reply::new(200, "OK"));
            if profile == Profile::ZlMediaKit {
                c.session_given = true;
                r = r.header("Session", session_value(c, None));
            }
            r
        }
        "SETUP" => {
            if c.announce_uri.is_none() {
                return base(Reply::new(455, "Method Not Valid in This State"));
            }
            let Some(t) = req.header("transport").map(str::to_string) else {
                return base(Reply::new(461, "Unsupported Transport"));
            };
            if profile == Profile::Ffmpeg && !t.contains("mode=record") {
                // Its listener gives up on such a client.
                let mut r = base(Reply::new(461, "Unsupported Transport"));
                r.close_after = true;
                return r;
            }
            let c = &mut inner.conns[conn];
            let track = c.setups.len();
            let ssrc = format!("{:08X}", 0x1000_0000u32 + track as u32);
            let transport = if let Some((crtp, crtcp)) = client_ports(&t) {
                let Ok((sp, udp)) = bind_udp(shared, inner, conn, track, (crtp, crtcp)) else {
                    return base(Reply::new(500, "Internal Server Error"));
                };
                let c = &mut inner.conns[conn];
                if c.udp.len() <= track {
                    c.udp.resize_with(track + 1, || None);
                }
                c.udp[track] = Some(udp);
                let ports = format!("client_port={crtp}-{crtcp};server_port={}-{}", sp.0, sp.1);
                match profile {
                    Profile::GstRtspServer => {
                        format!("RTP/AVP;unicast;{ports};ssrc={ssrc};mode=\"RECORD\"")
                    }
                    Profile::Ffmpeg => format!("RTP/AVP/UDP;unicast;mode=record;{ports}"),
                    Profile::ZlMediaKit => format!("RTP/AVP;unicast;{ports};ssrc={ssrc}"),
                    Profile::MediaMtx => format!("RTP/AVP;unicast;{ports}"),
                    Profile::Xiu => format!("RTP/AVP;unicast;{ports};mode=record"),
                }
            } else {
                let (a, b) = interleaved(&t).unwrap_or((2 * track as u8, 2 * track as u8 + 1));
                let c = &mut inner.conns[conn];
                if c.rtcp_channels.len() <= track {
                    c.rtcp_channels.resize(track + 1, None);
                }
                c.rtcp_channels[track] = Some(b);
                let il = format!("interleaved={a}-{b}");
                match profile {
                    Profile::GstRtspServer => {
                        format!("RTP/AVP/TCP;unicast;{il};mode=\"RECORD\"")
                    }
                    Profile::Ffmpeg => format!("RTP/AVP/TCP;unicast;mode=record;{il}"),
                    Profile::ZlMediaKit => format!("RTP/AVP/TCP;unicast;{il};ssrc={ssrc}"),
                    Profile::MediaMtx => format!("RTP/AVP/TCP;unicast;{il}"),
                    Profile::Xiu => t.clone(),
                }
            };
            let c = &mut inner.conns[conn];
            c.setups.push(req.uri.clone());
            if c.seen.len() < c.setups.len() {
                c.seen.resize(c.setups.len(), TrackSeen::default());
            }
            c.session_given = true;
            let default_timeout = match profile {
                Profile::GstRtspServer | Profile::MediaMtx => Some(60),
                _ => None,
            };
            let mut r = base(Reply::new(200, "OK"))
                .header("Transport", transport)
                .header("Session", session_value(c, default_timeout));
            if profile == Profile::ZlMediaKit {
                r = r
                    .header("x-Dynamic-Rate", "1")
                    .header("x-Transport-Options", "late-tolerance=1.400000");
            }
            r
        }
        "RECORD" => {
            if c.setups.is_empty() {
                return base(Reply::new(455, "Method Not Valid in This State"));
            }
            let mut r = base(Reply::new(200, "OK")).header("Session", c.session.clone());
            if profile == Profile::ZlMediaKit {
                let info: Vec<String> = c.setups.iter().map(|u| format!("url={u}")).collect();
                r = r.header("RTP-Info", info.join(","));
            }
            r
        }
        "GET_PARAMETER" if profile == Profile::Ffmpeg => base(Reply::new(501, "Not Implemented")),
        "GET_PARAMETER" | "SET_PARAMETER" => {
            base(Reply::new(200, "OK")).header("Session", c.session.clone())
        }
        "TEARDOWN" => {
            // Most servers close right after answering.
            let mut r = base(Reply::new(200, "OK")).header("Session", c.session.clone());
            r.close_after = profile != Profile::Xiu;
            r
        }
        "PAUSE" if profile == Profile::MediaMtx => base(Reply::new(501, "Not Implemented")),
        _ => {
            let _ = port;
            base(Reply::new(501, "Not Implemented"))
        }
    }
}

fn bind_udp(
    shared: &Arc<Shared>,
    inner: &mut Inner,
    conn: usize,
    track: usize,
    client: (u16, u16),
) -> io::Result<((u16, u16), UdpTrack)> {
    let rtp = UdpSocket::bind("127.0.0.1:0")?;
    let rtcp = UdpSocket::bind("127.0.0.1:0")?;
    let ports = (rtp.local_addr()?.port(), rtcp.local_addr()?.port());
    let peer = inner.conns[conn].peer;
    let client_rtcp = SocketAddr::new(peer.ip(), client.1);
    let rtcp = Arc::new(rtcp);
    for (sock, is_rtcp) in [(Arc::new(rtp), false), (rtcp.clone(), true)] {
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let s2 = shared.clone();
        spawn(
            shared,
            inner,
            format!(
                "hostile-udp{conn}.{track}{}",
                if is_rtcp { "c" } else { "" }
            ),
            move || udp_loop(&s2, conn, track, &sock, is_rtcp),
        );
    }
    Ok((ports, UdpTrack { rtcp, client_rtcp }))
}

fn udp_loop(shared: &Arc<Shared>, conn: usize, track: usize, sock: &UdpSocket, is_rtcp: bool) {
    let mut buf = vec![0u8; 65536];
    loop {
        if shared.lock().shutdown {
            return;
        }
        let Ok((n, _from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let mut inner = shared.lock();
        if inner.conns[conn].ended {
            continue;
        }
        if is_rtcp {
            rtcp_in(shared, &mut inner, conn, track, &buf[..n]);
        } else {
            media_in(shared, &mut inner, conn, track, &buf[..n]);
        }
    }
}

/// RTCP from the client: FFmpeg's listener ends once every track said BYE.
fn rtcp_in(shared: &Arc<Shared>, inner: &mut Inner, conn: usize, track: usize, data: &[u8]) {
    let mut off = 0;
    let mut bye = false;
    while off + 4 <= data.len() {
        if data[off + 1] == 203 {
            bye = true;
        }
        let words = u16::from_be_bytes([data[off + 2], data[off + 3]]) as usize;
        off += 4 * (words + 1);
    }
    if !bye {
        return;
    }
    let c = &mut inner.conns[conn];
    if let Some(t) = c.seen.get_mut(track) {
        t.bye = true;
    }
    if shared.plan.profile == Profile::Ffmpeg
        && !c.setups.is_empty()
        && c.seen.iter().take(c.setups.len()).all(|t| t.bye)
    {
        shared.log(inner, format!("conn {conn}: every track said BYE: closing"));
        enqueue(shared, inner, conn, Out::Close);
    }
}

/// A media packet after RECORD's answer: learn the SSRC, count, fire `Media(n)` faults.
fn media_in(shared: &Arc<Shared>, inner: &mut Inner, conn: usize, track: usize, pkt: &[u8]) {
    let c = &mut inner.conns[conn];
    if !c.record_sent {
        return;
    }
    if let Some(t) = c.seen.get_mut(track) {
        if pkt.len() >= 12 {
            t.ssrc = Some(u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]));
            t.highest_seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        }
        t.packets += 1;
    }
    c.media += 1;
    let n = c.media;
    inner.view.media += 1;
    if inner.view.media_on.len() <= conn {
        inner.view.media_on.resize(conn + 1, 0);
    }
    inner.view.media_on[conn] += 1;
    let faults = shared.faults_at(conn, Step::Media(n), false);
    if !faults.is_empty() {
        shared.log(inner, format!("conn {conn}: media packet {n}"));
        apply(shared, inner, conn, Step::Media(n), None, faults);
    }
    shared.cv.notify_all();
}

fn server_request(
    shared: &Arc<Shared>,
    inner: &mut Inner,
    conn: usize,
    sr: &ServerRequest,
) -> Vec<u8> {
    let port = shared.port;
    let c = &mut inner.conns[conn];
    let cseq = c.next_cseq;
    c.next_cseq += 1;
    let uri = c
        .announce_uri
        .clone()
        .unwrap_or_else(|| format!("rtsp://127.0.0.1:{port}/live"));
    let mut s = format!("{} {uri} RTSP/1.0\r\nCSeq: {cseq}\r\n", sr.method);
    if c.session_given {
        s.push_str(&format!("Session: {}\r\n", c.session));
    }
    let body: &[u8] = match (sr.method.as_str(), sr.body) {
        ("ANNOUNCE", true) => {
            s.push_str("Content-Type: application/sdp\r\n");
            b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
        }
        (_, true) => {
            s.push_str("Content-Type: text/parameters\r\n");
            b"volume: 0.5\r\nbarparam: barstuff\r\n"
        }
        _ => b"",
    };
    let mut raw: Vec<u8> = Vec::new();
    if sr.odd_headers {
        s.push_str("9-Odd: 1\r\nuri: rtsp://evil.invalid/\r\nX.Dotted+Name: v\r\n");
        raw.extend_from_slice(b"X-Bin: \xff\xfe\x01\r\n");
    }
    if sr.method == "REDIRECT" {
        s.push_str(&format!("Location: rtsp://127.0.0.1:{port}/elsewhere\r\n"));
    }
    if !body.is_empty() {
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    let mut b = s.into_bytes();
    b.extend_from_slice(&raw);
    b.extend_from_slice(b"\r\n");
    b.extend_from_slice(body);
    inner.view.server_requests.push(SentRequest {
        conn,
        method: sr.method.clone(),
        cseq,
        sent_at: Instant::now(),
    });
    shared.log(
        inner,
        format!("conn {conn}: sends {} (CSeq {cseq})", sr.method),
    );
    b
}

fn junk_frame(inner: &mut Inner, channel: u8, len: u16) -> Vec<u8> {
    let mut b = vec![b'$', channel];
    b.extend_from_slice(&len.to_be_bytes());
    b.extend(inner.rng.bytes(len as usize));
    b
}

/// Applies `faults` at `step`: mutates and sends `reply` (None: no answer due, e.g. a media step).
fn apply(
    shared: &Arc<Shared>,
    inner: &mut Inner,
    conn: usize,
    step: Step,
    reply: Option<Reply>,
    faults: Vec<Fault>,
) {
    let mut reply = reply;
    let mut before: Vec<Vec<u8>> = Vec::new();
    let mut after: Vec<Out> = Vec::new();
    let mut mode = Mode::Whole;
    let mut flips = 0u32;
    let mut truncate: Option<(u16, Then)> = None;
    let mut send = true;
    let port = shared.port;
    for f in &faults {
        shared.log(inner, format!("conn {conn}: {f:?} at {step}"));
        match f {
            Fault::Flip(n) => flips += *n as u32,
            Fault::Truncate { permille, then } => truncate = Some((*permille, *then)),
            Fault::DupHeader(h) => {
                if let Some(r) = reply.as_mut() {
                    let v = match *h {
                        "CSeq" => "4242".to_string(),
                        "Session" => "OtherSession;timeout=5".to_string(),
                        "Transport" => "RTP/AVP/TCP;unicast;interleaved=6-7".to_string(),
                        "Content-Length" => "3".to_string(),
                        _ => "duplicate".to_string(),
                    };
                    r.headers.push((h.to_string(), v));
                }
            }
            Fault::DropHeader(h) => {
                if let Some(r) = reply.as_mut() {
                    r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(h));
                }
            }
            Fault::CSeq(cf) => {
                if let Some(r) = reply.as_mut() {
                    let pos = r.headers.iter().position(|(n, _)| n == "CSeq");
                    let cur = pos
                        .map(|p| r.headers[p].1.clone())
                        .unwrap_or_else(|| "1".into());
                    let new = match cf {
                        CSeqFault::Missing => None,
                        CSeqFault::Wrong => Some((cur.parse::<u32>().unwrap_or(1) + 7).to_string()),
                        CSeqFault::Garbage => Some("abc".to_string()),
                        CSeqFault::Huge => Some("99999999999999999999".to_string()),
                        CSeqFault::Twice => {
                            if let Some(p) = pos {
                                r.headers.insert(p, ("CSeq".into(), "77".into()));
                            }
                            Some(cur)
                        }
                    };
                    if let Some(p) = r.headers.iter().rposition(|(n, _)| n == "CSeq") {
                        match new {
                            Some(v) => r.headers[p].1 = v,
                            None => {
                                r.headers.remove(p);
                            }
                        }
                    }
                }
            }
            Fault::ContentLength(lf) => {
                if let Some(r) = reply.as_mut() {
                    if r.body.is_empty() {
                        r.body = b"a=b\r\nc=d\r\n".to_vec();
                    }
                    r.content_length = Some(match lf {
                        LenFault::Huge => "99999999999".into(),
                        LenFault::Negative => "-5".into(),
                        LenFault::TooLong => (r.body.len() + 100).to_string(),
                        LenFault::TooShort => "2".into(),
                        LenFault::Garbage => "twelve".into(),
                    });
                }
            }
            Fault::Status(code) => {
                if let Some(r) = reply.as_mut() {
                    r.status = *code;
                    r.reason = reason(*code).to_string();
                    if (300..400).contains(code) {
                        r.headers.push((
                            "Location".into(),
                            format!("rtsp://127.0.0.1:{port}/moved/{}", inner.rng.below(1000)),
                        ));
                    }
                    if *code == 401 {
                        r.headers
                            .push(("WWW-Authenticate".into(), "Basic realm=\"hostile\"".into()));
                    }
                }
            }
            Fault::Split => mode = Mode::Split,
            Fault::Drip => mode = Mode::Drip,
            Fault::Hold => {
                send = false;
                inner.view.holding.push((conn, step));
                shared.log(inner, format!("conn {conn}: holding the answer to {step}"));
            }
            Fault::Close { after_reply } => {
                if !*after_reply {
                    send = false;
                }
                after.push(Out::Close);
            }
            Fault::Reset { after_reply } => {
                if !*after_reply {
                    send = false;
                }
                after.push(Out::Reset);
            }
            Fault::StopReading => after.push(Out::StopReading),
            Fault::Junk {
                channel,
                len,
                before: b,
            } => {
                let f = junk_frame(inner, *channel, *len);
                if *b {
                    before.push(f);
                } else {
                    after.push(Out::Bytes(f, Mode::Whole));
                }
            }
            Fault::Request(sr) => {
                let b = server_request(shared, inner, conn, sr);
                after.push(Out::Bytes(b, Mode::Whole));
            }
            Fault::HoldAccept => {}
            Fault::Header(h, v) => {
                if let Some(r) = reply.as_mut() {
                    let v = v.replace("{port}", &port.to_string());
                    match r
                        .headers
                        .iter_mut()
                        .find(|(n, _)| n.eq_ignore_ascii_case(h))
                    {
                        Some(slot) => slot.1 = v,
                        None => r.headers.push((h.to_string(), v)),
                    }
                }
            }
            Fault::RawLine(line) => {
                if let Some(r) = reply.as_mut() {
                    r.raw_lines.push(line.clone());
                }
            }
            Fault::ManyHeaders(n) => {
                if let Some(r) = reply.as_mut() {
                    for i in 0..*n {
                        r.headers.push((format!("X-Filler-{i}"), "x".repeat(8)));
                    }
                }
            }
            Fault::Body(n) => {
                if let Some(r) = reply.as_mut() {
                    r.body = vec![b'b'; *n as usize];
                    r.headers.push(("Content-Type".into(), "text/plain".into()));
                }
            }
            Fault::StatusLine(l) => {
                if let Some(r) = reply.as_mut() {
                    r.status_line = Some(l.clone());
                }
            }
            Fault::Rtcp(kind) => {
                let outs = rtcp_fault(inner, conn, *kind);
                after.extend(outs);
            }
            Fault::HalfClose => after.push(Out::HalfClose),
            Fault::Unsolicited => {
                let b = b"RTSP/1.0 200 OK\r\nCSeq: 999\r\n\r\nRTSP/1.0 200 OK\r\nServer: x\r\n\r\n";
                after.push(Out::Bytes(b.to_vec(), Mode::Whole));
            }
            Fault::Redirect(location) => {
                if let Some(r) = reply.as_mut() {
                    r.status = 302;
                    r.reason = reason(302).to_string();
                    r.headers
                        .retain(|(n, _)| n != "Session" && n != "Transport");
                    r.headers.push((
                        "Location".into(),
                        location.replace("{port}", &port.to_string()),
                    ));
                }
            }
            Fault::Challenge(c) => {
                if let Some(r) = reply.as_mut() {
                    r.status = 401;
                    r.reason = reason(401).to_string();
                    r.headers
                        .retain(|(n, _)| n != "Session" && n != "Transport");
                    // A fresh nonce each time (`{nonce}`), as a server whose nonces expire.
                    let nonce = format!("{:016x}", inner.rng.next_u64());
                    r.headers
                        .push(("WWW-Authenticate".into(), c.replace("{nonce}", &nonce)));
                }
            }
            // Unwrapped by faults_at.
            Fault::Always(_) => {}
            Fault::SessionTimeout(t) => {
                if let Some(r) = reply.as_mut() {
                    let id = inner.conns[conn].session.clone();
                    let v = format!("{id};timeout={t}");
                    match r.headers.iter_mut().find(|(n, _)| n == "Session") {
                        Some(slot) => slot.1 = v,
                        None => r.headers.push(("Session".into(), v)),
                    }
                }
            }
        }
    }
    if let (Step::Setup(k), Some(r)) = (step, reply.as_ref()) {
        // A SETUP refused (or never answered) sets nothing up: the next one is this track again.
        if !(200..300).contains(&r.status) || !send {
            inner.conns[conn].setups.truncate(k as usize);
        }
    }
    for b in before {
        enqueue(shared, inner, conn, Out::Bytes(b, Mode::Whole));
    }
    if let (Some(r), true) = (reply, send) {
        let mut bytes = r.to_bytes();
        for _ in 0..flips {
            let i = inner.rng.below(bytes.len() as u64) as usize;
            let x = (inner.rng.below(255) + 1) as u8;
            bytes[i] ^= x;
        }
        let is_record_ok = step == Step::Record && (200..300).contains(&r.status);
        let mut then = None;
        if let Some((permille, t)) = truncate {
            let keep = (bytes.len() * permille as usize / 1000).min(bytes.len().saturating_sub(1));
            bytes.truncate(keep);
            then = Some(t);
        }
        // The writer thread marks RECORD as answered when it gets there; media read before
        // that counts as early.
        if is_record_ok && then.is_none() {
            inner.conns[conn].record_sent = true;
            inner.view.recording.push(conn);
            let due = Instant::now() + shared.plan.report_interval;
            inner.conns[conn].next_report = Some(due);
        }
        enqueue(shared, inner, conn, Out::Bytes(bytes, mode));
        match then {
            Some(Then::Close) => enqueue(shared, inner, conn, Out::Close),
            Some(Then::Reset) => enqueue(shared, inner, conn, Out::Reset),
            Some(Then::StayOpen) => {}
            None if r.close_after => after.push(Out::Close),
            None => {}
        }
    }
    for o in after {
        enqueue(shared, inner, conn, o);
    }
}

fn step_of(c: &Conn, method: &str) -> Option<Step> {
    Some(match method {
        "ANNOUNCE" => Step::Announce,
        "SETUP" => Step::Setup(c.setups.len().min(255) as u8),
        "RECORD" => Step::Record,
        "GET_PARAMETER" | "OPTIONS" if c.record_sent => Step::KeepAlive,
        "TEARDOWN" => Step::Teardown,
        _ => return None,
    })
}

fn handle_request(shared: &Arc<Shared>, conn: usize, req: Req) {
    let mut inner = shared.lock();
    inner.view.requests.push((conn, req.method.clone()));
    if req.method == "TEARDOWN" {
        inner.view.teardown_at.push((conn, Instant::now()));
    }
    shared.log(
        &mut inner,
        format!("conn {conn}: {} {}", req.method, req.uri),
    );
    let step = step_of(&inner.conns[conn], &req.method);
    let mut reply = normal_reply(shared, &mut inner, conn, &req);
    if let Some(c) = req.header("cseq") {
        reply.headers.insert(0, ("CSeq".into(), c.to_string()));
    }
    // Faults fire once per connection and step: a request sent again at the same step (after
    // a 401, say) gets the normal answer.
    let faults = match step {
        Some(s) => {
            let again = inner.conns[conn].fired.contains(&s);
            if !again {
                inner.conns[conn].fired.push(s);
            }
            shared.faults_at(conn, s, again)
        }
        None => Vec::new(),
    };
    if step == Some(Step::Teardown) && shared.plan.profile == Profile::Xiu {
        // xiu never answers TEARDOWN.
        let mut f = faults;
        f.push(Fault::Hold);
        apply(shared, &mut inner, conn, Step::Teardown, Some(reply), f);
        return;
    }
    match step {
        Some(s) => apply(shared, &mut inner, conn, s, Some(reply), faults),
        None => {
            let b = reply.to_bytes();
            enqueue(shared, &mut inner, conn, Out::Bytes(b, Mode::Whole));
            if reply.close_after {
                enqueue(shared, &mut inner, conn, Out::Close);
            }
        }
    }
}

/// Delivers an RTCP packet for `track` the way the track was set up (TCP channel or UDP port).
fn rtcp_out(c: &Conn, track: usize, p: Vec<u8>) -> Option<Out> {
    match (
        c.udp.get(track).and_then(Option::as_ref),
        c.rtcp_channels.get(track),
    ) {
        (Some(u), _) => Some(Out::Udp {
            sock: u.rtcp.clone(),
            to: u.client_rtcp,
            data: p,
        }),
        (None, Some(Some(ch))) => {
            let mut f = vec![b'$', *ch];
            f.extend_from_slice(&(p.len().min(65535) as u16).to_be_bytes());
            f.extend_from_slice(&p[..p.len().min(65535)]);
            Some(Out::Bytes(f, Mode::Whole))
        }
        _ => None,
    }
}

/// Hostile RTCP for every track set up on the connection.
fn rtcp_fault(inner: &mut Inner, conn: usize, kind: RtcpKind) -> Vec<Out> {
    let tracks = inner.conns[conn].setups.len();
    let mut outs = Vec::new();
    for track in 0..tracks {
        let ssrc = inner.conns[conn]
            .seen
            .get(track)
            .and_then(|t| t.ssrc)
            .unwrap_or(0xA000_0000 + track as u32);
        let rng = &mut inner.rng;
        let mut block = Vec::with_capacity(24);
        block.extend_from_slice(&ssrc.to_be_bytes());
        block.extend(rng.bytes(20));
        let p = match kind {
            RtcpKind::WildReport => {
                let mut p = vec![0x81, 201, 0, 7];
                p.extend_from_slice(&rng.next_u64().to_be_bytes()[..4]);
                p.extend_from_slice(&block);
                p
            }
            RtcpKind::LyingLength => {
                // 31 report blocks announced, length 200 words, 12 bytes sent.
                let mut p = vec![0x9F, 201, 0, 200];
                p.extend_from_slice(&ssrc.wrapping_add(1).to_be_bytes());
                p.extend_from_slice(&block[..4]);
                p
            }
            RtcpKind::SenderReport => {
                let mut p = vec![0x82, 200, 0, 18];
                p.extend_from_slice(&0x5E4D_0001u32.to_be_bytes());
                p.extend(rng.bytes(20));
                p.extend_from_slice(&block);
                p.extend_from_slice(&block);
                p
            }
            RtcpKind::Bye => {
                let mut p = vec![0x81, 203, 0, 1];
                p.extend_from_slice(&0x5E4D_0001u32.to_be_bytes());
                p
            }
            RtcpKind::NotRtcp => {
                let n = 4 + rng.below(64) as usize;
                let mut p = rng.bytes(n);
                p[0] &= 0x3F;
                p
            }
        };
        if let Some(o) = rtcp_out(&inner.conns[conn], track, p) {
            outs.push(o);
        }
    }
    outs
}

/// One receiver report (RR + SDES for ZLMediaKit) per track that has sent media.
fn reports(shared: &Shared, inner: &mut Inner, conn: usize) -> Vec<Out> {
    let profile = shared.plan.profile;
    let (tcp, udp) = profile.reports();
    let c = &inner.conns[conn];
    let mut outs = Vec::new();
    for (track, seen) in c.seen.iter().enumerate() {
        let Some(ssrc) = seen.ssrc else { continue };
        let reporter = if profile == Profile::ZlMediaKit {
            ssrc.wrapping_add(1)
        } else {
            0x5EED_0000 | track as u32
        };
        let mut p = Vec::with_capacity(64);
        p.extend_from_slice(&[0x81, 201, 0, 7]);
        p.extend_from_slice(&reporter.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]); // fraction lost, cumulative lost
        p.extend_from_slice(&(seen.highest_seq as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]); // jitter
        p.extend_from_slice(&[0, 0, 0, 0]); // LSR
        p.extend_from_slice(&[0, 0, 0, 0]); // DLSR
        if profile == Profile::ZlMediaKit {
            // SDES, CNAME "zlm", about the pusher's own SSRC.
            p.extend_from_slice(&[0x81, 202, 0, 3]);
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend_from_slice(&[1, 3, b'z', b'l', b'm', 0, 0, 0]);
        }
        match (
            c.udp.get(track).and_then(Option::as_ref),
            c.rtcp_channels.get(track),
        ) {
            (Some(u), _) if udp => outs.push(Out::Udp {
                sock: u.rtcp.clone(),
                to: u.client_rtcp,
                data: p,
            }),
            (None, Some(Some(ch))) if tcp => {
                let mut f = vec![b'$', *ch];
                f.extend_from_slice(&(p.len() as u16).to_be_bytes());
                f.extend_from_slice(&p);
                outs.push(Out::Bytes(f, Mode::Whole));
            }
            _ => {}
        }
    }
    outs
}

fn reader_loop(shared: &Arc<Shared>, conn: usize, stream: Arc<TcpStream>) {
    let mut r = BufReader::new(&*stream);
    loop {
        {
            let mut inner = shared.lock();
            while inner.conns[conn].paused && !inner.shutdown && !inner.conns[conn].ended {
                inner = shared.wait_timeout(inner, Duration::from_secs(1));
            }
            if inner.shutdown || inner.conns[conn].ended {
                break;
            }
        }
        match read_msg(&mut r) {
            Ok(Msg::Frame(ch, data)) => {
                let mut inner = shared.lock();
                let record_sent = inner.conns[conn].record_sent;
                if !record_sent && shared.plan.profile == Profile::MediaMtx {
                    shared.log(
                        &mut inner,
                        format!("conn {conn}: media before RECORD: closing"),
                    );
                    end_conn(shared, &mut inner, conn, "early media");
                    break;
                }
                let track = (ch / 2) as usize;
                if ch % 2 == 0 {
                    media_in(shared, &mut inner, conn, track, &data);
                } else {
                    rtcp_in(shared, &mut inner, conn, track, &data);
                }
            }
            Ok(Msg::Request(req)) => handle_request(shared, conn, req),
            Ok(Msg::Answer(status, cseq)) => {
                let mut inner = shared.lock();
                inner
                    .view
                    .client_answers
                    .push(ClientAnswer { conn, status, cseq });
                shared.log(
                    &mut inner,
                    format!("conn {conn}: client answered {status} (CSeq {cseq:?})"),
                );
            }
            Err(ReadErr::Closed) => {
                let mut inner = shared.lock();
                end_conn(shared, &mut inner, conn, "closed");
                break;
            }
            Err(ReadErr::Protocol(e)) => {
                let mut inner = shared.lock();
                inner.view.protocol_errors.push(format!("conn {conn}: {e}"));
                end_conn(shared, &mut inner, conn, "protocol error");
                break;
            }
        }
    }
}

fn writer_loop(shared: &Arc<Shared>, conn: usize, stream: Arc<TcpStream>) {
    let mut w = &*stream;
    loop {
        let out = {
            let mut inner = shared.lock();
            loop {
                if inner.shutdown || inner.conns[conn].ended {
                    return;
                }
                if let Some(o) = inner.conns[conn].out.pop_front() {
                    break o;
                }
                let now = Instant::now();
                match inner.conns[conn].next_report {
                    Some(due) if due <= now => {
                        inner.conns[conn].next_report = Some(now + shared.plan.report_interval);
                        let outs = reports(shared, &mut inner, conn);
                        inner.conns[conn].out.extend(outs);
                    }
                    Some(due) => inner = shared.wait_timeout(inner, due - now),
                    None => inner = shared.wait_timeout(inner, Duration::from_secs(1)),
                }
            }
        };
        let ok = match out {
            Out::Bytes(b, Mode::Whole) => w.write_all(&b).is_ok(),
            Out::Bytes(b, Mode::Split) => b.iter().all(|x| w.write_all(&[*x]).is_ok()),
            Out::Bytes(b, Mode::Drip) => {
                let mut ok = true;
                for x in b {
                    if w.write_all(&[x]).is_err() {
                        ok = false;
                        break;
                    }
                    let until = Instant::now() + Duration::from_secs(1);
                    let mut inner = shared.lock();
                    loop {
                        if inner.shutdown || inner.conns[conn].ended {
                            return;
                        }
                        let now = Instant::now();
                        if now >= until {
                            break;
                        }
                        inner = shared.wait_timeout(inner, until - now);
                    }
                }
                ok
            }
            Out::Udp { sock, to, data } => {
                let _ = sock.send_to(&data, to);
                true
            }
            Out::Close => {
                let mut inner = shared.lock();
                end_conn(shared, &mut inner, conn, "closed by the server");
                return;
            }
            Out::Reset => {
                let mut inner = shared.lock();
                reset_stream(&stream);
                end_conn(shared, &mut inner, conn, "reset by the server");
                return;
            }
            Out::HalfClose => {
                let mut inner = shared.lock();
                let _ = stream.shutdown(Shutdown::Write);
                shared.log(&mut inner, format!("conn {conn}: write side shut"));
                true
            }
            Out::StopReading => {
                let mut inner = shared.lock();
                inner.conns[conn].paused = true;
                inner.view.stopped_reading.push(conn);
                shared.log(&mut inner, format!("conn {conn}: stops reading"));
                true
            }
        };
        if !ok {
            let mut inner = shared.lock();
            end_conn(shared, &mut inner, conn, "write failed");
            return;
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    if shared.plan.holds_accept() {
        let mut inner = shared.lock();
        shared.log(&mut inner, "not accepting (backlog full)".into());
        while !inner.shutdown {
            inner = shared.wait_timeout(inner, Duration::from_secs(1));
        }
        return;
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            if shared.lock().shutdown {
                return;
            }
            continue;
        };
        let mut inner = shared.lock();
        if inner.shutdown {
            return;
        }
        let _ = stream.set_nodelay(true);
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let conn = inner.conns.len();
        let session = format!("{:012X}", inner.rng.next_u64() & 0xFFFF_FFFF_FFFF);
        let stream = Arc::new(stream);
        inner.conns.push(Conn {
            stream: stream.clone(),
            peer,
            out: VecDeque::new(),
            paused: false,
            ended: false,
            announce_uri: None,
            setups: Vec::new(),
            udp: Vec::new(),
            rtcp_channels: Vec::new(),
            seen: Vec::new(),
            session,
            session_given: false,
            record_sent: false,
            media: 0,
            next_cseq: 1,
            next_report: None,
            fired: Vec::new(),
        });
        inner.view.connections += 1;
        shared.log(&mut inner, format!("conn {conn}: accepted from {peer}"));
        if shared.plan.profile == Profile::Ffmpeg && conn > 0 {
            // FFmpeg's listener serves one client, once.
            reset_stream(&stream);
            end_conn(&shared, &mut inner, conn, "FFmpeg listens once");
            continue;
        }
        let faults = shared.faults_at(conn, Step::Accept, false);
        if !faults.is_empty() {
            apply(&shared, &mut inner, conn, Step::Accept, None, faults);
        }
        let (s1, s2) = (shared.clone(), shared.clone());
        let (r1, r2) = (stream.clone(), stream);
        spawn(&shared, &mut inner, format!("hostile-r{conn}"), move || {
            reader_loop(&s1, conn, r1)
        });
        spawn(&shared, &mut inner, format!("hostile-w{conn}"), move || {
            writer_loop(&s2, conn, r2)
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Public handle
// ---------------------------------------------------------------------------------------------

pub struct HostileServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
    /// Fills the backlog when the plan holds accept.
    _filler: Option<TcpStream>,
}

impl HostileServer {
    pub fn start(plan: Plan) -> HostileServer {
        let hold = plan.holds_accept();
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let _ = sock.set_reuse_address(true);
        // A small receive buffer, so a server that stops reading blocks the client soon.
        let _ = sock.set_recv_buffer_size(32 * 1024);
        sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind 127.0.0.1:0");
        // Backlog 0 plus one connection of ours that is never accepted: the client's SYN is
        // dropped and its connect hangs, as towards a host that does not answer.
        sock.listen(if hold { 0 } else { 128 }).expect("listen");
        let listener: TcpListener = sock.into();
        let addr = listener.local_addr().expect("local_addr");
        let filler = hold.then(|| TcpStream::connect(addr).expect("fill the backlog"));
        let seed = plan.seed;
        let shared = Arc::new(Shared {
            plan,
            port: addr.port(),
            inner: Mutex::new(Inner {
                shutdown: false,
                conns: Vec::new(),
                view: View::default(),
                rng: Rng::new(seed ^ 0xABCD),
                threads: Vec::new(),
            }),
            cv: Condvar::new(),
            t0: Instant::now(),
        });
        let s2 = shared.clone();
        let accept = thread::Builder::new()
            .name("hostile-accept".into())
            .spawn(move || accept_loop(s2, listener))
            .expect("spawn the accept thread");
        HostileServer {
            shared,
            addr,
            accept: Some(accept),
            _filler: filler,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, path: &str) -> String {
        format!("rtsp://127.0.0.1:{}{path}", self.addr.port())
    }

    pub fn view(&self) -> View {
        self.shared.lock().view.clone()
    }

    /// Waits until `pred` holds or `timeout` passes; returns whether it holds. The predicate
    /// runs under the server's lock: keep it short.
    pub fn wait_for(&self, pred: impl Fn(&View) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        loop {
            if pred(&inner.view) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            inner = self.shared.wait_timeout(inner, deadline - now);
        }
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        {
            let mut inner = self.shared.lock();
            inner.shutdown = true;
            for c in &inner.conns {
                close_stream(&c.stream);
            }
            self.shared.cv.notify_all();
        }
        // Wake accept() with a connection of our own.
        if !self.shared.plan.holds_accept() {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2));
        }
        let _ = accept.join();
        // A reader busy with a SETUP may still start UDP threads: join until none is left.
        loop {
            let threads = std::mem::take(&mut self.shared.lock().threads);
            if threads.is_empty() {
                break;
            }
            for t in threads {
                let _ = t.join();
            }
        }
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
