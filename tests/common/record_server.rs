//! An in-process RTSP server in RECORD mode, built on gst-rtsp-server.
//!
//! A pusher (our `rtspannounce`, `rtspclientsink`, ffmpeg...) ANNOUNCEs, SETUPs and RECORDs
//! to `rtsp://127.0.0.1:PORT/mount`; every ANNOUNCE creates a new media (one "session" here)
//! whose pipeline depayloads, parses, *decodes* every track (so a report proves the stream is
//! decodable, not only that packets arrived) and optionally writes an MP4 or MKV file.
//!
//! Used by the integration tests (`#[path = "common/record_server.rs"] mod record_server;`)
//! and by `examples/record-server.rs`. It depends on nothing else in `tests/common`.
//!
//! A session is *finished* when its media pipeline got EOS and was shut down (so the file is
//! complete) and its client sent TEARDOWN or disconnected; [`RecordServer::wait_finished`]
//! returns each finished session once, in order.
//!
//! Facts about gst-rtsp-server's record mode (1.22) this relies on:
//! - the factory launch line names its depayloaders `depay0`, `depay1`, ...; an ANNOUNCE whose
//!   SDP has a different number of `m=` lines is refused (the media is dropped unprepared,
//!   which the report names), and `m=` line N feeds `depayN` whatever its codec: a pusher
//!   that announces audio first gets a not-negotiated pipeline, which the report names too;
//! - with `eos-shutdown` the media sends EOS into its pipeline when it is unprepared (client
//!   TEARDOWN, or disconnect since `stop-on-disconnect` is on by default), waits for the EOS
//!   message and only then goes to NULL and emits `unprepared`: at that point mp4mux has
//!   written its `moov` and filesink has closed the file;
//! - the media's rtpbin stamps packets by arrival time by default (`buffer-mode=slave`), which
//!   distorts the recorded timeline when the machine is loaded: we switch it to `none`, so
//!   PTS come from the RTP timestamps and durations are exact (5.000 s for 150 frames at 30/s);
//! - the media thread runs the pipeline; our pad probes count in the streaming threads; the
//!   RTSP methods are logged from the client's `pre-*-request` signals (the post signals
//!   fire after TEARDOWN has already unprepared the media).

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use gst::glib;
use gst::prelude::*;
use gst_rtsp_server::gio;
use gst_rtsp_server::gst_rtsp;
use gst_rtsp_server::prelude::*;

/// Which tracks the pusher announces, in `m=` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracks {
    /// One H.264 video track (`RTP/AVP` H264).
    H264,
    /// H.264 video (stream 0) + AAC audio (stream 1). AAC may come as MPEG4-GENERIC or
    /// MP4A-LATM: the audio depayloader is picked from the announced caps.
    H264Aac,
    /// One AAC audio track.
    Aac,
    /// H.264 video (stream 0) + Opus audio (stream 1).
    H264Opus,
    /// H.264 video (stream 0) + KLV metadata (stream 1, SMPTE336M).
    H264Klv,
    /// One track of any codec the server can receive (the codec matrix).
    Single(TrackKind),
}

impl Tracks {
    /// Parses `h264`, `h264+aac`, `aac`, `h264+opus`, `h264+klv`, or any single codec that
    /// [`TrackKind::parse`] knows (`h265`, `vp8`, `pcmu`...), case-insensitive.
    pub fn parse(s: &str) -> Option<Tracks> {
        match s.to_ascii_lowercase().as_str() {
            "h264" => Some(Tracks::H264),
            "h264+aac" => Some(Tracks::H264Aac),
            "aac" => Some(Tracks::Aac),
            "h264+opus" => Some(Tracks::H264Opus),
            "h264+klv" => Some(Tracks::H264Klv),
            other => TrackKind::parse(other).map(Tracks::Single),
        }
    }

    fn kinds(self) -> Vec<TrackKind> {
        match self {
            Tracks::H264 => vec![TrackKind::H264],
            Tracks::H264Aac => vec![TrackKind::H264, TrackKind::Aac],
            Tracks::Aac => vec![TrackKind::Aac],
            Tracks::H264Opus => vec![TrackKind::H264, TrackKind::Opus],
            Tracks::H264Klv => vec![TrackKind::H264, TrackKind::Klv],
            Tracks::Single(k) => vec![k],
        }
    }
}

/// A codec the server can depayload, parse and decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackKind {
    H264,
    H265,
    Vp8,
    Vp9,
    Av1,
    Jpeg,
    Aac,
    Opus,
    Pcmu,
    Pcma,
    L16,
    L24,
    G722,
    AmrNb,
    Mpa,
    Speex,
    Ac3,
    Vorbis,
    /// SMPTE 336M KLV metadata: depayloaded, not decoded.
    Klv,
}

