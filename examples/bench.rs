//! Side-by-side benchmark: rtspannounce vs rtspclientsink vs ffmpeg, pushing the same input to
//! the same in-process drain receiver on 127.0.0.1. See docs/BENCHMARKS.md.
//!
//! ```text
//! cargo run --release --example bench -- [--quick] [--rounds N] [--scale 1,100,1000]
//!     [--scale-rounds N] [--window SECONDS] [--clientsink-max N] [--no-push] [--no-scale]
//! cargo run --release --example bench -- --serve     # the drain receiver alone, for profiling
//! ```
//!
//! The parent process makes the input once (target/bench-input/, or $BENCH_DIR), runs the
//! receiver, and runs every contender in its own child process (this same binary with
//! `--push-child` or `--scale-child`, or ffmpeg), so that each one's CPU is its own. The plugin
//! is registered in the children with `plugin_register_static()`: what is measured is the code
//! this example was built from, no `.so` from a plugin path. Exits non-zero if any contender
//! lost packets, rtspannounce failed or delivered nothing, or a baseline failed.

#[path = "bench/child.rs"]
mod child;
#[path = "bench/floor.rs"]
mod floor;
#[path = "bench/proc.rs"]
mod proc;
#[path = "bench/receiver.rs"]
mod receiver;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use proc::{Exit, Proc};
use receiver::{Receiver, Session};

const USAGE: &str = "usage: bench [--quick] [--rounds N] [--scale 1,100,1000] [--scale-rounds N] \
[--window SECONDS] [--clientsink-max N] [--no-push] [--no-scale] [--serve]";

struct Args {
    quick: bool,
    rounds: usize,
    scale: Vec<usize>,
    window: f64,
    scale_rounds: usize,
    clientsink_max: usize,
    push: bool,
    serve: bool,
}

