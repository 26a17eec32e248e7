//! RTSP over WebSocket (`rtspws://`, `rtspwss://`): the ONVIF Streaming Specification's
//! transport, subprotocol `rtsp.onvif.org`. One HTTP/1.1 upgrade, then every RTSP message and
//! every interleaved frame is one binary WebSocket message, both ways.

mod codec;
mod split;

use super::socket::{connect, Plain, PlainWire};
use super::tunnel::{answer_challenge, read_head, write_head};
use crate::error::Error as SessionError;
use crate::rtsp::auth::{Authenticator, Credentials};
use crate::rtsp::handshake::HandshakeError;
use crate::rtsp::url::RtspUrl;
use crate::CAT;
pub(crate) use codec::SUBPROTOCOL;
use codec::{Decoded, Sink};
use split::Splitter;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tungstenite::protocol::WebSocketContext;

/// The upgrade request for `target` on `host`.
fn upgrade_request(
    host: &str,
    target: &str,
    key: &str,
    user_agent: &str,
    auth: Option<&str>,
) -> String {
    let mut s = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
    );
    if !user_agent.is_empty() {
        s.push_str(&format!("User-Agent: {user_agent}\r\n"));
    }
    if let Some(a) = auth {
        s.push_str(&format!("Authorization: {a}\r\n"));
    }
    s.push_str("\r\n");
    s
}

/// Checks a 101 answer: the upgrade, the accept key, and the subprotocol (the server must
/// choose it; without it the session would not be the ONVIF transport).
fn check_upgrade(head: &super::tunnel::http::HttpHead, key: &str) -> Result<(), String> {
    let has = |name: &str, token: &str| {
        head.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has("Upgrade", "websocket") || !has("Connection", "upgrade") {
        return Err("the 101 answer does not upgrade to websocket".into());
    }
    let want = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if head.header("Sec-WebSocket-Accept") != Some(want.as_str()) {
        return Err("Sec-WebSocket-Accept does not match our key".into());
    }
    match head.header("Sec-WebSocket-Protocol") {
        Some(p) if p.trim() == SUBPROTOCOL => Ok(()),
        Some(p) => Err(format!(
            "the server chose subprotocol {p:?}, not {SUBPROTOCOL}"
        )),
        None => Err(format!(
            "the server did not accept the {SUBPROTOCOL} subprotocol"
        )),
    }
}

/// Connects (TLS for `rtspwss://`) and upgrades to the WebSocket transport, answering an HTTP
/// authentication challenge once.
pub(crate) async fn open(
    url: &RtspUrl,
    addrs: &[SocketAddr],
    timeout: Duration,
    send_buffer: Option<u32>,
    tls: Option<Arc<rustls::ClientConfig>>,
    creds: Option<&Credentials>,
    user_agent: &str,
) -> Result<WsStream, SessionError> {
    let deadline = Instant::now() + timeout;
    let host = url.host_port();
    let target = url.path_and_query();
    let what = format!("the WebSocket connection to {host}");
    let mut auth: Option<Authenticator> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut s = connect(url, addrs, left, send_buffer, tls.clone()).await?;
        let key = tungstenite::handshake::client::generate_key();
        let value = auth.as_mut().map(|a| a.authorization("GET", &target));
        let req = upgrade_request(&host, &target, &key, user_agent, value.as_deref());
        write_head(&mut s, req.as_bytes(), deadline, &what).await?;
        let (head, received) = read_head(&mut s, deadline, "the WebSocket upgrade", &what).await?;
        gst::debug!(
            CAT,
            "{what}: upgrade answered {} {}",
            head.status,
            head.reason
        );
        match head.status {
            101 => {
                check_upgrade(&head, &key).map_err(|e| {
                    SessionError::Handshake(HandshakeError::BadResponse(format!("{what}: {e}")))
                })?;
                return Ok(WsStream {
                    inner: s,
                    ctx: codec::client_context(received),
                    pending: Vec::new(),
                });
            }
            401 => answer_challenge(
                &head,
                creds,
                &mut auth,
                &format!("the WebSocket upgrade GET {target}"),
            )?,
            status => {
                let hint = match status {
                    403 => "",
                    _ => " (does the server serve RTSP over WebSocket here?)",
                };
                return Err(SessionError::Handshake(HandshakeError::Status {
                    method: "the WebSocket upgrade GET".into(),
                    uri: format!("{host}{target}"),
                    status,
                    reason: format!("{}{hint}", head.reason),
                }));
            }
        }
    }
}

/// The connection during the RTSP handshake: whole messages out, decoded data in.
pub(crate) struct WsStream {
    pub(crate) inner: Plain,
    pub(crate) ctx: WebSocketContext,
    /// Decoded bytes not yet read.
    pub(crate) pending: Vec<u8>,
}

