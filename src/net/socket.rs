//! The base of every RTSP connection: resolving, connecting, TLS, and the two halves a plain or
//! TLS connection splits into. Tunnels and WebSockets are built on these.

use super::tls::TlsWire;
use crate::error::Error as SessionError;
use crate::rtsp::url::RtspUrl;
use crate::CAT;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

/// Resolves the server name, within `timeout`.
pub(crate) async fn resolve(
    url: &RtspUrl,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, SessionError> {
    let (host, port) = url.connect_target();
    resolve_host(&host, port, timeout).await
}

/// Resolves `host`, within `timeout`.
pub(crate) async fn resolve_host(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, SessionError> {
    let addrs: Vec<_> = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| {
            SessionError::Timeout(format!("resolving {host} took longer than {timeout:?}"))
        })?
        .map_err(|e| SessionError::Resolve(format!("cannot resolve host {host:?}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(SessionError::Resolve(format!(
            "host {host:?} has no address"
        )));
    }
    Ok(addrs)
}

/// The local address the kernel would use towards `peer` (a UDP socket's connect only looks the
/// route up; nothing is sent), so the SDP can be written before the TCP connection exists.
pub(crate) fn route_local_addr(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(peer).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Connects to the first of `addrs` that accepts, within `timeout`.
/// `send_buffer` caps the kernel's send buffer (it autotunes up to megabytes, which on a slow
/// link is seconds of hidden latency a drop policy could not see).
/// With `tls`, the TLS handshake follows within the same deadline.
pub(crate) async fn connect(
    url: &RtspUrl,
    addrs: &[SocketAddr],
    timeout: Duration,
    send_buffer: Option<u32>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Plain, SessionError> {
    let (host, port) = url.connect_target();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    for addr in addrs {
        let attempt = async {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            if let Some(size) = send_buffer {
                socket.set_send_buffer_size(size)?;
            }
            socket.connect(*addr).await
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                gst::debug!(CAT, "connected to {addr}");
                return match tls {
                    None => Ok(Plain::Tcp(s)),
                    Some(cfg) => tls_handshake(s, &host, cfg, deadline, timeout).await,
                };
            }
            Ok(Err(e)) => last = format!("cannot connect to {addr}: {e}"),
            Err(_) => {
                return Err(SessionError::Timeout(format!(
                    "connecting to {host}:{port} took longer than {timeout:?}"
                )))
            }
        }
    }
    Err(SessionError::Connect(last))
}

pub(crate) async fn tls_handshake(
    tcp: TcpStream,
    host: &str,
    cfg: Arc<rustls::ClientConfig>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Plain, SessionError> {
    let name = super::tls::server_name(host).map_err(SessionError::Tls)?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    // The verifier waits for an accept-certificate handler no longer than this deadline.
    let handshake = super::tls::bounded_handshake(deadline, timeout, connector.connect(name, tcp));
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(s)) => {
            let s = Plain::Tls(Box::new(s));
            gst::debug!(
                CAT,
                "TLS established with {host}: {}",
                s.tls_summary().unwrap_or_default()
            );
            Ok(s)
        }
        Ok(Err(e)) => Err(match super::tls::rejected(&e) {
            Some(r) => SessionError::Certificate(r.text.clone()),
            None => SessionError::Tls(tls_error_text(&e)),
        }),
        Err(_) => Err(SessionError::Timeout(format!(
            "the TLS handshake with {host} took longer than {timeout:?} (is it an RTSPS server?)"
        ))),
    }
}

/// A handshake error in words, with a hint for the usual cause: a plain RTSP server, which
/// answers a ClientHello with an RTSP error or closes.
fn tls_error_text(e: &std::io::Error) -> String {
    let plain_hint =
        " (the server does not speak TLS on this port: use rtsp:// for a plain server)";
    let corrupt = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidMessage(_)));
    if corrupt {
        format!("{e}{plain_hint}")
    } else if e.kind() == std::io::ErrorKind::UnexpectedEof
        || e.kind() == std::io::ErrorKind::ConnectionReset
    {
        format!("the server closed the connection during the handshake ({e}){plain_hint}")
    } else {
        e.to_string()
    }
}

/// A connection, plain or TLS.
pub(crate) enum Plain {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Plain {
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Plain::Tcp(s) => s,
            Plain::Tls(s) => s.get_ref().0,
        }
    }

    /// TLS version and cipher suite, e.g. `TLSv1.3 TLS13_AES_256_GCM_SHA384` (None: plain).
    pub(crate) fn tls_summary(&self) -> Option<String> {
        let Plain::Tls(s) = self else { return None };
        let conn = s.get_ref().1;
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => "TLS".to_string(),
        };
        Some(match conn.negotiated_cipher_suite() {
            Some(c) => format!("{version} {:?}", c.suite()),
            None => version,
        })
    }

    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Plain::Tcp(s) => s.write_all(bytes).await,
            Plain::Tls(s) => {
                s.write_all(bytes).await?;
                // Sealed records must not wait in rustls for the next write.
                s.flush().await
            }
        }
    }

    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Plain::Tcp(s) => s.read(buf).await,
            Plain::Tls(s) => s.read(buf).await,
        }
    }
}

/// The write half of a plain or TLS connection, written without blocking.
#[derive(Clone)]
pub(crate) enum PlainWire {
    Tcp(Arc<OwnedWriteHalf>),
    /// RTSPS: bytes are sealed into TLS records, many frames to a record.
    Tls(Arc<TlsWire>),
}

impl PlainWire {
    /// A non-blocking write: `WouldBlock` when the socket has no room.
    pub(crate) fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            PlainWire::Tcp(w) => w.try_write(data),
            PlainWire::Tls(w) => w.try_write(data),
        }
    }

    /// Sends sealed TLS records still held; `WouldBlock` while some remain.
    pub(crate) fn flush(&self) -> io::Result<()> {
        match self {
            PlainWire::Tcp(_) => Ok(()),
            PlainWire::Tls(w) => w.flush(),
        }
    }

    pub(crate) fn backlog(&self) -> bool {
        match self {
            PlainWire::Tcp(_) => false,
            PlainWire::Tls(w) => w.backlog(),
        }
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            PlainWire::Tcp(w) => w.writable().await,
            PlainWire::Tls(w) => w.writable().await,
        }
    }

    /// A TCP half closes when its last reference goes; TLS says close_notify first, and its
    /// reader still holds the socket.
    pub(crate) async fn close(&self, stall: Duration) {
        if let PlainWire::Tls(w) = self {
            w.close(stall).await
        }
    }
}
