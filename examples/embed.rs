//! Embedding `rtspannounce` in a Rust application.
//!
//! ```text
//! cargo run --example embed -- rtsp://127.0.0.1:8554/live/x
//! ```
//!
//! Registers the plugin in this process (no `GST_PLUGIN_PATH` needed), builds
//! `videotestsrc is-live=true num-buffers=90 ! x264enc tune=zerolatency bframes=0 !
//! rtph264pay ! rtspannounce location=URL` element by element, and runs it until the end:
//! - the element messages `rtspannounce-connected` (RECORD answered) and
//!   `rtspannounce-disconnected` (TEARDOWN answered) are printed as they arrive;
//! - the `stats` property is read and printed once a second while the pipeline plays;
//! - the exit code is 0 on EOS (every packet delivered and TEARDOWN answered), 1 on an error,
//!   2 on bad arguments.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;

const USAGE: &str = "usage: embed rtsp://HOST:PORT/PATH";

fn build_pipeline(location: &str) -> Result<(gst::Pipeline, gst::Element), glib::BoolError> {
    let src = gst::ElementFactory::make("videotestsrc")
        .property("is-live", true)
        .property("num-buffers", 90i32)
        .build()?;
    let enc = gst::ElementFactory::make("x264enc")
        .property_from_str("tune", "zerolatency")
        .property("bframes", 0u32)
        .build()?;
    let pay = gst::ElementFactory::make("rtph264pay").build()?;
    let sink = gst::ElementFactory::make("rtspannounce")
        .name("publisher")
        .property("location", location)
        .build()?;

    let pipeline = gst::Pipeline::new();
    pipeline.add_many([&src, &enc, &pay, &sink])?;
    // The sink's pads are request pads (`sink_%u`): linking requests `sink_0`.
    gst::Element::link_many([&src, &enc, &pay, &sink])?;
    Ok((pipeline, sink))
}

/// Prints the `stats` structure: the session's fields on one line, then one line per track
/// (the `tracks` field is an array of `track` structures).
fn print_stats(sink: &gst::Element, since: Instant) {
    let stats = sink.property::<gst::Structure>("stats");
    let mut session = stats.clone();
    session.remove_field("tracks");
    println!(
        "[{:5.1}s] stats: {}",
        since.elapsed().as_secs_f64(),
        session
    );
    if let Ok(tracks) = stats.get::<gst::Array>("tracks") {
        for track in tracks.iter() {
            if let Ok(t) = track.get::<gst::Structure>() {
                println!("          {t}");
            }
        }
    }
}

/// Runs the pipeline to EOS or error; true on EOS.
fn run(pipeline: &gst::Pipeline, sink: &gst::Element) -> bool {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        eprintln!("could not start the pipeline: {e}");
        // The element posted the reason (e.g. a bad location) on the bus.
        while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(err) = msg.view() {
                eprintln!("error: {}", err.error());
            }
        }
        return false;
    }

    let start = Instant::now();
    let mut playing = false;
    let mut next_stats = start + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if now >= next_stats {
            if playing {
                print_stats(sink, start);
            }
            next_stats += Duration::from_secs(1);
            continue;
        }
        let wait = gst::ClockTime::from_nseconds((next_stats - now).as_nanos() as u64);
        let Some(msg) = bus.timed_pop(wait) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Element(m) => {
                let Some(s) = m.structure() else { continue };
                match s.name().as_str() {
                    "rtspannounce-connected" => println!(
                        "connected: {} (server {}, session {}, {} track(s), handshake {} us in {} round trips)",
                        s.get::<String>("location").unwrap_or_default(),
                        s.get::<String>("server").unwrap_or_default(),
                        s.get::<String>("session-id").unwrap_or_default(),
                        s.get::<u32>("tracks").unwrap_or(0),
                        s.get::<u64>("handshake-us").unwrap_or(0),
                        s.get::<u32>("round-trips").unwrap_or(0),
                    ),
                    "rtspannounce-disconnected" => println!(
                        "disconnected: {}",
                        s.get::<String>("reason").unwrap_or_default()
                    ),
                    _ => {}
                }
            }
            gst::MessageView::StateChanged(sc)
                if sc.src() == Some(pipeline.upcast_ref::<gst::Object>()) =>
            {
                playing = sc.current() == gst::State::Playing;
            }
            gst::MessageView::Warning(w) => {
                eprintln!("warning: {} ({:?})", w.error(), w.debug());
            }
            gst::MessageView::Error(err) => {
                eprintln!(
                    "error from {}: {}",
                    err.src().map(|s| s.path_string()).unwrap_or_default(),
                    err.error()
                );
                if let Some(debug) = err.debug() {
                    eprintln!("debug: {debug}");
                }
                return false;
            }
            gst::MessageView::Eos(_) => {
                // Only posted once TEARDOWN was answered: everything reached the server.
                print_stats(sink, start);
                println!("EOS after {:.1}s", start.elapsed().as_secs_f64());
                return true;
            }
            _ => {}
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(location), None) = (args.next(), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };

    if let Err(e) = gst::init() {
        eprintln!("could not initialise GStreamer: {e}");
        return ExitCode::FAILURE;
    }
    // The plugin is linked into this program: register it without GST_PLUGIN_PATH.
    if let Err(e) = gstrtspannounce::plugin_register_static() {
        eprintln!("could not register the rtspannounce plugin: {e}");
        return ExitCode::FAILURE;
    }

    let (pipeline, sink) = match build_pipeline(&location) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "could not build the pipeline: {e} (needs videotestsrc, x264enc, rtph264pay: \
                 gstreamer1.0-plugins-base, -ugly, -good)"
            );
            return ExitCode::FAILURE;
        }
    };

    let ok = run(&pipeline, &sink);
    let _ = pipeline.set_state(gst::State::Null);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
