//! The RTSP connection: connect, run the handshake, then stream with one writer and one reader
//! task, and TEARDOWN at the end.

mod io_tasks;

use super::queue::{SendQueue, Wire};
use super::socket::{Plain, PlainWire};
use super::tls::{TlsReader, TlsWire};
use super::tunnel::{Base64Wire, Tunnel};
use super::websocket::{WsStream, WsWire};
use crate::rtsp::handshake::{Handshake, Negotiated, RequestContext, Step};
use crate::rtsp::message::{Incoming, Parser, Request, Response};
use crate::rtsp::server_request;
use crate::CAT;
use io_tasks::{read_loop, watch_post, write_loop, ReadSide, ReaderCtx};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

pub(crate) use crate::error::Error as SessionError;

fn log_request(who: &str, req: &Request) {
    gst::debug!(CAT, "{who}: sending\n{}", req.to_log_string());
}

fn log_response(who: &str, resp: &Response) {
    gst::debug!(CAT, "{who}: received\n{}", resp.to_log_string());
}

/// The RTSP connection: plain or TLS, tunnelled in HTTP, or a WebSocket.
pub(crate) enum Stream {
    Plain(Plain),
    Tunnel(Box<Tunnel>),
    WebSocket(Box<WsStream>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(p) => p.tcp(),
            Stream::Tunnel(t) => t.get.tcp(),
            Stream::WebSocket(w) => w.inner.tcp(),
        }
    }

    pub(crate) fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp().local_addr()
    }

    pub(crate) fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp().peer_addr()
    }

    /// TLS version and cipher suite (None: plain).
    pub(crate) fn tls_summary(&self) -> Option<String> {
        match self {
            Stream::Plain(p) => p.tls_summary(),
            Stream::Tunnel(t) => t.get.tls_summary(),
            Stream::WebSocket(w) => w.inner.tls_summary(),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(p) => p.write_all(bytes).await,
            Stream::Tunnel(t) => t.write_all(bytes).await,
            Stream::WebSocket(w) => w.write_all(bytes).await,
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(p) => p.read(buf).await,
            Stream::Tunnel(t) => t.read(buf).await,
            Stream::WebSocket(w) => w.read(buf).await,
        }
    }
}

/// The connection during the handshake: whole responses in, requests out.
pub(crate) struct Control {
    pub(crate) stream: Stream,
    pub(crate) parser: Parser,
    pub(crate) timeout: Duration,
    pub(crate) name: String,
}

impl Control {
    /// Sends `req` and returns its response, answering any request the server sends meanwhile.
    async fn round_trip(&mut self, req: &Request) -> Result<Response, SessionError> {
        log_request(&self.name, req);
        let bytes = req.to_bytes();
        tokio::time::timeout(self.timeout, self.stream.write_all(&bytes))
            .await
            .map_err(|_| {
                SessionError::Timeout(format!(
                    "sending {} took longer than {:?}",
                    req.method, self.timeout
                ))
            })?
            .map_err(|e| SessionError::Io(format!("sending {} failed: {e}", req.method)))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while let Some(msg) = self.parser.next_message().map_err(SessionError::Parse)? {
                match msg {
                    Incoming::Response(r) => {
                        log_response(&self.name, &r);
                        return Ok(r);
                    }
                    Incoming::Request(sreq) => {
                        let resp = answer_server_request(&self.name, &sreq, None);
                        let _ = self.stream.write_all(&resp.to_bytes()).await;
                    }
                    Incoming::Interleaved { channel, data } => {
                        gst::trace!(
                            CAT,
                            "{}: ignoring {} bytes on channel {channel} before RECORD",
                            self.name,
                            data.len()
                        );
                    }
                }
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .map_err(|_| {
                    SessionError::Timeout(format!(
                        "server did not answer {} within {:?}",
                        req.method, self.timeout
                    ))
                })?
                .map_err(|e| {
                    SessionError::Io(format!("reading the answer to {} failed: {e}", req.method))
                })?;
            if n == 0 {
                return Err(SessionError::Io(format!(
                    "server closed the connection instead of answering {}",
                    req.method
                )));
            }
            self.parser.feed(&buf[..n]);
        }
    }

