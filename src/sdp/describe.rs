//! The SDP a session announces for its tracks' caps: payload types made distinct, one
//! `streamid=N` control per track, and the application's edits (`update-sdp`).

use super::clock::Signalling;
use super::{assign_payload_types, build_sdp, sdp_to_string, SdpError, SdpSession, SdpTrack};
use crate::CAT;
use std::net::IpAddr;

/// What ANNOUNCE and SETUP say about the tracks.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    pub text: String,
    /// The SETUP control of each track, in track order.
    pub controls: Vec<String>,
    /// Per track, the payload type it is sent with when an earlier track already uses its own.
    pub rewrites: Vec<Option<u8>>,
    /// Per track, the SSRC its caps name (payloaders put theirs there): SRTP keys are bound to it.
    pub ssrcs: Vec<Option<u32>>,
}

/// The SDP `text` for SRTP: every `m=` says RTP/SAVP and carries its track's MIKEY message
/// (`a=key-mgmt:mikey`, RFC 4567). Added after `update-sdp`, so application handlers never
/// see a key.
pub(crate) fn secure(text: &str, mikeys: &[String]) -> Result<String, SdpError> {
    let mut msg = gst_sdp::SDPMessage::parse_buffer(text.as_bytes())
        .map_err(|e| SdpError::Srtp(format!("our SDP does not read back ({e})")))?;
    if msg.medias_len() as usize != mikeys.len() {
        return Err(SdpError::Srtp(format!(
            "the SDP has {} media for {} tracks (did an update-sdp handler add or remove one?)",
            msg.medias_len(),
            mikeys.len()
        )));
    }
    for (i, mikey) in mikeys.iter().enumerate() {
        let m = msg.media_mut(i as u32).expect("counted above");
        m.set_proto("RTP/SAVP");
        m.add_attribute("key-mgmt", Some(&format!("mikey {mikey}")));
    }
    Ok(sdp_to_string(&msg))
}

/// The SDP for `caps` with (local, server) addresses and the RFC 7273 lines of `clock`, if
/// any; `edit` may change the message before it is written out.
pub(crate) fn describe(
    caps: &[gst::Caps],
    (local, server): (Option<IpAddr>, Option<IpAddr>),
    clock: Option<&Signalling>,
    edit: &dyn Fn(&mut gst_sdp::SDPMessage),
) -> Result<Described, SdpError> {
    let caps_pts: Vec<u8> = caps
        .iter()
        .map(|c| {
            c.structure(0)
                .and_then(|s| s.get::<i32>("payload").ok())
                .map(|p| p.clamp(0, 255) as u8)
                .unwrap_or(96)
        })
        .collect();
    let pts = assign_payload_types(&caps_pts);
    let controls: Vec<String> = (0..caps.len()).map(|i| format!("streamid={i}")).collect();
    let tracks: Vec<SdpTrack> = caps
        .iter()
        .zip(&pts)
        .zip(&controls)
        .map(|((c, pt), control)| SdpTrack {
            caps: c.as_ref(),
            payload_type: *pt,
            control: control.clone(),
        })
        .collect();
    let session = SdpSession {
        local_addr: local,
        server_addr: server,
        session_name: "rtspannounce",
    };
    let mut msg = build_sdp(&session, &tracks)?;
    if let Some(clock) = clock {
        clock.apply(&mut msg);
    }
    edit(&mut msg);
    let rewrites: Vec<Option<u8>> = caps_pts
        .iter()
        .zip(&pts)
        .map(|(a, b)| (a != b).then_some(*b))
        .collect();
    for (i, r) in rewrites.iter().enumerate() {
        if let Some(pt) = r {
            gst::info!(
                CAT,
                "track {i}: payload type {} already used by an earlier track, sending as {pt}",
                caps_pts[i]
            );
        }
    }
    let ssrcs = caps
        .iter()
        .map(|c| c.structure(0).and_then(|s| s.get::<u32>("ssrc").ok()))
        .collect();
    Ok(Described {
        text: sdp_to_string(&msg),
        controls,
        rewrites,
        ssrcs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(pt: i32, encoding: &str) -> gst::Caps {
        gst::Caps::builder("application/x-rtp")
            .field("media", "video")
            .field("payload", pt)
            .field("clock-rate", 90000i32)
            .field("encoding-name", encoding)
            .build()
    }

    #[test]
    fn tracks_get_distinct_payload_types_and_stream_controls() {
        gst::init().unwrap();
        let caps = [rtp(96, "H264"), rtp(96, "H265")];
        let d = describe(&caps, (None, None), None, &|_| {}).unwrap();
        assert_eq!(d.controls, ["streamid=0", "streamid=1"]);
        assert_eq!(d.rewrites[0], None);
        let moved = d.rewrites[1].expect("the second 96 is rewritten");
        assert_ne!(moved, 96);
        assert!(d.text.contains(&format!("a=rtpmap:{moved} H265/90000")));
    }

    #[test]
    fn srtp_media_say_savp_and_carry_their_keys() {
        gst::init().unwrap();
        let mut video = rtp(96, "H264");
        video.make_mut().set("ssrc", 0x1234u32);
        let d = describe(&[video, rtp(97, "H265")], (None, None), None, &|_| {}).unwrap();
        assert_eq!(d.ssrcs, [Some(0x1234), None]);
        let text = secure(&d.text, &["AAAA".into(), "BBBB".into()]).unwrap();
        assert!(!text.contains("RTP/AVP"), "{text}");
        let a = text.find("a=key-mgmt:mikey AAAA\r\n").expect("first key");
        let b = text.find("a=key-mgmt:mikey BBBB\r\n").expect("second key");
        let second_m = text.match_indices("m=video 0 RTP/SAVP").nth(1).unwrap().0;
        assert!(a < second_m && b > second_m, "{text}");
        assert!(secure(&d.text, &["AAAA".into()]).is_err());
    }

    #[test]
    fn edits_reach_the_text() {
        gst::init().unwrap();
        let d = describe(&[rtp(96, "H264")], (None, None), None, &|m| {
            m.add_attribute("tool", Some("edited"));
        })
        .unwrap();
        assert!(d.text.contains("a=tool:edited"), "{}", d.text);
    }

    #[test]
    fn clock_lines_per_media_and_none_without_signalling() {
        gst::init().unwrap();
        let caps = [rtp(96, "H264"), rtp(97, "H265")];
        let clock = Signalling {
            refclk: Some(crate::sdp::clock::RefClock::Ptp {
                grandmaster: 0x0102_0304_0506_0708,
                domain: 3,
            }),
            offsets: vec![Some(42), None],
        };
        let d = describe(&caps, (None, None), Some(&clock), &|_| {}).unwrap();
        let media: Vec<&str> = d.text.split("m=").skip(1).collect();
        assert_eq!(media.len(), 2);
        for m in &media {
            assert!(
                m.contains("a=ts-refclk:ptp=IEEE1588-2008:01-02-03-04-05-06-07-08:3\r\n"),
                "{m}"
            );
        }
        assert!(media[0].contains("a=mediaclk:direct=42\r\n"), "{}", d.text);
        assert!(media[1].contains("a=mediaclk:sender\r\n"), "{}", d.text);
        // Not at session level.
        assert!(!d.text.split("m=").next().unwrap().contains("refclk"));
        let none = describe(&caps, (None, None), None, &|_| {}).unwrap();
        assert!(!none.text.contains("ts-refclk") && !none.text.contains("mediaclk"));
    }
}
