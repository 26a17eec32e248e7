//! Per-track sending state once RECORD is answered: framing, the packet and octet counts that
//! sender reports carry, the RTP/running-time mapping, and what receiver reports told us.

use crate::keyframe::{self, Start};
use crate::net::queue::OutFrame;
use crate::packetize::Packets;
use crate::rtcp::{self, RtpFacts, SenderInfo};
use crate::srtp::{Protector, Unprotector};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which clock the NTP field of sender reports follows (rtspclientsink's `ntp-time-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NtpSource {
    /// Wall clock, NTP epoch.
    Ntp,
    /// Wall clock, Unix epoch.
    Unix,
    /// The pipeline's running time.
    RunningTime,
    /// The pipeline clock's time.
    ClockTime,
}

/// Maps running time to the NTP field: the same function for every track of a session, which
/// is what lets a receiver line tracks up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NtpMapper {
    pub(crate) source: NtpSource,
    /// Pipeline clock now and base time, if the element has a clock.
    pub(crate) clock_now: Option<u64>,
    pub(crate) base_time: u64,
    pub(crate) wall_now: SystemTime,
    /// RFC 7273 signalling is on and the pipeline clock is an NTP or PTP clock: reports carry
    /// that clock's time, moved to the NTP era by this many nanoseconds, whatever `source` says.
    pub(crate) reference_era: Option<u64>,
}

impl NtpMapper {
    pub(crate) fn running_now(&self) -> Option<u64> {
        self.clock_now.map(|c| c.saturating_sub(self.base_time))
    }

    /// NTP timestamp of the instant the pipeline reaches running time `rt`.
    pub(crate) fn ntp_at(&self, rt: u64) -> u64 {
        let clock_at = self.base_time.saturating_add(rt);
        if let Some(era) = self.reference_era {
            return rtcp::ntp_timestamp(Duration::from_nanos(clock_at.saturating_add(era)));
        }
        match self.source {
            NtpSource::RunningTime => rtcp::ntp_timestamp(Duration::from_nanos(rt)),
            NtpSource::ClockTime => rtcp::ntp_timestamp(Duration::from_nanos(clock_at)),
            NtpSource::Ntp | NtpSource::Unix => {
                let unix = self.wall_now.duration_since(UNIX_EPOCH).unwrap_or_default();
                // Wall time now, moved by how far `rt` lies from now on the pipeline clock.
                let delta = self
                    .clock_now
                    .map(|c| clock_at as i128 - c as i128)
                    .unwrap_or(0);
                let at = (unix.as_nanos() as i128 + delta).max(0) as u128;
                let at = Duration::from_nanos(at as u64);
                let at = if self.source == NtpSource::Ntp {
                    at + Duration::from_secs(rtcp::NTP_UNIX_OFFSET)
                } else {
                    at
                };
                rtcp::ntp_timestamp(at)
            }
        }
    }
}

/// What the server reported about one of our tracks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReceiverView {
    pub(crate) reports: u64,
    pub(crate) fraction_lost: u8,
    pub(crate) cumulative_lost: i32,
    pub(crate) jitter: u32,
    pub(crate) rtt: Option<Duration>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) ssrc: Option<u32>,
    pub(crate) packets: u64,
    /// Payload octets, as sender reports count them.
    pub(crate) octets: u64,
    /// Bytes on the wire, interleave headers included.
    pub(crate) bytes: u64,
    last_rtp: u32,
    last_running: Option<u64>,
    /// The last (RTP timestamp as the payloader stamped it, running time): what a new
    /// connection, which starts without any shift, will stamp on the same timeline.
    last_raw: Option<(u32, u64)>,
    pub(crate) sender_reports: u64,
    pub(crate) receiver: ReceiverView,
    /// (middle 32 bits of the NTP field, when it was queued) of recent reports: a receiver
    /// report's LSR names one, which gives the round trip on our own clock whatever the NTP
    /// field said (the first report is stamped at its packet's running time, which rtpbin needs
    /// but which lies a pipeline latency in the past).
    recent_reports: std::collections::VecDeque<(u32, std::time::Instant)>,
    /// Packets held back until a keyframe (after a reconnect or under congestion).
    pub(crate) dropped: u64,
    /// The next packet starts a frame (the previous one had the marker bit).
    mid_frame: bool,
    /// Dropping because the network is too slow; the episode ends at a keyframe with room.
    congested: bool,
    /// While held back: this frame has shown only neutral packets (AUD, SEI, PPS) so far, kept
    /// in `prefix`; its first decisive packet says whether they go out or are dropped.
    neutral_prefix: bool,
    prefix: Vec<(gst::Buffer, Option<u64>, Option<RtpFacts>)>,
    keyframe_requested: bool,
    /// Continuity across flushes: what is added to the payloader's sequence numbers and
    /// timestamps (zero until a flush), and the last packet as it went out.
    shift: (u16, u32),
    last_out: Option<LastOut>,
    /// A flush happened: the next packet continues from `last_out`.
    discont: bool,
    /// SRTCP from the server we could not read (no key, or it did not authenticate).
    pub(crate) srtcp_unreadable: u64,
}

/// The last packet sent on a track, as it went out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastOut {
    seq: u16,
    ts: u32,
    at: std::time::Instant,
}

