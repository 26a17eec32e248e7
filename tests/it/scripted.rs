//! The element against our scripted server: exact request sequence and headers, and every
//! interleaved packet compared byte for byte with what the payloaders produced.

use crate::harness::*;
use crate::scripted_server::*;
use gst::prelude::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn by_name(p: &gst::Pipeline, n: &str) -> gst::Element {
    p.by_name(n).unwrap()
}

fn assert_common_headers(reqs: &[RecordedRequest]) {
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.cseq(), Some(i as u32 + 1), "CSeq of {}", r.method);
        let ua = r.header("User-Agent").unwrap();
        assert!(ua.starts_with("rtspannounce/"), "{ua}");
        assert_eq!(r.version, "RTSP/1.0");
    }
}

#[test]
fn one_pad_exact_sequence_and_bytes() {
    let server = ScriptedServer::start(Script::new());
    let url = server.url("/live/cam1");
    let p = pipeline(&format!(
        "{} ! rtspannounce location={url} sync=false",
        h264_branch(60, "vpay")
    ));
    let cap = capture_src(&by_name(&p, "vpay"));
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");

    let snap = server.snapshot();
    assert_eq!(snap.methods(), ["ANNOUNCE", "SETUP", "RECORD", "TEARDOWN"]);
    let reqs = &snap.requests;
    assert_common_headers(reqs);
    let port = server.port();
    assert_eq!(reqs[0].uri, format!("rtsp://127.0.0.1:{port}/live/cam1"));
    assert_eq!(reqs[0].header("Content-Type"), Some("application/sdp"));
    assert_eq!(reqs[0].header("Session"), None);
    let sdp = reqs[0].body_str();
    assert!(sdp.starts_with("v=0\r\n"), "{sdp}");
    assert!(sdp.contains("\r\nm=video 0 RTP/AVP 96\r\n"), "{sdp}");
    assert!(sdp.contains("\r\na=rtpmap:96 H264/90000\r\n"), "{sdp}");
    assert!(sdp.contains("sprop-parameter-sets="), "{sdp}");
    assert!(sdp.contains("\r\na=control:streamid=0\r\n"), "{sdp}");
    assert!(sdp.contains("\r\nc=IN IP4 127.0.0.1\r\n"), "{sdp}");
    assert_eq!(
        reqs[1].uri,
        format!("rtsp://127.0.0.1:{port}/live/cam1/streamid=0")
    );
    assert_eq!(
        reqs[1].header("Transport"),
        Some("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record")
    );
    assert_eq!(reqs[1].header("Session"), None);
    assert_eq!(reqs[2].header("Range"), Some("npt=0.000-"));
    assert_eq!(reqs[2].uri, format!("rtsp://127.0.0.1:{port}/live/cam1"));
    // The id alone, never ";timeout=".
    assert_eq!(reqs[2].header("Session"), Some(DEFAULT_SESSION_ID));
    assert_eq!(reqs[3].header("Session"), Some(DEFAULT_SESSION_ID));

    let sent = cap.lock().unwrap().clone();
    assert!(sent.len() >= 60, "payloader produced {}", sent.len());
    let frames = snap.frames_on(0);
    assert!(snap.frames.iter().all(|f| f.after_record));
    assert_eq!(frames.len(), sent.len());
    for (i, (f, s)) in frames.iter().zip(&sent).enumerate() {
        assert_eq!(&f.data, s, "packet {i} differs");
    }
    assert!(snap.client_closed());
}

