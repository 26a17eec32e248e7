//! The `handle-request` signal's values: a request from the server as the structure the
//! application sees, and the application's answer structure as the response we send.
//!
//! Everything here comes from the wire or from an application, and GStreamer answers a bad
//! structure name with a CRITICAL and NULL (undefined behaviour on the Rust side), so names
//! are checked before GStreamer sees them. GStreamer also keeps every structure and field name
//! for the life of the process, so new names from the wire come from a bounded budget (`Names`).
//! Unit-tested and fuzzed as they are: no I/O, no signal, nothing of the element's.

use crate::rtsp::message::{Request, Response};
use crate::rtsp::server_request::{is_token, line_text, reason_phrase};
use gst::glib;
use std::collections::HashSet;
use std::fmt;
use std::sync::{LazyLock, Mutex};

/// A name GStreamer 1.22 takes for a structure (`gst_structure_validate_name`): an ASCII
/// letter, then ASCII letters, digits and any of `/-_.:+`. Field names are held to the same rule
/// (1.22 does not check them, but a structure whose field names break it does not survive
/// `to_string`/`from_string`, and a later GStreamer may refuse it).
pub fn is_gst_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"/-_.:+".contains(&b))
}

/// Why a request is not shown to the application: it gets the default answer instead
/// (`rtsp::server_request::default_response`: 400 and 501 respectively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotShown {
    /// The method is not an RTSP token.
    Malformed(String),
    /// The method is a token, but no structure can be named after it.
    Unnamable(String),
    /// The method would be a new name, and the budget of new names is spent (see `Names`).
    NoNamesLeft(String),
}

impl fmt::Display for NotShown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotShown::Malformed(m) => write!(f, "method {m:?} is not an RTSP token"),
            NotShown::Unnamable(m) => {
                write!(f, "method {m:?} cannot name a GStreamer structure")
            }
            NotShown::NoNamesLeft(m) => write!(
                f,
                "method {m:?} would be a new name for GStreamer to keep, and none are left"
            ),
        }
    }
}

/// Field names we set ourselves; headers of these names (in any case) are left out.
const REQUEST_FIELDS: [&str; 2] = ["uri", "body"];

/// Methods and header names of RFC 2326 (10, 12), spelled as it spells them: always usable.
const STANDARD_NAMES: &[&str] = &[
    "ANNOUNCE",
    "DESCRIBE",
    "GET_PARAMETER",
    "OPTIONS",
    "PAUSE",
    "PLAY",
    "RECORD",
    "REDIRECT",
    "SETUP",
    "SET_PARAMETER",
    "TEARDOWN",
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Allow",
    "Authorization",
    "Bandwidth",
    "Blocksize",
    "Cache-Control",
    "Conference",
    "Connection",
    "Content-Base",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Location",
    "Content-Type",
    "CSeq",
    "Date",
    "Expires",
    "From",
    "Host",
    "If-Match",
    "If-Modified-Since",
    "Last-Modified",
    "Location",
    "Proxy-Authenticate",
    "Proxy-Require",
    "Public",
    "Range",
    "Referer",
    "Retry-After",
    "Require",
    "RTP-Info",
    "Scale",
    "Speed",
    "Server",
    "Session",
    "Timestamp",
    "Transport",
    "Unsupported",
    "User-Agent",
    "Vary",
    "Via",
    "WWW-Authenticate",
];

/// The names from the wire GStreamer is given. A structure's name and its field names become
/// GQuarks, which live as long as the process: a server inventing new header names (or methods)
/// in every request would grow our memory without bound. So besides RFC 2326's own names, at
/// most `max` new names are ever used; once they are spent, a header with yet another name is
/// left out and a request with yet another method gets the default answer without the signal.
#[derive(Debug)]
pub struct Names {
    new: HashSet<String>,
    max: usize,
}

impl Names {
    /// The process-wide budget: far more than any real server uses, a few hundred KiB at most.
    const MAX_NEW: usize = 4096;

    pub fn new(max: usize) -> Names {
        Names {
            new: HashSet::new(),
            max,
        }
    }

    /// Whether `name` may be given to GStreamer: a standard name, one given before, or a new
    /// one while the budget lasts (then counted).
    fn admit(&mut self, name: &str) -> bool {
        if STANDARD_NAMES.contains(&name) || self.new.contains(name) {
            return true;
        }
        if self.new.len() >= self.max {
            return false;
        }
        self.new.insert(name.to_string());
        true
    }
}

/// The budget of the process (GStreamer's names are the process's too).
static PROCESS_NAMES: LazyLock<Mutex<Names>> =
    LazyLock::new(|| Mutex::new(Names::new(Names::MAX_NEW)));

