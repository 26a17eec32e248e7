//! RTSP/1.0 messages: request serialisation and an incremental, bounded parser for what a server
//! sends us (responses, requests, interleaved `$` frames, in any order on one byte stream).
//!
//! Hand-written rather than `rtsp-types` because we need (a) hard limits enforced while bytes
//! arrive, so a hostile server cannot make us buffer without bound, (b) tolerance of `\n`-only
//! line ends and folded headers that real servers emit, (c) interleaved frames parsed in place.

mod parser;
#[cfg(test)]
mod tests;

pub use parser::Parser;

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

    pub(crate) fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    pub(crate) fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.0.push((name.to_string(), value.into()));
    }

    pub(crate) fn cseq(&self) -> Option<u32> {
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
    pub(crate) fn to_log_string(&self) -> String {
        let mut out = Vec::new();
        self.write_head(&mut out, |n, v| {
            if n.eq_ignore_ascii_case("Authorization") {
                mask_authorization(v)
            } else if n.eq_ignore_ascii_case("KeyMgmt") {
                mask_keymgmt(v)
            } else {
                v.to_string()
            }
        });
        out.extend_from_slice(&self.body);
        mask_sdp_keys(&String::from_utf8_lossy(&out))
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

    pub(crate) fn is_success(&self) -> bool {
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

    /// The text with SRTP keys hidden (a server's `KeyMgmt` answer carries its key), for logs.
    pub(crate) fn to_log_string(&self) -> String {
        let mut r = self.clone();
        for (n, v) in r.headers.0.iter_mut() {
            if n.eq_ignore_ascii_case("KeyMgmt") {
                *v = mask_keymgmt(v);
            }
        }
        mask_sdp_keys(&String::from_utf8_lossy(&r.to_bytes()))
    }
}

/// A KeyMgmt value with every `data=` (a MIKEY message: the key in clear) replaced.
pub(crate) fn mask_keymgmt(v: &str) -> String {
    v.split(',')
        .map(|spec| {
            spec.split(';')
                .map(|part| {
                    if part.trim_start().starts_with("data=") {
                        " data=\"<mikey>\"".to_string()
                    } else {
                        part.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(";")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Text with the key of every SDP `a=key-mgmt:` line replaced.
pub(crate) fn mask_sdp_keys(text: &str) -> String {
    if !text.contains("a=key-mgmt:") {
        return text.to_string();
    }
    text.split_inclusive('\n')
        .map(|line| match line.find("a=key-mgmt:") {
            Some(at) => {
                let end = if line.ends_with("\r\n") {
                    "\r\n"
                } else if line.ends_with('\n') {
                    "\n"
                } else {
                    ""
                };
                let prot = line[at + 11..].split_whitespace().next().unwrap_or("");
                format!("{}a=key-mgmt:{prot} <key>{end}", &line[..at])
            }
            None => line.to_string(),
        })
        .collect()
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
