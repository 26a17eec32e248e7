//! The send queue between the streaming threads (producers) and one writer task per connection.
//!
//! Producers block when the queue holds `max_bytes` (backpressure, so a slow network never grows
//! memory without bound); every blocking wait ends on cancel or on a connection failure.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Condvar, Mutex};

/// One interleaved frame or a piece of RTSP text, written in queue order.
pub enum OutFrame {
    /// `$`, channel, 16-bit length, then optionally the first two RTP bytes rewritten (payload type
    /// remapping), followed by the buffer's memories from byte `skip` on. The memories are mapped
    /// one by one at write time: mapping a multi-memory buffer whole (payloaders append the
    /// payload as a second memory) would merge it into a fresh copy.
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
                buffer,
                skip,
                ..
            } => *head_len as usize + buffer.size() - *skip as usize,
            OutFrame::Control(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

impl Inner {
    fn push(&mut self, f: OutFrame, at: std::time::Instant) {
        self.bytes += f.len();
        self.frames.push_back(f);
        self.queued_at.push_back(at);
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.queued_at.clear();
        self.bytes = 0;
    }
}

struct Inner {
    frames: VecDeque<OutFrame>,
    /// When each frame was queued (same order as `frames`): the age of the oldest is the
    /// latency the queue adds.
    queued_at: VecDeque<std::time::Instant>,
    bytes: usize,
    state: QState,
    flushing: bool,
}

pub struct SendQueue {
    inner: Mutex<Inner>,
    space: Condvar,
    data: tokio::sync::Notify,
    max_bytes: usize,
}

/// Frames taken by the writer at once: writev takes at most 1024 slices, two per frame.
pub const MAX_BATCH: usize = 256;

impl SendQueue {
    pub fn new(max_bytes: usize) -> Self {
        SendQueue {
            inner: Mutex::new(Inner {
                frames: VecDeque::new(),
                queued_at: VecDeque::new(),
                bytes: 0,
                state: QState::Open,
                flushing: false,
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
            _ if inner.flushing => Err(QueueError::Cancelled),
            _ => Ok(()),
        }
    }

    /// Queues frames in order, blocking while the queue is full.
    pub fn push_all(&self, frames: impl IntoIterator<Item = OutFrame>) -> Result<(), QueueError> {
        let mut inner = self.inner.lock().unwrap();
        for f in frames {
            loop {
                Self::check(&inner)?;
                if inner.bytes < self.max_bytes || inner.frames.is_empty() {
                    break;
                }
                inner = self.space.wait(inner).unwrap();
            }
            inner.push(f, std::time::Instant::now());
            self.data.notify_one();
        }
        Ok(())
    }

    /// Queues frames without waiting for room: for the drop policy, which decides itself what
    /// fits (it may overshoot the bound by the rest of a frame already started).
    pub fn push_all_nowait(&self, frames: Vec<OutFrame>) -> Result<(), QueueError> {
        let mut inner = self.inner.lock().unwrap();
        Self::check(&inner)?;
        for f in frames {
            inner.push(f, std::time::Instant::now());
        }
        self.data.notify_one();
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
        inner.push(OutFrame::Control(bytes), std::time::Instant::now());
        self.data.notify_one();
        Ok(())
    }

    /// Queues frames without waiting for space: for what was held back before RECORD, already
    /// bounded by the caller.
    pub fn preload(&self, frames: Vec<OutFrame>) {
        let mut inner = self.inner.lock().unwrap();
        for f in frames {
            inner.push(f, std::time::Instant::now());
        }
        self.data.notify_one();
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
        inner.push(OutFrame::Control(last), std::time::Instant::now());
        inner.state = QState::Closing;
        self.space.notify_all();
        self.data.notify_one();
    }

    /// Whether media (not only control messages) is still queued.
    pub fn has_media(&self) -> bool {
        self.inner
            .lock()
            .unwrap()
            .frames
            .iter()
            .any(|f| matches!(f, OutFrame::Rtp { .. }))
    }

    /// How long the oldest frame still queued has waited.
    pub fn oldest_age(&self) -> std::time::Duration {
        self.inner
            .lock()
            .unwrap()
            .queued_at
            .front()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn level(&self) -> usize {
        self.inner.lock().unwrap().bytes
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
        let now = std::time::Instant::now();
        let kept: Vec<OutFrame> = inner
            .frames
            .drain(..)
            .filter(|f| matches!(f, OutFrame::Control(_)))
            .collect();
        inner.clear();
        for f in kept {
            inner.push(f, now);
        }
        self.space.notify_all();
        self.data.notify_one();
    }

    /// While flushing, producers return at once (`Cancelled`) instead of blocking.
    pub fn set_flushing(&self, flushing: bool) {
        let mut inner = self.inner.lock().unwrap();
        inner.flushing = flushing;
        self.space.notify_all();
    }

    /// Waits for frames and moves up to MAX_BATCH of them into `out`.
    /// Returns false when the queue has ended (closed and drained, cancelled or failed).
    pub async fn next_batch(&self, out: &mut Vec<OutFrame>) -> bool {
        loop {
            let notified = self.data.notified();
            {
                let mut inner = self.inner.lock().unwrap();
                match inner.state {
                    QState::Cancelled | QState::Failed(_) => return false,
                    _ => {}
                }
                if !inner.frames.is_empty() {
                    let n = inner.frames.len().min(MAX_BATCH);
                    let mut taken = 0;
                    inner.queued_at.drain(..n);
                    for f in inner.frames.drain(..n) {
                        taken += f.len();
                        out.push(f);
                    }
                    inner.bytes -= taken;
                    self.space.notify_all();
                    return true;
                }
                if matches!(inner.state, QState::Closing | QState::Draining(_)) {
                    return false;
                }
            }
            notified.await;
        }
    }
}

/// Writes a batch with vectored writes (one `writev` for all of it when the socket takes it),
/// resuming after partial writes.
pub async fn write_batch<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    batch: &[OutFrame],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut maps = Vec::with_capacity(batch.len() * 2);
    for f in batch {
        if let OutFrame::Rtp { buffer, .. } = f {
            for m in buffer.iter_memories() {
                maps.push(
                    m.map_readable()
                        .map_err(|_| std::io::Error::other("cannot map buffer memory"))?,
                );
            }
        }
    }
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 3);
    let mut next_map = maps.iter();
    for f in batch {
        match f {
            OutFrame::Rtp {
                head,
                head_len,
                buffer,
                skip,
            } => {
                slices.push(IoSlice::new(&head[..*head_len as usize]));
                let mut to_skip = *skip as usize;
                for _ in 0..buffer.n_memory() {
                    let mem = next_map.next().map(|m| m.as_slice()).unwrap_or(&[]);
                    if to_skip >= mem.len() {
                        to_skip -= mem.len();
                        continue;
                    }
                    slices.push(IoSlice::new(&mem[to_skip..]));
                    to_skip = 0;
                }
            }
            OutFrame::Control(v) => slices.push(IoSlice::new(v)),
        }
    }
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = w.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(bytes: &[u8]) -> gst::Buffer {
        gst::Buffer::from_slice(bytes.to_vec())
    }

    fn wire(frames: &[OutFrame]) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut out: Vec<u8> = Vec::new();
        rt.block_on(write_batch(&mut out, frames)).unwrap();
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
    fn multi_memory_buffers_are_written_memory_by_memory() {
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
        assert_eq!(
            wire(&[plain, remapped]),
            [b'$', 0, 0, 6, 0x80, 0x60, 7, 8, 9, 10, b'$', 1, 0, 6, 0x80, 100, 7, 8, 9, 10]
        );
    }

    #[test]
    fn write_batch_handles_partial_writes() {
        gst::init().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let frames: Vec<OutFrame> = (0..300u32)
            .map(|i| OutFrame::rtp(buf(&i.to_be_bytes()), 0, None).unwrap())
            .collect();
        // A duplex pipe with a tiny buffer forces many partial writes.
        let (mut a, mut b) = tokio::io::duplex(7);
        let out = rt.block_on(async move {
            use tokio::io::AsyncReadExt;
            let reader = tokio::spawn(async move {
                let mut v = Vec::new();
                b.read_to_end(&mut v).await.unwrap();
                v
            });
            write_batch(&mut a, &frames).await.unwrap();
            drop(a);
            reader.await.unwrap()
        });
        assert_eq!(out.len(), 300 * 8);
        for (i, chunk) in out.chunks(8).enumerate() {
            assert_eq!(&chunk[..4], &[b'$', 0, 0, 4]);
            assert_eq!(&chunk[4..], &(i as u32).to_be_bytes());
        }
    }

    #[test]
    fn backpressure_and_cancel() {
        gst::init().unwrap();
        let q = std::sync::Arc::new(SendQueue::new(10));
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
            assert!(q.next_batch(&mut out).await);
            assert_eq!(out.len(), 2);
            out.clear();
            assert!(!q.next_batch(&mut out).await);
        });
        assert_eq!(q.level(), 0);
    }
}
