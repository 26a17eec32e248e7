//! `srtpenc` and `srtpdec` used as functions: each element stands alone (no bin, no bus, in
//! PLAYING), fed by a source pad of ours and drained by a sink pad of ours whose chain function
//! keeps the buffer, so a push returns with the packet protected (or unprotected) on the same
//! thread. That keeps the session's framing, counters and keyframe logic on clear RTP, lets
//! our own sender reports go through the same SRTCP context as the media's, and runs no
//! application code: nothing outside the element can reach these elements or their signals.

use super::{RemoteKey, TrackKey};
use gst::prelude::*;
use std::sync::{Arc, Mutex};

/// One direction through an element: our source pad into it, its output caught by our sink.
struct Lane {
    input: gst::Pad,
    _output: gst::Pad,
    caught: Arc<Mutex<Option<gst::Buffer>>>,
    /// One packet at a time through the lane: `caught` is one slot.
    busy: Mutex<()>,
}

impl Lane {
    fn new(
        element: &gst::Element,
        sink: &gst::Pad,
        src: &gst::Pad,
        caps: Option<gst::Caps>,
    ) -> Result<Lane, String> {
        let caught = Arc::new(Mutex::new(None));
        let slot = caught.clone();
        let output = gst::Pad::builder(gst::PadDirection::Sink)
            .chain_function(move |_, _, buffer| {
                *slot.lock().unwrap() = Some(buffer);
                Ok(gst::FlowSuccess::Ok)
            })
            // Whatever the element outputs is taken.
            .query_function(|_, _, query| match query.view_mut() {
                gst::QueryViewMut::AcceptCaps(q) => {
                    q.set_result(true);
                    true
                }
                gst::QueryViewMut::Caps(q) => {
                    q.set_result(&gst::Caps::new_any());
                    true
                }
                _ => false,
            })
            .event_function(|_, _, _| true)
            .build();
        let input = gst::Pad::builder(gst::PadDirection::Src).build();
        input
            .link(sink)
            .map_err(|e| format!("cannot link into {}: {e:?}", element.name()))?;
        src.link(&output)
            .map_err(|e| format!("cannot link out of {}: {e:?}", element.name()))?;
        output
            .set_active(true)
            .and_then(|_| input.set_active(true))
            .map_err(|_| "cannot activate the SRTP pads".to_string())?;
        let mut events = vec![gst::event::StreamStart::new("rtspannounce-srtp")];
        events.extend(caps.map(|c| gst::event::Caps::new(&c)));
        events.push(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()));
        for ev in events {
            if !input.push_event(ev) {
                return Err(format!("{} refused the stream's events", element.name()));
            }
        }
        Ok(Lane {
            input,
            _output: output,
            caught,
            busy: Mutex::new(()),
        })
    }

    /// The packet after the element: None when it dropped it (a failed check).
    fn run(&self, buffer: gst::Buffer) -> Result<Option<gst::Buffer>, gst::FlowError> {
        let _one = self.busy.lock().unwrap();
        self.caught.lock().unwrap().take();
        self.input.push(buffer)?;
        Ok(self.caught.lock().unwrap().take())
    }
}

fn start(element: &gst::Element) -> Result<(), String> {
    element
        .set_state(gst::State::Playing)
        .map(|_| ())
        .map_err(|_| format!("{} did not start", element.name()))
}

/// A track's SRTP sender: its RTP and our RTCP for it, under one master key.
pub(crate) struct Protector {
    element: gst::Element,
    rtp: Lane,
    rtcp: Lane,
}

impl std::fmt::Debug for Protector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Protector")
    }
}

