//! RTP over UDP in `sendmmsg` batches (Linux, Android): one syscall per 32 packets, iovecs and
//! memory maps on the stack, no allocation per packet.

use super::{map_memories, Maps, UdpError, UdpTrack, BATCH, IOV_PER_PACKET};
use crate::net::queue::OutFrame;
use std::io;
use std::sync::atomic::Ordering;

/// How this build sends RTP over UDP, for the log.
pub(super) const HOW: &str = "sendmmsg batches of up to 32 packets";

pub(super) fn send_chunk(
    track: &UdpTrack,
    chunk: &[&OutFrame],
    block: bool,
    stop: &dyn Fn() -> bool,
) -> Result<(), UdpError> {
    let mut maps: Maps<'_, { BATCH * 2 }> = smallvec::SmallVec::new();
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
        track.check_size(buffer.size() - *skip as usize + (*head_len as usize - 4))?;
        let iov = &mut iovs[n];
        let mut k = 0;
        if *head_len > 4 {
            iov[0] = libc::iovec {
                iov_base: head[4..].as_ptr() as *mut libc::c_void,
                iov_len: *head_len as usize - 4,
            };
            k = 1;
        }
        let Some(range) = map_memories(buffer, *skip, IOV_PER_PACKET - k, &mut maps) else {
            track.unsendable();
            continue;
        };
        for (map, offset) in &maps[range] {
            let s = &map.as_slice()[*offset..];
            // The map's data pointer stays valid however the map struct moves.
            iov[k] = libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            };
            k += 1;
        }
        hdrs[n].msg_hdr.msg_iov = iov.as_mut_ptr();
        hdrs[n].msg_hdr.msg_iovlen = k as _;
        n += 1;
    }
    let mut done = 0;
    let flags = if block { 0 } else { libc::MSG_DONTWAIT };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&track.rtp);
    while done < n {
        // SAFETY: hdrs[done..n] point at iovecs and mapped memories alive until we return.
        let r =
            unsafe { libc::sendmmsg(fd, hdrs[done..n].as_mut_ptr(), (n - done) as _, flags as _) };
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
                track.dropped.fetch_add(1, Ordering::Relaxed);
                done += 1;
            }
            // An ICMP error about an earlier datagram (nobody listening yet, or any more):
            // reported once, the packet is tried again (the error was consumed).
            Some(libc::ECONNREFUSED) => track.note_error(&e, 0),
            Some(libc::EMSGSIZE) => {
                let len = (0..hdrs[done].msg_hdr.msg_iovlen as usize)
                    .map(|i| iovs[done][i].iov_len)
                    .sum();
                return Err(UdpError::TooLarge(len));
            }
            _ => {
                track.note_error(&e, 1);
                done += 1;
            }
        }
    }
    drop(maps);
    Ok(())
}
