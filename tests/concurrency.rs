//! Concurrent callers: application threads that set properties, request and release pads,
//! change states, seek and send EOS all at once, with `pad-added`, `new-payloader`,
//! `handle-request` and `update-sdp` handlers that call back into the element. A watchdog turns
//! any stall into a failure, after printing every thread's stack (gdb).
//!
//! The stress test runs `RTSPANNOUNCE_STRESS_SECS` seconds (default 25; a soak: longer) from a
//! random seed that it prints; `RTSPANNOUNCE_STRESS_SEED=N` runs that seed again (the threads'
//! interleaving is the machine's, so a replay repeats the choices, not necessarily the timing).
//! `RTSPANNOUNCE_STRESS_ENCODED=0` leaves out the encoded input (payloaders inside the element),
//! `RTSPANNOUNCE_STRESS_SLOW_STACKS=1` prints the stacks of the first NULL/READY that takes
//! over 500 ms. What it does and what it found: docs/STRESS.md.

#[path = "common/harness.rs"]
#[allow(dead_code)] // shared helpers: this suite uses some of them
mod harness;
#[path = "common/scripted_server.rs"]
#[allow(dead_code)] // shared helpers: this suite uses some of them
mod scripted_server;

use gst::glib;
use gst::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use scripted_server::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A stall longer than this is a failure.
const STALL: Duration = Duration::from_secs(10);

/// The tests of this binary run one at a time: the stress test counts the process's threads.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // gdb, started by us, may attach to us (Yama's ptrace_scope=1 would refuse it).
        unsafe {
            libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY, 0, 0, 0);
        }
    });
    // Makes a GStreamer-CRITICAL abort the test, as G_DEBUG=fatal-criticals does.
    harness::init();
}

/// Straight to the process's stderr: libtest captures `eprintln!`, and a captured report is
/// lost when the watchdog aborts.
fn say(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{text}");
    let _ = e.flush();
}

/// Every thread's stack, from gdb attached to this process. gdb writes to a file: it stops every
/// thread of ours, so none could read a pipe, and a full pipe would stop gdb too.
fn dump_stacks() {
    let pid = std::process::id().to_string();
    let path = std::env::temp_dir().join(format!("rtspannounce-stacks-{pid}.txt"));
    say("---- every thread's stack (gdb) ----");
    let res = std::fs::File::create(&path).and_then(|f| {
        Command::new("timeout")
            .args(["120", "gdb", "-p", &pid, "-batch", "-nx"])
            .args(["-ex", "set pagination off"])
            .args(["-ex", "set print frame-arguments none"])
            .args(["-ex", "thread apply all bt"])
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .status()
    });
    match res {
        Ok(_) => {
            let text = std::fs::read(&path).unwrap_or_default();
            let _ = std::io::stderr().lock().write_all(&text);
            let _ = std::fs::remove_file(&path);
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

// ---------------------------------------------------------------------------------------------
// The stress test
// ---------------------------------------------------------------------------------------------

/// Every operation of the test's threads and of the signal handlers goes through `op`; the
/// watchdog fails the test on one that runs longer than [`STALL`].
#[derive(Default)]
struct Watch {
    next: AtomicU64,
    inflight: Mutex<HashMap<u64, (Instant, String, String)>>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
    /// The longest NULL and READY state changes (their return, not the async completion).
    slowest_down: Mutex<Duration>,
    /// NULL and READY state changes that took over 100 ms: from, to, time, the session's state.
    slow_down: Mutex<Vec<String>>,
    stop: AtomicBool,
}

struct InFlight<'a>(&'a Watch, u64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.lock().unwrap().remove(&self.1);
    }
}

impl Watch {
    fn op<T>(
        &self,
        kind: &'static str,
        detail: impl FnOnce() -> String,
        f: impl FnOnce() -> T,
    ) -> T {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::current()
            .name()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:?}", std::thread::current().id()));
        self.inflight
            .lock()
            .unwrap()
            .insert(id, (Instant::now(), format!("{kind} {}", detail()), thread));
        let guard = InFlight(self, id);
        let r = f();
        drop(guard);
        *self.counts.lock().unwrap().entry(kind).or_default() += 1;
        r
    }

    fn total(&self) -> u64 {
        self.counts.lock().unwrap().values().sum()
    }

    fn spawn_watchdog(self: &Arc<Self>, seed: u64) -> std::thread::JoinHandle<()> {
        let w = self.clone();
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                while !w.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                    let stalled: Vec<String> = w
                        .inflight
                        .lock()
                        .unwrap()
                        .values()
                        .filter(|(t0, _, _)| t0.elapsed() > STALL)
                        .map(|(t0, what, thread)| {
                            format!("  {thread}: {what} (for {:.1} s)", t0.elapsed().as_secs_f64())
                        })
                        .collect();
                    if !stalled.is_empty() {
                        say(&format!(
                            "STALL (seed {seed}): no return within {STALL:?}:\n{}",
                            stalled.join("\n")
                        ));
                        dump_stacks();
                        say(&format!(
                            "replay: RTSPANNOUNCE_STRESS_SEED={seed} cargo test --test concurrency stress -- --nocapture"
                        ));
                        std::process::abort();
                    }
                }
            })
            .unwrap()
    }
}

