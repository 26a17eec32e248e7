//! Dialing: from a URL to a recording connection. Resolves, connects (TLS when asked), runs
//! ANNOUNCE/SETUP/RECORD, follows redirects and binds the UDP ports a SETUP asks for. It knows
//! nothing of the element or the session: what the SDP says comes from the caller.

use super::connection::{Control, SessionError, Stream};
use super::tls::TlsOptions;
use super::tunnel::TunnelConfig;
use super::udp::{UdpSession, UdpTrack};
use crate::rtsp::auth::Credentials;
use crate::rtsp::handshake::{Handshake, HandshakeError, Negotiated, RequestContext, SrtpOffer};
use crate::rtsp::headers::Lower;
use crate::rtsp::message::{Limits, Parser};
use crate::rtsp::url::{ControlStyle, RtspUrl};
use crate::sdp::Described;
use crate::srtp::{Protector, TrackKey, Unprotector};
use crate::CAT;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Redirects followed at most, per dial.
const MAX_HOPS: usize = 5;

/// What dialing needs, fixed for a session.
#[derive(Debug, Clone)]
pub(crate) struct DialConfig {
    pub url: RtspUrl,
    pub creds: Option<Credentials>,
    pub user_agent: String,
    pub tcp_timeout: Duration,
    pub style: ControlStyle,
    /// Transports to offer, in order of preference (never empty).
    pub transports: Vec<Lower>,
    /// RTSP over TLS for every hop (`rtsps://` turns it on for a hop too).
    pub tls: bool,
    pub tls_options: TlsOptions,
    /// Local UDP ports to bind from (`port-range`), else OS-chosen.
    pub port_range: Option<(u16, u16)>,
    /// The TCP send buffer to ask for (None: the kernel's).
    pub send_buffer: Option<u32>,
    /// UDP sends wait for socket room (blocking policy) instead of dropping.
    pub udp_blocking: bool,
    /// SRTP to offer (`profiles` with savp), None: plain RTP/AVP.
    pub srtp: Option<crate::srtp::Policy>,
    /// RTSP over HTTP (`rtsph://`, `rtspsh://` turn it on for a hop too).
    pub tunnel: Option<TunnelConfig>,
}

/// (local, server) addresses the SDP's o= and c= lines name.
pub(crate) type Addrs = (Option<IpAddr>, Option<IpAddr>);

type DescribeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Described, SessionError>> + Send + 'a>>;

