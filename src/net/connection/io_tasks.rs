//! The two I/O tasks of a streaming connection: the writer drains the send queue to the
//! socket, the reader answers whatever the server sends.

use super::SessionError;
use super::{answer_server_request, log_response, FailureHandler, RequestHandler, RtcpHandler};
use crate::net::queue::{write_all, SendQueue, Wire, WriteError};
use crate::net::tls::{TlsReader, TlsWire};
use crate::net::websocket::WsWire;
use crate::rtsp::message::{Incoming, Parser, Response};
use crate::CAT;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

pub(super) async fn write_loop(
    wire: Wire,
    queue: Arc<SendQueue>,
    timeout: Duration,
    on_failure: FailureHandler,
    closing: Arc<AtomicBool>,
    name: String,
) -> Result<(), SessionError> {
    let mut batch: Vec<u8> = Vec::new();
    while let Some(media_in_batch) = queue.take(&mut batch).await {
        let res = write_all(&wire, &batch, timeout).await;
        queue.written(&mut batch);
        let err = match res {
            Ok(()) => continue,
            Err(WriteError::Io(_))
                if closing.load(Ordering::SeqCst) && !media_in_batch && !queue.has_media() =>
            {
                // Only BYE/TEARDOWN were left when a closing server went away: all media arrived.
                gst::debug!(CAT, "{name}: server gone while closing, after all media");
                queue.set_wire(None);
                return Ok(());
            }
            Err(WriteError::Io(e)) => {
                SessionError::Io(format!("writing to the server failed: {e}"))
            }
            Err(WriteError::Stalled) => SessionError::Io(format!(
                "server accepted no data for {timeout:?} (not reading, or the network is down)"
            )),
        };
        gst::warning!(CAT, "{name}: {err}");
        on_failure(err.clone());
        queue.fail(err.to_string());
        return Err(err);
    }
    // The last reference to a TCP write half goes with `wire`: the write side closes.
    queue.set_wire(None);
    wire.close(timeout).await;
    gst::debug!(CAT, "{name}: writer done");
    Ok(())
}

/// What the reader task shares with the rest of the session.
pub(super) struct ReaderCtx {
    pub(super) queue: Arc<SendQueue>,
    pub(super) waiting: Arc<Mutex<HashMap<u32, tokio::sync::oneshot::Sender<Response>>>>,
    pub(super) on_failure: FailureHandler,
    pub(super) on_rtcp: RtcpHandler,
    pub(super) on_request: Option<RequestHandler>,
    pub(super) closing: Arc<AtomicBool>,
    pub(super) name: String,
}

/// Where the reader task reads plaintext from.
pub(super) enum ReadSide {
    Tcp(OwnedReadHalf),
    Tls(TlsReader),
    /// A tunnel's GET half over TLS: what rustls has to send goes on its own connection, not
    /// on the queue's (the POST's).
    TlsOwn(TlsReader, Arc<TlsWire>),
    /// WebSocket messages over a plain or TLS side; decoded data not yet read, and the buffer
    /// raw bytes are read into.
    WebSocket(Box<ReadSide>, Arc<WsWire>, Vec<u8>, Vec<u8>),
}

impl ReadSide {
    async fn read(&mut self, buf: &mut [u8], queue: &SendQueue) -> std::io::Result<usize> {
        match self {
            ReadSide::Tcp(rd) => rd.read(buf).await,
            ReadSide::Tls(rd) => {
                let mut needs_flush = false;
                let res = rd.read(buf, &mut needs_flush).await;
                if needs_flush {
                    queue.flush_wire();
                }
                res
            }
            ReadSide::TlsOwn(rd, wire) => {
                let mut needs_flush = false;
                let res = rd.read(buf, &mut needs_flush).await;
                if needs_flush {
                    // Best effort: TLS alerts and key updates on a half we never write.
                    let _ = wire.flush();
                }
                res
            }
            ReadSide::WebSocket(raw, wire, pending, chunk) => {
                chunk.resize(buf.len(), 0);
                loop {
                    if !pending.is_empty() {
                        let n = pending.len().min(buf.len());
                        buf[..n].copy_from_slice(&pending[..n]);
                        pending.drain(..n);
                        return Ok(n);
                    }
                    let n = Box::pin(raw.read(chunk, queue)).await?;
                    if n == 0 {
                        return Ok(0);
                    }
                    let closed = wire.decode(&chunk[..n], pending)?;
                    if wire.backlog() {
                        // A pong waits for room: the writer sends it with what comes next.
                        queue.flush_wire();
                    }
                    if closed && pending.is_empty() {
                        return Ok(0);
                    }
                }
            }
        }
    }
}

