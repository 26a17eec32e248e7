//! Encoded input: the element payloads it itself (H.264, H.265 and AAC with its built-in
//! payloaders, anything else with a payloader per pad chosen from the registry by caps, or the
//! one set on the pad's `payloader` property), verified at gst-rtsp-server in
//! record mode (decoded frames counted), at FFmpeg's listener (ffprobe on the recording) and at
//! the scripted server (payload types and packet sizes on the wire).

use crate::peers;
use crate::scripted_server;

use crate::harness::*;
use crate::record_server::*;
use gst::prelude::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Encoded H.264, no payloader: x264enc straight into the element.
fn h264_encoded(frames: u32) -> String {
    format!(
        "videotestsrc num-buffers={frames} ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency bframes=0 key-int-max=30 speed-preset=ultrafast"
    )
}

/// Encoded AAC (raw, with codec_data from aacparse), no payloader.
fn aac_encoded(buffers: u32) -> String {
    format!(
        "audiotestsrc num-buffers={buffers} samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 ! \
         avenc_aac ! aacparse"
    )
}

/// The payloader the element put in front of `pad`'s appsink.
fn payloader_of(p: &gst::Pipeline, sink: &str, pad: &str) -> gst::Element {
    let bin = p.by_name(sink).unwrap().downcast::<gst::Bin>().unwrap();
    bin.by_name(&format!("pay-{pad}"))
        .unwrap_or_else(|| panic!("no payloader for {pad}"))
}

/// No payloader element in front of `pad`'s appsink: the built-in one payloads.
fn builtin(p: &gst::Pipeline, sink: &str, pad: &str) -> bool {
    let bin = p.by_name(sink).unwrap().downcast::<gst::Bin>().unwrap();
    bin.by_name(&format!("pay-{pad}")).is_none()
}

fn factory_name(e: &gst::Element) -> String {
    e.factory().unwrap().name().to_string()
}

/// x264enc straight into the element at gst-rtsp-server: every frame decoded, with the
/// built-in payloader (no payloader element, no `new-payloader`) or with GStreamer's.
fn x264enc_alone(builtin_payloaders: bool) {
    let server = RecordServer::start(RecordServerConfig::new("/live/enc", Tracks::H264)).unwrap();
    let p = pipeline(&format!(
        "{} ! rtspannounce name=s location={} builtin-payloaders={builtin_payloaders}",
        h264_encoded(90),
        server.url()
    ));
    // Connected after parse_launch linked the pads (which already put the payloader in):
    // the signal comes with the caps, so the application still sees it.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    p.by_name("s")
        .unwrap()
        .connect("new-payloader", false, move |v| {
            let e = v[1].get::<gst::Element>().unwrap();
            s.lock().unwrap().push(factory_name(&e));
            None
        });
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    if builtin_payloaders {
        assert!(
            seen.lock().unwrap().is_empty(),
            "{:?}",
            seen.lock().unwrap()
        );
        assert!(builtin(&p, "s", "sink_0"));
    } else {
        assert_eq!(*seen.lock().unwrap(), ["rtph264pay"]);
        let pay = payloader_of(&p, "s", "sink_0");
        assert_eq!(factory_name(&pay), "rtph264pay");
        // Parameter sets also in-band, at keyframes once a second.
        assert_eq!(pay.property::<i32>("config-interval"), 1);
    }
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    eprintln!("{report}");
    assert_eq!(report.tracks.len(), 1, "{report}");
    let v = &report.tracks[0];
    assert_eq!(v.codec, "H.264", "{report}");
    assert_eq!(v.frames, 90, "{report}");
    assert_eq!((v.width, v.height), (Some(320), Some(240)), "{report}");
    assert!(report.errors.is_empty(), "{report}");
}

#[test]
fn x264enc_alone_90_of_90_frames_at_gst_rtsp_server() {
    x264enc_alone(true);
}

#[test]
fn x264enc_alone_through_rtph264pay_when_builtin_payloaders_are_off() {
    x264enc_alone(false);
}

