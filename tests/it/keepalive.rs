//! Keep-alive: with `Session: id;timeout=2` the server hears from us well within 2 s, while media
//! flows and while the pipeline is paused; GET_PARAMETER falls back to OPTIONS when refused.

use crate::harness::*;
use crate::scripted_server::*;
use gst::prelude::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn live_pipeline(url: &str, extra: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=15/1 ! \
         x264enc tune=zerolatency ! rtph264pay ! rtspannounce location={url} {extra}"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap()
}

fn keepalive_gaps(snap: &Snapshot, method: &str) -> Vec<Duration> {
    let times: Vec<_> = snap
        .requests
        .iter()
        .filter(|r| r.method == "RECORD" || r.method == method)
        .map(|r| r.at)
        .collect();
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn keepalives_before_timeout_while_playing_and_paused() {
    let server = ScriptedServer::start(Script::new().session_timeout(Some(2)));
    let p = live_pipeline(&server.url("/live/cam"), "");
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_requests("GET_PARAMETER", 2, T));
    // No RTP from here on: the keep-alives must go on by themselves.
    p.set_state(gst::State::Paused).unwrap();
    let frames_paused = server.frame_count();
    // Paused long enough that a missed keep-alive would show: ten of them, about 10 s.
    assert!(server.wait_requests("GET_PARAMETER", 10, T));
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_frames(frames_paused + 5, T));
    p.set_state(gst::State::Null).unwrap();
    assert!(server.wait_requests("TEARDOWN", 1, T));

    let snap = server.snapshot();
    let gaps = keepalive_gaps(&snap, "GET_PARAMETER");
    assert!(gaps.len() >= 6);
    for g in &gaps {
        assert!(
            *g < Duration::from_millis(1600),
            "keep-alive gap {g:?} with timeout=2"
        );
    }
    for r in snap.requests.iter().filter(|r| r.method == "GET_PARAMETER") {
        assert_eq!(r.header("Session"), Some(DEFAULT_SESSION_ID));
        assert!(r.uri.ends_with("/live/cam"));
    }
    assert!(snap.protocol_errors.is_empty());
}

#[test]
fn options_when_get_parameter_is_refused() {
    let server = ScriptedServer::start(Script::new().session_timeout(Some(2)).respond_status(
        "GET_PARAMETER",
        501,
        "Not Implemented",
    ));
    let p = live_pipeline(&server.url("/live/cam"), "");
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_requests("OPTIONS", 2, T));
    p.set_state(gst::State::Null).unwrap();
    let snap = server.snapshot();
    assert_eq!(snap.count("GET_PARAMETER"), 1);
}

#[test]
fn keepalive_off() {
    let server = ScriptedServer::start(Script::new().session_timeout(Some(1)));
    let p = live_pipeline(&server.url("/live/cam"), "do-rtsp-keep-alive=false");
    p.set_state(gst::State::Playing).unwrap();
    // 45 frames at 15 fps: 3 s, three session timeouts.
    assert!(server.wait_frames(45, T));
    p.set_state(gst::State::Null).unwrap();
    assert_eq!(server.snapshot().count("GET_PARAMETER"), 0);
}

#[test]
fn unanswered_keepalive_is_an_error() {
    let server = ScriptedServer::start(
        Script::new()
            .session_timeout(Some(1))
            .never_answer("GET_PARAMETER"),
    );
    let p = live_pipeline(&server.url("/live/cam"), "tcp-timeout=1000000 retry-max=0");
    let out = run(&p, T);
    assert_eq!(out.error_is, Some(gst::ResourceError::Write), "{out:?}");
    assert!(
        out.error_text().contains("keep-alive"),
        "{}",
        out.error_text()
    );
}
