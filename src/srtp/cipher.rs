//! SRTP and SRTCP (RFC 3711) for the AES counter-mode suites with HMAC-SHA1, in Rust (the
//! RustCrypto `aes`, `ctr`, `hmac` and `sha1` crates). GStreamer's srtpenc would do the same
//! but copies the master key into its output caps, which GStreamer logs at INFO and DEBUG: keys
//! would reach the logs. Here they never leave these structures. Verified against libsrtp
//! (GStreamer's srtpdec and srtpenc) in the tests below and against gst-rtsp-server in
//! tests/it/srtp.rs.

use super::{RemoteKey, Suite, TrackKey};
use aes::{Aes128, Aes256};
use ctr::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::sync::Mutex;

type HmacSha1 = Hmac<Sha1>;

/// Session keys derived from a master key (RFC 3711 4.3, key derivation rate 0).
struct SessionKeys {
    enc: Vec<u8>,
    auth: Vec<u8>,
    salt: [u8; 14],
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.enc.iter_mut().for_each(|b| *b = 0);
        self.auth.iter_mut().for_each(|b| *b = 0);
        self.salt = [0; 14];
    }
}

/// AES-CM keystream applied to `data`, from the 16-byte IV (the low 16 bits count blocks).
fn aes_cm(key: &[u8], iv: &[u8; 16], data: &mut [u8]) {
    match key.len() {
        16 => ctr::Ctr128BE::<Aes128>::new(key.into(), iv.into()).apply_keystream(data),
        32 => ctr::Ctr128BE::<Aes256>::new(key.into(), iv.into()).apply_keystream(data),
        n => unreachable!("AES-CM key of {n} bytes"),
    }
}

/// The PRF of RFC 3711 4.3.3 for one label: AES-CM over zeros from (label XOR salt) * 2^16.
fn derive(master: &[u8], salt: &[u8], label: u8, len: usize) -> Vec<u8> {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    // key_id = label || index DIV kdr (0), 56 bits, right-aligned in the 112-bit salt.
    iv[7] ^= label;
    let mut out = vec![0u8; len];
    aes_cm(master, &iv, &mut out);
    out
}

/// The master key and salt, if of the length `suite` takes (else why not).
fn checked<'a>(suite: Suite, key: &'a super::MasterKey, whose: &str) -> Result<&'a [u8], String> {
    let bytes = key.bytes();
    if bytes.len() != suite.master_len() {
        return Err(format!(
            "{whose} master key has {} bytes, its suite takes {}",
            bytes.len(),
            suite.master_len()
        ));
    }
    Ok(bytes)
}

impl SessionKeys {
    /// Labels 0/1/2 for SRTP, 3/4/5 for SRTCP.
    fn new(suite: Suite, master_and_salt: &[u8], rtcp: bool) -> SessionKeys {
        let key_len = suite.master_len() - 14;
        let (master, salt) = master_and_salt.split_at(key_len);
        let base = if rtcp { 3 } else { 0 };
        let mut s = [0u8; 14];
        s.copy_from_slice(&derive(master, salt, base + 2, 14));
        SessionKeys {
            enc: derive(master, salt, base, key_len),
            auth: derive(master, salt, base + 1, 20),
            salt: s,
        }
    }

    /// The IV for a packet: salt * 2^16 XOR SSRC * 2^64 XOR index * 2^16.
    fn iv(&self, ssrc: u32, index: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
            iv[4 + i] ^= b;
        }
        for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
            iv[8 + i] ^= b;
        }
        iv
    }

    fn tag(&self, parts: &[&[u8]], len: usize) -> Vec<u8> {
        let mut mac = HmacSha1::new_from_slice(&self.auth).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes()[..len].to_vec()
    }

    fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = HmacSha1::new_from_slice(&self.auth).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        mac.verify_truncated_left(tag).is_ok()
    }
}

/// Tag length in bytes: 10 for the _80 suites, 4 for _32 (for SRTCP too, as GStreamer's
/// MIKEY code configures both ends).
fn tag_len(suite: Suite) -> usize {
    match suite {
        Suite::Aes128Sha1_80 | Suite::Aes256Sha1_80 => 10,
        Suite::Aes128Sha1_32 | Suite::Aes256Sha1_32 => 4,
    }
}

