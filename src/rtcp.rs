//! RTCP for a sender (RFC 3550): sender reports, SDES CNAME, BYE, and the report blocks a
//! server sends back. No I/O; also the RTP header facts the reports need.

use std::time::Duration;

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
pub(crate) const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A 64-bit NTP timestamp from a duration since its epoch.
pub(crate) fn ntp_timestamp(since_epoch: Duration) -> u64 {
    let secs = since_epoch.as_secs();
    let frac = ((since_epoch.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits of an NTP timestamp (LSR and RTT arithmetic).
pub(crate) fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// What a sender report states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SenderInfo {
    pub(crate) ssrc: u32,
    pub(crate) ntp: u64,
    pub(crate) rtp_timestamp: u32,
    pub(crate) packets: u32,
    pub(crate) octets: u32,
}

fn header(out: &mut Vec<u8>, count: u8, pt: u8, words_after: usize) {
    out.push(0x80 | (count & 0x1f));
    out.push(pt);
    out.extend_from_slice(&(words_after as u16).to_be_bytes());
}

/// SR with no report blocks (we receive nothing).
fn write_sender_report(out: &mut Vec<u8>, i: &SenderInfo) {
    header(out, 0, 200, 6);
    out.extend_from_slice(&i.ssrc.to_be_bytes());
    out.extend_from_slice(&i.ntp.to_be_bytes());
    out.extend_from_slice(&i.rtp_timestamp.to_be_bytes());
    out.extend_from_slice(&i.packets.to_be_bytes());
    out.extend_from_slice(&i.octets.to_be_bytes());
}

/// SDES with one chunk holding the CNAME item.
fn write_sdes_cname(out: &mut Vec<u8>, ssrc: u32, cname: &str) {
    let name = &cname.as_bytes()[..cname.len().min(255)];
    // ssrc + type + len + text + END, padded to 32 bits.
    let chunk = 4 + 2 + name.len() + 1;
    let padded = chunk.div_ceil(4) * 4;
    header(out, 1, 202, padded / 4);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(1);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend(std::iter::repeat_n(0u8, padded - chunk + 1));
}

fn write_bye(out: &mut Vec<u8>, ssrc: u32) {
    header(out, 1, 203, 1);
    out.extend_from_slice(&ssrc.to_be_bytes());
}

/// The compound packet sent periodically: SR + SDES CNAME, and BYE at the end.
pub(crate) fn compound(info: &SenderInfo, cname: &str, bye: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_sender_report(&mut out, info);
    write_sdes_cname(&mut out, info.ssrc, cname);
    if bye {
        write_bye(&mut out, info.ssrc);
    }
    out
}

/// A reception report block about one of our sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReportBlock {
    reporter: u32,
    pub(crate) ssrc: u32,
    pub(crate) fraction_lost: u8,
    pub(crate) cumulative_lost: i32,
    highest_seq: u32,
    pub(crate) jitter: u32,
    pub(crate) lsr: u32,
    pub(crate) dlsr: u32,
}

impl ReportBlock {
    /// Round trip from LSR/DLSR and the middle 32 bits of the arrival time (RFC 3550 6.4.1).
    pub(crate) fn rtt(&self, arrival_middle: u32) -> Option<Duration> {
        if self.lsr == 0 {
            return None;
        }
        let rtt = arrival_middle
            .wrapping_sub(self.lsr)
            .wrapping_sub(self.dlsr);
        // More than an hour means clocks or fields are off; say nothing rather than nonsense.
        if rtt > 3600 << 16 {
            return None;
        }
        Some(Duration::from_nanos((rtt as u64 * 1_000_000_000) >> 16))
    }
}

/// Every report block in a compound RTCP packet (from RRs and SRs). Malformed packets end the
/// walk; what was read before is kept.
pub(crate) fn report_blocks(mut data: &[u8]) -> Vec<ReportBlock> {
    let mut out = Vec::new();
    while data.len() >= 8 {
        let count = (data[0] & 0x1f) as usize;
        let pt = data[1];
        let len = (u16::from_be_bytes([data[2], data[3]]) as usize + 1) * 4;
        if data[0] >> 6 != 2 || len > data.len() {
            break;
        }
        let pkt = &data[..len];
        let reporter = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let first = match pt {
            200 => Some(28),
            201 => Some(8),
            _ => None,
        };
        if let Some(mut off) = first {
            for _ in 0..count {
                if off + 24 > pkt.len() {
                    break;
                }
                let b = &pkt[off..off + 24];
                let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                // 24-bit signed cumulative loss.
                let cum = ((be(4) & 0x00ff_ffff) << 8) as i32 >> 8;
                out.push(ReportBlock {
                    reporter,
                    ssrc: be(0),
                    fraction_lost: b[4],
                    cumulative_lost: cum,
                    highest_seq: be(8),
                    jitter: be(12),
                    lsr: be(16),
                    dlsr: be(20),
                });
                off += 24;
            }
        }
        data = &data[len..];
    }
    out
}

/// The fixed-header facts of an RTP packet that reports need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RtpFacts {
    pub(crate) ssrc: u32,
    pub(crate) timestamp: u32,
    pub(crate) seq: u16,
    /// Payload octets: without header, CSRCs, extension or padding.
    pub(crate) payload_len: usize,
    /// Where the payload starts.
    pub(crate) header_len: usize,
    /// Marker bit: for video, the last packet of a frame.
    pub(crate) marker: bool,
}

