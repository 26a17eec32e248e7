//! WebSocket framing through tungstenite's `WebSocketContext`, which does no I/O of its own:
//! it is handed, call by call, something to read the bytes we received from and something to
//! write to (the non-blocking wire, or a buffer during the handshake).

use crate::net::socket::PlainWire;
use std::io::{self, Read, Write};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

/// The subprotocol of the ONVIF Streaming Specification's WebSocket transport.
pub(crate) const SUBPROTOCOL: &str = "rtsp.onvif.org";

/// Where framed bytes go.
pub(crate) enum Sink<'a> {
    Wire(&'a PlainWire),
    Buffer(&'a mut Vec<u8>),
}

/// The stream a context call sees: reads from `input`, writes to `sink`.
pub(crate) struct Io<'a> {
    pub input: &'a [u8],
    pub sink: Sink<'a>,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.len().min(buf.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.sink {
            Sink::Wire(w) => w.try_write(buf),
            Sink::Buffer(v) => {
                v.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.sink {
            Sink::Wire(w) => w.flush(),
            Sink::Buffer(_) => Ok(()),
        }
    }
}

/// A client context: masked frames, RTSP-sized messages.
pub(crate) fn client_context(received: Vec<u8>) -> WebSocketContext {
    let mut cfg = WebSocketConfig::default();
    // One RTSP message or interleaved frame per message: 64 KiB and a head at most.
    cfg.max_message_size = Some(1 << 20);
    cfg.max_frame_size = Some(1 << 20);
    cfg.read_buffer_size = 16 * 1024;
    WebSocketContext::from_partially_read(received, Role::Client, Some(cfg))
}

fn would_block(e: &WsError) -> bool {
    matches!(e, WsError::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
}

pub(crate) fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        e => io::Error::other(format!("WebSocket: {e}")),
    }
}

/// What decoding some received bytes gave.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// The payloads of the data messages, in order.
    pub data: Vec<u8>,
    /// The server closed the WebSocket.
    pub closed: bool,
    /// A pong (or our close answer) is waiting for room in the sink.
    pub unflushed: bool,
}

/// Feeds `input` to the context; pings are answered into `sink`.
pub(crate) fn decode(
    ctx: &mut WebSocketContext,
    input: &[u8],
    sink: Sink<'_>,
) -> io::Result<Decoded> {
    let mut io = Io { input, sink };
    let mut out = Decoded::default();
    loop {
        match ctx.read(&mut io) {
            Ok(Message::Binary(b)) => out.data.extend_from_slice(&b),
            // The transport sends binary messages; a text one still carries RTSP.
            Ok(Message::Text(t)) => out.data.extend_from_slice(t.as_bytes()),
            Ok(Message::Close(_)) => {
                out.closed = true;
                break;
            }
            Ok(_) => {}
            Err(e) if would_block(&e) => break,
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                out.closed = true;
                break;
            }
            Err(e) => return Err(io_error(e)),
        }
    }
    // A pong queued by a ping goes out now, as far as the sink takes it.
    match ctx.flush(&mut io) {
        Ok(()) => {}
        Err(e) if would_block(&e) => out.unflushed = true,
        Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
        Err(e) => return Err(io_error(e)),
    }
    Ok(out)
}

/// Frames `unit` as one binary message into `sink`; false when the sink had no room for all of
/// it (the context keeps the rest for the next flush).
pub(crate) fn encode(
    ctx: &mut WebSocketContext,
    unit: Vec<u8>,
    sink: Sink<'_>,
) -> io::Result<bool> {
    let mut io = Io { input: &[], sink };
    match ctx.write(&mut io, Message::Binary(unit.into())) {
        Ok(()) => {}
        Err(e) if would_block(&e) => return Ok(false),
        Err(e) => return Err(io_error(e)),
    }
    flush(ctx, io.sink)
}

/// Writes what the context holds; false while some remains.
pub(crate) fn flush(ctx: &mut WebSocketContext, sink: Sink<'_>) -> io::Result<bool> {
    let mut io = Io { input: &[], sink };
    match ctx.flush(&mut io) {
        Ok(()) => Ok(true),
        Err(e) if would_block(&e) => Ok(false),
        Err(e) => Err(io_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server context, for the other end.
    fn server() -> WebSocketContext {
        WebSocketContext::new(Role::Server, None)
    }

    #[test]
    fn a_unit_is_one_masked_binary_message() {
        let mut client = client_context(Vec::new());
        let mut wire = Vec::new();
        assert!(encode(
            &mut client,
            b"OPTIONS * RTSP/1.0\r\n\r\n".to_vec(),
            Sink::Buffer(&mut wire)
        )
        .unwrap());
        // Binary, final, masked (the mask bit of the length byte).
        assert_eq!(wire[0], 0x82);
        assert_eq!(wire[1] & 0x80, 0x80);
        let mut srv = server();
        let mut out = Vec::new();
        let msg = srv
            .read(&mut Io {
                input: &wire,
                sink: Sink::Buffer(&mut out),
            })
            .unwrap();
        assert_eq!(
            msg,
            Message::Binary(b"OPTIONS * RTSP/1.0\r\n\r\n".to_vec().into())
        );
    }

    #[test]
    fn received_messages_decode_in_order_and_pings_are_answered() {
        let mut srv = server();
        let mut wire = Vec::new();
        let mut sink = Io {
            input: &[],
            sink: Sink::Buffer(&mut wire),
        };
        srv.write(
            &mut sink,
            Message::Binary(b"RTSP/1.0 200 OK\r\n".to_vec().into()),
        )
        .unwrap();
        srv.write(&mut sink, Message::Ping(b"p".to_vec().into()))
            .unwrap();
        srv.write(&mut sink, Message::Binary(b"\r\n".to_vec().into()))
            .unwrap();
        srv.flush(&mut sink).unwrap();
        let mut client = client_context(Vec::new());
        let mut pong = Vec::new();
        // Cut in two: the context keeps the partial frame.
        let (a, b) = wire.split_at(5);
        let first = decode(&mut client, a, Sink::Buffer(&mut pong)).unwrap();
        let second = decode(&mut client, b, Sink::Buffer(&mut pong)).unwrap();
        let mut all = first.data;
        all.extend(second.data);
        assert_eq!(all, b"RTSP/1.0 200 OK\r\n\r\n");
        assert!(!second.closed);
        // The pong went out, masked.
        assert_eq!(pong[0], 0x8a);
    }
}
