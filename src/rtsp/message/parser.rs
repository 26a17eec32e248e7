//! The incremental, bounded parser for what a server sends.

use super::{Headers, Incoming, Limits, ParseError, Request, Response};

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

    /// Bytes held but not yet parsed (the fuzz targets bound it).
    #[cfg(any(test, fuzzing))]
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes looked at or moved so far.
    #[cfg(test)]
    pub(super) fn work(&self) -> usize {
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
