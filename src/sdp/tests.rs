use super::*;
use gst::prelude::*;
use std::net::Ipv6Addr;
use std::str::FromStr;

fn init() {
    gst::init().unwrap();
}

/// Runs `desc ! fakesink` to EOS and returns the caps the sink ended up with (payloaders
/// may update their caps after the first buffers, e.g. with sprop-parameter-sets).
fn caps_from_pipeline(desc: &str) -> gst::Caps {
    init();
    let full = format!("{desc} ! fakesink name=sink sync=false");
    let pipeline = gst::parse::launch(&full)
        .unwrap_or_else(|e| panic!("cannot build '{full}' (missing GStreamer plugin?): {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(30),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let caps = sink.static_pad("sink").unwrap().current_caps();
    pipeline.set_state(gst::State::Null).unwrap();
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => {}
        Some(gst::MessageView::Error(err)) => {
            panic!(
                "pipeline '{full}' failed: {} ({:?})",
                err.error(),
                err.debug()
            )
        }
        _ => panic!("pipeline '{full}' timed out"),
    }
    caps.expect("no caps on the sink")
}

fn have(element: &str) -> bool {
    init();
    gst::ElementFactory::find(element).is_some()
}

fn session() -> SdpSession<'static> {
    SdpSession {
        local_addr: Some("192.168.1.10".parse().unwrap()),
        server_addr: Some("192.168.1.20".parse().unwrap()),
        session_name: "test session",
    }
}

fn one_track(caps: &gst::CapsRef, pt: u8) -> String {
    let tracks = [SdpTrack {
        caps,
        payload_type: pt,
        control: "streamid=0".into(),
    }];
    sdp_to_string(&build_sdp(&session(), &tracks).unwrap())
}

fn lines(sdp: &str) -> Vec<&str> {
    assert!(sdp.ends_with("\r\n"), "{sdp:?}");
    let body = &sdp[..sdp.len() - 2];
    let lines: Vec<&str> = body.split("\r\n").collect();
    for l in &lines {
        assert!(
            !l.contains('\n') && !l.contains('\r'),
            "bare line break in {sdp:?}"
        );
        assert_eq!(l.trim_end(), *l, "trailing blank in line {l:?}");
        assert!(!l.is_empty(), "empty line in {sdp:?}");
    }
    lines
}

fn line_with<'a>(sdp: &'a str, prefix: &str) -> &'a str {
    lines(sdp)
        .into_iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{sdp}"))
}

fn fmtp_params(fmtp_line: &str, pt: u8) -> Vec<(String, String)> {
    let prefix = format!("a=fmtp:{pt} ");
    let params = fmtp_line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{fmtp_line:?} does not start with {prefix:?}"));
    params
        .split(';')
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .unwrap_or_else(|| panic!("bad param {p:?}"));
            assert!(!v.is_empty(), "empty fmtp value for {k} in {fmtp_line:?}");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The SDP must parse back and yield caps that GStreamer's receiving side (gst-rtsp-server,
/// rtspsrc) would use for each announced PT.
fn roundtrip(sdp: &str) -> Vec<gst::Caps> {
    let parsed = gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()).unwrap();
    parsed
        .medias()
        .map(|m| {
            assert_eq!(m.proto(), Some("RTP/AVP"));
            assert_eq!(m.port(), 0);
            let pt: i32 = m.format(0).unwrap().parse().unwrap();
            m.caps_from_media(pt).expect("caps from media")
        })
        .collect()
}

