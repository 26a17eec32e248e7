//! H.264 (RFC 6184, packetization-mode 1): single NAL unit packets and FU-A, with SPS/PPS
//! sent again before an IDR slice when the last ones are a second old or more (rtph264pay's
//! `config-interval=1`). No STAP-A: rtph264pay does not aggregate by default.

use super::nal::{self, Bits, ParamSets};
use super::rtp::{Packets, Rtp, HEADER};
use super::{framerate_attr, PacketizeError};

const IDR: u8 = 5;
const SPS: u8 = 7;
const PPS: u8 = 8;
const FU_A: u8 = 28;

pub(crate) struct H264 {
    pub(super) rtp: Rtp,
    /// Length prefix size (avc), or None for byte-stream.
    len_size: Option<usize>,
    sps: ParamSets,
    pps: ParamSets,
    /// profile_idc, constraint flags, level_idc from avcC (byte-stream: none).
    profile_level: Option<[u8; 3]>,
    /// Running time the parameter sets last went out (or were seen in-band).
    last_params: Option<u64>,
    framerate: Option<(i32, i32)>,
    version: u32,
}

fn sps_id(nal: &[u8]) -> Option<u32> {
    let mut b = Bits::new(nal.get(1..)?);
    b.skip(24)?;
    b.ue()
}

fn pps_id(nal: &[u8]) -> Option<u32> {
    Bits::new(nal.get(1..)?).ue()
}

impl H264 {
    pub(super) fn byte_stream(rtp: Rtp) -> H264 {
        H264 {
            rtp,
            len_size: None,
            sps: ParamSets::default(),
            pps: ParamSets::default(),
            profile_level: None,
            last_params: None,
            framerate: None,
            version: 0,
        }
    }

    /// From an avcC record (ISO/IEC 14496-15).
    pub(super) fn avc(rtp: Rtp, avcc: &[u8]) -> Result<H264, PacketizeError> {
        let bad = |why: &str| Err(PacketizeError::Config(format!("avcC codec_data: {why}")));
        if avcc.len() < 7 {
            return bad("shorter than 7 bytes");
        }
        if avcc[0] != 1 {
            return bad("version is not 1");
        }
        let mut p = H264::byte_stream(rtp);
        p.profile_level = Some([avcc[1], avcc[2], avcc[3]]);
        p.len_size = Some((avcc[4] & 3) as usize + 1);
        let mut at = 6;
        let take = |at: &mut usize| -> Option<Vec<u8>> {
            let len = u16::from_be_bytes([*avcc.get(*at)?, *avcc.get(*at + 1)?]) as usize;
            let nal = avcc.get(*at + 2..*at + 2 + len)?.to_vec();
            *at += 2 + len;
            Some(nal)
        };
        for _ in 0..(avcc[5] & 0x1f) {
            let Some(nal) = take(&mut at) else {
                return bad("SPS runs past the end");
            };
            p.add_param(&nal);
        }
        let Some(&n_pps) = avcc.get(at) else {
            return bad("no PPS count");
        };
        at += 1;
        for _ in 0..n_pps {
            let Some(nal) = take(&mut at) else {
                return bad("PPS runs past the end");
            };
            p.add_param(&nal);
        }
        Ok(p)
    }

    pub(super) fn with_framerate(mut self, f: Option<(i32, i32)>) -> Self {
        self.framerate = f;
        self
    }

    pub(super) fn params_version(&self) -> u32 {
        self.version
    }

    /// Files an SPS or PPS by its id; true if the lists changed.
    fn add_param(&mut self, nal: &[u8]) -> bool {
        let changed = match nal.first().map(|h| h & 0x1f) {
            Some(SPS) => sps_id(nal).is_some_and(|id| self.sps.add(id, nal)),
            Some(PPS) => pps_id(nal).is_some_and(|id| self.pps.add(id, nal)),
            _ => false,
        };
        if changed {
            self.version += 1;
        }
        changed
    }

    pub(super) fn rtp_caps(&self) -> gst::Caps {
        let mut s = gst::Structure::new_empty("application/x-rtp");
        s.set("media", "video");
        s.set("clock-rate", 90_000i32);
        s.set("encoding-name", "H264");
        // Before any parameter set is known the payloader says only that much.
        if !(self.sps.is_empty() && self.pps.is_empty()) {
            s.set("packetization-mode", "1");
            let mut sets = self.sps.base64();
            let pps = self.pps.base64();
            if !sets.is_empty() && !pps.is_empty() {
                sets.push(',');
            }
            sets.push_str(&pps);
            s.set("sprop-parameter-sets", sets);
            if let Some(pl) = self.profile_level.filter(|pl| pl != &[0, 0, 0]) {
                s.set(
                    "profile-level-id",
                    format!("{:02x}{:02x}{:02x}", pl[0], pl[1], pl[2]),
                );
                s.set("profile", profile_name(pl[0], pl[1]));
            }
        }
        self.rtp.caps_numbering(&mut s);
        if let Some((n, d)) = self.framerate {
            s.set("a-framerate", framerate_attr(n, d));
        }
        gst::Caps::builder_full().structure(s).build()
    }