    /// Drives the handshake to its end. Returns what was negotiated and the round trips taken.
    /// `bind_udp` binds a track's UDP port pair when a SETUP offers UDP.
    pub(crate) async fn run_handshake(
        &mut self,
        hs: &mut Handshake,
        bind_udp: &mut (dyn FnMut(usize) -> Result<(u16, u16), SessionError> + Send),
    ) -> Result<(Negotiated, u32), SessionError> {
        let mut req = hs.start();
        let mut trips = 0;
        loop {
            let resp = self.round_trip(&req).await?;
            trips += 1;
            let mut step = hs.handle_response(&resp).map_err(SessionError::Handshake)?;
            while let Step::BindUdp(track) = step {
                let (rtp, rtcp) = bind_udp(track)?;
                step = hs.udp_ports_bound(track, rtp, rtcp);
            }
            match step {
                Step::Send(next) => req = next,
                Step::Done(n) => return Ok((n, trips)),
                Step::BindUdp(_) => unreachable!("bound above"),
            }
        }
    }
}

/// What we answer to requests a server sends us on the connection.
/// `app` may answer first (the element's `handle-request` signal), unless the method is
/// malformed; see `rtsp::server_request` for the defaults (TEARDOWN is accepted).
fn answer_server_request(name: &str, req: &Request, app: Option<&RequestHandler>) -> Response {
    gst::debug!(CAT, "{name}: server request\n{}", req.to_log_string());
    let resp = server_request::answer(req, |req| app.and_then(|h| h(req)));
    log_response(name, &resp);
    resp
}

/// How the end of a session went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TeardownError {
    /// Queued data did not reach the server.
    NotDelivered(SessionError),
    /// Everything was written, but TEARDOWN got no answer.
    NoAnswer(SessionError),
}

/// Lets the application answer a request the server sent (None: the default answer).
pub(crate) type RequestHandler = Arc<dyn Fn(&Request) -> Option<Response> + Send + Sync>;

/// Called with interleaved data the server sends (its RTCP).
pub(crate) type RtcpHandler = Arc<dyn Fn(u8, &[u8]) + Send + Sync>;

/// Called from the I/O tasks when the connection fails while streaming.
pub(crate) type FailureHandler = Arc<dyn Fn(SessionError) + Send + Sync>;

/// A recording session: the writer drains the queue to the socket, the reader handles whatever
/// the server sends (RTCP, answers, requests) so the server never blocks on us.
pub(crate) struct Streaming {
    pub(crate) queue: Arc<SendQueue>,
    ctx: Mutex<RequestContext>,
    uri: String,
    waiting: Arc<Mutex<HashMap<u32, tokio::sync::oneshot::Sender<Response>>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<Result<(), SessionError>>>>,
    reader: tokio::task::AbortHandle,
    keepalive: Mutex<Option<tokio::task::AbortHandle>>,
    timeout: Duration,
    on_failure: FailureHandler,
    /// Set once TEARDOWN is on its way: the server closing is then expected, not a failure.
    closing: Arc<AtomicBool>,
    name: String,
    tunnel: Option<TunnelHalves>,
}

/// What a tunnelled session keeps of the halves the I/O tasks do not use.
struct TunnelHalves {
    /// Held, never written: dropping it would end the GET connection's write side.
    _get_wire: PlainWire,
    /// The task that turns anything on the POST connection into a failure.
    watch: tokio::task::AbortHandle,
}

/// Splits a plain or TLS connection into the reader's side and the writers' wire.
fn split(stream: Plain) -> (ReadSide, PlainWire) {
    match stream {
        Plain::Tcp(s) => {
            let (rd, wr) = s.into_split();
            (ReadSide::Tcp(rd), PlainWire::Tcp(Arc::new(wr)))
        }
        Plain::Tls(s) => {
            // From here the reader feeds rustls and the writers seal into it directly.
            let (tcp, conn) = s.into_inner();
            let (rd, wr) = tcp.into_split();
            let wire = TlsWire::new(conn, wr);
            (
                ReadSide::Tls(TlsReader::new(rd, wire.clone())),
                PlainWire::Tls(wire),
            )
        }
    }
}

