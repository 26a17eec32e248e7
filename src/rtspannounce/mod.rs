use gst::glib;
use gst::prelude::*;

mod imp;
mod sender;
mod session;

glib::wrapper! {
    pub struct RtspAnnounce(ObjectSubclass<imp::RtspAnnounce>) @extends gst::Bin, gst::Element, gst::Object, @implements gst::URIHandler, gst::ChildProxy;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "rtspannounce",
        // MARGINAL: gst_element_make_from_uri() only considers ranked elements.
        gst::Rank::MARGINAL,
        RtspAnnounce::static_type(),
    )
}