impl WsStream {
    /// Sends `bytes` (one RTSP message) as one message.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut out = Vec::new();
        codec::encode(&mut self.ctx, bytes.to_vec(), Sink::Buffer(&mut out))?;
        self.inner.write_all(&out).await
    }

    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut raw = vec![0u8; 16 * 1024];
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.len());
                buf[..n].copy_from_slice(&self.pending[..n]);
                self.pending.drain(..n);
                return Ok(n);
            }
            let n = self.inner.read(&mut raw).await?;
            if n == 0 {
                return Ok(0);
            }
            let mut pong = Vec::new();
            let Decoded { data, closed, .. } =
                codec::decode(&mut self.ctx, &raw[..n], Sink::Buffer(&mut pong))?;
            if !pong.is_empty() {
                self.inner.write_all(&pong).await?;
            }
            self.pending.extend(data);
            if closed && self.pending.is_empty() {
                return Ok(0);
            }
        }
    }
}

/// The write side while recording: the queue's bytes cut into units, one message each. The
/// reader decodes through the same context (pings it answers go out here).
pub(crate) struct WsWire {
    inner: PlainWire,
    core: Mutex<Core>,
}

struct Core {
    ctx: WebSocketContext,
    split: Splitter,
    /// Framed bytes wait in the context for room in the socket.
    unflushed: bool,
}

impl WsWire {
    pub(crate) fn new(inner: PlainWire, ctx: WebSocketContext) -> Arc<WsWire> {
        Arc::new(WsWire {
            inner,
            core: Mutex::new(Core {
                ctx,
                split: Splitter::default(),
                unflushed: false,
            }),
        })
    }

    /// Takes all of `data` once what was framed before has gone out (a bounded backlog of one
    /// batch, as in the TLS wire).
    pub(crate) fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let mut c = self.core.lock().unwrap();
        let Core {
            ctx,
            split,
            unflushed,
        } = &mut *c;
        if *unflushed {
            if !codec::flush(ctx, Sink::Wire(&self.inner))? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            *unflushed = false;
        }
        for unit in split.push(data) {
            if !codec::encode(ctx, unit, Sink::Wire(&self.inner))? {
                *unflushed = true;
            }
        }
        if *unflushed {
            *unflushed = !codec::flush(ctx, Sink::Wire(&self.inner))?;
        }
        Ok(data.len())
    }

    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut c = self.core.lock().unwrap();
        if codec::flush(&mut c.ctx, Sink::Wire(&self.inner))? {
            c.unflushed = false;
            Ok(())
        } else {
            c.unflushed = true;
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    pub(crate) fn backlog(&self) -> bool {
        let c = self.core.lock().unwrap();
        c.unflushed || c.split.holds() || self.inner.backlog()
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.inner.writable().await
    }

    /// Says goodbye (a close frame, best effort), then closes the connection.
    pub(crate) async fn close(&self, stall: Duration) {
        {
            let mut c = self.core.lock().unwrap();
            let mut io = codec::Io {
                input: &[],
                sink: Sink::Wire(&self.inner),
            };
            let _ = c.ctx.close(&mut io, None);
            let _ = c.ctx.flush(&mut io);
        }
        self.inner.close(stall).await
    }

    /// Decodes what the reader received; true with the data when the server closed.
    pub(crate) fn decode(&self, input: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
        let mut c = self.core.lock().unwrap();
        let d = codec::decode(&mut c.ctx, input, Sink::Wire(&self.inner))?;
        if d.unflushed {
            c.unflushed = true;
        }
        out.extend(d.data);
        Ok(d.closed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tunnel::http::parse_head;
    use super::*;

    #[test]
    fn the_upgrade_asks_for_the_onvif_subprotocol() {
        let r = upgrade_request(
            "cam:8554",
            "/live/x",
            "dGhlIHNhbXBsZSBub25jZQ==",
            "ua/1",
            None,
        );
        assert!(
            r.starts_with("GET /live/x HTTP/1.1\r\nHost: cam:8554\r\n"),
            "{r}"
        );
        assert!(r.contains("Upgrade: websocket\r\nConnection: Upgrade\r\n"));
        assert!(r.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(r.contains("Sec-WebSocket-Protocol: rtsp.onvif.org\r\n"));
        assert!(r.ends_with("\r\n\r\n") && !r.contains("Authorization"));
    }

    #[test]
    fn an_upgrade_without_the_subprotocol_or_the_right_key_is_refused() {
        // RFC 6455's example key and accept value.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let answer = |extra: &str| {
            let text = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
            );
            parse_head(text.as_bytes()).unwrap().unwrap().0
        };
        let ok = answer("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: rtsp.onvif.org\r\n");
        assert_eq!(check_upgrade(&ok, key), Ok(()));
        let none = answer("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n");
        assert!(check_upgrade(&none, key)
            .unwrap_err()
            .contains("did not accept"));
        let bad =
            answer("Sec-WebSocket-Accept: AAAA\r\nSec-WebSocket-Protocol: rtsp.onvif.org\r\n");
        assert!(check_upgrade(&bad, key).unwrap_err().contains("Accept"));
    }
}