#[test]
fn session_lines() {
    init();
    let caps = gst::Caps::from_str(
        "application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=0",
    )
    .unwrap();
    let sdp = one_track(&caps, 0);
    let l = lines(&sdp);
    assert_eq!(l[0], "v=0");
    assert!(l[1].starts_with("o=- "), "{}", l[1]);
    assert!(l[1].ends_with(" 1 IN IP4 192.168.1.10"), "{}", l[1]);
    assert_eq!(l[2], "s=test session");
    assert_eq!(l[3], "c=IN IP4 192.168.1.20");
    assert_eq!(l[4], "t=0 0");
    assert_eq!(l[5], TOOL.replace("rtspannounce", "a=tool:rtspannounce"));
    assert_eq!(
        &l[6..],
        [
            "m=audio 0 RTP/AVP 0",
            "a=rtpmap:0 PCMU/8000",
            "a=control:streamid=0"
        ]
    );

    // Defaults and IPv6.
    let tracks = [SdpTrack {
        caps: &caps,
        payload_type: 0,
        control: "streamid=0".into(),
    }];
    let s = SdpSession {
        local_addr: None,
        server_addr: None,
        session_name: "",
    };
    let sdp = sdp_to_string(&build_sdp(&s, &tracks).unwrap());
    assert!(line_with(&sdp, "o=").ends_with(" IN IP4 127.0.0.1"));
    assert_eq!(line_with(&sdp, "c="), "c=IN IP4 0.0.0.0");
    assert_eq!(line_with(&sdp, "s="), "s=No Name");

    let s = SdpSession {
        local_addr: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        server_addr: Some("2001:db8::1".parse().unwrap()),
        session_name: "x",
    };
    let sdp = sdp_to_string(&build_sdp(&s, &tracks).unwrap());
    assert!(line_with(&sdp, "o=").ends_with(" IN IP6 ::1"));
    assert_eq!(line_with(&sdp, "c="), "c=IN IP6 2001:db8::1");

    // IPv4-mapped IPv6 (dual-stack socket) is written as IPv4.
    let s = SdpSession {
        local_addr: Some("::ffff:10.0.0.1".parse().unwrap()),
        server_addr: Some("::ffff:10.0.0.2".parse().unwrap()),
        session_name: "x",
    };
    let sdp = sdp_to_string(&build_sdp(&s, &tracks).unwrap());
    assert!(line_with(&sdp, "o=").ends_with(" IN IP4 10.0.0.1"));
    assert_eq!(line_with(&sdp, "c="), "c=IN IP4 10.0.0.2");
}

fn check_h264(caps: &gst::CapsRef) {
    assert!(!lacks_parameter_sets(caps), "{caps}");
    let sdp = one_track(caps, 96);
    assert_eq!(line_with(&sdp, "m="), "m=video 0 RTP/AVP 96");
    assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:96 H264/90000");
    let params = fmtp_params(line_with(&sdp, "a=fmtp:"), 96);
    assert_eq!(param(&params, "packetization-mode"), Some("1"));
    let sprop = param(&params, "sprop-parameter-sets").unwrap();
    assert!(sprop.contains(','), "{sprop}");
    assert!(param(&params, "profile-level-id").unwrap().len() == 6);
    assert!(param(&params, "level-asymmetry-allowed").is_none());
    assert!(param(&params, "profile").is_none());
    assert_eq!(line_with(&sdp, "a=framerate:"), "a=framerate:30");
    assert_eq!(line_with(&sdp, "a=control:"), "a=control:streamid=0");
    // nothing from ssrc / timestamp-offset / seqnum-offset
    assert!(!sdp.contains("ssrc") && !sdp.contains("offset"), "{sdp}");
    let rt = roundtrip(&sdp);
    let s = rt[0].structure(0).unwrap();
    assert_eq!(s.get::<&str>("encoding-name").unwrap(), "H264");
    assert_eq!(s.get::<&str>("sprop-parameter-sets").unwrap(), sprop);
}

#[test]
fn h264_from_x264enc() {
    let caps = caps_from_pipeline(
        "videotestsrc num-buffers=3 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc ! rtph264pay",
    );
    let s = caps.structure(0).unwrap();
    // rtph264pay copies the encoder's `profile`: we must not turn it into fmtp junk.
    assert!(s.has_field("profile"), "{caps}");
    check_h264(&caps);
}

