//! The element's settings: every property's definition and default, and the session
//! configuration they make when the element starts.

use super::session::SessionConfig;
use crate::net::dial::DialConfig;
use crate::net::tls::TlsOptions;
use crate::rtsp::auth::Credentials;
use crate::rtsp::url::{redact, ControlStyle, RtspUrl};
use crate::rtspannounce::connection::SendLimits;
use crate::rtspannounce::sender::NtpSource;
use crate::sdp::clock::PublishClockMode as ClockMode;
use crate::CAT;
use gst::glib;
use gst::prelude::*;
use std::time::Duration;

pub(super) const DEFAULT_USER_AGENT: &str = concat!("rtspannounce/", env!("CARGO_PKG_VERSION"));
const DEFAULT_TCP_TIMEOUT_US: u64 = 20_000_000;
const DEFAULT_ANNOUNCE_TIMEOUT_MS: u32 = 10_000;
const DEFAULT_MAX_QUEUE_BYTES: u32 = 4 * 1024 * 1024;
/// TCP interleaved first, then UDP (multicast is not implemented).
const DEFAULT_PROTOCOLS: gst_rtsp::RTSPLowerTrans =
    gst_rtsp::RTSPLowerTrans::TCP.union(gst_rtsp::RTSPLowerTrans::UDP);

/// `port-range` as rtspclientsink writes it: "FROM-TO"; empty or "0-0" for OS-chosen ports.
pub(super) fn parse_port_range(v: &str) -> Result<Option<(u16, u16)>, String> {
    let v = v.trim();
    if v.is_empty() || v == "0-0" {
        return Ok(None);
    }
    let bad = || {
        format!("port-range {v:?} is not FROM-TO (e.g. 5000-5099: an even RTP port and the next one per track)")
    };
    let (a, b) = v.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || b <= a || b - a < 1 + a % 2 {
        return Err(bad());
    }
    Ok(Some((a, b)))
}

#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRtspAnnounceSetupUrlStyle")]
pub enum SetupUrlStyle {
    #[enum_value(
        name = "path?query/streamid=N (FFmpeg style: ZLMediaKit, MediaMTX, FFmpeg)",
        nick = "ffmpeg"
    )]
    Ffmpeg = 0,
    #[enum_value(
        name = "path/streamid=N?query (rtspclientsink style: MediaMTX)",
        nick = "gstreamer"
    )]
    Gstreamer = 1,
    #[enum_value(
        name = "path/streamid=N, query only on ANNOUNCE/RECORD (gst-rtsp-server)",
        nick = "no-query"
    )]
    NoQuery = 2,
}

#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRtspAnnounceNtpTimeSource")]
pub enum NtpTimeSource {
    #[enum_value(name = "NTP time based on realtime clock", nick = "ntp")]
    Ntp = 0,
    #[enum_value(name = "UNIX time based on realtime clock", nick = "unix")]
    Unix = 1,
    #[enum_value(name = "Running time based on pipeline clock", nick = "running-time")]
    RunningTime = 2,
    #[enum_value(name = "Pipeline clock time", nick = "clock-time")]
    ClockTime = 3,
}

/// rtspclientsink's `GstRTSPPublishClockMode`, same nicks and values. That type is registered
/// by libgstrtspserver, which this plugin does not link (see docs/ARCHITECTURE.md).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRtspAnnouncePublishClockMode")]
pub enum PublishClockMode {
    #[enum_value(name = "Publish nothing about the clock", nick = "none")]
    None = 0,
    #[enum_value(
        name = "Publish the reference clock (RFC 7273 ts-refclk)",
        nick = "clock"
    )]
    Clock = 1,
    #[enum_value(
        name = "Publish the reference clock and the RTP offset to it (mediaclk:direct)",
        nick = "clock-and-offset"
    )]
    ClockAndOffset = 2,
}

