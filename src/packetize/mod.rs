//! Placeholder for the built-in RTP packetizers (H.264, H.265, AAC): the API the session is
//! written against. `for_caps` answers None until they land, so GStreamer's payloaders are used.
#![allow(dead_code)]

pub(crate) struct RtpConfig {
    pub pt: u8,
    pub ssrc: u32,
    pub seq: u16,
    pub ts_offset: u32,
    pub mtu: u32,
}

pub(crate) struct Span {
    pub start: usize,
    pub len: usize,
    pub marker: bool,
    pub keyframe_start: bool,
}

pub(crate) struct Packets {
    pub data: Vec<u8>,
    pub spans: Vec<Span>,
    prefix: usize,
}

impl Packets {
    pub fn new(prefix: usize) -> Self {
        Packets {
            data: Vec::new(),
            spans: Vec::new(),
            prefix,
        }
    }
    pub fn clear(&mut self) {
        self.data.clear();
        self.spans.clear();
    }
    pub fn packet(&self, i: usize) -> &[u8] {
        let s = &self.spans[i];
        &self.data[s.start..s.start + s.len]
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PacketizeError {
    #[error("unsupported")]
    Unsupported,
}

pub(crate) enum Packetizer {}

impl Packetizer {
    pub fn for_caps(_caps: &gst::CapsRef, _cfg: RtpConfig) -> Option<Packetizer> {
        None
    }
    pub fn rtp_caps(&self) -> gst::Caps {
        match *self {}
    }
    pub fn push(
        &mut self,
        _au: &[u8],
        _running_time_ns: Option<u64>,
        _delta: bool,
        _out: &mut Packets,
    ) -> Result<(), PacketizeError> {
        match *self {}
    }
    pub fn next_seq(&self) -> u16 {
        match *self {}
    }
    pub fn rtp_timestamp(&self, _running_time_ns: u64) -> u32 {
        match *self {}
    }
}