impl Streaming {
    /// Starts the I/O tasks. Must be called from within the runtime.
    pub(crate) fn start(
        control: Control,
        ctx: RequestContext,
        uri: String,
        queue: Arc<SendQueue>,
        on_failure: FailureHandler,
        on_rtcp: RtcpHandler,
        on_request: Option<RequestHandler>,
    ) -> Arc<Streaming> {
        let Control {
            stream,
            mut parser,
            timeout,
            name,
        } = control;
        // In a tunnel, the GET half reads and the POST half writes; the GET's own write side
        // must stay open (a server takes its end for the client's), and anything read on the
        // POST's is a refusal.
        let (rd, wire, tunnel) = match stream {
            Stream::Tunnel(t) => {
                let Tunnel { get, post, early } = *t;
                parser.feed(&early);
                let (rd, get_wire) = split(get);
                let rd = match (rd, &get_wire) {
                    (ReadSide::Tls(r), PlainWire::Tls(w)) => ReadSide::TlsOwn(r, w.clone()),
                    (rd, _) => rd,
                };
                let (post_rd, post_wire) = split(post);
                let wire = Wire::Tunnel(Arc::new(Base64Wire::new(post_wire)));
                (rd, wire, Some((get_wire, post_rd)))
            }
            Stream::WebSocket(w) => {
                let WsStream {
                    inner,
                    ctx,
                    pending,
                } = *w;
                parser.feed(&pending);
                let (raw, inner_wire) = split(inner);
                let wire = WsWire::new(inner_wire, ctx);
                (
                    ReadSide::WebSocket(Box::new(raw), wire.clone(), Vec::new(), Vec::new()),
                    Wire::WebSocket(wire),
                    None,
                )
            }
            Stream::Plain(p) => {
                let (rd, wire) = split(p);
                (rd, Wire::Plain(wire), None)
            }
        };
        let waiting: Arc<Mutex<HashMap<u32, tokio::sync::oneshot::Sender<Response>>>> =
            Arc::default();
        let closing = Arc::new(AtomicBool::new(false));
        // Failures after TEARDOWN was queued are reported by teardown() itself.
        let on_failure: FailureHandler = {
            let closing = closing.clone();
            Arc::new(move |e| {
                if !closing.load(Ordering::SeqCst) {
                    on_failure(e)
                }
            })
        };
        let reader = tokio::spawn(read_loop(
            rd,
            parser,
            ReaderCtx {
                queue: queue.clone(),
                waiting: waiting.clone(),
                on_failure: on_failure.clone(),
                on_rtcp,
                on_request,
                closing: closing.clone(),
                name: name.clone(),
            },
        ))
        .abort_handle();
        let tunnel = tunnel.map(|(get_wire, post_rd)| {
            let watch = tokio::spawn(watch_post(
                post_rd,
                queue.clone(),
                on_failure.clone(),
                closing.clone(),
                name.clone(),
            ))
            .abort_handle();
            TunnelHalves {
                _get_wire: get_wire,
                watch,
            }
        });
        queue.set_wire(Some(wire.clone()));
        let writer = tokio::spawn(write_loop(
            wire,
            queue.clone(),
            timeout,
            on_failure.clone(),
            closing.clone(),
            name.clone(),
        ));
        Arc::new(Streaming {
            queue,
            ctx: Mutex::new(ctx),
            uri,
            waiting,
            writer: Mutex::new(Some(writer)),
            reader,
            keepalive: Mutex::new(None),
            timeout,
            on_failure,
            closing,
            name,
            tunnel,
        })
    }

