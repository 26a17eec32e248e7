//! One publishing session as the streaming threads see it: which tracks have caps and data, the
//! handshake in flight, the recording connection, and the waits that tie them together.
//!
//! Streaming threads (one per sink pad) call into [`Shared`]; the handshake and the teardown run
//! as tasks on the shared I/O runtime. Every blocking wait here ends on stop, flush or failure.

use super::sender::{FrameEvents, NtpMapper, NtpSource, Room, TrackSender, TrackSetup};
use crate::net::connection::{Control, SessionError, Streaming, TeardownError};
use crate::net::queue::{OutFrame, QueueError, SendQueue};
use crate::net::tls::TlsOptions;
use crate::net::udp::{UdpError, UdpSession, UdpTrack};
use crate::net::RUNTIME;
use crate::rtsp::auth::Credentials;
use crate::rtsp::handshake::{Handshake, HandshakeError, Negotiated, RequestContext};
use crate::rtsp::headers::Lower;
use crate::rtsp::message::{Limits, Parser};
use crate::rtsp::url::{ControlStyle, RtspUrl};
use crate::sdp;
use crate::CAT;
use gst::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// What a session needs from the element's settings, fixed when it starts.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub url: RtspUrl,
    pub creds: Option<crate::rtsp::auth::Credentials>,
    pub user_agent: String,
    pub tcp_timeout: Duration,
    pub style: ControlStyle,
    pub announce_timeout: Duration,
    pub keepalive: bool,
    pub ntp_source: NtpSource,
    pub rtcp_interval: Duration,
    /// Reconnect attempts after a loss: -1 for ever, 0 never.
    pub retry_max: i32,
    pub retry_delay_min: Duration,
    pub retry_delay_max: Duration,
    /// Congestion policy: drop (whole frames, video up to a keyframe) instead of blocking.
    pub drop_when_congested: bool,
    pub reannounce_on_caps_change: bool,
    pub max_queue_bytes: usize,
    /// With the drop policy, the longest a packet may wait in the queue (zero: no bound).
    pub max_queue_time: Duration,
    /// Transports to offer, in order of preference (never empty).
    pub transports: Vec<Lower>,
    /// RTSP over TLS for every connection of the session: `rtsps://`, or `protocols` with the
    /// `tls` flag (a redirect to an `rtsps://` URL turns it on for that hop too).
    pub tls: bool,
    pub tls_options: TlsOptions,
    /// Local UDP ports to bind from (`port-range`), else OS-chosen.
    pub port_range: Option<(u16, u16)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Collecting every track's caps and first buffer.
    Waiting,
    /// Connect, ANNOUNCE, SETUP, RECORD in flight.
    Connecting,
    Recording,
    /// The connection was lost: media is dropped while a task reconnects.
    Reconnecting,
    /// Every pad had EOS: the queue drains, then TEARDOWN.
    Finishing,
    Done,
    Failed,
    Stopped,
}

/// Over UDP, how long the last packets get before the BYE goes out on the RTCP socket.
const UDP_BYE_DELAY: Duration = Duration::from_millis(100);

/// Buffers a track may hold back while its payloader has not yet put the parameter sets in its
/// caps (rtph264pay learns SPS/PPS from the stream); after that we announce without them.
const MAX_HELD_FOR_PARAMS: usize = 300;

/// A track's identity for its pad: stable while other pads are requested and released.
pub type TrackId = u64;

pub struct Track {
    id: TrackId,
    pub pad_name: String,
    caps: Option<gst::Caps>,
    has_buffer: bool,
    /// Buffers (with running times) that arrived before RECORD's answer, sent first once it
    /// comes.
    held: Vec<(gst::Buffer, Option<u64>)>,
    eos: bool,
    /// Set once recording: channel, payload type rewrite, counters.
    tx: Option<Arc<TrackSender>>,
    /// The sink pad, to ask upstream for a keyframe after a reconnect.
    pad: Option<gst::glib::WeakRef<gst::Pad>>,
    is_video: bool,
    /// Flush-start on this track's pad, until flush-stop: its waits return at once. Flushing is
    /// per pad; the other tracks go on.
    flushing: Arc<AtomicBool>,
}

impl Track {
    fn new(id: TrackId, pad_name: String) -> Self {
        Track {
            id,
            pad_name,
            caps: None,
            has_buffer: false,
            held: Vec::new(),
            eos: false,
            tx: None,
            pad: None,
            is_video: false,
            flushing: Arc::default(),
        }
    }

    /// Caps and a first buffer are known, and (for H.264/H.265) the parameter sets, unless we have
    /// waited long enough for them.
    fn ready(&self) -> bool {
        match &self.caps {
            Some(c) if self.has_buffer => {
                !sdp::lacks_parameter_sets(c) || self.held.len() >= MAX_HELD_FOR_PARAMS
            }
            _ => false,
        }
    }
}

struct State {
    phase: Phase,
    /// In pad order. Tracks come and go only while Waiting; positions are stable after that.
    tracks: Vec<Track>,
    next_track_id: TrackId,
    first_data: Option<Instant>,
    /// PLAYING to PAUSED: a pad waiting for RECORD's answer returns (its buffer stays held), so
    /// the appsink can pause without waiting on the network.
    paused: bool,
    /// An error is being posted; set before `phase` becomes Failed.
    failing: bool,
    streaming: Option<Arc<Streaming>>,
    /// The media sockets when the connection records over UDP.
    udp: Option<Arc<UdpSession>>,
    task: Option<tokio::task::AbortHandle>,
    /// What the stats report about the connection.
    server: Option<String>,
    /// TLS version and cipher suite of the recording connection (None: plain).
    tls: Option<String>,
    session_id: Option<String>,
    handshake: Option<(Duration, u32)>,
    loss_warned: Option<Instant>,
    reconnects: u32,
    reannounces: u32,
    /// A loss reported while the connection was still being set up.
    pending_loss: Option<SessionError>,
    /// Which connection is current: failures reported late by an older one are ignored.
    connection: u64,
    /// Packets dropped while reconnecting (held-back delta frames are in the track counters).
    dropped_offline: u64,
}

pub struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    /// One queue per connection: a lost connection's queue stays failed, the next one is new.
    queue: Mutex<Arc<SendQueue>>,
    cfg: SessionConfig,
    element: gst::glib::WeakRef<gst::Element>,
    /// Built on the first TLS connection (reading the CA store), reused on reconnects.
    tls_config: Mutex<Option<Arc<rustls::ClientConfig>>>,
}

/// The result of an error in a pad thread: the flow return plus, for real errors, a message
/// the element posts.
pub enum PadError {
    Flushing,
    /// The session failed; its error is already on the bus.
    Failed,
    Error(gst::ErrorMessage),
}

fn resource_error(kind: gst::ResourceError, text: String) -> gst::ErrorMessage {
    gst::ErrorMessage::new(&kind, Some(&text), None, file!(), "rtspannounce", line!())
}

/// How many RTP packets `frames` holds (drops are counted per packet, not per buffer list).
fn rtp_packets(frames: &[OutFrame]) -> u64 {
    frames
        .iter()
        .filter(|f| matches!(f, OutFrame::Rtp { .. }))
        .count() as u64
}

/// The upstream event encoders answer with a keyframe (what
/// gst_video_event_new_upstream_force_key_unit builds: as soon as possible, with headers).
fn force_key_unit() -> gst::Event {
    gst::event::CustomUpstream::new(
        gst::Structure::builder("GstForceKeyUnit")
            .field("all-headers", true)
            .field("count", 0u32)
            .build(),
    )
}

/// A finished handshake: the connection, what was agreed, and where (after redirects).
/// What ANNOUNCE and SETUP say about the tracks.
struct Described {
    text: String,
    controls: Vec<String>,
    rewrites: Vec<Option<u8>>,
}

struct Recorded {
    duration: Duration,
    control: Control,
    negotiated: Negotiated,
    ctx: RequestContext,
    pt_rewrites: Vec<Option<u8>>,
    round_trips: u32,
    url: RtspUrl,
    udp: Option<Arc<UdpSession>>,
}

/// A Location header, absolute or relative to the URL that was redirected.
fn resolve_redirect(from: &RtspUrl, location: &str) -> Result<RtspUrl, String> {
    let base = url::Url::parse(&from.request_uri()).map_err(|e| e.to_string())?;
    let joined = base.join(location).map_err(|e| e.to_string())?;
    RtspUrl::parse(joined.as_str()).map_err(|e| e.0)
}

/// Half the session timeout, at most 10 s: servers that time out on silence (ZLMediaKit 15 s,
/// MediaMTX 10 s) see a request well within their limit even when no media flows.
pub fn keepalive_interval(session_timeout_s: u64) -> Duration {
    // The timeout is the server's number: `;timeout=99999999999999999` must not overflow.
    Duration::from_millis(session_timeout_s.saturating_mul(500).clamp(500, 10_000))
}