impl TrackKind {
    pub const ALL: &'static [TrackKind] = &[
        TrackKind::H264,
        TrackKind::H265,
        TrackKind::Vp8,
        TrackKind::Vp9,
        TrackKind::Av1,
        TrackKind::Jpeg,
        TrackKind::Aac,
        TrackKind::Opus,
        TrackKind::Pcmu,
        TrackKind::Pcma,
        TrackKind::L16,
        TrackKind::L24,
        TrackKind::G722,
        TrackKind::AmrNb,
        TrackKind::Mpa,
        TrackKind::Speex,
        TrackKind::Ac3,
        TrackKind::Vorbis,
        TrackKind::Klv,
    ];

    /// The lower-case id used on command lines (`h265`, `pcmu`, `amr-nb`...).
    pub fn id(self) -> &'static str {
        match self {
            TrackKind::H264 => "h264",
            TrackKind::H265 => "h265",
            TrackKind::Vp8 => "vp8",
            TrackKind::Vp9 => "vp9",
            TrackKind::Av1 => "av1",
            TrackKind::Jpeg => "jpeg",
            TrackKind::Aac => "aac",
            TrackKind::Opus => "opus",
            TrackKind::Pcmu => "pcmu",
            TrackKind::Pcma => "pcma",
            TrackKind::L16 => "l16",
            TrackKind::L24 => "l24",
            TrackKind::G722 => "g722",
            TrackKind::AmrNb => "amr-nb",
            TrackKind::Mpa => "mpa",
            TrackKind::Speex => "speex",
            TrackKind::Ac3 => "ac3",
            TrackKind::Vorbis => "vorbis",
            TrackKind::Klv => "klv",
        }
    }

    pub fn parse(s: &str) -> Option<TrackKind> {
        let s = s.to_ascii_lowercase();
        TrackKind::ALL.iter().copied().find(|k| k.id() == s)
    }

    /// Depayloader and parser. Codecs without a parser get an `identity` so the probes find
    /// the same names. For AAC, parsebin picks rtpmp4gdepay or rtpmp4adepay from the caps that
    /// gst-rtsp-server derived from the SDP.
    fn depay_parse(self) -> (&'static str, &'static str) {
        match self {
            TrackKind::H264 => ("rtph264depay", "h264parse"),
            TrackKind::H265 => ("rtph265depay", "h265parse"),
            TrackKind::Vp8 => ("rtpvp8depay", "identity"),
            TrackKind::Vp9 => ("rtpvp9depay", "vp9parse"),
            TrackKind::Av1 => ("rtpav1depay", "av1parse"),
            TrackKind::Jpeg => ("rtpjpegdepay", "jpegparse"),
            // aacparse after parsebin even if parsebin already has one: it interpolates the
            // PTS of the 2nd..nth AU when a pusher packs several AUs in one RTP packet (as
            // ffmpeg does), which mp4mux needs.
            TrackKind::Aac => ("parsebin", "aacparse"),
            TrackKind::Opus => ("rtpopusdepay", "opusparse"),
            TrackKind::Pcmu => ("rtppcmudepay", "identity"),
            TrackKind::Pcma => ("rtppcmadepay", "identity"),
            TrackKind::L16 => ("rtpL16depay", "identity"),
            TrackKind::L24 => ("rtpL24depay", "identity"),
            TrackKind::G722 => ("rtpg722depay", "identity"),
            TrackKind::AmrNb => ("rtpamrdepay", "identity"),
            TrackKind::Mpa => ("rtpmpadepay", "mpegaudioparse"),
            TrackKind::Speex => ("rtpspeexdepay", "identity"),
            TrackKind::Ac3 => ("rtpac3depay", "ac3parse"),
            TrackKind::Vorbis => ("rtpvorbisdepay", "vorbisparse"),
            TrackKind::Klv => ("rtpklvdepay", "identity"),
        }
    }

    /// `depayN ! parseN` of the launch line.
    fn depay_and_parse(self, i: usize) -> String {
        let (depay, parse) = self.depay_parse();
        format!("{depay} name=depay{i} ! {parse} name=parse{i}")
    }

    /// The `encoding-name`s (upper case) the SDP may announce for this codec.
    pub fn encoding_names(self) -> &'static [&'static str] {
        match self {
            TrackKind::H264 => &["H264"],
            TrackKind::H265 => &["H265"],
            TrackKind::Vp8 => &["VP8", "VP8-DRAFT-IETF-01"],
            TrackKind::Vp9 => &["VP9", "VP9-DRAFT-IETF-01"],
            TrackKind::Av1 => &["AV1"],
            TrackKind::Jpeg => &["JPEG"],
            TrackKind::Aac => &["MPEG4-GENERIC", "MP4A-LATM"],
            TrackKind::Opus => &["OPUS", "X-GST-OPUS-DRAFT-SPITTKA-00", "MULTIOPUS"],
            TrackKind::Pcmu => &["PCMU"],
            TrackKind::Pcma => &["PCMA"],
            TrackKind::L16 => &["L16"],
            TrackKind::L24 => &["L24"],
            TrackKind::G722 => &["G722"],
            TrackKind::AmrNb => &["AMR"],
            TrackKind::Mpa => &["MPA"],
            TrackKind::Speex => &["SPEEX"],
            TrackKind::Ac3 => &["AC3"],
            TrackKind::Vorbis => &["VORBIS"],
            TrackKind::Klv => &["SMPTE336M"],
        }
    }

    /// Display name; also what [`TrackReport::codec`] holds once the parser's caps are known.
    pub fn name(self) -> &'static str {
        match self {
            TrackKind::H264 => "H.264",
            TrackKind::H265 => "H.265",
            TrackKind::Vp8 => "VP8",
            TrackKind::Vp9 => "VP9",
            TrackKind::Av1 => "AV1",
            TrackKind::Jpeg => "JPEG",
            TrackKind::Aac => "AAC",
            TrackKind::Opus => "Opus",
            TrackKind::Pcmu => "G.711 mu-law",
            TrackKind::Pcma => "G.711 A-law",
            TrackKind::L16 => "L16",
            TrackKind::L24 => "L24",
            TrackKind::G722 => "G.722",
            TrackKind::AmrNb => "AMR-NB",
            TrackKind::Mpa => "MPEG audio",
            TrackKind::Speex => "Speex",
            TrackKind::Ac3 => "AC-3",
            TrackKind::Vorbis => "Vorbis",
            TrackKind::Klv => "KLV",
        }
    }

    /// The decode branch's first element. L16/L24 are PCM already: audioconvert only passes it on
    /// (the probe after it still counts samples).
    fn decoder(self) -> &'static str {
        match self {
            TrackKind::H264 => "avdec_h264",
            TrackKind::H265 => "avdec_h265",
            TrackKind::Vp8 => "vp8dec",
            TrackKind::Vp9 => "vp9dec",
            TrackKind::Av1 => "av1dec",
            TrackKind::Jpeg => "jpegdec",
            TrackKind::Aac => "avdec_aac",
            TrackKind::Opus => "opusdec",
            TrackKind::Pcmu => "mulawdec",
            TrackKind::Pcma => "alawdec",
            TrackKind::L16 | TrackKind::L24 => "audioconvert",
            TrackKind::G722 => "avdec_g722",
            TrackKind::AmrNb => "amrnbdec",
            TrackKind::Mpa => "mpg123audiodec",
            TrackKind::Speex => "speexdec",
            TrackKind::Ac3 => "avdec_ac3",
            TrackKind::Vorbis => "vorbisdec",
            // Metadata: nothing to decode; each depayloaded unit is counted as a frame.
            TrackKind::Klv => "identity",
        }
    }

    /// Every element the launch line needs for this track.
    pub fn elements(self) -> Vec<&'static str> {
        let (depay, parse) = self.depay_parse();
        let mut v = vec![depay, parse, self.decoder()];
        if self == TrackKind::Aac {
            v.extend_from_slice(&["rtpmp4gdepay", "rtpmp4adepay"]);
        }
        v
    }

    /// A metadata track (`m=application`): neither decoded nor muxed.
    pub fn is_metadata(self) -> bool {
        self == TrackKind::Klv
    }

    pub fn is_video(self) -> bool {
        matches!(
            self,
            TrackKind::H264
                | TrackKind::H265
                | TrackKind::Vp8
                | TrackKind::Vp9
                | TrackKind::Av1
                | TrackKind::Jpeg
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Container {
    Mp4,
    Mkv,
}

impl Container {
    fn from_path(p: &Path) -> Container {
        match p
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("mkv") | Some("mka") | Some("webm") => Container::Mkv,
            _ => Container::Mp4,
        }
    }

    fn muxer(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4mux",
            Container::Mkv => "matroskamux",
        }
    }
}