#[test]
fn h264_handwritten_without_sprop() {
    init();
    let caps = gst::Caps::from_str(
        "application/x-rtp, media=(string)video, clock-rate=(int)90000, encoding-name=(string)H264, \
         packetization-mode=(string)1, profile-level-id=(string)42e01f, payload=(int)96, \
         ssrc=(uint)1234, timestamp-offset=(uint)5, seqnum-offset=(uint)6",
    )
    .unwrap();
    assert!(lacks_parameter_sets(&caps));
    let sdp = one_track(&caps, 96);
    assert_eq!(
        line_with(&sdp, "a=fmtp:"),
        "a=fmtp:96 packetization-mode=1;profile-level-id=42e01f"
    );

    // An empty sprop-parameter-sets is never written.
    let caps = gst::Caps::from_str(
        "application/x-rtp, media=(string)video, clock-rate=(int)90000, encoding-name=(string)H264, \
         packetization-mode=(string)1, sprop-parameter-sets=(string)\"\", profile-level-id=(string)42e01f, payload=(int)96",
    )
    .unwrap();
    assert!(lacks_parameter_sets(&caps));
    let sdp = one_track(&caps, 96);
    assert!(!sdp.contains("sprop"), "{sdp}");
    assert_eq!(
        line_with(&sdp, "a=fmtp:"),
        "a=fmtp:96 packetization-mode=1;profile-level-id=42e01f"
    );

    // Only an SPS: still lacking the PPS.
    let caps = gst::Caps::from_str(
        "application/x-rtp, media=video, clock-rate=90000, encoding-name=H264, payload=96, \
         sprop-parameter-sets=(string)\"Z0LAHtkAoD2wEQAAAwABAAADADIPFi5I\"",
    )
    .unwrap();
    assert!(lacks_parameter_sets(&caps));
    let caps = gst::Caps::from_str(
        "application/x-rtp, media=video, clock-rate=90000, encoding-name=H264, payload=96, \
         sprop-parameter-sets=(string)\"Z0LAHtkAoD2wEQAAAwABAAADADIPFi5I,aMuDyyA=\"",
    )
    .unwrap();
    assert!(!lacks_parameter_sets(&caps));
}

fn check_h265(caps: &gst::CapsRef) {
    assert!(!lacks_parameter_sets(caps), "{caps}");
    let sdp = one_track(caps, 96);
    assert_eq!(line_with(&sdp, "m="), "m=video 0 RTP/AVP 96");
    assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:96 H265/90000");
    let params = fmtp_params(line_with(&sdp, "a=fmtp:"), 96);
    for f in ["sprop-vps", "sprop-sps", "sprop-pps"] {
        assert!(!param(&params, f).unwrap().is_empty());
    }
    assert_eq!(line_with(&sdp, "a=control:"), "a=control:streamid=0");
    roundtrip(&sdp);
}

#[test]
fn h265_from_x265enc() {
    if !have("x265enc") {
        eprintln!("x265enc not installed, covered by h265_handwritten only");
        return;
    }
    let caps = caps_from_pipeline(
        "videotestsrc num-buffers=3 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x265enc ! rtph265pay",
    );
    check_h265(&caps);
}

#[test]
fn h265_handwritten() {
    init();
    let caps = gst::Caps::from_str(
        "application/x-rtp, media=(string)video, clock-rate=(int)90000, encoding-name=(string)H265, \
         sprop-vps=(string)\"QAEMAf//AWAAAAMAkAAAAwAAAwBdlZgJ\", \
         sprop-sps=(string)\"QgEBAWAAAAMAkAAAAwAAAwBdoAKAgC0WWVmkkyvAQAAA+kAAF3AC\", \
         sprop-pps=(string)\"RAHBcrRiQA==\", payload=(int)96, ssrc=(uint)1, a-framerate=(string)25",
    )
    .unwrap();
    check_h265(&caps);
    assert_eq!(
        line_with(&one_track(&caps, 96), "a=framerate:"),
        "a=framerate:25"
    );

    // Before the payloader saw the parameter sets (what rtph265pay first negotiates).
    let caps = gst::Caps::from_str(
        "application/x-rtp, media=video, payload=96, clock-rate=90000, encoding-name=H265, ssrc=(uint)1",
    )
    .unwrap();
    assert!(lacks_parameter_sets(&caps));
    let caps = gst::Caps::from_str(
        "application/x-rtp, media=video, payload=96, clock-rate=90000, encoding-name=H265, \
         sprop-vps=(string)\"QAEMAf//AWAAAAMAkAAAAwAAAwBdlZgJ\", sprop-sps=(string)\"\", sprop-pps=(string)\"RAHBcrRiQA==\"",
    )
    .unwrap();
    assert!(lacks_parameter_sets(&caps));
}

fn aac_encoder() -> &'static str {
    ["avenc_aac", "voaacenc", "fdkaacenc"]
        .into_iter()
        .find(|e| have(e))
        .expect("no AAC encoder (install gstreamer1.0-libav)")
}