/// The GStreamer error for a session failure: what kind, and a message a user can act on.
pub fn error_message(url: &RtspUrl, err: &SessionError, streaming: bool) -> gst::ErrorMessage {
    let target = url.request_uri();
    let text = if streaming {
        format!("Publishing to {target} failed: {err}")
    } else {
        format!("Could not publish to {target}: {err}")
    };
    resource_error(error_kind(err, streaming), text)
}

fn error_kind(err: &SessionError, streaming: bool) -> gst::ResourceError {
    use crate::rtsp::handshake::HandshakeError;
    match err {
        SessionError::Resolve(_) => gst::ResourceError::NotFound,
        SessionError::Handshake(HandshakeError::AuthRequired { .. })
        | SessionError::Handshake(HandshakeError::AuthRefused { .. })
        | SessionError::Handshake(HandshakeError::Status { status: 401, .. })
        | SessionError::Handshake(HandshakeError::Status { status: 403, .. }) => {
            gst::ResourceError::NotAuthorized
        }
        SessionError::Handshake(HandshakeError::Status { status: 404, .. }) => {
            gst::ResourceError::NotFound
        }
        // The server could not prove who it is: as for a refused login, retrying will not help.
        SessionError::Certificate(_) => gst::ResourceError::NotAuthorized,
        // Not the server's doing: what we were given cannot be published as it is.
        SessionError::Local(_) => gst::ResourceError::Settings,
        _ if streaming => gst::ResourceError::Write,
        _ => gst::ResourceError::OpenWrite,
    }
}

