//! Requests a server sends us on the connection: which ones are well-formed enough to show the
//! application, and what we answer when the application does not.
//!
//! A pushing client has little to do with them: servers send OPTIONS or GET_PARAMETER to see
//! that we are alive, SET_PARAMETER now and then, TEARDOWN to end the session. Whatever else
//! comes is answered and the session goes on.

use super::message::{Request, Response};

/// RFC 2326 15.1: `token = 1*<any CHAR except CTLs or tspecials>`, where CHAR is US-ASCII and
/// `tspecials = ( ) < > @ , ; : \ " / [ ] ? = { } SP HT`. Methods and header names are tokens.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// Methods we answer ourselves when the application does not, and how.
const DEFAULTS: &str = "OPTIONS, GET_PARAMETER, SET_PARAMETER";

/// What we answer a request the application left alone (or was never shown):
/// - a method that is not a token is malformed: `400 Bad Request`;
/// - OPTIONS: `200 OK` with the methods we take in `Public`;
/// - GET_PARAMETER and SET_PARAMETER (keep-alives, whatever they carry), TEARDOWN: `200 OK`;
/// - anything else: `501 Not Implemented`.
///
/// CSeq and Session are the caller's to echo (`answer`).
pub(crate) fn default_response(req: &Request) -> Response {
    if !is_token(&req.method) {
        return Response::new(400, "Bad Request");
    }
    match req.method.as_str() {
        "OPTIONS" => {
            let mut r = Response::new(200, "OK");
            r.headers.push("Public", DEFAULTS);
            r
        }
        "GET_PARAMETER" | "SET_PARAMETER" | "TEARDOWN" => Response::new(200, "OK"),
        _ => Response::new(501, "Not Implemented"),
    }
}

/// `s` as text for a start line or a header value we send: CR, LF and other control characters
/// (a tab excepted) become spaces, so nothing we echo or are handed can end the line and add
/// lines of its own.
pub(crate) fn line_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

/// The answer to `req`: `app`'s if it gives one (it is asked only when the method is a token,
/// so a malformed request never reaches it), else `default_response`. The request's CSeq is
/// echoed, and its Session unless the answer names one, both through `line_text` (a header
/// value from the parser may hold a lone CR, or other control bytes).
pub fn answer(req: &Request, app: impl FnOnce(&Request) -> Option<Response>) -> Response {
    let mut resp = is_token(&req.method)
        .then(|| app(req))
        .flatten()
        .unwrap_or_else(|| default_response(req));
    if let Some(c) = req.headers.get("CSeq") {
        resp.headers.set("CSeq", line_text(c));
    }
    if let Some(s) = req.headers.get("Session") {
        if resp.headers.get("Session").is_none() {
            resp.headers.push("Session", line_text(s));
        }
    }
    resp
}

