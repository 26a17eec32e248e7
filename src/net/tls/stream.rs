//! The streaming side of a TLS connection, once the handshake is done.
//!
//! The stream is split into the TCP socket and the `rustls::ClientConnection`, shared behind one
//! mutex by the reader task, the writer task and the producers' direct writes. Every write to the
//! socket happens under that mutex, so TLS records leave in the order rustls made them.

use rustls::ClientConnection;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Encrypted bytes rustls may hold before a writer must wait for the socket.
const TLS_BUFFER: usize = 256 * 1024;
/// Plaintext taken per `try_write`: many interleaved frames, sealed into 16 KiB records.
const TLS_CHUNK: usize = 64 * 1024;

/// The streaming half of a TLS connection: its state and the socket's write side.
pub(crate) struct TlsWire {
    conn: Mutex<ClientConnection>,
    tcp: OwnedWriteHalf,
}

/// `io::Write` onto the socket that never blocks (`WouldBlock` when it is full), with vectored
/// writes so the records rustls holds go out in one syscall.
struct NonBlocking<'a>(&'a OwnedWriteHalf);

impl Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsWire {
    pub(crate) fn new(mut conn: ClientConnection, tcp: OwnedWriteHalf) -> Arc<TlsWire> {
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Arc::new(TlsWire {
            conn: Mutex::new(conn),
            tcp,
        })
    }

    /// Writes out what rustls holds; `WouldBlock` while some remains.
    fn flush_locked(&self, conn: &mut ClientConnection) -> io::Result<()> {
        while conn.wants_write() {
            match conn.write_tls(&mut NonBlocking(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Non-blocking: seals up to 64 KiB of `data` (in records of up to 16 KiB) and sends what
    /// the socket takes. Sealed bytes the socket did not take stay in rustls ([`Self::backlog`])
    /// and go before anything new; while they wait, nothing new is taken (`WouldBlock`).
    /// Goes on while the socket takes everything, so one call moves as much as a plain
    /// socket's `try_write` would.
    pub(crate) fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let mut conn = self.conn.lock().unwrap();
        let mut done = 0;
        loop {
            match self.flush_locked(&mut conn) {
                Ok(()) if done < data.len() => {}
                Ok(()) => return Ok(done),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && done > 0 => return Ok(done),
                Err(e) => return Err(e),
            }
            let end = data.len().min(done + TLS_CHUNK);
            match conn.writer().write(&data[done..end])? {
                0 => return Err(io::ErrorKind::WouldBlock.into()),
                n => done += n,
            }
        }
    }

    /// Sends sealed bytes still held; `WouldBlock` while some remain.
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.flush_locked(&mut self.conn.lock().unwrap())
    }

    /// Whether sealed bytes wait for the socket.
    pub(crate) fn backlog(&self) -> bool {
        self.conn.lock().unwrap().wants_write()
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.tcp.writable().await
    }

    /// Ends the TLS session (close_notify, bounded by `stall`) and the socket's write side.
    pub(crate) async fn close(&self, stall: Duration) {
        self.conn.lock().unwrap().send_close_notify();
        loop {
            match self.flush() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !matches!(
                        tokio::time::timeout(stall, self.writable()).await,
                        Ok(Ok(()))
                    ) {
                        break;
                    }
                }
                _ => break,
            }
        }
        let _ = socket2::SockRef::from(self.tcp.as_ref()).shutdown(std::net::Shutdown::Write);
    }
}

/// The reading half of a TLS connection: ciphertext from the socket, plaintext out.
pub(crate) struct TlsReader {
    rd: OwnedReadHalf,
    wire: Arc<TlsWire>,
    cipher: Vec<u8>,
    start: usize,
    end: usize,
}

impl TlsReader {
    pub(crate) fn new(rd: OwnedReadHalf, wire: Arc<TlsWire>) -> TlsReader {
        TlsReader {
            rd,
            wire,
            cipher: vec![0; 16 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// Reads plaintext; 0 at the end (close_notify or the socket closed). `needs_flush` is set
    /// when rustls has something to send in answer (an alert, a key update): the caller makes
    /// sure it goes out.
    pub(crate) async fn read(
        &mut self,
        buf: &mut [u8],
        needs_flush: &mut bool,
    ) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        loop {
            {
                let mut conn = self.wire.conn.lock().unwrap();
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The socket closed without close_notify: an end like any other here
                    // (every RTSP message and frame carries its own length).
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                if self.start < self.end {
                    let mut rest = &self.cipher[self.start..self.end];
                    let n = conn.read_tls(&mut rest)?;
                    self.start += n;
                    let processed = conn.process_new_packets();
                    *needs_flush |= conn.wants_write();
                    if let Err(e) = processed {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("TLS error: {e}"),
                        ));
                    }
                    continue;
                }
            }
            self.start = 0;
            self.end = self.rd.read(&mut self.cipher).await?;
            if self.end == 0 {
                let mut conn = self.wire.conn.lock().unwrap();
                // Tell rustls the stream ended: buffered plaintext is still returned first.
                let _ = conn.read_tls(&mut io::empty());
                let _ = conn.process_new_packets();
                return match conn.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(_) => Ok(0),
                };
            }
        }
    }
}
