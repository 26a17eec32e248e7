//! GStreamer glue: properties, request pads, state changes, EOS.
//!
//! The element is a bin holding one `appsink` per request pad (see docs/ARCHITECTURE.md): the
//! appsinks give every pad mature BaseSink behaviour (clock sync, preroll, latency, flushing,
//! per-pad EOS) and their callbacks feed the session in `session.rs`.

use super::pad::RtspAnnouncePad;
use super::sender::NtpSource;
use super::session::{PadError, SessionConfig, Shared, TrackId};
use crate::net::tls::TlsOptions;
use crate::rtsp::auth::Credentials;
use crate::rtsp::url::{redact, ControlStyle, RtspUrl};
use crate::CAT;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const DEFAULT_USER_AGENT: &str = concat!("rtspannounce/", env!("CARGO_PKG_VERSION"));
const DEFAULT_TCP_TIMEOUT_US: u64 = 20_000_000;
const DEFAULT_ANNOUNCE_TIMEOUT_MS: u32 = 10_000;
const DEFAULT_MAX_QUEUE_BYTES: u32 = 4 * 1024 * 1024;
/// TCP interleaved first, then UDP (multicast is not implemented).
const DEFAULT_PROTOCOLS: gst_rtsp::RTSPLowerTrans =
    gst_rtsp::RTSPLowerTrans::TCP.union(gst_rtsp::RTSPLowerTrans::UDP);

/// `port-range` as rtspclientsink writes it: "FROM-TO"; empty or "0-0" for OS-chosen ports.
fn parse_port_range(v: &str) -> Result<Option<(u16, u16)>, String> {
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
struct Settings {
    location: Option<String>,
    user_id: Option<String>,
    user_pw: Option<String>,
    user_agent: String,
    tcp_timeout_us: u64,
    sync: bool,
    keepalive: bool,
    setup_url_style: SetupUrlStyle,
    announce_timeout_ms: u32,
    max_queue_bytes: u32,
    max_queue_time_ms: u32,
    ntp_time_source: NtpTimeSource,
    rtcp_interval_ms: u32,
    retry_max: i32,
    retry_delay_min_ms: u32,
    retry_delay_max_ms: u32,
    congestion_policy: CongestionPolicy,
    reannounce_on_caps_change: bool,
    protocols: gst_rtsp::RTSPLowerTrans,
    port_range: Option<String>,
    tls_validation_flags: gio::TlsCertificateFlags,
    tls_ca_file: Option<String>,
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
        }
    }
}

/// Where a pad's callbacks find the session: set when the element goes to PAUSED.
type PadLink = Arc<Mutex<Option<(Arc<Shared>, TrackId)>>>;

struct PadEntry {
    ghost: RtspAnnouncePad,
    appsink: gst_app::AppSink,
    link: PadLink,
}

#[derive(Default)]
pub struct RtspAnnounce {
    settings: Mutex<Settings>,
    pads: Mutex<Vec<PadEntry>>,
    shared: Mutex<Option<Arc<Shared>>>,
    /// The stats of the last session, still readable after it stopped.
    last_stats: Mutex<Option<gst::Structure>>,
}

#[glib::object_subclass]
impl ObjectSubclass for RtspAnnounce {
    const NAME: &'static str = "GstRtspAnnounce";
    type Type = super::RtspAnnounce;
    type ParentType = gst::Bin;
    type Interfaces = (gst::URIHandler,);
}

impl URIHandlerImpl for RtspAnnounce {
    const URI_TYPE: gst::URIType = gst::URIType::Sink;

    fn protocols() -> &'static [&'static str] {
        &["rtsp", "rtspt", "rtspu", "rtsps"]
    }

    fn uri(&self) -> Option<String> {
        self.settings.lock().unwrap().location.clone()
    }

    fn set_uri(&self, uri: &str) -> Result<(), glib::Error> {
        if self.obj().current_state() > gst::State::Ready {
            return Err(glib::Error::new(
                gst::URIError::BadState,
                "the location cannot change while publishing",
            ));
        }
        RtspUrl::parse(uri).map_err(|e| glib::Error::new(gst::URIError::BadUri, &e.to_string()))?;
        self.settings.lock().unwrap().location = Some(uri.to_string());
        Ok(())
    }
}

