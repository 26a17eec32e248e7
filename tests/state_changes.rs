//! No state change waits on the network (DESIGN.md §2a): going to NULL or READY returns within
//! 100 ms whatever the server is doing.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/scripted_server.rs"]
mod scripted_server;

use gst::prelude::*;
use harness::*;
use scripted_server::*;
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
