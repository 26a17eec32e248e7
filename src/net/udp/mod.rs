//! RTP and RTCP over UDP unicast: a port pair per track, RTP sent from the streaming thread
//! (`sendmmsg` batches on Linux, one send per packet elsewhere), sender reports sent and the
//! server's RTCP read on the RTCP socket.
//!
//! The RTSP connection stays what it is in TCP mode (requests, keep-alive, TEARDOWN, loss
//! detection); this module only carries the media. Frames come as the TCP path frames them
//! (`OutFrame`): the interleave header is left out, its channel tells the track (2n, 2n+1).

use super::queue::OutFrame;
use crate::CAT;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

// Linux and Android batch with sendmmsg. FreeBSD, NetBSD and OpenBSD have it too (libc declares
// it there), but with nowhere to run the tests they take the path every other target takes.
#[cfg(all(
    any(target_os = "linux", target_os = "android"),
    not(feature = "portable-udp")
))]
#[path = "send_batch.rs"]
mod send;
#[cfg(not(all(
    any(target_os = "linux", target_os = "android"),
    not(feature = "portable-udp")
)))]
#[path = "send_each.rs"]
mod send;

/// Largest RTP packet that fits an Ethernet MTU over IPv4 (1500 - 20 - 8): beyond it the
/// packet is fragmented, and one lost fragment loses all of it.
const SAFE_UDP_PAYLOAD: usize = 1472;

/// How long one blocking send may wait for room in the kernel buffer before the stop flags
/// are looked at again.
const SEND_POLL: Duration = Duration::from_millis(100);

/// Packets per `sendmmsg` call.
const BATCH: usize = 32;
/// iovecs per packet: the rewritten first two bytes, then the buffer's memories.
const IOV_PER_PACKET: usize = 8;

/// Binds an RTP/RTCP pair on `local` (its port ignored): an even RTP port and RTCP on the next
/// one, within `range` if given, else ports the OS picks.
pub(crate) fn bind_pair(
    local: SocketAddr,
    range: Option<(u16, u16)>,
) -> io::Result<(UdpSocket, UdpSocket)> {
    let at = |port: u16| {
        let mut a = local;
        a.set_port(port);
        UdpSocket::bind(a)
    };
    match range {
        Some((lo, hi)) => {
            let first = lo.saturating_add(lo % 2);
            let mut p = first;
            while p < hi {
                if let Ok(rtp) = at(p) {
                    if let Ok(rtcp) = at(p + 1) {
                        return Ok((rtp, rtcp));
                    }
                }
                p = p.saturating_add(2);
            }
            Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "no free even/odd UDP port pair in port-range {lo}-{hi} on {}",
                    local.ip()
                ),
            ))
        }
        None => {
            for _ in 0..64 {
                let s = at(0)?;
                let p = s.local_addr()?.port();
                let pair = if p % 2 == 0 {
                    at(p + 1).map(|rtcp| (s, rtcp))
                } else {
                    // The OS gave the odd one: take it as RTCP if its even neighbour is free.
                    at(p - 1).map(|rtp| (rtp, s))
                };
                if let Ok(pair) = pair {
                    return Ok(pair);
                }
            }
            Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "no free even/odd UDP port pair on {} after 64 tries",
                    local.ip()
                ),
            ))
        }
    }
}

/// Why a UDP send did not go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UdpError {
    /// Stopping or flushing.
    Cancelled,
    /// A packet larger than a datagram can be.
    TooLarge(usize),
}

/// One track's sockets and what happened on them.
pub(crate) struct UdpTrack {
    /// Connected to the server's RTP port; blocking with a short timeout.
    rtp: UdpSocket,
    /// Non-blocking, registered with the runtime for reading; reports are sent with plain
    /// `sendto` (losing one to a full buffer is harmless).
    rtcp: Arc<tokio::net::UdpSocket>,
    pub(crate) client_ports: (u16, u16),
    pub(crate) server_rtp: SocketAddr,
    pub(crate) server_rtcp: SocketAddr,
    /// Packets the kernel would not take (drop policy) or refused with an error.
    pub(crate) dropped: AtomicU64,
    /// RTCP packets received from the server.
    pub(crate) rtcp_received: AtomicU64,
    warned_size: AtomicBool,
    warned_error: AtomicBool,
}

impl UdpTrack {
    /// Sets up a track from its bound pair (within the runtime: the RTCP socket registers with
    /// its reactor).
    pub(crate) fn new(
        rtp: UdpSocket,
        rtcp: UdpSocket,
        server_rtp: SocketAddr,
        server_rtcp: SocketAddr,
    ) -> io::Result<UdpTrack> {
        let client_ports = (rtp.local_addr()?.port(), rtcp.local_addr()?.port());
        rtp.connect(server_rtp)?;
        rtp.set_write_timeout(Some(SEND_POLL))?;
        rtcp.set_nonblocking(true)?;
        let rtcp = Arc::new(tokio::net::UdpSocket::from_std(rtcp)?);
        Ok(UdpTrack {
            rtp,
            rtcp,
            client_ports,
            server_rtp,
            server_rtcp,
            dropped: AtomicU64::new(0),
            rtcp_received: AtomicU64::new(0),
            warned_size: AtomicBool::new(false),
            warned_error: AtomicBool::new(false),
        })
    }