#[test]
fn aac_mpeg4_generic() {
    let caps = caps_from_pipeline(&format!(
        "audiotestsrc num-buffers=3 ! audio/x-raw,rate=44100,channels=2 ! {} ! rtpmp4gpay",
        aac_encoder()
    ));
    assert!(!lacks_parameter_sets(&caps));
    let sdp = one_track(&caps, 97);
    assert_eq!(line_with(&sdp, "m="), "m=audio 0 RTP/AVP 97");
    assert_eq!(
        line_with(&sdp, "a=rtpmap:"),
        "a=rtpmap:97 MPEG4-GENERIC/44100/2"
    );
    let params = fmtp_params(line_with(&sdp, "a=fmtp:"), 97);
    let config = param(&params, "config").unwrap();
    assert!(
        config.len() >= 4 && config.chars().all(|c| c.is_ascii_hexdigit()),
        "{config}"
    );
    assert_eq!(param(&params, "mode"), Some("AAC-hbr"));
    assert_eq!(param(&params, "sizelength"), Some("13"));
    assert_eq!(param(&params, "indexlength"), Some("3"));
    assert_eq!(param(&params, "indexdeltalength"), Some("3"));
    assert_eq!(param(&params, "streamtype"), Some("5"));
    assert_eq!(line_with(&sdp, "a=control:"), "a=control:streamid=0");
    roundtrip(&sdp);
}

#[test]
fn aac_mp4a_latm() {
    let caps = caps_from_pipeline(&format!(
        "audiotestsrc num-buffers=3 ! audio/x-raw,rate=44100,channels=1 ! {} ! rtpmp4apay",
        aac_encoder()
    ));
    let sdp = one_track(&caps, 96);
    assert_eq!(line_with(&sdp, "m="), "m=audio 0 RTP/AVP 96");
    assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:96 MP4A-LATM/44100");
    let params = fmtp_params(line_with(&sdp, "a=fmtp:"), 96);
    assert_eq!(param(&params, "cpresent"), Some("0"));
    assert!(!param(&params, "config").unwrap().is_empty());
    roundtrip(&sdp);
}

#[test]
fn opus() {
    let caps = caps_from_pipeline(
        "audiotestsrc num-buffers=3 ! audio/x-raw,channels=2 ! opusenc ! rtpopuspay",
    );
    let sdp = one_track(&caps, 96);
    assert_eq!(line_with(&sdp, "m="), "m=audio 0 RTP/AVP 96");
    assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:96 OPUS/48000/2");
    let params = fmtp_params(line_with(&sdp, "a=fmtp:"), 96);
    assert_eq!(param(&params, "sprop-stereo"), Some("1"));
    roundtrip(&sdp);
}

#[test]
fn pcmu_pcma() {
    let caps = caps_from_pipeline("audiotestsrc num-buffers=3 ! mulawenc ! rtppcmupay");
    let sdp = one_track(&caps, 0);
    assert_eq!(line_with(&sdp, "m="), "m=audio 0 RTP/AVP 0");
    assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:0 PCMU/8000");
    assert!(!sdp.contains("a=fmtp"), "{sdp}");
    assert_eq!(line_with(&sdp, "a=control:"), "a=control:streamid=0");
    roundtrip(&sdp);

    let caps = caps_from_pipeline("audiotestsrc num-buffers=3 ! alawenc ! rtppcmapay");
    let sdp = one_track(&caps, 8);
    assert_eq!(line_with(&sdp, "m="), "m=audio 0 RTP/AVP 8");
    assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:8 PCMA/8000");
    assert!(!sdp.contains("a=fmtp"), "{sdp}");
    roundtrip(&sdp);
}

