//! SRTP (RTP/SAVP with MIKEY keys) against gst-rtsp-server, whose RECORD media decrypt with
//! srtpdec: every frame decoded there, over TCP interleaved and over UDP; and what happens
//! when a server refuses encryption.

use crate::harness::*;
use crate::record_server::*;
use crate::scripted_server::*;
use gst::prelude::*;
use std::time::Duration;

/// gst-rtsp-server accepting only RTP/SAVP; `keymgmt`: it answers SETUP with the key of the
/// SRTCP it sends, as MediaMTX does.
fn savp_server(protocols: gst_rtsp::RTSPLowerTrans, keymgmt: bool) -> RecordServer {
    let cfg = RecordServerConfig::new("/live/secure", Tracks::H264)
        .with_profiles(gst_rtsp::RTSPProfile::SAVP)
        .with_protocols(protocols);
    RecordServer::start(if keymgmt {
        cfg.with_keymgmt_answer()
    } else {
        cfg
    })
    .unwrap()
}

/// Pushes 300 frames of H.264 with `profiles=savp` and `protocols`: the server's report and
/// the track's final stats.
fn push_savp(server: &RecordServer, protocols: &str) -> (Report, gst::Structure) {
    let p = pipeline(&format!(
        "{} ! rtspannounce name=s profiles=savp protocols={protocols} location={}",
        h264_branch(300, "vpay"),
        server.url()
    ));
    let out = run(&p, Duration::from_secs(60));
    assert!(out.eos, "{out:?}");
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    let stats: gst::Structure = p.by_name("s").unwrap().property("stats");
    let t0 = stats.get::<gst::Array>("tracks").unwrap().as_slice()[0]
        .get::<gst::Structure>()
        .unwrap();
    assert!(t0.get::<bool>("srtp").unwrap());
    (report, t0)
}

#[test]
fn tcp_interleaved_srtp_300_of_300_frames_and_its_srtcp_read() {
    let server = savp_server(gst_rtsp::RTSPLowerTrans::TCP, true);
    let (report, t0) = push_savp(&server, "tcp");
    let v = &report.tracks[0];
    assert_eq!(v.codec, "H.264", "{report}");
    assert_eq!(v.frames, 300, "{report}");
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(t0.get::<&str>("transport").unwrap(), "tcp");
    // The server's receiver reports, decrypted with its KeyMgmt key.
    assert!(t0.get::<u64>("receiver-reports").unwrap() > 0, "{t0}");
    assert_eq!(t0.get::<u64>("srtcp-unreadable").unwrap(), 0, "{t0}");
}

/// The MIKEY message (base64) of every `a=key-mgmt:mikey` line of an SDP.
fn sdp_keys(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=key-mgmt:mikey "))
        .map(str::to_string)
        .collect()
}

/// Answers 461 to every RTP/SAVP SETUP, as a server without SRTP does.
fn refusing_savp() -> Script {
    Script::new().custom("SETUP", |r| {
        if r.header("Transport").unwrap_or("").starts_with("RTP/SAVP") {
            Action::status(461, "Unsupported Transport")
        } else {
            Action::Normal
        }
    })
}

