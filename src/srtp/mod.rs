//! SRTP for a pusher (RTP/SAVP): the suites, a track's master key, and the MIKEY messages
//! (RFC 3830) that carry keys in the SDP's `a=key-mgmt` and the SETUP's `KeyMgmt` header
//! (RFC 4567). Encryption itself is ours, in `cipher` (RFC 3711 with RustCrypto's AES and
//! HMAC-SHA1, checked against libsrtp): GStreamer's srtpenc logs its key with its caps.
//!
//! Keys never reach a log line: `MasterKey` prints no bytes in `Debug`, MIKEY messages are
//! logged as `<mikey>`, and the request log masks `KeyMgmt` (see `rtsp::message`).

mod cipher;
mod mikey;

pub(crate) use cipher::{Protector, Unprotector};
pub(crate) use mikey::{mikey_for, parse_keymgmt, RemoteKey};

use gst::glib;
use rand::RngCore;

/// The SRTP crypto suites we protect with and GStreamer's MIKEY code describes (AES-CM with
/// HMAC-SHA1; MIKEY in GStreamer 1.22 describes no AES-GCM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRtspAnnounceSrtpSuite")]
pub enum Suite {
    #[default]
    #[enum_value(name = "AES_CM_128_HMAC_SHA1_80", nick = "aes-128-hmac-sha1-80")]
    Aes128Sha1_80 = 0,
    #[enum_value(name = "AES_CM_128_HMAC_SHA1_32", nick = "aes-128-hmac-sha1-32")]
    Aes128Sha1_32 = 1,
    #[enum_value(name = "AES_256_CM_HMAC_SHA1_80", nick = "aes-256-hmac-sha1-80")]
    Aes256Sha1_80 = 2,
    #[enum_value(name = "AES_256_CM_HMAC_SHA1_32", nick = "aes-256-hmac-sha1-32")]
    Aes256Sha1_32 = 3,
}

/// What the session offers: this suite, and whether plain RTP/AVP may follow a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub suite: Suite,
    pub allow_plain: bool,
}

/// Salt length of every AES-CM suite (RFC 3711 4.1).
const SALT_LEN: usize = 14;

impl Suite {
    /// The cipher's nick in GStreamer's SRTP caps (MIKEY's `to_caps`, srtpdec).
    pub(crate) fn cipher(self) -> &'static str {
        match self {
            Suite::Aes128Sha1_80 | Suite::Aes128Sha1_32 => "aes-128-icm",
            Suite::Aes256Sha1_80 | Suite::Aes256Sha1_32 => "aes-256-icm",
        }
    }

    pub(crate) fn auth(self) -> &'static str {
        match self {
            Suite::Aes128Sha1_80 | Suite::Aes256Sha1_80 => "hmac-sha1-80",
            Suite::Aes128Sha1_32 | Suite::Aes256Sha1_32 => "hmac-sha1-32",
        }
    }

    /// Master key and salt, as one buffer (30 bytes for AES-128, 46 for AES-256).
    pub(crate) fn master_len(self) -> usize {
        match self {
            Suite::Aes128Sha1_80 | Suite::Aes128Sha1_32 => 16 + SALT_LEN,
            Suite::Aes256Sha1_80 | Suite::Aes256Sha1_32 => 32 + SALT_LEN,
        }
    }

    /// The suite named by SRTP caps fields (`srtp-cipher`, `srtp-auth`), as MIKEY gives them.
    pub(crate) fn from_names(cipher: &str, auth: &str) -> Option<Suite> {
        [
            Suite::Aes128Sha1_80,
            Suite::Aes128Sha1_32,
            Suite::Aes256Sha1_80,
            Suite::Aes256Sha1_32,
        ]
        .into_iter()
        .find(|s| s.cipher() == cipher && s.auth() == auth)
    }
}

