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

/// Reads `n` bytes at `*at`, moving on; Err names `what` ran past the end.
fn take<'a>(m: &'a [u8], at: &mut usize, n: usize, what: &str) -> Result<&'a [u8], String> {
    let end = at
        .checked_add(n)
        .filter(|e| *e <= m.len())
        .ok_or_else(|| format!("its MIKEY message is cut short in {what}"))?;
    let b = &m[*at..end];
    *at = end;
    Ok(b)
}

fn len16(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}

/// Checks the framing of a MIKEY message (RFC 3830 section 6) before GStreamer parses it:
/// GStreamer 1.22's parser loops for ever on a payload type it does not know, so only the
/// payloads of a PSK-init message are let through (T, RAND, SP, KEMAC with key data).
fn check_framing(m: &[u8]) -> Result<(), String> {
    let mut at = 0;
    let head = take(m, &mut at, 10, "its header")?;
    if head[0] != 1 {
        return Err(format!("its MIKEY version is {}, not 1", head[0]));
    }
    if head[9] != 0 {
        return Err("its MIKEY message maps no SRTP crypto session".into());
    }
    take(m, &mut at, 9 * head[8] as usize, "its crypto session map")?;
    let mut next = head[2];
    while next != 0 {
        let this = next;
        next = take(m, &mut at, 1, "a payload")?[0];
        match this {
            // T: a type, then an NTP (8 bytes) or counter (4) timestamp.
            5 => {
                let n = match take(m, &mut at, 1, "its timestamp")?[0] {
                    0 | 1 => 8,
                    2 => 4,
                    t => return Err(format!("its MIKEY timestamp type {t} is unknown")),
                };
                take(m, &mut at, n, "its timestamp")?;
            }
            // RAND
            11 => {
                let n = take(m, &mut at, 1, "its RAND")?[0] as usize;
                take(m, &mut at, n, "its RAND")?;
            }
            // SP: policy number, protocol, then type-length-value parameters.
            10 => {
                let sp = take(m, &mut at, 4, "its security policy")?;
                let params = take(m, &mut at, len16(&sp[2..]), "its security policy")?;
                let mut p = 0;
                while p < params.len() {
                    let tl = take(params, &mut p, 2, "a policy parameter")?;
                    take(params, &mut p, tl[1] as usize, "a policy parameter")?;
                }
            }
            // KEMAC: encryption algorithm, key data sub-payloads, MAC algorithm and MAC.
            1 => {
                let k = take(m, &mut at, 3, "its KEMAC")?;
                let data = take(m, &mut at, len16(&k[1..]), "its KEMAC")?;
                if k[0] == 0 {
                    check_key_data(data)?;
                }
                let mac = match take(m, &mut at, 1, "its KEMAC")?[0] {
                    0 => 0,
                    1 => 20,
                    a => return Err(format!("its MIKEY MAC algorithm {a} is unknown")),
                };
                take(m, &mut at, mac, "its KEMAC")?;
            }
            t => {
                return Err(format!(
                    "its MIKEY message has a payload of type {t}, not supported"
                ))
            }
        }
    }
    Ok(())
}

/// The key data sub-payloads of an unencrypted KEMAC.
fn check_key_data(d: &[u8]) -> Result<(), String> {
    let mut at = 0;
    let mut next = 20;
    while at < d.len() || next != 0 {
        if next != 20 {
            return Err(format!(
                "its KEMAC holds a sub-payload of type {next}, not key data"
            ));
        }
        let h = take(d, &mut at, 4, "its key data")?;
        next = h[0];
        take(d, &mut at, len16(&h[2..]), "its key data")?;
        // Types 1 and 3 carry a salt.
        if matches!(h[1] >> 4, 1 | 3) {
            let n = len16(take(d, &mut at, 2, "its key salt")?);
            take(d, &mut at, n, "its key salt")?;
        }
        match h[1] & 0x0f {
            0 => {}
            1 => {
                let n = take(d, &mut at, 1, "its key validity")?[0] as usize;
                take(d, &mut at, n, "its key validity")?;
            }
            2 => {
                for _ in 0..2 {
                    let n = take(d, &mut at, 1, "its key validity")?[0] as usize;
                    take(d, &mut at, n, "its key validity")?;
                }
            }
            kv => return Err(format!("its key validity type {kv} is unknown")),
        }
    }
    Ok(())
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
    check_framing(&bytes)?;
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
    fn mutated_answers_never_upset_gstreamer() {
        use base64::Engine as _;
        use rand::{Rng, SeedableRng};
        gst::init().unwrap();
        // Whatever a server sends goes to GStreamer's MIKEY parser: it must answer, not warn
        // critically (the test binary aborts on a CRITICAL under G_DEBUG=fatal-criticals).
        glib::log_set_always_fatal(glib::LogLevels::LEVEL_CRITICAL | glib::LogLevels::LEVEL_ERROR);
        let good = base64::engine::general_purpose::STANDARD
            .decode(mikey_for(&TrackKey::generate(Suite::Aes128Sha1_80, 1)).unwrap())
            .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let mut parsed = 0;
        for round in 0..3000 {
            let mut m = good.clone();
            match round % 3 {
                0 => {
                    let i = rng.gen_range(0..m.len());
                    m[i] = rng.gen();
                }
                1 => m.truncate(rng.gen_range(0..m.len())),
                _ => {
                    for _ in 0..rng.gen_range(1..8) {
                        let i = rng.gen_range(0..m.len());
                        m[i] = rng.gen();
                    }
                }
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(&m);
            if parse_keymgmt(&format!("prot=mikey; data=\"{b64}\"")).is_ok() {
                parsed += 1;
            }
        }
        // Changes in the random field or the timestamp still parse.
        assert!(parsed > 0 && parsed < 3000, "{parsed}");
    }

    #[test]
    fn a_bad_answer_says_why() {
        use base64::Engine as _;
        gst::init().unwrap();
        let e = parse_keymgmt("prot=mikey; data=\"%%%\"").unwrap_err();
        assert!(e.contains("not base64"), "{e}");
        let e = parse_keymgmt("prot=mikey; data=\"AQIDBAUG\"").unwrap_err();
        assert!(e.contains("cut short"), "{e}");
        // A payload type GStreamer 1.22's parser would loop on for ever.
        let mut m = base64::engine::general_purpose::STANDARD
            .decode(mikey_for(&TrackKey::generate(Suite::Aes128Sha1_80, 1)).unwrap())
            .unwrap();
        m[2] = 0xb0;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&m);
        let e = parse_keymgmt(&format!("prot=mikey; data=\"{b64}\"")).unwrap_err();
        assert!(e.contains("payload of type 176"), "{e}");
        let e = parse_keymgmt("prot=sdes").unwrap_err();
        assert!(e.contains("no mikey"), "{e}");
    }
}
