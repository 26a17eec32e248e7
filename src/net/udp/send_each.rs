//! RTP over UDP one datagram per call, through the socket API every platform has (macOS,
//! Windows, the BSDs; on Linux with the `portable-udp` feature). Same behaviour as the batch
//! path: blocking sends wait for room and re-check the stop flags, the drop policy's socket is
//! non-blocking and a full buffer loses the packet (counted), an ICMP error is reported and the
//! packet tried again.

use super::{map_memories, Maps, UdpError, UdpTrack, IOV_PER_PACKET};
use crate::net::queue::OutFrame;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;

/// How this build sends RTP over UDP, for the log.
pub(super) const HOW: &str = "one send per packet";

pub(super) fn send_chunk(
    track: &UdpTrack,
    chunk: &[&OutFrame],
    block: bool,
    stop: &dyn Fn() -> bool,
) -> Result<(), UdpError> {
    let sock = socket2::SockRef::from(&track.rtp);
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
        track.check_size(len)?;
        let rewritten = &head[4..*head_len as usize];
        let room = IOV_PER_PACKET - usize::from(!rewritten.is_empty());
        let mut maps: Maps<'_, IOV_PER_PACKET> = smallvec::SmallVec::new();
        if map_memories(buffer, *skip, room, &mut maps).is_none() {
            track.unsendable();
            continue;
        }
        let mut iov: smallvec::SmallVec<[IoSlice<'_>; IOV_PER_PACKET]> = smallvec::SmallVec::new();
        if !rewritten.is_empty() {
            iov.push(IoSlice::new(rewritten));
        }
        iov.extend(
            maps.iter()
                .map(|(m, off)| IoSlice::new(&m.as_slice()[*off..])),
        );
        // One retry after an ICMP error: some stacks keep reporting it, and a packet must not
        // spin here for ever.
        let mut refused = false;
        loop {
            let e = match sock.send_vectored(&iov) {
                // A datagram goes out whole or not at all.
                Ok(_) => break,
                Err(e) => e,
            };
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                // A send timeout is EAGAIN on Unix, WSAETIMEDOUT on Windows.
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if block => {
                    if stop() {
                        return Err(UdpError::Cancelled);
                    }
                }
                io::ErrorKind::WouldBlock => {
                    // Drop policy: the kernel has no room, this packet is lost.
                    track.dropped.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset if !refused => {
                    track.note_error(&e, 0);
                    refused = true;
                }
                _ if is_message_size(&e) => return Err(UdpError::TooLarge(len)),
                _ => {
                    track.note_error(&e, 1);
                    break;
                }
            }
        }
    }
    Ok(())
}

/// EMSGSIZE: larger than the stack takes (macOS' default UDP limit is 9216 bytes).
fn is_message_size(e: &io::Error) -> bool {
    #[cfg(unix)]
    let code = libc::EMSGSIZE;
    // WSAEMSGSIZE
    #[cfg(windows)]
    let code = 10040;
    #[cfg(not(any(unix, windows)))]
    let code = -1;
    e.raw_os_error() == Some(code)
}
