//! RTSPS: pushes over TLS into gst-rtsp-server (GIO/GnuTLS on the server side) with a CA and
//! certificates made here, certificate and host-name checks, `tls-validation-flags`,
//! `accept-certificate`, a plain server behind an `rtsps://` URL, and byte-exactness through a
//! TLS-terminating proxy in front of the scripted server.

use crate::peers;
use crate::scripted_server;

use crate::harness::*;
use crate::record_server::*;
use gst::prelude::*;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A CA made for the test, and server certificates it signs.
pub(crate) struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    dir: PathBuf,
    /// The CA certificate as a PEM file, for `tls-ca-file`.
    ca_file: PathBuf,
}

/// A server certificate: the chain and key as gst-rtsp-server's GTlsCertificate wants them.
pub(crate) struct ServerCert {
    cert_pem: String,
    key_pem: String,
}

impl ServerCert {
    pub(crate) fn gio_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    /// A rustls server configuration with this certificate, for servers of our own.
    pub(crate) fn rustls_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        let chain =
            vec![
                rustls::pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
                    .unwrap(),
            ];
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        Arc::new(cfg)
    }
}

impl Pki {
    pub(crate) fn new(tag: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "rtspannounce test CA");
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = p.self_signed(&ca_key).unwrap();
        let dir = peers::temp_dir(&format!("tls-{tag}"));
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            ca,
            ca_key,
            dir,
            ca_file,
        }
    }

    pub(crate) fn server_cert(&self, names: &[&str], validity: Option<(i32, i32)>) -> ServerCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        if let Some((from, to)) = validity {
            p.not_before = rcgen::date_time_ymd(from, 1, 1);
            p.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub(crate) fn ca_arg(&self) -> String {
        format!("tls-ca-file={}", self.ca_file.display())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_server(mount: &str, tracks: Tracks, cert: &ServerCert) -> RecordServer {
    RecordServer::start(RecordServerConfig::new(mount, tracks).with_tls(&cert.gio_pem())).unwrap()
}

#[test]
fn h264_over_tls_with_the_ca_file_every_frame_decoded() {
    let pki = Pki::new("h264");
    let server = tls_server(
        "/live/tls",
        Tracks::H264,
        &pki.server_cert(&["localhost", "127.0.0.1"], None),
    );
    let url = server.url();
    assert!(url.starts_with("rtsps://127.0.0.1:"), "{url}");
    let p = pipeline(&format!(
        "{} ! rtspannounce name=sink location={url} {}",
        h264_branch(300, "vpay"),
        pki.ca_arg()
    ));
    let sink = p.by_name("sink").unwrap();
    let out = run(&p, Duration::from_secs(60));
    assert!(out.eos, "{out:?}");
    // The stats say what protected the session (GnuTLS on the server side negotiates 1.3).
    let stats = sink.property::<gst::Structure>("stats");
    let tls = stats.get::<String>("tls").unwrap();
    println!("stats tls: {tls}");
    assert!(tls.starts_with("TLSv1.3 TLS13_"), "{stats}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    println!("gst-rtsp-server over TLS (127.0.0.1, IP SAN): {report}");
    assert_eq!(
        report.requests_but_keepalives(),
        ["ANNOUNCE", "SETUP", "RECORD", "TEARDOWN"],
        "{report}"
    );
    let v = &report.tracks[0];
    assert_eq!(v.codec, "H.264", "{report}");
    assert_eq!(v.frames, 300, "{report}");
    assert_eq!((v.width, v.height), (Some(320), Some(240)));
    assert!(report.errors.is_empty(), "{report}");
}

#[test]
fn h264_and_aac_over_tls_to_a_host_name() {
    let pki = Pki::new("av");
    let server = tls_server(
        "/live/av",
        Tracks::H264Aac,
        &pki.server_cert(&["localhost"], None),
    );
    // A DNS name: sent as SNI and checked against the certificate's DNS SAN.
    let url = server.url_for_host("localhost");
    let out = push(&format!(
        "rtspannounce name=s location={url} {} {} ! s.sink_0 {} ! s.sink_1",
        pki.ca_arg(),
        h264_branch(300, "vpay"),
        aac_branch(470, "apay")
    ));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    println!("gst-rtsp-server over TLS (localhost): {report}");
    assert_eq!(
        report.requests_but_keepalives(),
        ["ANNOUNCE", "SETUP", "SETUP", "RECORD", "TEARDOWN"]
    );
    let v = report.tracks.iter().find(|t| t.is_video()).unwrap();
    let a = report.tracks.iter().find(|t| !t.is_video()).unwrap();
    assert_eq!(v.frames, 300, "{report}");
    assert_eq!(a.codec, "AAC", "{report}");
    assert!(a.frames >= 470, "{report}");
    assert!(report.errors.is_empty(), "{report}");
}

/// Runs a 30-frame push to `url` with extra element properties; returns the outcome and the
/// time it took.
fn push_short(url: &str, props: &str) -> (Outcome, Duration) {
    let t0 = Instant::now();
    let out = push(&format!(
        "{} ! rtspannounce location={url} tcp-timeout=10000000 {props}",
        h264_branch(30, "vpay")
    ));
    (out, t0.elapsed())
}

/// What `openssl req -x509` makes (the setup MediaMTX documents): a self-signed certificate that
/// says CA:TRUE. Given in tls-ca-file it is trusted as itself.
#[test]
fn self_signed_ca_certificate_given_in_the_ca_file() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    let sc = ServerCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let dir = peers::temp_dir("tls-selfsigned");
    let file = dir.join("server.crt");
    std::fs::write(&file, &sc.cert_pem).unwrap();
    let server = tls_server("/live/x", Tracks::H264, &sc);
    let (out, _) = push_short(&server.url(), "");
    let text = out.error_text();
    assert!(text.contains("self-signed"), "{text}");
    let (out, _) = push_short(&server.url(), &format!("tls-ca-file={}", file.display()));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    assert_eq!(report.tracks[0].frames, 30, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_issuer_without_the_ca_file() {
    let pki = Pki::new("unknown");
    let server = tls_server(
        "/live/x",
        Tracks::H264,
        &pki.server_cert(&["127.0.0.1"], None),
    );
    let (out, _) = push_short(&server.url(), "");
    assert_eq!(
        out.error_is,
        Some(gst::ResourceError::NotAuthorized),
        "{out:?}"
    );
    let text = out.error_text();
    println!("error: {text}");
    assert!(text.contains("unknown issuer"), "{text}");
    assert!(text.contains("system CA store"), "{text}");
    assert!(text.contains("tls-ca-file"), "{text}");
    // Nothing was announced to a server we could not trust.
    assert!(server.stats().requests.is_empty(), "{:?}", server.stats());
}

#[test]
fn host_name_mismatch_fails_unless_the_flags_allow_it() {
    let pki = Pki::new("name");
    // A certificate for localhost only, reached by IP address.
    let server = tls_server(
        "/live/x",
        Tracks::H264,
        &pki.server_cert(&["localhost"], None),
    );
    let (out, _) = push_short(&server.url(), &pki.ca_arg());
    assert_eq!(
        out.error_is,
        Some(gst::ResourceError::NotAuthorized),
        "{out:?}"
    );
    let text = out.error_text();
    println!("error: {text}");
    assert!(text.contains("host name mismatch"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(text.contains("localhost"), "{text}");
    assert!(!text.contains("unknown issuer"), "{text}");

    // Every check but bad-identity.
    let (out, _) = push_short(
        &server.url(),
        &format!(
            "{} tls-validation-flags=unknown-ca+not-activated+expired+revoked+insecure+generic-error",
            pki.ca_arg()
        ),
    );
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    assert_eq!(report.tracks[0].frames, 30, "{report}");

    // The flags relax only what they say: an unknown issuer still fails.
    let (out, _) = push_short(
        &server.url(),
        "tls-validation-flags=unknown-ca+not-activated+expired",
    );
    assert!(out.error_text().contains("unknown issuer"), "{out:?}");
    assert!(!out.error_text().contains("host name"), "{out:?}");
}

#[test]
fn expired_certificate_names_the_date() {
    let pki = Pki::new("expired");
    let server = tls_server(
        "/live/x",
        Tracks::H264,
        &pki.server_cert(&["127.0.0.1"], Some((2020, 2021))),
    );
    let (out, _) = push_short(&server.url(), &pki.ca_arg());
    assert_eq!(
        out.error_is,
        Some(gst::ResourceError::NotAuthorized),
        "{out:?}"
    );
    let text = out.error_text();
    println!("error: {text}");
    assert!(text.contains("expired on 2021-01-01"), "{text}");
}

#[test]
fn accept_certificate_signal_decides() {
    let pki = Pki::new("accept");
    let cert = pki.server_cert(&["127.0.0.1"], None);
    let server = tls_server("/live/x", Tracks::H264, &cert);
    for accept in [false, true] {
        let p = pipeline(&format!(
            "{} ! rtspannounce name=sink location={}",
            h264_branch(30, "vpay"),
            server.url()
        ));
        let sink = p.by_name("sink").unwrap();
        let seen: Arc<Mutex<Vec<(String, gio::TlsCertificateFlags)>>> = Arc::default();
        {
            let seen = seen.clone();
            sink.connect("accept-certificate", false, move |args| {
                let c = args[1].get::<gio::TlsCertificate>().unwrap();
                let errors = args[2].get::<gio::TlsCertificateFlags>().unwrap();
                let pem: String = c.property("certificate-pem");
                seen.lock().unwrap().push((pem, errors));
                Some(accept.to_value())
            });
        }
        let out = run(&p, Duration::from_secs(60));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{accept}: {out:?}");
        // The server's own certificate, and only the check that failed.
        assert_eq!(seen[0].0.trim(), cert.cert_pem.trim());
        assert_eq!(seen[0].1, gio::TlsCertificateFlags::UNKNOWN_CA);
        if accept {
            assert!(out.eos, "{out:?}");
            let report = server.wait_finished(Duration::from_secs(20)).unwrap();
            assert_eq!(report.tracks[0].frames, 30, "{report}");
        } else {
            assert_eq!(
                out.error_is,
                Some(gst::ResourceError::NotAuthorized),
                "{out:?}"
            );
        }
    }
}

/// A condition handlers block on until the test opens it: what a slow application handler does,
/// with an end the test decides instead of a sleep.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cond: std::sync::Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cond.notify_all();
    }

    /// Waits until the gate opens, at most `cap`; whether it opened.
    fn wait(&self, cap: Duration) -> bool {
        let g = self.open.lock().unwrap();
        let (g, _) = self.cond.wait_timeout_while(g, cap, |open| !*open).unwrap();
        *g
    }
}

/// Counts up and tells waiters when a number is reached.
#[derive(Default)]
struct Counter {
    n: Mutex<usize>,
    cond: std::sync::Condvar,
}

impl Counter {
    fn add(&self) {
        *self.n.lock().unwrap() += 1;
        self.cond.notify_all();
    }

    fn wait_for(&self, n: usize, cap: Duration) -> bool {
        let g = self.n.lock().unwrap();
        let (g, _) = self.cond.wait_timeout_while(g, cap, |c| *c < n).unwrap();
        *g >= n
    }
}

/// `accept-certificate` handlers are application code and may take their time: they must not
/// hold up the shared I/O workers (DESIGN.md §2a). Two sessions (as many as the runtime has
/// workers) sit in slow handlers, which return only once a third session, with the CA file and
/// so no handler, has finished its handshake (its `rtspannounce-connected` message). Were the
/// handlers run on the workers, that session could not progress and the handlers would end at
/// their cap instead.
#[test]
fn a_slow_accept_certificate_handler_holds_up_no_other_session() {
    const SLOW: usize = 2;
    // Well under the slow sessions' tcp-timeout (20 s): their own handshakes must still succeed.
    let cap = Duration::from_secs(10);
    let pki = Pki::new("slowaccept");
    let cert = pki.server_cert(&["127.0.0.1"], None);
    let servers: Vec<RecordServer> = (0..=SLOW)
        .map(|_| tls_server("/live/x", Tracks::H264, &cert))
        .collect();
    let fast_connected = Arc::new(Gate::default());
    let in_handler = Arc::new(Counter::default());
    let events: Arc<Mutex<Vec<String>>> = Arc::default();

    let slow: Vec<_> = (0..SLOW)
        .map(|i| {
            let p = pipeline(&format!(
                "{} ! rtspannounce name=sink location={}",
                h264_branch(30, "vpay"),
                servers[i].url()
            ));
            let (gate, entered, events) =
                (fast_connected.clone(), in_handler.clone(), events.clone());
            p.by_name("sink")
                .unwrap()
                .connect("accept-certificate", false, move |_| {
                    entered.add();
                    let released = gate.wait(cap);
                    events.lock().unwrap().push(if released {
                        format!("slow {i} answered after the fast session connected")
                    } else {
                        format!("slow {i} answered at its cap")
                    });
                    Some(true.to_value())
                });
            std::thread::spawn(move || run(&p, Duration::from_secs(60)))
        })
        .collect();
    // Both slow sessions are inside their handlers before the fast one starts.
    assert!(
        in_handler.wait_for(SLOW, Duration::from_secs(30)),
        "the slow sessions never asked accept-certificate"
    );

    let fast = pipeline(&format!(
        "{} ! rtspannounce location={} {}",
        h264_branch(30, "vpay"),
        servers[SLOW].url(),
        pki.ca_arg()
    ));
    {
        let (gate, events) = (fast_connected.clone(), events.clone());
        fast.bus().unwrap().set_sync_handler(move |_, msg| {
            if let gst::MessageView::Element(e) = msg.view() {
                if e.structure()
                    .is_some_and(|s| s.name() == "rtspannounce-connected")
                {
                    events.lock().unwrap().push("fast connected".into());
                    gate.open();
                }
            }
            gst::BusSyncReply::Pass
        });
    }
    let fast_out = run(&fast, Duration::from_secs(60));
    // Whatever happened, the slow handlers must not wait for their cap once the fast one ended.
    fast_connected.open();
    let slow_out: Vec<Outcome> = slow.into_iter().map(|t| t.join().unwrap()).collect();

    let events = events.lock().unwrap().clone();
    println!("{events:#?}");
    assert!(fast_out.eos, "{fast_out:?}");
    assert_eq!(events.first().map(String::as_str), Some("fast connected"));
    assert_eq!(events.len(), SLOW + 1, "{events:?}");
    assert!(
        events[1..]
            .iter()
            .all(|e| e.ends_with("after the fast session connected")),
        "{events:?}"
    );
    // The slow sessions, accepted late but within their handshake's bound, recorded too.
    for (i, out) in slow_out.iter().enumerate() {
        assert!(out.eos, "slow {i}: {out:?}");
    }
    for (i, server) in servers.iter().enumerate() {
        let report = server.wait_finished(Duration::from_secs(20)).unwrap();
        assert_eq!(report.tracks[0].frames, 30, "server {i}: {report}");
    }
}

/// A handler that does not answer within the handshake's bound (tcp-timeout) is not waited for:
/// the certificate is refused, and the error says why, while the handler still runs.
#[test]
fn an_accept_certificate_handler_that_does_not_answer_in_time_refuses() {
    let pki = Pki::new("lateaccept");
    let server = tls_server(
        "/live/x",
        Tracks::H264,
        &pki.server_cert(&["127.0.0.1"], None),
    );
    let p = pipeline(&format!(
        "{} ! rtspannounce name=sink location={} tcp-timeout=1000000 retry-max=0",
        h264_branch(30, "vpay"),
        server.url()
    ));
    let release = Arc::new(Gate::default());
    let (returned_tx, returned_rx) = std::sync::mpsc::channel();
    {
        let release = release.clone();
        p.by_name("sink")
            .unwrap()
            .connect("accept-certificate", false, move |_| {
                let released = release.wait(Duration::from_secs(30));
                let _ = returned_tx.send(released);
                Some(true.to_value())
            });
    }
    let out = run(&p, Duration::from_secs(60));
    // Only now is the handler let go: the error came while it was still running.
    release.open();
    assert_eq!(
        returned_rx.recv_timeout(Duration::from_secs(30)),
        Ok(true),
        "the handler ended at its cap: the session waited for it"
    );
    assert_eq!(
        out.error_is,
        Some(gst::ResourceError::NotAuthorized),
        "{out:?}"
    );
    let text = out.error_text();
    println!("error: {text}");
    assert!(text.contains("did not answer in time"), "{text}");
    assert!(text.contains("unknown issuer"), "{text}");
    assert!(server.stats().requests.is_empty(), "{:?}", server.stats());
}

#[test]
fn a_bad_ca_file_is_a_settings_error_at_start() {
    init();
    let dir = peers::temp_dir("tls-badca");
    let not_pem = dir.join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    for (file, says) in [
        (dir.join("missing.pem"), "cannot read tls-ca-file"),
        (not_pem, "no usable CA certificate"),
    ] {
        let e = gst::ElementFactory::make("rtspannounce")
            .property("location", "rtsps://127.0.0.1:1/x")
            .property("tls-ca-file", file.to_str().unwrap())
            .build()
            .unwrap();
        let bus = gst::Bus::new();
        e.set_bus(Some(&bus));
        assert!(e.set_state(gst::State::Ready).is_err());
        let msg = bus.pop_filtered(&[gst::MessageType::Error]).unwrap();
        let gst::MessageView::Error(err) = msg.view() else {
            unreachable!()
        };
        assert_eq!(
            err.error().kind::<gst::ResourceError>(),
            Some(gst::ResourceError::Settings)
        );
        let text = err.error().message().to_string();
        assert!(text.contains(says), "{text}");
        assert!(text.contains(file.to_str().unwrap()), "{text}");
        let _ = e.set_state(gst::State::Null);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rtsps_to_a_plain_server_fails_clearly_and_fast() {
    let server = RecordServer::start(RecordServerConfig::new("/live/x", Tracks::H264)).unwrap();
    let url = server.url().replacen("rtsp://", "rtsps://", 1);
    let (out, took) = push_short(&url, "");
    println!("error after {took:?}: {}", out.error_text());
    assert_eq!(out.error_is, Some(gst::ResourceError::OpenWrite), "{out:?}");
    assert!(out.error_text().contains("TLS handshake failed"), "{out:?}");
    assert!(out.error_text().contains("does not speak TLS"), "{out:?}");
    // Not a hang until tcp-timeout (10 s here).
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn rtsp_to_a_tls_server_is_not_silently_plain() {
    // The URL scheme selects TLS: rtsp:// to an RTSPS port talks plain RTSP and fails.
    let pki = Pki::new("plainclient");
    let server = tls_server(
        "/live/x",
        Tracks::H264,
        &pki.server_cert(&["127.0.0.1"], None),
    );
    let url = server.url().replacen("rtsps://", "rtsp://", 1);
    let (out, _) = push_short(&url, "retry-max=0");
    assert!(!out.eos, "{out:?}");
    assert!(out.error.is_some(), "{out:?}");
    assert!(server.stats().requests.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Byte-exactness: a TLS terminator (rustls server) in front of the scripted server, which
// records every interleaved frame; the proxy counts the TLS records it received.
// ---------------------------------------------------------------------------------------------

#[derive(Default, Debug, Clone, Copy)]
struct RecordCount {
    records: u64,
    bytes: u64,
}

/// Counts TLS records in what the client sends (5-byte header: type, version, length).
struct Tap<S> {
    inner: S,
    counts: Arc<Mutex<RecordCount>>,
    header: Vec<u8>,
    body_left: usize,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tap<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        let this = &mut *self;
        let mut at = 0;
        while at < new.len() {
            if this.body_left > 0 {
                let n = this.body_left.min(new.len() - at);
                this.body_left -= n;
                at += n;
                continue;
            }
            this.header.push(new[at]);
            at += 1;
            if this.header.len() == 5 {
                let len = u16::from_be_bytes([this.header[3], this.header[4]]) as usize;
                if this.header[0] == 23 {
                    let mut c = this.counts.lock().unwrap();
                    c.records += 1;
                    c.bytes += len as u64;
                }
                this.body_left = len;
                this.header.clear();
            }
        }
        res
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TLS terminator on 127.0.0.1: relays each connection's plaintext to `backend`.
struct Proxy {
    port: u16,
    counts: Arc<Mutex<RecordCount>>,
    /// One per accepted connection: aborting it drops both sides.
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

fn tls_proxy(
    rt: &tokio::runtime::Runtime,
    cert: &ServerCert,
    backend: std::net::SocketAddr,
) -> Proxy {
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.rustls_config());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts: Arc<Mutex<RecordCount>> = Arc::default();
    let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
    let (c, cs) = (counts.clone(), conns.clone());
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tap = Tap {
                inner: tcp,
                counts: c.clone(),
                header: Vec::new(),
                body_left: 0,
            };
            let acceptor = acceptor.clone();
            let task = tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tap).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
            cs.lock().unwrap().push(task.abort_handle());
        }
    });
    Proxy {
        port,
        counts,
        conns,
    }
}

fn io_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn bytes_through_tls_are_exact() {
    use scripted_server::*;
    init();
    let pki = Pki::new("exact");
    let cert = pki.server_cert(&["127.0.0.1"], None);
    let backend = ScriptedServer::start(Script::new());
    let rt = io_runtime();
    let proxy = tls_proxy(&rt, &cert, backend.addr());
    let port = proxy.port;
    let p = pipeline(&format!(
        "rtspannounce name=s location=rtsps://127.0.0.1:{port}/live/exact sync=false {} \
         {} ! s.sink_0 {} ! s.sink_1",
        pki.ca_arg(),
        h264_branch(300, "vpay"),
        aac_branch(200, "apay")
    ));
    let vcap = capture_src(&p.by_name("vpay").unwrap());
    let acap = capture_src(&p.by_name("apay").unwrap());
    let out = run(&p, Duration::from_secs(60));
    assert!(out.eos, "{out:?}");
    let snap = backend.snapshot();
    assert_eq!(
        snap.methods(),
        ["ANNOUNCE", "SETUP", "SETUP", "RECORD", "TEARDOWN"]
    );
    // Request-URIs keep the rtsps scheme.
    assert!(snap.requests[0].uri.starts_with("rtsps://127.0.0.1:"));
    let video: Vec<Vec<u8>> = snap.frames_on(0).iter().map(|f| f.data.clone()).collect();
    let audio: Vec<Vec<u8>> = snap.frames_on(2).iter().map(|f| f.data.clone()).collect();
    let vcap = vcap.lock().unwrap();
    let acap = acap.lock().unwrap();
    assert_eq!(video.len(), vcap.len());
    assert!(video == *vcap, "video packets differ");
    // The audio track is remapped from 96 to 97: only that byte differs.
    assert_eq!(audio.len(), acap.len());
    for (got, sent) in audio.iter().zip(acap.iter()) {
        assert_eq!(got[1] & 0x7f, 97);
        assert_eq!(got[0], sent[0]);
        assert_eq!(got[2..], sent[2..]);
    }
    assert!(snap.frames_on(0).iter().all(|f| f.after_record));
    let c = *proxy.counts.lock().unwrap();
    let frames = video.len() + audio.len() + snap.frames_on(1).len() + snap.frames_on(3).len();
    println!(
        "through TLS: {} video + {} audio RTP packets exact, {frames} interleaved frames in {} TLS records ({} bytes)",
        video.len(),
        audio.len(),
        c.records,
        c.bytes
    );
    assert!(c.records > 0);
}

/// Everything of a session stays inside TLS: keep-alives, a request from the server and our
/// answer, a reconnect after the connection is cut (a new TLS handshake), TEARDOWN.
#[test]
fn keepalive_server_requests_and_reconnect_over_tls() {
    use scripted_server::*;
    init();
    let pki = Pki::new("life");
    let cert = pki.server_cert(&["localhost"], None);
    let backend = ScriptedServer::start(
        Script::new()
            .session_timeout(Some(2))
            .request_after_record("GET_PARAMETER"),
    );
    let rt = io_runtime();
    let proxy = tls_proxy(&rt, &cert, backend.addr());
    let p = gst::parse::launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max=300 ! rtph264pay ! \
         rtspannounce name=s location=rtsps://localhost:{}/live/life retry-delay-min=100 {}",
        proxy.port,
        pki.ca_arg()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    const T: Duration = Duration::from_secs(20);
    // Our answer to the server's GET_PARAMETER, and a keep-alive of ours (every 1 s here).
    assert!(backend.wait_for(|s| !s.responses.is_empty(), T));
    assert!(backend.wait_requests("GET_PARAMETER", 1, T));
    let resp = backend.responses()[0].clone();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(backend.wait_for(|s| s.frames_on(0).len() >= 30, T));

    // Cut the connection: a new TLS connection, a new handshake, media again.
    proxy.conns.lock().unwrap()[0].abort();
    let mut reconnected = false;
    while let Some(m) = bus.timed_pop(gst::ClockTime::from_seconds(20)) {
        match m.view() {
            gst::MessageView::Element(e)
                if e.structure().map(|s| s.name().as_str()) == Some("rtspannounce-reconnected") =>
            {
                reconnected = true;
                break;
            }
            gst::MessageView::Error(e) => panic!("{}", e.error()),
            _ => {}
        }
    }
    assert!(reconnected);
    let resumed = backend.wait_for(
        |s| {
            s.frames
                .iter()
                .filter(|f| f.conn == 1 && f.channel == 0)
                .count()
                >= 30
        },
        T,
    );
    let snap = backend.snapshot();
    assert!(
        resumed,
        "{:?} / {:?}: {} frames on conn 1, {:?}",
        snap.methods_on(0),
        snap.methods_on(1),
        snap.frames.iter().filter(|f| f.conn == 1).count(),
        snap.connections
    );
    assert_eq!(proxy.conns.lock().unwrap().len(), 2);

    p.send_event(gst::event::Eos::new());
    let eos = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(20),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    assert!(
        matches!(
            eos.as_ref().map(|m| m.view()),
            Some(gst::MessageView::Eos(_))
        ),
        "{eos:?}"
    );
    p.set_state(gst::State::Null).unwrap();
    let snap = backend.snapshot();
    assert_eq!(
        snap.methods_on(1)
            .into_iter()
            .filter(|m| *m != "GET_PARAMETER")
            .collect::<Vec<_>>(),
        ["ANNOUNCE", "SETUP", "RECORD", "TEARDOWN"]
    );
    println!(
        "over TLS: {} requests, {} answers to server requests, {} video packets on 2 connections",
        snap.requests.len(),
        snap.responses.len(),
        snap.frames_on(0).len()
    );
}

/// A server that stops reading: the TLS wire's writes stall (sealed records wait in rustls and
/// the socket stays full), which is a failure after `tcp-timeout`, not a hang.
#[test]
fn a_stalled_server_over_tls_is_a_clear_error() {
    use scripted_server::*;
    init();
    let pki = Pki::new("stall");
    let cert = pki.server_cert(&["127.0.0.1"], None);
    let backend = ScriptedServer::start(
        Script::new()
            .stop_reading_after_record()
            .keep_frame_data(false),
    );
    let rt = io_runtime();
    let proxy = tls_proxy(&rt, &cert, backend.addr());
    // Raw video: megabytes per second, so every buffer on the way fills within a second.
    let t0 = Instant::now();
    let out = push(&format!(
        "videotestsrc pattern=snow ! video/x-raw,width=640,height=480,framerate=30/1 ! \
         rtpvrawpay ! rtspannounce location=rtsps://127.0.0.1:{}/live/stall {} sync=false \
         tcp-timeout=2000000 retry-max=0",
        proxy.port,
        pki.ca_arg()
    ));
    let took = t0.elapsed();
    println!("after {took:?}: {}", out.error_text());
    assert_eq!(out.error_is, Some(gst::ResourceError::Write), "{out:?}");
    assert!(
        out.error_text().contains("server accepted no data for 2s"),
        "{out:?}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// The `tls` flag of `protocols` does what `rtsps://` does (as rtspclientsink); TLS never offers
/// UDP, so `udp+tls` alone is a settings error.
#[test]
fn the_tls_flag_of_protocols_selects_tls_too() {
    let pki = Pki::new("flag");
    let server = tls_server(
        "/live/x",
        Tracks::H264,
        &pki.server_cert(&["127.0.0.1"], None),
    );
    let plain_url = server.url().replacen("rtsps://", "rtsp://", 1);
    let (out, _) = push_short(
        &plain_url,
        &format!("protocols=tcp+udp+tls {}", pki.ca_arg()),
    );
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    assert_eq!(report.tracks[0].frames, 30, "{report}");
    assert_eq!(
        report.requests_but_keepalives(),
        ["ANNOUNCE", "SETUP", "RECORD", "TEARDOWN"],
        "{report}"
    );

    let (out, _) = push_short(&plain_url, "protocols=udp+tls");
    assert_eq!(out.error_is, Some(gst::ResourceError::Settings), "{out:?}");
    assert!(out.error_text().contains("add tcp to protocols"), "{out:?}");
}
