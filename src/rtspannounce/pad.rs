//! `GstRtspAnnouncePad`, the request pad: a ghost pad onto the track's appsink for RTP input, or
//! onto a payloader in front of the appsink for encoded input.
//!
//! The payloader is picked when caps arrive (a probe sees the caps event before the pad's
//! accept-caps check, so a refusal can name the pad and the caps), unless the application set
//! the `payloader` property, as on rtspclientsink's pads. Before caps are fixed, upstream's caps
//! query is answered from the pad template (RTP plus every candidate payloader's input), so an
//! encoder negotiates as it would with the payloader in front. A query whose filter only a
//! payloader takes (an encoder asking with its own output caps) puts the best such payloader
//! in at once and is answered by it, so `x264enc ! rtspannounce` negotiates exactly as
//! `x264enc ! rtph264pay ! ...` does. A later codec change swaps the payloader; a change to or
//! from RTP input re-targets the ghost pad.

use super::{builtin, payloader};
use crate::CAT;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

mod imp {
    use super::*;

    pub(super) struct Installed {
        pub(crate) element: gst::Element,
        pub(crate) explicit: bool,
        /// `new-payloader` was emitted for it.
        pub(crate) announced: bool,
    }

    /// An automatic payloader a caps query chose before any caps arrived. It is not in the bin:
    /// its src pad is linked to `probe`, a pad of ours that answers queries as the appsink
    /// does, so the payloader answers upstream as it would in front of us. The caps event
    /// links it in (topology never changes inside a query).
    pub(super) struct Pending {
        pub(crate) element: gst::Element,
        pub(crate) probe: gst::Pad,
    }

    #[derive(Default)]
    pub(super) struct Chain {
        pub(crate) appsink: Option<gst::Element>,
        pub(crate) installed: Option<Installed>,
        pub(crate) pending: Option<Pending>,
    }

    #[derive(Default)]
    pub(crate) struct RtspAnnouncePad {
        /// The `payloader` property.
        pub(super) payloader: Mutex<Option<gst::Element>>,
        pub(super) chain: Mutex<Chain>,
        /// Set while we re-link: the RECONFIGURE that linking sends upstream is ours, not a
        /// reason for upstream to renegotiate (an encoder would switch profile mid-stream).
        pub(super) relinking: AtomicBool,
        /// The element's `new-payloader` emission (signals are the element's to emit).
        pub(super) on_new_payloader: std::sync::OnceLock<super::NewPayloader>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for RtspAnnouncePad {
        const NAME: &'static str = "GstRtspAnnouncePad";
        type Type = super::RtspAnnouncePad;
        type ParentType = gst::GhostPad;
    }

    impl ObjectImpl for RtspAnnouncePad {
        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: std::sync::LazyLock<Vec<glib::ParamSpec>> = std::sync::LazyLock::new(
                || {
                    vec![glib::ParamSpecObject::builder::<gst::Element>("payloader")
                        .nick("Payloader")
                        .blurb("RTP payloader for this pad's encoded input, set before data flows (NULL: the best ranked payloader for the caps is chosen when they arrive; RTP input needs none)")
                        .build()]
                },
            );
            PROPS.as_ref()
        }

        fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
            match pspec.name() {
                "payloader" => {
                    let p: Option<gst::Element> = value.get().unwrap();
                    *self.payloader.lock().unwrap() = p;
                    self.obj().apply_payloader_property();
                }
                _ => unreachable!(),
            }
        }

        fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
            match pspec.name() {
                "payloader" => self.payloader.lock().unwrap().to_value(),
                _ => unreachable!(),
            }
        }
    }

    impl GstObjectImpl for RtspAnnouncePad {}
    impl PadImpl for RtspAnnouncePad {}
    impl ProxyPadImpl for RtspAnnouncePad {}
    impl GhostPadImpl for RtspAnnouncePad {}
}

glib::wrapper! {
    pub(crate) struct RtspAnnouncePad(ObjectSubclass<imp::RtspAnnouncePad>) @extends gst::GhostPad, gst::ProxyPad, gst::Pad, gst::Object;
}

fn describe(e: &gst::Element) -> String {
    match e.factory() {
        Some(f) => format!("{} ({})", e.name(), f.name()),
        None => e.name().to_string(),
    }
}

/// Called with a payloader about to get its first caps.
pub(crate) type NewPayloader = Box<dyn Fn(&gst::Element) + Send + Sync>;

