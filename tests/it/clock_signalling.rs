//! RFC 7273 clock signalling (`publish-clock-mode`): a pipeline run by a `GstNtpClock` that
//! follows an NTP server started here names that clock in its SDP, gives each track's RTP offset
//! to it, and stamps its sender reports with that clock's time for their RTP timestamps.
//!
//! The NTP server serves the wall clock moved by `SKEW_NS`, so reports on the wall clock
//! (`ntp-time-source=ntp`, what `publish-clock-mode=none` keeps) would be off by that much.

use crate::harness::*;
use crate::ntp_server::NtpServer;
use crate::record_server::*;
use crate::scripted_server::*;
use gst::prelude::*;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
const RATE: u64 = 90_000;
/// What rtph264pay adds to its timestamps: fixed, so the offset is not random.
const TS_OFFSET: u32 = 0x9abc_def0;
/// The NTP server's clock runs 20 min 34 s ahead of the wall clock.
const SKEW_NS: i64 = 1_234_000_000_000;

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Network clocks live to the end of the process. GStreamer 1.22's GstNetClientClock (the base
/// of GstNtpClock) can deadlock when one is disposed while another test's pipeline uses the
/// system clock: seen in a full run, the test thread in the clock's dispose, the system clock's
/// thread in gst_clock_id_wait_async from that same dispose path, a third thread's state change
/// in gst_clock_id_unschedule, all three waiting for good.
fn keep_alive(clock: &gst::Clock) {
    static CLOCKS: std::sync::Mutex<Vec<gst::Clock>> = std::sync::Mutex::new(Vec::new());
    CLOCKS.lock().unwrap().push(clock.clone());
}

/// A GstNtpClock synced to `server`.
fn ntp_clock(server: &NtpServer) -> gst::Clock {
    init();
    let clock = gst_net::NtpClock::new(
        None,
        "127.0.0.1",
        server.port() as i32,
        gst::ClockTime::ZERO,
    );
    clock
        .wait_for_sync(gst::ClockTime::from_seconds(10))
        .expect("the NTP clock syncs to the test server");
    let clock = clock.upcast();
    keep_alive(&clock);
    clock
}

/// A live H.264 push of `frames` frames to `location`, on `clock` if given.
fn live_push(
    location: &str,
    frames: u32,
    props: &str,
    clock: Option<&gst::Clock>,
) -> gst::Pipeline {
    let p = pipeline(&format!(
        "videotestsrc is-live=true num-buffers={frames} ! \
           video/x-raw,width=320,height=240,framerate=30/1 ! \
           x264enc tune=zerolatency bframes=0 key-int-max=30 speed-preset=ultrafast ! h264parse ! \
           rtph264pay name=vpay timestamp-offset={TS_OFFSET} ! \
         rtspannounce name=s location={location} {props}"
    ));
    if let Some(c) = clock {
        p.use_clock(Some(c));
    }
    p
}

/// (RTP timestamp, running time) of every packet the payloader stamped: what it actually did,
/// read independently of the element.
fn stamps(p: &gst::Pipeline) -> Arc<Mutex<Vec<(u32, u64)>>> {
    let out: Arc<Mutex<Vec<(u32, u64)>>> = Arc::default();
    let o = out.clone();
    let pay = p.by_name("vpay").unwrap();
    pay.static_pad("src").unwrap().add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |pad, info| {
            let seg = pad
                .sticky_event::<gst::event::Segment>(0)
                .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned());
            let mut record = |b: &gst::BufferRef| {
                let (Some(seg), Some(pts)) = (seg.as_ref(), b.pts()) else {
                    return;
                };
                let mut h = [0u8; 8];
                b.copy_to_slice(0, &mut h).unwrap();
                if let Some(rt) = seg.to_running_time(pts) {
                    o.lock().unwrap().push((be32(&h, 4), rt.nseconds()));
                }
            };
            match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => record(b),
                Some(gst::PadProbeData::BufferList(l)) => l.iter().for_each(&mut record),
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
    out
}

/// Stops a pipeline the test set playing, also when an assertion fails first.
struct StopOnDrop(gst::Pipeline);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

struct Sr {
    rtp: u32,
    /// The NTP field, as nanoseconds since the NTP epoch.
    ntp_ns: u64,
    /// When it arrived (not recorded for UDP datagrams).
    at: Option<Instant>,
}

