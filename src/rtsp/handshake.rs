//! The push handshake as a state machine: ANNOUNCE, one SETUP per track, RECORD.
//! It is fed parsed responses and returns the next request; it does no I/O.

use super::auth::{parse_challenges, strongest, Authenticator, Credentials};
use super::headers::{Lower, Session, Transport};
use super::message::{Request, Response};
use super::url::{ControlStyle, RtspUrl, Scheme};
use std::fmt;

/// The transports a session may offer, in order of preference, from the URL scheme and the
/// `protocols` flags: TCP interleaved first (it crosses NAT and firewalls, and interop
/// practice recommends it), then UDP. `rtspt://` means TCP only, `rtspu://` UDP only,
/// `rtsps://` TLS over TCP. Multicast is not implemented and never chosen.
pub fn transports_for(scheme: Scheme, tcp: bool, udp: bool) -> Result<Vec<Lower>, String> {
    let (want_tcp, want_udp, what) = match scheme {
        Scheme::Rtsp => (tcp, udp, None),
        Scheme::RtspT => (tcp, false, Some(("rtspt://", "TCP", "tcp"))),
        Scheme::Rtsps => (tcp, false, Some(("rtsps://", "TCP (with TLS)", "tcp"))),
        Scheme::RtspU => (false, udp, Some(("rtspu://", "UDP", "udp"))),
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
            None => "protocols allows neither tcp nor udp (udp-mcast and http tunnelling are not implemented)".into(),
        });
    }
    Ok(v)
}

/// Per-connection request context: CSeq, Session, User-Agent. Outlives the handshake, so
/// keep-alives and TEARDOWN are built the same way.
#[derive(Debug, Clone)]
pub struct RequestContext {
    next_cseq: u32,
    pub session: Option<Session>,
    pub user_agent: String,
    /// Set once a server asked for credentials: every later request carries them.
    pub auth: Option<Authenticator>,
}

impl RequestContext {
    pub fn new(user_agent: &str) -> Self {
        RequestContext {
            next_cseq: 1,
            session: None,
            user_agent: user_agent.to_string(),
            auth: None,
        }
    }

    /// Gives `req` the next CSeq and current credentials (for a request sent again after 401).
    pub fn renew(&mut self, req: &Request) -> Request {
        let mut r = self.request(&req.method, &req.uri);
        for (n, v) in &req.headers.0 {
            if r.headers.get(n).is_none() && !n.eq_ignore_ascii_case("Authorization") {
                r.headers.push(n.clone(), v.clone());
            }
        }
        r.body = req.body.clone();
        r
    }

    /// A request with CSeq, User-Agent and (once known) the session id alone: MediaMTX rejects
    /// a Session header that carries `;timeout=`.
    pub fn request(&mut self, method: &str, uri: &str) -> Request {
        let mut r = Request::new(method, uri);
        r.headers.push("CSeq", self.next_cseq.to_string());
        self.next_cseq += 1;
        if !self.user_agent.is_empty() {
            r.headers.push("User-Agent", self.user_agent.clone());
        }
        if let Some(s) = &self.session {
            r.headers.push("Session", s.id.clone());
        }
        if let Some(a) = &mut self.auth {
            r.headers
                .push("Authorization", a.authorization(method, uri));
        }
        r
    }

