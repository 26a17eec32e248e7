//! Every signal the element emits for its sessions, and the `Hooks` the session reaches the
//! element through (messages, clock, keyframe requests).

use super::CAT;
use crate::error::ErrorKind;
use crate::rtsp::message::{Request, Response};
use crate::rtspannounce::hooks::{ClockReading, Hooks, Notice};
use crate::sdp::clock::RefClock;
use gst::glib;
use gst::prelude::*;

/// The clock forced on the top-level pipeline with `use_clock`, if any: the one every element
/// gets at PLAYING. Only a forced one: selecting a clock asks every element to provide one.
fn forced_pipeline_clock(e: &super::super::RtspAnnounce) -> Option<gst::Clock> {
    let mut top: gst::Object = e.clone().upcast();
    while let Some(parent) = top.parent() {
        top = parent;
    }
    let pipeline = top.downcast::<gst::Pipeline>().ok()?;
    if !pipeline
        .pipeline_flags()
        .contains(gst::PipelineFlags::FIXED_CLOCK)
    {
        return None;
    }
    // `use_clock(None)` fixes no clock at all: the binding's pipeline_clock() would assert on
    // the NULL that GStreamer then returns.
    unsafe {
        use gst::glib::translate::{from_glib_full, ToGlibPtr};
        from_glib_full(gst::ffi::gst_pipeline_get_pipeline_clock(
            pipeline.to_glib_none().0,
        ))
    }
}

/// The pipeline clock as RFC 7273 names it: an NTP clock by its server, a PTP clock by its
/// grandmaster and domain; any other clock is `local` (None).
fn reference_clock(clock: &gst::Clock) -> Option<RefClock> {
    if let Some(ntp) = clock.downcast_ref::<gst_net::NtpClock>() {
        let address = ntp.property::<Option<String>>("address")?;
        let port = ntp.property::<i32>("port");
        return Some(RefClock::Ntp {
            address,
            port: u16::try_from(port).ok()?,
        });
    }
    if let Some(ptp) = clock.downcast_ref::<gst_net::PtpClock>() {
        return Some(RefClock::Ptp {
            grandmaster: ptp.grandmaster_clock_id(),
            domain: ptp.domain(),
        });
    }
    None
}

/// The session's way to the element: every signal emission and bus message of a session.
pub(super) struct ElementHooks {
    pub(super) element: glib::WeakRef<super::super::RtspAnnounce>,
}

impl Hooks for ElementHooks {
    fn notify(&self, notice: Notice) {
        let Some(e) = self.element.upgrade() else {
            return;
        };
        match notice {
            Notice::Error(msg) => e.post_error_message(msg),
            Notice::Warning { kind, text, at } => {
                let (t, text) = (gst::ElementMessageType::Warning, Some(text.as_str()));
                let (file, line) = (at.file(), at.line());
                match kind {
                    ErrorKind::Resource(k) => {
                        e.message_full(t, k, text, None, file, "rtspannounce", line)
                    }
                    ErrorKind::Stream(k) => {
                        e.message_full(t, k, text, None, file, "rtspannounce", line)
                    }
                }
            }
            Notice::Element(s) => {
                let _ = e.post_message(gst::message::Element::builder(s).src(&e).build());
            }
            Notice::Eos => {
                let _ = e.post_message(gst::message::Eos::builder().src(&e).build());
            }
        }
    }

    fn clock(&self) -> ClockReading {
        let e = self.element.upgrade();
        let clock = e.as_ref().and_then(|e| e.clock());
        ClockReading {
            now: clock.as_ref().map(|c| c.time().nseconds()),
            base_time: e
                .as_ref()
                .and_then(|e| e.base_time())
                .map(|t| t.nseconds())
                .unwrap_or(0),
            // Before PLAYING the element has no clock yet (a non-live pipeline announces while
            // it prerolls): a clock the application forced on the pipeline is the one it gets.
            reference: clock
                .or_else(|| e.as_ref().and_then(forced_pipeline_clock))
                .as_ref()
                .and_then(reference_clock),
        }
    }

