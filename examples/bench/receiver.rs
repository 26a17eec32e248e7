//! The drain receiver: a minimal RTSP RECORD server on 127.0.0.1 (port chosen by the OS) that
//! answers OPTIONS / ANNOUNCE / SETUP / RECORD / GET_PARAMETER / SET_PARAMETER / TEARDOWN, reads
//! interleaved frames in 1 MiB reads, counts frames and bytes per channel and checks RTP
//! sequence continuity per SSRC. One thread (a current-thread tokio runtime) serves every
//! connection, the same for every contender.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sequence state of one SSRC.
#[derive(Clone, Debug, Default)]
pub struct SeqState {
    next: u16,
    pub packets: u64,
    /// Sum of forward sequence jumps: packets that never arrived.
    pub lost: u64,
    /// Packets whose sequence number went backwards (duplicates, reordering).
    pub backwards: u64,
}

/// What one connection did. Snapshots are cloned out of the receiver.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: u64,
    /// Path of the first request (ANNOUNCE's when there is one), without query.
    pub path: String,
    pub accepted: Instant,
    pub announce: Option<Instant>,
    /// When RECORD's 200 was written.
    pub record_ok: Option<Instant>,
    /// Requests received up to and including RECORD.
    pub methods: Vec<String>,
    /// When each of `methods` arrived (complete).
    pub request_times: Vec<Instant>,
    /// channel -> (frames, bytes)
    pub channels: BTreeMap<u8, (u64, u64)>,
    pub ssrc: HashMap<u32, SeqState>,
    pub rtp_packets: u64,
    /// RTP bytes (RTP header + payload, without the 4-byte interleave header).
    pub rtp_bytes: u64,
    pub rtcp_packets: u64,
    pub bad_packets: u64,
    pub first_packet: Option<Instant>,
    pub last_packet: Option<Instant>,
    pub teardown: bool,
    pub closed: Option<Instant>,
    pub error: Option<String>,
    /// (channel, CLOCK_MONOTONIC ns, RTP timestamp) of every packet with the marker bit (the
    /// last of an access unit), when its last byte was read: for the latency figures.
    pub markers: Vec<(u8, u64, u32)>,
}

impl Session {
    fn new(id: u64, accepted: Instant) -> Self {
        Session {
            id,
            path: String::new(),
            accepted,
            announce: None,
            record_ok: None,
            methods: Vec::new(),
            request_times: Vec::new(),
            channels: BTreeMap::new(),
            ssrc: HashMap::new(),
            rtp_packets: 0,
            rtp_bytes: 0,
            rtcp_packets: 0,
            bad_packets: 0,
            first_packet: None,
            last_packet: None,
            teardown: false,
            closed: None,
            error: None,
            markers: Vec::new(),
        }
    }

    pub fn lost(&self) -> u64 {
        self.ssrc.values().map(|s| s.lost).sum()
    }

    pub fn backwards(&self) -> u64 {
        self.ssrc.values().map(|s| s.backwards).sum()
    }

    /// TCP accept to RECORD 200.
    pub fn handshake(&self) -> Option<Duration> {
        Some(self.record_ok?.duration_since(self.accepted))
    }

    /// ANNOUNCE received to RECORD 200.
    pub fn announce_to_record(&self) -> Option<Duration> {
        Some(self.record_ok?.duration_since(self.announce?))
    }

    /// `METHOD@ms` since accept for every request up to RECORD, and `200@ms` for RECORD's answer.
    pub fn timeline(&self) -> String {
        let ms = |t: Instant| t.duration_since(self.accepted).as_secs_f64() * 1e3;
        let mut v: Vec<String> = self
            .methods
            .iter()
            .zip(&self.request_times)
            .map(|(m, t)| format!("{m}@{:.2}", ms(*t)))
            .collect();
        if let Some(t) = self.record_ok {
            v.push(format!("200@{:.2}", ms(t)));
        }
        v.join(" ")
    }