fn pad_result(
    link: &PadLink,
    element: &gst::Element,
    res: Result<(), PadError>,
) -> Result<gst::FlowSuccess, gst::FlowError> {
    let _ = link;
    match res {
        Ok(()) => Ok(gst::FlowSuccess::Ok),
        Err(PadError::Flushing) => Err(gst::FlowError::Flushing),
        Err(PadError::Failed) => Err(gst::FlowError::Error),
        Err(PadError::Error(msg)) => {
            element.post_error_message(msg);
            Err(gst::FlowError::Error)
        }
    }
}

impl RtspAnnounce {
    fn session_config(&self) -> Result<SessionConfig, gst::ErrorMessage> {
        let s = self.settings.lock().unwrap().clone();
        let Some(location) = s.location.as_deref() else {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ("No location set: set location=rtsp://host:port/path")
            ));
        };
        let url = RtspUrl::parse(location).map_err(|e| {
            gst::error_msg!(gst::ResourceError::Settings, ("Invalid location: {}", e))
        })?;
        let mut transports = crate::rtsp::handshake::transports_for(
            url.scheme,
            s.protocols.contains(gst_rtsp::RTSPLowerTrans::TCP),
            s.protocols.contains(gst_rtsp::RTSPLowerTrans::UDP),
        )
        .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("{}", e)))?;
        // rtsps://, or the tls flag (as rtspclientsink): the RTSP connection goes over TLS, and
        // the media with it, interleaved; UDP would send them in the clear.
        let tls = url.scheme == crate::rtsp::url::Scheme::Rtsps
            || s.protocols.contains(gst_rtsp::RTSPLowerTrans::TLS);
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
            accept: Some(self.accept_handler()),
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
        Ok(SessionConfig {
            creds,
            url,
            user_agent: s.user_agent,
            tcp_timeout: Duration::from_micros(s.tcp_timeout_us.max(1)),
            style: match s.setup_url_style {
                SetupUrlStyle::Ffmpeg => ControlStyle::Ffmpeg,
                SetupUrlStyle::Gstreamer => ControlStyle::Gstreamer,
                SetupUrlStyle::NoQuery => ControlStyle::NoQuery,
            },
            announce_timeout: Duration::from_millis(s.announce_timeout_ms as u64),
            keepalive: s.keepalive,
            ntp_source: match s.ntp_time_source {
                NtpTimeSource::Ntp => NtpSource::Ntp,
                NtpTimeSource::Unix => NtpSource::Unix,
                NtpTimeSource::RunningTime => NtpSource::RunningTime,
                NtpTimeSource::ClockTime => NtpSource::ClockTime,
            },
            rtcp_interval: Duration::from_millis(s.rtcp_interval_ms as u64),
            retry_max: s.retry_max,
            retry_delay_min: Duration::from_millis(s.retry_delay_min_ms as u64),
            drop_when_congested: s.congestion_policy == CongestionPolicy::Drop,
            reannounce_on_caps_change: s.reannounce_on_caps_change,
            retry_delay_max: Duration::from_millis(
                s.retry_delay_max_ms.max(s.retry_delay_min_ms) as u64
            ),
            max_queue_bytes: s.max_queue_bytes as usize,
            max_queue_time: Duration::from_millis(s.max_queue_time_ms as u64),
            transports,
            port_range,
            tls,
            tls_options,
        })
    }

    /// `accept-certificate` for the verifier: the chain as a GTlsCertificate (glib-networking
    /// builds it) and the failed checks; a handler returning TRUE accepts.
    fn accept_handler(&self) -> crate::net::tls::AcceptHandler {
        let weak = self.obj().downgrade();
        Arc::new(move |chain, errors| {
            let Some(element) = weak.upgrade() else {
                return false;
            };
            let pem: String = chain.iter().map(|c| pem_encode(c)).collect();
            let cert = match gio::TlsCertificate::from_pem(&pem) {
                Ok(c) => c,
                Err(e) => {
                    gst::warning!(
                        CAT,
                        obj = element,
                        "cannot offer the certificate to accept-certificate: {e}"
                    );
                    return false;
                }
            };
            element.emit_by_name::<bool>("accept-certificate", &[&cert, &errors])
        })
    }

    fn start_session(&self) -> Result<(), gst::ErrorMessage> {
        let cfg = self.session_config()?;
        let pads = self.pads.lock().unwrap();
        if pads.is_empty() {
            return Err(gst::error_msg!(
                gst::CoreError::Pad,
                ("No sink pads: link at least one RTP stream to rtspannounce (request sink_%u)")
            ));
        }
        let mut names: Vec<(u32, String)> = pads
            .iter()
            .map(|p| {
                let name = p.ghost.name().to_string();
                let n = name.trim_start_matches("sink_").parse().unwrap_or(u32::MAX);
                (n, name)
            })
            .collect();
        // Tracks follow pad numbers: sink_0 is streamid=0.
        names.sort();
        let order: Vec<String> = names.into_iter().map(|(_, n)| n).collect();
        let shared = Shared::new(cfg, order.clone(), self.obj().upcast_ref());
        for p in pads.iter() {
            let Some(id) = shared.track_id(&p.ghost.name()) else {
                continue;
            };
            shared.set_pad(id, p.ghost.upcast_ref());
            *p.link.lock().unwrap() = Some((shared.clone(), id));
        }
        *self.shared.lock().unwrap() = Some(shared);
        Ok(())
    }

    fn stop_session(&self) {
        if let Some(shared) = self.shared.lock().unwrap().take() {
            shared.stop();
            *self.last_stats.lock().unwrap() = Some(shared.stats());
        }
        for p in self.pads.lock().unwrap().iter() {
            *p.link.lock().unwrap() = None;
        }
    }

    /// Gives the appsinks (every pad's, or `only` this one) the `sync` setting, with no lock of
    /// ours held: setting a child's property emits notify (deep-notify reaches the application).
    /// Setters on several threads may interleave: a pass that finds the setting changed under it
    /// goes again, so every appsink ends with the value set last.
    fn apply_sync(&self, only: Option<&gst_app::AppSink>) {
        loop {
            let sinks: Vec<gst_app::AppSink> = match only {
                Some(a) => vec![a.clone()],
                None => self
                    .pads
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|p| p.appsink.clone())
                    .collect(),
            };
            let sync = self.settings.lock().unwrap().sync;
            for a in &sinks {
                if a.property::<bool>("sync") != sync {
                    a.set_sync(sync);
                }
            }
            if self.settings.lock().unwrap().sync == sync {
                return;
            }
        }
    }

    /// Whether this element, or the bin or pipeline that drives it, is headed for READY or
    /// NULL. A parent steps its children through each state, so their own target says only
    /// the next step; the topmost target says where the state change ends.
    fn leaving_paused(&self) -> bool {
        let obj = self.obj();
        let mut next: Option<gst::Object> = Some(obj.clone().upcast());
        while let Some(o) = next {
            if let Some(e) = o.downcast_ref::<gst::Element>() {
                if target_state(e) <= gst::State::Ready {
                    return true;
                }
            }
            next = o.parent();
        }
        false
    }

    fn set_paused(&self, paused: bool) {
        let shared = self.shared.lock().unwrap().clone();
        if let Some(shared) = shared {
            shared.set_paused(paused);
        }
    }

    fn make_appsink(&self, link: PadLink) -> gst_app::AppSink {
        let sync = self.settings.lock().unwrap().sync;
        let appsink = gst_app::AppSink::builder()
            .caps(&gst::Caps::new_empty_simple("application/x-rtp"))
            .sync(sync)
            .enable_last_sample(false)
            .buffer_list(true)
            .build();
        appsink.set_qos(false);
        // Rendering here is only queueing: no processing time to reserve in the latency (the
        // default 20 ms makes live pipelines without queues warn for nothing).
        appsink.set_property("processing-deadline", 0u64);
        let weak = self.obj().downgrade();
        let (l1, l2, l3) = (link.clone(), link.clone(), link.clone());
        let (w1, w2, w3) = (weak.clone(), weak.clone(), weak);
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_preroll(move |sink| {
                    let sample = sink.pull_preroll().map_err(|_| gst::FlowError::Flushing)?;
                    // Copied out first: an `if let` scrutinee's guard would live through the block.
                    let linked = l1.lock().unwrap().clone();
                    if let Some((shared, idx)) = linked {
                        shared.preroll(idx, sample.caps_owned());
                    }
                    let _ = &w1;
                    Ok(gst::FlowSuccess::Ok)
                })
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Flushing)?;
                    let Some((shared, idx)) = l2.lock().unwrap().clone() else {
                        return Err(gst::FlowError::Flushing);
                    };
                    let caps = sample.caps_owned();
                    let segment = sample
                        .segment()
                        .and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned());
                    let segment = segment.as_ref();
                    let res = if let Some(list) = sample.buffer_list_owned() {
                        let n = list.len();
                        shared.render(
                            idx,
                            caps,
                            segment,
                            (0..n).filter_map(move |i| list.get_owned(i)),
                        )
                    } else if let Some(buf) = sample.buffer_owned() {
                        shared.render(idx, caps, segment, std::iter::once(buf))
                    } else {
                        Ok(())
                    };
                    let Some(element) = w2.upgrade() else {
                        return Err(gst::FlowError::Flushing);
                    };
                    pad_result(&l2, element.upcast_ref(), res)
                })
                .eos(move |_sink| {
                    // Not under the link lock: eos() may post an error, a warning or EOS.
                    let linked = l3.lock().unwrap().clone();
                    if let Some((shared, idx)) = linked {
                        shared.eos(idx);
                    }
                    let _ = &w3;
                })
                .build(),
        );
        // Flushes must unblock a pad waiting for the handshake or for queue space.
        let lf = link.clone();
        appsink.static_pad("sink").unwrap().add_probe(
            gst::PadProbeType::EVENT_FLUSH,
            move |_pad, info| {
                if let Some(ev) = info.event() {
                    let linked = lf.lock().unwrap().clone();
                    if let Some((shared, id)) = linked {
                        match ev.type_() {
                            gst::EventType::FlushStart => shared.set_flushing(id, true),
                            gst::EventType::FlushStop => shared.set_flushing(id, false),
                            _ => {}
                        }
                    }
                }
                gst::PadProbeReturn::Ok
            },
        );
        appsink
    }
}

