// SPDX-License-Identifier: MPL-2.0
//! Caps -> SDP for the ANNOUNCE request.
//!
//! Media lines are produced by `gst_sdp_media_set_media_from_caps` (so every payloader's
//! `rtpmap`/`fmtp` comes out exactly as GStreamer's own RTSP code writes it), then fixed up for a
//! pusher: proto `RTP/AVP`, port 0, the payload type we actually send, `a=control`.
//!
//! What `set_media_from_caps` does with a caps structure (GStreamer 1.22, checked against its
//! source and by the tests below):
//! - `m=<media> 0 <proto unset> <payload>`; `a=rtpmap:<payload> <encoding-name>/<clock-rate>[/<encoding-params>]`;
//! - `rtcp-fb-nack`, `rtcp-fb-nack-pli`, `rtcp-fb-ccm-fir`, `rtcp-fb-transport-cc` booleans become
//!   `a=rtcp-fb:<payload> ...`;
//! - `a-framesize` becomes `a=framesize:<payload> <value>`, every other string field `a-<name>`
//!   becomes `a=<name>:<value>`, every string field `x-<name>` becomes `a=x-<name>:<value>`;
//! - `extmap-<id>` becomes `a=extmap:...`, `rid-<id>` becomes `a=rid:...`;
//! - `ssrc`, `timestamp-offset`, `seqnum-offset`, `ssrc-*`, `srtp-*`, `srtcp-*`,
//!   `x-gst-rtsp-server-rtx-time*` are skipped;
//! - every *other string* field becomes a `name=value` pair of `a=fmtp:<payload> ` joined by `;`
//!   (non-string fields are silently ignored), with one rewrite: for H264 a `profile` field
//!   (which rtph264pay copies from the encoder caps, e.g. `profile=high`) is written as
//!   `level-asymmetry-allowed=1`.
//! - empty strings are written as they are: `sprop-parameter-sets=""` gives
//!   `...;sprop-parameter-sets=` in fmtp, `a-recvonly=""` gives `a=recvonly`;
//! - attributes come in caps field order, with fmtp last (so `a=framerate` lands before
//!   `a=fmtp`; we move rtpmap and fmtp first).
//!
//! Because every attribute that names a payload type takes it from the caps' `payload` field, we
//! call it on a copy of the caps whose `payload` is the payload type we announce: rtpmap, fmtp,
//! framesize and rtcp-fb all follow a remapped PT without any text rewriting. The copy is also
//! where junk is removed (see [`sanitize_structure`]).

pub(crate) mod clock;
mod describe;

pub(crate) use describe::{describe, secure, Described};

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use base64::Engine as _;

/// One track of the SDP: the caps negotiated on a sink pad (application/x-rtp), the payload type to
/// announce (may differ from caps' `payload` after PT remapping), and its control attribute value.
pub struct SdpTrack<'a> {
    pub caps: &'a gst::CapsRef,
    pub payload_type: u8,
    pub control: String,
}

/// Session-level information.
pub struct SdpSession<'a> {
    /// Address for the `o=` line; 127.0.0.1 if unknown.
    pub local_addr: Option<IpAddr>,
    /// Address for the `c=` line (the server's); 0.0.0.0 if unknown.
    pub server_addr: Option<IpAddr>,
    /// `s=` line; "No Name" if empty (RFC 4566 forbids an empty `s=`).
    pub session_name: &'a str,
}

