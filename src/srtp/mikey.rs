//! MIKEY messages through GStreamer's C API (gstreamer-sdp 0.25 binds none of it): an
//! unencrypted PSK-init message per track (what gst-rtsp-server, rtspclientsink and MediaMTX
//! exchange; the RTSP connection is what protects it, so use `rtsps://` where that matters),
//! and the server's answer read back into a key.

use super::{MasterKey, Suite, TrackKey};
use base64::Engine as _;
use glib::translate::{from_glib_full, ToGlibPtr};
use gst::glib;
use gst_sdp_sys as ffi;

/// Owns a `GstMIKEYMessage` (a mini object).
struct Message(*mut ffi::GstMIKEYMessage);

impl Drop for Message {
    fn drop(&mut self) {
        unsafe { gst::ffi::gst_mini_object_unref(self.0 as *mut gst::ffi::GstMiniObject) }
    }
}

/// The base64 MIKEY message for `track`: its policy (cipher, auth, both encrypted and
/// authenticated), the key in a KEMAC payload, and one crypto session naming its SSRC with a
/// rollover counter of 0.
pub(crate) fn mikey_for(track: &TrackKey) -> Result<String, String> {
    let caps = gst::Caps::builder("application/x-srtp")
        .field("srtp-key", track.key.to_buffer())
        .field("srtp-cipher", track.suite.cipher())
        .field("srtp-auth", track.suite.auth())
        .field("srtcp-cipher", track.suite.cipher())
        .field("srtcp-auth", track.suite.auth())
        .build();
    unsafe {
        let msg = ffi::gst_mikey_message_new_from_caps(caps.to_glib_none().0);
        if msg.is_null() {
            return Err(format!(
                "GStreamer cannot describe {:?} in MIKEY",
                track.suite
            ));
        }
        let msg = Message(msg);
        // new_from_caps leaves the crypto session map empty; servers need the SSRC there.
        if ffi::gst_mikey_message_add_cs_srtp(msg.0, 0, track.ssrc, 0) == glib::ffi::GFALSE {
            return Err("cannot add the crypto session to the MIKEY message".into());
        }
        let text = ffi::gst_mikey_message_base64_encode(msg.0);
        if text.is_null() {
            return Err("cannot encode the MIKEY message".into());
        }
        let s: glib::GString = from_glib_full(text);
        Ok(s.to_string())
    }
}

/// A key the server gave in its KeyMgmt answer: for the SRTCP it sends us.
#[derive(Debug, Clone)]
pub(crate) struct RemoteKey {
    pub suite: Suite,
    pub key: MasterKey,
    /// The SSRCs its crypto sessions name (the key serves any SSRC on the track's channel).
    pub ssrcs: Vec<u32>,
}

/// Reads a `KeyMgmt` header value: base64, a MIKEY message GStreamer can parse, an SRTP
/// policy we can use and a key of the suite's length. Err says which step failed.
pub(crate) fn parse_keymgmt(header: &str) -> Result<RemoteKey, String> {
    let data = super::keymgmt_data(header)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .map_err(|e| format!("its MIKEY data is not base64 ({e})"))?;
    unsafe {
        let mut err = std::ptr::null_mut();
        let msg = ffi::gst_mikey_message_new_from_data(
            bytes.as_ptr() as glib::ffi::gconstpointer,
            bytes.len(),
            std::ptr::null_mut(),
            &mut err,
        );
        if !err.is_null() {
            let e: glib::Error = from_glib_full(err);
            if !msg.is_null() {
                drop(Message(msg));
            }
            return Err(format!("its MIKEY message does not parse ({e})"));
        }
        if msg.is_null() {
            return Err("its MIKEY message does not parse".into());
        }
        let msg = Message(msg);
        if (*msg.0).map_type != ffi::GST_MIKEY_MAP_TYPE_SRTP {
            return Err("its MIKEY message maps no SRTP crypto session".into());
        }
        let n = ffi::gst_mikey_message_get_n_cs(msg.0);
        let ssrcs = (0..n)
            .filter_map(|i| ffi::gst_mikey_message_get_cs_srtp(msg.0, i).as_ref())
            .map(|m| m.ssrc)
            .collect();
        let caps = gst::Caps::new_empty_simple("application/x-srtp");
        if ffi::gst_mikey_message_to_caps(msg.0, caps.to_glib_none().0) == glib::ffi::GFALSE {
            return Err(
                "its MIKEY message carries no unencrypted key (only PSK-init with a \
                        plain KEMAC is supported)"
                    .into(),
            );
        }
        let s = caps.structure(0).ok_or("no caps structure")?;
        let key = s
            .get::<gst::Buffer>("srtp-key")
            .map_err(|_| "its MIKEY message carries no key")?;
        let cipher = s.get::<&str>("srtcp-cipher").unwrap_or("");
        let auth = s.get::<&str>("srtcp-auth").unwrap_or("");
        let suite = Suite::from_names(cipher, auth)
            .ok_or_else(|| format!("its SRTCP policy ({cipher}, {auth}) is not supported"))?;
        let map = key.map_readable().map_err(|_| "cannot read the key")?;
        if map.len() != suite.master_len() {
            return Err(format!(
                "its key has {} bytes where {suite:?} needs {}",
                map.len(),
                suite.master_len()
            ));
        }
        Ok(RemoteKey {
            suite,
            key: MasterKey::from_bytes(&map),
            ssrcs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_mikey_reads_back_as_the_same_key() {
        gst::init().unwrap();
        for suite in [Suite::Aes128Sha1_80, Suite::Aes256Sha1_32] {
            let track = TrackKey::generate(suite, 0x1234_5678);
            let b64 = mikey_for(&track).unwrap();
            let header = super::super::keymgmt_header("rtsp://h/x/streamid=0", &b64);
            let back = parse_keymgmt(&header).unwrap();
            assert_eq!(back.suite, suite);
            assert_eq!(back.key, track.key);
            assert_eq!(back.ssrcs, [0x1234_5678]);
        }
    }

    #[test]
    fn a_bad_answer_says_why() {
        gst::init().unwrap();
        let e = parse_keymgmt("prot=mikey; data=\"%%%\"").unwrap_err();
        assert!(e.contains("not base64"), "{e}");
        let e = parse_keymgmt("prot=mikey; data=\"AQIDBAUG\"").unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
        let e = parse_keymgmt("prot=sdes").unwrap_err();
        assert!(e.contains("no mikey"), "{e}");
    }
}