    /// First to last RTP packet.
    pub fn stream_span(&self) -> Option<Duration> {
        Some(self.last_packet?.duration_since(self.first_packet?))
    }

    fn on_frame(&mut self, conn: &ConnState, ch: u8, pkt: &[u8], now: Instant) {
        let e = self.channels.entry(ch).or_default();
        e.0 += 1;
        e.1 += pkt.len() as u64;
        let rtcp = if conn.rtp_channels.contains(&ch) {
            false
        } else {
            conn.rtcp_channels.contains(&ch) || ch % 2 == 1
        };
        if rtcp {
            self.rtcp_packets += 1;
            return;
        }
        if pkt.len() < 12 || pkt[0] >> 6 != 2 {
            self.bad_packets += 1;
            return;
        }
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        self.rtp_packets += 1;
        self.rtp_bytes += pkt.len() as u64;
        if self.first_packet.is_none() {
            self.first_packet = Some(now);
        }
        self.last_packet = Some(now);
        if pkt[1] & 0x80 != 0 {
            let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
            self.markers.push((ch, crate::proc::mono_ns(), ts));
        }
        match self.ssrc.get_mut(&ssrc) {
            None => {
                self.ssrc.insert(
                    ssrc,
                    SeqState {
                        next: seq.wrapping_add(1),
                        packets: 1,
                        ..Default::default()
                    },
                );
            }
            Some(s) => {
                s.packets += 1;
                if seq != s.next {
                    let jump = seq.wrapping_sub(s.next);
                    if jump < 0x8000 {
                        s.lost += jump as u64;
                    } else {
                        s.backwards += 1;
                        return;
                    }
                }
                s.next = seq.wrapping_add(1);
            }
        }
    }
}

#[derive(Default)]
struct ConnState {
    session_id: Option<String>,
    rtp_channels: Vec<u8>,
    rtcp_channels: Vec<u8>,
    next_channel: u8,
}

type Registry = Arc<Mutex<Vec<Arc<Mutex<Session>>>>>;