/// What the server expects and where it records.
#[derive(Clone, Debug)]
pub struct RecordServerConfig {
    /// Mount point, e.g. `/live/cam1`.
    pub mount: String,
    pub tracks: Tracks,
    /// Record to this file (`.mkv`/`.mka`/`.webm` → matroskamux, anything else → mp4mux).
    /// Session 1 writes exactly this path; session N ≥ 2 writes `STEM-N.EXT` beside it.
    pub output: Option<PathBuf>,
    /// Leave the media's rtpbin as gst-rtsp-server sets it up (`buffer-mode=slave`, lip-sync
    /// from RTCP sender reports) instead of deriving PTS from RTP timestamps alone.
    pub stock_rtpbin: bool,
    /// Require these credentials (gst-rtsp-server's RTSPAuth) with the given methods.
    pub auth: Option<(String, String, gst_rtsp::RTSPAuthMethod)>,
    /// Lower transports the factory accepts (default TCP and UDP); a SETUP asking for another
    /// gets 461 Unsupported Transport.
    pub protocols: gst_rtsp::RTSPLowerTrans,
    /// The session timeout the server announces (`Session: id;timeout=N`), default 60 s.
    pub session_timeout: Option<u32>,
    /// Serve RTSPS: certificate chain and private key in PEM (gst-rtsp-server does TLS on
    /// every connection once its RTSPAuth has a certificate).
    pub tls_pem: Option<String>,
    /// RTP profiles the factory accepts (default AVP alone); with SAVP gst-rtsp-server takes
    /// the MIKEY keys of the ANNOUNCE SDP and SETUP's KeyMgmt, and decrypts with srtpdec.
    pub profiles: gst_rtsp::RTSPProfile,
    /// With SAVP, as MediaMTX does: encrypt the SRTCP the server sends with a key of its own
    /// and give that key in a `KeyMgmt` header of every SETUP answer (gst-rtsp-server 1.22
    /// picks a random key and tells no one).
    pub answer_keymgmt: bool,
}

impl RecordServerConfig {
    /// Only `user`/`pass` may publish, authenticated by `methods` (Basic and/or Digest).
    pub fn with_auth(
        mut self,
        user: &str,
        pass: &str,
        methods: gst_rtsp::RTSPAuthMethod,
    ) -> RecordServerConfig {
        self.auth = Some((user.to_owned(), pass.to_owned(), methods));
        self
    }

    /// Accept only these lower transports.
    pub fn with_protocols(mut self, protocols: gst_rtsp::RTSPLowerTrans) -> RecordServerConfig {
        self.protocols = protocols;
        self
    }

    /// RTSPS with this certificate (chain, then key, in PEM).
    pub fn with_tls(mut self, pem: &str) -> RecordServerConfig {
        self.tls_pem = Some(pem.to_owned());
        self
    }

    /// Answer SETUP with the key of the server's own SRTCP (see `answer_keymgmt`).
    pub fn with_keymgmt_answer(mut self) -> RecordServerConfig {
        self.answer_keymgmt = true;
        self
    }

    /// Accept only these RTP profiles (SAVP: SRTP).
    pub fn with_profiles(mut self, profiles: gst_rtsp::RTSPProfile) -> RecordServerConfig {
        self.profiles = profiles;
        self
    }

    pub fn with_stock_rtpbin(mut self) -> RecordServerConfig {
        self.stock_rtpbin = true;
        self
    }

    pub fn new(mount: &str, tracks: Tracks) -> RecordServerConfig {
        RecordServerConfig {
            mount: mount.to_owned(),
            tracks,
            output: None,
            stock_rtpbin: false,
            auth: None,
            protocols: gst_rtsp::RTSPLowerTrans::TCP | gst_rtsp::RTSPLowerTrans::UDP,
            tls_pem: None,
            profiles: gst_rtsp::RTSPProfile::AVP,
            answer_keymgmt: false,
            session_timeout: None,
        }
    }

    /// Announce this session timeout, in seconds (a pusher's keep-alives must beat it).
    pub fn with_session_timeout(mut self, secs: u32) -> RecordServerConfig {
        self.session_timeout = Some(secs);
        self
    }

    pub fn with_output(mut self, output: impl Into<PathBuf>) -> RecordServerConfig {
        self.output = Some(output.into());
        self
    }
}

impl Default for RecordServerConfig {
    fn default() -> RecordServerConfig {
        RecordServerConfig::new("/live/cam1", Tracks::H264)
    }
}

/// What arrived on one track, measured after the decoder.
#[derive(Clone, Debug, Default)]
pub struct TrackReport {
    /// Index of the track (= stream index = `depayN`).
    pub index: usize,
    /// The codec this server expects on this track (`H.264`, `AAC`, `Opus`).
    pub expected: String,
    /// Caps after the parser, e.g. `video/x-h264, stream-format=avc, width=320, ...`.
    pub caps: String,
    /// Caps after the decoder, e.g. `video/x-raw, format=I420, width=320, ...`.
    pub decoded_caps: String,
    /// `H.264`, `AAC`, `Opus`, or the caps name if unknown.
    pub codec: String,
    /// RTP packets that reached the depayloader (after the jitterbuffer).
    pub packets: u64,
    /// The RTP caps the depayloader got: what the server made of the track's SDP (its `a=`
    /// lines become `a-<name>` fields).
    pub rtp_caps: String,
    /// Access units out of the parser: what the muxer and the decoder were fed.
    pub parsed: u64,
    /// Parsed audio AUs that came without a PTS and got one interpolated here (a pusher that
    /// packs several AUs per RTP packet).
    pub interpolated_pts: u64,
    /// Decoded video frames, or decoded audio buffers (one per AAC/Opus frame).
    pub frames: u64,
    /// Decoded audio samples per channel (0 for video).
    pub samples: u64,
    /// Bytes of the decoded buffers (for metadata: of the units depayloaded).
    pub bytes: u64,
    /// PTS of the first / last decoded buffer (running on the receiver's timeline).
    pub first_pts: Option<gst::ClockTime>,
    pub last_pts: Option<gst::ClockTime>,
    /// End of the last decoded buffer (PTS + duration).
    pub end_pts: Option<gst::ClockTime>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub rate: Option<i32>,
    pub channels: Option<i32>,
    /// EOS reached the end of the decode branch.
    pub eos: bool,
}

impl TrackReport {
    pub fn is_metadata(&self) -> bool {
        self.caps.starts_with("meta/")
            || TrackKind::ALL
                .iter()
                .any(|k| k.is_metadata() && k.name() == self.expected)
    }

    pub fn is_video(&self) -> bool {
        if self.caps.is_empty() && self.decoded_caps.is_empty() {
            return TrackKind::ALL
                .iter()
                .any(|k| k.is_video() && k.name() == self.expected);
        }
        ["video/", "image/"]
            .iter()
            .any(|p| self.caps.starts_with(p) || self.decoded_caps.starts_with(p))
    }

    /// `last_pts - first_pts` plus the last buffer's duration.
    pub fn duration(&self) -> Option<gst::ClockTime> {
        let first = self.first_pts?;
        let end = self.end_pts.or(self.last_pts)?;
        end.checked_sub(first)
    }
}

