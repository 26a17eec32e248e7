//! The GStreamer side, run in child processes of the bench so that each contender's CPU is its
//! own (`wait4`). Our plugin is registered in-process with `plugin_register_static()`, so the code
//! measured is exactly the code this example was built from (no stale `.so` on a plugin path).

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gst::prelude::*;

use crate::proc;

fn init() -> Result<()> {
    gst::init()?;
    gstrtspannounce::plugin_register_static().context("registering rtspannounce")?;
    Ok(())
}

/// The gst-launch description of one push run.
///
/// Every branch has a `queue` after `qtdemux`: without it the first sink to preroll blocks the
/// demuxer's only thread and the other track never prerolls (true of fakesink, of our appsinks
/// and of rtspclientsink's). The queues are in every variant, so their cost cancels out.
pub fn push_description(kind: &str, sync: bool, url: &str, input: &str) -> Result<String> {
    let demux = format!("filesrc location=\"{input}\" ! qtdemux name=d");
    let v = "d.video_0 ! queue ! h264parse";
    let a = "d.audio_0 ! queue ! aacparse";
    Ok(match kind {
        // encoded input: the element's built-in payloaders
        "rtspannounce" => format!(
            "{demux} {v} ! s.sink_0 {a} ! s.sink_1 \
             rtspannounce name=s location=\"{url}\" sync={sync}"
        ),
        // RTP input: GStreamer's payloaders in front
        "rtspannounce-rtp" => format!(
            "{demux} {v} ! rtph264pay config-interval=1 ! s.sink_0 {a} ! rtpmp4gpay ! s.sink_1 \
             rtspannounce name=s location=\"{url}\" sync={sync}"
        ),
        "rtspclientsink" => format!(
            "{demux} {v} ! s.sink_0 {a} ! s.sink_1 \
             rtspclientsink name=s location=\"{url}\" protocols=tcp"
        ),
        // demux + parse into fakesink: what rtspclientsink and ffmpeg are given
        "base-parse" => format!(
            "{demux} {v} ! fakesink name=f0 sync={sync} {a} ! fakesink name=f1 sync={sync}"
        ),
        // demux + parse + payloaders into fakesink: what rtspannounce-rtp is given
        "base-pay" => format!(
            "{demux} {v} ! rtph264pay config-interval=1 ! fakesink sync={sync} {a} ! rtpmp4gpay ! fakesink sync={sync}"
        ),
        _ => bail!("unknown push contender {kind}"),
    })
}