#[test]
fn aac_alone_every_frame_at_gst_rtsp_server_as_mpeg4_generic() {
    let server = RecordServer::start(RecordServerConfig::new("/live/aac", Tracks::Aac)).unwrap();
    let p = pipeline(&format!(
        "{} ! rtspannounce name=s location={}",
        aac_encoded(94),
        server.url()
    ));
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    // MPEG4-GENERIC (as rtpmp4gpay, not MP4A-LATM: better supported by servers and their
    // readers), from the built-in payloader.
    assert!(builtin(&p, "s", "sink_0"));
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    eprintln!("{report}");
    let a = &report.tracks[0];
    assert_eq!(a.codec, "AAC", "{report}");
    // 94 buffers in; the encoder adds one frame of priming.
    assert!((94..=95).contains(&a.frames), "{report}");
    assert_eq!((a.rate, a.channels), (Some(48000), Some(2)), "{report}");
    assert!(report.errors.is_empty(), "{report}");
}

#[test]
fn h264_and_aac_encoded_together_at_gst_rtsp_server_and_recorded() {
    let dir = peers::temp_dir("enc-gst-av");
    let mp4 = dir.join("av.mp4");
    let server =
        RecordServer::start(RecordServerConfig::new("/live/av", Tracks::H264Aac).with_output(&mp4))
            .unwrap();
    let p = pipeline(&format!(
        "rtspannounce name=s location={} {} ! s.sink_0 {} ! s.sink_1",
        server.url(),
        h264_encoded(90),
        aac_encoded(141)
    ));
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    assert!(builtin(&p, "s", "sink_0") && builtin(&p, "s", "sink_1"));
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    eprintln!("{report}");
    let v = report.tracks.iter().find(|t| t.is_video()).unwrap();
    let a = report.tracks.iter().find(|t| !t.is_video()).unwrap();
    assert_eq!(v.frames, 90, "{report}");
    assert!((141..=142).contains(&a.frames), "{report}");
    assert!(report.errors.is_empty(), "{report}");
    let probed = peers::ffprobe(&mp4);
    eprintln!("recording: {probed:?}");
    let pv = probed.iter().find(|s| s.codec == "h264").expect("h264");
    let pa = probed.iter().find(|s| s.codec == "aac").expect("aac");
    assert_eq!(pv.frames, 90, "{probed:?}");
    assert!(pa.frames >= 141, "{probed:?}");
}

#[test]
fn h264_and_aac_encoded_into_ffmpeg_listener() {
    let dir = peers::temp_dir("enc-ff-av");
    let mut ff = peers::FfmpegListener::start(&dir, "/live/av", "av.mkv", &[]);
    let out = push(&format!(
        "rtspannounce name=s location={} sync=false {} ! s.sink_0 {} ! s.sink_1",
        ff.url(),
        h264_encoded(90),
        aac_encoded(141)
    ));
    assert!(out.eos, "{out:?}");
    let st = ff.child.wait_exit(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "ffmpeg: {}", ff.log_text());
    let streams = peers::ffprobe(&ff.out);
    eprintln!("ffmpeg recording: {streams:?}");
    assert_eq!(streams.len(), 2, "{streams:?}");
    let v = streams.iter().find(|s| s.codec == "h264").expect("video");
    let a = streams.iter().find(|s| s.codec == "aac").expect("audio");
    assert_eq!(v.frames, 90, "{streams:?}\n{}", ff.log_text());
    assert_eq!((v.width, v.height), (Some(320), Some(240)));
    assert!(a.frames >= 141, "{streams:?}");
    assert_eq!((a.sample_rate, a.channels), (Some(48000), Some(2)));
}

