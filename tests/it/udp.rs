//! RTP over UDP unicast: pushes into gst-rtsp-server (record mode) and FFmpeg's listener with
//! frames counted at the receiver, sender reports on the server's RTCP port, receiver reports
//! read back, 461 fallback from TCP, the rtspt:// / rtspu:// schemes, and reconnect after the
//! RTSP connection is lost while the media flows over UDP.
//!
//! Media is pushed at real-time speed (`sync=true`): over UDP a burst faster than the receiver
//! reads overflows its socket buffer, which is loss, not a test of the element.

use crate::peers;

use crate::harness::*;
use crate::record_server::*;
use crate::scripted_server::*;
use gst::prelude::*;
use gst_rtsp_server::gst_rtsp::RTSPLowerTrans;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Runs `desc` (whose sink is named `s`) to its end; returns the outcome and the final stats.
fn push_stats(desc: &str) -> (Outcome, gst::Structure) {
    let p = pipeline(desc);
    let out = run(&p, Duration::from_secs(60));
    let stats: gst::Structure = p.by_name("s").unwrap().property("stats");
    (out, stats)
}

fn track_stats(stats: &gst::Structure) -> Vec<gst::Structure> {
    stats
        .get::<gst::Array>("tracks")
        .unwrap()
        .iter()
        .map(|v| v.get::<gst::Structure>().unwrap())
        .collect()
}

fn setup_transports(server: &ScriptedServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "SETUP")
        .map(|r| r.header("transport").unwrap_or_default().to_string())
        .collect()
}

/// What the decoder complains about in a whole recording (empty: every frame decodes cleanly;
/// a truncated frame shows as "error while decoding MB ...").
fn decode_errors(path: &std::path::Path) -> String {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// RTCP packet types in a compound.
fn rtcp_types(mut p: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    while p.len() >= 4 {
        v.push(p[1]);
        let len = (u16::from_be_bytes([p[2], p[3]]) as usize + 1) * 4;
        p = &p[len.min(p.len())..];
    }
    v
}

#[test]
fn gst_rtsp_server_udp_only_h264_90_of_90_after_461_on_tcp() {
    // The factory accepts UDP only: our TCP SETUP gets 461 and the element moves to UDP.
    let server = RecordServer::start(
        RecordServerConfig::new("/live/udp", Tracks::H264).with_protocols(RTSPLowerTrans::UDP),
    )
    .unwrap();
    let (out, stats) = push_stats(&format!(
        "{} ! rtspannounce name=s location={}",
        h264_branch(90, "vpay"),
        server.url()
    ));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    let setups = report.requests.iter().filter(|m| *m == "SETUP").count();
    assert_eq!(setups, 2, "{report}");
    assert_eq!(report.tracks[0].codec, "H.264", "{report}");
    assert_eq!(report.tracks[0].frames, 90, "{report}");
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(stats.get::<&str>("transport").unwrap(), "udp", "{stats}");
    let t = &track_stats(&stats)[0];
    assert_eq!(t.get::<&str>("transport").unwrap(), "udp", "{t}");
    let (rtp, rtcp) = (
        t.get::<u32>("server-rtp-port").unwrap(),
        t.get::<u32>("server-rtcp-port").unwrap(),
    );
    assert!(rtp > 0 && rtcp > 0 && rtp != rtcp, "{t}");
    let client = t.get::<u32>("client-rtp-port").unwrap();
    assert!(client.is_multiple_of(2), "{t}");
    assert_eq!(t.get::<u32>("client-rtcp-port").unwrap(), client + 1);
    assert!(t.get::<u64>("sender-reports").unwrap() >= 2, "{t}");
    eprintln!(
        "gst-rtsp-server over UDP: {} of 90 H.264 frames decoded; {} sender reports sent, {} RTCP packets from the server",
        report.tracks[0].frames,
        t.get::<u64>("sender-reports").unwrap(),
        t.get::<u64>("rtcp-received").unwrap()
    );
}

#[test]
fn gst_rtsp_server_udp_h264_and_aac() {
    let server = RecordServer::start(RecordServerConfig::new("/live/av", Tracks::H264Aac)).unwrap();
    let (out, stats) = push_stats(&format!(
        "rtspannounce name=s protocols=udp location={} {} ! s.sink_0 {} ! s.sink_1",
        server.url(),
        h264_branch(90, "vpay"),
        aac_branch(141, "apay")
    ));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    let v = report.tracks.iter().find(|t| t.is_video()).unwrap();
    let a = report.tracks.iter().find(|t| !t.is_video()).unwrap();
    assert_eq!(v.frames, 90, "{report}");
    assert_eq!(a.codec, "AAC", "{report}");
    // 141 buffers of 1024 samples; the encoder adds a priming frame.
    assert!(a.frames >= 141, "{report}");
    assert_eq!((a.rate, a.channels), (Some(48000), Some(2)));
    assert!(report.errors.is_empty(), "{report}");
    let tracks = track_stats(&stats);
    assert!(tracks
        .iter()
        .all(|t| t.get::<&str>("transport").unwrap() == "udp"));
    // Two tracks, two distinct pairs.
    assert_ne!(
        tracks[0].get::<u32>("client-rtp-port").unwrap(),
        tracks[1].get::<u32>("client-rtp-port").unwrap()
    );
    eprintln!(
        "gst-rtsp-server over UDP: {} of 90 H.264 frames, {} AAC frames (141 buffers in) decoded",
        v.frames, a.frames
    );
}

#[test]
fn ffmpeg_listener_udp_h264_all_frames() {
    let dir = peers::temp_dir("udp-ff");
    let mut ff =
        peers::FfmpegListener::start(&dir, "/live/cam1", "h264.mkv", &["-rtsp_transport", "udp"]);
    // FFmpeg's listener takes a TCP SETUP whatever -rtsp_transport says (it only checks
    // mode=record and the lower transport is TCP or UDP): UDP must be asked for.
    let (out, stats) = push_stats(&format!(
        "{} ! rtspannounce name=s protocols=udp location={}",
        h264_branch(90, "vpay"),
        ff.url()
    ));
    assert!(out.eos, "{out:?}");
    let st = ff.child.wait_exit(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "ffmpeg: {}", ff.log_text());
    assert_eq!(stats.get::<&str>("transport").unwrap(), "udp", "{stats}");
    let streams = peers::ffprobe(&ff.out);
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].codec, "h264");
    assert_eq!(streams[0].frames, 90, "{streams:?}\n{}", ff.log_text());
    assert_eq!(
        decode_errors(&ff.out),
        "",
        "the last frame must arrive whole"
    );
    eprintln!(
        "ffmpeg listener over UDP: {} of 90 H.264 frames",
        streams[0].frames
    );
}