#[test]
fn two_pads_same_pt_remapped_and_bytes_exact() {
    let server = ScriptedServer::start(Script::new().session_on_announce(true));
    let url = server.url("/live/av");
    let p = pipeline(&format!(
        "rtspannounce name=s location={url} sync=false {} ! s.sink_0 {} ! s.sink_1",
        h264_branch(45, "vpay"),
        aac_branch(70, "apay")
    ));
    let vcap = capture_src(&by_name(&p, "vpay"));
    let acap = capture_src(&by_name(&p, "apay"));
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");

    let snap = server.snapshot();
    assert_eq!(
        snap.methods(),
        ["ANNOUNCE", "SETUP", "SETUP", "RECORD", "TEARDOWN"]
    );
    let reqs = &snap.requests;
    assert_common_headers(reqs);
    // ZLMediaKit-style: the session came with ANNOUNCE's answer, so every SETUP carries it.
    assert_eq!(reqs[1].header("Session"), Some(DEFAULT_SESSION_ID));
    assert_eq!(reqs[2].header("Session"), Some(DEFAULT_SESSION_ID));
    assert!(reqs[2].uri.ends_with("/live/av/streamid=1"));
    assert_eq!(
        reqs[2].header("Transport"),
        Some("RTP/AVP/TCP;unicast;interleaved=2-3;mode=record")
    );
    let sdp = reqs[0].body_str();
    assert!(sdp.contains("m=video 0 RTP/AVP 96\r\n"), "{sdp}");
    assert!(sdp.contains("m=audio 0 RTP/AVP 97\r\n"), "{sdp}");
    assert!(
        sdp.contains("a=rtpmap:97 MPEG4-GENERIC/48000/2\r\n"),
        "{sdp}"
    );
    assert!(sdp.contains("a=fmtp:97 "), "{sdp}");
    assert!(sdp.contains("config="), "{sdp}");
    assert!(sdp.contains("a=control:streamid=1\r\n"), "{sdp}");

    let v = vcap.lock().unwrap().clone();
    let a = acap.lock().unwrap().clone();
    let vf = snap.frames_on(0);
    let af = snap.frames_on(2);
    assert_eq!(vf.len(), v.len());
    assert_eq!(af.len(), a.len());
    assert!(vf.len() >= 45 && af.len() >= 70);
    for (f, s) in vf.iter().zip(&v) {
        assert_eq!(&f.data, s);
    }
    for (f, s) in af.iter().zip(&a) {
        // Audio was payloaded as PT 96 like the video: it goes out as 97, marker bit kept.
        assert_eq!(s[1] & 0x7f, 96);
        let mut expect = s.clone();
        expect[1] = (s[1] & 0x80) | 97;
        assert_eq!(f.data, expect);
    }
}

#[test]
fn server_chosen_channels_are_used() {
    let server = ScriptedServer::start(
        Script::new().transport_override("RTP/AVP/TCP;unicast;interleaved=6-7"),
    );
    let url = server.url("/x");
    let p = pipeline(&format!(
        "{} ! rtspannounce location={url} sync=false",
        h264_branch(10, "vpay")
    ));
    let cap = capture_src(&by_name(&p, "vpay"));
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let snap = server.snapshot();
    assert!(snap.frames_on(0).is_empty());
    assert_eq!(snap.frames_on(6).len(), cap.lock().unwrap().len());
}

#[test]
fn query_and_content_base_control_urls() {
    // FFmpeg style by default.
    let server = ScriptedServer::start(Script::new());
    let url = server.url("/live/cam?secret=abc");
    let p = pipeline(&format!(
        "{} ! rtspannounce location={url} sync=false",
        h264_branch(5, "vpay")
    ));
    assert!(run(&p, T).eos);
    let r = server.requests();
    let port = server.port();
    assert_eq!(
        r[0].uri,
        format!("rtsp://127.0.0.1:{port}/live/cam?secret=abc")
    );
    assert_eq!(
        r[1].uri,
        format!("rtsp://127.0.0.1:{port}/live/cam?secret=abc/streamid=0")
    );

    let server = ScriptedServer::start(Script::new());
    let url = server.url("/live/cam?secret=abc");
    let p = pipeline(&format!(
        "{} ! rtspannounce location={url} sync=false setup-url-style=gstreamer",
        h264_branch(5, "vpay")
    ));
    assert!(run(&p, T).eos);
    let port = server.port();
    assert_eq!(
        server.requests()[1].uri,
        format!("rtsp://127.0.0.1:{port}/live/cam/streamid=0?secret=abc")
    );

    let server = ScriptedServer::start(Script::new());
    let url = server.url("/live/cam?secret=abc");
    let p = pipeline(&format!(
        "{} ! rtspannounce location={url} sync=false setup-url-style=no-query",
        h264_branch(5, "vpay")
    ));
    assert!(run(&p, T).eos);
    let port = server.port();
    let r = server.requests();
    assert_eq!(
        r[0].uri,
        format!("rtsp://127.0.0.1:{port}/live/cam?secret=abc")
    );
    assert_eq!(
        r[1].uri,
        format!("rtsp://127.0.0.1:{port}/live/cam/streamid=0")
    );
    assert_eq!(r[2].uri, format!("rtsp://127.0.0.1:{port}/live/cam"));
    assert_eq!(r[3].uri, format!("rtsp://127.0.0.1:{port}/live/cam"));

    let server = ScriptedServer::start(Script::new().content_base("rtsp://127.0.0.1/base/"));
    let url = server.url("/live/cam");
    let p = pipeline(&format!(
        "{} ! rtspannounce location={url} sync=false",
        h264_branch(5, "vpay")
    ));
    assert!(run(&p, T).eos);
    assert_eq!(server.requests()[1].uri, "rtsp://127.0.0.1/base/streamid=0");
}

