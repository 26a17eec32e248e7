//! A flushing seek while publishing a file: an MP4 (H.264 + AAC) is played at its own pace
//! (sync=true) through qtdemux and the payloaders into rtspannounce; after 1 s the pipeline seeks
//! back to 0 (FLUSH | KEY_UNIT), plays 2 s more, then ends. The server is the scripted one, which
//! keeps every packet as it came; the video is decoded here from what it got.
//!
//! What holds: the element adds and reorders nothing and drops only what was in flight in it at
//! the flush; the video decodes from the seek on; and each SSRC stays one continuous RTP stream
//! across the seek (the element shifts the sequence numbers and timestamps the payloaders
//! restart after a flushing seek, and changes nothing else). Before that, the sequence gap made
//! a gst-rtsp-server 1.22 receiver in record mode abort (rtpulpfecdec's `have_caps_ssrc`
//! assertion on the jitterbuffer's packet-lost event; one push dropped before the element,
//! without a seek, is enough), which is why this file uses the scripted server.

use crate::harness::*;
use crate::scripted_server::*;
use gst::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A directory of the test's own, removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("rtspannounce-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sets the pipeline to NULL when the test ends, also when an assertion fails.
struct Stopped(gst::Pipeline);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// 10 s of H.264 (no B-frames, a keyframe a second) and AAC in an MP4 file.
fn make_mp4(dir: &Path) -> PathBuf {
    let file = dir.join("media.mp4");
    let out = push(&format!(
        "videotestsrc num-buffers=300 ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency bframes=0 key-int-max=30 speed-preset=ultrafast ! h264parse ! \
         mp4mux name=mux ! filesink location=\"{}\" \
         audiotestsrc num-buffers=469 samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 ! \
         avenc_aac ! aacparse ! mux.",
        file.display()
    ));
    assert!(out.eos, "making the file: {out:?}");
    file
}

fn seq(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[2], p[3]])
}

fn ts(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[4], p[5], p[6], p[7]])
}

fn ssrc(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[8], p[9], p[10], p[11]])
}

fn marker(p: &[u8]) -> bool {
    p[1] & 0x80 != 0
}

/// The NAL unit type an H.264 RTP payload starts with (RFC 6184: the first NAL of a STAP-A,
/// the fragmented NAL of an FU-A's first fragment; None for an FU-A's later fragments).
fn first_nal(pkt: &[u8]) -> Option<u8> {
    let p = &pkt[12 + 4 * (pkt[0] & 0x0f) as usize..];
    match p[0] & 0x1f {
        24 => Some(p[3] & 0x1f),
        28 => (p[1] & 0x80 != 0).then_some(p[1] & 0x1f),
        t => Some(t),
    }
}

/// Whether the frame starting at `pkts[0]` is a keyframe: past NAL units that say nothing either
/// way (SEI 6, PPS 8, AUD 9), the first one is an SPS (7) or an IDR slice (5). The NAL types seen
/// on the way, for messages.
fn starts_keyframe(pkts: &[&[u8]]) -> (bool, Vec<Option<u8>>) {
    let mut seen = Vec::new();
    for p in pkts {
        let nal = first_nal(p);
        seen.push(nal);
        match nal {
            Some(6 | 8 | 9) if !marker(p) => continue,
            Some(5 | 7) => return (true, seen),
            _ => return (false, seen),
        }
    }
    (false, seen)
}

/// The sequence number of the first packet `pad` carries after a flush (a flushing seek).
fn first_after_flush(pad: &gst::Pad) -> Arc<Mutex<Option<u16>>> {
    let first: Arc<Mutex<Option<u16>>> = Arc::default();
    let flushed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = first.clone();
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST | gst::PadProbeType::EVENT_FLUSH,
        move |_, info| {
            let buf = match &info.data {
                Some(gst::PadProbeData::Event(e)) => {
                    if let gst::EventView::FlushStop(_) = e.view() {
                        flushed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    None
                }
                Some(gst::PadProbeData::Buffer(b)) => Some(b.clone()),
                Some(gst::PadProbeData::BufferList(l)) => l.get(0).map(|b| b.to_owned()),
                _ => None,
            };
            if let Some(b) = buf {
                let mut first = f.lock().unwrap();
                if flushed.load(std::sync::atomic::Ordering::SeqCst) && first.is_none() {
                    let mut head = [0u8; 4];
                    b.copy_to_slice(0, &mut head).unwrap();
                    *first = Some(u16::from_be_bytes([head[2], head[3]]));
                }
            }
            gst::PadProbeReturn::Ok
        },
    );
    first
}

