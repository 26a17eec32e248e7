//! The send queue between the streaming threads (producers) and one writer task per connection.
//!
//! Producers copy each frame (interleave header + packet, at most 64 KiB) into one contiguous
//! byte buffer and drop the GStreamer buffer on their own thread: unmapping and freeing a
//! payloader's sub-memories on the I/O thread made their refcounts and locks bounce between cores.
//! When the writer is idle and the socket has room, the producer writes the bytes itself with a
//! non-blocking send, so a live stream costs no thread hop per packet. What the socket does not
//! take waits here for the writer task, which takes the whole buffer at once (swapping two
//! buffers, no copy) and writes it as the socket drains.
//!
//! Producers block when the queue holds `max_bytes` (backpressure, so a slow network never grows
//! memory without bound); every blocking wait ends on cancel or on a connection failure.

mod frame;
#[cfg(test)]
mod tests;
mod wire;

pub(crate) use frame::OutFrame;
pub(crate) use wire::{write_all, Wire, WriteError};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// Flushing or stopping: not an error for the pipeline.
    Cancelled,
    /// The connection failed; the message says why.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum QState {
    Open,
    /// No more producers: the writer drains what is queued, then ends.
    Closing,
    Cancelled,
    Failed(String),
    /// Failed for producers, but control messages still queued go out (an answer to the
    /// server's TEARDOWN).
    Draining(String),
}

/// `fail_after_control` need to know.
struct Segment {
    len: u32,
    media: bool,
    queued_at: Instant,
}

struct Inner {
    /// Bytes not yet handed to a writer, in queue order.
    pending: Vec<u8>,
    segments: VecDeque<Segment>,
    /// Bytes the writer task took and has not finished writing (still count against the bound).
    in_flight: usize,
    in_flight_media: bool,
    in_flight_since: Option<Instant>,
    /// The writer task holds a batch: producers must not write directly (order).
    writing: bool,
    /// Set while the connection streams; producers write through it when the writer is idle.
    wire: Option<Wire>,
    /// Direct writes since `window_start` (see DIRECT_BURST).
    window_start: Instant,
    direct_in_window: u32,
    /// Capacity of the writer's batch buffer after its last batch, and direct writes since
    /// then: see RELEASE_AFTER.
    batch_capacity: usize,
    direct_since_batch: u32,
    /// Set for the writer: free the batch buffer.
    release_batch: bool,
    /// Recent need of the pending buffer and of the writer's batch (see `trim`).
    pending_peak: usize,
    batch_peak: usize,
    state: QState,
}

impl Inner {
    fn push(&mut self, f: &mut OutFrame, at: Instant) -> Result<(), QueueError> {
        if let (true, OutFrame::Wire { bytes, .. }) = (self.pending.is_empty(), &mut *f) {
            // Nothing waits: the packetizer's buffer becomes the send buffer, no copy. The
            // frame keeps the old (empty) one, which goes with it.
            std::mem::swap(&mut self.pending, bytes);
            self.segments.push_back(Segment {
                len: self.pending.len() as u32,
                media: true,
                queued_at: at,
            });
            return Ok(());
        }
        let before = self.pending.len();
        if let Err(e) = f.append_to(&mut self.pending) {
            self.pending.truncate(before);
            return Err(e);
        }
        self.segments.push_back(Segment {
            len: (self.pending.len() - before) as u32,
            media: f.is_media(),
            queued_at: at,
        });
        Ok(())
    }

    fn clear(&mut self) {
        self.pending.clear();
        self.segments.clear();
    }

    fn level(&self) -> usize {
        self.pending.len() + self.in_flight
    }

    /// Forgets the first `n` pending bytes (written directly).
    fn consume(&mut self, n: usize) {
        if n == self.pending.len() {
            self.clear();
            trim(&mut self.pending, n, &mut self.pending_peak);
            return;
        }
        self.pending.drain(..n);
        let mut left = n;
        while left > 0 {
            let Some(front) = self.segments.front_mut() else {
                break;
            };
            if front.len as usize <= left {
                left -= front.len as usize;
                self.segments.pop_front();
            } else {
                front.len -= left as u32;
                left = 0;
            }
        }
    }

    fn writes_allowed(&self) -> bool {
        matches!(
            self.state,
            QState::Open | QState::Closing | QState::Draining(_)
        )
    }
}

pub(crate) struct SendQueue {
    inner: Mutex<Inner>,
    space: Condvar,
    data: tokio::sync::Notify,
    max_bytes: usize,
    release_after: u32,
}