/// An SR at the start of an RTCP compound.
fn parse_sr(d: &[u8], at: Option<Instant>) -> Sr {
    assert_eq!(d[1], 200, "an SR first");
    let (secs, frac) = (be32(d, 8) as u64, be32(d, 12) as u64);
    Sr {
        ntp_ns: secs * 1_000_000_000 + ((frac * 1_000_000_000) >> 32),
        rtp: be32(d, 16),
        at,
    }
}

/// The sender reports on `channel` of connection `conn`.
fn sender_reports(snap: &Snapshot, conn: usize, channel: u8) -> Vec<Sr> {
    snap.frames_on(channel)
        .iter()
        .filter(|f| f.conn == conn)
        .map(|f| parse_sr(&f.data, Some(f.at)))
        .collect()
}

/// The media-level `a=<name>:` values of an SDP.
fn attributes<'a>(sdp: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("a={name}:");
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix(prefix.as_str()))
        .collect()
}

/// Signed difference `a - b` of two RTP timestamps, in ticks.
fn ticks(a: u32, b: u32) -> i64 {
    a.wrapping_sub(b) as i32 as i64
}

#[test]
fn ntp_clock_is_named_and_sender_reports_follow_it() {
    let server_clock = NtpServer::start(SKEW_NS);
    let clock = ntp_clock(&server_clock);
    let server = ScriptedServer::start(Script::new());
    let p = live_push(
        &server.url("/cam"),
        90,
        "publish-clock-mode=clock-and-offset rtcp-interval=300",
        Some(&clock),
    );
    let stamped = stamps(&p);
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let base_time = p.base_time().expect("the pipeline ran").nseconds();
    // Now, on the NTP server's clock: to place each report's arrival on it.
    let (now, now_ntp) = (Instant::now(), server_clock.now());

    let snap = server.snapshot();
    let sdp = snap.first("ANNOUNCE").unwrap().body_str();
    let port = server_clock.port();
    assert_eq!(
        attributes(&sdp, "ts-refclk"),
        [format!("ntp=127.0.0.1:{port}")],
        "{sdp}"
    );
    let offset = direct_offset(&sdp);

    let stamped = stamped.lock().unwrap().clone();
    assert!(stamped.len() >= 90, "{} packets", stamped.len());
    check_offset(offset, &stamped, base_time);
    let srs = sender_reports(&snap, 0, 1);
    assert!(srs.len() >= 5, "{} reports", srs.len());
    check_reports(&srs, offset, &stamped, base_time, (now, now_ntp));
}

/// The offset is the RTP timestamp at the clock's epoch, for what the payloader stamped.
fn check_offset(offset: u32, stamped: &[(u32, u64)], base_time: u64) {
    for &(ts, rt) in stamped {
        let at_clock = (base_time as u128 + rt as u128) * RATE as u128 / 1_000_000_000;
        let expected = ts.wrapping_sub(at_clock as u32);
        assert!(
            ticks(offset, expected).abs() <= 1,
            "offset {offset}, packet says {expected}"
        );
    }
}

/// Each report's NTP time is the clock's time for its RTP timestamp (within 1 ms), and the
/// clock's reading when it was sent (`now` pairs an instant with the NTP server's time).
fn check_reports(
    srs: &[Sr],
    offset: u32,
    stamped: &[(u32, u64)],
    base_time: u64,
    (now, now_ntp): (Instant, u64),
) {
    for (i, sr) in srs.iter().enumerate() {
        // The clock time for the report's RTP timestamp, from the packets' own stamps...
        let &(ts, rt) = stamped
            .iter()
            .min_by_key(|(ts, _)| ticks(sr.rtp, *ts).abs())
            .unwrap();
        let expected = base_time as i128
            + rt as i128
            + ticks(sr.rtp, ts) as i128 * 1_000_000_000 / RATE as i128;
        let err = sr.ntp_ns as i128 - expected;
        assert!(
            err.abs() < 1_000_000,
            "report {i}: {err} ns from its RTP timestamp's time"
        );
        // ...and from the SDP's offset alone, as a reader does (the NTP field only resolves
        // which 2^32-tick turn the RTP timestamp is in).
        let ntp_ticks = (sr.ntp_ns as u128 * RATE as u128 / 1_000_000_000) as u32;
        let from_sdp = ticks(sr.rtp.wrapping_sub(offset), ntp_ticks);
        assert!(
            from_sdp.abs() <= 90,
            "report {i}: {from_sdp} ticks from mediaclk"
        );
        // The NTP field is the NTP clock's reading, not the wall clock's: the periodic reports
        // are stamped when sent (the first at its packet's time, a latency earlier).
        if let (true, Some(at)) = (i > 0, sr.at) {
            // Reports may also arrive after `now` (while the pipeline stops).
            let arrival = if at >= now {
                now_ntp as i128 + (at - now).as_nanos() as i128
            } else {
                now_ntp as i128 - (now - at).as_nanos() as i128
            };
            let late = arrival - sr.ntp_ns as i128;
            assert!(
                (-5_000_000..50_000_000).contains(&late),
                "report {i} arrived {late} ns after its NTP time"
            );
        }
    }
}