#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRtspAnnounceCongestionPolicy")]
pub enum CongestionPolicy {
    #[enum_value(
        name = "Block upstream until the network takes the data (nothing lost; right for files)",
        nick = "block"
    )]
    Block = 0,
    #[enum_value(
        name = "Drop whole frames (video up to the next keyframe) while the queue is full (right for live sources)",
        nick = "drop"
    )]
    Drop = 1,
}

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) location: Option<String>,
    pub(super) user_id: Option<String>,
    pub(super) user_pw: Option<String>,
    pub(super) user_agent: String,
    pub(super) tcp_timeout_us: u64,
    pub(super) sync: bool,
    pub(super) keepalive: bool,
    pub(super) setup_url_style: SetupUrlStyle,
    pub(super) announce_timeout_ms: u32,
    pub(super) max_queue_bytes: u32,
    pub(super) max_queue_time_ms: u32,
    pub(super) ntp_time_source: NtpTimeSource,
    pub(super) publish_clock_mode: PublishClockMode,
    pub(super) rtcp_interval_ms: u32,
    pub(super) retry_max: i32,
    pub(super) retry_delay_min_ms: u32,
    pub(super) retry_delay_max_ms: u32,
    pub(super) congestion_policy: CongestionPolicy,
    pub(super) reannounce_on_caps_change: bool,
    pub(super) protocols: gst_rtsp::RTSPLowerTrans,
    pub(super) port_range: Option<String>,
    pub(super) tls_validation_flags: gio::TlsCertificateFlags,
    pub(super) tls_ca_file: Option<String>,
    pub(super) profiles: gst_rtsp::RTSPProfile,
    pub(super) srtp_suite: crate::srtp::Suite,
    pub(super) proxy: Option<String>,
    pub(super) proxy_id: Option<String>,
    pub(super) proxy_pw: Option<String>,
    pub(super) builtin_payloaders: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            location: None,
            user_id: None,
            user_pw: None,
            user_agent: DEFAULT_USER_AGENT.to_string(),
            tcp_timeout_us: DEFAULT_TCP_TIMEOUT_US,
            sync: true,
            keepalive: true,
            setup_url_style: SetupUrlStyle::Ffmpeg,
            announce_timeout_ms: DEFAULT_ANNOUNCE_TIMEOUT_MS,
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            max_queue_time_ms: 0,
            ntp_time_source: NtpTimeSource::Ntp,
            publish_clock_mode: PublishClockMode::Clock,
            rtcp_interval_ms: 5000,
            retry_max: -1,
            retry_delay_min_ms: 500,
            retry_delay_max_ms: 10_000,
            congestion_policy: CongestionPolicy::Block,
            reannounce_on_caps_change: false,
            protocols: DEFAULT_PROTOCOLS,
            port_range: None,
            tls_validation_flags: gio::TlsCertificateFlags::VALIDATE_ALL,
            tls_ca_file: None,
            profiles: gst_rtsp::RTSPProfile::AVP,
            srtp_suite: crate::srtp::Suite::default(),
            proxy: None,
            proxy_id: None,
            proxy_pw: None,
            builtin_payloaders: true,
        }
    }
}

