//! RTSP over HTTP tunnels (`rtsph://`, `rtspsh://`, the `http` flag of `protocols`) into
//! gst-rtsp-server, which serves them on its RTSP port: every frame decoded, with and without
//! authentication, over TLS, through an HTTP proxy; and the refusals (a POST refused after the
//! GET was answered, a GET refused, a proxy that wants credentials) as errors naming the cause.

use crate::harness::*;
use crate::record_server::*;
use crate::tls::Pki;
use gst_rtsp_server::gst_rtsp::RTSPAuthMethod;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const FRAMES: u32 = 60;

/// `rtsp://` of the server as `scheme://`.
fn with_scheme(url: &str, scheme: &str) -> String {
    let (_, rest) = url.split_once("://").unwrap();
    format!("{scheme}://{rest}")
}

fn push_frames(location: &str, extra: &str) -> Outcome {
    push(&format!(
        "{} ! rtspannounce location={location} {extra}",
        h264_branch(FRAMES, "vpay")
    ))
}

fn assert_every_frame(what: &str, out: &Outcome, server: &RecordServer) -> Report {
    assert!(out.eos, "{what}: {out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    println!("{what}: {report}");
    assert_eq!(
        report.requests_but_keepalives(),
        ["ANNOUNCE", "SETUP", "RECORD", "TEARDOWN"],
        "{what}: {report}"
    );
    assert_eq!(report.tracks[0].frames, FRAMES as u64, "{what}: {report}");
    assert!(report.errors.is_empty(), "{what}: {report}");
    report
}

#[test]
fn rtsph_to_gst_rtsp_server_every_frame_decoded() {
    let server = RecordServer::start(RecordServerConfig::new("/live/h", Tracks::H264)).unwrap();
    let out = push_frames(&with_scheme(&server.url(), "rtsph"), "");
    assert_every_frame("rtsph://", &out, &server);
}

#[test]
fn the_http_flag_tunnels_an_rtsp_location() {
    let server = RecordServer::start(RecordServerConfig::new("/live/f", Tracks::H264)).unwrap();
    let p = pipeline(&format!(
        "{} ! rtspannounce name=sink location={} protocols=tcp+http",
        h264_branch(FRAMES, "vpay"),
        server.url()
    ));
    // The stats while recording: the transport inside the tunnel is TCP interleaved.
    let stats = Arc::new(Mutex::new(None));
    let s2 = stats.clone();
    let out = run_with(
        &p,
        Duration::from_secs(60),
        move |sink_stats: gst::Structure| *s2.lock().unwrap() = Some(sink_stats),
    );
    assert_every_frame("protocols=tcp+http", &out, &server);
    let stats = stats
        .lock()
        .unwrap()
        .clone()
        .expect("stats while connected");
    assert_eq!(stats.get::<&str>("transport").unwrap(), "tcp", "{stats}");
}

/// Runs `p`, reading the sink's stats once it is connected (on its connected message).
fn run_with(
    p: &gst::Pipeline,
    limit: Duration,
    on_connected: impl Fn(gst::Structure) + Send + Sync + 'static,
) -> Outcome {
    use gst::prelude::*;
    let sink = p.by_name("sink").unwrap();
    let bus = p.bus().unwrap();
    bus.set_sync_handler(move |_, msg| {
        if let gst::MessageView::Element(e) = msg.view() {
            if e.structure()
                .is_some_and(|s| s.name() == "rtspannounce-connected")
            {
                on_connected(sink.property::<gst::Structure>("stats"));
            }
        }
        gst::BusSyncReply::Pass
    });
    run(p, limit)
}

#[test]
fn rtsph_with_basic_and_digest_auth() {
    for methods in [RTSPAuthMethod::Basic, RTSPAuthMethod::Digest] {
        let server = RecordServer::start(
            RecordServerConfig::new("/live/a", Tracks::H264).with_auth("pub", "Pa55-w0rd", methods),
        )
        .unwrap();
        let url = with_scheme(&server.url(), "rtsph");
        let out = push_frames(&url, "user-id=pub user-pw=Pa55-w0rd");
        assert_every_frame(&format!("rtsph:// with {methods:?}"), &out, &server);
    }
    let server = RecordServer::start(RecordServerConfig::new("/live/a", Tracks::H264).with_auth(
        "pub",
        "Pa55-w0rd",
        RTSPAuthMethod::Digest,
    ))
    .unwrap();
    let url = with_scheme(&server.url(), "rtsph");
    let out = push_frames(&url, "user-id=pub user-pw=wrong");
    assert_eq!(
        out.error_is,
        Some(gst::ResourceError::NotAuthorized),
        "{out:?}"
    );
    assert!(
        out.error_text().contains("credentials"),
        "{}",
        out.error_text()
    );
}

#[test]
fn rtspsh_over_tls_every_frame_decoded() {
    let pki = Pki::new("tunnel");
    let cert = pki.server_cert(&["localhost", "127.0.0.1"], None);
    let server = RecordServer::start(
        RecordServerConfig::new("/live/s", Tracks::H264).with_tls(&cert.gio_pem()),
    )
    .unwrap();
    let p = pipeline(&format!(
        "{} ! rtspannounce name=sink location={} {}",
        h264_branch(FRAMES, "vpay"),
        with_scheme(&server.url(), "rtspsh"),
        pki.ca_arg()
    ));
    let tls = Arc::new(Mutex::new(String::new()));
    let t2 = tls.clone();
    let out = run_with(&p, Duration::from_secs(60), move |s| {
        *t2.lock().unwrap() = s.get::<String>("tls").unwrap_or_default()
    });
    assert_every_frame("rtspsh://", &out, &server);
    let tls = tls.lock().unwrap().clone();
    assert!(tls.starts_with("TLSv1."), "stats tls: {tls:?}");
}

// ---------------------------------------------------------------------------------------------
// An HTTP proxy, and a tunnel server that refuses.

/// A small HTTP proxy: absolute-URI GET/POST are forwarded to the URI's port on 127.0.0.1,
/// CONNECT is tunnelled; with `basic`, requests without that `Proxy-Authorization` get 407.
struct TestProxy {
    serve: Serve,
    /// Request lines as received, and whether they carried the right credentials.
    seen: Arc<Mutex<Vec<String>>>,
}

impl TestProxy {
    fn start(basic: Option<&str>) -> TestProxy {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let want = basic.map(|b| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(b)
            )
        });
        let seen2 = seen.clone();
        let serve = Serve::start(move |c, _| proxy_one(c, &seen2, want.as_deref()));
        TestProxy { serve, seen }
    }

    fn port(&self) -> u16 {
        self.serve.port()
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads a request head (up to its blank line) and returns its lines.
fn read_head(r: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let l = l.trim_end().to_string();
        if l.is_empty() {
            return Some(lines);
        }
        lines.push(l);
    }
}

