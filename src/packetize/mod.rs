//! Built-in RTP packetizers for H.264 (RFC 6184), H.265 (RFC 7798) and AAC (RFC 3640), without
//! I/O and without a GstBuffer per packet: an access unit goes in, its packets come out back to
//! back in one byte vector, each behind room for the 4-byte interleave header.
//!
//! They reproduce, byte for byte, what rtph264pay and rtph265pay (config-interval=1, no
//! aggregation, their default) and rtpmp4gpay make with the same numbering (the tests compare
//! them packet by packet). Where they deliberately differ is listed in docs/ARCHITECTURE.md.

mod aac;
mod h264;
mod h265;
mod nal;
mod rtp;
#[cfg(test)]
mod tests;

#[allow(unused_imports)]
pub(crate) use rtp::{Packets, RtpConfig, Span};

use rtp::Rtp;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum PacketizeError {
    #[error("{0}")]
    Config(String),
}

pub(crate) enum Packetizer {
    H264(h264::H264),
    H265(h265::H265),
    Aac(aac::Aac),
}

impl Packetizer {
    /// A packetizer for these caps, or None if they are not ones we packetize (GStreamer's
    /// payloader is used then): H.264/H.265 in access units (avc/hvc1 with codec
    /// data, or byte-stream), AAC in raw access units with codec data.
    pub(crate) fn for_caps(caps: &gst::CapsRef, cfg: RtpConfig) -> Option<Packetizer> {
        let s = caps.structure(0)?;
        let format = s.get::<&str>("stream-format").ok();
        let au = s.get::<&str>("alignment").ok() == Some("au");
        let codec_data = s.get::<gst::Buffer>("codec_data").ok();
        let framerate = s
            .get::<gst::Fraction>("framerate")
            .ok()
            .filter(|f| f.numer() > 0 && f.denom() > 0)
            .map(|f| (f.numer(), f.denom()));
        match s.name().as_str() {
            "video/x-h264" if au => {
                let cd = codec_data.as_ref().and_then(|b| b.map_readable().ok());
                let cd = cd.as_ref().map(|m| m.as_slice());
                let p = match format {
                    Some("avc") => h264::H264::avc(Rtp::new(cfg, 90_000), cd?),
                    Some("byte-stream") => Ok(h264::H264::byte_stream(Rtp::new(cfg, 90_000))),
                    _ => return None,
                }
                .ok()?;
                Some(Packetizer::H264(p.with_framerate(framerate)))
            }
            "video/x-h265" if au => {
                let cd = codec_data.as_ref().and_then(|b| b.map_readable().ok());
                let cd = cd.as_ref().map(|m| m.as_slice());
                let p = match format {
                    Some("hvc1") => h265::H265::hvcc(Rtp::new(cfg, 90_000), cd?),
                    Some("byte-stream") => Ok(h265::H265::byte_stream(Rtp::new(cfg, 90_000))),
                    _ => return None,
                }
                .ok()?;
                Some(Packetizer::H265(p.with_framerate(framerate)))
            }
            "audio/mpeg"
                if s.get::<i32>("mpegversion").ok() == Some(4) && format == Some("raw") =>
            {
                let cd = codec_data?;
                let map = cd.map_readable().ok()?;
                aac::Aac::new(cfg, map.as_slice()).ok().map(Packetizer::Aac)
            }
            _ => None,
        }
    }

    /// The caps the matching GStreamer payloader would put on its src pad now: what the SDP is
    /// built from. They change when in-band parameter sets do (see `params_version`).
    pub(crate) fn rtp_caps(&self) -> gst::Caps {
        match self {
            Packetizer::H264(p) => p.rtp_caps(),
            Packetizer::H265(p) => p.rtp_caps(),
            Packetizer::Aac(p) => p.rtp_caps(),
        }
    }

    /// Changes whenever the parameter sets (and so `rtp_caps`) change.
    pub(crate) fn params_version(&self) -> u32 {
        match self {
            Packetizer::H264(p) => p.params_version(),
            Packetizer::H265(p) => p.params_version(),
            Packetizer::Aac(_) => 0,
        }
    }

    /// One access unit (what a parser hands a payloader) and its running time in ns: its
    /// packets are appended to `out`.
    pub(crate) fn push(
        &mut self,
        au: &[u8],
        running_time_ns: Option<u64>,
        out: &mut Packets,
    ) -> Result<(), PacketizeError> {
        match self {
            Packetizer::H264(p) => p.push(au, running_time_ns, out),
            Packetizer::H265(p) => p.push(au, running_time_ns, out),
            Packetizer::Aac(p) => {
                p.push(au, running_time_ns, out);
                Ok(())
            }
        }
    }

    fn rtp(&self) -> &Rtp {
        match self {
            Packetizer::H264(p) => &p.rtp,
            Packetizer::H265(p) => &p.rtp,
            Packetizer::Aac(p) => &p.rtp,
        }
    }

    /// The sequence number of the next packet.
    pub(crate) fn next_seq(&self) -> u16 {
        self.rtp().seq
    }

    /// The RTP timestamp of a buffer at this running time.
    pub(crate) fn rtp_timestamp(&self, running_time_ns: u64) -> u32 {
        self.rtp().timestamp_at(running_time_ns)
    }
}

/// `a-framerate` as rtpbasepayload writes it (`%.17g` of the rate).
fn framerate_attr(num: i32, den: i32) -> String {
    let v = num as f64 / den as f64;
    let mut buf = [0u8; 64];
    // SAFETY: a bounded snprintf into a local buffer with a NUL-terminated format.
    let n = unsafe {
        libc::snprintf(
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            c"%.17g".as_ptr(),
            v,
        )
    };
    String::from_utf8_lossy(&buf[..(n.max(0) as usize).min(buf.len() - 1)]).into_owned()
}
