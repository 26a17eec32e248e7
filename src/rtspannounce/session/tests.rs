//! The session without an element: hooks that record what would be posted.

use super::*;
use crate::rtsp::headers::Lower;
use crate::rtsp::message::{Request, Response};
use crate::rtsp::url::{ControlStyle, RtspUrl};
use crate::rtspannounce::hooks::ClockReading;
use std::sync::mpsc;

struct Recorder(Mutex<mpsc::Sender<Notice>>);

impl Hooks for Recorder {
    fn notify(&self, notice: Notice) {
        let _ = self.0.lock().unwrap().send(notice);
    }
    fn clock(&self) -> ClockReading {
        ClockReading::default()
    }
    fn force_key_unit(&self, _: &str) {}
    fn edits_sdp(&self) -> bool {
        false
    }
    fn edit_sdp(&self, _: &mut gst_sdp::SDPMessage) {}
    fn handle_request(&self, _: &Request) -> Option<Response> {
        None
    }
    fn accept_certificate(
        &self,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: gio::TlsCertificateFlags,
    ) -> bool {
        false
    }
}

fn config(announce_timeout: Duration) -> SessionConfig {
    SessionConfig {
        dial: DialConfig {
            // Nothing listens here: these tests never get as far as dialing.
            url: RtspUrl::parse("rtsp://127.0.0.1:9/x").unwrap(),
            creds: None,
            user_agent: "test".into(),
            tcp_timeout: Duration::from_secs(1),
            style: ControlStyle::Ffmpeg,
            transports: vec![Lower::Tcp],
            tls: false,
            tls_options: Default::default(),
            port_range: None,
            send_buffer: None,
            udp_blocking: true,
            srtp: None,
            tunnel: None,
        },
        announce_timeout,
        keepalive: true,
        ntp_source: NtpSource::Ntp,
        publish_clock: crate::sdp::clock::PublishClockMode::Clock,
        rtcp_interval: Duration::from_secs(5),
        retry_max: 0,
        retry_delay_min: Duration::from_millis(100),
        retry_delay_max: Duration::from_secs(1),
        reannounce_on_caps_change: false,
        limits: SendLimits {
            max_bytes: 1 << 20,
            max_time: Duration::ZERO,
            drop_when_congested: false,
        },
    }
}

fn session(pads: &[&str], timeout: Duration) -> (Arc<Shared>, mpsc::Receiver<Notice>) {
    session_with(config(timeout), pads)
}

fn session_with(cfg: SessionConfig, pads: &[&str]) -> (Arc<Shared>, mpsc::Receiver<Notice>) {
    gst::init().unwrap();
    let (tx, rx) = mpsc::channel();
    let s = Shared::new(
        cfg,
        pads.iter().map(|p| p.to_string()).collect(),
        Arc::new(Recorder(Mutex::new(tx))),
    );
    (s, rx)
}

fn error_text(n: Notice) -> String {
    match n {
        Notice::Error(m) => m.to_string(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_silent_track_fails_the_session_at_the_announce_timeout() {
    let (s, rx) = session(&["sink_0", "sink_1"], Duration::from_millis(50));
    assert!(s.preroll(0, Some(opus_caps()), None).is_ok());
    let text = error_text(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    assert!(text.contains("sink_1 (no buffer)"), "{text}");
    assert!(!text.contains("sink_0"), "{text}");
    // The error is posted first, then the phase turns (on the timer's thread).
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.phase() != PhaseName::Failed && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert_eq!(s.phase(), PhaseName::Failed);
    // A pad then sees the failure, not a wait.
    let buf = gst::Buffer::from_slice([0u8; 12]);
    assert!(matches!(
        s.render_buffers(0, None, None, std::iter::once(buf)),
        Err(PadError::Failed)
    ));
}

fn opus_caps() -> gst::Caps {
    gst::Caps::builder("application/x-rtp")
        .field("media", "audio")
        .field("encoding-name", "OPUS")
        .field("clock-rate", 48000i32)
        .field("payload", 96i32)
        .build()
}

#[test]
fn a_preroll_waits_for_the_handshake_it_started_and_a_stop_ends_the_wait() {
    use std::io::Read;
    // A server that reads the ANNOUNCE and never answers it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cfg = config(Duration::from_secs(60));
    cfg.dial.url = RtspUrl::parse(&format!("rtsp://127.0.0.1:{port}/x")).unwrap();
    cfg.dial.tcp_timeout = Duration::from_secs(60);
    let (s, _rx) = session_with(cfg, &["sink_0", "sink_1"]);
    // The first track alone starts nothing: its preroll does not wait for the other.
    assert!(s.preroll(0, Some(opus_caps()), None).is_ok());
    assert_eq!(s.phase(), PhaseName::Waiting);
    let s2 = s.clone();
    let waiting = std::thread::spawn(move || s2.preroll(1, Some(opus_caps()), None));
    // Accepted on a thread: a handshake that never dials fails the test instead of hanging it.
    let (tx, accepted) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listener.accept().map(|(c, _)| c));
    });
    let mut conn = accepted
        .recv_timeout(Duration::from_secs(10))
        .expect("the handshake never connected")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "closed before a whole request");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("ANNOUNCE "));
    // The request is out and unanswered: the preroll that started it is still waiting.
    assert!(!waiting.is_finished());
    assert_eq!(s.phase(), PhaseName::Connecting);
    s.stop();
    assert!(matches!(waiting.join().unwrap(), Err(PadError::Flushing)));
}