#[test]
fn multi_track_pt_collision() {
    let video = caps_from_pipeline(
        "videotestsrc num-buffers=3 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc ! rtph264pay",
    );
    let audio = caps_from_pipeline(&format!(
        "audiotestsrc num-buffers=3 ! audio/x-raw,rate=44100,channels=2 ! {} ! rtpmp4gpay",
        aac_encoder()
    ));
    let caps_pts: Vec<u8> = [&video, &audio]
        .iter()
        .map(|c| c.structure(0).unwrap().get::<i32>("payload").unwrap() as u8)
        .collect();
    assert_eq!(caps_pts, [96, 96]);
    let pts = assign_payload_types(&caps_pts);
    assert_eq!(pts, [96, 97]);

    let tracks = [
        SdpTrack {
            caps: &video,
            payload_type: pts[0],
            control: "streamid=0".into(),
        },
        SdpTrack {
            caps: &audio,
            payload_type: pts[1],
            control: "streamid=1".into(),
        },
    ];
    let sdp = sdp_to_string(&build_sdp(&session(), &tracks).unwrap());
    eprintln!("{sdp}");
    let l = lines(&sdp);
    let m: Vec<usize> = (0..l.len()).filter(|&i| l[i].starts_with("m=")).collect();
    assert_eq!(m.len(), 2);
    let (v, a) = (&l[m[0]..m[1]], &l[m[1]..]);
    assert_eq!(v[0], "m=video 0 RTP/AVP 96");
    assert_eq!(v[1], "a=rtpmap:96 H264/90000");
    assert!(v[2].starts_with("a=fmtp:96 "));
    assert_eq!(*v.last().unwrap(), "a=control:streamid=0");
    assert_eq!(a[0], "m=audio 0 RTP/AVP 97");
    assert_eq!(a[1], "a=rtpmap:97 MPEG4-GENERIC/44100/2");
    assert!(a[2].starts_with("a=fmtp:97 "), "{}", a[2]);
    assert!(a[2].contains("config="), "{}", a[2]);
    assert_eq!(*a.last().unwrap(), "a=control:streamid=1");
    assert!(!sdp.contains(":96 MPEG4"), "{sdp}");

    let rt = roundtrip(&sdp);
    assert_eq!(
        rt[1].structure(0).unwrap().get::<i32>("payload").unwrap(),
        97
    );
    assert_eq!(
        rt[1]
            .structure(0)
            .unwrap()
            .get::<&str>("encoding-name")
            .unwrap(),
        "MPEG4-GENERIC"
    );

    // Without remapping, build_sdp refuses (ZLMediaKit routes by PT).
    let dup = [
        SdpTrack {
            caps: &video,
            payload_type: 96,
            control: "streamid=0".into(),
        },
        SdpTrack {
            caps: &audio,
            payload_type: 96,
            control: "streamid=1".into(),
        },
    ];
    let err = build_sdp(&session(), &dup).unwrap_err();
    assert!(matches!(
        err,
        SdpError::DuplicatePayloadType {
            payload_type: 96,
            ..
        }
    ));
    assert!(err.to_string().contains("streamid=1"), "{err}");
}

#[test]
fn remapped_pt_rewrites_framesize_and_rtcp_fb() {
    init();
    let caps = gst::Caps::from_str(
        "application/x-rtp, media=video, clock-rate=90000, encoding-name=VP8, payload=96, \
         a-framesize=(string)640-480, rtcp-fb-nack=true, rtcp-fb-nack-pli=true",
    )
    .unwrap();
    let sdp = one_track(&caps, 101);
    assert_eq!(line_with(&sdp, "m="), "m=video 0 RTP/AVP 101");
    assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:101 VP8/90000");
    assert_eq!(line_with(&sdp, "a=framesize:"), "a=framesize:101 640-480");
    assert_eq!(line_with(&sdp, "a=rtcp-fb:"), "a=rtcp-fb:101 nack");
    // No media or attribute line names the old PT (the o= line's random session id may
    // contain the digits).
    let names_96 = |l: &str| l.split([' ', ':']).any(|t| t == "96");
    assert!(
        !sdp.lines()
            .filter(|l| l.starts_with("m=") || l.starts_with("a="))
            .any(names_96),
        "{sdp}"
    );
}

