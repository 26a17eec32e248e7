//! What is queued: an interleaved RTP/RTCP frame or a piece of RTSP text.

use super::QueueError;

/// One interleaved frame or a piece of RTSP text, written in queue order.
pub(crate) enum OutFrame {
    /// `$`, channel, 16-bit length, then optionally the first two RTP bytes rewritten (payload type
    /// remapping) or the first eight (sequence number and timestamp shifted too), followed by
    /// the buffer from byte `skip` on.
    Rtp {
        head: [u8; 12],
        head_len: u8,
        buffer: gst::Buffer,
        skip: u8,
    },
    /// RTP packets our own packetizer wrote already framed (`$`, channel, length, packet, ...):
    /// one access unit's worth, one allocation, no buffer per packet.
    Wire {
        bytes: Vec<u8>,
        packets: u32,
        /// The last packet's sequence number and timestamp (the bytes may be moved out once
        /// queued).
        last: (u16, u32),
    },
    Control(Vec<u8>),
}

/// Largest packet an interleaved frame can carry.
const MAX_INTERLEAVED: usize = u16::MAX as usize;

impl OutFrame {
    /// Frames an RTP/RTCP buffer for `channel`; `pt` rewrites the payload type byte (keeping the
    /// marker bit) when this track's payload type was remapped.
    #[cfg(test)]
    pub(crate) fn rtp(buffer: gst::Buffer, channel: u8, pt: Option<u8>) -> Result<OutFrame, usize> {
        Self::rtp_shifted(buffer, channel, pt, 0, 0)
    }

    /// [`Self::rtp`], with `seq` and `ts` added (wrapping) to the packet's sequence number and
    /// timestamp: how a track stays continuous across a flush.
    pub(crate) fn rtp_shifted(
        buffer: gst::Buffer,
        channel: u8,
        pt: Option<u8>,
        seq: u16,
        ts: u32,
    ) -> Result<OutFrame, usize> {
        let len = buffer.size();
        if len > MAX_INTERLEAVED {
            return Err(len);
        }
        let l = (len as u16).to_be_bytes();
        let mut head = [b'$', channel, l[0], l[1], 0, 0, 0, 0, 0, 0, 0, 0];
        let shifted = seq != 0 || ts != 0;
        let n = if shifted { 8 } else { 2 };
        if (pt.is_none() && !shifted)
            || len < n
            || buffer.copy_to_slice(0, &mut head[4..4 + n]).is_err()
        {
            return Ok(OutFrame::Rtp {
                head,
                head_len: 4,
                buffer,
                skip: 0,
            });
        }
        if let Some(pt) = pt {
            head[5] = (head[5] & 0x80) | (pt & 0x7f);
        }
        if shifted {
            let s = u16::from_be_bytes([head[6], head[7]]).wrapping_add(seq);
            head[6..8].copy_from_slice(&s.to_be_bytes());
            let t = u32::from_be_bytes([head[8], head[9], head[10], head[11]]).wrapping_add(ts);
            head[8..12].copy_from_slice(&t.to_be_bytes());
        }
        Ok(OutFrame::Rtp {
            head,
            head_len: 4 + n as u8,
            buffer,
            skip: n as u8,
        })
    }

    pub(crate) fn len(&self) -> usize {
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
            OutFrame::Wire { bytes, .. } => bytes.len(),
            OutFrame::Control(v) => v.len(),
        }
    }

    pub(super) fn is_media(&self) -> bool {
        matches!(self, OutFrame::Rtp { .. } | OutFrame::Wire { .. })
    }

    /// How many RTP packets the frame carries.
    pub(crate) fn rtp_packets(&self) -> u64 {
        match self {
            OutFrame::Rtp { .. } => 1,
            OutFrame::Wire { packets, .. } => *packets as u64,
            OutFrame::Control(_) => 0,
        }
    }

    /// The sequence number and timestamp of the last RTP packet the frame carries, as they go
    /// out: where a track resumes when frames it framed were never queued.
    pub(crate) fn last_seq_ts(&self) -> Option<(u16, u32)> {
        let at = |d: &[u8], i: usize| {
            d.get(i..i + 6).map(|h| {
                (
                    u16::from_be_bytes([h[0], h[1]]),
                    u32::from_be_bytes([h[2], h[3], h[4], h[5]]),
                )
            })
        };
        match self {
            OutFrame::Rtp { head, head_len, .. } if *head_len == 12 => at(head, 6),
            OutFrame::Rtp { buffer, .. } => {
                let mut h = [0u8; 6];
                buffer.copy_to_slice(2, &mut h).ok()?;
                at(&h, 0)
            }
            OutFrame::Wire { last, .. } => Some(*last),
            OutFrame::Control(_) => None,
        }
    }

    /// Appends the frame's wire bytes to `out`, mapping the buffer's memories one by one (mapping
    /// a multi-memory buffer whole would merge it into a fresh allocation first).
    pub(super) fn append_to(&self, out: &mut Vec<u8>) -> Result<(), QueueError> {
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
            OutFrame::Wire { bytes: v, .. } | OutFrame::Control(v) => out.extend_from_slice(v),
        }
        Ok(())
    }
}