    fn note_error(&self, e: &io::Error, packets: u64) {
        self.dropped.fetch_add(packets, Ordering::Relaxed);
        if !self.warned_error.swap(true, Ordering::Relaxed) {
            gst::warning!(
                CAT,
                "UDP send to {} failed: {e} (counted as dropped; warned once per track)",
                self.server_rtp
            );
        }
    }

    /// Sends an RTCP compound (as framed for the interleaved path: the 4-byte header is
    /// skipped) to the server's RTCP port.
    fn send_rtcp(&self, framed: &[u8]) {
        let Some(packet) = framed.get(4..) else {
            return;
        };
        if let Err(e) =
            socket2::SockRef::from(&*self.rtcp).send_to(packet, &self.server_rtcp.into())
        {
            gst::debug!(CAT, "RTCP to {} not sent: {e}", self.server_rtcp);
        }
    }

    /// Sends RTP packets in `sendmmsg` batches. `block`: wait for kernel buffer room (never drop
    /// knowingly); otherwise a full buffer drops the packet (counted).
    fn send_rtp(
        &self,
        frames: &[&OutFrame],
        block: bool,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), UdpError> {
        for chunk in frames.chunks(BATCH) {
            send::send_chunk(self, chunk, block, stop)?;
        }
        Ok(())
    }

    /// A packet larger than a datagram can be is an error; one that will be fragmented is
    /// warned about once.
    fn check_size(&self, len: usize) -> Result<(), UdpError> {
        if len > 65_507 {
            return Err(UdpError::TooLarge(len));
        }
        if len > SAFE_UDP_PAYLOAD && !self.warned_size.swap(true, Ordering::Relaxed) {
            gst::warning!(
                CAT,
                "RTP packet of {len} bytes to {} exceeds {SAFE_UDP_PAYLOAD} bytes: it will be fragmented (lower the payloader's mtu)",
                self.server_rtp
            );
        }
        Ok(())
    }

    /// A packet whose memories could not be mapped or are too many: dropped, never sent by
    /// halves.
    fn unsendable(&self) {
        self.note_error(
            &io::Error::other("RTP buffer with too many or unmappable memories"),
            1,
        );
    }
}

