//! Protocol completeness against the scripted server: redirects, OPTIONS fallback, update-sdp,
//! requests from the server, and hard limits on what a server may send.

use crate::harness::*;
use crate::scripted_server::*;
use gst::prelude::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn pipeline(location: &str, extra: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(&format!(
        "{} ! rtspannounce name=s location=\"{location}\" sync=false {extra}",
        h264_branch(10, "vpay")
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap()
}

fn push(location: &str, extra: &str) -> Outcome {
    run(&pipeline(location, extra), T)
}

fn redirect_to(url: String) -> Script {
    Script::new().on(
        "ANNOUNCE",
        Action::status(302, "Found").with_header("Location", &url),
    )
}

#[test]
fn redirect_chain_to_another_port() {
    let target = ScriptedServer::start(Script::new());
    let hop2 = ScriptedServer::start(redirect_to(target.url("/final")));
    // A relative Location on the first hop, then an absolute one to another port.
    let hop1 = ScriptedServer::start(Script::new().custom("ANNOUNCE", {
        let next = hop2.url("/second");
        move |_| Action::status(301, "Moved Permanently").with_header("Location", &next)
    }));
    let out = push(&hop1.url("/first"), "");
    assert!(out.eos, "{out:?}");
    assert_eq!(hop1.snapshot().methods(), ["ANNOUNCE"]);
    assert_eq!(hop2.snapshot().methods(), ["ANNOUNCE"]);
    let snap = target.snapshot();
    assert_eq!(snap.methods(), ["ANNOUNCE", "SETUP", "RECORD", "TEARDOWN"]);
    assert!(snap.requests[0].uri.ends_with("/final"));
    assert!(!snap.frames.is_empty());
}

#[test]
fn relative_redirect_on_the_same_server() {
    let server = ScriptedServer::start(Script::new().custom("ANNOUNCE", |req| {
        if req.uri.ends_with("/old") {
            Action::status(307, "Temporary Redirect").with_header("Location", "/new/path")
        } else {
            Action::Normal
        }
    }));
    let out = push(&server.url("/old"), "");
    assert!(out.eos, "{out:?}");
    let r = server.requests();
    assert!(r[1].uri.ends_with("/new/path"), "{}", r[1].uri);
}

#[test]
fn redirect_loop_is_an_error() {
    let server = ScriptedServer::start(Script::new().custom("ANNOUNCE", |req| {
        let next = if req.uri.ends_with("/a") { "/b" } else { "/a" };
        Action::status(302, "Found").with_header("Location", next)
    }));
    let out = push(&server.url("/a"), "");
    assert!(out.error_text().contains("redirect loop"), "{out:?}");
}

#[test]
fn too_many_redirects_is_an_error() {
    let server = ScriptedServer::start(Script::new().custom("ANNOUNCE", |req| {
        let n: u32 = req
            .uri
            .rsplit("/h")
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        Action::status(302, "Found").with_header("Location", &format!("/h{}", n + 1))
    }));
    let out = push(&server.url("/h0"), "");
    assert!(
        out.error_text().contains("more than 5 redirects"),
        "{out:?}"
    );
    assert_eq!(server.snapshot().count("ANNOUNCE"), 6);
}

#[test]
fn credentials_do_not_follow_a_redirect_to_another_host() {
    // 127.0.0.1 and localhost are different host names: the credentials stay behind.
    let target = ScriptedServer::start(Script::new().custom("*", |req| {
        if req.header("Authorization").is_some() {
            Action::status(400, "Leaked")
        } else {
            Action::status(401, "Unauthorized").with_header("WWW-Authenticate", "Basic realm=\"t\"")
        }
    }));
    let other = format!("rtsp://localhost:{}/t", target.port());
    let hop = ScriptedServer::start(redirect_to(other));
    let out = push(&hop.url("/x"), "user-id=u user-pw=secretpw");
    assert_eq!(
        out.error_is,
        Some(gst::ResourceError::NotAuthorized),
        "{out:?}"
    );
    assert!(target
        .requests()
        .iter()
        .all(|r| r.header("Authorization").is_none()));
}

#[test]
fn options_first_when_announce_is_refused() {
    let server = ScriptedServer::start(Script::new().custom("ANNOUNCE", |req| {
        if req.cseq() == Some(1) {
            Action::status(455, "Method Not Valid In This State")
        } else {
            Action::Normal
        }
    }));
    let out = push(&server.url("/live"), "");
    assert!(out.eos, "{out:?}");
    assert_eq!(
        server.snapshot().methods(),
        ["ANNOUNCE", "OPTIONS", "ANNOUNCE", "SETUP", "RECORD", "TEARDOWN"]
    );
}

#[test]
fn update_sdp_edits_what_is_announced() {
    let server = ScriptedServer::start(Script::new());
    let p = pipeline(&server.url("/live"), "");
    let sink = p.by_name("s").unwrap();
    sink.connect("update-sdp", false, |args| {
        use gst::glib::translate::ToGlibPtr;
        // The handler receives the element's message itself, not a copy: edit it in place
        // (from C or Python this is a plain GstSDPMessage*).
        let msg = unsafe {
            &mut *(gst::glib::gobject_ffi::g_value_get_boxed(args[1].to_glib_none().0)
                as *mut gst_sdp::SDPMessageRef)
        };
        msg.add_attribute("x-test", Some("edited"));
        msg.set_session_name("Camera 7");
        None
    });
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let sdp = server.requests()[0].body_str();
    assert!(sdp.contains("a=x-test:edited\r\n"), "{sdp}");
    assert!(sdp.contains("s=Camera 7\r\n"), "{sdp}");
}

fn limit_case(reply: Vec<u8>, needle: &str) {
    let server = ScriptedServer::start(Script::new().garbage_bytes("ANNOUNCE", &reply));
    let t = Instant::now();
    let out = push(&server.url("/x"), "tcp-timeout=5000000");
    assert!(out.error.is_some(), "{out:?}");
    assert!(
        out.error_text().contains(needle),
        "{needle}: {}",
        out.error_text()
    );
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
}

#[test]
fn hostile_replies_hit_limits() {
    // A 10 MiB header block.
    let mut big = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n".to_vec();
    while big.len() < 10 << 20 {
        big.extend_from_slice(
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    big.extend_from_slice(b"\r\n");
    limit_case(big, "larger than 65536 bytes");
    // One header line that never ends.
    let mut endless = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nX: ".to_vec();
    endless.extend(std::iter::repeat_n(b'a', 200 * 1024));
    limit_case(endless, "larger than 65536 bytes");
    // A body of 2^40 bytes announced.
    limit_case(
        b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Length: 1099511627776\r\n\r\n".to_vec(),
        "1099511627776 bytes",
    );
}

#[test]
fn get_parameter_from_the_server_is_answered() {
    let server = ScriptedServer::start(Script::new().request_after_record("GET_PARAMETER"));
    init();
    let p = gst::parse::launch(&format!(
        "videotestsrc is-live=true num-buffers=30 ! video/x-raw,width=160,height=120,framerate=30/1 ! \
         x264enc tune=zerolatency ! rtph264pay ! rtspannounce location={}",
        server.url("/live")
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let out = run(&p, T);
    assert!(out.eos, "{out:?}");
    let snap = server.snapshot();
    assert_eq!(snap.responses.len(), 1);
    assert_eq!(snap.responses[0].status, 200);
    assert_eq!(
        snap.responses[0].header("Session"),
        Some(DEFAULT_SESSION_ID)
    );
}

fn live(location: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 ! \
         x264enc tune=zerolatency ! rtph264pay ! rtspannounce name=s location={location} retry-max=0"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap()
}

#[test]
fn teardown_from_the_server_ends_the_session_with_an_error() {
    let server = ScriptedServer::start(Script::new());
    let p = live(&server.url("/live"));
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_frames(10, T));
    server.send_request("TEARDOWN").unwrap();
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Error])
        .expect("error after the server's TEARDOWN");
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    assert!(
        e.error().message().contains("sent TEARDOWN"),
        "{}",
        e.error()
    );
    p.set_state(gst::State::Null).unwrap();
    let snap = server.snapshot();
    assert_eq!(snap.responses.len(), 1);
    assert_eq!(snap.responses[0].status, 200);
}

#[test]
fn handle_request_lets_the_application_answer() {
    let server = ScriptedServer::start(Script::new());
    let p = live(&server.url("/live"));
    let sink = p.by_name("s").unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    sink.connect("handle-request", false, move |args| {
        let req = args[1].get::<gst::Structure>().unwrap();
        s2.lock().unwrap().push(req.name().to_string());
        if req.name() == "SET_PARAMETER" {
            let resp = gst::Structure::builder("response")
                .field("status", 451u32)
                .field("reason", "Parameter Not Understood")
                .field("X-App", "yes")
                .build();
            return Some(Some(resp).to_value());
        }
        Some(None::<gst::Structure>.to_value())
    });
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_frames(5, T));
    server.send_request("SET_PARAMETER").unwrap();
    server.send_request("OPTIONS").unwrap();
    assert!(server.wait_responses(2, T));
    p.set_state(gst::State::Null).unwrap();
    let snap = server.snapshot();
    assert_eq!(snap.responses[0].status, 451);
    assert_eq!(snap.responses[0].header("X-App"), Some("yes"));
    assert_eq!(
        snap.responses[1].status, 200,
        "default answer when the app says nothing"
    );
    assert_eq!(*seen.lock().unwrap(), ["SET_PARAMETER", "OPTIONS"]);
}
