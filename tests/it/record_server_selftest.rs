//! Self-test of the in-process RECORD server (`tests/common/record_server.rs`) with GStreamer's
//! own pusher, `rtspclientsink`, run as a `gst-launch-1.0` child process: proves the server
//! counts what really arrived and writes playable files, independently of `rtspannounce`.
//!
//! Note on `rtspclientsink`: it writes the SDP's `m=` lines in the *reverse* order of its
//! request pads (the last requested pad comes first). The server expects video as the first
//! `m=` line, so these pipelines link audio to `sink_0` and video to `sink_1`.

use crate::record_server;

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{mpsc, Mutex, MutexGuard},
    thread,
    time::Duration,
};

use crate::record_server::{RecordServer, RecordServerConfig, Tracks};

/// How long a pusher may take beyond the duration of the media it sends in real time.
const PUSHER_GRACE: Duration = Duration::from_secs(10);
/// After the pusher is gone, the session ends within the time EOS takes through the media.
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

/// rtspclientsink hangs at EOS more often on a loaded machine: run one pusher at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn work_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("record_server_selftest")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `gst-launch-1.0 -e` child whose exit is awaited on a channel (no polling); killed if
/// still running when dropped.
struct Pusher {
    pid: u32,
    exit: mpsc::Receiver<std::io::Result<ExitStatus>>,
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl Pusher {
    fn spawn(pipeline: &str, log: PathBuf) -> Pusher {
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut child = Command::new("gst-launch-1.0")
            .arg("-e")
            .args(pipeline.split_whitespace())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("gst-launch-1.0 (Debian gstreamer1.0-tools) must be installed");
        let pid = child.id();
        let (tx, exit) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        Pusher {
            pid,
            exit,
            status: None,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        // The child is not reaped until the waiter thread's wait() returns, so the pid is
        // still ours here.
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        if let Ok(Ok(status)) = self.exit.recv_timeout(Duration::from_secs(10)) {
            self.status = Some(status);
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.kill();
    }
}

const VIDEO_150: &str = "videotestsrc num-buffers=150 \
    ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
    ! x264enc tune=zerolatency bframes=0 ! video/x-h264,profile=constrained-baseline \
    ! h264parse";

/// 235 × 1024 samples at 48 kHz stereo, about 5 s.
const AUDIO_235: &str = "audiotestsrc num-buffers=235 samplesperbuffer=1024 \
    ! audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse";

/// Runs `pipeline` (with `URL` replaced by the server's URL), which sends `media` seconds in
/// real time, until it exits, or kills it `PUSHER_GRACE` after that.
///
/// rtspclientsink (1.22) is not fully reliable at the end of a stream, so its exit status is
/// only logged: in a few percent of runs under load it never posts EOS and hangs (killing it
/// is then a client disconnect, which also ends the session; 1 run in 10 or so with two
/// streams, while the same pipeline never hung against an ffmpeg listener here), or it races
/// its own PAUSE and
/// TEARDOWN and fails with "Could not send message. (Received end-of-file)" after the server
/// answered TEARDOWN and closed the connection. What the server received is what we check.
fn push(server: &RecordServer, pipeline: &str, dir: &Path, media: Duration) {
    let pipeline = pipeline.replace("URL", &server.url());
    let mut pusher = Pusher::spawn(&pipeline, dir.join("gst-launch.log"));
    let timeout = media + PUSHER_GRACE;
    match pusher.exit.recv_timeout(timeout) {
        Ok(Ok(status)) => {
            pusher.status = Some(status);
            if !status.success() {
                eprintln!(
                    "note: gst-launch-1.0 exited with {status}:\n{}",
                    pusher.log()
                );
            }
        }
        Ok(Err(e)) => panic!("waiting for gst-launch-1.0: {e}"),
        Err(_) => {
            pusher.kill();
            eprintln!(
                "note: gst-launch-1.0 still running after {timeout:?}, killed:\n{}",
                pusher.log()
            );
        }
    }
}

/// Runs a pusher against `server` and returns the session's report.
fn push_and_wait(
    server: &RecordServer,
    pipeline: &str,
    dir: &Path,
    media: Duration,
) -> record_server::Report {
    push(server, pipeline, dir, media);
    let report = server
        .wait_finished(SESSION_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{report}");
    report
}

/// `ffprobe` of one stream: (codec_name, packets, decoded frames).
fn ffprobe(file: &Path, stream: &str) -> (String, u64, u64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-count_packets"])
        .args(["-select_streams", stream])
        .args([
            "-show_entries",
            "stream=codec_name,nb_read_packets,nb_read_frames",
        ])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(file)
        .output()
        .expect("ffprobe (Debian ffmpeg) must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ffprobe {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("ffprobe gave no {name} for {stream}: {text}"))
            .to_owned()
    };
    (
        field("codec_name"),
        field("nb_read_packets").parse().unwrap(),
        field("nb_read_frames").parse().unwrap(),
    )
}

#[test]
fn h264_to_mp4_counts_every_frame() {
    let _serial = serial();
    let dir = work_dir("h264_to_mp4");
    let out = dir.join("out.mp4");
    let server = RecordServer::start(
        RecordServerConfig::new("/live/cam1", Tracks::H264).with_output(out.clone()),
    )
    .unwrap();
    assert!(server.url().starts_with("rtsp://127.0.0.1:"));
    assert!(server.url().ends_with("/live/cam1"));
    assert_ne!(server.port(), 0);

    let report = push_and_wait(
        &server,
        &format!("{VIDEO_150} ! rtspclientsink location=URL protocols=tcp"),
        &dir,
        Duration::from_secs(5),
    );
    assert!(report.finished);
    assert_eq!(report.session, 1);
    assert_eq!(report.sessions, 1);
    assert!(report.errors.is_empty(), "{report}");
    let v = &report.tracks[0];
    assert_eq!(v.codec, "H.264");
    assert_eq!((v.width, v.height), (Some(320), Some(240)));
    assert_eq!(v.parsed, 150, "{report}");
    assert_eq!(v.frames, 150, "{report}");
    assert!(v.eos, "{report}");
    let d = report.duration.unwrap();
    assert!(
        d > gst::ClockTime::from_mseconds(4500) && d < gst::ClockTime::from_mseconds(5500),
        "{report}"
    );
    for m in ["ANNOUNCE", "SETUP", "RECORD"] {
        assert!(report.requests.iter().any(|r| r == m), "{report}");
    }
    assert_eq!(report.output.as_deref(), Some(out.as_path()));

    assert_eq!(ffprobe(&out, "v:0"), ("h264".into(), 150, 150));
    server.stop();
}

#[test]
fn h264_aac_to_mp4_counts_both_tracks() {
    let _serial = serial();
    let dir = work_dir("h264_aac_to_mp4");
    let out = dir.join("out.mp4");
    let server =
        RecordServer::start(RecordServerConfig::new("/live/av", Tracks::H264Aac).with_output(&out))
            .unwrap();

    let report = push_and_wait(
        &server,
        &format!(
            "rtspclientsink name=s location=URL protocols=tcp \
             {AUDIO_235} ! s.sink_0 {VIDEO_150} ! s.sink_1"
        ),
        &dir,
        Duration::from_secs(5),
    );
    assert!(report.errors.is_empty(), "{report}");
    let (v, a) = (&report.tracks[0], &report.tracks[1]);
    assert_eq!(v.codec, "H.264");
    assert_eq!(v.frames, 150, "{report}");
    assert_eq!(a.codec, "AAC");
    assert_eq!((a.rate, a.channels), (Some(48000), Some(2)));
    // avenc_aac adds one priming AU (236 for 235 input buffers); the decoder trims it.
    assert!(a.parsed >= 235, "{report}");
    assert!(a.frames >= 234, "{report}");
    assert!(a.samples >= 234 * 1024, "{report}");
    assert!(v.eos && a.eos, "{report}");
    assert_eq!(report.video_frames(), 150);
    // Timestamps follow the RTP clock: 150 frames at 30/s, 235 × 1024 samples at 48 kHz.
    let ms = |t: Option<gst::ClockTime>| t.unwrap().mseconds() as i64;
    assert!((ms(v.duration()) - 5000).abs() <= 40, "{report}");
    assert!((ms(a.duration()) - 5013).abs() <= 40, "{report}");
    assert!((ms(v.first_pts) - ms(a.first_pts)).abs() <= 100, "{report}");

    assert_eq!(ffprobe(&out, "v:0"), ("h264".into(), 150, 150));
    let (codec, packets, _) = ffprobe(&out, "a:0");
    assert_eq!(codec, "aac");
    assert_eq!(packets, a.parsed, "every parsed AU is in the file");
}

#[test]
fn sessions_are_reported_in_turn_without_output() {
    let _serial = serial();
    let dir = work_dir("two_sessions");
    let server = RecordServer::start(RecordServerConfig::new("/cam", Tracks::H264)).unwrap();
    let short = "videotestsrc num-buffers=30 \
        ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 \
        ! x264enc tune=zerolatency bframes=0 ! video/x-h264,profile=constrained-baseline \
        ! h264parse ! rtspclientsink location=URL protocols=tcp";
    for n in 1..=2u32 {
        let report = push_and_wait(&server, short, &dir, Duration::from_secs(1));
        assert_eq!(report.session, n);
        assert_eq!(report.sessions, n);
        assert_eq!(report.output, None);
        assert_eq!(report.tracks[0].frames, 30, "{report}");
        assert_eq!(
            (report.tracks[0].width, report.tracks[0].height),
            (Some(160), Some(120))
        );
    }
    assert_eq!(server.stats().session, 2);
    assert!(server.wait_finished(Duration::from_millis(50)).is_err());
}

#[test]
fn tracks_in_the_wrong_order_are_named_in_the_error() {
    let _serial = serial();
    let dir = work_dir("wrong_order");
    let server = RecordServer::start(RecordServerConfig::new("/av", Tracks::H264Aac)).unwrap();
    // Video on sink_0, audio on sink_1: rtspclientsink announces audio first.
    let pipeline = "rtspclientsink name=s location=URL protocols=tcp \
         videotestsrc num-buffers=30 ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 \
         ! x264enc tune=zerolatency bframes=0 ! video/x-h264,profile=constrained-baseline \
         ! h264parse ! s.sink_0 \
         audiotestsrc num-buffers=47 samplesperbuffer=1024 ! avenc_aac ! aacparse ! s.sink_1";
    push(&server, pipeline, &dir, Duration::from_secs(1));
    let err = server
        .wait_finished(SESSION_TIMEOUT)
        .expect_err("the session must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("m= lines in the expected order"), "{msg}");
}

#[test]
fn single_tracks_of_other_codecs_are_decoded() {
    use record_server::TrackKind;
    let _serial = serial();
    let dir = work_dir("single_tracks");
    // rtspclientsink picks the payloader itself (rtpvp8pay, rtppcmupay). Without the
    // capsfilter, vp8enc fails "Invalid vpx profile" on what rtspclientsink (1.22) answers to
    // its downstream caps query.
    let cases = [
        (
            TrackKind::Vp8,
            "videotestsrc num-buffers=30 \
             ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 \
             ! vp8enc deadline=1 ! video/x-vp8,profile=(string)0 \
             ! rtspclientsink location=URL protocols=tcp",
        ),
        (
            TrackKind::Pcmu,
            "audiotestsrc num-buffers=50 samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 \
             ! mulawenc ! rtspclientsink location=URL protocols=tcp",
        ),
    ];
    for (kind, pipeline) in cases {
        let server =
            RecordServer::start(RecordServerConfig::new("/one", Tracks::Single(kind))).unwrap();
        let report = push_and_wait(&server, pipeline, &dir, Duration::from_secs(1));
        let t = &report.tracks[0];
        assert_eq!(t.codec, kind.name(), "{report}");
        if kind.is_video() {
            assert!(t.is_video(), "{report}");
            assert_eq!(t.frames, 30, "{report}");
            assert_eq!((t.width, t.height), (Some(160), Some(120)), "{report}");
        } else {
            assert!(!t.is_video(), "{report}");
            assert_eq!(t.samples, 8000, "{report}");
            assert_eq!((t.rate, t.channels), (Some(8000), Some(1)), "{report}");
        }
    }
}

#[test]
fn track_names_parse_and_missing_elements_are_named() {
    use record_server::TrackKind;
    assert_eq!(Tracks::parse("VP8"), Some(Tracks::Single(TrackKind::Vp8)));
    assert_eq!(Tracks::parse("h264"), Some(Tracks::H264));
    assert_eq!(Tracks::parse("theora"), None);
    for k in TrackKind::ALL {
        assert_eq!(TrackKind::parse(k.id()), Some(*k));
        assert!(!k.encoding_names().is_empty());
    }
    gst::init().unwrap();
    // No GStreamer 1.22 plugin has rtpav1depay (gst-plugins-rs is not in Debian 12); where it
    // exists, the server starts instead.
    if gst::ElementFactory::find("rtpav1depay").is_none() {
        let err = RecordServer::start(RecordServerConfig::new(
            "/av1",
            Tracks::Single(TrackKind::Av1),
        ))
        .err()
        .expect("no AV1 depayloader: the server cannot start");
        assert!(format!("{err:#}").contains("rtpav1depay"), "{err:#}");
    }
}
