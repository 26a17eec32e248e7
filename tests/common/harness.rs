//! Pipeline helpers shared by the integration tests: plugin registration, running a pipeline to
//! its end with a bound, and capturing what payloaders produced.

use gst::prelude::*;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A GStreamer-CRITICAL is a bug of ours until shown otherwise: make it abort the test,
        // as G_DEBUG=fatal-criticals does (CI sets that too, for the processes tests start).
        gst::glib::log_set_always_fatal(
            gst::glib::LogLevels::LEVEL_CRITICAL | gst::glib::LogLevels::LEVEL_ERROR,
        );
        gst::init().unwrap();
        gstrtspannounce::plugin_register_static().unwrap();
    });
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub eos: bool,
    /// (error domain/code text, message, debug)
    pub error: Option<(String, String, String)>,
    pub error_is: Option<gst::ResourceError>,
    pub warnings: Vec<String>,
    pub timed_out: bool,
}

impl Outcome {
    pub fn error_text(&self) -> String {
        self.error
            .as_ref()
            .map(|(_, m, d)| format!("{m} | {d}"))
            .unwrap_or_default()
    }
}

/// Plays `pipeline` until EOS, an error or `timeout`, then sets it to NULL.
pub fn run(pipeline: &gst::Pipeline, timeout: Duration) -> Outcome {
    let bus = pipeline.bus().unwrap();
    let mut out = Outcome::default();
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The error message is on the bus.
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = std::time::Instant::now();
        if now >= deadline {
            out.timed_out = true;
            break;
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(
            (deadline - now).as_nanos() as u64
        )) else {
            out.timed_out = true;
            break;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => {
                out.eos = true;
                break;
            }
            gst::MessageView::Error(e) => {
                let err = e.error();
                out.error_is = err.kind::<gst::ResourceError>();
                out.error = Some((
                    format!("{:?}", err),
                    err.message().to_string(),
                    e.debug().map(|d| d.to_string()).unwrap_or_default(),
                ));
                break;
            }
            gst::MessageView::Warning(w) => out.warnings.push(w.error().message().to_string()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    out
}

/// Every RTP packet a payloader pushed, as bytes, in order.
pub type Captured = Arc<Mutex<Vec<Vec<u8>>>>;

pub fn capture_src(element: &gst::Element) -> Captured {
    let cap: Captured = Arc::default();
    let c = cap.clone();
    element.static_pad("src").unwrap().add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_pad, info| {
            let mut v = c.lock().unwrap();
            match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => v.push(b.map_readable().unwrap().to_vec()),
                Some(gst::PadProbeData::BufferList(l)) => {
                    for b in l.iter() {
                        v.push(b.map_readable().unwrap().to_vec());
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
    cap
}

/// Launch fragments for test media. Encoders run without B-frames so receivers that cannot
/// reorder (ffmpeg into Matroska) stay happy.
pub fn h264_branch(frames: u32, pay_name: &str) -> String {
    format!(
        "videotestsrc num-buffers={frames} ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency bframes=0 key-int-max=30 speed-preset=ultrafast ! h264parse ! \
         rtph264pay name={pay_name}"
    )
}

pub fn aac_branch(buffers: u32, pay_name: &str) -> String {
    format!(
        "audiotestsrc num-buffers={buffers} samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 ! \
         avenc_aac ! aacparse ! rtpmp4gpay name={pay_name}"
    )
}

/// Threads of this process. Only the suites in a process of their own use it (tests/errors.rs,
/// tests/hostile.rs, tests/concurrency.rs): in `it` other tests' threads would count too.
#[allow(dead_code)]
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A pipeline from a launch line, with the plugin registered.
pub fn pipeline(desc: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap()
}

/// Runs a launch line to its end (60 s at most).
pub fn push(desc: &str) -> Outcome {
    run(&pipeline(desc), Duration::from_secs(60))
}

/// The text of the next error or warning (`kind`) on the bus, within 10 s.
pub fn next_message_text(bus: &gst::Bus, kind: gst::MessageType) -> String {
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(10), &[kind])
        .unwrap_or_else(|| panic!("no {kind:?} message"));
    match msg.view() {
        gst::MessageView::Error(e) => e.error().message().to_string(),
        gst::MessageView::Warning(w) => w.error().message().to_string(),
        _ => unreachable!(),
    }
}

/// A TCP server of a test's own on 127.0.0.1 (a port the OS picks): `handle` runs on a thread
/// per connection and sees the stop flag. Dropping it stops accepting (a connection of its own
/// wakes the blocked accept); handlers that loop end when they see the flag.
pub struct Serve {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Serve {
    pub fn start(
        handle: impl Fn(std::net::TcpStream, &std::sync::atomic::AtomicBool) + Send + Sync + 'static,
    ) -> Serve {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let stop2 = stop.clone();
        let accept = std::thread::spawn(move || {
            for c in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(c) = c else { continue };
                let (handle, stop) = (handle.clone(), stop2.clone());
                std::thread::spawn(move || handle(c, &stop));
            }
        });
        Serve {
            port,
            stop,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}