#[test]
fn relay_junk_is_filtered() {
    init();
    // Caps as rtspsrc produces them from a camera's SDP.
    let caps = gst::Caps::from_str(
        "application/x-rtp, media=(string)video, payload=(int)96, clock-rate=(int)90000, \
         encoding-name=(string)H264, packetization-mode=(string)1, profile-level-id=(string)4d001f, \
         sprop-parameter-sets=(string)\"Z0LAHtkAoD2wEQAAAwABAAADADIPFi5I\\,aMuDyyA\\=\", \
         a-framerate=(string)25, a-recvonly=(string)\"\", a-tool=(string)\"LIVE555 Streaming Media\", \
         a-type=(string)broadcast, x-qt-text-nam=(string)camera, x-dimensions=(string)\"1920,1080\", \
         ssrc=(uint)1, clock-base=(uint)2, seqnum-base=(uint)3, npt-start=(guint64)0, \
         play-speed=(double)1, play-scale=(double)1, onvif-mode=(boolean)false",
    )
    .unwrap();
    let sdp = one_track(&caps, 96);
    let media: Vec<&str> = lines(&sdp)
        .into_iter()
        .skip_while(|l| !l.starts_with("m="))
        .collect();
    assert_eq!(
        media,
        [
            "m=video 0 RTP/AVP 96",
            "a=rtpmap:96 H264/90000",
            "a=fmtp:96 packetization-mode=1;profile-level-id=4d001f;sprop-parameter-sets=Z0LAHtkAoD2wEQAAAwABAAADADIPFi5I,aMuDyyA=",
            "a=framerate:25",
            "a=control:streamid=0",
        ]
    );
}

#[test]
fn errors() {
    init();
    let check = |caps: &str, pt: u8, control: &str| {
        let caps = gst::Caps::from_str(caps).unwrap();
        let tracks = [SdpTrack {
            caps: &caps,
            payload_type: pt,
            control: control.into(),
        }];
        build_sdp(&session(), &tracks).unwrap_err()
    };
    let ok = "application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=0";

    let e = check("video/x-h264,stream-format=byte-stream", 96, "streamid=0");
    assert!(matches!(e, SdpError::CapsNotRtp(_)), "{e:?}");
    assert!(e.to_string().contains("video/x-h264"), "{e}");
    assert!(e.to_string().contains("application/x-rtp"), "{e}");

    let e = check("ANY", 96, "streamid=0");
    assert!(matches!(e, SdpError::CapsNotRtp(_)), "{e:?}");
    let e = check("EMPTY", 96, "streamid=0");
    assert!(matches!(e, SdpError::CapsNotRtp(_)), "{e:?}");

    for (field, caps) in [
        (
            "media",
            "application/x-rtp,clock-rate=8000,encoding-name=PCMU,payload=0",
        ),
        (
            "encoding-name",
            "application/x-rtp,media=audio,clock-rate=8000,payload=0",
        ),
        (
            "clock-rate",
            "application/x-rtp,media=audio,encoding-name=PCMU,payload=0",
        ),
        (
            "payload",
            "application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU",
        ),
        (
            "clock-rate",
            "application/x-rtp,media=audio,clock-rate=(string)8000,encoding-name=PCMU,payload=0",
        ),
    ] {
        let e = check(caps, 0, "streamid=0");
        match &e {
            SdpError::MissingField { field: f, .. } => assert_eq!(*f, field, "{e}"),
            _ => panic!("{e:?}"),
        }
        assert!(e.to_string().contains(field) && e.to_string().contains("application/x-rtp"));
    }

    let e = check(
        "application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=200",
        0,
        "streamid=0",
    );
    assert!(matches!(e, SdpError::InvalidField { .. }), "{e:?}");
    let e = check(ok, 128, "streamid=0");
    assert!(
        matches!(
            e,
            SdpError::InvalidPayloadType {
                payload_type: 128,
                ..
            }
        ),
        "{e:?}"
    );
    let e = check(ok, 0, "");
    assert!(matches!(e, SdpError::InvalidControl(_)), "{e:?}");
    let e = check(ok, 0, "streamid=0\r\na=evil");
    assert!(matches!(e, SdpError::InvalidControl(_)), "{e:?}");

    let caps = gst::Caps::from_str(ok).unwrap();
    let tracks = [SdpTrack {
        caps: &caps,
        payload_type: 0,
        control: "streamid=0".into(),
    }];
    let s = SdpSession {
        local_addr: None,
        server_addr: None,
        session_name: "a\r\nb",
    };
    assert!(matches!(
        build_sdp(&s, &tracks).unwrap_err(),
        SdpError::InvalidSessionName(_)
    ));
    assert!(matches!(
        build_sdp(&session(), &[]).unwrap_err(),
        SdpError::NoTracks
    ));
}