/// Why no SDP could be built. Every message names the track / caps / field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdpError {
    /// No track at all: an ANNOUNCE needs at least one `m=` line.
    NoTracks,
    /// The caps of a track are not fixed `application/x-rtp` caps (or are empty / ANY).
    CapsNotRtp(String),
    /// A required field (media, encoding-name, clock-rate, payload) is missing or has the wrong type.
    MissingField {
        field: &'static str,
        expected: &'static str,
        caps: String,
    },
    /// A field is present but its value cannot go into an SDP.
    InvalidField {
        field: String,
        reason: String,
        caps: String,
    },
    /// The payload type to announce is not a valid RTP payload type (0..=127).
    InvalidPayloadType { payload_type: u8, control: String },
    /// Two tracks announce the same payload type (servers such as ZLMediaKit route interleaved
    /// RTP by payload type; use [`assign_payload_types`]).
    DuplicatePayloadType {
        payload_type: u8,
        first_control: String,
        second_control: String,
    },
    /// The control attribute is empty or contains characters that cannot go into an SDP line.
    InvalidControl(String),
    /// The session name contains characters that cannot go into an SDP line.
    InvalidSessionName(String),
    /// `gst_sdp_media_set_media_from_caps` refused the caps.
    MediaFromCaps { caps: String },
    /// The SRTP keys could not be added (the text says why).
    Srtp(String),
}

impl fmt::Display for SdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SdpError::NoTracks => write!(f, "cannot build an SDP without any stream (no sink pad has caps)"),
            SdpError::CapsNotRtp(caps) => write!(
                f,
                "caps are not fixed application/x-rtp caps (link an RTP payloader such as rtph264pay before rtspannounce): {caps}"
            ),
            SdpError::MissingField { field, expected, caps } => write!(
                f,
                "RTP caps lack the required field '{field}' ({expected}); set it with the payloader or a capsfilter: {caps}"
            ),
            SdpError::InvalidField { field, reason, caps } => {
                write!(f, "RTP caps field '{field}' {reason}: {caps}")
            }
            SdpError::InvalidPayloadType { payload_type, control } => write!(
                f,
                "payload type {payload_type} of stream '{control}' is not a valid RTP payload type (0..=127)"
            ),
            SdpError::DuplicatePayloadType { payload_type, first_control, second_control } => write!(
                f,
                "streams '{first_control}' and '{second_control}' both use payload type {payload_type}; every stream needs its own payload type"
            ),
            SdpError::InvalidControl(control) => write!(
                f,
                "invalid control attribute {control:?}: it must be non-empty and contain no whitespace or control characters"
            ),
            SdpError::Srtp(why) => write!(f, "cannot announce SRTP: {why}"),
            SdpError::InvalidSessionName(name) => write!(
                f,
                "invalid session name {name:?}: it must not contain line breaks or other control characters"
            ),
            SdpError::MediaFromCaps { caps } => write!(
                f,
                "GStreamer could not convert the RTP caps to an SDP media description: {caps}"
            ),
        }
    }
}

impl std::error::Error for SdpError {}

const TOOL: &str = concat!("rtspannounce ", env!("CARGO_PKG_VERSION"));