/// The property definitions, in the order gst-inspect shows them.
pub(super) fn properties() -> Vec<glib::ParamSpec> {
    vec![
        glib::ParamSpecString::builder("location")
            .nick("Location")
            .blurb("RTSP URL to publish to: rtsp://[user:pass@]host[:port]/path[?query] (required; rtsps:// for RTSP over TLS, rtsph:// and rtspsh:// tunnelled in HTTP and HTTPS, rtspws:// and rtspwss:// over WebSocket, the ONVIF transport). Credentials in the URL are never sent in the Request-URI nor logged")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("user-id")
            .nick("User ID")
            .blurb("User name for Basic or Digest authentication (overrides one in the location URL); sent only when the server asks")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("user-pw")
            .nick("User password")
            .blurb("Password for Basic or Digest authentication (never logged)")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("user-agent")
            .nick("User-Agent")
            .blurb("User-Agent header sent with every request (do not start it with \"GStreamer\": MediaMTX delays such clients)")
            .default_value(Some(DEFAULT_USER_AGENT))
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt64::builder("tcp-timeout")
            .nick("TCP timeout")
            .blurb("Timeout in microseconds for connecting, for each server answer, and for the network to take queued data")
            .minimum(1_000)
            .default_value(DEFAULT_TCP_TIMEOUT_US)
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("sync")
            .nick("Sync")
            .blurb("Send each packet at its running time on the pipeline clock (off: as fast as upstream produces)")
            .default_value(true)
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("do-rtsp-keep-alive")
            .nick("Do RTSP keep-alive")
            .blurb("Send GET_PARAMETER (OPTIONS if refused) every half session timeout, at most every 10 s, whether media flows or not")
            .default_value(true)
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("setup-url-style", SetupUrlStyle::Ffmpeg)
            .nick("SETUP URL style")
            .blurb("With a query string in location (auth tokens): how a track's control (streamid=N) is joined to it in SETUP URLs; no effect without a query")
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("announce-timeout")
            .nick("Announce timeout")
            .blurb("Milliseconds to wait, from the first buffer, for every sink pad's caps and first buffer (and H.264/H.265 parameter sets) before ANNOUNCE; a pad still silent then is an error")
            .minimum(1)
            .default_value(DEFAULT_ANNOUNCE_TIMEOUT_MS)
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("ntp-time-source", NtpTimeSource::Ntp)
            .nick("NTP time source")
            .blurb("Clock behind the NTP timestamps of RTCP sender reports (as rtspclientsink's): receivers line tracks up by them")
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("publish-clock-mode", PublishClockMode::Clock)
            .nick("Publish clock mode")
            .blurb("RFC 7273 clock signalling (as rtspclientsink's): the SDP names the pipeline clock (ts-refclk: ntp=, ptp= or local) and, with clock-and-offset, each track's RTP offset to it (mediaclk:direct); on an NTP or PTP clock sender reports then carry that clock's time, whatever ntp-time-source says")
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("rtcp-interval")
            .nick("RTCP interval")
            .blurb("Milliseconds between RTCP sender reports, randomised by 0.5 to 1.5 as RFC 3550 asks (the first goes with each track's first packet)")
            .minimum(100)
            .maximum(3_600_000)
            .default_value(5000)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("max-queue-time")
            .nick("Max queue time")
            .blurb("With congestion-policy=drop: the longest a packet may wait in the queue, in milliseconds, before frames are dropped (0: only max-queue-bytes bounds the queue)")
            .default_value(0)
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("congestion-policy", CongestionPolicy::Block)
            .nick("Congestion policy")
            .blurb("What to do when max-queue-bytes are queued towards a slow network: block upstream, or drop whole frames (video up to the next keyframe; a keyframe is requested when room is back; drops counted in stats, one warning per episode). Over UDP: block waits for socket buffer room, drop lets a full buffer drop the packet")
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("reannounce-on-caps-change")
            .nick("Re-announce on caps change")
            .blurb("ANNOUNCE again on any caps change (new resolution, parameter sets), not only when the codec changes (which always re-announces)")
            .default_value(false)
            .mutable_ready()
            .build(),
        glib::ParamSpecInt::builder("retry-max")
            .nick("Retry max")
            .blurb("Reconnect attempts after the connection is lost while publishing (lost connection, write error or stall, keep-alive failure, server TEARDOWN): -1 for ever, 0 to fail at once. Video resumes on a keyframe")
            .minimum(-1)
            .default_value(-1)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("retry-delay-min")
            .nick("Retry delay min")
            .blurb("Milliseconds before the first reconnect attempt; doubles per attempt up to retry-delay-max (each randomised by ±20 %)")
            .minimum(10)
            .default_value(500)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("retry-delay-max")
            .nick("Retry delay max")
            .blurb("Longest wait in milliseconds between reconnect attempts")
            .minimum(10)
            .default_value(10_000)
            .mutable_ready()
            .build(),
        glib::ParamSpecFlags::builder::<gst_rtsp::RTSPLowerTrans>("protocols")
            .default_value(DEFAULT_PROTOCOLS)
            .nick("Protocols")
            .blurb("Allowed lower transports, as rtspclientsink's: TCP interleaved is tried first, then UDP unicast when the server answers SETUP with 461 Unsupported Transport (rtspt:// means tcp only, rtspu:// udp only). udp-mcast is accepted but multicast is not implemented and never chosen; tls puts the RTSP connection in TLS as rtsps:// does (TCP only: media go inside it); http tunnels it in HTTP as rtsph:// does (media interleaved inside)")
            .mutable_ready()
            .build(),
        glib::ParamSpecFlags::builder::<gst_rtsp::RTSPProfile>("profiles")
            .default_value(gst_rtsp::RTSPProfile::AVP)
            .nick("Profiles")
            .blurb("Allowed RTP profiles, as rtspclientsink's: avp (plain RTP) or savp (SRTP: RTP/SAVP with a fresh key per track, sent as MIKEY in the SDP and in each SETUP's KeyMgmt header). With both, SRTP is offered first and plain RTP used only if the server refuses it; savp alone fails instead. avpf/savpf count as avp/savp (no RTCP feedback is sent)")
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("srtp-suite", crate::srtp::Suite::default())
            .nick("SRTP suite")
            .blurb("SRTP crypto suite for RTP and RTCP when profiles allows savp (AES-GCM is not offered: GStreamer's MIKEY cannot describe it)")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("port-range")
            .nick("Port range")
            .blurb("Local UDP ports to use for RTP/RTCP, as FROM-TO (e.g. 5000-5099: an even RTP port and the next one for RTCP, per track); unset: ports the OS picks")
            .mutable_ready()
            .build(),
        glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
            .nick("Statistics")
            .blurb("Connection state, transport, server, session id, handshake time and round trips, queue level, and per track: transport (and UDP ports), ssrc, channels, packets, bytes, sender reports, and what the server's receiver reports say (loss, jitter, RTT)")
            .read_only()
            .build(),
        glib::ParamSpecFlags::builder::<gio::TlsCertificateFlags>("tls-validation-flags")
            .default_value(gio::TlsCertificateFlags::VALIDATE_ALL)
            .nick("TLS validation flags")
            .blurb("Certificate checks that make an rtsps:// connection fail: unknown-ca (issuer not trusted), bad-identity (host name), not-activated, expired, insecure (bad or weak signatures), generic-error; revoked is not checked (no CRL or OCSP). Clear a flag to accept that failure")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("tls-ca-file")
            .nick("TLS CA file")
            .blurb("PEM file of the CA certificates to trust for rtsps:// instead of the system store (a private CA)")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("proxy")
            .nick("Proxy")
            .blurb("HTTP proxy for RTSP over HTTP (rtsph://, rtspsh://, or the http flag of protocols), as [http://][user:passwd@]host[:port] (port 3128 if none). A TLS tunnel goes through it by CONNECT")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("proxy-id")
            .nick("Proxy user ID")
            .blurb("User name for the HTTP proxy (Basic; overrides one in proxy)")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("proxy-pw")
            .nick("Proxy password")
            .blurb("Password for the HTTP proxy (never logged)")
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("builtin-payloaders")
            .nick("Built-in payloaders")
            .blurb("Payload encoded H.264, H.265 and AAC inside the element, straight into the send buffer (byte for byte what rtph264pay/rtph265pay config-interval=1 and rtpmp4gpay make; no new-payloader signal for them). FALSE: GStreamer's payloaders, as for every other codec. A pad's payloader property always wins")
            .default_value(true)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("max-queue-bytes")
            .nick("Max queue bytes")
            .blurb("Bytes queued towards the network before upstream blocks (congestion-policy=block) or whole frames are dropped (congestion-policy=drop)")
            .minimum(64 * 1024)
            .default_value(DEFAULT_MAX_QUEUE_BYTES)
            .mutable_ready()
            .build(),
    ]
}

