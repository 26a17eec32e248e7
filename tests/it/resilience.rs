//! Reconnect after the server goes away: backoff, a fresh handshake, video resuming on a
//! keyframe, no pipeline error while retries remain, one clear error after the last.

use crate::record_server;

use crate::harness::*;
use crate::scripted_server::*;
use gst::prelude::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn live(location: &str, extra: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max=300 ! rtph264pay ! \
         rtspannounce name=s location={location} {extra}"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap()
}

/// H.264 RTP payload that a decoder can start from: SPS or IDR, alone, first in a STAP-A,
/// or the first fragment of an FU-A (test-side reading of RFC 6184).
fn starts_keyframe(pkt: &[u8]) -> bool {
    let p = &pkt[12 + 4 * (pkt[0] & 0x0f) as usize..];
    let key = |t: u8| t == 5 || t == 7;
    match p[0] & 0x1f {
        24 => key(p[3] & 0x1f),
        28 => p[1] & 0x80 != 0 && key(p[1] & 0x1f),
        t => key(t),
    }
}

fn element_messages(bus: &gst::Bus, until: &str) -> (Vec<String>, Vec<String>, Option<String>) {
    let (mut names, mut warnings, mut error) = (vec![], vec![], None);
    while let Some(m) = bus.timed_pop(gst::ClockTime::from_seconds(20)) {
        match m.view() {
            gst::MessageView::Element(e) => {
                let n = e
                    .structure()
                    .map(|s| s.name().to_string())
                    .unwrap_or_default();
                let done = n == until;
                names.push(n);
                if done {
                    break;
                }
            }
            gst::MessageView::Warning(w) => warnings.push(w.error().message().to_string()),
            gst::MessageView::Error(e) => {
                error = Some(e.error().message().to_string());
                break;
            }
            _ => {}
        }
    }
    (names, warnings, error)
}

#[test]
fn reconnects_and_resumes_on_a_keyframe() {
    let server = ScriptedServer::start(Script::new());
    // A long GOP: without a forced keyframe the new session would wait 10 s for one.
    let p = live(&server.url("/live"), "retry-delay-min=200");
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_frames(30, T));
    let lost_at = Instant::now();
    assert!(server.drop_connection());
    let (names, warnings, error) = element_messages(&bus, "rtspannounce-reconnected");
    let outage = lost_at.elapsed();
    assert!(error.is_none(), "{error:?}");
    assert!(
        names.contains(&"rtspannounce-reconnecting".to_string()),
        "{names:?}"
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("rtspannounce-reconnected")
    );
    assert!(
        warnings.iter().any(|w| w.contains("reconnecting")),
        "{warnings:?}"
    );
    // Backoff 200 ms ± 20 %, then a handshake on loopback.
    assert!(outage < Duration::from_millis(1500), "{outage:?}");

    // The second connection: a whole new handshake, and media from a keyframe on.
    assert!(server.wait_for(
        |s| s
            .frames
            .iter()
            .filter(|f| f.conn == 1 && f.channel == 0)
            .count()
            >= 20,
        T
    ));
    let sink = p.by_name("s").unwrap();
    let stats: gst::Structure = sink.property("stats");
    assert_eq!(stats.get::<u32>("reconnects").unwrap(), 1);
    assert_eq!(stats.get::<&str>("state").unwrap(), "recording");
    p.set_state(gst::State::Null).unwrap();
    let snap = server.snapshot();
    assert_eq!(snap.methods_on(1)[..3], ["ANNOUNCE", "SETUP", "RECORD"]);
    let first = snap
        .frames
        .iter()
        .find(|f| f.conn == 1 && f.channel == 0)
        .unwrap();
    assert!(
        starts_keyframe(&first.data),
        "first packet after reconnect is not a keyframe"
    );
    // It came promptly: the encoder was asked for a keyframe (the GOP is 10 s long).
    let rec = snap
        .requests
        .iter()
        .find(|r| r.conn == 1 && r.method == "RECORD")
        .unwrap();
    assert!(
        first.at - rec.at < Duration::from_secs(2),
        "{:?}",
        first.at - rec.at
    );
}

#[test]
fn gives_up_after_retry_max_with_the_count() {
    let server = ScriptedServer::start(Script::new());
    let p = live(
        &server.url("/live"),
        "retry-max=3 retry-delay-min=50 retry-delay-max=200",
    );
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_frames(10, T));
    let t = Instant::now();
    server.stop();
    let (names, _, error) = element_messages(&bus, "never");
    p.set_state(gst::State::Null).unwrap();
    let error = error.expect("an error after the last attempt");
    assert!(
        error.contains("gave up after 3 reconnect attempts"),
        "{error}"
    );
    assert!(
        error.contains("refused") || error.contains("connect"),
        "{error}"
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "rtspannounce-reconnecting")
            .count(),
        1,
        "{names:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn gst_rtsp_server_restart_on_the_same_port() {
    use record_server::*;
    init();
    let server = RecordServer::start(RecordServerConfig::new("/live/cam", Tracks::H264)).unwrap();
    let port = server.port();
    let url = server.url();
    let p = live(&url, "retry-delay-min=500 retry-delay-max=2000");
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    // Wait until the first session records, then kill the server.
    let deadline = Instant::now() + T;
    while server.stats().tracks.first().is_none_or(|t| t.frames < 30) {
        assert!(Instant::now() < deadline, "no frames at the first server");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop();
    let down = Instant::now();
    // The server is away for 2 s: part of the scenario, not a wait for a condition.
    std::thread::sleep(Duration::from_secs(2));
    let server =
        RecordServer::start_on_port(RecordServerConfig::new("/live/cam", Tracks::H264), port)
            .unwrap();
    let (names, _, error) = element_messages(&bus, "rtspannounce-reconnected");
    let outage = down.elapsed();
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        names.last().map(String::as_str),
        Some("rtspannounce-reconnected")
    );
    // Attempts at 0.5, 1, 2, 2 s (±20 %) cover the 2 s outage: back within backoff + 1 s.
    assert!(outage < Duration::from_secs(5), "outage {outage:?}");
    let deadline = Instant::now() + T;
    while server.stats().tracks.first().is_none_or(|t| t.frames < 60) {
        assert!(
            Instant::now() < deadline,
            "no frames at the restarted server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p.set_state(gst::State::Null).unwrap();
    let report = server.wait_finished(T).unwrap();
    let v = &report.tracks[0];
    // Every packet the new server got decoded: it started on a keyframe.
    assert!(v.frames >= 60, "{report}");
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(
        v.parsed, v.frames,
        "frames the decoder could not decode:\n{report}"
    );
}