pub struct Receiver {
    pub port: u16,
    sessions: Registry,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    pub fn start() -> Result<Receiver> {
        // A backlog for a thousand sessions connecting at once (std's is 128): a full accept
        // queue drops SYNs, and the clients' retransmissions then add whole seconds to their
        // handshakes, which is the receiver's doing, not theirs.
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .context("bind 127.0.0.1:0")?;
        sock.listen(4096)?;
        let std_listener: std::net::TcpListener = sock.into();
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let sessions: Registry = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reg = sessions.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("drain-receiver".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    let mut rx = rx;
                    let mut next_id = 0u64;
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            acc = listener.accept() => {
                                let Ok((stream, _)) = acc else { continue };
                                next_id += 1;
                                let s = Arc::new(Mutex::new(Session::new(next_id, Instant::now())));
                                reg.lock().unwrap().push(s.clone());
                                tokio::spawn(serve(stream, s));
                            }
                        }
                    }
                });
                // Dropping the runtime here cancels every connection task.
            })?;
        Ok(Receiver {
            port,
            sessions,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("rtsp://127.0.0.1:{}{}", self.port, path)
    }

    /// Snapshots of the sessions whose path starts with `prefix`.
    pub fn sessions(&self, prefix: &str) -> Vec<Session> {
        let all: Vec<_> = self.sessions.lock().unwrap().clone();
        all.iter()
            .map(|s| s.lock().unwrap())
            .filter(|s| s.path.starts_with(prefix))
            .map(|s| s.clone())
            .collect()
    }

    /// Sum of RTP bytes received so far on the sessions under `prefix` (cheaper than snapshots).
    pub fn rtp_bytes(&self, prefix: &str) -> (u64, u64) {
        let all: Vec<_> = self.sessions.lock().unwrap().clone();
        all.iter()
            .map(|s| s.lock().unwrap())
            .filter(|s| s.path.starts_with(prefix))
            .fold((0, 0), |(b, p), s| (b + s.rtp_bytes, p + s.rtp_packets))
    }

    /// Sessions under `prefix` that answered RECORD and got at least one RTP packet.
    pub fn streaming(&self, prefix: &str) -> usize {
        let all: Vec<_> = self.sessions.lock().unwrap().clone();
        all.iter()
            .map(|s| s.lock().unwrap())
            .filter(|s| s.path.starts_with(prefix) && s.record_ok.is_some() && s.rtp_packets > 0)
            .count()
    }

    /// Waits until every session under `prefix` has closed its connection.
    pub fn wait_closed(&self, prefix: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.sessions(prefix).iter().all(|s| s.closed.is_some()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Forgets the sessions under `prefix` (keeps memory flat over many runs).
    pub fn forget(&self, prefix: &str) {
        self.sessions
            .lock()
            .unwrap()
            .retain(|s| !s.lock().unwrap().path.starts_with(prefix));
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const READ_SIZE: usize = 1 << 20;
const BUF_SIZE: usize = 4 << 20;
const MAX_HEADER: usize = 64 << 10;

async fn serve(mut stream: TcpStream, shared: Arc<Mutex<Session>>) {
    let _ = stream.set_nodelay(true);
    let mut conn = ConnState::default();
    let mut buf = vec![0u8; BUF_SIZE];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out = Vec::with_capacity(1024);
    let result: Result<(), String> = loop {
        if BUF_SIZE - end < READ_SIZE {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let n = match stream.read(&mut buf[end..]).await {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(format!("read: {e}")),
        };
        end += n;
        let now = Instant::now();
        let parsed = {
            let mut s = shared.lock().unwrap();
            process(&buf[start..end], now, &mut s, &mut conn, &mut out)
        };
        match parsed {
            Ok(used) => start += used,
            Err(e) => break Err(e),
        }
        if start == end {
            start = 0;
            end = 0;
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                break Err(format!("write: {e}"));
            }
            out.clear();
        }
    };
    let mut s = shared.lock().unwrap();
    s.closed = Some(Instant::now());
    match result {
        // a client that closes right after TEARDOWN may reset the connection: not an error
        Err(_) if s.teardown => {}
        Err(e) => s.error = Some(e),
        Ok(()) => {}
    }
}

/// Consumes every complete frame and message in `data`; returns how many bytes were used.
fn process(
    data: &[u8],
    now: Instant,
    s: &mut Session,
    conn: &mut ConnState,
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        if rest[0] == b'$' {
            if rest.len() < 4 {
                break;
            }
            let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
            if rest.len() < 4 + len {
                break;
            }
            s.on_frame(conn, rest[1], &rest[4..4 + len], now);
            pos += 4 + len;
            continue;
        }
        if !rest[0].is_ascii_alphabetic() {
            return Err(format!("garbage byte {:#04x} outside a message", rest[0]));
        }
        let Some((head_len, body_start)) = header_end(rest) else {
            if rest.len() > MAX_HEADER {
                return Err("header too long".into());
            }
            break;
        };
        let head = std::str::from_utf8(&rest[..head_len]).map_err(|_| "non-UTF-8 header")?;
        let mut lines = head.lines();
        let first = lines.next().unwrap_or("");
        let mut headers: Vec<(String, String)> = Vec::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        let body_len: usize = get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if rest.len() < body_start + body_len {
            break;
        }
        pos += body_start + body_len;
        if first.starts_with("RTSP/") {
            continue; // a response to nothing we asked: ignore
        }
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let uri = parts.next().unwrap_or("").to_string();
        let cseq = get("cseq").unwrap_or("0").to_string();
        if s.record_ok.is_none() {
            s.methods.push(method.clone());
            s.request_times.push(now);
        }
        if (s.path.is_empty() || method == "ANNOUNCE") && uri != "*" {
            s.path = uri_path(&uri);
        }
        let mut extra = String::new();
        let mut status = "200 OK";
        match method.as_str() {
            "OPTIONS" => extra.push_str(
                "Public: OPTIONS, ANNOUNCE, SETUP, RECORD, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER\r\n",
            ),
            "ANNOUNCE" => s.announce = Some(now),
            "SETUP" => match setup_transport(get("transport").unwrap_or(""), conn) {
                Some(t) => {
                    let id = conn
                        .session_id
                        .get_or_insert_with(|| format!("{:08X}", s.id * 7919 + 12345));
                    extra.push_str(&format!("Transport: {t}\r\nSession: {id};timeout=60\r\n"));
                }
                None => status = "461 Unsupported Transport",
            },
            "RECORD" | "PAUSE" | "GET_PARAMETER" | "SET_PARAMETER" | "TEARDOWN" => {
                if method == "TEARDOWN" {
                    s.teardown = true;
                }
            }
            _ => status = "501 Not Implemented",
        }
        if method != "SETUP" && method != "OPTIONS" {
            if let Some(id) = &conn.session_id {
                extra.push_str(&format!("Session: {id}\r\n"));
            }
        }
        out.extend_from_slice(
            format!("RTSP/1.0 {status}\r\nCSeq: {cseq}\r\nServer: bench-drain\r\n{extra}\r\n")
                .as_bytes(),
        );
        if method == "RECORD" && status.starts_with("200") && s.record_ok.is_none() {
            s.record_ok = Some(Instant::now());
        }
    }
    Ok(pos)
}

/// (length of the head without the blank line, offset of the body)
fn header_end(b: &[u8]) -> Option<(usize, usize)> {
    let lim = b.len().min(MAX_HEADER + 4);
    for i in 0..lim {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
    }
    None
}

fn uri_path(uri: &str) -> String {
    let no_scheme = uri.split_once("://").map(|(_, r)| r).unwrap_or(uri);
    let path = no_scheme.find('/').map(|i| &no_scheme[i..]).unwrap_or("/");
    path.split('?').next().unwrap_or(path).to_string()
}

/// Picks the first TCP alternative of a Transport request and answers it with the channels the
/// client asked for (or the next free pair), echoing its other parameters (`mode=record`,
/// `mode=RECORD`, `mode="RECORD"`, ssrc...) as written.
fn setup_transport(req: &str, conn: &mut ConnState) -> Option<String> {
    for alt in req.split(',') {
        let alt = alt.trim();
        let mut params = alt.split(';');
        let proto = params.next()?.trim();
        if !proto.to_ascii_uppercase().contains("/TCP") {
            continue;
        }
        let mut out = vec![proto.to_string()];
        let mut chans = None;
        for p in params {
            let p = p.trim();
            if let Some(v) = p.strip_prefix("interleaved=") {
                let (a, b) = v.split_once('-').unwrap_or((v, ""));
                let a: u8 = a.trim().parse().ok()?;
                let b: u8 = b.trim().parse().unwrap_or(a.wrapping_add(1));
                chans = Some((a, b));
            } else if !p.starts_with("client_port") && !p.is_empty() {
                out.push(p.to_string());
            }
        }
        let (a, b) = chans.unwrap_or((conn.next_channel, conn.next_channel.wrapping_add(1)));
        conn.next_channel = conn.next_channel.max(b.wrapping_add(1));
        conn.rtp_channels.push(a);
        conn.rtcp_channels.push(b);
        out.push(format!("interleaved={a}-{b}"));
        return Some(out.join(";"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports() {
        let mut c = ConnState::default();
        assert_eq!(
            setup_transport("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record", &mut c).unwrap(),
            "RTP/AVP/TCP;unicast;mode=record;interleaved=0-1"
        );
        assert_eq!(
            setup_transport(
                "RTP/AVP;unicast;client_port=5000-5001,RTP/AVP/TCP;unicast;mode=\"RECORD\"",
                &mut c
            )
            .unwrap(),
            "RTP/AVP/TCP;unicast;mode=\"RECORD\";interleaved=2-3"
        );
        assert!(setup_transport("RTP/AVP;unicast;client_port=5000-5001", &mut c).is_none());
    }
}
