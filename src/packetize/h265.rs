//! H.265 (RFC 7798): single NAL unit packets and FU, with VPS/SPS/PPS sent again before the
//! first slice of an access unit when the last ones are a second old or more (rtph265pay's
//! `config-interval=1`, which checks at every slice type it lists, not only at IRAP pictures).
//! No aggregation packets: rtph265pay does not aggregate by default.

use super::nal::{self, Bits, ParamSets};
use super::rtp::{Packets, Rtp, HEADER};
use super::{framerate_attr, PacketizeError};

const VPS: u8 = 32;
const SPS: u8 = 33;
const PPS: u8 = 34;
const FU: u8 = 49;

/// The slice types before which rtph265pay looks at the parameter-set interval (RADL is not
/// among them).
fn checks_interval(kind: u8) -> bool {
    matches!(kind, 0..=5 | 8 | 9 | 16..=21)
}

pub(crate) struct H265 {
    pub(super) rtp: Rtp,
    /// Length prefix size (hvc1), or None for byte-stream.
    len_size: Option<usize>,
    vps: ParamSets,
    sps: ParamSets,
    pps: ParamSets,
    last_params: Option<u64>,
    framerate: Option<(i32, i32)>,
    version: u32,
}

fn kind(nal: &[u8]) -> Option<u8> {
    nal.first().map(|h| (h >> 1) & 0x3f)
}

fn vps_id(nal: &[u8]) -> Option<u32> {
    Bits::new(nal.get(2..)?).bits(4)
}

fn sps_id(nal: &[u8]) -> Option<u32> {
    let mut b = Bits::new(nal.get(2..)?);
    b.skip(4)?;
    let sub_layers = b.bits(3)? as usize;
    b.skip(1)?;
    // profile_tier_level: the general profile and level, then what each sub-layer has.
    b.skip(88 + 8)?;
    let mut present = Vec::with_capacity(sub_layers);
    for _ in 0..sub_layers {
        present.push((b.bits(1)? == 1, b.bits(1)? == 1));
    }
    if sub_layers > 0 {
        b.skip(2 * (8 - sub_layers))?;
    }
    for (profile, level) in present {
        if profile {
            b.skip(88)?;
        }
        if level {
            b.skip(8)?;
        }
    }
    b.ue()
}

fn pps_id(nal: &[u8]) -> Option<u32> {
    Bits::new(nal.get(2..)?).ue()
}

impl H265 {
    pub(super) fn byte_stream(rtp: Rtp) -> H265 {
        H265 {
            rtp,
            len_size: None,
            vps: ParamSets::default(),
            sps: ParamSets::default(),
            pps: ParamSets::default(),
            last_params: None,
            framerate: None,
            version: 0,
        }
    }

    /// From an hvcC record (ISO/IEC 14496-15), read as rtph265pay reads it: a VPS, an SPS and
    /// a PPS array, in that order, each only if it comes next.
    pub(super) fn hvcc(rtp: Rtp, hvcc: &[u8]) -> Result<H265, PacketizeError> {
        let bad = |why: &str| Err(PacketizeError::Config(format!("hvcC codec_data: {why}")));
        if hvcc.len() < 23 {
            return bad("shorter than 23 bytes");
        }
        if hvcc[0] != 1 {
            return bad("version is not 1");
        }
        let mut p = H265::byte_stream(rtp);
        p.len_size = Some((hvcc[21] & 3) as usize + 1);
        let mut arrays = hvcc[22];
        let mut at = 23;
        for expected in [VPS, SPS, PPS] {
            if arrays == 0 {
                break;
            }
            arrays -= 1;
            if hvcc.get(at).map(|t| t & 0x3f) != Some(expected) {
                continue;
            }
            let Some(count) = hvcc.get(at + 1..at + 3) else {
                return bad("array runs past the end");
            };
            let count = u16::from_be_bytes([count[0], count[1]]);
            at += 3;
            for _ in 0..count {
                let Some(len) = hvcc.get(at..at + 2) else {
                    return bad("parameter set runs past the end");
                };
                let len = u16::from_be_bytes([len[0], len[1]]) as usize;
                let Some(set) = hvcc.get(at + 2..at + 2 + len) else {
                    return bad("parameter set runs past the end");
                };
                p.add_param(set);
                at += 2 + len;
            }
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

    fn add_param(&mut self, nal: &[u8]) -> bool {
        let changed = match kind(nal) {
            Some(VPS) => vps_id(nal).is_some_and(|id| self.vps.add(id, nal)),
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
        s.set("encoding-name", "H265");
        if !(self.vps.is_empty() && self.sps.is_empty() && self.pps.is_empty()) {
            s.set("sprop-vps", self.vps.base64());
            s.set("sprop-sps", self.sps.base64());
            s.set("sprop-pps", self.pps.base64());
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
        let units: Vec<(&[u8], bool)> = match self.len_size {
            Some(n) => nal::length_prefixed_units(au, n),
            None => {
                let units = nal::byte_stream_units(au, 2);
                for (_, raw) in &units {
                    if matches!(kind(raw), Some(VPS | SPS | PPS)) {
                        self.add_param(nal::trim_zeros(raw));
                        if running.is_some() {
                            self.last_params = running;
                        }
                    }
                }
                let n = units.len();
                units
                    .into_iter()
                    .enumerate()
                    .map(|(i, (u, _))| (u, i + 1 == n))
                    .collect()
            }
        };
        let mut sent_params = false;
        for (nal, last) in units {
            // A NAL unit needs its 2-byte header.
            let Some(k) = kind(nal).filter(|_| nal.len() >= 2) else {
                continue;
            };
            if !sent_params && checks_interval(k) && nal::params_due(self.last_params, running) {
                sent_params = true;
                let sets = self
                    .vps
                    .iter()
                    .chain(self.sps.iter())
                    .chain(self.pps.iter());
                for set in sets.filter(|s| s.len() >= 2) {
                    fragment(&mut self.rtp, set, false, ts, out);
                }
                if running.is_some() {
                    self.last_params = running;
                }
            }
            fragment(&mut self.rtp, nal, last, ts, out);
        }
        Ok(())
    }
}

/// One NAL unit: a single packet if it fits (strictly under the mtu, as rtph265pay decides),
/// else FU fragments.
fn fragment(rtp: &mut Rtp, nal: &[u8], marker: bool, ts: u32, out: &mut Packets) {
    if nal.len() + HEADER < rtp.cfg.mtu as usize {
        rtp.packet(out, marker, ts, &[nal]);
        return;
    }
    let max = rtp.max_payload().saturating_sub(3).max(1);
    let head = [(nal[0] & 0x81) | (FU << 1), nal[1]];
    let k = (nal[0] >> 1) & 0x3f;
    let mut pos = 2;
    while pos < nal.len() {
        let left = nal.len() - pos;
        let n = left.min(max);
        let last = left <= max;
        let fu = (u8::from(pos == 2) << 7) | (u8::from(last) << 6) | k;
        rtp.packet(
            out,
            last && marker,
            ts,
            &[&[head[0], head[1], fu], &nal[pos..pos + n]],
        );
        pos += n;
    }
}