/// Where an RTP packet's payload starts (after CSRCs and a header extension), if well formed.
fn payload_offset(p: &[u8]) -> Option<usize> {
    if p.len() < 12 || p[0] >> 6 != 2 {
        return None;
    }
    let mut at = 12 + 4 * (p[0] & 0x0f) as usize;
    if p[0] & 0x10 != 0 {
        let ext = p.get(at + 2..at + 4)?;
        at += 4 + 4 * u16::from_be_bytes([ext[0], ext[1]]) as usize;
    }
    (at <= p.len()).then_some(at)
}

/// The sender's rollover counter (RFC 3711 3.3.1, appendix A): the index of each packet from
/// its sequence number and the highest one sent.
#[derive(Default)]
struct Rollover {
    /// Highest index sent so far (None: nothing yet).
    highest: Option<u64>,
}

impl Rollover {
    fn index(&mut self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            self.highest = Some(seq as u64);
            return seq as u64;
        };
        let (roc, s_l) = (h >> 16, (h & 0xffff) as i64);
        let s = seq as i64;
        let v = if s_l < 32768 {
            if s - s_l > 32768 {
                roc.wrapping_sub(1)
            } else {
                roc
            }
        } else if s_l - 32768 > s {
            roc + 1
        } else {
            roc
        };
        let i = ((v & 0xffff_ffff) << 16) | seq as u64;
        if i > h {
            self.highest = Some(i);
        }
        i
    }
}

/// A track's SRTP sender: its RTP and our RTCP for it, under one master key.
pub(crate) struct Protector {
    suite: Suite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    state: Mutex<SendState>,
}

#[derive(Default)]
struct SendState {
    rollover: Rollover,
    /// The next SRTCP index (31 bits).
    rtcp_index: u32,
}

impl std::fmt::Debug for Protector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Protector")
    }
}

impl Protector {
    pub(crate) fn new(track: &TrackKey) -> Result<Protector, String> {
        let bytes = checked(track.suite, &track.key, "the track's")?;
        Ok(Protector {
            suite: track.suite,
            rtp: SessionKeys::new(track.suite, bytes, false),
            rtcp: SessionKeys::new(track.suite, bytes, true),
            state: Mutex::default(),
        })
    }

    /// The SRTP packet for an RTP packet: payload encrypted, tag appended.
    pub(crate) fn protect_rtp(&self, packet: gst::Buffer) -> Result<gst::Buffer, String> {
        let map = packet
            .map_readable()
            .map_err(|_| "cannot read the RTP packet".to_string())?;
        let at = payload_offset(&map).ok_or("not an RTP packet")?;
        let seq = u16::from_be_bytes([map[2], map[3]]);
        let ssrc = u32::from_be_bytes([map[8], map[9], map[10], map[11]]);
        let index = self.state.lock().unwrap().rollover.index(seq);
        let tag_len = tag_len(self.suite);
        let mut out = Vec::with_capacity(map.len() + tag_len);
        out.extend_from_slice(&map);
        aes_cm(&self.rtp.enc, &self.rtp.iv(ssrc, index), &mut out[at..]);
        let roc = ((index >> 16) as u32).to_be_bytes();
        let tag = self.rtp.tag(&[&out, &roc], tag_len);
        out.extend_from_slice(&tag);
        let mut b = gst::Buffer::from_mut_slice(out);
        {
            let dst = b.get_mut().expect("a new buffer is writable");
            let _ = packet.copy_into(dst, gst::BufferCopyFlags::TIMESTAMPS, ..);
        }
        Ok(b)
    }

    /// The SRTCP packet for an RTCP compound: encrypted after the first SSRC, E flag and index,
    /// tag.
    pub(crate) fn protect_rtcp(&self, compound: &[u8]) -> Result<Vec<u8>, String> {
        if compound.len() < 8 {
            return Err("an RTCP compound shorter than 8 bytes".into());
        }
        let ssrc = u32::from_be_bytes([compound[4], compound[5], compound[6], compound[7]]);
        let index = {
            let mut st = self.state.lock().unwrap();
            let i = st.rtcp_index;
            st.rtcp_index = (i + 1) & 0x7fff_ffff;
            i
        };
        let mut out = compound.to_vec();
        aes_cm(
            &self.rtcp.enc,
            &self.rtcp.iv(ssrc, index as u64),
            &mut out[8..],
        );
        out.extend_from_slice(&(0x8000_0000 | index).to_be_bytes());
        let tag = self.rtcp.tag(&[&out], tag_len(self.suite));
        out.extend_from_slice(&tag);
        Ok(out)
    }
}

