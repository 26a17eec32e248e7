//! Sender reports, BYE, receiver reports and the `stats` property, against the scripted server.

use crate::harness::*;
use crate::scripted_server::*;
use gst::prelude::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Payload octets of an RTP packet (no CSRC/extension/padding in what our payloaders make).
fn payload_len(p: &[u8]) -> usize {
    let cc = (p[0] & 0x0f) as usize;
    let mut head = 12 + 4 * cc;
    if p[0] & 0x10 != 0 {
        head += 4 + 4 * u16::from_be_bytes([p[head + 2], p[head + 3]]) as usize;
    }
    let pad = if p[0] & 0x20 != 0 {
        p[p.len() - 1] as usize
    } else {
        0
    };
    p.len() - head - pad
}

#[derive(Debug)]
struct Sr {
    index: usize,
    ssrc: u32,
    rtp: u32,
    packets: u32,
    octets: u32,
    ntp: u64,
    bye: bool,
    cname: String,
    at: std::time::Instant,
}

fn sender_reports(snap: &Snapshot, channel: u8) -> Vec<Sr> {
    snap.frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.channel == channel)
        .map(|(index, f)| {
            let d = &f.data;
            assert_eq!(d[1], 200, "first packet of the compound is an SR");
            let sr_len = (u16::from_be_bytes([d[2], d[3]]) as usize + 1) * 4;
            let sdes = &d[sr_len..];
            assert_eq!(sdes[1], 202, "SDES follows");
            let sdes_len = (u16::from_be_bytes([sdes[2], sdes[3]]) as usize + 1) * 4;
            let cname = String::from_utf8(sdes[10..10 + sdes[9] as usize].to_vec()).unwrap();
            let rest = &sdes[sdes_len..];
            Sr {
                index,
                ssrc: be32(d, 4),
                ntp: ((be32(d, 8) as u64) << 32) | be32(d, 12) as u64,
                rtp: be32(d, 16),
                packets: be32(d, 20),
                octets: be32(d, 24),
                bye: rest.len() >= 8 && rest[1] == 203 && be32(rest, 4) == be32(d, 4),
                cname,
                at: f.at,
            }
        })
        .collect()
}

#[test]
fn reports_first_then_periodic_then_bye_with_exact_counts() {
    let server = ScriptedServer::start(Script::new());
    let p = pipeline(&format!(
        "rtspannounce name=s location={} rtcp-interval=400 \
         videotestsrc is-live=true num-buffers=75 ! video/x-raw,width=160,height=120,framerate=25/1 ! \
           x264enc tune=zerolatency ! rtph264pay ! s.sink_0 \
         audiotestsrc is-live=true num-buffers=141 samplesperbuffer=1024 ! audio/x-raw,rate=48000 ! \
           avenc_aac ! aacparse ! rtpmp4gpay ! s.sink_1",
        server.url("/live")
    ));
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let snap = server.snapshot();
    for (rtp_ch, rtcp_ch, rate) in [(0u8, 1u8, 90_000u64), (2, 3, 48_000)] {
        let media: Vec<(usize, &Frame)> = snap
            .frames
            .iter()
            .enumerate()
            .filter(|(_, f)| f.channel == rtp_ch)
            .collect();
        let srs = sender_reports(&snap, rtcp_ch);
        assert!(srs.len() >= 4, "channel {rtcp_ch}: {} reports", srs.len());
        // The first report comes before the track's first packet and describes it.
        let first_pkt = &media[0].1.data;
        assert!(srs[0].index < media[0].0);
        assert_eq!(srs[0].ssrc, be32(first_pkt, 8));
        assert_eq!(srs[0].rtp, be32(first_pkt, 4));
        assert_eq!((srs[0].packets, srs[0].octets), (0, 0));
        // Periodic reports 0.4 s apart, randomised over [0.5, 1.5].
        for w in srs[1..srs.len() - 1].windows(2) {
            let gap = w[1].at - w[0].at;
            assert!(
                gap >= Duration::from_millis(150) && gap <= Duration::from_millis(800),
                "gap {gap:?}"
            );
        }
        // Counts in every report equal what arrived before it; the last one carries BYE.
        for sr in &srs {
            let before: Vec<&Frame> = media
                .iter()
                .filter(|(i, _)| *i < sr.index)
                .map(|(_, f)| *f)
                .collect();
            assert_eq!(sr.packets as usize, before.len());
            let octets: usize = before.iter().map(|f| payload_len(&f.data)).sum();
            assert_eq!(sr.octets as usize, octets);
        }
        let last = srs.last().unwrap();
        assert!(last.bye, "no BYE on channel {rtcp_ch}");
        assert_eq!(last.packets as usize, media.len());
        assert!(srs[..srs.len() - 1].iter().all(|s| !s.bye));
        // NTP and RTP advance together: the RTP clock rate between two reports.
        let (a, b) = (&srs[1], &srs[srs.len() - 2]);
        let ntp_secs = (b.ntp - a.ntp) as f64 / (1u64 << 32) as f64;
        let rtp_secs = b.rtp.wrapping_sub(a.rtp) as f64 / rate as f64;
        assert!(
            (ntp_secs - rtp_secs).abs() < 0.02,
            "ntp {ntp_secs} rtp {rtp_secs}"
        );
    }
    // One CNAME for both tracks, so receivers sync them.
    assert_eq!(
        sender_reports(&snap, 1)[0].cname,
        sender_reports(&snap, 3)[0].cname
    );
    // The reports went before TEARDOWN.
    assert_eq!(snap.methods().last(), Some(&"TEARDOWN"));
}

