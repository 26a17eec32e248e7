//! RFC 7273 for a session: what its SDP says about the pipeline clock, and the packets that
//! give each track's offset to it.

use super::Shared;
use crate::sdp::{self, clock::PublishClockMode, clock::Signalling};
use crate::CAT;

impl Shared {
    /// What the SDP says about the clock (RFC 7273), None with `publish-clock-mode=none`. The
    /// direct offset of a track comes from a packet it holds for this handshake, else (a
    /// reconnect) the last one the previous connection sent, else the one it prerolled: the
    /// payloader's timestamps are one line against running time, so any packet gives it.
    pub(super) fn clock_signalling(&self) -> Option<Signalling> {
        if self.cfg.publish_clock == PublishClockMode::None {
            return None;
        }
        // Outside the state lock: reading the clock is foreign code.
        let clock = self.hooks.clock();
        let st = self.state.lock().unwrap();
        let offsets = st
            .tracks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if self.cfg.publish_clock != PublishClockMode::ClockAndOffset
                    || clock.reference.is_none()
                    || clock.now.is_none()
                {
                    return None;
                }
                let rate = t
                    .caps
                    .as_ref()
                    .and_then(|c| c.structure(0))
                    .and_then(|s| s.get::<i32>("clock-rate").ok())
                    .filter(|r| *r > 0)? as u32;
                let held = t.held.iter().rev().find_map(|(m, rt)| m.anchor(*rt));
                // The last connection's is newer than the preroll's (a flush since may have moved
                // the payloader's line).
                let sent = st
                    .last
                    .as_ref()
                    .and_then(|c| c.senders().get(i))
                    .and_then(|s| s.anchor());
                let anchor = held.or(sent).or(t.preroll_anchor);
                let Some((rtp, running)) = anchor else {
                    gst::warning!(
                        CAT,
                        "{}: no timestamped packet yet, announcing mediaclk:sender",
                        t.pad_name
                    );
                    return None;
                };
                Some(sdp::clock::direct_offset(
                    rtp,
                    running,
                    clock.base_time,
                    rate,
                ))
            })
            .collect();
        Some(Signalling {
            refclk: clock.reference,
            offsets,
        })
    }
}

/// The running time of `pts` in `segment`, in ns.
pub(crate) fn running_time(
    segment: Option<&gst::FormattedSegment<gst::ClockTime>>,
    pts: Option<gst::ClockTime>,
) -> Option<u64> {
    segment
        .zip(pts)
        .and_then(|(seg, pts)| seg.to_running_time(pts))
        .map(|t| t.nseconds())
}

/// A packet's (RTP timestamp, running time), for the SDP's direct offset.
pub(crate) fn anchor_of(buffer: &gst::BufferRef, running: Option<u64>) -> Option<(u32, u64)> {
    let f = crate::rtcp::rtp_facts(buffer.size(), |off, dst| {
        buffer.copy_to_slice(off, dst).is_ok()
    })?;
    Some((f.timestamp, running?))
}