    pub(super) fn push(
        &mut self,
        au: &[u8],
        running: Option<u64>,
        out: &mut Packets,
    ) -> Result<(), PacketizeError> {
        let ts = self.rtp.timestamp(running);
        match self.len_size {
            Some(n) => {
                for (nal, last) in nal::length_prefixed_units(au, n) {
                    self.payload_nal(nal, last, running, ts, out);
                }
            }
            None => {
                let units = nal::byte_stream_units(au, 1);
                // Parameter sets first, for the whole access unit: in-band ones count as sent.
                for (_, raw) in &units {
                    if matches!(raw.first().map(|h| h & 0x1f), Some(SPS | PPS)) {
                        self.add_param(nal::trim_zeros(raw));
                        if running.is_some() {
                            self.last_params = running;
                        }
                    }
                }
                let n = units.len();
                for (i, (unit, _)) in units.into_iter().enumerate() {
                    self.payload_nal(unit, i + 1 == n, running, ts, out);
                }
            }
        }
        Ok(())
    }

    fn payload_nal(
        &mut self,
        nal: &[u8],
        end_of_au: bool,
        running: Option<u64>,
        ts: u32,
        out: &mut Packets,
    ) {
        let Some(&head) = nal.first() else {
            return;
        };
        let kind = head & 0x1f;
        if (24..=27).contains(&kind) {
            // Aggregation types are not NAL units a stream may carry.
            return;
        }
        if kind == IDR && nal::params_due(self.last_params, running) {
            for set in self.sps.iter().chain(self.pps.iter()) {
                fragment(&mut self.rtp, set, false, ts, out);
            }
            if running.is_some() {
                self.last_params = running;
            }
        }
        fragment(&mut self.rtp, nal, end_of_au, ts, out);
    }
}

/// One NAL unit: a single packet if it fits, else FU-A fragments.
fn fragment(rtp: &mut Rtp, nal: &[u8], end_of_au: bool, ts: u32, out: &mut Packets) {
    if nal.len() + HEADER <= rtp.cfg.mtu as usize {
        rtp.packet(out, end_of_au, ts, &[nal]);
        return;
    }
    let max = rtp.max_payload().saturating_sub(2).max(1);
    let indicator = (nal[0] & 0x60) | FU_A;
    let mut pos = 1;
    while pos < nal.len() {
        let left = nal.len() - pos;
        let n = left.min(max);
        let last = left <= max;
        let header = (u8::from(pos == 1) << 7) | (u8::from(last) << 6) | (nal[0] & 0x1f);
        rtp.packet(
            out,
            last && end_of_au,
            ts,
            &[&[indicator, header], &nal[pos..pos + n]],
        );
        pos += n;
    }
}

/// The profile name GStreamer's codec utils give profile_idc and the constraint flags.
fn profile_name(idc: u8, flags: u8) -> Option<&'static str> {
    let csf1 = flags & 0x40 != 0;
    let csf3 = flags & 0x10 != 0;
    let csf4 = flags & 0x08 != 0;
    let csf5 = flags & 0x04 != 0;
    Some(match idc {
        66 if csf1 => "constrained-baseline",
        66 => "baseline",
        77 => "main",
        88 => "extended",
        100 if csf4 && csf5 => "constrained-high",
        100 if csf4 => "progressive-high",
        100 => "high",
        110 if csf3 => "high-10-intra",
        110 if csf4 => "progressive-high-10",
        110 => "high-10",
        122 if csf3 => "high-4:2:2-intra",
        122 => "high-4:2:2",
        244 if csf3 => "high-4:4:4-intra",
        244 => "high-4:4:4",
        44 => "cavlc-4:4:4-intra",
        118 => "multiview-high",
        128 => "stereo-high",
        83 if csf5 => "scalable-constrained-baseline",
        83 => "scalable-baseline",
        86 if csf3 => "scalable-high-intra",
        86 if csf5 => "scalable-constrained-high",
        86 => "scalable-high",
        _ => return None,
    })
}