#[test]
fn the_wire_carries_srtp_and_each_track_its_own_key() {
    let server = ScriptedServer::start(Script::new());
    let p = pipeline(&format!(
        "rtspannounce name=s profiles=savp location={} sync=false \
         {} ! capsfilter ! s.sink_0  {} ! s.sink_1",
        server.url("/live/x"),
        h264_branch(30, "vpay"),
        aac_branch(40, "apay")
    ));
    let clear = capture_src(&p.by_name("vpay").unwrap());
    let out = run(&p, Duration::from_secs(30));
    assert!(out.eos, "{out:?}");
    let snap = server.snapshot();
    let announce = snap.first("ANNOUNCE").unwrap().body_str();
    assert_eq!(announce.matches(" RTP/SAVP ").count(), 2, "{announce}");
    assert!(!announce.contains("RTP/AVP"), "{announce}");
    let keys = sdp_keys(&announce);
    assert_eq!(keys.len(), 2, "{announce}");
    assert_ne!(keys[0], keys[1], "two tracks share a key");
    let setups: Vec<_> = snap
        .requests
        .iter()
        .filter(|r| r.method == "SETUP")
        .collect();
    for (i, setup) in setups.iter().enumerate() {
        let t = setup.header("Transport").unwrap();
        assert!(t.starts_with("RTP/SAVP/TCP;"), "{t}");
        let km = setup.header("KeyMgmt").unwrap();
        assert!(km.starts_with("prot=mikey;"), "{km}");
        assert!(km.contains(&format!("uri=\"{}\"", setup.uri)), "{km}");
        assert!(km.contains(&format!("data=\"{}\"", keys[i])), "{km}");
    }
    // Every video packet went out, 10 bytes longer (the HMAC-SHA1-80 tag), header clear,
    // payload encrypted.
    let clear = clear.lock().unwrap();
    let wire: Vec<_> = snap.frames.iter().filter(|f| f.channel == 0).collect();
    assert_eq!(wire.len(), clear.len());
    for (c, w) in clear.iter().zip(&wire) {
        assert_eq!(w.data.len(), c.len() + 10);
        assert_eq!(w.data[..12], c[..12]);
        assert_ne!(w.data[12..c.len()], c[12..]);
    }
    // Our sender reports are SRTCP too: the SR header stays clear, the rest is encrypted; an
    // E flag and a 31-bit index counting the reports, then the 10-byte tag, follow.
    let reports: Vec<_> = snap.frames.iter().filter(|f| f.channel == 1).collect();
    assert!(reports.len() >= 2, "{} reports", reports.len());
    let mut last_index = None;
    for r in reports {
        assert_eq!(r.data[1], 200, "an SR first");
        let sr_len = 4 * (u16::from_be_bytes([r.data[2], r.data[3]]) as usize + 1);
        assert!(r.data.len() > sr_len + 14);
        let at = r.data.len() - 14;
        let word = u32::from_be_bytes(r.data[at..at + 4].try_into().unwrap());
        assert_eq!(word & 0x8000_0000, 0x8000_0000, "E flag: encrypted");
        let index = word & 0x7fff_ffff;
        if let Some(prev) = last_index {
            assert_eq!(index, prev + 1, "SRTCP indexes count the reports");
        }
        last_index = Some(index);
    }
    let stats: gst::Structure = p.by_name("s").unwrap().property("stats");
    let t0 = stats.get::<gst::Array>("tracks").unwrap().as_slice()[0]
        .get::<gst::Structure>()
        .unwrap();
    assert!(t0.get::<bool>("srtp").unwrap());
}

#[test]
fn a_refused_savp_is_an_error_naming_it_when_avp_is_not_allowed() {
    let server = ScriptedServer::start(refusing_savp());
    let out = push(&format!(
        "{} ! rtspannounce profiles=savp location={} protocols=tcp",
        h264_branch(30, "vpay"),
        server.url("/live/x")
    ));
    assert!(!out.eos);
    let text = out.error_text();
    assert!(text.contains("server refused encryption"), "{text}");
    assert!(text.contains("SETUP rtsp://"), "{text}");
    assert!(text.contains("461"), "{text}");
    assert_eq!(out.error_is, Some(gst::ResourceError::OpenWrite));
    // Nothing went out unencrypted.
    assert_eq!(server.frame_count(), 0);
    assert_eq!(server.snapshot().count("ANNOUNCE"), 1);
}

#[test]
fn a_refused_savp_falls_back_to_avp_when_allowed_and_says_so() {
    let server = ScriptedServer::start(refusing_savp());
    let p = pipeline(&format!(
        "{} ! rtspannounce name=s profiles=avp+savp location={} protocols=tcp sync=false",
        h264_branch(30, "vpay"),
        server.url("/live/x")
    ));
    let clear = capture_src(&p.by_name("vpay").unwrap());
    let out = run(&p, Duration::from_secs(30));
    assert!(out.eos, "{out:?}");
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("server refused encryption") && w.contains("unencrypted")),
        "{:?}",
        out.warnings
    );
    let snap = server.snapshot();
    let announces: Vec<_> = snap
        .requests
        .iter()
        .filter(|r| r.method == "ANNOUNCE")
        .collect();
    assert_eq!(announces.len(), 2);
    assert!(announces[0].body_str().contains("RTP/SAVP"));
    let plain = announces[1].body_str();
    assert!(
        plain.contains("m=video 0 RTP/AVP ") && !plain.contains("key-mgmt"),
        "{plain}"
    );
    let last_setup = snap.last("SETUP").unwrap();
    assert!(last_setup.header("KeyMgmt").is_none());
    let wire: Vec<_> = snap.frames.iter().filter(|f| f.channel == 0).collect();
    let clear = clear.lock().unwrap();
    assert_eq!(wire.len(), clear.len());
    assert!(wire.iter().zip(clear.iter()).all(|(w, c)| w.data == *c));
}