#[test]
fn payloader_property_is_used_pt_and_mtu_on_the_wire() {
    use scripted_server::*;
    let server = ScriptedServer::start(Script::new());
    let p = pipeline(&format!(
        "{} ! queue name=q rtspannounce name=s location={} sync=false",
        h264_encoded(30),
        server.url("/live/pay")
    ));
    let sink = p.by_name("s").unwrap();
    let pad = sink.request_pad_simple("sink_%u").unwrap();
    let pay = gst::ElementFactory::make("rtph264pay")
        .name("mypay")
        .property("pt", 100u32)
        .property("mtu", 400u32)
        .build()
        .unwrap();
    let created = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let c = created.clone();
    sink.connect("new-payloader", false, move |v| {
        let e = v[1].get::<gst::Element>().unwrap();
        c.lock().unwrap().push(e.name().to_string());
        None
    });
    pad.set_property("payloader", &pay);
    assert_eq!(
        pad.property::<Option<gst::Element>>("payloader"),
        Some(pay.clone())
    );
    p.by_name("q")
        .unwrap()
        .static_pad("src")
        .unwrap()
        .link(&pad)
        .unwrap();
    let cap = capture_src(&pay);
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    // Our payloader, inside the element, not one of its own.
    assert_eq!(
        pay.parent().as_ref(),
        Some(sink.upcast_ref::<gst::Object>())
    );
    assert!(sink
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("pay-sink_0")
        .is_none());
    let snap = server.snapshot();
    let sdp = snap.first("ANNOUNCE").unwrap().body_str();
    assert!(sdp.contains("m=video 0 RTP/AVP 100\r\n"), "{sdp}");
    assert!(sdp.contains("a=rtpmap:100 H264/90000\r\n"), "{sdp}");
    let frames = snap.frames_on(0);
    let sent = cap.lock().unwrap().clone();
    assert!(sent.len() > 30, "{}", sent.len());
    assert_eq!(frames.len(), sent.len());
    for (i, (f, s)) in frames.iter().zip(&sent).enumerate() {
        assert_eq!(&f.data, s, "packet {i}");
        assert_eq!(f.data[1] & 0x7f, 100, "packet {i}");
        assert!(f.len <= 400, "packet {i} is {} bytes", f.len);
    }
    // Frames bigger than the mtu were fragmented (FU-A, type 28).
    assert!(frames.iter().any(|f| f.data[12] & 0x1f == 28));
    assert_eq!(*created.lock().unwrap(), ["mypay"]);
}

#[test]
fn caps_no_payloader_takes_fail_naming_the_pad_and_caps() {
    // No RTP payloader takes FLAC. Upstream elements usually learn that from the caps query
    // (and fail themselves); one that pushes its caps anyway meets this error.
    init();
    let server = scripted_server::ScriptedServer::start(scripted_server::Script::new());
    let p = gst::Pipeline::new();
    let e = gst::ElementFactory::make("rtspannounce")
        .property("location", server.url("/live/flac"))
        .build()
        .unwrap();
    p.add(&e).unwrap();
    let pad = e.request_pad_simple("sink_%u").unwrap();
    let _ = p.set_state(gst::State::Paused);
    assert!(pad.send_event(gst::event::StreamStart::new("flac")));
    let flac = gst::Caps::builder("audio/x-flac")
        .field("rate", 44100)
        .field("channels", 2)
        .build();
    assert!(!pad.send_event(gst::event::Caps::new(&flac)));
    let text = next_message_text(&p.bus().unwrap(), gst::MessageType::Error);
    p.set_state(gst::State::Null).unwrap();
    assert!(text.contains("sink_0"), "{text}");
    assert!(text.contains("audio/x-flac"), "{text}");
    assert!(text.contains("no RTP payloader"), "{text}");

    // A payloader set on the pad that refuses the caps: named in the error.
    let e = gst::ElementFactory::make("rtspannounce")
        .property("location", server.url("/live/opus"))
        .build()
        .unwrap();
    let p = gst::Pipeline::new();
    p.add(&e).unwrap();
    let pad = e.request_pad_simple("sink_%u").unwrap();
    let opus = gst::ElementFactory::make("rtpopuspay")
        .name("myopus")
        .build()
        .unwrap();
    pad.set_property("payloader", &opus);
    let _ = p.set_state(gst::State::Paused);
    assert!(pad.send_event(gst::event::StreamStart::new("h264")));
    let h264 = gst::Caps::builder("video/x-h264")
        .field("stream-format", "byte-stream")
        .field("alignment", "au")
        .build();
    assert!(!pad.send_event(gst::event::Caps::new(&h264)));
    let text = next_message_text(&p.bus().unwrap(), gst::MessageType::Error);
    p.set_state(gst::State::Null).unwrap();
    assert!(text.contains("sink_0") && text.contains("myopus"), "{text}");
    assert!(text.contains("video/x-h264"), "{text}");
    // Released with its pad.
    e.release_request_pad(&pad);
    assert!(opus.parent().is_none());
    assert!(server.snapshot().requests.is_empty());
}