/// After this many direct writes in a row the idle writer frees its batch buffer: a burst (the
/// backlog after the handshake, a stall) grows it, and once a live stream's writes go direct
/// again it would keep that size for the session's life (a thousand sessions, a thousand
/// bursts). Counted in writes, not time, so that no timer runs per batch.
const RELEASE_AFTER: u32 = 64;

/// At most this many direct writes per DIRECT_WINDOW; beyond, the writer task takes over.
const DIRECT_BURST: u32 = 16;
const DIRECT_WINDOW: Duration = Duration::from_millis(10);

/// Send buffer capacity always kept.
const KEEP_CAPACITY: usize = 16 * 1024;

/// Keeps a send buffer's capacity near what recent writes needed: the peak decays by 1/16 per
/// write, so a stream's usual size stays allocated (no regrowth per buffer list) while what a
/// passing backlog grew is given back (a thousand sessions would otherwise each keep their worst
/// moment).
fn trim(buf: &mut Vec<u8>, used: usize, peak: &mut usize) {
    *peak = used.max(*peak - *peak / 16);
    let keep = (*peak * 2).max(KEEP_CAPACITY);
    if buf.capacity() > 2 * keep {
        buf.shrink_to(keep);
    }
}

impl SendQueue {
    pub(crate) fn new(max_bytes: usize) -> Self {
        SendQueue {
            inner: Mutex::new(Inner {
                pending: Vec::new(),
                segments: VecDeque::new(),
                in_flight: 0,
                in_flight_media: false,
                in_flight_since: None,
                writing: false,
                wire: None,
                window_start: Instant::now(),
                direct_in_window: 0,
                batch_capacity: 0,
                direct_since_batch: 0,
                release_batch: false,
                pending_peak: 0,
                batch_peak: 0,
                state: QState::Open,
            }),
            space: Condvar::new(),
            data: tokio::sync::Notify::new(),
            max_bytes,
            release_after: RELEASE_AFTER,
        }
    }

    #[cfg(test)]
    pub(crate) fn with_release_after(mut self, writes: u32) -> Self {
        self.release_after = writes;
        self
    }

    fn check(inner: &Inner) -> Result<(), QueueError> {
        match &inner.state {
            QState::Failed(m) | QState::Draining(m) => Err(QueueError::Failed(m.clone())),
            QState::Cancelled | QState::Closing => Err(QueueError::Cancelled),
            _ => Ok(()),
        }
    }

    /// Sends what is pending: directly when the writer is idle and the socket takes it, else
    /// (or for the rest) by waking the writer. A failed direct write leaves the bytes for the
    /// writer, which reports the error.
    fn kick(&self, inner: &mut Inner) {
        if inner.writing {
            // A busy writer looks at `pending` again before it sleeps, and flushes the wire
            // before it takes the next batch.
            return;
        }
        let mut backlog = false;
        if inner.writes_allowed() {
            // Taken out for the write (no refcount traffic per packet), put back after.
            if let Some(wire) = inner.wire.take() {
                if !inner.pending.is_empty() {
                    // More than DIRECT_BURST direct writes within DIRECT_WINDOW: producers
                    // push faster than real time (no clock sync), and the writer takes over so
                    // the send syscalls run on the I/O thread in parallel instead of lengthening
                    // the streaming thread's path. A live stream's bursts (a keyframe's lists,
                    // audio and video together) stay below that and cost no wake-up.
                    let now = Instant::now();
                    if now.duration_since(inner.window_start) >= DIRECT_WINDOW {
                        inner.window_start = now;
                        inner.direct_in_window = 0;
                    }
                    if inner.direct_in_window < DIRECT_BURST {
                        inner.direct_in_window += 1;
                        if let Ok(n) = wire.try_write(&inner.pending) {
                            inner.consume(n);
                            inner.direct_since_batch = inner.direct_since_batch.saturating_add(1);
                            if inner.direct_since_batch == self.release_after
                                && inner.batch_capacity > KEEP_CAPACITY
                            {
                                inner.release_batch = true;
                                self.data.notify_one();
                            }
                        }
                    }
                } else {
                    let _ = wire.flush();
                }
                // Sealed TLS records the socket did not take: the writer sends them once it
                // is writable, so nothing is stranded when no more data comes.
                backlog = wire.backlog();
                inner.wire = Some(wire);
            }
        }
        if !inner.pending.is_empty() || backlog {
            self.data.notify_one();
        }
    }

    /// The wire has bytes of its own to send (a TLS alert or key update the reader caused).
    pub(crate) fn flush_wire(&self) {
        let mut inner = self.inner.lock().unwrap();
        self.kick(&mut inner);
    }