/// `bench --push-child KIND rt|max URL INPUT`: one pipeline, EOS or error, exit 0 on EOS.
/// In `max` mode the pipeline runs without a clock, which is how rtspclientsink (no `sync`
/// property) is driven unsynced; the same is done for every GStreamer contender.
pub fn push_child(args: &[String]) -> Result<()> {
    let [kind, mode, url, input] = args else {
        bail!("usage: --push-child KIND rt|max URL INPUT");
    };
    let sync = match mode.as_str() {
        "rt" => true,
        "max" => false,
        _ => bail!("mode must be rt or max"),
    };
    init()?;
    let desc = push_description(kind, sync, url, input)?;
    let pipeline = gst::parse::launch(&desc)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))?;
    if !sync {
        pipeline.use_clock(None::<&gst::Clock>);
    }
    // Count EOS events reaching the sink's own pads: rtspclientsink sometimes never posts its
    // EOS message (nor sends TEARDOWN) after its input ended; we then stop it ourselves.
    let sink = pipeline.by_name("s");
    let latency = std::env::var_os(LATENCY_ENV).map(std::path::PathBuf::from);
    let units: Arc<std::sync::Mutex<Vec<(usize, u64, u64)>>> = Arc::default();
    if let (Some(sink), true) = (&sink, latency.is_some()) {
        let mut by_name = sink.sink_pads();
        by_name.sort_by_key(|p| p.name());
        let rtp = kind == "rtspannounce-rtp";
        for (i, pad) in by_name.iter().enumerate() {
            let units = units.clone();
            pad.add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
                move |pad, info| {
                    let now = proc::mono_ns();
                    let seg = pad
                        .sticky_event::<gst::event::Segment>(0)
                        .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned());
                    let mut u = units.lock().unwrap();
                    let mut one = |b: &gst::BufferRef| {
                        // An access unit: one encoded buffer, or the RTP packet that ends it.
                        let mut head = [0u8; 2];
                        if rtp && (b.copy_to_slice(0, &mut head).is_err() || head[1] & 0x80 == 0) {
                            return;
                        }
                        let rt = seg
                            .as_ref()
                            .zip(b.pts())
                            .and_then(|(s, p)| s.to_running_time(p))
                            .map(|t| t.nseconds())
                            .unwrap_or(0);
                        u.push((i, now, rt));
                    };
                    match &info.data {
                        Some(gst::PadProbeData::Buffer(b)) => one(b),
                        Some(gst::PadProbeData::BufferList(l)) => l.iter().for_each(one),
                        _ => {}
                    }
                    gst::PadProbeReturn::Ok
                },
            );
        }
    }
    // base-parse: when each fakesink renders, after its clock wait. Against when the unit was
    // due, that is GStreamer's own wake-up from the sync, with no network and none of our code.
    let renders: Arc<std::sync::Mutex<Vec<(usize, u64)>>> = Arc::default();
    if kind == "base-parse" && latency.is_some() {
        for i in 0..2 {
            let Some(fakesink) = pipeline.by_name(&format!("f{i}")) else {
                continue;
            };
            let units = units.clone();
            fakesink.static_pad("sink").unwrap().add_probe(
                gst::PadProbeType::BUFFER,
                move |pad, info| {
                    let now = proc::mono_ns();
                    let rt = pad
                        .sticky_event::<gst::event::Segment>(0)
                        .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned())
                        .zip(info.buffer().and_then(|b| b.pts()))
                        .and_then(|(s, p)| s.to_running_time(p))
                        .map(|t| t.nseconds())
                        .unwrap_or(0);
                    units.lock().unwrap().push((i, now, rt));
                    gst::PadProbeReturn::Ok
                },
            );
            fakesink.set_property("signal-handoffs", true);
            let renders = renders.clone();
            fakesink.connect("handoff", false, move |_| {
                renders.lock().unwrap().push((i, proc::mono_ns()));
                None
            });
        }
    }
    let write_latency = |pipeline: &gst::Pipeline| {
        if let Some(path) = &latency {
            let base = pipeline.base_time().map(|t| t.nseconds()).unwrap_or(0);
            let mut text = format!("base {base}\n");
            for (pad, now, rt) in units.lock().unwrap().iter() {
                text += &format!("{pad} {now} {rt}\n");
            }
            for (pad, now) in renders.lock().unwrap().iter() {
                text += &format!("render {pad} {now}\n");
            }
            let _ = std::fs::write(path, text);
        }
    };
    let eos_pads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut pads = 0;
    if let Some(sink) = &sink {
        for pad in sink.sink_pads() {
            pads += 1;
            let eos_pads = eos_pads.clone();
            pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                    if ev.type_() == gst::EventType::Eos {
                        eos_pads.fetch_add(1, Ordering::SeqCst);
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
    }
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().unwrap();
    let mut result = Err(anyhow!("no EOS within 10 minutes"));
    let started = Instant::now();
    let mut all_eos_at: Option<Instant> = None;
    while started.elapsed() < Duration::from_secs(600) {
        if pads > 0 && all_eos_at.is_none() && eos_pads.load(Ordering::SeqCst) >= pads {
            all_eos_at = Some(Instant::now());
        }
        if all_eos_at.is_some_and(|t| t.elapsed() > EOS_GRACE) {
            eprintln!(
                "bench child: no EOS message {} s after EOS reached every pad of the sink; stopping it",
                EOS_GRACE.as_secs()
            );
            write_latency(&pipeline);
            pipeline.set_state(gst::State::Null)?;
            std::process::exit(EOS_HANG_EXIT);
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => {
                result = Ok(());
                break;
            }
            gst::MessageView::Error(e) => {
                result = Err(anyhow!(
                    "{}: {} ({:?})",
                    e.src().map(|s| s.path_string()).unwrap_or_default(),
                    e.error(),
                    e.debug()
                ));
                break;
            }
            _ => {}
        }
    }
    write_latency(&pipeline);
    pipeline.set_state(gst::State::Null)?;
    result
}

/// Set (to a file) for the real-time runs: the child records when each access unit reached the
/// sink's pads (CLOCK_MONOTONIC ns, with its running time) and writes it there.
pub const LATENCY_ENV: &str = "BENCH_LATENCY_OUT";

/// How long after EOS reached every sink pad the sink may take to post its EOS message.
pub const EOS_GRACE: Duration = Duration::from_secs(3);
/// Exit code of a push child whose sink never posted EOS (see `EOS_GRACE`).
pub const EOS_HANG_EXIT: i32 = 3;

/// One JPEG picture (320x240) and the period that makes it a 500 kbit/s RTP stream. The JPEG
/// quality is picked so that the period is close to 100 ms (10 frames/s).
fn make_jpeg() -> Result<(gst::Buffer, gst::Caps, Duration)> {
    let mut best: Option<(gst::Buffer, gst::Caps, usize)> = None;
    for quality in (10..=95).step_by(5) {
        let (buf, caps) = encode_jpeg(quality)?;
        let wire = rtp_jpeg_bytes(&buf.map_readable()?)?;
        let better = best
            .as_ref()
            .is_none_or(|b| wire.abs_diff(6250) < b.2.abs_diff(6250));
        if better {
            best = Some((buf, caps, wire));
        }
    }
    let (mut buf, caps, wire) = best.context("no JPEG")?;
    {
        // appsrc's do-timestamp only stamps buffers that have no timestamps
        let b = buf.make_mut();
        b.set_pts(gst::ClockTime::NONE);
        b.set_dts(gst::ClockTime::NONE);
        b.set_duration(gst::ClockTime::NONE);
    }
    let period = Duration::from_secs_f64(wire as f64 * 8.0 / 500_000.0);
    Ok((buf, caps, period))
}

fn encode_jpeg(quality: u32) -> Result<(gst::Buffer, gst::Caps)> {
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers=1 pattern=smpte \
         ! video/x-raw,format=I420,width=320,height=240,framerate=10/1 \
         ! jpegenc quality={quality} ! appsink name=out sync=false"
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow!("not a pipeline"))?;
    let sink = p
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .map_err(|_| anyhow!("not an appsink"))?;
    p.set_state(gst::State::Playing)?;
    let sample = sink
        .pull_sample()
        .map_err(|_| anyhow!("no JPEG from jpegenc"));
    p.set_state(gst::State::Null)?;
    let sample = sample?;
    Ok((
        sample.buffer_owned().context("sample without buffer")?,
        sample.caps_owned().context("sample without caps")?,
    ))
}