/// Reads the SRTCP the server sends about one track, with the key its KeyMgmt answer gave.
pub(crate) struct Unprotector {
    suite: Suite,
    rtcp: SessionKeys,
}

impl std::fmt::Debug for Unprotector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unprotector")
    }
}

impl Unprotector {
    pub(crate) fn new(remote: &RemoteKey) -> Result<Unprotector, String> {
        let bytes = checked(remote.suite, &remote.key, "the server's")?;
        Ok(Unprotector {
            suite: remote.suite,
            rtcp: SessionKeys::new(remote.suite, bytes, true),
        })
    }

    /// The clear RTCP compound inside an SRTCP packet; Err when it does not authenticate with
    /// the key.
    pub(crate) fn unprotect_rtcp(&self, packet: &[u8]) -> Result<Vec<u8>, String> {
        let refused = || {
            "the server's SRTCP did not authenticate with the key its KeyMgmt answer gave"
                .to_string()
        };
        let tag_len = tag_len(self.suite);
        if packet.len() < 8 + 4 + tag_len {
            return Err(refused());
        }
        let (signed, tag) = packet.split_at(packet.len() - tag_len);
        if !self.rtcp.verify(&[signed], tag) {
            return Err(refused());
        }
        let (body, e_index) = signed.split_at(signed.len() - 4);
        let e_index = u32::from_be_bytes([e_index[0], e_index[1], e_index[2], e_index[3]]);
        let mut out = body.to_vec();
        if e_index & 0x8000_0000 != 0 {
            let ssrc = u32::from_be_bytes([out[4], out[5], out[6], out[7]]);
            let iv = self.rtcp.iv(ssrc, (e_index & 0x7fff_ffff) as u64);
            aes_cm(&self.rtcp.enc, &iv, &mut out[8..]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MasterKey, Suite};
    use super::*;
    use gst::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

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
    fn key_derivation_matches_rfc_3711_appendix_b3() {
        let master = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        assert_eq!(
            derive(&master, &salt, 0, 16),
            hex("C61E7A93744F39EE10734AFE3FF7A087")
        );
        assert_eq!(
            derive(&master, &salt, 2, 14),
            hex("30CBBC08863D8C85D49DB34A9AE1")
        );
        assert_eq!(
            derive(&master, &salt, 1, 20),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    #[test]
    fn the_rollover_counter_follows_wrapping_sequence_numbers() {
        let mut r = Rollover::default();
        assert_eq!(r.index(65534), 65534);
        assert_eq!(r.index(65535), 65535);
        assert_eq!(r.index(0), 1 << 16);
        assert_eq!(r.index(1), (1 << 16) | 1);
        // A late packet from before the wrap keeps the old counter.
        assert_eq!(r.index(65533), 65533);
        assert_eq!(r.index(2), (1 << 16) | 2);
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

    /// srtpdec's RTP side.
    fn through_libsrtp(description: &str, caps: gst::Caps, packets: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        rtcp_pipeline(
            &format!("appsrc name=src format=time ! {description} ! appsink name=out sync=false"),
            caps,
            packets,
        )
    }

    fn srtp_caps(name: &str, suite: Suite, key: &MasterKey, ssrc: u32) -> gst::Caps {
        gst::Caps::builder(name)
            .field("ssrc", ssrc)
            .field("roc", 0u32)
            .field("mki", None::<gst::Buffer>)
            .field("srtp-key", key.to_buffer())
            .field("srtp-cipher", suite.cipher())
            .field("srtp-auth", suite.auth())
            .field("srtcp-cipher", suite.cipher())
            .field("srtcp-auth", suite.auth())
            .build()
    }

    #[test]
    fn libsrtp_decrypts_what_we_protect_in_every_suite_across_a_wrap() {
        gst::init().unwrap();
        for suite in [
            Suite::Aes128Sha1_80,
            Suite::Aes128Sha1_32,
            Suite::Aes256Sha1_80,
            Suite::Aes256Sha1_32,
        ] {
            let key = TrackKey::generate(suite, 0xabcd_0001);
            let p = Protector::new(&key).unwrap();
            // Across a sequence number wrap: the rollover counter must agree with libsrtp's.
            let clear: Vec<Vec<u8>> = (65530u16..=65535)
                .chain(0..6)
                .map(|s| rtp(s).map_readable().unwrap().to_vec())
                .collect();
            let protected: Vec<Vec<u8>> = clear
                .iter()
                .map(|c| {
                    let b = p.protect_rtp(gst::Buffer::from_slice(c.clone())).unwrap();
                    let bytes = b.map_readable().unwrap().to_vec();
                    bytes
                })
                .collect();
            let caps = srtp_caps("application/x-srtp", suite, &key.key, 0xabcd_0001);
            let back = through_libsrtp("srtpdec", caps, protected);
            assert_eq!(back, clear, "{suite:?}");
        }
    }

    #[test]
    fn libsrtp_reads_our_srtcp_and_we_read_libsrtps() {
        gst::init().unwrap();
        for suite in [Suite::Aes128Sha1_80, Suite::Aes256Sha1_32] {
            let key = TrackKey::generate(suite, 0x5e5e_5e5e);
            let rr = receiver_report(0x5e5e_5e5e, 0xabcd_0001);
            // Ours into srtpdec.
            let p = Protector::new(&key).unwrap();
            let ours: Vec<Vec<u8>> = (0..3).map(|_| p.protect_rtcp(&rr).unwrap()).collect();
            let caps = srtp_caps("application/x-srtcp", suite, &key.key, 0x5e5e_5e5e);
            let back = through_libsrtp_rtcp_dec(caps, ours);
            assert_eq!(back, vec![rr.clone(); 3], "{suite:?}");
            // srtpenc's into ours.
            let theirs = through_libsrtp_rtcp_enc(suite, &key.key, vec![rr.clone(); 3]);
            assert_eq!(theirs.len(), 3);
            let remote = RemoteKey {
                suite,
                key: key.key.clone(),
                ssrcs: vec![],
            };
            let u = Unprotector::new(&remote).unwrap();
            for t in &theirs {
                assert_eq!(u.unprotect_rtcp(t).unwrap(), rr, "{suite:?}");
            }
        }
    }

    /// srtpdec's RTCP side: its rtcp_sink/rtcp_src pads.
    fn through_libsrtp_rtcp_dec(caps: gst::Caps, packets: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        rtcp_pipeline(
            "appsrc name=src format=time ! d.rtcp_sink srtpdec name=d d.rtcp_src ! appsink name=out sync=false",
            caps,
            packets,
        )
    }

    fn through_libsrtp_rtcp_enc(
        suite: Suite,
        key: &MasterKey,
        packets: Vec<Vec<u8>>,
    ) -> Vec<Vec<u8>> {
        let hexkey: String = key.bytes().iter().map(|b| format!("{b:02x}")).collect();
        rtcp_pipeline(
            &format!(
                "appsrc name=src format=time ! e.rtcp_sink_0 srtpenc name=e random-key=false key={hexkey} \
                 rtp-cipher={c} rtp-auth={a} rtcp-cipher={c} rtcp-auth={a} e.rtcp_src_0 ! appsink name=out sync=false",
                c = suite.cipher(),
                a = suite.auth()
            ),
            gst::Caps::new_empty_simple("application/x-rtcp"),
            packets,
        )
    }

    /// Runs `packets` through a pipeline of libsrtp elements from `src` to `out`.
    fn rtcp_pipeline(desc: &str, caps: gst::Caps, packets: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        gst::init().unwrap();
        let p = gst::parse::launch(desc)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let src = p
            .by_name("src")
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        src.set_caps(Some(&caps));
        let out = p
            .by_name("out")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        p.set_state(gst::State::Playing).unwrap();
        let n = packets.len();
        for pkt in packets {
            src.push_buffer(gst::Buffer::from_mut_slice(pkt)).unwrap();
        }
        src.end_of_stream().unwrap();
        let mut got = Vec::new();
        while got.len() < n {
            let Some(s) = out.try_pull_sample(gst::ClockTime::from_seconds(5)) else {
                break;
            };
            got.push(s.buffer().unwrap().map_readable().unwrap().to_vec());
        }
        p.set_state(gst::State::Null).unwrap();
        got
    }
}