/// A master key and salt. Its bytes are never printed, and are zeroed when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct MasterKey(Vec<u8>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(<{} bytes>)", self.0.len())
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        // Volatile writes: the compiler may not skip them as dead stores.
        for b in self.0.iter_mut() {
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl MasterKey {
    /// A fresh key from the operating system's CSPRNG.
    pub(crate) fn generate(suite: Suite) -> MasterKey {
        let mut k = vec![0u8; suite.master_len()];
        rand::rngs::OsRng.fill_bytes(&mut k);
        MasterKey(k)
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> MasterKey {
        MasterKey(bytes.to_vec())
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn to_buffer(&self) -> gst::Buffer {
        gst::Buffer::from_slice(self.0.clone())
    }
}

/// What one track sends with: its suite, its key, and its SSRC (the MIKEY crypto session
/// names it, and the server looks the key up by it).
#[derive(Debug, Clone)]
pub(crate) struct TrackKey {
    pub suite: Suite,
    pub key: MasterKey,
    pub ssrc: u32,
}

impl TrackKey {
    pub(crate) fn generate(suite: Suite, ssrc: u32) -> TrackKey {
        TrackKey {
            suite,
            key: MasterKey::generate(suite),
            ssrc,
        }
    }
}

/// The `KeyMgmt` request header for a SETUP of `uri` (RFC 4567 section 3.2).
pub(crate) fn keymgmt_header(uri: &str, mikey_base64: &str) -> String {
    format!("prot=mikey; uri=\"{uri}\"; data=\"{mikey_base64}\"")
}

/// The `data` of a `mikey` key-mgmt spec in a KeyMgmt header, if any; specs for other protocols
/// are skipped. Err names what is wrong.
pub(crate) fn keymgmt_data(header: &str) -> Result<&str, String> {
    let mut saw_mikey = false;
    for spec in header.split(',') {
        let mut prot = None;
        let mut data = None;
        for part in spec.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("prot=") {
                prot = Some(v.trim().trim_matches('"'));
            } else if let Some(v) = part.strip_prefix("data=") {
                data = Some(v.trim().trim_matches('"'));
            }
        }
        if prot.is_some_and(|p| p.eq_ignore_ascii_case("mikey")) {
            saw_mikey = true;
            if let Some(d) = data.filter(|d| !d.is_empty()) {
                return Ok(d);
            }
        }
    }
    Err(if saw_mikey {
        "its mikey spec has no data".into()
    } else {
        "it names no mikey key management".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_have_the_rfc_3711_lengths() {
        assert_eq!(Suite::default(), Suite::Aes128Sha1_80);
        assert_eq!(Suite::Aes128Sha1_80.master_len(), 30);
        assert_eq!(Suite::Aes256Sha1_32.master_len(), 46);
        for s in [
            Suite::Aes128Sha1_80,
            Suite::Aes128Sha1_32,
            Suite::Aes256Sha1_80,
            Suite::Aes256Sha1_32,
        ] {
            assert_eq!(Suite::from_names(s.cipher(), s.auth()), Some(s));
        }
        assert_eq!(Suite::from_names("aes-128-gcm", "null"), None);
    }

    #[test]
    fn keys_are_random_and_never_printed() {
        let a = MasterKey::generate(Suite::Aes128Sha1_80);
        let b = MasterKey::generate(Suite::Aes128Sha1_80);
        assert_eq!(a.bytes().len(), 30);
        assert_ne!(a, b, "two keys from the CSPRNG are equal");
        let shown = format!("{:?}", TrackKey::generate(Suite::Aes256Sha1_80, 7));
        assert!(shown.contains("<46 bytes>"), "{shown}");
        assert!(!shown.contains(&format!("{:?}", &a.bytes()[..4])));
    }

    #[test]
    fn keymgmt_headers_round_trip() {
        let h = keymgmt_header("rtsp://h/p/streamid=0", "AQID");
        assert_eq!(
            h,
            "prot=mikey; uri=\"rtsp://h/p/streamid=0\"; data=\"AQID\""
        );
        assert_eq!(keymgmt_data(&h), Ok("AQID"));
        assert_eq!(
            keymgmt_data("prot=other; data=\"x\", prot=mikey;data=QUJD"),
            Ok("QUJD")
        );
        assert!(keymgmt_data("prot=mikey; uri=\"x\"")
            .unwrap_err()
            .contains("no data"));
        assert!(keymgmt_data("garbage").unwrap_err().contains("no mikey"));
    }
}