fn parse_args(argv: &[String]) -> Result<Args> {
    let quick = argv.iter().any(|a| a == "--quick");
    let mut a = Args {
        quick,
        rounds: if quick { 1 } else { 3 },
        scale: if quick {
            vec![1, 10]
        } else {
            vec![1, 100, 1000]
        },
        window: if quick { 2.0 } else { 10.0 },
        scale_rounds: 0,
        clientsink_max: if quick { 1000 } else { 500 },
        push: true,
        serve: false,
    };
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--quick" => {}
            "--rounds" => a.rounds = val("--rounds")?.parse().context("--rounds")?,
            "--scale" => {
                a.scale = val("--scale")?
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--scale")?
            }
            "--window" => a.window = val("--window")?.parse().context("--window")?,
            "--scale-rounds" => {
                a.scale_rounds = val("--scale-rounds")?.parse().context("--scale-rounds")?
            }
            "--clientsink-max" => {
                a.clientsink_max = val("--clientsink-max")?
                    .parse()
                    .context("--clientsink-max")?
            }
            "--no-push" => a.push = false,
            "--no-scale" => a.scale.clear(),
            "--serve" => a.serve = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if a.scale_rounds == 0 {
        a.scale_rounds = a.rounds;
    }
    Ok(a)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let child = match argv.first().map(String::as_str) {
        Some("--push-child") => Some(child::push_child(&argv[1..])),
        Some("--scale-child") => Some(child::scale_child(&argv[1..])),
        Some("--dump-frames") => Some(floor::dump_child(&argv[1..])),
        Some("--floor-child") => Some(floor::floor_child(&argv[1..])),
        _ => None,
    };
    if let Some(r) = child {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench child: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench: FAILED (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Input

struct Input {
    /// Real-time runs push this file.
    path: PathBuf,
    seconds: u32,
    desc: String,
    /// Unsynced runs push `path` concatenated `repeat` times (stream copy), so that even the
    /// fastest contender streams for long enough to be timed.
    max_path: PathBuf,
    repeat: u32,
    /// `path` and `max_path` as the floor sends them: the RTP packets rtph264pay and
    /// rtpmp4gpay make of them, framed for the wire (see floor.rs).
    frames: PathBuf,
    max_frames: PathBuf,
}

fn work_dir() -> PathBuf {
    std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-input"))
}

/// Makes the input once: H.264 (x264, ultrafast, no B-frames, GOP 60) + AAC in MP4, and its
/// concatenation for the unsynced runs.
fn make_input(quick: bool) -> Result<Input> {
    let (secs, w, h, kbps, repeat) = if quick {
        (3u32, 320, 240, 2000, 3)
    } else {
        (20u32, 1280, 720, 20000, 10)
    };
    let dir = work_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("in-{secs}s-{w}x{h}-{kbps}k.mp4"));
    let max_path = dir.join(format!("in-{secs}s-{w}x{h}-{kbps}k-x{repeat}.mp4"));
    let desc =
        format!("{secs} s of {w}x{h} 30 fps H.264 at {kbps} kbit/s + AAC 48 kHz stereo, MP4");
    if !path.exists() {
        println!("making input {} ({desc}) ...", path.display());
        let t0 = Instant::now();
        encode_input(&path, secs, w, h, kbps)?;
        println!("  done in {:.1} s", t0.elapsed().as_secs_f64());
    }
    if !max_path.exists() {
        concat_input(&path, &max_path, repeat)?;
    }
    let frames = path.with_extension("frames");
    let max_frames = max_path.with_extension("frames");
    for (src, dst) in [(&path, &frames), (&max_path, &max_frames)] {
        if !dst.exists() {
            dump_frames(src, dst)?;
        }
    }
    Ok(Input {
        path,
        seconds: secs,
        desc,
        max_path,
        repeat,
        frames,
        max_frames,
    })
}

/// The floor's input: `src` payloaded once by the pipeline rtspannounce is given.
fn dump_frames(src: &Path, dst: &Path) -> Result<()> {
    println!("making the floor's frames {} ...", dst.display());
    let status = Command::new(std::env::current_exe()?)
        .arg("--dump-frames")
        .arg(src)
        .arg(dst)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("payloading {} for the floor failed", src.display());
    }
    Ok(())
}

fn encode_input(path: &Path, secs: u32, w: u32, h: u32, kbps: u32) -> Result<()> {
    let tmp = path.with_extension("tmp.mp4");
    let pipeline = format!(
        "videotestsrc num-buffers={frames} pattern=snow \
         ! video/x-raw,format=I420,width={w},height={h},framerate=30/1 \
         ! x264enc bitrate={kbps} speed-preset=ultrafast bframes=0 key-int-max=60 ! h264parse \
         ! mp4mux name=m ! filesink location={tmp} \
         audiotestsrc num-buffers={abufs} samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 \
         ! avenc_aac ! aacparse ! m.",
        frames = secs * 30,
        abufs = secs * 48000 / 1024,
        tmp = tmp.display()
    );
    let status = Command::new("gst-launch-1.0")
        .args(["-q", "-e"])
        .args(pipeline.split_whitespace())
        .stdout(Stdio::null())
        .status()
        .context("running gst-launch-1.0 (is GStreamer installed?)")?;
    if !status.success() {
        bail!("encoding the input failed: gst-launch-1.0 {pipeline}");
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `repeat` copies of `src` one after the other (ffmpeg's concat demuxer, stream copy).
fn concat_input(src: &Path, dst: &Path, repeat: u32) -> Result<()> {
    let list = dst.with_extension("txt");
    let line = format!("file '{}'\n", src.display());
    std::fs::write(&list, line.repeat(repeat as usize))?;
    let tmp = dst.with_extension("tmp.mp4");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "concat", "-safe", "0", "-i"])
        .arg(&list)
        .args(["-c", "copy"])
        .arg(&tmp)
        .status()
        .context("running ffmpeg (is it installed?)")?;
    let _ = std::fs::remove_file(&list);
    if !status.success() {
        bail!(
            "ffmpeg could not concatenate {} {repeat} times",
            src.display()
        );
    }
    std::fs::rename(&tmp, dst)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Push runs

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    /// Encoded input, payloaded by the element's built-in payloaders.
    Announce,
    /// RTP input from rtph264pay/rtpmp4gpay in front of the element.
    AnnounceRtp,
    ClientSink,
    Ffmpeg,
    BasePay,
    BaseParse,
    BaseFfmpeg,
    /// The same interleaved frames written by a plain program (floor.rs): the kernel's cost.
    Floor,
}

impl Who {
    const ALL: [Who; 8] = [
        Who::Announce,
        Who::AnnounceRtp,
        Who::ClientSink,
        Who::Ffmpeg,
        Who::Floor,
        Who::BasePay,
        Who::BaseParse,
        Who::BaseFfmpeg,
    ];

    fn name(self) -> &'static str {
        match self {
            Who::Announce => "rtspannounce",
            Who::AnnounceRtp => "rtspannounce-rtp",
            Who::ClientSink => "rtspclientsink",
            Who::Ffmpeg => "ffmpeg",
            Who::BasePay => "base-pay",
            Who::BaseParse => "base-parse",
            Who::BaseFfmpeg => "base-ffmpeg",
            Who::Floor => "floor",
        }
    }

    fn is_baseline(self) -> bool {
        matches!(self, Who::BasePay | Who::BaseParse | Who::BaseFfmpeg)
    }

    /// The baseline whose CPU is subtracted: what the contender is given as input, without the
    /// sending. Every GStreamer contender starts from parsed streams (rtspannounce and
    /// rtspclientsink payload internally, rtspannounce-rtp after rtph264pay/rtpmp4gpay), so all
    /// are measured against base-parse; the `sink alone` figure is rtspannounce-rtp minus
    /// base-pay.
    fn baseline(self) -> Option<Who> {
        match self {
            Who::Announce | Who::AnnounceRtp | Who::ClientSink => Some(Who::BaseParse),
            Who::Ffmpeg => Some(Who::BaseFfmpeg),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    RealTime,
    Max,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::RealTime => "rt",
            Mode::Max => "max",
        }
    }
}

struct PushRun {
    who: Who,
    mode: Mode,
    round: usize,
    exit: Exit,
    sessions: Vec<Session>,
    latency: Option<Latency>,
}

/// Added latency of one real-time run, per access unit, in ms (see `latency_of`).
#[derive(Default, Clone)]
struct Latency {
    video: Vec<f64>,
    audio: Vec<f64>,
    /// Access units seen on one side only (pad vs receiver).
    unmatched: usize,
}

impl Latency {
    /// Whether enough units paired for the figures to mean something (a track whose
    /// timestamps do not line up leaves most unmatched).
    fn paired(&self) -> bool {
        self.unmatched * 10 <= self.video.len() + self.audio.len()
    }
}

/// The clock rate of each channel of the bench input (video first, then 48 kHz AAC).
fn channel_rate(ch: u8) -> f64 {
    if ch == 0 {
        90_000.0
    } else {
        48_000.0
    }
}

/// Pairs each access unit as it reached the sink's pad (the child's file) with the arrival of
/// its last packet at the receiver, in order per track (pad k -> channel 2k). The start is the
/// later of reaching the pad and being due (base time + running time): with sync=true a buffer
/// reaches the pad early and waits for its time there, which is not latency we add. ffmpeg,
/// which has no pad: each packet's arrival against its RTP timestamp, relative to the track's
/// first packet.
fn latency_of(who: Who, file: Option<&str>, session: &Session) -> Option<Latency> {
    let mut lat = Latency::default();
    let arrivals = |ch: u8| session.markers.iter().filter(move |m| m.0 == ch);
    if who == Who::Ffmpeg {
        for ch in [0u8, 2] {
            let mut it = arrivals(ch);
            let Some(&(_, a0, t0)) = it.next() else {
                continue;
            };
            let out = if ch == 0 {
                &mut lat.video
            } else {
                &mut lat.audio
            };
            for &(_, a, t) in it {
                let media = t.wrapping_sub(t0) as f64 / channel_rate(ch) * 1e9;
                out.push(((a - a0) as f64 - media) / 1e6);
            }
        }
        return Some(lat);
    }
    let text = file?;
    let mut lines = text.lines();
    let base: u64 = lines.next()?.strip_prefix("base ")?.parse().ok()?;
    // Per pad: (start, running time) of each unit.
    let mut pads: [Vec<(u64, u64)>; 2] = Default::default();
    for l in lines {
        let v: Vec<u64> = l.split(' ').filter_map(|x| x.parse().ok()).collect();
        if let [pad, now, rt] = v[..] {
            if let Some(p) = pads.get_mut(pad as usize) {
                p.push((now.max(base + rt), rt));
            }
        }
    }
    let channels: std::collections::BTreeSet<u8> = session.markers.iter().map(|m| m.0).collect();
    for (k, units) in pads.iter().enumerate() {
        // Pad 0 is the video (90 kHz), pad 1 the audio (48 kHz).
        let rate = channel_rate(2 * k as u8);
        let out = if k == 0 {
            &mut lat.video
        } else {
            &mut lat.audio
        };
        let on = |ch: u8| -> Vec<(u64, u32)> { arrivals(ch).map(|m| (m.1, m.2)).collect() };
        let arr = on(2 * k as u8);
        if units.len() == arr.len() {
            for ((s, _), (a, _)) in units.iter().zip(&arr) {
                out.push((*a as f64 - *s as f64) / 1e6);
            }
            continue;
        }
        // Not the same units (rtspclientsink, which also sets its streams up in its own order,
        // audio first): by timestamp, on whichever channel matches the most.
        let best = channels
            .iter()
            .map(|&ch| {
                let mut v = Vec::new();
                let unmatched = pair_by_time(units, &on(ch), rate, &mut v);
                (v, unmatched)
            })
            .max_by_key(|(v, _)| v.len());
        match best {
            Some((v, unmatched)) => {
                out.extend(v);
                lat.unmatched += unmatched;
            }
            None => lat.unmatched += units.len(),
        }
    }
    Some(lat)
}

/// base-parse's fakesinks: from the later of reaching the pad and being due to the render
/// (the `handoff` after the clock wait), per unit in order. GStreamer's sync wake-up on this
/// machine, with no network and none of our code: the floor under every GStreamer contender's
/// added latency.
fn sync_wake_of(text: &str) -> Option<Latency> {
    let mut lines = text.lines();
    let base: u64 = lines.next()?.strip_prefix("base ")?.parse().ok()?;
    let mut due: [Vec<u64>; 2] = Default::default();
    let mut rendered: [Vec<u64>; 2] = Default::default();
    for l in lines {
        let (list, rest) = match l.strip_prefix("render ") {
            Some(rest) => (&mut rendered, rest),
            None => (&mut due, l),
        };
        let v: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
        match (
            &v[..],
            list.get_mut(v.first().copied().unwrap_or(9) as usize),
        ) {
            (&[_, now, rt], Some(d)) => d.push(now.max(base + rt)),
            (&[_, now], Some(r)) => r.push(now),
            _ => {}
        }
    }
    let mut lat = Latency::default();
    for (k, out) in [&mut lat.video, &mut lat.audio].into_iter().enumerate() {
        if due[k].len() != rendered[k].len() {
            lat.unmatched += due[k].len().abs_diff(rendered[k].len());
        }
        out.extend(
            due[k]
                .iter()
                .zip(&rendered[k])
                .map(|(d, r)| (*r as f64 - *d as f64) / 1e6),
        );
    }
    Some(lat)
}

/// Pairs pad units with arrivals by their place on the media timeline: the unit's running time
/// since the track's first unit against the marker packet's RTP timestamp since the track's
/// first, within a millisecond. For a contender whose receiver-side units are not its pad's
/// buffers one to one (rtspclientsink, which drops or splits some): the units that do match are
/// measured, the rest counted. Returns how many went unmatched on either side.
fn pair_by_time(units: &[(u64, u64)], arr: &[(u64, u32)], rate: f64, out: &mut Vec<f64>) -> usize {
    let (Some(&(_, rt0)), Some(&(_, ts0))) = (units.first(), arr.first()) else {
        return units.len() + arr.len();
    };
    let media = |ts: u32| (ts.wrapping_sub(ts0) as f64 / rate * 1e9) as i64;
    let (mut i, mut j, mut matched) = (0, 0, 0);
    while i < units.len() && j < arr.len() {
        let u = units[i].1.wrapping_sub(rt0) as i64;
        let a = media(arr[j].1);
        if (u - a).abs() <= 1_000_000 {
            out.push((arr[j].0 as f64 - units[i].0 as f64) / 1e6);
            matched += 1;
            i += 1;
            j += 1;
        } else if u < a {
            i += 1;
        } else {
            j += 1;
        }
    }
    units.len() + arr.len() - 2 * matched
}

/// (p50, p99, max) of `v`.
fn percentiles(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some((v[n / 2], v[(n * 99 / 100).min(n - 1)], v[n - 1]))
}

fn latency_table(runs: &[PushRun]) {
    println!(
        "\nadded latency, real time (ms, all rt rounds pooled): from the later of reaching the sink's pad \
         and being due (sync=true) to the last packet's arrival at the receiver over loopback, an upper \
         bound on when its last byte was written; ffmpeg: arrival against the packet's RTP timestamp, \
         relative to its first packet; base-parse: from the same start to fakesink's render, GStreamer's \
         own wake-up from the clock wait (no network, none of our code)"
    );
    println!(
        "  {:<16} {:>26} {:>26} {:>10}",
        "contender", "video p50 / p99 / max", "audio p50 / p99 / max", "unmatched"
    );
    for who in [
        Who::Announce,
        Who::AnnounceRtp,
        Who::ClientSink,
        Who::Ffmpeg,
        Who::BaseParse,
    ] {
        let mut all = Latency::default();
        for l in runs
            .iter()
            .filter(|r| r.who == who && r.mode == Mode::RealTime && r.ok())
            .filter_map(|r| r.latency.as_ref())
        {
            all.video.extend(&l.video);
            all.audio.extend(&l.audio);
            all.unmatched += l.unmatched;
        }
        let paired = all.paired();
        let f = |v: &[f64]| match percentiles(v) {
            Some(_) if !paired => "n/a (units do not pair)".into(),
            Some((a, b, c)) => format!("{a:.2} / {b:.2} / {c:.2}"),
            None => "n/a".into(),
        };
        println!(
            "  {:<16} {:>26} {:>26} {:>10}",
            who.name(),
            f(&all.video),
            f(&all.audio),
            all.unmatched
        );
    }
}

impl PushRun {
    /// rtspclientsink's EOS hang (see `child::EOS_GRACE`): the data was delivered, only its EOS
    /// message never came; the CPU figure includes a few seconds of idling.
    fn eos_hang(&self) -> bool {
        self.who == Who::ClientSink
            && !self.exit.timed_out
            && self.exit.code == Some(child::EOS_HANG_EXIT)
    }

    fn ok(&self) -> bool {
        (self.exit.success() || self.eos_hang())
            && (self.who.is_baseline()
                || (self.sessions.len() == 1 && self.sessions[0].rtp_packets > 0))
    }
    fn rtp_bytes(&self) -> u64 {
        self.sessions.iter().map(|s| s.rtp_bytes).sum()
    }
    fn rtp_packets(&self) -> u64 {
        self.sessions.iter().map(|s| s.rtp_packets).sum()
    }
    fn lost(&self) -> u64 {
        self.sessions.iter().map(|s| s.lost()).sum()
    }
}

fn log_path(tag: &str) -> PathBuf {
    work_dir().join("logs").join(format!("{tag}.log"))
}

fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn push_command(who: Who, mode: Mode, url: &str, input: &Path) -> Result<Command> {
    let input_s = input.to_str().context("input path is not UTF-8")?;
    let mut cmd;
    match who {
        Who::Floor => {
            cmd = Command::new(std::env::current_exe()?);
            cmd.args(["--floor-child", mode.name(), url, input_s]);
        }
        Who::Ffmpeg | Who::BaseFfmpeg => {
            cmd = Command::new("ffmpeg");
            cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error"]);
            if mode == Mode::RealTime {
                cmd.arg("-re");
            }
            cmd.args(["-i", input_s, "-c", "copy"]);
            if who == Who::Ffmpeg {
                cmd.args(["-f", "rtsp", "-rtsp_transport", "tcp", url]);
            } else {
                cmd.args(["-f", "null", "-"]);
            }
        }
        _ => {
            cmd = Command::new(std::env::current_exe()?);
            cmd.args(["--push-child", who.name(), mode.name(), url, input_s]);
        }
    }
    Ok(cmd)
}

fn push_once(rx: &Receiver, input: &Input, who: Who, mode: Mode, round: usize) -> Result<PushRun> {
    let tag = format!("r{round}-{}-{}", mode.name(), who.name());
    let prefix = format!("/bench/{tag}");
    let url = rx.url(&prefix);
    let log = log_path(&tag);
    std::fs::create_dir_all(log.parent().unwrap())?;
    let file = match (mode, who) {
        (Mode::RealTime, Who::Floor) => &input.frames,
        (Mode::Max, Who::Floor) => &input.max_frames,
        (Mode::RealTime, _) => &input.path,
        (Mode::Max, _) => &input.max_path,
    };
    // The machine drops page cache left unused for a minute or two: read the input whole right
    // before the run, or whoever comes first after a pause measures the disk.
    warm(file)?;
    let mut cmd = push_command(who, mode, &url, file)?;
    let lat_file = log.with_extension("latency");
    let _ = std::fs::remove_file(&lat_file);
    if mode == Mode::RealTime
        && matches!(
            who,
            Who::Announce | Who::AnnounceRtp | Who::ClientSink | Who::BaseParse
        )
    {
        cmd.env(child::LATENCY_ENV, &lat_file);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let timeout = match mode {
        Mode::RealTime => Duration::from_secs(input.seconds as u64 + 40),
        Mode::Max => Duration::from_secs((input.seconds * input.repeat) as u64 + 60),
    };
    let mut p = Proc::spawn(&mut cmd)?;
    let mut exit = p.wait(timeout)?;
    drop(p);
    if who == Who::Floor {
        // Its sending alone: loading and framing the file is not the kernel's cost.
        match floor::logged_cpu(&std::fs::read_to_string(&log).unwrap_or_default()) {
            Some(cpu) => exit.cpu_s = cpu,
            None => exit.code = Some(-1),
        }
    }
    rx.wait_closed(&prefix, Duration::from_secs(3));
    let sessions = rx.sessions(&prefix);
    rx.forget(&prefix);
    let latency = match (mode, sessions.as_slice()) {
        (Mode::RealTime, [s]) => {
            latency_of(who, std::fs::read_to_string(&lat_file).ok().as_deref(), s)
        }
        (Mode::RealTime, []) if who == Who::BaseParse => {
            sync_wake_of(&std::fs::read_to_string(&lat_file).unwrap_or_default())
        }
        _ => None,
    };
    let run = PushRun {
        who,
        mode,
        round,
        exit,
        sessions,
        latency,
    };
    let mut line = format!(
        "[r{round} {:>3}] {:<14} {:<10} cpu {:>6.2} s  wall {:>6.2} s",
        mode.name(),
        who.name(),
        if run.eos_hang() {
            "EOS hang".to_string()
        } else {
            run.exit.describe()
        },
        run.exit.cpu_s,
        run.exit.wall.as_secs_f64()
    );
    let crit = criticals(&log);
    if crit > 0 {
        line += &format!("  {crit} GStreamer-CRITICALs in {}", log.display());
    }
    if !who.is_baseline() {
        match run.sessions.as_slice() {
            [s] => {
                line += &format!(
                    "  rtp {:>6.1} MB {:>6} pkts  lost {}{}  hs {} ms ({})  span {:.3} s{}{}",
                    s.rtp_bytes as f64 / 1e6,
                    s.rtp_packets,
                    s.lost(),
                    if s.backwards() > 0 {
                        format!(" (+{} backwards)", s.backwards())
                    } else {
                        String::new()
                    },
                    s.handshake()
                        .map(|d| format!("{:.2}", d.as_secs_f64() * 1e3))
                        .unwrap_or("-".into()),
                    s.methods.join(","),
                    s.stream_span().map(|d| d.as_secs_f64()).unwrap_or(0.0),
                    if s.teardown {
                        "  TEARDOWN"
                    } else {
                        "  no TEARDOWN"
                    },
                    s.error
                        .as_ref()
                        .map(|e| format!("  receiver error: {e}"))
                        .unwrap_or_default()
                )
            }
            v => line += &format!("  {} sessions at the receiver", v.len()),
        }
    }
    if let Some(l) = run.latency.as_ref().filter(|l| l.paired()) {
        // Where the worst unit sits tells a start-up delay from a tail in the stream.
        let worst = l
            .video
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.partial_cmp(b.1).unwrap());
        let what = if run.who == Who::BaseParse {
            "sync wake-up"
        } else {
            "latency"
        };
        if let (Some((p50, p99, max)), Some((i, _))) = (percentiles(&l.video), worst) {
            line += &format!(
                "\n    video {what} p50 {p50:.2} p99 {p99:.2} max {max:.2} ms (unit {i} of {})",
                l.video.len()
            );
        }
        if let Some((p50, p99, max)) = percentiles(&l.audio) {
            line += &format!(", audio p50 {p50:.2} p99 {p99:.2} max {max:.2} ms");
        }
    }
    println!("{line}");
    if !run.ok() {
        println!("    log {}:\n{}", log.display(), indent(&tail(&log, 8)));
    }
    Ok(run)
}

/// Reads `path` whole (and tells the kernel it is needed), so the timed run reads memory.
fn warm(path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor; the call only advises the kernel.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// Per contender, the spread of its unsynced rounds (min/median/max Mbit/s), and every round
/// more than 1.5x slower than that contender's best, named so that it is not silently averaged.
fn spread(runs: &[PushRun]) {
    println!("\nunsynced rounds (Mbit/s at the receiver: min / median / max; slow = streaming over 1.5x as long as the best round):");
    for who in [
        Who::Announce,
        Who::AnnounceRtp,
        Who::ClientSink,
        Who::Ffmpeg,
        Who::Floor,
    ] {
        let mine: Vec<(&PushRun, f64, f64)> = runs
            .iter()
            .filter(|r| r.who == who && r.mode == Mode::Max && r.ok())
            .filter_map(|r| {
                let span = r.sessions.first()?.stream_span()?.as_secs_f64();
                (span > 0.0).then(|| (r, span, r.rtp_bytes() as f64 * 8.0 / span / 1e6))
            })
            .collect();
        let v: Vec<f64> = mine.iter().map(|(_, _, m)| *m).collect();
        let min = v
            .iter()
            .copied()
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.min(x))));
        let max = v
            .iter()
            .copied()
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        // The receiver's span, not the child's wall time: an EOS that never comes adds wall
        // time that says nothing about throughput (it is reported on its own).
        let best = mine
            .iter()
            .map(|(_, span, _)| *span)
            .fold(f64::INFINITY, f64::min);
        let slow: Vec<String> = mine
            .iter()
            .filter(|(_, span, _)| *span > 1.5 * best)
            .map(|(r, span, _)| format!("r{} {span:.2} s vs best {best:.2} s", r.round))
            .collect();
        println!(
            "  {:<16} {:>7} / {:>7} / {:>7}{}",
            who.name(),
            fmt(min, 0),
            fmt(median(v.clone()), 0),
            fmt(max, 0),
            if slow.is_empty() {
                String::new()
            } else {
                format!("   SLOW: {}", slow.join(", "))
            }
        );
    }
}

