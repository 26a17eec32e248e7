//! The codec matrix: every codec a GStreamer RTP payloader handles here (and KLV metadata),
//! pushed by `rtspannounce` and verified where it lands.
//!
//! For each codec and input form (pre-payloaded `encoder ! payloader ! rtspannounce`, or encoded
//! `encoder ! rtspannounce` once the element picks payloaders itself):
//! - the SDP we ANNOUNCE (recorded by the scripted server) has the rtpmap GStreamer's payloader
//!   implies and the fmtp parameters receivers need;
//! - gst-rtsp-server in RECORD mode depayloads, parses and *decodes* it: every video frame sent
//!   is decoded, audio decodes to the samples sent (less at most one codec frame of slack);
//! - ffmpeg's RTSP listener records it (`-c copy`) and ffprobe decodes the recording, with the
//!   same bounds, where ffmpeg 5.1 has a depacketizer for the codec.
//!
//! Every test adds its row to `target/codec-matrix.md` (the whole table is rewritten after each
//! case, so a full run leaves the full table); `scripts/codec-matrix.sh` runs this binary and
//! copies the table into docs/CODECS.md. A case that should work and does not fails its test;
//! what cannot run here (element missing, form not built yet, known receiver limit) is a cell
//! that says why.

use crate::harness;
use crate::klv_source;
use crate::peers;
use crate::scripted_server;

use crate::record_server::{RecordServer, RecordServerConfig, TrackKind, Tracks};
use gst::glib;
use gst::prelude::*;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

const VIDEO_FRAMES: u64 = 30;

/// What the raw source produces.
#[derive(Clone, Copy)]
enum Raw {
    /// `VIDEO_FRAMES` frames at 30/s.
    Video { width: u32, height: u32 },
    /// `buffers` buffers of `per_buffer` samples.
    Audio {
        rate: u32,
        channels: u32,
        per_buffer: u32,
        buffers: u32,
    },
    /// `units` KLV units (SMPTE 336M), one every `KLV_EVERY`, from an appsrc.
    Klv { units: u32 },
}

/// The KLV source's name in the launch line, and its pace.
const KLV_SRC: &str = "klvsrc";
const KLV_EVERY: Duration = Duration::from_millis(100);

impl Raw {
    fn launch(self) -> String {
        match self {
            Raw::Video { width, height } => format!(
                "videotestsrc num-buffers={VIDEO_FRAMES} ! \
                 video/x-raw,format=I420,width={width},height={height},framerate=30/1"
            ),
            Raw::Audio {
                rate,
                channels,
                per_buffer,
                buffers,
            } => format!(
                "audiotestsrc num-buffers={buffers} samplesperbuffer={per_buffer} ! \
                 audio/x-raw,rate={rate},channels={channels}"
            ),
            Raw::Klv { .. } => klv_source::klv_src(KLV_SRC),
        }
    }

    fn samples(self) -> u64 {
        match self {
            Raw::Video { .. } | Raw::Klv { .. } => 0,
            Raw::Audio {
                per_buffer,
                buffers,
                ..
            } => u64::from(per_buffer) * u64::from(buffers),
        }
    }
}

/// What we know of ffmpeg 5.1's RTSP listener for a codec.
#[derive(Clone, Copy)]
enum Ffmpeg {
    /// Must work: record into a file of this extension, ffprobe names the codec so.
    Works {
        ext: &'static str,
        codec: &'static str,
    },
    /// Runs, but a receiver-side limitation is known: the measured result is reported with
    /// the reason and does not fail the test.
    Limited {
        ext: &'static str,
        codec: &'static str,
        why: &'static str,
    },
}

struct Case {
    id: &'static str,
    codec: &'static str,
    kind: TrackKind,
    raw: Raw,
    /// Encoder (for raw L16/L24: audioconvert and a caps filter giving S16BE/S24BE).
    encoder: &'static str,
    /// Parser between encoder and payloader in the pre-payloaded form (may be empty).
    parser: &'static str,
    payloader: &'static str,
    /// Caps the encoder produces: the encoded form is available iff the element's sink pad
    /// template accepts them.
    encoded_caps: &'static str,
    /// The encoded form of this case is that of another case (same encoder output).
    encoded_as: Option<&'static str>,
    /// `a=rtpmap` value expected (after the payload type) and the payload type if static.
    rtpmap: &'static str,
    static_pt: Option<u8>,
    /// `a=fmtp` parameters receivers need.
    fmtp: &'static [&'static str],
    ffmpeg: Ffmpeg,
}

