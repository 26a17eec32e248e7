//! KLV metadata (SMPTE 336M) as a track beside video: an appsrc of `meta/x-klv` units straight
//! into a request pad, which gets rtpklvpay inside; announced as `m=application ... SMPTE336M`,
//! depayloaded by gst-rtsp-server unit by unit.

use crate::harness::*;
use crate::klv_source as klv;
use crate::record_server::*;
use crate::scripted_server::{Script, ScriptedServer};
use gst::prelude::*;
use std::time::Duration;

const UNITS: u32 = 30;
const EVERY: Duration = Duration::from_millis(100);

/// 90 frames of H.264 on sink_0 and `UNITS` KLV units over the same 3 s on sink_1, both
/// encoded (the element payloads them).
fn h264_and_klv(url: &str) -> (gst::Pipeline, usize) {
    h264_and_klv_with(url, "")
}

fn h264_and_klv_with(url: &str, props: &str) -> (gst::Pipeline, usize) {
    let p = pipeline(&format!(
        "videotestsrc num-buffers=90 ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency bframes=0 key-int-max=30 speed-preset=ultrafast ! s.sink_0 \
         {} ! s.sink_1 \
         rtspannounce name=s location={url} {props}",
        klv::klv_src("klv")
    ));
    let bytes = klv::feed(&p, "klv", UNITS, EVERY);
    (p, bytes)
}

#[test]
fn klv_beside_h264_every_unit_depayloaded_at_gst_rtsp_server() {
    let server =
        RecordServer::start(RecordServerConfig::new("/live/klv", Tracks::H264Klv)).unwrap();
    let (p, bytes) = h264_and_klv(&server.url());
    let out = run(&p, Duration::from_secs(60));
    assert!(out.eos, "{out:?}");
    let sink = p.by_name("s").unwrap().downcast::<gst::Bin>().unwrap();
    let pay = sink.by_name("pay-sink_1").expect("a payloader on sink_1");
    assert_eq!(pay.factory().unwrap().name(), "rtpklvpay");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    eprintln!("{report}");
    assert!(report.errors.is_empty(), "{report}");
    let (v, m) = (&report.tracks[0], &report.tracks[1]);
    assert_eq!((v.codec.as_str(), v.frames), ("H.264", 90), "{report}");
    assert_eq!(m.codec, "KLV", "{report}");
    assert_eq!(m.frames, u64::from(UNITS), "{report}");
    assert_eq!(m.bytes, bytes as u64, "{report}");
    // The units keep their timeline: the first at 0, the last 2.9 s later.
    let span = m.last_pts.unwrap() - m.first_pts.unwrap();
    assert_eq!(
        span.nseconds(),
        (EVERY * (UNITS - 1)).as_nanos() as u64,
        "{report}"
    );
}

#[test]
fn klv_beside_h264_over_udp_every_unit_depayloaded() {
    use gst_rtsp_server::gst_rtsp::RTSPLowerTrans;
    let server = RecordServer::start(
        RecordServerConfig::new("/live/klv", Tracks::H264Klv).with_protocols(RTSPLowerTrans::UDP),
    )
    .unwrap();
    let (p, bytes) = h264_and_klv_with(&server.url(), "protocols=udp");
    let out = run(&p, Duration::from_secs(60));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    eprintln!("{report}");
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(report.tracks[0].frames, 90, "{report}");
    let m = &report.tracks[1];
    assert_eq!(
        (m.codec.as_str(), m.frames),
        ("KLV", u64::from(UNITS)),
        "{report}"
    );
    assert_eq!(m.bytes, bytes as u64, "{report}");
}

#[test]
fn klv_is_announced_as_application_smpte336m_with_its_own_payload_type() {
    let server = ScriptedServer::start(Script::new());
    let (p, _) = h264_and_klv(&server.url("/live"));
    let out = run(&p, Duration::from_secs(60));
    assert!(out.eos, "{out:?}");
    let snap = server.snapshot();
    let sdp = snap.first("ANNOUNCE").unwrap().body_str();
    // rtph264pay and rtpklvpay both default to 96: the second track gets 97.
    assert!(sdp.contains("\r\nm=video 0 RTP/AVP 96\r\n"), "{sdp}");
    assert!(sdp.contains("\r\nm=application 0 RTP/AVP 97\r\n"), "{sdp}");
    assert!(sdp.contains("\r\na=rtpmap:97 SMPTE336M/90000\r\n"), "{sdp}");
    // Every unit reached the server on track 1's channel, with the payload type rewritten.
    let frames = snap.frames_on(2);
    assert!(frames.iter().all(|f| f.data[1] & 0x7f == 97), "{frames:?}");
    let marked = frames.iter().filter(|f| f.data[1] & 0x80 != 0).count();
    assert_eq!(marked, UNITS as usize, "one marker bit per KLV unit");
}

#[test]
fn ffmpeg_listener_records_the_video_beside_klv_it_cannot_depacketize() {
    // FFmpeg 5.1 has no SMPTE336M depacketizer: the KLV track is a data stream of codec none,
    // which `-c copy` leaves out; the video beside it must still arrive whole.
    let dir = crate::peers::temp_dir("klv-ffmpeg");
    let mut ff = crate::peers::FfmpegListener::start(&dir, "/live/klv", "v.mkv", &[]);
    let (p, _) = h264_and_klv(&ff.url());
    let out = run(&p, Duration::from_secs(60));
    assert!(out.eos, "{out:?}");
    let st = ff.child.wait_exit(Duration::from_secs(20));
    let log = ff.log_text();
    assert!(st.is_some_and(|s| s.success()), "ffmpeg: {log}");
    assert!(log.contains("Data: none"), "{log}");
    let streams = crate::peers::ffprobe(&ff.out);
    let decoded = crate::peers::ffprobe_decoded(&ff.out);
    eprintln!("ffmpeg recording: {streams:?}, decoded {decoded:?}");
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].codec, "h264");
    assert_eq!(decoded[0].0, 90, "{decoded:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
