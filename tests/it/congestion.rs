//! A server that stops reading: with congestion-policy=drop the element drops whole frames
//! (video up to a keyframe) and the server gets a decodable stream; with block nothing is lost.

use crate::harness::*;
use crate::scripted_server::*;
use gst::prelude::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn pipeline(url: &str, extra: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(&format!(
        "videotestsrc pattern=snow num-buffers=240 ! video/x-raw,width=640,height=480,framerate=30/1 ! \
         x264enc tune=zerolatency speed-preset=ultrafast bitrate=20000 key-int-max=30 ! \
         rtph264pay name=vpay ! rtspannounce name=s location={url} sync=false max-queue-bytes=262144 {extra}"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap()
}

fn stat<T: for<'a> gst::glib::value::FromValue<'a> + 'static>(sink: &gst::Element, f: &str) -> T {
    let s: gst::Structure = sink.property("stats");
    s.get::<T>(f).unwrap()
}

/// Waits for a condition on the element that has no notification of its own.
fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn seq(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[2], p[3]])
}

fn starts_keyframe(pkt: &[u8]) -> bool {
    let p = &pkt[12..];
    let key = |t: u8| t == 5 || t == 7;
    match p[0] & 0x1f {
        24 => key(p[3] & 0x1f),
        28 => p[1] & 0x80 != 0 && key(p[1] & 0x1f),
        t => key(t),
    }
}

#[test]
fn drop_policy_sends_only_whole_frames_and_resumes_on_keyframes() {
    let server = ScriptedServer::start(Script::new().stop_reading_after_record());
    let p = pipeline(&server.url("/live"), "congestion-policy=drop");
    let sink = p.by_name("s").unwrap();
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Warning, gst::MessageType::Error],
        )
        .expect("a congestion warning");
    let gst::MessageView::Warning(w) = msg.view() else {
        panic!("{msg:?}")
    };
    assert!(w.error().message().contains("dropping"), "{}", w.error());
    // The queue stays at its bound while the server does not read.
    let level: u64 = stat(&sink, "queue-bytes");
    assert!(level < 262144 + 256 * 1024, "queue {level}");
    server.resume_reading();
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let dropped: u64 = {
        let s: gst::Structure = sink.property("stats");
        s.get("dropped-packets").unwrap()
    };
    assert!(dropped > 0);

    let snap = server.snapshot();
    let media: Vec<&Frame> = snap.frames_on(0);
    assert!(!media.is_empty());
    // Frames are runs of packets ending with the marker bit; no frame is missing a packet, and
    // after every gap the next frame starts with a keyframe.
    let mut gaps = 0;
    let mut frame_start = true;
    let mut prev: Option<u16> = None;
    for f in &media {
        let d = &f.data;
        let s = seq(d);
        if let Some(p) = prev {
            if s != p.wrapping_add(1) {
                assert!(
                    frame_start,
                    "a packet is missing inside a frame (seq {p} -> {s})"
                );
                assert!(
                    starts_keyframe(d),
                    "after a gap the stream resumes on a delta frame"
                );
                gaps += 1;
            }
        }
        prev = Some(s);
        frame_start = d[1] & 0x80 != 0;
    }
    assert!(gaps >= 1, "no drop reached the server's stream");
}

#[test]
fn block_policy_throttles_and_delivers_every_packet() {
    let server = ScriptedServer::start(Script::new().stop_reading_after_record());
    let p = pipeline(&server.url("/live"), "");
    let sink = p.by_name("s").unwrap();
    let cap = capture_src(&p.by_name("vpay").unwrap());
    p.set_state(gst::State::Playing).unwrap();
    // The queue reaches its bound while the server does not read: upstream is held there.
    wait_until(|| stat::<u64>(&sink, "queue-bytes") >= 200_000);
    server.resume_reading();
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let sent = cap.lock().unwrap().clone();
    let snap = server.snapshot();
    let got = snap.frames_on(0);
    assert_eq!(got.len(), sent.len());
    for (g, s) in got.iter().zip(&sent) {
        assert_eq!(&g.data, s);
    }
    let s: gst::Structure = sink.property("stats");
    assert_eq!(s.get::<u64>("dropped-packets").unwrap(), 0);
}

#[test]
fn half_open_server_is_detected_within_tcp_timeout() {
    let server = ScriptedServer::start(Script::new().stop_reading_after_record());
    let p = pipeline(&server.url("/live"), "retry-max=0 tcp-timeout=1000000");
    let sink = p.by_name("s").unwrap();
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    // From the moment nothing more fits (socket buffers and our queue full)...
    wait_until(|| stat::<u64>(&sink, "queue-bytes") >= 200_000);
    let stalled = Instant::now();
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(30), &[gst::MessageType::Error])
        .expect("the stall is an error");
    let took = stalled.elapsed();
    p.set_state(gst::State::Null).unwrap();
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    assert!(
        e.error().message().contains("accepted no data"),
        "{}",
        e.error()
    );
    // ...the error comes within tcp-timeout (1 s) + 1 s.
    assert!(took < Duration::from_secs(2), "detected after {took:?}");
}

#[test]
fn drop_policy_time_bound() {
    let server = ScriptedServer::start(Script::new().stop_reading_after_record());
    // A byte bound far away (the later setting wins): only the 300 ms time bound can start
    // the drops.
    let p = pipeline(
        &server.url("/live"),
        "congestion-policy=drop max-queue-bytes=67108864 max-queue-time=300",
    );
    let sink = p.by_name("s").unwrap();
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Warning, gst::MessageType::Error],
        )
        .expect("a congestion warning");
    assert!(
        matches!(msg.view(), gst::MessageView::Warning(_)),
        "{msg:?}"
    );
    assert!(stat::<u64>(&sink, "queue-bytes") < 67108864 / 2);
    server.resume_reading();
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    assert!(stat::<u64>(&sink, "dropped-packets") > 0);
}