/// RTP bytes rtpjpegpay (MTU 1400) makes of one JPEG: the entropy-coded scan (RTP/JPEG does
/// not carry the JPEG headers) plus 12 + 8 bytes per packet and the quantisation tables once.
fn rtp_jpeg_bytes(jpeg: &[u8]) -> Result<usize> {
    let sos = jpeg
        .windows(2)
        .position(|w| w == [0xff, 0xda])
        .context("no SOS marker in the JPEG")?;
    let len = u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]) as usize;
    let scan = jpeg.len().saturating_sub(sos + 2 + len + 2);
    let per_packet = 1400 - 12 - 8;
    Ok(scan + scan.div_ceil(per_packet) * 20 + 4 + 128)
}

fn make(factory: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(factory)
        .build()
        .with_context(|| format!("cannot make {factory}"))
}

/// One live session: appsrc (live, timestamped at push) -> [rtpjpegpay] -> sink.
fn scale_pipeline(
    kind: &str,
    caps: &gst::Caps,
    url: &str,
) -> Result<(gst::Pipeline, gst_app::AppSrc)> {
    let p = gst::Pipeline::new();
    let src = gst_app::AppSrc::builder()
        .caps(caps)
        .is_live(true)
        .do_timestamp(true)
        .format(gst::Format::Time)
        .build();
    // A camera's few buffers, not an unbounded queue: while a sink holds its streaming thread
    // (a handshake in flight) a live source drops its oldest frames. Unbounded, every frame of
    // a slow start stayed queued, and the allocator kept that memory after the burst went out.
    src.set_property("max-buffers", 5u64);
    src.set_property_from_str("leaky-type", "downstream");
    let mut chain: Vec<gst::Element> = vec![src.clone().upcast()];
    match kind {
        "rtspannounce" => {
            chain.push(make("rtpjpegpay")?);
            let s = make("rtspannounce")?;
            s.set_property("location", url);
            chain.push(s);
        }
        "rtspclientsink" => {
            let s = make("rtspclientsink")?;
            s.set_property("location", url);
            s.set_property_from_str("protocols", "tcp");
            chain.push(s);
        }
        "base-raw" | "base-pay" => {
            if kind == "base-pay" {
                chain.push(make("rtpjpegpay")?);
            }
            let s = make("fakesink")?;
            s.set_property("sync", true);
            chain.push(s);
        }
        _ => bail!("unknown scale contender {kind}"),
    }
    p.add_many(&chain)?;
    for w in chain.windows(2) {
        if kind == "rtspclientsink"
            && w[1].factory().map(|f| f.name()) == Some("rtspclientsink".into())
        {
            let pad = w[1]
                .request_pad_simple("sink_%u")
                .context("rtspclientsink request pad")?;
            w[0].static_pad("src").unwrap().link(&pad)?;
        } else {
            w[0].link(&w[1])?;
        }
    }
    Ok((p, src))
}

