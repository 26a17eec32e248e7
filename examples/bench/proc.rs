//! Child processes measured one at a time: spawn, reap with `wait4` (which hands back the child's
//! own user+sys CPU), kill on drop. Plus the `/proc/self` readers the scale child reports with.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How a measured child ended.
#[derive(Clone, Debug)]
pub struct Exit {
    /// `Some(code)` for a normal exit, `None` when killed by a signal.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// user + sys CPU seconds of the child (and of any children it reaped).
    pub cpu_s: f64,
    /// From spawn to reaping.
    pub wall: Duration,
    /// Whether we killed it because it ran past its deadline.
    pub timed_out: bool,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    pub fn describe(&self) -> String {
        match (self.timed_out, self.code, self.signal) {
            (true, _, _) => "timed out (killed)".into(),
            (_, Some(c), _) => format!("exit {c}"),
            (_, _, Some(s)) => format!("signal {s}"),
            _ => "unknown".into(),
        }
    }
}

/// A child process that is SIGKILLed and reaped on drop unless it was already reaped, and that
/// dies with the bench (PR_SET_PDEATHSIG) if the bench itself is killed.
pub struct Proc {
    pid: libc::pid_t,
    started: Instant,
    reaped: bool,
    /// Keeps the pipes (stdin/stdout) the caller asked for; never waited on through std.
    pub child: Child,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Result<Proc> {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
        Ok(Proc {
            pid: child.id() as libc::pid_t,
            started,
            reaped: false,
            child,
        })
    }

    /// Waits for the child to exit, killing it once `timeout` has passed.
    pub fn wait(&mut self, timeout: Duration) -> Result<Exit> {
        let deadline = self.started + timeout;
        let mut timed_out = false;
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: plain FFI with valid out-pointers.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            let flags = if timed_out { 0 } else { libc::WNOHANG };
            let r = unsafe { libc::wait4(self.pid, &mut status, flags, &mut ru) };
            if r == self.pid {
                self.reaped = true;
                let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                let (code, signal) = if libc::WIFEXITED(status) {
                    (Some(libc::WEXITSTATUS(status)), None)
                } else if libc::WIFSIGNALED(status) {
                    (None, Some(libc::WTERMSIG(status)))
                } else {
                    (None, None)
                };
                return Ok(Exit {
                    code,
                    signal,
                    cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
                    wall: self.started.elapsed(),
                    timed_out,
                });
            }
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                bail!("wait4({}): {e}", self.pid);
            }
            if Instant::now() >= deadline && !timed_out {
                timed_out = true;
                // SAFETY: the pid is our unreaped child, so it cannot have been recycled.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                continue;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: the pid is our unreaped child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock GStreamer's system clock reads, comparable across the
/// processes of one machine.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// user + sys CPU seconds of this process so far.
pub fn self_cpu_s() -> f64 {
    // SAFETY: plain FFI with a valid out-pointer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// VmRSS of this process in KiB.
pub fn self_rss_kib() -> u64 {
    let mut s = String::new();
    if std::fs::File::open("/proc/self/status")
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_err()
    {
        return 0;
    }
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Number of threads of this process.
pub fn self_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Busy CPU seconds of the whole machine (all cores) from /proc/stat.
pub fn machine_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy / hz.max(1.0)
}

/// user + sys CPU seconds of this process and of every child it has reaped.
pub fn self_and_children_cpu_s() -> f64 {
    // SAFETY: plain FFI with a valid out-pointer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    self_cpu_s() + tv(ru.ru_utime) + tv(ru.ru_stime)
}
