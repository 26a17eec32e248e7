//! The embedding examples run against the bundled record server (gst-rtsp-server in RECORD
//! mode, in this process), and every frame they push is counted after the server's decoder:
//! - `examples/embed.rs`, the Rust example (plugin registered in-process);
//! - `examples/push.py`, the Python (PyGObject) example, loading the built plugin from
//!   `GST_PLUGIN_PATH`;
//! - `examples/push.c`, the C snippet, compiled here with `cc` and pkg-config.
//!
//! Each example pushes `videotestsrc num-buffers=90` as H.264, so the server must decode 90
//! frames. The example binary and the cdylib are the ones `cargo test --all-targets` (what CI
//! runs) built next to this test; a `cargo build --lib --example embed` of the same profile
//! runs first so that `cargo test --test it examples::` alone works too (a no-op when up to date).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::record_server::{RecordServer, RecordServerConfig, Report, Tracks};

/// `num-buffers` in every example.
const FRAMES: u64 = 90;
/// One example run: 3 s of live video, plus start-up (plugin scan, debug build).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The server's session ends right after the pusher's TEARDOWN.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);
/// A build of the example (a no-op under `cargo test --all-targets`), or of the C snippet.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// `target/<profile>`: this test binary is `target/<profile>/deps/examples-HASH`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a directory");
    assert_eq!(
        deps.file_name().and_then(|n| n.to_str()),
        Some("deps"),
        "test binary {} is not in a cargo deps/ directory",
        exe.display()
    );
    deps.parent().expect("deps/ has a parent").to_path_buf()
}