fn addr_type(addr: &IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

fn has_control_chars(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Builds the SDP of an ANNOUNCE: one `m=` line per track, in the order given.
pub fn build_sdp(
    session: &SdpSession,
    tracks: &[SdpTrack],
) -> Result<gst_sdp::SDPMessage, SdpError> {
    if tracks.is_empty() {
        return Err(SdpError::NoTracks);
    }
    if has_control_chars(session.session_name) {
        return Err(SdpError::InvalidSessionName(
            session.session_name.to_string(),
        ));
    }

    // Validate everything that involves several tracks before building anything.
    for (i, track) in tracks.iter().enumerate() {
        if track.payload_type > 127 {
            return Err(SdpError::InvalidPayloadType {
                payload_type: track.payload_type,
                control: track.control.clone(),
            });
        }
        if track.control.is_empty()
            || track
                .control
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(SdpError::InvalidControl(track.control.clone()));
        }
        if let Some(first) = tracks[..i]
            .iter()
            .find(|t| t.payload_type == track.payload_type)
        {
            return Err(SdpError::DuplicatePayloadType {
                payload_type: track.payload_type,
                first_control: first.control.clone(),
                second_control: track.control.clone(),
            });
        }
    }

    let mut msg = gst_sdp::SDPMessage::new();
    msg.set_version("0");

    let local = session
        .local_addr
        .map(|a| a.to_canonical())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    // RFC 4566 recommends an NTP timestamp for the session id; any number unique enough works
    // and every server we target ignores it. Keep it within 31 bits for naive parsers.
    let sess_id = (rand::random::<u32>() >> 1).to_string();
    msg.set_origin(
        "-",
        &sess_id,
        "1",
        "IN",
        addr_type(&local),
        &local.to_string(),
    );

    let name = session.session_name.trim();
    msg.set_session_name(if name.is_empty() { "No Name" } else { name });

    let server = session
        .server_addr
        .map(|a| a.to_canonical())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    msg.set_connection("IN", addr_type(&server), &server.to_string(), 0, 0);

    // No explicit time: gst_sdp_message_as_text writes `t=0 0` when the message has none.
    // (And do not call add_time/SDPTime::new with an empty `repeat` slice: gstreamer-sdp 0.25
    // passes it to C without the NULL terminator and as_text then crashes.)
    msg.add_attribute("tool", Some(TOOL));

    for track in tracks {
        msg.add_media(build_media(track)?);
    }

    Ok(msg)
}

/// Required fields of RTP caps, checked before GStreamer sees them so the error can name them.
fn check_required(s: &gst::StructureRef, caps_str: &dyn Fn() -> String) -> Result<(), SdpError> {
    let missing = |field, expected| SdpError::MissingField {
        field,
        expected,
        caps: caps_str(),
    };
    match s.get::<&str>("media") {
        Ok(m) if !m.trim().is_empty() => {}
        _ => return Err(missing("media", "a string such as \"video\" or \"audio\"")),
    }
    match s.get::<&str>("encoding-name") {
        Ok(e) if !e.trim().is_empty() => {}
        _ => return Err(missing("encoding-name", "a string such as \"H264\"")),
    }
    match s.get::<i32>("clock-rate") {
        Ok(r) if r > 0 => {}
        Ok(r) => {
            return Err(SdpError::InvalidField {
                field: "clock-rate".into(),
                reason: format!("must be positive, not {r}"),
                caps: caps_str(),
            })
        }
        Err(_) => return Err(missing("clock-rate", "an integer")),
    }
    match s.get::<i32>("payload") {
        Ok(p) if (0..=127).contains(&p) => {}
        Ok(p) => {
            return Err(SdpError::InvalidField {
                field: "payload".into(),
                reason: format!("must be in 0..=127, not {p}"),
                caps: caps_str(),
            })
        }
        Err(_) => return Err(missing("payload", "an integer")),
    }
    Ok(())
}

/// Removes from (a copy of) the RTP caps structure what must not reach the SDP, and refuses
/// values that would break the SDP text.
///
/// Removed:
/// - string fields with an empty value: they would give `key=` in fmtp (an empty
///   `sprop-parameter-sets=` breaks H.264 readers) or `a=key:` lines;
/// - `a-*` attributes other than `a-framerate` / `a-framesize`: payloaders only set those two
///   (both meaningful: FFmpeg and ZLMediaKit read `a=framerate` to learn the frame rate), while
///   caps that come from `rtspsrc` in a relay carry the *source's* SDP attributes (`a-tool`,
///   `a-type`, `a-recvonly`, `a-sendonly`, `a-range`, ...) which are wrong or meaningless in our
///   ANNOUNCE (a direction attribute copied from a camera describes the camera's session);
/// - `x-*` fields: vendor attributes of some other session (the same relay case); no payloader
///   sets them;
/// - `rid-*`: simulcast restriction ids (WebRTC), meaningless for an RTSP push;
/// - `profile` for H264: rtph264pay copies the encoder's caps field `profile` (e.g. `high`) and
///   `set_media_from_caps` turns it into `level-asymmetry-allowed=1`, an offer/answer parameter
///   that says nothing for a RECORD session (FFmpeg's own SDP does not write it either).
///   For H265 `profile` is not converted and would land in fmtp as a non-standard parameter.
///
/// Kept: fmtp parameters, `a-framerate`, `a-framesize`, `rtcp-fb-*` and `extmap-*` (they describe
/// the packets we send). Fields `set_media_from_caps` ignores anyway (ssrc, offsets, srtp) are left
/// alone.
fn sanitize_structure(
    s: &mut gst::StructureRef,
    caps_str: &dyn Fn() -> String,
) -> Result<(), SdpError> {
    let encoding_name = s
        .get::<&str>("encoding-name")
        .unwrap_or_default()
        .to_ascii_uppercase();
    let mut remove = Vec::new();
    for (name, value) in s.iter() {
        let name = name.as_str();
        let Ok(Some(v)) = value.get::<Option<&str>>() else {
            // Not a string (or a NULL string): set_media_from_caps only writes strings, except for
            // rtcp-fb-* booleans and extmap-* arrays which we keep as they are.
            continue;
        };
        let drop = v.trim().is_empty()
            || (name.starts_with("a-") && name != "a-framerate" && name != "a-framesize")
            || name.starts_with("x-")
            || name.starts_with("rid-")
            || (name == "profile" && (encoding_name == "H264" || encoding_name == "H265"));
        if drop {
            remove.push(name.to_string());
            continue;
        }
        if has_control_chars(v) {
            return Err(SdpError::InvalidField {
                field: name.to_string(),
                reason: "contains a line break or another control character".into(),
                caps: caps_str(),
            });
        }
    }
    for name in remove {
        s.remove_field(name.as_str());
    }
    Ok(())
}

fn build_media(track: &SdpTrack) -> Result<gst_sdp::SDPMedia, SdpError> {
    let caps_str = || track.caps.to_string();
    let s = match track.caps.structure(0) {
        Some(s) if track.caps.is_fixed() && s.name() == "application/x-rtp" => s,
        _ => return Err(SdpError::CapsNotRtp(caps_str())),
    };
    check_required(s, &caps_str)?;

    let mut s = s.to_owned();
    sanitize_structure(&mut s, &caps_str)?;
    // Every attribute naming a PT takes it from `payload`: set the one we announce.
    s.set("payload", i32::from(track.payload_type));
    let caps = gst::Caps::builder_full().structure(s).build();

    let mut media = gst_sdp::SDPMedia::new();
    media
        .set_media_from_caps(&caps)
        .map_err(|_| SdpError::MediaFromCaps { caps: caps_str() })?;
    media.set_proto("RTP/AVP");
    media.set_port_info(0, 1);
    reorder_attributes(&mut media);
    media.add_attribute("control", Some(&track.control));
    Ok(media)
}

/// `set_media_from_caps` adds `a-*` attributes (e.g. `a=framerate`) while walking the caps fields
/// and the fmtp only at the end. Put `rtpmap` and `fmtp` first, as FFmpeg, gst-rtsp-server and
/// live555 write them (the order is not significant per RFC 4566, but small servers parse SDP
/// line by line), keep the rest in order. Also drops, as a last line of defence, empty fmtp
/// parameters (`key=`) and attributes with an empty value (`a=key:`).
fn reorder_attributes(media: &mut gst_sdp::SDPMediaRef) {
    let mut attrs: Vec<(String, Option<String>)> = media
        .attributes()
        .map(|a| (a.key().to_string(), a.value().map(str::to_string)))
        .collect();
    while media.attributes_len() > 0 {
        if media.remove_attribute(0).is_err() {
            break;
        }
    }
    attrs.sort_by_key(|(key, _)| match key.as_str() {
        "rtpmap" => 0,
        "fmtp" => 1,
        _ => 2,
    });
    for (key, value) in attrs {
        let value = match (key.as_str(), value) {
            ("fmtp", Some(v)) => match clean_fmtp(&v) {
                Some(v) => Some(v),
                None => continue,
            },
            (_, Some(v)) if v.trim().is_empty() => continue,
            (_, v) => v,
        };
        media.add_attribute(&key, value.as_deref());
    }
}

/// `"<pt> k=v;k2=;k3=v3"` -> `"<pt> k=v;k3=v3"`, or None if no parameter is left.
fn clean_fmtp(value: &str) -> Option<String> {
    let (pt, params) = value.split_once(' ')?;
    let params: Vec<&str> = params
        .split(';')
        .map(str::trim)
        .filter(|p| match p.split_once('=') {
            Some((k, v)) => !k.is_empty() && !v.trim().is_empty(),
            None => !p.is_empty(),
        })
        .collect();
    if params.is_empty() {
        None
    } else {
        Some(format!("{pt} {}", params.join(";")))
    }
}

/// Serialises with CRLF line ends (what `gst_sdp_message_as_text` writes), no trailing spaces.
pub fn sdp_to_string(msg: &gst_sdp::SDPMessage) -> String {
    let text = msg.as_text().unwrap_or_default();
    // gst_sdp_message_as_text already ends every line with "\r\n"; normalise anyway so a change
    // there can never produce bare LFs or trailing blanks, which FFmpeg's parser rejects.
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

/// Given the caps payload types of the pads in pad order, return the PT to announce/send for each:
/// the first pad to use a PT keeps it; a later pad with a PT already taken gets the lowest free
/// dynamic PT (96..=127) not used by any pad. Static PTs (<96) that collide are remapped too.
///
/// Invalid input PTs (> 127) are remapped like collisions. If the dynamic range is exhausted
/// (more than 32 colliding pads), the RFC 3551 unassigned ranges 77..=95 and 35..=71 are used
/// (72..=76 are avoided: they clash with RTCP packet types); beyond that the input PT is kept.
pub fn assign_payload_types(pts: &[u8]) -> Vec<u8> {
    let mut used = [false; 128];
    for &pt in pts {
        if pt <= 127 {
            used[pt as usize] = true;
        }
    }
    let mut taken = [false; 128];
    let mut out = Vec::with_capacity(pts.len());
    for &pt in pts {
        let assigned = if pt <= 127 && !taken[pt as usize] {
            pt
        } else {
            (96u8..=127)
                .chain(77..=95)
                .chain(35..=71)
                .find(|&c| !used[c as usize])
                .unwrap_or(pt)
        };
        if assigned <= 127 {
            taken[assigned as usize] = true;
            used[assigned as usize] = true;
        }
        out.push(assigned);
    }
    out
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    LENIENT.decode(s.trim()).ok()
}

fn non_empty_str_field(s: &gst::StructureRef, field: &str) -> bool {
    s.get::<&str>(field)
        .map(|v| v.split(',').any(|part| !part.trim().is_empty()))
        .unwrap_or(false)
}

/// True if the caps describe an H.264/H.265 stream that lacks its parameter sets in fmtp
/// (sprop-parameter-sets missing or empty; for H.265 sprop-vps/sps/pps) — the element uses this to
/// wait for updated caps.
///
/// For H.264 the parameter sets must include an SPS (NAL type 7) and a PPS (NAL type 8); entries
/// that are not valid base64 are ignored. Caps of any other encoding return false.
pub fn lacks_parameter_sets(caps: &gst::CapsRef) -> bool {
    let Some(s) = caps.structure(0) else {
        return false;
    };
    let Ok(enc) = s.get::<&str>("encoding-name") else {
        return false;
    };
    if enc.eq_ignore_ascii_case("H264") {
        let Ok(sprop) = s.get::<&str>("sprop-parameter-sets") else {
            return true;
        };
        let (mut sps, mut pps) = (false, false);
        for nal in sprop.split(',').filter_map(decode_b64) {
            match nal.first().map(|b| b & 0x1f) {
                Some(7) => sps = true,
                Some(8) => pps = true,
                _ => {}
            }
        }
        !(sps && pps)
    } else if enc.eq_ignore_ascii_case("H265") {
        !["sprop-vps", "sprop-sps", "sprop-pps"]
            .iter()
            .all(|f| non_empty_str_field(s, f))
    } else {
        false
    }
}

#[cfg(test)]
mod tests;