/// Reads what is needed from the start and end of a packet through `read(offset, buf)`, so a
/// packet spread over several memories is never copied whole.
pub(crate) fn rtp_facts(len: usize, read: impl Fn(usize, &mut [u8]) -> bool) -> Option<RtpFacts> {
    let mut h = [0u8; 12];
    if len < 12 || !read(0, &mut h) || h[0] >> 6 != 2 {
        return None;
    }
    let cc = (h[0] & 0x0f) as usize;
    let mut head = 12 + 4 * cc;
    if h[0] & 0x10 != 0 {
        let mut ext = [0u8; 4];
        if !read(head, &mut ext) {
            return None;
        }
        head += 4 + 4 * u16::from_be_bytes([ext[2], ext[3]]) as usize;
    }
    let mut pad = 0usize;
    if h[0] & 0x20 != 0 {
        let mut last = [0u8; 1];
        if !read(len - 1, &mut last) {
            return None;
        }
        pad = last[0] as usize;
    }
    Some(RtpFacts {
        ssrc: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        timestamp: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        seq: u16::from_be_bytes([h[2], h[3]]),
        payload_len: len.checked_sub(head + pad)?,
        header_len: head,
        marker: h[1] & 0x80 != 0,
    })
}

/// The RTP timestamp a track's clock reads at running time `at`, from the last packet's
/// (RTP timestamp, running time): what an SR sent at `at` must carry.
pub(crate) fn rtp_at(last_rtp: u32, last_running: u64, at: u64, clock_rate: u32) -> u32 {
    let diff = at as i128 - last_running as i128;
    let ticks = diff * clock_rate as i128 / 1_000_000_000;
    last_rtp.wrapping_add(ticks as i64 as u32)
}