/// What a finished child process printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A running child process. Killed (SIGKILL) and reaped if dropped before it exited, so a
/// failing assertion never leaves it behind.
struct Running {
    what: String,
    pid: u32,
    exited: mpsc::Receiver<std::io::Result<ExitStatus>>,
    reaped: bool,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Running {
    fn spawn(what: &str, cmd: &mut Command) -> Running {
        let mut child: Child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {what} ({cmd:?}): {e}"));
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let pid = child.id();
        let (tx, exited) = mpsc::channel();
        // The waiter thread owns the child; we signal it by pid until it was reaped.
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        Running {
            what: what.to_owned(),
            pid,
            exited,
            reaped: false,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    fn kill(&mut self) {
        if !self.reaped && self.exited.try_recv().is_ok() {
            self.reaped = true;
        }
        if !self.reaped {
            // SAFETY: plain syscall; the pid is ours and not reaped yet, so not reused.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
            let _ = self.exited.recv_timeout(Duration::from_secs(10));
            self.reaped = true;
        }
    }

    fn output(&mut self, status: ExitStatus) -> Output {
        Output {
            status,
            stdout: self.stdout.take().unwrap().join().unwrap_or_default(),
            stderr: self.stderr.take().unwrap().join().unwrap_or_default(),
        }
    }

    /// Waits for the exit, at most `timeout`; past it the child is killed and the test fails
    /// with what it printed.
    fn wait(mut self, timeout: Duration) -> Output {
        match self.exited.recv_timeout(timeout) {
            Ok(Ok(status)) => {
                self.reaped = true;
                self.output(status)
            }
            Ok(Err(e)) => {
                self.reaped = true;
                panic!("waiting for {} failed: {e}", self.what)
            }
            Err(_) => {
                self.kill();
                let what = self.what.clone();
                let stdout = self.stdout.take().unwrap().join().unwrap_or_default();
                let stderr = self.stderr.take().unwrap().join().unwrap_or_default();
                panic!(
                    "{what} did not finish within {timeout:?} (killed)\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
                )
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to its end (bounded) and returns what it printed.
fn run(what: &str, cmd: &mut Command, timeout: Duration) -> Output {
    Running::spawn(what, cmd).wait(timeout)
}

/// Builds the cdylib and the Rust example in the profile of this test binary, once per test
/// process. Under `cargo test --all-targets` both are already fresh and cargo does nothing.
fn built() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = built.as_ref() {
        return dir.clone();
    }
    let dir = profile_dir();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(MANIFEST_DIR)
        .args(["build", "--lib", "--example", "embed"])
        .env("CARGO_TARGET_DIR", dir.parent().expect("target dir"));
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
        None => panic!("bad profile directory {}", dir.display()),
    }
    let out = run("cargo build --lib --example embed", &mut cmd, BUILD_TIMEOUT);
    assert!(out.status.success(), "cargo build failed: {out}");
    for f in ["examples/embed", "libgstrtspannounce.so"] {
        assert!(
            dir.join(f).is_file(),
            "{} missing after cargo build",
            dir.join(f).display()
        );
    }
    *built = Some(dir.clone());
    dir
}

/// A directory under `target/tmp`, removed when dropped (also when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A registry of our own for a child that loads the plugin from `GST_PLUGIN_PATH`: the user's
/// default one may hold the plugin as blacklisted (a scan that raced a rebuild of the `.so`).
fn private_registry(tag: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "examples-registry-{tag}-{}.bin",
        std::process::id()
    ))
}

fn start_server() -> RecordServer {
    RecordServer::start(RecordServerConfig::new("/live/x", Tracks::H264))
        .expect("start the record server")
}

/// The example exited 0, the server decoded every frame, and the example printed the
/// connection messages and its stats.
fn check(what: &str, out: &Output, report: &Report, must_print: &[&str]) {
    assert!(
        out.status.success(),
        "{what} failed: {out}\nserver: {report}"
    );
    assert_eq!(report.tracks.len(), 1, "{what}: {report}");
    let video = &report.tracks[0];
    assert_eq!(video.codec, "H.264", "{what}: {report}");
    assert_eq!(
        video.frames, FRAMES,
        "{what}: frames decoded at the server: {report}\n{out}"
    );
    assert!(report.errors.is_empty(), "{what}: {report}");
    for needle in must_print {
        assert!(
            out.stdout.contains(needle),
            "{what} did not print {needle:?}: {out}"
        );
    }
    println!(
        "{what}: {} of {FRAMES} frames decoded at the server\n{report}",
        video.frames
    );
}

/// The lines every example prints, in its own spelling.
const STATS: &[&str] = &[
    "stats: application/x-rtspannounce-stats",
    "state=(string)recording",
    "packets=(guint64)",
];

#[test]
fn rust_example_pushes_90_frames() {
    let dir = built();
    let server = start_server();
    let out = run(
        "examples/embed",
        Command::new(dir.join("examples/embed")).arg(server.url()),
        RUN_TIMEOUT,
    );
    let report = server
        .wait_finished(SERVER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\nexample: {out}"));
    let mut expect = vec!["connected: rtsp://", "disconnected: ", "EOS"];
    expect.extend_from_slice(STATS);
    check("Rust example", &out, &report, &expect);
}

/// A Python 3 that has PyGObject and GStreamer's typelib. `python3` on PATH may be another
/// interpreter (pyenv, a venv) than Debian's, where python3-gi installs.
fn python_with_gi() -> String {
    let probe = "import gi; gi.require_version('Gst', '1.0'); from gi.repository import Gst";
    let mut failures = Vec::new();
    for python in ["python3", "/usr/bin/python3"] {
        match Command::new(python).args(["-c", probe]).output() {
            Ok(o) if o.status.success() => return python.to_owned(),
            Ok(o) => failures.push(format!(
                "{python}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => failures.push(format!("{python}: {e}")),
        }
    }
    panic!(
        "no python3 with PyGObject and the GStreamer typelib: install the Debian packages \
         python3-gi, gir1.2-gstreamer-1.0 and gir1.2-gst-plugins-base-1.0 \
         (apt-get install python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0; \
         scripts/install-deps.sh does it)\n{}",
        failures.join("\n")
    )
}

#[test]
fn python_example_pushes_90_frames() {
    let python = python_with_gi();
    let dir = built();
    let server = start_server();
    let out = run(
        "examples/push.py",
        Command::new(&python)
            .arg(Path::new(MANIFEST_DIR).join("examples/push.py"))
            .arg(server.url())
            .env("GST_PLUGIN_PATH", &dir)
            .env("GST_REGISTRY", private_registry("python")),
        RUN_TIMEOUT,
    );
    let report = server
        .wait_finished(SERVER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\nexample: {out}"));
    let mut expect = vec!["connected: rtsp://", "disconnected: ", "EOS", "track, pad="];
    expect.extend_from_slice(STATS);
    check("Python example", &out, &report, &expect);
    // At EOS the example reads one track's packet count out of the `tracks` array: 90 frames
    // are at least 90 packets.
    let packets: u64 = out
        .stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("track sink_0 sent ")?
                .strip_suffix(" packets")
        })
        .unwrap_or_else(|| panic!("no \"track sink_0 sent N packets\" line: {out}"))
        .parse()
        .unwrap_or_else(|e| panic!("packet count: {e}: {out}"));
    assert!(
        packets >= 90,
        "track sink_0 sent {packets} packets for 90 frames: {out}"
    );
    let _ = std::fs::remove_file(private_registry("python"));
}

#[test]
fn c_snippet_compiles_and_pushes_90_frames() {
    let dir = built();
    let flags = run(
        "pkg-config",
        Command::new("pkg-config").args(["--cflags", "--libs", "gstreamer-1.0"]),
        BUILD_TIMEOUT,
    );
    assert!(
        flags.status.success(),
        "pkg-config gstreamer-1.0 failed (install pkg-config and libgstreamer1.0-dev): {flags}"
    );
    let build_dir = TempDir::new("examples-push-c");
    let exe = build_dir.0.join("push");
    let cc = run(
        "cc examples/push.c",
        Command::new("cc")
            .args(["-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&exe)
            .arg(Path::new(MANIFEST_DIR).join("examples/push.c"))
            .args(flags.stdout.split_whitespace()),
        BUILD_TIMEOUT,
    );
    assert!(cc.status.success(), "cc examples/push.c failed: {cc}");

    let server = start_server();
    let out = run(
        "examples/push.c",
        Command::new(&exe)
            .arg(server.url())
            .env("GST_PLUGIN_PATH", &dir)
            .env("GST_REGISTRY", private_registry("c")),
        RUN_TIMEOUT,
    );
    let report = server
        .wait_finished(SERVER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\nexample: {out}"));
    let mut expect = vec![
        "rtspannounce-connected, ",
        "location=(string)rtsp://",
        "rtspannounce-disconnected, reason=",
        "EOS",
    ];
    expect.extend_from_slice(STATS);
    check("C snippet", &out, &report, &expect);
    let _ = std::fs::remove_file(private_registry("c"));
}
