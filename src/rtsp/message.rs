//! RTSP/1.0 messages: request serialisation and an incremental, bounded parser for what a server
//! sends us (responses, requests, interleaved `$` frames, in any order on one byte stream).
//!
//! Hand-written rather than `rtsp-types` because we need (a) hard limits enforced while bytes
//! arrive, so a hostile server cannot make us buffer without bound, (b) tolerance of `\n`-only
//! line ends and folded headers that real servers emit, (c) interleaved frames parsed in place.

use std::fmt;

/// Limits on what one message from the server may contain.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 256,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// Header list that keeps order and compares names case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.0.push((name.to_string(), value.into()));
    }

    pub fn cseq(&self) -> Option<u32> {
        self.get("CSeq").and_then(|v| v.trim().parse().ok())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub uri: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, uri: &str) -> Self {
        Request {
            method: method.to_string(),
            uri: uri.to_string(),
            headers: Headers::default(),
            body: Vec::new(),
        }
    }

    /// Wire form. `Content-Length` is written from the body, never trusted from the headers.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        self.write_head(&mut out, |_, v| v.to_string());
        out.extend_from_slice(&self.body);
        out
    }

    /// The same text with credentials hidden, for logs.
    pub fn to_log_string(&self) -> String {
        let mut out = Vec::new();
        self.write_head(&mut out, |n, v| {
            if n.eq_ignore_ascii_case("Authorization") {
                mask_authorization(v)
            } else {
                v.to_string()
            }
        });
        out.extend_from_slice(&self.body);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn write_head(&self, out: &mut Vec<u8>, value: impl Fn(&str, &str) -> String) {
        use std::io::Write;
        let _ = write!(out, "{} {} RTSP/1.0\r\n", self.method, self.uri);
        for (n, v) in &self.headers.0 {
            if n.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            let _ = write!(out, "{}: {}\r\n", n, value(n, v));
        }
        if !self.body.is_empty() {
            let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Keeps the scheme and, for Digest, the non-secret fields; drops Basic's base64 and the response.
fn mask_authorization(v: &str) -> String {
    let scheme = v.split_whitespace().next().unwrap_or("");
    if scheme.eq_ignore_ascii_case("digest") {
        let kept: Vec<&str> = v[scheme.len()..]
            .split(',')
            .map(str::trim)
            .filter(|p| {
                let k = p.split('=').next().unwrap_or("").trim();
                !k.eq_ignore_ascii_case("response")
            })
            .collect();
        format!("Digest {}, response=\"***\"", kept.join(", "))
    } else {
        format!("{scheme} ***")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, reason: &str) -> Self {
        Response {
            status,
            reason: reason.to_string(),
            headers: Headers::default(),
            body: Vec::new(),
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        use std::io::Write;
        let mut out = Vec::new();
        let _ = write!(out, "RTSP/1.0 {} {}\r\n", self.status, self.reason);
        for (n, v) in &self.headers.0 {
            if !n.eq_ignore_ascii_case("Content-Length") {
                let _ = write!(out, "{n}: {v}\r\n");
            }
        }
        if !self.body.is_empty() {
            let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    pub fn to_log_string(&self) -> String {
        String::from_utf8_lossy(&self.to_bytes()).into_owned()
    }
}

/// One thing the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Response(Response),
    Request(Request),
    Interleaved { channel: u8, data: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    HeaderTooLarge(usize),
    TooManyHeaders(usize),
    BodyTooLarge(u64),
    BadStartLine(String),
    BadHeader(String),
    BadContentLength(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::HeaderTooLarge(l) => {
                write!(f, "server sent a message header larger than {l} bytes")
            }
            ParseError::TooManyHeaders(l) => {
                write!(f, "server sent a message with more than {l} headers")
            }
            ParseError::BodyTooLarge(n) => {
                write!(f, "server announced a body of {n} bytes, over the limit")
            }
            ParseError::BadStartLine(l) => write!(f, "not an RTSP message: {l:?}"),
            ParseError::BadHeader(l) => write!(f, "malformed header line: {l:?}"),
            ParseError::BadContentLength(v) => write!(f, "malformed Content-Length: {v:?}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Incremental parser: feed bytes as they arrive, take complete messages out.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    limits: Limits,
}

fn printable(bytes: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned();
    s.trim_end().to_string()
}

impl Parser {
    pub fn new(limits: Limits) -> Self {
        Parser {
            buf: Vec::new(),
            limits,
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held but not yet parsed.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, ParseError> {
        // Blank lines between messages are tolerated (some servers add them).
        let skip = self
            .buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        if skip > 0 {
            self.buf.drain(..skip);
        }
        let Some(&first) = self.buf.first() else {
            return Ok(None);
        };
        if first == b'$' {
            if self.buf.len() < 4 {
                return Ok(None);
            }
            let channel = self.buf[1];
            let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
            if self.buf.len() < 4 + len {
                return Ok(None);
            }
            let data = self.buf[4..4 + len].to_vec();
            self.buf.drain(..4 + len);
            return Ok(Some(Incoming::Interleaved { channel, data }));
        }

        // Reject early what cannot be RTSP, rather than waiting for a header end that never comes.
        let probe = &self.buf[..self.buf.len().min(5)];
        if !b"RTSP/"[..probe.len()].eq(probe)
            && !probe
                .iter()
                .all(|b| b.is_ascii_uppercase() || *b == b'_' || *b == b'-')
        {
            let line_end = self
                .buf
                .iter()
                .position(|b| *b == b'\n')
                .unwrap_or(self.buf.len());
            return Err(ParseError::BadStartLine(printable(&self.buf[..line_end])));
        }

        let Some((head_len, body_start)) = find_head_end(&self.buf) else {
            if self.buf.len() > self.limits.max_header_bytes {
                return Err(ParseError::HeaderTooLarge(self.limits.max_header_bytes));
            }
            return Ok(None);
        };
        if head_len > self.limits.max_header_bytes {
            return Err(ParseError::HeaderTooLarge(self.limits.max_header_bytes));
        }
        let head = String::from_utf8_lossy(&self.buf[..head_len]).into_owned();
        let mut lines = unfold_lines(&head);
        let start = lines.remove(0);
        if lines.len() > self.limits.max_headers {
            return Err(ParseError::TooManyHeaders(self.limits.max_headers));
        }
        let mut headers = Headers::default();
        for line in lines {
            let Some((n, v)) = line.split_once(':') else {
                return Err(ParseError::BadHeader(printable(line.as_bytes())));
            };
            let n = n.trim();
            if n.is_empty() || n.contains(' ') {
                return Err(ParseError::BadHeader(printable(line.as_bytes())));
            }
            headers.push(n, v.trim());
        }
        let body_len = match headers.get("Content-Length") {
            None => 0u64,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map_err(|_| ParseError::BadContentLength(v.to_string()))?,
        };
        if body_len > self.limits.max_body_bytes as u64 {
            return Err(ParseError::BodyTooLarge(body_len));
        }
        let body_len = body_len as usize;
        if self.buf.len() < body_start + body_len {
            return Ok(None);
        }
        let body = self.buf[body_start..body_start + body_len].to_vec();
        self.buf.drain(..body_start + body_len);

        let msg = if let Some(rest) = start.strip_prefix("RTSP/") {
            let mut parts = rest.splitn(3, ' ');
            let _version = parts.next();
            let status = parts
                .next()
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|s| (100..1000).contains(s))
                .ok_or_else(|| ParseError::BadStartLine(printable(start.as_bytes())))?;
            let reason = parts.next().unwrap_or("").trim().to_string();
            Incoming::Response(Response {
                status,
                reason,
                headers,
                body,
            })
        } else {
            let parts: Vec<&str> = start.split(' ').filter(|p| !p.is_empty()).collect();
            if parts.len() != 3 || !parts[2].starts_with("RTSP/") {
                return Err(ParseError::BadStartLine(printable(start.as_bytes())));
            }
            Incoming::Request(Request {
                method: parts[0].to_string(),
                uri: parts[1].to_string(),
                headers,
                body,
            })
        };
        Ok(Some(msg))
    }
}

/// End of the header block: returns (length of the head without the blank line, body start).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|b| *b == b'\n') {
        let nl = i + p;
        // The next line is empty if it is "\n" or "\r\n".
        let rest = &buf[nl + 1..];
        if rest.first() == Some(&b'\n') {
            return Some((nl, nl + 2));
        }
        if rest.starts_with(b"\r\n") {
            return Some((nl, nl + 3));
        }
        if rest.is_empty() || (rest.len() == 1 && rest[0] == b'\r') {
            return None;
        }
        i = nl + 1;
    }
    None
}

/// Splits the head into lines, joining folded continuation lines (leading space or tab).
fn unfold_lines(head: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in head.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if (line.starts_with(' ') || line.starts_with('\t')) && !out.is_empty() {
            let last = out.last_mut().unwrap();
            last.push(' ');
            last.push_str(line.trim());
        } else if !line.is_empty() {
            out.push(line.to_string());
        }
    }
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Vec<Incoming> {
        let mut p = Parser::default();
        p.feed(bytes);
        let mut out = Vec::new();
        while let Some(m) = p.next_message().unwrap() {
            out.push(m);
        }
        assert_eq!(p.pending(), 0);
        out
    }

    #[test]
    fn request_serialisation() {
        let mut r = Request::new("ANNOUNCE", "rtsp://h/live");
        r.headers.push("CSeq", "1");
        r.headers.push("Content-Type", "application/sdp");
        r.body = b"v=0\r\n".to_vec();
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            "ANNOUNCE rtsp://h/live RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n"
        );
    }

    #[test]
    fn log_string_masks_credentials() {
        let mut r = Request::new("SETUP", "rtsp://h/live");
        r.headers.push("Authorization", "Basic dXNlcjpzZWNyZXQ=");
        assert!(!r.to_log_string().contains("dXNlcjpzZWNyZXQ="));
        let mut r = Request::new("SETUP", "rtsp://h/live");
        r.headers.push(
            "Authorization",
            "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"rtsp://h/live\", response=\"abcdef\"",
        );
        let s = r.to_log_string();
        assert!(!s.contains("abcdef"), "{s}");
        assert!(s.contains("realm=\"r\""), "{s}");
    }

    #[test]
    fn response_parsing_crlf_and_lf() {
        let msgs = parse_all(
            b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nsession: abc;timeout=60\r\n\r\nRTSP/1.0 404 Not Found\nCSeq: 2\n\n",
        );
        match &msgs[0] {
            Incoming::Response(r) => {
                assert_eq!(r.status, 200);
                assert_eq!(r.reason, "OK");
                assert_eq!(r.headers.cseq(), Some(1));
                assert_eq!(r.headers.get("Session"), Some("abc;timeout=60"));
            }
            other => panic!("{other:?}"),
        }
        match &msgs[1] {
            Incoming::Response(r) => {
                assert_eq!(r.status, 404);
                assert_eq!(r.reason, "Not Found");
                assert_eq!(r.headers.cseq(), Some(2));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn folded_headers_and_body() {
        let msgs =
            parse_all(b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nPublic: OPTIONS,\r\n  ANNOUNCE\r\nContent-Length: 4\r\n\r\nabcd");
        let Incoming::Response(r) = &msgs[0] else {
            panic!()
        };
        assert_eq!(r.headers.get("public"), Some("OPTIONS, ANNOUNCE"));
        assert_eq!(r.body, b"abcd");
    }

    #[test]
    fn interleaved_mixed_with_messages_in_pieces() {
        let mut all = vec![b'$', 1, 0, 3, 9, 8, 7];
        all.extend_from_slice(b"OPTIONS * RTSP/1.0\r\nCSeq: 7\r\n\r\n");
        all.extend_from_slice(&[b'$', 0, 0, 0]);
        let mut p = Parser::default();
        let mut out = Vec::new();
        for b in &all {
            p.feed(std::slice::from_ref(b));
            while let Some(m) = p.next_message().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(
            out[0],
            Incoming::Interleaved {
                channel: 1,
                data: vec![9, 8, 7]
            }
        );
        let Incoming::Request(r) = &out[1] else {
            panic!()
        };
        assert_eq!(r.method, "OPTIONS");
        assert_eq!(r.uri, "*");
        assert_eq!(r.headers.cseq(), Some(7));
        assert_eq!(
            out[2],
            Incoming::Interleaved {
                channel: 0,
                data: vec![]
            }
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let mut p = Parser::default();
        p.feed(b"\x00\x01garbage\r\n\r\n");
        assert!(matches!(p.next_message(), Err(ParseError::BadStartLine(_))));
        let mut p = Parser::default();
        p.feed(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(p.next_message(), Err(ParseError::BadStartLine(_))));
        let mut p = Parser::default();
        p.feed(b"GET_PARAMETER rtsp://h/x RTSP/1.0\r\nCSeq: 3\r\n\r\n");
        assert!(matches!(p.next_message(), Ok(Some(Incoming::Request(_)))));
        let mut p = Parser::default();
        p.feed(b"RTSP/1.0 abc OK\r\n\r\n");
        assert!(matches!(p.next_message(), Err(ParseError::BadStartLine(_))));
    }

    #[test]
    fn limits() {
        let mut p = Parser::default();
        p.feed(b"RTSP/1.0 200 OK\r\nX: ");
        p.feed(&vec![b'a'; 70 * 1024]);
        assert!(matches!(
            p.next_message(),
            Err(ParseError::HeaderTooLarge(_))
        ));
        let mut p = Parser::default();
        p.feed(b"RTSP/1.0 200 OK\r\nContent-Length: 1099511627776\r\n\r\n");
        assert!(matches!(p.next_message(), Err(ParseError::BodyTooLarge(_))));
        let mut p = Parser::default();
        p.feed(b"RTSP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n");
        assert!(matches!(
            p.next_message(),
            Err(ParseError::BadContentLength(_))
        ));
        let mut p = Parser::default();
        let mut m = b"RTSP/1.0 200 OK\r\n".to_vec();
        for i in 0..300 {
            m.extend_from_slice(format!("X{i}: y\r\n").as_bytes());
        }
        m.extend_from_slice(b"\r\n");
        p.feed(&m);
        assert!(matches!(
            p.next_message(),
            Err(ParseError::TooManyHeaders(_))
        ));
    }
}
