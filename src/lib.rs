// SPDX-License-Identifier: MPL-2.0
//! `rtspannounce`: publishes RTP streams to an RTSP server with ANNOUNCE / SETUP / RECORD.
#![allow(clippy::non_send_fields_in_send_ty, unused_doc_comments)]

use gst::glib;

mod error;
mod keyframe;
mod net;
mod packetize;
mod rtcp;
mod rtsp;
mod rtspannounce;
mod sdp;
mod srtp;

/// What the fuzz targets (fuzz/) need from the crate's private modules (`cargo fuzz` builds with
/// `--cfg fuzzing`): the crate's only API otherwise is the plugin. Items reached through these
/// stay `pub` in their modules, everything else there is `pub(crate)`.
#[cfg(fuzzing)]
pub mod fuzzing {
    pub use crate::rtsp::auth::{parse_challenges, strongest, Authenticator, Credentials};
    pub use crate::rtsp::handshake::{Handshake, RequestContext, Step};
    pub use crate::rtsp::headers::{Lower, Session, Transport};
    pub use crate::rtsp::message::{Incoming, Limits, Parser, Request, Response};
    pub use crate::rtsp::server_request::{answer, is_token};
    pub use crate::rtsp::url::{ControlStyle, RtspUrl};
    pub use crate::rtspannounce::handle_request::{
        answer_response, is_gst_name, request_fields, Names,
    };
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    rtspannounce::register(plugin)
}

gst::plugin_define!(
    rtspannounce,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);

/// The debug category of the element and its connection code: `GST_DEBUG=rtspannounce:5`
/// shows every request and response (credentials masked).
pub(crate) static CAT: std::sync::LazyLock<gst::DebugCategory> = std::sync::LazyLock::new(|| {
    gst::DebugCategory::new(
        "rtspannounce",
        gst::DebugColorFlags::empty(),
        Some("RTSP ANNOUNCE/RECORD sink"),
    )
});