/// The reason phrase RFC 2326 7.1.1 gives `status`, or "" for codes it does not list.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        250 => "Low on Storage Space",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Time-out",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Large",
        415 => "Unsupported Media Type",
        451 => "Parameter Not Understood",
        452 => "Conference Not Found",
        453 => "Not Enough Bandwidth",
        454 => "Session Not Found",
        455 => "Method Not Valid in This State",
        456 => "Header Field Not Valid for Resource",
        457 => "Invalid Range",
        458 => "Parameter Is Read-Only",
        459 => "Aggregate operation not allowed",
        460 => "Only aggregate operation allowed",
        461 => "Unsupported transport",
        462 => "Destination unreachable",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Time-out",
        505 => "RTSP Version not supported",
        551 => "Option not supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str) -> Request {
        let mut r = Request::new(method, "rtsp://h/x");
        r.headers.push("CSeq", "7");
        r
    }

    #[test]
    fn tokens() {
        for t in [
            "OPTIONS",
            "A",
            "SET_PARAMETER%",
            "OPTIONS!",
            "x-y.z+1",
            "1ABC",
            "~'*&^|`#$",
        ] {
            assert!(is_token(t), "{t}");
        }
        for t in [
            "",
            "SET(X)",
            "A B",
            "A\tB",
            "GET/X",
            "A:B",
            "A;B",
            "A,B",
            "A=B",
            "A\"",
            "A?",
            "{}",
            "A[",
            "A@B",
            "A\\B",
            "A\u{7f}",
            "A\u{0}",
            "caf\u{e9}",
            "\u{fffd}",
        ] {
            assert!(!is_token(t), "{t:?}");
        }
    }

    #[test]
    fn default_answers() {
        let status = |m: &str| default_response(&req(m)).status;
        assert_eq!(status("OPTIONS"), 200);
        assert_eq!(
            default_response(&req("OPTIONS")).headers.get("Public"),
            Some(DEFAULTS)
        );
        assert_eq!(status("GET_PARAMETER"), 200);
        assert_eq!(status("SET_PARAMETER"), 200);
        assert_eq!(status("TEARDOWN"), 200);
        // Tokens we do not take, among them ones GStreamer could not name a structure after.
        for m in [
            "ANNOUNCE",
            "REDIRECT",
            "PLAY",
            "OPTIONS!",
            "SET_PARAMETER%",
            "1ABC",
            "options",
        ] {
            assert_eq!(status(m), 501, "{m}");
        }
        for m in [
            "SET(X)",
            "GET/X",
            "A:B",
            "",
            "caf\u{e9}",
            "\u{fffd}\u{fffd}",
        ] {
            let r = default_response(&req(m));
            assert_eq!((r.status, r.reason.as_str()), (400, "Bad Request"), "{m:?}");
        }
    }

    #[test]
    fn answer_asks_the_application_for_tokens_only() {
        let mut asked = Vec::new();
        let mut ask = |m: &str, says: Option<u16>| {
            let r = answer(&req(m), |r| {
                asked.push(r.method.clone());
                says.map(|s| Response::new(s, "App"))
            });
            (r.status, r.headers.get("CSeq").map(str::to_string))
        };
        assert_eq!(ask("SET(X)", Some(299)), (400, Some("7".into())));
        assert_eq!(ask("FOO", Some(299)), (299, Some("7".into())));
        assert_eq!(ask("FOO", None), (501, Some("7".into())));
        assert_eq!(ask("OPTIONS", None), (200, Some("7".into())));
        assert_eq!(asked, ["FOO", "FOO", "OPTIONS"]);
    }

    #[test]
    fn answer_echoes_cseq_and_session() {
        let mut r = req("GET_PARAMETER");
        r.headers.push("Session", "abc");
        let a = answer(&r, |_| {
            let mut a = Response::new(200, "OK");
            a.headers.push("CSeq", "999");
            Some(a)
        });
        assert_eq!(a.headers.get("CSeq"), Some("7"));
        assert_eq!(a.headers.get_all("CSeq").count(), 1);
        assert_eq!(a.headers.get("Session"), Some("abc"));
        let a = answer(&r, |_| {
            let mut a = Response::new(200, "OK");
            a.headers.push("Session", "mine");
            Some(a)
        });
        assert_eq!(a.headers.get_all("Session").collect::<Vec<_>>(), ["mine"]);
    }

    #[test]
    fn echoed_values_cannot_end_their_line() {
        // Found by the server_requests fuzz target: "CSeq: 1\r\x02Session: abc" is one header
        // line whose value holds a lone CR, and it went back out as it came.
        let mut p = super::super::message::Parser::default();
        p.feed(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\x02Session: abc\r\nSession: s\r\x01\r\n\r\n");
        let Some(super::super::message::Incoming::Request(r)) = p.next_message().unwrap() else {
            panic!()
        };
        let a = answer(&r, |_| None);
        assert_eq!(a.headers.get("CSeq"), Some("1  Session: abc"));
        assert_eq!(a.headers.get("Session"), Some("s  "));
        let bytes = a.to_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\r' {
                assert_eq!(bytes[i + 1], b'\n', "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
        assert_eq!(line_text("a\tb\r\nc\0\u{7f}\u{85}"), "a\tb  c   ");
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(451), "Parameter Not Understood");
        assert_eq!(reason_phrase(299), "");
    }
}