fn proxy_one(client: TcpStream, seen: &Mutex<Vec<String>>, want: Option<&str>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let Some(head) = read_head(&mut reader) else {
        return;
    };
    let auth = head
        .iter()
        .find_map(|l| l.strip_prefix("Proxy-Authorization: "))
        .map(str::to_string);
    let ok = want.is_none() || auth.as_deref() == want;
    seen.lock()
        .unwrap()
        .push(format!("{}{}", head[0], if ok { "" } else { " (refused)" }));
    let mut client_w = client.try_clone().unwrap();
    if !ok {
        let _ = client_w.write_all(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
        );
        return;
    }
    let mut parts = head[0].split(' ');
    let (method, target) = (parts.next().unwrap(), parts.next().unwrap());
    let (port, path) = if method == "CONNECT" {
        (
            target.rsplit_once(':').unwrap().1.parse::<u16>().unwrap(),
            None,
        )
    } else {
        let rest = target.strip_prefix("http://").expect("an absolute URI");
        let (hostport, path) = rest.split_at(rest.find('/').unwrap());
        (
            hostport.rsplit_once(':').unwrap().1.parse::<u16>().unwrap(),
            Some(path.to_string()),
        )
    };
    let mut up = TcpStream::connect(("127.0.0.1", port)).unwrap();
    match path {
        None => {
            let _ = client_w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
        }
        Some(path) => {
            let mut out = format!("{method} {path} {}\r\n", parts.next().unwrap());
            for l in &head[1..] {
                if !l.starts_with("Proxy-Authorization:") {
                    out += &format!("{l}\r\n");
                }
            }
            out += "\r\n";
            up.write_all(out.as_bytes()).unwrap();
        }
    }
    // What the reader already buffered past the head goes first.
    let early = reader.buffer().to_vec();
    up.write_all(&early).unwrap();
    let mut up_r = up.try_clone().unwrap();
    let mut client_w2 = client_w.try_clone().unwrap();
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut client_w2);
        let _ = client_w2.shutdown(Shutdown::Write);
    });
    let mut rest = reader.into_inner();
    let _ = std::io::copy(&mut rest, &mut up);
    let _ = up.shutdown(Shutdown::Write);
    let _ = back.join();
}

