//! Caps that change mid-stream: a new resolution streams on (parameter sets in-band) and every
//! frame decodes at gst-rtsp-server; with reannounce-on-caps-change the element announces again.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/record_server.rs"]
mod record_server;
#[path = "common/scripted_server.rs"]
mod scripted_server;

use gst::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A live 320x240 H.264 stream that switches to 640x480 after 45 frames.
fn switching_pipeline(location: &str, extra: &str) -> gst::Pipeline {
    harness::init();
    let p = gst::parse::launch(&format!(
        "videotestsrc name=src is-live=true num-buffers=120 ! \
         capsfilter name=cf caps=video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency bframes=0 key-int-max=30 ! rtph264pay ! \
         rtspannounce name=s location={location} {extra}"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let cf = p.by_name("cf").unwrap();
    let n = Arc::new(AtomicU32::new(0));
    p.by_name("src")
        .unwrap()
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            if n.fetch_add(1, Ordering::SeqCst) == 45 {
                cf.set_property(
                    "caps",
                    gst::Caps::builder("video/x-raw")
                        .field("width", 640)
                        .field("height", 480)
                        .field("framerate", gst::Fraction::new(30, 1))
                        .build(),
                );
            }
            gst::PadProbeReturn::Ok
        });
    p
}

#[test]
fn resolution_switch_decodes_at_gst_rtsp_server() {
    use record_server::*;
    let server = RecordServer::start(RecordServerConfig::new("/live/cam", Tracks::H264)).unwrap();
    let p = switching_pipeline(&server.url(), "");
    let out = harness::run(&p, Duration::from_secs(30));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    let v = &report.tracks[0];
    // One session, all 120 frames decoded, the last at the new size.
    assert_eq!(report.sessions, 1, "{report}");
    assert_eq!(v.frames, 120, "{report}");
    assert_eq!((v.width, v.height), (Some(640), Some(480)), "{report}");
    assert!(report.errors.is_empty(), "{report}");
}

#[test]
fn reannounce_on_caps_change_starts_a_new_session_on_a_keyframe() {
    use scripted_server::*;
    let server = ScriptedServer::start(Script::new());
    let p = switching_pipeline(&server.url("/live"), "reannounce-on-caps-change=true");
    let out = harness::run(&p, Duration::from_secs(30));
    assert!(out.eos, "{out:?}");
    let snap = server.snapshot();
    assert_eq!(snap.connection_count(), 2, "{:?}", snap.methods());
    assert_eq!(snap.methods_on(0).last(), Some(&"TEARDOWN"));
    let a0 = snap
        .requests
        .iter()
        .find(|r| r.conn == 0 && r.method == "ANNOUNCE")
        .unwrap();
    let a1 = snap
        .requests
        .iter()
        .find(|r| r.conn == 1 && r.method == "ANNOUNCE")
        .unwrap();
    // The new SDP carries the new parameter sets.
    let sprop = |r: &RecordedRequest| {
        r.body_str()
            .lines()
            .find(|l| l.contains("sprop-parameter-sets"))
            .unwrap()
            .to_string()
    };
    assert_ne!(sprop(a0), sprop(a1));
    let first = snap
        .frames
        .iter()
        .find(|f| f.conn == 1 && f.channel == 0)
        .unwrap();
    let pl = &first.data[12..];
    let nal = pl[0] & 0x1f;
    let key = nal == 5
        || nal == 7
        || (nal == 24 && matches!(pl[3] & 0x1f, 5 | 7))
        || (nal == 28 && pl[1] & 0x80 != 0 && matches!(pl[1] & 0x1f, 5 | 7));
    assert!(key, "the new session starts on a delta frame");
}
