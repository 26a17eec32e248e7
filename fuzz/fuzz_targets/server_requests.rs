//! What a server's requests and an application's answers turn into: arbitrary bytes parsed as
//! server requests, each shown as the `handle-request` structure, answered with an arbitrary
//! answer structure built from the input, the response serialised and read back; and
//! arbitrary Transport and Session values through the handshake to channels and a session id.
//!
//! Input: three parts separated by 0xFF 0xFF: the bytes a server sends (the first byte sets
//! the read size), the answer's fields, and lines of header values (a Session and a
//! Content-Base value for the ANNOUNCE answer, then Transport values for one SETUP answer each).
//!
//! What must hold: no panic and no GStreamer-CRITICAL (run with G_DEBUG=fatal-criticals); a
//! structure only ever named after a valid method; the response we send is well-framed (every
//! line ends in CRLF, no bare CR or LF) and reads back as exactly what we meant to send; the
//! channels a handshake agrees on are distinct; a session id is one header-safe word; every
//! request the handshake sends is well-framed and reads back as sent.
#![no_main]

use gstrtspannounce::fuzzing::{
    answer, answer_response, is_gst_name, is_token, request_fields, ControlStyle, Handshake,
    Incoming, Limits, Lower, Names, Parser, Request, RequestContext, Response, RtspUrl, Session,
    Step,
};
use libfuzzer_sys::fuzz_target;
use std::sync::Once;

static INIT: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    INIT.call_once(|| gst::init().expect("gst::init"));
    let mut parts = split(data, b"\xff\xff");
    let wire = parts.next().unwrap_or_default();
    let fields = parts.next().unwrap_or_default();
    let headers = parts.next().unwrap_or_default();
    server_requests(wire, fields);
    transports_and_session(headers);
});

