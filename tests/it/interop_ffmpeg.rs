//! Interop with FFmpeg's RTSP listener (`ffmpeg -rtsp_flags listen`), the strictest peer about
//! SDP and Transport: media verified at the receiver by decoding the recording with ffprobe.

use crate::harness::*;
use crate::peers::*;
use std::time::Duration;

#[test]
fn h264_alone_all_frames_arrive() {
    let dir = temp_dir("ff-h264");
    let mut ff = FfmpegListener::start(&dir, "/live/cam1", "h264.mkv", &[]);
    let out = push(&format!(
        "{} ! rtspannounce location={} sync=false",
        h264_branch(150, "vpay"),
        ff.url()
    ));
    assert!(out.eos, "{out:?}");
    let st = ff.child.wait_exit(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "ffmpeg: {}", ff.log_text());
    let streams = ffprobe(&ff.out);
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].codec, "h264");
    assert_eq!(streams[0].frames, 150, "{streams:?}\n{}", ff.log_text());
    assert_eq!(
        (streams[0].width, streams[0].height),
        (Some(320), Some(240))
    );
}

#[test]
fn h264_and_aac_both_pt96_all_frames_arrive() {
    let dir = temp_dir("ff-av");
    let mut ff = FfmpegListener::start(&dir, "/live/av", "av.mkv", &[]);
    // 150 video frames (5 s) and 235 AAC buffers of 1024 samples (~5 s at 48 kHz); both
    // payloaders at their default PT 96, so the audio track is remapped.
    let out = push(&format!(
        "rtspannounce name=s location={} sync=false {} ! s.sink_0 {} ! s.sink_1",
        ff.url(),
        h264_branch(150, "vpay"),
        aac_branch(235, "apay")
    ));
    assert!(out.eos, "{out:?}");
    let st = ff.child.wait_exit(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "ffmpeg: {}", ff.log_text());
    let streams = ffprobe(&ff.out);
    assert_eq!(streams.len(), 2, "{streams:?}");
    let v = streams.iter().find(|s| s.codec == "h264").expect("video");
    let a = streams.iter().find(|s| s.codec == "aac").expect("audio");
    assert_eq!(v.frames, 150, "{streams:?}");
    // The encoder adds its priming frame: 235 input buffers give 236 AAC frames.
    assert!(a.frames >= 235, "{streams:?}");
    assert_eq!((a.sample_rate, a.channels), (Some(48000), Some(2)));
}