/// Mapped memories of packets being sent, each with the offset its bytes start at.
type Maps<'a, const N: usize> =
    smallvec::SmallVec<[(gst::memory::MemoryMap<'a, gst::memory::Readable>, usize); N]>;

/// Maps the memories of `buffer` from byte `skip` on, one by one (mapping a multi-memory buffer
/// whole would merge it into a copy), appending them to `maps`: the range they take there, or
/// None if one cannot be mapped or more than `room` are needed.
fn map_memories<'a, const N: usize>(
    buffer: &'a gst::BufferRef,
    skip: u8,
    room: usize,
    maps: &mut Maps<'a, N>,
) -> Option<std::ops::Range<usize>> {
    let first = maps.len();
    let mut to_skip = skip as usize;
    for m in buffer.iter_memories() {
        let map = m.map_readable().ok();
        let Some(map) = map else {
            maps.truncate(first);
            return None;
        };
        let len = map.as_slice().len();
        if to_skip >= len {
            to_skip -= len;
            continue;
        }
        if maps.len() - first == room {
            maps.truncate(first);
            return None;
        }
        maps.push((map, to_skip));
        to_skip = 0;
    }
    Some(first..maps.len())
}

/// Called with RTCP the server sent: the track's RTCP channel and the packet.
pub(crate) type RtcpHandler = Arc<dyn Fn(u8, &[u8]) + Send + Sync>;

/// Every track of one recording connection in UDP mode.
pub(crate) struct UdpSession {
    pub(crate) tracks: Vec<Arc<UdpTrack>>,
    /// Never drop knowingly: wait for room in the kernel buffer.
    block: bool,
    stopped: AtomicBool,
    readers: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl UdpSession {
    /// `block`: congestion-policy=block. Under the drop policy the RTP sockets are made
    /// non-blocking, so a full kernel buffer drops the packet on every platform (the batch path
    /// also passes `MSG_DONTWAIT`).
    pub(crate) fn new(tracks: Vec<Arc<UdpTrack>>, block: bool) -> io::Result<Arc<UdpSession>> {
        for t in &tracks {
            t.rtp.set_nonblocking(!block)?;
        }
        gst::debug!(CAT, "RTP over UDP: {}", send::HOW);
        Ok(Arc::new(UdpSession {
            tracks,
            block,
            stopped: AtomicBool::new(false),
            readers: Default::default(),
        }))
    }

    /// Reads what the server sends to our RTCP ports (receiver reports) and hands it on. Only
    /// datagrams from the server's address are taken. Within the runtime.
    pub(crate) fn start_readers(self: &Arc<Self>, on_rtcp: RtcpHandler) {
        let mut readers = self.readers.lock().unwrap();
        for (i, t) in self.tracks.iter().enumerate() {
            let sock = t.rtcp.clone();
            let server = t.server_rtcp.ip();
            let weak = Arc::downgrade(t);
            let on_rtcp = on_rtcp.clone();
            let channel = (2 * i + 1) as u8;
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                        // ICMP errors surface here too; the socket stays usable.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    if from.ip() != server {
                        gst::debug!(CAT, "ignoring {n} bytes of RTCP from {from}");
                        continue;
                    }
                    let Some(t) = weak.upgrade() else { return };
                    t.rtcp_received.fetch_add(1, Ordering::Relaxed);
                    on_rtcp(channel, &buf[..n]);
                }
            });
            readers.push(task.abort_handle());
        }
    }

    fn track_for(&self, channel: u8) -> Option<&UdpTrack> {
        self.tracks.get(channel as usize / 2).map(|t| &**t)
    }

    /// Sends frames as the TCP path would queue them: RTP to each track's RTP port, framed
    /// RTCP (`$`, odd channel) to its RTCP port, in order. Runs on the caller's thread.
    pub(crate) fn send(&self, frames: &[OutFrame]) -> Result<(), UdpError> {
        self.send_until(frames, &AtomicBool::new(false))
    }

    /// [`Self::send`] for a pad that may be flushed: a blocked send gives up within its
    /// 100 ms re-check once `cancel` is set (flushing is per pad).
    pub(crate) fn send_until(
        &self,
        frames: &[OutFrame],
        cancel: &AtomicBool,
    ) -> Result<(), UdpError> {
        let stop = || self.stopped.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed);
        if stop() {
            return Err(UdpError::Cancelled);
        }
        // Runs of RTP frames for one track go out as one batch.
        let mut run: smallvec::SmallVec<[&OutFrame; BATCH]> = smallvec::SmallVec::new();
        let mut run_channel = None;
        let flush = |run: &mut smallvec::SmallVec<[&OutFrame; BATCH]>, ch: Option<u8>| {
            if let Some(t) = ch.and_then(|c| self.track_for(c)) {
                t.send_rtp(run, self.block, &stop)?;
            }
            run.clear();
            Ok::<(), UdpError>(())
        };
        for f in frames {
            match f {
                OutFrame::Rtp { head, .. } => {
                    if run_channel != Some(head[1]) || run.len() == BATCH {
                        flush(&mut run, run_channel)?;
                        run_channel = Some(head[1]);
                    }
                    run.push(f);
                }
                OutFrame::Control(bytes) if bytes.first() == Some(&b'$') && bytes.len() > 4 => {
                    flush(&mut run, run_channel)?;
                    if let Some(t) = self.track_for(bytes[1]) {
                        t.send_rtcp(bytes);
                    }
                }
                OutFrame::Control(_) => {
                    gst::debug!(CAT, "RTSP text on the UDP path ignored");
                }
                // The senders give UDP one buffer per packet; interleaved frames are TCP's.
                OutFrame::Wire { .. } => {
                    gst::warning!(CAT, "interleaved frames on the UDP path dropped");
                }
            }
        }
        flush(&mut run, run_channel)
    }

    /// A framed RTCP compound (as `TrackSender::report` builds it) to its track's RTCP port.
    pub(crate) fn send_rtcp(&self, framed: &[u8]) {
        if self.stopped.load(Ordering::Relaxed) || framed.len() <= 4 {
            return;
        }
        if let Some(t) = self.track_for(framed[1]) {
            t.send_rtcp(framed);
        }
    }

    /// Nothing more is sent or read; the sockets close when the last user lets go.
    pub(crate) fn close(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        for r in self.readers.lock().unwrap().drain(..) {
            r.abort();
        }
    }
}

impl Drop for UdpSession {
    fn drop(&mut self) {
        self.close();
    }
}

/// Where to send a track's media: the `source` the server named, if it is an address of the
/// same family as ours, else the RTSP peer.
pub(crate) fn destination(peer: IpAddr, source: Option<&str>) -> IpAddr {
    match source.and_then(|s| s.trim().parse::<IpAddr>().ok()) {
        Some(ip) if ip.is_ipv4() == peer.is_ipv4() && !ip.is_unspecified() => ip,
        Some(ip) => {
            gst::warning!(
                CAT,
                "server's source={ip} is unusable from a connection to {peer}: sending to {peer}"
            );
            peer
        }
        None => {
            if let Some(s) = source {
                gst::info!(CAT, "source={s:?} is not an address: sending to {peer}");
            }
            peer
        }
    }
}

#[cfg(test)]
mod tests;
