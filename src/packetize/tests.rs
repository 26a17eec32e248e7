//! Our packetizers against GStreamer's payloaders: the same access units (split off with a
//! tee after the parser) through both, compared packet by packet, and the caps field by field.

use super::*;
use gst::prelude::*;

const SSRC: u32 = 0x1234_5678;
const SEQ: u16 = 65_500; // wraps within the longer streams
const TS_OFFSET: u32 = 4_294_000_000; // wraps too

fn init() {
    gst::init().unwrap();
}

fn cfg() -> RtpConfig {
    RtpConfig {
        pt: 96,
        ssrc: SSRC,
        seq: SEQ,
        seqnum_offset: SEQ,
        ts_offset: TS_OFFSET,
        mtu: 1400,
    }
}

struct Au {
    data: Vec<u8>,
    running: Option<u64>,
}

struct Run {
    aus: Vec<Au>,
    au_caps: gst::Caps,
    rtp: Vec<Vec<u8>>,
    rtp_caps: gst::Caps,
}

/// Stops the pipeline however the test ends (a pipeline dropped while PLAYING is a CRITICAL).
struct Stop(gst::Pipeline);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

fn drain(sink: &gst_app::AppSink) -> (Vec<gst::Sample>, Option<gst::Caps>) {
    let mut v = Vec::new();
    let mut caps = None;
    while let Some(s) = sink.try_pull_sample(gst::ClockTime::ZERO) {
        caps = s.caps_owned().or(caps);
        v.push(s);
    }
    (v, caps)
}

/// `src` (ending in the parser) teed into `pay` (with our numbering) and into a plain appsink.
fn run(src: &str, pay: &str) -> Run {
    init();
    let desc = format!(
        "{src} ! tee name=t \
         t. ! queue ! {pay} pt=96 ssrc={SSRC} seqnum-offset={SEQ} timestamp-offset={TS_OFFSET} ! appsink name=rtp sync=false wait-on-eos=false \
         t. ! queue ! appsink name=au sync=false wait-on-eos=false"
    );
    let p = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let p = Stop(p);
    let sink = |n: &str| {
        p.0.by_name(n)
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap()
    };
    let (rtp_sink, au_sink) = (sink("rtp"), sink("au"));
    p.0.set_state(gst::State::Playing).unwrap();
    let msg =
        p.0.bus()
            .unwrap()
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(60),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("pipeline ended");
    assert_eq!(msg.type_(), gst::MessageType::Eos, "{desc}: {msg:?}");
    let (rtp, rtp_caps) = drain(&rtp_sink);
    let (aus, au_caps) = drain(&au_sink);
    drop(p);
    let aus = aus
        .iter()
        .map(|s| {
            let b = s.buffer().unwrap();
            let seg = s
                .segment()
                .and_then(|g| g.downcast_ref::<gst::ClockTime>().cloned());
            Au {
                data: b.map_readable().unwrap().to_vec(),
                running: seg
                    .zip(b.pts())
                    .and_then(|(g, pts)| g.to_running_time(pts))
                    .map(|t| t.nseconds()),
            }
        })
        .collect();
    Run {
        aus,
        au_caps: au_caps.unwrap(),
        rtp: rtp
            .iter()
            .map(|s| s.buffer().unwrap().map_readable().unwrap().to_vec())
            .collect(),
        rtp_caps: rtp_caps.unwrap(),
    }
}

/// Our packets for the same access units, with the caps we would give.
fn ours(r: &Run) -> (Vec<Vec<u8>>, gst::Caps) {
    let mut p = Packetizer::for_caps(&r.au_caps, cfg())
        .unwrap_or_else(|| panic!("no packetizer for {}", r.au_caps));
    let mut out = Vec::new();
    for au in &r.aus {
        let mut packets = Packets::new(4);
        p.push(&au.data, au.running, &mut packets).unwrap();
        let mut next = 4;
        for i in 0..packets.spans.len() {
            // Back to back, each behind its 4 bytes: the buffer is the wire bytes.
            assert_eq!(packets.spans[i].start, next);
            next += packets.spans[i].len + 4;
            out.push(packets.packet(i).to_vec());
        }
        assert_eq!(next - 4, packets.data.len());
    }
    (out, p.rtp_caps())
}

fn describe(p: &[u8]) -> String {
    format!(
        "{} bytes, seq {}, ts {}, m {}, head {:02x?}",
        p.len(),
        u16::from_be_bytes([p[2], p[3]]),
        u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        p[1] >> 7,
        &p[12..p.len().min(16)]
    )
}

/// Packet for packet and caps for caps; returns the packet count.
fn assert_identical(src: &str, pay: &str) -> usize {
    let r = run(src, pay);
    let (ours, caps) = ours(&r);
    for (i, (a, b)) in ours.iter().zip(&r.rtp).enumerate() {
        assert!(
            a == b,
            "{src} ! {pay}: packet {i} differs:\n ours {}\n gst  {}",
            describe(a),
            describe(b)
        );
    }
    assert_eq!(ours.len(), r.rtp.len(), "{src} ! {pay}: packet count");
    assert!(
        caps == r.rtp_caps,
        "{src} ! {pay}: caps\n ours {caps}\n gst  {}",
        r.rtp_caps
    );
    ours.len()
}

