//! What the session needs from its element, as one interface: the element (imp.rs) implements
//! it and emits every signal and posts every message; the session never touches the element,
//! so it can run, and be tested, without one.
//!
//! Threads: `notify`, `clock` and `force_key_unit` are called from streaming threads and I/O
//! workers alike and must not block. `edit_sdp`, `handle_request` and `accept_certificate` run
//! application handlers and are called off the I/O workers (the blocking pool), bounded by the
//! session's tcp-timeout, so a slow handler holds up its own session only.

use crate::error::ErrorKind;
use crate::rtsp::message::{Request, Response};

/// Something the element posts on the bus for the session.
#[derive(Debug)]
pub(crate) enum Notice {
    /// An error message; the first one names the cause of the failure.
    Error(gst::ErrorMessage),
    /// A warning message (a loss while reconnecting, congestion, RTCP loss reports...).
    Warning {
        kind: ErrorKind,
        text: String,
        /// The code that reported it.
        at: &'static std::panic::Location<'static>,
    },
    /// An element message (`rtspannounce-connected`, `-reconnecting`...).
    Element(gst::Structure),
    /// Everything was delivered (or given up while reconnecting): EOS on the bus.
    Eos,
}

/// The pipeline clock as sender reports and the SDP read it: now, the element's base time, and
/// which clock it is when RFC 7273 can name it (NTP or PTP).
#[derive(Debug, Clone, Default)]
pub(crate) struct ClockReading {
    pub now: Option<u64>,
    pub base_time: u64,
    pub reference: Option<crate::sdp::clock::RefClock>,
}

pub(crate) trait Hooks: Send + Sync {
    fn notify(&self, notice: Notice);
    fn clock(&self) -> ClockReading;
    /// Asks upstream of `pad_name` for a keyframe (after a reconnect, or a congestion drop).
    fn force_key_unit(&self, pad_name: &str);
    /// Whether the application handles `update-sdp`: without a handler no thread hop is made.
    fn edits_sdp(&self) -> bool;
    /// `update-sdp`: the application edits the SDP before ANNOUNCE.
    fn edit_sdp(&self, sdp: &mut gst_sdp::SDPMessage);
    /// `handle-request`: the application's answer to a request from the server (None: ours).
    fn handle_request(&self, req: &Request) -> Option<Response>;
    /// `accept-certificate`: whether to accept a server certificate chain that failed the
    /// checks in `errors` (called by the TLS verifier).
    fn accept_certificate(
        &self,
        chain: &[rustls::pki_types::CertificateDer<'_>],
        errors: gio::TlsCertificateFlags,
    ) -> bool;
}
