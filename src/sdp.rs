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
mod tests {
    use super::*;
    use gst::prelude::*;
    use std::net::Ipv6Addr;
    use std::str::FromStr;

    fn init() {
        gst::init().unwrap();
    }

    /// Runs `desc ! fakesink` to EOS and returns the caps the sink ended up with (payloaders
    /// may update their caps after the first buffers, e.g. with sprop-parameter-sets).
    fn caps_from_pipeline(desc: &str) -> gst::Caps {
        init();
        let full = format!("{desc} ! fakesink name=sink sync=false");
        let pipeline = gst::parse::launch(&full)
            .unwrap_or_else(|e| panic!("cannot build '{full}' (missing GStreamer plugin?): {e}"))
            .downcast::<gst::Pipeline>()
            .unwrap();
        let sink = pipeline.by_name("sink").unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        let bus = pipeline.bus().unwrap();
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        let caps = sink.static_pad("sink").unwrap().current_caps();
        pipeline.set_state(gst::State::Null).unwrap();
        match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => {}
            Some(gst::MessageView::Error(err)) => {
                panic!(
                    "pipeline '{full}' failed: {} ({:?})",
                    err.error(),
                    err.debug()
                )
            }
            _ => panic!("pipeline '{full}' timed out"),
        }
        caps.expect("no caps on the sink")
    }

    fn have(element: &str) -> bool {
        init();
        gst::ElementFactory::find(element).is_some()
    }

    fn session() -> SdpSession<'static> {
        SdpSession {
            local_addr: Some("192.168.1.10".parse().unwrap()),
            server_addr: Some("192.168.1.20".parse().unwrap()),
            session_name: "test session",
        }
    }

    fn one_track(caps: &gst::CapsRef, pt: u8) -> String {
        let tracks = [SdpTrack {
            caps,
            payload_type: pt,
            control: "streamid=0".into(),
        }];
        sdp_to_string(&build_sdp(&session(), &tracks).unwrap())
    }

    fn lines(sdp: &str) -> Vec<&str> {
        assert!(sdp.ends_with("\r\n"), "{sdp:?}");
        let body = &sdp[..sdp.len() - 2];
        let lines: Vec<&str> = body.split("\r\n").collect();
        for l in &lines {
            assert!(
                !l.contains('\n') && !l.contains('\r'),
                "bare line break in {sdp:?}"
            );
            assert_eq!(l.trim_end(), *l, "trailing blank in line {l:?}");
            assert!(!l.is_empty(), "empty line in {sdp:?}");
        }
        lines
    }

    fn line_with<'a>(sdp: &'a str, prefix: &str) -> &'a str {
        lines(sdp)
            .into_iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{sdp}"))
    }

    fn fmtp_params(fmtp_line: &str, pt: u8) -> Vec<(String, String)> {
        let prefix = format!("a=fmtp:{pt} ");
        let params = fmtp_line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{fmtp_line:?} does not start with {prefix:?}"));
        params
            .split(';')
            .map(|p| {
                let (k, v) = p
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad param {p:?}"));
                assert!(!v.is_empty(), "empty fmtp value for {k} in {fmtp_line:?}");
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The SDP must parse back and yield caps that GStreamer's receiving side (gst-rtsp-server,
    /// rtspsrc) would use for each announced PT.
    fn roundtrip(sdp: &str) -> Vec<gst::Caps> {
        let parsed = gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()).unwrap();
        parsed
            .medias()
            .map(|m| {
                assert_eq!(m.proto(), Some("RTP/AVP"));
                assert_eq!(m.port(), 0);
                let pt: i32 = m.format(0).unwrap().parse().unwrap();
                m.caps_from_media(pt).expect("caps from media")
            })
            .collect()
    }

    #[test]
    fn session_lines() {
        init();
        let caps = gst::Caps::from_str(
            "application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=0",
        )
        .unwrap();
        let sdp = one_track(&caps, 0);
        let l = lines(&sdp);
        assert_eq!(l[0], "v=0");
        assert!(l[1].starts_with("o=- "), "{}", l[1]);
        assert!(l[1].ends_with(" 1 IN IP4 192.168.1.10"), "{}", l[1]);
        assert_eq!(l[2], "s=test session");
        assert_eq!(l[3], "c=IN IP4 192.168.1.20");
        assert_eq!(l[4], "t=0 0");
        assert_eq!(l[5], TOOL.replace("rtspannounce", "a=tool:rtspannounce"));
        assert_eq!(
            &l[6..],
            [
                "m=audio 0 RTP/AVP 0",
                "a=rtpmap:0 PCMU/8000",
                "a=control:streamid=0"
            ]
        );

        // Defaults and IPv6.
        let tracks = [SdpTrack {
            caps: &caps,
            payload_type: 0,
            control: "streamid=0".into(),
        }];
        let s = SdpSession {
            local_addr: None,
            server_addr: None,
            session_name: "",
        };
        let sdp = sdp_to_string(&build_sdp(&s, &tracks).unwrap());
        assert!(line_with(&sdp, "o=").ends_with(" IN IP4 127.0.0.1"));
        assert_eq!(line_with(&sdp, "c="), "c=IN IP4 0.0.0.0");
        assert_eq!(line_with(&sdp, "s="), "s=No Name");

        let s = SdpSession {
            local_addr: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            server_addr: Some("2001:db8::1".parse().unwrap()),
            session_name: "x",
        };
        let sdp = sdp_to_string(&build_sdp(&s, &tracks).unwrap());
        assert!(line_with(&sdp, "o=").ends_with(" IN IP6 ::1"));
        assert_eq!(line_with(&sdp, "c="), "c=IN IP6 2001:db8::1");

        // IPv4-mapped IPv6 (dual-stack socket) is written as IPv4.
        let s = SdpSession {
            local_addr: Some("::ffff:10.0.0.1".parse().unwrap()),
            server_addr: Some("::ffff:10.0.0.2".parse().unwrap()),
            session_name: "x",
        };
        let sdp = sdp_to_string(&build_sdp(&s, &tracks).unwrap());
        assert!(line_with(&sdp, "o=").ends_with(" IN IP4 10.0.0.1"));
        assert_eq!(line_with(&sdp, "c="), "c=IN IP4 10.0.0.2");
    }

    fn check_h264(caps: &gst::CapsRef) {
        assert!(!lacks_parameter_sets(caps), "{caps}");
        let sdp = one_track(caps, 96);
        assert_eq!(line_with(&sdp, "m="), "m=video 0 RTP/AVP 96");
        assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:96 H264/90000");
        let params = fmtp_params(line_with(&sdp, "a=fmtp:"), 96);
        assert_eq!(param(&params, "packetization-mode"), Some("1"));
        let sprop = param(&params, "sprop-parameter-sets").unwrap();
        assert!(sprop.contains(','), "{sprop}");
        assert!(param(&params, "profile-level-id").unwrap().len() == 6);
        assert!(param(&params, "level-asymmetry-allowed").is_none());
        assert!(param(&params, "profile").is_none());
        assert_eq!(line_with(&sdp, "a=framerate:"), "a=framerate:30");
        assert_eq!(line_with(&sdp, "a=control:"), "a=control:streamid=0");
        // nothing from ssrc / timestamp-offset / seqnum-offset
        assert!(!sdp.contains("ssrc") && !sdp.contains("offset"), "{sdp}");
        let rt = roundtrip(&sdp);
        let s = rt[0].structure(0).unwrap();
        assert_eq!(s.get::<&str>("encoding-name").unwrap(), "H264");
        assert_eq!(s.get::<&str>("sprop-parameter-sets").unwrap(), sprop);
    }

    #[test]
    fn h264_from_x264enc() {
        let caps = caps_from_pipeline(
            "videotestsrc num-buffers=3 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
             ! x264enc ! rtph264pay",
        );
        let s = caps.structure(0).unwrap();
        // rtph264pay copies the encoder's `profile`: we must not turn it into fmtp junk.
        assert!(s.has_field("profile"), "{caps}");
        check_h264(&caps);
    }

    #[test]
    fn h264_handwritten_without_sprop() {
        init();
        let caps = gst::Caps::from_str(
            "application/x-rtp, media=(string)video, clock-rate=(int)90000, encoding-name=(string)H264, \
             packetization-mode=(string)1, profile-level-id=(string)42e01f, payload=(int)96, \
             ssrc=(uint)1234, timestamp-offset=(uint)5, seqnum-offset=(uint)6",
        )
        .unwrap();
        assert!(lacks_parameter_sets(&caps));
        let sdp = one_track(&caps, 96);
        assert_eq!(
            line_with(&sdp, "a=fmtp:"),
            "a=fmtp:96 packetization-mode=1;profile-level-id=42e01f"
        );

        // An empty sprop-parameter-sets is never written.
        let caps = gst::Caps::from_str(
            "application/x-rtp, media=(string)video, clock-rate=(int)90000, encoding-name=(string)H264, \
             packetization-mode=(string)1, sprop-parameter-sets=(string)\"\", profile-level-id=(string)42e01f, payload=(int)96",
        )
        .unwrap();
        assert!(lacks_parameter_sets(&caps));
        let sdp = one_track(&caps, 96);
        assert!(!sdp.contains("sprop"), "{sdp}");
        assert_eq!(
            line_with(&sdp, "a=fmtp:"),
            "a=fmtp:96 packetization-mode=1;profile-level-id=42e01f"
        );

        // Only an SPS: still lacking the PPS.
        let caps = gst::Caps::from_str(
            "application/x-rtp, media=video, clock-rate=90000, encoding-name=H264, payload=96, \
             sprop-parameter-sets=(string)\"Z0LAHtkAoD2wEQAAAwABAAADADIPFi5I\"",
        )
        .unwrap();
        assert!(lacks_parameter_sets(&caps));
        let caps = gst::Caps::from_str(
            "application/x-rtp, media=video, clock-rate=90000, encoding-name=H264, payload=96, \
             sprop-parameter-sets=(string)\"Z0LAHtkAoD2wEQAAAwABAAADADIPFi5I,aMuDyyA=\"",
        )
        .unwrap();
        assert!(!lacks_parameter_sets(&caps));
    }

    fn check_h265(caps: &gst::CapsRef) {
        assert!(!lacks_parameter_sets(caps), "{caps}");
        let sdp = one_track(caps, 96);
        assert_eq!(line_with(&sdp, "m="), "m=video 0 RTP/AVP 96");
        assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:96 H265/90000");
        let params = fmtp_params(line_with(&sdp, "a=fmtp:"), 96);
        for f in ["sprop-vps", "sprop-sps", "sprop-pps"] {
            assert!(!param(&params, f).unwrap().is_empty());
        }
        assert_eq!(line_with(&sdp, "a=control:"), "a=control:streamid=0");
        roundtrip(&sdp);
    }

    #[test]
    fn h265_from_x265enc() {
        if !have("x265enc") {
            eprintln!("x265enc not installed, covered by h265_handwritten only");
            return;
        }
        let caps = caps_from_pipeline(
            "videotestsrc num-buffers=3 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
             ! x265enc ! rtph265pay",
        );
        check_h265(&caps);
    }

    #[test]
    fn h265_handwritten() {
        init();
        let caps = gst::Caps::from_str(
            "application/x-rtp, media=(string)video, clock-rate=(int)90000, encoding-name=(string)H265, \
             sprop-vps=(string)\"QAEMAf//AWAAAAMAkAAAAwAAAwBdlZgJ\", \
             sprop-sps=(string)\"QgEBAWAAAAMAkAAAAwAAAwBdoAKAgC0WWVmkkyvAQAAA+kAAF3AC\", \
             sprop-pps=(string)\"RAHBcrRiQA==\", payload=(int)96, ssrc=(uint)1, a-framerate=(string)25",
        )
        .unwrap();
        check_h265(&caps);
        assert_eq!(
            line_with(&one_track(&caps, 96), "a=framerate:"),
            "a=framerate:25"
        );

        // Before the payloader saw the parameter sets (what rtph265pay first negotiates).
        let caps = gst::Caps::from_str(
            "application/x-rtp, media=video, payload=96, clock-rate=90000, encoding-name=H265, ssrc=(uint)1",
        )
        .unwrap();
        assert!(lacks_parameter_sets(&caps));
        let caps = gst::Caps::from_str(
            "application/x-rtp, media=video, payload=96, clock-rate=90000, encoding-name=H265, \
             sprop-vps=(string)\"QAEMAf//AWAAAAMAkAAAAwAAAwBdlZgJ\", sprop-sps=(string)\"\", sprop-pps=(string)\"RAHBcrRiQA==\"",
        )
        .unwrap();
        assert!(lacks_parameter_sets(&caps));
    }

    fn aac_encoder() -> &'static str {
        ["avenc_aac", "voaacenc", "fdkaacenc"]
            .into_iter()
            .find(|e| have(e))
            .expect("no AAC encoder (install gstreamer1.0-libav)")
    }

    #[test]
    fn aac_mpeg4_generic() {
        let caps = caps_from_pipeline(&format!(
            "audiotestsrc num-buffers=3 ! audio/x-raw,rate=44100,channels=2 ! {} ! rtpmp4gpay",
            aac_encoder()
        ));
        assert!(!lacks_parameter_sets(&caps));
        let sdp = one_track(&caps, 97);
        assert_eq!(line_with(&sdp, "m="), "m=audio 0 RTP/AVP 97");
        assert_eq!(
            line_with(&sdp, "a=rtpmap:"),
            "a=rtpmap:97 MPEG4-GENERIC/44100/2"
        );
        let params = fmtp_params(line_with(&sdp, "a=fmtp:"), 97);
        let config = param(&params, "config").unwrap();
        assert!(
            config.len() >= 4 && config.chars().all(|c| c.is_ascii_hexdigit()),
            "{config}"
        );
        assert_eq!(param(&params, "mode"), Some("AAC-hbr"));
        assert_eq!(param(&params, "sizelength"), Some("13"));
        assert_eq!(param(&params, "indexlength"), Some("3"));
        assert_eq!(param(&params, "indexdeltalength"), Some("3"));
        assert_eq!(param(&params, "streamtype"), Some("5"));
        assert_eq!(line_with(&sdp, "a=control:"), "a=control:streamid=0");
        roundtrip(&sdp);
    }

    #[test]
    fn aac_mp4a_latm() {
        let caps = caps_from_pipeline(&format!(
            "audiotestsrc num-buffers=3 ! audio/x-raw,rate=44100,channels=1 ! {} ! rtpmp4apay",
            aac_encoder()
        ));
        let sdp = one_track(&caps, 96);
        assert_eq!(line_with(&sdp, "m="), "m=audio 0 RTP/AVP 96");
        assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:96 MP4A-LATM/44100");
        let params = fmtp_params(line_with(&sdp, "a=fmtp:"), 96);
        assert_eq!(param(&params, "cpresent"), Some("0"));
        assert!(!param(&params, "config").unwrap().is_empty());
        roundtrip(&sdp);
    }

    #[test]
    fn opus() {
        let caps = caps_from_pipeline(
            "audiotestsrc num-buffers=3 ! audio/x-raw,channels=2 ! opusenc ! rtpopuspay",
        );
        let sdp = one_track(&caps, 96);
        assert_eq!(line_with(&sdp, "m="), "m=audio 0 RTP/AVP 96");
        assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:96 OPUS/48000/2");
        let params = fmtp_params(line_with(&sdp, "a=fmtp:"), 96);
        assert_eq!(param(&params, "sprop-stereo"), Some("1"));
        roundtrip(&sdp);
    }

    #[test]
    fn pcmu_pcma() {
        let caps = caps_from_pipeline("audiotestsrc num-buffers=3 ! mulawenc ! rtppcmupay");
        let sdp = one_track(&caps, 0);
        assert_eq!(line_with(&sdp, "m="), "m=audio 0 RTP/AVP 0");
        assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:0 PCMU/8000");
        assert!(!sdp.contains("a=fmtp"), "{sdp}");
        assert_eq!(line_with(&sdp, "a=control:"), "a=control:streamid=0");
        roundtrip(&sdp);

        let caps = caps_from_pipeline("audiotestsrc num-buffers=3 ! alawenc ! rtppcmapay");
        let sdp = one_track(&caps, 8);
        assert_eq!(line_with(&sdp, "m="), "m=audio 0 RTP/AVP 8");
        assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:8 PCMA/8000");
        assert!(!sdp.contains("a=fmtp"), "{sdp}");
        roundtrip(&sdp);
    }

    #[test]
    fn multi_track_pt_collision() {
        let video = caps_from_pipeline(
            "videotestsrc num-buffers=3 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
             ! x264enc ! rtph264pay",
        );
        let audio = caps_from_pipeline(&format!(
            "audiotestsrc num-buffers=3 ! audio/x-raw,rate=44100,channels=2 ! {} ! rtpmp4gpay",
            aac_encoder()
        ));
        let caps_pts: Vec<u8> = [&video, &audio]
            .iter()
            .map(|c| c.structure(0).unwrap().get::<i32>("payload").unwrap() as u8)
            .collect();
        assert_eq!(caps_pts, [96, 96]);
        let pts = assign_payload_types(&caps_pts);
        assert_eq!(pts, [96, 97]);

        let tracks = [
            SdpTrack {
                caps: &video,
                payload_type: pts[0],
                control: "streamid=0".into(),
            },
            SdpTrack {
                caps: &audio,
                payload_type: pts[1],
                control: "streamid=1".into(),
            },
        ];
        let sdp = sdp_to_string(&build_sdp(&session(), &tracks).unwrap());
        eprintln!("{sdp}");
        let l = lines(&sdp);
        let m: Vec<usize> = (0..l.len()).filter(|&i| l[i].starts_with("m=")).collect();
        assert_eq!(m.len(), 2);
        let (v, a) = (&l[m[0]..m[1]], &l[m[1]..]);
        assert_eq!(v[0], "m=video 0 RTP/AVP 96");
        assert_eq!(v[1], "a=rtpmap:96 H264/90000");
        assert!(v[2].starts_with("a=fmtp:96 "));
        assert_eq!(*v.last().unwrap(), "a=control:streamid=0");
        assert_eq!(a[0], "m=audio 0 RTP/AVP 97");
        assert_eq!(a[1], "a=rtpmap:97 MPEG4-GENERIC/44100/2");
        assert!(a[2].starts_with("a=fmtp:97 "), "{}", a[2]);
        assert!(a[2].contains("config="), "{}", a[2]);
        assert_eq!(*a.last().unwrap(), "a=control:streamid=1");
        assert!(!sdp.contains(":96 MPEG4"), "{sdp}");

        let rt = roundtrip(&sdp);
        assert_eq!(
            rt[1].structure(0).unwrap().get::<i32>("payload").unwrap(),
            97
        );
        assert_eq!(
            rt[1]
                .structure(0)
                .unwrap()
                .get::<&str>("encoding-name")
                .unwrap(),
            "MPEG4-GENERIC"
        );

        // Without remapping, build_sdp refuses (ZLMediaKit routes by PT).
        let dup = [
            SdpTrack {
                caps: &video,
                payload_type: 96,
                control: "streamid=0".into(),
            },
            SdpTrack {
                caps: &audio,
                payload_type: 96,
                control: "streamid=1".into(),
            },
        ];
        let err = build_sdp(&session(), &dup).unwrap_err();
        assert!(matches!(
            err,
            SdpError::DuplicatePayloadType {
                payload_type: 96,
                ..
            }
        ));
        assert!(err.to_string().contains("streamid=1"), "{err}");
    }

    #[test]
    fn remapped_pt_rewrites_framesize_and_rtcp_fb() {
        init();
        let caps = gst::Caps::from_str(
            "application/x-rtp, media=video, clock-rate=90000, encoding-name=VP8, payload=96, \
             a-framesize=(string)640-480, rtcp-fb-nack=true, rtcp-fb-nack-pli=true",
        )
        .unwrap();
        let sdp = one_track(&caps, 101);
        assert_eq!(line_with(&sdp, "m="), "m=video 0 RTP/AVP 101");
        assert_eq!(line_with(&sdp, "a=rtpmap:"), "a=rtpmap:101 VP8/90000");
        assert_eq!(line_with(&sdp, "a=framesize:"), "a=framesize:101 640-480");
        assert_eq!(line_with(&sdp, "a=rtcp-fb:"), "a=rtcp-fb:101 nack");
        // No media or attribute line names the old PT (the o= line's random session id may
        // contain the digits).
        let names_96 = |l: &str| l.split([' ', ':']).any(|t| t == "96");
        assert!(
            !sdp.lines()
                .filter(|l| l.starts_with("m=") || l.starts_with("a="))
                .any(names_96),
            "{sdp}"
        );
    }

    #[test]
    fn relay_junk_is_filtered() {
        init();
        // Caps as rtspsrc produces them from a camera's SDP.
        let caps = gst::Caps::from_str(
            "application/x-rtp, media=(string)video, payload=(int)96, clock-rate=(int)90000, \
             encoding-name=(string)H264, packetization-mode=(string)1, profile-level-id=(string)4d001f, \
             sprop-parameter-sets=(string)\"Z0LAHtkAoD2wEQAAAwABAAADADIPFi5I\\,aMuDyyA\\=\", \
             a-framerate=(string)25, a-recvonly=(string)\"\", a-tool=(string)\"LIVE555 Streaming Media\", \
             a-type=(string)broadcast, x-qt-text-nam=(string)camera, x-dimensions=(string)\"1920,1080\", \
             ssrc=(uint)1, clock-base=(uint)2, seqnum-base=(uint)3, npt-start=(guint64)0, \
             play-speed=(double)1, play-scale=(double)1, onvif-mode=(boolean)false",
        )
        .unwrap();
        let sdp = one_track(&caps, 96);
        let media: Vec<&str> = lines(&sdp)
            .into_iter()
            .skip_while(|l| !l.starts_with("m="))
            .collect();
        assert_eq!(
            media,
            [
                "m=video 0 RTP/AVP 96",
                "a=rtpmap:96 H264/90000",
                "a=fmtp:96 packetization-mode=1;profile-level-id=4d001f;sprop-parameter-sets=Z0LAHtkAoD2wEQAAAwABAAADADIPFi5I,aMuDyyA=",
                "a=framerate:25",
                "a=control:streamid=0",
            ]
        );
    }

    #[test]
    fn errors() {
        init();
        let check = |caps: &str, pt: u8, control: &str| {
            let caps = gst::Caps::from_str(caps).unwrap();
            let tracks = [SdpTrack {
                caps: &caps,
                payload_type: pt,
                control: control.into(),
            }];
            build_sdp(&session(), &tracks).unwrap_err()
        };
        let ok = "application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=0";

        let e = check("video/x-h264,stream-format=byte-stream", 96, "streamid=0");
        assert!(matches!(e, SdpError::CapsNotRtp(_)), "{e:?}");
        assert!(e.to_string().contains("video/x-h264"), "{e}");
        assert!(e.to_string().contains("application/x-rtp"), "{e}");

        let e = check("ANY", 96, "streamid=0");
        assert!(matches!(e, SdpError::CapsNotRtp(_)), "{e:?}");
        let e = check("EMPTY", 96, "streamid=0");
        assert!(matches!(e, SdpError::CapsNotRtp(_)), "{e:?}");

        for (field, caps) in [
            ("media", "application/x-rtp,clock-rate=8000,encoding-name=PCMU,payload=0"),
            ("encoding-name", "application/x-rtp,media=audio,clock-rate=8000,payload=0"),
            ("clock-rate", "application/x-rtp,media=audio,encoding-name=PCMU,payload=0"),
            ("payload", "application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU"),
            (
                "clock-rate",
                "application/x-rtp,media=audio,clock-rate=(string)8000,encoding-name=PCMU,payload=0",
            ),
        ] {
            let e = check(caps, 0, "streamid=0");
            match &e {
                SdpError::MissingField { field: f, .. } => assert_eq!(*f, field, "{e}"),
                _ => panic!("{e:?}"),
            }
            assert!(e.to_string().contains(field) && e.to_string().contains("application/x-rtp"));
        }

        let e = check(
            "application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=200",
            0,
            "streamid=0",
        );
        assert!(matches!(e, SdpError::InvalidField { .. }), "{e:?}");
        let e = check(ok, 128, "streamid=0");
        assert!(
            matches!(
                e,
                SdpError::InvalidPayloadType {
                    payload_type: 128,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = check(ok, 0, "");
        assert!(matches!(e, SdpError::InvalidControl(_)), "{e:?}");
        let e = check(ok, 0, "streamid=0\r\na=evil");
        assert!(matches!(e, SdpError::InvalidControl(_)), "{e:?}");

        let caps = gst::Caps::from_str(ok).unwrap();
        let tracks = [SdpTrack {
            caps: &caps,
            payload_type: 0,
            control: "streamid=0".into(),
        }];
        let s = SdpSession {
            local_addr: None,
            server_addr: None,
            session_name: "a\r\nb",
        };
        assert!(matches!(
            build_sdp(&s, &tracks).unwrap_err(),
            SdpError::InvalidSessionName(_)
        ));
        assert!(matches!(
            build_sdp(&session(), &[]).unwrap_err(),
            SdpError::NoTracks
        ));
    }

    #[test]
    fn control_chars_in_fmtp_value_rejected() {
        init();
        let mut caps = gst::Caps::from_str(
            "application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=0",
        )
        .unwrap();
        caps.make_mut()
            .structure_mut(0)
            .unwrap()
            .set("foo", "a\r\na=evil:1");
        let tracks = [SdpTrack {
            caps: &caps,
            payload_type: 0,
            control: "streamid=0".into(),
        }];
        let e = build_sdp(&session(), &tracks).unwrap_err();
        match &e {
            SdpError::InvalidField { field, .. } => assert_eq!(field, "foo"),
            _ => panic!("{e:?}"),
        }
    }

    #[test]
    fn fmtp_cleanup() {
        assert_eq!(
            clean_fmtp("96 packetization-mode=1;sprop-parameter-sets=;profile-level-id=42e01f")
                .as_deref(),
            Some("96 packetization-mode=1;profile-level-id=42e01f")
        );
        assert_eq!(clean_fmtp("96 sprop-parameter-sets=").as_deref(), None);
        assert_eq!(clean_fmtp("96 a=1; b=2").as_deref(), Some("96 a=1;b=2"));
    }

    #[test]
    fn assign_pts() {
        assert_eq!(assign_payload_types(&[]), Vec::<u8>::new());
        assert_eq!(assign_payload_types(&[96]), [96]);
        assert_eq!(assign_payload_types(&[96, 97]), [96, 97]);
        assert_eq!(assign_payload_types(&[96, 96]), [96, 97]);
        // 97 is used by a later pad: skip it.
        assert_eq!(assign_payload_types(&[96, 96, 97]), [96, 98, 97]);
        assert_eq!(assign_payload_types(&[96, 96, 96]), [96, 97, 98]);
        // Static collisions go to the dynamic range; distinct static PTs are kept.
        assert_eq!(assign_payload_types(&[0, 0]), [0, 96]);
        assert_eq!(assign_payload_types(&[0, 8, 96, 0]), [0, 8, 96, 97]);
        assert_eq!(assign_payload_types(&[8, 96, 96, 8]), [8, 96, 97, 98]);
        // Invalid PTs get a dynamic one.
        assert_eq!(assign_payload_types(&[200, 96]), [97, 96]);
        // Lowest free, counting PTs of pads not yet seen.
        assert_eq!(assign_payload_types(&[100, 100, 96, 97]), [100, 98, 96, 97]);
        // Exhaust the dynamic range: 33 pads on 96.
        let out = assign_payload_types(&[96; 33]);
        assert_eq!(out[..32], (96u8..=127).collect::<Vec<_>>()[..]);
        assert_eq!(out[32], 77);
        let mut sorted = out.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 33);
        // All 128 PTs used: beyond the fallback ranges the input is kept.
        let all: Vec<u8> = (0..=127).collect();
        assert_eq!(assign_payload_types(&all), all);
    }

    #[test]
    fn lacks_parameter_sets_other_codecs() {
        init();
        for c in [
            "application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=0",
            "application/x-rtp,media=video,clock-rate=90000,encoding-name=VP8,payload=96",
            "video/x-h264",
            "EMPTY",
        ] {
            assert!(
                !lacks_parameter_sets(&gst::Caps::from_str(c).unwrap()),
                "{c}"
            );
        }
        // encoding-name is case-insensitive
        let c = gst::Caps::from_str(
            "application/x-rtp,media=video,clock-rate=90000,encoding-name=h264,payload=96",
        )
        .unwrap();
        assert!(lacks_parameter_sets(&c));
    }

    /// Prints the SDP for H.264 + AAC (run with --nocapture to see it).
    #[test]
    fn sample_h264_aac() {
        let video = caps_from_pipeline(
            "videotestsrc num-buffers=3 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
             ! x264enc ! rtph264pay",
        );
        let audio = caps_from_pipeline(&format!(
            "audiotestsrc num-buffers=3 ! audio/x-raw,rate=44100,channels=2 ! {} ! rtpmp4gpay",
            aac_encoder()
        ));
        let tracks = [
            SdpTrack {
                caps: &video,
                payload_type: 96,
                control: "streamid=0".into(),
            },
            SdpTrack {
                caps: &audio,
                payload_type: 97,
                control: "streamid=1".into(),
            },
        ];
        let sdp = sdp_to_string(&build_sdp(&session(), &tracks).unwrap());
        println!("{video}\n{audio}\n{sdp}");
        lines(&sdp);
    }
}