/// Randomness for the signal handlers (they run on GStreamer's and the I/O runtime's threads):
/// splitmix64 over a counter, seeded from the test's seed.
struct HandlerDice(AtomicU64);

impl HandlerDice {
    fn chance(&self, p: f64) -> bool {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Live H.264 (payloaded upstream), live A-law (payloaded upstream) and, with `encoded`, live
/// H.264 that the element payloads itself (its pad's `payloader` set before linking). Every
/// branch ends in a queue named after it, so flushes and EOS can be sent into one branch.
fn stress_pipeline(url: &str, encoded: bool) -> (gst::Pipeline, gst::Element) {
    let mut desc = format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120,framerate=15/1 ! \
         x264enc tune=zerolatency speed-preset=ultrafast bframes=0 key-int-max=15 threads=1 ! \
         rtph264pay config-interval=1 ! queue name=vq ! ann.sink_0 \
         audiotestsrc is-live=true samplesperbuffer=400 wave=ticks ! audio/x-raw,rate=8000,channels=1 ! \
         alawenc ! rtppcmapay ! queue name=aq ! ann.sink_1 \
         rtspannounce name=ann location={url} announce-timeout=3000 tcp-timeout=2000000 \
         retry-delay-min=50 retry-delay-max=400 rtcp-interval=500"
    );
    if encoded {
        desc.push_str(
            " videotestsrc is-live=true pattern=smpte ! video/x-raw,width=160,height=120,framerate=10/1 ! \
             x264enc tune=zerolatency speed-preset=ultrafast bframes=0 key-int-max=10 threads=1 ! \
             h264parse ! queue name=eq",
        );
    }
    let p = harness::pipeline(&desc);
    let ann = p.by_name("ann").unwrap();
    if encoded {
        let pad = ann.request_pad_simple("sink_%u").unwrap();
        assert_eq!(pad.name(), "sink_2");
        let pay = gst::ElementFactory::make("rtph264pay")
            .property("config-interval", 1i32)
            .build()
            .unwrap();
        pad.set_property("payloader", &pay);
        let q = p.by_name("eq").unwrap();
        q.static_pad("src").unwrap().link(&pad).unwrap();
    }
    (p, ann)
}

/// What the threads share.
struct Ctx {
    seed: u64,
    watch: Arc<Watch>,
    pipeline: gst::Pipeline,
    ann: gst::Element,
    server: ScriptedServer,
    url: String,
    /// Pads the handlers requested: the pads thread releases them.
    spare: Mutex<Vec<gst::Pad>>,
    /// The pads the pipeline links: never released.
    linked: BTreeSet<String>,
    dice: HandlerDice,
    stop: AtomicBool,
    /// The states thread stops last: a serialized event (EOS into a branch) sent while the
    /// pipeline is PAUSED waits behind a push blocked before a prerolled sink until the state
    /// changes again.
    stop_states: AtomicBool,
    /// Handler calls, by signal.
    handled: Mutex<BTreeMap<&'static str, u64>>,
    /// Bus messages: errors and warnings by text (first line), element messages by name.
    errors: Mutex<BTreeMap<String, u64>>,
    warnings: Mutex<BTreeMap<String, u64>>,
    elements: Mutex<BTreeMap<String, u64>>,
    /// `stats` said "recording" at least once.
    saw_recording: AtomicBool,
    queues: Vec<String>,
    /// Payloaders inside the element: the encoded branch, and set on requested pads.
    encoded: bool,
}

impl Ctx {
    fn handled(&self, what: &'static str) {
        *self.handled.lock().unwrap().entry(what).or_default() += 1;
    }

