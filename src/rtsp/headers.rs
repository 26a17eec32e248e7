//! Typed views of the headers the push handshake needs: Transport, Session, Public.

use std::fmt;

/// What the server answered in SETUP's Transport header (the parts we use).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transport {
    pub(crate) profile: String,
    pub(crate) lower: Lower,
    pub(crate) unicast: bool,
    pub(crate) interleaved: Option<(u8, u8)>,
    pub(crate) client_port: Option<(u16, u16)>,
    pub(crate) server_port: Option<(u16, u16)>,
    pub(crate) source: Option<String>,
    pub(crate) ssrc: Option<u32>,
    pub(crate) mode: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lower {
    #[default]
    Udp,
    Tcp,
}

impl Lower {
    /// How errors and stats name it.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Lower::Tcp => "TCP interleaved",
            Lower::Udp => "UDP unicast",
        }
    }

    /// The `protocols` flag that allows it.
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Lower::Tcp => "tcp",
            Lower::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError(pub(crate) String);

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn pair<T: std::str::FromStr + Copy>(v: &str) -> Option<(T, T)> {
    match v.split_once('-') {
        Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
        // A single port: the caller decides where RTCP goes (see `check_transport`).
        None => {
            let a: T = v.trim().parse().ok()?;
            Some((a, a))
        }
    }
}

/// `interleaved=N-M`, or `interleaved=N` (RFC 2326 12.39 allows a single value): RTP on N and
/// RTCP on N+1, as rtspsrc reads it. A single 255 leaves no channel for RTCP.
fn interleaved(v: &str, value: &str) -> Result<(u8, u8), HeaderError> {
    let bad = || {
        HeaderError(format!(
            "malformed interleaved parameter in Transport {value:?}"
        ))
    };
    match v.split_once('-') {
        Some((a, b)) => Ok((
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        )),
        None => {
            let rtp: u8 = v.trim().parse().map_err(|_| bad())?;
            let rtcp = rtp.checked_add(1).ok_or_else(|| {
                HeaderError(format!(
                    "interleaved={rtp} in Transport {value:?} leaves no channel for RTCP (it would be {})",
                    rtp as u16 + 1
                ))
            })?;
            Ok((rtp, rtcp))
        }
    }
}

impl Transport {
    /// The TCP interleaved request for track `index`: channels 2n and 2n+1.
    /// Written by hand: `mode=record` must be lower-case and unquoted (FFmpeg's listener compares
    /// it case-sensitively; rtsp-types would write `mode="RECORD"`).
    fn tcp_request(profile: &str, rtp_channel: u8) -> String {
        format!(
            "{profile}/TCP;unicast;interleaved={}-{};mode=record",
            rtp_channel,
            rtp_channel.wrapping_add(1)
        )
    }

    /// The UDP unicast request for a track whose RTP/RTCP sockets are bound to `rtp`/`rtcp`.
    /// Hand-written for the same reason as `tcp_request`.
    fn udp_request(profile: &str, rtp: u16, rtcp: u16) -> String {
        format!("{profile};unicast;client_port={rtp}-{rtcp};mode=record")
    }

    /// The request for `lower`: interleaved channels for TCP, client ports for UDP; `secure`
    /// asks for SRTP (`RTP/SAVP`).
    pub(crate) fn request(
        lower: Lower,
        channel: u8,
        ports: Option<(u16, u16)>,
        secure: bool,
    ) -> String {
        let profile = if secure { "RTP/SAVP" } else { "RTP/AVP" };
        match (lower, ports) {
            (Lower::Udp, Some((rtp, rtcp))) => Transport::udp_request(profile, rtp, rtcp),
            _ => Transport::tcp_request(profile, channel),
        }
    }

    /// Parses the first transport spec of a (possibly comma-separated) Transport header.
    pub fn parse(value: &str) -> Result<Transport, HeaderError> {
        let spec = value.split(',').next().unwrap_or("").trim();
        let mut parts = spec.split(';');
        let profile = parts.next().unwrap_or("").trim();
        let mut t = Transport {
            profile: profile.to_string(),
            ..Default::default()
        };
        let upper = profile.to_ascii_uppercase();
        if !upper.starts_with("RTP/AVP") && !upper.starts_with("RTP/SAVP") {
            return Err(HeaderError(format!(
                "unsupported transport profile {profile:?} in {value:?}"
            )));
        }
        t.lower = if upper.ends_with("/TCP") {
            Lower::Tcp
        } else {
            Lower::Udp
        };
        for p in parts {
            let p = p.trim();
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"')),
                None => (p.to_ascii_lowercase(), ""),
            };
            let bad = || HeaderError(format!("malformed {k} parameter in Transport {value:?}"));
            match k.as_str() {
                "unicast" => t.unicast = true,
                "multicast" => t.unicast = false,
                "interleaved" => t.interleaved = Some(interleaved(v, value)?),
                "client_port" => t.client_port = Some(pair(v).ok_or_else(bad)?),
                "server_port" => t.server_port = Some(pair(v).ok_or_else(bad)?),
                "source" => t.source = Some(v.to_string()),
                "ssrc" => t.ssrc = u32::from_str_radix(v, 16).ok(),
                "mode" => t.mode = Some(v.to_ascii_lowercase()),
                _ => {}
            }
        }
        Ok(t)
    }
}

/// `Session: id[;timeout=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub(crate) timeout: Option<u64>,
}