/// Builds the SDP for a pair of addresses (the caller runs `update-sdp` there).
pub(crate) type Describe<'a> = &'a (dyn Fn(Addrs) -> DescribeFuture<'a> + Send + Sync);

/// A connection whose RECORD was answered.
pub(crate) struct Dialed {
    pub control: Control,
    pub negotiated: Negotiated,
    pub ctx: RequestContext,
    /// Per track, the payload type it is sent with when not its own.
    pub pt_rewrites: Vec<Option<u8>>,
    pub round_trips: u32,
    pub duration: Duration,
    /// Where RECORD was answered (after redirects).
    pub url: RtspUrl,
    pub udp: Option<Arc<UdpSession>>,
    /// Set when the media go as SRTP.
    pub srtp: Option<SrtpTracks>,
}

/// Each track's SRTP context once the server accepted RTP/SAVP.
pub(crate) struct SrtpTracks {
    pub protectors: Vec<Arc<Protector>>,
    /// For the server's SRTCP, from its KeyMgmt answer (None: it gave none, or one we cannot use).
    pub unprotectors: Vec<Option<Arc<Unprotector>>>,
    /// What to warn about: KeyMgmt answers that could not be used, and why.
    pub warnings: Vec<String>,
}

/// Keys made for an SRTP offer, before the server answered.
struct Offered {
    keys: Vec<TrackKey>,
    protectors: Vec<Arc<Protector>>,
}

/// A key and a `Protector` per track, their MIKEY messages in the SDP and the handshake's offer.
fn offer_srtp(
    policy: crate::srtp::Policy,
    text: String,
    ssrcs: &[Option<u32>],
) -> Result<(String, SrtpOffer, Offered), SessionError> {
    let bad = |e: String| SessionError::Sdp(crate::sdp::SdpError::Srtp(e));
    let keys = ssrcs
        .iter()
        .enumerate()
        .map(|(i, ssrc)| {
            ssrc.map(|ssrc| TrackKey::generate(policy.suite, ssrc)).ok_or_else(|| {
                bad(format!(
                    "track {i}'s caps name no ssrc, and the server needs it to find the track's key: set ssrc on the payloader or in the caps"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mikeys = keys
        .iter()
        .map(crate::srtp::mikey_for)
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let protectors = keys
        .iter()
        .map(|k| Protector::new(k).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SessionError::Local(format!("cannot set up SRTP: {e}")))?;
    let secured = crate::sdp::secure(&text, &mikeys).map_err(SessionError::Sdp)?;
    gst::info!(
        CAT,
        "offering RTP/SAVP ({:?}), {}",
        policy.suite,
        if policy.allow_plain {
            "RTP/AVP if refused"
        } else {
            "no unencrypted fallback"
        }
    );
    let offer = SrtpOffer {
        mikeys,
        plain_sdp: policy.allow_plain.then_some(text),
    };
    Ok((secured, offer, Offered { keys, protectors }))
}

/// After RECORD: what the server's KeyMgmt answers give for reading its SRTCP.
fn accepted_srtp(offered: Offered, negotiated: &Negotiated) -> SrtpTracks {
    let mut warnings = Vec::new();
    let unprotectors = negotiated
        .tracks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let header = t.keymgmt.as_deref()?;
            let made = crate::srtp::parse_keymgmt(header).and_then(|remote| {
                gst::debug!(
                    CAT,
                    "track {i}: the server's SRTCP key ({:?}, SSRCs {:x?})",
                    remote.suite,
                    remote.ssrcs
                );
                Unprotector::new(&remote)
            });
            match made {
                Ok(u) => Some(Arc::new(u)),
                Err(why) => {
                    warnings.push(format!(
                        "the server's KeyMgmt answer to SETUP {} cannot be used: {why}; its receiver reports for track {i} cannot be decrypted",
                        t.control_uri
                    ));
                    None
                }
            }
        })
        .collect();
    drop(offered.keys);
    SrtpTracks {
        protectors: offered.protectors,
        unprotectors,
        warnings,
    }
}

/// Dials for a session; keeps the TLS configuration (the CA store is read once) across
/// reconnects.
pub(crate) struct Dialer {
    cfg: DialConfig,
    tls_config: Mutex<Option<Arc<rustls::ClientConfig>>>,
}

/// A Location header, absolute or relative to the URL that was redirected.
fn resolve_redirect(from: &RtspUrl, location: &str) -> Result<RtspUrl, String> {
    let base = url::Url::parse(&from.request_uri()).map_err(|e| e.to_string())?;
    let joined = base.join(location).map_err(|e| e.to_string())?;
    RtspUrl::parse(joined.as_str()).map_err(|e| e.0)
}

fn bad_redirect(text: String) -> SessionError {
    SessionError::Handshake(HandshakeError::BadResponse(text))
}

impl Dialer {
    pub(crate) fn new(cfg: DialConfig) -> Self {
        Dialer {
            cfg,
            tls_config: Mutex::new(None),
        }
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, SessionError> {
        let mut slot = self.tls_config.lock().unwrap();
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = super::tls::client_config(&self.cfg.tls_options).map_err(SessionError::Tls)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Connects and runs the handshake, following redirects (at most 5 hops, no loops;
    /// credentials go along only to the same host).
    pub(crate) async fn dial(&self, describe: Describe<'_>) -> Result<Dialed, SessionError> {
        let started = Instant::now();
        let mut url = self.cfg.url.clone();
        let mut creds = self.cfg.creds.clone();
        let mut visited = vec![url.request_uri()];
        loop {
            match self.record_once(&url, creds.clone(), describe).await {
                Ok(mut d) => {
                    d.duration = started.elapsed();
                    return Ok(d);
                }
                Err(SessionError::Handshake(HandshakeError::Redirect { status, location })) => {
                    let next = resolve_redirect(&url, &location).map_err(|e| {
                        bad_redirect(format!(
                            "redirect ({status}) to an unusable Location {location:?}: {e}"
                        ))
                    })?;
                    if visited.contains(&next.request_uri()) {
                        return Err(bad_redirect(format!(
                            "redirect loop: {} was already visited",
                            next.request_uri()
                        )));
                    }
                    if visited.len() > MAX_HOPS {
                        return Err(bad_redirect(format!(
                            "more than {MAX_HOPS} redirects, last to {}",
                            next.request_uri()
                        )));
                    }
                    gst::info!(CAT, "redirected ({status}) to {}", next.request_uri());
                    if next.user.is_some() {
                        creds = next.user.clone().map(|user| Credentials {
                            user,
                            password: next.password.clone().unwrap_or_default(),
                        });
                    } else if !next.host.eq_ignore_ascii_case(&self.cfg.url.host) {
                        creds = None;
                    }
                    visited.push(next.request_uri());
                    url = next;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn record_once(
        &self,
        url: &RtspUrl,
        creds: Option<Credentials>,
        describe: Describe<'_>,
    ) -> Result<Dialed, SessionError> {
        let cfg = &self.cfg;
        // Everything ANNOUNCE needs is written before connecting, from the address the
        // connection will most likely use: the server then waits for nothing once it accepts.
        let tunnel = match &cfg.tunnel {
            Some(t) => Some(t.clone()),
            None if url.scheme.tunnelled() => Some(TunnelConfig::default()),
            None => None,
        };
        let proxy = tunnel.as_ref().and_then(|t| t.proxy.as_ref());
        // Through a proxy we connect to the proxy (which resolves the server's name), and the
        // SDP's addresses are the ones of that connection.
        let addrs = match proxy {
            Some(p) => super::socket::resolve_host(&p.host, p.port, cfg.tcp_timeout).await?,
            None => super::socket::resolve(url, cfg.tcp_timeout).await?,
        };
        let guess = (
            super::socket::route_local_addr(addrs[0]),
            Some(addrs[0].ip()),
        );
        let mut described = describe(guess).await?;
        let tls = if cfg.tls || url.scheme.tls() {
            Some(self.tls_config()?)
        } else {
            None
        };
        let stream = match &tunnel {
            None if url.scheme.websocket() => Stream::WebSocket(Box::new(
                super::websocket::open(
                    url,
                    &addrs,
                    cfg.tcp_timeout,
                    cfg.send_buffer,
                    tls,
                    creds.as_ref(),
                    &cfg.user_agent,
                )
                .await?,
            )),
            Some(_) => Stream::Tunnel(Box::new(
                super::tunnel::open(
                    url,
                    super::tunnel::Open {
                        addrs: &addrs,
                        timeout: cfg.tcp_timeout,
                        send_buffer: cfg.send_buffer,
                        tls,
                        proxy,
                        creds: creds.as_ref(),
                        user_agent: &cfg.user_agent,
                    },
                )
                .await?,
            )),
            None => Stream::Plain(
                super::socket::connect(url, &addrs, cfg.tcp_timeout, cfg.send_buffer, tls).await?,
            ),
        };
        let local_addr = stream.local_addr().ok();
        let peer = stream.peer_addr().ok().map(|a| a.ip());
        let actual = (local_addr.map(|a| a.ip()), peer);
        if actual != guess {
            described = describe(actual).await?;
        }
        let Described {
            text,
            controls,
            rewrites,
            ssrcs,
        } = described;
        let (text, offer, offered) = match cfg.srtp {
            Some(policy) => {
                let (text, offer, offered) = offer_srtp(policy, text, &ssrcs)?;
                (text, Some(offer), Some(offered))
            }
            None => (text, None, None),
        };
        let mut control = Control {
            stream,
            parser: Parser::new(Limits::default()),
            timeout: cfg.tcp_timeout,
            name: url.request_uri(),
        };
        let mut hs = Handshake::new(
            url.clone(),
            cfg.style,
            text,
            controls,
            RequestContext::new(&cfg.user_agent),
        )
        .with_transports(&cfg.transports)
        .with_credentials(creds)
        .with_srtp(offer);
        gst::debug!(CAT, "offering {:?} (tls flag: {})", cfg.transports, cfg.tls);
        let mut sockets = PortPairs {
            local: local_addr,
            range: cfg.port_range,
            pairs: Vec::new(),
        };
        let (negotiated, round_trips) = control
            .run_handshake(&mut hs, &mut |track| sockets.bind(track))
            .await?;
        let udp = if negotiated.lower == Lower::Udp {
            let peer = peer.ok_or_else(|| {
                SessionError::Connect("the RTSP connection has no peer address".into())
            })?;
            Some(sockets.into_session(&negotiated, peer, cfg.udp_blocking)?)
        } else {
            None
        };
        let srtp = offered
            .filter(|_| negotiated.srtp)
            .map(|o| accepted_srtp(o, &negotiated));
        Ok(Dialed {
            srtp,
            control,
            negotiated,
            ctx: hs.ctx,
            pt_rewrites: rewrites,
            round_trips,
            duration: Duration::ZERO,
            url: url.clone(),
            udp,
        })
    }
}

/// UDP port pairs, bound when a SETUP offers UDP: on the RTSP connection's local address, so
/// the family and the interface match the server's.
struct PortPairs {
    local: Option<SocketAddr>,
    range: Option<(u16, u16)>,
    pairs: Vec<Option<(UdpSocket, UdpSocket)>>,
}

impl PortPairs {
    fn bind(&mut self, track: usize) -> Result<(u16, u16), SessionError> {
        let local = self.local.ok_or_else(|| {
            SessionError::Connect("the RTSP connection has no local address".into())
        })?;
        let pair = super::udp::bind_pair(local, self.range).map_err(|e| {
            SessionError::Connect(format!("cannot bind UDP ports for track {track}: {e}"))
        })?;
        let ports = (
            pair.0.local_addr().map(|a| a.port()).unwrap_or(0),
            pair.1.local_addr().map(|a| a.port()).unwrap_or(0),
        );
        gst::debug!(
            CAT,
            "track {track}: UDP ports {}-{} bound",
            ports.0,
            ports.1
        );
        if self.pairs.len() <= track {
            self.pairs.resize_with(track + 1, || None);
        }
        self.pairs[track] = Some(pair);
        Ok(ports)
    }

    /// The media sockets of every track, aimed at the ports the server's SETUP answers gave.
    fn into_session(
        mut self,
        negotiated: &Negotiated,
        peer: IpAddr,
        blocking: bool,
    ) -> Result<Arc<UdpSession>, SessionError> {
        let mut tracks = Vec::new();
        for (i, t) in negotiated.tracks.iter().enumerate() {
            let (Some(ports), Some((rtp, rtcp))) =
                (t.udp.as_ref(), self.pairs.get_mut(i).and_then(Option::take))
            else {
                return Err(SessionError::Handshake(HandshakeError::Transport(format!(
                    "track {i} has no UDP ports"
                ))));
            };
            let dest = super::udp::destination(peer, ports.source.as_deref());
            let server_rtp = SocketAddr::new(dest, ports.server.0);
            let server_rtcp = SocketAddr::new(dest, ports.server.1);
            gst::info!(
                CAT,
                "track {i}: RTP over UDP {}-{} -> {server_rtp}, RTCP -> {server_rtcp}",
                ports.client.0,
                ports.client.1
            );
            let track = UdpTrack::new(rtp, rtcp, server_rtp, server_rtcp).map_err(|e| {
                SessionError::Connect(format!("cannot set up UDP for track {i}: {e}"))
            })?;
            tracks.push(Arc::new(track));
        }
        UdpSession::new(tracks, blocking)
            .map_err(|e| SessionError::Connect(format!("cannot set up UDP sending: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_redirect;
    use crate::rtsp::url::RtspUrl;

    #[test]
    fn redirects_resolve_against_the_url_redirected() {
        let from = RtspUrl::parse("rtsp://a.example:8554/live/cam?x=1").unwrap();
        let abs = resolve_redirect(&from, "rtsp://b.example/other").unwrap();
        assert_eq!(abs.host, "b.example");
        let rel = resolve_redirect(&from, "/moved/cam").unwrap();
        assert_eq!(rel.host, "a.example");
        assert_eq!(rel.request_uri(), "rtsp://a.example:8554/moved/cam");
        assert!(resolve_redirect(&from, "http://c.example/").is_err());
    }
}