    fn read_stats(&self, e: &gst::Element) {
        let s: gst::Structure = e.property("stats");
        if s.get::<&str>("state") == Ok("recording") {
            self.saw_recording.store(true, Ordering::Relaxed);
        }
    }

    /// What a handler does: reads properties and `stats`, sometimes asks for a pad (kept for
    /// the pads thread to release).
    fn call_back(&self, e: &gst::Element, kind: &'static str, request_chance: f64) {
        self.watch.op(kind, String::new, || {
            self.handled(kind);
            let _: bool = e.property("sync");
            let _: Option<String> = e.property("location");
            let _: u64 = e.property("tcp-timeout");
            self.read_stats(e);
            if self.dice.chance(request_chance) && self.spare.lock().unwrap().len() < 4 {
                if let Some(p) = e.request_pad_simple("sink_%u") {
                    self.spare.lock().unwrap().push(p);
                }
            }
        })
    }
}

fn connect_handlers(ctx: &Arc<Ctx>) {
    thread_local! {
        static IN_PAD_ADDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    let c = Arc::downgrade(ctx);
    ctx.ann.connect_pad_added(move |e, _pad| {
        let Some(c) = c.upgrade() else { return };
        // A pad requested from here emits pad-added again: one level only.
        let nested = IN_PAD_ADDED.with(|f| f.replace(true));
        c.call_back(e, "pad-added", if nested { 0.0 } else { 0.2 });
        IN_PAD_ADDED.with(|f| f.set(nested));
    });
    let c = Arc::downgrade(ctx);
    ctx.ann.connect("new-payloader", false, move |v| {
        let c = c.upgrade()?;
        let e = v[0].get::<gst::Element>().unwrap();
        let pay = v[1].get::<gst::Element>().unwrap();
        pay.set_property("config-interval", 1i32);
        c.call_back(&e, "new-payloader", 0.05);
        None
    });
    let c = Arc::downgrade(ctx);
    ctx.ann.connect("handle-request", false, move |v| {
        let c = c.upgrade()?;
        let e = v[0].get::<gst::Element>().unwrap();
        let req = v[1].get::<gst::Structure>().unwrap();
        c.call_back(&e, "handle-request", 0.03);
        // Sometimes answer SET_PARAMETER ourselves, else the default answer.
        let answer = (req.name() == "SET_PARAMETER" && c.dice.chance(0.5)).then(|| {
            gst::Structure::builder("response")
                .field("status", 200u32)
                .field("reason", "OK")
                .build()
        });
        Some(answer.to_value())
    });
    let c = Arc::downgrade(ctx);
    ctx.ann.connect("update-sdp", false, move |v| {
        let c = c.upgrade()?;
        let e = v[0].get::<gst::Element>().unwrap();
        c.call_back(&e, "update-sdp", 0.03);
        None
    });
}

fn random_property(ctx: &Ctx, rng: &mut StdRng) -> (String, glib::Value) {
    let url = &ctx.url;
    let (name, value): (&str, glib::Value) = match rng.gen_range(0..17) {
        0 | 1 => ("sync", rng.gen_bool(0.5).to_value()),
        2 => (
            "location",
            match rng.gen_range(0..10) {
                0 => format!("{url}?token=abc"),
                1 => url.replace("rtsp://", "rtsp://user:secret@"),
                // Nothing listens there (our own server's port, one up, is not ours).
                2 if rng.gen_bool(0.2) => "rtsp://127.0.0.1:1/x".to_string(),
                _ => url.clone(),
            }
            .to_value(),
        ),
        3 => (
            "tcp-timeout",
            rng.gen_range(500_000u64..3_000_000).to_value(),
        ),
        4 => ("announce-timeout", rng.gen_range(1000u32..4000).to_value()),
        5 => (
            "max-queue-bytes",
            rng.gen_range(64 * 1024u32..4 * 1024 * 1024).to_value(),
        ),
        6 => ("max-queue-time", rng.gen_range(0u32..2000).to_value()),
        7 => (
            "protocols",
            [
                gst_rtsp::RTSPLowerTrans::TCP,
                gst_rtsp::RTSPLowerTrans::TCP | gst_rtsp::RTSPLowerTrans::UDP,
                gst_rtsp::RTSPLowerTrans::UDP,
            ][rng.gen_range(0..3)]
            .to_value(),
        ),
        8 => ("user-id", Some(format!("u{}", rng.gen::<u16>())).to_value()),
        9 => ("user-pw", Some(format!("p{}", rng.gen::<u16>())).to_value()),
        10 => ("rtcp-interval", rng.gen_range(200u32..3000).to_value()),
        11 => ("retry-max", [-1i32, 0, 3][rng.gen_range(0..3)].to_value()),
        12 => ("retry-delay-min", rng.gen_range(20u32..300).to_value()),
        13 => ("retry-delay-max", rng.gen_range(100u32..1000).to_value()),
        14 => ("do-rtsp-keep-alive", rng.gen_bool(0.5).to_value()),
        15 => ("congestion-policy", {
            let ty = ctx
                .ann
                .find_property("congestion-policy")
                .unwrap()
                .value_type();
            glib::EnumClass::with_type(ty)
                .unwrap()
                .to_value_by_nick(if rng.gen_bool(0.5) { "block" } else { "drop" })
                .unwrap()
        }),
        _ => (
            "user-agent",
            format!("stress/{}", rng.gen::<u8>()).to_value(),
        ),
    };
    (name.to_string(), value)
}

fn props_worker(ctx: &Ctx, rng: &mut StdRng) {
    while !ctx.stop.load(Ordering::SeqCst) {
        if rng.gen_bool(0.6) {
            let (name, value) = random_property(ctx, rng);
            ctx.watch.op(
                "set-property",
                || name.clone(),
                || ctx.ann.set_property_from_value(&name, &value),
            );
        } else {
            ctx.watch.op("read-properties", String::new, || {
                ctx.read_stats(&ctx.ann);
                for p in ctx.ann.list_properties() {
                    if p.flags().contains(glib::ParamFlags::READABLE) {
                        let _ = ctx.ann.property_value(p.name());
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..20_000)));
    }
}

fn release_spares(ctx: &Ctx) {
    let spare: Vec<gst::Pad> = std::mem::take(&mut *ctx.spare.lock().unwrap());
    for p in spare {
        ctx.watch.op(
            "release-pad",
            || p.name().to_string(),
            || ctx.ann.release_request_pad(&p),
        );
    }
}

/// Requests and releases pads before the start, and rarely while running: a pad requested
/// then is refused once data flowed, and one requested and released while the session waits
/// for data stays in it (docs/STRESS.md), so often would mean nothing is ever published.
fn pads_worker(ctx: &Ctx, rng: &mut StdRng) {
    while !ctx.stop.load(Ordering::SeqCst) {
        release_spares(ctx);
        let stopped = ctx.ann.current_state() <= gst::State::Ready;
        if stopped || rng.gen_bool(0.003) {
            let name = rng
                .gen_bool(0.3)
                .then(|| format!("sink_{}", rng.gen_range(3..8)));
            let pad = ctx.watch.op(
                "request-pad",
                || format!("{name:?}"),
                || match &name {
                    Some(n) => ctx.ann.request_pad_simple(n),
                    None => ctx.ann.request_pad_simple("sink_%u"),
                },
            );
            if let Some(pad) = pad {
                assert!(!ctx.linked.contains(pad.name().as_str()), "{}", pad.name());
                if ctx.encoded && rng.gen_bool(0.2) {
                    let pay = gst::ElementFactory::make("rtph264pay").build().unwrap();
                    ctx.watch.op(
                        "set-payloader",
                        || pad.name().to_string(),
                        || pad.set_property("payloader", &pay),
                    );
                }
                std::thread::sleep(Duration::from_micros(rng.gen_range(0..5_000)));
                ctx.watch.op(
                    "release-pad",
                    || pad.name().to_string(),
                    || ctx.ann.release_request_pad(&pad),
                );
                release_spares(ctx);
            }
        }
        ctx.watch.op("list-pads", String::new, || {
            for p in ctx.ann.sink_pads() {
                let _: Option<gst::Element> = p.property("payloader");
            }
        });
        std::thread::sleep(Duration::from_micros(rng.gen_range(5_000..60_000)));
    }
}

fn states_worker(ctx: &Ctx, rng: &mut StdRng) {
    use gst::State::*;
    while !ctx.stop_states.load(Ordering::SeqCst) {
        let target = [Playing, Playing, Playing, Paused, Ready, Ready, Null][rng.gen_range(0..7)];
        let from = ctx.pipeline.current_state();
        let phase = ctx
            .ann
            .property::<gst::Structure>("stats")
            .get::<String>("state")
            .unwrap_or_default();
        // With RTSPANNOUNCE_STRESS_SLOW_STACKS=1, a NULL/READY still running after 500 ms has
        // every thread's stack printed once, to see what it waits for.
        let sampler = (target <= Ready
            && std::env::var_os("RTSPANNOUNCE_STRESS_SLOW_STACKS").is_some())
        .then(|| {
            let done = Arc::new(AtomicBool::new(false));
            let d = done.clone();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                static ONCE: std::sync::Once = std::sync::Once::new();
                if !d.load(Ordering::SeqCst) {
                    ONCE.call_once(|| {
                        say("a NULL/READY state change is still running after 500 ms:");
                        dump_stacks();
                    });
                }
            });
            (done, t)
        });
        let t0 = Instant::now();
        ctx.watch.op(
            "set-state",
            || format!("{target:?}"),
            || {
                let _ = ctx.pipeline.set_state(target);
            },
        );
        let took = t0.elapsed();
        if let Some((done, t)) = sampler {
            done.store(true, Ordering::SeqCst);
            t.join().unwrap();
        }
        if target <= Ready {
            let mut slowest = ctx.watch.slowest_down.lock().unwrap();
            *slowest = (*slowest).max(took);
            if took > Duration::from_millis(100) {
                ctx.watch.slow_down.lock().unwrap().push(format!(
                    "{from:?} -> {target:?} took {took:?} (session {phase})"
                ));
            }
        }
        ctx.watch.op(
            "get-state",
            || format!("{target:?}"),
            || {
                let _ = ctx.pipeline.state(gst::ClockTime::from_seconds(1));
            },
        );
        let ms = if target == Playing {
            rng.gen_range(200..2000)
        } else {
            rng.gen_range(0..500)
        };
        sleep_unless_stopped(ctx, Duration::from_millis(ms));
    }
}

fn events_worker(ctx: &Ctx, rng: &mut StdRng) {
    while !ctx.stop.load(Ordering::SeqCst) {
        sleep_unless_stopped(ctx, Duration::from_millis(rng.gen_range(100..1500)));
        let q = ctx.queues[rng.gen_range(0..ctx.queues.len())].clone();
        let sinkpad = ctx
            .pipeline
            .by_name(&q)
            .unwrap()
            .static_pad("sink")
            .unwrap();
        match rng.gen_range(0..10) {
            0..=3 => ctx.watch.op(
                "flush-branch",
                || q.clone(),
                || {
                    // Flush-stop drops the segment: it goes again, as after a seek.
                    let segment = sinkpad.sticky_event::<gst::event::Segment>(0);
                    sinkpad.send_event(gst::event::FlushStart::new());
                    std::thread::sleep(Duration::from_millis(rng.gen_range(0..30)));
                    sinkpad.send_event(gst::event::FlushStop::new(false));
                    if let Some(s) = segment {
                        sinkpad.send_event(s);
                    }
                },
            ),
            4..=5 => ctx.watch.op("flushing-seek", String::new, || {
                let _ = ctx
                    .pipeline
                    .seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::ZERO);
            }),
            6..=7 => ctx.watch.op(
                "eos-branch",
                || q.clone(),
                || {
                    sinkpad.send_event(gst::event::Eos::new());
                },
            ),
            // EOS on every pad at once, as an EOS on the pipeline would reach the element. Not
            // through the pipeline: gst_element_send_event holds its state lock while a live
            // basesrc waits for its streaming lock, held by a push blocked on a full queue
            // before a prerolling sink, which waits for a state change that needs that state
            // lock: a deadlock of GStreamer's own (docs/STRESS.md).
            _ => ctx.watch.op("eos-all-branches", String::new, || {
                for q in &ctx.queues {
                    let pad = ctx.pipeline.by_name(q).unwrap().static_pad("sink").unwrap();
                    pad.send_event(gst::event::Eos::new());
                }
            }),
        }
    }
}

fn server_worker(ctx: &Ctx, rng: &mut StdRng) {
    while !ctx.stop.load(Ordering::SeqCst) {
        sleep_unless_stopped(ctx, Duration::from_millis(rng.gen_range(50..600)));
        let method = ["OPTIONS", "GET_PARAMETER", "SET_PARAMETER"][rng.gen_range(0..3)];
        if rng.gen_bool(0.04) {
            ctx.watch.op("server-drop", String::new, || {
                ctx.server.drop_connection();
            });
        } else {
            ctx.watch.op(
                "server-request",
                || method.to_string(),
                || {
                    ctx.server.send_request(method);
                },
            );
        }
    }
}

fn bus_worker(ctx: &Ctx) {
    let bus = ctx.pipeline.bus().unwrap();
    let first_line = |s: &str| {
        s.lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(160)
            .collect::<String>()
    };
    while !ctx.stop.load(Ordering::SeqCst) {
        let Some(msg) = ctx.watch.op("bus-pop", String::new, || {
            bus.timed_pop(gst::ClockTime::from_mseconds(100))
        }) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Error(e) => {
                *ctx.errors
                    .lock()
                    .unwrap()
                    .entry(first_line(e.error().message()))
                    .or_default() += 1;
            }
            gst::MessageView::Warning(w) => {
                *ctx.warnings
                    .lock()
                    .unwrap()
                    .entry(first_line(w.error().message()))
                    .or_default() += 1;
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure() {
                    *ctx.elements
                        .lock()
                        .unwrap()
                        .entry(s.name().to_string())
                        .or_default() += 1;
                }
            }
            _ => {}
        }
    }
}