    /// The socket the connection streams on (None once it ended).
    pub(crate) fn set_wire(&self, wire: Option<Wire>) {
        let mut inner = self.inner.lock().unwrap();
        inner.wire = wire;
        if inner.wire.is_some() {
            self.kick(&mut inner);
        }
    }

    /// Queues frames in order, blocking while the queue is full.
    #[cfg(test)]
    pub(crate) fn push_all(
        &self,
        frames: impl IntoIterator<Item = OutFrame>,
    ) -> Result<(), QueueError> {
        let mut frames: Vec<OutFrame> = frames.into_iter().collect();
        self.push_all_until(&mut frames, &AtomicBool::new(false))
            .map_err(|(e, _)| e)
    }

    /// [`Self::push_all`] for one producer that may be flushed: `cancel` set (then [`Self::wake`])
    /// makes its wait return `Cancelled`. Other producers go on: flushing is per pad. An error
    /// comes with how many of the frames were queued before it (the rest never go out). The
    /// bytes of a queued [`OutFrame::Wire`] may be taken (moved into the queue).
    pub(crate) fn push_all_until(
        &self,
        frames: &mut [OutFrame],
        cancel: &AtomicBool,
    ) -> Result<(), (QueueError, usize)> {
        let mut inner = self.inner.lock().unwrap();
        // One clock read per call, again only after a wait for room.
        let mut now = Instant::now();
        for (queued, f) in frames.iter_mut().enumerate() {
            loop {
                Self::check(&inner).map_err(|e| (e, queued))?;
                if cancel.load(Ordering::Relaxed) {
                    return Err((QueueError::Cancelled, queued));
                }
                if inner.level() < self.max_bytes || inner.pending.is_empty() {
                    break;
                }
                self.kick(&mut inner);
                if inner.level() < self.max_bytes {
                    break;
                }
                inner = self.space.wait(inner).unwrap();
                now = Instant::now();
            }
            inner.push(f, now).map_err(|e| (e, queued))?;
        }
        self.kick(&mut inner);
        Ok(())
    }

    /// Queues frames without waiting for room: for the drop policy, which decides itself what
    /// fits (it may overshoot the bound by the rest of a frame already started).
    pub(crate) fn push_all_nowait(
        &self,
        frames: &mut [OutFrame],
    ) -> Result<(), (QueueError, usize)> {
        let mut inner = self.inner.lock().unwrap();
        Self::check(&inner).map_err(|e| (e, 0))?;
        let now = Instant::now();
        for (queued, f) in frames.iter_mut().enumerate() {
            inner.push(f, now).map_err(|e| (e, queued))?;
        }
        self.kick(&mut inner);
        Ok(())
    }

    /// Queues a control message regardless of the size bound (it is small and must go out).
    pub(crate) fn push_control(&self, bytes: Vec<u8>) -> Result<(), QueueError> {
        let mut inner = self.inner.lock().unwrap();
        match &inner.state {
            QState::Failed(m) | QState::Draining(m) => return Err(QueueError::Failed(m.clone())),
            QState::Cancelled => return Err(QueueError::Cancelled),
            _ => {}
        }
        inner.push(&mut OutFrame::Control(bytes), Instant::now())?;
        self.kick(&mut inner);
        Ok(())
    }

    /// Queues frames without waiting for space: for what was held back before RECORD, already
    /// bounded by the caller.
    pub(crate) fn preload(&self, mut frames: Vec<OutFrame>) {
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        for f in &mut frames {
            // An unmappable buffer is skipped; nothing else can fail here.
            let _ = inner.push(f, now);
        }
        self.kick(&mut inner);
    }

    /// Drops what is queued, refuses producers from now on, and queues `last` (TEARDOWN) as the
    /// final thing the writer sends.
    pub(crate) fn abandon_with(&self, last: Vec<u8>) {
        let mut inner = self.inner.lock().unwrap();
        if matches!(
            inner.state,
            QState::Failed(_) | QState::Cancelled | QState::Draining(_)
        ) {
            return;
        }
        inner.clear();
        let _ = inner.push(&mut OutFrame::Control(last), Instant::now());
        inner.state = QState::Closing;
        self.space.notify_all();
        self.kick(&mut inner);
    }

    /// Whether media (not only control messages) waits for the writer.
    pub(crate) fn has_media(&self) -> bool {
        self.inner.lock().unwrap().segments.iter().any(|s| s.media)
    }

