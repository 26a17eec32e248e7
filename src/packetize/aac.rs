//! AAC in MPEG4-GENERIC, AAC-hbr mode (RFC 3640): one access unit per packet behind a single
//! 16-bit AU header (13-bit size, 3-bit index), fragmented across packets when it does not fit
//! (every fragment says the whole AU's size; the marker ends it), as rtpmp4gpay does.

use super::rtp::{Packets, Rtp, RtpConfig};
use super::PacketizeError;

const RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

pub(crate) struct Aac {
    pub(super) rtp: Rtp,
    object_type: u8,
    channels: u8,
    config: Vec<u8>,
}

impl Aac {
    /// From the AudioSpecificConfig in the caps' codec_data.
    pub(super) fn new(cfg: RtpConfig, asc: &[u8]) -> Result<Aac, PacketizeError> {
        let bad = |why: String| Err(PacketizeError::Config(format!("AAC codec_data: {why}")));
        let mut b = super::nal::Bits::new(asc);
        let (Some(object_type), Some(index), Some(channels)) = (b.bits(5), b.bits(4), b.bits(4))
        else {
            return bad("too short".into());
        };
        if object_type == 0 {
            return bad("object type 0".into());
        }
        let rate = match index {
            15 => match b.bits(24) {
                Some(r) => r,
                None => return bad("too short for an explicit rate".into()),
            },
            i if (i as usize) < RATES.len() => RATES[i as usize],
            i => return bad(format!("sampling frequency index {i}")),
        };
        if channels > 7 {
            return bad(format!("channel configuration {channels}"));
        }
        if rate == 0 {
            return bad("sampling rate 0".into());
        }
        Ok(Aac {
            rtp: Rtp::new(cfg, rate),
            object_type: object_type as u8,
            channels: channels as u8,
            config: asc.to_vec(),
        })
    }

    pub(super) fn rtp_caps(&self) -> gst::Caps {
        let mut s = gst::Structure::new_empty("application/x-rtp");
        s.set("media", "audio");
        s.set("clock-rate", self.rtp.clock_rate as i32);
        s.set("encoding-name", "MPEG4-GENERIC");
        s.set("encoding-params", self.channels.to_string());
        s.set("streamtype", "5");
        s.set("profile-level-id", self.object_type.to_string());
        s.set("mode", "AAC-hbr");
        let hex: String = self.config.iter().map(|b| format!("{b:02x}")).collect();
        s.set("config", hex);
        s.set("sizelength", "13");
        s.set("indexlength", "3");
        s.set("indexdeltalength", "3");
        self.rtp.caps_numbering(&mut s);
        gst::Caps::builder_full().structure(s).build()
    }

    pub(super) fn push(&mut self, au: &[u8], running: Option<u64>, out: &mut Packets) {
        let ts = self.rtp.timestamp(running);
        let total = au.len();
        // Room for the 2-byte AU-headers-length and the 2-byte AU header.
        let max = self.rtp.max_payload().saturating_sub(4).max(1);
        let header = [
            0x00,
            0x10,
            ((total & 0x1fe0) >> 5) as u8,
            ((total & 0x1f) << 3) as u8,
        ];
        let mut rest = au;
        while !rest.is_empty() {
            let n = rest.len().min(max);
            self.rtp
                .packet(out, rest.len() <= max, ts, &[&header, &rest[..n]]);
            rest = &rest[n..];
        }
    }
}
