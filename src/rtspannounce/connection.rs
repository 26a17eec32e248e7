//! One recording connection as a value: its I/O tasks, its queue or UDP sockets, one sender
//! per track (SSRC, sequence numbers, payload type rewrite, report state) and what the server
//! agreed. A frame is framed by a connection's sender and queued on that same connection, so
//! it can never leave on another one; a reconnect drops the old value as a whole.

use super::sender::{FrameEvents, Media, NtpMapper, Room, TrackSender, TrackSetup};
use crate::net::connection::{FailureHandler, RequestHandler, Streaming};
use crate::net::dial::Dialed;
use crate::net::queue::{OutFrame, SendQueue};
use crate::net::udp::{UdpError, UdpSession};
use crate::rtcp::ReportBlock;
use crate::rtsp::url::ControlStyle;
use crate::CAT;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Queue bounds and the congestion policy, from the element's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendLimits {
    pub max_bytes: usize,
    /// With the drop policy, the longest a packet may wait in the queue (zero: no bound).
    pub max_time: Duration,
    /// Drop whole frames (video up to a keyframe) instead of blocking.
    pub drop_when_congested: bool,
}

/// What the stats report about a connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionInfo {
    /// Where RECORD was answered (after redirects).
    pub location: String,
    pub server: Option<String>,
    /// TLS version and cipher suite (None: plain).
    pub tls: Option<String>,
    pub session_id: Option<String>,
    pub handshake: Duration,
    pub round_trips: u32,
}

/// Loss the server reported for one of our tracks.
pub(crate) struct LossReport {
    pub channel: u8,
    pub cumulative: i32,
    pub fraction_percent: u32,
}

/// How a send on a connection ended.
pub(crate) enum Sent {
    Ok(FrameEvents),
    /// The connection is gone (failed, replaced, stopped) or the pad is flushing: these
    /// packets did not go out.
    Lost {
        packets: u64,
    },
    /// A packet too large for the transport (`how` it would have gone).
    TooLarge {
        len: usize,
        how: &'static str,
    },
}

pub(crate) struct Connection {
    pub id: u64,
    streaming: Arc<Streaming>,
    udp: Option<Arc<UdpSession>>,
    senders: Vec<Arc<TrackSender>>,
    /// The caps each track's SDP was built from: its sender follows these.
    announced: Vec<gst::Caps>,
    pub info: ConnectionInfo,
    limits: SendLimits,
}

/// What a new connection is built from.
pub(crate) struct Setup {
    pub id: u64,
    pub dialed: Dialed,
    pub announced: Vec<gst::Caps>,
    /// After a reconnect, video waits for a keyframe; audio resumes at once.
    pub reconnected: bool,
    pub style: ControlStyle,
    pub limits: SendLimits,
    pub keepalive: bool,
    pub on_failure: FailureHandler,
    pub on_request: Option<RequestHandler>,
    /// The pipeline clock, for receiver reports' round-trip times.
    pub ntp: Arc<dyn Fn() -> NtpMapper + Send + Sync>,
    pub on_loss: Arc<dyn Fn(LossReport) + Send + Sync>,
    /// The server's SRTCP does not authenticate with its key: a warning, once per track.
    pub on_srtcp_failure: Arc<dyn Fn(String) + Send + Sync>,
}

/// Half the session timeout, at most 10 s: servers that time out on silence (ZLMediaKit 15 s,
/// MediaMTX 10 s) see a request well within their limit even when no media flows.
fn keepalive_interval(session_timeout_s: u64) -> Duration {
    // The timeout is the server's number: `;timeout=99999999999999999` must not overflow.
    Duration::from_millis(session_timeout_s.saturating_mul(500).clamp(500, 10_000))
}

fn clock_rate(caps: &gst::Caps) -> u32 {
    caps.structure(0)
        .and_then(|s| s.get::<i32>("clock-rate").ok())
        .unwrap_or(90_000)
        .max(1) as u32
}