#[test]
fn ffmpeg_listener_rtspu_h264_and_aac() {
    let dir = peers::temp_dir("udp-ff-av");
    let mut ff =
        peers::FfmpegListener::start(&dir, "/live/av", "av.mkv", &["-rtsp_transport", "udp"]);
    let url = ff.url().replacen("rtsp://", "rtspu://", 1);
    let (out, _stats) = push_stats(&format!(
        "rtspannounce name=s location={url} {} ! s.sink_0 {} ! s.sink_1",
        h264_branch(90, "vpay"),
        aac_branch(141, "apay")
    ));
    assert!(out.eos, "{out:?}");
    let st = ff.child.wait_exit(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "ffmpeg: {}", ff.log_text());
    let streams = peers::ffprobe(&ff.out);
    let v = streams.iter().find(|s| s.codec == "h264").expect("video");
    let a = streams.iter().find(|s| s.codec == "aac").expect("audio");
    assert_eq!(v.frames, 90, "{streams:?}");
    assert!(a.frames >= 141, "{streams:?}");
    assert_eq!(decode_errors(&ff.out), "");
    eprintln!(
        "ffmpeg listener over UDP (rtspu://): {} of 90 H.264 frames, {} AAC frames",
        v.frames, a.frames
    );
}

#[test]
fn scripted_udp_rtp_and_sender_reports_reach_the_server_ports_and_reports_come_back() {
    let server = ScriptedServer::start(Script::new());
    let p = pipeline(&format!(
        "{} ! rtspannounce name=s rtcp-interval=500 location={}",
        h264_branch(90, "vpay"),
        server.url("/live").replacen("rtsp://", "rtspu://", 1)
    ));
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    // RTP on the RTP port and sender reports (SR + SDES) on the RTCP port.
    assert!(server.wait_udp(
        |d| d
            .iter()
            .any(|d| d.rtcp && rtcp_types(&d.data).starts_with(&[200, 202]))
            && d.iter().filter(|d| !d.rtcp).count() >= 10,
        T
    ));
    let transports = setup_transports(&server);
    assert_eq!(transports.len(), 1);
    let pairs = server.udp_pairs();
    assert_eq!(pairs.len(), 1);
    let pair = &pairs[0];
    assert!(
        transports[0].starts_with("RTP/AVP;unicast;client_port=")
            && transports[0].ends_with(";mode=record"),
        "{transports:?}"
    );
    assert_eq!(
        transports[0],
        format!(
            "RTP/AVP;unicast;client_port={}-{};mode=record",
            pair.client_rtp.port(),
            pair.client_rtcp.port()
        )
    );
    assert!(pair.client_rtp.port().is_multiple_of(2));
    assert_eq!(pair.client_rtcp.port(), pair.client_rtp.port() + 1);
    // Nothing interleaved on the RTSP connection.
    assert!(server.frames().is_empty(), "{:?}", server.frames().len());
    let dgrams = server.udp_datagrams();
    let rtp = dgrams.iter().find(|d| !d.rtcp).unwrap();
    assert_eq!(rtp.data[0] >> 6, 2, "RTP version 2");
    assert_eq!(
        rtp.from.port(),
        pair.client_rtp.port(),
        "sent from our RTP port"
    );
    let sr = dgrams.iter().find(|d| d.rtcp).unwrap();
    assert_eq!(
        sr.from.port(),
        pair.client_rtcp.port(),
        "sent from our RTCP port"
    );
    // The SR names the SSRC of the RTP packets.
    assert_eq!(&sr.data[4..8], &rtp.data[8..12]);

    // A receiver report from the server's RTCP port about our SSRC: 3 packets lost.
    let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0, 9];
    rr.extend_from_slice(&rtp.data[8..12]);
    rr.extend_from_slice(&[10, 0, 0, 3]);
    rr.extend_from_slice(&[0; 16]);
    assert!(server.send_udp_rtcp(0, &rr));
    let sink = p.by_name("s").unwrap();
    let seen = next_message_text(&bus, gst::MessageType::Warning);
    assert!(seen.contains("3 packets lost"), "{seen}");
    let stats: gst::Structure = sink.property("stats");
    let t = &track_stats(&stats)[0];
    assert_eq!(t.get::<u64>("receiver-reports").unwrap(), 1, "{t}");
    assert_eq!(t.get::<i32>("cumulative-lost").unwrap(), 3, "{t}");
    assert_eq!(t.get::<u64>("rtcp-received").unwrap(), 1, "{t}");
    assert_eq!(
        t.get::<u32>("server-rtp-port").unwrap(),
        pair.server_ports.0 as u32
    );

    // At the end: every packet counted arrived, a BYE went to the RTCP port, then TEARDOWN.
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(30), &[gst::MessageType::Eos])
        .expect("EOS");
    drop(msg);
    let stats: gst::Structure = sink.property("stats");
    let sent = track_stats(&stats)[0].get::<u64>("packets").unwrap();
    p.set_state(gst::State::Null).unwrap();
    let dgrams = server.udp_datagrams();
    let received = dgrams.iter().filter(|d| !d.rtcp).count() as u64;
    assert_eq!(
        received, sent,
        "loopback UDP at real-time speed loses nothing"
    );
    assert!(dgrams
        .iter()
        .any(|d| d.rtcp && rtcp_types(&d.data).contains(&203)));
    assert_eq!(server.snapshot().methods().last(), Some(&"TEARDOWN"));
    eprintln!(
        "scripted server over UDP: {received} of {sent} RTP packets, SR/RR/BYE on RTCP ports"
    );
}