    /// How long the oldest frame not yet written has waited.
    pub(crate) fn oldest_age(&self) -> Duration {
        let inner = self.inner.lock().unwrap();
        inner
            .in_flight_since
            .or_else(|| inner.segments.front().map(|s| s.queued_at))
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// Bytes queued and not yet written (the writer's batch included).
    pub(crate) fn level(&self) -> usize {
        self.inner.lock().unwrap().level()
    }

    /// No more data will come: the writer ends once everything queued is written.
    pub(crate) fn close(&self) {
        let mut inner = self.inner.lock().unwrap();
        if inner.state == QState::Open {
            inner.state = QState::Closing;
        }
        self.data.notify_one();
    }

    /// Drops everything and wakes every waiter.
    pub(crate) fn cancel(&self) {
        let mut inner = self.inner.lock().unwrap();
        if !matches!(inner.state, QState::Failed(_)) {
            inner.state = QState::Cancelled;
        }
        inner.clear();
        inner.wire = None;
        self.space.notify_all();
        self.data.notify_one();
    }

    pub(crate) fn fail(&self, why: String) {
        let mut inner = self.inner.lock().unwrap();
        match inner.state {
            QState::Failed(_) => {}
            // Let the control messages already queued go out.
            QState::Draining(_) => {
                self.space.notify_all();
                return;
            }
            _ => inner.state = QState::Failed(why),
        }
        inner.clear();
        inner.wire = None;
        self.space.notify_all();
        self.data.notify_one();
    }

    /// Fails producers at once, drops queued media, and lets the writer send the control
    /// messages still queued before it ends.
    pub(crate) fn fail_after_control(&self, why: String) {
        let mut inner = self.inner.lock().unwrap();
        if matches!(inner.state, QState::Failed(_) | QState::Cancelled) {
            return;
        }
        inner.state = QState::Draining(why);
        let mut kept = Vec::new();
        let mut segments = VecDeque::new();
        let mut at = 0;
        let inner = &mut *inner;
        for s in inner.segments.drain(..) {
            let end = at + s.len as usize;
            if !s.media {
                kept.extend_from_slice(&inner.pending[at..end]);
                segments.push_back(s);
            }
            at = end;
        }
        inner.pending = kept;
        inner.segments = segments;
        self.space.notify_all();
        self.kick(inner);
        self.data.notify_one();
    }

    /// Wakes blocked producers to look at their cancel flags (a pad's flush started).
    pub(crate) fn wake(&self) {
        let _inner = self.inner.lock().unwrap();
        self.space.notify_all();
    }

    /// The writer task: waits for pending bytes and swaps them into `out` (empty on entry).
    /// Returns whether the batch holds media, or None once the queue has ended (closed and
    /// drained, cancelled or failed). Until [`Self::written`], producers only queue.
    pub(crate) async fn take(&self, out: &mut Vec<u8>) -> Option<bool> {
        loop {
            let notified = self.data.notified();
            {
                let mut inner = self.inner.lock().unwrap();
                match inner.state {
                    QState::Cancelled | QState::Failed(_) => return None,
                    _ => {}
                }
                if std::mem::take(&mut inner.release_batch) {
                    *out = Vec::new();
                    inner.batch_capacity = 0;
                }
                if !inner.pending.is_empty() {
                    std::mem::swap(&mut inner.pending, out);
                    inner.in_flight = out.len();
                    inner.in_flight_media = inner.segments.iter().any(|s| s.media);
                    inner.in_flight_since = inner.segments.front().map(|s| s.queued_at);
                    inner.segments.clear();
                    inner.writing = true;
                    inner.direct_since_batch = 0;
                    return Some(inner.in_flight_media);
                }
                if inner.writes_allowed() && inner.wire.as_ref().is_some_and(Wire::backlog) {
                    // Nothing new, but sealed records wait for the socket: an empty batch,
                    // which `write_all` flushes.
                    inner.in_flight_since = Some(Instant::now());
                    inner.writing = true;
                    return Some(false);
                }
                if matches!(inner.state, QState::Closing | QState::Draining(_)) {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The writer wrote (or gave up on) the batch `take` gave it; `out` is cleared for reuse.
    pub(crate) fn written(&self, out: &mut Vec<u8>) {
        let used = out.len();
        out.clear();
        let mut inner = self.inner.lock().unwrap();
        trim(out, used, &mut inner.batch_peak);
        inner.batch_capacity = out.capacity();
        inner.in_flight = 0;
        inner.in_flight_media = false;
        inner.in_flight_since = None;
        inner.writing = false;
        self.space.notify_all();
    }
}
