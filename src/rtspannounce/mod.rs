use gst::glib;
use gst::prelude::*;

mod imp;
mod sender;
mod session;

glib::wrapper! {
    pub struct RtspAnnounce(ObjectSubclass<imp::RtspAnnounce>) @extends gst::Bin, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "rtspannounce",
        gst::Rank::NONE,
        RtspAnnounce::static_type(),
    )
}
