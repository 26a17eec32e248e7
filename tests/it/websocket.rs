//! RTSP over WebSocket (`rtspws://`), the ONVIF Streaming Specification's transport. No RTSP
//! server installable here speaks it, so the tests put a strict bridge of our own in front of
//! gst-rtsp-server: it accepts the upgrade only with the `rtsp.onvif.org` subprotocol, takes
//! binary messages only, checks that each is exactly one RTSP message or one interleaved frame,
//! and forwards them to gst-rtsp-server's RTSP port (and its answers back, one unit per
//! message). Every frame is then decoded by gst-rtsp-server.

use crate::harness::*;
use crate::record_server::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::Message;

const SUBPROTOCOL: &str = "rtsp.onvif.org";

#[derive(Debug, Default, Clone)]
struct BridgeLog {
    /// Request target and Sec-WebSocket-Protocol of each upgrade.
    upgrades: Vec<(String, String)>,
    /// Messages from the client that were RTSP messages, and interleaved frames.
    rtsp_messages: usize,
    frames: usize,
    /// What broke the transport's rules.
    violations: Vec<String>,
}

struct Bridge {
    serve: Serve,
    log: Arc<Mutex<BridgeLog>>,
}

impl Bridge {
    /// `choose`: answer the upgrade with the subprotocol (a strict server must); `tls`: serve
    /// `rtspwss://`.
    fn start(upstream: u16, choose: bool, tls: Option<Arc<rustls::ServerConfig>>) -> Bridge {
        let log = Arc::new(Mutex::new(BridgeLog::default()));
        let log2 = log.clone();
        let serve = Serve::start(move |c, stop| {
            // Reads time out so that one thread can serve both directions.
            c.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            match &tls {
                None => bridge_one(c, upstream, choose, &log2, stop),
                Some(cfg) => {
                    let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                    let s = rustls::StreamOwned::new(conn, c);
                    bridge_one(s, upstream, choose, &log2, stop)
                }
            }
        });
        Bridge { serve, log }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.serve.port())
    }

    fn log(&self) -> BridgeLog {
        self.log.lock().unwrap().clone()
    }
}