#[test]
fn an_unusable_keymgmt_answer_is_a_warning_and_its_reports_are_not_misread() {
    let server = ScriptedServer::start(Script::new().extra_header(
        "SETUP",
        "KeyMgmt",
        "prot=mikey; data=\"AAECAwQFBgc=\"",
    ));
    let p = pipeline(&format!(
        "{} ! rtspannounce name=s profiles=savp location={} protocols=tcp",
        h264_branch(300, "vpay"),
        server.url("/live/x")
    ));
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let text = next_message_text(&bus, gst::MessageType::Warning);
    assert!(text.contains("KeyMgmt answer to SETUP"), "{text}");
    assert!(text.contains("MIKEY message is cut short"), "{text}");
    assert!(text.contains("cannot be decrypted"), "{text}");
    assert!(server.wait_frames(10, Duration::from_secs(10)));
    // A receiver report we cannot authenticate: counted, never read as one.
    let sink = p.by_name("s").unwrap();
    let ssrc = {
        let s: gst::Structure = sink.property("stats");
        s.get::<gst::Array>("tracks").unwrap().as_slice()[0]
            .get::<gst::Structure>()
            .unwrap()
            .get::<u32>("ssrc")
            .unwrap()
    };
    let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0, 9];
    rr.extend_from_slice(&ssrc.to_be_bytes());
    rr.extend_from_slice(&[25, 0, 0, 3]);
    rr.extend_from_slice(&[0; 16]);
    assert!(server.send_interleaved(1, &rr));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let t0 = loop {
        let s: gst::Structure = sink.property("stats");
        let t0 = s.get::<gst::Array>("tracks").unwrap().as_slice()[0]
            .get::<gst::Structure>()
            .unwrap();
        if t0.get::<u64>("srtcp-unreadable").unwrap() > 0 || std::time::Instant::now() > deadline {
            break t0;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(t0.get::<u64>("srtcp-unreadable").unwrap(), 1);
    assert_eq!(t0.get::<u64>("receiver-reports").unwrap(), 0);
    assert_eq!(t0.get::<i32>("cumulative-lost").unwrap(), 0);
    p.set_state(gst::State::Null).unwrap();
}

#[test]
fn udp_srtp_300_of_300_frames_and_its_srtcp_read() {
    let server = savp_server(gst_rtsp::RTSPLowerTrans::UDP, true);
    let (report, t0) = push_savp(&server, "udp");
    assert_eq!(report.tracks[0].frames, 300, "{report}");
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(t0.get::<&str>("transport").unwrap(), "udp");
    assert!(t0.get::<u64>("receiver-reports").unwrap() > 0, "{t0}");
    assert_eq!(t0.get::<u64>("srtcp-unreadable").unwrap(), 0, "{t0}");
}

#[test]
fn without_the_servers_key_its_srtcp_is_counted_not_misread() {
    // gst-rtsp-server 1.22 as it is: SRTCP under a random key it tells no one.
    let server = savp_server(gst_rtsp::RTSPLowerTrans::UDP, false);
    let (report, t0) = push_savp(&server, "udp");
    assert_eq!(report.tracks[0].frames, 300, "{report}");
    assert!(t0.get::<u64>("srtcp-unreadable").unwrap() > 0, "{t0}");
    assert_eq!(t0.get::<u64>("receiver-reports").unwrap(), 0, "{t0}");
}

/// `target/<profile>`, where cargo put the plugin's `.so` beside this test binary's `deps/`.
fn plugin_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The master key inside a MIKEY message as GStreamer writes it: the KEMAC payload comes
/// last, its key data sub-payload (30 bytes for AES-128) then the MAC algorithm byte.
fn key_in_mikey(b64: &str) -> Vec<u8> {
    use base64::Engine as _;
    let m = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    m[m.len() - 31..m.len() - 1].to_vec()
}

/// Every way a log could show `key`: base64, hex (either case, spaced as GST_MEMDUMP and
/// GStreamer's buffer serialisation write it), in pieces of 6 bytes.
fn leaks(log: &str, key: &[u8], b64: &str) -> Vec<String> {
    let mut found = Vec::new();
    if log.contains(b64) {
        found.push(format!("the base64 message {b64}"));
    }
    let lower = log.to_ascii_lowercase();
    for w in key.windows(6) {
        let joined: String = w.iter().map(|b| format!("{b:02x}")).collect();
        let spaced: Vec<String> = w.iter().map(|b| format!("{b:02x}")).collect();
        for form in [joined, spaced.join(" ")] {
            if lower.contains(&form) {
                found.push(form);
            }
        }
    }
    found
}

#[test]
fn at_level_9_no_key_is_logged_in_any_form() {
    init();
    let server_key = b"server-srtcp-key-30-bytes-long".to_vec();
    let server_mikey = mikey_base64(&server_key);
    let server = ScriptedServer::start(Script::new().extra_header(
        "SETUP",
        "KeyMgmt",
        &format!("prot=mikey; data=\"{server_mikey}\""),
    ));
    let dir = std::env::temp_dir().join(format!("srtp-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log_file = dir.join("gst.log");
    let mut child = std::process::Command::new("gst-launch-1.0")
        .args([
            "-q",
            "videotestsrc",
            "is-live=true",
            "num-buffers=90",
            "!",
            "x264enc",
            "tune=zerolatency",
            "!",
            "rtph264pay",
            "!",
            "rtspannounce",
            "profiles=savp",
            "protocols=tcp",
        ])
        .arg(format!("location={}", server.url("/live/x")))
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", dir.join("registry.bin"))
        .env("GST_DEBUG", "*:9")
        .env("GST_DEBUG_NO_COLOR", "1")
        .env("GST_DEBUG_FILE", &log_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gst-launch-1.0 runs");
    // A report from the server (in the clear): read with the server's key, which must not be
    // logged either, it fails to authenticate.
    let got_media = server.wait_frames(3, Duration::from_secs(30));
    let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0, 9];
    rr.extend_from_slice(&[0; 28]);
    let sent_rr = got_media && server.send_interleaved(1, &rr);
    let status = child.wait().unwrap();
    assert!(got_media && sent_rr, "no media, or the report was not sent");
    assert!(status.success(), "gst-launch-1.0: {status}");
    let log = String::from_utf8_lossy(&std::fs::read(&log_file).unwrap()).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    // The report was checked with the server's key.
    assert!(
        log.contains("did not authenticate"),
        "the server's report was never checked with its key"
    );
    assert!(
        log.contains("rtspannounce"),
        "the plugin did not log: wrong plugin path?"
    );
    assert!(
        log.contains("a=key-mgmt:mikey <key>"),
        "the SDP was not logged, masked"
    );
    let snap = server.snapshot();
    let announce = snap.first("ANNOUNCE").unwrap().body_str();
    let ours = sdp_keys(&announce);
    assert_eq!(ours.len(), 1);
    // The server's key (read by srtpdec from our caps) appears nowhere, in no form.
    let theirs = leaks(&log, &server_key, &server_mikey);
    assert!(
        theirs.is_empty(),
        "the server's key is in the log: {theirs:?}"
    );
    // Ours neither: the encryption is ours (no srtpenc, whose caps carry its key), and what we
    // log is masked.
    let forms = leaks(&log, &key_in_mikey(&ours[0]), &ours[0]);
    assert!(forms.is_empty(), "our key is in the log: {forms:?}");
    assert!(
        snap.frames.iter().any(|f| f.channel == 0),
        "no media went out"
    );
}

#[test]
fn a_server_without_savp_gets_plain_rtp_when_avp_is_allowed() {
    // An AVP-only factory: gst-rtsp-server answers the SAVP SETUP with 461 on every transport.
    let server = RecordServer::start(RecordServerConfig::new("/live/plain", Tracks::H264)).unwrap();
    let p = pipeline(&format!(
        "{} ! rtspannounce name=s profiles=avp+savp location={}",
        h264_branch(300, "vpay"),
        server.url()
    ));
    let out = run(&p, Duration::from_secs(60));
    assert!(out.eos, "{out:?}");
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("server refused encryption")),
        "{:?}",
        out.warnings
    );
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    assert_eq!(report.tracks[0].frames, 300, "{report}");
    let stats: gst::Structure = p.by_name("s").unwrap().property("stats");
    let t0 = stats.get::<gst::Array>("tracks").unwrap().as_slice()[0]
        .get::<gst::Structure>()
        .unwrap();
    assert!(!t0.get::<bool>("srtp").unwrap());
}

#[test]
fn a_server_without_savp_refuses_encryption_when_avp_is_not_allowed() {
    let server = RecordServer::start(RecordServerConfig::new("/live/plain", Tracks::H264)).unwrap();
    let out = push(&format!(
        "{} ! rtspannounce profiles=savp location={}",
        h264_branch(30, "vpay"),
        server.url()
    ));
    assert!(!out.eos);
    let text = out.error_text();
    assert!(
        text.contains("server refused encryption: ANNOUNCE rtsp://127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("415"), "{text}");
}

#[test]
fn a_reconnect_brings_fresh_keys_and_media_goes_on_encrypted() {
    let server = ScriptedServer::start(Script::new());
    let p = pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max=15 speed-preset=ultrafast ! rtph264pay ! \
         rtspannounce name=s profiles=savp protocols=tcp retry-delay-min=50 location={}",
        server.url("/live/x")
    ));
    p.set_state(gst::State::Playing).unwrap();
    let t = Duration::from_secs(20);
    assert!(server.wait_frames(10, t));
    assert!(server.drop_connection());
    assert!(server.wait_for(
        |s| s
            .frames
            .iter()
            .filter(|f| f.conn == 1 && f.channel == 0)
            .count()
            >= 10,
        t
    ));
    p.set_state(gst::State::Null).unwrap();
    let snap = server.snapshot();
    let announces: Vec<_> = snap
        .requests
        .iter()
        .filter(|r| r.method == "ANNOUNCE")
        .collect();
    assert!(announces.len() >= 2);
    let (k0, k1) = (
        sdp_keys(&announces[0].body_str()),
        sdp_keys(&announces[1].body_str()),
    );
    assert_eq!((k0.len(), k1.len()), (1, 1));
    assert_ne!(k0, k1, "the reconnect reused the key");
    // The new connection set up SRTP again, with its new key.
    let setup = snap
        .requests
        .iter()
        .find(|r| r.method == "SETUP" && r.conn == 1)
        .unwrap();
    assert!(setup
        .header("Transport")
        .unwrap()
        .starts_with("RTP/SAVP/TCP;"));
    assert!(setup
        .header("KeyMgmt")
        .unwrap()
        .contains(&format!("data=\"{}\"", k1[0])));
    let stats: gst::Structure = p.by_name("s").unwrap().property("stats");
    assert!(stats.get::<u32>("reconnects").unwrap() >= 1, "{stats}");
}

#[test]
fn srtcp_under_another_key_than_the_keymgmt_answer_is_a_warning_and_counted() {
    init();
    let server = ScriptedServer::start(Script::new().extra_header(
        "SETUP",
        "KeyMgmt",
        &format!(
            "prot=mikey; data=\"{}\"",
            mikey_base64(b"the-key-the-server-announced!!")
        ),
    ));
    let p = pipeline(&format!(
        "{} ! rtspannounce name=s profiles=savp location={} protocols=tcp",
        h264_branch(300, "vpay"),
        server.url("/live/x")
    ));
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    assert!(server.wait_frames(10, Duration::from_secs(10)));
    // A receiver report with an SRTCP index and a tag made under some other key.
    let mut srtcp = vec![0x81, 201, 0, 7, 0, 0, 0, 9];
    srtcp.extend_from_slice(&[0x5a; 24]);
    srtcp.extend_from_slice(&[0x80, 0, 0, 1]);
    srtcp.extend_from_slice(&[0xa5; 10]);
    assert!(server.send_interleaved(1, &srtcp));
    assert!(server.send_interleaved(1, &srtcp));
    let text = next_message_text(&bus, gst::MessageType::Warning);
    assert!(text.contains("did not authenticate"), "{text}");
    assert!(text.contains("srtcp-unreadable"), "{text}");
    let sink = p.by_name("s").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let t0 = loop {
        let s: gst::Structure = sink.property("stats");
        let t0 = s.get::<gst::Array>("tracks").unwrap().as_slice()[0]
            .get::<gst::Structure>()
            .unwrap();
        if t0.get::<u64>("srtcp-unreadable").unwrap() >= 2 || std::time::Instant::now() > deadline {
            break t0;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(t0.get::<u64>("srtcp-unreadable").unwrap(), 2, "{t0}");
    assert_eq!(t0.get::<u64>("receiver-reports").unwrap(), 0, "{t0}");
    p.set_state(gst::State::Null).unwrap();
}

#[test]
fn srtp_inside_an_http_tunnel_300_of_300_frames() {
    // gst-rtsp-server serves the tunnel on its RTSP port: the SRTP goes interleaved inside it.
    let server = savp_server(gst_rtsp::RTSPLowerTrans::TCP, true);
    let url = server.url().replacen("rtsp://", "rtsph://", 1);
    let p = pipeline(&format!(
        "{} ! rtspannounce name=s profiles=savp location={url}",
        h264_branch(300, "vpay")
    ));
    let out = run(&p, Duration::from_secs(60));
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    assert_eq!(report.tracks[0].frames, 300, "{report}");
    let stats: gst::Structure = p.by_name("s").unwrap().property("stats");
    let t0 = stats.get::<gst::Array>("tracks").unwrap().as_slice()[0]
        .get::<gst::Structure>()
        .unwrap();
    assert!(t0.get::<bool>("srtp").unwrap());
    assert!(t0.get::<u64>("receiver-reports").unwrap() > 0, "{t0}");
}
