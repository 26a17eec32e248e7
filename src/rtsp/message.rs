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
///
/// Every byte is looked at a bounded number of times however the stream is cut: what was taken
/// out is only skipped over (`start`) until the next `feed` moves the rest to the front once, and
/// a message arriving in pieces is probed and searched for its end from where the previous look
/// stopped (`scan`), its head parsed once, not again on every read while the body comes in.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    /// `buf[..start]` was handed out already.
    start: usize,
    limits: Limits,
    /// How far the message at `start` has been looked at.
    scan: Scan,
    work: Work,
}

/// Bytes looked at or moved, counted in the unit tests to prove the work linear; nothing
/// otherwise.
#[derive(Debug, Default, Clone, Copy)]
struct Work(#[cfg(test)] usize);

impl Work {
    fn add(&mut self, _n: usize) {
        #[cfg(test)]
        {
            self.0 += _n;
        }
    }
}

/// What is known of the message at the front of the buffer.
#[derive(Debug, Default)]
struct Scan {
    probe: Probe,
    /// The start line is RTSP: the probe is done.
    rtsp: bool,
    /// Where the search for the blank line resumes (relative to the message's first byte).
    head_from: usize,
    /// The head, once complete, while the body comes in.
    head: Option<Head>,
}

#[derive(Debug)]
struct Head {
    start: StartLine,
    headers: Headers,
    body_start: usize,
    body_len: usize,
}

#[derive(Debug)]
enum StartLine {
    Response { status: u16, reason: String },
    Request { method: String, uri: String },
}

/// Tells, byte by byte, whether a start line can still be RTSP: a response (`RTSP/`) or a request
/// (`METHOD SP URI SP RTSP/x.y`). It says yes as soon as it has seen `RTSP/` in either place,
/// and no as soon as the bytes seen rule both out.
///
/// The method is taken as any run of visible ASCII here, not only an RFC 2326 token: a request
/// whose method is not a token is still a well-framed message, answered 400 while the session
/// goes on (`rtsp::server_request`). What fails the connection is what cannot be an RTSP start
/// line at all: binary bytes, an `HTTP/1.1 200 OK` answer (its third word is not `RTSP/`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Probe {
    /// Bytes of the start line looked at.
    pos: usize,
    /// A byte seen differs from `RTSP/`.
    not_response: bool,
    request: RequestLine,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum RequestLine {
    #[default]
    Start,
    Method,
    AfterMethod,
    Uri,
    AfterUri,
    /// This many bytes of `RTSP/` seen after the URI.
    Version(usize),
    Impossible,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Rtsp,
    NotRtsp,
    NeedMore,
}

impl RequestLine {
    fn step(self, b: u8) -> RequestLine {
        use RequestLine::*;
        let visible = b.is_ascii_graphic();
        // URIs are not always percent-encoded: bytes above ASCII pass, controls do not.
        let uri = visible || b >= 0x80;
        match self {
            Start | Method if visible => Method,
            Method | AfterMethod if b == b' ' => AfterMethod,
            AfterMethod | Uri if uri => Uri,
            Uri | AfterUri if b == b' ' => AfterUri,
            AfterUri if b == b'R' => Version(1),
            Version(n) if n < 5 && b == b"RTSP/"[n] => Version(n + 1),
            _ => Impossible,
        }
    }
}

impl Probe {
    /// Looks at `line[self.pos..]` (the start line's bytes so far; `line[..self.pos]` were seen
    /// before). Returns the verdict and how many bytes it looked at.
    fn advance(&mut self, line: &[u8]) -> (Verdict, usize) {
        let from = self.pos;
        for &b in &line[from..] {
            if self.pos >= 5 || b != b"RTSP/"[self.pos] {
                self.not_response = true;
            }
            self.request = self.request.step(b);
            self.pos += 1;
            if (!self.not_response && self.pos == 5) || self.request == RequestLine::Version(5) {
                return (Verdict::Rtsp, self.pos - from);
            }
            if self.not_response && self.request == RequestLine::Impossible {
                return (Verdict::NotRtsp, self.pos - from);
            }
        }
        (Verdict::NeedMore, self.pos - from)
    }
}

fn printable(bytes: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned();
    s.trim_end().to_string()
}

impl Parser {
    pub fn new(limits: Limits) -> Self {
        Parser {
            limits,
            ..Default::default()
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        if self.start > 0 {
            // Once per read at most: what is left moves to the front.
            self.work.add(self.buf.len() - self.start);
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes held but not yet parsed.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes looked at or moved so far.
    #[cfg(test)]
    fn work(&self) -> usize {
        self.work.0
    }

    /// The first `n` unparsed bytes are done with: the next message starts after them.
    fn consume(&mut self, n: usize) {
        self.start += n;
        self.scan = Scan::default();
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, ParseError> {
        // Blank lines between messages are tolerated (some servers add them). Within a message
        // the first byte is never one, so this looks at one byte there.
        let skip = self.buf[self.start..]
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        self.work.add(skip + 1);
        if skip > 0 {
            self.consume(skip);
        }
        let buf = &self.buf[self.start..];
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first == b'$' {
            if buf.len() < 4 {
                return Ok(None);
            }
            let channel = buf[1];
            let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                return Ok(None);
            }
            let data = buf[4..4 + len].to_vec();
            self.consume(4 + len);
            return Ok(Some(Incoming::Interleaved { channel, data }));
        }

        if self.scan.head.is_none() {
            if !self.scan.rtsp {
                // Reject early what cannot be RTSP, rather than wait for a header end that never
                // comes.
                let (verdict, looked) = self.scan.probe.advance(buf);
                self.work.add(looked);
                match verdict {
                    Verdict::Rtsp => self.scan.rtsp = true,
                    Verdict::NeedMore if buf.len() > self.limits.max_header_bytes => {
                        return Err(ParseError::HeaderTooLarge(self.limits.max_header_bytes));
                    }
                    Verdict::NeedMore => return Ok(None),
                    Verdict::NotRtsp => {
                        let line_end = buf.iter().position(|b| *b == b'\n').unwrap_or(buf.len());
                        return Err(ParseError::BadStartLine(printable(&buf[..line_end])));
                    }
                }
            }
            let before = self.scan.head_from;
            let found = find_head_end(buf, &mut self.scan.head_from);
            // The bytes passed over, and the two after the last line end.
            self.work.add(self.scan.head_from - before + 2);
            let Some((head_len, body_start)) = found else {
                if buf.len() > self.limits.max_header_bytes {
                    return Err(ParseError::HeaderTooLarge(self.limits.max_header_bytes));
                }
                return Ok(None);
            };
            if head_len > self.limits.max_header_bytes {
                return Err(ParseError::HeaderTooLarge(self.limits.max_header_bytes));
            }
            self.work.add(head_len);
            self.scan.head = Some(parse_head(&buf[..head_len], body_start, &self.limits)?);
        }
        let head = self.scan.head.as_ref().expect("parsed above");
        let end = head.body_start + head.body_len;
        if buf.len() < end {
            return Ok(None);
        }
        let body = buf[head.body_start..end].to_vec();
        let Head { start, headers, .. } = self.scan.head.take().expect("parsed above");
        self.consume(end);
        Ok(Some(match start {
            StartLine::Response { status, reason } => Incoming::Response(Response {
                status,
                reason,
                headers,
                body,
            }),
            StartLine::Request { method, uri } => Incoming::Request(Request {
                method,
                uri,
                headers,
                body,
            }),
        }))
    }
}

/// The start line and headers of a message whose head is `head` (without the blank line), and
/// where its body is.
fn parse_head(head: &[u8], body_start: usize, limits: &Limits) -> Result<Head, ParseError> {
    let head = String::from_utf8_lossy(head);
    let mut lines = unfold_lines(&head);
    let start = lines.remove(0);
    if lines.len() > limits.max_headers {
        return Err(ParseError::TooManyHeaders(limits.max_headers));
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
    if body_len > limits.max_body_bytes as u64 {
        return Err(ParseError::BodyTooLarge(body_len));
    }
    let start = if let Some(rest) = start.strip_prefix("RTSP/") {
        let mut parts = rest.splitn(3, ' ');
        let _version = parts.next();
        let status = parts
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (100..1000).contains(s))
            .ok_or_else(|| ParseError::BadStartLine(printable(start.as_bytes())))?;
        let reason = parts.next().unwrap_or("").trim().to_string();
        StartLine::Response { status, reason }
    } else {
        let parts: Vec<&str> = start.split(' ').filter(|p| !p.is_empty()).collect();
        if parts.len() != 3 || !parts[2].starts_with("RTSP/") {
            return Err(ParseError::BadStartLine(printable(start.as_bytes())));
        }
        StartLine::Request {
            method: parts[0].to_string(),
            uri: parts[1].to_string(),
        }
    };
    Ok(Head {
        start,
        headers,
        body_start,
        body_len: body_len as usize,
    })
}

/// End of the header block: returns (length of the head without the blank line, body start).
/// The search starts at `*from` (no line end before it is followed by a blank line) and leaves
/// `*from` where a later search, with more bytes, resumes: at a line end whose next line is not
/// complete yet, so a `\r\n\r\n` or `\n\n` cut by a read boundary is still found.
fn find_head_end(buf: &[u8], from: &mut usize) -> Option<(usize, usize)> {
    while let Some(p) = buf[*from..].iter().position(|b| *b == b'\n') {
        let nl = *from + p;
        *from = nl;
        // The next line is empty if it is "\n" or "\r\n".
        match &buf[nl + 1..] {
            [b'\n', ..] => return Some((nl, nl + 2)),
            [b'\r', b'\n', ..] => return Some((nl, nl + 3)),
            [] | [b'\r'] => return None,
            _ => *from = nl + 1,
        }
    }
    *from = buf.len();
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

    /// Feeds `bytes` in pieces of `step` bytes, taking out every message as soon as it is
    /// complete.
    fn parse_in_pieces(p: &mut Parser, bytes: &[u8], step: usize) -> Vec<Incoming> {
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            p.feed(piece);
            while let Some(m) = p.next_message().unwrap() {
                out.push(m);
            }
        }
        out
    }

    /// A response whose head is `lines` joined by `eol`, ending with a blank line, and a body.
    fn big_response(headers: usize, value_len: usize, eol: &str, body: usize) -> Vec<u8> {
        let mut m = format!("RTSP/1.0 200 OK{eol}CSeq: 9{eol}");
        for i in 0..headers {
            m.push_str(&format!("X-H{i}: {}{eol}", "v".repeat(value_len)));
        }
        m.push_str(&format!("Content-Length: {body}{eol}{eol}"));
        let mut m = m.into_bytes();
        m.extend(std::iter::repeat_n(b'b', body));
        m
    }

    #[test]
    fn a_head_dripped_byte_by_byte_is_scanned_once() {
        // Some 60 KiB of headers (under the 64 KiB limit), then a body, one byte per read: the
        // work stays a small multiple of the bytes, where a scan restarting from the first
        // byte on every read would cost about 60000^2 / 2 = 1.8e9 byte checks.
        for eol in ["\r\n", "\n"] {
            let msg = big_response(200, 290, eol, 1000);
            assert!(
                msg.len() > 60_000 && msg.len() < 64 * 1024 + 1000,
                "{}",
                msg.len()
            );
            let mut p = Parser::default();
            let out = parse_in_pieces(&mut p, &msg, 1);
            assert_eq!(out.len(), 1);
            let Incoming::Response(r) = &out[0] else {
                panic!("{:?}", out[0])
            };
            assert_eq!(r.headers.0.len(), 202);
            assert_eq!(r.body.len(), 1000);
            assert!(
                p.work() <= 8 * msg.len(),
                "{} bytes cost {} units of work",
                msg.len(),
                p.work()
            );
        }
        // A start line of 60 KiB (the probe) the same way.
        let msg = format!(
            "PLAY rtsp://h/{} RTSP/1.0\r\nCSeq: 1\r\n\r\n",
            "x".repeat(60_000)
        );
        let mut p = Parser::default();
        let out = parse_in_pieces(&mut p, msg.as_bytes(), 1);
        assert!(matches!(&out[..], [Incoming::Request(r)] if r.method == "PLAY"));
        assert!(p.work() <= 8 * msg.len(), "{}", p.work());
    }

    #[test]
    fn many_messages_in_one_read_cost_linear_work() {
        // 16 KiB of empty interleaved frames in one read: taking each out must not move the
        // rest of the buffer (4096 frames times 8 KiB on average, if it did).
        let frames: Vec<u8> = std::iter::repeat_n([b'$', 1, 0, 0], 4096)
            .flatten()
            .collect();
        let mut p = Parser::default();
        let out = parse_in_pieces(&mut p, &frames, frames.len());
        assert_eq!(out.len(), 4096);
        assert_eq!(p.pending(), 0);
        assert!(p.work() <= 4 * frames.len(), "{}", p.work());
        // Answers and frames mixed, in reads of 1000 bytes.
        let mut mixed = Vec::new();
        for i in 0..500 {
            mixed.extend_from_slice(format!("RTSP/1.0 200 OK\r\nCSeq: {i}\r\n\r\n").as_bytes());
            mixed.extend_from_slice(&[b'$', 0, 0, 2, 7, 7]);
        }
        let mut p = Parser::default();
        let out = parse_in_pieces(&mut p, &mixed, 1000);
        assert_eq!(out.len(), 1000);
        assert!(p.work() <= 6 * mixed.len(), "{}", p.work());
    }

    #[test]
    fn line_ends_cut_by_reads_are_found() {
        // Every way of ending lines and the head, cut at every byte, and dripped.
        let messages: [&[u8]; 6] = [
            b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nSession: a\r\n\r\n",
            b"RTSP/1.0 200 OK\nCSeq: 1\nSession: a\n\n",
            b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nSession: a\n\n",
            b"RTSP/1.0 200 OK\nCSeq: 1\nSession: a\r\n\r\n",
            b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nSession: a\n\r\n",
            b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nSession:\r\n a\r\n\t\r\n\r\n",
        ];
        for m in messages {
            let mut two = m.to_vec();
            two.extend_from_slice(b"$\x01\x00\x01z");
            two.extend_from_slice(m);
            let whole = parse_all(&two);
            assert_eq!(whole.len(), 3, "{:?}", String::from_utf8_lossy(m));
            let Incoming::Response(r) = &whole[0] else {
                panic!()
            };
            assert_eq!(
                r.headers.get("Session"),
                Some("a"),
                "{:?}",
                String::from_utf8_lossy(m)
            );
            assert_eq!(r.headers.cseq(), Some(1));
            for cut in 1..two.len() {
                let mut p = Parser::default();
                let mut out = Vec::new();
                for piece in [&two[..cut], &two[cut..]] {
                    p.feed(piece);
                    while let Some(msg) = p.next_message().unwrap() {
                        out.push(msg);
                    }
                }
                assert_eq!(
                    out,
                    whole,
                    "cut at {cut} of {:?}",
                    String::from_utf8_lossy(m)
                );
                assert_eq!(p.pending(), 0);
            }
            let mut p = Parser::default();
            assert_eq!(parse_in_pieces(&mut p, &two, 1), whole);
        }
    }

    #[test]
    fn short_methods_are_requests_byte_by_byte() {
        for method in ["A", "AB", "ABC", "PLAY", "PAUSE", "GET_PARAMETER", "x-Ok.1"] {
            let msg = format!("{method} rtsp://h/x RTSP/1.0\r\nCSeq: 4\r\n\r\n");
            let mut p = Parser::default();
            let out = parse_in_pieces(&mut p, msg.as_bytes(), 1);
            let [Incoming::Request(r)] = &out[..] else {
                panic!("{method}: {out:?}")
            };
            assert_eq!(r.method, method);
            assert_eq!(r.uri, "rtsp://h/x");
            assert_eq!(r.headers.cseq(), Some(4));
        }
        // A method that is no RFC 2326 token is still a framed request: it is answered 400
        // (see rtsp::server_request), the connection goes on.
        let out =
            parse_all(b"SET(X) rtsp://h/x RTSP/1.0\r\nCSeq: 5\r\n\r\nOPTIONS * RTSP/1.0\r\n\r\n");
        assert!(
            matches!(&out[..], [Incoming::Request(a), Incoming::Request(b)]
            if a.method == "SET(X)" && b.method == "OPTIONS")
        );
        // Several spaces between the parts, as before.
        let out = parse_all(b"PLAY  rtsp://h/x  RTSP/1.0\r\n\r\n");
        assert!(matches!(&out[..], [Incoming::Request(r)] if r.uri == "rtsp://h/x"));
    }

    /// How many bytes of `bytes`, fed one at a time, the parser needs to call them not RTSP.
    fn rejected_after(bytes: &[u8]) -> Option<usize> {
        let mut p = Parser::default();
        for (i, b) in bytes.iter().enumerate() {
            p.feed(std::slice::from_ref(b));
            match p.next_message() {
                Ok(_) => {}
                Err(ParseError::BadStartLine(_)) => return Some(i + 1),
                Err(e) => panic!("{e}"),
            }
        }
        None
    }

    #[test]
    fn what_cannot_be_rtsp_is_rejected_early() {
        // An HTTP answer: "HTTP/1.1" and "200" could be a method and a URI, "O" is no "RTSP/".
        assert_eq!(rejected_after(b"HTTP/1.1 200 OK\r\n\r\n"), Some(14));
        assert_eq!(rejected_after(b"GET / HTTP/1.1\r\n\r\n"), Some(7));
        // Binary: at the first byte.
        assert_eq!(rejected_after(b"\x00\x01garbage\r\n\r\n"), Some(1));
        assert_eq!(rejected_after(b"\x16\x03\x01\x02\x00"), Some(1));
        // A line that ends before it is a request.
        assert_eq!(rejected_after(b"OPTIONS\r\n\r\n"), Some(8));
        assert_eq!(rejected_after(b"OPTIONS *\r\n\r\n"), Some(10));
        assert_eq!(
            rejected_after(b"PLAY rtsp://h/x RTSX/1.0\r\n\r\n"),
            Some(20)
        );
        assert_eq!(
            rejected_after(b" PLAY rtsp://h/x RTSP/1.0\r\n\r\n"),
            Some(1)
        );
        assert_eq!(
            rejected_after(b"PLAY\trtsp://h/x RTSP/1.0\r\n\r\n"),
            Some(5)
        );
        // Responses and requests are not.
        assert_eq!(rejected_after(b"RTSP/1.0 200 OK\r\n\r\n"), None);
        assert_eq!(rejected_after(b"RTSP/2.0 200 OK\r\nCSeq: 1\r\n\r\n"), None);
        assert_eq!(rejected_after(b"ABC rtsp://h/x RTSP/1.0\r\n\r\n"), None);
        assert_eq!(rejected_after(b"RTS rtsp://h/x RTSP/1.0\r\n\r\n"), None);
        assert_eq!(
            rejected_after("PLAY rtsp://h/caf\u{e9} RTSP/1.0\r\n\r\n".as_bytes()),
            None
        );
        // A start line growing without end hits the header limit, not the probe.
        let mut p = Parser::default();
        p.feed(&vec![b'A'; 70 * 1024]);
        assert!(matches!(
            p.next_message(),
            Err(ParseError::HeaderTooLarge(_))
        ));
    }
}
