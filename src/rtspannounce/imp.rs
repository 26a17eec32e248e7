use gst::glib;
use gst::subclass::prelude::*;

#[derive(Default)]
pub struct RtspAnnounce {}

#[glib::object_subclass]
impl ObjectSubclass for RtspAnnounce {
    const NAME: &'static str = "GstRtspAnnounce";
    type Type = super::RtspAnnounce;
    type ParentType = gst::Bin;
}
impl ObjectImpl for RtspAnnounce {}
impl GstObjectImpl for RtspAnnounce {}
impl ElementImpl for RtspAnnounce {}
impl BinImpl for RtspAnnounce {}