    /// Takes the session from the first response that carries one.
    pub fn learn_session(&mut self, resp: &Response) -> Result<(), HandshakeError> {
        if let Some(v) = resp.headers.get("Session") {
            let s = Session::parse(v).map_err(|e| HandshakeError::BadResponse(e.0))?;
            match &mut self.session {
                None => self.session = Some(s),
                // Keep the id, but take a timeout the server states later.
                Some(cur) if cur.timeout.is_none() => cur.timeout = s.timeout,
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Where a UDP track's packets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPorts {
    /// Our RTP and RTCP ports, as bound and announced in `client_port`.
    pub client: (u16, u16),
    /// The server's RTP and RTCP ports (`server_port`).
    pub server: (u16, u16),
    /// `source=` from the answer: the address to send to, if not the RTSP peer's.
    pub source: Option<String>,
}

/// What was agreed for one track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedTrack {
    pub control_uri: String,
    /// Interleaved channels (TCP); with UDP, 2n and 2n+1 still name the track's RTP and RTCP
    /// inside the element.
    pub rtp_channel: u8,
    pub rtcp_channel: u8,
    /// SSRC the server says it expects, if any (informational).
    pub ssrc: Option<u32>,
    /// Set when the track goes over UDP.
    pub udp: Option<UdpPorts>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub tracks: Vec<NegotiatedTrack>,
    pub session_id: Option<String>,
    /// Seconds, from `Session: id;timeout=N`, 60 when the server states none (RFC 2326 12.37).
    pub session_timeout: u64,
    /// Methods from a `Public` header, if the server sent one.
    pub public: Option<Vec<String>>,
    /// The transport every track uses.
    pub lower: Lower,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Announce,
    /// OPTIONS sent because ANNOUNCE was refused in a way OPTIONS first may cure.
    Options,
    Setup(usize),
    Record,
    Done,
}

/// What the caller should do next.
#[derive(Debug)]
pub enum Step {
    Send(Request),
    /// Bind a UDP port pair for this track, then call [`Handshake::udp_ports_bound`].
    BindUdp(usize),
    Done(Negotiated),
}

pub struct Handshake {
    url: RtspUrl,
    creds: Option<Credentials>,
    /// The request in flight, to send again with credentials after a 401.
    last: Option<Request>,
    style: ControlStyle,
    sdp: String,
    controls: Vec<String>,
    pub ctx: RequestContext,
    phase: Phase,
    content_base: Option<String>,
    tracks: Vec<NegotiatedTrack>,
    /// Method, URI and CSeq of the request in flight.
    pending: Option<(String, String, u32)>,
    tried_options: bool,
    public: Option<Vec<String>>,
    /// Transports allowed, in order of preference, and the one in use.
    transports: Vec<Lower>,
    transport: usize,
    /// Our UDP ports per track, once bound.
    client_ports: Vec<Option<(u16, u16)>>,
    /// Requests sent again because the server said our nonce went stale.
    stale_renewals: u32,
}

/// A server may retire a nonce during the handshake, but not at every request: past this many
/// `stale=true` answers the credentials count as refused (a server that says stale to every
/// attempt would otherwise be asked again for ever, as fast as it answers).
const MAX_STALE_RENEWALS: u32 = 3;

impl Handshake {
    pub fn new(
        url: RtspUrl,
        style: ControlStyle,
        sdp: String,
        controls: Vec<String>,
        ctx: RequestContext,
    ) -> Self {
        Handshake {
            url,
            creds: None,
            last: None,
            style,
            sdp,
            controls,
            ctx,
            phase: Phase::Idle,
            content_base: None,
            tracks: Vec::new(),
            pending: None,
            tried_options: false,
            public: None,
            transports: vec![Lower::Tcp],
            transport: 0,
            client_ports: Vec::new(),
            stale_renewals: 0,
        }
    }

    /// The transports to offer, in order of preference (TCP interleaved alone by default). A
    /// SETUP refused with 461 is tried again with the next one.
    pub fn with_transports(mut self, transports: &[Lower]) -> Self {
        if !transports.is_empty() {
            self.transports = transports.to_vec();
        }
        self
    }

    fn lower(&self) -> Lower {
        self.transports[self.transport]
    }

    /// The UDP ports bound for `index` after [`Step::BindUdp`]: returns its SETUP.
    pub fn udp_ports_bound(&mut self, index: usize, rtp: u16, rtcp: u16) -> Step {
        if self.client_ports.len() <= index {
            self.client_ports.resize(index + 1, None);
        }
        self.client_ports[index] = Some((rtp, rtcp));
        self.setup_request(index)
    }

    /// Credentials to answer a 401 with.
    pub fn with_credentials(mut self, creds: Option<Credentials>) -> Self {
        self.creds = creds;
        self
    }

    fn send(&mut self, req: Request) -> Step {
        let cseq = req.headers.cseq().unwrap_or(0);
        self.pending = Some((req.method.clone(), req.uri.clone(), cseq));
        self.last = Some(req.clone());
        Step::Send(req)
    }

    /// 401: answer the strongest challenge once (again only if the nonce went stale).
    fn authenticate(&mut self, method: String, resp: &Response) -> Result<Step, HandshakeError> {
        let challenges = parse_challenges(resp.headers.get_all("WWW-Authenticate"));
        let Some(ch) = strongest(&challenges).cloned() else {
            return Err(HandshakeError::Status {
                method,
                uri: self
                    .last
                    .as_ref()
                    .map(|r| r.uri.clone())
                    .unwrap_or_default(),
                status: resp.status,
                reason: format!("{} (no usable WWW-Authenticate challenge)", resp.reason),
            });
        };
        let Some(creds) = self.creds.clone() else {
            return Err(HandshakeError::AuthRequired {
                method,
                challenge: ch.describe(),
            });
        };
        if self.ctx.auth.is_some() && !ch.is_stale() {
            return Err(HandshakeError::AuthRefused {
                method,
                challenge: ch.describe(),
            });
        }
        if self.ctx.auth.is_some() {
            self.stale_renewals += 1;
            if self.stale_renewals > MAX_STALE_RENEWALS {
                return Err(HandshakeError::AuthRefused {
                    method,
                    challenge: format!(
                        "{}, stale again after {MAX_STALE_RENEWALS} new nonces",
                        ch.describe()
                    ),
                });
            }
        }
        self.ctx.auth = Some(Authenticator::new(ch, creds));
        let last = self.last.take().expect("a request was in flight");
        let again = self.ctx.renew(&last);
        Ok(self.send(again))
    }

    /// The first request: ANNOUNCE straight away (one round trip fewer than OPTIONS first).
    pub fn start(&mut self) -> Request {
        let uri = self.url.request_uri();
        let mut r = self.ctx.request("ANNOUNCE", &uri);
        r.headers.push("Content-Type", "application/sdp");
        r.body = self.sdp.clone().into_bytes();
        self.phase = Phase::Announce;
        match self.send(r) {
            Step::Send(r) => r,
            Step::BindUdp(_) | Step::Done(_) => unreachable!(),
        }
    }

    fn setup_request(&mut self, index: usize) -> Step {
        let uri = self.url.control_uri(
            &self.controls[index],
            self.content_base.as_deref(),
            self.style,
        );
        self.phase = Phase::Setup(index);
        let lower = self.lower();
        let ports = self.client_ports.get(index).copied().flatten();
        if lower == Lower::Udp && ports.is_none() {
            self.pending = None;
            return Step::BindUdp(index);
        }
        let mut r = self.ctx.request("SETUP", &uri);
        r.headers.push(
            "Transport",
            Transport::request(lower, (2 * index) as u8, ports),
        );
        self.send(r)
    }

    /// 461 Unsupported Transport: the next allowed transport, as long as no track is set up
    /// yet (a session's tracks share one transport).
    fn transport_refused(
        &mut self,
        index: usize,
        uri: String,
        resp: &Response,
    ) -> Result<Step, HandshakeError> {
        if index == 0 && self.transport + 1 < self.transports.len() {
            self.transport += 1;
            return Ok(self.setup_request(0));
        }
        Err(HandshakeError::NoTransport {
            uri,
            status: resp.status,
            reason: resp.reason.clone(),
            tried: self.transports[..=self.transport].to_vec(),
            track: index,
        })
    }

    /// Feeds the response to the request in flight.
    pub fn handle_response(&mut self, resp: &Response) -> Result<Step, HandshakeError> {
        let Some((method, uri, cseq)) = self.pending.take() else {
            return Err(HandshakeError::BadResponse(
                "response with no request in flight".into(),
            ));
        };
        match resp.headers.cseq() {
            Some(c) if c == cseq => {}
            // A missing CSeq is tolerated (some tiny servers omit it); a wrong one is not.
            None => {}
            Some(c) => {
                return Err(HandshakeError::BadResponse(format!(
                    "{method} was sent with CSeq {cseq} but the answer has CSeq {c}"
                )))
            }
        }
        if let Some(p) = resp.headers.get("Public") {
            self.public = Some(super::headers::parse_public(p));
        }
        if resp.status == 401 {
            return self.authenticate(method, resp);
        }
        if matches!(resp.status, 301 | 302 | 303 | 305 | 307 | 308) {
            if let Some(loc) = resp.headers.get("Location") {
                return Err(HandshakeError::Redirect {
                    status: resp.status,
                    location: loc.trim().to_string(),
                });
            }
        }
        // Some servers want OPTIONS before ANNOUNCE: try that once, then ANNOUNCE again.
        if self.phase == Phase::Announce
            && !self.tried_options
            && matches!(resp.status, 400 | 405 | 454 | 455 | 459 | 501)
        {
            self.tried_options = true;
            self.phase = Phase::Options;
            let r = self.ctx.request("OPTIONS", &self.url.request_uri());
            return Ok(self.send(r));
        }
        if let (Phase::Setup(i), 461) = (self.phase, resp.status) {
            return self.transport_refused(i, uri, resp);
        }
        if !resp.is_success() {
            return Err(HandshakeError::Status {
                method,
                uri,
                status: resp.status,
                reason: resp.reason.clone(),
            });
        }
        self.ctx.learn_session(resp)?;
        match self.phase {
            Phase::Options => {
                // ANNOUNCE again, now that the server has seen OPTIONS.
                let uri = self.url.request_uri();
                let mut r = self.ctx.request("ANNOUNCE", &uri);
                r.headers.push("Content-Type", "application/sdp");
                r.body = self.sdp.clone().into_bytes();
                self.phase = Phase::Announce;
                Ok(self.send(r))
            }
            Phase::Announce => {
                // The base goes into our request lines: one with spaces or control bytes in it
                // would break them (a server's mistake; our own URL serves instead).
                self.content_base = resp
                    .headers
                    .get("Content-Base")
                    .or_else(|| resp.headers.get("Content-Location"))
                    .map(str::trim)
                    .filter(|b| !b.is_empty())
                    .filter(|b| !b.chars().any(|c| c.is_whitespace() || c.is_control()))
                    .map(str::to_string);
                if self.controls.is_empty() {
                    return Err(HandshakeError::BadResponse("no tracks to set up".into()));
                }
                Ok(self.setup_request(0))
            }
            Phase::Setup(i) => {
                let track = self.check_transport(i, resp)?;
                self.tracks.push(track);
                if i + 1 < self.controls.len() {
                    Ok(self.setup_request(i + 1))
                } else {
                    let uri = self.url.aggregate_uri(self.style);
                    let mut r = self.ctx.request("RECORD", &uri);
                    r.headers.push("Range", "npt=0.000-");
                    self.phase = Phase::Record;
                    Ok(self.send(r))
                }
            }
            Phase::Record => {
                self.phase = Phase::Done;
                Ok(Step::Done(Negotiated {
                    tracks: std::mem::take(&mut self.tracks),
                    session_id: self.ctx.session.as_ref().map(|s| s.id.clone()),
                    session_timeout: self
                        .ctx
                        .session
                        .as_ref()
                        .and_then(|s| s.timeout)
                        .filter(|t| *t > 0)
                        .unwrap_or(60),
                    public: self.public.clone(),
                    lower: self.lower(),
                }))
            }
            Phase::Idle | Phase::Done => Err(HandshakeError::BadResponse(
                "unexpected response after the handshake".into(),
            )),
        }
    }

    fn check_transport(
        &self,
        index: usize,
        resp: &Response,
    ) -> Result<NegotiatedTrack, HandshakeError> {
        let control_uri = self.pending_uri_for(index);
        let asked = (2 * index) as u8;
        let lower = self.lower();
        let Some(value) = resp.headers.get("Transport") else {
            if lower == Lower::Udp {
                return Err(HandshakeError::Transport(
                    "the answer to a UDP SETUP has no Transport header, so no server_port to send to".into(),
                ));
            }
            // Some servers omit it when they accept the request as is.
            return Ok(NegotiatedTrack {
                control_uri,
                rtp_channel: asked,
                rtcp_channel: asked.wrapping_add(1),
                ssrc: None,
                udp: None,
            });
        };
        let t = Transport::parse(value).map_err(|e| HandshakeError::Transport(e.0))?;
        if t.lower != lower {
            return Err(HandshakeError::Transport(format!(
                "asked for {}, server answered {value:?}",
                lower.describe()
            )));
        }
        if lower == Lower::Udp {
            let client = self
                .client_ports
                .get(index)
                .copied()
                .flatten()
                .ok_or_else(|| HandshakeError::BadResponse("UDP SETUP without ports".into()))?;
            let Some((rtp, rtcp)) = t.server_port.filter(|(p, _)| *p != 0) else {
                return Err(HandshakeError::Transport(format!(
                    "the answer to a UDP SETUP has no server_port: {value:?}"
                )));
            };
            // "server_port=N" alone: RTCP goes to N+1 (RFC 3550's convention).
            let rtcp = if rtcp == rtp {
                rtp.wrapping_add(1)
            } else {
                rtcp
            };
            return Ok(NegotiatedTrack {
                control_uri,
                rtp_channel: asked,
                rtcp_channel: asked.wrapping_add(1),
                ssrc: t.ssrc,
                udp: Some(UdpPorts {
                    client,
                    server: (rtp, rtcp),
                    source: t.source.filter(|s| !s.is_empty()),
                }),
            });
        }
        let (rtp, rtcp) = t.interleaved.unwrap_or((asked, asked.wrapping_add(1)));
        if let Some(clash) = channel_clash(&self.tracks, index, (rtp, rtcp)) {
            return Err(HandshakeError::Transport(clash));
        }
        Ok(NegotiatedTrack {
            control_uri,
            rtp_channel: rtp,
            rtcp_channel: rtcp,
            ssrc: t.ssrc,
            udp: None,
        })
    }

    fn pending_uri_for(&self, index: usize) -> String {
        self.url.control_uri(
            &self.controls[index],
            self.content_base.as_deref(),
            self.style,
        )
    }
}

/// Why track `index` cannot have the interleaved channels `(rtp, rtcp)` next to the tracks set
/// up before it (`earlier[n]` is track n), if it cannot: every channel of the session carries
/// one thing only, so a track's RTP and RTCP differ and no channel is an earlier track's.
/// Otherwise our sender reports would go out as another stream's media, and the server's
/// reports would be read as the wrong track's.
pub fn channel_clash(
    earlier: &[NegotiatedTrack],
    index: usize,
    (rtp, rtcp): (u8, u8),
) -> Option<String> {
    if rtp == rtcp {
        return Some(format!(
            "server gave track {index} interleaved channels {rtp}-{rtcp}: RTP and RTCP on one channel"
        ));
    }
    for (n, o) in earlier.iter().enumerate() {
        for (what, ch) in [("RTP", rtp), ("RTCP", rtcp)] {
            let theirs = if ch == o.rtp_channel {
                "RTP"
            } else if ch == o.rtcp_channel {
                "RTCP"
            } else {
                continue;
            };
            return Some(format!(
                "server gave track {index} interleaved channels {rtp}-{rtcp}, but its {what} \
                 channel {ch} is already track {n}'s {theirs} channel ({}-{})",
                o.rtp_channel, o.rtcp_channel
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(cseq: u32, extra: &[(&str, &str)]) -> Response {
        let mut r = Response::new(200, "OK");
        r.headers.push("CSeq", cseq.to_string());
        for (n, v) in extra {
            r.headers.push(*n, *v);
        }
        r
    }

    fn hs(url: &str, n: usize) -> Handshake {
        Handshake::new(
            RtspUrl::parse(url).unwrap(),
            ControlStyle::Ffmpeg,
            "v=0\r\n".into(),
            (0..n).map(|i| format!("streamid={i}")).collect(),
            RequestContext::new("rtspannounce/0.1"),
        )
    }

    fn send(step: Step) -> Request {
        match step {
            Step::Send(r) => r,
            Step::BindUdp(i) => panic!("asked to bind UDP ports for track {i}"),
            Step::Done(_) => panic!("done too early"),
        }
    }

    fn refused(cseq: u32, status: u16, reason: &str) -> Response {
        let mut r = Response::new(status, reason);
        r.headers.push("CSeq", cseq.to_string());
        r
    }

    fn udp_hs(url: &str, n: usize, transports: &[Lower]) -> Handshake {
        hs(url, n).with_transports(transports)
    }

    #[test]
    fn transports_from_scheme_and_protocols() {
        use Lower::*;
        assert_eq!(
            transports_for(Scheme::Rtsp, true, true).unwrap(),
            [Tcp, Udp]
        );
        assert_eq!(transports_for(Scheme::Rtsp, false, true).unwrap(), [Udp]);
        assert_eq!(transports_for(Scheme::Rtsp, true, false).unwrap(), [Tcp]);
        assert_eq!(transports_for(Scheme::RtspT, true, true).unwrap(), [Tcp]);
        assert_eq!(transports_for(Scheme::RtspU, true, true).unwrap(), [Udp]);
        assert_eq!(transports_for(Scheme::Rtsps, true, true).unwrap(), [Tcp]);
        let e = transports_for(Scheme::RtspT, false, true).unwrap_err();
        assert!(e.contains("rtspt:// means TCP only"), "{e}");
        let e = transports_for(Scheme::RtspU, true, false).unwrap_err();
        assert!(e.contains("rtspu:// means UDP only"), "{e}");
        let e = transports_for(Scheme::Rtsp, false, false).unwrap_err();
        assert!(e.contains("udp-mcast"), "{e}");
    }

    #[test]
    fn udp_setup_binds_then_asks_client_ports() {
        let mut h = udp_hs("rtsp://h/live", 2, &[Lower::Udp]);
        h.start();
        assert!(matches!(
            h.handle_response(&ok(1, &[])).unwrap(),
            Step::BindUdp(0)
        ));
        let s0 = send(h.udp_ports_bound(0, 5000, 5001));
        assert_eq!(
            s0.headers.get("Transport"),
            Some("RTP/AVP;unicast;client_port=5000-5001;mode=record")
        );
        assert_eq!(s0.headers.get("CSeq"), Some("2"));
        let step = h
            .handle_response(&ok(
                2,
                &[
                    ("Session", "S"),
                    (
                        "Transport",
                        "RTP/AVP;unicast;client_port=5000-5001;server_port=7000-7001;source=10.1.2.3",
                    ),
                ],
            ))
            .unwrap();
        assert!(matches!(step, Step::BindUdp(1)));
        let s1 = send(h.udp_ports_bound(1, 5002, 5003));
        assert_eq!(
            s1.headers.get("Transport"),
            Some("RTP/AVP;unicast;client_port=5002-5003;mode=record")
        );
        // A single server port: RTCP is the next one.
        send(
            h.handle_response(&ok(3, &[("Transport", "RTP/AVP;unicast;server_port=7002")]))
                .unwrap(),
        );
        let Step::Done(n) = h.handle_response(&ok(4, &[])).unwrap() else {
            panic!()
        };
        assert_eq!(n.lower, Lower::Udp);
        let u0 = n.tracks[0].udp.clone().unwrap();
        assert_eq!(u0.client, (5000, 5001));
        assert_eq!(u0.server, (7000, 7001));
        assert_eq!(u0.source.as_deref(), Some("10.1.2.3"));
        let u1 = n.tracks[1].udp.clone().unwrap();
        assert_eq!(u1.server, (7002, 7003));
        assert_eq!(u1.source, None);
        // Channels still tell the tracks apart inside the element.
        assert_eq!((n.tracks[1].rtp_channel, n.tracks[1].rtcp_channel), (2, 3));
    }

    #[test]
    fn udp_answer_needs_server_port_and_udp() {
        for answer in [
            None,
            Some("RTP/AVP;unicast;client_port=5000-5001"),
            Some("RTP/AVP/TCP;unicast;interleaved=0-1"),
        ] {
            let mut h = udp_hs("rtsp://h/live", 1, &[Lower::Udp]);
            h.start();
            h.handle_response(&ok(1, &[])).unwrap();
            send(h.udp_ports_bound(0, 5000, 5001));
            let extra: Vec<(&str, &str)> = answer.iter().map(|a| ("Transport", *a)).collect();
            let e = h.handle_response(&ok(2, &extra)).unwrap_err();
            assert!(matches!(e, HandshakeError::Transport(_)), "{answer:?}: {e}");
        }
    }

    #[test]
    fn tcp_refused_with_461_falls_back_to_udp() {
        let mut h = udp_hs("rtsp://h/live", 2, &[Lower::Tcp, Lower::Udp]);
        h.start();
        let s0 = send(h.handle_response(&ok(1, &[])).unwrap());
        assert!(s0.headers.get("Transport").unwrap().contains("/TCP"));
        let step = h
            .handle_response(&refused(2, 461, "Unsupported Transport"))
            .unwrap();
        assert!(matches!(step, Step::BindUdp(0)));
        let s0 = send(h.udp_ports_bound(0, 5000, 5001));
        assert_eq!(s0.method, "SETUP");
        assert_eq!(s0.uri, "rtsp://h:554/live/streamid=0");
        assert_eq!(s0.headers.get("CSeq"), Some("3"));
        assert!(s0
            .headers
            .get("Transport")
            .unwrap()
            .starts_with("RTP/AVP;unicast;client_port=5000-5001"));
        // The second track goes straight to UDP.
        let step = h
            .handle_response(&ok(3, &[("Transport", "RTP/AVP;server_port=7000-7001")]))
            .unwrap();
        assert!(matches!(step, Step::BindUdp(1)));
        send(h.udp_ports_bound(1, 5002, 5003));
        send(
            h.handle_response(&ok(4, &[("Transport", "RTP/AVP;server_port=7002-7003")]))
                .unwrap(),
        );
        let Step::Done(n) = h.handle_response(&ok(5, &[])).unwrap() else {
            panic!()
        };
        assert_eq!(n.lower, Lower::Udp);
    }

    #[test]
    fn udp_first_then_tcp_when_preferred_so() {
        let mut h = udp_hs("rtsp://h/live", 1, &[Lower::Udp, Lower::Tcp]);
        h.start();
        h.handle_response(&ok(1, &[])).unwrap();
        send(h.udp_ports_bound(0, 5000, 5001));
        let s = send(
            h.handle_response(&refused(2, 461, "Unsupported Transport"))
                .unwrap(),
        );
        assert_eq!(
            s.headers.get("Transport"),
            Some("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record")
        );
    }

    #[test]
    fn refused_transports_are_named() {
        // TCP only: the error says what was tried and what `protocols` did not allow.
        let mut h = udp_hs("rtsp://h/live", 1, &[Lower::Tcp]);
        h.start();
        h.handle_response(&ok(1, &[])).unwrap();
        let e = h
            .handle_response(&refused(2, 461, "Unsupported Transport"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "server refused SETUP rtsp://h:554/live/streamid=0: 461 Unsupported Transport (transports tried: TCP interleaved; not allowed by `protocols` or the URL scheme: udp)"
        );
        // Both tried.
        let mut h = udp_hs("rtsp://h/live", 1, &[Lower::Tcp, Lower::Udp]);
        h.start();
        h.handle_response(&ok(1, &[])).unwrap();
        h.handle_response(&refused(2, 461, "Unsupported Transport"))
            .unwrap();
        send(h.udp_ports_bound(0, 5000, 5001));
        let e = h
            .handle_response(&refused(3, 461, "Unsupported Transport"))
            .unwrap_err();
        assert!(
            matches!(&e, HandshakeError::NoTransport { tried, .. } if tried == &[Lower::Tcp, Lower::Udp]),
            "{e:?}"
        );
        assert!(
            e.to_string().contains(
                "transports tried: TCP interleaved, then UDP unicast; no other transport to try"
            ),
            "{e}"
        );
        // A later track refused: no switching mid-session.
        let mut h = udp_hs("rtsp://h/live", 2, &[Lower::Tcp, Lower::Udp]);
        h.start();
        h.handle_response(&ok(1, &[])).unwrap();
        h.handle_response(&ok(2, &[])).unwrap();
        let e = h
            .handle_response(&refused(3, 461, "Unsupported Transport"))
            .unwrap_err();
        assert!(matches!(e, HandshakeError::NoTransport { track: 1, .. }));
        assert!(e.to_string().contains("one transport"), "{e}");
        // Other SETUP refusals are not transport refusals.
        let mut h = udp_hs("rtsp://h/live", 1, &[Lower::Tcp, Lower::Udp]);
        h.start();
        h.handle_response(&ok(1, &[])).unwrap();
        assert!(matches!(
            h.handle_response(&refused(2, 454, "Session Not Found")),
            Err(HandshakeError::Status { status: 454, .. })
        ));
    }

    #[test]
    fn two_track_sequence_session_from_setup() {
        let mut h = hs("rtsp://127.0.0.1:8554/live/cam1", 2);
        let a = h.start();
        assert_eq!(a.method, "ANNOUNCE");
        assert_eq!(a.uri, "rtsp://127.0.0.1:8554/live/cam1");
        assert_eq!(a.headers.get("CSeq"), Some("1"));
        assert_eq!(a.headers.get("Content-Type"), Some("application/sdp"));
        assert_eq!(a.headers.get("User-Agent"), Some("rtspannounce/0.1"));
        assert_eq!(a.headers.get("Session"), None);

        let s0 = send(h.handle_response(&ok(1, &[])).unwrap());
        assert_eq!(s0.method, "SETUP");
        assert_eq!(s0.uri, "rtsp://127.0.0.1:8554/live/cam1/streamid=0");
        assert_eq!(
            s0.headers.get("Transport"),
            Some("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record")
        );
        assert_eq!(s0.headers.get("CSeq"), Some("2"));
        assert_eq!(s0.headers.get("Session"), None);

        let s1 = send(
            h.handle_response(&ok(
                2,
                &[
                    ("Session", "ABC;timeout=30"),
                    ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1"),
                ],
            ))
            .unwrap(),
        );
        assert_eq!(s1.uri, "rtsp://127.0.0.1:8554/live/cam1/streamid=1");
        assert_eq!(s1.headers.get("Session"), Some("ABC"));
        assert_eq!(
            s1.headers.get("Transport"),
            Some("RTP/AVP/TCP;unicast;interleaved=2-3;mode=record")
        );

        // The server picks other channels: those are the ones used.
        let rec = send(
            h.handle_response(&ok(
                3,
                &[
                    ("Session", "ABC;timeout=30"),
                    ("Transport", "RTP/AVP/TCP;unicast;interleaved=6-7"),
                ],
            ))
            .unwrap(),
        );
        assert_eq!(rec.method, "RECORD");
        assert_eq!(rec.uri, "rtsp://127.0.0.1:8554/live/cam1");
        assert_eq!(rec.headers.get("Range"), Some("npt=0.000-"));
        assert_eq!(rec.headers.get("Session"), Some("ABC"));
        assert_eq!(rec.headers.get("CSeq"), Some("4"));

        let Step::Done(n) = h.handle_response(&ok(4, &[("Session", "ABC")])).unwrap() else {
            panic!()
        };
        assert_eq!(n.session_id.as_deref(), Some("ABC"));
        assert_eq!(n.session_timeout, 30);
        assert_eq!((n.tracks[0].rtp_channel, n.tracks[0].rtcp_channel), (0, 1));
        assert_eq!((n.tracks[1].rtp_channel, n.tracks[1].rtcp_channel), (6, 7));
    }

    #[test]
    fn a_content_base_that_cannot_be_in_a_request_line_is_not_used() {
        // Found by the server_requests fuzz target: "Content-Base: \0\0" made the SETUP line
        // "SETUP \0\0/streamid=0 RTSP/1.0".
        for base in [
            "\0\0",
            "rtsp://h/a b/",
            "rtsp://h/x\r/",
            "rtsp://h/\u{85}x/",
        ] {
            let mut h = hs("rtsp://h/live", 1);
            h.start();
            let s0 = send(
                h.handle_response(&ok(1, &[("Content-Base", base)]))
                    .unwrap(),
            );
            assert_eq!(s0.uri, "rtsp://h:554/live/streamid=0", "{base:?}");
        }
        let mut h = hs("rtsp://h/live", 1);
        h.start();
        let s0 = send(
            h.handle_response(&ok(1, &[("Content-Base", " rtsp://h/base/ ")]))
                .unwrap(),
        );
        assert_eq!(s0.uri, "rtsp://h/base/streamid=0");
    }

    #[test]
    fn session_from_announce_and_content_base() {
        let mut h = hs("rtsp://h/live/x?secret=1", 1);
        h.start();
        let s0 = send(
            h.handle_response(&ok(
                1,
                &[
                    ("Session", "Z1"),
                    ("Content-Base", "rtsp://h/live/x?secret=1/"),
                ],
            ))
            .unwrap(),
        );
        assert_eq!(s0.headers.get("Session"), Some("Z1"));
        assert_eq!(s0.uri, "rtsp://h/live/x?secret=1/streamid=0");
        let rec = send(h.handle_response(&ok(2, &[])).unwrap());
        assert_eq!(rec.uri, "rtsp://h:554/live/x?secret=1");
        let Step::Done(n) = h.handle_response(&ok(3, &[])).unwrap() else {
            panic!()
        };
        assert_eq!(n.session_timeout, 60);
    }

    #[test]
    fn query_style_without_content_base() {
        let mut h = hs("rtsp://h/live/x?secret=1", 1);
        h.start();
        let s0 = send(h.handle_response(&ok(1, &[])).unwrap());
        assert_eq!(s0.uri, "rtsp://h:554/live/x?secret=1/streamid=0");
    }

    #[test]
    fn refusals_name_method_and_status() {
        let mut h = hs("rtsp://h/live", 1);
        h.start();
        let mut r = Response::new(404, "Not Found");
        r.headers.push("CSeq", "1");
        let e = h.handle_response(&r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "server refused ANNOUNCE rtsp://h:554/live: 404 Not Found"
        );
    }

    #[test]
    fn wrong_cseq_and_udp_transport_rejected() {
        let mut h = hs("rtsp://h/live", 1);
        h.start();
        assert!(matches!(
            h.handle_response(&ok(9, &[])),
            Err(HandshakeError::BadResponse(_))
        ));
        let mut h = hs("rtsp://h/live", 1);
        h.start();
        h.handle_response(&ok(1, &[])).unwrap();
        let e = h
            .handle_response(&ok(
                2,
                &[("Transport", "RTP/AVP;unicast;client_port=5000-5001")],
            ))
            .unwrap_err();
        assert!(matches!(e, HandshakeError::Transport(_)), "{e}");
    }

    #[test]
    fn duplicate_channels_rejected() {
        let mut h = hs("rtsp://h/live", 2);
        h.start();
        h.handle_response(&ok(1, &[])).unwrap();
        h.handle_response(&ok(2, &[("Transport", "RTP/AVP/TCP;interleaved=0-1")]))
            .unwrap();
        let e = h
            .handle_response(&ok(3, &[("Transport", "RTP/AVP/TCP;interleaved=0-1")]))
            .unwrap_err();
        assert!(matches!(e, HandshakeError::Transport(_)));
    }

    /// Answers ANNOUNCE and the SETUPs of `transports.len()` tracks with these Transport values;
    /// the result of the last SETUP.
    fn setup_answers(transports: &[&str]) -> Result<Step, HandshakeError> {
        let mut h = hs("rtsp://h/live", transports.len());
        h.start();
        h.handle_response(&ok(1, &[])).unwrap();
        let (last, first) = transports.split_last().unwrap();
        for (i, t) in first.iter().enumerate() {
            h.handle_response(&ok(2 + i as u32, &[("Transport", t)]))
                .unwrap_or_else(|e| panic!("track {i} {t:?}: {e}"));
        }
        h.handle_response(&ok(1 + transports.len() as u32, &[("Transport", last)]))
    }

    #[test]
    fn every_interleaved_channel_is_one_tracks_alone() {
        let clash = |ts: &[&str]| match setup_answers(ts) {
            Err(HandshakeError::Transport(m)) => m,
            other => panic!("{ts:?}: {other:?}"),
        };
        // RTCP on an earlier track's RTCP channel.
        let m = clash(&["RTP/AVP/TCP;interleaved=0-1", "RTP/AVP/TCP;interleaved=2-1"]);
        assert!(m.contains("track 1") && m.contains("RTCP channel 1"), "{m}");
        assert!(m.contains("track 0's RTCP channel"), "{m}");
        // RTCP on an earlier track's RTP channel, RTP on an earlier track's RTCP channel.
        let m = clash(&["RTP/AVP/TCP;interleaved=0-1", "RTP/AVP/TCP;interleaved=4-0"]);
        assert!(m.contains("track 0's RTP channel"), "{m}");
        let m = clash(&["RTP/AVP/TCP;interleaved=0-1", "RTP/AVP/TCP;interleaved=1-2"]);
        assert!(
            m.contains("RTP channel 1") && m.contains("track 0's RTCP"),
            "{m}"
        );
        // One track's RTP and RTCP on one channel.
        let m = clash(&["RTP/AVP/TCP;interleaved=4-4"]);
        assert!(m.contains("track 0") && m.contains("4-4"), "{m}");
        // The third track against the first.
        let m = clash(&[
            "RTP/AVP/TCP;interleaved=0-1",
            "RTP/AVP/TCP;interleaved=2-3",
            "RTP/AVP/TCP;interleaved=5-0",
        ]);
        assert!(m.contains("track 2") && m.contains("track 0's RTP"), "{m}");
        // Single values: RTCP on the next channel, so 0 then 1 clash, 0 then 2 do not.
        let m = clash(&["RTP/AVP/TCP;interleaved=0", "RTP/AVP/TCP;interleaved=1"]);
        assert!(m.contains("track 0's RTCP channel"), "{m}");
        let Ok(Step::Send(_)) =
            setup_answers(&["RTP/AVP/TCP;interleaved=0", "RTP/AVP/TCP;interleaved=2"])
        else {
            panic!("distinct channels refused");
        };
        // Distinct but unusual channels are fine.
        let Ok(Step::Send(_)) = setup_answers(&[
            "RTP/AVP/TCP;interleaved=9-3",
            "RTP/AVP/TCP;interleaved=200-201",
        ]) else {
            panic!("distinct channels refused");
        };
    }

    fn unauthorized(cseq: u32, challenge: &str) -> Response {
        let mut r = Response::new(401, "Unauthorized");
        r.headers.push("CSeq", cseq.to_string());
        r.headers.push("WWW-Authenticate", challenge);
        r
    }

    fn with_creds(url: &str) -> Handshake {
        hs(url, 1).with_credentials(Some(Credentials {
            user: "u".into(),
            password: "p".into(),
        }))
    }

    #[test]
    fn basic_auth_once_then_on_every_request() {
        let mut h = with_creds("rtsp://h/live");
        let a = h.start();
        assert_eq!(a.headers.get("Authorization"), None);
        let again = send(
            h.handle_response(&unauthorized(1, "Basic realm=\"x\""))
                .unwrap(),
        );
        assert_eq!(again.method, "ANNOUNCE");
        assert_eq!(again.headers.get("CSeq"), Some("2"));
        assert_eq!(again.headers.get("Authorization"), Some("Basic dTpw"));
        assert_eq!(again.body, a.body);
        assert_eq!(again.headers.get("Content-Type"), Some("application/sdp"));
        let setup = send(h.handle_response(&ok(2, &[])).unwrap());
        assert_eq!(setup.headers.get("Authorization"), Some("Basic dTpw"));
        // A second 401 is a refusal.
        let e = h
            .handle_response(&unauthorized(3, "Basic realm=\"x\""))
            .unwrap_err();
        assert!(matches!(e, HandshakeError::AuthRefused { .. }), "{e}");
    }

    #[test]
    fn digest_stale_nonce_is_retried() {
        let mut h = with_creds("rtsp://h/live");
        h.start();
        let r = send(
            h.handle_response(&unauthorized(1, "Digest realm=\"x\", nonce=\"n1\""))
                .unwrap(),
        );
        assert!(r
            .headers
            .get("Authorization")
            .unwrap()
            .contains("nonce=\"n1\""));
        let r = send(
            h.handle_response(&unauthorized(
                2,
                "Digest realm=\"x\", nonce=\"n2\", stale=true",
            ))
            .unwrap(),
        );
        assert!(r
            .headers
            .get("Authorization")
            .unwrap()
            .contains("nonce=\"n2\""));
        assert_eq!(r.headers.get("CSeq"), Some("3"));
    }

    #[test]
    fn stale_for_ever_is_refused() {
        let mut h = with_creds("rtsp://h/live");
        h.start();
        let mut cseq = 1;
        let mut step = h.handle_response(&unauthorized(cseq, "Digest realm=\"x\", nonce=\"n0\""));
        for i in 1..=MAX_STALE_RENEWALS {
            assert!(step.is_ok(), "renewal {i}: {step:?}");
            cseq += 1;
            step = h.handle_response(&unauthorized(
                cseq,
                &format!("Digest realm=\"x\", nonce=\"n{i}\", stale=true"),
            ));
        }
        assert!(step.is_ok(), "{step:?}");
        cseq += 1;
        let e = h
            .handle_response(&unauthorized(
                cseq,
                "Digest realm=\"x\", nonce=\"last\", stale=true",
            ))
            .unwrap_err();
        assert!(matches!(e, HandshakeError::AuthRefused { .. }), "{e}");
        assert!(e.to_string().contains("stale again"), "{e}");
    }

    #[test]
    fn no_credentials_is_a_clear_error() {
        let mut h = hs("rtsp://h/live", 1);
        h.start();
        let e = h
            .handle_response(&unauthorized(1, "Digest realm=\"cams\", nonce=\"n\""))
            .unwrap_err();
        assert!(matches!(e, HandshakeError::AuthRequired { .. }));
        assert!(e.to_string().contains("user-id"), "{e}");
        assert!(e.to_string().contains("cams"), "{e}");
    }

    #[test]
    fn options_then_announce_again_when_refused() {
        let mut h = hs("rtsp://h/live", 1);
        let a = h.start();
        let mut r = Response::new(455, "Method Not Valid in This State");
        r.headers.push("CSeq", "1");
        let o = send(h.handle_response(&r).unwrap());
        assert_eq!(o.method, "OPTIONS");
        let a2 = send(
            h.handle_response(&ok(
                2,
                &[("Public", "OPTIONS, ANNOUNCE, SETUP, RECORD, TEARDOWN")],
            ))
            .unwrap(),
        );
        assert_eq!(a2.method, "ANNOUNCE");
        assert_eq!(a2.body, a.body);
        assert_eq!(a2.headers.get("CSeq"), Some("3"));
        send(h.handle_response(&ok(3, &[])).unwrap());
        send(h.handle_response(&ok(4, &[])).unwrap());
        let Step::Done(n) = h.handle_response(&ok(5, &[])).unwrap() else {
            panic!()
        };
        assert_eq!(
            n.public.unwrap(),
            ["OPTIONS", "ANNOUNCE", "SETUP", "RECORD", "TEARDOWN"]
        );
        // A second refusal is final.
        let mut h = hs("rtsp://h/live", 1);
        h.start();
        h.handle_response(&r).unwrap();
        h.handle_response(&ok(2, &[])).unwrap();
        let mut r2 = r.clone();
        r2.headers.set("CSeq", "3");
        assert!(matches!(
            h.handle_response(&r2),
            Err(HandshakeError::Status { status: 455, .. })
        ));
    }

    #[test]
    fn redirect_is_reported_with_location() {
        let mut h = hs("rtsp://h/live", 1);
        h.start();
        let mut r = Response::new(302, "Found");
        r.headers.push("CSeq", "1");
        r.headers.push("Location", "rtsp://other:8554/live");
        assert_eq!(
            h.handle_response(&r).unwrap_err(),
            HandshakeError::Redirect {
                status: 302,
                location: "rtsp://other:8554/live".into()
            }
        );
    }

    #[test]
    fn bad_session_header_is_an_error() {
        let mut h = hs("rtsp://h/live", 1);
        h.start();
        assert!(h.handle_response(&ok(1, &[("Session", "")])).is_err());
    }
}