/// Unsynced Mbit/s of one run at the receiver.
fn mbit(r: &PushRun) -> Option<f64> {
    let span = r.sessions.first()?.stream_span()?.as_secs_f64();
    (span > 0.0).then(|| r.rtp_bytes() as f64 * 8.0 / span / 1e6)
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "not measured",
    }
}

/// The performance targets of docs/BENCHMARKS.md, each with its figure from this run.
fn targets(runs: &[PushRun], own: &Figures, ann: &Figures, rows: &[(String, Figures)]) {
    let row = |n: &str| rows.iter().find(|(name, _)| name == n).map(|(_, f)| f);
    let floor = row("floor").and_then(|f| f.cpu_gb);
    let ffmpeg = row("ffmpeg").and_then(|f| f.cpu_gb);
    println!("\ntargets (this run):");
    let own_vs_floor = own.cpu_gb.zip(floor).map(|(o, f)| o / f);
    println!(
        "  1. own cost <= 2x the floor: the sink alone (rtspannounce-rtp minus base-pay) {} s/GB, floor {} s/GB, {}x: {}",
        fmt(own.cpu_gb, 2),
        fmt(floor, 2),
        fmt(own_vs_floor, 2),
        verdict(own_vs_floor.map(|x| x <= 2.0))
    );
    let builtin_vs_floor = ann.cpu_gb.zip(floor).map(|(o, f)| o / f);
    println!(
        "     with its built-in payloaders (rtspannounce minus base-parse): {} s/GB, {}x the floor",
        fmt(ann.cpu_gb, 2),
        fmt(builtin_vs_floor, 2)
    );
    println!(
        "  2. real-time CPU <= ffmpeg's (each minus its input stage): rtspannounce {} s/GB, ffmpeg {} s/GB: {}",
        fmt(ann.cpu_gb, 2),
        fmt(ffmpeg, 2),
        verdict(ann.cpu_gb.zip(ffmpeg).map(|(a, f)| a <= f))
    );
    let per_round: Vec<f64> = runs
        .iter()
        .filter(|r| r.who == Who::Announce && r.mode == Mode::Max && r.ok())
        .filter_map(|r| {
            let f = runs.iter().find(|x| {
                x.who == Who::Ffmpeg && x.mode == Mode::Max && x.round == r.round && x.ok()
            })?;
            Some(mbit(r)? / mbit(f)?)
        })
        .collect();
    let worst = per_round.iter().copied().reduce(f64::min);
    println!(
        "  3. unsynced >= 1.5x ffmpeg in every round, 0 lost: worst round {}x ({} rounds), lost {}: {}",
        fmt(worst, 2),
        per_round.len(),
        ann.lost,
        verdict(worst.map(|w| w >= 1.5 && ann.lost == 0))
    );
    let mut lat = Vec::new();
    for l in runs
        .iter()
        .filter(|r| r.who == Who::Announce && r.mode == Mode::RealTime && r.ok())
        .filter_map(|r| r.latency.as_ref())
    {
        lat.extend(&l.video);
        lat.extend(&l.audio);
    }
    let p = percentiles(&lat);
    println!(
        "  4. added latency p99 < 1 ms at real time, no multi-ms tail (sync=true): p99 {} ms, max {} ms: {}",
        fmt(p.map(|p| p.1), 2),
        fmt(p.map(|p| p.2), 2),
        verdict(p.map(|p| p.1 < 1.0 && p.2 < 2.0))
    );
    let mut wake = Vec::new();
    for l in runs
        .iter()
        .filter(|r| r.who == Who::BaseParse && r.mode == Mode::RealTime && r.ok())
        .filter_map(|r| r.latency.as_ref())
    {
        wake.extend(&l.video);
        wake.extend(&l.audio);
    }
    if let Some((_, p99, max)) = percentiles(&wake) {
        println!(
            "     (GStreamer's own sync wake-up, base-parse's fakesinks in the same rounds: p99 {p99:.2} ms, max {max:.2} ms)"
        );
    }
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or("n/a".into())
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b != 0.0 => format!("{:.2}x", v / b),
        _ => "-".into(),
    }
}

