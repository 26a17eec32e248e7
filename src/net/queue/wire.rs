//! Where the queued bytes go: the socket (plain, TLS, a tunnel's POST, or WebSocket messages),
//! written without blocking.

use crate::net::socket::PlainWire;
use crate::net::tunnel::Base64Wire;
use crate::net::websocket::WsWire;
use std::io;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub(crate) enum Wire {
    /// Plain TCP, or RTSPS (bytes sealed into TLS records, many frames to a record).
    Plain(PlainWire),
    /// The POST half of an HTTP tunnel: bytes go out base64-encoded.
    Tunnel(Arc<Base64Wire>),
    /// RTSP over WebSocket: one message per RTSP message or interleaved frame.
    WebSocket(Arc<WsWire>),
}

impl Wire {
    /// A non-blocking write: `WouldBlock` when the socket has no room.
    pub(crate) fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(w) => w.try_write(data),
            Wire::Tunnel(w) => w.try_write(data),
            Wire::WebSocket(w) => w.try_write(data),
        }
    }

    /// Sends bytes the wire itself still holds (sealed TLS records); `WouldBlock` while some
    /// remain.
    pub(crate) fn flush(&self) -> io::Result<()> {
        match self {
            Wire::Plain(w) => w.flush(),
            Wire::Tunnel(w) => w.flush(),
            Wire::WebSocket(w) => w.flush(),
        }
    }

    /// Whether the wire holds bytes that must still go out even when nothing is pending.
    pub(crate) fn backlog(&self) -> bool {
        match self {
            Wire::Plain(w) => w.backlog(),
            Wire::Tunnel(w) => w.backlog(),
            Wire::WebSocket(w) => w.backlog(),
        }
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            Wire::Plain(w) => w.writable().await,
            Wire::Tunnel(w) => w.writable().await,
            Wire::WebSocket(w) => w.writable().await,
        }
    }

    /// Ends the write side once everything is written. A TCP half closes when its last
    /// reference goes; TLS says close_notify first, and its reader still holds the socket.
    pub(crate) async fn close(&self, stall: Duration) {
        match self {
            Wire::Plain(w) => w.close(stall).await,
            Wire::Tunnel(w) => w.close(stall).await,
            Wire::WebSocket(w) => w.close(stall).await,
        }
    }
}

/// Writes `data` to the wire as it drains; fails when no byte goes out for `stall`.
/// Returns once the wire holds nothing more of it (TLS records included).
pub(crate) async fn write_all(wire: &Wire, data: &[u8], stall: Duration) -> Result<(), WriteError> {
    let mut at = 0;
    loop {
        let res = if at < data.len() {
            wire.try_write(&data[at..])
        } else {
            match wire.flush() {
                Ok(()) => return Ok(()),
                Err(e) => Err(e),
            }
        };
        match res {
            Ok(0) => return Err(WriteError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(stall, wire.writable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(WriteError::Io(e)),
                    Err(_) => return Err(WriteError::Stalled),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WriteError::Io(e)),
        }
    }
}

#[derive(Debug)]
pub(crate) enum WriteError {
    Io(io::Error),
    /// The peer took nothing for the stall timeout.
    Stalled,
}
