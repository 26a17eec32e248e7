//! How a session ends: EOS on every pad (drain, BYE, TEARDOWN, then EOS on the bus), or a stop
//! (READY/NULL) that waits on nothing.

use super::{Phase, Shared};
use crate::error::{Error, ErrorKind};
use crate::net::connection::{SessionError, TeardownError};
use crate::rtspannounce::hooks::Notice;
use crate::CAT;
use std::sync::Arc;
use std::time::Duration;

/// Over UDP, how long the last packets get before the BYE goes out on the RTCP socket.
const UDP_BYE_DELAY: Duration = Duration::from_millis(100);

impl Shared {
    /// EOS on one pad. When every pad has had it: drain, TEARDOWN, then EOS on the bus.
    pub(crate) fn eos(self: &Arc<Self>, id: super::TrackId) {
        let mut st = self.state.lock().unwrap();
        let Some(track) = st.position(id) else {
            return;
        };
        st.tracks[track].eos = true;
        if !st.tracks.iter().all(|t| t.eos) {
            return;
        }
        match &st.phase {
            Phase::Recording(_) => {
                drop(st);
                self.finish();
            }
            Phase::Reconnecting(_) => {
                // Nothing to tear down: say what was lost, then end.
                let Phase::Reconnecting(attempt) = std::mem::replace(&mut st.phase, Phase::Done)
                else {
                    unreachable!()
                };
                let dropped = st.dropped_offline;
                drop(st);
                if let Some(t) = attempt.task {
                    t.abort();
                }
                self.warn(
                    ErrorKind::WRITE,
                    format!("End of stream while reconnecting: {dropped} packets since the connection loss were not delivered"),
                );
                self.hooks.notify(Notice::Eos);
            }
            Phase::Waiting => {
                let silent: Vec<String> = st
                    .tracks
                    .iter()
                    .filter(|t| !t.has_buffer)
                    .map(|t| t.pad_name.clone())
                    .collect();
                if silent.is_empty() {
                    // Data everywhere but parameter sets still missing: announce what we have.
                    self.start_forced(&mut st);
                } else {
                    drop(st);
                    self.fail(Error::NoData(format!(
                        "End of stream before any data on {}: nothing to publish",
                        silent.join(", ")
                    )));
                }
            }
            // Connecting: begin_recording sees every pad at EOS and finishes.
            _ => {}
        }
    }

    /// Every pad had EOS while recording: a last report with BYE per track after all data,
    /// then TEARDOWN, from a task the phase tracks.
    pub(super) fn finish(self: &Arc<Self>) {
        let conn = {
            let mut st = self.state.lock().unwrap();
            let Phase::Recording(c) = &st.phase else {
                return;
            };
            let c = c.clone();
            st.phase = Phase::Finishing {
                connection: c.clone(),
                task: None,
            };
            c
        };
        // Some servers (FFmpeg's listener) close once every track said BYE.
        conn.streaming().expect_close();
        let ntp = self.ntp_mapper();
        let byes = if conn.udp().is_some() {
            conn.byes(&ntp)
        } else {
            let _ = conn.send_reports(&ntp, true);
            Vec::new()
        };
        let this = self.clone();
        let timeout = self.cfg.dial.tcp_timeout;
        let ending = conn.clone();
        let handle = crate::net::RUNTIME.spawn(async move {
            if let Some(udp) = ending.udp() {
                // RTP and RTCP travel on two sockets, and receivers may read RTCP first
                // (FFmpeg's does): a BYE right behind the last packets ended its recording
                // before the last frame was read. Give the media a head start.
                tokio::time::sleep(UDP_BYE_DELAY).await;
                for bytes in &byes {
                    udp.send_rtcp(bytes);
                }
            }
            let res = ending.streaming().teardown(timeout).await;
            this.ended(&ending, res);
        });
        // Tracked, so that a stop while the TEARDOWN waits ends it instead of sending another.
        let mut st = self.state.lock().unwrap();
        match &mut st.phase {
            Phase::Finishing { task, .. } => *task = Some(handle.abort_handle()),
            _ => handle.abort(),
        }
    }

    /// TEARDOWN was answered (or not): Done, and what the application learns of it.
    fn ended(&self, conn: &Arc<super::Connection>, res: Result<(), TeardownError>) {
        {
            let mut st = self.state.lock().unwrap();
            if !matches!(st.phase, Phase::Finishing { .. }) {
                return;
            }
            st.phase = Phase::Done;
        }
        conn.close_udp();
        self.post_element_message(
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
            Ok(()) => gst::info!(CAT, "TEARDOWN answered, all data delivered"),
            Err(TeardownError::NotDelivered(e)) => {
                self.hooks
                    .notify(Notice::Error(e.publishing(&self.cfg.dial.url, true)));
                return;
            }
            Err(TeardownError::NoAnswer(SessionError::Io(e))) => {
                gst::info!(CAT, "no TEARDOWN answer, the server closed: {e}");
            }
            Err(TeardownError::NoAnswer(e)) => {
                self.warn(
                    ErrorKind::Resource(gst::ResourceError::Close),
                    format!("All data was sent, but TEARDOWN failed: {e}"),
                );
            }
        }
        self.hooks.notify(Notice::Eos);
    }

    /// Going to READY: stop now, without waiting on the network. A recording session gets a
    /// best-effort TEARDOWN from a task bounded by the timeout.
    pub(crate) fn stop(&self) {
        let old = {
            let mut st = self.state.lock().unwrap();
            std::mem::replace(&mut st.phase, Phase::Stopped)
        };
        self.cond.notify_all();
        let bound = self.cfg.dial.tcp_timeout.min(Duration::from_secs(2));
        match old {
            Phase::Recording(c) => {
                c.close_udp();
                crate::net::RUNTIME.spawn(async move {
                    let _ = c.streaming().stop(bound).await;
                });
            }
            // The TEARDOWN of an ending is already on its way: its task goes on (a second one
            // would be a request the server never expected), bounded like a stop's.
            Phase::Finishing { connection, task } => {
                connection.close_udp();
                crate::net::RUNTIME.spawn(async move {
                    tokio::time::sleep(bound).await;
                    connection.abort("stopped");
                    if let Some(t) = task {
                        t.abort();
                    }
                });
            }
            Phase::Connecting(a) | Phase::Reconnecting(a) => {
                if let Some(t) = a.task {
                    t.abort();
                }
            }
            Phase::Waiting | Phase::Done | Phase::Failed | Phase::Stopped => {}
        }
    }
}
