// SPDX-License-Identifier: MPL-2.0
//! `rtspannounce`: publishes RTP streams to an RTSP server with ANNOUNCE / SETUP / RECORD.
#![allow(clippy::non_send_fields_in_send_ty, unused_doc_comments)]

use gst::glib;

mod error;
pub mod keyframe;
pub mod net;
pub mod rtcp;
pub mod rtsp;
mod rtspannounce;
pub mod sdp;

/// What the fuzz targets need from the element's private modules (`cargo fuzz` builds with
/// `--cfg fuzzing`); not part of the crate's API otherwise.
#[cfg(fuzzing)]
pub mod fuzzing {
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