fn sleep_unless_stopped(ctx: &Ctx, d: Duration) {
    let end = Instant::now() + d;
    while !ctx.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn print_map<T: std::fmt::Display>(title: &str, m: &BTreeMap<T, u64>) {
    say(&format!("  {title}:"));
    for (k, v) in m {
        say(&format!("    {v:>6}  {k}"));
    }
}

/// Waits until the process has at most `base` threads, for at most `limit`.
fn threads_back_to(base: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let n = harness::threads();
        if n <= base || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn stress_concurrent_callers() {
    let _s = serial();
    init();
    let secs = env_u64("RTSPANNOUNCE_STRESS_SECS").unwrap_or(25);
    let seed = env_u64("RTSPANNOUNCE_STRESS_SEED").unwrap_or_else(|| rand::random::<u32>() as u64);
    // Encoded input: a payloader inside the element, and with it new-payloader (0: RTP only).
    let encoded = std::env::var("RTSPANNOUNCE_STRESS_ENCODED").map_or(true, |v| v != "0");
    say(&format!(
        "stress: seed {seed}, {secs} s, encoded input {encoded} (replay: RTSPANNOUNCE_STRESS_SEED={seed})"
    ));

    // Warm-up: the I/O runtime, GStreamer's thread pools and the system clock exist from here.
    {
        let server = ScriptedServer::start(Script::new().keep_frame_data(false));
        let (p, _) = stress_pipeline(&server.url("/warm"), encoded);
        p.set_state(gst::State::Playing).unwrap();
        assert!(
            server.wait_requests("RECORD", 1, Duration::from_secs(15)),
            "warm-up never recorded: {:?}",
            server.snapshot().methods()
        );
        p.set_state(gst::State::Null).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let base_threads = harness::threads();

    let server = ScriptedServer::start(
        Script::new()
            .keep_frame_data(false)
            .request_after_record("OPTIONS")
            .request_after_record("SET_PARAMETER"),
    );
    let url = server.url("/stress");
    let (pipeline, ann) = stress_pipeline(&url, encoded);
    let watch = Arc::new(Watch::default());
    let mut queues = vec!["vq".to_string(), "aq".to_string()];
    if encoded {
        queues.push("eq".into());
    }
    let ctx = Arc::new(Ctx {
        seed,
        watch: watch.clone(),
        linked: ann
            .sink_pads()
            .iter()
            .map(|p| p.name().to_string())
            .collect(),
        pipeline,
        ann,
        server,
        url,
        spare: Mutex::default(),
        dice: HandlerDice(AtomicU64::new(seed)),
        stop: AtomicBool::new(false),
        stop_states: AtomicBool::new(false),
        handled: Mutex::default(),
        errors: Mutex::default(),
        warnings: Mutex::default(),
        elements: Mutex::default(),
        saw_recording: AtomicBool::new(false),
        queues,
        encoded,
    });
    connect_handlers(&ctx);
    let watchdog = watch.spawn_watchdog(seed);

    type Worker = fn(&Ctx, &mut StdRng);
    let workers: [(&str, Worker); 7] = [
        ("props-a", props_worker),
        ("props-b", props_worker),
        ("pads", pads_worker),
        ("states", states_worker),
        ("events", events_worker),
        ("server", server_worker),
        ("bus", |c, _| bus_worker(c)),
    ];
    let panicked = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(i, (name, f))| {
            let ctx = ctx.clone();
            let panicked = panicked.clone();
            std::thread::Builder::new()
                .name(format!("stress-{name}"))
                .spawn(move || {
                    let mut rng =
                        StdRng::seed_from_u64(ctx.seed.wrapping_mul(31).wrapping_add(i as u64));
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        f(&ctx, &mut rng)
                    }));
                    if r.is_err() {
                        panicked.fetch_add(1, Ordering::SeqCst);
                        ctx.stop.store(true, Ordering::SeqCst);
                    }
                })
                .unwrap()
        })
        .collect();

    // The time asked for, and then (at most 30 s more, for a slow machine) until the run has
    // published and every handler has run: the assertions below want both.
    let exercised = || {
        let handled = ctx.handled.lock().unwrap();
        let signals = ["pad-added", "update-sdp", "handle-request"]
            .iter()
            .chain(encoded.then_some(&"new-payloader"))
            .all(|h| handled.contains_key(h));
        signals
            && ctx.saw_recording.load(Ordering::Relaxed)
            && ctx
                .server
                .wait_for(|s| s.count("RECORD") >= 1, Duration::ZERO)
    };
    let started = Instant::now();
    while !ctx.stop.load(Ordering::SeqCst) {
        let t = started.elapsed();
        if t >= Duration::from_secs(secs + 30) || (t >= Duration::from_secs(secs) && exercised()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ctx.stop.store(true, Ordering::SeqCst);
    let (states, others): (Vec<_>, Vec<_>) = handles
        .into_iter()
        .partition(|h| h.thread().name() == Some("stress-states"));
    for h in others {
        h.join().unwrap();
    }
    ctx.stop_states.store(true, Ordering::SeqCst);
    for h in states {
        h.join().unwrap();
    }
    let t0 = Instant::now();
    let res = watch.op("final-null", String::new, || {
        ctx.pipeline.set_state(gst::State::Null)
    });
    let final_null = t0.elapsed();
    let state = ctx.pipeline.current_state();
    watch.stop.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();

    let pops = watch
        .counts
        .lock()
        .unwrap()
        .get("bus-pop")
        .copied()
        .unwrap_or(0);
    let ops = watch.total() - pops;
    say(&format!(
        "stress: seed {seed}: {ops} operations (and {pops} bus pops) in {:.1} s; final NULL in {final_null:?}; slowest NULL/READY set_state {:?}",
        started.elapsed().as_secs_f64(),
        *watch.slowest_down.lock().unwrap()
    ));
    print_map("operations", &watch.counts.lock().unwrap());
    say("  NULL/READY over 100 ms:");
    for s in watch.slow_down.lock().unwrap().iter() {
        say(&format!("    {s}"));
    }
    print_map("handler calls", &ctx.handled.lock().unwrap());
    print_map("element messages", &ctx.elements.lock().unwrap());
    print_map("errors", &ctx.errors.lock().unwrap());
    print_map("warnings", &ctx.warnings.lock().unwrap());
    let snap = ctx.server.snapshot();
    let mut methods: BTreeMap<&str, u64> = BTreeMap::new();
    for m in snap.methods() {
        *methods.entry(m).or_default() += 1;
    }
    print_map("server saw", &methods);
    say(&format!(
        "  server: {} connections, {} interleaved frames, {} UDP datagrams",
        snap.connections.len(),
        snap.frames.len(),
        ctx.server.udp_datagrams().len()
    ));

    assert_eq!(
        panicked.load(Ordering::SeqCst),
        0,
        "a worker panicked (seed {seed})"
    );
    assert!(res.is_ok(), "final NULL failed: {res:?} (seed {seed})");
    assert_eq!(state, gst::State::Null, "seed {seed}");
    // No state change waits on the network (rule 1; tests/it/state_changes.rs holds it to 100 ms
    // on a quiet machine): here, with everything else going on, 1 s.
    assert!(
        final_null < Duration::from_secs(1),
        "final NULL took {final_null:?} (seed {seed})"
    );
    let slowest = *watch.slowest_down.lock().unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "a NULL/READY took {slowest:?}: {:?} (seed {seed})",
        watch.slow_down.lock().unwrap()
    );
    // The chaos must still have published: otherwise the test exercised nothing but errors.
    assert!(
        methods.get("RECORD").copied().unwrap_or(0) >= 1,
        "never recorded (seed {seed})"
    );
    assert!(
        ctx.saw_recording.load(Ordering::Relaxed),
        "stats never said recording"
    );
    let handled = ctx.handled.lock().unwrap().clone();
    for h in ["pad-added", "update-sdp", "handle-request"] {
        assert!(
            handled.get(h).copied().unwrap_or(0) > 0,
            "no {h} (seed {seed})"
        );
    }
    if encoded {
        assert!(
            handled.get("new-payloader").copied().unwrap_or(0) > 0,
            "no new-payloader"
        );
    }

    // Everything the test started ends: the pipeline, the server, the element's threads.
    let ctx = Arc::into_inner(ctx).expect("a thread still holds the context");
    let Ctx {
        pipeline,
        ann,
        server,
        spare,
        ..
    } = ctx;
    drop(spare);
    drop(ann);
    drop(pipeline);
    server.stop();
    let n = threads_back_to(base_threads, Duration::from_secs(30));
    assert!(
        n <= base_threads,
        "threads: {base_threads} before, {n} after (seed {seed})"
    );
}