#[derive(Default, Clone)]
struct Figures {
    cpu_gb: Option<f64>,
    gross_cpu_gb: Option<f64>,
    mbit: Option<f64>,
    kpps: Option<f64>,
    hs_ms: Option<f64>,
    ann_ms: Option<f64>,
    round_trips: Option<f64>,
    methods: String,
    lost: u64,
    backwards: u64,
    ok_runs: usize,
    runs: usize,
    eos_hangs: usize,
    rt_mb: Option<f64>,
}

fn figures(runs: &[PushRun], who: Who, sub: Option<Who>) -> Figures {
    let find = |w: Who, m: Mode, r: usize| {
        runs.iter()
            .find(|x| x.who == w && x.mode == m && x.round == r && x.ok())
    };
    let mine: Vec<&PushRun> = runs.iter().filter(|r| r.who == who).collect();
    let rt: Vec<&PushRun> = mine
        .iter()
        .copied()
        .filter(|r| r.mode == Mode::RealTime && r.ok())
        .collect();
    let max: Vec<&PushRun> = mine
        .iter()
        .copied()
        .filter(|r| r.mode == Mode::Max && r.ok())
        .collect();
    let cpu_gb = median(
        rt.iter()
            .filter_map(|r| {
                if who == Who::Floor {
                    // Nothing to subtract: its CPU is counted around the sending alone.
                    return Some(r.exit.cpu_s / (r.rtp_bytes() as f64 / 1e9));
                }
                let b = find(sub?, Mode::RealTime, r.round)?;
                Some((r.exit.cpu_s - b.exit.cpu_s) / (r.rtp_bytes() as f64 / 1e9))
            })
            .collect(),
    );
    let gross_cpu_gb = median(
        rt.iter()
            .map(|r| r.exit.cpu_s / (r.rtp_bytes() as f64 / 1e9))
            .collect(),
    );
    let spans = |f: &dyn Fn(&PushRun, f64) -> f64| {
        median(
            max.iter()
                .filter_map(|r| {
                    let span = r.sessions.first()?.stream_span()?.as_secs_f64();
                    (span > 0.0).then(|| f(r, span))
                })
                .collect(),
        )
    };
    let all_ok: Vec<&PushRun> = mine.iter().copied().filter(|r| r.ok()).collect();
    let sess = |f: &dyn Fn(&Session) -> Option<f64>| {
        median(
            all_ok
                .iter()
                .filter_map(|r| f(r.sessions.first()?))
                .collect(),
        )
    };
    Figures {
        cpu_gb,
        gross_cpu_gb,
        mbit: spans(&|r, s| r.rtp_bytes() as f64 * 8.0 / s / 1e6),
        kpps: spans(&|r, s| r.rtp_packets() as f64 / s / 1e3),
        hs_ms: sess(&|s| Some(s.handshake()?.as_secs_f64() * 1e3)),
        ann_ms: sess(&|s| Some(s.announce_to_record()?.as_secs_f64() * 1e3)),
        round_trips: sess(&|s| s.record_ok.map(|_| s.methods.len() as f64)),
        methods: all_ok
            .first()
            .and_then(|r| r.sessions.first())
            .map(|s| s.methods.join(","))
            .unwrap_or_default(),
        lost: mine.iter().map(|r| r.lost()).sum(),
        backwards: mine
            .iter()
            .flat_map(|r| &r.sessions)
            .map(|s| s.backwards())
            .sum(),
        ok_runs: all_ok.len(),
        runs: mine.len(),
        eos_hangs: mine.iter().filter(|r| r.eos_hang()).count(),
        rt_mb: median(rt.iter().map(|r| r.rtp_bytes() as f64 / 1e6).collect()),
    }
}