#[test]
fn caps_query_offers_payloader_inputs_until_caps_are_fixed() {
    init();
    let e = gst::ElementFactory::make("rtspannounce").build().unwrap();
    let pad = e.request_pad_simple("sink_%u").unwrap();
    assert_eq!(pad.type_().name(), "GstRtspAnnouncePad");
    let caps = pad.query_caps(None);
    assert_eq!(caps.structure(0).unwrap().name(), "application/x-rtp");
    for c in ["video/x-h264", "audio/mpeg", "audio/x-opus", "video/x-vp8"] {
        assert!(
            caps.iter().any(|s| s.name() == c),
            "{c} missing from {caps}"
        );
    }
    let h264: gst::Caps = "video/x-h264,stream-format=byte-stream,alignment=au"
        .parse()
        .unwrap();
    assert!(pad.query_accept_caps(&h264));
    assert!(pad.query_accept_caps(&gst::Caps::new_empty_simple("application/x-rtp")));
    assert!(!pad.query_accept_caps(&gst::Caps::new_empty_simple("audio/x-flac")));
    // A filter narrows it, in the filter's order.
    let filter: gst::Caps = "video/x-h264,stream-format={byte-stream,avc}"
        .parse()
        .unwrap();
    let res = pad.query_caps(Some(&filter));
    assert!(
        !res.is_empty() && res.iter().all(|s| s.name() == "video/x-h264"),
        "{res}"
    );

    // With a payloader set, it answers alone: only what rtpopuspay takes.
    let pay = gst::ElementFactory::make("rtpopuspay").build().unwrap();
    pad.set_property("payloader", &pay);
    let caps = pad.query_caps(None);
    assert!(caps.iter().all(|s| s.name() == "audio/x-opus"), "{caps}");
    assert!(!pad.query_accept_caps(&h264));
    // Unset: back to the template.
    pad.set_property("payloader", None::<gst::Element>);
    assert!(pad.query_accept_caps(&h264));
    assert!(pay.parent().is_none());
    e.release_request_pad(&pad);
}

#[test]
fn rtp_input_keeps_no_payloader() {
    let server = scripted_server::ScriptedServer::start(scripted_server::Script::new());
    let p = pipeline(&format!(
        "{} ! rtspannounce name=s location={} sync=false",
        h264_branch(30, "vpay"),
        server.url("/live/rtp")
    ));
    let cap = capture_src(&p.by_name("vpay").unwrap());
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let bin = p.by_name("s").unwrap().downcast::<gst::Bin>().unwrap();
    assert!(bin.by_name("pay-sink_0").is_none());
    let snap = server.snapshot();
    let frames = snap.frames_on(0);
    let sent = cap.lock().unwrap().clone();
    assert_eq!(frames.len(), sent.len());
    assert!(frames.iter().zip(&sent).all(|(f, s)| &f.data == s));
}

#[test]
fn codec_change_swaps_the_payloader_and_announces_again() {
    use scripted_server::*;
    let server = ScriptedServer::start(Script::new());
    // Two live encoders into a selector: H.264 first, VP8 after the switch.
    let p = pipeline(&format!(
        "videotestsrc is-live=true num-buffers=90 ! video/x-raw,width=320,height=240,framerate=30/1 ! \
           x264enc tune=zerolatency key-int-max=15 speed-preset=ultrafast ! sel.sink_0 \
         videotestsrc is-live=true num-buffers=90 pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! \
           vp8enc deadline=1 keyframe-max-dist=15 ! sel.sink_1 \
         input-selector name=sel ! rtspannounce name=s location={} retry-delay-min=10",
        server.url("/live/switch")
    ));
    let sel = p.by_name("sel").unwrap();
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    assert!(
        server.wait_frames(20, Duration::from_secs(20)),
        "no H.264 frames"
    );
    let bin = p.by_name("s").unwrap().downcast::<gst::Bin>().unwrap();
    // H.264 through the built-in payloader; VP8 needs GStreamer's.
    assert!(bin.by_name("pay-sink_0").is_none());
    sel.set_property("active-pad", sel.static_pad("sink_1").unwrap());
    assert!(
        server.wait_requests("ANNOUNCE", 2, Duration::from_secs(20)),
        "no second ANNOUNCE: {:?}",
        server.snapshot().methods()
    );
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(30),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    p.set_state(gst::State::Null).unwrap();
    assert!(
        matches!(
            msg.as_ref().map(|m| m.view()),
            Some(gst::MessageView::Eos(_))
        ),
        "{msg:?}"
    );
    assert_eq!(
        factory_name(&bin.by_name("pay-sink_0").unwrap()),
        "rtpvp8pay"
    );
    let snap = server.snapshot();
    let announces: Vec<String> = snap
        .requests
        .iter()
        .filter(|r| r.method == "ANNOUNCE")
        .map(|r| r.body_str())
        .collect();
    assert!(announces[0].contains(" H264/90000"), "{}", announces[0]);
    assert!(announces[1].contains(" VP8/90000"), "{}", announces[1]);
    // VP8 packets arrived on the new connection.
    let last_conn = snap.connections.len() - 1;
    assert!(
        snap.frames
            .iter()
            .filter(|f| f.conn == last_conn && f.channel == 0)
            .count()
            > 10
    );
}

