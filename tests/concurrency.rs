//! Concurrent callers: application threads that set properties, request and release pads,
//! change states, seek and send EOS all at once, with `pad-added`, `new-payloader`,
//! `handle-request` and `update-sdp` handlers that call back into the element. A deadlock is a
//! failure, after every thread's stack is printed (gdb).

#[path = "common/harness.rs"]
mod harness;

use gst::glib;
use gst::prelude::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The tests of this binary run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // A GStreamer-CRITICAL aborts the test (as G_DEBUG=fatal-criticals does).
        glib::log_set_always_fatal(glib::LogLevels::LEVEL_CRITICAL | glib::LogLevels::LEVEL_ERROR);
        // gdb, started by us, may attach to us (Yama's ptrace_scope=1 would refuse it).
        unsafe {
            libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY, 0, 0, 0);
        }
    });
    harness::init();
}

/// Straight to the process's stderr: libtest captures `eprintln!`, and a captured report is
/// lost when the watchdog aborts.
fn say(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{text}");
    let _ = e.flush();
}

/// Every thread's stack, from gdb attached to this process.
fn dump_stacks() {
    let pid = std::process::id().to_string();
    say("---- every thread's stack (gdb) ----");
    let out = Command::new("timeout")
        .args(["120", "gdb", "-p", &pid, "-batch", "-nx"])
        .args(["-ex", "set pagination off"])
        .args(["-ex", "set print frame-arguments none"])
        .args(["-ex", "thread apply all bt"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(&o.stdout);
            let _ = e.write_all(&o.stderr);
        }
        Err(e) => say(&format!("cannot run gdb: {e} (install gdb for stacks)")),
    }
    say("---- end of stacks ----");
}

/// Runs `f` on its own thread; if it has not returned within `limit`, prints every thread's
/// stack and fails (a deadlocked thread cannot be unwound: it stays behind).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(what.into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            say(&format!("{what}: no return within {limit:?}: deadlock"));
            dump_stacks();
            panic!("{what}: deadlocked (stacks on stderr)");
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

fn appsink_syncs(e: &gst::Element) -> Vec<bool> {
    e.downcast_ref::<gst::Bin>()
        .unwrap()
        .children()
        .into_iter()
        .filter(|c| c.type_().name() == "GstAppSink")
        .map(|c| c.property::<bool>("sync"))
        .collect()
}

/// `set_property("sync")` took the settings lock, then the pads lock (to pass it on to the
/// appsinks); `request_new_pad` took the pads lock, then the settings lock (for the new appsink's
/// sync): two application threads deadlocked. And whatever the interleaving, every appsink ends
/// with the element's value.
#[test]
fn sync_and_pad_requests_from_three_threads() {
    let _s = serial();
    init();
    let e = gst::ElementFactory::make("rtspannounce").build().unwrap();
    let kept = e.request_pad_simple("sink_%u").unwrap();
    let e2 = e.clone();
    within(Duration::from_secs(20), "sync-vs-pads", move || {
        let setters: Vec<_> = [true, false]
            .into_iter()
            .map(|v| {
                let e = e2.clone();
                std::thread::spawn(move || {
                    for _ in 0..3000 {
                        e.set_property("sync", v);
                    }
                })
            })
            .collect();
        for _ in 0..3000 {
            let p = e2.request_pad_simple("sink_%u").unwrap();
            e2.release_request_pad(&p);
        }
        for t in setters {
            t.join().unwrap();
        }
        // The last of the setters' values, on every appsink.
        let sync: bool = e2.property("sync");
        let extra = e2.request_pad_simple("sink_%u").unwrap();
        assert!(appsink_syncs(&e2).iter().all(|s| *s == sync), "{sync}");
        e2.set_property("sync", !sync);
        assert_eq!(appsink_syncs(&e2), [!sync, !sync]);
        e2.release_request_pad(&extra);
    });
    e.release_request_pad(&kept);
}

/// `request_new_pad` held the pads lock while `add_pad` emitted `pad-added`: a handler that asks
/// for another pad, or sets a property, deadlocked.
#[test]
fn pad_added_handler_calls_back_into_the_element() {
    let _s = serial();
    init();
    let e = gst::ElementFactory::make("rtspannounce").build().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    e.connect_pad_added(move |e, pad| {
        s2.lock().unwrap().push(pad.name().to_string());
        let _: bool = e.property("sync");
        let _: gst::Structure = e.property("stats");
        if pad.name() == "sink_0" {
            e.set_property("sync", false);
            assert_eq!(e.request_pad_simple("sink_%u").unwrap().name(), "sink_1");
        }
    });
    let e2 = e.clone();
    within(Duration::from_secs(10), "pad-added", move || {
        let p = e2.request_pad_simple("sink_%u").unwrap();
        assert_eq!(p.name(), "sink_0");
    });
    assert_eq!(*seen.lock().unwrap(), ["sink_0", "sink_1"]);
    assert_eq!(appsink_syncs(&e), [false, false]);
    for p in e.sink_pads() {
        e.release_request_pad(&p);
    }
}