fn refuse_tcp() -> Script {
    Script::new().on(
        "SETUP",
        Action::custom(|req| {
            if req.header("transport").unwrap_or_default().contains("/TCP") {
                Action::status(461, "Unsupported Transport")
            } else {
                Action::Normal
            }
        }),
    )
}

#[test]
fn tcp_refused_with_461_falls_back_to_udp() {
    let server = ScriptedServer::start(refuse_tcp());
    let (out, stats) = push_stats(&format!(
        "rtspannounce name=s location={} {} ! s.sink_0 {} ! s.sink_1",
        server.url("/live"),
        h264_branch(30, "vpay"),
        aac_branch(47, "apay")
    ));
    assert!(out.eos, "{out:?}");
    let t = setup_transports(&server);
    assert_eq!(t.len(), 3, "{t:?}");
    assert!(
        t[0].starts_with("RTP/AVP/TCP;unicast;interleaved=0-1"),
        "{t:?}"
    );
    assert!(t[1].starts_with("RTP/AVP;unicast;client_port="), "{t:?}");
    assert!(t[2].starts_with("RTP/AVP;unicast;client_port="), "{t:?}");
    assert_eq!(
        server.snapshot().methods(),
        ["ANNOUNCE", "SETUP", "SETUP", "SETUP", "RECORD", "TEARDOWN"]
    );
    let sent: u64 = track_stats(&stats)
        .iter()
        .map(|t| t.get::<u64>("packets").unwrap())
        .sum();
    let got = server.udp_datagrams().iter().filter(|d| !d.rtcp).count() as u64;
    assert!(sent > 30 && got == sent, "sent {sent}, received {got}");
    assert!(server.frames().is_empty());
}