/// The `a=mediaclk:direct=` offset of an SDP with one track.
fn direct_offset(sdp: &str) -> u32 {
    let direct = attributes(sdp, "mediaclk");
    assert_eq!(direct.len(), 1, "{sdp}");
    direct[0]
        .strip_prefix("direct=")
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("mediaclk:direct=<u32>: {sdp}"))
}

#[test]
fn a_reconnect_announces_the_same_clock_and_offset() {
    let server_clock = NtpServer::start(SKEW_NS);
    let clock = ntp_clock(&server_clock);
    let server = ScriptedServer::start(Script::new());
    let p = live_push(
        &server.url("/cam"),
        100_000,
        "publish-clock-mode=clock-and-offset rtcp-interval=300 retry-delay-min=200",
        Some(&clock),
    );
    let stamped = stamps(&p);
    let stop = StopOnDrop(p.clone());
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_frames(30, T));
    assert!(server.drop_connection());
    // The second connection records, with media and a few reports.
    assert!(server.wait_for(
        |s| s
            .frames
            .iter()
            .filter(|f| f.conn == 1 && f.channel == 1)
            .count()
            >= 3,
        T
    ));
    let base_time = p.base_time().expect("playing").nseconds();
    let (now, now_ntp) = (Instant::now(), server_clock.now());
    drop(stop);

    let snap = server.snapshot();
    let announces: Vec<String> = snap
        .requests
        .iter()
        .filter(|r| r.method == "ANNOUNCE")
        .map(|r| r.body_str())
        .collect();
    assert_eq!(announces.len(), 2, "{:?}", snap.methods());
    let port = server_clock.port();
    let stamped = stamped.lock().unwrap().clone();
    for sdp in &announces {
        assert_eq!(
            attributes(sdp, "ts-refclk"),
            [format!("ntp=127.0.0.1:{port}")],
            "{sdp}"
        );
        check_offset(direct_offset(sdp), &stamped, base_time);
    }
    let srs = sender_reports(&snap, 1, 1);
    check_reports(
        &srs,
        direct_offset(&announces[1]),
        &stamped,
        base_time,
        (now, now_ntp),
    );
}

#[test]
fn none_gives_no_clock_lines_and_wall_clock_reports() {
    let server_clock = NtpServer::start(SKEW_NS);
    let clock = ntp_clock(&server_clock);
    let server = ScriptedServer::start(Script::new());
    let p = live_push(
        &server.url("/cam"),
        30,
        "publish-clock-mode=none",
        Some(&clock),
    );
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let snap = server.snapshot();
    let sdp = snap.first("ANNOUNCE").unwrap().body_str();
    assert!(
        !sdp.contains("ts-refclk") && !sdp.contains("mediaclk"),
        "{sdp}"
    );
    // ntp-time-source=ntp: the wall clock, some 1234 s behind the NTP clock.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
        + 2_208_988_800i128 * 1_000_000_000;
    let srs = sender_reports(&snap, 0, 1);
    assert!(!srs.is_empty());
    for sr in srs {
        let behind = wall - sr.ntp_ns as i128;
        assert!((0..10_000_000_000).contains(&behind), "{behind} ns");
    }
}

#[test]
fn system_clock_is_local_by_default() {
    let server = ScriptedServer::start(Script::new());
    let p = live_push(&server.url("/cam"), 10, "", None);
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let sdp = server.snapshot().first("ANNOUNCE").unwrap().body_str();
    assert_eq!(attributes(&sdp, "ts-refclk"), ["local"], "{sdp}");
    assert_eq!(attributes(&sdp, "mediaclk"), ["sender"], "{sdp}");
}

