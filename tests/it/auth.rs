//! Authentication against the scripted server: Basic, Digest MD5 with qop, Digest SHA-256,
//! stale nonces, refused credentials, and no password anywhere in logs or errors.

use crate::harness::*;
use crate::scripted_server::*;
use base64::Engine as _;
use gst::prelude::*;
use md5::Md5;
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const USER: &str = "pusher";
const PASS: &str = "s3cret-Pa55";

fn push(location: &str, extra: &str) -> Outcome {
    init();
    let p = gst::parse::launch(&format!(
        "{} ! rtspannounce location=\"{location}\" sync=false {extra}",
        h264_branch(10, "vpay")
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    run(&p, T)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses `Digest k="v", ...` into pairs (test-side, independent of the element's parser).
fn digest_fields(v: &str) -> std::collections::HashMap<String, String> {
    let body = v.strip_prefix("Digest ").unwrap_or(v);
    let mut out = std::collections::HashMap::new();
    for part in body.split(", ") {
        if let Some((k, v)) = part.split_once('=') {
            out.insert(k.trim().to_string(), v.trim_matches('"').to_string());
        }
    }
    out
}

/// Checks a Digest answer the way a server does.
fn digest_ok(
    req: &RecordedRequest,
    realm: &str,
    nonce: &str,
    sha256: bool,
    password: &str,
) -> bool {
    let Some(auth) = req.header("Authorization") else {
        return false;
    };
    let f = digest_fields(auth);
    let h = |s: String| {
        if sha256 {
            hex(&Sha256::digest(s.as_bytes()))
        } else {
            hex(&Md5::digest(s.as_bytes()))
        }
    };
    if f.get("username").map(String::as_str) != Some(USER)
        || f.get("nonce").map(String::as_str) != Some(nonce)
        || f.get("uri").map(String::as_str) != Some(req.uri.as_str())
    {
        return false;
    }
    let ha1 = h(format!("{USER}:{realm}:{password}"));
    let ha2 = h(format!("{}:{}", req.method, req.uri));
    let expect = match f.get("qop") {
        Some(q) => h(format!(
            "{ha1}:{nonce}:{}:{}:{q}:{ha2}",
            f["nc"], f["cnonce"]
        )),
        None => h(format!("{ha1}:{nonce}:{ha2}")),
    };
    f.get("response") == Some(&expect)
}

#[test]
fn basic_auth_sent_only_when_asked_then_on_every_request() {
    let expect = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
    );
    let e2 = expect.clone();
    let server = ScriptedServer::start(Script::new().custom("*", move |req| {
        if req.header("Authorization") == Some(e2.as_str()) {
            Action::Normal
        } else {
            Action::status(401, "Unauthorized")
                .with_header("WWW-Authenticate", "Basic realm=\"cams\"")
        }
    }));
    let url = server.url("/live/cam");
    let out = push(&url, &format!("user-id={USER} user-pw={PASS}"));
    assert!(out.eos, "{out:?}");
    let reqs = server.requests();
    let methods: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        methods,
        ["ANNOUNCE", "ANNOUNCE", "SETUP", "RECORD", "TEARDOWN"]
    );
    assert_eq!(
        reqs[0].header("Authorization"),
        None,
        "Basic sent before asked"
    );
    for r in &reqs[1..] {
        assert_eq!(
            r.header("Authorization"),
            Some(expect.as_str()),
            "{}",
            r.method
        );
    }
}

#[test]
fn credentials_from_the_url_are_decoded_and_not_in_the_request_uri() {
    let server = ScriptedServer::start(Script::new().custom("*", move |req| {
        let ok = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("us@r:p:ss w")
        );
        if req.header("Authorization") == Some(ok.as_str()) {
            Action::Normal
        } else {
            Action::status(401, "Unauthorized").with_header("WWW-Authenticate", "Basic realm=\"x\"")
        }
    }));
    let url = format!(
        "rtsp://us%40r:p%3Ass%20w@127.0.0.1:{}/live/cam",
        server.port()
    );
    let out = push(&url, "");
    assert!(out.eos, "{out:?}");
    for r in server.requests() {
        assert!(
            !r.uri.contains("us%40r") && !r.uri.contains('@'),
            "{}",
            r.uri
        );
    }
}

fn digest_server(realm: &'static str, sha256: bool, qop: bool, stale_once: bool) -> ScriptedServer {
    let alg = if sha256 { ", algorithm=SHA-256" } else { "" };
    let qop_s = if qop { ", qop=\"auth\"" } else { "" };
    let nonce_no = Arc::new(AtomicU32::new(1));
    ScriptedServer::start(Script::new().custom("*", move |req| {
        let n = nonce_no.load(Ordering::SeqCst);
        let nonce = format!("nonce{n}");
        if digest_ok(req, realm, &nonce, sha256, PASS) {
            // The first good answer meets a stale nonce, once.
            if stale_once && n == 1 {
                nonce_no.store(2, Ordering::SeqCst);
                return Action::status(401, "Unauthorized").with_header(
                    "WWW-Authenticate",
                    &format!("Digest realm=\"{realm}\", nonce=\"nonce2\", stale=true{alg}{qop_s}"),
                );
            }
            return Action::Normal;
        }
        Action::status(401, "Unauthorized")
            .with_header("WWW-Authenticate", "Basic realm=\"weak\"")
            .with_header(
                "WWW-Authenticate",
                &format!("Digest realm=\"{realm}\", nonce=\"{nonce}\"{alg}{qop_s}"),
            )
    }))
}

#[test]
fn digest_md5_with_qop() {
    let server = digest_server("md5realm", false, true, false);
    let out = push(
        &server.url("/live/cam"),
        &format!("user-id={USER} user-pw={PASS}"),
    );
    assert!(out.eos, "{out:?}");
    let reqs = server.requests();
    // The strongest challenge (Digest, not Basic) was answered.
    assert!(reqs[1]
        .header("Authorization")
        .unwrap()
        .starts_with("Digest "));
    let ncs: Vec<String> = reqs[1..]
        .iter()
        .map(|r| digest_fields(r.header("Authorization").unwrap())["nc"].clone())
        .collect();
    assert_eq!(ncs, ["00000001", "00000002", "00000003", "00000004"]);
}

#[test]
fn digest_sha256_without_qop() {
    let server = digest_server("sharealm", true, false, false);
    let out = push(
        &server.url("/live/cam"),
        &format!("user-id={USER} user-pw={PASS}"),
    );
    assert!(out.eos, "{out:?}");
    assert!(server.requests()[1]
        .header("Authorization")
        .unwrap()
        .contains("algorithm=SHA-256"));
}

#[test]
fn stale_nonce_is_retried_without_error() {
    let server = digest_server("r", false, true, true);
    let out = push(
        &server.url("/live/cam"),
        &format!("user-id={USER} user-pw={PASS}"),
    );
    assert!(out.eos, "{out:?}");
    let methods: Vec<String> = server.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(&methods[..3], ["ANNOUNCE", "ANNOUNCE", "ANNOUNCE"]);
}

#[test]
fn wrong_password_is_not_authorized_and_never_logged() {
    init();
    // Everything GStreamer logs, at every level, while the push fails.
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let l2 = log.clone();
    let func = gst::log::add_log_function(move |cat, level, _file, _func, _line, _obj, msg| {
        if cat.name() == "rtspannounce" || level <= gst::DebugLevel::Info {
            if let Some(m) = msg.get() {
                let mut l = l2.lock().unwrap();
                l.push_str(&m);
                l.push('\n');
            }
        }
    });
    gst::log::set_active(true);
    let cat = gst::DebugCategory::get("rtspannounce").unwrap();
    let old = cat.threshold();
    cat.set_threshold(gst::DebugLevel::Memdump);

    let wrong = "Wr0ng-Secret-XYZ";
    let server = digest_server("r", false, true, false);
    let url = format!("rtsp://{USER}:{wrong}@127.0.0.1:{}/live/cam", server.port());
    let out = push(&url, "");
    cat.set_threshold(old);
    gst::log::remove_log_function(func);

    assert_eq!(
        out.error_is,
        Some(gst::ResourceError::NotAuthorized),
        "{out:?}"
    );
    let text = out.error_text();
    assert!(text.contains("refused the credentials"), "{text}");
    let log = log.lock().unwrap();
    assert!(log.contains("ANNOUNCE"), "the debug log was not captured");
    assert!(!log.contains(wrong), "password in the debug log");
    assert!(!text.contains(wrong), "password in the error");
    // Basic's base64 of the credentials must not show either.
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{wrong}"));
    assert!(!log.contains(&b64));
}

#[test]
fn no_credentials_names_what_to_set() {
    let server = digest_server("cams", false, true, false);
    let out = push(&server.url("/live/cam"), "");
    assert_eq!(
        out.error_is,
        Some(gst::ResourceError::NotAuthorized),
        "{out:?}"
    );
    assert!(out.error_text().contains("user-id"), "{}", out.error_text());
}
