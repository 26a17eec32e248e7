//! Caps that change mid-stream: a new resolution streams on (parameter sets in-band) and every
//! frame decodes at gst-rtsp-server; with reannounce-on-caps-change the element announces again.

use crate::harness;
use crate::record_server;
use crate::scripted_server;

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

/// One RTP packet (PT 96) of 16-bit PCM silence.
fn l16_packet(seq: u16) -> gst::Buffer {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(&[0u8; 320]);
    gst::Buffer::from_mut_slice(p)
}

fn l16_caps(rate: i32) -> gst::Caps {
    gst::Caps::builder("application/x-rtp")
        .field("media", "audio")
        .field("encoding-name", "L16")
        .field("clock-rate", rate)
        .field("encoding-params", "1")
        .field("channels", 1i32)
        .field("payload", 96i32)
        .build()
}

/// Caps that change while ANNOUNCE waits for its answer are not what the SDP on its way
/// describes: once recording, the element announces again with the new ones instead of sending a
/// codec the server was never told of. (The first buffer waits in preroll for RECORD; the new
/// caps and the next buffer queue behind it in appsrc and reach the element once recording.)
#[test]
fn a_codec_change_during_the_handshake_is_announced() {
    use scripted_server::*;
    harness::init();
    // The first ANNOUNCE is answered only once the test has changed the caps.
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let open_gate = |gate: &(std::sync::Mutex<bool>, std::sync::Condvar)| {
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    };
    // Opened however the test ends, or a failed assertion would leave the server thread waiting.
    struct OpenOnDrop<F: Fn()>(F);
    impl<F: Fn()> Drop for OpenOnDrop<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let g = gate.clone();
    let server = ScriptedServer::start(Script::new().custom("ANNOUNCE", move |req| {
        if req.conn == 0 {
            let (lock, cond) = &*g;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cond.wait(open).unwrap();
            }
        }
        Action::Normal
    }));
    let g = gate.clone();
    let _open = OpenOnDrop(move || open_gate(&g));
    let p = gst::parse::launch(&format!(
        "appsrc name=src format=time ! rtspannounce location={} sync=false",
        server.url("/live/a")
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = p
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(&l16_caps(44100)));
    p.set_state(gst::State::Playing).unwrap();
    src.push_buffer(l16_packet(0)).unwrap();
    assert!(
        server.wait_for(|s| s.count("ANNOUNCE") == 1, Duration::from_secs(10)),
        "no ANNOUNCE"
    );
    // The preroll waits for RECORD: the pipeline is not PLAYING before the server takes data.
    let (res, _, _) = p.state(gst::ClockTime::from_mseconds(0));
    assert_eq!(res, Ok(gst::StateChangeSuccess::Async));
    src.set_caps(Some(&l16_caps(8000)));
    src.push_buffer(l16_packet(1)).unwrap();
    open_gate(&gate);
    let announced = server.wait_for(|s| s.count("ANNOUNCE") >= 2, Duration::from_secs(10));
    for seq in 2..10 {
        src.push_buffer(l16_packet(seq)).unwrap();
    }
    src.end_of_stream().unwrap();
    let out = harness::run(&p, Duration::from_secs(20));
    p.set_state(gst::State::Null).unwrap();
    let snap = server.snapshot();
    assert!(announced, "announced once only: {:?}", snap.methods());
    let first = snap.first("ANNOUNCE").unwrap().body_str();
    let last = snap.last("ANNOUNCE").unwrap().body_str();
    assert!(first.contains("L16/44100"), "{first}");
    assert!(last.contains("L16/8000"), "{last}");
    assert!(out.eos, "{out:?}");
}
