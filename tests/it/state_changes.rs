//! What must not wait (DESIGN.md §2a): a state change on the network (going to NULL or READY
//! returns within 100 ms whatever the server is doing), a pad on another pad's flush, a session
//! on another session's application handlers.

use crate::harness::*;
use crate::scripted_server::*;
use gst::prelude::*;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_millis(100);
const T: Duration = Duration::from_secs(20);

fn video(location: &str, live: bool) -> gst::Pipeline {
    pipeline(&format!(
        "videotestsrc is-live={live} ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency bframes=0 key-int-max=30 speed-preset=ultrafast ! rtph264pay ! \
         rtspannounce location=\"{location}\" retry-max=0"
    ))
}

fn timed_stop(p: &gst::Pipeline, to: gst::State) -> Duration {
    let t = Instant::now();
    let _ = p.set_state(to);
    t.elapsed()
}

#[test]
fn null_while_announce_waits_for_its_answer() {
    for live in [true, false] {
        for to in [gst::State::Null, gst::State::Ready] {
            let server = ScriptedServer::start(Script::new().never_answer("ANNOUNCE"));
            let p = video(&server.url("/live"), live);
            let _ = p.set_state(gst::State::Playing);
            assert!(server.wait_requests("ANNOUNCE", 1, T), "no ANNOUNCE");
            let took = timed_stop(&p, to);
            let _ = p.set_state(gst::State::Null);
            assert!(took < BOUND, "live={live} {to:?} took {took:?}");
        }
    }
}

#[test]
fn null_while_the_server_stopped_reading() {
    for to in [gst::State::Null, gst::State::Ready] {
        let server = ScriptedServer::start(
            Script::new()
                .stop_reading_after_record()
                .keep_frame_data(false),
        );
        // 20 Mbit/s of live video fills the socket buffers within a second or two.
        let p = pipeline(&format!(
            "videotestsrc is-live=true pattern=snow ! video/x-raw,width=1280,height=720,framerate=30/1 ! \
             x264enc tune=zerolatency bitrate=20000 speed-preset=ultrafast ! rtph264pay ! \
             rtspannounce location=\"{}\"",
            server.url("/live")
        ));
        let _ = p.set_state(gst::State::Playing);
        let element = p.iterate_sinks().into_iter().flatten().next().unwrap();
        assert!(server.wait_requests("RECORD", 1, T), "no RECORD");
        // Wait until the queue (4 MB by default) is nearly full: the socket takes nothing, and
        // the streaming thread is about to block, or blocked, waiting for room.
        let deadline = Instant::now() + T;
        loop {
            let stats = element.property::<gst::Structure>("stats");
            let level = stats.get::<u64>("queue-bytes").unwrap_or(0);
            if level > 3_500_000 {
                break;
            }
            assert!(Instant::now() < deadline, "queue never filled: {stats}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = timed_stop(&p, to);
        let _ = p.set_state(gst::State::Null);
        assert!(took < BOUND, "{to:?} took {took:?}");
    }
}

#[test]
fn pause_while_announce_waits_for_its_answer() {
    let server = ScriptedServer::start(Script::new().never_answer("ANNOUNCE"));
    let p = video(&server.url("/live"), false);
    let _ = p.set_state(gst::State::Playing);
    assert!(server.wait_requests("ANNOUNCE", 1, T), "no ANNOUNCE");
    let took = timed_stop(&p, gst::State::Paused);
    // Back to PLAYING and then down: the held buffers wait for RECORD again, and nothing hangs.
    let _ = p.set_state(gst::State::Playing);
    let down = timed_stop(&p, gst::State::Null);
    assert!(took < BOUND, "PAUSED took {took:?}");
    assert!(down < BOUND, "NULL took {down:?}");
}

/// A pad requested and released while PAUSED, before data flows, takes its track with it: the
/// session announces the pads that remain instead of waiting for the gone one until
/// announce-timeout (found by the concurrency stress test, seeds 1019607112 and 3911498968).
#[test]
fn a_pad_released_before_data_flows_leaves_no_track() {
    let server = ScriptedServer::start(Script::new());
    let p = pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency bframes=0 key-int-max=30 speed-preset=ultrafast ! rtph264pay ! \
         rtspannounce name=s location=\"{}\" announce-timeout=3000",
        server.url("/live")
    ));
    let sink = p.by_name("s").unwrap();
    let _ = p.set_state(gst::State::Paused);
    for _ in 0..2 {
        let extra = sink.request_pad_simple("sink_%u").unwrap();
        assert_eq!(extra.name(), "sink_1");
        sink.release_request_pad(&extra);
    }
    let bus = p.bus().unwrap();
    let _ = p.set_state(gst::State::Playing);
    let recorded = server.wait_requests("RECORD", 1, T);
    let error = bus
        .pop_filtered(&[gst::MessageType::Error])
        .map(|m| format!("{m:?}"));
    let _ = p.set_state(gst::State::Null);
    assert!(recorded, "no RECORD: {error:?}");
    let announce = server.snapshot().first("ANNOUNCE").unwrap().body_str();
    assert_eq!(announce.matches("m=").count(), 1, "{announce}");
}

