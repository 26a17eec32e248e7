//! A server reading 1 Mbit/s while a live source makes 8 Mbit/s for 30 s: with the drop policy
//! memory stays within the queue bound (+10 MB) and every video frame that arrives decodes.
//! Alone in its test binary so the process's memory figures are this test's.

#[path = "common/harness.rs"]
#[allow(dead_code)] // shared helpers: this suite uses some of them
mod harness;
#[path = "common/scripted_server.rs"]
#[allow(dead_code)] // shared helpers: this suite uses some of them
mod scripted_server;

use gst::prelude::*;
use scripted_server::*;
use std::time::Duration;

fn vm(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Decodes H.264 RTP packets as a receiver would (output-corrupt=false: a frame that cannot be
/// decoded is not output) and counts the frames that come out.
fn decoded_frames(packets: &[Vec<u8>]) -> u64 {
    let p = gst::parse::launch(
        "appsrc name=src format=time caps=application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload=96 ! \
         rtph264depay ! h264parse ! avdec_h264 output-corrupt=false ! fakesink name=sink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n2 = n.clone();
    p.by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            gst::PadProbeReturn::Ok
        });
    let src = p
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let ts0 = u32::from_be_bytes([packets[0][4], packets[0][5], packets[0][6], packets[0][7]]);
    for pkt in packets {
        let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]).wrapping_sub(ts0);
        let mut b = gst::Buffer::from_slice(pkt.clone());
        b.get_mut().unwrap().set_pts(gst::ClockTime::from_nseconds(
            ts as u64 * 1_000_000_000 / 90_000,
        ));
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    let bus = p.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .unwrap();
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    p.set_state(gst::State::Null).unwrap();
    n.load(std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn one_mbit_reader_eight_mbit_source_drop_policy() {
    const BOUND: u64 = 1 << 20;
    let server = ScriptedServer::start(Script::new().read_rate(125_000));
    harness::init();
    let p = gst::parse::launch(&format!(
        "videotestsrc is-live=true pattern=snow num-buffers=900 ! \
         video/x-raw,width=640,height=480,framerate=30/1 ! \
         x264enc tune=zerolatency speed-preset=ultrafast bitrate=8000 key-int-max=30 ! \
         rtph264pay ! rtspannounce name=s location={} congestion-policy=drop max-queue-bytes={BOUND}",
        server.url("/live")
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_frames(30, Duration::from_secs(30)));
    let base = vm("VmRSS:");
    let mut warnings = 0;
    let mut eos = false;
    while let Some(m) = bus.timed_pop(gst::ClockTime::from_seconds(90)) {
        match m.view() {
            gst::MessageView::Warning(_) => warnings += 1,
            gst::MessageView::Eos(_) => {
                eos = true;
                break;
            }
            gst::MessageView::Error(e) => panic!("{}", e.error()),
            _ => {}
        }
    }
    let peak = vm("VmHWM:");
    let stats: gst::Structure = p.by_name("s").unwrap().property("stats");
    p.set_state(gst::State::Null).unwrap();
    assert!(eos);
    let dropped = stats.get::<u64>("dropped-packets").unwrap();
    assert!(dropped > 0, "an 8 Mbit/s stream through 1 Mbit/s must drop");
    assert!(warnings >= 1);
    // The server keeps what it received (about 3.75 MB in 30 s) in memory too.
    let growth = peak.saturating_sub(base);
    eprintln!(
        "RSS growth {} KiB (bound {} KiB), dropped {dropped}",
        growth / 1024,
        BOUND / 1024
    );
    assert!(growth < BOUND + (10 << 20), "RSS grew by {growth} bytes");

    let snap = server.snapshot();
    let packets: Vec<Vec<u8>> = snap.frames_on(0).iter().map(|f| f.data.clone()).collect();
    let frames: std::collections::BTreeSet<u32> = packets
        .iter()
        .map(|p| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
        .collect();
    let decoded = decoded_frames(&packets);
    eprintln!("{} frames received, {decoded} decoded", frames.len());
    assert!(frames.len() > 30);
    assert_eq!(decoded, frames.len() as u64, "frames that did not decode");
}