impl Settings {
    /// Sets property `name` (`sync` and `stats` are the element's own).
    pub(super) fn set(&mut self, name: &str, value: &glib::Value) {
        let s = self;
        match name {
            "location" => {
                let v: Option<String> = value.get().unwrap();
                if let Some(l) = v.as_deref() {
                    if let Err(e) = RtspUrl::parse(l) {
                        gst::warning!(CAT, "location will not work: {e}");
                    }
                }
                gst::debug!(CAT, "location set to {:?}", v.as_deref().map(redact));
                s.location = v;
            }
            "user-id" => s.user_id = value.get().unwrap(),
            "user-pw" => s.user_pw = value.get().unwrap(),
            "user-agent" => {
                s.user_agent = value
                    .get::<Option<String>>()
                    .unwrap()
                    .unwrap_or_default()
                    .replace(['\r', '\n'], " ")
            }
            "tcp-timeout" => s.tcp_timeout_us = value.get().unwrap(),
            "do-rtsp-keep-alive" => s.keepalive = value.get().unwrap(),
            "setup-url-style" => s.setup_url_style = value.get().unwrap(),
            "announce-timeout" => s.announce_timeout_ms = value.get().unwrap(),
            "max-queue-bytes" => s.max_queue_bytes = value.get().unwrap(),
            "ntp-time-source" => s.ntp_time_source = value.get().unwrap(),
            "publish-clock-mode" => s.publish_clock_mode = value.get().unwrap(),
            "rtcp-interval" => s.rtcp_interval_ms = value.get().unwrap(),
            "retry-max" => s.retry_max = value.get().unwrap(),
            "congestion-policy" => s.congestion_policy = value.get().unwrap(),
            "max-queue-time" => s.max_queue_time_ms = value.get().unwrap(),
            "reannounce-on-caps-change" => s.reannounce_on_caps_change = value.get().unwrap(),
            "retry-delay-min" => s.retry_delay_min_ms = value.get().unwrap(),
            "retry-delay-max" => s.retry_delay_max_ms = value.get().unwrap(),
            "protocols" => s.protocols = value.get().unwrap(),
            "profiles" => s.profiles = value.get().unwrap(),
            "srtp-suite" => s.srtp_suite = value.get().unwrap(),
            "port-range" => {
                let v: Option<String> = value.get().unwrap();
                if let Err(e) = parse_port_range(v.as_deref().unwrap_or("")) {
                    gst::warning!(CAT, "{e}");
                }
                s.port_range = v;
            }
            "tls-validation-flags" => s.tls_validation_flags = value.get().unwrap(),
            "tls-ca-file" => s.tls_ca_file = value.get().unwrap(),
            "proxy" => s.proxy = value.get().unwrap(),
            "proxy-id" => s.proxy_id = value.get().unwrap(),
            "proxy-pw" => s.proxy_pw = value.get().unwrap(),
            "builtin-payloaders" => s.builtin_payloaders = value.get().unwrap(),
            _ => unreachable!(),
        }
    }