/// One recording session (one ANNOUNCE → media), or a snapshot of it.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// 1-based number of this session on the server (0 in a snapshot taken before any).
    pub session: u32,
    pub tracks: Vec<TrackReport>,
    /// The file written for this session, if recording was configured.
    pub output: Option<PathBuf>,
    /// From the earliest first PTS to the latest end over all tracks.
    pub duration: Option<gst::ClockTime>,
    /// Sessions (medias) created on the server so far.
    pub sessions: u32,
    /// RTSP methods the session's client sent (seen on arrival, whatever the answer), in
    /// order, e.g. OPTIONS, ANNOUNCE, SETUP, SETUP, RECORD, TEARDOWN.
    pub requests: Vec<String>,
    /// The media pipeline got EOS and was shut down (so the output file is finalised), and the
    /// client sent TEARDOWN or disconnected.
    pub finished: bool,
    /// Errors posted by the recording pipeline, or why the session never recorded.
    pub errors: Vec<String>,
}

impl Report {
    /// The requests the server saw, keep-alives (GET_PARAMETER) left out: one may fall in any
    /// push, so assertions on the sequence leave them aside.
    pub fn requests_but_keepalives(&self) -> Vec<&str> {
        self.requests
            .iter()
            .map(String::as_str)
            .filter(|m| *m != "GET_PARAMETER")
            .collect()
    }

    /// Total decoded frames over all video tracks.
    pub fn video_frames(&self) -> u64 {
        self.tracks
            .iter()
            .filter(|t| t.is_video())
            .map(|t| t.frames)
            .sum()
    }
}

