//! A pad's built-in payloader: our packetizer (crate::packetize) run in the appsink's callback,
//! for the encoded input pad.rs routes straight to the appsink. It stands where rtph264pay,
//! rtph265pay or rtpmp4gpay would, with their numbering (random SSRC, first sequence number and
//! timestamp offset, kept across caps changes), and hands the session packed access units, so
//! no GstBuffer is made per packet.

use super::sender::{Media, Packed};
use super::session::running_time;
use crate::packetize::{Packetizer, Packets, RtpConfig};

/// The payloaders' default mtu: the RTP packet, header included.
const MTU: u32 = 1400;

/// Interleave header written in front of each packet.
const PREFIX: usize = 4;

/// The encoded formats the built-in payloaders may take, as GStreamer's payloaders' templates
/// say them (each caps still has to satisfy `Packetizer::for_caps`: codec data, a known
/// sampling rate). H.264 is offered constrained-baseline first, as rtph264pay answers a caps
/// query, so an encoder picks the profile it would pick in front of rtph264pay.
pub(crate) fn input_caps() -> gst::Caps {
    let h264 = |format: &str, baseline: bool| {
        let s = gst::Structure::builder("video/x-h264")
            .field("stream-format", format)
            .field("alignment", "au");
        if baseline {
            s.field("profile", "constrained-baseline").build()
        } else {
            s.build()
        }
    };
    let h265 = |format: &str| {
        gst::Structure::builder("video/x-h265")
            .field("stream-format", format)
            .field("alignment", "au")
            .build()
    };
    let mut caps = gst::Caps::new_empty();
    {
        let c = caps.get_mut().unwrap();
        c.append_structure(h264("avc", true));
        c.append_structure(h264("byte-stream", true));
        c.append_structure(h264("avc", false));
        c.append_structure(h264("byte-stream", false));
        c.append_structure(h265("hvc1"));
        c.append_structure(h265("byte-stream"));
        c.append_structure(
            gst::Structure::builder("audio/mpeg")
                .field("mpegversion", 4i32)
                .field("stream-format", "raw")
                .build(),
        );
    }
    caps
}

/// Whether the built-in payloaders take these (fixed) caps.
pub(crate) fn takes(caps: &gst::CapsRef) -> bool {
    caps.is_fixed()
        && input_caps().can_intersect(caps)
        && Packetizer::for_caps(caps, config(96, 0, 0, 0)).is_some()
}

fn config(pt: u8, ssrc: u32, seq: u16, ts_offset: u32) -> RtpConfig {
    RtpConfig {
        pt,
        ssrc,
        seq,
        seqnum_offset: seq,
        ts_offset,
        mtu: MTU,
    }
}

pub(crate) struct Builtin {
    pt: u8,
    ssrc: u32,
    ts_offset: u32,
    /// The first sequence number (what the caps say) and that of the next packetizer
    /// (continued on caps changes).
    seqnum_offset: u16,
    seq: u16,
    /// The packetizer's parameter sets behind `rtp_caps`.
    params_version: u32,
    input: Option<gst::Caps>,
    packetizer: Option<Packetizer>,
    rtp_caps: Option<gst::Caps>,
}

impl Builtin {
    /// Numbering as rtpbasepayload picks it: random, per pad.
    pub(crate) fn new(pt: u8) -> Builtin {
        let seq = rand::random();
        Builtin {
            pt,
            ssrc: rand::random(),
            ts_offset: rand::random(),
            seqnum_offset: seq,
            seq,
            params_version: 0,
            input: None,
            packetizer: None,
            rtp_caps: None,
        }
    }

    /// Makes the packetizer fit `caps` (kept if they did not change): the RTP caps it makes.
    pub(crate) fn fit(&mut self, caps: &gst::Caps) -> Result<gst::Caps, gst::ErrorMessage> {
        if self.input.as_ref() == Some(caps) {
            if let (Some(c), Some(p)) = (&self.rtp_caps, &self.packetizer) {
                if p.params_version() == self.params_version {
                    return Ok(c.clone());
                }
                // In-band parameter sets changed what the SDP would say.
                let rtp = p.rtp_caps();
                self.params_version = p.params_version();
                self.rtp_caps = Some(rtp.clone());
                return Ok(rtp);
            }
        }
        if let Some(p) = &self.packetizer {
            self.seq = p.next_seq();
        }
        let mut cfg = config(self.pt, self.ssrc, self.seq, self.ts_offset);
        cfg.seqnum_offset = self.seqnum_offset;
        let Some(p) = Packetizer::for_caps(caps, cfg) else {
            self.packetizer = None;
            self.input = None;
            return Err(gst::error_msg!(
                gst::CoreError::Negotiation,
                ("the built-in payloaders do not take {}", caps)
            ));
        };
        let rtp = p.rtp_caps();
        self.params_version = p.params_version();
        self.packetizer = Some(p);
        self.input = Some(caps.clone());
        self.rtp_caps = Some(rtp.clone());
        Ok(rtp)
    }

    /// (RTP timestamp, running time) the packetizer gives a buffer at `running`.
    pub(crate) fn anchor(&self, running: Option<u64>) -> Option<(u32, u64)> {
        let rt = running?;
        Some((self.packetizer.as_ref()?.rtp_timestamp(rt), rt))
    }

    /// One sample's buffers (one access unit each) as packed media, with their running times.
    pub(crate) fn packetize(
        &mut self,
        buffers: impl Iterator<Item = gst::Buffer>,
        segment: Option<&gst::FormattedSegment<gst::ClockTime>>,
        out: &mut impl Extend<(Media, Option<u64>)>,
    ) -> Result<(), gst::ErrorMessage> {
        let Some(p) = self.packetizer.as_mut() else {
            return Err(gst::error_msg!(
                gst::CoreError::Negotiation,
                ("encoded data before caps")
            ));
        };
        for b in buffers {
            let running = running_time(segment, b.pts());
            let delta = b.flags().contains(gst::BufferFlags::DELTA_UNIT);
            let map = b.map_readable().map_err(|_| {
                gst::error_msg!(gst::StreamError::Failed, ("cannot map an input buffer"))
            })?;
            // Parameter sets inserted before a keyframe are small: the margin covers them.
            let mut packets = Packets::with_room(PREFIX, map.len() + 256, MTU);
            p.push(map.as_slice(), running, &mut packets).map_err(|e| {
                gst::error_msg!(
                    gst::StreamError::Format,
                    (
                        "cannot payload {}: {}",
                        self.input
                            .as_ref()
                            .map(|c| c.to_string())
                            .unwrap_or_default(),
                        e
                    )
                )
            })?;
            out.extend(std::iter::once((
                Media::Packed(Packed { packets, delta }),
                running,
            )));
        }
        Ok(())
    }
}
