//! One publishing session as the streaming threads see it: which tracks have caps and data,
//! the phase (which carries the connection being set up or recording), and the waits that tie
//! them together. It only coordinates: dialing is `net::dial`, a connection's sending is
//! `super::connection`, the element behind it is reached through [`Hooks`].
//!
//! Streaming threads (one per sink pad) call into [`Shared`]; the handshake, reconnects and
//! the ending run as tasks on the shared I/O runtime. Every blocking wait here ends on stop,
//! flush or failure.

mod clock;
mod ending;
mod recover;
mod start;

pub(crate) use clock::{anchor_of, running_time};

use super::connection::{is_video, Connection, SendLimits, Sent};
use super::hooks::{Hooks, Notice};
use super::reorder::{ReorderWatch, Reordered};
use super::sender::{FrameEvents, Media, NtpMapper, NtpSource};
use crate::error::{Error, ErrorKind};
use crate::net::dial::{DialConfig, Dialer};
use crate::sdp;
use crate::sdp::clock::PublishClockMode;
use crate::CAT;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a session needs from the element's settings, fixed when it starts.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub dial: DialConfig,
    pub announce_timeout: Duration,
    pub keepalive: bool,
    pub ntp_source: NtpSource,
    /// RFC 7273 clock lines in the SDP, and sender reports on the reference clock.
    pub publish_clock: PublishClockMode,
    pub rtcp_interval: Duration,
    /// Reconnect attempts after a loss: -1 for ever, 0 never.
    pub retry_max: i32,
    pub retry_delay_min: Duration,
    pub retry_delay_max: Duration,
    pub reannounce_on_caps_change: bool,
    pub limits: SendLimits,
}

/// A handshake in flight (first or after a loss).
#[derive(Default)]
struct Attempt {
    task: Option<tokio::task::AbortHandle>,
    /// The id of the connection being set up once RECORD was answered.
    connection: Option<u64>,
    /// That connection failed before it was recording: handled once it is.
    loss: Option<Error>,
}

enum Phase {
    /// Collecting every track's caps and first buffer.
    Waiting,
    /// Connect, ANNOUNCE, SETUP, RECORD in flight; buffers are held.
    Connecting(Attempt),
    Recording(Arc<Connection>),
    /// The connection was lost (or is re-announced): media is dropped while a task dials.
    Reconnecting(Attempt),
    /// Every pad had EOS: the queue drains, then TEARDOWN.
    Finishing {
        connection: Arc<Connection>,
        task: Option<tokio::task::AbortHandle>,
    },
    Done,
    Failed,
    Stopped,
}

/// A phase's name, for the stats and for callers outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PhaseName {
    Waiting,
    Connecting,
    Recording,
    Reconnecting,
    Finishing,
    Done,
    Failed,
    Stopped,
}

impl PhaseName {
    /// As the stats' `state` field says it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PhaseName::Waiting => "waiting-for-data",
            PhaseName::Connecting => "connecting",
            PhaseName::Recording => "recording",
            PhaseName::Reconnecting => "reconnecting",
            PhaseName::Finishing => "finishing",
            PhaseName::Done => "done",
            PhaseName::Failed => "failed",
            PhaseName::Stopped => "stopped",
        }
    }
}

impl Phase {
    fn name(&self) -> PhaseName {
        match self {
            Phase::Waiting => PhaseName::Waiting,
            Phase::Connecting(_) => PhaseName::Connecting,
            Phase::Recording(_) => PhaseName::Recording,
            Phase::Reconnecting(_) => PhaseName::Reconnecting,
            Phase::Finishing { .. } => PhaseName::Finishing,
            Phase::Done => PhaseName::Done,
            Phase::Failed => PhaseName::Failed,
            Phase::Stopped => PhaseName::Stopped,
        }
    }

    fn attempt(&mut self) -> Option<&mut Attempt> {
        match self {
            Phase::Connecting(a) | Phase::Reconnecting(a) => Some(a),
            _ => None,
        }
    }

