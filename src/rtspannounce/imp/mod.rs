//! GStreamer glue: properties, request pads, state changes, EOS.
//!
//! The element is a bin holding one `appsink` per request pad (see docs/ARCHITECTURE.md): the
//! appsinks give every pad mature BaseSink behaviour (clock sync, preroll, latency, flushing,
//! per-pad EOS) and their callbacks feed the session in `session/`. Every signal is emitted
//! and every message posted from here: the session reaches the element through [`Hooks`].

mod signals;

use super::builtin::{self, Builtin};
use super::pad::RtspAnnouncePad;
use super::payloader;
use super::sender::Media;
use super::session::{self, PadError, SessionConfig, Shared, TrackId};
use super::settings::Settings;
use crate::rtsp::url::RtspUrl;
use crate::CAT;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
#[cfg(test)]
pub(super) use signals::emit_handle_request;
use signals::ElementHooks;
use std::sync::{Arc, Mutex};

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
        &[
            "rtsp", "rtspt", "rtspu", "rtsps", "rtsph", "rtspsh", "rtspws", "rtspwss",
        ]
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

/// A sample of encoded input through the pad's built-in payloader into the session.
fn packed(
    own: &Mutex<Builtin>,
    shared: &Arc<Shared>,
    idx: TrackId,
    caps: &gst::Caps,
    sample: &gst::Sample,
    segment: Option<&gst::FormattedSegment<gst::ClockTime>>,
) -> Result<(), PadError> {
    let mut own = own.lock().unwrap();
    own.fit(caps).map_err(PadError::Error)?;
    let mut media = smallvec::SmallVec::<[_; 1]>::new();
    if let Some(list) = sample.buffer_list() {
        own.packetize(list.iter_owned(), segment, &mut media)
    } else {
        own.packetize(sample.buffer_owned().into_iter(), segment, &mut media)
    }
    .map_err(PadError::Error)?;
    // After the data: in-band parameter sets may have completed the caps.
    let rtp = own.fit(caps).map_err(PadError::Error)?;
    drop(own);
    let times = media
        .iter()
        .map(|(_, t)| *t)
        .collect::<smallvec::SmallVec<[_; 1]>>();
    shared.render(idx, Some(rtp), media.into_iter(), times.into_iter())
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
        let settings = self.settings.lock().unwrap().clone();
        settings.session_config()
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
        let hooks = Arc::new(ElementHooks {
            element: self.obj().downgrade(),
        });
        let shared = Shared::new(cfg, order, hooks);
        for p in pads.iter() {
            let Some(id) = shared.track_id(&p.ghost.name()) else {
                continue;
            };
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
        // RTP, or encoded input pad.rs routes here for the built-in payloaders.
        let mut caps = gst::Caps::new_empty_simple("application/x-rtp");
        caps.merge(builtin::input_caps());
        let appsink = gst_app::AppSink::builder()
            .caps(&caps)
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
        // Used by this pad's streaming thread only (preroll and render).
        let own = Arc::new(Mutex::new(Builtin::new(96)));
        let own2 = own.clone();
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_preroll(move |sink| {
                    let sample = sink.pull_preroll().map_err(|_| gst::FlowError::Flushing)?;
                    // Copied out first: an `if let` scrutinee's guard would live through the block.
                    let linked = l1.lock().unwrap().clone();
                    let mut res = Ok(());
                    if let Some((shared, idx)) = linked {
                        // The packet's place on the timeline, for the SDP's RFC 7273 offset.
                        let first = sample
                            .buffer()
                            .or_else(|| sample.buffer_list().and_then(|l| l.get(0)));
                        let segment = sample
                            .segment()
                            .and_then(|s| s.downcast_ref::<gst::ClockTime>());
                        let running = session::running_time(segment, first.and_then(|b| b.pts()));
                        let caps = sample.caps_owned();
                        if let Some(c) = caps.as_ref().filter(|c| !payloader::is_rtp_caps(c)) {
                            let mut own = own.lock().unwrap();
                            let rtp = match own.fit(c) {
                                Ok(rtp) => rtp,
                                Err(msg) => {
                                    drop(own);
                                    if let Some(e) = w1.upgrade() {
                                        e.post_error_message(msg);
                                    }
                                    return Err(gst::FlowError::NotNegotiated);
                                }
                            };
                            let anchor = own.anchor(running);
                            drop(own);
                            res = shared.preroll(idx, Some(rtp), anchor);
                        } else {
                            let anchor = first.and_then(|b| session::anchor_of(b, running));
                            res = shared.preroll(idx, caps, anchor);
                        }
                    }
                    let Some(element) = w1.upgrade() else {
                        return Err(gst::FlowError::Flushing);
                    };
                    pad_result(&l1, element.upcast_ref(), res)
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
                    let rt = |b: &gst::BufferRef| session::running_time(segment, b.pts());
                    let res = if let Some(c) = caps.as_ref().filter(|c| !payloader::is_rtp_caps(c))
                    {
                        packed(&own2, &shared, idx, c, &sample, segment)
                    } else if let Some(list) = sample.buffer_list_owned() {
                        let n = list.len();
                        let times = list.iter().map(rt).collect::<smallvec::SmallVec<[_; 64]>>();
                        shared.render(
                            idx,
                            caps,
                            (0..n)
                                .filter_map(move |i| list.get_owned(i))
                                .zip(times.clone())
                                .map(|(b, t)| (Media::Rtp(b), t)),
                            times.into_iter(),
                        )
                    } else if let Some(buf) = sample.buffer_owned() {
                        let t = rt(&buf);
                        shared.render(
                            idx,
                            caps,
                            std::iter::once((Media::Rtp(buf), t)),
                            std::iter::once(t),
                        )
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

impl ObjectImpl for RtspAnnounce {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: std::sync::LazyLock<Vec<glib::ParamSpec>> =
            std::sync::LazyLock::new(super::settings::properties);
        PROPS.as_ref()
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: std::sync::LazyLock<Vec<glib::subclass::Signal>> =
            std::sync::LazyLock::new(|| {
                vec![
                    // The SDP about to be announced; handlers may edit it in place (same name
                    // and meaning as rtspclientsink's). Emitted from a blocking-pool thread, not
                    // the shared I/O workers; a handler that takes longer than tcp-timeout fails
                    // the handshake (ResourceError::Settings).
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
                    // Emitted from a blocking-pool thread during the TLS handshake; an answer
                    // later than tcp-timeout refuses the certificate.
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
        self.settings.lock().unwrap().set(pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if let Some(v) = self.settings.lock().unwrap().get(pspec.name()) {
            return v;
        }
        // `stats`
        let shared = self.shared.lock().unwrap().clone();
        match shared {
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
                    let weak = self.obj().downgrade();
                    let on_new_payloader = Box::new(move |p: &gst::Element| {
                        if let Some(e) = weak.upgrade() {
                            e.emit_by_name::<()>("new-payloader", &[p]);
                        }
                    });
                    let ghost =
                        RtspAnnouncePad::new(templ, &name, appsink.upcast_ref(), on_new_payloader);
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