/// What `handle-request` shows for a request, before it is a structure: the structure's name
/// and its string fields in order, and the headers left out (each with the reason), for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub(crate) name: String,
    pub fields: Vec<(String, String)>,
    pub(crate) skipped: Vec<String>,
}

impl Shown {
    pub fn structure(&self) -> gst::Structure {
        let mut s = gst::Structure::new_empty(self.name.as_str());
        for (n, v) in &self.fields {
            s.set(n.as_str(), v.as_str());
        }
        s
    }
}

/// Text for a string field, NULs dropped: glib-rs panics turning a string with a NUL into a
/// GValue (and C would see it end there anyway): a NUL in a header value or the body of a
/// server request made the reader task panic before.
fn gst_text(s: &str) -> String {
    s.replace('\0', "")
}

/// What `handle-request` shows for `req`: a structure named after the method, with `uri`,
/// one string field per header and the body (as text, if any) in `body`. New names are taken
/// from `names`.
///
/// - Headers whose names are not valid field names (see `is_gst_name`), are `uri` or `body`,
///   or are new when `names` has none left, are left out and listed in `skipped`.
/// - A header sent more than once (names compared without case, as RTSP does) is one field,
///   under the first spelling, its values joined with ", " (RFC 2326 4.2 by way of HTTP/1.1).
/// - Values are kept as sent, but for NULs, dropped (see `gst_text`); the body is read as UTF-8,
///   bytes that are not being replaced by U+FFFD.
pub fn request_fields(req: &Request, names: &mut Names) -> Result<Shown, NotShown> {
    if !is_token(&req.method) {
        return Err(NotShown::Malformed(req.method.clone()));
    }
    if !is_gst_name(&req.method) {
        return Err(NotShown::Unnamable(req.method.clone()));
    }
    if !names.admit(&req.method) {
        return Err(NotShown::NoNamesLeft(req.method.clone()));
    }
    let mut fields: Vec<(String, String)> = vec![("uri".into(), gst_text(&req.uri))];
    let mut skipped = Vec::new();
    for (n, v) in &req.headers.0 {
        if !is_gst_name(n) {
            skipped.push(format!("{n} (not a field name)"));
        } else if REQUEST_FIELDS.iter().any(|r| r.eq_ignore_ascii_case(n)) {
            skipped.push(format!("{n} (a field of ours)"));
        } else if let Some((_, joined)) = fields
            .iter_mut()
            .skip(1)
            .find(|(seen, _)| seen.eq_ignore_ascii_case(n))
        {
            joined.push_str(", ");
            joined.push_str(&gst_text(v));
        } else if !names.admit(n) {
            skipped.push(format!("{n} (no new names left)"));
        } else {
            fields.push((n.clone(), gst_text(v)));
        }
    }
    if !req.body.is_empty() {
        fields.push(("body".into(), gst_text(&String::from_utf8_lossy(&req.body))));
    }
    Ok(Shown {
        name: req.method.clone(),
        fields,
        skipped,
    })
}

/// `request_fields` with the process's budget of names, as a structure; with what was left out.
pub(crate) fn request_structure(req: &Request) -> Result<(gst::Structure, Vec<String>), NotShown> {
    // The budget's lock is not held while GStreamer builds the structure.
    let shown = request_fields(req, &mut PROCESS_NAMES.lock().unwrap())?;
    Ok((shown.structure(), shown.skipped))
}

/// Fields of an answer structure that are not headers.
const ANSWER_FIELDS: [&str; 3] = ["status", "reason", "body"];

/// An integer field as a number, whatever integer type the application used (Python and
/// `gst_structure_from_string` give `int`, Rust code often `uint`).
fn integer(v: &glib::SendValue) -> Option<i128> {
    v.get::<u32>()
        .map(i128::from)
        .or_else(|_| v.get::<i32>().map(i128::from))
        .or_else(|_| v.get::<u64>().map(i128::from))
        .or_else(|_| v.get::<i64>().map(i128::from))
        .ok()
}