#[test]
fn receiver_reports_fill_stats_and_loss_warns() {
    let server = ScriptedServer::start(Script::new());
    let p = pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=25/1 ! \
         x264enc tune=zerolatency ! rtph264pay ! rtspannounce name=s location={}",
        server.url("/live")
    ));
    let sink = p.by_name("s").unwrap();
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_frames(20, T));

    let stats: gst::Structure = sink.property("stats");
    assert_eq!(stats.get::<&str>("state").unwrap(), "recording");
    assert_eq!(stats.get::<&str>("session-id").unwrap(), DEFAULT_SESSION_ID);
    assert!(stats.get::<u64>("handshake-us").unwrap() > 0);
    assert_eq!(stats.get::<u32>("round-trips").unwrap(), 3);
    let tracks = stats.get::<gst::Array>("tracks").unwrap();
    let t0 = tracks.as_slice()[0].get::<gst::Structure>().unwrap();
    let p1 = t0.get::<u64>("packets").unwrap();
    assert!(p1 > 0);
    let ssrc = t0.get::<u32>("ssrc").unwrap();
    assert_eq!(t0.get::<u32>("channel").unwrap(), 0);

    // The server reports 3 packets lost, 10 % lately, jitter 77, LSR from our first SR.
    let srs = sender_reports(&server.snapshot(), 1);
    let lsr = (srs[0].ntp >> 16) as u32;
    let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0, 9];
    rr.extend_from_slice(&ssrc.to_be_bytes());
    rr.extend_from_slice(&[25, 0, 0, 3]);
    rr.extend_from_slice(&[0, 0, 0, 100]);
    rr.extend_from_slice(&77u32.to_be_bytes());
    rr.extend_from_slice(&lsr.to_be_bytes());
    rr.extend_from_slice(&0u32.to_be_bytes());
    assert!(server.send_interleaved(1, &rr));

    let text = next_message_text(&bus, gst::MessageType::Warning);
    assert!(text.contains("3 packets lost"), "{text}");

    assert!(server.wait_frames(server.frame_count() + 10, T));
    let stats: gst::Structure = sink.property("stats");
    let tracks = stats.get::<gst::Array>("tracks").unwrap();
    let t0 = tracks.as_slice()[0].get::<gst::Structure>().unwrap();
    assert!(t0.get::<u64>("packets").unwrap() > p1, "counters rise");
    assert_eq!(t0.get::<u64>("receiver-reports").unwrap(), 1);
    assert_eq!(t0.get::<i32>("cumulative-lost").unwrap(), 3);
    assert_eq!(t0.get::<u32>("jitter").unwrap(), 77);
    // RTT = time since our first SR (the server held it "0 s"): positive and below the test's length.
    let rtt = t0.get::<u64>("rtt-us").unwrap();
    assert!(rtt > 0 && rtt < 30_000_000, "rtt {rtt}");
    p.set_state(gst::State::Null).unwrap();
}

#[test]
fn connected_message_names_the_session() {
    let server = ScriptedServer::start(Script::new());
    let p = pipeline(&format!(
        "{} ! rtspannounce location={} sync=false",
        h264_branch(10, "vpay"),
        server.url("/live")
    ));
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let mut connected = None;
    let mut disconnected = false;
    while let Some(m) = bus.timed_pop(gst::ClockTime::from_seconds(20)) {
        match m.view() {
            gst::MessageView::Element(e) => match e.structure().map(|s| s.name().as_str()) {
                Some("rtspannounce-connected") => connected = e.structure().map(|s| s.to_owned()),
                Some("rtspannounce-disconnected") => disconnected = true,
                _ => {}
            },
            gst::MessageView::Eos(_) | gst::MessageView::Error(_) => break,
            _ => {}
        }
    }
    p.set_state(gst::State::Null).unwrap();
    let c = connected.expect("connected message");
    assert_eq!(c.get::<&str>("session-id").unwrap(), DEFAULT_SESSION_ID);
    assert_eq!(c.get::<u32>("tracks").unwrap(), 1);
    assert!(disconnected, "no disconnected message before EOS");
}