    /// The value of property `name` (None: `stats`, the element's own).
    pub(super) fn get(&self, name: &str) -> Option<glib::Value> {
        let s = self;
        Some(match name {
            "location" => s.location.to_value(),
            "user-id" => s.user_id.to_value(),
            "user-pw" => s.user_pw.to_value(),
            "user-agent" => s.user_agent.to_value(),
            "protocols" => s.protocols.to_value(),
            "profiles" => s.profiles.to_value(),
            "srtp-suite" => s.srtp_suite.to_value(),
            "port-range" => s.port_range.to_value(),
            "tcp-timeout" => s.tcp_timeout_us.to_value(),
            "sync" => s.sync.to_value(),
            "do-rtsp-keep-alive" => s.keepalive.to_value(),
            "setup-url-style" => s.setup_url_style.to_value(),
            "announce-timeout" => s.announce_timeout_ms.to_value(),
            "max-queue-bytes" => s.max_queue_bytes.to_value(),
            "ntp-time-source" => s.ntp_time_source.to_value(),
            "publish-clock-mode" => s.publish_clock_mode.to_value(),
            "rtcp-interval" => s.rtcp_interval_ms.to_value(),
            "retry-max" => s.retry_max.to_value(),
            "congestion-policy" => s.congestion_policy.to_value(),
            "max-queue-time" => s.max_queue_time_ms.to_value(),
            "reannounce-on-caps-change" => s.reannounce_on_caps_change.to_value(),
            "retry-delay-min" => s.retry_delay_min_ms.to_value(),
            "retry-delay-max" => s.retry_delay_max_ms.to_value(),
            "tls-validation-flags" => s.tls_validation_flags.to_value(),
            "tls-ca-file" => s.tls_ca_file.to_value(),
            "proxy" => s.proxy.to_value(),
            "proxy-id" => s.proxy_id.to_value(),
            "proxy-pw" => s.proxy_pw.to_value(),
            "builtin-payloaders" => s.builtin_payloaders.to_value(),
            _ => return None,
        })
    }

