//! A minimal NTPv4 server (RFC 5905 server mode) on 127.0.0.1 for tests: a `GstNtpClock`
//! follows it. GStreamer's `GstNetTimeProvider` speaks GStreamer's own 16-byte time protocol,
//! which only `GstNetClientClock` understands, so a test needs a real NTP answer to drive an
//! NTP clock.
//!
//! It serves the system's real-time clock moved by a fixed offset, so a test can tell the
//! pipeline's NTP clock from the wall clock.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

pub struct NtpServer {
    port: u16,
    offset_ns: i64,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Nanoseconds since the NTP epoch now, as this server's clock reads.
fn served_now(offset_ns: i64) -> u64 {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (unix.as_nanos() as i128 + (NTP_UNIX_OFFSET as i128) * 1_000_000_000 + offset_ns as i128) as u64
}

fn put_ntp(buf: &mut [u8], ns: u64) {
    let secs = ns / 1_000_000_000;
    let frac = ((ns % 1_000_000_000) << 32) / 1_000_000_000;
    buf[..4].copy_from_slice(&(secs as u32).to_be_bytes());
    buf[4..8].copy_from_slice(&(frac as u32).to_be_bytes());
}

impl NtpServer {
    /// Serves the real-time clock plus `offset_ns` on an OS-chosen port.
    pub fn start(offset_ns: i64) -> NtpServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut req = [0u8; 128];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut req) else {
                    continue;
                };
                let received = served_now(offset_ns);
                // A client request: version 4 (or 3), mode 3.
                if n < 48 || req[0] & 0x07 != 3 {
                    continue;
                }
                let mut reply = [0u8; 48];
                reply[0] = (4 << 3) | 4; // no leap warning, version 4, server
                reply[1] = 1; // stratum 1: a primary reference
                reply[2] = req[2]; // the client's poll interval
                reply[3] = 0xec; // precision 2^-20 s
                reply[12..16].copy_from_slice(b"LOCL");
                put_ntp(&mut reply[16..24], received);
                // Origin: the client's transmit timestamp, unchanged.
                reply[24..32].copy_from_slice(&req[40..48]);
                put_ntp(&mut reply[32..40], received);
                put_ntp(&mut reply[40..48], served_now(offset_ns));
                let _ = socket.send_to(&reply, from);
            }
        });
        NtpServer {
            port,
            offset_ns,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// This server's time now, nanoseconds since the NTP epoch.
    pub fn now(&self) -> u64 {
        served_now(self.offset_ns)
    }
}

impl Drop for NtpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