fn marker_count(src: &str, pay: &str) -> (usize, usize) {
    let r = run(src, pay);
    (
        r.aus.len(),
        r.rtp.iter().filter(|p| p[1] & 0x80 != 0).count(),
    )
}

const RAW: &str =
    "videotestsrc num-buffers=100 ! video/x-raw,width=320,height=240,framerate=30/1,format=I420";

#[test]
fn h264_avc_as_rtph264pay_with_parameter_sets_every_second() {
    let n = assert_identical(
        &format!("{RAW} ! x264enc key-int-max=12 ! h264parse"),
        "rtph264pay config-interval=1",
    );
    assert!(n > 100);
}

#[test]
fn h264_byte_stream_with_in_band_parameter_sets_as_rtph264pay() {
    assert_identical(
        &format!(
            "{RAW} ! x264enc key-int-max=12 ! video/x-h264,stream-format=byte-stream ! h264parse"
        ),
        "rtph264pay config-interval=1",
    );
}

#[test]
fn h264_zerolatency_multi_slice_frames_as_rtph264pay() {
    for format in ["avc", "byte-stream"] {
        assert_identical(
            &format!(
                "{RAW} ! x264enc tune=zerolatency sliced-threads=true threads=4 key-int-max=20 ! video/x-h264,stream-format={format} ! h264parse"
            ),
            "rtph264pay config-interval=1",
        );
    }
    // Several slices per frame, yet one marker per access unit.
    let (aus, markers) = marker_count(
        &format!("{RAW} ! x264enc tune=zerolatency sliced-threads=true threads=4 ! h264parse"),
        "rtph264pay config-interval=1",
    );
    assert_eq!(aus, markers);
}

#[test]
fn h264_with_aud_and_sei_as_rtph264pay() {
    // x264 writes an SEI (its settings) into the first frame; aud=true adds delimiters.
    for format in ["avc", "byte-stream"] {
        assert_identical(
            &format!(
                "{RAW} ! x264enc aud=true key-int-max=30 ! video/x-h264,stream-format={format} ! h264parse"
            ),
            "rtph264pay config-interval=1",
        );
    }
}

#[test]
fn h264_big_frames_in_fu_a_as_rtph264pay() {
    let n = assert_identical(
        "videotestsrc num-buffers=12 pattern=snow ! video/x-raw,width=1280,height=720,framerate=30/1,format=I420 ! x264enc speed-preset=ultrafast bitrate=30000 key-int-max=4 ! h264parse",
        "rtph264pay config-interval=1",
    );
    assert!(n > 12 * 20, "{n} packets: frames were not fragmented");
}

#[test]
fn h265_as_rtph265pay_in_hvc1_and_byte_stream() {
    for format in ["hvc1", "byte-stream"] {
        assert_identical(
            &format!(
                "{RAW} ! x265enc key-int-max=12 speed-preset=ultrafast ! h265parse ! video/x-h265,stream-format={format},alignment=au"
            ),
            "rtph265pay config-interval=1",
        );
    }
}

#[test]
fn h265_big_frames_in_fu_as_rtph265pay() {
    let n = assert_identical(
        "videotestsrc num-buffers=8 pattern=snow ! video/x-raw,width=1280,height=720,framerate=25/1,format=I420 ! x265enc speed-preset=ultrafast bitrate=30000 key-int-max=4 ! h265parse",
        "rtph265pay config-interval=1",
    );
    assert!(n > 8 * 20, "{n} packets: frames were not fragmented");
}

#[test]
fn aac_as_rtpmp4gpay() {
    for (rate, channels) in [(48000, 2), (44100, 1)] {
        assert_identical(
            &format!(
                "audiotestsrc num-buffers=60 ! audio/x-raw,rate={rate},channels={channels} ! voaacenc ! aacparse"
            ),
            "rtpmp4gpay",
        );
    }
}