    /// The configuration of a session; errors name the property at fault. (The session
    /// points `accept-certificate` at its hooks.)
    pub(super) fn session_config(&self) -> Result<SessionConfig, gst::ErrorMessage> {
        let s = self.clone();
        let Some(location) = s.location.as_deref() else {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ("No location set: set location=rtsp://host:port/path")
            ));
        };
        let url = RtspUrl::parse(location).map_err(|e| {
            gst::error_msg!(gst::ResourceError::Settings, ("Invalid location: {}", e))
        })?;
        // rtsph://, rtspsh://, or the http flag (as rtspclientsink): RTSP tunnelled in HTTP, the
        // media interleaved inside whatever the tcp flag says.
        let tunnelled =
            url.scheme.tunnelled() || s.protocols.contains(gst_rtsp::RTSPLowerTrans::HTTP);
        let mut transports = crate::rtsp::handshake::transports_for(
            url.scheme,
            s.protocols.contains(gst_rtsp::RTSPLowerTrans::TCP) || tunnelled,
            s.protocols.contains(gst_rtsp::RTSPLowerTrans::UDP) && !tunnelled,
        )
        .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("{}", e)))?;
        let proxy = match s.proxy.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            Some(p) => Some(
                crate::net::tunnel::Proxy::parse(p, s.proxy_id.as_deref(), s.proxy_pw.as_deref())
                    .map_err(|e| {
                    gst::error_msg!(gst::ResourceError::Settings, ("Invalid proxy: {}", e))
                })?,
            ),
            None => None,
        };
        if tunnelled && url.scheme.websocket() {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ("An rtspws:// or rtspwss:// location cannot also be tunnelled in HTTP: remove http from protocols")
            ));
        }
        if proxy.is_some() && !tunnelled {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ("proxy is an HTTP proxy for RTSP over HTTP: use an rtsph:// or rtspsh:// location, or add http to protocols")
            ));
        }
        let tunnel = tunnelled.then_some(crate::net::tunnel::TunnelConfig { proxy });
        // rtsps://, or the tls flag (as rtspclientsink): the RTSP connection goes over TLS, and
        // the media with it, interleaved; UDP would send them in the clear.
        let tls = url.scheme.tls() || s.protocols.contains(gst_rtsp::RTSPLowerTrans::TLS);
        if tls {
            transports.retain(|t| *t == crate::rtsp::headers::Lower::Tcp);
            if transports.is_empty() {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("TLS carries the media inside the RTSP connection (TCP interleaved): add tcp to protocols")
                ));
            }
        }
        let tls_options = TlsOptions {
            validation_flags: s.tls_validation_flags,
            ca_file: s
                .tls_ca_file
                .as_deref()
                .filter(|f| !f.is_empty())
                .map(Into::into),
            accept: None,
        };
        if tls {
            // A bad CA file is a settings error now, not a connection error later.
            if let Some(f) = &tls_options.ca_file {
                crate::net::tls::load_roots(Some(f))
                    .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("{}", e)))?;
            }
        }
        let port_range = parse_port_range(s.port_range.as_deref().unwrap_or(""))
            .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("{}", e)))?;
        // Properties win over credentials in the URL.
        let creds = match (s.user_id.as_deref(), &url.user) {
            (Some(u), _) if !u.is_empty() => Some(Credentials {
                user: u.to_string(),
                password: s.user_pw.clone().unwrap_or_default(),
            }),
            (_, Some(u)) => Some(Credentials {
                user: u.clone(),
                password: url.password.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        let srtp = srtp_policy(s.profiles, s.srtp_suite)
            .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("{}", e)))?;
        let drop_when_congested = s.congestion_policy == CongestionPolicy::Drop;
        let max_queue_bytes = s.max_queue_bytes as usize;
        Ok(SessionConfig {
            dial: DialConfig {
                creds,
                url,
                user_agent: s.user_agent,
                tcp_timeout: Duration::from_micros(s.tcp_timeout_us.max(1)),
                style: match s.setup_url_style {
                    SetupUrlStyle::Ffmpeg => ControlStyle::Ffmpeg,
                    SetupUrlStyle::Gstreamer => ControlStyle::Gstreamer,
                    SetupUrlStyle::NoQuery => ControlStyle::NoQuery,
                },
                transports,
                port_range,
                tls,
                tls_options,
                // The drop policy must see congestion where it happens: keep the kernel's
                // share small.
                send_buffer: drop_when_congested
                    .then(|| (max_queue_bytes / 4).clamp(64 * 1024, 1 << 20) as u32),
                udp_blocking: !drop_when_congested,
                srtp,
                tunnel,
            },
            announce_timeout: Duration::from_millis(s.announce_timeout_ms as u64),
            keepalive: s.keepalive,
            ntp_source: match s.ntp_time_source {
                NtpTimeSource::Ntp => NtpSource::Ntp,
                NtpTimeSource::Unix => NtpSource::Unix,
                NtpTimeSource::RunningTime => NtpSource::RunningTime,
                NtpTimeSource::ClockTime => NtpSource::ClockTime,
            },
            publish_clock: match s.publish_clock_mode {
                PublishClockMode::None => ClockMode::None,
                PublishClockMode::Clock => ClockMode::Clock,
                PublishClockMode::ClockAndOffset => ClockMode::ClockAndOffset,
            },
            rtcp_interval: Duration::from_millis(s.rtcp_interval_ms as u64),
            retry_max: s.retry_max,
            retry_delay_min: Duration::from_millis(s.retry_delay_min_ms as u64),
            retry_delay_max: Duration::from_millis(
                s.retry_delay_max_ms.max(s.retry_delay_min_ms) as u64
            ),
            reannounce_on_caps_change: s.reannounce_on_caps_change,
            limits: SendLimits {
                max_bytes: max_queue_bytes,
                max_time: Duration::from_millis(s.max_queue_time_ms as u64),
                drop_when_congested,
            },
        })
    }
}