impl Shared {
    pub fn new(cfg: SessionConfig, pad_names: Vec<String>, element: &gst::Element) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                phase: Phase::Waiting,
                next_track_id: pad_names.len() as TrackId,
                tracks: pad_names
                    .into_iter()
                    .enumerate()
                    .map(|(i, n)| Track::new(i as TrackId, n))
                    .collect(),
                first_data: None,
                paused: false,
                failing: false,
                streaming: None,
                udp: None,
                task: None,
                server: None,
                tls: None,
                session_id: None,
                handshake: None,
                loss_warned: None,
                reconnects: 0,
                reannounces: 0,
                pending_loss: None,
                connection: 0,
                dropped_offline: 0,
            }),
            cond: Condvar::new(),
            queue: Mutex::new(Arc::new(SendQueue::new(cfg.max_queue_bytes))),
            cfg,
            element: element.downgrade(),
            tls_config: Mutex::new(None),
        })
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, SessionError> {
        let mut slot = self.tls_config.lock().unwrap();
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = crate::net::tls::client_config(&self.cfg.tls_options).map_err(SessionError::Tls)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    fn queue(&self) -> Arc<SendQueue> {
        self.queue.lock().unwrap().clone()
    }

    /// Where track `id` is now (None: released).
    fn position(st: &State, id: TrackId) -> Option<usize> {
        st.tracks.iter().position(|t| t.id == id)
    }

    /// The track fed by the pad named `pad_name`.
    pub fn track_id(&self, pad_name: &str) -> Option<TrackId> {
        let st = self.state.lock().unwrap();
        st.tracks
            .iter()
            .find(|t| t.pad_name == pad_name)
            .map(|t| t.id)
    }

    /// The sink pad of a track, for upstream events.
    pub fn set_pad(&self, id: TrackId, pad: &gst::Pad) {
        let mut st = self.state.lock().unwrap();
        if let Some(i) = Self::position(&st, id) {
            st.tracks[i].pad = Some(pad.downgrade());
        }
    }

    pub fn phase(&self) -> Phase {
        self.state.lock().unwrap().phase
    }

    /// Adds a track for a pad requested after the session was created. Refused once the
    /// handshake has started: the server was told the stream list already.
    pub fn add_track(&self, pad_name: String) -> Result<TrackId, Phase> {
        let mut st = self.state.lock().unwrap();
        if st.phase != Phase::Waiting || st.tracks.iter().any(|t| t.has_buffer) {
            return Err(st.phase);
        }
        let id = st.next_track_id;
        st.next_track_id += 1;
        st.tracks.push(Track::new(id, pad_name));
        Ok(id)
    }

    /// The pad of track `id` was released. Before the handshake its track goes (the others
    /// may then be all the announce waits for); after it, the server was told of the track, and
    /// it stays, silent.
    pub fn remove_track(self: &Arc<Self>, id: TrackId) -> bool {
        let mut st = self.state.lock().unwrap();
        if st.phase != Phase::Waiting {
            return false;
        }
        let Some(i) = Self::position(&st, id) else {
            return false;
        };
        st.tracks.remove(i);
        drop(self.maybe_start(st));
        self.cond.notify_all();
        true
    }

    /// Lets the application edit the SDP before ANNOUNCE (`update-sdp`, as rtspclientsink).
    fn emit_update_sdp(&self, msg: &mut gst_sdp::SDPMessage) {
        use gst::glib::translate::{IntoGlib, ToGlibPtr, ToGlibPtrMut};
        let Some(element) = self.element.upgrade() else {
            return;
        };
        let Some(id) = gst::glib::subclass::SignalId::lookup("update-sdp", element.type_()) else {
            return;
        };
        let mut sdp_value = gst::glib::Value::from_type(gst_sdp::SDPMessage::static_type());
        let values = unsafe {
            // SAFETY: the value points at `msg` itself ("static": the value never frees it), so
            // handlers edit our message. Emitting through glib-rs would g_value_copy the
            // arguments, and copying a boxed value copies the message: edits would be lost.
            gst::glib::gobject_ffi::g_value_set_static_boxed(
                sdp_value.to_glib_none_mut().0,
                ToGlibPtr::<*const gst_sdp::ffi::GstSDPMessage>::to_glib_none(&*msg).0
                    as gst::glib::ffi::gconstpointer,
            );
            [element.to_value(), sdp_value]
        };
        unsafe {
            gst::glib::gobject_ffi::g_signal_emitv(
                values.as_ptr() as *const gst::glib::gobject_ffi::GValue,
                id.into_glib(),
                0,
                std::ptr::null_mut(),
            );
        }
    }

    fn post_error(&self, msg: gst::ErrorMessage) {
        if let Some(e) = self.element.upgrade() {
            e.post_error_message(msg);
        }
    }

    /// Posts the error, then lets the pad threads see the failure: the cause must be the
    /// first error on the bus, before upstream's "Internal data stream error".
    fn fail(&self, msg: gst::ErrorMessage) {
        {
            let mut st = self.state.lock().unwrap();
            if st.failing || matches!(st.phase, Phase::Failed | Phase::Stopped | Phase::Done) {
                return;
            }
            st.failing = true;
        }
        let text = msg.to_string();
        self.post_error(msg);
        {
            let mut st = self.state.lock().unwrap();
            if st.phase != Phase::Stopped {
                st.phase = Phase::Failed;
            }
        }
        self.queue().fail(text);
        self.cond.notify_all();
    }

    /// Preroll: note caps and that data exists, without sending (the buffer comes again when
    /// PLAYING renders it).
    pub fn preroll(self: &Arc<Self>, id: TrackId, caps: Option<gst::Caps>) {
        let mut st = self.state.lock().unwrap();
        if st.phase != Phase::Waiting {
            return;
        }
        let Some(track) = Self::position(&st, id) else {
            return;
        };
        let t = &mut st.tracks[track];
        if caps.is_some() {
            t.caps = caps;
        }
        t.has_buffer = true;
        self.note_first_data(&mut st);
        drop(self.maybe_start(st));
    }

    /// Arms the announce-timeout at the first buffer on any pad. A timer, not the pad threads,
    /// enforces it: a pad that prerolled waits in preroll while its silent sibling keeps the
    /// bin from PLAYING, so no streaming thread would ever look at the clock.
    fn note_first_data(self: &Arc<Self>, st: &mut State) {
        if st.first_data.is_some() {
            return;
        }
        st.first_data = Some(Instant::now());
        let weak = Arc::downgrade(self);
        let timeout = self.cfg.announce_timeout;
        RUNTIME.spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(s) = weak.upgrade() {
                if s.phase() == Phase::Waiting {
                    s.fail(s.timeout_message());
                }
            }
        });
    }

    /// A buffer (or list) rendered on pad `track`: sent, or held until RECORD is answered.
    pub fn render(
        self: &Arc<Self>,
        id: TrackId,
        caps: Option<gst::Caps>,
        segment: Option<&gst::FormattedSegment<gst::ClockTime>>,
        buffers: impl Iterator<Item = gst::Buffer>,
    ) -> Result<(), PadError> {
        let buffers = buffers.map(|b| {
            let rt = segment
                .zip(b.pts())
                .and_then(|(seg, pts)| seg.to_running_time(pts))
                .map(|t| t.nseconds());
            (b, rt)
        });
        let mut st = self.state.lock().unwrap();
        let Some(mut track) = Self::position(&st, id) else {
            // Released: its pad is going away.
            return Err(PadError::Flushing);
        };
        match st.phase {
            Phase::Recording => {
                if let Some(c) = caps {
                    if st.tracks[track].caps.as_ref() != Some(&c) {
                        let old = st.tracks[track].caps.replace(c.clone());
                        if self.needs_reannounce(old.as_ref(), &c) {
                            gst::info!(
                                CAT,
                                "{}: new caps {c}: announcing again",
                                st.tracks[track].pad_name
                            );
                            st.dropped_offline += buffers.count() as u64;
                            drop(st);
                            self.renegotiate(format!("caps changed on track {track}"));
                            return Ok(());
                        }
                        gst::info!(
                            CAT,
                            "{}: new caps, same codec: streaming on (parameters travel in-band)",
                            st.tracks[track].pad_name
                        );
                    }
                }
                // The sender and the queue of one connection, taken together: a frame framed for
                // a connection that is being replaced goes to that connection's (failed) queue,
                // never out on the next one ahead of its first report and keyframe.
                let tx = st.tracks[track].tx.clone();
                let udp = st.udp.clone();
                let queue = self.queue();
                let flushing = st.tracks[track].flushing.clone();
                drop(st);
                return match (tx, udp) {
                    (Some(tx), Some(udp)) => self.send_udp(track, &tx, &udp, &flushing, buffers),
                    (Some(tx), None) => self.send(track, &tx, &queue, &flushing, buffers),
                    (None, _) => Err(PadError::Failed),
                };
            }
            Phase::Reconnecting => {
                // Nowhere to send it: dropped and counted; the new session starts on a keyframe.
                st.dropped_offline += buffers.count() as u64;
                return Ok(());
            }
            Phase::Waiting | Phase::Connecting => {}
            Phase::Failed => return Err(PadError::Failed),
            Phase::Stopped => return Err(PadError::Flushing),
            Phase::Finishing | Phase::Done => {
                // Data after EOS on this pad is a programming error upstream; keep it visible.
                gst::warning!(
                    CAT,
                    "buffer on {} after EOS dropped",
                    st.tracks[track].pad_name
                );
                return Ok(());
            }
        }
        if st.tracks[track].flushing.load(Ordering::SeqCst) {
            return Err(PadError::Flushing);
        }
        let connecting = st.phase == Phase::Connecting;
        let t = &mut st.tracks[track];
        if let Some(c) = caps {
            if t.caps.as_ref() != Some(&c) {
                if connecting && t.caps.is_some() {
                    // The SDP is already on its way; a later issue re-announces.
                    gst::info!(CAT, "caps of {} changed while connecting", t.pad_name);
                }
                t.caps = Some(c);
            }
        }
        let t = &mut st.tracks[track];
        t.has_buffer = true;
        t.held.extend(buffers);
        self.note_first_data(&mut st);
        st = self.maybe_start(st);
        // A track still waiting for its parameter sets must keep its data flowing so the payloader
        // can update its caps; other tracks wait here (backpressure) for RECORD's answer. The
        // announce-timeout timer ends a wait that would otherwise last for ever.
        loop {
            // Other pads' tracks may have gone while this one waited.
            let Some(now) = Self::position(&st, id) else {
                return Err(PadError::Flushing);
            };
            track = now;
            match st.phase {
                Phase::Waiting if !st.tracks[track].ready() => return Ok(()),
                Phase::Waiting | Phase::Connecting if st.paused => return Ok(()),
                Phase::Waiting | Phase::Connecting => {}
                Phase::Failed => return Err(PadError::Failed),
                Phase::Stopped => return Err(PadError::Flushing),
                _ => return Ok(()),
            }
            if st.tracks[track].flushing.load(Ordering::SeqCst) {
                return Err(PadError::Flushing);
            }
            st = self.cond.wait(st).unwrap();
        }
    }

    fn timeout_message(&self) -> gst::ErrorMessage {
        let st = self.state.lock().unwrap();
        let silent: Vec<String> = st
            .tracks
            .iter()
            .filter(|t| !t.ready())
            .map(|t| {
                let why = if !t.has_buffer {
                    "no buffer"
                } else {
                    "no H.264/H.265 parameter sets in caps"
                };
                format!("{} ({why})", t.pad_name)
            })
            .collect();
        drop(st);
        gst::ErrorMessage::new(
            &gst::StreamError::Failed,
            Some(&format!(
                "No data on {} within announce-timeout ({:?}): every sink pad needs caps and a first buffer before ANNOUNCE",
                silent.join(", "),
                self.cfg.announce_timeout
            )),
            None,
            file!(),
            "rtspannounce",
            line!(),
        )
    }

    /// The pipeline clock as sender reports need it.
    fn ntp_mapper(&self) -> NtpMapper {
        let element = self.element.upgrade();
        let clock = element.as_ref().and_then(|e| e.clock());
        NtpMapper {
            source: self.cfg.ntp_source,
            clock_now: clock.map(|c| c.time().nseconds()),
            base_time: element
                .and_then(|e| e.base_time())
                .map(|t| t.nseconds())
                .unwrap_or(0),
            wall_now: std::time::SystemTime::now(),
        }
    }

    fn send(
        &self,
        track: usize,
        tx: &TrackSender,
        queue: &SendQueue,
        flushing: &AtomicBool,
        buffers: impl Iterator<Item = (gst::Buffer, Option<u64>)>,
    ) -> Result<(), PadError> {
        thread_local! {
            // One per streaming thread, reused: no allocation per buffer list.
            static FRAMES: std::cell::RefCell<Vec<OutFrame>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        FRAMES.with_borrow_mut(|frames| self.send_with(track, tx, queue, flushing, buffers, frames))
    }

    fn send_with(
        &self,
        track: usize,
        tx: &TrackSender,
        queue: &SendQueue,
        flushing: &AtomicBool,
        buffers: impl Iterator<Item = (gst::Buffer, Option<u64>)>,
        frames: &mut Vec<OutFrame>,
    ) -> Result<(), PadError> {
        frames.clear();
        let (max, max_time) = (self.cfg.max_queue_bytes, self.cfg.max_queue_time);
        let room = || {
            let level = queue.level();
            // The time bound: how long the oldest queued packet has waited (0: no bound).
            let age = if max_time.is_zero() {
                Duration::ZERO
            } else {
                queue.oldest_age()
            };
            if level >= max || (!max_time.is_zero() && age >= max_time) {
                Room::Full
            } else if level < max / 2 && age <= max_time / 2 {
                Room::Plenty
            } else {
                Room::Some
            }
        };
        let drop_policy = self.cfg.drop_when_congested;
        let result = tx.frames(
            buffers,
            &|| self.ntp_mapper(),
            drop_policy.then_some(&room as &dyn Fn() -> Room),
            frames,
        );
        let packets = rtp_packets(frames);
        // Drop policy: never wait for room (frames were only started when there was some).
        let res = if drop_policy {
            queue.push_all_nowait(frames.drain(..))
        } else {
            queue.push_all_until(frames.drain(..), flushing)
        };
        let too_big = match result {
            Ok(ev) => {
                self.congestion_events(track, ev);
                None
            }
            Err(len) => Some(len),
        };
        if let Some(len) = too_big {
            return Err(PadError::Error(gst::ErrorMessage::new(
                &gst::StreamError::Format,
                Some(&format!(
                    "packet of {len} bytes on track {track} cannot be sent interleaved (at most 65535; lower the payloader's mtu)"
                )),
                None,
                file!(),
                "rtspannounce",
                line!(),
            )));
        }
        match res {
            Ok(()) => Ok(()),
            // The connection went away under us and a new one is being made: dropped, counted.
            Err(_) if self.phase() == Phase::Reconnecting => {
                self.state.lock().unwrap().dropped_offline += packets;
                Ok(())
            }
            Err(QueueError::Cancelled) => Err(PadError::Flushing),
            // A failed queue is a lost connection; only a failed session has its error on the
            // bus. A loss that came while begin_recording was still setting the connection up is
            // handled there just after the phase became Recording: until then, drop and count.
            Err(QueueError::Failed(_)) => match self.phase() {
                Phase::Recording | Phase::Reconnecting => {
                    self.state.lock().unwrap().dropped_offline += 1;
                    Ok(())
                }
                Phase::Stopped => Err(PadError::Flushing),
                _ => Err(PadError::Failed),
            },
        }
    }

    /// UDP: packets go out from this thread (no queue); the kernel drops rather than blocks,
    /// so the drop policy is the kernel's (a full socket buffer drops the packet, counted),
    /// and `block` waits for room instead.
    fn send_udp(
        &self,
        track: usize,
        tx: &TrackSender,
        udp: &UdpSession,
        flushing: &AtomicBool,
        buffers: impl Iterator<Item = (gst::Buffer, Option<u64>)>,
    ) -> Result<(), PadError> {
        thread_local! {
            // Reused per streaming thread: no allocation per buffer.
            static FRAMES: std::cell::RefCell<Vec<OutFrame>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        FRAMES.with(|cell| {
            let mut frames = cell.borrow_mut();
            frames.clear();
            let framed = tx.frames(buffers, &|| self.ntp_mapper(), None, &mut frames);
            let sent = udp.send_until(&frames, flushing);
            let packets = rtp_packets(&frames);
            frames.clear();
            if let Err(len) = framed {
                return Err(self.too_large(track, len, "over UDP"));
            }
            match sent {
                Ok(()) => Ok(()),
                Err(UdpError::TooLarge(len)) => Err(self.too_large(track, len, "over UDP")),
                // Stopped, flushing, or the connection was lost and a new one is being made.
                Err(UdpError::Cancelled) => match self.phase() {
                    Phase::Failed => Err(PadError::Failed),
                    Phase::Stopped => Err(PadError::Flushing),
                    _ if flushing.load(Ordering::SeqCst) => Err(PadError::Flushing),
                    _ => {
                        // The whole list is lost: counted per packet, as everywhere else.
                        self.state.lock().unwrap().dropped_offline += packets;
                        Ok(())
                    }
                },
            }
        })
    }

    fn too_large(&self, track: usize, len: usize, how: &str) -> PadError {
        PadError::Error(gst::ErrorMessage::new(
            &gst::StreamError::Format,
            Some(&format!(
                "packet of {len} bytes on track {track} is too large to be sent {how} (lower the payloader's mtu)"
            )),
            None,
            file!(),
            "rtspannounce",
            line!(),
        ))
    }

    /// A sender report (framed for the interleaved path): over UDP to the track's RTCP port,
    /// else queued after the media. False once the connection is gone.
    fn send_report(&self, bytes: Vec<u8>) -> bool {
        let udp = self.state.lock().unwrap().udp.clone();
        match udp {
            Some(u) => {
                u.send_rtcp(&bytes);
                true
            }
            None => self.queue().push_control(bytes).is_ok(),
        }
    }

    /// The media sockets of a connection that is going away: nothing more is sent or read
    /// (kept for the stats until the next connection replaces them).
    fn close_udp(st: &mut State) {
        if let Some(u) = &st.udp {
            u.close();
        }
    }

    fn congestion_events(&self, track: usize, ev: FrameEvents) {
        if ev.congestion_started {
            if let Some(e) = self.element.upgrade() {
                gst::element_warning!(
                    e,
                    gst::ResourceError::Write,
                    (
                        "The network is slower than the stream: dropping on {} (video up to the next keyframe) until the queue drains",
                        self.track_name(track)
                    )
                );
            }
        }
        if ev.want_keyframe {
            let pad = {
                let st = self.state.lock().unwrap();
                st.tracks[track].pad.as_ref().and_then(|p| p.upgrade())
            };
            if let Some(pad) = pad {
                let _ = pad.push_event(force_key_unit());
            }
        }
    }

    fn track_name(&self, track: usize) -> String {
        self.state.lock().unwrap().tracks[track].pad_name.clone()
    }

    /// A codec change (encoding, clock rate, channels, media) makes the announced SDP wrong: a
    /// new ANNOUNCE is needed. Other changes (resolution, parameter sets) travel in-band, unless
    /// `reannounce-on-caps-change` asks for a new ANNOUNCE on any change.
    fn needs_reannounce(&self, old: Option<&gst::Caps>, new: &gst::Caps) -> bool {
        let key = |c: Option<&gst::Caps>| {
            c.and_then(|c| c.structure(0)).map(|s| {
                (
                    s.get::<String>("media").ok(),
                    s.get::<String>("encoding-name").ok(),
                    s.get::<i32>("clock-rate").ok(),
                    s.get::<String>("encoding-params").ok(),
                )
            })
        };
        self.cfg.reannounce_on_caps_change || key(old) != key(Some(new))
    }

    /// Ends the current session politely (TEARDOWN) and announces again with the current caps,
    /// through the reconnect path (video resumes on a keyframe).
    fn renegotiate(self: &Arc<Self>, reason: String) {
        let old = {
            let mut st = self.state.lock().unwrap();
            if st.phase != Phase::Recording {
                return;
            }
            st.phase = Phase::Reconnecting;
            st.reannounces += 1;
            Self::close_udp(&mut st);
            // Under the state lock: a pad that took the old sender took the old queue with it.
            (st.streaming.take(), self.fresh_queue())
        };
        let (old, stale) = old;
        if let Some(s) = old {
            let timeout = self.cfg.tcp_timeout.min(Duration::from_secs(2));
            RUNTIME.spawn(async move {
                let _ = s.stop(timeout).await;
            });
        } else {
            stale.cancel();
        }
        self.cond.notify_all();
        self.post_element_message(
            gst::Structure::builder("rtspannounce-reannouncing")
                .field("reason", reason.as_str())
                .build(),
        );
        self.spawn_reconnect(SessionError::Io(reason), true);
    }

    /// Installs a new queue for the next connection; returns the old one. Called with the state
    /// lock held (lock order: state, then queue), so a sender and its queue are taken together.
    fn fresh_queue(&self) -> Arc<SendQueue> {
        let fresh = Arc::new(SendQueue::new(self.cfg.max_queue_bytes));
        std::mem::replace(&mut *self.queue.lock().unwrap(), fresh)
    }

    fn spawn_reconnect(self: &Arc<Self>, reason: SessionError, renegotiating: bool) {
        let this = self.clone();
        let handle = RUNTIME.spawn(async move { this.reconnect(reason, renegotiating).await });
        self.state.lock().unwrap().task = Some(handle.abort_handle());
    }

    /// The connection broke while recording: reconnect (warning, element message, backoff) while
    /// `retry-max` allows, else the error.
    fn connection_lost(self: &Arc<Self>, url: &RtspUrl, err: SessionError, connection: u64) {
        let old = {
            let mut st = self.state.lock().unwrap();
            if connection != st.connection {
                // The reader and the writer of a lost connection may both report it.
                gst::debug!(CAT, "loss of an earlier connection ignored: {err}");
                return;
            }
            if matches!(st.phase, Phase::Connecting | Phase::Reconnecting) && st.streaming.is_none()
            {
                // The new connection failed before begin_recording finished setting it up:
                // handled there, once it is recording.
                st.pending_loss = Some(err);
                return;
            }
            if st.phase != Phase::Recording || self.cfg.retry_max == 0 {
                drop(st);
                self.fail(error_message(url, &err, true));
                return;
            }
            st.phase = Phase::Reconnecting;
            st.reconnects += 1;
            Self::close_udp(&mut st);
            // Later reports from the lost connection (its reader, writer and keep-alive may
            // each report the loss) must not count against the one being set up.
            st.connection += 1;
            // Under the state lock: a pad that took the old sender took the old queue with it.
            (st.streaming.take(), self.fresh_queue())
        };
        let (old, stale) = old;
        // Producers blocked on the lost connection's queue return (and drop) at once.
        stale.fail(err.to_string());
        if let Some(s) = old {
            s.abort();
        }
        self.cond.notify_all();
        if let Some(e) = self.element.upgrade() {
            gst::element_warning!(
                e,
                gst::ResourceError::Write,
                (
                    "Connection to {} lost ({}): reconnecting",
                    url.request_uri(),
                    err
                )
            );
        }
        self.post_element_message(
            gst::Structure::builder("rtspannounce-reconnecting")
                .field("reason", err.to_string())
                .build(),
        );
        self.spawn_reconnect(err, false);
    }

    /// Exponential backoff from `retry-delay-min` to `retry-delay-max`, each delay randomised
    /// by ±20 % so many publishers do not come back in step.
    fn backoff(&self, attempt: u32) -> Duration {
        let min = self.cfg.retry_delay_min;
        let d = min.saturating_mul(1u32 << (attempt.saturating_sub(1)).min(16));
        d.min(self.cfg.retry_delay_max)
            .mul_f64(0.8 + 0.4 * rand::random::<f64>())
    }

    /// `renegotiating`: a new ANNOUNCE for new caps, not a loss: the first attempt goes at once
    /// and is made even with `retry-max=0`.
    async fn reconnect(self: Arc<Self>, mut last: SessionError, renegotiating: bool) {
        let started = Instant::now();
        let mut attempt = 0u32;
        let max = if renegotiating {
            self.cfg.retry_max.max(1)
        } else {
            self.cfg.retry_max
        };
        loop {
            if max >= 0 && attempt >= max as u32 {
                self.fail(resource_error(
                    error_kind(&last, true),
                    format!(
                        "Publishing to {} failed: gave up after {attempt} reconnect attempts in {:.1} s; last: {last}",
                        self.cfg.url.request_uri(),
                        started.elapsed().as_secs_f64()
                    ),
                ));
                return;
            }
            attempt += 1;
            if !(renegotiating && attempt == 1) {
                tokio::time::sleep(self.backoff(attempt)).await;
            }
            let caps: Vec<gst::Caps> = {
                let st = self.state.lock().unwrap();
                if st.phase != Phase::Reconnecting {
                    return;
                }
                st.tracks.iter().filter_map(|t| t.caps.clone()).collect()
            };
            let t0 = Instant::now();
            match self.connect_and_record(&caps).await {
                Ok(mut rec) => {
                    rec.duration = t0.elapsed();
                    gst::info!(
                        CAT,
                        "reconnected after {:?} and {attempt} attempts",
                        started.elapsed()
                    );
                    self.begin_recording(rec);
                    return;
                }
                Err(e) => {
                    gst::warning!(CAT, "reconnect attempt {attempt} failed: {e}");
                    last = e;
                }
            }
        }
    }

    /// Starts the handshake once every track is ready. Takes and returns the state guard.
    fn maybe_start<'a>(self: &Arc<Self>, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        if st.phase != Phase::Waiting || st.tracks.is_empty() || !st.tracks.iter().all(Track::ready)
        {
            return st;
        }
        for t in &st.tracks {
            if t.caps
                .as_ref()
                .is_some_and(|c| sdp::lacks_parameter_sets(c))
            {
                gst::warning!(
                    CAT,
                    "{}: announcing without H.264/H.265 parameter sets: the payloader put none in its caps",
                    t.pad_name
                );
            }
        }
        st.phase = Phase::Connecting;
        let caps: Vec<gst::Caps> = st.tracks.iter().map(|t| t.caps.clone().unwrap()).collect();
        let this = self.clone();
        let handle = RUNTIME.spawn(async move { this.run_handshake(caps).await });
        st.task = Some(handle.abort_handle());
        st
    }

    async fn run_handshake(self: Arc<Self>, caps: Vec<gst::Caps>) {
        let started = Instant::now();
        match self.connect_and_record(&caps).await {
            Ok(mut rec) => {
                rec.duration = started.elapsed();
                gst::info!(
                    CAT,
                    "recording to {} after {:?} ({} round trips), session {:?}",
                    rec.url.request_uri(),
                    started.elapsed(),
                    rec.round_trips,
                    rec.negotiated.session_id
                );
                self.begin_recording(rec);
            }
            Err(e) => {
                gst::error!(CAT, "handshake failed: {e}");
                self.fail(error_message(&self.cfg.url, &e, false));
            }
        }
    }

    /// Connects and runs the handshake, following redirects (at most 5 hops, no loops;
    /// credentials go along only to the same host).
    async fn connect_and_record(
        self: &Arc<Self>,
        caps: &[gst::Caps],
    ) -> Result<Recorded, SessionError> {
        const MAX_HOPS: usize = 5;
        let mut url = self.cfg.url.clone();
        let mut creds = self.cfg.creds.clone();
        let mut visited = vec![url.request_uri()];
        loop {
            match self.record_once(&url, creds.clone(), caps).await {
                Err(SessionError::Handshake(HandshakeError::Redirect { status, location })) => {
                    let next = resolve_redirect(&url, &location).map_err(|e| {
                        SessionError::Handshake(HandshakeError::BadResponse(format!(
                            "redirect ({status}) to an unusable Location {location:?}: {e}"
                        )))
                    })?;
                    if visited.contains(&next.request_uri()) {
                        return Err(SessionError::Handshake(HandshakeError::BadResponse(
                            format!("redirect loop: {} was already visited", next.request_uri()),
                        )));
                    }
                    if visited.len() > MAX_HOPS {
                        return Err(SessionError::Handshake(HandshakeError::BadResponse(
                            format!(
                                "more than {MAX_HOPS} redirects, last to {}",
                                next.request_uri()
                            ),
                        )));
                    }
                    gst::info!(CAT, "redirected ({status}) to {}", next.request_uri());
                    if next.user.is_some() {
                        creds = next.user.clone().map(|user| Credentials {
                            user,
                            password: next.password.clone().unwrap_or_default(),
                        });
                    } else if !next.host.eq_ignore_ascii_case(&self.cfg.url.host) {
                        creds = None;
                    }
                    visited.push(next.request_uri());
                    url = next;
                }
                other => return other,
            }
        }
    }

    /// The SDP for `caps` with (local, server) addresses, the SETUP controls, and the payload
    /// type each track is rewritten to (when an earlier track already uses its own).
    fn describe(
        &self,
        caps: &[gst::Caps],
        (local, server): (Option<std::net::IpAddr>, Option<std::net::IpAddr>),
    ) -> Result<Described, SessionError> {
        let caps_pts: Vec<u8> = caps
            .iter()
            .map(|c| {
                c.structure(0)
                    .and_then(|s| s.get::<i32>("payload").ok())
                    .map(|p| p.clamp(0, 255) as u8)
                    .unwrap_or(96)
            })
            .collect();
        let pts = sdp::assign_payload_types(&caps_pts);
        let controls: Vec<String> = (0..caps.len()).map(|i| format!("streamid={i}")).collect();
        let tracks: Vec<sdp::SdpTrack> = caps
            .iter()
            .zip(&pts)
            .zip(&controls)
            .map(|((c, pt), control)| sdp::SdpTrack {
                caps: c.as_ref(),
                payload_type: *pt,
                control: control.clone(),
            })
            .collect();
        let session = sdp::SdpSession {
            local_addr: local,
            server_addr: server,
            session_name: "rtspannounce",
        };
        let mut msg = sdp::build_sdp(&session, &tracks)
            .map_err(|e| SessionError::Local(format!("cannot describe the streams: {e}")))?;
        self.emit_update_sdp(&mut msg);
        let rewrites: Vec<Option<u8>> = caps_pts
            .iter()
            .zip(&pts)
            .map(|(a, b)| (a != b).then_some(*b))
            .collect();
        for (i, r) in rewrites.iter().enumerate() {
            if let Some(pt) = r {
                gst::info!(
                    CAT,
                    "track {i}: payload type {} already used by an earlier track, sending as {pt}",
                    caps_pts[i]
                );
            }
        }
        Ok(Described {
            text: sdp::sdp_to_string(&msg),
            controls,
            rewrites,
        })
    }

    /// [`Self::describe`], with an `update-sdp` handler run on the blocking pool and awaited at
    /// most `tcp-timeout`: the I/O workers are every session's, and a slow handler must hold
    /// up its own session only (DESIGN.md §2a).
    async fn described(
        self: &Arc<Self>,
        caps: &[gst::Caps],
        addrs: (Option<std::net::IpAddr>, Option<std::net::IpAddr>),
    ) -> Result<Described, SessionError> {
        if !self.has_handler("update-sdp") {
            return self.describe(caps, addrs);
        }
        let (this, caps) = (self.clone(), caps.to_vec());
        let job = tokio::task::spawn_blocking(move || this.describe(&caps, addrs));
        match tokio::time::timeout(self.cfg.tcp_timeout, job).await {
            Ok(Ok(described)) => described,
            Ok(Err(_)) => Err(SessionError::Local(
                "the update-sdp handler panicked".into(),
            )),
            Err(_) => Err(SessionError::Local(format!(
                "the update-sdp handler did not return within tcp-timeout ({:?})",
                self.cfg.tcp_timeout
            ))),
        }
    }

    /// Whether the application connected a handler to `signal`.
    fn has_handler(&self, signal: &str) -> bool {
        use gst::glib::translate::{IntoGlib, ToGlibPtr};
        let Some(element) = self.element.upgrade() else {
            return false;
        };
        let Some(id) = gst::glib::subclass::SignalId::lookup(signal, element.type_()) else {
            return false;
        };
        // SAFETY: a live object and a signal id of its type.
        unsafe {
            gst::glib::gobject_ffi::g_signal_has_handler_pending(
                ToGlibPtr::<*mut gst::ffi::GstElement>::to_glib_none(&element).0
                    as *mut gst::glib::gobject_ffi::GObject,
                id.into_glib(),
                0,
                gst::glib::ffi::GFALSE,
            ) != gst::glib::ffi::GFALSE
        }
    }

    async fn record_once(
        self: &Arc<Self>,
        url: &RtspUrl,
        creds: Option<Credentials>,
        caps: &[gst::Caps],
    ) -> Result<Recorded, SessionError> {
        let cfg = &self.cfg;
        // The drop policy must see congestion where it happens: keep the kernel's share small.
        let send_buffer = cfg
            .drop_when_congested
            .then(|| (cfg.max_queue_bytes / 4).clamp(64 * 1024, 1 << 20) as u32);
        // Everything ANNOUNCE needs is written before connecting, from the address the
        // connection will most likely use: the server then waits for nothing once it accepts.
        let addrs = crate::net::connection::resolve(url, cfg.tcp_timeout).await?;
        let guess = (
            crate::net::connection::route_local_addr(addrs[0]),
            Some(addrs[0].ip()),
        );
        let mut described = self.described(caps, guess).await?;
        let tls = if cfg.tls || url.scheme == crate::rtsp::url::Scheme::Rtsps {
            Some(self.tls_config()?)
        } else {
            None
        };
        let stream =
            crate::net::connection::connect(url, &addrs, cfg.tcp_timeout, send_buffer, tls).await?;
        let local_addr = stream.local_addr().ok();
        let peer = stream.peer_addr().ok().map(|a| a.ip());
        let actual = (local_addr.map(|a| a.ip()), peer);
        if actual != guess {
            described = self.described(caps, actual).await?;
        }
        let Described {
            text,
            controls,
            rewrites,
        } = described;

        let mut control = Control {
            stream,
            parser: Parser::new(Limits::default()),
            timeout: cfg.tcp_timeout,
            name: url.request_uri(),
        };
        let mut hs = Handshake::new(
            url.clone(),
            cfg.style,
            text,
            controls,
            RequestContext::new(&cfg.user_agent),
        )
        .with_transports(&cfg.transports)
        .with_credentials(creds);
        gst::debug!(CAT, "offering {:?} (tls flag: {})", cfg.transports, cfg.tls);
        // UDP port pairs, bound when a SETUP offers UDP: on the RTSP connection's local
        // address, so the family and the interface match the server's.
        let mut sockets: Vec<Option<(std::net::UdpSocket, std::net::UdpSocket)>> = Vec::new();
        let port_range = cfg.port_range;
        let mut bind = |track: usize| -> Result<(u16, u16), SessionError> {
            let local = local_addr.ok_or_else(|| {
                SessionError::Connect("the RTSP connection has no local address".into())
            })?;
            let pair = crate::net::udp::bind_pair(local, port_range).map_err(|e| {
                SessionError::Connect(format!("cannot bind UDP ports for track {track}: {e}"))
            })?;
            let ports = (
                pair.0.local_addr().map(|a| a.port()).unwrap_or(0),
                pair.1.local_addr().map(|a| a.port()).unwrap_or(0),
            );
            gst::debug!(
                CAT,
                "track {track}: UDP ports {}-{} bound",
                ports.0,
                ports.1
            );
            if sockets.len() <= track {
                sockets.resize_with(track + 1, || None);
            }
            sockets[track] = Some(pair);
            Ok(ports)
        };
        let (negotiated, trips) = control.run_handshake(&mut hs, &mut bind).await?;
        let udp = if negotiated.lower == Lower::Udp {
            let peer = peer.ok_or_else(|| {
                SessionError::Connect("the RTSP connection has no peer address".into())
            })?;
            let mut tracks = Vec::new();
            for (i, t) in negotiated.tracks.iter().enumerate() {
                let (Some(ports), Some((rtp, rtcp))) =
                    (t.udp.as_ref(), sockets.get_mut(i).and_then(Option::take))
                else {
                    return Err(SessionError::Handshake(HandshakeError::Transport(format!(
                        "track {i} has no UDP ports"
                    ))));
                };
                let dest = crate::net::udp::destination(peer, ports.source.as_deref());
                let server_rtp = std::net::SocketAddr::new(dest, ports.server.0);
                let server_rtcp = std::net::SocketAddr::new(dest, ports.server.1);
                gst::info!(
                    CAT,
                    "track {i}: RTP over UDP {}-{} -> {server_rtp}, RTCP -> {server_rtcp}",
                    ports.client.0,
                    ports.client.1
                );
                let track = UdpTrack::new(rtp, rtcp, server_rtp, server_rtcp).map_err(|e| {
                    SessionError::Connect(format!("cannot set up UDP for track {i}: {e}"))
                })?;
                tracks.push(Arc::new(track));
            }
            Some(UdpSession::new(tracks, !cfg.drop_when_congested))
        } else {
            None
        };
        Ok(Recorded {
            duration: Duration::ZERO,
            control,
            negotiated,
            ctx: hs.ctx,
            pt_rewrites: rewrites,
            round_trips: trips,
            url: url.clone(),
            udp,
        })
    }

    fn begin_recording(self: &Arc<Self>, rec: Recorded) {
        let Recorded {
            control,
            negotiated,
            ctx,
            pt_rewrites,
            url: rec_url,
            udp,
            ..
        } = rec;
        let weak: Weak<Shared> = Arc::downgrade(self);
        let url = self.cfg.url.clone();
        let connection = {
            let mut st = self.state.lock().unwrap();
            st.connection += 1;
            st.connection
        };
        let on_failure = Arc::new(move |e: SessionError| {
            if let Some(s) = weak.upgrade() {
                s.connection_lost(&url, e, connection);
            }
        });
        let weak: Weak<Shared> = Arc::downgrade(self);
        let on_rtcp: crate::net::connection::RtcpHandler =
            Arc::new(move |channel: u8, data: &[u8]| {
                if let Some(s) = weak.upgrade() {
                    s.receiver_report(channel, data);
                }
            });
        if let Some(u) = &udp {
            // The server's receiver reports arrive on our RTCP ports.
            u.start_readers(on_rtcp.clone());
        }
        let local = control.stream.local_addr().ok();
        let server = control.stream.peer_addr().ok();
        let tls = control.stream.tls_summary();
        let element = self.element.clone();
        let on_request: crate::net::connection::RequestHandler = Arc::new(move |req| {
            element
                .upgrade()
                .and_then(|e| super::imp::emit_handle_request(&e, req))
        });
        let streaming = Streaming::start(
            control,
            ctx,
            rec_url.aggregate_uri(self.cfg.style),
            self.queue().clone(),
            on_failure,
            on_rtcp,
            Some(on_request),
        );
        if self.cfg.keepalive {
            // A Public list without GET_PARAMETER: keep alive with OPTIONS from the start.
            let options = negotiated
                .public
                .as_ref()
                .is_some_and(|p| !p.iter().any(|m| m == "GET_PARAMETER"));
            streaming.start_keepalive(keepalive_interval(negotiated.session_timeout), options);
        }
        let mut st = self.state.lock().unwrap();
        let reconnected = st.phase == Phase::Reconnecting;
        if !matches!(st.phase, Phase::Connecting | Phase::Reconnecting) {
            // Stopped or failed meanwhile.
            streaming.abort();
            if let Some(u) = udp {
                u.close();
            }
            return;
        }
        // One CNAME for every track: receivers sync the tracks that share it.
        let cname = format!(
            "rtspannounce-{:08x}@{}",
            rand::random::<u32>(),
            local
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|| "localhost".into())
        );
        let ntp = self.ntp_mapper();
        // What arrived before RECORD's answer goes first, in order.
        let mut frames = Vec::new();
        for (i, t) in st.tracks.iter_mut().enumerate() {
            let clock_rate = t
                .caps
                .as_ref()
                .and_then(|c| c.structure(0).and_then(|s| s.get::<i32>("clock-rate").ok()))
                .unwrap_or(90_000)
                .max(1) as u32;
            let s0 = t.caps.as_ref().and_then(|c| c.structure(0));
            let encoding = s0
                .and_then(|s| s.get::<&str>("encoding-name").ok())
                .unwrap_or("")
                .to_string();
            t.is_video = s0.and_then(|s| s.get::<&str>("media").ok()) == Some("video");
            // After a reconnect, video waits for a keyframe; audio resumes at once.
            let tx = Arc::new(TrackSender::new(TrackSetup {
                channel: negotiated.tracks[i].rtp_channel,
                rtcp_channel: negotiated.tracks[i].rtcp_channel,
                pt_rewrite: pt_rewrites[i],
                clock_rate,
                cname: cname.clone(),
                encoding,
                is_video: t.is_video,
                wait_keyframe: reconnected && t.is_video,
            }));
            if let Err(len) = tx.frames(t.held.drain(..), &|| ntp, None, &mut frames) {
                gst::warning!(CAT, "dropping {len}-byte packet: too large");
            }
            t.tx = Some(tx);
        }
        match &udp {
            // A UDP send may block (bounded) on socket room: not under the state lock, which
            // stop() needs. Pads still see the handshake and hold what they bring meanwhile;
            // that goes next, until nothing is held.
            Some(u) => {
                let ntp = self.ntp_mapper();
                while !frames.is_empty() {
                    drop(st);
                    if let Err(e) = u.send(&frames) {
                        gst::warning!(CAT, "held packets not sent over UDP: {e:?}");
                    }
                    frames.clear();
                    st = self.state.lock().unwrap();
                    if !matches!(st.phase, Phase::Connecting | Phase::Reconnecting) {
                        drop(st);
                        streaming.abort();
                        u.close();
                        return;
                    }
                    for t in st.tracks.iter_mut() {
                        if let Some(tx) = &t.tx {
                            if let Err(len) =
                                tx.frames(t.held.drain(..), &|| ntp, None, &mut frames)
                            {
                                gst::warning!(CAT, "dropping {len}-byte packet: too large");
                            }
                        }
                    }
                }
            }
            None => self.queue().preload(frames),
        }
        st.udp = udp;
        st.streaming = Some(streaming);
        st.phase = Phase::Recording;
        st.server = server.map(|a| a.to_string());
        st.tls = tls;
        st.session_id = negotiated.session_id.clone();
        st.handshake = Some((rec.duration, rec.round_trips));
        self.start_reports();
        let msg = gst::Structure::builder(if reconnected {
            "rtspannounce-reconnected"
        } else {
            "rtspannounce-connected"
        })
        .field("reconnects", st.reconnects)
        .field("location", rec_url.request_uri())
        .field("server", st.server.clone().unwrap_or_default())
        .field("tls", st.tls.clone().unwrap_or_default())
        .field(
            "session-id",
            negotiated.session_id.clone().unwrap_or_default(),
        )
        .field("tracks", st.tracks.len() as u32)
        .field("handshake-us", rec.duration.as_micros() as u64)
        .field("round-trips", rec.round_trips)
        .build();
        let all_eos = st.tracks.iter().all(|t| t.eos);
        let pending_loss = st.pending_loss.take();
        let video_pads: Vec<gst::Pad> = st
            .tracks
            .iter()
            .filter(|t| reconnected && t.is_video)
            .filter_map(|t| t.pad.as_ref().and_then(|p| p.upgrade()))
            .collect();
        drop(st);
        self.cond.notify_all();
        self.post_element_message(msg);
        // Ask the encoders for a keyframe now rather than at the end of their GOP.
        for pad in video_pads {
            let _ = pad.push_event(force_key_unit());
        }
        if let Some(err) = pending_loss {
            let url = self.cfg.url.clone();
            self.connection_lost(&url, err, connection);
            return;
        }
        if all_eos {
            self.finish();
        }
    }

    fn post_element_message(&self, s: gst::Structure) {
        if let Some(e) = self.element.upgrade() {
            let _ = e.post_message(gst::message::Element::builder(s).src(&e).build());
        }
    }

    /// Sender reports every `rtcp-interval` (randomised over [0.5, 1.5] as RFC 3550 asks), for
    /// as long as the session records.
    fn start_reports(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let base = self.cfg.rtcp_interval;
        RUNTIME.spawn(async move {
            loop {
                tokio::time::sleep(crate::rtcp::jittered(base, rand::random::<f64>())).await;
                let Some(this) = weak.upgrade() else { return };
                let txs: Vec<Arc<TrackSender>> = {
                    let st = this.state.lock().unwrap();
                    if st.phase != Phase::Recording {
                        return;
                    }
                    st.tracks.iter().filter_map(|t| t.tx.clone()).collect()
                };
                let ntp = this.ntp_mapper();
                for tx in txs {
                    if let Some(bytes) = tx.report(&ntp, false) {
                        if !this.send_report(bytes) {
                            return;
                        }
                    }
                }
            }
        });
    }

    /// RTCP from the server: report blocks about our tracks update the stats; new loss is a
    /// warning (at most one every 10 s).
    fn receiver_report(&self, channel: u8, data: &[u8]) {
        let txs: Vec<Arc<TrackSender>> = {
            let st = self.state.lock().unwrap();
            st.tracks.iter().filter_map(|t| t.tx.clone()).collect()
        };
        let Some(tx) = txs
            .iter()
            .find(|t| t.rtcp_channel == channel || t.channel == channel)
        else {
            return;
        };
        let ntp = self.ntp_mapper();
        let arrival = crate::rtcp::ntp_middle(ntp.ntp_at(ntp.running_now().unwrap_or(0)));
        for block in crate::rtcp::report_blocks(data) {
            if let Some(lost) = tx.receiver_report(&block, arrival) {
                let mut st = self.state.lock().unwrap();
                let due = st
                    .loss_warned
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
                if due {
                    st.loss_warned = Some(Instant::now());
                    drop(st);
                    if let Some(e) = self.element.upgrade() {
                        gst::element_warning!(
                            e,
                            gst::StreamError::Failed,
                            (
                                "The server reports {} packets lost on channel {} ({}% recently)",
                                lost,
                                tx.channel,
                                block.fraction_lost as u32 * 100 / 256
                            )
                        );
                    }
                }
            }
        }
    }

    /// The `stats` property.
    pub fn stats(&self) -> gst::Structure {
        let st = self.state.lock().unwrap();
        let phase = match st.phase {
            Phase::Waiting => "waiting-for-data",
            Phase::Connecting => "connecting",
            Phase::Recording => "recording",
            Phase::Reconnecting => "reconnecting",
            Phase::Finishing => "finishing",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Stopped => "stopped",
        };
        let tracks: Vec<gst::glib::SendValue> = st
            .tracks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut b = gst::Structure::builder("track").field("pad", t.pad_name.clone());
                if t.tx.is_some() {
                    b = match st.udp.as_ref().and_then(|u| u.tracks.get(i)) {
                        Some(u) => b
                            .field("transport", "udp")
                            .field("client-rtp-port", u.client_ports.0 as u32)
                            .field("client-rtcp-port", u.client_ports.1 as u32)
                            .field("server-address", u.server_rtp.ip().to_string())
                            .field("server-rtp-port", u.server_rtp.port() as u32)
                            .field("server-rtcp-port", u.server_rtcp.port() as u32)
                            .field(
                                "udp-dropped",
                                u.dropped.load(std::sync::atomic::Ordering::Relaxed),
                            )
                            .field(
                                "rtcp-received",
                                u.rtcp_received.load(std::sync::atomic::Ordering::Relaxed),
                            ),
                        None => b.field("transport", "tcp"),
                    };
                }
                if let Some(tx) = &t.tx {
                    let c = tx.counters.lock().unwrap();
                    b = b
                        .field("ssrc", c.ssrc.unwrap_or(0))
                        .field("channel", tx.channel as u32)
                        .field("rtcp-channel", tx.rtcp_channel as u32)
                        .field(
                            "payload-type-rewrite",
                            tx.pt_rewrite.map(u32::from).unwrap_or(0),
                        )
                        .field("packets", c.packets)
                        .field("payload-bytes", c.octets)
                        .field("bytes", c.bytes)
                        .field("sender-reports", c.sender_reports)
                        .field("receiver-reports", c.receiver.reports)
                        .field("fraction-lost", c.receiver.fraction_lost as u32)
                        .field("cumulative-lost", c.receiver.cumulative_lost)
                        .field("jitter", c.receiver.jitter)
                        .field(
                            "rtt-us",
                            c.receiver.rtt.map(|r| r.as_micros() as u64).unwrap_or(0),
                        );
                } else {
                    b = b.field("held-buffers", t.held.len() as u32);
                }
                b.build().to_send_value()
            })
            .collect();
        gst::Structure::builder("application/x-rtspannounce-stats")
            .field("state", phase)
            .field(
                "transport",
                match (&st.udp, &st.handshake) {
                    (Some(_), _) => "udp",
                    (None, Some(_)) => "tcp",
                    _ => "",
                },
            )
            .field("server", st.server.clone().unwrap_or_default())
            .field("tls", st.tls.clone().unwrap_or_default())
            .field("session-id", st.session_id.clone().unwrap_or_default())
            .field(
                "handshake-us",
                st.handshake.map(|h| h.0.as_micros() as u64).unwrap_or(0),
            )
            .field("round-trips", st.handshake.map(|h| h.1).unwrap_or(0))
            .field("queue-bytes", self.queue().level() as u64)
            .field("reconnects", st.reconnects)
            .field("reannounces", st.reannounces)
            .field(
                "dropped-packets",
                st.dropped_offline
                    + st.tracks
                        .iter()
                        .filter_map(|t| t.tx.as_ref())
                        .map(|tx| tx.counters.lock().unwrap().dropped)
                        .sum::<u64>(),
            )
            .field("tracks", gst::Array::from_values(tracks))
            .build()
    }

    /// EOS on one pad. When every pad has had it: drain, TEARDOWN, then EOS on the bus.
    pub fn eos(self: &Arc<Self>, id: TrackId) {
        let mut st = self.state.lock().unwrap();
        let Some(track) = Self::position(&st, id) else {
            return;
        };
        st.tracks[track].eos = true;
        if !st.tracks.iter().all(|t| t.eos) {
            return;
        }
        match st.phase {
            Phase::Recording => {
                drop(st);
                self.finish();
            }
            Phase::Reconnecting => {
                // Nothing to tear down: say what was lost, then end.
                st.phase = Phase::Done;
                let task = st.task.take();
                let dropped = st.dropped_offline;
                drop(st);
                if let Some(t) = task {
                    t.abort();
                }
                if let Some(e) = self.element.upgrade() {
                    gst::element_warning!(
                        e,
                        gst::ResourceError::Write,
                        (
                            "End of stream while reconnecting: {} packets since the connection loss were not delivered",
                            dropped
                        )
                    );
                    let _ = e.post_message(gst::message::Eos::builder().src(&e).build());
                }
            }
            Phase::Waiting => {
                let silent: Vec<String> = st
                    .tracks
                    .iter()
                    .filter(|t| !t.has_buffer)
                    .map(|t| t.pad_name.clone())
                    .collect();
                drop(st);
                if silent.is_empty() {
                    // Data everywhere but parameter sets still missing: announce what we have.
                    let mut st = self.state.lock().unwrap();
                    self.start_forced(&mut st);
                } else {
                    self.fail(gst::ErrorMessage::new(
                        &gst::StreamError::Failed,
                        Some(&format!(
                            "End of stream before any data on {}: nothing to publish",
                            silent.join(", ")
                        )),
                        None,
                        file!(),
                        "rtspannounce",
                        line!(),
                    ));
                }
            }
            // Connecting: begin_recording sees every pad at EOS and finishes.
            _ => {}
        }
    }

    /// Starts the handshake even if some track still lacks parameter sets (end of stream came).
    fn start_forced(self: &Arc<Self>, st: &mut MutexGuard<'_, State>) {
        if st.phase != Phase::Waiting {
            return;
        }
        for t in st.tracks.iter_mut() {
            if !t.ready() && t.has_buffer {
                gst::warning!(CAT, "{}: no parameter sets before EOS", t.pad_name);
            }
        }
        st.phase = Phase::Connecting;
        let caps: Vec<gst::Caps> = st
            .tracks
            .iter()
            .map(|t| {
                t.caps
                    .clone()
                    .unwrap_or_else(|| gst::Caps::new_empty_simple("application/x-rtp"))
            })
            .collect();
        let this = self.clone();
        let handle = RUNTIME.spawn(async move { this.run_handshake(caps).await });
        st.task = Some(handle.abort_handle());
    }

    fn finish(self: &Arc<Self>) {
        let streaming = {
            let mut st = self.state.lock().unwrap();
            if st.phase != Phase::Recording {
                return;
            }
            st.phase = Phase::Finishing;
            st.streaming.clone()
        };
        let Some(streaming) = streaming else { return };
        // A last report with BYE per track, after all data and before TEARDOWN. Some servers
        // (FFmpeg's listener) close once every track said BYE.
        streaming.expect_close();
        let ntp = self.ntp_mapper();
        let txs: Vec<Arc<TrackSender>> = {
            let st = self.state.lock().unwrap();
            st.tracks.iter().filter_map(|t| t.tx.clone()).collect()
        };
        let byes: Vec<Vec<u8>> = txs.iter().filter_map(|tx| tx.report(&ntp, true)).collect();
        let udp = self.state.lock().unwrap().udp.clone();
        if udp.is_none() {
            for bytes in byes.iter().cloned() {
                let _ = self.send_report(bytes);
            }
        }
        let this = self.clone();
        let timeout = self.cfg.tcp_timeout;
        let handle = RUNTIME.spawn(async move {
            if let Some(udp) = udp {
                // RTP and RTCP travel on two sockets, and receivers may read RTCP first
                // (FFmpeg's does): a BYE right behind the last packets ended its recording
                // before the last frame was read. Give the media a head start.
                tokio::time::sleep(UDP_BYE_DELAY).await;
                for bytes in &byes {
                    udp.send_rtcp(bytes);
                }
            }
            let res = streaming.teardown(timeout).await;
            let Some(element) = this.element.upgrade() else {
                return;
            };
            {
                let mut st = this.state.lock().unwrap();
                if st.phase != Phase::Finishing {
                    return;
                }
                st.phase = Phase::Done;
                Self::close_udp(&mut st);
            }
            this.post_element_message(
                gst::Structure::builder("rtspannounce-disconnected")
                    .field(
                        "reason",
                        match &res {
                            // Closing instead of answering TEARDOWN still ends it properly.
                            Ok(()) | Err(TeardownError::NoAnswer(SessionError::Io(_))) => "eos",
                            Err(_) => "teardown-failed",
                        },
                    )
                    .build(),
            );
            match res {
                Ok(()) => gst::info!(CAT, obj = &element, "TEARDOWN answered, all data delivered"),
                Err(TeardownError::NotDelivered(e)) => {
                    this.post_error(error_message(&this.cfg.url, &e, true));
                    return;
                }
                Err(TeardownError::NoAnswer(SessionError::Io(e))) => {
                    gst::info!(
                        CAT,
                        obj = &element,
                        "no TEARDOWN answer, the server closed: {e}"
                    );
                }
                Err(TeardownError::NoAnswer(e)) => {
                    gst::element_warning!(
                        element,
                        gst::ResourceError::Close,
                        ("All data was sent, but TEARDOWN failed: {}", e)
                    );
                }
            }
            let _ = element.post_message(gst::message::Eos::builder().src(&element).build());
        });
        // Tracked, so that a stop while the TEARDOWN waits ends it instead of sending another.
        let mut st = self.state.lock().unwrap();
        if st.phase == Phase::Finishing {
            st.task = Some(handle.abort_handle());
        } else {
            handle.abort();
        }
    }

    /// Flush-start/stop on track `id`'s pad: its blocked waits return at once while flushing;
    /// the other pads go on.
    pub fn set_flushing(&self, id: TrackId, flushing: bool) {
        {
            let st = self.state.lock().unwrap();
            if let Some(i) = Self::position(&st, id) {
                st.tracks[i].flushing.store(flushing, Ordering::SeqCst);
            }
        }
        if flushing {
            self.queue().wake();
        }
        self.cond.notify_all();
    }

    /// PLAYING to PAUSED and back (see `State::paused`).
    pub fn set_paused(&self, paused: bool) {
        self.state.lock().unwrap().paused = paused;
        self.cond.notify_all();
    }

    /// Going to READY: stop now, without waiting on the network. A recording session gets a
    /// best-effort TEARDOWN from a task bounded by the timeout.
    pub fn stop(&self) {
        let (streaming, task, phase) = {
            let mut st = self.state.lock().unwrap();
            let phase = st.phase;
            st.phase = Phase::Stopped;
            Self::close_udp(&mut st);
            (st.streaming.take(), st.task.take(), phase)
        };
        self.cond.notify_all();
        // The TEARDOWN of an ending is already on its way: its task goes on (a second one
        // would be a request the server never expected), bounded like a stop's below.
        let (finishing, task) = match phase {
            Phase::Finishing => (task, None),
            _ => (None, task),
        };
        if let Some(t) = task {
            t.abort();
        }
        let bound = self.cfg.tcp_timeout.min(Duration::from_secs(2));
        match streaming {
            Some(s) if phase == Phase::Recording => {
                RUNTIME.spawn(async move {
                    let _ = s.stop(bound).await;
                });
            }
            Some(s) if phase == Phase::Finishing => {
                RUNTIME.spawn(async move {
                    tokio::time::sleep(bound).await;
                    s.abort();
                    if let Some(t) = finishing {
                        t.abort();
                    }
                });
            }
            Some(s) => s.abort(),
            None => self.queue().cancel(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keepalive_interval;
    use std::time::Duration;

    #[test]
    fn keepalive_interval_is_half_the_timeout_within_bounds() {
        assert_eq!(keepalive_interval(0), Duration::from_millis(500));
        assert_eq!(keepalive_interval(1), Duration::from_millis(500));
        assert_eq!(keepalive_interval(8), Duration::from_secs(4));
        assert_eq!(keepalive_interval(60), Duration::from_secs(10));
        // Whatever a server announces (hostile seed 40 sent 99999999999999999 and the handshake
        // task panicked on the overflow, leaving the pipeline waiting for ever).
        assert_eq!(
            keepalive_interval(99_999_999_999_999_999),
            Duration::from_secs(10)
        );
        assert_eq!(keepalive_interval(u64::MAX), Duration::from_secs(10));
    }
}