impl Protector {
    pub(crate) fn new(track: &TrackKey) -> Result<Protector, String> {
        let element = gst::ElementFactory::make("srtpenc")
            .property("key", track.key.to_buffer())
            .property("random-key", false)
            .property_from_str("rtp-cipher", track.suite.cipher())
            .property_from_str("rtp-auth", track.suite.auth())
            .property_from_str("rtcp-cipher", track.suite.cipher())
            .property_from_str("rtcp-auth", track.suite.auth())
            // Packets re-sent after a reconnect keep their numbers.
            .property("allow-repeat-tx", true)
            .build()
            .map_err(|_| {
                "the srtpenc element is missing (install gst-plugins-bad with libsrtp2)".to_string()
            })?;
        let pads = |name: &str| -> Result<(gst::Pad, gst::Pad), String> {
            let sink = element
                .request_pad_simple(&format!("{name}_sink_0"))
                .ok_or_else(|| format!("srtpenc has no {name} pad"))?;
            let src = element
                .static_pad(&format!("{name}_src_0"))
                .ok_or_else(|| format!("srtpenc made no {name} output"))?;
            Ok((sink, src))
        };
        let (rtp_sink, rtp_src) = pads("rtp")?;
        let (rtcp_sink, rtcp_src) = pads("rtcp")?;
        start(&element)?;
        // srtpenc wants caps before packets. It copies the key into its output caps, which
        // srtpenc and GStreamer's core log at DEBUG/INFO level: see docs/RECEIVERS.md (SRTP).
        let rtp = Lane::new(
            &element,
            &rtp_sink,
            &rtp_src,
            Some(gst::Caps::new_empty_simple("application/x-rtp")),
        )?;
        let rtcp = Lane::new(
            &element,
            &rtcp_sink,
            &rtcp_src,
            Some(gst::Caps::new_empty_simple("application/x-rtcp")),
        )?;
        Ok(Protector { element, rtp, rtcp })
    }

    /// The SRTP packet for an RTP packet.
    pub(crate) fn protect_rtp(&self, packet: gst::Buffer) -> Result<gst::Buffer, String> {
        match self.rtp.run(packet) {
            Ok(Some(b)) => Ok(b),
            Ok(None) => Err("srtpenc dropped the packet".into()),
            Err(e) => Err(format!("srtpenc failed to protect the packet: {e:?}")),
        }
    }

    /// The SRTCP packet for an RTCP compound.
    pub(crate) fn protect_rtcp(&self, compound: &[u8]) -> Result<Vec<u8>, String> {
        let out = match self.rtcp.run(gst::Buffer::from_slice(compound.to_vec())) {
            Ok(Some(b)) => b,
            Ok(None) => return Err("srtpenc dropped the report".into()),
            Err(e) => return Err(format!("srtpenc failed to protect the report: {e:?}")),
        };
        let map = out
            .map_readable()
            .map_err(|_| "cannot read the SRTCP packet".to_string())?;
        Ok(map.to_vec())
    }
}

impl Drop for Protector {
    fn drop(&mut self) {
        let _ = self.element.set_state(gst::State::Null);
    }
}

/// Reads the SRTCP the server sends about one track, with the key its KeyMgmt answer gave.
pub(crate) struct Unprotector {
    element: gst::Element,
    rtcp: Lane,
}

impl std::fmt::Debug for Unprotector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unprotector")
    }
}

impl Unprotector {
    pub(crate) fn new(remote: &RemoteKey) -> Result<Unprotector, String> {
        let element = gst::ElementFactory::make("srtpdec").build().map_err(|_| {
            "the srtpdec element is missing (install gst-plugins-bad with libsrtp2)".to_string()
        })?;
        // The server's SSRC is learnt from its packets: the one key serves whichever it uses.
        let caps = gst::Caps::builder("application/x-srtcp")
            .field("srtp-key", remote.key.to_buffer())
            .field("srtp-cipher", remote.suite.cipher())
            .field("srtp-auth", remote.suite.auth())
            .field("srtcp-cipher", remote.suite.cipher())
            .field("srtcp-auth", remote.suite.auth())
            .build();
        element.connect("request-key", false, move |args| {
            let ssrc = args[1].get::<u32>().unwrap_or(0);
            let mut c = caps.clone();
            if let Some(s) = c.make_mut().structure_mut(0) {
                s.set("ssrc", ssrc);
                s.set("roc", 0u32);
                // Present but empty (no MKI): srtpdec asks for it, and GStreamer logs the whole
                // structure, key included, when a field it asks for is missing.
                s.set("mki", None::<gst::Buffer>);
            }
            Some(c.to_value())
        });
        let sink = element
            .static_pad("rtcp_sink")
            .ok_or("srtpdec has no rtcp_sink pad")?;
        let src = element
            .static_pad("rtcp_src")
            .ok_or("srtpdec has no rtcp_src pad")?;
        start(&element)?;
        let rtcp = Lane::new(
            &element,
            &sink,
            &src,
            Some(gst::Caps::new_empty_simple("application/x-srtcp")),
        )?;
        Ok(Unprotector { element, rtcp })
    }

