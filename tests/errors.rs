//! Every failure ends in a GStreamer error that names the cause, within its bound, with no
//! thread left behind. One test function so the thread count is not disturbed by other tests.

#[path = "common/harness.rs"]
#[allow(dead_code)] // shared helpers: this suite uses some of them
mod harness;
#[path = "common/scripted_server.rs"]
#[allow(dead_code)] // shared helpers: this suite uses some of them
mod scripted_server;

use gst::prelude::*;
use harness::*;
use scripted_server::*;
use std::time::{Duration, Instant};

fn push_to(location: &str, extra: &str) -> (Outcome, Duration) {
    init();
    let p = gst::parse::launch(&format!(
        "{} ! rtspannounce location=\"{location}\" sync=false {extra}",
        h264_branch(30, "vpay")
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let t = Instant::now();
    let out = run(&p, Duration::from_secs(20));
    (out, t.elapsed())
}

fn expect_error(
    what: &str,
    (out, took): (Outcome, Duration),
    kind: gst::ResourceError,
    needles: &[&str],
    bound: Duration,
) {
    assert!(!out.timed_out, "{what}: no error within the bound: {out:?}");
    assert!(!out.eos, "{what}: EOS instead of an error");
    let text = out.error_text();
    assert_eq!(out.error_is, Some(kind), "{what}: {text}");
    for n in needles {
        assert!(text.contains(n), "{what}: {n:?} not in {text:?}");
    }
    assert!(took < bound, "{what}: took {took:?}");
}

#[test]
fn errors_are_clear_and_leave_nothing_behind() {
    init();
    // Warm up: the shared I/O runtime and GStreamer's own threads exist from here on.
    let server = ScriptedServer::start(Script::new());
    let (out, _) = push_to(&server.url("/warm"), "");
    assert!(out.eos, "{out:?}");
    drop(server);
    let base_threads = threads();

    // Nothing listens on the port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    expect_error(
        "refused",
        push_to(&format!("rtsp://127.0.0.1:{port}/x"), ""),
        gst::ResourceError::OpenWrite,
        &["Could not publish", "cannot connect", "refused"],
        Duration::from_secs(5),
    );

    // The server reads ANNOUNCE and never answers: tcp-timeout fires.
    let server = ScriptedServer::start(Script::new().never_answer("ANNOUNCE"));
    expect_error(
        "silent server",
        push_to(&server.url("/x"), "tcp-timeout=500000"),
        gst::ResourceError::OpenWrite,
        &["did not answer ANNOUNCE"],
        Duration::from_secs(5),
    );
    drop(server);

    let server = ScriptedServer::start(Script::new().respond_status("ANNOUNCE", 404, "Not Found"));
    expect_error(
        "404",
        push_to(&server.url("/nope"), ""),
        gst::ResourceError::NotFound,
        &["refused ANNOUNCE", "404 Not Found", "/nope"],
        Duration::from_secs(5),
    );
    drop(server);

    let server = ScriptedServer::start(Script::new().garbage("ANNOUNCE"));
    expect_error(
        "garbage",
        push_to(&server.url("/x"), ""),
        gst::ResourceError::OpenWrite,
        &["invalid message", "HTTP/1.1"],
        Duration::from_secs(5),
    );
    drop(server);

    let server = ScriptedServer::start(
        Script::new()
            .transport_override("RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001"),
    );
    expect_error(
        "UDP transport answer",
        push_to(&server.url("/x"), ""),
        gst::ResourceError::OpenWrite,
        &["Transport", "TCP interleaved"],
        Duration::from_secs(5),
    );
    drop(server);

    let server =
        ScriptedServer::start(Script::new().respond_status("SETUP", 461, "Unsupported Transport"));
    expect_error(
        "461",
        push_to(&server.url("/x"), ""),
        gst::ResourceError::OpenWrite,
        &["refused SETUP", "461 Unsupported Transport", "streamid=0"],
        Duration::from_secs(5),
    );
    drop(server);

    let server = ScriptedServer::start(Script::new().close_on("RECORD"));
    expect_error(
        "closed on RECORD",
        push_to(&server.url("/x"), ""),
        gst::ResourceError::OpenWrite,
        &["closed the connection", "RECORD"],
        Duration::from_secs(5),
    );
    drop(server);

    expect_error(
        "unknown host",
        push_to("rtsp://no-such-host.invalid:8554/x", "tcp-timeout=3000000"),
        gst::ResourceError::NotFound,
        &["no-such-host.invalid"],
        Duration::from_secs(5),
    );

    // Passwords never appear in an error.
    let port2 = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (out, _) = push_to(
        &format!("rtsp://user:hunter2secret@127.0.0.1:{port2}/x"),
        "",
    );
    assert!(out.error.is_some());
    assert!(
        !out.error_text().contains("hunter2secret"),
        "{}",
        out.error_text()
    );

    // Bad locations fail at once with a Settings error.
    for bad in ["http://127.0.0.1/x", "rtsp://", "rtsp://127.0.0.1:0/x"] {
        let (out, _) = push_to(bad, "");
        assert_eq!(
            out.error_is,
            Some(gst::ResourceError::Settings),
            "{bad}: {out:?}"
        );
        assert!(out.error_text().contains("Invalid location"), "{bad}");
    }

    // Nothing left running: streaming threads joined, I/O tasks ended, servers stopped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads() > base_threads && Instant::now() < deadline {
        // Threads end asynchronously after NULL (the OS reaps them); wait for the count.
        std::thread::yield_now();
    }
    assert!(
        threads() <= base_threads,
        "threads: {} before, {} after",
        base_threads,
        threads()
    );
}

#[test]
fn server_lost_while_streaming_is_a_write_error() {
    init();
    let server = ScriptedServer::start(Script::new());
    let url = server.url("/x");
    let p = gst::parse::launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 ! \
         x264enc tune=zerolatency ! rtph264pay ! rtspannounce location={url} retry-max=0"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let s2 = &server;
    std::thread::scope(|sc| {
        sc.spawn(move || {
            assert!(s2.wait_frames(10, Duration::from_secs(10)));
            assert!(s2.drop_connection());
        });
        let out = run(&p, Duration::from_secs(20));
        assert_eq!(out.error_is, Some(gst::ResourceError::Write), "{out:?}");
        assert!(
            out.error_text().contains("Publishing to"),
            "{}",
            out.error_text()
        );
    });
}