/// `GST_STATE_TARGET`: where the element's current state change ends (gstreamer-rs has no
/// accessor for it).
fn target_state(e: &gst::Element) -> gst::State {
    use gst::glib::translate::{from_glib, ToGlibPtr};
    let _lock = e.object_lock();
    // SAFETY: a field of a live GstElement, read under its object lock as GStreamer does.
    unsafe {
        let ptr: *mut gst::ffi::GstElement = e.to_glib_none().0;
        from_glib((*ptr).target_state)
    }
}

/// Emits `handle-request` for a request from the server and turns the answer into a response;
/// None leaves the default answer. The conversions both ways are `handle_request`'s: a request
/// GStreamer could not hold in a structure is never emitted.
pub(super) fn emit_handle_request(
    element: &gst::Element,
    req: &crate::rtsp::message::Request,
) -> Option<crate::rtsp::message::Response> {
    let (s, skipped) = match super::handle_request::request_structure(req) {
        Ok(s) => s,
        Err(why) => {
            gst::debug!(CAT, obj = element, "not emitting handle-request: {why}");
            return None;
        }
    };
    if !skipped.is_empty() {
        gst::debug!(
            CAT,
            obj = element,
            "handle-request for {}: headers left out: {skipped:?}",
            req.method
        );
    }
    let answer = element.emit_by_name::<Option<gst::Structure>>("handle-request", &[&s])?;
    match super::handle_request::answer_response(&answer) {
        Ok((resp, skipped)) => {
            if !skipped.is_empty() {
                gst::warning!(
                    CAT,
                    obj = element,
                    "handle-request answer to {}: fields left out (not a header name, or not a string or integer): {skipped:?}",
                    req.method
                );
            }
            Some(resp)
        }
        Err(e) => {
            gst::warning!(
                CAT,
                obj = element,
                "handle-request answer to {} not used, default answer sent: {e}",
                req.method
            );
            None
        }
    }
}