    fn force_key_unit(&self, pad_name: &str) {
        let pad = self.element.upgrade().and_then(|e| e.static_pad(pad_name));
        if let Some(pad) = pad {
            let _ = pad.push_event(force_key_unit());
        }
    }

    fn edits_sdp(&self) -> bool {
        self.element
            .upgrade()
            .is_some_and(|e| has_handler(e.upcast_ref(), "update-sdp"))
    }

    fn edit_sdp(&self, msg: &mut gst_sdp::SDPMessage) {
        if let Some(e) = self.element.upgrade() {
            emit_update_sdp(e.upcast_ref(), msg);
        }
    }

    fn handle_request(&self, req: &Request) -> Option<Response> {
        let e = self.element.upgrade()?;
        emit_handle_request(e.upcast_ref(), req)
    }

    /// The chain as a GTlsCertificate (glib-networking builds it) and the failed checks; a
    /// handler returning TRUE accepts.
    fn accept_certificate(
        &self,
        chain: &[rustls::pki_types::CertificateDer<'_>],
        errors: gio::TlsCertificateFlags,
    ) -> bool {
        let Some(element) = self.element.upgrade() else {
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
    }
}

/// The upstream event encoders answer with a keyframe (what
/// gst_video_event_new_upstream_force_key_unit builds: as soon as possible, with headers).
fn force_key_unit() -> gst::Event {
    gst::event::CustomUpstream::new(
        gst::Structure::builder("GstForceKeyUnit")
            .field("all-headers", true)
            .field("count", 0u32)
            .build(),
    )
}

/// Whether the application connected a handler to `signal`.
fn has_handler(element: &gst::Element, signal: &str) -> bool {
    use gst::glib::translate::{IntoGlib, ToGlibPtr};
    let Some(id) = gst::glib::subclass::SignalId::lookup(signal, element.type_()) else {
        return false;
    };
    // SAFETY: a live object and a signal id of its type.
    unsafe {
        gst::glib::gobject_ffi::g_signal_has_handler_pending(
            ToGlibPtr::<*mut gst::ffi::GstElement>::to_glib_none(element).0
                as *mut gst::glib::gobject_ffi::GObject,
            id.into_glib(),
            0,
            gst::glib::ffi::GFALSE,
        ) != gst::glib::ffi::GFALSE
    }
}

/// Lets the application edit the SDP before ANNOUNCE (`update-sdp`, as rtspclientsink).
fn emit_update_sdp(element: &gst::Element, msg: &mut gst_sdp::SDPMessage) {
    use gst::glib::translate::{IntoGlib, ToGlibPtr, ToGlibPtrMut};
    let Some(id) = gst::glib::subclass::SignalId::lookup("update-sdp", element.type_()) else {
        return;
    };
    let mut sdp_value = gst::glib::Value::from_type(gst_sdp::SDPMessage::static_type());
    let values = unsafe {
        // SAFETY: the value points at `msg` itself ("static": the value never frees it), so
        // handlers edit our message. Emitting through glib-rs would g_value_copy the
        // arguments, and copying a boxed value copies the message: edits would be lost.
        gst::glib::gobject_ffi::g_value_set_static_boxed(
            sdp_value.to_glib_none_mut().0,
            ToGlibPtr::<*const gst_sdp::ffi::GstSDPMessage>::to_glib_none(&*msg).0
                as gst::glib::ffi::gconstpointer,
        );
        [element.to_value(), sdp_value]
    };
    unsafe {
        gst::glib::gobject_ffi::g_signal_emitv(
            values.as_ptr() as *const gst::glib::gobject_ffi::GValue,
            id.into_glib(),
            0,
            std::ptr::null_mut(),
        );
    }
}

/// Emits `handle-request` for a request from the server and turns the answer into a response;
/// None leaves the default answer. The conversions both ways are `handle_request`'s: a request
/// GStreamer could not hold in a structure is never emitted.
pub(crate) fn emit_handle_request(
    element: &gst::Element,
    req: &crate::rtsp::message::Request,
) -> Option<crate::rtsp::message::Response> {
    let (s, skipped) = match crate::rtspannounce::handle_request::request_structure(req) {
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
    match crate::rtspannounce::handle_request::answer_response(&answer) {
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