/// Watches a tunnel's POST connection: a server that took the tunnel sends nothing there, so
/// an answer (a refusal) or its end stops the session, unless we are closing.
pub(super) async fn watch_post(
    mut rd: ReadSide,
    queue: Arc<SendQueue>,
    on_failure: FailureHandler,
    closing: Arc<AtomicBool>,
    name: String,
) {
    let mut buf = [0u8; 256];
    let res = rd.read(&mut buf, &queue).await;
    if closing.load(Ordering::SeqCst) {
        return;
    }
    let err = crate::net::tunnel::post_answered(res, &buf);
    gst::warning!(CAT, "{name}: {err}");
    on_failure(err.clone());
    queue.fail(err.to_string());
}

pub(super) async fn read_loop(mut rd: ReadSide, mut parser: Parser, cx: ReaderCtx) {
    let ReaderCtx {
        queue,
        waiting,
        on_failure,
        on_rtcp,
        on_request,
        closing,
        name,
    } = cx;
    let mut buf = vec![0u8; 16 * 1024];
    let fail = |err: SessionError| {
        gst::warning!(CAT, "{name}: {err}");
        // Whoever waits for an answer learns of the failure by the dropped sender.
        waiting.lock().unwrap().clear();
        on_failure(err.clone());
        queue.fail(err.to_string());
    };
    loop {
        loop {
            match parser.next_message() {
                Ok(Some(Incoming::Response(r))) => {
                    log_response(&name, &r);
                    // An answer without CSeq (FFmpeg's listener answers TEARDOWN so) belongs to
                    // the request in flight when there is just one.
                    let tx = {
                        let mut w = waiting.lock().unwrap();
                        match r.headers.cseq() {
                            Some(c) => w.remove(&c),
                            None if w.len() == 1 => {
                                let c = *w.keys().next().unwrap();
                                w.remove(&c)
                            }
                            None => None,
                        }
                    };
                    match tx {
                        Some(tx) => {
                            let _ = tx.send(r);
                        }
                        None => gst::debug!(CAT, "{name}: unsolicited response ignored"),
                    }
                }
                Ok(Some(Incoming::Request(req))) => {
                    let resp = match &on_request {
                        // The application's handler may take its time, and the I/O workers are
                        // shared by every session (DESIGN.md §2a): it runs on the blocking pool.
                        // This reader waits for it, so answers keep their order.
                        Some(app) => {
                            let (app, n, r) = (app.clone(), name.clone(), req.clone());
                            tokio::task::spawn_blocking(move || {
                                answer_server_request(&n, &r, Some(&app))
                            })
                            .await
                            // The handler panicked: the default answer.
                            .unwrap_or_else(|_| answer_server_request(&name, &req, None))
                        }
                        None => answer_server_request(&name, &req, None),
                    };
                    let _ = queue.push_control(resp.to_bytes());
                    if req.method == "TEARDOWN" && !closing.load(Ordering::SeqCst) {
                        // Our 200 still goes out; then the session is over.
                        let err = SessionError::Io(
                            "the server ended the session (it sent TEARDOWN)".into(),
                        );
                        queue.fail_after_control(err.to_string());
                        return fail(err);
                    }
                }
                Ok(Some(Incoming::Interleaved { channel, data })) => {
                    gst::trace!(
                        CAT,
                        "{name}: {} bytes from server on channel {channel}",
                        data.len()
                    );
                    on_rtcp(channel, &data);
                }
                Ok(None) => break,
                Err(e) => return fail(SessionError::Parse(e)),
            }
        }
        match rd.read(&mut buf, &queue).await {
            Ok(0) | Err(_) if closing.load(Ordering::SeqCst) => {
                // Expected at the end: whoever waits for an answer learns by the dropped sender;
                // the writer finishes what is queued and reports itself.
                gst::debug!(CAT, "{name}: server closed the connection at the end");
                waiting.lock().unwrap().clear();
                return;
            }
            Ok(0) => return fail(SessionError::Io("server closed the connection".into())),
            Ok(n) => parser.feed(&buf[..n]),
            Err(e) => {
                return fail(SessionError::Io(format!(
                    "reading from the server failed: {e}"
                )))
            }
        }
    }
}