    /// The connection that carries media now, or that drains at the end.
    fn connection(&self) -> Option<&Arc<Connection>> {
        match self {
            Phase::Recording(c) | Phase::Finishing { connection: c, .. } => Some(c),
            _ => None,
        }
    }
}

/// Buffers a track may hold back while its payloader has not yet put the parameter sets in its
/// caps (rtph264pay learns SPS/PPS from the stream); after that we announce without them.
const MAX_HELD_FOR_PARAMS: usize = 300;

/// A track's identity for its pad: stable while other pads are requested and released.
pub(crate) type TrackId = u64;

struct Track {
    id: TrackId,
    pad_name: String,
    /// The latest caps (the connection's sender follows the caps it announced).
    caps: Option<gst::Caps>,
    has_buffer: bool,
    /// Buffers (with running times) that arrived before RECORD's answer, sent first once it
    /// comes.
    held: Vec<(Media, Option<u64>)>,
    /// The (RTP timestamp, running time) of the prerolled packet: the direct offset of the
    /// SDP when the handshake starts from preroll, before anything is held.
    preroll_anchor: Option<(u32, u64)>,
    eos: bool,
    /// Flush-start on this track's pad, until flush-stop: its waits return at once. Flushing is
    /// per pad; the other tracks go on.
    flushing: Arc<AtomicBool>,
    /// B-frames on this pad, warned about once.
    reorder: ReorderWatch,
}