/// What `frames` noticed that the session acts on.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FrameEvents {
    /// A congestion episode began: warn once.
    pub(crate) congestion_started: bool,
    /// Room is back while waiting for a keyframe: ask the encoder for one.
    pub(crate) want_keyframe: bool,
    /// The track's last packet before this call: where it resumes if none of what was framed
    /// is queued ([`TrackSender::not_queued`]).
    pub(crate) resume: Option<LastOut>,
}

/// How full the queue is, as the drop policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    /// Below half the bound: a dropped stream may resume.
    Plenty,
    Some,
    /// At the bound: no new frame starts.
    Full,
}

/// What a track is sent with, fixed for one connection.
pub(crate) struct TrackSetup {
    pub(crate) channel: u8,
    pub(crate) rtcp_channel: u8,
    pub(crate) pt_rewrite: Option<u8>,
    pub(crate) clock_rate: u32,
    pub(crate) cname: String,
    pub(crate) encoding: String,
    pub(crate) is_video: bool,
    /// Hold delta frames back until a keyframe (after a reconnect).
    pub(crate) wait_keyframe: bool,
    /// SRTP: the track's packets and our reports go out protected by this.
    pub(crate) srtp: Option<Arc<Protector>>,
    /// SRTP: reads the server's SRTCP about this track (its KeyMgmt answer's key).
    pub(crate) srtcp_in: Option<Arc<Unprotector>>,
}

pub(crate) struct TrackSender {
    pub(crate) channel: u8,
    pub(crate) rtcp_channel: u8,
    pub(crate) pt_rewrite: Option<u8>,
    pub(crate) clock_rate: u32,
    cname: String,
    encoding: String,
    is_video: bool,
    /// Set while delta frames must be held back: the server's first frame must be decodable.
    waiting_keyframe: AtomicBool,
    pub(crate) counters: Mutex<Counters>,
    /// Held by a producer from framing its packets (which counts them) until they are queued,
    /// so that a sender report never counts a packet queued behind it.
    pub(crate) order: Mutex<()>,
    /// A periodic report came due while a producer held `order`: it sends the report itself,
    /// after its packets (the timer never waits on a streaming thread).
    pub(crate) report_due: AtomicBool,
    srtp: Option<Arc<Protector>>,
    srtcp_in: Option<Arc<Unprotector>>,
}

/// Largest packet an interleaved frame can carry.
const MAX_INTERLEAVED: usize = u16::MAX as usize;

/// What a pad hands its sender: one RTP packet from a payloader, or one access unit our own
/// packetizer already made into packets (no buffer per packet).
pub(crate) enum Media {
    Rtp(gst::Buffer),
    Packed(Packed),
}

pub(crate) struct Packed {
    pub(crate) packets: Packets,
    /// Not a keyframe: a decoder cannot start here.
    pub(crate) delta: bool,
}

impl Packed {
    /// Whether every packet has its 4 bytes for the interleave header right before it and
    /// follows the previous one directly: then the buffer is the wire bytes.
    fn is_wire_ready(&self) -> bool {
        let mut next = None;
        self.packets.spans.iter().all(|s| {
            let ok = s.start >= 4 && next.is_none_or(|n| n == s.start - 4);
            next = Some(s.start + s.len);
            ok && s.start + s.len <= self.packets.data.len()
        })
    }
}

impl Media {
    /// (RTP timestamp, running time) of its first packet: where it sits on the track's line.
    pub(crate) fn anchor(&self, running: Option<u64>) -> Option<(u32, u64)> {
        match self {
            Media::Rtp(b) => crate::rtspannounce::session::anchor_of(b, running),
            Media::Packed(p) => {
                let s = p.packets.spans.first()?;
                let h = p.packets.data.get(s.start + 4..s.start + 8)?;
                Some((u32::from_be_bytes([h[0], h[1], h[2], h[3]]), running?))
            }
        }
    }

    /// How many RTP packets it holds (drops are counted per packet).
    pub(crate) fn packets(&self) -> u64 {
        match self {
            Media::Rtp(_) => 1,
            Media::Packed(p) => p.packets.spans.len() as u64,
        }
    }
}

/// The packet exactly as it goes out, before SRTP protects it: the payload type rewritten and
/// the numbers shifted in a copy (the authentication tag covers the header).
fn final_packet(buffer: gst::Buffer, pt: Option<u8>, seq: u16, ts: u32) -> gst::Buffer {
    if pt.is_none() && seq == 0 && ts == 0 {
        return buffer;
    }
    let Ok(map) = buffer.map_readable() else {
        return buffer;
    };
    if map.len() < 12 {
        drop(map);
        return buffer;
    }
    let mut v = map.to_vec();
    if let Some(pt) = pt {
        v[1] = (v[1] & 0x80) | (pt & 0x7f);
    }
    let s = u16::from_be_bytes([v[2], v[3]]).wrapping_add(seq);
    v[2..4].copy_from_slice(&s.to_be_bytes());
    let t = u32::from_be_bytes([v[4], v[5], v[6], v[7]]).wrapping_add(ts);
    v[4..8].copy_from_slice(&t.to_be_bytes());
    gst::Buffer::from_mut_slice(v)
}

/// An RTCP compound as an interleaved frame.
fn frame_rtcp(channel: u8, packet: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + packet.len());
    v.push(b'$');
    v.push(channel);
    v.extend_from_slice(&(packet.len() as u16).to_be_bytes());
    v.extend_from_slice(packet);
    v
}