#[test]
fn through_an_http_proxy_with_credentials() {
    let server = RecordServer::start(RecordServerConfig::new("/live/p", Tracks::H264)).unwrap();
    let proxy = TestProxy::start(Some("prox:y-pw"));
    let url = with_scheme(&server.url(), "rtsph");
    let out = push_frames(
        &url,
        &format!(
            "proxy=http://127.0.0.1:{} proxy-id=prox proxy-pw=y-pw",
            proxy.port()
        ),
    );
    assert_every_frame("rtsph:// through a proxy", &out, &server);
    let seen = proxy.seen();
    let target = format!("http://127.0.0.1:{}/live/p HTTP/1.0", server.port());
    assert_eq!(
        seen,
        [format!("GET {target}"), format!("POST {target}")],
        "the proxy saw both halves with absolute URIs"
    );
}

#[test]
fn rtspsh_through_a_proxy_uses_connect() {
    let pki = Pki::new("tunnel-proxy");
    let cert = pki.server_cert(&["localhost", "127.0.0.1"], None);
    let server = RecordServer::start(
        RecordServerConfig::new("/live/c", Tracks::H264).with_tls(&cert.gio_pem()),
    )
    .unwrap();
    let proxy = TestProxy::start(None);
    let out = push_frames(
        &with_scheme(&server.url(), "rtspsh"),
        &format!("proxy=127.0.0.1:{} {}", proxy.port(), pki.ca_arg()),
    );
    assert_every_frame("rtspsh:// through a proxy", &out, &server);
    let connect = format!("CONNECT 127.0.0.1:{} HTTP/1.1", server.port());
    assert_eq!(proxy.seen(), [connect.clone(), connect]);
}

#[test]
fn a_proxy_that_wants_credentials_is_a_clear_error() {
    let server = RecordServer::start(RecordServerConfig::new("/live/q", Tracks::H264)).unwrap();
    let proxy = TestProxy::start(Some("prox:y-pw"));
    let url = with_scheme(&server.url(), "rtsph");
    let p = format!("proxy=127.0.0.1:{}", proxy.port());
    let out = push_frames(&url, &format!("{p} retry-max=0"));
    assert_eq!(
        out.error_is,
        Some(gst::ResourceError::NotAuthorized),
        "{out:?}"
    );
    let text = out.error_text();
    assert!(
        text.contains("requires authentication") && text.contains("proxy-id and proxy-pw"),
        "{text}"
    );
    let out = push_frames(
        &url,
        &format!("{p} proxy-id=prox proxy-pw=nope retry-max=0"),
    );
    assert_eq!(
        out.error_is,
        Some(gst::ResourceError::NotAuthorized),
        "{out:?}"
    );
    assert!(
        out.error_text().contains("refused proxy-id/proxy-pw"),
        "{}",
        out.error_text()
    );
    // Nothing reached the server.
    assert!(
        proxy.seen().iter().all(|l| l.ends_with("(refused)")),
        "{:?}",
        proxy.seen()
    );
}

/// A tunnel server that answers the GET as it should, then refuses the POST (`post`), or
/// refuses the GET itself (`get`).
fn refusing_server(
    get: Option<&'static str>,
    post: &'static str,
) -> (u16, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut held = Vec::new();
        for _ in 0..2 {
            let (c, _) = listener.accept().unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let head = read_head(&mut r).unwrap_or_default();
            let first = head.first().cloned().unwrap_or_default();
            seen.push(first.clone());
            let mut w = c.try_clone().unwrap();
            if first.starts_with("GET") {
                match get {
                    Some(answer) => {
                        let _ = w.write_all(answer.as_bytes());
                        return seen;
                    }
                    None => {
                        let _ = w.write_all(
                            b"HTTP/1.0 200 OK\r\nContent-Type: application/x-rtsp-tunnelled\r\n\r\n",
                        );
                        held.push(c);
                    }
                }
            } else {
                let _ = w.write_all(post.as_bytes());
                // Drain what was sent, so the close is not a reset before the answer is read.
                let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = r.read(&mut [0u8; 4096]);
                return seen;
            }
        }
        seen
    });
    (port, h)
}