fn field<'a>(caps: &'a gst::Caps, name: &str) -> &'a str {
    caps.structure(0)
        .and_then(|s| s.get::<&str>(name).ok())
        .unwrap_or("")
}

pub(crate) fn is_video(caps: &gst::Caps) -> bool {
    field(caps, "media") == "video"
}

impl Connection {
    /// Starts the connection's I/O tasks (from within the runtime): reader, writer, UDP
    /// readers, keep-alive.
    pub(crate) fn start(s: Setup) -> Arc<Connection> {
        let Setup {
            id,
            dialed,
            announced,
            reconnected,
            style,
            limits,
            keepalive,
            on_failure,
            on_request,
            ntp,
            on_loss,
            on_srtcp_failure,
        } = s;
        let local = dialed.control.stream.local_addr().ok();
        let info = ConnectionInfo {
            location: dialed.url.request_uri(),
            server: dialed
                .control
                .stream
                .peer_addr()
                .ok()
                .map(|a| a.to_string()),
            tls: dialed.control.stream.tls_summary(),
            session_id: dialed.negotiated.session_id.clone(),
            handshake: dialed.duration,
            round_trips: dialed.round_trips,
        };
        // One CNAME for every track: receivers sync the tracks that share it.
        let cname = format!(
            "rtspannounce-{:08x}@{}",
            rand::random::<u32>(),
            local
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|| "localhost".into())
        );
        let srtp = dialed.srtp.as_ref();
        let senders = announced
            .iter()
            .zip(&dialed.negotiated.tracks)
            .zip(&dialed.pt_rewrites)
            .enumerate()
            .map(|(i, ((caps, t), rewrite))| {
                Arc::new(TrackSender::new(TrackSetup {
                    channel: t.rtp_channel,
                    rtcp_channel: t.rtcp_channel,
                    pt_rewrite: *rewrite,
                    clock_rate: clock_rate(caps),
                    cname: cname.clone(),
                    encoding: field(caps, "encoding-name").to_string(),
                    is_video: is_video(caps),
                    wait_keyframe: reconnected && is_video(caps),
                    srtp: srtp.and_then(|s| s.protectors.get(i).cloned()),
                    srtcp_in: srtp.and_then(|s| s.unprotectors.get(i).cloned().flatten()),
                }))
            })
            .collect();
        let Dialed {
            control,
            negotiated,
            ctx,
            url,
            udp,
            ..
        } = dialed;
        Arc::new_cyclic(|weak: &Weak<Connection>| {
            let weak = weak.clone();
            let on_rtcp: crate::net::connection::RtcpHandler =
                Arc::new(move |channel: u8, data: &[u8]| {
                    if let Some(c) = weak.upgrade() {
                        match c.receiver_report(channel, data, &ntp()) {
                            Ok(losses) => losses.into_iter().for_each(|l| on_loss(l)),
                            Err(warning) => warning.into_iter().for_each(|w| on_srtcp_failure(w)),
                        }
                    }
                });
            if let Some(u) = &udp {
                // The server's receiver reports arrive on our RTCP ports.
                u.start_readers(on_rtcp.clone());
            }
            let streaming = Streaming::start(
                control,
                ctx,
                url.aggregate_uri(style),
                Arc::new(SendQueue::new(limits.max_bytes)),
                on_failure,
                on_rtcp,
                on_request,
            );
            if keepalive {
                // A Public list without GET_PARAMETER: keep alive with OPTIONS from the start.
                let options = negotiated
                    .public
                    .as_ref()
                    .is_some_and(|p| !p.iter().any(|m| m == "GET_PARAMETER"));
                streaming.start_keepalive(keepalive_interval(negotiated.session_timeout), options);
            }
            Connection {
                id,
                streaming,
                udp,
                senders,
                announced,
                info,
                limits,
            }
        })
    }

    pub(crate) fn queue(&self) -> &SendQueue {
        &self.streaming.queue
    }

    pub(crate) fn streaming(&self) -> &Arc<Streaming> {
        &self.streaming
    }

    pub(crate) fn udp(&self) -> Option<&Arc<UdpSession>> {
        self.udp.as_ref()
    }

    pub(crate) fn senders(&self) -> &[Arc<TrackSender>] {
        &self.senders
    }

    pub(crate) fn announced(&self, track: usize) -> Option<&gst::Caps> {
        self.announced.get(track)
    }

    /// Frames `media` for track `track` and sends them: queued (TCP) or straight out (UDP).
    pub(crate) fn send(
        &self,
        track: usize,
        media: impl Iterator<Item = (Media, Option<u64>)>,
        ntp: &dyn Fn() -> NtpMapper,
        flushing: &AtomicBool,
    ) -> Sent {
        thread_local! {
            // One per streaming thread, reused: no allocation per buffer list.
            static FRAMES: std::cell::RefCell<Vec<OutFrame>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let Some(tx) = self.senders.get(track) else {
            return Sent::Lost { packets: 0 };
        };
        FRAMES.with_borrow_mut(|frames| {
            frames.clear();
            let order = tx.order.lock().unwrap();
            let sent = match &self.udp {
                Some(udp) => self.send_udp(tx, udp, media, ntp, flushing, frames),
                None => self.send_tcp(tx, media, ntp, flushing, frames),
            };
            if tx.report_due.swap(false, Ordering::AcqRel) {
                self.send_report(tx, &ntp(), false);
            }
            drop(order);
            frames.clear();
            sent
        })
    }

    /// One track's report, behind everything queued before it. False once the connection is
    /// gone.
    fn send_report(&self, tx: &TrackSender, ntp: &NtpMapper, bye: bool) -> bool {
        let Some(bytes) = tx.report(ntp, bye) else {
            return true;
        };
        match &self.udp {
            Some(u) => {
                u.send_rtcp(&bytes);
                true
            }
            None => self.queue().push_control(bytes).is_ok(),
        }
    }

    fn send_tcp(
        &self,
        tx: &TrackSender,
        media: impl Iterator<Item = (Media, Option<u64>)>,
        ntp: &dyn Fn() -> NtpMapper,
        flushing: &AtomicBool,
        frames: &mut Vec<OutFrame>,
    ) -> Sent {
        let queue = self.queue();
        let SendLimits {
            max_bytes: max,
            max_time,
            drop_when_congested,
        } = self.limits;
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
        let framed = tx.frames(
            media,
            ntp,
            drop_when_congested.then_some(&room as &dyn Fn() -> Room),
            true,
            frames,
        );
        // Drop policy: never wait for room (frames were only started when there was some).
        let queued = if drop_when_congested {
            queue.push_all_nowait(frames)
        } else {
            queue.push_all_until(frames, flushing)
        };
        match (framed, queued) {
            (Err(len), _) => Sent::TooLarge {
                len,
                how: "interleaved (at most 65535 bytes)",
            },
            (Ok(ev), Ok(())) => Sent::Ok(ev),
            (Ok(ev), Err((_, queued))) => {
                // A flush (or the connection's end) came between framing and queueing: what
                // was not queued never goes out, so the track continues from what was.
                tx.not_queued(frames, queued, ev.resume);
                Sent::Lost {
                    packets: rtp_packets(&frames[queued..]),
                }
            }
        }
    }

    /// UDP: packets go out from this thread (no queue); the kernel drops rather than blocks,
    /// so the drop policy is the kernel's (a full socket buffer drops the packet, counted),
    /// and `block` waits for room instead.
    fn send_udp(
        &self,
        tx: &TrackSender,
        udp: &UdpSession,
        media: impl Iterator<Item = (Media, Option<u64>)>,
        ntp: &dyn Fn() -> NtpMapper,
        flushing: &AtomicBool,
        frames: &mut Vec<OutFrame>,
    ) -> Sent {
        let framed = tx.frames(media, ntp, None, false, frames);
        let packets = rtp_packets(frames);
        let sent = udp.send_until(frames, flushing);
        match (framed, sent) {
            (Err(len), _) | (_, Err(UdpError::TooLarge(len))) => Sent::TooLarge {
                len,
                how: "over UDP",
            },
            (Ok(ev), Ok(())) => Sent::Ok(ev),
            (Ok(_), Err(UdpError::Cancelled)) => Sent::Lost { packets },
        }
    }

    /// What arrived before RECORD's answer, framed by this connection's senders (held buffers
    /// per track, in track order).
    pub(crate) fn frame_held(
        &self,
        held: &mut [&mut Vec<(Media, Option<u64>)>],
        ntp: &NtpMapper,
        out: &mut Vec<OutFrame>,
    ) {
        for (tx, media) in self.senders.iter().zip(held.iter_mut()) {
            if let Err(len) = tx.frames(media.drain(..), &|| *ntp, None, self.udp.is_none(), out) {
                gst::warning!(CAT, "dropping {len}-byte packet: too large");
            }
        }
    }

    /// Sends held frames: preloaded ahead of everything (TCP), or out now (UDP; may block,
    /// bounded, on socket room: never call with a lock held).
    pub(crate) fn send_held(&self, frames: Vec<OutFrame>) {
        match &self.udp {
            Some(u) => {
                if let Err(e) = u.send(&frames) {
                    gst::warning!(CAT, "held packets not sent over UDP: {e:?}");
                }
            }
            None => self.queue().preload(frames),
        }
    }

    /// One sender report per track (with BYE at the end): over UDP to each track's RTCP port,
    /// else queued after the media. False once the connection is gone.
    ///
    /// A periodic report never waits for a producer that is queueing packets: that producer
    /// sends it after them. The last one (BYE) waits, as it must follow every packet.
    pub(crate) fn send_reports(&self, ntp: &NtpMapper, bye: bool) -> bool {
        for tx in &self.senders {
            let order = if bye {
                tx.order.lock().unwrap()
            } else {
                match tx.order.try_lock() {
                    Ok(g) => g,
                    Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => {
                        tx.report_due.store(true, Ordering::Release);
                        continue;
                    }
                }
            };
            let ok = self.send_report(tx, ntp, bye);
            drop(order);
            if !ok {
                return false;
            }
        }
        true
    }

    /// The BYE reports, framed, for UDP to send after a delay.
    pub(crate) fn byes(&self, ntp: &NtpMapper) -> Vec<Vec<u8>> {
        self.senders
            .iter()
            .filter_map(|tx| tx.report(ntp, true))
            .collect()
    }

    /// RTCP from the server: report blocks about our tracks update the stats; the new losses
    /// come back.
    fn receiver_report(
        &self,
        channel: u8,
        data: &[u8],
        ntp: &NtpMapper,
    ) -> Result<Vec<LossReport>, Option<String>> {
        let Some(tx) = self
            .senders
            .iter()
            .find(|t| t.rtcp_channel == channel || t.channel == channel)
        else {
            return Ok(Vec::new());
        };
        let arrival = crate::rtcp::ntp_middle(ntp.ntp_at(ntp.running_now().unwrap_or(0)));
        let data = tx.readable_rtcp(data)?;
        Ok(crate::rtcp::report_blocks(&data)
            .iter()
            .filter_map(|block: &ReportBlock| {
                tx.receiver_report(block, arrival).map(|lost| LossReport {
                    channel: tx.channel,
                    cumulative: lost,
                    fraction_percent: block.fraction_lost as u32 * 100 / 256,
                })
            })
            .collect())
    }

    /// Nothing more is sent or read: the tasks end, the UDP sockets close, a producer blocked
    /// on the queue returns.
    pub(crate) fn abort(&self, why: &str) {
        self.queue().fail(why.to_string());
        self.streaming.abort();
        self.close_udp();
    }

    pub(crate) fn close_udp(&self) {
        if let Some(u) = &self.udp {
            u.close();
        }
    }
}

/// How many RTP packets `frames` holds (drops are counted per packet, not per buffer list).
fn rtp_packets(frames: &[OutFrame]) -> u64 {
    frames.iter().map(OutFrame::rtp_packets).sum()
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
