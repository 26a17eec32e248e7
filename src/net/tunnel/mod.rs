//! RTSP over HTTP (`rtsph://`, `rtspsh://`, or the `http` flag of `protocols`): two HTTP
//! connections tied by a cookie. The GET's answer body carries everything the server sends;
//! the POST's body carries our requests and media, base64-encoded. Through an HTTP proxy, a
//! plain tunnel sends absolute URLs; a TLS tunnel asks the proxy to CONNECT first, so the proxy
//! sees nothing of the session.

pub(crate) mod http;
mod wire;

pub(crate) use http::Proxy;
pub(crate) use wire::Base64Wire;

use super::socket::{connect, tls_handshake, Plain};
use crate::error::Error as SessionError;
use crate::rtsp::auth::{parse_challenges, strongest, Authenticator, Credentials};
use crate::rtsp::handshake::HandshakeError;
use crate::rtsp::url::RtspUrl;
use crate::CAT;
use http::{parse_head, HttpHead, TunnelHeads};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// How a session tunnels, fixed for the session.
#[derive(Debug, Clone, Default)]
pub(crate) struct TunnelConfig {
    pub proxy: Option<Proxy>,
}

/// Both halves of an open tunnel.
pub(crate) struct Tunnel {
    /// Server to us: RTSP answers, requests and interleaved RTCP, as they are.
    pub(crate) get: Plain,
    /// Us to server, base64 in the body; the server never answers on it unless it refuses.
    pub(crate) post: Plain,
    /// RTSP bytes that arrived with the GET's answer head.
    pub(crate) early: Vec<u8>,
}

/// What opening a tunnel needs beyond the URL.
pub(crate) struct Open<'a> {
    /// Where to connect: the server's addresses, or the proxy's.
    pub addrs: &'a [SocketAddr],
    pub timeout: Duration,
    pub send_buffer: Option<u32>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub proxy: Option<&'a Proxy>,
    pub creds: Option<&'a Credentials>,
    pub user_agent: &'a str,
}

/// Opens the GET half (answering an HTTP authentication challenge once, when we have
/// credentials), then the POST half.
pub(crate) async fn open(url: &RtspUrl, o: Open<'_>) -> Result<Tunnel, SessionError> {
    let deadline = Instant::now() + o.timeout;
    let host = url.host_port();
    let plain_proxy = o.proxy.filter(|_| o.tls.is_none());
    let heads = TunnelHeads {
        host: host.clone(),
        target: match plain_proxy {
            Some(_) => format!("http://{host}{}", url.path_and_query()),
            None => url.path_and_query(),
        },
        cookie: http::new_cookie(),
        user_agent: o.user_agent.to_string(),
    };
    let what = format!("the HTTP tunnel to {host}");
    let mut auth: Option<Authenticator> = None;
    let (get, early) = loop {
        let mut get = half(url, &o, &heads, deadline).await?;
        let value = auth.as_mut().map(|a| a.authorization("GET", &heads.target));
        write_head(
            &mut get,
            heads.get(plain_proxy, value.as_deref()).as_bytes(),
            deadline,
            &what,
        )
        .await?;
        let (head, early) = read_head(&mut get, deadline, "GET", &what).await?;
        gst::debug!(CAT, "{what}: GET answered {} {}", head.status, head.reason);
        match head.status {
            200 => break (get, early),
            401 => answer_challenge(
                &head,
                o.creds,
                &mut auth,
                &format!("the tunnel's GET {}", heads.target),
            )?,
            407 => return Err(proxy_refused(o.proxy, &head)),
            _ => return Err(refused("GET", url, &heads, &head)),
        }
    };
    let mut post = half(url, &o, &heads, deadline).await?;
    let value = auth
        .as_mut()
        .map(|a| a.authorization("POST", &heads.target));
    write_head(
        &mut post,
        heads.post(plain_proxy, value.as_deref()).as_bytes(),
        deadline,
        &what,
    )
    .await?;
    gst::debug!(CAT, "{what}: open (cookie {})", heads.cookie);
    Ok(Tunnel { get, post, early })
}