#[test]
fn tcp_only_and_461_is_a_clear_error() {
    let server = ScriptedServer::start(refuse_tcp());
    let out = push(&format!(
        "{} ! rtspannounce protocols=tcp location={}",
        h264_branch(30, "vpay"),
        server.url("/live")
    ));
    assert!(!out.eos);
    assert_eq!(out.error_is, Some(gst::ResourceError::OpenWrite), "{out:?}");
    let text = out.error_text();
    assert!(
        text.contains("461 Unsupported Transport")
            && text.contains("transports tried: TCP interleaved")
            && text.contains("udp"),
        "{text}"
    );
    assert_eq!(setup_transports(&server).len(), 1);
}

#[test]
fn rtspt_is_tcp_and_rtspu_is_udp() {
    // rtspt://: TCP interleaved, even though protocols allows UDP and the server refuses TCP.
    let server = ScriptedServer::start(refuse_tcp());
    let out = push(&format!(
        "{} ! rtspannounce location={}",
        h264_branch(10, "vpay"),
        server.url("/live").replacen("rtsp://", "rtspt://", 1)
    ));
    assert_eq!(out.error_is, Some(gst::ResourceError::OpenWrite), "{out:?}");
    let t = setup_transports(&server);
    assert_eq!(t.len(), 1, "{t:?}");
    assert!(t[0].contains("/TCP"));
    assert!(
        out.error_text().contains("not allowed"),
        "{}",
        out.error_text()
    );

    // With a server that takes TCP, rtspt:// records interleaved.
    let server = ScriptedServer::start(Script::new());
    let out = push(&format!(
        "{} ! rtspannounce location={}",
        h264_branch(10, "vpay"),
        server.url("/live").replacen("rtsp://", "rtspt://", 1)
    ));
    assert!(out.eos, "{out:?}");
    assert!(setup_transports(&server)[0].starts_with("RTP/AVP/TCP;"));
    assert!(server.frames().iter().any(|f| f.channel == 0));
    assert!(server.udp_datagrams().is_empty());

    // rtspu://: UDP from the first SETUP (no TCP tried), nothing interleaved.
    let server = ScriptedServer::start(Script::new());
    let out = push(&format!(
        "{} ! rtspannounce location={}",
        h264_branch(10, "vpay"),
        server.url("/live").replacen("rtsp://", "rtspu://", 1)
    ));
    assert!(out.eos, "{out:?}");
    let t = setup_transports(&server);
    assert_eq!(t.len(), 1);
    assert!(t[0].starts_with("RTP/AVP;unicast;client_port="), "{t:?}");
    assert!(server.frames().is_empty());
    assert!(server.udp_datagrams().iter().any(|d| !d.rtcp));
    // Request-URIs stay rtsp://.
    assert!(server
        .requests()
        .iter()
        .all(|r| r.uri.starts_with("rtsp://")));
}

#[test]
fn scheme_and_protocols_conflicts_are_settings_errors() {
    init();
    for (location, protocols, needle) in [
        ("rtspt://127.0.0.1:1/x", "udp", "rtspt:// means TCP only"),
        ("rtspu://127.0.0.1:1/x", "tcp", "rtspu:// means UDP only"),
        (
            "rtsp://127.0.0.1:1/x",
            "udp-mcast",
            "udp-mcast is not implemented",
        ),
    ] {
        let e = gst::ElementFactory::make("rtspannounce")
            .property("location", location)
            .property_from_str("protocols", protocols)
            .build()
            .unwrap();
        let bus = gst::Bus::new();
        e.set_bus(Some(&bus));
        assert!(e.set_state(gst::State::Ready).is_err());
        let msg = bus.pop_filtered(&[gst::MessageType::Error]).unwrap();
        let gst::MessageView::Error(err) = msg.view() else {
            unreachable!()
        };
        assert_eq!(
            err.error().kind::<gst::ResourceError>(),
            Some(gst::ResourceError::Settings)
        );
        assert!(
            err.error().message().contains(needle),
            "{location} {protocols}: {}",
            err.error()
        );
        let _ = e.set_state(gst::State::Null);
    }
    // rtspclientsink's flag syntax parses, tls included.
    let e = gst::ElementFactory::make("rtspannounce")
        .property_from_str("protocols", "tcp+udp+tls")
        .build()
        .unwrap();
    let v = e.property::<RTSPLowerTrans>("protocols");
    assert_eq!(
        v,
        RTSPLowerTrans::TCP | RTSPLowerTrans::UDP | RTSPLowerTrans::TLS
    );
    let d = gst::ElementFactory::make("rtspannounce").build().unwrap();
    assert_eq!(
        d.property::<RTSPLowerTrans>("protocols"),
        RTSPLowerTrans::TCP | RTSPLowerTrans::UDP
    );
}

