//! RTP and RTCP over UDP unicast: a port pair per track, RTP sent from the streaming thread in
//! `sendmmsg` batches, sender reports sent and the server's RTCP read on the RTCP socket.
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
            self.send_chunk(chunk, block, stop)?;
        }
        Ok(())
    }

    fn send_chunk(
        &self,
        chunk: &[&OutFrame],
        block: bool,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), UdpError> {
        // Memories are mapped one by one (mapping a multi-memory buffer whole would merge it
        // into a copy); the maps live on the stack until the call returns.
        let mut maps: smallvec::SmallVec<
            [gst::memory::MemoryMap<'_, gst::memory::Readable>; BATCH * 2],
        > = smallvec::SmallVec::new();
        // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid.
        let mut iovs: [[libc::iovec; IOV_PER_PACKET]; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut n = 0;
        for f in chunk {
            let OutFrame::Rtp {
                head,
                head_len,
                buffer,
                skip,
            } = f
            else {
                continue;
            };
            let len = buffer.size() - *skip as usize + (*head_len as usize - 4);
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
            let iov = &mut iovs[n];
            let mut k = 0;
            if *head_len > 4 {
                iov[0] = libc::iovec {
                    iov_base: head[4..].as_ptr() as *mut libc::c_void,
                    iov_len: *head_len as usize - 4,
                };
                k = 1;
            }
            let mut to_skip = *skip as usize;
            for m in buffer.iter_memories() {
                let Ok(map) = m.map_readable() else {
                    // Never send half a packet.
                    k = usize::MAX;
                    break;
                };
                let s = map.as_slice();
                if to_skip >= s.len() {
                    to_skip -= s.len();
                    continue;
                }
                if k == IOV_PER_PACKET {
                    // More memories than we have room for: not seen from payloaders.
                    k = usize::MAX;
                    break;
                }
                iov[k] = libc::iovec {
                    iov_base: s[to_skip..].as_ptr() as *mut libc::c_void,
                    iov_len: s.len() - to_skip,
                };
                to_skip = 0;
                k += 1;
                // The map's data pointer stays valid however the map struct moves.
                maps.push(map);
            }
            if k == usize::MAX {
                self.note_error(
                    &io::Error::other("RTP buffer with too many or unmappable memories"),
                    1,
                );
                continue;
            }
            hdrs[n].msg_hdr.msg_iov = iov.as_mut_ptr();
            hdrs[n].msg_hdr.msg_iovlen = k as _;
            n += 1;
        }
        let mut done = 0;
        let flags = if block { 0 } else { libc::MSG_DONTWAIT };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.rtp);
        while done < n {
            // SAFETY: hdrs[done..n] point at iovecs and mapped memories alive until we return.
            let r = unsafe {
                libc::sendmmsg(fd, hdrs[done..n].as_mut_ptr(), (n - done) as _, flags as _)
            };
            if r > 0 {
                done += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) if block => {
                    if stop() {
                        return Err(UdpError::Cancelled);
                    }
                }
                Some(libc::EAGAIN) => {
                    // Drop policy: the kernel has no room, this packet is lost.
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    done += 1;
                }
                // An ICMP error about an earlier datagram (nobody listening yet, or any
                // more): reported once, the packet is tried again.
                Some(libc::ECONNREFUSED) => self.note_error(&e, 0),
                Some(libc::EMSGSIZE) => {
                    let len = (0..hdrs[done].msg_hdr.msg_iovlen as usize)
                        .map(|i| iovs[done][i].iov_len)
                        .sum();
                    return Err(UdpError::TooLarge(len));
                }
                _ => {
                    self.note_error(&e, 1);
                    done += 1;
                }
            }
        }
        drop(maps);
        Ok(())
    }
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
    pub(crate) fn new(tracks: Vec<Arc<UdpTrack>>, block: bool) -> Arc<UdpSession> {
        Arc::new(UdpSession {
            tracks,
            block,
            stopped: AtomicBool::new(false),
            readers: Default::default(),
        })
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
mod tests {
    use super::*;

    fn frame(payload: &[u8], channel: u8, pt: Option<u8>) -> OutFrame {
        OutFrame::rtp(gst::Buffer::from_slice(payload.to_vec()), channel, pt).unwrap()
    }

    #[test]
    fn pairs_are_even_and_adjacent() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            let (rtp, rtcp) = bind_pair(local, None).unwrap();
            let p = rtp.local_addr().unwrap().port();
            assert_eq!(p % 2, 0);
            assert_eq!(rtcp.local_addr().unwrap().port(), p + 1);
            held.push((rtp, rtcp));
        }
        // A range: the first free pair in it, then the next.
        let (a, _b) = bind_pair(local, None).unwrap();
        let base = a.local_addr().unwrap().port();
        drop(a);
        drop(_b);
        let (r1, _c1) = bind_pair(local, Some((base - 1, base + 3))).unwrap();
        assert_eq!(r1.local_addr().unwrap().port(), base);
        let (r2, _c2) = bind_pair(local, Some((base - 1, base + 3))).unwrap();
        assert_eq!(r2.local_addr().unwrap().port(), base + 2);
        let e = bind_pair(local, Some((base, base + 3))).unwrap_err();
        assert!(e.to_string().contains("port-range"), "{e}");
    }

    #[test]
    fn ipv6_loopback_pair_and_send() {
        gst::init().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local: SocketAddr = "[::1]:0".parse().unwrap();
        let srv_rtp = UdpSocket::bind(local).unwrap();
        let srv_rtcp = UdpSocket::bind(local).unwrap();
        srv_rtp
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let session = rt.block_on(async {
            let (rtp, rtcp) = bind_pair(local, None).unwrap();
            assert!(rtp.local_addr().unwrap().is_ipv6());
            UdpSession::new(
                vec![Arc::new(
                    UdpTrack::new(
                        rtp,
                        rtcp,
                        srv_rtp.local_addr().unwrap(),
                        srv_rtcp.local_addr().unwrap(),
                    )
                    .unwrap(),
                )],
                false,
            )
        });
        session.send(&[frame(&[0x80, 96, 0, 1], 0, None)]).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = srv_rtp.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[0x80, 96, 0, 1]);
        assert_eq!(from.port(), session.tracks[0].client_ports.0);
    }

    #[test]
    fn source_is_honoured_when_usable() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(destination(peer, None), peer);
        assert_eq!(
            destination(peer, Some("127.0.0.2")),
            "127.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(destination(peer, Some("::1")), peer);
        assert_eq!(destination(peer, Some("0.0.0.0")), peer);
        assert_eq!(destination(peer, Some("server.example")), peer);
    }

    #[test]
    fn batches_reach_the_right_ports_with_pt_rewrite() {
        gst::init().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // The "server": two RTP and two RTCP sockets.
        let srv: Vec<UdpSocket> = (0..4).map(|_| UdpSocket::bind(local).unwrap()).collect();
        for s in &srv {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let addr = |i: usize| srv[i].local_addr().unwrap();
        let session = rt.block_on(async {
            let t0 = bind_pair(local, None).unwrap();
            let t1 = bind_pair(local, None).unwrap();
            UdpSession::new(
                vec![
                    Arc::new(UdpTrack::new(t0.0, t0.1, addr(0), addr(1)).unwrap()),
                    Arc::new(UdpTrack::new(t1.0, t1.1, addr(2), addr(3)).unwrap()),
                ],
                true,
            )
        });
        let mut frames: Vec<OutFrame> = (0..40u8)
            .map(|i| frame(&[0x80, 96, 0, i, 9, 9], 0, None))
            .collect();
        frames.push(OutFrame::Control(vec![b'$', 3, 0, 4, 0x80, 200, 0, 0]));
        frames.push(frame(&[0x80, 0xe0, 7, 7], 2, Some(97)));
        session.send(&frames).unwrap();
        let mut buf = [0u8; 64];
        for i in 0..40u8 {
            let n = srv[0].recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[0x80, 96, 0, i, 9, 9]);
        }
        let n = srv[3].recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[0x80, 200, 0, 0]);
        let n = srv[2].recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[0x80, 0x80 | 97, 7, 7]);
        // RTCP from the server reaches the handler with the track's RTCP channel.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let client_rtcp = session.tracks[1].client_ports.1;
        rt.block_on(async {
            session.start_readers(Arc::new(move |ch, data| {
                let _ = tx.send((ch, data.to_vec()));
            }));
        });
        srv[3]
            .send_to(&[0x80, 201, 0, 1, 1, 2, 3, 4], ("127.0.0.1", client_rtcp))
            .unwrap();
        let got = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap()
        });
        assert_eq!(got, (3, vec![0x80, 201, 0, 1, 1, 2, 3, 4]));
        session.close();
        assert_eq!(session.send(&frames), Err(UdpError::Cancelled));
    }
}