/// A DER certificate as PEM text.
fn pem_encode(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

impl ObjectImpl for RtspAnnounce {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: std::sync::LazyLock<Vec<glib::ParamSpec>> = std::sync::LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("location")
                    .nick("Location")
                    .blurb("RTSP URL to publish to: rtsp://[user:pass@]host[:port]/path[?query] (required; rtsps:// for RTSP over TLS). Credentials in the URL are never sent in the Request-URI nor logged")
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
                    .blurb("Allowed lower transports, as rtspclientsink's: TCP interleaved is tried first, then UDP unicast when the server answers SETUP with 461 Unsupported Transport (rtspt:// means tcp only, rtspu:// udp only). udp-mcast is accepted but multicast is not implemented and never chosen; tls puts the RTSP connection in TLS as rtsps:// does (TCP only: media go inside it)")
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
                glib::ParamSpecUInt::builder("max-queue-bytes")
                    .nick("Max queue bytes")
                    .blurb("Bytes queued towards the network before upstream blocks (congestion-policy=block) or whole frames are dropped (congestion-policy=drop)")
                    .minimum(64 * 1024)
                    .default_value(DEFAULT_MAX_QUEUE_BYTES)
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: std::sync::LazyLock<Vec<glib::subclass::Signal>> =
            std::sync::LazyLock::new(|| {
                vec![
                    // Emitted from the I/O thread with the SDP about to be announced; handlers
                    // may edit it in place (same name and meaning as rtspclientsink's).
                    glib::subclass::Signal::builder("update-sdp")
                        .param_types([gst_sdp::SDPMessage::static_type()])
                        .build(),
                    // A payloader (chosen for a pad's encoded input, or the one set on the pad)
                    // is about to get its first caps: configure it here (mtu, pt, ...), as with
                    // rtspclientsink's signal of the same name. Emitted from the pad's
                    // streaming thread, once per payloader.
                    glib::subclass::Signal::builder("new-payloader")
                        .param_types([gst::Element::static_type()])
                        .build(),
                    // A request the server sent while we publish, as a structure named after
                    // the method with "uri" and every header as a string field. A handler may
                    // return a "response" structure ("status" uint or int, optional "reason"
                    // and header string fields, "body" string); NULL leaves the default answer
                    // (200 for OPTIONS, GET_PARAMETER, SET_PARAMETER, TEARDOWN; else 501).
                    // Methods that cannot name a structure are not emitted: 400 when they are
                    // no RTSP token, else 501. See handle_request.rs for the details.
                    glib::subclass::Signal::builder("handle-request")
                        .param_types([gst::Structure::static_type()])
                        .return_type::<Option<gst::Structure>>()
                        .accumulator(|_hint, _acc, value| {
                            // The first handler that answers wins.
                            let answered = value
                                .get::<Option<gst::Structure>>()
                                .ok()
                                .flatten()
                                .is_some();
                            if answered {
                                std::ops::ControlFlow::Break(value.clone())
                            } else {
                                std::ops::ControlFlow::Continue(value.clone())
                            }
                        })
                        .build(),
                    // The server's certificate failed the checks in `errors` (those that
                    // tls-validation-flags keep): a handler returning TRUE accepts it anyway.
                    // Emitted from the I/O thread during the TLS handshake.
                    glib::subclass::Signal::builder("accept-certificate")
                        .param_types([
                            gio::TlsCertificate::static_type(),
                            gio::TlsCertificateFlags::static_type(),
                        ])
                        .return_type::<bool>()
                        .accumulator(|_hint, _acc, value| {
                            // The first handler that accepts wins.
                            if value.get::<bool>().unwrap_or(false) {
                                std::ops::ControlFlow::Break(value.clone())
                            } else {
                                std::ops::ControlFlow::Continue(value.clone())
                            }
                        })
                        .build(),
                ]
            });
        SIGNALS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        if pspec.name() == "sync" {
            self.settings.lock().unwrap().sync = value.get().unwrap();
            self.apply_sync(None);
            return;
        }
        let mut s = self.settings.lock().unwrap();
        match pspec.name() {
            "location" => {
                let v: Option<String> = value.get().unwrap();
                if let Some(l) = v.as_deref() {
                    if let Err(e) = RtspUrl::parse(l) {
                        gst::warning!(CAT, imp = self, "location will not work: {e}");
                    }
                }
                gst::debug!(
                    CAT,
                    imp = self,
                    "location set to {:?}",
                    v.as_deref().map(redact)
                );
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
            "rtcp-interval" => s.rtcp_interval_ms = value.get().unwrap(),
            "retry-max" => s.retry_max = value.get().unwrap(),
            "congestion-policy" => s.congestion_policy = value.get().unwrap(),
            "max-queue-time" => s.max_queue_time_ms = value.get().unwrap(),
            "reannounce-on-caps-change" => s.reannounce_on_caps_change = value.get().unwrap(),
            "retry-delay-min" => s.retry_delay_min_ms = value.get().unwrap(),
            "retry-delay-max" => s.retry_delay_max_ms = value.get().unwrap(),
            "protocols" => s.protocols = value.get().unwrap(),
            "port-range" => {
                let v: Option<String> = value.get().unwrap();
                if let Err(e) = parse_port_range(v.as_deref().unwrap_or("")) {
                    gst::warning!(CAT, imp = self, "{e}");
                }
                s.port_range = v;
            }
            "tls-validation-flags" => s.tls_validation_flags = value.get().unwrap(),
            "tls-ca-file" => s.tls_ca_file = value.get().unwrap(),
            _ => unreachable!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "location" => s.location.to_value(),
            "user-id" => s.user_id.to_value(),
            "user-pw" => s.user_pw.to_value(),
            "user-agent" => s.user_agent.to_value(),
            "protocols" => s.protocols.to_value(),
            "port-range" => s.port_range.to_value(),
            "tcp-timeout" => s.tcp_timeout_us.to_value(),
            "sync" => s.sync.to_value(),
            "do-rtsp-keep-alive" => s.keepalive.to_value(),
            "setup-url-style" => s.setup_url_style.to_value(),
            "announce-timeout" => s.announce_timeout_ms.to_value(),
            "max-queue-bytes" => s.max_queue_bytes.to_value(),
            "ntp-time-source" => s.ntp_time_source.to_value(),
            "rtcp-interval" => s.rtcp_interval_ms.to_value(),
            "retry-max" => s.retry_max.to_value(),
            "congestion-policy" => s.congestion_policy.to_value(),
            "max-queue-time" => s.max_queue_time_ms.to_value(),
            "reannounce-on-caps-change" => s.reannounce_on_caps_change.to_value(),
            "retry-delay-min" => s.retry_delay_min_ms.to_value(),
            "retry-delay-max" => s.retry_delay_max_ms.to_value(),
            "tls-validation-flags" => s.tls_validation_flags.to_value(),
            "tls-ca-file" => s.tls_ca_file.to_value(),
            "stats" => {
                drop(s);
                match self.shared.lock().unwrap().as_ref() {
                    Some(sh) => sh.stats().to_value(),
                    None => self
                        .last_stats
                        .lock()
                        .unwrap()
                        .clone()
                        .unwrap_or_else(|| {
                            gst::Structure::builder("application/x-rtspannounce-stats")
                                .field("state", "stopped")
                                .build()
                        })
                        .to_value(),
                }
            }
            _ => unreachable!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_element_flags(gst::ElementFlags::SINK);
    }
}

impl GstObjectImpl for RtspAnnounce {}

impl ElementImpl for RtspAnnounce {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: std::sync::LazyLock<gst::subclass::ElementMetadata> = std::sync::LazyLock::new(
            || {
                gst::subclass::ElementMetadata::new(
                    "RTSP ANNOUNCE/RECORD sink",
                    "Sink/Network",
                    "Publishes RTP or encoded streams (payloaded inside) to an RTSP server (ANNOUNCE, SETUP, RECORD) over TCP interleaved (plain or TLS, rtsps://) or UDP",
                    "rtspannounce developers",
                )
            },
        );
        Some(&META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static T: std::sync::LazyLock<Vec<gst::PadTemplate>> = std::sync::LazyLock::new(|| {
            // RTP, or whatever a payloader in the registry takes: the pad then payloads it.
            vec![gst::PadTemplate::with_gtype(
                "sink_%u",
                gst::PadDirection::Sink,
                gst::PadPresence::Request,
                &super::payloader::template_caps(),
                RtspAnnouncePad::static_type(),
            )
            .unwrap()]
        });
        T.as_ref()
    }

    fn request_new_pad(
        &self,
        templ: &gst::PadTemplate,
        name: Option<&str>,
        _caps: Option<&gst::Caps>,
    ) -> Option<gst::Pad> {
        // Made before any lock is taken (it reads the settings).
        let link: PadLink = Arc::new(Mutex::new(None));
        let appsink = self.make_appsink(link.clone());
        // Under the pads lock only what is ours: the name, the session's track, the entry (so a
        // concurrent request cannot take the same name). Adding the appsink and the pad, which
        // emit element-added and pad-added, comes after the lock is released.
        let claimed = {
            let mut pads = self.pads.lock().unwrap();
            let taken = |n: &str| pads.iter().any(|p| p.ghost.name() == n);
            let name = match name {
                Some(n) => {
                    if taken(n)
                        || n.strip_prefix("sink_")
                            .and_then(|x| x.parse::<u32>().ok())
                            .is_none()
                    {
                        gst::error!(
                            CAT,
                            imp = self,
                            "cannot create pad {n}: taken or not sink_N"
                        );
                        return None;
                    }
                    n.to_string()
                }
                None => (0..)
                    .map(|i| format!("sink_{i}"))
                    .find(|n| !taken(n))
                    .unwrap(),
            };
            let shared = self.shared.lock().unwrap().clone();
            let track = match shared {
                Some(shared) => match shared.add_track(name.clone()) {
                    Ok(idx) => Ok(Some((shared, idx))),
                    Err(phase) => Err(phase),
                },
                None => Ok(None),
            };
            match track {
                Ok(track) => {
                    *link.lock().unwrap() = track;
                    // RTP input goes straight to the appsink; encoded input gets a payloader in
                    // between when its caps arrive (see pad.rs).
                    let ghost = RtspAnnouncePad::new(templ, &name, appsink.upcast_ref());
                    pads.push(PadEntry {
                        ghost: ghost.clone(),
                        appsink: appsink.clone(),
                        link,
                    });
                    Ok(ghost)
                }
                Err(phase) => Err((name, phase)),
            }
        };
        let ghost = match claimed {
            Ok(ghost) => ghost,
            Err((name, phase)) => {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Pad,
                    ("Cannot add pad {} while publishing ({:?}): the server was already told the stream list; request every pad before the pipeline starts", name, phase)
                );
                return None;
            }
        };
        let name = ghost.name();
        appsink.set_property("name", format!("appsink-{name}"));
        let obj = self.obj();
        let forget = || {
            self.pads
                .lock()
                .unwrap()
                .retain(|p| p.ghost.upcast_ref::<gst::Pad>() != ghost.upcast_ref::<gst::Pad>());
        };
        if obj.add(&appsink).is_err() {
            forget();
            return None;
        }
        let target = appsink.static_pad("sink").unwrap();
        if ghost.set_target(Some(&target)).is_err() || obj.add_pad(&ghost).is_err() {
            forget();
            let _ = obj.remove(&appsink);
            return None;
        }
        let _ = ghost.set_active(true);
        let _ = appsink.sync_state_with_parent();
        // `sync` may have changed since make_appsink read it, and a setter that listed the pads
        // before this one was in the list did not see it.
        self.apply_sync(Some(&appsink));
        gst::debug!(CAT, imp = self, "created pad {name}");
        Some(ghost.upcast())
    }

    fn release_pad(&self, pad: &gst::Pad) {
        let entry = {
            let mut pads = self.pads.lock().unwrap();
            let Some(i) = pads
                .iter()
                .position(|p| p.ghost.upcast_ref::<gst::Pad>() == pad)
            else {
                return;
            };
            pads.remove(i)
        };
        // Before the handshake the track goes with its pad; after it the server knows it.
        let linked = entry.link.lock().unwrap().take();
        if let Some((shared, id)) = linked {
            if !shared.remove_track(id) {
                gst::warning!(
                    CAT,
                    imp = self,
                    "pad {} released while publishing ({:?}): its track stays announced, silent",
                    pad.name(),
                    shared.phase()
                );
            }
        }
        let obj = self.obj();
        entry.ghost.detach(obj.upcast_ref());
        let _ = entry.appsink.set_state(gst::State::Null);
        // While the bin is being disposed its children may already be gone.
        if entry.appsink.parent().as_ref() == Some(obj.upcast_ref::<gst::Object>()) {
            let _ = obj.remove(&entry.appsink);
        }
        let _ = obj.remove_pad(&entry.ghost);
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        gst::debug!(CAT, imp = self, "{transition:?}");
        match transition {
            gst::StateChange::NullToReady => {
                if let Err(msg) = self.session_config() {
                    self.post_error_message(msg);
                    return Err(gst::StateChangeError);
                }
            }
            gst::StateChange::ReadyToPaused => {
                if let Err(msg) = self.start_session() {
                    self.post_error_message(msg);
                    return Err(gst::StateChangeError);
                }
            }
            // A pipeline on its way to READY or NULL passes PAUSED, and the appsinks' PLAYING to
            // PAUSED waits for a streaming thread in our callbacks (it holds their preroll
            // lock): stop now, so that no step of the way waits on the network.
            gst::StateChange::PlayingToPaused if self.leaving_paused() => self.stop_session(),
            gst::StateChange::PlayingToPaused => self.set_paused(true),
            gst::StateChange::PausedToPlaying => self.set_paused(false),
            // Before the appsinks stop: wake any streaming thread blocked in our callbacks, or
            // the upstream elements could never join their threads.
            gst::StateChange::PausedToReady => self.stop_session(),
            _ => {}
        }
        let ret = self.parent_change_state(transition);
        if ret.is_err() && transition == gst::StateChange::ReadyToPaused {
            self.stop_session();
        }
        ret
    }
}

impl BinImpl for RtspAnnounce {
    fn handle_message(&self, msg: gst::Message) {
        // The appsinks' EOS means "this pad is done"; ours is posted after TEARDOWN's answer,
        // when everything has been delivered.
        if let gst::MessageView::Eos(_) = msg.view() {
            gst::debug!(
                CAT,
                imp = self,
                "pad EOS from {:?}",
                msg.src().map(|s| s.name())
            );
            return;
        }
        self.parent_handle_message(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_port_range;

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