/// One TCP connection of the tunnel, through the proxy's CONNECT and TLS when asked.
async fn half(
    url: &RtspUrl,
    o: &Open<'_>,
    heads: &TunnelHeads,
    deadline: Instant,
) -> Result<Plain, SessionError> {
    let left = deadline.saturating_duration_since(Instant::now());
    let Some(cfg) = o.tls.clone() else {
        return connect(url, o.addrs, left, o.send_buffer, None).await;
    };
    let Some(proxy) = o.proxy else {
        return connect(url, o.addrs, left, o.send_buffer, Some(cfg)).await;
    };
    let Plain::Tcp(mut tcp) = connect(url, o.addrs, left, o.send_buffer, None).await? else {
        unreachable!("connect without TLS is plain TCP")
    };
    let what = format!("the proxy {}:{}", proxy.host, proxy.port);
    tokio::time::timeout_at(deadline, tcp.write_all(heads.connect(proxy).as_bytes()))
        .await
        .map_err(|_| timed_out(&what, "CONNECT"))?
        .map_err(|e| SessionError::Io(format!("sending CONNECT to {what} failed: {e}")))?;
    // Read the answer byte by byte: whatever follows its head belongs to TLS.
    let mut head = Vec::new();
    let answer = loop {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut b))
            .await
            .map_err(|_| timed_out(&what, "CONNECT"))?
            .map_err(|e| SessionError::Io(format!("reading {what}'s answer failed: {e}")))?;
        if n == 0 {
            return Err(SessionError::Io(format!(
                "{what} closed the connection instead of answering CONNECT"
            )));
        }
        head.push(b[0]);
        match parse_head(&head) {
            Ok(Some((h, _))) => break h,
            Ok(None) => {}
            Err(e) => return Err(SessionError::Io(format!("{what} answered CONNECT: {e}"))),
        }
    };
    match answer.status {
        200..=299 => {}
        407 => return Err(proxy_refused(Some(proxy), &answer)),
        s => {
            return Err(SessionError::Proxy {
                status: s,
                text: format!(
                    "{what} refused CONNECT {}: {s} {}",
                    heads.host, answer.reason
                ),
            })
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    tls_handshake(tcp, &url.host, cfg, deadline, left).await
}

pub(crate) async fn write_head(
    s: &mut Plain,
    bytes: &[u8],
    deadline: Instant,
    what: &str,
) -> Result<(), SessionError> {
    tokio::time::timeout_at(deadline, s.write_all(bytes))
        .await
        .map_err(|_| timed_out(what, "the request"))?
        .map_err(|e| SessionError::Io(format!("writing to {what} failed: {e}")))
}

/// Reads an HTTP answer's head; returns it and the bytes after it.
pub(crate) async fn read_head(
    s: &mut Plain,
    deadline: Instant,
    method: &str,
    what: &str,
) -> Result<(HttpHead, Vec<u8>), SessionError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match parse_head(&buf) {
            Ok(Some((head, used))) => return Ok((head, buf.split_off(used))),
            Ok(None) => {}
            Err(e) => {
                return Err(SessionError::Handshake(HandshakeError::BadResponse(
                    format!("{what} answered {method}: {e}"),
                )))
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .map_err(|_| timed_out(what, method))?
            .map_err(|e| SessionError::Io(format!("reading {what}'s answer failed: {e}")))?;
        if n == 0 {
            return Err(SessionError::Io(format!(
                "{what}: the server closed the connection instead of answering {method} (does it serve RTSP over HTTP?)"
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A 401 to an HTTP request of ours: the authenticator for the retry, once, when we have
/// credentials; else the error that says what is missing.
pub(crate) fn answer_challenge(
    head: &HttpHead,
    creds: Option<&Credentials>,
    auth: &mut Option<Authenticator>,
    method: &str,
) -> Result<(), SessionError> {
    let challenges = parse_challenges(head.all("WWW-Authenticate"));
    let challenge = head.header("WWW-Authenticate").unwrap_or("").to_string();
    let method = method.to_string();
    match (creds, strongest(&challenges), auth.is_some()) {
        (Some(c), Some(ch), false) => {
            *auth = Some(Authenticator::new(ch.clone(), c.clone()));
            Ok(())
        }
        (Some(_), _, true) => Err(SessionError::Handshake(HandshakeError::AuthRefused {
            method,
            challenge,
        })),
        _ => Err(SessionError::Handshake(HandshakeError::AuthRequired {
            method,
            challenge,
        })),
    }
}

fn timed_out(what: &str, step: &str) -> SessionError {
    SessionError::Timeout(format!("{what}: no answer to {step} in time"))
}

fn refused(method: &str, url: &RtspUrl, heads: &TunnelHeads, head: &HttpHead) -> SessionError {
    let hint = match head.status {
        404 | 405 | 501 => " (the server does not serve RTSP over HTTP tunnels here?)",
        _ => "",
    };
    SessionError::Handshake(HandshakeError::Status {
        method: format!("the HTTP tunnel's {method}"),
        uri: format!("{}{}", url.host_port(), heads_path(heads)),
        status: head.status,
        reason: format!("{}{hint}", head.reason),
    })
}

fn heads_path(h: &TunnelHeads) -> &str {
    // Through a plain proxy the target is absolute: name only the path.
    match h.target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
        None => &h.target,
    }
}

fn proxy_refused(proxy: Option<&Proxy>, head: &HttpHead) -> SessionError {
    let Some(p) = proxy else {
        return SessionError::Proxy {
            status: head.status,
            text: format!(
                "the server answered {} {} (proxy authentication) but no proxy is set",
                head.status, head.reason
            ),
        };
    };
    let asks = head
        .header("Proxy-Authenticate")
        .map(|a| format!(", it asks for {a:?}"))
        .unwrap_or_default();
    let text = match &p.creds {
        None => format!(
            "the proxy {}:{} requires authentication ({} {}{asks}): set proxy-id and proxy-pw",
            p.host, p.port, head.status, head.reason
        ),
        Some(_) => format!(
            "the proxy {}:{} refused proxy-id/proxy-pw ({} {}{asks}; we send Basic credentials)",
            p.host, p.port, head.status, head.reason
        ),
    };
    SessionError::Proxy {
        status: head.status,
        text,
    }
}

impl Tunnel {
    /// Sends `bytes` in the POST body.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        self.post.write_all(text.as_bytes()).await
    }

    /// Reads what the server sends on the GET half, while anything on the POST half (a
    /// refusal, or its end) is an error.
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            return Ok(n);
        }
        let mut probe = [0u8; 256];
        // The POST first: a server refusing it may close the GET at once too, and the refusal
        // is the cause worth naming.
        tokio::select! {
            biased;
            r = self.post.read(&mut probe) => Err(std::io::Error::other(post_answered(r, &probe))),
            r = self.get.read(buf) => r,
        }
    }
}

/// What the POST half said, as an error: a server that takes the tunnel never answers there.
pub(crate) fn post_answered(read: std::io::Result<usize>, data: &[u8]) -> SessionError {
    match read {
        Ok(0) => SessionError::Io("the server closed the HTTP tunnel's POST connection".into()),
        Ok(n) => {
            let text = String::from_utf8_lossy(&data[..n]);
            let first = text.lines().next().unwrap_or_default();
            SessionError::Io(format!(
                "the server refused the HTTP tunnel's POST: {:?}",
                first.chars().take(80).collect::<String>()
            ))
        }
        Err(e) => SessionError::Io(format!("the HTTP tunnel's POST connection failed: {e}")),
    }
}