#[test]
fn a_refused_post_after_an_answered_get_is_a_clear_error() {
    let (port, server) = refusing_server(None, "HTTP/1.0 403 Forbidden\r\n\r\n");
    let out = push_frames(&format!("rtsph://127.0.0.1:{port}/live/x"), "retry-max=0");
    assert!(!out.eos && !out.timed_out, "{out:?}");
    let text = out.error_text();
    assert!(
        text.contains("refused the HTTP tunnel's POST") && text.contains("403 Forbidden"),
        "{text}"
    );
    let seen = server.join().unwrap();
    assert!(
        seen[0].starts_with("GET /live/x HTTP/1.0") && seen[1].starts_with("POST /live/x"),
        "{seen:?}"
    );
}

#[test]
fn a_refused_get_names_the_status() {
    let (port, server) = refusing_server(Some("HTTP/1.0 404 Not Found\r\n\r\n"), "");
    let out = push_frames(&format!("rtsph://127.0.0.1:{port}/live/x"), "retry-max=0");
    assert_eq!(out.error_is, Some(gst::ResourceError::NotFound), "{out:?}");
    let text = out.error_text();
    assert!(
        text.contains("server refused the HTTP tunnel's GET") && text.contains("404 Not Found"),
        "{text}"
    );
    assert_eq!(server.join().unwrap().len(), 1);
}

#[test]
fn a_proxy_without_a_tunnel_is_a_settings_error() {
    let out = push_frames("rtsp://127.0.0.1:9/x", "proxy=127.0.0.1:3128");
    assert_eq!(out.error_is, Some(gst::ResourceError::Settings), "{out:?}");
    assert!(
        out.error_text().contains("rtsph://"),
        "{}",
        out.error_text()
    );
    let out = push_frames("rtsph://127.0.0.1:9/x", "proxy=socks5://127.0.0.1:1080");
    assert_eq!(out.error_is, Some(gst::ResourceError::Settings), "{out:?}");
    assert!(out.error_text().contains("socks5"), "{}", out.error_text());
}

#[test]
fn keep_alives_and_a_reconnect_go_through_the_tunnel() {
    use gst::prelude::*;
    use std::time::Instant;
    const T: Duration = Duration::from_secs(30);
    let cfg = || RecordServerConfig::new("/live/k", Tracks::H264).with_session_timeout(2);
    let server = RecordServer::start(cfg()).unwrap();
    let port = server.port();
    let url = with_scheme(&server.url(), "rtsph");
    let p = pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=15/1 ! \
         x264enc tune=zerolatency key-int-max=15 ! rtph264pay ! \
         rtspannounce location={url} retry-delay-min=300 retry-delay-max=1000"
    ));
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    // With a 2 s session timeout, keep-alives must reach the server inside the tunnel.
    let deadline = Instant::now() + T;
    while server
        .stats()
        .requests
        .iter()
        .filter(|m| *m == "GET_PARAMETER")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no keep-alives: {}",
            server.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = server.stats();
    assert!(
        first.tracks.first().is_some_and(|t| t.frames > 0),
        "{first}"
    );
    server.stop();
    let server = RecordServer::start_on_port(cfg(), port).unwrap();
    // The element dials a new tunnel (new cookie, GET and POST) and records again.
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_nseconds(left.as_nanos() as u64),
                &[gst::MessageType::Element, gst::MessageType::Error],
            )
            .expect("reconnected within 30 s");
        match msg.view() {
            gst::MessageView::Error(e) => panic!("{e:?}"),
            gst::MessageView::Element(e)
                if e.structure()
                    .is_some_and(|s| s.name() == "rtspannounce-reconnected") =>
            {
                break
            }
            _ => {}
        }
    }
    let deadline = Instant::now() + T;
    while server.stats().tracks.first().is_none_or(|t| t.frames < 30) {
        assert!(Instant::now() < deadline, "no frames after the reconnect");
        std::thread::sleep(Duration::from_millis(20));
    }
    p.set_state(gst::State::Null).unwrap();
    let report = server.wait_finished(T).unwrap();
    println!("after the reconnect, through the tunnel: {report}");
    let v = &report.tracks[0];
    assert!(v.frames >= 30, "{report}");
    assert_eq!(v.parsed, v.frames, "frames that did not decode:\n{report}");
}
