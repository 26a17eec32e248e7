//! Self-test of the scripted RTSP RECORD server, driven by a plain `TcpStream` client.

use crate::scripted_server::{Action, Script, ScriptedServer, DEFAULT_GARBAGE, DEFAULT_SESSION_ID};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(2);

const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=Test\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:streamid=0\r\n";
const TRANSPORT0: &str = "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record";

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
enum In {
    /// Status line or request line, headers, body.
    Msg {
        start: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Frame(u8, Vec<u8>),
}

struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
    cseq: u32,
}

impl Client {
    fn connect(srv: &ScriptedServer) -> Client {
        let w = TcpStream::connect(srv.addr()).unwrap();
        w.set_read_timeout(Some(T)).unwrap();
        Client {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
            cseq: 0,
        }
    }

    fn send(&mut self, method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> u32 {
        self.cseq += 1;
        let mut s = format!("{method} {uri} RTSP/1.0\r\nCSeq: {}\r\n", self.cseq);
        for (n, v) in headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() {
            s.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        s.push_str("\r\n");
        let mut b = s.into_bytes();
        b.extend_from_slice(body);
        self.w.write_all(&b).unwrap();
        self.cseq
    }

    fn frame(&mut self, channel: u8, data: &[u8]) {
        let mut b = vec![b'$', channel];
        b.extend_from_slice(&(data.len() as u16).to_be_bytes());
        b.extend_from_slice(data);
        self.w.write_all(&b).unwrap();
    }

    fn read_in(&mut self) -> io::Result<In> {
        let first = self.r.fill_buf()?.first().copied();
        match first {
            None => Err(io::ErrorKind::UnexpectedEof.into()),
            Some(b'$') => {
                let mut h = [0u8; 4];
                self.r.read_exact(&mut h)?;
                let mut d = vec![0u8; u16::from_be_bytes([h[2], h[3]]) as usize];
                self.r.read_exact(&mut d)?;
                Ok(In::Frame(h[1], d))
            }
            Some(_) => {
                let mut start = String::new();
                self.r.read_line(&mut start)?;
                let mut headers = Vec::new();
                loop {
                    let mut l = String::new();
                    if self.r.read_line(&mut l)? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let l = l.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    let (n, v) = l.split_once(':').unwrap();
                    headers.push((n.trim().to_string(), v.trim().to_string()));
                }
                let len = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                self.r.read_exact(&mut body)?;
                Ok(In::Msg {
                    start: start.trim_end().to_string(),
                    headers,
                    body,
                })
            }
        }
    }

    /// Next RTSP response (interleaved frames from the server are skipped).
    fn response(&mut self) -> Resp {
        loop {
            match self.read_in().unwrap() {
                In::Frame(..) => continue,
                In::Msg {
                    start,
                    headers,
                    body,
                } => {
                    assert!(start.starts_with("RTSP/1.0 "), "not a response: {start:?}");
                    let status = start[9..12].parse().unwrap();
                    return Resp {
                        status,
                        headers,
                        body,
                    };
                }
            }
        }
    }

    fn call(&mut self, method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let cseq = self.send(method, uri, headers, body);
        let r = self.response();
        assert_eq!(r.header("cseq"), Some(cseq.to_string().as_str()));
        r
    }

    /// ANNOUNCE + SETUP (channel 0-1) + RECORD, all expected 200.
    fn handshake(&mut self, url: &str) {
        let sdp = [("Content-Type", "application/sdp")];
        assert_eq!(self.call("ANNOUNCE", url, &sdp, SDP.as_bytes()).status, 200);
        let setup = format!("{url}/streamid=0");
        let r = self.call("SETUP", &setup, &[("Transport", TRANSPORT0)], b"");
        assert_eq!(r.status, 200);
        let s = [("Session", DEFAULT_SESSION_ID)];
        assert_eq!(self.call("RECORD", url, &s, b"").status, 200);
    }

    fn expect_eof(&mut self) {
        let mut b = [0u8; 64];
        match self.r.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected EOF, got {other:?}"),
        }
    }
}

#[test]
fn happy_path_records_everything() {
    let srv = ScriptedServer::start(Script::new());
    let url = srv.url("/live/test");
    assert_eq!(url, format!("rtsp://127.0.0.1:{}/live/test", srv.port()));
    let mut c = Client::connect(&srv);

    let r = c.call(
        "ANNOUNCE",
        &url,
        &[("Content-Type", "application/sdp"), ("User-Agent", "t")],
        SDP.as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("session"), None);

    let r = c.call(
        "SETUP",
        &format!("{url}/streamid=0"),
        &[("transport", TRANSPORT0)],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Transport"), Some(TRANSPORT0));
    assert_eq!(
        r.header("Session").unwrap(),
        format!("{DEFAULT_SESSION_ID};timeout=60")
    );

    let r = c.call("RECORD", &url, &[("Session", DEFAULT_SESSION_ID)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("RTP-Info").unwrap(),
        format!("url={url}/streamid=0")
    );
    assert!(r.body.is_empty());

    for i in 0..3u8 {
        c.frame(i % 2, &[0x80, 96, 0, i, 1, 2, 3]);
    }
    let r = c.call("TEARDOWN", &url, &[("Session", DEFAULT_SESSION_ID)], b"");
    assert_eq!(r.status, 200);
    drop(c);
    assert!(srv.wait_closed(T));

    let s = srv.snapshot();
    assert_eq!(s.methods(), ["ANNOUNCE", "SETUP", "RECORD", "TEARDOWN"]);
    let a = &s.requests[0];
    assert_eq!(a.uri, url);
    assert_eq!(a.version, "RTSP/1.0");
    assert_eq!(a.header("content-type"), Some("application/sdp"));
    assert_eq!(a.header("USER-AGENT"), Some("t"));
    assert_eq!(a.body_str(), SDP);
    assert_eq!(a.cseq(), Some(1));
    assert_eq!(s.requests[3].cseq(), Some(4));
    assert_eq!(s.frames.len(), 3);
    for (i, f) in s.frames.iter().enumerate() {
        assert_eq!(f.channel, i as u8 % 2);
        assert_eq!(f.data, [0x80, 96, 0, i as u8, 1, 2, 3]);
        assert_eq!(f.len, 7);
        assert!(f.after_record);
        assert_eq!(f.conn, 0);
    }
    assert_eq!(s.frames_on(0).len(), 2);
    assert_eq!(s.connection_count(), 1);
    let ci = &s.connections[0];
    assert!(ci.record_sent && ci.closed_by_client && !ci.closed_by_server && ci.ended);
    assert!(s.protocol_errors.is_empty());
    assert_eq!(srv.requests().len(), 4);
    assert_eq!(srv.frames().len(), 3);
}

#[test]
fn options_get_parameter_and_unknown() {
    let srv = ScriptedServer::start(Script::new());
    let mut c = Client::connect(&srv);
    let url = srv.url("/x");
    let r = c.call("OPTIONS", &url, &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("public").unwrap().contains("ANNOUNCE"));
    assert_eq!(c.call("GET_PARAMETER", &url, &[], b"").status, 200);
    assert_eq!(c.call("PLAY", &url, &[], b"").status, 501);
    assert_eq!(
        c.call("SETUP", &url, &[("Transport", TRANSPORT0)], b"")
            .status,
        455
    );
    assert_eq!(c.call("ANNOUNCE", &url, &[], b"").status, 400);
    // CSeq echoed verbatim, even odd ones.
    c.w.write_all(b"OPTIONS * RTSP/1.0\r\ncseq:  0042 \r\n\r\n")
        .unwrap();
    assert_eq!(c.response().header("CSeq"), Some("0042"));
}

#[test]
fn session_on_announce_content_base_ssrc_session_id() {
    let srv = ScriptedServer::start(
        Script::new()
            .session_on_announce(true)
            .session_id("abc123")
            .session_timeout(Some(5))
            .content_base("rtsp://127.0.0.1/base/")
            .setup_ssrc("00000000"),
    );
    let mut c = Client::connect(&srv);
    let url = srv.url("/x");
    let r = c.call("ANNOUNCE", &url, &[], SDP.as_bytes());
    assert_eq!(r.header("session"), Some("abc123;timeout=5"));
    assert_eq!(r.header("content-base"), Some("rtsp://127.0.0.1/base/"));
    let r = c.call("SETUP", &url, &[("Transport", TRANSPORT0)], b"");
    assert_eq!(
        r.header("transport").unwrap(),
        format!("{TRANSPORT0};ssrc=00000000")
    );
    assert_eq!(r.header("session"), Some("abc123;timeout=5"));
}

#[test]
fn respond_status_with_times_and_headers() {
    let srv = ScriptedServer::start(
        Script::new()
            .respond_status("ANNOUNCE", 406, "Not Acceptable")
            .times(1)
            .respond_with_headers(
                "SETUP",
                401,
                "Unauthorized",
                &[("WWW-Authenticate", "Basic realm=\"x\"")],
            )
            .on_connection(0)
            .extra_header("*", "X-All", "1")
            .extra_header("setup", "X-Setup", "2"),
    );
    let url = srv.url("/x");
    let mut c = Client::connect(&srv);
    let r = c.call("ANNOUNCE", &url, &[], SDP.as_bytes());
    assert_eq!(r.status, 406);
    assert_eq!(r.header("x-all"), Some("1"));
    assert_eq!(c.call("ANNOUNCE", &url, &[], SDP.as_bytes()).status, 200);
    let r = c.call("SETUP", &url, &[("Transport", TRANSPORT0)], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"x\""));
    assert_eq!(r.header("x-setup"), Some("2"));
    drop(c);
    // The 401 rule is limited to connection 0.
    let mut c = Client::connect(&srv);
    c.handshake(&url);
    assert_eq!(srv.connection_count(), 2);
    assert_eq!(
        srv.snapshot().methods_on(1),
        ["ANNOUNCE", "SETUP", "RECORD"]
    );
}

#[test]
fn custom_action_checks_authorization() {
    let srv = ScriptedServer::start(Script::new().custom("ANNOUNCE", |req| {
        if req.header("authorization") == Some("Basic dTpw") {
            Action::Normal
        } else {
            Action::status(401, "Unauthorized").with_header("WWW-Authenticate", "Basic realm=\"r\"")
        }
    }));
    let url = srv.url("/x");
    let mut c = Client::connect(&srv);
    assert_eq!(c.call("ANNOUNCE", &url, &[], SDP.as_bytes()).status, 401);
    let auth = [("Authorization", "Basic dTpw")];
    assert_eq!(c.call("ANNOUNCE", &url, &auth, SDP.as_bytes()).status, 200);
}

#[test]
fn never_answer_keeps_socket_open() {
    let srv = ScriptedServer::start(Script::new().never_answer("SETUP"));
    let url = srv.url("/x");
    let mut c = Client::connect(&srv);
    assert_eq!(c.call("ANNOUNCE", &url, &[], SDP.as_bytes()).status, 200);
    c.send("SETUP", &url, &[("Transport", TRANSPORT0)], b"");
    // The next answer the client gets is the OPTIONS one: SETUP was never answered, and the
    // connection is still open.
    let cseq = c.send("OPTIONS", &url, &[], b"");
    let r = c.response();
    assert_eq!(r.header("cseq"), Some(cseq.to_string().as_str()));
    assert_eq!(srv.snapshot().methods(), ["ANNOUNCE", "SETUP", "OPTIONS"]);
    assert!(!srv.connections()[0].ended);
}

#[test]
fn garbage_answers() {
    let srv = ScriptedServer::start(
        Script::new()
            .garbage("ANNOUNCE")
            .garbage_bytes("OPTIONS", &[0, 0xff, 0x13, 0x37]),
    );
    let mut c = Client::connect(&srv);
    c.send("ANNOUNCE", &srv.url("/x"), &[], SDP.as_bytes());
    let mut b = vec![0u8; DEFAULT_GARBAGE.len()];
    c.r.read_exact(&mut b).unwrap();
    assert_eq!(b, DEFAULT_GARBAGE);
    c.send("OPTIONS", "*", &[], b"");
    let mut b = [0u8; 4];
    c.r.read_exact(&mut b).unwrap();
    assert_eq!(b, [0, 0xff, 0x13, 0x37]);
}

#[test]
fn close_on_record() {
    let srv = ScriptedServer::start(Script::new().close_on("RECORD"));
    let url = srv.url("/x");
    let mut c = Client::connect(&srv);
    c.call("ANNOUNCE", &url, &[], SDP.as_bytes());
    c.call("SETUP", &url, &[("Transport", TRANSPORT0)], b"");
    c.send("RECORD", &url, &[], b"");
    c.expect_eof();
    assert!(srv.wait_for(|s| s.connections[0].ended, T));
    let ci = &srv.connections()[0];
    assert!(ci.closed_by_server && !ci.closed_by_client && !ci.record_sent);
    assert!(!srv.wait_closed(Duration::ZERO));
}

#[test]
fn delay_and_after_record_flag() {
    let d = Duration::from_millis(100);
    let srv = ScriptedServer::start(Script::new().delay("SETUP", d).delay("RECORD", d));
    let url = srv.url("/x");
    let mut c = Client::connect(&srv);
    c.call("ANNOUNCE", &url, &[], SDP.as_bytes());
    let t0 = Instant::now();
    assert_eq!(
        c.call("SETUP", &url, &[("Transport", TRANSPORT0)], b"")
            .status,
        200
    );
    assert!(t0.elapsed() >= d);
    // A frame sent while RECORD's answer is delayed is recorded as early.
    let cseq = c.send("RECORD", &url, &[], b"");
    c.frame(0, b"early");
    assert!(srv.wait_frames(1, T));
    assert_eq!(c.response().header("cseq"), Some(cseq.to_string().as_str()));
    c.frame(0, b"late");
    assert!(srv.wait_frames(2, T));
    let f = srv.frames();
    assert!(!f[0].after_record && f[0].data == b"early");
    assert!(f[1].after_record && f[1].data == b"late");
}

#[test]
fn transport_override_per_setup() {
    let srv = ScriptedServer::start(
        Script::new()
            .transport_override("RTP/AVP/TCP;unicast;interleaved=6-7")
            .transport_override("RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001"),
    );
    let url = srv.url("/x");
    let mut c = Client::connect(&srv);
    c.call("ANNOUNCE", &url, &[], SDP.as_bytes());
    let r = c.call("SETUP", &url, &[("Transport", TRANSPORT0)], b"");
    assert_eq!(
        r.header("transport"),
        Some("RTP/AVP/TCP;unicast;interleaved=6-7")
    );
    let r = c.call("SETUP", &url, &[("Transport", TRANSPORT0)], b"");
    assert!(r
        .header("transport")
        .unwrap()
        .contains("server_port=6000-6001"));
    let r = c.call("SETUP", &url, &[("Transport", TRANSPORT0)], b"");
    assert!(r
        .header("transport")
        .unwrap()
        .contains("server_port=6000-6001"));
    let r = c.call("RECORD", &url, &[], b"");
    assert_eq!(r.header("rtp-info").unwrap().matches("url=").count(), 3);
}

#[test]
fn stop_reading_after_record_backpressures() {
    let srv = ScriptedServer::start(
        Script::new()
            .stop_reading_after_record()
            .keep_frame_data(false),
    );
    let url = srv.url("/x");
    let mut c = Client::connect(&srv);
    c.handshake(&url);
    c.w.set_nonblocking(true).unwrap();
    let payload = vec![0u8; 60_000];
    let mut frame = vec![b'$', 0];
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&payload);
    // Write until the kernel buffers are full.
    let mut written = 0usize;
    let mut blocked = false;
    for _ in 0..2000 {
        match c.w.write(&frame[written % frame.len()..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                blocked = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(blocked, "the server kept reading ({written} bytes written)");
    assert_eq!(srv.frame_count(), 0);
    // Finish the partial frame, then let the server drain.
    c.w.set_nonblocking(false).unwrap();
    let rest = (frame.len() - written % frame.len()) % frame.len();
    srv.resume_reading();
    c.w.write_all(&frame[frame.len() - rest..]).unwrap();
    let frames = (written + rest) / frame.len();
    assert!(srv.wait_frames(frames, T));
    let f = srv.frames();
    assert!(f
        .iter()
        .all(|f| f.len == 60_000 && f.data.is_empty() && f.after_record));
}

#[test]
fn requests_to_the_client() {
    let srv = ScriptedServer::start(
        Script::new()
            .request_after_record("OPTIONS")
            .request_after_record("GET_PARAMETER"),
    );
    let url = srv.url("/x");
    let mut c = Client::connect(&srv);
    c.handshake(&url);
    for want in ["OPTIONS", "GET_PARAMETER"] {
        let In::Msg { start, headers, .. } = c.read_in().unwrap() else {
            panic!("expected a request");
        };
        assert_eq!(start, format!("{want} {url} RTSP/1.0"));
        let cseq = &headers.iter().find(|(n, _)| n == "CSeq").unwrap().1;
        let sess = &headers.iter().find(|(n, _)| n == "Session").unwrap().1;
        assert_eq!(sess, DEFAULT_SESSION_ID);
        let reply = format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Length: 2\r\n\r\nok");
        c.w.write_all(reply.as_bytes()).unwrap();
    }
    // Requests sent on demand, and interleaved data from the server.
    let cseq = srv.send_request("SET_PARAMETER").unwrap();
    assert_eq!(cseq, 3);
    assert!(srv.send_interleaved(1, &[0x80, 201, 0, 1]));
    let In::Msg { start, .. } = c.read_in().unwrap() else {
        panic!("expected a request");
    };
    assert!(start.starts_with("SET_PARAMETER "));
    c.w.write_all(b"RTSP/1.0 451 Parameter Not Understood\r\nCSeq: 3\r\n\r\n")
        .unwrap();
    match c.read_in().unwrap() {
        In::Frame(1, d) => assert_eq!(d, [0x80, 201, 0, 1]),
        other => panic!("expected a frame, got {other:?}"),
    }
    assert!(srv.wait_responses(3, T));
    let r = srv.responses();
    assert_eq!(
        (r[0].status, r[0].cseq(), r[0].body.as_slice()),
        (200, Some(1), &b"ok"[..])
    );
    assert_eq!(r[1].cseq(), Some(2));
    assert_eq!(
        (r[2].status, r[2].reason.as_str()),
        (451, "Parameter Not Understood")
    );
}

#[test]
fn early_media_closes_when_asked() {
    let srv = ScriptedServer::start(Script::new().close_on_early_media());
    let url = srv.url("/x");
    let mut c = Client::connect(&srv);
    c.call("ANNOUNCE", &url, &[], SDP.as_bytes());
    c.frame(0, b"too early");
    c.expect_eof();
    assert!(srv.wait_for(|s| s.connections[0].ended, T));
    let s = srv.snapshot();
    assert_eq!(s.frames.len(), 1);
    assert!(!s.frames[0].after_record);
    assert!(s.connections[0].closed_by_server);
    assert_eq!(s.protocol_errors.len(), 1);
}

#[test]
fn strict_session() {
    let srv = ScriptedServer::start(Script::new().strict_session());
    let url = srv.url("/x");
    let mut c = Client::connect(&srv);
    c.call("ANNOUNCE", &url, &[], SDP.as_bytes());
    c.call("SETUP", &url, &[("Transport", TRANSPORT0)], b"");
    let with_params = format!("{DEFAULT_SESSION_ID};timeout=60");
    assert_eq!(
        c.call("RECORD", &url, &[("Session", &with_params)], b"")
            .status,
        454
    );
    assert_eq!(c.call("RECORD", &url, &[], b"").status, 454);
    assert_eq!(
        c.call("RECORD", &url, &[("Session", DEFAULT_SESSION_ID)], b"")
            .status,
        200
    );
}

#[test]
fn malformed_input_closes_connection_and_server_survives() {
    let srv = ScriptedServer::start(Script::new());
    let inputs: [&[u8]; 5] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 binary\n\n",
        b"HELLO\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nno colon here\r\n\r\n",
        b"ANNOUNCE * RTSP/1.0\r\nContent-Length: -5\r\n\r\n",
        b"RTSP/1.0 abc\r\n\r\n",
    ];
    for (i, input) in inputs.iter().enumerate() {
        let mut c = Client::connect(&srv);
        c.w.write_all(input).unwrap();
        c.expect_eof();
        assert!(srv.wait_for(|s| s.protocol_errors.len() > i, T));
    }
    // Oversized head.
    let mut c = Client::connect(&srv);
    let big = format!("OPTIONS * RTSP/1.0\r\nX: {}\r\n\r\n", "a".repeat(70_000));
    let _ = c.w.write_all(big.as_bytes());
    c.expect_eof();
    assert!(srv.wait_for(|s| s.protocol_errors.len() == 6, T));
    // Truncated frame then EOF: just a client close.
    let mut c = Client::connect(&srv);
    c.w.write_all(b"$\x00\x10\x00abc").unwrap();
    drop(c);
    assert!(srv.wait_closed(T));
    // Still serving.
    let mut c = Client::connect(&srv);
    c.handshake(&srv.url("/x"));
    assert_eq!(srv.connection_count(), 8);
    assert_eq!(srv.snapshot().protocol_errors.len(), 6);
}

#[test]
fn sequence_of_connections_and_drop_connection() {
    let srv = ScriptedServer::start(Script::new());
    let url = srv.url("/x");
    let mut c1 = Client::connect(&srv);
    c1.handshake(&url);
    assert!(srv.drop_connection());
    c1.expect_eof();
    let mut c2 = Client::connect(&srv);
    c2.handshake(&url);
    c2.frame(0, b"x");
    assert!(srv.wait_frames(1, T));
    let s = srv.snapshot();
    assert_eq!(s.connection_count(), 2);
    assert!(s.connections[0].closed_by_server);
    assert_eq!(s.frames[0].conn, 1);
    assert_eq!(s.requests.iter().filter(|r| r.conn == 1).count(), 3);
    assert_eq!(s.count("record"), 2);
    assert_eq!(s.last("ANNOUNCE").unwrap().conn, 1);
}

#[test]
fn drop_returns_promptly_with_stuck_connections() {
    let srv = ScriptedServer::start(
        Script::new()
            .stop_reading_after_record()
            .never_answer("OPTIONS")
            .delay("GET_PARAMETER", Duration::from_secs(30)),
    );
    let url = srv.url("/x");
    let mut c1 = Client::connect(&srv);
    c1.handshake(&url);
    let mut c2 = Client::connect(&srv);
    c2.send("OPTIONS", &url, &[], b"");
    let mut c3 = Client::connect(&srv);
    c3.send("GET_PARAMETER", &url, &[], b"");
    let _idle = Client::connect(&srv);
    assert!(srv.wait_connections(4, T));
    assert!(srv.wait_requests("GET_PARAMETER", 1, T));
    let t0 = Instant::now();
    srv.stop();
    assert!(t0.elapsed() < Duration::from_secs(1));
    c1.expect_eof();
    c2.expect_eof();
    c3.expect_eof();
}