/// Decodes H.264 RTP packets as a receiver would (output-corrupt=false: a frame that cannot be
/// decoded is not output). Returns the frames decoded and the decoder pipeline's error, if any.
fn decode_h264(packets: &[&[u8]]) -> (u64, Option<String>) {
    let p = gst::parse::launch(
        "appsrc name=src format=time caps=application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload=96 ! \
         rtph264depay ! h264parse ! avdec_h264 output-corrupt=false ! fakesink name=sink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let _stopped = Stopped(p.clone());
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
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
    // Stamped by frame count (30/s), not by RTP time: the decoder's input timeline stays monotonic
    // whatever the timestamps do.
    let mut frame = 0u64;
    for pkt in packets {
        let mut b = gst::Buffer::from_slice(pkt.to_vec());
        b.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_nseconds(frame * 1_000_000_000 / 30));
        if marker(pkt) {
            frame += 1;
        }
        if src.push_buffer(b).is_err() {
            break;
        }
    }
    let _ = src.end_of_stream();
    let msg = p
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the decoder neither ended nor failed");
    let error = match msg.view() {
        gst::MessageView::Error(e) => Some(format!("{} ({:?})", e.error(), e.debug())),
        _ => None,
    };
    (n.load(std::sync::atomic::Ordering::SeqCst), error)
}

/// Frames (runs of one RTP timestamp) that arrived whole (sequence numbers +1 inside, the last
/// with the marker bit) and those that did not.
fn frames_by_completeness(pkts: &[&[u8]]) -> (u64, u64) {
    let (mut whole, mut partial) = (0, 0);
    let mut i = 0;
    while i < pkts.len() {
        let mut j = i + 1;
        let mut gapless = true;
        while j < pkts.len() && ts(pkts[j]) == ts(pkts[i]) {
            gapless &= seq(pkts[j]) == seq(pkts[j - 1]).wrapping_add(1);
            j += 1;
        }
        if gapless && marker(pkts[j - 1]) {
            whole += 1;
        } else {
            partial += 1;
        }
        i = j;
    }
    (whole, partial)
}

/// What is wrong with one track's packets as a stream: more than one SSRC, a sequence number
/// that is not the previous + 1, a timestamp before the previous one.
fn stream_problems(name: &str, pkts: &[&[u8]]) -> Vec<String> {
    let mut out = Vec::new();
    let ssrcs: std::collections::BTreeSet<u32> = pkts.iter().map(|p| ssrc(p)).collect();
    if ssrcs.len() != 1 {
        out.push(format!("{name}: {} SSRCs {ssrcs:08x?}", ssrcs.len()));
    }
    for (k, w) in pkts.windows(2).enumerate() {
        let (a, b) = (w[0], w[1]);
        if seq(b) != seq(a).wrapping_add(1) {
            out.push(format!(
                "{name}: packet {} has seq {} after {} ({} missing)",
                k + 1,
                seq(b),
                seq(a),
                seq(b).wrapping_sub(seq(a)).wrapping_sub(1)
            ));
        }
        let step = ts(b).wrapping_sub(ts(a)) as i32;
        if step < 0 {
            out.push(format!(
                "{name}: packet {} (seq {}) has timestamp {} after {} ({step} ticks back)",
                k + 1,
                seq(b),
                ts(b),
                ts(a)
            ));
        }
    }
    out
}

/// What one run of the scenario gave.
struct SeekRun {
    /// RTP packets the server got, per track (video, audio), in arrival order.
    video: Vec<Vec<u8>>,
    audio: Vec<Vec<u8>>,
    /// What the payloaders pushed into the element.
    video_given: Vec<Vec<u8>>,
    audio_given: Vec<Vec<u8>>,
    /// Sequence numbers of the first video and audio packets made after the flush.
    first_after_seek: u16,
    audio_first_after_seek: u16,
}

