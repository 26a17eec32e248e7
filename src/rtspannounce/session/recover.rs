//! Keeping a session up: the loss of a connection, a new ANNOUNCE for new caps, reconnects
//! with backoff, sender reports and what receiver reports say.

use super::{Attempt, Phase, Shared};
use crate::error::{Error, ErrorKind};
use crate::rtspannounce::backoff::Backoff;
use crate::rtspannounce::connection::{Connection, LossReport};
use crate::CAT;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Shared {
    /// Connection `id` broke: reconnect (warning, element message, backoff) while `retry-max`
    /// allows, else the error.
    pub(super) fn connection_lost(self: &Arc<Self>, err: Error, id: u64) {
        let old = {
            let mut st = self.state.lock().unwrap();
            match &mut st.phase {
                Phase::Recording(c) if c.id == id => {}
                Phase::Connecting(a) | Phase::Reconnecting(a) if a.connection == Some(id) => {
                    // Failed before begin_recording finished setting it up: handled there,
                    // once it is recording.
                    a.loss = Some(err);
                    return;
                }
                Phase::Finishing { connection, .. } if connection.id == id => {
                    drop(st);
                    self.fail_with(err.publishing(&self.cfg.dial.url, true));
                    return;
                }
                _ => {
                    // The reader, the writer and the keep-alive of a lost connection may each
                    // report it; an earlier connection's reports do not count.
                    gst::debug!(CAT, "loss of an earlier connection ignored: {err}");
                    return;
                }
            }
            if self.cfg.retry_max == 0 {
                drop(st);
                self.fail_with(err.publishing(&self.cfg.dial.url, true));
                return;
            }
            st.reconnects += 1;
            std::mem::replace(&mut st.phase, Phase::Reconnecting(Attempt::default()))
        };
        // Producers blocked on the lost connection's queue return (and drop) at once.
        if let Phase::Recording(c) = old {
            c.abort(&err.to_string());
        }
        self.cond.notify_all();
        self.warn(
            ErrorKind::WRITE,
            format!(
                "Connection to {} lost ({err}): reconnecting",
                self.cfg.dial.url.request_uri()
            ),
        );
        self.post_element_message(
            gst::Structure::builder("rtspannounce-reconnecting")
                .field("reason", err.to_string())
                .build(),
        );
        self.spawn_reconnect(err, false);
    }

    /// Ends the current session politely (TEARDOWN) and announces again with the current caps,
    /// through the reconnect path (video resumes on a keyframe).
    pub(super) fn renegotiate(self: &Arc<Self>, reason: String) {
        let old = {
            let mut st = self.state.lock().unwrap();
            if !matches!(st.phase, Phase::Recording(_)) {
                return;
            }
            st.reannounces += 1;
            std::mem::replace(&mut st.phase, Phase::Reconnecting(Attempt::default()))
        };
        if let Phase::Recording(c) = old {
            c.close_udp();
            let timeout = self.cfg.dial.tcp_timeout.min(Duration::from_secs(2));
            crate::net::RUNTIME.spawn(async move {
                let _ = c.streaming().stop(timeout).await;
            });
        }
        self.cond.notify_all();
        self.post_element_message(
            gst::Structure::builder("rtspannounce-reannouncing")
                .field("reason", reason.as_str())
                .build(),
        );
        self.spawn_reconnect(Error::Io(reason), true);
    }

    fn spawn_reconnect(self: &Arc<Self>, reason: Error, renegotiating: bool) {
        let this = self.clone();
        let mut st = self.state.lock().unwrap();
        let Phase::Reconnecting(attempt) = &mut st.phase else {
            return;
        };
        attempt.task = Some(self.spawn_guarded("reconnect", async move {
            this.reconnect(reason, renegotiating).await
        }));
    }

    /// `renegotiating`: a new ANNOUNCE for new caps, not a loss: the first attempt goes at once
    /// and is made even with `retry-max=0`.
    async fn reconnect(self: Arc<Self>, mut last: Error, renegotiating: bool) {
        let started = Instant::now();
        let cfg = &self.cfg;
        let mut backoff = Backoff::new(
            cfg.retry_delay_min,
            cfg.retry_delay_max,
            cfg.retry_max,
            renegotiating,
        );
        loop {
            let Some(delay) = backoff.next(rand::random::<f64>()) else {
                let msg =
                    Error::gave_up(&last, &cfg.dial.url, backoff.attempts(), started.elapsed());
                self.fail_with(msg);
                return;
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let caps: Vec<gst::Caps> = {
                let st = self.state.lock().unwrap();
                if !matches!(st.phase, Phase::Reconnecting(_)) {
                    return;
                }
                st.tracks.iter().filter_map(|t| t.caps.clone()).collect()
            };
            match self.dial(&caps).await {
                Ok(dialed) => {
                    gst::info!(
                        CAT,
                        "reconnected after {:?} and {} attempts",
                        started.elapsed(),
                        backoff.attempts()
                    );
                    self.begin_recording(dialed, caps);
                    return;
                }
                Err(e) => {
                    gst::warning!(CAT, "reconnect attempt {} failed: {e}", backoff.attempts());
                    last = e;
                }
            }
        }
    }

    /// Sender reports every `rtcp-interval` (randomised over [0.5, 1.5] as RFC 3550 asks), for
    /// as long as `conn` records.
    pub(super) fn start_reports(self: &Arc<Self>, conn: &Arc<Connection>) {
        let (weak, conn) = (Arc::downgrade(self), Arc::downgrade(conn));
        let base = self.cfg.rtcp_interval;
        crate::net::RUNTIME.spawn(async move {
            loop {
                tokio::time::sleep(crate::rtcp::jittered(base, rand::random::<f64>())).await;
                let (Some(this), Some(conn)) = (weak.upgrade(), conn.upgrade()) else {
                    return;
                };
                let recording = matches!(
                    &this.state.lock().unwrap().phase,
                    Phase::Recording(c) if Arc::ptr_eq(c, &conn)
                );
                if !recording || !conn.send_reports(&this.ntp_mapper(), false) {
                    return;
                }
            }
        });
    }

    /// New loss in a receiver report: a warning, at most one every 10 s.
    pub(super) fn loss_reported(&self, loss: LossReport) {
        {
            let mut st = self.state.lock().unwrap();
            let due = st
                .loss_warned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
            if !due {
                return;
            }
            st.loss_warned = Some(Instant::now());
        }
        self.warn(
            ErrorKind::Stream(gst::StreamError::Failed),
            format!(
                "The server reports {} packets lost on channel {} ({}% recently)",
                loss.cumulative, loss.channel, loss.fraction_percent
            ),
        );
    }
}