#[test]
fn aac_access_units_larger_than_a_packet_are_fragmented_as_rtpmp4gpay() {
    // No encoder makes such frames at these settings: synthetic ones through an appsrc.
    init();
    let caps = gst::Caps::builder("audio/mpeg")
        .field("mpegversion", 4i32)
        .field("stream-format", "raw")
        .field("rate", 48000i32)
        .field("channels", 2i32)
        .field("codec_data", gst::Buffer::from_slice([0x11u8, 0x90]))
        .build();
    let src = gst_app::AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .name("src")
        .build();
    let p = Stop(gst::Pipeline::new());
    let pay = gst::ElementFactory::make("rtpmp4gpay")
        .property("ssrc", SSRC)
        .property("seqnum-offset", SEQ as i32)
        .property("timestamp-offset", TS_OFFSET)
        .property("pt", 96u32)
        .build()
        .unwrap();
    let sink = gst_app::AppSink::builder()
        .sync(false)
        .wait_on_eos(false)
        .build();
    p.0.add_many([src.upcast_ref(), &pay, sink.upcast_ref()])
        .unwrap();
    gst::Element::link_many([src.upcast_ref(), &pay, sink.upcast_ref()]).unwrap();
    p.0.set_state(gst::State::Playing).unwrap();
    let sizes = [3000usize, 1384, 1385, 10, 2768, 7000];
    let mut aus = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..*n).map(|k| (k * 7 + i) as u8).collect();
        let mut b = gst::Buffer::from_slice(data.clone());
        let pts = gst::ClockTime::from_nseconds(i as u64 * 21_333_333);
        b.get_mut().unwrap().set_pts(pts);
        src.push_buffer(b).unwrap();
        aus.push(Au {
            data,
            running: Some(pts.nseconds()),
        });
    }
    src.end_of_stream().unwrap();
    p.0.bus()
        .unwrap()
        .timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Eos])
        .unwrap();
    let (rtp, rtp_caps) = drain(&sink);
    drop(p);
    let r = Run {
        aus,
        au_caps: caps,
        rtp: rtp
            .iter()
            .map(|s| s.buffer().unwrap().map_readable().unwrap().to_vec())
            .collect(),
        rtp_caps: rtp_caps.unwrap(),
    };
    let (ours, our_caps) = ours(&r);
    assert_eq!(ours, r.rtp);
    assert!(our_caps == r.rtp_caps, "{our_caps}\n{}", r.rtp_caps);
    // 3000 bytes: 1384 + 1384 + 232, each fragment saying the whole size.
    assert_eq!(
        ours[0][14..16],
        [(3000 >> 5) as u8, ((3000 & 0x1f) << 3) as u8]
    );
    assert_eq!(
        ours.iter().take(3).map(|p| p[1] >> 7).collect::<Vec<_>>(),
        [0, 0, 1]
    );
}

#[test]
fn caps_without_what_we_need_are_left_to_gstreamer() {
    init();
    let none = |c: &str| Packetizer::for_caps(&c.parse::<gst::Caps>().unwrap(), cfg()).is_none();
    assert!(none("video/x-h264,stream-format=byte-stream,alignment=nal"));
    assert!(
        none("video/x-h264,stream-format=avc,alignment=au"),
        "avc without codec_data"
    );
    assert!(none("audio/mpeg,mpegversion=4,stream-format=adts"));
    assert!(none("audio/mpeg,mpegversion=4,stream-format=raw"));
    assert!(none("video/x-vp8"));
    assert!(!none("video/x-h264,stream-format=byte-stream,alignment=au"));
}

#[test]
fn malformed_input_never_panics() {
    init();
    let bad_avcc = [
        vec![],
        vec![1, 2, 3],
        vec![0, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4],
        vec![1, 0x64, 0, 0x1f, 0xff, 0xe1, 0xff, 0xff, 1],
        vec![1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 2, 0x67, 0x64, 3, 0, 9],
    ];
    for cd in bad_avcc {
        let caps = gst::Caps::builder("video/x-h264")
            .field("stream-format", "avc")
            .field("alignment", "au")
            .field("codec_data", gst::Buffer::from_slice(cd))
            .build();
        if let Some(p) = Packetizer::for_caps(&caps, cfg()) {
            let _ = p.rtp_caps();
        }
    }
    for bad_asc in [vec![], vec![0u8, 0], vec![0x17, 0x80], vec![0x12, 0x7f]] {
        let caps = gst::Caps::builder("audio/mpeg")
            .field("mpegversion", 4i32)
            .field("stream-format", "raw")
            .field("codec_data", gst::Buffer::from_slice(bad_asc))
            .build();
        assert!(Packetizer::for_caps(&caps, cfg()).is_none());
    }
    let mut seed = 1u32;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect()
    };
    for format in ["avc", "byte-stream"] {
        let caps = gst::Caps::builder("video/x-h264")
            .field("stream-format", format)
            .field("alignment", "au")
            .field(
                "codec_data",
                gst::Buffer::from_slice([
                    1u8, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 2, 0x68, 0xee,
                ]),
            )
            .build();
        let mut p = Packetizer::for_caps(&caps, cfg()).unwrap();
        for n in [0, 1, 2, 3, 4, 5, 17, 1500, 100_000] {
            let mut out = Packets::new(4);
            let au = noise(n);
            let _ = p.push(&au, Some(n as u64), &mut out);
            for s in &out.spans {
                assert!(s.len <= 1400);
            }
        }
        let mut out = Packets::new(4);
        // Start codes and nothing else, a length prefix far past the end.
        let _ = p.push(&[0, 0, 1, 0, 0, 1, 0, 0, 0, 1], None, &mut out);
        let _ = p.push(&[0xff, 0xff, 0xff, 0xff, 0x65], None, &mut out);
    }
}