fn fmt_time(t: Option<gst::ClockTime>) -> String {
    match t {
        Some(t) => format!("{:.3}s", t.nseconds() as f64 / 1e9),
        None => "-".to_owned(),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "session {} of {} ({}), duration {}, requests: {}",
            self.session,
            self.sessions,
            if self.finished { "finished" } else { "running" },
            fmt_time(self.duration),
            if self.requests.is_empty() {
                "-".to_owned()
            } else {
                self.requests.join(" ")
            }
        )?;
        if let Some(out) = &self.output {
            writeln!(f, "  output: {}", out.display())?;
        }
        for t in &self.tracks {
            let params = if t.is_metadata() {
                format!("metadata, {} bytes", t.bytes)
            } else if t.is_video() {
                format!(
                    "{}x{}",
                    t.width.map_or("?".into(), |v| v.to_string()),
                    t.height.map_or("?".into(), |v| v.to_string())
                )
            } else {
                format!(
                    "{} Hz, {} ch",
                    t.rate.map_or("?".into(), |v| v.to_string()),
                    t.channels.map_or("?".into(), |v| v.to_string())
                )
            };
            let samples = if t.is_video() || t.is_metadata() {
                String::new()
            } else if t.interpolated_pts > 0 {
                format!(
                    " ({} samples; {} AUs had no PTS)",
                    t.samples, t.interpolated_pts
                )
            } else {
                format!(" ({} samples)", t.samples)
            };
            writeln!(
                f,
                "  track {}: {} {}, {} RTP packets, {} parsed, {} decoded frames{}, pts {} .. {}, duration {}{}",
                t.index,
                if t.codec.is_empty() {
                    format!("(no caps; expected {})", t.expected)
                } else {
                    t.codec.clone()
                },
                params,
                t.packets,
                t.parsed,
                t.frames,
                samples,
                fmt_time(t.first_pts),
                fmt_time(t.last_pts),
                fmt_time(t.duration()),
                if t.eos { ", eos" } else { "" }
            )?;
            if !t.caps.is_empty() {
                writeln!(f, "    caps: {}", t.caps)?;
            }
        }
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state between the server's signal handlers, pad probes and the API.

#[derive(Default)]
struct ClientRec {
    client: glib::WeakRef<gst_rtsp_server::RTSPClient>,
    requests: Vec<String>,
    closed: bool,
}

impl ClientRec {
    fn done(&self) -> bool {
        self.closed || self.requests.iter().any(|r| r == "TEARDOWN")
    }
}

struct SessionRec {
    client: Option<usize>,
    tracks: Vec<TrackReport>,
    output: Option<PathBuf>,
    /// `unprepared` was emitted (or the media was destroyed).
    media_done: bool,
    reported: bool,
    prepared: bool,
    errors: Vec<String>,
}

#[derive(Default)]
struct State {
    clients: Vec<ClientRec>,
    sessions: Vec<SessionRec>,
}

impl State {
    fn finished(&self, idx: usize) -> bool {
        let s = &self.sessions[idx];
        s.media_done && s.client.is_none_or(|c| self.clients[c].done())
    }

    fn report(&self, idx: usize) -> Report {
        let s = &self.sessions[idx];
        let first = s.tracks.iter().filter_map(|t| t.first_pts).min();
        let end = s
            .tracks
            .iter()
            .filter_map(|t| t.end_pts.or(t.last_pts))
            .max();
        Report {
            session: idx as u32 + 1,
            tracks: s.tracks.clone(),
            output: s.output.clone(),
            duration: match (first, end) {
                (Some(a), Some(b)) => b.checked_sub(a),
                _ => None,
            },
            sessions: self.sessions.len() as u32,
            requests: s
                .client
                .map(|c| self.clients[c].requests.clone())
                .unwrap_or_default(),
            finished: self.finished(idx),
            errors: s.errors.clone(),
        }
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a probe must not hide the report: ignore poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// ---------------------------------------------------------------------------------------------

/// The running server. Stops (quits its main loop, closes clients, joins its thread) on
/// [`RecordServer::stop`] or drop.
pub struct RecordServer {
    shared: Arc<Shared>,
    server: gst_rtsp_server::RTSPServer,
    ctx: glib::MainContext,
    main_loop: glib::MainLoop,
    source: Option<glib::SourceId>,
    thread: Option<thread::JoinHandle<()>>,
    port: u16,
    mount: String,
    tls: bool,
}

fn launch_line(tracks: Tracks, container: Option<Container>) -> String {
    // Unbounded queues: the muxer may hold one branch while it waits for the other track.
    const Q: &str = "queue max-size-buffers=0 max-size-bytes=0 max-size-time=0";
    let mut s = String::from("( ");
    for (i, kind) in tracks.kinds().iter().enumerate() {
        s += &kind.depay_and_parse(i);
        let dec = kind.decoder();
        match container {
            Some(_) if kind.is_metadata() => {
                s += &format!(" ! {Q} ! {dec} ! fakesink name=sink{i} sync=false async=false ")
            }
            // Name the muxer pad: with parsebin's caps unknown at launch time, "mux." would
            // pick the first template (video_%u) for an audio branch.
            Some(_) => {
                let mux_pad = if kind.is_video() { "video" } else { "audio" };
                s += &format!(
                    " ! tee name=tee{i} tee{i}. ! {Q} ! mux.{mux_pad}_{i} tee{i}. ! {Q} ! {dec} ! fakesink name=sink{i} sync=false async=false "
                )
            }
            None => s += &format!(" ! {Q} ! {dec} ! fakesink name=sink{i} sync=false async=false "),
        }
    }
    if let Some(c) = container {
        s += &format!(
            "{} name=mux ! filesink name=filesink sync=false async=false ",
            c.muxer()
        );
    }
    s += ")";
    s
}

fn session_output(base: &Path, n: usize) -> PathBuf {
    if n <= 1 {
        return base.to_owned();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "record".into());
    let name = match base.extension() {
        Some(ext) => format!("{stem}-{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    base.with_file_name(name)
}

fn codec_name(s: &gst::StructureRef) -> String {
    match s.name().as_str() {
        "video/x-h264" => "H.264".into(),
        "video/x-h265" => "H.265".into(),
        "audio/mpeg" => match s.get::<i32>("mpegversion") {
            Ok(4) | Ok(2) => "AAC".into(),
            Ok(1) => "MPEG audio".into(),
            _ => "audio/mpeg".into(),
        },
        "audio/x-opus" => "Opus".into(),
        "video/x-vp8" => "VP8".into(),
        "video/x-vp9" => "VP9".into(),
        "video/x-av1" => "AV1".into(),
        "image/jpeg" => "JPEG".into(),
        "audio/x-mulaw" => "G.711 mu-law".into(),
        "audio/x-alaw" => "G.711 A-law".into(),
        // Only rtpL16depay / rtpL24depay give raw audio before the decode branch.
        "audio/x-raw" => match s.get::<&str>("format") {
            Ok("S24BE") => "L24".into(),
            _ => "L16".into(),
        },
        "audio/x-vorbis" => "Vorbis".into(),
        "audio/G722" => "G.722".into(),
        "audio/AMR" => "AMR-NB".into(),
        "audio/x-speex" => "Speex".into(),
        "audio/x-ac3" | "audio/ac3" => "AC-3".into(),
        "meta/x-klv" => "KLV".into(),
        other => other.into(),
    }
}

fn bytes_per_sample(format: &str) -> u64 {
    match format {
        f if f.starts_with("F64") => 8,
        f if f.starts_with("F32") || f.starts_with("S32") || f.starts_with("U32") => 4,
        f if f.starts_with("S24_32") || f.starts_with("U24_32") => 4,
        f if f.starts_with("S24") || f.starts_with("U24") => 3,
        f if f.starts_with("S16") || f.starts_with("U16") => 2,
        _ => 1,
    }
}

/// Fills width/height/rate/channels from caps (keeps values already known).
fn take_params(t: &mut TrackReport, s: &gst::StructureRef) {
    if let Ok(v) = s.get::<i32>("width") {
        t.width = Some(v);
    }
    if let Ok(v) = s.get::<i32>("height") {
        t.height = Some(v);
    }
    if let Ok(v) = s.get::<i32>("rate") {
        t.rate = Some(v);
    }
    if let Ok(v) = s.get::<i32>("channels") {
        t.channels = Some(v);
    }
}

/// Records the parsed caps seen on `pad` (CAPS events) into track `ti` of session `si`,
/// counts the parsed access units and (audio) fills in missing PTS.
fn probe_parsed(pad: &gst::Pad, shared: &Arc<Shared>, si: usize, ti: usize, interpolate: bool) {
    let shared = shared.clone();
    let next_pts = AtomicU64::new(u64::MAX);
    let rate = AtomicU64::new(0);
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            if let Some(gst::PadProbeData::Buffer(buf)) = &mut info.data {
                // Depayloaders stamp only the first of several AUs in one RTP packet (ffmpeg
                // packs AAC that way); muxers need every PTS: continue from the previous AU.
                let mut filled = false;
                let prev_end = next_pts.load(Ordering::Relaxed);
                if buf.pts().is_none() && interpolate && prev_end != u64::MAX {
                    let b = buf.make_mut();
                    b.set_pts(gst::ClockTime::from_nseconds(prev_end));
                    filled = true;
                }
                // aacparse in passthrough leaves durations unset: an AAC AU is 1024 samples.
                let rate = rate.load(Ordering::Relaxed);
                let dur = buf.duration().or_else(|| {
                    (rate > 0).then(|| gst::ClockTime::from_nseconds(1024 * 1_000_000_000 / rate))
                });
                if let (Some(pts), Some(dur)) = (buf.pts(), dur) {
                    next_pts.store((pts + dur).nseconds(), Ordering::Relaxed);
                } else {
                    next_pts.store(u64::MAX, Ordering::Relaxed);
                }
                let mut st = shared.lock();
                let t = &mut st.sessions[si].tracks[ti];
                t.parsed += 1;
                if filled {
                    t.interpolated_pts += 1;
                }
            }
            if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                if let gst::EventView::Caps(c) = ev.view() {
                    let caps = c.caps();
                    if let Some(s) = caps.structure(0) {
                        // AAC only: the interpolation assumes 1024-sample AUs.
                        if s.name() == "audio/mpeg"
                            && matches!(s.get::<i32>("mpegversion"), Ok(2) | Ok(4))
                        {
                            let r = s.get::<i32>("rate").unwrap_or(0).max(0) as u64;
                            rate.store(r, Ordering::Relaxed);
                        }
                        let mut st = shared.lock();
                        let t = &mut st.sessions[si].tracks[ti];
                        t.caps = caps.to_string();
                        t.codec = codec_name(s);
                        take_params(t, s);
                    }
                }
            }
            gst::PadProbeReturn::Ok
        },
    );
}

/// Counts decoded buffers arriving at the decode branch's fakesink.
fn probe_decoded(pad: &gst::Pad, shared: &Arc<Shared>, si: usize, ti: usize) {
    let shared = shared.clone();
    // Bytes per audio frame (all channels), from the decoded caps.
    let bpf = AtomicU64::new(0);
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            match &info.data {
                Some(gst::PadProbeData::Buffer(buf)) => {
                    let mut st = shared.lock();
                    let t = &mut st.sessions[si].tracks[ti];
                    t.frames += 1;
                    t.bytes += buf.size() as u64;
                    let bpf = bpf.load(Ordering::Relaxed);
                    // bpf is 0 until the decoder's caps are known.
                    t.samples += (buf.size() as u64).checked_div(bpf).unwrap_or(0);
                    if let Some(pts) = buf.pts() {
                        if t.first_pts.is_none() {
                            t.first_pts = Some(pts);
                        }
                        t.last_pts = Some(pts);
                        t.end_pts = Some(pts + buf.duration().unwrap_or(gst::ClockTime::ZERO));
                    }
                }
                Some(gst::PadProbeData::Event(ev)) => match ev.view() {
                    gst::EventView::Caps(c) => {
                        let caps = c.caps();
                        if let Some(s) = caps.structure(0) {
                            if s.name().starts_with("audio/") {
                                let bps =
                                    s.get::<&str>("format").map(bytes_per_sample).unwrap_or(0);
                                let ch = s.get::<i32>("channels").unwrap_or(1).max(1) as u64;
                                bpf.store(bps * ch, Ordering::Relaxed);
                            }
                            let mut st = shared.lock();
                            let t = &mut st.sessions[si].tracks[ti];
                            t.decoded_caps = caps.to_string();
                            // Parsed caps may lack width/height (or AAC's channels): fill gaps.
                            if t.width.is_none() && t.rate.is_none() {
                                take_params(t, s);
                            }
                        }
                    }
                    gst::EventView::Eos(_) => {
                        shared.lock().sessions[si].tracks[ti].eos = true;
                        shared.cond.notify_all();
                    }
                    _ => {}
                },
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
}

/// Counts RTP packets entering the depayloader, and checks their encoding-name.
fn probe_rtp(pad: &gst::Pad, shared: &Arc<Shared>, si: usize, ti: usize, kind: TrackKind) {
    let shared = shared.clone();
    pad.add_probe(
        gst::PadProbeType::BUFFER
            | gst::PadProbeType::BUFFER_LIST
            | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            match &info.data {
                Some(gst::PadProbeData::Buffer(_)) => {
                    shared.lock().sessions[si].tracks[ti].packets += 1;
                }
                Some(gst::PadProbeData::BufferList(l)) => {
                    shared.lock().sessions[si].tracks[ti].packets += l.len() as u64;
                }
                Some(gst::PadProbeData::Event(ev)) => {
                    if let gst::EventView::Caps(c) = ev.view() {
                        shared.lock().sessions[si].tracks[ti].rtp_caps = c.caps().to_string();
                        let enc = c
                            .caps()
                            .structure(0)
                            .and_then(|s| s.get::<String>("encoding-name").ok())
                            .unwrap_or_default()
                            .to_ascii_uppercase();
                        if !kind.encoding_names().contains(&enc.as_str()) {
                            shared.lock().sessions[si].errors.push(format!(
                                "track {ti}: expected {} ({}) but the SDP's m= line {ti} announced \
                                 encoding-name={enc:?}: are the m= lines in the expected order?",
                                kind.name(),
                                kind.encoding_names().join("/"),
                            ));
                            shared.cond.notify_all();
                        }
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
}

fn configure_media(
    shared: &Arc<Shared>,
    tracks: Tracks,
    output: Option<&Path>,
    stock_rtpbin: bool,
    media: &gst_rtsp_server::RTSPMedia,
) {
    // Which client is doing the ANNOUNCE: the signal is emitted while it handles the request.
    let client =
        gst_rtsp_server::RTSPContext::with_current_context(|ctx| ctx.client().cloned()).flatten();

    let (si, out) = {
        let mut st = shared.lock();
        let client_idx = client.and_then(|c| {
            st.clients
                .iter()
                .position(|r| r.client.upgrade().as_ref() == Some(&c))
        });
        let si = st.sessions.len();
        let out = output.map(|o| session_output(o, si + 1));
        st.sessions.push(SessionRec {
            client: client_idx,
            tracks: tracks
                .kinds()
                .iter()
                .enumerate()
                .map(|(index, kind)| TrackReport {
                    index,
                    expected: kind.name().to_owned(),
                    ..Default::default()
                })
                .collect(),
            output: out.clone(),
            media_done: false,
            reported: false,
            prepared: false,
            errors: Vec::new(),
        });
        (si, out)
    };

    let record_error = {
        let shared = shared.clone();
        move |msg: String| {
            shared.lock().sessions[si].errors.push(msg);
            shared.cond.notify_all();
        }
    };

    let element = media.element();
    let Some(bin) = element.downcast_ref::<gst::Bin>() else {
        record_error("media element is not a bin".into());
        return;
    };

    // The media adds its rtpbin to this pipeline when it is prepared. Its default
    // buffer-mode "slave" stamps packets from their arrival time, so a loaded machine (or a
    // bursty pusher) squeezes or stretches the recorded timeline; "none" derives PTS from the
    // RTP timestamps only: the receiver reports the sender's timing.
    match bin.parent().and_then(|p| p.downcast::<gst::Bin>().ok()) {
        Some(_) if stock_rtpbin => {}
        Some(pipeline) => {
            pipeline.connect_element_added(|_, element| {
                if element.factory().is_some_and(|f| f.name() == "rtpbin") {
                    element.set_property_from_str("buffer-mode", "none");
                }
            });
        }
        None => record_error("media element has no parent pipeline".into()),
    }

    if let Some(out) = &out {
        match bin.by_name("filesink") {
            Some(sink) => sink.set_property("location", out.to_string_lossy().as_ref()),
            None => record_error("no filesink in the media pipeline".into()),
        }
    }

    for (ti, kind) in tracks.kinds().iter().enumerate() {
        match bin
            .by_name(&format!("depay{ti}"))
            .and_then(|p| p.static_pad("sink"))
        {
            Some(pad) => probe_rtp(&pad, shared, si, ti, *kind),
            None => record_error(format!("no depay{ti} sink pad")),
        }
        match bin
            .by_name(&format!("parse{ti}"))
            .and_then(|p| p.static_pad("src"))
        {
            Some(pad) => probe_parsed(&pad, shared, si, ti, !kind.is_video()),
            None => record_error(format!("no parse{ti} src pad")),
        }
        match bin
            .by_name(&format!("sink{ti}"))
            .and_then(|p| p.static_pad("sink"))
        {
            Some(pad) => probe_decoded(&pad, shared, si, ti),
            None => record_error(format!("no sink{ti} sink pad")),
        }
    }

    {
        let shared = shared.clone();
        media.connect_prepared(move |_| {
            shared.lock().sessions[si].prepared = true;
        });
    }
    {
        let shared = shared.clone();
        media.connect_unprepared(move |_| {
            shared.lock().sessions[si].media_done = true;
            shared.cond.notify_all();
        });
    }
    {
        let record_error = record_error.clone();
        media.connect_handle_message(Some("error"), move |_, msg| {
            if let gst::MessageView::Error(e) = msg.view() {
                let src = msg
                    .src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_default();
                let dbg = e.debug().map(|d| d.to_string()).unwrap_or_default();
                record_error(format!("{src}: {} ({dbg})", e.error()));
            }
            // The class handler runs after us and decides the return value.
            true
        });
    }
    {
        // A media dropped without being unprepared never recorded: typically the ANNOUNCE
        // was refused (m= count differs from the depayloaders, unknown caps...).
        let shared = shared.clone();
        let _ = media.add_weak_ref_notify(move || {
            let mut st = shared.lock();
            let s = &mut st.sessions[si];
            if !s.media_done {
                s.media_done = true;
                if !s.prepared {
                    s.errors.push(
                        "media destroyed before it was prepared: ANNOUNCE or SETUP refused? \
                         (the SDP must have one m= line per expected track, in order)"
                            .into(),
                    );
                }
            }
            drop(st);
            shared.cond.notify_all();
        });
    }
}

/// The media's srtpenc (its RTCP to the publisher) uses `key` instead of a random one.
fn use_srtcp_key(media: &gst_rtsp_server::RTSPMedia, key: &Arc<Vec<u8>>) {
    use gst_rtsp_server::prelude::*;
    for i in 0..media.n_streams() {
        let Some(stream) = media.stream(i) else {
            continue;
        };
        let set = {
            let key = key.clone();
            move |_: &gst_rtsp_server::RTSPStream, enc: &gst::Element| {
                enc.set_property("random-key", false);
                enc.set_property("key", gst::Buffer::from_slice(key.to_vec()));
            }
        };
        stream.connect_new_rtcp_encoder(set.clone());
        stream.connect_new_rtp_encoder(set);
    }
}

/// The MIKEY message (base64) for `key`: AES-CM-128, HMAC-SHA1-80, one crypto session.
pub fn mikey_base64(key: &[u8]) -> String {
    use gst::glib::translate::{from_glib_full, ToGlibPtr};
    let caps = gst::Caps::builder("application/x-srtp")
        .field("srtp-key", gst::Buffer::from_slice(key.to_vec()))
        .field("srtp-cipher", "aes-128-icm")
        .field("srtp-auth", "hmac-sha1-80")
        .field("srtcp-cipher", "aes-128-icm")
        .field("srtcp-auth", "hmac-sha1-80")
        .build();
    unsafe {
        let msg = gst_sdp_sys::gst_mikey_message_new_from_caps(caps.to_glib_none().0);
        assert!(!msg.is_null(), "MIKEY from caps");
        gst_sdp_sys::gst_mikey_message_add_cs_srtp(msg, 0, 0, 0);
        let text: glib::GString = from_glib_full(gst_sdp_sys::gst_mikey_message_base64_encode(msg));
        gst::ffi::gst_mini_object_unref(msg as *mut gst::ffi::GstMiniObject);
        text.to_string()
    }
}

/// Adds `KeyMgmt` with the server's SRTCP key to every SETUP answer (the answers that carry
/// a Transport header), before gst-rtsp-server sends it.
fn answer_keymgmt(client: &gst_rtsp_server::RTSPClient, key: Arc<Vec<u8>>) {
    let header = format!("prot=mikey; data=\"{}\"", mikey_base64(&key));
    client.connect("send-message", false, move |args| {
        let msg = args[2].get::<glib::Pointer>().ok()? as *mut gst_rtsp_sys::GstRTSPMessage;
        if msg.is_null() {
            return None;
        }
        unsafe {
            if gst_rtsp_sys::gst_rtsp_message_get_type(msg)
                != gst_rtsp_sys::GST_RTSP_MESSAGE_RESPONSE
            {
                return None;
            }
            let mut value = std::ptr::null_mut();
            let transport = gst_rtsp_sys::gst_rtsp_message_get_header(
                msg,
                gst_rtsp_sys::GST_RTSP_HDR_TRANSPORT,
                &mut value,
                0,
            );
            if transport == gst_rtsp_sys::GST_RTSP_OK {
                let name = std::ffi::CString::new("KeyMgmt").unwrap();
                let v = std::ffi::CString::new(header.as_str()).unwrap();
                gst_rtsp_sys::gst_rtsp_message_add_header_by_name(msg, name.as_ptr(), v.as_ptr());
            }
        }
        None
    });
}

fn watch_client(shared: &Arc<Shared>, client: &gst_rtsp_server::RTSPClient) {
    let ci = {
        let mut st = shared.lock();
        st.clients.push(ClientRec {
            client: client.downgrade(),
            requests: Vec::new(),
            closed: false,
        });
        st.clients.len() - 1
    };
    {
        let shared = shared.clone();
        client.connect_closed(move |_| {
            shared.lock().clients[ci].closed = true;
            shared.cond.notify_all();
        });
    }
    // The pre-* signals fire when a request arrives, before it is handled, so TEARDOWN is
    // logged before the media is unprepared (the post signals would race with that).
    let log = |method: &'static str| {
        let shared = shared.clone();
        move |_: &gst_rtsp_server::RTSPClient, _: &gst_rtsp_server::RTSPContext| {
            shared.lock().clients[ci].requests.push(method.to_owned());
            shared.cond.notify_all();
            gst_rtsp::RTSPStatusCode::Ok
        }
    };
    client.connect_pre_options_request(log("OPTIONS"));
    client.connect_pre_describe_request(log("DESCRIBE"));
    client.connect_pre_announce_request(log("ANNOUNCE"));
    client.connect_pre_setup_request(log("SETUP"));
    client.connect_pre_play_request(log("PLAY"));
    client.connect_pre_pause_request(log("PAUSE"));
    client.connect_pre_record_request(log("RECORD"));
    client.connect_pre_teardown_request(log("TEARDOWN"));
    client.connect_pre_get_parameter_request(log("GET_PARAMETER"));
    client.connect_pre_set_parameter_request(log("SET_PARAMETER"));
}

impl RecordServer {
    /// Starts listening on 127.0.0.1 (OS-chosen port) and returns once the socket is bound.
    pub fn start(cfg: RecordServerConfig) -> anyhow::Result<RecordServer> {
        RecordServer::start_on_port(cfg, 0)
    }

    /// As [`RecordServer::start`], on a given port (0: the OS picks one).
    pub fn start_on_port(cfg: RecordServerConfig, port: u16) -> anyhow::Result<RecordServer> {
        // Criticals abort the test, as under G_DEBUG=fatal-criticals.
        gst::glib::log_set_always_fatal(
            gst::glib::LogLevels::LEVEL_CRITICAL | gst::glib::LogLevels::LEVEL_ERROR,
        );
        gst::init().context("gst::init")?;

        let container = cfg.output.as_deref().map(Container::from_path);
        let mut needed: Vec<&str> = vec!["fakesink", "queue", "rtpbin"];
        for k in cfg.tracks.kinds() {
            needed.extend(k.elements());
        }
        if let Some(c) = container {
            needed.extend_from_slice(&["tee", c.muxer(), "filesink"]);
        }
        let missing: Vec<&str> = needed
            .into_iter()
            .filter(|n| gst::ElementFactory::find(n).is_none())
            .collect();
        if !missing.is_empty() {
            bail!(
                "GStreamer elements missing for the record server: {} \
                 (install gstreamer1.0-plugins-good/-bad/-base and gstreamer1.0-libav)",
                missing.join(", ")
            );
        }
        if !cfg.mount.starts_with('/') {
            bail!("mount must start with '/': {:?}", cfg.mount);
        }
        if let Some(parent) = cfg.output.as_deref().and_then(Path::parent) {
            if !parent.as_os_str().is_empty() && !parent.is_dir() {
                bail!("output directory {} does not exist", parent.display());
            }
        }

        let shared = Arc::new(Shared::default());
        // One key for all the SRTCP this server sends (AES_CM_128_HMAC_SHA1_80: 30 bytes).
        let srtcp_key: Option<Arc<Vec<u8>>> = cfg
            .answer_keymgmt
            .then(|| Arc::new((0..30).map(|_| rand::random::<u8>()).collect()));
        let ctx = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&ctx), false);

        let server = gst_rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&port.to_string());

        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(&launch_line(cfg.tracks, container));
        factory.set_transport_mode(gst_rtsp_server::RTSPTransportMode::RECORD);
        // One media per ANNOUNCE: never shared, never reused.
        factory.set_shared(false);
        // Unprepare (TEARDOWN / disconnect) pushes EOS first so the muxer finalises the file.
        factory.set_eos_shutdown(true);
        factory.set_stop_on_disconnect(true);
        factory.set_protocols(cfg.protocols);
        factory.set_profiles(cfg.profiles);
        let publisher_role = || {
            gst::Structure::builder("publisher")
                .field(gst_rtsp_server::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                .field(gst_rtsp_server::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                .build()
        };
        if let (Some(pem), None) = (&cfg.tls_pem, &cfg.auth) {
            // TLS without credentials: anonymous clients get the publisher role.
            let auth = gst_rtsp_server::RTSPAuth::new();
            let cert = gio::TlsCertificate::from_pem(pem).context("server TLS certificate")?;
            auth.set_tls_certificate(Some(&cert));
            let mut token = gst_rtsp_server::RTSPToken::builder()
                .field(gst_rtsp_server::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "publisher")
                .build();
            auth.set_default_token(Some(&mut token));
            server.set_auth(Some(&auth));
            factory.add_role_from_structure(&publisher_role());
        }
        if let Some((user, pass, methods)) = &cfg.auth {
            let auth = gst_rtsp_server::RTSPAuth::new();
            if let Some(pem) = &cfg.tls_pem {
                let cert = gio::TlsCertificate::from_pem(pem).context("server TLS certificate")?;
                auth.set_tls_certificate(Some(&cert));
            }
            auth.set_supported_methods(*methods);
            let token = gst_rtsp_server::RTSPToken::builder()
                .field(gst_rtsp_server::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "publisher")
                .build();
            auth.add_basic(
                gst_rtsp_server::RTSPAuth::make_basic(user, pass).as_str(),
                &token,
            );
            auth.add_digest(user, pass, &token);
            server.set_auth(Some(&auth));
            factory.add_role_from_structure(&publisher_role());
        }
        {
            let shared = shared.clone();
            let tracks = cfg.tracks;
            let output = cfg.output.clone();
            let stock_rtpbin = cfg.stock_rtpbin;
            let srtcp_key = srtcp_key.clone();
            factory.connect_media_configure(move |_, media| {
                configure_media(&shared, tracks, output.as_deref(), stock_rtpbin, media);
                if let Some(key) = &srtcp_key {
                    use_srtcp_key(media, key);
                }
            });
        }

        let mounts = server
            .mount_points()
            .ok_or_else(|| anyhow!("RTSP server has no mount points"))?;
        mounts.add_factory(&cfg.mount, factory);

        {
            let shared = shared.clone();
            let srtcp_key = srtcp_key.clone();
            let timeout = cfg.session_timeout;
            server.connect_client_connected(move |_, client| {
                watch_client(&shared, client);
                if let Some(key) = &srtcp_key {
                    answer_keymgmt(client, key.clone());
                }
                if let Some(t) = timeout {
                    client.connect_new_session(move |_, session| session.set_timeout(t));
                }
            });
        }

        let source = server.attach(Some(&ctx)).with_context(|| {
            format!("could not listen on 127.0.0.1:{port} (RTSP server attach)")
        })?;
        let port = server.bound_port();
        let port = u16::try_from(port).map_err(|_| anyhow!("bad bound port {port}"))?;

        let thread = {
            let ctx = ctx.clone();
            let main_loop = main_loop.clone();
            thread::Builder::new()
                .name("record-server".into())
                .spawn(move || {
                    ctx.with_thread_default(|| main_loop.run())
                        .expect("record server main context is owned by another thread");
                })
                .context("spawn record server thread")?
        };

        Ok(RecordServer {
            shared,
            server,
            ctx,
            main_loop,
            source: Some(source),
            thread: Some(thread),
            port,
            mount: cfg.mount,
            tls: cfg.tls_pem.is_some(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        self.url_for_host("127.0.0.1")
    }

    /// The URL with another name for this machine (`localhost`), e.g. to test host names.
    pub fn url_for_host(&self, host: &str) -> String {
        let scheme = if self.tls { "rtsps" } else { "rtsp" };
        format!("{scheme}://{host}:{}{}", self.port, self.mount)
    }

    /// Waits for the next session (lowest-numbered one not yet returned) to finish: its
    /// media was unprepared after TEARDOWN or disconnect, EOS went through the pipeline and
    /// the output file is closed. Each finished session is returned once.
    pub fn wait_finished(&self, timeout: Duration) -> anyhow::Result<Report> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(i) =
                (0..st.sessions.len()).find(|&i| !st.sessions[i].reported && st.finished(i))
            {
                st.sessions[i].reported = true;
                let report = st.report(i);
                if !report.errors.is_empty() && report.tracks.iter().all(|t| t.frames == 0) {
                    bail!("recording session failed:\n{report}");
                }
                return Ok(report);
            }
            let now = Instant::now();
            if now >= deadline {
                let snapshot = st
                    .sessions
                    .iter()
                    .position(|s| !s.reported)
                    .map(|i| st.report(i).to_string())
                    .unwrap_or_else(|| {
                        format!(
                            "no new session (sessions so far: {}, clients connected: {})",
                            st.sessions.len(),
                            st.clients.len()
                        )
                    });
                bail!(
                    "timed out after {:?} waiting for a recording session on {} to finish; so far:\n{}",
                    timeout,
                    self.url(),
                    snapshot
                );
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Snapshot of the latest session (an empty report if none started yet).
    pub fn stats(&self) -> Report {
        let st = self.shared.lock();
        match st.sessions.len() {
            0 => Report::default(),
            n => st.report(n - 1),
        }
    }

    /// Stops the server: closes client connections, quits the main loop, joins its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let server = self.server.clone();
        let ctx = self.ctx.clone();
        let source = self.source.take();
        let main_loop = self.main_loop.clone();
        // Run the teardown in the server's own context, then quit its loop.
        self.ctx.invoke(move || {
            if let Some(id) = source {
                if let Some(src) = ctx.find_source_by_id(&id) {
                    src.destroy();
                }
            }
            server.client_filter(Some(&mut |_, _| gst_rtsp_server::RTSPFilterResult::Remove));
            main_loop.quit();
        });
        let _ = thread.join();
    }
}

impl Drop for RecordServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