/// What `profiles` asks for: SRTP (and whether plain RTP may follow a refusal), or plain RTP.
fn srtp_policy(
    profiles: gst_rtsp::RTSPProfile,
    suite: crate::srtp::Suite,
) -> Result<Option<crate::srtp::Policy>, String> {
    use gst_rtsp::RTSPProfile as P;
    let plain = profiles.intersects(P::AVP | P::AVPF);
    let secure = profiles.intersects(P::SAVP | P::SAVPF);
    match (secure, plain) {
        (false, false) => Err("profiles allows neither avp nor savp".into()),
        (false, true) => Ok(None),
        (true, allow_plain) => Ok(Some(crate::srtp::Policy { suite, allow_plain })),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_port_range;

    #[test]
    fn profiles_make_the_srtp_policy() {
        use gst_rtsp::RTSPProfile as P;
        let suite = crate::srtp::Suite::Aes128Sha1_32;
        assert_eq!(super::srtp_policy(P::AVP, suite), Ok(None));
        let p = super::srtp_policy(P::SAVP, suite).unwrap().unwrap();
        assert!(!p.allow_plain);
        assert_eq!(p.suite, suite);
        assert!(
            super::srtp_policy(P::AVP | P::SAVP, suite)
                .unwrap()
                .unwrap()
                .allow_plain
        );
        assert!(super::srtp_policy(P::empty(), suite).is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range(""), Ok(None));
        assert_eq!(parse_port_range("0-0"), Ok(None));
        assert_eq!(parse_port_range("5000-5001"), Ok(Some((5000, 5001))));
        assert_eq!(parse_port_range(" 5001-5003 "), Ok(Some((5001, 5003))));
        for bad in [
            "5000",
            "5000-",
            "a-b",
            "5001-5002",
            "6000-5000",
            "0-10",
            "5000-70000",
        ] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }
}