/// The length of the RTSP message or interleaved frame at the start of `b`, if complete.
fn unit_len(b: &[u8]) -> Option<usize> {
    if b.first() == Some(&b'$') {
        let n = 4 + u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize;
        return (b.len() >= n).then_some(n);
    }
    let end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&b[..end]).ok()?;
    let body: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (b.len() >= end + body).then_some(end + body)
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn bridge_one<S: Read + Write>(
    client: S,
    upstream: u16,
    choose: bool,
    log: &Mutex<BridgeLog>,
    stop: &AtomicBool,
) {
    // tungstenite's callback type returns the whole error response.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let asked = req
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        log.lock()
            .unwrap()
            .upgrades
            .push((req.uri().to_string(), asked.clone()));
        if !asked.split(',').any(|p| p.trim() == SUBPROTOCOL) {
            let mut e =
                ErrorResponse::new(Some("the rtsp.onvif.org subprotocol is required".into()));
            *e.status_mut() = tungstenite::http::StatusCode::BAD_REQUEST;
            return Err(e);
        }
        if choose {
            resp.headers_mut()
                .insert("Sec-WebSocket-Protocol", SUBPROTOCOL.parse().unwrap());
        }
        Ok(resp)
    };
    // The handshake sees the read timeouts too: it goes on where it stopped.
    let mut shake = tungstenite::accept_hdr(client, check);
    let mut ws = loop {
        match shake {
            Ok(ws) => break ws,
            Err(tungstenite::HandshakeError::Interrupted(mid)) if !stop.load(Ordering::SeqCst) => {
                shake = mid.handshake()
            }
            Err(_) => return,
        }
    };
    let mut up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
    up.set_nonblocking(true).unwrap();
    let violation = |v: String| log.lock().unwrap().violations.push(v);
    let mut from_server = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match ws.read() {
            Ok(Message::Binary(b)) => {
                match unit_len(&b) {
                    Some(n) if n == b.len() => {
                        let mut l = log.lock().unwrap();
                        if b[0] == b'$' {
                            l.frames += 1
                        } else {
                            l.rtsp_messages += 1
                        }
                    }
                    Some(n) => violation(format!(
                        "a message of {} bytes holds more than one unit ({n})",
                        b.len()
                    )),
                    None => violation(format!(
                        "a message of {} bytes is not a whole unit",
                        b.len()
                    )),
                }
                if up.set_nonblocking(false).is_ok() {
                    let _ = up.write_all(&b);
                    let _ = up.set_nonblocking(true);
                }
            }
            Ok(Message::Text(_)) => violation("a text message".into()),
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if timed_out(&e) => {}
            Err(_) => break,
        }
        match up.read(&mut buf) {
            Ok(0) => {
                let _ = ws.close(None);
                let _ = ws.flush();
                break;
            }
            Ok(n) => {
                from_server.extend_from_slice(&buf[..n]);
                while let Some(n) = unit_len(&from_server) {
                    let unit: Vec<u8> = from_server.drain(..n).collect();
                    if ws.send(Message::Binary(unit.into())).is_err() {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
}

#[test]
fn rtspws_through_a_strict_bridge_every_frame_decoded_by_gst_rtsp_server() {
    let server = RecordServer::start(RecordServerConfig::new("/live/ws", Tracks::H264Aac)).unwrap();
    let bridge = Bridge::start(server.port(), true, None);
    let p = pipeline(&format!(
        "rtspannounce name=sink location={} {} ! sink.sink_0 {} ! sink.sink_1",
        bridge.url("rtspws", "/live/ws"),
        h264_branch(150, "vpay"),
        aac_branch(235, "apay")
    ));
    let out = run(&p, Duration::from_secs(60));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    println!("rtspws:// via the bridge: {report}");
    assert_eq!(
        report.requests_but_keepalives(),
        ["ANNOUNCE", "SETUP", "SETUP", "RECORD", "TEARDOWN"],
        "{report}"
    );
    let v = report.tracks.iter().find(|t| t.is_video()).unwrap();
    let a = report.tracks.iter().find(|t| !t.is_video()).unwrap();
    assert_eq!(v.frames, 150, "{report}");
    assert!(a.frames >= 235, "{report}");
    assert!(report.errors.is_empty(), "{report}");
    let log = bridge.log();
    println!("bridge: {log:?}");
    assert!(log.violations.is_empty(), "{:?}", log.violations);
    assert_eq!(
        log.upgrades,
        [("/live/ws".to_string(), SUBPROTOCOL.to_string())]
    );
    // ANNOUNCE, 2 SETUP, RECORD, TEARDOWN, and any keep-alive: each its own message.
    assert!(log.rtsp_messages >= 5, "{log:?}");
    // Every RTP packet (and our RTCP) was a message of its own.
    let packets: u64 = report.tracks.iter().map(|t| t.packets).sum();
    assert!(
        log.frames as u64 >= packets,
        "{log:?}, {packets} RTP packets received"
    );
}

#[test]
fn a_server_that_does_not_choose_the_subprotocol_is_refused() {
    let server = RecordServer::start(RecordServerConfig::new("/live/ws", Tracks::H264)).unwrap();
    let bridge = Bridge::start(server.port(), false, None);
    let out = push(&format!(
        "{} ! rtspannounce location={} retry-max=0",
        h264_branch(30, "vpay"),
        bridge.url("rtspws", "/live/ws")
    ));
    assert!(!out.eos, "{out:?}");
    let text = out.error_text();
    assert!(
        text.contains("did not accept the rtsp.onvif.org subprotocol"),
        "{text}"
    );
    assert_eq!(bridge.log().frames, 0);
}

#[test]
fn an_rtsp_server_without_websocket_names_the_refusal() {
    // gst-rtsp-server takes an upgrade GET for an HTTP tunnel's GET and refuses it.
    let server = RecordServer::start(RecordServerConfig::new("/live/ws", Tracks::H264)).unwrap();
    let out = push(&format!(
        "{} ! rtspannounce location=rtspws://127.0.0.1:{}/live/ws retry-max=0",
        h264_branch(30, "vpay"),
        server.port()
    ));
    assert!(!out.eos, "{out:?}");
    let text = out.error_text();
    assert!(text.contains("WebSocket"), "{text}");
}

#[test]
fn rtspwss_in_tls_every_frame_decoded() {
    let pki = crate::tls::Pki::new("wss");
    let cert = pki.server_cert(&["localhost", "127.0.0.1"], None);
    let server = RecordServer::start(RecordServerConfig::new("/live/wss", Tracks::H264)).unwrap();
    let bridge = Bridge::start(server.port(), true, Some(cert.rustls_config()));
    let out = push(&format!(
        "{} ! rtspannounce location={} {}",
        h264_branch(90, "vpay"),
        bridge.url("rtspwss", "/live/wss"),
        pki.ca_arg()
    ));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    assert_eq!(report.tracks[0].frames, 90, "{report}");
    let log = bridge.log();
    assert!(log.violations.is_empty(), "{:?}", log.violations);
    assert!(log.frames as u64 >= report.tracks[0].packets, "{log:?}");
}