/// Flushing is per pad: a flush on the audio pad of a live H.264+AAC push leaves the video
/// track streaming (one session-wide flag stopped every pad: 0 video packets in 1.5 s).
#[test]
fn a_flush_on_one_pad_leaves_the_others_streaming() {
    for protocols in ["tcp", "udp"] {
        let server = ScriptedServer::start(Script::new());
        let p = pipeline(&format!(
            "rtspannounce name=s location=\"{}\" protocols={protocols} \
             videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 ! \
             x264enc tune=zerolatency bframes=0 key-int-max=30 speed-preset=ultrafast ! \
             rtph264pay ! s.sink_0 \
             audiotestsrc is-live=true samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 ! \
             avenc_aac ! aacparse ! rtpmp4gpay ! s.sink_1",
            server.url("/live")
        ));
        let sink = p.by_name("s").unwrap();
        let _ = p.set_state(gst::State::Playing);
        assert!(
            server.wait_requests("RECORD", 1, T),
            "{protocols}: no RECORD"
        );
        let video_packets = || {
            let stats = sink.property::<gst::Structure>("stats");
            let tracks = stats.get::<gst::Array>("tracks").unwrap();
            tracks.as_slice()[0]
                .get::<gst::Structure>()
                .unwrap()
                .get::<u64>("packets")
                .unwrap_or(0)
        };
        // Recording first: a flush while a pad still prerolls keeps the whole bin from PLAYING
        // until that pad prerolls again (GStreamer's rule), which is not what this test is about.
        let deadline = Instant::now() + T;
        while video_packets() == 0 {
            assert!(Instant::now() < deadline, "{protocols}: no video sent");
            std::thread::sleep(Duration::from_millis(20));
        }
        let audio = sink.static_pad("sink_1").unwrap();
        assert!(audio.send_event(gst::event::FlushStart::new()));
        let before = video_packets();
        // Video goes on while audio is flushing: 90 more packets (a few seconds of frames).
        let deadline = Instant::now() + Duration::from_secs(10);
        while video_packets() < before + 90 {
            assert!(
                Instant::now() < deadline,
                "{protocols}: video stopped while audio flushed ({} packets)",
                video_packets() - before
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(audio.send_event(gst::event::FlushStop::new(true)));
        let _ = p.set_state(gst::State::Null);
    }
}

/// NULL while the TEARDOWN of an ending waits for its answer: the connection closes within the
/// stop's bound, and that TEARDOWN stays the only one (a stop sent a second).
#[test]
fn null_while_the_teardown_waits_sends_no_second_one() {
    let server = ScriptedServer::start(Script::new().never_answer("TEARDOWN"));
    let p = pipeline(&format!(
        "{} ! rtspannounce location=\"{}\" sync=false",
        h264_branch(10, "pay"),
        server.url("/live")
    ));
    let _ = p.set_state(gst::State::Playing);
    assert!(server.wait_requests("TEARDOWN", 1, T), "no TEARDOWN");
    let took = timed_stop(&p, gst::State::Null);
    assert!(took < BOUND, "NULL took {took:?}");
    assert!(server.wait_closed(Duration::from_secs(5)), "never closed");
    assert_eq!(server.snapshot().count("TEARDOWN"), 1);
}

/// Application handlers run off the shared I/O workers: four sessions whose `update-sdp`
/// handler takes 2 s do not hold up a fifth (it took 3.7 s to get RECORD answered).
#[test]
fn a_slow_update_sdp_handler_holds_up_only_its_own_session() {
    init();
    let server = ScriptedServer::start(Script::new());
    let audio = |path: &str| {
        pipeline(&format!(
            "audiotestsrc is-live=true samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 ! \
             mulawenc ! rtppcmupay ! rtspannounce name=s location=\"{}\"",
            server.url(path)
        ))
    };
    let started = std::sync::Arc::new((std::sync::Mutex::new(0), std::sync::Condvar::new()));
    let slow: Vec<gst::Pipeline> = (0..4)
        .map(|i| {
            let p = audio(&format!("/slow{i}"));
            let started = started.clone();
            p.by_name("s")
                .unwrap()
                .connect("update-sdp", false, move |_| {
                    *started.0.lock().unwrap() += 1;
                    started.1.notify_all();
                    std::thread::sleep(Duration::from_secs(2));
                    None
                });
            let _ = p.set_state(gst::State::Playing);
            p
        })
        .collect();
    // Every slow handler is running before the fifth session starts.
    let (n, _) = started
        .1
        .wait_timeout_while(started.0.lock().unwrap(), T, |n| *n < 4)
        .unwrap();
    assert_eq!(*n, 4);
    drop(n);
    let t = Instant::now();
    let fast = audio("/fast");
    let _ = fast.set_state(gst::State::Playing);
    let recorded = server.wait_for(
        |s| {
            s.requests
                .iter()
                .any(|r| r.method == "RECORD" && r.uri.contains("/fast"))
        },
        T,
    );
    let took = t.elapsed();
    let _ = fast.set_state(gst::State::Null);
    for p in slow {
        let _ = p.set_state(gst::State::Null);
    }
    assert!(recorded, "the fifth session never recorded");
    assert!(
        took < Duration::from_secs(1),
        "the fifth session took {took:?}"
    );
}
