//! From ready tracks to a recording connection: starting the handshake, the SDP (with the
//! application's `update-sdp` off the I/O workers), and turning a dialed connection into the
//! Recording phase with what the pads held meanwhile.

use super::{Attempt, Phase, Shared, State, Track};
use crate::error::{Error, ErrorKind};
use crate::net::connection::SessionError;
use crate::net::dial::{Addrs, Dialed};
use crate::rtspannounce::connection::{Connection, Setup};
use crate::rtspannounce::hooks::Notice;
use crate::sdp::{self, clock::Signalling, Described};
use crate::CAT;
use std::future::Future;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

impl Shared {
    /// Spawns `fut` on the I/O runtime; a panic in it fails the session (with an error that
    /// says so) instead of leaving the pads waiting for ever.
    pub(super) fn spawn_guarded(
        self: &Arc<Self>,
        what: &'static str,
        fut: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::AbortHandle {
        let handle = crate::net::RUNTIME.spawn(fut);
        let abort = handle.abort_handle();
        let weak = Arc::downgrade(self);
        crate::net::RUNTIME.spawn(async move {
            if let Err(e) = handle.await {
                if e.is_panic() {
                    if let Some(s) = weak.upgrade() {
                        s.fail(Error::Local(format!(
                            "internal error: the {what} task panicked"
                        )));
                    }
                }
            }
        });
        abort
    }

    /// Starts the handshake once every track is ready. Takes and returns the state guard.
    pub(super) fn maybe_start<'a>(
        self: &Arc<Self>,
        mut st: MutexGuard<'a, State>,
    ) -> MutexGuard<'a, State> {
        if !matches!(st.phase, Phase::Waiting)
            || st.tracks.is_empty()
            || !st.tracks.iter().all(Track::ready)
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
        self.start_handshake(&mut st);
        st
    }

    /// Starts the handshake even if some track still lacks parameter sets (end of stream came).
    pub(super) fn start_forced(self: &Arc<Self>, st: &mut MutexGuard<'_, State>) {
        if !matches!(st.phase, Phase::Waiting) {
            return;
        }
        for t in st.tracks.iter() {
            if !t.ready() && t.has_buffer {
                gst::warning!(CAT, "{}: no parameter sets before EOS", t.pad_name);
            }
        }
        self.start_handshake(st);
    }

    fn start_handshake(self: &Arc<Self>, st: &mut State) {
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
        // Under the state lock: the task cannot look at the phase before its handle is in it.
        let task = self.spawn_guarded("handshake", async move {
            this.run_handshake(caps).await;
        });
        st.phase = Phase::Connecting(Attempt {
            task: Some(task),
            ..Attempt::default()
        });
    }

    async fn run_handshake(self: Arc<Self>, caps: Vec<gst::Caps>) {
        let started = Instant::now();
        match self.dial(&caps).await {
            Ok(dialed) => {
                gst::info!(
                    CAT,
                    "recording to {} after {:?} ({} round trips), session {:?}",
                    dialed.url.request_uri(),
                    started.elapsed(),
                    dialed.round_trips,
                    dialed.negotiated.session_id
                );
                self.begin_recording(dialed, caps);
            }
            Err(e) => {
                gst::error!(CAT, "handshake failed: {e}");
                let msg = e.publishing(&self.cfg.dial.url, false);
                self.fail_with(msg);
            }
        }
    }

    /// Dials with an SDP for `caps`.
    pub(super) async fn dial(self: &Arc<Self>, caps: &[gst::Caps]) -> Result<Dialed, Error> {
        let clock = self.clock_signalling();
        let clock = clock.as_ref();
        let describe = |addrs: Addrs| -> std::pin::Pin<Box<dyn Future<Output = _> + Send + '_>> {
            Box::pin(self.described(caps, clock, addrs))
        };
        self.dialer.dial(&describe).await
    }

    /// The SDP for `caps`, with an `update-sdp` handler run on the blocking pool and awaited at
    /// most `tcp-timeout`: the I/O workers are every session's, and a slow handler must hold
    /// up its own session only (DESIGN.md §2a).
    async fn described(
        self: &Arc<Self>,
        caps: &[gst::Caps],
        clock: Option<&Signalling>,
        addrs: Addrs,
    ) -> Result<Described, SessionError> {
        if !self.hooks.edits_sdp() {
            return sdp::describe(caps, addrs, clock, &|_| {}).map_err(Error::Sdp);
        }
        let (hooks, caps, clock) = (self.hooks.clone(), caps.to_vec(), clock.cloned());
        let job = tokio::task::spawn_blocking(move || {
            sdp::describe(&caps, addrs, clock.as_ref(), &|m| hooks.edit_sdp(m)).map_err(Error::Sdp)
        });
        let timeout = self.cfg.dial.tcp_timeout;
        match tokio::time::timeout(timeout, job).await {
            Ok(Ok(described)) => described,
            Ok(Err(_)) => Err(Error::Local("the update-sdp handler panicked".into())),
            Err(_) => Err(Error::Local(format!(
                "the update-sdp handler did not return within tcp-timeout ({timeout:?})"
            ))),
        }
    }

    /// RECORD was answered on `dialed`, whose SDP described `announced`: the connection
    /// becomes the Recording phase, after what the pads held meanwhile.
    pub(super) fn begin_recording(self: &Arc<Self>, dialed: Dialed, announced: Vec<gst::Caps>) {
        let (id, reconnected) = {
            let mut st = self.state.lock().unwrap();
            let reconnected = matches!(st.phase, Phase::Reconnecting(_));
            let id = st.next_connection;
            st.next_connection += 1;
            let Some(attempt) = st.phase.attempt() else {
                // Stopped or failed meanwhile: the dialed connection just closes.
                return;
            };
            attempt.connection = Some(id);
            (id, reconnected)
        };
        let mut srtp_warnings = dialed
            .srtp
            .as_ref()
            .map(|s| s.warnings.clone())
            .unwrap_or_default();
        let refused = dialed.negotiated.srtp_refused.clone();
        let conn = Connection::start(self.setup(id, dialed, announced, reconnected));
        for w in srtp_warnings.drain(..) {
            self.warn(ErrorKind::Stream(gst::StreamError::DecryptNokey), w);
        }
        if let Some(why) = refused {
            self.warn(ErrorKind::Resource(gst::ResourceError::OpenWrite), why);
        }
        // What arrived before RECORD's answer goes first, in order. A UDP send may block
        // (bounded) on socket room: not under the state lock, which stop() needs. Pads still
        // see the handshake and hold what they bring meanwhile; that goes next, until nothing
        // is held.
        let ntp = self.ntp_mapper();
        let mut st = self.state.lock().unwrap();
        loop {
            if st.phase.attempt().is_none_or(|a| a.connection != Some(id)) {
                drop(st);
                conn.abort("stopped");
                return;
            }
            let mut frames = Vec::new();
            let mut held: Vec<_> = st.tracks.iter_mut().map(|t| &mut t.held).collect();
            conn.frame_held(&mut held, &ntp, &mut frames);
            if frames.is_empty() {
                break;
            }
            if conn.udp().is_none() {
                conn.send_held(frames);
                break;
            }
            drop(st);
            conn.send_held(frames);
            st = self.state.lock().unwrap();
        }
        let Some(attempt) = st.phase.attempt().map(std::mem::take) else {
            unreachable!("checked in the loop above")
        };
        st.phase = Phase::Recording(conn.clone());
        st.last = Some(conn.clone());
        self.start_reports(&conn);
        let info = &conn.info;
        let msg = gst::Structure::builder(if reconnected {
            "rtspannounce-reconnected"
        } else {
            "rtspannounce-connected"
        })
        .field("reconnects", st.reconnects)
        .field("location", info.location.clone())
        .field("server", info.server.clone().unwrap_or_default())
        .field("tls", info.tls.clone().unwrap_or_default())
        .field("session-id", info.session_id.clone().unwrap_or_default())
        .field("tracks", st.tracks.len() as u32)
        .field("handshake-us", info.handshake.as_micros() as u64)
        .field("round-trips", info.round_trips)
        .build();
        let all_eos = st.tracks.iter().all(|t| t.eos);
        // Caps that came while connecting: a codec the SDP does not describe is announced again.
        let changed = st.tracks.iter().enumerate().find_map(|(i, t)| {
            t.caps
                .as_ref()
                .filter(|c| self.needs_reannounce(conn.announced(i), c))
                .map(|_| i)
        });
        let video_pads: Vec<String> = st
            .tracks
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                reconnected
                    && conn
                        .announced(*i)
                        .is_some_and(crate::rtspannounce::connection::is_video)
            })
            .map(|(_, t)| t.pad_name.clone())
            .collect();
        drop(st);
        self.cond.notify_all();
        self.hooks.notify(Notice::Element(msg));
        // Ask the encoders for a keyframe now rather than at the end of their GOP.
        for pad in video_pads {
            self.hooks.force_key_unit(&pad);
        }
        if let Some(err) = attempt.loss {
            self.connection_lost(err, id);
            return;
        }
        if all_eos {
            self.finish();
        } else if let Some(track) = changed {
            gst::info!(CAT, "track {track}: caps changed during the handshake");
            self.renegotiate(format!(
                "caps changed on track {track} during the handshake"
            ));
        }
    }

    fn setup(
        self: &Arc<Self>,
        id: u64,
        dialed: Dialed,
        announced: Vec<gst::Caps>,
        reconnected: bool,
    ) -> Setup {
        let weak = Arc::downgrade(self);
        let on_failure = Arc::new(move |e: SessionError| {
            if let Some(s) = weak.upgrade() {
                s.connection_lost(e, id);
            }
        });
        let hooks = self.hooks.clone();
        let on_request: crate::net::connection::RequestHandler =
            Arc::new(move |req| hooks.handle_request(req));
        let weak = Arc::downgrade(self);
        let ntp = Arc::new(move || {
            weak.upgrade().map(|s| s.ntp_mapper()).unwrap_or(
                crate::rtspannounce::sender::NtpMapper {
                    source: crate::rtspannounce::sender::NtpSource::Ntp,
                    clock_now: None,
                    base_time: 0,
                    wall_now: std::time::SystemTime::now(),
                    reference_era: None,
                },
            )
        });
        let weak = Arc::downgrade(self);
        let on_loss = Arc::new(move |loss| {
            if let Some(s) = weak.upgrade() {
                s.loss_reported(loss);
            }
        });
        let weak = Arc::downgrade(self);
        let on_srtcp_failure = Arc::new(move |text: String| {
            if let Some(s) = weak.upgrade() {
                s.warn(ErrorKind::Stream(gst::StreamError::Decrypt), text);
            }
        });
        Setup {
            on_srtcp_failure,
            id,
            dialed,
            announced,
            reconnected,
            style: self.cfg.dial.style,
            limits: self.cfg.limits,
            keepalive: self.cfg.keepalive,
            on_failure,
            on_request: Some(on_request),
            ntp,
            on_loss,
        }
    }
}