/// `bench --scale-child KIND N URL-PREFIX WINDOW-SECONDS`: N live sessions in this process.
///
/// Prints `ready` once every pipeline is PLAYING, waits for `start` on stdin (the parent sends it
/// when its receiver sees every session streaming), measures CPU over the window, then prints
/// `result cpu_s=.. wall_s=.. rss_kib=.. threads=.. errors=..` and exits.
pub fn scale_child(args: &[String]) -> Result<()> {
    let [kind, n, prefix, window] = args else {
        bail!("usage: --scale-child KIND N URL-PREFIX WINDOW-SECONDS");
    };
    let n: usize = n.parse().context("N")?;
    let window = Duration::from_secs_f64(window.parse().context("WINDOW-SECONDS")?);
    init()?;
    let (jpeg, caps, period) = make_jpeg()?;
    let jpeg_bytes = jpeg.size();
    let idle = (proc::self_rss_kib(), proc::self_threads());
    if kind == "floor" {
        return scale_floor(n, prefix, window, &jpeg, &caps, period, idle);
    }
    let mut pipes = Vec::with_capacity(n);
    let mut srcs = Vec::with_capacity(n);
    for i in 0..n {
        let (p, src) = scale_pipeline(kind, &caps, &format!("{prefix}/{i}"))?;
        pipes.push(p);
        srcs.push(src);
    }
    for p in &pipes {
        p.set_state(gst::State::Playing)?;
    }
    // One feeder thread for every session: the source side is identical for all contenders.
    // Every frame is fresh memory, as an encoder's output is: a GstMemory counts its maps in 8
    // bits, so 1000 sessions mapping one shared memory at once overflow that count (a
    // gst_mini_object_unlock CRITICAL), and one shared copy would sit in cache for everyone.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("feeder".into())
            .spawn(move || {
                paced(period, &stop, || {
                    for s in &srcs {
                        if let Ok(frame) = jpeg.copy_deep() {
                            let _ = s.push_buffer(frame);
                        }
                    }
                    Ok(())
                })
            })?
    };
    let measured = measure_window(jpeg_bytes, period, idle, window)?;
    let errors = pipes
        .iter()
        .filter(|p| {
            p.bus()
                .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
                .is_some()
        })
        .count();
    measured.report(errors);
    stop.store(true, Ordering::Relaxed);
    let _ = feeder.join();
    for p in &pipes {
        let _ = p.set_state(gst::State::Null);
    }
    Ok(())
}

/// The scale floor: the same frames rtpjpegpay makes of the JPEG, written by one thread over N
/// bare RECORD sessions, one write per frame per session at the same pacing. No pipeline, no
/// wake-ups: what the kernel alone costs to move 1000 sessions' bytes in these writes.
fn scale_floor(
    n: usize,
    prefix: &str,
    window: Duration,
    jpeg: &gst::Buffer,
    caps: &gst::Caps,
    period: Duration,
    idle: (u64, usize),
) -> Result<()> {
    use std::io::Write;
    let packets = jpeg_packets(jpeg, caps)?;
    // One frame on the wire and where each packet's sequence number sits in it.
    let mut template = Vec::new();
    let mut seq_at = Vec::new();
    for p in &packets {
        template.extend_from_slice(&[b'$', 0]);
        template.extend_from_slice(&(p.len() as u16).to_be_bytes());
        seq_at.push(template.len() + 2);
        template.extend_from_slice(p);
    }
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        let sock = crate::floor::handshake(&format!("{prefix}/{i}"))?;
        // Its own copy of the frame, as each session writes its own memory.
        sessions.push((sock, template.clone(), 0u16));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("floor-writer".into())
            .spawn(move || -> Result<Vec<std::net::TcpStream>> {
                paced(period, &stop, || {
                    for (sock, frame, seq) in sessions.iter_mut() {
                        for &at in &seq_at {
                            frame[at..at + 2].copy_from_slice(&seq.to_be_bytes());
                            *seq = seq.wrapping_add(1);
                        }
                        sock.write_all(frame)?;
                    }
                    Ok(())
                })?;
                Ok(sessions.into_iter().map(|s| s.0).collect())
            })?
    };
    let measured = measure_window(jpeg.size(), period, idle, window)?;
    stop.store(true, Ordering::Relaxed);
    let res = writer
        .join()
        .map_err(|_| anyhow!("floor writer panicked"))?;
    measured.report(usize::from(res.is_err()));
    for (i, mut sock) in res?.into_iter().enumerate() {
        let url = format!("{prefix}/{i}");
        let _ = crate::floor::request(
            &mut sock,
            &format!("TEARDOWN {url} RTSP/1.0\r\nCSeq: 5\r\n\r\n"),
        );
    }
    Ok(())
}

