//! Real peers run as child processes (ffmpeg's RTSP listener) and what we learn of their output
//! (ffprobe). Every child is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port the OS picked, released for a child that cannot take port 0 itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True once some socket listens on 127.0.0.1:`port` (read from /proc, so no connection is
/// made: ffmpeg's listener accepts exactly one).
pub fn is_listening(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .map(|t| {
                t.lines().skip(1).any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
                })
            })
            .unwrap_or(false)
    })
}

pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Waits for the child to exit by itself, killing it at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.0.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.0 = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.0 = None;
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `ffmpeg -rtsp_flags listen` recording what is pushed to it into `out` with `-c copy`.
pub struct FfmpegListener {
    pub child: ChildGuard,
    pub port: u16,
    pub path: String,
    pub out: PathBuf,
    pub log: PathBuf,
}

impl FfmpegListener {
    pub fn start(
        dir: &Path,
        path: &str,
        out_name: &str,
        extra_input_args: &[&str],
    ) -> FfmpegListener {
        let port = free_port();
        let out = dir.join(out_name);
        let log = dir.join(format!("{out_name}.ffmpeg.log"));
        let url = format!("rtsp://127.0.0.1:{port}{path}");
        let mut cmd = Command::new("ffmpeg");
        cmd.args([
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "info",
            "-rtsp_flags",
            "listen",
        ])
        .args(extra_input_args)
        .args(["-timeout", "30", "-i", &url, "-c", "copy", "-y"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd
            .spawn()
            .expect("ffmpeg must be installed (apt-get install ffmpeg)");
        let mut guard = ChildGuard(Some(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_listening(port) {
            if let Some(c) = guard.0.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "ffmpeg exited ({st}) before listening: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
            assert!(Instant::now() < deadline, "ffmpeg did not listen on {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        FfmpegListener {
            child: guard,
            port,
            path: path.to_string(),
            out,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}{}", self.port, self.path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbedStream {
    pub codec: String,
    pub frames: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub sample_rate: Option<u32>,
    pub channels: Option<u32>,
}

/// Decodes the whole file with ffprobe -count_frames and reports every stream.
pub fn ffprobe(path: &Path) -> Vec<ProbedStream> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .arg("stream=codec_name,nb_read_frames,width,height,sample_rate,channels")
        .args(["-of", "compact=p=0:nk=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let get = |k: &str| {
                l.split('|')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .map(str::to_string)
            };
            ProbedStream {
                codec: get("codec_name").unwrap_or_default(),
                frames: get("nb_read_frames")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                width: get("width").and_then(|v| v.parse().ok()),
                height: get("height").and_then(|v| v.parse().ok()),
                sample_rate: get("sample_rate").and_then(|v| v.parse().ok()),
                channels: get("channels").and_then(|v| v.parse().ok()),
            }
        })
        .collect()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtspannounce-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What ffprobe decodes, frame by frame, per stream: (decoded frames, decoded audio samples
/// per channel). Decodes the whole file like `-count_frames`, and also sums `nb_samples`, which
/// is the only figure comparable across audio codecs (PCM "frames" are whatever the packets were).
pub fn ffprobe_decoded(path: &Path) -> Vec<(u64, u64)> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "frame=stream_index,nb_samples",
        ])
        .args(["-of", "csv"])
        .arg(path)
        .output()
        .expect("ffprobe");
    let mut per_stream: Vec<(u64, u64)> = Vec::new();
    // One `frame,INDEX,SAMPLES` line per frame (video frames leave SAMPLES empty; side data
    // may follow it on the same line or on lines of their own, which are skipped).
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(rest) = line.strip_prefix("frame,") else {
            continue;
        };
        let mut cols = rest.split(',').map(str::trim);
        let Some(Ok(idx)) = cols.next().map(str::parse::<usize>) else {
            continue;
        };
        let samples = cols.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if per_stream.len() <= idx {
            per_stream.resize(idx + 1, (0, 0));
        }
        per_stream[idx].0 += 1;
        per_stream[idx].1 += samples;
    }
    per_stream
}