#[test]
fn control_chars_in_fmtp_value_rejected() {
    init();
    let mut caps = gst::Caps::from_str(
        "application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=0",
    )
    .unwrap();
    caps.make_mut()
        .structure_mut(0)
        .unwrap()
        .set("foo", "a\r\na=evil:1");
    let tracks = [SdpTrack {
        caps: &caps,
        payload_type: 0,
        control: "streamid=0".into(),
    }];
    let e = build_sdp(&session(), &tracks).unwrap_err();
    match &e {
        SdpError::InvalidField { field, .. } => assert_eq!(field, "foo"),
        _ => panic!("{e:?}"),
    }
}

#[test]
fn fmtp_cleanup() {
    assert_eq!(
        clean_fmtp("96 packetization-mode=1;sprop-parameter-sets=;profile-level-id=42e01f")
            .as_deref(),
        Some("96 packetization-mode=1;profile-level-id=42e01f")
    );
    assert_eq!(clean_fmtp("96 sprop-parameter-sets=").as_deref(), None);
    assert_eq!(clean_fmtp("96 a=1; b=2").as_deref(), Some("96 a=1;b=2"));
}

#[test]
fn assign_pts() {
    assert_eq!(assign_payload_types(&[]), Vec::<u8>::new());
    assert_eq!(assign_payload_types(&[96]), [96]);
    assert_eq!(assign_payload_types(&[96, 97]), [96, 97]);
    assert_eq!(assign_payload_types(&[96, 96]), [96, 97]);
    // 97 is used by a later pad: skip it.
    assert_eq!(assign_payload_types(&[96, 96, 97]), [96, 98, 97]);
    assert_eq!(assign_payload_types(&[96, 96, 96]), [96, 97, 98]);
    // Static collisions go to the dynamic range; distinct static PTs are kept.
    assert_eq!(assign_payload_types(&[0, 0]), [0, 96]);
    assert_eq!(assign_payload_types(&[0, 8, 96, 0]), [0, 8, 96, 97]);
    assert_eq!(assign_payload_types(&[8, 96, 96, 8]), [8, 96, 97, 98]);
    // Invalid PTs get a dynamic one.
    assert_eq!(assign_payload_types(&[200, 96]), [97, 96]);
    // Lowest free, counting PTs of pads not yet seen.
    assert_eq!(assign_payload_types(&[100, 100, 96, 97]), [100, 98, 96, 97]);
    // Exhaust the dynamic range: 33 pads on 96.
    let out = assign_payload_types(&[96; 33]);
    assert_eq!(out[..32], (96u8..=127).collect::<Vec<_>>()[..]);
    assert_eq!(out[32], 77);
    let mut sorted = out.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 33);
    // All 128 PTs used: beyond the fallback ranges the input is kept.
    let all: Vec<u8> = (0..=127).collect();
    assert_eq!(assign_payload_types(&all), all);
}

#[test]
fn lacks_parameter_sets_other_codecs() {
    init();
    for c in [
        "application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=0",
        "application/x-rtp,media=video,clock-rate=90000,encoding-name=VP8,payload=96",
        "video/x-h264",
        "EMPTY",
    ] {
        assert!(
            !lacks_parameter_sets(&gst::Caps::from_str(c).unwrap()),
            "{c}"
        );
    }
    // encoding-name is case-insensitive
    let c = gst::Caps::from_str(
        "application/x-rtp,media=video,clock-rate=90000,encoding-name=h264,payload=96",
    )
    .unwrap();
    assert!(lacks_parameter_sets(&c));
}

/// Prints the SDP for H.264 + AAC (run with --nocapture to see it).
#[test]
fn sample_h264_aac() {
    let video = caps_from_pipeline(
        "videotestsrc num-buffers=3 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc ! rtph264pay",
    );
    let audio = caps_from_pipeline(&format!(
        "audiotestsrc num-buffers=3 ! audio/x-raw,rate=44100,channels=2 ! {} ! rtpmp4gpay",
        aac_encoder()
    ));
    let tracks = [
        SdpTrack {
            caps: &video,
            payload_type: 96,
            control: "streamid=0".into(),
        },
        SdpTrack {
            caps: &audio,
            payload_type: 97,
            control: "streamid=1".into(),
        },
    ];
    let sdp = sdp_to_string(&build_sdp(&session(), &tracks).unwrap());
    println!("{video}\n{audio}\n{sdp}");
    lines(&sdp);
}