/// The RTP packets rtpjpegpay (default settings, as in the scale pipelines) makes of `jpeg`.
fn jpeg_packets(jpeg: &gst::Buffer, caps: &gst::Caps) -> Result<Vec<Vec<u8>>> {
    let p = gst::parse::launch("appsrc name=src ! rtpjpegpay ! appsink name=out sync=false")?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))?;
    let src = p
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .map_err(|_| anyhow!("not an appsrc"))?;
    let sink = p
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .map_err(|_| anyhow!("not an appsink"))?;
    src.set_caps(Some(caps));
    src.set_format(gst::Format::Time);
    p.set_state(gst::State::Playing)?;
    let mut b = jpeg.copy();
    b.make_mut().set_pts(gst::ClockTime::ZERO);
    src.push_buffer(b)?;
    src.end_of_stream()?;
    let mut packets = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        let mut push = |b: &gst::BufferRef| -> Result<()> {
            packets.push(b.map_readable()?.as_slice().to_vec());
            Ok(())
        };
        if let Some(list) = sample.buffer_list() {
            for b in list.iter() {
                push(b)?;
            }
        } else if let Some(b) = sample.buffer() {
            push(b)?;
        }
    }
    p.set_state(gst::State::Null)?;
    if packets.is_empty() {
        bail!("rtpjpegpay made no packets");
    }
    Ok(packets)
}

/// RSS once glibc has given back the free memory it can: what is live, without the allocator's
/// retention of a past burst (read after the plain RSS, which is the figure that counts).
fn trimmed_rss_kib() -> u64 {
    // SAFETY: malloc_trim only releases free memory; no pointer is involved.
    unsafe { libc::malloc_trim(0) };
    proc::self_rss_kib()
}

/// Runs `tick` once per `period` until `stop`, catching up without bursts after a late tick.
fn paced(period: Duration, stop: &AtomicBool, mut tick: impl FnMut() -> Result<()>) -> Result<()> {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tick()?;
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    Ok(())
}

/// What a scale child measured over its window.
struct Measured {
    cpu_s: f64,
    wall: Duration,
    rss_kib: u64,
    rss_trim_kib: u64,
    threads: usize,
}

impl Measured {
    fn report(&self, errors: usize) {
        println!(
            "result cpu_s={:.4} wall_s={:.4} rss_kib={} rss_trim_kib={} threads={} errors={errors}",
            self.cpu_s,
            self.wall.as_secs_f64(),
            self.rss_kib,
            self.rss_trim_kib,
            self.threads
        );
    }
}

/// Prints `ready`, waits for the parent's `start`, then measures the child's CPU over `window`
/// and its RSS and threads at the end of it.
fn measure_window(
    jpeg_bytes: usize,
    period: Duration,
    idle: (u64, usize),
    window: Duration,
) -> Result<Measured> {
    println!(
        "ready jpeg_bytes={} frame_period_ms={:.1} idle_rss_kib={} idle_threads={}",
        jpeg_bytes,
        period.as_secs_f64() * 1e3,
        idle.0,
        idle.1
    );
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "start" {
        bail!("expected start, got {line:?}");
    }
    let (c0, t0) = (proc::self_cpu_s(), Instant::now());
    std::thread::sleep(window);
    let (c1, wall) = (proc::self_cpu_s(), t0.elapsed());
    let (rss_kib, threads) = (proc::self_rss_kib(), proc::self_threads());
    Ok(Measured {
        cpu_s: c1 - c0,
        wall,
        rss_kib,
        threads,
        rss_trim_kib: trimmed_rss_kib(),
    })
}