    /// The clear RTCP compound inside an SRTCP packet; Err when it does not authenticate or
    /// decrypt with the key (srtpdec drops such packets).
    pub(crate) fn unprotect_rtcp(&self, packet: &[u8]) -> Result<Vec<u8>, String> {
        match self.rtcp.run(gst::Buffer::from_slice(packet.to_vec())) {
            Ok(Some(b)) => b
                .map_readable()
                .map(|m| m.to_vec())
                .map_err(|_| "cannot read the RTCP packet".to_string()),
            Ok(None) | Err(_) => Err("the server's SRTCP did not authenticate with the key \
                                      its KeyMgmt answer gave"
                .into()),
        }
    }
}

impl Drop for Unprotector {
    fn drop(&mut self) {
        let _ = self.element.set_state(gst::State::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MasterKey, Suite};
    use super::*;

    fn rtp(seq: u16) -> gst::Buffer {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1000u32.to_be_bytes());
        p.extend_from_slice(&0xabcd_0001u32.to_be_bytes());
        p.extend_from_slice(b"payload bytes");
        gst::Buffer::from_mut_slice(p)
    }

    fn receiver_report(ssrc: u32, about: u32) -> Vec<u8> {
        let mut p = vec![0x81, 201, 0, 7];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&about.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 3]); // fraction 0, cumulative 3
        p.extend_from_slice(&[0; 16]);
        p
    }

    #[test]
    fn rtp_is_encrypted_and_tagged() {
        gst::init().unwrap();
        let key = TrackKey::generate(Suite::Aes128Sha1_80, 0xabcd_0001);
        let p = Protector::new(&key).unwrap();
        let clear = rtp(1);
        let out = p.protect_rtp(clear.copy()).unwrap();
        let (a, b) = (clear.map_readable().unwrap(), out.map_readable().unwrap());
        assert_eq!(b.len(), a.len() + 10, "an 80-bit tag");
        assert_eq!(a[..12], b[..12], "the header stays clear");
        assert_ne!(a[12..], b[12..a.len()], "the payload is encrypted");
    }

    #[test]
    fn srtcp_reads_back_only_with_the_right_key() {
        gst::init().unwrap();
        // As the server would: its own key for its reports about our SSRC.
        let server = TrackKey::generate(Suite::Aes128Sha1_32, 0x5e5e_5e5e);
        let enc = Protector::new(&server).unwrap();
        let rr = receiver_report(0x5e5e_5e5e, 0xabcd_0001);
        let srtcp = enc.protect_rtcp(&rr).unwrap();
        assert_ne!(srtcp[8..rr.len()], rr[8..], "the report is encrypted");
        let remote = RemoteKey {
            suite: server.suite,
            key: server.key.clone(),
            ssrcs: vec![],
        };
        let dec = Unprotector::new(&remote).unwrap();
        assert_eq!(dec.unprotect_rtcp(&srtcp).unwrap(), rr);
        let wrong = RemoteKey {
            suite: server.suite,
            key: MasterKey::generate(server.suite),
            ssrcs: vec![],
        };
        let dec = Unprotector::new(&wrong).unwrap();
        let srtcp2 = enc.protect_rtcp(&rr).unwrap();
        assert!(dec.unprotect_rtcp(&srtcp2).is_err());
    }
}