impl Session {
    pub fn parse(value: &str) -> Result<Session, HeaderError> {
        let mut parts = value.split(';');
        let id = parts.next().unwrap_or("").trim();
        if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(HeaderError(format!("malformed Session header {value:?}")));
        }
        let timeout = parts.find_map(|p| {
            let (k, v) = p.split_once('=')?;
            if k.trim().eq_ignore_ascii_case("timeout") {
                v.trim().parse().ok()
            } else {
                None
            }
        });
        Ok(Session {
            id: id.to_string(),
            timeout,
        })
    }
}

/// Methods listed in a `Public` header, upper-cased.
pub(crate) fn parse_public(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|m| m.trim().to_ascii_uppercase())
        .filter(|m| !m.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_request_is_lower_case_unquoted() {
        assert_eq!(
            Transport::tcp_request("RTP/AVP", 2),
            "RTP/AVP/TCP;unicast;interleaved=2-3;mode=record"
        );
    }

    #[test]
    fn udp_request_is_lower_case_unquoted() {
        assert_eq!(
            Transport::udp_request("RTP/AVP", 5000, 5001),
            "RTP/AVP;unicast;client_port=5000-5001;mode=record"
        );
        assert_eq!(
            Transport::request(Lower::Udp, 2, Some((6000, 6001)), false),
            "RTP/AVP;unicast;client_port=6000-6001;mode=record"
        );
        assert_eq!(
            Transport::request(Lower::Tcp, 2, None, false),
            "RTP/AVP/TCP;unicast;interleaved=2-3;mode=record"
        );
        assert_eq!(
            Transport::request(Lower::Tcp, 2, None, true),
            "RTP/SAVP/TCP;unicast;interleaved=2-3;mode=record"
        );
        assert_eq!(
            Transport::request(Lower::Udp, 0, Some((6000, 6001)), true),
            "RTP/SAVP;unicast;client_port=6000-6001;mode=record"
        );
        // What gst-rtsp-server answers a UDP SETUP in record mode.
        let t = Transport::parse(
            "RTP/AVP;unicast;client_port=5000-5001;server_port=41234-41235;mode=\"RECORD\"",
        )
        .unwrap();
        assert_eq!(t.lower, Lower::Udp);
        assert_eq!(t.server_port, Some((41234, 41235)));
        // "RTP/AVP/UDP" is UDP too.
        let t = Transport::parse("RTP/AVP/UDP;unicast;server_port=7000-7001").unwrap();
        assert_eq!(t.lower, Lower::Udp);
    }

    #[test]
    fn parse_server_transport() {
        let t = Transport::parse("RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=0000BEEF").unwrap();
        assert_eq!(t.lower, Lower::Tcp);
        assert!(t.unicast);
        assert_eq!(t.interleaved, Some((0, 1)));
        assert_eq!(t.ssrc, Some(0xbeef));
        let t = Transport::parse(
            "RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001;source=10.0.0.1;mode=\"RECORD\"",
        )
        .unwrap();
        assert_eq!(t.lower, Lower::Udp);
        assert_eq!(t.client_port, Some((5000, 5001)));
        assert_eq!(t.server_port, Some((6000, 6001)));
        assert_eq!(t.source.as_deref(), Some("10.0.0.1"));
        assert_eq!(t.mode.as_deref(), Some("record"));
        assert!(Transport::parse("RAW/RAW/UDP;unicast").is_err());
        assert!(Transport::parse("RTP/AVP/TCP;interleaved=x-y").is_err());
        assert!(Transport::parse("RTP/AVP/TCP;interleaved=300-301").is_err());
    }

    #[test]
    fn single_interleaved_value_puts_rtcp_on_the_next_channel() {
        // RFC 2326 12.39 allows one value; RTCP then goes on the next channel, as rtspsrc
        // reads it (it used to come out as 4-4, so sender reports went on the RTP channel).
        let t = Transport::parse("RTP/AVP/TCP;interleaved=4").unwrap();
        assert_eq!(t.interleaved, Some((4, 5)));
        let t = Transport::parse("RTP/AVP/TCP;unicast;interleaved= 0 ;mode=record").unwrap();
        assert_eq!(t.interleaved, Some((0, 1)));
        assert_eq!(
            Transport::parse("RTP/AVP/TCP;interleaved=254")
                .unwrap()
                .interleaved,
            Some((254, 255))
        );
        // An explicit pair is taken as written (the handshake refuses 4-4 as a clash).
        let t = Transport::parse("RTP/AVP/TCP;interleaved=4-4").unwrap();
        assert_eq!(t.interleaved, Some((4, 4)));
        let e = Transport::parse("RTP/AVP/TCP;interleaved=255").unwrap_err();
        assert!(e.0.contains("no channel for RTCP"), "{e}");
        assert!(Transport::parse("RTP/AVP/TCP;interleaved=").is_err());
        assert!(Transport::parse("RTP/AVP/TCP;interleaved=-1").is_err());
    }

    #[test]
    fn session_header() {
        assert_eq!(
            Session::parse("KPUZ49ejotyD").unwrap(),
            Session {
                id: "KPUZ49ejotyD".into(),
                timeout: None
            }
        );
        assert_eq!(
            Session::parse("abc123; timeout=30").unwrap(),
            Session {
                id: "abc123".into(),
                timeout: Some(30)
            }
        );
        assert!(Session::parse("").is_err());
        assert!(Session::parse(" ;timeout=3").is_err());
    }

    #[test]
    fn public_header() {
        assert_eq!(
            parse_public("OPTIONS, ANNOUNCE,setup ,RECORD"),
            vec!["OPTIONS", "ANNOUNCE", "SETUP", "RECORD"]
        );
    }
}
