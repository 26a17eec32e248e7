//! RTP numbering and the packet buffer the packetizers write into.

/// A track's numbering, as a GStreamer payloader's properties give it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtpConfig {
    pub(crate) pt: u8,
    pub(crate) ssrc: u32,
    /// The first packet's sequence number.
    pub(crate) seq: u16,
    /// What the caps say as `seqnum-offset` (the payloader's first number, kept when a new
    /// packetizer continues an old one's numbering).
    pub(crate) seqnum_offset: u16,
    pub(crate) ts_offset: u32,
    /// Largest RTP packet, header included (rtpbasepayload's `mtu`).
    pub(crate) mtu: u32,
}

/// One packet in [`Packets::data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// Where its RTP header starts.
    pub(crate) start: usize,
    /// The RTP packet's length.
    pub(crate) len: usize,
    pub(crate) marker: bool,
}

/// Packets written back to back, each behind `prefix` bytes left for the caller (the
/// interleave header), so the whole vector can go to the socket as it is.
#[derive(Debug)]
pub(crate) struct Packets {
    pub(crate) data: Vec<u8>,
    pub(crate) spans: Vec<Span>,
    prefix: usize,
}

impl Packets {
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn new(prefix: usize) -> Packets {
        Packets {
            data: Vec::new(),
            spans: Vec::new(),
            prefix,
        }
    }

    /// Room for an access unit of `bytes` in packets of at most `mtu`, so writing it never
    /// grows (and copies) the vector.
    pub(crate) fn with_room(prefix: usize, bytes: usize, mtu: u32) -> Packets {
        let packets = bytes / (mtu as usize).saturating_sub(HEADER + 3).max(1) + 4;
        Packets {
            data: Vec::with_capacity(bytes + packets * (prefix + HEADER + 4)),
            spans: Vec::with_capacity(packets),
            prefix,
        }
    }

    pub(crate) fn packet(&self, i: usize) -> &[u8] {
        let s = self.spans[i];
        &self.data[s.start..s.start + s.len]
    }
}

pub(crate) struct Rtp {
    pub(crate) cfg: RtpConfig,
    pub(crate) clock_rate: u32,
    /// Next sequence number.
    pub(crate) seq: u16,
    /// The last timestamp used (for buffers without one).
    last_ts: u32,
}

/// RTP header size (no CSRC, no extension).
pub(crate) const HEADER: usize = 12;

impl Rtp {
    pub(crate) fn new(cfg: RtpConfig, clock_rate: u32) -> Rtp {
        Rtp {
            cfg,
            clock_rate,
            seq: cfg.seq,
            last_ts: cfg.ts_offset,
        }
    }

    /// Payload bytes that fit in one packet.
    pub(crate) fn max_payload(&self) -> usize {
        (self.cfg.mtu as usize).saturating_sub(HEADER)
    }

    /// rtpbasepayload's timestamp: the offset plus the running time in clock ticks (rounded
    /// down).
    pub(crate) fn timestamp_at(&self, running_ns: u64) -> u32 {
        let ticks = (running_ns as u128 * self.clock_rate as u128 / 1_000_000_000) as u64;
        self.cfg.ts_offset.wrapping_add(ticks as u32)
    }

    /// The timestamp of a buffer: from its running time, or the last one's if it has none.
    pub(crate) fn timestamp(&mut self, running_ns: Option<u64>) -> u32 {
        if let Some(rt) = running_ns {
            self.last_ts = self.timestamp_at(rt);
        }
        self.last_ts
    }

    /// Appends one packet: the header, then `parts` one after the other.
    pub(crate) fn packet(&mut self, out: &mut Packets, marker: bool, ts: u32, parts: &[&[u8]]) {
        let payload: usize = parts.iter().map(|p| p.len()).sum();
        out.data.reserve(out.prefix + HEADER + payload);
        out.data.resize(out.data.len() + out.prefix, 0);
        let start = out.data.len();
        let s = self.seq.to_be_bytes();
        let t = ts.to_be_bytes();
        let c = self.cfg.ssrc.to_be_bytes();
        out.data.extend_from_slice(&[
            0x80,
            (u8::from(marker) << 7) | (self.cfg.pt & 0x7f),
            s[0],
            s[1],
            t[0],
            t[1],
            t[2],
            t[3],
            c[0],
            c[1],
            c[2],
            c[3],
        ]);
        for p in parts {
            out.data.extend_from_slice(p);
        }
        out.spans.push(Span {
            start,
            len: HEADER + payload,
            marker,
        });
        self.seq = self.seq.wrapping_add(1);
    }

    /// The numbering fields every payloader's caps carry.
    pub(crate) fn caps_numbering(&self, s: &mut gst::StructureRef) {
        s.set("payload", self.cfg.pt as i32);
        s.set("seqnum-offset", self.cfg.seqnum_offset as u32);
        s.set("timestamp-offset", self.cfg.ts_offset);
        s.set("ssrc", self.cfg.ssrc);
    }
}