impl TrackSender {
    pub(crate) fn new(t: TrackSetup) -> Self {
        TrackSender {
            channel: t.channel,
            rtcp_channel: t.rtcp_channel,
            pt_rewrite: t.pt_rewrite,
            clock_rate: t.clock_rate.max(1),
            cname: t.cname,
            encoding: t.encoding,
            is_video: t.is_video,
            waiting_keyframe: AtomicBool::new(t.wait_keyframe),
            counters: Mutex::new(Counters::default()),
            order: Mutex::new(()),
            report_due: AtomicBool::new(false),
            srtp: t.srtp,
            srtcp_in: t.srtcp_in,
        }
    }

    pub(crate) fn is_srtp(&self) -> bool {
        self.srtp.is_some()
    }

    /// RTCP from the server about this track, readable: decrypted when SRTP is in use. Err
    /// when it cannot be (no key from the server, or a packet that does not authenticate:
    /// counted), with the text of a warning the first time a packet fails with a key.
    pub(crate) fn readable_rtcp<'a>(
        &self,
        data: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, Option<String>> {
        if self.srtp.is_none() {
            return Ok(std::borrow::Cow::Borrowed(data));
        }
        let Some(u) = &self.srtcp_in else {
            self.counters.lock().unwrap().srtcp_unreadable += 1;
            return Err(None);
        };
        match u.unprotect_rtcp(data) {
            Ok(clear) => Ok(std::borrow::Cow::Owned(clear)),
            Err(e) => {
                let mut c = self.counters.lock().unwrap();
                c.srtcp_unreadable += 1;
                let first = c.srtcp_unreadable == 1;
                drop(c);
                Err(first.then(|| {
                    format!(
                        "track on channel {}: {e}: its receiver reports are not read (counted in srtcp-unreadable)",
                        self.channel
                    )
                }))
            }
        }
    }

    fn waiting_keyframe(&self) -> bool {
        self.waiting_keyframe.load(Ordering::Relaxed)
    }

