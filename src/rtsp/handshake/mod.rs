//! The push handshake as a state machine: ANNOUNCE, one SETUP per track, RECORD.
//! It is fed parsed responses and returns the next request; it does no I/O.

mod machine;
mod request;
#[cfg(test)]
mod tests;

pub use machine::{Handshake, Step};
pub use request::RequestContext;

use super::headers::Lower;
use super::url::Scheme;
use std::fmt;

/// The transports a session may offer, in order of preference, from the URL scheme and the
/// `protocols` flags: TCP interleaved first (it crosses NAT and firewalls, and interop
/// practice recommends it), then UDP. `rtspt://` means TCP only, `rtspu://` UDP only,
/// `rtsps://` TLS over TCP. Multicast is not implemented and never chosen.
pub(crate) fn transports_for(scheme: Scheme, tcp: bool, udp: bool) -> Result<Vec<Lower>, String> {
    let (want_tcp, want_udp, what) = match scheme {
        Scheme::Rtsp => (tcp, udp, None),
        Scheme::RtspT => (tcp, false, Some(("rtspt://", "TCP", "tcp"))),
        Scheme::Rtsps => (tcp, false, Some(("rtsps://", "TCP (with TLS)", "tcp"))),
        Scheme::RtspU => (false, udp, Some(("rtspu://", "UDP", "udp"))),
        // The media go inside the tunnel, interleaved, whatever the tcp flag says.
        Scheme::RtspH | Scheme::RtspsH | Scheme::RtspWs | Scheme::RtspWss => (true, false, None),
    };
    let mut v = Vec::new();
    if want_tcp {
        v.push(Lower::Tcp);
    }
    if want_udp {
        v.push(Lower::Udp);
    }
    if v.is_empty() {
        return Err(match what {
            Some((scheme, only, flag)) => format!(
                "{scheme} means {only} only, but protocols does not allow {flag}: add {flag} to protocols or use rtsp://"
            ),
            None => "protocols allows neither tcp nor udp (udp-mcast is not implemented; http alone needs tcp or an rtsph:// location)".into(),
        });
    }
    Ok(v)
}

/// Where a UDP track's packets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UdpPorts {
    /// Our RTP and RTCP ports, as bound and announced in `client_port`.
    pub(crate) client: (u16, u16),
    /// The server's RTP and RTCP ports (`server_port`).
    pub(crate) server: (u16, u16),
    /// `source=` from the answer: the address to send to, if not the RTSP peer's.
    pub(crate) source: Option<String>,
}

/// What was agreed for one track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedTrack {
    pub(crate) control_uri: String,
    /// Interleaved channels (TCP); with UDP, 2n and 2n+1 still name the track's RTP and RTCP
    /// inside the element.
    pub rtp_channel: u8,
    pub rtcp_channel: u8,
    /// SSRC the server says it expects, if any (informational).
    pub(crate) ssrc: Option<u32>,
    /// Set when the track goes over UDP.
    pub(crate) udp: Option<UdpPorts>,
    /// With SRTP: the server's `KeyMgmt` answer (the key of the SRTCP it sends), if any.
    pub(crate) keymgmt: Option<String>,
}

/// What a session offers for SRTP.
#[derive(Debug, Clone)]
pub struct SrtpOffer {
    /// Each track's MIKEY message, base64, for its SETUP's `KeyMgmt` header.
    pub mikeys: Vec<String>,
    /// The RTP/AVP SDP to announce instead when the server refuses SAVP (`profiles` allows
    /// avp too); None: a refusal is an error.
    pub plain_sdp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub tracks: Vec<NegotiatedTrack>,
    pub session_id: Option<String>,
    /// Seconds, from `Session: id;timeout=N`, 60 when the server states none (RFC 2326 12.37).
    pub(crate) session_timeout: u64,
    /// Methods from a `Public` header, if the server sent one.
    pub(crate) public: Option<Vec<String>>,
    /// The transport every track uses.
    pub(crate) lower: Lower,
    /// The media go as SRTP (RTP/SAVP was accepted).
    pub(crate) srtp: bool,
    /// SRTP was offered, refused, and plain RTP/AVP accepted instead: why, for a warning.
    pub(crate) srtp_refused: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server refused a request.
    Status {
        method: String,
        uri: String,
        status: u16,
        reason: String,
    },
    /// The answer was not what the protocol allows.
    BadResponse(String),
    /// SETUP's Transport answer is something we cannot send with.
    Transport(String),
    /// 3xx with a Location: the caller connects there and starts again.
    Redirect { status: u16, location: String },
    /// 401 and we have no credentials.
    AuthRequired { method: String, challenge: String },
    /// 401 again after we answered the challenge.
    AuthRefused { method: String, challenge: String },
    /// SETUP of RTP/SAVP refused (a 4xx), and `profiles` does not allow plain RTP/AVP.
    EncryptionRefused {
        method: String,
        uri: String,
        status: u16,
        reason: String,
    },
    /// SETUP refused with 461 for every transport we may use (`tried`, in order), or for a
    /// later track after the first was set up (tracks share one transport).
    NoTransport {
        uri: String,
        status: u16,
        reason: String,
        tried: Vec<Lower>,
        track: usize,
    },
}

fn describe_all(l: &[Lower]) -> String {
    l.iter()
        .map(|l| l.describe())
        .collect::<Vec<_>>()
        .join(", then ")
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Status {
                method,
                uri,
                status,
                reason,
            } => write!(f, "server refused {method} {uri}: {status} {reason}"),
            HandshakeError::BadResponse(m) => write!(f, "malformed server response: {m}"),
            HandshakeError::EncryptionRefused {
                method,
                uri,
                status,
                reason,
            } => write!(
                f,
                "server refused encryption: {method} {uri} with RTP/SAVP (SRTP) answered {status} {reason}; add avp to profiles to allow unencrypted RTP"
            ),
            HandshakeError::Transport(m) => write!(f, "unusable SETUP Transport: {m}"),
            HandshakeError::Redirect { status, location } => {
                write!(f, "redirected ({status}) to {location}")
            }
            HandshakeError::AuthRequired { method, challenge } => write!(
                f,
                "server requires authentication for {method} ({challenge}): set user-id and user-pw, or put them in the location URL"
            ),
            HandshakeError::AuthRefused { method, challenge } => write!(
                f,
                "server refused the credentials for {method} ({challenge}): check user-id and user-pw"
            ),
            HandshakeError::NoTransport {
                uri,
                status,
                reason,
                tried,
                track,
            } if *track > 0 => write!(
                f,
                "server refused SETUP {uri}: {status} {reason} for {} after accepting it for track 0 (all tracks of a session use one transport)",
                describe_all(&tried[tried.len().saturating_sub(1)..])
            ),
            HandshakeError::NoTransport {
                uri,
                status,
                reason,
                tried,
                ..
            } => {
                let untried: Vec<&str> = [Lower::Tcp, Lower::Udp]
                    .iter()
                    .filter(|l| !tried.contains(l))
                    .map(|l| l.flag())
                    .collect();
                write!(
                    f,
                    "server refused SETUP {uri}: {status} {reason} (transports tried: {}",
                    describe_all(tried)
                )?;
                if untried.is_empty() {
                    f.write_str("; no other transport to try)")
                } else {
                    write!(
                        f,
                        "; not allowed by `protocols` or the URL scheme: {})",
                        untried.join(", ")
                    )
                }
            }
        }
    }
}