    /// Sends a request after what is queued and waits (bounded) for its answer.
    pub(crate) async fn request(&self, method: &str) -> Result<Response, SessionError> {
        let req = self.ctx.lock().unwrap().request(method, &self.uri);
        log_request(&self.name, &req);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cseq = req.headers.cseq().unwrap_or(0);
        self.waiting.lock().unwrap().insert(cseq, tx);
        self.queue
            .push_control(req.to_bytes())
            .map_err(|e| SessionError::Io(format!("cannot send {method}: {e:?}")))?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(SessionError::Io(format!(
                "connection lost before the answer to {method}"
            ))),
            Err(_) => {
                self.waiting.lock().unwrap().remove(&cseq);
                Err(SessionError::Timeout(format!(
                    "server did not answer the {method} keep-alive within {:?}",
                    self.timeout
                )))
            }
        }
    }

    /// Keeps the session alive with GET_PARAMETER (OPTIONS if the server refuses it, or if
    /// `prefer_options`) every `interval`, whether media flows or not.
    pub(crate) fn start_keepalive(self: &Arc<Self>, interval: Duration, prefer_options: bool) {
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut method = if prefer_options {
                "OPTIONS"
            } else {
                "GET_PARAMETER"
            };
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(this) = weak.upgrade() else { return };
                if this.closing.load(Ordering::SeqCst) {
                    return;
                }
                match this.request(method).await {
                    Ok(r) if r.is_success() => {}
                    Ok(r)
                        if method == "GET_PARAMETER"
                            && matches!(r.status, 400 | 405 | 451 | 501 | 551) =>
                    {
                        gst::info!(
                            CAT,
                            "{}: GET_PARAMETER refused ({}), keeping alive with OPTIONS",
                            this.name,
                            r.status
                        );
                        method = "OPTIONS";
                    }
                    Ok(r) => gst::warning!(
                        CAT,
                        "{}: keep-alive {method} answered {} {}",
                        this.name,
                        r.status,
                        r.reason
                    ),
                    Err(e) => {
                        if !this.closing.load(Ordering::SeqCst) {
                            gst::warning!(CAT, "{}: {e}", this.name);
                            (this.on_failure)(e.clone());
                            this.queue.fail(e.to_string());
                        }
                        return;
                    }
                }
            }
        });
        *self.keepalive.lock().unwrap() = Some(task.abort_handle());
    }

    /// The end is near (BYE is about to go out): the server closing is no longer a failure;
    /// `teardown` reports what matters.
    pub(crate) fn expect_close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Sends TEARDOWN after everything queued, waits for its answer (bounded), closes.
    pub(crate) async fn teardown(&self, timeout: Duration) -> Result<(), TeardownError> {
        self.end(false, timeout).await
    }

    /// Drops what is queued, sends TEARDOWN best-effort (bounded), closes.
    pub(crate) async fn stop(&self, timeout: Duration) -> Result<(), TeardownError> {
        self.end(true, timeout).await
    }

    async fn end(&self, drop_queued: bool, timeout: Duration) -> Result<(), TeardownError> {
        let req = self.ctx.lock().unwrap().request("TEARDOWN", &self.uri);
        log_request(&self.name, &req);
        self.closing.store(true, Ordering::SeqCst);
        if let Some(k) = self.keepalive.lock().unwrap().take() {
            k.abort();
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Some(c) = req.headers.cseq() {
            self.waiting.lock().unwrap().insert(c, tx);
        }
        let queued = if drop_queued {
            self.queue.abandon_with(req.to_bytes());
            Ok(())
        } else {
            let q = self.queue.push_control(req.to_bytes());
            self.queue.close();
            q
        };
        let writer = self.writer.lock().unwrap().take();
        let writer_abort = writer.as_ref().map(|w| w.abort_handle());
        let result = async {
            use TeardownError::*;
            queued.map_err(|e| {
                NotDelivered(SessionError::Io(format!("cannot send TEARDOWN: {e:?}")))
            })?;
            if let Some(w) = writer {
                match tokio::time::timeout(timeout, w).await {
                    Ok(Ok(Err(e))) => return Err(NotDelivered(e)),
                    Ok(Err(e)) => {
                        return Err(NotDelivered(SessionError::Io(format!(
                            "writer task ended: {e}"
                        ))))
                    }
                    Ok(Ok(Ok(()))) => {}
                    Err(_) => {
                        return Err(NotDelivered(SessionError::Timeout(format!(
                            "queued data not written within {timeout:?}"
                        ))))
                    }
                }
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(_resp)) => Ok(()),
                Ok(Err(_)) => Err(NoAnswer(SessionError::Io(
                    "connection closed before the TEARDOWN answer".into(),
                ))),
                Err(_) => Err(NoAnswer(SessionError::Timeout(format!(
                    "server did not answer TEARDOWN within {timeout:?}"
                )))),
            }
        }
        .await;
        if let Some(a) = writer_abort {
            a.abort();
        }
        self.abort();
        result
    }

    /// Stops at once: nothing more is written, both tasks end.
    pub(crate) fn abort(&self) {
        self.closing.store(true, Ordering::SeqCst);
        if let Some(k) = self.keepalive.lock().unwrap().take() {
            k.abort();
        }
        self.queue.cancel();
        if let Some(w) = self.writer.lock().unwrap().take() {
            w.abort();
        }
        self.reader.abort();
        if let Some(t) = &self.tunnel {
            t.watch.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_requests_get_400_for_malformed_methods_without_asking_the_application() {
        gst::init().unwrap();
        let asked = Arc::new(Mutex::new(Vec::<String>::new()));
        let a2 = asked.clone();
        let app: RequestHandler = Arc::new(move |r: &Request| {
            a2.lock().unwrap().push(r.method.clone());
            None
        });
        let answer = |method: &str| {
            let mut r = Request::new(method, "rtsp://h/x");
            r.headers.push("CSeq", "9");
            let resp = answer_server_request("test", &r, Some(&app));
            assert_eq!(resp.headers.get("CSeq"), Some("9"));
            resp.status
        };
        assert_eq!(answer("SET(X)"), 400);
        assert_eq!(answer("GET/X"), 400);
        assert_eq!(answer("OPTIONS!"), 501);
        assert_eq!(answer("OPTIONS"), 200);
        assert_eq!(answer("TEARDOWN"), 200);
        assert_eq!(*asked.lock().unwrap(), ["OPTIONS!", "OPTIONS", "TEARDOWN"]);
    }
}