#[test]
fn gst_rtsp_server_decodes_every_frame_of_an_ntp_clocked_push() {
    let server_clock = NtpServer::start(SKEW_NS);
    let clock = ntp_clock(&server_clock);
    let server = RecordServer::start(RecordServerConfig::new("/cam", Tracks::H264)).unwrap();
    let p = live_push(
        &server.url(),
        150,
        "publish-clock-mode=clock-and-offset",
        Some(&clock),
    );
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    assert_eq!(report.tracks.len(), 1, "{report}");
    assert_eq!(report.tracks[0].frames, 150, "{report}");
    assert!(report.errors.is_empty(), "{report}");
    // The server read the clock lines from the SDP.
    let caps = gst::Caps::from_str(&report.tracks[0].rtp_caps).unwrap();
    let s = caps.structure(0).unwrap();
    let port = server_clock.port();
    assert_eq!(
        s.get::<&str>("a-ts-refclk").ok(),
        Some(format!("ntp=127.0.0.1:{port}").as_str()),
        "{caps}"
    );
    let direct = s.get::<&str>("a-mediaclk").unwrap_or_default();
    assert!(direct.starts_with("direct="), "{caps}");
}

#[test]
fn ffmpeg_records_every_frame_of_an_ntp_clocked_push() {
    let server_clock = NtpServer::start(SKEW_NS);
    let clock = ntp_clock(&server_clock);
    let dir = crate::peers::temp_dir("ff-ntp");
    let mut ff = crate::peers::FfmpegListener::start(&dir, "/cam", "ntp.mkv", &[]);
    let p = live_push(
        &ff.url(),
        90,
        "publish-clock-mode=clock-and-offset",
        Some(&clock),
    );
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let st = ff.child.wait_exit(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "ffmpeg: {}", ff.log_text());
    let streams = crate::peers::ffprobe(&ff.out);
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].frames, 90, "{streams:?}\n{}", ff.log_text());
}

#[test]
fn udp_sender_reports_follow_the_ntp_clock() {
    let server_clock = NtpServer::start(SKEW_NS);
    let clock = ntp_clock(&server_clock);
    let server = ScriptedServer::start(Script::new());
    let p = live_push(
        &server.url("/cam").replacen("rtsp://", "rtspu://", 1),
        60,
        "publish-clock-mode=clock-and-offset rtcp-interval=300",
        Some(&clock),
    );
    let stamped = stamps(&p);
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let base_time = p.base_time().expect("the pipeline ran").nseconds();
    let now = (Instant::now(), server_clock.now());
    let sdp = server.snapshot().first("ANNOUNCE").unwrap().body_str();
    let offset = direct_offset(&sdp);
    let stamped = stamped.lock().unwrap().clone();
    check_offset(offset, &stamped, base_time);
    let srs: Vec<Sr> = server
        .udp_datagrams()
        .iter()
        .filter(|d| d.rtcp)
        .map(|d| parse_sr(&d.data, None))
        .collect();
    assert!(srs.len() >= 3, "{} reports", srs.len());
    check_reports(&srs, offset, &stamped, base_time, now);
}

#[test]
fn a_net_client_clock_is_local() {
    // GStreamer's own network clock: a GstNetTimeProvider serving the system clock, and a
    // GstNetClientClock following it. RFC 7273 has no name for its protocol.
    init();
    let provider =
        gst_net::NetTimeProvider::new(&gst::SystemClock::obtain(), Some("127.0.0.1"), 0).unwrap();
    let port = provider.property::<i32>("port");
    let clock = gst_net::NetClientClock::new(None, "127.0.0.1", port, gst::ClockTime::ZERO);
    clock
        .wait_for_sync(gst::ClockTime::from_seconds(10))
        .expect("the net client clock syncs to the provider");
    keep_alive(clock.upcast_ref());
    let server = ScriptedServer::start(Script::new());
    let p = live_push(
        &server.url("/cam"),
        10,
        "publish-clock-mode=clock-and-offset",
        Some(clock.upcast_ref()),
    );
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let sdp = server.snapshot().first("ANNOUNCE").unwrap().body_str();
    assert_eq!(attributes(&sdp, "ts-refclk"), ["local"], "{sdp}");
    assert_eq!(attributes(&sdp, "mediaclk"), ["sender"], "{sdp}");
    drop(provider);
}

#[test]
fn a_pipeline_run_without_a_clock_announces_local() {
    // `use_clock(None)` (as an unsynced push does): no clock to name, nothing to fail on.
    let server = ScriptedServer::start(Script::new());
    let p = pipeline(&format!(
        "{} ! rtspannounce location={} sync=false publish-clock-mode=clock-and-offset",
        h264_branch(30, "vpay"),
        server.url("/cam")
    ));
    p.use_clock(None::<&gst::Clock>);
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let sdp = server.snapshot().first("ANNOUNCE").unwrap().body_str();
    assert_eq!(attributes(&sdp, "ts-refclk"), ["local"], "{sdp}");
    assert!(server.frame_count() > 0);
}