impl Track {
    fn new(id: TrackId, pad_name: String) -> Self {
        Track {
            id,
            pad_name,
            caps: None,
            has_buffer: false,
            held: Vec::new(),
            preroll_anchor: None,
            eos: false,
            flushing: Arc::default(),
            reorder: ReorderWatch::default(),
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
    next_connection: u64,
    /// The latest connection, live or gone: what the stats report.
    last: Option<Arc<Connection>>,
    first_data: Option<Instant>,
    /// PLAYING to PAUSED: a pad waiting for RECORD's answer returns (its buffer stays held), so
    /// the appsink can pause without waiting on the network.
    paused: bool,
    /// An error is being posted; set before `phase` becomes Failed.
    failing: bool,
    loss_warned: Option<Instant>,
    reconnects: u32,
    reannounces: u32,
    /// Packets dropped while no connection could take them (held-back delta frames are in the
    /// track senders' counters).
    dropped_offline: u64,
}

impl State {
    fn position(&self, id: TrackId) -> Option<usize> {
        self.tracks.iter().position(|t| t.id == id)
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    cfg: SessionConfig,
    dialer: Dialer,
    hooks: Arc<dyn Hooks>,
}

/// The result of an error in a pad thread: the flow return plus, for real errors, a message
/// the element posts.
pub(crate) enum PadError {
    Flushing,
    /// The session failed; its error is already on the bus.
    Failed,
    Error(gst::ErrorMessage),
}

impl Shared {
    pub(crate) fn new(
        mut cfg: SessionConfig,
        pad_names: Vec<String>,
        hooks: Arc<dyn Hooks>,
    ) -> Arc<Shared> {
        let h = hooks.clone();
        cfg.dial.tls_options.accept = Some(Arc::new(move |chain, errors| {
            h.accept_certificate(chain, errors)
        }));
        Arc::new(Shared {
            state: Mutex::new(State {
                phase: Phase::Waiting,
                next_track_id: pad_names.len() as TrackId,
                tracks: pad_names
                    .into_iter()
                    .enumerate()
                    .map(|(i, n)| Track::new(i as TrackId, n))
                    .collect(),
                next_connection: 0,
                last: None,
                first_data: None,
                paused: false,
                failing: false,
                loss_warned: None,
                reconnects: 0,
                reannounces: 0,
                dropped_offline: 0,
            }),
            cond: Condvar::new(),
            dialer: Dialer::new(cfg.dial.clone()),
            cfg,
            hooks,
        })
    }

    /// The track fed by the pad named `pad_name`.
    pub(crate) fn track_id(&self, pad_name: &str) -> Option<TrackId> {
        let st = self.state.lock().unwrap();
        st.tracks
            .iter()
            .find(|t| t.pad_name == pad_name)
            .map(|t| t.id)
    }

    pub(crate) fn phase(&self) -> PhaseName {
        self.state.lock().unwrap().phase.name()
    }

    /// Adds a track for a pad requested after the session was created. Refused once the
    /// handshake has started: the server was told the stream list already.
    pub(crate) fn add_track(&self, pad_name: String) -> Result<TrackId, PhaseName> {
        let mut st = self.state.lock().unwrap();
        if !matches!(st.phase, Phase::Waiting) || st.tracks.iter().any(|t| t.has_buffer) {
            return Err(st.phase.name());
        }
        let id = st.next_track_id;
        st.next_track_id += 1;
        st.tracks.push(Track::new(id, pad_name));
        Ok(id)
    }

    /// The pad of track `id` was released. Before the handshake its track goes (the others
    /// may then be all the announce waits for); after it, the server was told of the track, and
    /// it stays, silent.
    pub(crate) fn remove_track(self: &Arc<Self>, id: TrackId) -> bool {
        let mut st = self.state.lock().unwrap();
        if !matches!(st.phase, Phase::Waiting) {
            return false;
        }
        let Some(i) = st.position(id) else {
            return false;
        };
        st.tracks.remove(i);
        drop(self.maybe_start(st));
        self.cond.notify_all();
        true
    }

    /// Posts the error, then lets the pad threads see the failure: the cause must be the
    /// first error on the bus, before upstream's "Internal data stream error".
    #[track_caller]
    fn fail(&self, err: Error) {
        self.fail_with(err.message());
    }

    fn fail_with(&self, msg: gst::ErrorMessage) {
        {
            let mut st = self.state.lock().unwrap();
            if st.failing || matches!(st.phase, Phase::Failed | Phase::Stopped | Phase::Done) {
                return;
            }
            st.failing = true;
        }
        let text = msg.to_string();
        self.hooks.notify(Notice::Error(msg));
        let connection = {
            let mut st = self.state.lock().unwrap();
            match std::mem::replace(&mut st.phase, Phase::Failed) {
                Phase::Stopped => {
                    st.phase = Phase::Stopped;
                    None
                }
                Phase::Recording(c) | Phase::Finishing { connection: c, .. } => Some(c),
                Phase::Connecting(a) | Phase::Reconnecting(a) => {
                    if let Some(t) = a.task {
                        t.abort();
                    }
                    None
                }
                _ => None,
            }
        };
        if let Some(c) = connection {
            c.abort(&text);
        }
        self.cond.notify_all();
    }

    #[track_caller]
    fn warn(&self, kind: ErrorKind, text: String) {
        self.hooks.notify(Notice::Warning {
            kind,
            text,
            at: std::panic::Location::caller(),
        });
    }

    fn post_element_message(&self, s: gst::Structure) {
        self.hooks.notify(Notice::Element(s));
    }

    /// Preroll: note caps and that data exists, without sending (the buffer comes again when
    /// PLAYING renders it). `anchor` is the buffer's (RTP timestamp, running time), if known.
    ///
    /// Once every track is ready the handshake starts, and the preroll that started it (or any
    /// later one) waits for RECORD's answer: the pipeline then reaches PLAYING, and takes its
    /// base time, when the server takes data, so that the first buffers are not late by the
    /// handshake. A preroll never waits for a track that is not ready yet: that track may need
    /// data only PLAYING brings (parameter sets in-band), and waiting would deadlock it.
    pub(crate) fn preroll(
        self: &Arc<Self>,
        id: TrackId,
        caps: Option<gst::Caps>,
        anchor: Option<(u32, u64)>,
    ) -> Result<(), PadError> {
        let mut st = self.state.lock().unwrap();
        if !matches!(st.phase, Phase::Waiting | Phase::Connecting(_)) {
            return Ok(());
        }
        let Some(track) = st.position(id) else {
            return Ok(());
        };
        if matches!(st.phase, Phase::Waiting) {
            let t = &mut st.tracks[track];
            if caps.is_some() {
                t.caps = caps;
            }
            t.has_buffer = true;
            t.preroll_anchor = anchor.or(t.preroll_anchor);
            self.note_first_data(&mut st);
            st = self.maybe_start(st);
        }
        self.wait_for_record(st, id, false)
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
        crate::net::RUNTIME.spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(s) = weak.upgrade() {
                if s.phase() == PhaseName::Waiting {
                    s.fail(s.timeout_error());
                }
            }
        });
    }

    fn timeout_error(&self) -> Error {
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
        Error::NoData(format!(
            "No data on {} within announce-timeout ({:?}): every sink pad needs caps and a first buffer before ANNOUNCE",
            silent.join(", "),
            self.cfg.announce_timeout
        ))
    }

    /// Buffers from a payloader on pad `id`, with the segment that gives their running times.
    #[cfg(test)]
    pub(crate) fn render_buffers(
        self: &Arc<Self>,
        id: TrackId,
        caps: Option<gst::Caps>,
        segment: Option<&gst::FormattedSegment<gst::ClockTime>>,
        buffers: impl Iterator<Item = gst::Buffer> + Clone,
    ) -> Result<(), PadError> {
        let rt = |b: &gst::Buffer| running_time(segment, b.pts());
        self.render(
            id,
            caps,
            buffers.clone().map(move |b| {
                let t = rt(&b);
                (Media::Rtp(b), t)
            }),
            buffers.map(move |b| rt(&b)),
        )
    }

    /// Packets (or packed access units) rendered on pad `id`, with their running times: sent,
    /// or held until RECORD is answered. `running` gives the same running times again, read
    /// before anything is consumed (the B-frame check).
    pub(crate) fn render(
        self: &Arc<Self>,
        id: TrackId,
        caps: Option<gst::Caps>,
        buffers: impl Iterator<Item = (Media, Option<u64>)>,
        running: impl Iterator<Item = Option<u64>>,
    ) -> Result<(), PadError> {
        let mut st = self.state.lock().unwrap();
        let Some(mut track) = st.position(id) else {
            // Released: its pad is going away.
            return Err(PadError::Flushing);
        };
        // Video only: audio whose timestamps jitter back is no B-frame stream.
        let t = &mut st.tracks[track];
        let video = caps.as_ref().or(t.caps.as_ref()).is_some_and(is_video);
        let reordered = video.then(|| t.reorder.observe(running)).flatten();
        if let Some(r) = reordered {
            let name = st.tracks[track].pad_name.clone();
            drop(st);
            self.warn_reordered(&name, r);
            st = self.state.lock().unwrap();
            track = st.position(id).ok_or(PadError::Flushing)?;
        }
        match &st.phase {
            Phase::Recording(conn) => {
                let conn = conn.clone();
                if let Some(c) = caps {
                    if st.tracks[track].caps.as_ref() != Some(&c) {
                        st.tracks[track].caps = Some(c.clone());
                        if self.needs_reannounce(conn.announced(track), &c) {
                            gst::info!(
                                CAT,
                                "{}: new caps {c}: announcing again",
                                st.tracks[track].pad_name
                            );
                            st.dropped_offline += buffers.map(|(m, _)| m.packets()).sum::<u64>();
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
                let flushing = st.tracks[track].flushing.clone();
                drop(st);
                return self.send(&conn, track, &flushing, buffers);
            }
            Phase::Reconnecting(_) => {
                // Nowhere to send it: dropped and counted; the new session starts on a keyframe.
                if let Some(c) = caps {
                    st.tracks[track].caps = Some(c);
                }
                st.dropped_offline += buffers.map(|(m, _)| m.packets()).sum::<u64>();
                return Ok(());
            }
            Phase::Waiting | Phase::Connecting(_) => {}
            Phase::Failed => return Err(PadError::Failed),
            Phase::Stopped => return Err(PadError::Flushing),
            Phase::Finishing { .. } | Phase::Done => {
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
        let connecting = matches!(st.phase, Phase::Connecting(_));
        let t = &mut st.tracks[track];
        if let Some(c) = caps {
            if t.caps.as_ref() != Some(&c) {
                if connecting && t.caps.is_some() {
                    // The SDP on its way describes the old caps: recording compares them and
                    // announces again if the codec changed.
                    gst::info!(CAT, "caps of {} changed while connecting", t.pad_name);
                }
                t.caps = Some(c);
            }
        }
        t.has_buffer = true;
        t.held.extend(buffers);
        self.note_first_data(&mut st);
        let st = self.maybe_start(st);
        // A track still waiting for its parameter sets must keep its data flowing so the payloader
        // can update its caps; other tracks wait here (backpressure) for RECORD's answer. The
        // announce-timeout timer ends a wait that would otherwise last for ever.
        self.wait_for_record(st, id, true)
    }

    /// Waits on pad `id`'s streaming thread while the handshake is in flight (and, with
    /// `while_waiting`, while it has yet to start): until recording, a failure, a stop, a flush
    /// of this pad, or a pause (which must not wait on the network).
    fn wait_for_record(
        &self,
        mut st: MutexGuard<'_, State>,
        id: TrackId,
        while_waiting: bool,
    ) -> Result<(), PadError> {
        loop {
            // Other pads' tracks may have gone while this one waited.
            let Some(track) = st.position(id) else {
                return Err(PadError::Flushing);
            };
            match st.phase {
                Phase::Waiting if !while_waiting || !st.tracks[track].ready() => return Ok(()),
                Phase::Waiting | Phase::Connecting(_) if st.paused => return Ok(()),
                Phase::Waiting | Phase::Connecting(_) => {}
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

    /// Once per pad, the first time its frames come out of presentation order.
    #[track_caller]
    fn warn_reordered(&self, pad: &str, r: Reordered) {
        let t = |ns| gst::ClockTime::from_nseconds(ns);
        self.warn(
            ErrorKind::Stream(gst::StreamError::Format),
            format!(
                "{pad}: frames arrive out of presentation order (B-frames: running time {} after {}). They are pushed as they come, but readers that cannot reorder frames (WebRTC, some HLS players) will stutter: encode without B-frames for them (x264enc bframes=0, x265enc option-string=bframes=0)",
                t(r.to),
                t(r.from)
            ),
        );
    }

    /// The pipeline clock as sender reports need it.
    fn ntp_mapper(&self) -> NtpMapper {
        let clock = self.hooks.clock();
        let signalled = self.cfg.publish_clock != PublishClockMode::None && clock.now.is_some();
        NtpMapper {
            source: self.cfg.ntp_source,
            clock_now: clock.now,
            base_time: clock.base_time,
            wall_now: std::time::SystemTime::now(),
            reference_era: clock
                .reference
                .as_ref()
                .filter(|_| signalled)
                .map(|r| r.to_ntp_era()),
        }
    }

    /// Sends on `conn` from a pad thread, without any lock of ours.
    fn send(
        &self,
        conn: &Connection,
        track: usize,
        flushing: &AtomicBool,
        buffers: impl Iterator<Item = (Media, Option<u64>)>,
    ) -> Result<(), PadError> {
        match conn.send(track, buffers, &|| self.ntp_mapper(), flushing) {
            Sent::Ok(ev) => {
                self.congestion_events(track, ev);
                Ok(())
            }
            Sent::TooLarge { len, how } => Err(PadError::Error(
                Error::Format(format!(
                    "packet of {len} bytes on track {track} is too large to be sent {how}: lower the payloader's mtu"
                ))
                .message(),
            )),
            // Stopped, flushing, or the connection was lost and a new one is being made.
            Sent::Lost { packets } => {
                let mut st = self.state.lock().unwrap();
                match st.phase {
                    Phase::Failed => Err(PadError::Failed),
                    Phase::Stopped => Err(PadError::Flushing),
                    _ if flushing.load(Ordering::SeqCst) => Err(PadError::Flushing),
                    // The connection went away under us: the whole list is lost, counted per
                    // packet as everywhere else.
                    Phase::Recording(_) | Phase::Reconnecting(_) => {
                        st.dropped_offline += packets;
                        Ok(())
                    }
                    _ => Err(PadError::Failed),
                }
            }
        }
    }

    fn congestion_events(&self, track: usize, ev: FrameEvents) {
        if !ev.congestion_started && !ev.want_keyframe {
            return;
        }
        let Some(name) = self.track_name(track) else {
            return;
        };
        if ev.congestion_started {
            self.warn(
                ErrorKind::WRITE,
                format!("The network is slower than the stream: dropping on {name} (video up to the next keyframe) until the queue drains"),
            );
        }
        if ev.want_keyframe {
            self.hooks.force_key_unit(&name);
        }
    }

    fn track_name(&self, track: usize) -> Option<String> {
        let st = self.state.lock().unwrap();
        st.tracks.get(track).map(|t| t.pad_name.clone())
    }

    /// A codec change (encoding, clock rate, channels, media) makes the announced SDP wrong: a
    /// new ANNOUNCE is needed. Other changes (resolution, parameter sets) travel in-band, unless
    /// `reannounce-on-caps-change` asks for a new ANNOUNCE on any change.
    fn needs_reannounce(&self, announced: Option<&gst::Caps>, new: &gst::Caps) -> bool {
        if announced == Some(new) {
            return false;
        }
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
        self.cfg.reannounce_on_caps_change || key(announced) != key(Some(new))
    }

    /// Flush-start/stop on track `id`'s pad: its blocked waits return at once while flushing;
    /// the other pads go on. What the pad held for the handshake is flushed with it; once
    /// recording, the track's sender continues its sequence numbers and timestamps across the
    /// flush (a flushing seek restarts the payloader's running time).
    pub(crate) fn set_flushing(&self, id: TrackId, flushing: bool) {
        let conn = {
            let mut st = self.state.lock().unwrap();
            let Some(i) = st.position(id) else {
                return;
            };
            st.tracks[i].flushing.store(flushing, Ordering::SeqCst);
            if !flushing {
                st.tracks[i].reorder.flushed();
            }
            if flushing && matches!(st.phase, Phase::Waiting | Phase::Connecting(_)) {
                st.tracks[i].held.clear();
            }
            st.phase.connection().cloned().map(|c| (c, i))
        };
        if let Some((c, i)) = conn {
            if flushing {
                c.queue().wake();
            } else if let Some(tx) = c.senders().get(i) {
                tx.flushed();
            }
        }
        self.cond.notify_all();
    }

    /// PLAYING to PAUSED and back (see `State::paused`).
    pub(crate) fn set_paused(&self, paused: bool) {
        self.state.lock().unwrap().paused = paused;
        self.cond.notify_all();
    }

    /// The `stats` property.
    pub(crate) fn stats(&self) -> gst::Structure {
        let st = self.state.lock().unwrap();
        let live = st.phase.connection().is_some();
        let snapshot = super::stats::Snapshot {
            state: st.phase.name().as_str(),
            connection: st.last.as_deref(),
            tracks: st
                .tracks
                .iter()
                .map(|t| (t.pad_name.as_str(), t.held.len()))
                .collect(),
            live,
            reconnects: st.reconnects,
            reannounces: st.reannounces,
            dropped_offline: st.dropped_offline,
        };
        snapshot.to_structure()
    }
}

#[cfg(test)]
mod tests;