#[test]
fn h264_and_aac_encoded_over_udp_at_gst_rtsp_server() {
    // The payloaders sit before the transport: UDP takes the same RTP.
    let server =
        RecordServer::start(RecordServerConfig::new("/live/udp", Tracks::H264Aac)).unwrap();
    let out = push(&format!(
        "rtspannounce name=s protocols=udp location={} {} ! s.sink_0 {} ! s.sink_1",
        server.url(),
        h264_encoded(90),
        aac_encoded(141)
    ));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    eprintln!("{report}");
    let v = report.tracks.iter().find(|t| t.is_video()).unwrap();
    let a = report.tracks.iter().find(|t| !t.is_video()).unwrap();
    assert_eq!(v.frames, 90, "{report}");
    assert!((141..=142).contains(&a.frames), "{report}");
    assert!(report.errors.is_empty(), "{report}");
}

/// x264enc with `bframes` B-frames between references (profile main: negotiated as in front of
/// rtph264pay, x264enc would otherwise pick constrained-baseline, which has none).
fn x264_b(bframes: u32) -> String {
    format!(
        "x264enc bframes={bframes} key-int-max=30 speed-preset=ultrafast ! video/x-h264,profile=main"
    )
}

/// 90 frames through `encoder` into the element at real-time speed (sync=true, the default):
/// the server's report and the warnings posted.
fn b_frames_push(encoder: &str, tracks: Tracks) -> (Outcome, Report) {
    let server = RecordServer::start(RecordServerConfig::new("/live/b", tracks)).unwrap();
    let started = std::time::Instant::now();
    let out = push(&format!(
        "videotestsrc num-buffers=90 ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         {encoder} ! rtspannounce location={}",
        server.url()
    ));
    // Paced by the clock (the appsinks sync on DTS, which never goes back), not pushed at once.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2800),
        "90 frames at 30/s pushed in {took:?}"
    );
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    eprintln!("{encoder}: {report}\nwarnings: {:?}", out.warnings);
    (out, report)
}

fn reorder_warnings(out: &Outcome) -> Vec<&String> {
    out.warnings
        .iter()
        .filter(|w| w.contains("presentation order"))
        .collect()
}

/// Every frame decoded on their 3 s timeline, and exactly one warning, naming the pad.
fn assert_b_frames_delivered(out: &Outcome, report: &Report, codec: &str) {
    assert!(out.eos, "{out:?}");
    let v = &report.tracks[0];
    assert_eq!((v.codec.as_str(), v.frames), (codec, 90), "{report}");
    assert!(report.errors.is_empty(), "{report}");
    let reorder = reorder_warnings(out);
    assert_eq!(reorder.len(), 1, "{:?}", out.warnings);
    assert!(reorder[0].starts_with("sink_0:"), "{}", reorder[0]);
    assert!(reorder[0].contains("WebRTC"), "{}", reorder[0]);
    let span = v.duration().unwrap();
    assert!(
        span >= gst::ClockTime::from_mseconds(2900) && span <= gst::ClockTime::from_mseconds(3100),
        "{report}"
    );
}

#[test]
fn b_frames_every_frame_decoded_and_one_warning_naming_the_pad() {
    let (out, report) = b_frames_push(&x264_b(2), Tracks::H264);
    assert_b_frames_delivered(&out, &report, "H.264");
}

#[test]
fn h265_b_frames_every_frame_decoded_and_one_warning() {
    let (out, report) = b_frames_push(
        "x265enc speed-preset=ultrafast key-int-max=30 option-string=bframes=2",
        Tracks::Single(TrackKind::H265),
    );
    assert_b_frames_delivered(&out, &report, "H.265");
}

#[test]
fn no_b_frames_no_reorder_warning() {
    let (out, report) = b_frames_push(&x264_b(0), Tracks::H264);
    assert!(out.eos, "{out:?}");
    assert_eq!(report.tracks[0].frames, 90, "{report}");
    assert!(reorder_warnings(&out).is_empty(), "{:?}", out.warnings);
}