/// Publishes a 10 s MP4 with sync=true to a scripted server: 1 s, a flushing seek to 0, 2 s more
/// (by RTP time of the packets after the seek), EOS.
fn seek_scenario() -> SeekRun {
    init();
    let dir = TempDir::new("seek");
    let file = make_mp4(&dir.0);
    let server = ScriptedServer::start(Script::new());
    let p = pipeline(&format!(
        "rtspannounce name=s location=\"{}\" \
         filesrc location=\"{}\" ! qtdemux name=d \
         d.video_0 ! queue ! h264parse ! rtph264pay name=vpay config-interval=-1 ! s.sink_0 \
         d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=apay ! s.sink_1",
        server.url("/live"),
        file.display()
    ));
    let _stopped = Stopped(p.clone());
    let vpay = p.by_name("vpay").unwrap();
    let video_given = capture_src(&vpay);
    let apay = p.by_name("apay").unwrap();
    let audio_given = capture_src(&apay);
    let after_seek = first_after_flush(&vpay.static_pad("src").unwrap());
    let audio_after_seek = first_after_flush(&apay.static_pad("src").unwrap());
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();

    // How much RTP time the server's video covers.
    let video_span = |s: &Snapshot| {
        let v = s.frames_on(0);
        match (v.first(), v.last()) {
            (Some(a), Some(l)) => ts(&l.data).wrapping_sub(ts(&a.data)) as i32,
            _ => -1,
        }
    };
    // How much RTP time the payloader made from its packet `from` on (its own numbers: the
    // element may shift them after the flush).
    let made_since = |from: u16| {
        let v = video_given.lock().unwrap();
        let start = v.iter().position(|p| seq(p) == from);
        match (start, v.last()) {
            (Some(i), Some(l)) => ts(l).wrapping_sub(ts(&v[i])) as i32,
            _ => -1,
        }
    };
    assert!(
        server.wait_for(|s| video_span(s) >= 90_000, T),
        "no second of video reached the server: {:?}",
        bus.pop_filtered(&[gst::MessageType::Error])
    );
    p.seek_simple(
        gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
        gst::ClockTime::ZERO,
    )
    .expect("the seek was refused");
    // 2 s made after the seek; EOS then delivers all of it before TEARDOWN.
    let ok = server.wait_for(
        |_| {
            let first = *after_seek.lock().unwrap();
            first.is_some_and(|f| made_since(f) >= 180_000)
        },
        T,
    );
    assert!(
        ok,
        "no 2 s of video after the seek (first packet after the flush: {:?}): {:?}",
        after_seek.lock().unwrap(),
        bus.pop_filtered(&[gst::MessageType::Error])
    );
    assert!(p.send_event(gst::event::Eos::new()));
    let mut eos = false;
    while let Some(m) = bus.timed_pop(gst::ClockTime::from_seconds(30)) {
        match m.view() {
            gst::MessageView::Eos(_) => {
                eos = true;
                break;
            }
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            _ => {}
        }
    }
    assert!(eos, "no EOS after the EOS event");
    p.set_state(gst::State::Null).unwrap();
    assert!(server.wait_requests("TEARDOWN", 1, T), "no TEARDOWN");
    let snap = server.snapshot();
    assert_eq!(snap.connection_count(), 1, "{:?}", snap.methods());
    let run = SeekRun {
        video: snap.frames_on(0).iter().map(|f| f.data.clone()).collect(),
        audio: snap.frames_on(2).iter().map(|f| f.data.clone()).collect(),
        video_given: video_given.lock().unwrap().clone(),
        audio_given: audio_given.lock().unwrap().clone(),
        first_after_seek: after_seek
            .lock()
            .unwrap()
            .expect("no packet after the seek"),
        audio_first_after_seek: audio_after_seek
            .lock()
            .unwrap()
            .expect("no audio packet after the seek"),
    };
    eprintln!(
        "video: {} packets made, {} received; audio: {} made, {} received; first video packet \
         after the seek: seq {}",
        run.video_given.len(),
        run.video.len(),
        run.audio_given.len(),
        run.audio.len(),
        run.first_after_seek
    );
    run
}

/// The same RTP packet, but maybe for the payload type (the element renumbers a track whose
/// payload type an earlier track already uses) and the sequence number and timestamp (shifted
/// after a flush to keep the stream continuous).
fn same_packet(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a[0] == b[0] && a[1] & 0x80 == b[1] & 0x80 && a[8..] == b[8..]
}