fn push_bench(
    rx: &Receiver,
    input: &Input,
    rounds: usize,
    failures: &mut Vec<String>,
) -> Result<()> {
    println!(
        "\n== push: {rounds} round(s), contenders interleaved; rt = real time (sync on / -re), \
         max = unsynced (sync=false, no pipeline clock / no -re)"
    );
    let mut runs = Vec::new();
    for round in 1..=rounds {
        for mode in [Mode::RealTime, Mode::Max] {
            for who in Who::ALL {
                runs.push(push_once(rx, input, who, mode, round)?);
            }
        }
    }

    let ann = figures(&runs, Who::Announce, Who::Announce.baseline());
    let rows: Vec<(String, Figures)> = vec![
        ("rtspannounce".into(), ann.clone()),
        (
            "rtspannounce-rtp".into(),
            figures(&runs, Who::AnnounceRtp, Who::AnnounceRtp.baseline()),
        ),
        (
            "rtspclientsink".into(),
            figures(&runs, Who::ClientSink, Who::ClientSink.baseline()),
        ),
        (
            "ffmpeg".into(),
            figures(&runs, Who::Ffmpeg, Who::Ffmpeg.baseline()),
        ),
        ("floor".into(), figures(&runs, Who::Floor, None)),
    ];
    println!(
        "\n== push results (medians over {rounds} round(s); ratio = figure / rtspannounce's)\n"
    );
    println!(
        "{:<16} {:>9} {:>7} {:>9} {:>7} {:>8} {:>7} {:>8} {:>7} {:>9} {:>6} {:>5} {:>8}",
        "contender",
        "rt s/GB",
        "ratio",
        "max Mb/s",
        "ratio",
        "kpkt/s",
        "ratio",
        "hs ms",
        "ratio",
        "ann->rec",
        "RTs",
        "lost",
        "runs ok"
    );
    for (name, f) in &rows {
        println!(
            "{:<16} {:>9} {:>7} {:>9} {:>7} {:>8} {:>7} {:>8} {:>7} {:>9} {:>6} {:>5} {:>8}",
            name,
            fmt(f.cpu_gb, 2),
            ratio(f.cpu_gb, ann.cpu_gb),
            fmt(f.mbit, 0),
            ratio(f.mbit, ann.mbit),
            fmt(f.kpps, 1),
            ratio(f.kpps, ann.kpps),
            fmt(f.hs_ms, 2),
            ratio(f.hs_ms, ann.hs_ms),
            fmt(f.ann_ms, 2),
            fmt(f.round_trips, 0),
            f.lost,
            format!("{}/{}", f.ok_runs, f.runs)
        );
    }
    for (name, f) in &rows {
        if f.eos_hangs > 0 {
            println!(
                "note: {name} never posted EOS (nor sent TEARDOWN) after its input ended in {} of {} \
                 runs; the data had been delivered, the child stopped it {} s later",
                f.eos_hangs,
                f.runs,
                child::EOS_GRACE.as_secs()
            );
        }
    }
    spread(&runs);
    latency_table(&runs);
    let own = figures(&runs, Who::AnnounceRtp, Some(Who::BasePay));
    println!(
        "\nthe sink alone (rtspannounce-rtp minus base-pay, i.e. without GStreamer's payloaders): {} s/GB",
        fmt(own.cpu_gb, 2)
    );
    targets(&runs, &own, &ann, &rows);
    println!("gross CPU s/GB in real time (nothing subtracted):");
    for (name, f) in &rows {
        println!(
            "  {:<16} {:>7} s/GB   delivered {} MB   requests up to RECORD: {}{}",
            name,
            fmt(f.gross_cpu_gb, 2),
            fmt(f.rt_mb, 1),
            f.methods,
            if f.backwards > 0 {
                format!("   ({} packets went backwards)", f.backwards)
            } else {
                String::new()
            }
        );
    }
    println!("baselines (CPU s per run, median; wall s of the max runs):");
    for b in [Who::BasePay, Who::BaseParse, Who::BaseFfmpeg] {
        let c = |m: Mode| {
            median(
                runs.iter()
                    .filter(|r| r.who == b && r.mode == m && r.ok())
                    .map(|r| r.exit.cpu_s)
                    .collect(),
            )
        };
        let w = median(
            runs.iter()
                .filter(|r| r.who == b && r.mode == Mode::Max && r.ok())
                .map(|r| r.exit.wall.as_secs_f64())
                .collect(),
        );
        println!(
            "  {:<12} rt cpu {} s   max cpu {} s   max wall {} s",
            b.name(),
            fmt(c(Mode::RealTime), 2),
            fmt(c(Mode::Max), 2),
            fmt(w, 2)
        );
    }

    for (name, f) in &rows {
        if f.lost > 0 {
            failures.push(format!("{name} lost {} packets", f.lost));
        }
    }
    for r in runs
        .iter()
        .filter(|r| matches!(r.who, Who::Announce | Who::AnnounceRtp))
    {
        if !r.ok() {
            failures.push(format!(
                "{} round {} {}: {} with {} packets delivered",
                r.who.name(),
                r.round,
                r.mode.name(),
                r.exit.describe(),
                r.rtp_packets()
            ));
        }
    }
    for r in runs.iter().filter(|r| r.who.is_baseline() && !r.ok()) {
        failures.push(format!(
            "baseline {} round {} {}: {}",
            r.who.name(),
            r.round,
            r.mode.name(),
            r.exit.describe()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scale runs

const SCALE_KINDS: [&str; 5] = [
    "base-raw",
    "base-pay",
    "floor",
    "rtspannounce",
    "rtspclientsink",
];

#[derive(Clone, Debug, Default)]
struct ScaleRun {
    kind: String,
    asked: usize,
    n: usize,
    streaming: usize,
    cpu_s: f64,
    wall_s: f64,
    rss_kib: f64,
    /// RSS after malloc_trim(0): live memory, without what the allocator kept.
    rss_trim_kib: f64,
    threads: f64,
    errors: usize,
    window_mbit: f64,
    lost: u64,
    sessions: usize,
    teardowns: usize,
    /// From the child's `ready` to every session streaming, and the slowest handshake (connect
    /// to RECORD's 200) at the receiver: how long the sources' first frames waited.
    ramp_s: f64,
    hs_max_ms: f64,
    note: String,
    ok: bool,
}

fn kv(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The GStreamer-CRITICALs a child wrote to its log: any is a bug to chase, not a figure.
fn criticals(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.matches("GStreamer-CRITICAL").count())
        .unwrap_or(0)
}

fn scale_once(
    rx: &Receiver,
    kind: &str,
    asked: usize,
    n: usize,
    args: &Args,
    round: usize,
) -> Result<ScaleRun> {
    let tag = format!("r{round}-scale-{asked}-{kind}-{n}");
    let prefix = format!("/scale/r{round}/{asked}/{kind}/{n}");
    let window = args.window;
    let quick = args.quick;
    let log = log_path(&tag);
    std::fs::create_dir_all(log.parent().unwrap())?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "--scale-child",
        kind,
        &n.to_string(),
        &rx.url(&prefix),
        &window.to_string(),
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log)?);
    let mut p = Proc::spawn(&mut cmd)?;
    let stdout = p.child.stdout.take().unwrap();
    let mut stdin = p.child.stdin.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut run = ScaleRun {
        kind: kind.into(),
        asked,
        n,
        ..Default::default()
    };
    let wait_line = |prefix: &str, t: Duration| -> Option<String> {
        let deadline = Instant::now() + t;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    };
    let result = (|| -> Result<()> {
        wait_line("ready", Duration::from_secs(60 + n as u64 / 10))
            .ok_or_else(|| anyhow!("child never became ready"))?;
        let t0 = Instant::now();
        let baseline = kind.starts_with("base");
        if !baseline {
            let limit = Duration::from_secs(30 + n as u64 / 20);
            while rx.streaming(&prefix) < n && t0.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        run.streaming = if baseline { n } else { rx.streaming(&prefix) };
        run.ramp_s = if baseline {
            0.0
        } else {
            t0.elapsed().as_secs_f64()
        };
        if run.streaming < n {
            run.note += &format!(
                "only {}/{n} streaming after {:.0} s; ",
                run.streaming,
                t0.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_secs_f64(if quick { 0.5 } else { 3.0 }));
        let (b0, _) = rx.rtp_bytes(&prefix);
        let w0 = Instant::now();
        stdin.write_all(b"start\n")?;
        stdin.flush()?;
        let res = wait_line("result", Duration::from_secs_f64(window + 60.0))
            .ok_or_else(|| anyhow!("child gave no result"))?;
        let (b1, _) = rx.rtp_bytes(&prefix);
        let w = w0.elapsed().as_secs_f64();
        run.window_mbit = (b1 - b0) as f64 * 8.0 / w / 1e6;
        run.cpu_s = kv(&res, "cpu_s").unwrap_or(f64::NAN);
        run.wall_s = kv(&res, "wall_s").unwrap_or(f64::NAN);
        run.rss_kib = kv(&res, "rss_kib").unwrap_or(f64::NAN);
        run.rss_trim_kib = kv(&res, "rss_trim_kib").unwrap_or(f64::NAN);
        run.threads = kv(&res, "threads").unwrap_or(f64::NAN);
        run.errors = kv(&res, "errors").unwrap_or(0.0) as usize;
        Ok(())
    })();
    drop(stdin);
    let exit = p.wait(Duration::from_secs(120 + n as u64 / 10))?;
    drop(p);
    let _ = reader.join();
    rx.wait_closed(&prefix, Duration::from_secs(5));
    let sessions = rx.sessions(&prefix);
    rx.forget(&prefix);
    run.sessions = sessions.len();
    run.lost = sessions.iter().map(|s| s.lost()).sum();
    run.teardowns = sessions.iter().filter(|s| s.teardown).count();
    run.hs_max_ms = sessions
        .iter()
        .filter_map(|s| s.handshake())
        .map(|d| d.as_secs_f64() * 1e3)
        .fold(0.0, f64::max);
    if let Err(e) = &result {
        run.note += &format!("{e:#}; ");
    }
    if !exit.success() {
        run.note += &format!("child {}; ", exit.describe());
    }
    if run.errors > 0 {
        run.note += &format!("{} pipelines posted errors; ", run.errors);
    }
    let crit = criticals(&log);
    if crit > 0 {
        run.note += &format!("{crit} GStreamer-CRITICALs in {}; ", log.display());
    }
    run.ok = result.is_ok() && run.errors == 0 && run.streaming == n && crit == 0;
    println!(
        "[r{round} scale {asked:>4}] {kind:<14} n={n:<4} streaming {:<4} cpu {:>6.2} s / {:.1} s  rss {:>8.1} MiB  threads {:>5}  \
         window {:>7.1} Mbit/s  lost {}  sessions {} (TEARDOWN {})  all streaming after {:.1} s, \
         slowest handshake {:.0} ms  {}",
        run.streaming,
        run.cpu_s,
        run.wall_s,
        run.rss_kib / 1024.0,
        run.threads,
        run.window_mbit,
        run.lost,
        run.sessions,
        run.teardowns,
        run.ramp_s,
        run.hs_max_ms,
        run.note
    );
    if result.is_err() || !exit.success() {
        println!("    log {}:\n{}", log.display(), indent(&tail(&log, 8)));
    }
    Ok(run)
}

/// Medians of the runs of one (contender, session count); losses summed, notes kept.
fn aggregate(runs: &[&ScaleRun]) -> ScaleRun {
    let med = |f: &dyn Fn(&ScaleRun) -> f64| {
        median(runs.iter().map(|r| f(r)).collect()).unwrap_or(f64::NAN)
    };
    let mut notes: Vec<String> = Vec::new();
    for r in runs {
        for n in r.note.split("; ").filter(|n| !n.is_empty()) {
            if !notes.iter().any(|x| x == n) {
                notes.push(n.to_string());
            }
        }
    }
    ScaleRun {
        kind: runs[0].kind.clone(),
        asked: runs[0].asked,
        n: runs[0].n,
        streaming: runs.iter().map(|r| r.streaming).min().unwrap_or(0),
        cpu_s: med(&|r| r.cpu_s / r.wall_s),
        wall_s: 1.0,
        rss_kib: med(&|r| r.rss_kib),
        rss_trim_kib: med(&|r| r.rss_trim_kib),
        threads: med(&|r| r.threads),
        errors: runs.iter().map(|r| r.errors).sum(),
        window_mbit: med(&|r| r.window_mbit),
        lost: runs.iter().map(|r| r.lost).sum(),
        sessions: runs.iter().map(|r| r.sessions).max().unwrap_or(0),
        teardowns: runs.iter().map(|r| r.teardowns).min().unwrap_or(0),
        ramp_s: med(&|r| r.ramp_s),
        hs_max_ms: med(&|r| r.hs_max_ms),
        note: notes.join("; "),
        ok: runs.iter().all(|r| r.ok),
    }
}

fn scale_bench(rx: &Receiver, args: &Args, failures: &mut Vec<String>) -> Result<()> {
    println!(
        "\n== scale: N live sessions in one process, 500 kbit/s MJPEG each (a fresh copy of one pre-encoded \
         320x240 JPEG per frame through a live appsrc at 10 frames/s), {} round(s), {:.0} s window",
        args.scale_rounds, args.window
    );
    let mut raw_runs: Vec<ScaleRun> = Vec::new();
    for round in 1..=args.scale_rounds {
        for &n in &args.scale {
            let capped = n.min(args.clientsink_max);
            let mut plan: Vec<(&str, usize)> = SCALE_KINDS
                .iter()
                .map(|&k| (k, if k == "rtspclientsink" { capped } else { n }))
                .collect();
            if capped < n {
                // rtspclientsink's baseline at its own session count
                plan.push(("base-raw", capped));
            }
            for (kind, eff) in plan {
                let mut r = scale_once(rx, kind, n, eff, args, round)?;
                if kind == "rtspclientsink" && eff < n {
                    r.note += &format!("capped at {eff} sessions (--clientsink-max); ");
                }
                raw_runs.push(r);
            }
        }
    }
    let mut all: BTreeMap<usize, Vec<ScaleRun>> = BTreeMap::new();
    for &n in &args.scale {
        let mut keys: Vec<(String, usize)> = Vec::new();
        for r in raw_runs.iter().filter(|r| r.asked == n) {
            if !keys.contains(&(r.kind.clone(), r.n)) {
                keys.push((r.kind.clone(), r.n));
            }
        }
        for (k, m) in keys {
            let runs: Vec<&ScaleRun> = raw_runs
                .iter()
                .filter(|r| r.asked == n && r.kind == k && r.n == m)
                .collect();
            all.entry(n).or_default().push(aggregate(&runs));
        }
    }
    println!(
        "\n== scale results (medians over {} round(s)); per-session figures over the baseline named \
         in `over`\n(base-raw = appsrc ! fakesink; base-pay = appsrc ! rtpjpegpay ! fakesink; floor = rtpjpegpay's \
         packets written by one thread over N bare sessions, one write per frame: the kernel's cost)\n",
        args.scale_rounds
    );
    println!(
        "{:>5} {:<27} {:>5} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>9} {:>5}",
        "N",
        "contender",
        "n",
        "RSS MiB",
        "threads",
        "CPU %",
        "over",
        "KiB/sess",
        "trimmed",
        "+threads",
        "+CPU %",
        "ratio",
        "Mbit/s",
        "lost"
    );
    for (&n, runs) in &all {
        let get = |k: &str, m: usize| runs.iter().find(|r| r.kind == k && r.n == m);
        let cpu_pct = |r: &ScaleRun| r.cpu_s / r.wall_s * 100.0;
        let row = |label: &str, r: &ScaleRun, base: Option<&ScaleRun>, cmp: Option<f64>| {
            let (over, kib, trim, thr, cpu) = match base {
                Some(b) => (
                    b.kind.clone(),
                    format!("{:.0}", (r.rss_kib - b.rss_kib) / r.n as f64),
                    format!("{:.0}", (r.rss_trim_kib - b.rss_trim_kib) / r.n as f64),
                    format!("{:+.0}", r.threads - b.threads),
                    Some(cpu_pct(r) - cpu_pct(b)),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into(), None),
            };
            println!(
                "{:>5} {:<27} {:>5} {:>9.1} {:>8.0} {:>7.1} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>9.1} {:>5}",
                n,
                label,
                r.n,
                r.rss_kib / 1024.0,
                r.threads,
                cpu_pct(r),
                over,
                kib,
                trim,
                thr,
                fmt(cpu, 1),
                match (cpu, cmp) {
                    (Some(c), Some(a)) if a > 0.0 => format!("{:.2}x", c / a),
                    _ => "-".into(),
                },
                r.window_mbit,
                r.lost
            );
            cpu
        };
        let (raw, pay) = (get("base-raw", n), get("base-pay", n));
        for r in runs.iter().filter(|r| r.kind.starts_with("base")) {
            row(&r.kind, r, None, None);
        }
        if let Some(f) = get("floor", n) {
            row("floor (bare writer)", f, None, None);
        }
        let mut ann_cpu = None;
        if let Some(a) = get("rtspannounce", n) {
            // per session, to compare with a capped rtspclientsink run
            ann_cpu = row("rtspannounce (+rtpjpegpay)", a, raw, None).map(|c| c / a.n as f64);
            row("rtspannounce (element only)", a, pay, None);
        }
        if let Some(c) = get("rtspclientsink", n.min(args.clientsink_max)) {
            let per = ann_cpu.map(|x| x * c.n as f64);
            row("rtspclientsink", c, get("base-raw", c.n), per);
        }
        for r in runs {
            let expected = r.n as f64 * 0.5;
            let mut note = r.note.clone();
            if !r.kind.starts_with("base") && r.window_mbit < 0.95 * expected {
                note = format!(
                    "falls behind: delivered {:.1} of {:.1} Mbit/s; {note}",
                    r.window_mbit, expected
                );
            }
            if !note.is_empty() {
                println!(
                    "      {} n={}: {}",
                    r.kind,
                    r.n,
                    note.trim_end_matches("; ")
                );
            }
        }
    }
    println!(
        "(ratio: rtspclientsink's +CPU over rtspannounce's (+rtpjpegpay) for the same number of \
         sessions)"
    );
    for runs in all.values() {
        for r in runs {
            if r.lost > 0 {
                failures.push(format!(
                    "scale {} N={}: {} packets lost",
                    r.kind, r.asked, r.lost
                ));
            }
            if (r.kind == "rtspannounce" || r.kind == "floor" || r.kind.starts_with("base"))
                && !r.ok
            {
                failures.push(format!("scale {} N={}: {}", r.kind, r.asked, r.note));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn serve() -> Result<bool> {
    let rx = Receiver::start()?;
    println!("drain receiver listening: {}", rx.url("/any/path"));
    let mut reported = std::collections::HashSet::new();
    loop {
        for s in rx.sessions("") {
            if s.closed.is_some() && reported.insert(s.id) {
                println!(
                    "session {} {}: {} RTP packets {:.1} MB in {:.3} s, lost {}, hs {:.2} ms ({}), teardown {}",
                    s.id,
                    s.path,
                    s.rtp_packets,
                    s.rtp_bytes as f64 / 1e6,
                    s.stream_span().map(|d| d.as_secs_f64()).unwrap_or(0.0),
                    s.lost(),
                    s.handshake().map(|d| d.as_secs_f64() * 1e3).unwrap_or(f64::NAN),
                    s.timeline(),
                    s.teardown
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let version = |prog: &str, arg: &str| {
        Command::new(prog)
            .arg(arg)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| format!("{prog}: not found"))
    };
    let code = std::env::var("BENCH_COMMIT").ok().or_else(|| {
        let o = Command::new("git")
            .args([
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "describe",
                "--always",
                "--dirty",
            ])
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    format!(
        "code: {}\n{cores} cores, {cpu}, Linux {kernel}\n{}; {}",
        code.unwrap_or_else(|| "unknown commit".into()),
        version("gst-launch-1.0", "--version").replace("gst-launch-1.0 version", "GStreamer"),
        version("ffmpeg", "-version")
    )
}

/// Fails early, naming the Debian packages, when a tool or element the bench needs is missing.
fn check_requirements() -> Result<()> {
    gst::init()?;
    let needed = [
        ("x264enc", "gstreamer1.0-plugins-ugly"),
        ("avenc_aac", "gstreamer1.0-libav"),
        ("rtspclientsink", "gstreamer1.0-rtsp"),
        ("h264parse", "gstreamer1.0-plugins-bad"),
        ("qtdemux", "gstreamer1.0-plugins-good"),
        ("mp4mux", "gstreamer1.0-plugins-good"),
        ("aacparse", "gstreamer1.0-plugins-good"),
        ("rtph264pay", "gstreamer1.0-plugins-good"),
        ("rtpmp4gpay", "gstreamer1.0-plugins-good"),
        ("rtpjpegpay", "gstreamer1.0-plugins-good"),
        ("jpegenc", "gstreamer1.0-plugins-good"),
        ("videotestsrc", "gstreamer1.0-plugins-base"),
        ("appsrc", "gstreamer1.0-plugins-base"),
    ];
    let mut missing: Vec<String> = needed
        .iter()
        .filter(|(e, _)| gst::ElementFactory::find(e).is_none())
        .map(|(e, p)| format!("GStreamer element {e} ({p})"))
        .collect();
    for (prog, arg, pkg) in [
        ("ffmpeg", "-version", "ffmpeg"),
        ("gst-launch-1.0", "--version", "gstreamer1.0-tools"),
    ] {
        let ok = Command::new(prog)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            missing.push(format!("{prog} ({pkg})"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "missing: {} (bash scripts/install-deps.sh installs them)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn run(args: &Args) -> Result<bool> {
    if args.serve {
        return serve();
    }
    check_requirements()?;
    let t0 = Instant::now();
    println!(
        "rtspannounce bench ({})",
        if args.quick { "quick" } else { "full" }
    );
    println!("{}", machine());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    let (busy0, ours0) = (proc::machine_busy_s(), proc::self_and_children_cpu_s());
    let rx = Receiver::start()?;
    println!("drain receiver on 127.0.0.1:{}", rx.port);
    let mut failures = Vec::new();
    if args.push {
        let input = make_input(args.quick)?;
        println!(
            "input: {} ({}); unsynced runs: the same {} times, {}",
            input.path.display(),
            input.desc,
            input.repeat,
            input.max_path.display()
        );
        push_bench(&rx, &input, args.rounds, &mut failures)?;
    }
    if !args.scale.is_empty() {
        scale_bench(&rx, args, &mut failures)?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let others = (proc::machine_busy_s() - busy0) - (proc::self_and_children_cpu_s() - ours0);
    println!(
        "\nbench took {wall:.0} s; other processes on the machine used {:.0}% of one core on \
         average meanwhile{}",
        (others / wall * 100.0).max(0.0),
        if others / wall > 0.1 {
            " (figures are disturbed: run again on an idle machine)"
        } else {
            ""
        }
    );
    for f in &failures {
        eprintln!("FAIL: {f}");
    }
    Ok(failures.is_empty())
}
