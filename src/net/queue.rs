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

use super::tls::TlsWire;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::net::tcp::OwnedWriteHalf;

/// One interleaved frame or a piece of RTSP text, written in queue order.
pub enum OutFrame {
    /// `$`, channel, 16-bit length, then optionally the first two RTP bytes rewritten (payload type
    /// remapping), followed by the buffer from byte `skip` on.
    Rtp {
        head: [u8; 6],
        head_len: u8,
        buffer: gst::Buffer,
        skip: u8,
    },
    Control(Vec<u8>),
}

/// Largest packet an interleaved frame can carry.
pub const MAX_INTERLEAVED: usize = u16::MAX as usize;

impl OutFrame {
    /// Frames an RTP/RTCP buffer for `channel`; `pt` rewrites the payload type byte (keeping the
    /// marker bit) when this track's payload type was remapped.
    pub fn rtp(buffer: gst::Buffer, channel: u8, pt: Option<u8>) -> Result<OutFrame, usize> {
        let len = buffer.size();
        if len > MAX_INTERLEAVED {
            return Err(len);
        }
        let l = (len as u16).to_be_bytes();
        let mut head = [b'$', channel, l[0], l[1], 0, 0];
        let mut first = [0u8; 2];
        match pt {
            Some(pt) if len >= 2 && buffer.copy_to_slice(0, &mut first).is_ok() => {
                head[4] = first[0];
                head[5] = (first[1] & 0x80) | (pt & 0x7f);
                Ok(OutFrame::Rtp {
                    head,
                    head_len: 6,
                    buffer,
                    skip: 2,
                })
            }
            _ => Ok(OutFrame::Rtp {
                head,
                head_len: 4,
                buffer,
                skip: 0,
            }),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            OutFrame::Rtp {
                head_len,
                head,
                skip,
                ..
            } => {
                // The length field says how big the packet is: no buffer size walk.
                *head_len as usize + u16::from_be_bytes([head[2], head[3]]) as usize
                    - *skip as usize
            }
            OutFrame::Control(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_media(&self) -> bool {
        matches!(self, OutFrame::Rtp { .. })
    }

    /// Appends the frame's wire bytes to `out`, mapping the buffer's memories one by one (mapping
    /// a multi-memory buffer whole would merge it into a fresh allocation first).
    fn append_to(&self, out: &mut Vec<u8>) -> Result<(), QueueError> {
        match self {
            OutFrame::Rtp {
                head,
                head_len,
                buffer,
                skip,
            } => {
                out.extend_from_slice(&head[..*head_len as usize]);
                let mut to_skip = *skip as usize;
                for mem in buffer.iter_memories() {
                    let map = mem
                        .map_readable()
                        .map_err(|_| QueueError::Failed("cannot map buffer memory".into()))?;
                    let data = map.as_slice();
                    if to_skip >= data.len() {
                        to_skip -= data.len();
                        continue;
                    }
                    out.extend_from_slice(&data[to_skip..]);
                    to_skip = 0;
                }
            }
            OutFrame::Control(v) => out.extend_from_slice(v),
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
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

/// Where the queued bytes go. The producers' direct writes and the writer task share it.
#[derive(Clone)]
pub enum Wire {
    Tcp(Arc<OwnedWriteHalf>),
    /// RTSPS: bytes are sealed into TLS records, many frames to a record.
    Tls(Arc<TlsWire>),
}

impl Wire {
    /// A non-blocking write: `WouldBlock` when the socket has no room.
    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Tcp(w) => w.try_write(data),
            Wire::Tls(w) => w.try_write(data),
        }
    }

    /// Sends bytes the wire itself still holds (sealed TLS records); `WouldBlock` while some
    /// remain.
    fn flush(&self) -> io::Result<()> {
        match self {
            Wire::Tcp(_) => Ok(()),
            Wire::Tls(w) => w.flush(),
        }
    }

    /// Whether the wire holds bytes that must still go out even when nothing is pending.
    fn backlog(&self) -> bool {
        match self {
            Wire::Tcp(_) => false,
            Wire::Tls(w) => w.backlog(),
        }
    }

    async fn writable(&self) -> io::Result<()> {
        match self {
            Wire::Tcp(w) => w.writable().await,
            Wire::Tls(w) => w.writable().await,
        }
    }

    /// Ends the write side once everything is written. A TCP half closes when its last
    /// reference goes; TLS says close_notify first, and its reader still holds the socket.
    pub async fn close(&self, stall: Duration) {
        if let Wire::Tls(w) = self {
            w.close(stall).await;
        }
    }
}

/// One frame's place in the pending bytes: what `has_media`, `oldest_age` and
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
    /// Recent need of the pending buffer and of the writer's batch (see `trim`).
    pending_peak: usize,
    batch_peak: usize,
    state: QState,
}

impl Inner {
    fn push(&mut self, f: &OutFrame, at: Instant) -> Result<(), QueueError> {
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

pub struct SendQueue {
    inner: Mutex<Inner>,
    space: Condvar,
    data: tokio::sync::Notify,
    max_bytes: usize,
}

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
    pub fn new(max_bytes: usize) -> Self {
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
                pending_peak: 0,
                batch_peak: 0,
                state: QState::Open,
            }),
            space: Condvar::new(),
            data: tokio::sync::Notify::new(),
            max_bytes,
        }
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
    pub fn flush_wire(&self) {
        let mut inner = self.inner.lock().unwrap();
        self.kick(&mut inner);
    }

    /// The socket the connection streams on (None once it ended).
    pub fn set_wire(&self, wire: Option<Wire>) {
        let mut inner = self.inner.lock().unwrap();
        inner.wire = wire;
        if inner.wire.is_some() {
            self.kick(&mut inner);
        }
    }

    /// Queues frames in order, blocking while the queue is full.
    pub fn push_all(&self, frames: impl IntoIterator<Item = OutFrame>) -> Result<(), QueueError> {
        self.push_all_until(frames, &AtomicBool::new(false))
    }

    /// [`Self::push_all`] for one producer that may be flushed: `cancel` set (then [`Self::wake`])
    /// makes its wait return `Cancelled`. Other producers go on: flushing is per pad.
    pub fn push_all_until(
        &self,
        frames: impl IntoIterator<Item = OutFrame>,
        cancel: &AtomicBool,
    ) -> Result<(), QueueError> {
        let mut inner = self.inner.lock().unwrap();
        for f in frames {
            loop {
                Self::check(&inner)?;
                if cancel.load(Ordering::Relaxed) {
                    return Err(QueueError::Cancelled);
                }
                if inner.level() < self.max_bytes || inner.pending.is_empty() {
                    break;
                }
                self.kick(&mut inner);
                if inner.level() < self.max_bytes {
                    break;
                }
                inner = self.space.wait(inner).unwrap();
            }
            inner.push(&f, Instant::now())?;
        }
        self.kick(&mut inner);
        Ok(())
    }

    /// Queues frames without waiting for room: for the drop policy, which decides itself what
    /// fits (it may overshoot the bound by the rest of a frame already started).
    pub fn push_all_nowait(
        &self,
        frames: impl IntoIterator<Item = OutFrame>,
    ) -> Result<(), QueueError> {
        let mut inner = self.inner.lock().unwrap();
        Self::check(&inner)?;
        let now = Instant::now();
        for f in frames {
            inner.push(&f, now)?;
        }
        self.kick(&mut inner);
        Ok(())
    }

    /// Queues a control message regardless of the size bound (it is small and must go out).
    pub fn push_control(&self, bytes: Vec<u8>) -> Result<(), QueueError> {
        let mut inner = self.inner.lock().unwrap();
        match &inner.state {
            QState::Failed(m) | QState::Draining(m) => return Err(QueueError::Failed(m.clone())),
            QState::Cancelled => return Err(QueueError::Cancelled),
            _ => {}
        }
        inner.push(&OutFrame::Control(bytes), Instant::now())?;
        self.kick(&mut inner);
        Ok(())
    }

    /// Queues frames without waiting for space: for what was held back before RECORD, already
    /// bounded by the caller.
    pub fn preload(&self, frames: Vec<OutFrame>) {
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        for f in &frames {
            // An unmappable buffer is skipped; nothing else can fail here.
            let _ = inner.push(f, now);
        }
        self.kick(&mut inner);
    }

    /// Drops what is queued, refuses producers from now on, and queues `last` (TEARDOWN) as the
    /// final thing the writer sends.
    pub fn abandon_with(&self, last: Vec<u8>) {
        let mut inner = self.inner.lock().unwrap();
        if matches!(
            inner.state,
            QState::Failed(_) | QState::Cancelled | QState::Draining(_)
        ) {
            return;
        }
        inner.clear();
        let _ = inner.push(&OutFrame::Control(last), Instant::now());
        inner.state = QState::Closing;
        self.space.notify_all();
        self.kick(&mut inner);
    }

    /// Whether media (not only control messages) waits for the writer.
    pub fn has_media(&self) -> bool {
        self.inner.lock().unwrap().segments.iter().any(|s| s.media)
    }

    /// How long the oldest frame not yet written has waited.
    pub fn oldest_age(&self) -> Duration {
        let inner = self.inner.lock().unwrap();
        inner
            .in_flight_since
            .or_else(|| inner.segments.front().map(|s| s.queued_at))
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// Bytes queued and not yet written (the writer's batch included).
    pub fn level(&self) -> usize {
        self.inner.lock().unwrap().level()
    }

    /// No more data will come: the writer ends once everything queued is written.
    pub fn close(&self) {
        let mut inner = self.inner.lock().unwrap();
        if inner.state == QState::Open {
            inner.state = QState::Closing;
        }
        self.data.notify_one();
    }

    /// Drops everything and wakes every waiter.
    pub fn cancel(&self) {
        let mut inner = self.inner.lock().unwrap();
        if !matches!(inner.state, QState::Failed(_)) {
            inner.state = QState::Cancelled;
        }
        inner.clear();
        inner.wire = None;
        self.space.notify_all();
        self.data.notify_one();
    }

    pub fn fail(&self, why: String) {
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
    pub fn fail_after_control(&self, why: String) {
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
    pub fn wake(&self) {
        let _inner = self.inner.lock().unwrap();
        self.space.notify_all();
    }

    /// The writer task: waits for pending bytes and swaps them into `out` (empty on entry).
    /// Returns whether the batch holds media, or None once the queue has ended (closed and
    /// drained, cancelled or failed). Until [`Self::written`], producers only queue.
    pub async fn take(&self, out: &mut Vec<u8>) -> Option<bool> {
        loop {
            let notified = self.data.notified();
            {
                let mut inner = self.inner.lock().unwrap();
                match inner.state {
                    QState::Cancelled | QState::Failed(_) => return None,
                    _ => {}
                }
                if !inner.pending.is_empty() {
                    std::mem::swap(&mut inner.pending, out);
                    inner.in_flight = out.len();
                    inner.in_flight_media = inner.segments.iter().any(|s| s.media);
                    inner.in_flight_since = inner.segments.front().map(|s| s.queued_at);
                    inner.segments.clear();
                    inner.writing = true;
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
    pub fn written(&self, out: &mut Vec<u8>) {
        let used = out.len();
        out.clear();
        let mut inner = self.inner.lock().unwrap();
        trim(out, used, &mut inner.batch_peak);
        inner.in_flight = 0;
        inner.in_flight_media = false;
        inner.in_flight_since = None;
        inner.writing = false;
        self.space.notify_all();
    }
}

/// Writes `data` to the wire as it drains; fails when no byte goes out for `stall`.
/// Returns once the wire holds nothing more of it (TLS records included).
pub async fn write_all(wire: &Wire, data: &[u8], stall: Duration) -> Result<(), WriteError> {
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
pub enum WriteError {
    Io(io::Error),
    /// The peer took nothing for the stall timeout.
    Stalled,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(bytes: &[u8]) -> gst::Buffer {
        gst::Buffer::from_slice(bytes.to_vec())
    }

    fn wire(frames: &[OutFrame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            f.append_to(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn frame_layout_and_pt_rewrite() {
        gst::init().unwrap();
        let pkt = [0x80u8, 0xe0, 1, 2, 3];
        let f = OutFrame::rtp(buf(&pkt), 2, None).unwrap();
        assert_eq!(f.len(), 9);
        assert_eq!(wire(&[f]), [b'$', 2, 0, 5, 0x80, 0xe0, 1, 2, 3]);

        // PT 96 -> 97, marker bit kept.
        let f = OutFrame::rtp(buf(&pkt), 3, Some(97)).unwrap();
        assert_eq!(f.len(), 9);
        assert_eq!(wire(&[f]), [b'$', 3, 0, 5, 0x80, 0x80 | 97, 1, 2, 3]);

        assert_eq!(
            OutFrame::rtp(buf(&vec![0u8; 70000]), 0, None).err(),
            Some(70000)
        );
    }

    #[test]
    fn multi_memory_buffers_are_copied_memory_by_memory() {
        gst::init().unwrap();
        // Header split over memories of 1, 3 and 2 bytes, as payloaders append payloads.
        let mut b = gst::Buffer::new();
        {
            let b = b.get_mut().unwrap();
            b.append_memory(gst::Memory::from_slice(vec![0x80u8]));
            b.append_memory(gst::Memory::from_slice(vec![0x60u8, 7, 8]));
            b.append_memory(gst::Memory::from_slice(vec![9u8, 10]));
        }
        let plain = OutFrame::rtp(b.clone(), 0, None).unwrap();
        let remapped = OutFrame::rtp(b, 1, Some(100)).unwrap();
        assert_eq!(plain.len() + remapped.len(), 20);
        assert_eq!(
            wire(&[plain, remapped]),
            [b'$', 0, 0, 6, 0x80, 0x60, 7, 8, 9, 10, b'$', 1, 0, 6, 0x80, 100, 7, 8, 9, 10]
        );
    }

    #[test]
    fn backpressure_and_cancel() {
        gst::init().unwrap();
        let q = Arc::new(SendQueue::new(10));
        q.push_control(vec![0; 20]).unwrap();
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            q2.push_control(vec![1])
                .and(q2.push_all([OutFrame::Control(vec![2; 4])]))
        });
        // The producer is blocked on a full queue until cancel wakes it.
        q.cancel();
        assert_eq!(t.join().unwrap(), Err(QueueError::Cancelled));
        let q = SendQueue::new(10);
        q.fail("gone".into());
        assert_eq!(
            q.push_all([OutFrame::Control(vec![1])]),
            Err(QueueError::Failed("gone".into()))
        );
    }

    #[test]
    fn writer_drains_then_ends_on_close() {
        gst::init().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let q = SendQueue::new(1000);
        q.push_control(b"a".to_vec()).unwrap();
        q.push_control(b"b".to_vec()).unwrap();
        q.close();
        rt.block_on(async {
            let mut out = Vec::new();
            assert_eq!(q.take(&mut out).await, Some(false));
            assert_eq!(out, b"ab");
            // The batch counts against the bound until it is written.
            assert_eq!(q.level(), 2);
            q.written(&mut out);
            assert!(out.is_empty());
            assert_eq!(q.take(&mut out).await, None);
        });
        assert_eq!(q.level(), 0);
    }

    #[test]
    fn fail_after_control_keeps_only_control_messages() {
        gst::init().unwrap();
        let q = SendQueue::new(1 << 20);
        q.push_all([OutFrame::rtp(buf(&[0x80, 96, 1, 2]), 0, None).unwrap()])
            .unwrap();
        q.push_control(b"RTSP/1.0 200 OK\r\n\r\n".to_vec()).unwrap();
        q.push_all([OutFrame::rtp(buf(&[0x80, 96, 3, 4]), 0, None).unwrap()])
            .unwrap();
        assert!(q.has_media());
        q.fail_after_control("server TEARDOWN".into());
        assert!(!q.has_media());
        assert_eq!(
            q.push_control(vec![1]),
            Err(QueueError::Failed("server TEARDOWN".into()))
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            assert_eq!(q.take(&mut out).await, Some(false));
            assert_eq!(out, b"RTSP/1.0 200 OK\r\n\r\n");
        });
    }

    #[test]
    fn trim_keeps_the_usual_size_and_gives_back_a_backlog() {
        let mut peak = 0;
        let mut buf: Vec<u8> = Vec::with_capacity(128 * 1024);
        // A video list of 100 KB now and then, small audio packets between: no shrinking.
        for _ in 0..20 {
            trim(&mut buf, 100_000, &mut peak);
            trim(&mut buf, 400, &mut peak);
            assert!(buf.capacity() >= 128 * 1024);
        }
        // A 4 MB backlog passes; then only small writes: the capacity goes back down.
        buf.reserve(4 << 20);
        trim(&mut buf, 4 << 20, &mut peak);
        assert!(buf.capacity() >= 4 << 20);
        for _ in 0..200 {
            trim(&mut buf, 6_000, &mut peak);
        }
        assert!(buf.capacity() <= 64 * 1024, "{}", buf.capacity());
    }

    /// Producers on several threads write directly while the socket has room and leave the rest
    /// to the writer when it fills: the bytes arrive complete and in queue order per producer.
    #[test]
    fn direct_writes_and_writer_keep_order() {
        gst::init().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let client = rt.block_on(tokio::net::TcpStream::connect(addr)).unwrap();
        let (server, _) = rt.block_on(listener.accept()).unwrap();
        let (_rd, wr) = client.into_split();
        let q = Arc::new(SendQueue::new(64 * 1024));
        let wire = Wire::Tcp(Arc::new(wr));
        q.set_wire(Some(wire.clone()));
        let writer = {
            let q = q.clone();
            rt.spawn(async move {
                let mut batch = Vec::new();
                while q.take(&mut batch).await.is_some() {
                    write_all(&wire, &batch, Duration::from_secs(5))
                        .await
                        .unwrap();
                    q.written(&mut batch);
                }
                q.set_wire(None);
            })
        };
        const PER_THREAD: u32 = 20_000;
        let reader = rt.spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut server = server;
            let mut v = Vec::new();
            // Read slowly at first so the socket fills and the writer takes over.
            let mut chunk = vec![0u8; 4096];
            for _ in 0..50 {
                let n = server.read(&mut chunk).await.unwrap();
                v.extend_from_slice(&chunk[..n]);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            server.read_to_end(&mut v).await.unwrap();
            v
        });
        let producers: Vec<_> = (0..2u8)
            .map(|ch| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let mut pkt = vec![0x80u8, 96];
                        pkt.extend_from_slice(&i.to_be_bytes());
                        pkt.resize(200 + (i % 1200) as usize, ch);
                        q.push_all([OutFrame::rtp(buf(&pkt), ch * 2, None).unwrap()])
                            .unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        q.close();
        rt.block_on(writer).unwrap();
        let bytes = rt.block_on(reader).unwrap();
        let mut next = [0u32; 2];
        let mut at = 0;
        while at < bytes.len() {
            assert_eq!(bytes[at], b'$');
            let ch = bytes[at + 1] / 2;
            let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
            let pkt = &bytes[at + 4..at + 4 + len];
            let seq = u32::from_be_bytes(pkt[2..6].try_into().unwrap());
            assert_eq!(seq, next[ch as usize], "channel {ch}");
            assert_eq!(len, 200 + (seq % 1200) as usize);
            assert!(pkt[6..].iter().all(|b| *b == ch));
            next[ch as usize] += 1;
            at += 4 + len;
        }
        assert_eq!(next, [PER_THREAD; 2]);
    }
}