/// Checks that `got` is `given` less one run of packets just before the first packet made after
/// the flush (`first_after`): what was in flight in the element when the flush came may go, nothing
/// else; nothing is added, changed (but for the numbers) or reordered. Returns how many packets
/// went, and where the first packet made after the flush is in `got`.
fn delivered_but_the_flushed(
    name: &str,
    given: &[Vec<u8>],
    got: &[Vec<u8>],
    first_after: u16,
) -> (usize, Option<usize>) {
    let resumed = given
        .iter()
        .position(|p| seq(p) == first_after)
        .expect("the payloader's first packet after the flush");
    let mut missing = Vec::new();
    let mut j = 0;
    let mut resumed_at = None;
    for (i, g) in given.iter().enumerate() {
        if j < got.len() && same_packet(&got[j], g) {
            if i == resumed {
                resumed_at = Some(j);
            }
            j += 1;
        } else {
            missing.push(i);
        }
    }
    assert_eq!(
        j,
        got.len(),
        "{name}: received packet {j} (seq {}) is not the next one the payloader made, in order",
        seq(&got[j.min(got.len() - 1)])
    );
    if let (Some(&a), Some(&b)) = (missing.first(), missing.last()) {
        assert!(
            b + 1 == resumed && b - a + 1 == missing.len(),
            "{name}: packets lost away from the flush: made-indices {missing:?} (seqs {:?}); the \
             first packet after the flush is index {resumed}",
            missing.iter().map(|&i| seq(&given[i])).collect::<Vec<_>>()
        );
    }
    (missing.len(), resumed_at)
}

/// Across the seek the element adds, changes and reorders nothing, and loses nothing but what was
/// in flight in it when the flush came (flushing drops that, as any sink does): one SSRC per
/// track; the video decodes from the seek's keyframe on, every frame of it, and the whole stream
/// decodes as one receiver sees it.
#[test]
fn flushing_seek_delivers_every_packet_and_decodes_after_it() {
    let run = seek_scenario();
    let mut cut = None;
    for (name, got, given, first) in [
        ("video", &run.video, &run.video_given, run.first_after_seek),
        (
            "audio",
            &run.audio,
            &run.audio_given,
            run.audio_first_after_seek,
        ),
    ] {
        let (flushed, resumed_at) = delivered_but_the_flushed(name, given, got, first);
        eprintln!("{name}: {flushed} packets in flight at the flush were dropped");
        let ssrcs: std::collections::BTreeSet<u32> = got.iter().map(|p| ssrc(p)).collect();
        assert_eq!(ssrcs.len(), 1, "{name}: SSRCs {ssrcs:08x?}");
        if name == "video" {
            cut = resumed_at;
        }
    }
    let video: Vec<&[u8]> = run.video.iter().map(|p| &p[..]).collect();
    let cut = cut.expect("the first packet after the seek never arrived");
    assert!(cut > 0, "nothing before the seek");
    let post = &video[cut..];
    let (key, nals) = starts_keyframe(post);
    assert!(
        key,
        "the first frame after the seek is not a keyframe (NAL types {nals:?})"
    );
    let post_frames = post.iter().filter(|p| marker(p)).count() as u64;
    let (decoded, error) = decode_h264(post);
    assert!(error.is_none(), "decoding after the seek: {error:?}");
    assert!(post_frames >= 60, "{post_frames} frames after the seek");
    assert_eq!(
        decoded, post_frames,
        "frames after the seek that did not decode"
    );
    // Across the seek a frame may have lost its last packets in the flush (the depayloader
    // still outputs what it has when the timestamp changes): every frame that arrived whole
    // decodes, and nothing fails.
    let (whole, partial) = frames_by_completeness(&video);
    let (decoded, error) = decode_h264(&video);
    assert!(error.is_none(), "decoding the whole stream: {error:?}");
    assert!(
        decoded >= whole && decoded <= whole + partial,
        "{decoded} frames decoded of {whole} that arrived whole ({partial} partial)"
    );
}

/// What a receiver's jitter buffer and recorder need across the seek: per SSRC, sequence numbers
/// +1 and timestamps never going back.
///
/// A flushing seek resets the pipeline's running time, and the payloaders stamp RTP time from
/// running time, so their timestamps go back by the time played before the seek (video 90000
/// ticks, audio about 47000 after 1 s); their sequence numbers skip the packets their flushing
/// src pad refused, and the element drops the packets in flight in it. The element continues
/// each track from the last packet it sent instead (failed before that, on 97e1e6a and on main
/// up to the session reshaping).
#[test]
fn flushing_seek_keeps_sequence_numbers_and_timestamps_continuous() {
    let run = seek_scenario();
    let video: Vec<&[u8]> = run.video.iter().map(|p| &p[..]).collect();
    let audio: Vec<&[u8]> = run.audio.iter().map(|p| &p[..]).collect();
    let mut problems = stream_problems("video", &video);
    problems.extend(stream_problems("audio", &audio));
    assert!(
        problems.is_empty(),
        "{} problems in what the server received:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
