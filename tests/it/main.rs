//! The integration tests, in one binary: each module below was a test binary of its own, and
//! the helpers under `tests/common` are compiled once for all of them. Four suites stay apart,
//! each in a process of its own because it measures that process: `concurrency`, `errors` and
//! `hostile` count its threads, `slow_reader` reads its memory.
//!
//! `cargo test --test it codec_matrix::` runs one module.

#[path = "../common/harness.rs"]
mod harness;
#[path = "../common/klv_source.rs"]
mod klv_source;
#[path = "../common/ntp_server.rs"]
mod ntp_server;
#[path = "../common/peers.rs"]
mod peers;
#[path = "../common/record_server.rs"]
mod record_server;
#[path = "../common/scripted_server.rs"]
mod scripted_server;

mod auth;
mod av_sync;
mod caps_change;
mod clock_signalling;
mod codec_matrix;
mod congestion;
mod defects;
mod element;
mod encoded_input;
mod examples;
mod interop_ffmpeg;
mod interop_gst_rtsp_server;
mod keepalive;
mod klv;
mod protocol;
mod record_server_selftest;
mod resilience;
mod rtcp;
mod scripted;
mod scripted_server_selftest;
mod seek;
mod srtp;
mod state_changes;
mod tls;
mod tunnel;
mod udp;
mod websocket;