fn split<'a>(data: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.windows(sep.len()).position(|w| w == sep) {
            Some(i) => {
                rest = Some(&r[i + sep.len()..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

fn server_requests(wire: &[u8], fields: &[u8]) {
    let Some((&step, wire)) = wire.split_first() else {
        return;
    };
    let mut p = Parser::new(Limits {
        max_header_bytes: 4096,
        max_headers: 32,
        max_body_bytes: 4096,
    });
    for chunk in wire.chunks(step as usize % 16 + 1) {
        p.feed(chunk);
        loop {
            match p.next_message() {
                Ok(Some(Incoming::Request(req))) => one_request(&req, fields),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn one_request(req: &Request, fields: &[u8]) {
    let mut shown = false;
    let resp = answer(req, |r| {
        // A budget per input, so that one run's names do not use up the next one's (small, so
        // that running out is covered too).
        let view = request_fields(r, &mut Names::new(8)).ok()?;
        assert!(view.fields.len() <= r.headers.0.len() + 2);
        let s = view.structure();
        shown = true;
        assert!(
            is_token(&r.method) && is_gst_name(&r.method),
            "{:?}",
            r.method
        );
        assert_eq!(s.name(), r.method.as_str());
        for (n, _) in s.iter() {
            assert!(is_gst_name(n.as_str()), "field {n:?}");
        }
        // What a handler may do with it: its text form reads back the same.
        let text = s.to_string();
        let back: gst::Structure = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(back, s, "{text:?}");
        let a = answer_structure(fields);
        answer_response(&a).ok().map(|(r, _)| r)
    });
    if shown {
        assert!(is_gst_name(&req.method));
    }
    let bytes = resp.to_bytes();
    crlf_only(&bytes);
    let mut p = Parser::default();
    p.feed(&bytes);
    let Ok(Some(Incoming::Response(back))) = p.next_message() else {
        panic!(
            "our answer does not parse: {:?}",
            String::from_utf8_lossy(&bytes)
        );
    };
    assert_eq!(p.pending(), 0, "{:?}", String::from_utf8_lossy(&bytes));
    assert_eq!(back.status, resp.status);
    assert_eq!(back.reason, resp.reason.trim());
    assert_eq!(back.body, resp.body);
    let sent: Vec<(String, String)> = resp
        .headers
        .0
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("Content-Length"))
        .map(|(n, v)| (n.clone(), v.trim().to_string()))
        .collect();
    let got: Vec<(String, String)> = back
        .headers
        .0
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("Content-Length"))
        .cloned()
        .collect();
    assert_eq!(got, sent, "{:?}", String::from_utf8_lossy(&bytes));
}

/// An answer structure from bytes: records of (kind, name length, name, value length, value).
fn answer_structure(b: &[u8]) -> gst::Structure {
    let mut s = gst::Structure::new_empty("response");
    let mut rest = b;
    let mut take = |n: usize| {
        let (h, t) = rest.split_at(n.min(rest.len()));
        rest = t;
        h
    };
    loop {
        let [kind, nlen] = take(2) else {
            break;
        };
        let (kind, nlen) = (*kind, *nlen);
        let name = String::from_utf8_lossy(take(nlen as usize % 24)).replace('\0', "");
        let vlen = take(1).first().copied().unwrap_or(0) as usize;
        let value = take(vlen);
        // A Rust string with a NUL cannot become a GValue (glib-rs panics): an application
        // cannot hand us one.
        let text = String::from_utf8_lossy(value).replace('\0', "");
        let num = value
            .iter()
            .take(4)
            .fold(0u32, |acc, d| (acc << 8) | u32::from(*d));
        match kind % 9 {
            0 => s.set("status", num % 1200),
            1 => s.set("status", (num as i32) % 1200),
            2 => s.set("reason", text),
            3 => s.set("body", text),
            4 => s.set(name.as_str(), text),
            5 => s.set(name.as_str(), num as i32),
            6 => s.set(name.as_str(), f64::from(num)),
            7 => s.set(name.as_str(), num % 2 == 0),
            _ => s.set("status", u64::from(num) << 8),
        }
    }
    s
}

fn transports_and_session(text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    let mut lines = text.split('\n');
    let session = lines.next().unwrap_or("");
    let content_base = lines.next().unwrap_or("");
    let transports: Vec<&str> = lines.take(4).collect();

    if let Ok(s) = Session::parse(session) {
        assert!(!s.id.is_empty());
        assert!(!s.id.chars().any(|c| c.is_whitespace() || c.is_control()));
        // It goes back in every request's Session header: one word, read back whole.
        let mut r = Request::new("RECORD", "rtsp://h/x");
        r.headers.push("Session", s.id.clone());
        let mut p = Parser::default();
        p.feed(&r.to_bytes());
        let Ok(Some(Incoming::Request(back))) = p.next_message() else {
            panic!("{:?}", s.id)
        };
        assert_eq!(back.headers.get("Session"), Some(s.id.as_str()));
    }

    let n = transports.len().max(1);
    let url = RtspUrl::parse("rtsp://127.0.0.1:8554/live").unwrap();
    let mut hs = Handshake::new(
        url,
        ControlStyle::Ffmpeg,
        "v=0\r\n".into(),
        (0..n).map(|i| format!("streamid={i}")).collect(),
        RequestContext::new("fuzz"),
    )
    .with_transports(&[Lower::Tcp]);
    let mut req = hs.start();
    let mut setups = 0;
    for _ in 0..16 {
        well_framed(&req);
        let mut resp = Response::new(200, "OK");
        if let Some(c) = req.headers.get("CSeq") {
            resp.headers.push("CSeq", c);
        }
        match req.method.as_str() {
            "ANNOUNCE" => {
                if !session.is_empty() {
                    resp.headers.push("Session", session);
                }
                if !content_base.is_empty() {
                    resp.headers.push("Content-Base", content_base);
                }
            }
            "SETUP" => {
                if let Some(t) = transports.get(setups) {
                    resp.headers.push("Transport", *t);
                }
                setups += 1;
            }
            _ => {}
        }
        match hs.handle_response(&resp) {
            Ok(Step::Send(next)) => req = next,
            Ok(Step::Done(neg)) => {
                let mut seen = std::collections::HashSet::new();
                for t in &neg.tracks {
                    assert!(seen.insert(t.rtp_channel), "{:?}", neg.tracks);
                    assert!(seen.insert(t.rtcp_channel), "{:?}", neg.tracks);
                }
                assert_eq!(neg.tracks.len(), n);
                if let Some(id) = &neg.session_id {
                    assert_eq!(&Session::parse(id).expect("our own session id").id, id);
                }
                return;
            }
            Ok(Step::BindUdp(_)) => panic!("UDP was not offered"),
            Err(_) => return,
        }
    }
    panic!("the handshake did not end");
}

/// A message's head ends its lines with CRLF only: no bare CR or LF a value could have smuggled.
fn crlf_only(bytes: &[u8]) {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head end")
        + 4;
    let head = &bytes[..head_end];
    let text = String::from_utf8_lossy(head);
    for (i, b) in head.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(head.get(i + 1), Some(&b'\n'), "bare CR in {text:?}"),
            b'\n' => assert_eq!(head[i - 1], b'\r', "bare LF in {text:?}"),
            _ => {}
        }
    }
}

/// `req` on the wire: CRLF line ends only, and it reads back as the same request.
fn well_framed(req: &Request) {
    let bytes = req.to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    crlf_only(&bytes);
    let mut p = Parser::default();
    p.feed(&bytes);
    let Ok(Some(Incoming::Request(back))) = p.next_message() else {
        panic!("our request does not parse: {text:?}");
    };
    assert_eq!(p.pending(), 0, "{text:?}");
    assert_eq!(
        (&back.method, &back.uri),
        (&req.method, &req.uri),
        "{text:?}"
    );
    assert_eq!(back.body, req.body);
}
