//! Interop with gst-rtsp-server in RECORD mode (in-process): what arrives is depayloaded,
//! parsed and decoded at the server, and every frame is counted.
//!
//! Pushed at real-time speed (`sync=true`, the default), as a server expects: its receive
//! side is a jitterbuffer, which drops what arrives seconds ahead of its timestamps.

use crate::peers;

use crate::harness::*;
use crate::record_server::*;
use std::time::Duration;

#[test]
fn h264_alone_300_of_300_frames() {
    let server = RecordServer::start(RecordServerConfig::new("/live/cam1", Tracks::H264)).unwrap();
    let out = push(&format!(
        "{} ! rtspannounce location={}",
        h264_branch(300, "vpay"),
        server.url()
    ));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    assert_eq!(
        report.requests_but_keepalives(),
        ["ANNOUNCE", "SETUP", "RECORD", "TEARDOWN"],
        "{report}"
    );
    assert_eq!(report.tracks.len(), 1);
    let v = &report.tracks[0];
    assert_eq!(v.codec, "H.264", "{report}");
    assert_eq!(v.frames, 300, "{report}");
    assert_eq!((v.width, v.height), (Some(320), Some(240)));
    assert!(report.errors.is_empty(), "{report}");
}

#[test]
fn h264_and_aac_both_pt96_every_frame_decoded_and_recorded() {
    let dir = peers::temp_dir("gst-av");
    let mp4 = dir.join("av.mp4");
    let server =
        RecordServer::start(RecordServerConfig::new("/live/av", Tracks::H264Aac).with_output(&mp4))
            .unwrap();
    // Both payloaders at their default payload type 96: the audio track is remapped to 97.
    let out = push(&format!(
        "rtspannounce name=s location={} {} ! s.sink_0 {} ! s.sink_1",
        server.url(),
        h264_branch(300, "vpay"),
        aac_branch(470, "apay")
    ));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    assert_eq!(
        report.requests_but_keepalives(),
        ["ANNOUNCE", "SETUP", "SETUP", "RECORD", "TEARDOWN"]
    );
    let v = report.tracks.iter().find(|t| t.is_video()).unwrap();
    let a = report.tracks.iter().find(|t| !t.is_video()).unwrap();
    assert_eq!(v.frames, 300, "{report}");
    assert_eq!(a.codec, "AAC", "{report}");
    // 470 buffers of 1024 samples in; the encoder adds one frame of priming.
    assert!(a.frames >= 470, "{report}");
    assert_eq!((a.rate, a.channels), (Some(48000), Some(2)));
    assert!(report.errors.is_empty(), "{report}");

    // The recording holds the same.
    let probed = peers::ffprobe(&mp4);
    let pv = probed
        .iter()
        .find(|s| s.codec == "h264")
        .expect("h264 in mp4");
    let pa = probed
        .iter()
        .find(|s| s.codec == "aac")
        .expect("aac in mp4");
    assert_eq!(pv.frames, 300, "{probed:?}");
    assert!(pa.frames >= 470, "{probed:?}");
}

#[test]
fn query_string_needs_no_query_setup_urls() {
    let server = RecordServer::start(RecordServerConfig::new("/live/q", Tracks::H264)).unwrap();
    let out = push(&format!(
        "{} ! rtspannounce location=\"{}?token=abc\" setup-url-style=no-query",
        h264_branch(60, "vpay"),
        server.url()
    ));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    assert_eq!(report.tracks[0].frames, 60, "{report}");
}

fn push_with_auth(
    methods: gst_rtsp_server::gst_rtsp::RTSPAuthMethod,
    creds: &str,
) -> (Outcome, Option<Report>) {
    let server = RecordServer::start(
        RecordServerConfig::new("/live/auth", Tracks::H264).with_auth("pub", "Pa55-w0rd", methods),
    )
    .unwrap();
    let out = push(&format!(
        "{} ! rtspannounce location={} {creds}",
        h264_branch(60, "vpay"),
        server.url()
    ));
    let report = out
        .eos
        .then(|| server.wait_finished(Duration::from_secs(20)).unwrap());
    (out, report)
}

#[test]
fn gst_rtsp_server_basic_and_digest_auth() {
    use gst_rtsp_server::gst_rtsp::RTSPAuthMethod;
    for methods in [RTSPAuthMethod::Basic, RTSPAuthMethod::Digest] {
        let (out, report) = push_with_auth(methods, "user-id=pub user-pw=Pa55-w0rd");
        assert!(out.eos, "{methods:?}: {out:?}");
        let report = report.unwrap();
        assert_eq!(report.tracks[0].frames, 60, "{methods:?}: {report}");
    }
    let (out, _) = push_with_auth(RTSPAuthMethod::Digest, "user-id=pub user-pw=wrong");
    assert_eq!(
        out.error_is,
        Some(gst::ResourceError::NotAuthorized),
        "{out:?}"
    );
}