#[test]
fn a_preroll_returns_the_handshakes_failure() {
    // Nothing listens on the configured port: the connection is refused.
    let (s, _rx) = session(&["sink_0"], Duration::from_secs(60));
    assert!(matches!(
        s.preroll(0, Some(opus_caps()), None),
        Err(PadError::Failed)
    ));
    assert_eq!(s.phase(), PhaseName::Failed);
}

#[test]
fn eos_before_any_data_names_the_silent_pads() {
    let (s, rx) = session(&["sink_0"], Duration::from_secs(60));
    s.eos(0);
    let text = error_text(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    assert!(text.contains("before any data on sink_0"), "{text}");
    assert_eq!(s.phase(), PhaseName::Failed);
}

#[test]
fn tracks_come_and_go_only_before_the_handshake() {
    let (s, _rx) = session(&["sink_0"], Duration::from_secs(60));
    let id = s.add_track("sink_1".into()).unwrap();
    assert_eq!(s.track_id("sink_1"), Some(id));
    assert!(s.remove_track(id));
    assert_eq!(s.track_id("sink_1"), None);
    s.stop();
    assert_eq!(s.add_track("sink_2".into()), Err(PhaseName::Stopped));
    assert!(!s.remove_track(0));
}

#[test]
fn a_flush_ends_only_its_own_pads_wait() {
    let (s, _rx) = session(&["sink_0"], Duration::from_secs(60));
    s.set_flushing(0, true);
    let buf = gst::Buffer::from_slice([0u8; 12]);
    assert!(matches!(
        s.render_buffers(0, None, None, std::iter::once(buf)),
        Err(PadError::Flushing)
    ));
    s.set_flushing(0, false);
    s.stop();
}

#[test]
fn b_frames_are_warned_about_once_per_pad_naming_it() {
    let (s, rx) = session(&["sink_0", "sink_1"], Duration::from_secs(60));
    // Paused: a ready pad returns instead of waiting for the handshake.
    s.set_paused(true);
    let caps = gst::Caps::builder("application/x-rtp")
        .field("media", "video")
        .field("encoding-name", "VP8")
        .field("clock-rate", 90000i32)
        .build();
    let seg = gst::FormattedSegment::<gst::ClockTime>::new();
    let frame = |ms: u64| {
        let mut b = gst::Buffer::from_slice([0x80u8, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        b.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(ms));
        b
    };
    let render = |pad, ms: &[u64]| {
        let bufs: Vec<gst::Buffer> = ms.iter().map(|&m| frame(m)).collect();
        assert!(s
            .render_buffers(pad, Some(caps.clone()), Some(&seg), bufs.into_iter())
            .is_ok());
    };
    // In order, then I0 P100 B33 B66: one warning, whichever list the frames come in.
    render(0, &[0, 100]);
    assert!(rx.try_recv().is_err());
    render(0, &[33, 66]);
    match rx.try_recv() {
        Ok(Notice::Warning {
            kind: ErrorKind::Stream(gst::StreamError::Format),
            text,
            ..
        }) => {
            assert!(text.starts_with("sink_0: "), "{text}");
            assert!(text.contains("0:00:00.033"), "{text}");
            assert!(text.contains("WebRTC"), "{text}");
        }
        other => panic!("expected the B-frame warning, got {other:?}"),
    }
    render(0, &[200, 133, 166]);
    // After a flush the running time starts again: neither that nor more B-frames warn again.
    s.set_flushing(0, true);
    s.set_flushing(0, false);
    render(0, &[0, 100, 33]);
    assert!(rx.try_recv().is_err());
    // Another pad is warned about on its own.
    render(1, &[0, 100, 33]);
    assert!(
        matches!(rx.try_recv(), Ok(Notice::Warning { text, .. }) if text.starts_with("sink_1: "))
    );
    s.stop();
}

#[test]
fn audio_timestamps_going_back_are_no_b_frames() {
    let (s, rx) = session(&["sink_0", "sink_1"], Duration::from_secs(60));
    s.set_paused(true);
    let caps = gst::Caps::builder("application/x-rtp")
        .field("media", "audio")
        .field("encoding-name", "OPUS")
        .field("clock-rate", 48000i32)
        .build();
    let seg = gst::FormattedSegment::<gst::ClockTime>::new();
    for ms in [0u64, 20, 40, 39, 60] {
        let mut b = gst::Buffer::from_slice([0x80u8, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        b.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(ms));
        assert!(s
            .render_buffers(0, Some(caps.clone()), Some(&seg), std::iter::once(b))
            .is_ok());
    }
    assert!(rx.try_recv().is_err());
    s.stop();
}