const CASES: &[Case] = &[
    Case {
        id: "h264",
        codec: "H.264",
        kind: TrackKind::H264,
        raw: Raw::Video {
            width: 320,
            height: 240,
        },
        encoder: "x264enc tune=zerolatency bframes=0 key-int-max=30 speed-preset=ultrafast",
        parser: "h264parse",
        payloader: "rtph264pay",
        encoded_caps: "video/x-h264",
        encoded_as: None,
        rtpmap: "H264/90000",
        static_pt: None,
        fmtp: &[
            "packetization-mode",
            "profile-level-id",
            "sprop-parameter-sets",
        ],
        ffmpeg: Ffmpeg::Works {
            ext: "mkv",
            codec: "h264",
        },
    },
    Case {
        id: "h265",
        codec: "H.265",
        kind: TrackKind::H265,
        raw: Raw::Video {
            width: 320,
            height: 240,
        },
        encoder: "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=30",
        parser: "h265parse",
        payloader: "rtph265pay",
        encoded_caps: "video/x-h265",
        encoded_as: None,
        rtpmap: "H265/90000",
        static_pt: None,
        fmtp: &["sprop-vps", "sprop-sps", "sprop-pps"],
        ffmpeg: Ffmpeg::Works {
            ext: "mkv",
            codec: "hevc",
        },
    },
    Case {
        id: "vp8",
        codec: "VP8",
        kind: TrackKind::Vp8,
        raw: Raw::Video {
            width: 320,
            height: 240,
        },
        encoder: "vp8enc deadline=1 keyframe-max-dist=30",
        parser: "",
        payloader: "rtpvp8pay",
        encoded_caps: "video/x-vp8",
        encoded_as: None,
        rtpmap: "VP8/90000",
        static_pt: None,
        fmtp: &[],
        ffmpeg: Ffmpeg::Works {
            ext: "mkv",
            codec: "vp8",
        },
    },
    Case {
        id: "vp9",
        codec: "VP9",
        kind: TrackKind::Vp9,
        raw: Raw::Video {
            width: 320,
            height: 240,
        },
        encoder: "vp9enc deadline=1 cpu-used=8 keyframe-max-dist=30",
        parser: "",
        payloader: "rtpvp9pay",
        encoded_caps: "video/x-vp9",
        encoded_as: None,
        rtpmap: "VP9/90000",
        static_pt: None,
        fmtp: &[],
        ffmpeg: Ffmpeg::Limited {
            ext: "mkv",
            codec: "vp9",
            why: "ffmpeg 5.1's RTP/VP9 depacketizer (flagged experimental) probes the stream as \
                  \"Profile 3, yuv444p12le\" and emits no frame from rtpvp9pay's packets",
        },
    },
    Case {
        id: "av1",
        codec: "AV1",
        kind: TrackKind::Av1,
        raw: Raw::Video {
            width: 160,
            height: 120,
        },
        encoder: "av1enc usage-profile=realtime cpu-used=10",
        parser: "av1parse",
        payloader: "rtpav1pay",
        encoded_caps: "video/x-av1",
        encoded_as: None,
        rtpmap: "AV1/90000",
        static_pt: None,
        fmtp: &[],
        ffmpeg: Ffmpeg::Limited {
            ext: "mkv",
            codec: "av1",
            why: "ffmpeg 5.1 has no RTP depacketizer for AV1",
        },
    },
    Case {
        id: "jpeg",
        codec: "MJPEG",
        kind: TrackKind::Jpeg,
        raw: Raw::Video {
            width: 320,
            height: 240,
        },
        encoder: "jpegenc",
        parser: "",
        payloader: "rtpjpegpay",
        encoded_caps: "image/jpeg",
        encoded_as: None,
        rtpmap: "JPEG/90000",
        static_pt: Some(26),
        fmtp: &[],
        ffmpeg: Ffmpeg::Works {
            ext: "mkv",
            codec: "mjpeg",
        },
    },
    Case {
        id: "aac",
        codec: "AAC",
        kind: TrackKind::Aac,
        raw: Raw::Audio {
            rate: 48000,
            channels: 2,
            per_buffer: 1024,
            buffers: 47,
        },
        encoder: "avenc_aac",
        parser: "aacparse",
        payloader: "rtpmp4gpay",
        encoded_caps: "audio/mpeg,mpegversion=4",
        encoded_as: None,
        rtpmap: "MPEG4-GENERIC/48000/2",
        static_pt: None,
        fmtp: &[
            "mode",
            "config",
            "sizelength",
            "indexlength",
            "indexdeltalength",
        ],
        ffmpeg: Ffmpeg::Works {
            ext: "mkv",
            codec: "aac",
        },
    },
    Case {
        id: "aac-latm",
        codec: "AAC (LATM)",
        kind: TrackKind::Aac,
        raw: Raw::Audio {
            rate: 48000,
            channels: 2,
            per_buffer: 1024,
            buffers: 47,
        },
        encoder: "avenc_aac",
        parser: "aacparse",
        payloader: "rtpmp4apay",
        encoded_caps: "audio/mpeg,mpegversion=4",
        // The same encoder output as the AAC row: in the encoded form the element picks one
        // AAC payloader for it, and that is the AAC row.
        encoded_as: Some("aac"),
        // rtpmp4apay writes no channel count (the config has it).
        rtpmap: "MP4A-LATM/48000",
        static_pt: None,
        fmtp: &["cpresent", "config"],
        ffmpeg: Ffmpeg::Works {
            ext: "mkv",
            codec: "aac",
        },
    },
    Case {
        id: "opus",
        codec: "Opus",
        kind: TrackKind::Opus,
        raw: Raw::Audio {
            rate: 48000,
            channels: 2,
            per_buffer: 960,
            buffers: 50,
        },
        encoder: "opusenc",
        parser: "",
        payloader: "rtpopuspay",
        encoded_caps: "audio/x-opus",
        encoded_as: None,
        rtpmap: "OPUS/48000/2",
        static_pt: None,
        fmtp: &[],
        ffmpeg: Ffmpeg::Works {
            ext: "mkv",
            codec: "opus",
        },
    },
    Case {
        id: "pcmu",
        codec: "G.711 mu-law",
        kind: TrackKind::Pcmu,
        raw: Raw::Audio {
            rate: 8000,
            channels: 1,
            per_buffer: 160,
            buffers: 50,
        },
        encoder: "mulawenc",
        parser: "",
        payloader: "rtppcmupay",
        encoded_caps: "audio/x-mulaw",
        encoded_as: None,
        rtpmap: "PCMU/8000",
        static_pt: Some(0),
        fmtp: &[],
        ffmpeg: Ffmpeg::Works {
            ext: "nut",
            codec: "pcm_mulaw",
        },
    },
    Case {
        id: "pcma",
        codec: "G.711 A-law",
        kind: TrackKind::Pcma,
        raw: Raw::Audio {
            rate: 8000,
            channels: 1,
            per_buffer: 160,
            buffers: 50,
        },
        encoder: "alawenc",
        parser: "",
        payloader: "rtppcmapay",
        encoded_caps: "audio/x-alaw",
        encoded_as: None,
        rtpmap: "PCMA/8000",
        static_pt: Some(8),
        fmtp: &[],
        ffmpeg: Ffmpeg::Works {
            ext: "nut",
            codec: "pcm_alaw",
        },
    },
    Case {
        id: "l16",
        codec: "L16 (PCM)",
        kind: TrackKind::L16,
        raw: Raw::Audio {
            rate: 48000,
            channels: 2,
            per_buffer: 480,
            buffers: 100,
        },
        encoder: "audioconvert ! audio/x-raw,format=S16BE",
        parser: "",
        payloader: "rtpL16pay",
        encoded_caps: "audio/x-raw,format=S16BE",
        encoded_as: None,
        rtpmap: "L16/48000/2",
        static_pt: None,
        fmtp: &[],
        ffmpeg: Ffmpeg::Works {
            ext: "nut",
            codec: "pcm_s16be",
        },
    },
    Case {
        id: "l24",
        codec: "L24 (PCM)",
        kind: TrackKind::L24,
        raw: Raw::Audio {
            rate: 48000,
            channels: 2,
            per_buffer: 480,
            buffers: 100,
        },
        encoder: "audioconvert ! audio/x-raw,format=S24BE",
        parser: "",
        payloader: "rtpL24pay",
        encoded_caps: "audio/x-raw,format=S24BE",
        encoded_as: None,
        rtpmap: "L24/48000/2",
        static_pt: None,
        fmtp: &[],
        ffmpeg: Ffmpeg::Works {
            ext: "nut",
            codec: "pcm_s24be",
        },
    },
    Case {
        id: "g722",
        codec: "G.722",
        kind: TrackKind::G722,
        raw: Raw::Audio {
            rate: 16000,
            channels: 1,
            per_buffer: 320,
            buffers: 50,
        },
        encoder: "avenc_g722",
        parser: "",
        payloader: "rtpg722pay",
        encoded_caps: "audio/G722",
        encoded_as: None,
        // RFC 3551: G.722's RTP clock is 8000 Hz although it samples at 16 kHz.
        rtpmap: "G722/8000/1",
        static_pt: Some(9),
        fmtp: &[],
        ffmpeg: Ffmpeg::Works {
            ext: "nut",
            codec: "adpcm_g722",
        },
    },
    Case {
        id: "amr-nb",
        codec: "AMR-NB",
        kind: TrackKind::AmrNb,
        raw: Raw::Audio {
            rate: 8000,
            channels: 1,
            per_buffer: 160,
            buffers: 50,
        },
        encoder: "amrnbenc",
        parser: "",
        payloader: "rtpamrpay",
        encoded_caps: "audio/AMR",
        encoded_as: None,
        rtpmap: "AMR/8000/1",
        static_pt: None,
        fmtp: &["octet-align"],
        ffmpeg: Ffmpeg::Works {
            ext: "nut",
            codec: "amr_nb",
        },
    },
    Case {
        id: "mpa",
        codec: "MP3",
        kind: TrackKind::Mpa,
        raw: Raw::Audio {
            rate: 44100,
            channels: 2,
            per_buffer: 1152,
            buffers: 39,
        },
        encoder: "lamemp3enc",
        parser: "mpegaudioparse",
        payloader: "rtpmpapay",
        encoded_caps: "audio/mpeg,mpegversion=1",
        encoded_as: None,
        rtpmap: "MPA/90000",
        static_pt: Some(14),
        fmtp: &[],
        ffmpeg: Ffmpeg::Works {
            ext: "nut",
            codec: "mp3",
        },
    },
    Case {
        id: "speex",
        codec: "Speex",
        kind: TrackKind::Speex,
        raw: Raw::Audio {
            rate: 16000,
            channels: 1,
            per_buffer: 320,
            buffers: 50,
        },
        encoder: "speexenc",
        parser: "",
        payloader: "rtpspeexpay",
        encoded_caps: "audio/x-speex",
        encoded_as: None,
        rtpmap: "SPEEX/16000/1",
        static_pt: None,
        fmtp: &[],
        ffmpeg: Ffmpeg::Works {
            ext: "nut",
            codec: "speex",
        },
    },
    Case {
        id: "ac3",
        codec: "AC-3",
        kind: TrackKind::Ac3,
        raw: Raw::Audio {
            rate: 48000,
            channels: 2,
            per_buffer: 1536,
            buffers: 32,
        },
        encoder: "avenc_ac3",
        parser: "ac3parse",
        payloader: "rtpac3pay",
        encoded_caps: "audio/x-ac3",
        encoded_as: None,
        rtpmap: "AC3/48000",
        static_pt: None,
        fmtp: &[],
        ffmpeg: Ffmpeg::Works {
            ext: "mkv",
            codec: "ac3",
        },
    },
    Case {
        id: "vorbis",
        codec: "Vorbis",
        kind: TrackKind::Vorbis,
        raw: Raw::Audio {
            rate: 48000,
            channels: 2,
            per_buffer: 960,
            buffers: 50,
        },
        encoder: "vorbisenc",
        parser: "",
        // With its default aggregation, rtpvorbispay ! rtpvorbisdepay loses ~7% of the samples
        // even in a local loop (1.22); one frame per packet loses none.
        payloader: "rtpvorbispay max-ptime=20000000",
        encoded_caps: "audio/x-vorbis",
        encoded_as: None,
        rtpmap: "VORBIS/48000/2",
        static_pt: None,
        // The three codec headers travel base64 in the SDP (RFC 5215 `configuration`).
        fmtp: &["configuration"],
        ffmpeg: Ffmpeg::Works {
            ext: "mkv",
            codec: "vorbis",
        },
    },
    Case {
        id: "klv",
        codec: "KLV (SMPTE 336M)",
        kind: TrackKind::Klv,
        raw: Raw::Klv { units: 30 },
        encoder: "",
        parser: "",
        payloader: "rtpklvpay",
        encoded_caps: klv_source::KLV_CAPS,
        encoded_as: None,
        rtpmap: "SMPTE336M/90000",
        static_pt: None,
        fmtp: &[],
        // Measured: the ANNOUNCE is accepted, the track opens as `Data: none` (ffmpeg 5.1 has
        // no SMPTE336M depacketizer) and `-c copy` ends with "Output file #0 does not contain
        // any stream".
        ffmpeg: Ffmpeg::Limited {
            ext: "ts",
            codec: "klv",
            why: "ffmpeg 5.1 has no SMPTE336M depacketizer: the track opens as a data stream of codec none, and nothing is recorded",
        },
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Form {
    Payloaded,
    Encoded,
}

impl Form {
    fn label(self) -> &'static str {
        match self {
            Form::Payloaded => "pre-payloaded",
            Form::Encoded => "encoded",
        }
    }
}

impl Case {
    fn chain(&self, form: Form) -> String {
        let mut parts = vec![self.raw.launch()];
        if !self.encoder.is_empty() {
            parts.push(self.encoder.to_owned());
        }
        if form == Form::Payloaded {
            if !self.parser.is_empty() {
                parts.push(self.parser.to_owned());
            }
            parts.push(self.payloader.to_owned());
        }
        parts.join(" ! ")
    }

    /// `encoder ! payloader` as the table shows it.
    fn elements_label(&self, form: Form) -> String {
        let enc = match self.raw {
            Raw::Klv { .. } => "appsrc",
            _ => self.encoder.split(' ').next().unwrap_or(""),
        };
        match form {
            Form::Payloaded => format!("`{enc} ! {}`", self.payloader),
            Form::Encoded => format!("`{enc}`"),
        }
    }

    fn elements_needed(&self) -> Vec<String> {
        let mut names = Vec::new();
        for part in [self.encoder, self.parser, self.payloader] {
            for el in part.split(" ! ") {
                let name = el.split(' ').next().unwrap_or("");
                if !name.is_empty() && !name.contains('/') {
                    names.push(name.to_owned());
                }
            }
        }
        names
    }

    /// Lowest decoded audio samples accepted: what was sent, less 40 ms (more than one codec
    /// frame of any codec here: AC-3's 1536 samples are 32 ms) for encoders that drop a final
    /// partial frame.
    fn min_samples(&self) -> u64 {
        match self.raw {
            Raw::Audio { rate, .. } => self.raw.samples().saturating_sub(u64::from(rate) / 25),
            Raw::Video { .. } | Raw::Klv { .. } => 0,
        }
    }

    /// Highest accepted: what was sent plus priming/padding (at most 100 ms).
    fn max_samples(&self) -> u64 {
        match self.raw {
            Raw::Audio { rate, .. } => self.raw.samples() + u64::from(rate) / 10,
            Raw::Video { .. } | Raw::Klv { .. } => 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

struct Row {
    codec: String,
    elements: String,
    form: Form,
    sdp: String,
    gst: String,
    ffmpeg: String,
}

static ROWS: Mutex<BTreeMap<(usize, Form), Row>> = Mutex::new(BTreeMap::new());

fn gst_version() -> String {
    let (major, minor, micro, _) = gst::version();
    format!("{major}.{minor}.{micro}")
}

fn ffmpeg_version() -> String {
    std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(2))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
}

fn write_table() {
    let rows = ROWS.lock().unwrap_or_else(|e| e.into_inner());
    let mut md = format!(
        "<!-- generated by tests/it/codec_matrix.rs: {} of {} cases in this run -->\n\
         GStreamer {}, ffmpeg {}. Video: {VIDEO_FRAMES} frames sent; audio: samples sent per \
         channel, decoded samples counted at the receiver (accepted: sent - 40 ms .. sent + 100 ms); \
         metadata: units sent, units depayloaded at the receiver.\n\n\
         | codec | elements | input form | SDP we announce | gst-rtsp-server (record) | ffmpeg listener |\n\
         | --- | --- | --- | --- | --- | --- |\n",
        rows.len(),
        CASES.len() * 2,
        gst_version(),
        ffmpeg_version()
    );
    for r in rows.values() {
        md += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.codec,
            r.elements,
            r.form.label(),
            r.sdp,
            r.gst,
            r.ffmpeg
        );
    }
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_owned();
    std::fs::write(target.join("codec-matrix.md"), md).expect("write target/codec-matrix.md");
}

// ---------------------------------------------------------------------------------------------
// The three checks.

/// The first `m=` section of an SDP: (payload type, rtpmap value, fmtp parameter names).
fn first_media(sdp: &str) -> Result<(u8, String, Vec<String>), String> {
    let mut lines = sdp.lines().skip_while(|l| !l.starts_with("m="));
    let m = lines.next().ok_or("no m= line")?;
    let pt: u8 = m
        .split_whitespace()
        .nth(3)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("bad m= line {m:?}"))?;
    let mut rtpmap = None;
    let mut fmtp = Vec::new();
    for l in lines.take_while(|l| !l.starts_with("m=")) {
        if let Some(v) = l.strip_prefix(&format!("a=rtpmap:{pt} ")) {
            rtpmap = Some(v.to_owned());
        }
        if let Some(v) = l.strip_prefix(&format!("a=fmtp:{pt} ")) {
            fmtp = v
                .split(';')
                .filter_map(|kv| kv.split('=').next())
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect();
        }
    }
    Ok((pt, rtpmap.ok_or_else(|| format!("no a=rtpmap:{pt}"))?, fmtp))
}

const PUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Pushes `case` in `form` to `url`. In the encoded form, the payloader properties the case
/// sets in the pre-payloaded form are applied from the element's `new-payloader` signal, as an
/// application would.
fn push(case: &Case, form: Form, url: &str, sync: bool) -> Result<(), String> {
    let pipeline = harness::pipeline(&format!(
        "{} ! rtspannounce name=sink location={url} sync={sync}",
        case.chain(form)
    ));
    if form == Form::Encoded {
        configure_payloader(case, &pipeline.by_name("sink").expect("sink"))?;
    }
    if let Raw::Klv { units } = case.raw {
        klv_source::feed(&pipeline, KLV_SRC, units, KLV_EVERY);
    }
    let out = harness::run(&pipeline, PUSH_TIMEOUT);
    if out.eos {
        Ok(())
    } else if out.timed_out {
        Err(format!("push did not end within {PUSH_TIMEOUT:?}"))
    } else {
        Err(format!("push failed: {}", out.error_text()))
    }
}

fn configure_payloader(case: &Case, sink: &gst::Element) -> Result<(), String> {
    let mut words = case.payloader.split_whitespace();
    let factory = words.next().unwrap_or("").to_owned();
    let props: Vec<(String, String)> = words
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if props.is_empty() {
        return Ok(());
    }
    if glib::subclass::signal::SignalId::lookup("new-payloader", sink.type_()).is_none() {
        return Err(format!(
            "{factory} needs {props:?} but the element has no new-payloader signal"
        ));
    }
    sink.connect("new-payloader", false, move |args| {
        if let Some(pay) = args.get(1).and_then(|v| v.get::<gst::Element>().ok()) {
            if pay.factory().is_some_and(|f| f.name() == factory.as_str()) {
                for (k, v) in &props {
                    pay.set_property_from_str(k, v);
                }
            }
        }
        None
    });
    Ok(())
}

fn check_sdp(case: &Case, form: Form) -> Result<String, String> {
    use scripted_server::{Script, ScriptedServer};
    let server = ScriptedServer::start(Script::new());
    push(case, form, &server.url("/matrix"), false)?;
    let snap = server.snapshot();
    let sdp = snap
        .first("ANNOUNCE")
        .ok_or("no ANNOUNCE reached the server")?
        .body_str();
    let (pt, rtpmap, fmtp) = first_media(&sdp).map_err(|e| format!("{e} in\n{sdp}"))?;
    let media = if case.kind.is_metadata() {
        "application"
    } else if case.kind.is_video() {
        "video"
    } else {
        "audio"
    };
    if !sdp.contains(&format!("\r\nm={media} 0 RTP/AVP {pt}\r\n")) {
        return Err(format!("m= line is not `{media} 0 RTP/AVP {pt}`:\n{sdp}"));
    }
    if rtpmap != case.rtpmap {
        return Err(format!(
            "rtpmap {rtpmap:?}, expected {:?}:\n{sdp}",
            case.rtpmap
        ));
    }
    if let Some(spt) = case.static_pt {
        if pt != spt {
            return Err(format!(
                "payload type {pt}, expected the static {spt}:\n{sdp}"
            ));
        }
    }
    let missing: Vec<&str> = case
        .fmtp
        .iter()
        .copied()
        .filter(|k| !fmtp.iter().any(|f| f == k))
        .collect();
    if !missing.is_empty() {
        return Err(format!("fmtp lacks {missing:?}:\n{sdp}"));
    }
    let fmtp_cell = if fmtp.is_empty() {
        String::new()
    } else {
        format!("; fmtp: {}", fmtp.join(", "))
    };
    Ok(format!("`{pt} {rtpmap}`{fmtp_cell}"))
}

/// Video: every frame decoded at the sent size; audio: decoded samples within the bounds.
fn judge(
    case: &Case,
    frames: u64,
    samples: u64,
    size: Option<(u32, u32)>,
    audio: Option<(u32, u32)>,
) -> Result<String, String> {
    match case.raw {
        Raw::Video { width, height } => {
            let cell = format!("{frames}/{VIDEO_FRAMES} frames decoded");
            if frames != VIDEO_FRAMES {
                return Err(cell);
            }
            if size != Some((width, height)) {
                return Err(format!("{cell}, size {size:?}, expected {width}x{height}"));
            }
            Ok(format!("{cell} ({width}x{height})"))
        }
        Raw::Audio { rate, channels, .. } => {
            let cell = format!(
                "{samples}/{} samples decoded ({frames} frames)",
                case.raw.samples()
            );
            if samples < case.min_samples() || samples > case.max_samples() {
                return Err(format!(
                    "{cell}, outside {}..{}",
                    case.min_samples(),
                    case.max_samples()
                ));
            }
            if audio != Some((rate, channels)) {
                return Err(format!(
                    "{cell}, format {audio:?}, expected {rate} Hz {channels} ch"
                ));
            }
            Ok(format!("{cell}, {rate} Hz {channels} ch"))
        }
        Raw::Klv { units } => {
            let cell = format!("{frames}/{units} KLV units depayloaded");
            if frames != u64::from(units) {
                return Err(cell);
            }
            Ok(cell)
        }
    }
}

fn check_gst_rtsp_server(case: &Case, form: Form) -> Result<String, String> {
    let server = RecordServer::start(RecordServerConfig::new(
        "/matrix",
        Tracks::Single(case.kind),
    ))
    .map_err(|e| format!("record server: {e:#}"))?;
    push(case, form, &server.url(), true)?;
    let report = server
        .wait_finished(Duration::from_secs(20))
        .map_err(|e| format!("{e:#}"))?;
    println!("{} {} gst-rtsp-server: {report}", case.id, form.label());
    let t = report.tracks.first().ok_or("no track in the report")?;
    if !report.errors.is_empty() {
        return Err(format!(
            "errors at the server: {}",
            report.errors.join("; ")
        ));
    }
    if t.codec != case.kind.name() {
        return Err(format!(
            "codec {:?}, expected {:?}",
            t.codec,
            case.kind.name()
        ));
    }
    let size = t.width.zip(t.height).map(|(w, h)| (w as u32, h as u32));
    let audio = t.rate.zip(t.channels).map(|(r, c)| (r as u32, c as u32));
    // Decoded audio rates: the L16 caps and decoders report the stream's own rate.
    judge(case, t.frames, t.samples, size, audio)
}

fn check_ffmpeg(case: &Case, form: Form) -> Result<String, String> {
    let (ext, codec, why) = match case.ffmpeg {
        Ffmpeg::Works { ext, codec } => (ext, codec, None),
        Ffmpeg::Limited { ext, codec, why } => (ext, codec, Some(why)),
    };
    let dir = peers::temp_dir(&format!("matrix-{}-{:?}", case.id, form));
    let mut ff = peers::FfmpegListener::start(&dir, "/matrix", &format!("out.{ext}"), &[]);
    let measured = (|| {
        push(case, form, &ff.url(), true)?;
        let st = ff.child.wait_exit(Duration::from_secs(20));
        if !st.is_some_and(|s| s.success()) {
            // ffmpeg's last log line says why.
            let log = ff.log_text();
            let why = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let st = st.map_or("no exit".to_owned(), |s| s.to_string());
            return Err(format!("ffmpeg ended ({st}): {why}"));
        }
        let streams = peers::ffprobe(&ff.out);
        let decoded = peers::ffprobe_decoded(&ff.out);
        println!(
            "{} {} ffmpeg: {streams:?} decoded (frames, samples) {decoded:?}",
            case.id,
            form.label()
        );
        let s = streams.first().ok_or("ffprobe found no stream")?;
        if s.codec != codec {
            return Err(format!("ffprobe codec {:?}, expected {codec:?}", s.codec));
        }
        let (frames, samples) = decoded.first().copied().unwrap_or((0, 0));
        let size = s.width.zip(s.height);
        let audio = s.sample_rate.zip(s.channels);
        judge(case, frames, samples, size, audio)
    })();
    // Read before the directory holding it goes.
    let log = ff.log_text();
    let _ = std::fs::remove_dir_all(&dir);
    match (measured, why) {
        (Ok(cell), _) => Ok(cell),
        (Err(e), None) => Err(format!("{e}\nffmpeg log:\n{log}")),
        // A known receiver limit: the measurement and the reason are the cell.
        (Err(e), Some(why)) => Ok(format!("not received: {} ({why})", first_line(&e))),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn missing_elements(case: &Case) -> Vec<String> {
    let mut names = case.elements_needed();
    names.extend(case.kind.elements().iter().map(|s| s.to_string()));
    names.retain(|n| gst::ElementFactory::find(n).is_none());
    names
}

/// Whether this build's `rtspannounce` takes the encoder's output on its request pads.
fn accepts_encoded(case: &Case) -> bool {
    harness::init();
    let factory = gst::ElementFactory::find("rtspannounce").expect("rtspannounce registered");
    let caps = gst::Caps::from_str(case.encoded_caps).expect("encoded caps");
    factory
        .static_pad_templates()
        .iter()
        .filter(|t| t.direction() == gst::PadDirection::Sink)
        .any(|t| t.caps().can_intersect(&caps))
}

fn run_case(id: &str, form: Form) {
    harness::init();
    let idx = CASES.iter().position(|c| c.id == id).expect("case id");
    let case = &CASES[idx];
    let mut row = Row {
        codec: case.codec.to_owned(),
        elements: case.elements_label(form),
        form,
        sdp: String::new(),
        gst: String::new(),
        ffmpeg: String::new(),
    };
    let mut failures = Vec::new();

    let missing = missing_elements(case);
    if !missing.is_empty() {
        row.sdp = format!(
            "not available: no `{}` in GStreamer {}",
            missing.join("`, `"),
            gst_version()
        );
        row.gst = "not run (elements missing)".into();
        row.ffmpeg = "not run (elements missing)".into();
    } else if let (Form::Encoded, Some(other)) = (form, case.encoded_as) {
        let other = CASES.iter().find(|c| c.id == other).expect("encoded_as");
        row.sdp = format!(
            "see the {} row: same encoder output, for which the element picks one payloader",
            other.codec
        );
        row.gst = "see that row".into();
        row.ffmpeg = "see that row".into();
    } else if form == Form::Encoded && !accepts_encoded(case) {
        row.sdp = format!(
            "not available in this build (sink pads take no `{}`)",
            case.encoded_caps
        );
        row.gst = "not run (encoded input not in this build)".into();
        row.ffmpeg = "not run (encoded input not in this build)".into();
    } else {
        let mut cell = |name: &str, r: Result<String, String>| match r {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                format!("FAILED: {}", first_line(&e))
            }
        };
        row.sdp = cell("SDP", check_sdp(case, form));
        row.gst = cell("gst-rtsp-server", check_gst_rtsp_server(case, form));
        row.ffmpeg = cell("ffmpeg", check_ffmpeg(case, form));
    }
    println!(
        "| {} | {} | {} | {} | {} | {} |",
        row.codec,
        row.elements,
        form.label(),
        row.sdp,
        row.gst,
        row.ffmpeg
    );
    ROWS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((idx, form), row);
    write_table();
    assert!(
        failures.is_empty(),
        "{id} ({}):\n{}",
        form.label(),
        failures.join("\n")
    );
}

macro_rules! matrix {
    ($($name:ident => $id:literal,)*) => {
        mod payloaded {
            $(#[test] fn $name() { super::run_case($id, super::Form::Payloaded) })*
        }
        mod encoded {
            $(#[test] fn $name() { super::run_case($id, super::Form::Encoded) })*
        }
        #[test]
        fn every_case_has_a_test() {
            let ids = [$($id),*];
            for c in CASES {
                assert!(ids.contains(&c.id), "no test for case {}", c.id);
            }
            assert_eq!(ids.len(), CASES.len());
        }
    };
}

matrix! {
    h264 => "h264",
    h265 => "h265",
    vp8 => "vp8",
    vp9 => "vp9",
    av1 => "av1",
    mjpeg => "jpeg",
    aac => "aac",
    aac_latm => "aac-latm",
    opus => "opus",
    pcmu => "pcmu",
    pcma => "pcma",
    l16 => "l16",
    l24 => "l24",
    g722 => "g722",
    amr_nb => "amr-nb",
    mp3 => "mpa",
    speex => "speex",
    ac3 => "ac3",
    vorbis => "vorbis",
    klv => "klv",
}

#[test]
fn first_media_parses_rtpmap_and_fmtp() {
    let sdp = "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
               a=fmtp:96 packetization-mode=1;sprop-parameter-sets=Z0I=,aM4=\r\n\
               m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let (pt, rtpmap, fmtp) = first_media(sdp).unwrap();
    assert_eq!((pt, rtpmap.as_str()), (96, "H264/90000"));
    assert_eq!(fmtp, ["packetization-mode", "sprop-parameter-sets"]);
    assert!(first_media("v=0\r\nm=audio 0 RTP/AVP 8\r\n").is_err());
}