/// The response for an application's answer structure (any name):
/// - `status` (any integer type), 100 to 999; without one that fits, the answer is unusable
///   (`Err`, and the request gets the default answer);
/// - `reason`, a string; the standard phrase for the status when absent;
/// - `body`, a string: the body;
/// - every other field whose name is an RTSP token and whose value is a string or an integer,
///   a header (CSeq and Content-Length are written by us whatever it says). Other fields are
///   left out and returned by name, for the log.
///
/// Control characters in the reason and header values become spaces (see `line_text`).
pub fn answer_response(answer: &gst::StructureRef) -> Result<(Response, Vec<String>), String> {
    let status = answer
        .value("status")
        .ok()
        .and_then(integer)
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| {
            format!(
                "the answer has no status from 100 to 999 (an integer field): {}",
                answer
            )
        })? as u16;
    let reason = match answer.get::<&str>("reason") {
        Ok(r) => line_text(r),
        Err(_) => reason_phrase(status).to_string(),
    };
    let mut resp = Response::new(status, &reason);
    let mut skipped = Vec::new();
    for (n, v) in answer.iter() {
        let n = n.as_str();
        if ANSWER_FIELDS.contains(&n) {
            continue;
        }
        let value = match v.get::<&str>() {
            Ok(s) => Some(line_text(s)),
            Err(_) => integer(v).map(|i| i.to_string()),
        };
        match value {
            Some(value) if is_token(n) => resp.headers.push(n, value),
            _ => skipped.push(n.to_string()),
        }
    }
    if let Ok(b) = answer.get::<&str>("body") {
        resp.body = b.as_bytes().to_vec();
    } else if answer.has_field("body") {
        skipped.push("body".into());
    }
    Ok((resp, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtsp::message::{Incoming, Parser};
    use gst::prelude::*;

    fn init() {
        gst::init().unwrap();
    }

    fn request(method: &str, headers: &[(&str, &str)], body: &[u8]) -> Request {
        let mut r = Request::new(method, "rtsp://h/live");
        for (n, v) in headers {
            r.headers.push(*n, *v);
        }
        r.body = body.to_vec();
        r
    }

    #[test]
    fn gst_names() {
        for n in [
            "OPTIONS",
            "a",
            "SET_PARAMETER",
            "x-y.z:w+v/u",
            "X1",
            "CSeq",
            "Content-Type",
        ] {
            assert!(is_gst_name(n), "{n}");
        }
        for n in [
            "",
            "1ABC",
            "_A",
            "-A",
            "OPTIONS!",
            "SET_PARAMETER%",
            "A B",
            "A,B",
            "A=B",
            "A;B",
            "caf\u{e9}",
            "\u{e9}t\u{e9}",
            "A\0B",
            "A\u{1}",
            "A~",
        ] {
            assert!(!is_gst_name(n), "{n:?}");
        }
    }

    #[test]
    fn methods_that_cannot_name_a_structure_never_reach_gstreamer() {
        init();
        // Each of these made gst_structure_new_empty print a CRITICAL and return NULL.
        for m in ["OPTIONS!", "SET_PARAMETER%", "1ABC", "_X", "x~y", "$"] {
            assert_eq!(
                request_structure(&request(m, &[("CSeq", "1")], b"")).unwrap_err(),
                NotShown::Unnamable(m.into()),
                "{m}"
            );
        }
        for m in ["SET(X)", "GET/X", "A:B", "", "caf\u{e9}", "A\0"] {
            assert_eq!(
                request_structure(&request(m, &[], b"")).unwrap_err(),
                NotShown::Malformed(m.into()),
                "{m:?}"
            );
        }
    }

    #[test]
    fn request_as_structure() {
        init();
        let req = request(
            "SET_PARAMETER",
            &[
                ("CSeq", "5"),
                ("Session", "abc;timeout=60"),
                ("Content-Type", "text/parameters"),
                ("X-Dup", "one"),
                ("x-dup", "two"),
                ("1Bad", "left out"),
                ("Bad!", "left out"),
                ("URI", "not ours"),
                ("Body", "not ours"),
                ("X-Nul", "a\0b"),
            ],
            b"volume: 0.5\r\n",
        );
        let (s, skipped) = request_structure(&req).unwrap();
        assert_eq!(s.name(), "SET_PARAMETER");
        assert_eq!(s.get::<&str>("uri").unwrap(), "rtsp://h/live");
        assert_eq!(s.get::<&str>("CSeq").unwrap(), "5");
        assert_eq!(s.get::<&str>("Session").unwrap(), "abc;timeout=60");
        assert_eq!(s.get::<&str>("Content-Type").unwrap(), "text/parameters");
        assert_eq!(s.get::<&str>("X-Dup").unwrap(), "one, two");
        assert!(!s.has_field("x-dup"));
        assert_eq!(s.get::<&str>("X-Nul").unwrap(), "ab");
        assert_eq!(s.get::<&str>("body").unwrap(), "volume: 0.5\r\n");
        assert_eq!(
            skipped,
            [
                "1Bad (not a field name)",
                "Bad! (not a field name)",
                "URI (a field of ours)",
                "Body (a field of ours)"
            ]
        );
        assert_eq!(s.n_fields(), 7);
        // What a handler gets survives a round trip through the text form.
        let again: gst::Structure = s.to_string().parse().unwrap();
        assert_eq!(again, s);
        // No body: no field.
        let (s, _) = request_structure(&request("OPTIONS", &[("CSeq", "1")], b"")).unwrap();
        assert!(!s.has_field("body"));
        assert_eq!(s.n_fields(), 2);
    }

    fn answer(fields: &[(&str, glib::SendValue)]) -> gst::Structure {
        let mut s = gst::Structure::new_empty("response");
        for (n, v) in fields {
            s.set_value(*n, v.clone());
        }
        s
    }

    #[test]
    fn answer_as_response() {
        init();
        let a = answer(&[
            ("status", 451u32.to_send_value()),
            ("reason", "Parameter Not Understood".to_send_value()),
            ("X-App", "yes".to_send_value()),
            ("X-Count", 3i32.to_send_value()),
            ("X-Float", 1.5f64.to_send_value()),
            ("body", "why\r\n".to_send_value()),
        ]);
        let (r, skipped) = answer_response(&a).unwrap();
        assert_eq!(
            (r.status, r.reason.as_str()),
            (451, "Parameter Not Understood")
        );
        assert_eq!(r.headers.get("X-App"), Some("yes"));
        assert_eq!(r.headers.get("X-Count"), Some("3"));
        assert_eq!(r.body, b"why\r\n");
        assert_eq!(skipped, ["X-Float"]);
        // An int status (Python, from_string) and no reason: the standard phrase.
        let a: gst::Structure = "response, status=(int)454".parse().unwrap();
        let (r, _) = answer_response(&a).unwrap();
        assert_eq!((r.status, r.reason.as_str()), (454, "Session Not Found"));
        let a: gst::Structure = "response, status=(guint64)299".parse().unwrap();
        assert_eq!(answer_response(&a).unwrap().0.reason, "");
        // Unusable: no status, out of range, not an integer.
        for text in [
            "response",
            "response, status=(uint)99",
            "response, status=(int)1000",
            "response, status=(int)-200",
            "response, status=(gint64)4294967496",
            "response, status=(string)200",
            "response, status=(double)200",
        ] {
            let a: gst::Structure = text.parse().unwrap();
            assert!(answer_response(&a).is_err(), "{text}");
        }
    }

    #[test]
    fn an_answer_cannot_add_lines_of_its_own() {
        init();
        let a = answer(&[
            ("status", 200u32.to_send_value()),
            ("reason", "OK\r\nX-Injected: 1".to_send_value()),
            (
                "X-App",
                "a\r\nX-Injected: 2\r\n\r\nRTSP/1.0 200 OK".to_send_value(),
            ),
            ("Bad:Name", "x".to_send_value()),
            ("Bad Name", "x".to_send_value()),
            ("X-Tab", "a\tb".to_send_value()),
            ("Content-Length", "99".to_send_value()),
        ]);
        let (r, skipped) = answer_response(&a).unwrap();
        assert_eq!(skipped, ["Bad:Name", "Bad Name"]);
        let bytes = r.to_bytes();
        let mut p = Parser::default();
        p.feed(&bytes);
        let Some(Incoming::Response(back)) = p.next_message().unwrap() else {
            panic!("{}", String::from_utf8_lossy(&bytes))
        };
        assert_eq!(p.pending(), 0, "{}", String::from_utf8_lossy(&bytes));
        assert_eq!(back.status, 200);
        assert_eq!(back.reason, "OK  X-Injected: 1");
        assert_eq!(back.headers.get("X-Injected"), None);
        assert_eq!(back.headers.get("X-Tab"), Some("a\tb"));
        assert_eq!(back.headers.get("Content-Length"), None);
        assert_eq!(back.headers.0.len(), 2, "{:?}", back.headers);
    }

    #[test]
    fn emit_handle_request_answers_any_method_without_criticals() {
        init();
        let element: gst::Element = glib::Object::new::<super::super::RtspAnnounce>().upcast();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let s2 = seen.clone();
        element.connect("handle-request", false, move |args| {
            let req = args[1].get::<gst::Structure>().unwrap();
            s2.lock().unwrap().push(req.name().to_string());
            let answer = gst::Structure::builder("response")
                .field("status", 299u32)
                .field("X-Seen", req.name().as_str())
                .build();
            Some(Some(answer).to_value())
        });
        let emit = |m: &str| {
            super::super::imp::emit_handle_request(&element, &request(m, &[("CSeq", "3")], b""))
        };
        // Methods GStreamer cannot name a structure after: not emitted, default answers.
        for m in ["OPTIONS!", "SET_PARAMETER%", "1ABC", "SET(X)", "caf\u{e9}"] {
            assert_eq!(emit(m), None, "{m}");
        }
        let r = emit("FOO").unwrap();
        assert_eq!((r.status, r.headers.get("X-Seen")), (299, Some("FOO")));
        assert_eq!(*seen.lock().unwrap(), ["FOO"]);
    }

    #[test]
    fn emit_handle_request_keeps_the_answer_to_its_own_lines() {
        init();
        let element: gst::Element = glib::Object::new::<super::super::RtspAnnounce>().upcast();
        element.connect("handle-request", false, |args| {
            let req = args[1].get::<gst::Structure>().unwrap();
            let answer = if req.name() == "GET_PARAMETER" {
                gst::Structure::builder("response")
                    .field("status", 200u32)
                    .field("reason", "OK\r\nX-Injected: 1")
                    .field("X-App", "a\r\n\r\nRTSP/1.0 200 OK")
                    .build()
            } else {
                // What Python's Gst.Structure.new_from_string("response, status=451") gives.
                "response, status=451".parse::<gst::Structure>().unwrap()
            };
            Some(Some(answer).to_value())
        });
        let emit = |m: &str| {
            super::super::imp::emit_handle_request(&element, &request(m, &[], b""))
                .unwrap_or_else(|| panic!("{m}: the application's answer was not used"))
        };
        let r = emit("GET_PARAMETER");
        assert_eq!(r.status, 200);
        assert!(!r.reason.contains(['\r', '\n']), "{:?}", r.reason);
        assert!(
            r.headers.0.iter().all(|(_, v)| !v.contains(['\r', '\n'])),
            "{:?}",
            r.headers
        );
        let r = emit("SET_PARAMETER");
        assert_eq!(
            (r.status, r.reason.as_str()),
            (451, "Parameter Not Understood")
        );
    }

    #[test]
    fn emit_handle_request_survives_nul_bytes() {
        init();
        let element: gst::Element = glib::Object::new::<super::super::RtspAnnounce>().upcast();
        element.connect("handle-request", false, |args| {
            let req = args[1].get::<gst::Structure>().unwrap();
            let answer = gst::Structure::builder("response")
                .field("status", 200u32)
                .field("X-Got", req.get::<&str>("X-Nul").unwrap())
                .field("X-Body", req.get::<&str>("body").unwrap())
                .build();
            Some(Some(answer).to_value())
        });
        let req = request("SET_PARAMETER", &[("X-Nul", "a\0b")], b"x\0y");
        let r = super::super::imp::emit_handle_request(&element, &req).unwrap();
        assert_eq!(r.headers.get("X-Got"), Some("ab"));
        assert_eq!(r.headers.get("X-Body"), Some("xy"));
    }

    #[test]
    fn new_names_from_the_wire_are_bounded() {
        // GStreamer keeps every structure and field name for good: a server inventing names
        // must not grow that without end.
        let mut names = Names::new(3);
        let req = |m: &str, h: &[(&str, &str)]| request(m, h, b"");
        let shown = request_fields(
            &req(
                "SET_PARAMETER",
                &[("CSeq", "1"), ("X-A", "a"), ("X-B", "b")],
            ),
            &mut names,
        )
        .unwrap();
        assert_eq!(shown.fields.len(), 4);
        // X-A and X-B were new: one left, then none.
        let shown = request_fields(
            &req("OPTIONS", &[("X-A", "again"), ("X-C", "c"), ("X-D", "d")]),
            &mut names,
        )
        .unwrap();
        let kept: Vec<&str> = shown.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(kept, ["uri", "X-A", "X-C"]);
        assert_eq!(shown.skipped, ["X-D (no new names left)"]);
        // Standard names and names seen before still pass; new methods do not.
        let shown = request_fields(
            &req(
                "GET_PARAMETER",
                &[("Session", "s"), ("X-C", "c"), ("x-c", "c2")],
            ),
            &mut names,
        )
        .unwrap();
        assert_eq!(shown.fields[2], ("X-C".to_string(), "c, c2".to_string()));
        assert_eq!(
            request_fields(&req("FOO", &[]), &mut names),
            Err(NotShown::NoNamesLeft("FOO".into()))
        );
        assert!(request_fields(&req("X-A", &[]), &mut names).is_ok());
        // Names that are refused for other reasons never spend the budget.
        let mut names = Names::new(1);
        let shown = request_fields(
            &req("TEARDOWN", &[("1Bad", ""), ("uri", ""), ("X-Y", "")]),
            &mut names,
        )
        .unwrap();
        assert_eq!(shown.fields.last().unwrap().0, "X-Y");
    }
}
