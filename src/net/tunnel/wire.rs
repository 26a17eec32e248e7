//! The tunnel's write side: what the queue writes goes out base64-encoded in the POST body.

use crate::net::socket::PlainWire;
use base64::Engine as _;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

/// Encodes each write whole (padding included): servers decode the body as a sequence of
/// base64 quanta, so a padded end between two writes is fine (gst-rtsp-server decodes it so,
/// and rtspclientsink encodes every message on its own).
pub(crate) struct Base64Wire {
    inner: PlainWire,
    /// Encoded bytes the socket has not taken yet.
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    at: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.at == self.bytes.len()
    }
}

impl Base64Wire {
    pub(crate) fn new(inner: PlainWire) -> Base64Wire {
        Base64Wire {
            inner,
            pending: Mutex::default(),
        }
    }

    /// Writes what is pending; `WouldBlock` while some remains.
    fn drain(&self, p: &mut Pending) -> io::Result<()> {
        while !p.is_empty() {
            match self.inner.try_write(&p.bytes[p.at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => p.at += n,
                Err(e) => return Err(e),
            }
        }
        p.bytes.clear();
        p.at = 0;
        self.inner.flush()
    }

    /// Takes all of `data` once the previous write has gone out: the encoded form waits here
    /// (a bounded backlog of one batch, as sealed TLS records wait in the TLS wire).
    pub(crate) fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let mut p = self.pending.lock().unwrap();
        self.drain(&mut p)?;
        let start = p.bytes.len();
        let len = base64::encoded_len(data.len(), true).ok_or(io::ErrorKind::InvalidInput)?;
        p.bytes.resize(start + len, 0);
        base64::engine::general_purpose::STANDARD
            .encode_slice(data, &mut p.bytes[start..])
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        match self.drain(&mut p) {
            Ok(()) => Ok(data.len()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(data.len()),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut p = self.pending.lock().unwrap();
        self.drain(&mut p)
    }

    pub(crate) fn backlog(&self) -> bool {
        !self.pending.lock().unwrap().is_empty() || self.inner.backlog()
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.inner.writable().await
    }

    pub(crate) async fn close(&self, stall: Duration) {
        self.inner.close(stall).await
    }
}