    /// The track's pad was flushed (a flushing seek): what comes next continues the sequence
    /// numbers and timestamps of what went out, video from a keyframe. No sender report until
    /// then: the running time it maps from has restarted.
    pub(crate) fn flushed(&self) {
        let mut c = self.counters.lock().unwrap();
        c.discont = true;
        c.last_running = None;
        c.mid_frame = false;
        if self.is_video {
            self.waiting_keyframe.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a decoder could start at this packet.
    fn start_of(&self, buffer: &gst::Buffer, facts: Option<&RtpFacts>) -> Start {
        let mut head = [0u8; 6];
        let n = facts.map(|f| f.payload_len.min(6)).unwrap_or(0);
        let payload = match facts {
            Some(f) if buffer.copy_to_slice(f.header_len, &mut head[..n]).is_ok() => &head[..n],
            _ => &[],
        };
        match keyframe::classify(&self.encoding, payload) {
            Start::Unknown if buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) => Start::Delta,
            Start::Unknown => Start::Key,
            s => s,
        }
    }

    /// Frames buffers (with their running times) for the queue, counting them. The very first
    /// packet of the track is preceded by a sender report, so a receiver can place the track on
    /// the common timeline from its first packet on.
    ///
    /// With `room` (the drop policy), a frame only starts when the queue has room; once one is
    /// dropped, video drops everything up to a keyframe that finds room again, so the server
    /// never gets half a frame or a delta frame it cannot decode. Audio drops frame by frame.
    ///
    /// `wire`: packed access units may go out as they are (interleaved TCP); otherwise (UDP)
    /// they are split into one buffer per packet.
    pub(crate) fn frames(
        &self,
        media: impl IntoIterator<Item = (Media, Option<u64>)>,
        ntp: &dyn Fn() -> NtpMapper,
        room: Option<&dyn Fn() -> Room>,
        wire: bool,
        out: &mut Vec<OutFrame>,
    ) -> Result<FrameEvents, usize> {
        let mut c = self.counters.lock().unwrap();
        let mut ev = FrameEvents {
            resume: c.last_out,
            ..FrameEvents::default()
        };
        let before = c.packets;
        for (m, running) in media {
            match m {
                Media::Rtp(buffer) => {
                    self.frame_rtp(&mut c, &mut ev, buffer, running, ntp, room, out)?
                }
                Media::Packed(p) if wire && self.srtp.is_none() && p.is_wire_ready() => {
                    self.frame_packed(&mut c, &mut ev, p, running, ntp, room, out)?
                }
                Media::Packed(p) => {
                    // SRTP protects and UDP sends packet by packet: one buffer each after all.
                    for i in 0..p.packets.spans.len() {
                        let mut b = gst::Buffer::from_slice(p.packets.packet(i).to_vec());
                        if p.delta {
                            b.get_mut().unwrap().set_flags(gst::BufferFlags::DELTA_UNIT);
                        }
                        self.frame_rtp(&mut c, &mut ev, b, running, ntp, room, out)?;
                    }
                }
            }
        }
        if c.packets != before {
            // When the last packet went out, for the flush continuity: one clock read per call.
            if let Some(l) = c.last_out.as_mut() {
                l.at = std::time::Instant::now();
            }
        }
        Ok(ev)
    }

    /// `frames` were framed by one [`Self::frames`] call, but only the first `queued` went out:
    /// the counters forget the rest and the track's numbering continues from the last packet
    /// that did go out, so a flush that interrupts a send leaves no gap in sequence numbers.
    pub(crate) fn not_queued(&self, frames: &[OutFrame], queued: usize, resume: Option<LastOut>) {
        let (kept, lost) = frames.split_at(queued.min(frames.len()));
        let mut c = self.counters.lock().unwrap();
        for f in lost {
            let packets = f.rtp_packets();
            if packets == 0 {
                continue;
            }
            let bytes = f.len() as u64;
            c.packets = c.packets.saturating_sub(packets);
            c.bytes = c.bytes.saturating_sub(bytes);
            // Headers as the packetizers write them: 4 interleave + 12 RTP bytes a packet.
            c.octets = c.octets.saturating_sub(bytes.saturating_sub(16 * packets));
        }
        let at = c.last_out.map(|l| l.at);
        let last = kept.iter().rev().find_map(OutFrame::last_seq_ts);
        c.last_out = match (last, at) {
            (Some((seq, ts)), Some(at)) => Some(LastOut { seq, ts, at }),
            _ => resume,
        };
    }

    /// One packet from a payloader.
    #[allow(clippy::too_many_arguments)]
    fn frame_rtp(
        &self,
        c: &mut Counters,
        ev: &mut FrameEvents,
        buffer: gst::Buffer,
        running: Option<u64>,
        ntp: &dyn Fn() -> NtpMapper,
        room: Option<&dyn Fn() -> Room>,
        out: &mut Vec<OutFrame>,
    ) -> Result<(), usize> {
        let len = buffer.size();
        let facts = rtcp::rtp_facts(len, |off, dst| buffer.copy_to_slice(off, dst).is_ok());
        let marker = facts.as_ref().is_none_or(|f| f.marker);
        let frame_start = !c.mid_frame;
        c.mid_frame = !marker;
        if let (Some(room), true) = (room, frame_start) {
            if self.congestion_drops(c, ev, room) {
                c.dropped += 1;
                c.mid_frame = !marker;
                return Ok(());
            }
        } else if c.congested && !self.is_video {
            // The rest of a dropped audio frame.
            c.dropped += 1;
            return Ok(());
        }
        if self.waiting_keyframe() {
            if frame_start {
                let may_resume = !c.congested || room.is_none_or(|r| r() == Room::Plenty);
                c.neutral_prefix = may_resume;
                c.dropped += c.prefix.len() as u64;
                c.prefix.clear();
            }
            match self.start_of(&buffer, facts.as_ref()) {
                // Might still be a keyframe: keep it until the frame says.
                Start::Neutral if c.neutral_prefix => {
                    c.prefix.push((buffer, running, facts));
                    return Ok(());
                }
                Start::Key if c.neutral_prefix => {
                    self.waiting_keyframe.store(false, Ordering::Relaxed);
                    c.congested = false;
                    for (b, rt, f) in std::mem::take(&mut c.prefix) {
                        self.emit(c, b, rt, f, ntp, out)?;
                    }
                }
                _ => {
                    c.neutral_prefix = false;
                    c.dropped += 1 + c.prefix.len() as u64;
                    c.prefix.clear();
                    return Ok(());
                }
            }
        }
        self.emit(c, buffer, running, facts, ntp, out)
    }

    /// The drop policy at a frame's start: whether the frame is dropped here (audio under
    /// congestion). Starts and ends congestion episodes; video's drops are decided by the
    /// keyframe wait that an episode starts.
    fn congestion_drops(
        &self,
        c: &mut Counters,
        ev: &mut FrameEvents,
        room: &dyn Fn() -> Room,
    ) -> bool {
        let r = room();
        if r == Room::Full && !c.congested {
            c.congested = true;
            c.keyframe_requested = false;
            ev.congestion_started = true;
            if self.is_video {
                self.waiting_keyframe.store(true, Ordering::Relaxed);
            }
        } else if c.congested && !self.is_video && r != Room::Full {
            c.congested = false;
        }
        if c.congested && !self.is_video {
            return true;
        }
        if c.congested && r == Room::Plenty && !c.keyframe_requested {
            c.keyframe_requested = true;
            ev.want_keyframe = true;
        }
        false
    }

    /// One access unit our packetizer made: the same decisions as for a payloader's packets,
    /// taken once for the whole frame, then its packets are stamped with the interleave header
    /// in place and go out as one frame.
    #[allow(clippy::too_many_arguments)]
    fn frame_packed(
        &self,
        c: &mut Counters,
        ev: &mut FrameEvents,
        p: Packed,
        running: Option<u64>,
        ntp: &dyn Fn() -> NtpMapper,
        room: Option<&dyn Fn() -> Room>,
        out: &mut Vec<OutFrame>,
    ) -> Result<(), usize> {
        let Packed { mut packets, delta } = p;
        let n = packets.spans.len() as u64;
        let (Some(first), Some(last)) = (packets.spans.first(), packets.spans.last()) else {
            return Ok(());
        };
        let (first_start, last_start) = (first.start, last.start);
        // A whole frame: whatever a payloader's packets left half done is over.
        c.mid_frame = false;
        if let Some(room) = room {
            if self.congestion_drops(c, ev, room) {
                c.dropped += n;
                return Ok(());
            }
        } else if c.congested && !self.is_video {
            c.dropped += n;
            return Ok(());
        }
        if self.waiting_keyframe() {
            c.dropped += c.prefix.len() as u64;
            c.prefix.clear();
            let may_resume = !c.congested || room.is_none_or(|r| r() == Room::Plenty);
            if delta || !may_resume {
                c.dropped += n;
                return Ok(());
            }
            self.waiting_keyframe.store(false, Ordering::Relaxed);
            c.congested = false;
        }
        let data = &mut packets.data;
        let head = |d: &[u8], at: usize| {
            (
                u16::from_be_bytes([d[at + 2], d[at + 3]]),
                u32::from_be_bytes([d[at + 4], d[at + 5], d[at + 6], d[at + 7]]),
            )
        };
        let (seq0, ts0) = head(data, first_start);
        if c.discont {
            if let Some(l) = c.last_out {
                c.shift = self.shift_after_flush(l, seq0, ts0);
            }
            c.discont = false;
        }
        let (dseq, dts) = c.shift;
        let mut octets = 0;
        for span in &packets.spans {
            if span.len > MAX_INTERLEAVED || span.len < 12 || span.start < 4 {
                return Err(span.len);
            }
            let pkt = &mut data[span.start..span.start + span.len];
            if let Some(pt) = self.pt_rewrite {
                pkt[1] = (pkt[1] & 0x80) | (pt & 0x7f);
            }
            if dseq != 0 || dts != 0 {
                let (s, t) = head(pkt, 0);
                pkt[2..4].copy_from_slice(&s.wrapping_add(dseq).to_be_bytes());
                pkt[4..8].copy_from_slice(&t.wrapping_add(dts).to_be_bytes());
            }
            let l = (span.len as u16).to_be_bytes();
            data[span.start - 4..span.start].copy_from_slice(&[b'$', self.channel, l[0], l[1]]);
            octets += span.len as u64 - 12;
        }
        let (seq, ts) = head(data, last_start);
        let ssrc = u32::from_be_bytes([
            data[first_start + 8],
            data[first_start + 9],
            data[first_start + 10],
            data[first_start + 11],
        ]);
        c.last_out = Some(LastOut {
            seq,
            ts,
            // Stamped once per call, after the loop (frames).
            at: c.last_out.map_or_else(std::time::Instant::now, |l| l.at),
        });
        c.ssrc = Some(ssrc);
        if let Some(rt) = running {
            c.last_raw = Some((ts0, rt));
            c.last_rtp = ts;
            c.last_running = Some(rt);
            if c.sender_reports == 0 {
                out.push(OutFrame::Control(self.report_locked(c, rt, &ntp(), false)));
            }
        }
        // The packets sit back to back behind their headers (is_wire_ready).
        data.truncate(last_start + packets.spans[packets.spans.len() - 1].len);
        if first_start > 4 {
            data.drain(..first_start - 4);
        }
        let bytes = std::mem::take(data);
        c.octets += octets;
        c.packets += n;
        c.bytes += bytes.len() as u64;
        out.push(OutFrame::Wire {
            bytes,
            packets: n as u32,
            last: (seq, ts),
        });
        Ok(())
    }

    /// After a flush the payloader's numbers restart where its new segment does: continue from
    /// the last packet sent, its timestamp advanced by the time since.
    fn shift_after_flush(&self, last: LastOut, seq: u16, ts: u32) -> (u16, u32) {
        let ticks =
            (last.at.elapsed().as_nanos() * self.clock_rate as u128 / 1_000_000_000).max(1) as u32;
        let shift = (
            last.seq.wrapping_add(1).wrapping_sub(seq),
            last.ts.wrapping_add(ticks).wrapping_sub(ts),
        );
        gst::debug!(
            crate::CAT,
            "channel {}: after a flush, sequence numbers shift by {} and timestamps by {}",
            self.channel,
            shift.0,
            shift.1
        );
        shift
    }

    /// Frames one packet, counting it (and preceding the track's first packet with a report).
    fn emit(
        &self,
        c: &mut Counters,
        buffer: gst::Buffer,
        running: Option<u64>,
        facts: Option<RtpFacts>,
        ntp: &dyn Fn() -> NtpMapper,
        out: &mut Vec<OutFrame>,
    ) -> Result<(), usize> {
        {
            if let (true, Some(f), Some(last)) = (c.discont, facts.as_ref(), c.last_out) {
                c.shift = self.shift_after_flush(last, f.seq, f.timestamp);
            }
            if facts.is_some() {
                c.discont = false;
            }
            let (seq, ts) = c.shift;
            let frame = match &self.srtp {
                None => OutFrame::rtp_shifted(buffer, self.channel, self.pt_rewrite, seq, ts)?,
                Some(p) => match p.protect_rtp(final_packet(buffer, self.pt_rewrite, seq, ts)) {
                    Ok(b) => OutFrame::rtp_shifted(b, self.channel, None, 0, 0)?,
                    Err(e) => {
                        // Never sent in the clear instead.
                        gst::warning!(crate::CAT, "channel {}: {e}", self.channel);
                        c.dropped += 1;
                        return Ok(());
                    }
                },
            };
            if let Some(RtpFacts {
                ssrc,
                timestamp,
                payload_len,
                seq: in_seq,
                ..
            }) = facts
            {
                let timestamp = timestamp.wrapping_add(ts);
                c.last_out = Some(LastOut {
                    seq: in_seq.wrapping_add(seq),
                    ts: timestamp,
                    // Stamped once per call, after the loop (frames).
                    at: c.last_out.map_or_else(std::time::Instant::now, |l| l.at),
                });
                if c.ssrc != Some(ssrc) {
                    c.ssrc = Some(ssrc);
                }
                if let Some(rt) = running {
                    c.last_raw = Some((timestamp.wrapping_sub(ts), rt));
                    c.last_rtp = timestamp;
                    c.last_running = Some(rt);
                    if c.sender_reports == 0 {
                        // The clock is looked up only here, once per track.
                        out.push(OutFrame::Control(self.report_locked(c, rt, &ntp(), false)));
                    }
                }
                c.octets += payload_len as u64;
            }
            c.packets += 1;
            c.bytes += frame.len() as u64;
            out.push(frame);
        }
        Ok(())
    }

    fn report_locked(&self, c: &mut Counters, at: u64, ntp: &NtpMapper, bye: bool) -> Vec<u8> {
        let rtp = match c.last_running {
            Some(last) => rtcp::rtp_at(c.last_rtp, last, at, self.clock_rate),
            None => c.last_rtp,
        };
        let info = SenderInfo {
            ssrc: c.ssrc.unwrap_or(0),
            ntp: ntp.ntp_at(at),
            rtp_timestamp: rtp,
            packets: c.packets as u32,
            octets: c.octets as u32,
        };
        c.sender_reports += 1;
        if c.recent_reports.len() >= 16 {
            c.recent_reports.pop_front();
        }
        c.recent_reports
            .push_back((rtcp::ntp_middle(info.ntp), std::time::Instant::now()));
        gst::log!(
            crate::CAT,
            "SR ssrc {:08x} at running time {at} ns: rtp {rtp}, ntp {:016x}, {} packets",
            info.ssrc,
            info.ntp,
            info.packets
        );
        let compound = rtcp::compound(&info, &self.cname, bye);
        match &self.srtp {
            None => frame_rtcp(self.rtcp_channel, &compound),
            Some(p) => match p.protect_rtcp(&compound) {
                Ok(srtcp) => frame_rtcp(self.rtcp_channel, &srtcp),
                Err(e) => {
                    gst::warning!(crate::CAT, "channel {}: {e}", self.rtcp_channel);
                    Vec::new()
                }
            },
        }
    }

    /// The last packet's (payloader's RTP timestamp, running time), if it had one.
    pub(crate) fn anchor(&self) -> Option<(u32, u64)> {
        self.counters.lock().unwrap().last_raw
    }

    /// A periodic report (or the last one, with BYE): stamped "now" on the pipeline clock, or at
    /// the last packet when there is no clock. None before the track's first packet.
    pub(crate) fn report(&self, ntp: &NtpMapper, bye: bool) -> Option<Vec<u8>> {
        let mut c = self.counters.lock().unwrap();
        c.ssrc?;
        let last = c.last_running?;
        let at = ntp.running_now().unwrap_or(last);
        Some(self.report_locked(&mut c, at, ntp, bye))
    }

    /// Takes report blocks about our SSRC; returns the new cumulative loss if it grew.
    pub(crate) fn receiver_report(
        &self,
        block: &rtcp::ReportBlock,
        arrival_middle: u32,
    ) -> Option<i32> {
        let mut c = self.counters.lock().unwrap();
        if c.ssrc != Some(block.ssrc) {
            return None;
        }
        let grew = block.cumulative_lost > c.receiver.cumulative_lost;
        let dlsr = Duration::from_nanos((block.dlsr as u64 * 1_000_000_000) >> 16);
        let rtt = c
            .recent_reports
            .iter()
            .find(|(lsr, _)| *lsr == block.lsr && block.lsr != 0)
            .map(|(_, sent)| sent.elapsed().saturating_sub(dlsr))
            .or_else(|| block.rtt(arrival_middle));
        c.receiver = ReceiverView {
            reports: c.receiver.reports + 1,
            fraction_lost: block.fraction_lost,
            cumulative_lost: block.cumulative_lost,
            jitter: block.jitter,
            rtt: rtt.or(c.receiver.rtt),
        };
        grew.then_some(block.cumulative_lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(is_video: bool) -> TrackSender {
        TrackSender::new(TrackSetup {
            channel: 0,
            rtcp_channel: 1,
            pt_rewrite: None,
            clock_rate: 90_000,
            cname: "test".into(),
            encoding: String::new(),
            is_video,
            wait_keyframe: false,
            srtp: None,
            srtcp_in: None,
        })
    }

    fn packet(seq: u16, ts: u32) -> gst::Buffer {
        let mut p = vec![0x80, 0x80 | 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0xfeed_beefu32.to_be_bytes());
        p.extend_from_slice(&[0x65, 1, 2, 3]);
        gst::Buffer::from_mut_slice(p)
    }

    /// (sequence number, timestamp) of every RTP packet framed.
    fn sent(out: &[OutFrame]) -> Vec<(u16, u32)> {
        out.iter()
            .filter_map(|f| match f {
                OutFrame::Rtp {
                    head,
                    head_len,
                    buffer,
                    skip,
                } => {
                    let mut bytes = head[4..*head_len as usize].to_vec();
                    let rest = buffer.map_readable().unwrap();
                    bytes.extend_from_slice(&rest[*skip as usize..]);
                    Some(vec![(
                        u16::from_be_bytes([bytes[2], bytes[3]]),
                        u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
                    )])
                }
                OutFrame::Wire { bytes, packets, .. } => {
                    let mut v = Vec::new();
                    let mut at = 0;
                    while at < bytes.len() {
                        assert_eq!(bytes[at], b'$');
                        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
                        let p = &bytes[at + 4..at + 4 + len];
                        v.push((
                            u16::from_be_bytes([p[2], p[3]]),
                            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                        ));
                        at += 4 + len;
                    }
                    assert_eq!(v.len(), *packets as usize);
                    Some(v)
                }
                OutFrame::Control(_) => None,
            })
            .flat_map(|v| v.into_iter())
            .collect()
    }

    fn ntp() -> NtpMapper {
        NtpMapper {
            source: NtpSource::Ntp,
            clock_now: None,
            base_time: 0,
            wall_now: SystemTime::now(),
            reference_era: None,
        }
    }

    fn frame(tx: &TrackSender, packets: &[(u16, u32)], out: &mut Vec<OutFrame>) {
        let buffers = packets
            .iter()
            .map(|&(seq, ts)| (Media::Rtp(packet(seq, ts)), Some(u64::from(ts) * 11_111)));
        tx.frames(buffers, &ntp, None, true, out).unwrap();
    }

    /// An access unit as our packetizer hands it over: packets behind 4 free bytes each.
    fn packed(packets: &[(u16, u32)], delta: bool) -> Media {
        let mut p = Packets::new(4);
        for (i, &(seq, ts)) in packets.iter().enumerate() {
            let b = packet(seq, ts);
            let map = b.map_readable().unwrap();
            p.data.extend_from_slice(&[0; 4]);
            let start = p.data.len();
            p.data.extend_from_slice(&map);
            p.spans.push(crate::packetize::Span {
                start,
                len: map.len(),
                marker: i + 1 == packets.len(),
            });
        }
        Media::Packed(Packed { packets: p, delta })
    }

    /// One `frames` call on its own batch, for the queue to take part of: the batch and where
    /// the track resumes if none of it is queued.
    fn batch(tx: &TrackSender, media: Vec<Media>) -> (Vec<OutFrame>, Option<LastOut>) {
        let mut out = Vec::new();
        let ev = tx
            .frames(
                media.into_iter().map(|m| (m, Some(0))),
                &ntp,
                None,
                true,
                &mut out,
            )
            .unwrap();
        (out, ev.resume)
    }

    fn frame_packed(tx: &TrackSender, au: Media, rt: u64, wire: bool, out: &mut Vec<OutFrame>) {
        tx.frames([(au, Some(rt))], &ntp, None, wire, out).unwrap();
    }

    #[test]
    fn a_packed_access_unit_goes_out_as_one_interleaved_frame() {
        gst::init().unwrap();
        let tx = sender(true);
        let mut out = Vec::new();
        frame_packed(
            &tx,
            packed(&[(10, 1000), (11, 1000), (12, 1000)], false),
            0,
            true,
            &mut out,
        );
        // The first packet of the track is preceded by a sender report.
        assert!(matches!(out[0], OutFrame::Control(_)));
        assert!(matches!(out[1], OutFrame::Wire { packets: 3, .. }));
        assert_eq!(sent(&out), [(10, 1000), (11, 1000), (12, 1000)]);
        let OutFrame::Wire { bytes, .. } = &out[1] else {
            unreachable!()
        };
        assert!(bytes.chunks(4 + 16).all(|f| f[..4] == [b'$', 0, 0, 16]));
        let c = tx.counters.lock().unwrap();
        assert_eq!((c.packets, c.octets, c.bytes), (3, 12, 60));
    }

    #[test]
    fn a_packed_access_unit_is_split_where_packets_go_one_by_one() {
        gst::init().unwrap();
        let tx = sender(true);
        let mut out = Vec::new();
        frame_packed(
            &tx,
            packed(&[(10, 1000), (11, 1000)], false),
            0,
            false,
            &mut out,
        );
        assert_eq!(
            out.iter()
                .filter(|f| matches!(f, OutFrame::Rtp { .. }))
                .count(),
            2
        );
        assert_eq!(sent(&out), [(10, 1000), (11, 1000)]);
    }

    #[test]
    fn packed_access_units_continue_across_a_flush_and_restart_on_a_keyframe() {
        gst::init().unwrap();
        let tx = sender(true);
        let mut out = Vec::new();
        frame_packed(
            &tx,
            packed(&[(65534, 900_000), (65535, 900_000)], false),
            0,
            true,
            &mut out,
        );
        tx.flushed();
        frame_packed(&tx, packed(&[(100, 0)], true), 0, true, &mut out);
        assert_eq!(
            sent(&out).len(),
            2,
            "a delta frame after the flush went out"
        );
        frame_packed(
            &tx,
            packed(&[(101, 3000), (102, 3000)], false),
            33_333_333,
            true,
            &mut out,
        );
        let s = sent(&out);
        assert_eq!(
            s.iter().map(|p| p.0).collect::<Vec<_>>(),
            [65534, 65535, 0, 1]
        );
        assert!(s[2].1.wrapping_sub(s[1].1) >= 1 && s[2].1.wrapping_sub(s[1].1) < 90_000);
        assert_eq!(s[3].1, s[2].1);
        assert_eq!(tx.counters.lock().unwrap().dropped, 1);
    }

    #[test]
    fn packets_go_out_as_the_payloader_numbered_them() {
        gst::init().unwrap();
        let tx = sender(true);
        let mut out = Vec::new();
        frame(&tx, &[(10, 1000), (11, 4000), (12, 7000)], &mut out);
        assert_eq!(sent(&out), [(10, 1000), (11, 4000), (12, 7000)]);
    }

    #[test]
    fn a_flush_continues_sequence_numbers_and_timestamps() {
        gst::init().unwrap();
        let tx = sender(true);
        let mut out = Vec::new();
        frame(&tx, &[(65534, 900_000), (65535, 903_000)], &mut out);
        tx.flushed();
        // The payloader starts over after a flushing seek: back to earlier numbers.
        frame(&tx, &[(100, 0), (101, 3000), (102, 6000)], &mut out);
        let s = sent(&out);
        assert_eq!(s.len(), 5);
        let seqs: Vec<u16> = s.iter().map(|p| p.0).collect();
        assert_eq!(seqs, [65534, 65535, 0, 1, 2]);
        // Forward from the last timestamp sent (by at least a tick), then the payloader's own
        // spacing.
        let (before, after) = (s[1].1, s[2].1);
        assert!(after.wrapping_sub(before) >= 1 && after.wrapping_sub(before) < 90_000);
        assert_eq!(s[3].1.wrapping_sub(s[2].1), 3000);
        assert_eq!(s[4].1.wrapping_sub(s[3].1), 3000);
        // A second flush continues from the shifted numbers.
        tx.flushed();
        frame(&tx, &[(7, 50)], &mut out);
        assert_eq!(sent(&out)[5].0, 3);
    }

    #[test]
    fn frames_a_flush_kept_from_the_queue_leave_no_gap_in_sequence_numbers() {
        gst::init().unwrap();
        let tx = sender(true);
        let mut out = Vec::new();
        frame(&tx, &[(10, 1000), (11, 1000)], &mut out);
        // Framed, then flush-start came before the last two were queued.
        let (units, resume) = batch(
            &tx,
            [12, 13, 14].map(|s| Media::Rtp(packet(s, 4000))).into(),
        );
        assert_eq!(tx.counters.lock().unwrap().packets, 5);
        tx.not_queued(&units, 1, resume);
        assert_eq!(tx.counters.lock().unwrap().packets, 3);
        tx.flushed();
        frame(&tx, &[(500, 0)], &mut out);
        assert_eq!(sent(&out).last().unwrap().0, 13, "continues after 12");

        // Nothing of a packed access unit queued: back to what went out before it.
        let (units, resume) = batch(&tx, vec![packed(&[(501, 3000), (502, 3000)], false)]);
        tx.not_queued(&units, 0, resume);
        assert_eq!(tx.counters.lock().unwrap().packets, 4);
        tx.flushed();
        frame(&tx, &[(9, 0)], &mut out);
        assert_eq!(sent(&out).last().unwrap().0, 14);

        // A packed unit that did go out is where the next one continues from (9 went out as 14:
        // 10 and 11 go out as 15 and 16).
        let (mut units, resume) = batch(&tx, vec![packed(&[(10, 3000), (11, 3000)], false)]);
        units.push(OutFrame::rtp(packet(12, 3000), 0, None).unwrap());
        tx.not_queued(&units, 1, resume);
        tx.flushed();
        frame(&tx, &[(1, 0)], &mut out);
        assert_eq!(
            sent(&out).last().unwrap().0,
            17,
            "after the packed unit's 15, 16"
        );
    }

    #[test]
    fn video_after_a_flush_starts_on_a_keyframe() {
        gst::init().unwrap();
        let tx = sender(true);
        let mut out = Vec::new();
        frame(&tx, &[(1, 0)], &mut out);
        tx.flushed();
        let mut delta = packet(2, 3000);
        delta
            .get_mut()
            .unwrap()
            .set_flags(gst::BufferFlags::DELTA_UNIT);
        tx.frames([(Media::Rtp(delta), Some(0))], &ntp, None, true, &mut out)
            .unwrap();
        assert_eq!(
            sent(&out).len(),
            1,
            "a delta frame after the flush went out"
        );
        frame(&tx, &[(3, 6000)], &mut out);
        assert_eq!(sent(&out).len(), 2);
        assert_eq!(sent(&out)[1].0, 2);
    }

    #[test]
    fn a_reference_clock_stamps_reports_with_its_own_time() {
        // A PTP clock (TAI since 1970) at 1.7e9 s; reports say that time in the NTP era,
        // whatever ntp-time-source asks for.
        let base = 1_700_000_000_000_000_000u64;
        for source in [NtpSource::Ntp, NtpSource::RunningTime] {
            let m = NtpMapper {
                source,
                clock_now: Some(base + 9_000_000_000),
                base_time: base,
                wall_now: SystemTime::now(),
                reference_era: Some(rtcp::NTP_UNIX_OFFSET * 1_000_000_000),
            };
            let ntp = m.ntp_at(5_500_000_000);
            assert_eq!(ntp >> 32, 1_700_000_005 + rtcp::NTP_UNIX_OFFSET);
            assert_eq!(ntp & 0xffff_ffff, 1 << 31, "half a second");
        }
    }

    #[test]
    fn the_anchor_is_the_payloaders_own_timestamp_after_a_flush() {
        gst::init().unwrap();
        let tx = sender(true);
        let mut out = Vec::new();
        frame(&tx, &[(1, 900_000)], &mut out);
        assert_eq!(tx.anchor(), Some((900_000, 900_000 * 11_111)));
        tx.flushed();
        // Sent shifted, but a new connection starts unshifted: the anchor says what it stamps.
        frame(&tx, &[(2, 3000)], &mut out);
        assert_ne!(sent(&out)[1].1, 3000);
        assert_eq!(tx.anchor(), Some((3000, 3000 * 11_111)));
    }
}