impl RtspAnnouncePad {
    /// A request pad feeding `appsink` (already in the element).
    pub(crate) fn new(
        templ: &gst::PadTemplate,
        name: &str,
        appsink: &gst::Element,
        on_new_payloader: NewPayloader,
    ) -> RtspAnnouncePad {
        let pad = gst::PadBuilder::<RtspAnnouncePad>::from_template(templ)
            .name(name)
            .query_function(|pad, parent, query| pad.sink_query(parent, query))
            .build();
        pad.imp().chain.lock().unwrap().appsink = Some(appsink.clone());
        let _ = pad.imp().on_new_payloader.set(on_new_payloader);
        pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, |pad, info| {
            let quiet = pad
                .downcast_ref::<RtspAnnouncePad>()
                .is_some_and(|p| p.imp().relinking.load(Ordering::SeqCst));
            match &info.data {
                Some(gst::PadProbeData::Event(ev))
                    if quiet && ev.type_() == gst::EventType::Reconfigure =>
                {
                    // Handled, not Drop: gstreamer-rs 0.25 hands GStreamer a NULL event to
                    // unref after a Drop (a CRITICAL on every re-link); Handled consumes it here.
                    gst::PadProbeReturn::Handled
                }
                _ => gst::PadProbeReturn::Ok,
            }
        });
        pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, |pad, info| {
            let Some(pad) = pad.downcast_ref::<RtspAnnouncePad>() else {
                return gst::PadProbeReturn::Ok;
            };
            if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                if let gst::EventView::Caps(c) = ev.view() {
                    if let Err(msg) = pad.prepare(&c.caps_owned()) {
                        if let Some(e) = pad.parent_element() {
                            e.post_error_message(msg);
                        }
                        // The accept-caps check that follows refuses the caps: upstream gets
                        // not-negotiated after our error is on the bus.
                    }
                }
            }
            gst::PadProbeReturn::Ok
        });
        pad
    }

    fn parent_element(&self) -> Option<gst::Element> {
        self.parent().and_downcast::<gst::Element>()
    }

    /// Whether our own packetizer takes `caps` (the element's `builtin-payloaders`, and no
    /// payloader set on the pad).
    fn builtin_takes(&self, caps: &gst::CapsRef) -> bool {
        self.explicit().is_none() && self.builtin_enabled() && builtin::takes(caps)
    }

    fn builtin_enabled(&self) -> bool {
        self.parent_element()
            .filter(|e| e.find_property("builtin-payloaders").is_some())
            .is_some_and(|e| e.property::<bool>("builtin-payloaders"))
    }

    fn explicit(&self) -> Option<gst::Element> {
        self.imp().payloader.lock().unwrap().clone()
    }

    /// The payloader now in front of the appsink (chosen or set), if any.
    fn current_payloader(&self) -> Option<gst::Element> {
        let chain = self.imp().chain.lock().unwrap();
        chain.installed.as_ref().map(|i| i.element.clone())
    }

    /// Whether the current chain (payloader, or the appsink for RTP) can take some of `caps`.
    fn chain_takes(&self, caps: &gst::Caps) -> bool {
        match self.current_payloader() {
            Some(p) => p
                .static_pad("sink")
                .is_some_and(|s| s.pad_template_caps().can_intersect(caps)),
            None => {
                caps.can_intersect(&gst::Caps::new_empty_simple("application/x-rtp"))
                    || (self.builtin_enabled() && caps.can_intersect(&builtin::input_caps()))
            }
        }
    }

    /// Before caps are fixed, a caps query filtered to what only payloaders take: if one of them
    /// clearly fits, the pad that should answer it (the installed payloader's, through the
    /// ghost pad, or a pending one's). A new choice is made pending, not linked: linking sends
    /// sticky events, which must not happen inside a query.
    fn answer_pad_for(&self, filter: &gst::Caps) -> Option<Option<gst::Pad>> {
        let rtp = gst::Caps::new_empty_simple("application/x-rtp");
        if filter.is_any() || filter.is_empty() || filter.can_intersect(&rtp) {
            return None;
        }
        // Only what the built-in payloaders take whole (x264enc's own caps): a filter that is
        // merely compatible (lamemp3enc's `audio/mpeg` without a version) goes on below.
        if self.explicit().is_none()
            && self.builtin_enabled()
            && filter.is_subset(&builtin::input_caps())
        {
            return Some(None).filter(|_| self.current_payloader().is_none());
        }
        let fits = |e: &gst::Element| {
            e.static_pad("sink")
                .is_some_and(|p| p.pad_template_caps().can_intersect(filter))
        };
        let (current, pending, appsink) = {
            let chain = self.imp().chain.lock().unwrap();
            (
                chain
                    .installed
                    .as_ref()
                    .filter(|i| !i.explicit)
                    .map(|i| i.element.clone()),
                chain.pending.as_ref().map(|p| p.element.clone()),
                chain.appsink.clone(),
            )
        };
        if current.as_ref().is_some_and(fits) {
            return Some(None);
        }
        if let Some(p) = pending.filter(fits) {
            return p.static_pad("sink").map(Some);
        }
        let factory = payloader::unambiguous(filter)?;
        let name = self.name();
        let pay = match payloader::create(&factory, &format!("pay-{name}")) {
            Ok(p) => p,
            Err(e) => {
                gst::warning!(CAT, obj = self, "cannot create {}: {e}", factory.name());
                return None;
            }
        };
        let (Some(src), Some(sink)) = (pay.static_pad("src"), pay.static_pad("sink")) else {
            return None;
        };
        // Queries from the payloader's src go to the appsink, as they will once it is linked.
        let target = appsink.and_then(|a| a.static_pad("sink"))?.downgrade();
        let probe = gst::Pad::builder(gst::PadDirection::Sink)
            .name(format!("probe-{name}"))
            .query_function(move |_pad, _parent, q| target.upgrade().is_some_and(|t| t.query(q)))
            .build();
        if src.link(&probe).is_err() {
            return None;
        }
        gst::info!(
            CAT,
            obj = self,
            "{} for upstream offering {filter} (linked in with the caps)",
            factory.name()
        );
        let old = self
            .imp()
            .chain
            .lock()
            .unwrap()
            .pending
            .replace(imp::Pending {
                element: pay,
                probe,
            });
        if let Some(old) = old {
            Self::release_pending(old);
        }
        Some(Some(sink))
    }

    fn release_pending(p: imp::Pending) {
        if let Some(src) = p.element.static_pad("src") {
            let _ = src.unlink(&p.probe);
        }
    }

    /// The pending payloader, unlinked from its probe, if it takes `caps`.
    fn take_pending_for(&self, caps: &gst::Caps) -> Option<gst::Element> {
        let pending = self.imp().chain.lock().unwrap().pending.take()?;
        let element = pending.element.clone();
        Self::release_pending(pending);
        element
            .static_pad("sink")
            .is_some_and(|s| s.query_accept_caps(caps))
            .then_some(element)
    }

    fn accepts(&self, caps: &gst::Caps) -> bool {
        if let Some(p) = self.explicit() {
            return p
                .static_pad("sink")
                .is_some_and(|s| s.query_accept_caps(caps));
        }
        if payloader::is_rtp_caps(caps) || self.builtin_takes(caps) {
            return true;
        }
        let current = self.current_payloader();
        current
            .and_then(|p| p.static_pad("sink"))
            .is_some_and(|s| s.query_accept_caps(caps))
            || payloader::find(caps).is_some()
    }

    fn sink_query(&self, parent: Option<&gst::Object>, query: &mut gst::QueryRef) -> bool {
        match query.view_mut() {
            gst::QueryViewMut::Caps(q) => {
                if self.explicit().is_some() {
                    return gst::Pad::query_default(self, parent, query);
                }
                let filter = q.filter_owned();
                if self.current_caps().is_some() {
                    // Negotiated: the chain answers for what it takes; another format (a
                    // selector's other input) gets the template, the swap comes with its caps.
                    let other = filter.as_ref().is_some_and(|f| !self.chain_takes(f));
                    if !other {
                        return gst::Pad::query_default(self, parent, query);
                    }
                } else if let Some(answer) = filter.as_ref().and_then(|f| self.answer_pad_for(f)) {
                    return match answer {
                        Some(pending) => pending.query(query),
                        None => gst::Pad::query_default(self, parent, query),
                    };
                }
                let caps = payloader::pad_caps();
                let res = match filter {
                    Some(f) => f.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
                    None => caps,
                };
                q.set_result(&res);
                true
            }
            gst::QueryViewMut::AcceptCaps(q) => {
                let ok = self.accepts(&q.caps_owned());
                q.set_result(ok);
                true
            }
            _ => gst::Pad::query_default(self, parent, query),
        }
    }

    /// Makes the chain fit `caps`, in the streaming thread before the caps event goes on, and
    /// lets the application configure a payloader new to it (`new-payloader`). Emitted here, not
    /// when the payloader went in: that may be during `gst_parse_launch()`'s linking, before the
    /// application could connect; here it is still before the payloader sees the caps.
    fn prepare(&self, caps: &gst::Caps) -> Result<(), gst::ErrorMessage> {
        self.fit_chain(caps)?;
        let fresh = {
            let mut chain = self.imp().chain.lock().unwrap();
            chain.installed.as_mut().filter(|i| !i.announced).map(|i| {
                i.announced = true;
                i.element.clone()
            })
        };
        if let (Some(p), Some(notify)) = (fresh, self.imp().on_new_payloader.get()) {
            notify(&p);
        }
        Ok(())
    }

    fn fit_chain(&self, caps: &gst::Caps) -> Result<(), gst::ErrorMessage> {
        let name = self.name();
        if let Some(p) = self.explicit() {
            let installed = self.current_payloader();
            if installed.as_ref() != Some(&p) {
                self.install(Some((p.clone(), true)))?;
            }
            let ok = p
                .static_pad("sink")
                .is_some_and(|s| s.query_accept_caps(caps));
            if !ok {
                return Err(gst::error_msg!(
                    gst::CoreError::Negotiation,
                    (
                        "{}: the payloader {} set on the pad does not accept {}",
                        name,
                        describe(&p),
                        caps
                    )
                ));
            }
            return Ok(());
        }
        if payloader::is_rtp_caps(caps) {
            if self.current_payloader().is_some() {
                gst::info!(CAT, obj = self, "RTP input now: no payloader");
                self.install(None)?;
            }
            return Ok(());
        }
        if self.builtin_takes(caps) {
            if self.current_payloader().is_some()
                || self.imp().chain.lock().unwrap().pending.is_some()
            {
                gst::info!(CAT, obj = self, "built-in payloader for {caps}");
                self.install(None)?;
            } else {
                gst::debug!(CAT, obj = self, "built-in payloader for {caps}");
            }
            return Ok(());
        }
        let keep = {
            let chain = self.imp().chain.lock().unwrap();
            chain.installed.as_ref().is_some_and(|i| {
                !i.explicit
                    && i.element
                        .static_pad("sink")
                        .is_some_and(|s| s.query_accept_caps(caps))
            })
        };
        if keep {
            return Ok(());
        }
        if let Some(pay) = self.take_pending_for(caps) {
            gst::info!(CAT, obj = self, "{} for {caps}", describe(&pay));
            return self.install(Some((pay, false)));
        }
        let Some(factory) = payloader::find(caps) else {
            return Err(gst::error_msg!(
                gst::CoreError::Negotiation,
                ("{}: no RTP payloader accepts {} (link RTP (application/x-rtp) or a format a GStreamer RTP payloader of rank above none takes, or set the pad's payloader property)", name, caps)
            ));
        };
        let pay = payloader::create(&factory, &format!("pay-{name}")).map_err(|e| {
            gst::error_msg!(
                gst::CoreError::Negotiation,
                ("{}: cannot create {}: {}", name, factory.name(), e)
            )
        })?;
        gst::info!(CAT, obj = self, "{} for {caps}", factory.name());
        self.install(Some((pay, false)))
    }

    /// Called when the `payloader` property changes: before data flows the payloader goes in at
    /// once (upstream's queries then see it); otherwise at the next caps.
    fn apply_payloader_property(&self) {
        if self.current_caps().is_some() {
            gst::info!(
                CAT,
                obj = self,
                "payloader set while streaming: used from the next caps"
            );
            return;
        }
        let res = match self.explicit() {
            Some(p) => self.install(Some((p, true))),
            None if self.current_payloader().is_some() => self.install(None),
            None => Ok(()),
        };
        if let Err(e) = res {
            // The caps event tries again and posts the error then.
            gst::warning!(CAT, obj = self, "{e}");
        }
    }

    /// Puts `new` (or nothing, for RTP input) between the ghost pad and the appsink.
    fn install(&self, new: Option<(gst::Element, bool)>) -> Result<(), gst::ErrorMessage> {
        let fail = |text: String| gst::error_msg!(gst::CoreError::Negotiation, ("{}", text));
        let name = self.name();
        let Some(element) = self.parent_element() else {
            return Err(fail(format!("{name} is not in an rtspannounce")));
        };
        let bin = element.downcast_ref::<gst::Bin>().unwrap();
        if let Some((p, _)) = &new {
            if p.static_pad("sink").is_none() || p.static_pad("src").is_none() {
                return Err(fail(format!(
                    "{name}: payloader {} has no static \"sink\" and \"src\" pads",
                    describe(p)
                )));
            }
            let in_other_bin = p
                .parent()
                .is_some_and(|parent| &parent != element.upcast_ref::<gst::Object>());
            if in_other_bin {
                return Err(fail(format!(
                    "{name}: payloader {} already belongs to another bin",
                    describe(p)
                )));
            }
        }
        // The chain is taken out and put back: no lock of ours is held while pads are linked,
        // children added or removed and the ghost pad re-targeted (that sends sticky events).
        // Installs come from the caps event (the pad's stream lock orders them) or from the
        // application before data flows.
        let (appsink_sink, old, pending) = {
            let mut chain = self.imp().chain.lock().unwrap();
            let appsink_sink = chain
                .appsink
                .as_ref()
                .and_then(|a| a.static_pad("sink"))
                .ok_or_else(|| fail(format!("{name} has no appsink")))?;
            (appsink_sink, chain.installed.take(), chain.pending.take())
        };
        if let Some(p) = pending {
            Self::release_pending(p);
        }
        self.imp().relinking.store(true, Ordering::SeqCst);
        let res = self.relink(bin, &element, old, &appsink_sink, new);
        self.imp().relinking.store(false, Ordering::SeqCst);
        let installed = res?;
        self.imp().chain.lock().unwrap().installed = installed;
        Ok(())
    }

    fn relink(
        &self,
        bin: &gst::Bin,
        element: &gst::Element,
        old: Option<imp::Installed>,
        appsink_sink: &gst::Pad,
        new: Option<(gst::Element, bool)>,
    ) -> Result<Option<imp::Installed>, gst::ErrorMessage> {
        let fail = |text: String| gst::error_msg!(gst::CoreError::Negotiation, ("{}", text));
        let name = self.name();
        let _ = self.set_target(None::<&gst::Pad>);
        if let Some(old) = old {
            gst::debug!(CAT, obj = self, "removing {}", describe(&old.element));
            if let Some(src) = old.element.static_pad("src") {
                let _ = src.unlink(appsink_sink);
            }
            let _ = old.element.set_state(gst::State::Null);
            if old.element.parent().as_ref() == Some(element.upcast_ref::<gst::Object>()) {
                let _ = bin.remove(&old.element);
            }
        }
        let Some((p, explicit)) = new else {
            return self
                .set_target(Some(appsink_sink))
                .map(|_| None)
                .map_err(|e| fail(format!("{name}: {e}")));
        };
        let linked = (|| -> Result<(), String> {
            if p.parent().is_none() {
                bin.add(&p).map_err(|e| e.to_string())?;
            }
            let src = p.static_pad("src").unwrap();
            src.link(appsink_sink).map_err(|e| format!("{e:?}"))?;
            p.sync_state_with_parent().map_err(|e| e.to_string())?;
            self.set_target(Some(&p.static_pad("sink").unwrap()))
                .map_err(|e| e.to_string())
        })();
        if let Err(e) = linked {
            // Leave the pad usable for RTP input.
            let _ = p.static_pad("src").map(|s| s.unlink(appsink_sink));
            let _ = p.set_state(gst::State::Null);
            if p.parent().as_ref() == Some(element.upcast_ref::<gst::Object>()) {
                let _ = bin.remove(&p);
            }
            let _ = self.set_target(Some(appsink_sink));
            return Err(fail(format!(
                "{name}: cannot link payloader {}: {e}",
                describe(&p)
            )));
        }
        gst::debug!(
            CAT,
            obj = self,
            "{} payloader {}",
            if explicit { "set" } else { "chosen" },
            describe(&p)
        );
        Ok(Some(imp::Installed {
            element: p,
            explicit,
            announced: false,
        }))
    }

    /// Takes the payloader out of the element (the pad is being released).
    pub(crate) fn detach(&self, bin: &gst::Bin) {
        let (installed, pending) = {
            let mut chain = self.imp().chain.lock().unwrap();
            (chain.installed.take(), chain.pending.take())
        };
        if let Some(p) = pending {
            Self::release_pending(p);
        }
        if let Some(old) = installed {
            let _ = old.element.set_state(gst::State::Null);
            if old.element.parent().as_ref() == Some(bin.upcast_ref::<gst::Object>()) {
                let _ = bin.remove(&old.element);
            }
        }
    }
}