#[test]
fn port_range_is_honoured_and_checked() {
    let server = ScriptedServer::start(Script::new());
    // A free range: bind a pair to learn one, release it.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let base = probe.local_addr().unwrap().port() & !1;
    drop(probe);
    let out = push(&format!(
        "{} ! rtspannounce protocols=udp port-range={}-{} location={}",
        h264_branch(10, "vpay"),
        base,
        base + 9,
        server.url("/live")
    ));
    assert!(out.eos, "{out:?}");
    let pair = &server.udp_pairs()[0];
    let p = pair.client_rtp.port();
    assert!(
        p >= base && p < base + 9 && p.is_multiple_of(2),
        "{p} not in {base}-{}",
        base + 9
    );

    let out = push(&format!(
        "{} ! rtspannounce protocols=udp port-range=9-3 location={}",
        h264_branch(10, "vpay"),
        server.url("/live")
    ));
    assert_eq!(out.error_is, Some(gst::ResourceError::Settings), "{out:?}");
    assert!(
        out.error_text().contains("port-range"),
        "{}",
        out.error_text()
    );
}

#[test]
fn losing_the_rtsp_connection_in_udp_mode_reconnects() {
    let server = ScriptedServer::start(Script::new());
    init();
    let p = gst::parse::launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max=300 ! rtph264pay ! \
         rtspannounce name=s retry-delay-min=200 location={}",
        server.url("/live").replacen("rtsp://", "rtspu://", 1)
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_udp(|d| d.iter().filter(|d| !d.rtcp).count() >= 20, T));
    assert!(server.drop_connection());
    let mut warnings = Vec::new();
    while !warnings.iter().any(|w: &String| w.contains("reconnecting")) {
        warnings.push(next_message_text(&bus, gst::MessageType::Warning));
    }
    // A new connection, a new UDP SETUP with new ports, and media on them.
    assert!(server.wait_udp(
        |d| d.iter().filter(|d| d.conn == 1 && !d.rtcp).count() >= 20,
        T
    ));
    let pairs = server.udp_pairs();
    assert_eq!(pairs.len(), 2, "{pairs:?}");
    assert_eq!(pairs[1].conn, 1);
    let stats: gst::Structure = p.by_name("s").unwrap().property("stats");
    assert_eq!(stats.get::<u32>("reconnects").unwrap(), 1);
    assert_eq!(stats.get::<&str>("state").unwrap(), "recording");
    assert_eq!(
        track_stats(&stats)[0]
            .get::<u32>("server-rtp-port")
            .unwrap(),
        pairs[1].server_ports.0 as u32
    );
    p.set_state(gst::State::Null).unwrap();
}

#[test]
fn drop_policy_over_udp_sends_without_waiting() {
    // Non-blocking sends: on loopback at real-time speed the kernel always has room, so every
    // packet arrives and none is counted as dropped.
    let server = ScriptedServer::start(Script::new());
    let (out, stats) = push_stats(&format!(
        "{} ! rtspannounce name=s protocols=udp congestion-policy=drop location={}",
        h264_branch(30, "vpay"),
        server.url("/live")
    ));
    assert!(out.eos, "{out:?}");
    let t = &track_stats(&stats)[0];
    let sent = t.get::<u64>("packets").unwrap();
    assert_eq!(t.get::<u64>("udp-dropped").unwrap(), 0, "{t}");
    let got = server.udp_datagrams().iter().filter(|d| !d.rtcp).count() as u64;
    assert!(sent > 30 && got == sent, "sent {sent}, received {got}");
}