#[test]
fn server_requests_while_streaming_are_answered() {
    let server = ScriptedServer::start(Script::new().request_after_record("OPTIONS"));
    let url = server.url("/live/cam");
    // Live source: the stream is still flowing when the server asks.
    let p = pipeline(&format!(
        "videotestsrc is-live=true num-buffers=60 ! video/x-raw,width=160,height=120,framerate=30/1 ! \
         x264enc tune=zerolatency bframes=0 ! rtph264pay name=vpay ! rtspannounce location={url}"
    ));
    let cap = capture_src(&by_name(&p, "vpay"));
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let snap = server.snapshot();
    assert_eq!(snap.responses.len(), 1, "{:?}", snap.responses);
    assert_eq!(snap.responses[0].status, 200);
    assert!(snap.responses[0].header("Public").is_some());
    assert_eq!(snap.frames_on(0).len(), cap.lock().unwrap().len());
    assert_eq!(snap.methods().last(), Some(&"TEARDOWN"));
}

#[test]
fn strict_session_server_accepts_our_session_header() {
    let server = ScriptedServer::start(Script::new().strict_session().close_on_early_media());
    let url = server.url("/live/cam");
    let p = pipeline(&format!(
        "{} ! rtspannounce location={url} sync=false",
        h264_branch(10, "vpay")
    ));
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    assert!(server.snapshot().protocol_errors.is_empty());
}

#[test]
fn sync_true_pushes_at_real_time() {
    let server = ScriptedServer::start(Script::new());
    let url = server.url("/live/cam");
    // 45 frames at 30 fps from a non-live source: about 1.5 s when synced to the clock.
    let p = pipeline(&format!(
        "{} ! rtspannounce location={url}",
        h264_branch(45, "vpay")
    ));
    let started = std::time::Instant::now();
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400),
        "pushed in {took:?}: not clock-synced"
    );
    let frames = server.frames();
    let first = frames.first().unwrap().at;
    let last = frames.last().unwrap().at;
    assert!(
        last - first >= Duration::from_millis(1300),
        "{:?}",
        last - first
    );
}

#[test]
fn null_mid_stream_sends_teardown_and_closes() {
    let server = ScriptedServer::start(Script::new());
    let url = server.url("/live/cam");
    let p = pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 ! \
         x264enc tune=zerolatency ! rtph264pay ! rtspannounce location={url}"
    ));
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_frames(10, T));
    let t = std::time::Instant::now();
    p.set_state(gst::State::Null).unwrap();
    // The state change itself does not wait on the network.
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(server.wait_requests("TEARDOWN", 1, T));
    assert!(server.wait_closed(T));
    let snap = server.snapshot();
    assert_eq!(
        snap.last("TEARDOWN").unwrap().header("Session"),
        Some(DEFAULT_SESSION_ID)
    );
}

#[test]
fn pad_requested_while_publishing_is_an_error() {
    let server = ScriptedServer::start(Script::new());
    let url = server.url("/live/cam");
    let p = pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 ! \
         x264enc tune=zerolatency ! rtph264pay ! rtspannounce name=s location={url}"
    ));
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_frames(5, T));
    let sink = by_name(&p, "s");
    assert!(sink.request_pad_simple("sink_%u").is_none());
    let text = next_message_text(&bus, gst::MessageType::Error);
    assert!(text.contains("while publishing"), "{text}");
    p.set_state(gst::State::Null).unwrap();
}

#[test]
fn host_names_resolve() {
    let server = ScriptedServer::start(Script::new());
    let url = format!("rtsp://localhost:{}/live/cam", server.port());
    let p = pipeline(&format!(
        "{} ! rtspannounce location={url} sync=false",
        h264_branch(5, "vpay")
    ));
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    assert_eq!(server.snapshot().count("RECORD"), 1);
}

#[test]
fn live_pad_silent_is_named_in_the_error() {
    let server = ScriptedServer::start(Script::new());
    let url = server.url("/live/cam");
    // sink_1 is requested but never fed.
    let p = pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 ! \
         x264enc tune=zerolatency ! rtph264pay ! rtspannounce name=s location={url} announce-timeout=500"
    ));
    let _silent = by_name(&p, "s").request_pad_simple("sink_%u").unwrap();
    let out = run(&p, T);
    assert!(out.error.is_some(), "{out:?}");
    let text = out.error_text();
    assert!(
        text.contains("sink_1") && text.contains("announce-timeout"),
        "{text}"
    );
    assert!(!text.contains("sink_0"), "{text}");
    assert_eq!(server.snapshot().count("ANNOUNCE"), 0);
}
