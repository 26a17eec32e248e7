use gst::glib;
use gst::prelude::*;

mod backoff;
mod builtin;
mod connection;
pub(crate) mod handle_request;
mod hooks;
mod imp;
mod pad;
mod payloader;
mod reorder;
mod sender;
mod session;
mod settings;
mod stats;

// `pub` (the module is private): imp.rs's subclass struct is `pub` and names this type as its
// `ObjectSubclass::Type`, which may not be less visible than it.
glib::wrapper! {
    pub struct RtspAnnounce(ObjectSubclass<imp::RtspAnnounce>) @extends gst::Bin, gst::Element, gst::Object, @implements gst::URIHandler, gst::ChildProxy;
}

pub(crate) fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // The request pads' class: documented with the element (its `payloader` property).
    pad::RtspAnnouncePad::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "rtspannounce",
        // MARGINAL: gst_element_make_from_uri() only considers ranked elements.
        gst::Rank::MARGINAL,
        RtspAnnounce::static_type(),
    )
}
