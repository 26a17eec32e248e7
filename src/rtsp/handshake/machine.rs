//! The state machine: what each answer of the server leads to, up to RECORD.

use super::{HandshakeError, Negotiated, NegotiatedTrack, RequestContext, SrtpOffer, UdpPorts};
use crate::rtsp::auth::{parse_challenges, strongest, Authenticator, Credentials};
use crate::rtsp::headers::{Lower, Transport};
use crate::rtsp::message::{Request, Response};
use crate::rtsp::url::{ControlStyle, RtspUrl};

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
    pub(crate) ctx: RequestContext,
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
    /// SRTP keys to offer, and whether SAVP is still what we offer (a fallback turns it off).
    srtp: Option<SrtpOffer>,
    secure: bool,
    srtp_refused: Option<String>,
}

/// A server may retire a nonce during the handshake, but not at every request: past this many
/// `stale=true` answers the credentials count as refused (a server that says stale to every
/// attempt would otherwise be asked again for ever, as fast as it answers).
pub(super) const MAX_STALE_RENEWALS: u32 = 3;

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
            srtp: None,
            secure: false,
            srtp_refused: None,
        }
    }

    /// Offers SRTP: RTP/SAVP transports, each SETUP with its track's MIKEY message in a
    /// `KeyMgmt` header (the SDP given to `new` already says RTP/SAVP and carries them too).
    pub fn with_srtp(mut self, offer: Option<SrtpOffer>) -> Self {
        self.secure = offer.is_some();
        self.srtp = offer;
        self
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
            Transport::request(lower, (2 * index) as u8, ports, self.secure),
        );
        if let (true, Some(offer)) = (self.secure, &self.srtp) {
            if let Some(mikey) = offer.mikeys.get(index) {
                r.headers
                    .push("KeyMgmt", crate::srtp::keymgmt_header(&uri, mikey));
            }
        }
        self.send(r)
    }

    /// A 4xx to an RTP/SAVP SETUP: another transport first on 461 (it may be the transport the
    /// server refuses, not SRTP), then plain RTP/AVP from ANNOUNCE on, if `profiles` allows it.
    fn savp_refused(
        &mut self,
        index: usize,
        method: String,
        uri: String,
        resp: &Response,
    ) -> Result<Step, HandshakeError> {
        if resp.status == 461 && index == 0 && self.transport + 1 < self.transports.len() {
            self.transport += 1;
            return Ok(self.setup_request(0));
        }
        if index == 0 {
            if let Some(step) = self.fall_back_to_avp(&method, &uri, resp) {
                return Ok(step);
            }
        }
        Err(HandshakeError::EncryptionRefused {
            method,
            uri,
            status: resp.status,
            reason: resp.reason.clone(),
        })
    }

    /// Plain RTP/AVP from ANNOUNCE on, after the server refused SRTP, if `profiles` allows it.
    fn fall_back_to_avp(&mut self, method: &str, uri: &str, resp: &Response) -> Option<Step> {
        let plain = self.srtp.as_ref().and_then(|o| o.plain_sdp.clone())?;
        let why = format!(
            "server refused encryption ({method} {uri} with RTP/SAVP: {} {}): publishing unencrypted RTP/AVP, as profiles allows",
            resp.status, resp.reason
        );
        gst::info!(crate::CAT, "{why}");
        self.srtp_refused = Some(why);
        self.secure = false;
        self.sdp = plain;
        self.transport = 0;
        self.tracks.clear();
        let uri = self.url.request_uri();
        let mut r = self.ctx.request("ANNOUNCE", &uri);
        r.headers.push("Content-Type", "application/sdp");
        r.body = self.sdp.clone().into_bytes();
        self.phase = Phase::Announce;
        Some(self.send(r))
    }

    /// A 4xx to an ANNOUNCE whose SDP says RTP/SAVP (gst-rtsp-server answers 415 when the
    /// factory's profiles lack SAVP): plain RTP if allowed; else, for 415 and 461, the
    /// encryption error (other refusals are not about SRTP and keep their own error).
    fn savp_announce_refused(
        &mut self,
        method: String,
        uri: String,
        resp: &Response,
    ) -> Option<Result<Step, HandshakeError>> {
        if let Some(step) = self.fall_back_to_avp(&method, &uri, resp) {
            return Some(Ok(step));
        }
        matches!(resp.status, 415 | 461).then(|| {
            Err(HandshakeError::EncryptionRefused {
                method,
                uri,
                status: resp.status,
                reason: resp.reason.clone(),
            })
        })
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
            self.public = Some(crate::rtsp::headers::parse_public(p));
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
        if self.phase == Phase::Announce
            && self.secure
            && (400..500).contains(&resp.status)
            && !matches!(resp.status, 401 | 403 | 404)
        {
            if let Some(r) = self.savp_announce_refused(method.clone(), uri.clone(), resp) {
                return r;
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
        if let (Phase::Setup(i), true) = (self.phase, self.secure) {
            if (400..500).contains(&resp.status) {
                return self.savp_refused(i, method, uri, resp);
            }
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
                    srtp: self.secure,
                    srtp_refused: self.srtp_refused.take(),
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
        // The server's own key (for the SRTCP it sends), when it gives one.
        let keymgmt = resp
            .headers
            .get("KeyMgmt")
            .filter(|_| self.secure)
            .map(str::to_string);
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
                keymgmt: keymgmt.clone(),
            });
        };
        let t = Transport::parse(value).map_err(|e| HandshakeError::Transport(e.0))?;
        if self.secure && !t.profile.to_ascii_uppercase().starts_with("RTP/SAVP") {
            return Err(HandshakeError::Transport(format!(
                "asked for RTP/SAVP (SRTP), server answered {value:?}: it would take the media unencrypted"
            )));
        }
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
                keymgmt,
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
            keymgmt,
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
fn channel_clash(
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