/// Next report interval: the base randomised over [0.5, 1.5] (RFC 3550 6.3.1).
pub(crate) fn jittered(base: Duration, unit_random: f64) -> Duration {
    base.mul_f64(0.5 + unit_random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sr_sdes_bye_layout() {
        let i = SenderInfo {
            ssrc: 0x1122_3344,
            ntp: 0xAABB_CCDD_0102_0304,
            rtp_timestamp: 90_000,
            packets: 7,
            octets: 7000,
        };
        let c = compound(&i, "rtspannounce@host", true);
        // SR: V=2, RC=0, PT=200, length 6 (28 bytes).
        assert_eq!(&c[..4], &[0x80, 200, 0, 6]);
        assert_eq!(&c[4..8], &0x1122_3344u32.to_be_bytes());
        assert_eq!(&c[8..16], &0xAABB_CCDD_0102_0304u64.to_be_bytes());
        assert_eq!(&c[16..20], &90_000u32.to_be_bytes());
        assert_eq!(&c[20..24], &7u32.to_be_bytes());
        assert_eq!(&c[24..28], &7000u32.to_be_bytes());
        // SDES: 4 + 4 + 2 + 17 + 1 = 28 bytes = 7 words, length field 6.
        assert_eq!(&c[28..32], &[0x81, 202, 0, 6]);
        assert_eq!(c[36], 1);
        assert_eq!(c[37], 17);
        assert_eq!(&c[38..55], b"rtspannounce@host");
        assert_eq!(c[55], 0);
        // BYE.
        assert_eq!(&c[56..60], &[0x81, 203, 0, 1]);
        assert_eq!(c.len(), 64);
        assert_eq!(c.len() % 4, 0);
        // Every packet of the compound walks cleanly (no report blocks in an SR with RC=0).
        assert!(report_blocks(&c).is_empty());
    }

    #[test]
    fn ntp_conversion() {
        assert_eq!(
            ntp_timestamp(Duration::from_millis(1500)),
            (1 << 32) | (1 << 31)
        );
        let t = ntp_timestamp(Duration::from_secs(NTP_UNIX_OFFSET));
        assert_eq!(t >> 32, NTP_UNIX_OFFSET);
        assert_eq!(ntp_middle(0x0001_0002_0003_0004), 0x0002_0003);
    }

    #[test]
    fn rtp_mapping_90k_48k_44k1_with_offsets() {
        // Video at 90 kHz: 1 s after a packet stamped 1000 at running time 2 s.
        assert_eq!(rtp_at(1000, 2_000_000_000, 3_000_000_000, 90_000), 91_000);
        // Before the last packet, and across the 32-bit wrap.
        assert_eq!(
            rtp_at(100, 1_000_000_000, 500_000_000, 90_000),
            100u32.wrapping_sub(45_000)
        );
        assert_eq!(rtp_at(u32::MAX - 10, 0, 1_000_000_000, 48_000), 48_000 - 11);
        // 44.1 kHz: 10 ms = 441 ticks.
        assert_eq!(
            rtp_at(0x8000_0000, 5_000_000_000, 5_010_000_000, 44_100),
            0x8000_0000 + 441
        );
    }

    #[test]
    fn rtp_header_facts() {
        let pkt = |b0: u8, extra: &[u8], payload: usize, pad: u8| {
            let mut p = vec![b0, 96, 0, 5, 0, 0, 0, 9, 0xde, 0xad, 0xbe, 0xef];
            p.extend_from_slice(extra);
            p.extend(std::iter::repeat_n(7u8, payload));
            if pad > 0 {
                p.extend(std::iter::repeat_n(0u8, pad as usize - 1));
                p.push(pad);
            }
            p
        };
        let read = |p: &Vec<u8>| {
            let p = p.clone();
            move |off: usize, buf: &mut [u8]| {
                if off + buf.len() > p.len() {
                    return false;
                }
                buf.copy_from_slice(&p[off..off + buf.len()]);
                true
            }
        };
        let p = pkt(0x80, &[], 100, 0);
        let f = rtp_facts(p.len(), read(&p)).unwrap();
        assert_eq!(
            (f.ssrc, f.timestamp, f.seq, f.payload_len),
            (0xdeadbeef, 9, 5, 100)
        );
        // One CSRC, an extension of one word, 4 bytes of padding.
        let p = pkt(
            0x80 | 0x10 | 0x20 | 1,
            &[0, 0, 0, 1, 0xbe, 0xde, 0, 1, 1, 2, 3, 4],
            50,
            4,
        );
        let f = rtp_facts(p.len(), read(&p)).unwrap();
        assert_eq!(f.payload_len, 50);
        assert!(rtp_facts(5, read(&vec![0x80; 5])).is_none());
        // Padding longer than the packet (the count is the header's last byte, 0xef).
        let p = pkt(0x80 | 0x20, &[], 0, 0);
        assert!(rtp_facts(p.len(), read(&p)).is_none());
    }

    #[test]
    fn receiver_report_and_rtt() {
        // RR from 0x01020304 about our SSRC 0xdeadbeef: 10% lost (25/256), 3 lost, jitter 40.
        let mut rr = vec![0x81, 201, 0, 7, 1, 2, 3, 4];
        rr.extend_from_slice(&0xdeadbeefu32.to_be_bytes());
        rr.extend_from_slice(&[25, 0, 0, 3]);
        rr.extend_from_slice(&1000u32.to_be_bytes());
        rr.extend_from_slice(&40u32.to_be_bytes());
        let lsr = 0x0001_8000u32; // 1.5 s
        rr.extend_from_slice(&lsr.to_be_bytes());
        rr.extend_from_slice(&(1u32 << 15).to_be_bytes()); // DLSR 0.5 s
                                                           // Followed by an SDES the walk skips.
        let mut c = rr.clone();
        write_sdes_cname(&mut c, 0x01020304, "srv");
        let blocks = report_blocks(&c);
        assert_eq!(blocks.len(), 1);
        let b = blocks[0];
        assert_eq!(b.reporter, 0x01020304);
        assert_eq!(b.ssrc, 0xdeadbeef);
        assert_eq!(b.fraction_lost, 25);
        assert_eq!(b.cumulative_lost, 3);
        assert_eq!(b.jitter, 40);
        // Arrival at 2.25 s: RTT = 2.25 - 1.5 - 0.5 = 0.25 s.
        let rtt = b.rtt(0x0002_4000).unwrap();
        assert_eq!(rtt, Duration::from_millis(250));
        // Negative cumulative loss (duplicates) is sign-extended.
        let mut neg = rr.clone();
        neg[13..16].copy_from_slice(&[0xff, 0xff, 0xfe]);
        assert_eq!(report_blocks(&neg)[0].cumulative_lost, -2);
        // No LSR yet: no RTT.
        let mut nolsr = b;
        nolsr.lsr = 0;
        assert_eq!(nolsr.rtt(5), None);
        // Truncated input yields nothing, without panicking.
        assert!(report_blocks(&rr[..20]).is_empty());
    }

    #[test]
    fn interval_jitter_bounds() {
        let base = Duration::from_secs(5);
        assert_eq!(jittered(base, 0.0), Duration::from_millis(2500));
        assert_eq!(jittered(base, 1.0), Duration::from_millis(7500));
    }
}
