//! RTSPS: the TLS client configuration, certificate checks that honour `tls-validation-flags`,
//! and the streaming side of a TLS connection.
//!
//! The handshake runs through `tokio-rustls`; once RECORD is answered the stream is split into
//! the TCP socket and the `rustls::ClientConnection`, shared behind one mutex by the reader task,
//! the writer task and the producers' direct writes. Every write to the socket happens under
//! that mutex, so TLS records leave in the order rustls made them.

use crate::CAT;
use gio::TlsCertificateFlags as Flags;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct};
use rustls::{OtherError, RootCertStore, SignatureScheme};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Asks the application whether to accept a certificate that failed the checks in `flags`
/// (the element's `accept-certificate` signal). The chain starts with the server's certificate.
pub type AcceptHandler = Arc<dyn Fn(&[CertificateDer<'_>], Flags) -> bool + Send + Sync>;

/// What the element's TLS properties say.
#[derive(Clone)]
pub struct TlsOptions {
    /// Checks that make a certificate fail (`tls-validation-flags`).
    pub validation_flags: Flags,
    /// PEM file of CA certificates trusted instead of the system store (`tls-ca-file`).
    pub ca_file: Option<PathBuf>,
    pub accept: Option<AcceptHandler>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            validation_flags: Flags::VALIDATE_ALL,
            ca_file: None,
            accept: None,
        }
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("validation_flags", &self.validation_flags)
            .field("ca_file", &self.ca_file)
            .field("accept", &self.accept.is_some())
            .finish()
    }
}

/// Reads the trust anchors: the `tls-ca-file` certificates, or the system store (Debian's
/// ca-certificates; `SSL_CERT_FILE`/`SSL_CERT_DIR` override it).
pub fn load_roots(ca_file: Option<&std::path::Path>) -> Result<Anchors, String> {
    let mut roots = RootCertStore::empty();
    let mut pinned = Vec::new();
    let source = match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read tls-ca-file {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("tls-ca-file {} is not valid PEM: {e}", path.display()))?;
            // A self-signed server certificate given here is trusted as itself, even when it
            // says it is a CA (what `openssl req -x509` makes by default), which webpki refuses
            // as a server certificate.
            pinned = certs.clone();
            let (added, bad) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "tls-ca-file {} holds no usable CA certificate ({bad} unparsable)",
                    path.display()
                ));
            }
            format!("the {added} certificates of tls-ca-file {}", path.display())
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                gst::debug!(CAT, "system CA store: {e}");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                gst::warning!(
                    CAT,
                    "no system CA certificates found (install ca-certificates, or set tls-ca-file)"
                );
            }
            format!("the system CA store ({added} certificates)")
        }
    };
    gst::debug!(CAT, "TLS trust anchors: {source}");
    Ok(Anchors {
        roots,
        pinned,
        source,
    })
}

/// What a server certificate is checked against.
#[derive(Debug)]
pub struct Anchors {
    pub roots: RootCertStore,
    /// The `tls-ca-file` certificates, matched byte for byte against a server's certificate.
    pub pinned: Vec<CertificateDer<'static>>,
    /// Where the roots came from, for error texts.
    pub source: String,
}

/// The client configuration for a session: ring crypto, TLS 1.2 and 1.3, our verifier.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, String> {
    let anchors = load_roots(opts.ca_file.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Verifier {
        anchors,
        flags: opts.validation_flags,
        accept: opts.accept.clone(),
        provider: provider.clone(),
    };
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The name the certificate must carry: a DNS name (sent as SNI) or an IP address (checked
/// against the certificate's IP SANs; never sent as SNI).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is not a valid TLS server name"))
}

/// A certificate the checks refused, saying which checks failed.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub flags: Flags,
    pub text: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Rejected {}

/// Finds our verdict in a failed TLS handshake's error.
pub fn rejected(err: &io::Error) -> Option<&Rejected> {
    let e = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(o))) => {
            o.downcast_ref::<Rejected>()
        }
        _ => None,
    }
}

/// What the checks found, before `tls-validation-flags` decide which failures count.
#[derive(Debug, PartialEq, Eq)]
pub struct Findings {
    pub flags: Flags,
    pub problems: Vec<(Flags, String)>,
}

impl Findings {
    fn add(&mut self, flag: Flags, text: String) {
        self.flags |= flag;
        self.problems.push((flag, text));
    }

    /// The problems that count under `mask`, in the order they were found.
    pub fn describe(&self, mask: Flags) -> String {
        self.problems
            .iter()
            .filter(|(f, _)| mask.intersects(*f))
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Checks the chain against `roots` at `now`, then the name. webpki stops at the first problem
/// and checks validity dates before issuers, so an out-of-date certificate is checked again at a
/// time it is valid: every problem is found, not only the first.
pub fn assess(
    anchors: &Anchors,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    name: &ServerName<'_>,
    now: UnixTime,
    provider: &CryptoProvider,
) -> Findings {
    let mut found = Findings {
        flags: Flags::empty(),
        problems: Vec::new(),
    };
    let cert = match ParsedCertificate::try_from(end_entity) {
        Ok(c) => c,
        Err(e) => {
            found.add(
                Flags::GENERIC_ERROR,
                format!("the server certificate cannot be parsed ({e})"),
            );
            return found;
        }
    };
    let roots = &anchors.roots;
    let algs = provider.signature_verification_algorithms.all;
    let mut at = now;
    for _ in 0..4 {
        let err = match verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            at,
            algs,
        ) {
            Ok(()) => break,
            Err(rustls::Error::InvalidCertificate(e)) => e,
            Err(e) => {
                found.add(
                    Flags::GENERIC_ERROR,
                    format!("certificate check failed: {e}"),
                );
                break;
            }
        };
        match err {
            CertificateError::ExpiredContext { not_after, .. } => {
                found.add(
                    Flags::EXPIRED,
                    format!("a certificate of the chain expired on {}", utc(not_after)),
                );
                at = not_after;
            }
            CertificateError::NotValidYetContext { not_before, .. } => {
                found.add(
                    Flags::NOT_ACTIVATED,
                    format!(
                        "a certificate of the chain is not valid before {}",
                        utc(not_before)
                    ),
                );
                at = not_before;
            }
            CertificateError::Expired => {
                found.add(Flags::EXPIRED, "a certificate of the chain expired".into());
                break;
            }
            CertificateError::NotValidYet => {
                found.add(
                    Flags::NOT_ACTIVATED,
                    "a certificate of the chain is not valid yet".into(),
                );
                break;
            }
            CertificateError::UnknownIssuer => {
                found.add(
                    Flags::UNKNOWN_CA,
                    "unknown issuer: the certificate is not signed by a trusted CA".into(),
                );
                break;
            }
            CertificateError::Revoked => {
                found.add(Flags::REVOKED, "the certificate was revoked".into());
                break;
            }
            CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                found.add(
                    Flags::INSECURE,
                    format!(
                        "the chain's signatures are bad or use an unsupported algorithm ({err})"
                    ),
                );
                break;
            }
            #[allow(deprecated)]
            CertificateError::UnsupportedSignatureAlgorithm => {
                found.add(
                    Flags::INSECURE,
                    "the chain's signatures use an unsupported algorithm".into(),
                );
                break;
            }
            CertificateError::Other(OtherError(o))
                if matches!(
                    o.downcast_ref::<webpki::Error>(),
                    Some(webpki::Error::CaUsedAsEndEntity)
                ) =>
            {
                if anchors
                    .pinned
                    .iter()
                    .any(|p| p.as_ref() == end_entity.as_ref())
                {
                    // Trusted as itself: only its own dates are left to check.
                    check_own_dates(end_entity, now, &mut found);
                } else {
                    found.add(
                        Flags::UNKNOWN_CA,
                        "unknown issuer: the server sent a CA certificate that is not trusted \
                         (a self-signed certificate? give it in tls-ca-file)"
                            .into(),
                    );
                }
                break;
            }
            other => {
                found.add(
                    Flags::GENERIC_ERROR,
                    format!("the certificate chain is invalid ({other})"),
                );
                break;
            }
        }
    }
    if let Err(e) = verify_server_name(&cert, name) {
        let presented = match &e {
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            }) => format!(
                " (it is for {})",
                presented
                    .iter()
                    .map(|p| presented_name(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => String::new(),
        };
        found.add(
            Flags::BAD_IDENTITY,
            format!(
                "host name mismatch: the certificate is not valid for {}{presented}",
                name.to_str()
            ),
        );
    }
    found
}

/// Validity dates of a certificate trusted as itself (webpki checks them only while building a
/// chain, which it refuses for a CA certificate used by a server).
fn check_own_dates(cert: &CertificateDer<'_>, now: UnixTime, found: &mut Findings) {
    match validity(cert.as_ref()) {
        Some((not_before, _)) if now.as_secs() < not_before => found.add(
            Flags::NOT_ACTIVATED,
            format!(
                "the certificate is not valid before {}",
                utc(UnixTime::since_unix_epoch(Duration::from_secs(not_before)))
            ),
        ),
        Some((_, not_after)) if now.as_secs() > not_after => found.add(
            Flags::EXPIRED,
            format!(
                "the certificate expired on {}",
                utc(UnixTime::since_unix_epoch(Duration::from_secs(not_after)))
            ),
        ),
        Some(_) => {}
        None => found.add(
            Flags::GENERIC_ERROR,
            "the certificate's validity dates cannot be read".into(),
        ),
    }
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut l = 0usize;
        for &b in &rest[..n] {
            l = (l << 8) | b as usize;
        }
        rest = &rest[n..];
        l
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// notBefore and notAfter (Unix seconds) of an X.509 certificate.
fn validity(cert: &[u8]) -> Option<(u64, u64)> {
    let (0x30, cert, _) = der(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = der(cert)? else {
        return None;
    };
    let (mut tag, _, mut rest) = der(tbs)?;
    if tag == 0xa0 {
        // [0] version, then the serial number.
        (tag, _, rest) = der(rest)?;
    }
    if tag != 0x02 {
        return None;
    }
    // Signature algorithm, issuer, then validity.
    let (_, _, rest) = der(rest)?;
    let (_, _, rest) = der(rest)?;
    let (0x30, val, _) = der(rest)? else {
        return None;
    };
    let (t1, nb, rest) = der(val)?;
    let (t2, na, _) = der(rest)?;
    Some((der_time(t1, nb)?, der_time(t2, na)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) in Unix seconds. The bytes
/// come from a certificate file anyone may have written: anything but ASCII digits in the right
/// places, or a field out of its range, is None.
fn der_time(tag: u8, s: &[u8]) -> Option<u64> {
    let digits = s.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // The number in `digits[i..i + n]`, all ASCII digits (checked above).
    let num = |i: usize, n: usize| {
        digits[i..i + n]
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
    };
    let (year, at) = match (tag, digits.len()) {
        (0x17, 12) => {
            let y = num(0, 2);
            (if y < 50 { 2000 + y } else { 1900 + y }, 2)
        }
        (0x18, 14) => (num(0, 4), 4),
        _ => return None,
    };
    let (m, d) = (num(at, 2), num(at + 2, 2));
    let (hh, mm, ss) = (num(at + 4, 2), num(at + 6, 2), num(at + 8, 2));
    // Seconds up to 60: a leap second.
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// rustls lists a certificate's names as `DnsName("x")` / `IpAddress(..)`: the name alone.
fn presented_name(p: &str) -> &str {
    p.strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
        .unwrap_or(p)
}

/// `YYYY-MM-DD hh:mm:ss UTC` for a certificate date.
fn utc(t: UnixTime) -> String {
    let secs = t.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

struct Verifier {
    anchors: Anchors,
    flags: Flags,
    accept: Option<AcceptHandler>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("source", &self.anchors.source)
            .field("flags", &self.flags)
            .field("accept", &self.accept.is_some())
            .finish()
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = assess(
            &self.anchors,
            end_entity,
            intermediates,
            server_name,
            now,
            &self.provider,
        );
        let failed = found.flags & self.flags;
        if found.flags.is_empty() {
            return Ok(ServerCertVerified::assertion());
        }
        if failed.is_empty() {
            gst::info!(
                CAT,
                "server certificate accepted by tls-validation-flags despite: {}",
                found.describe(Flags::all())
            );
            return Ok(ServerCertVerified::assertion());
        }
        if let Some(accept) = &self.accept {
            let mut chain = vec![end_entity.clone().into_owned()];
            chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
            if accept(&chain, failed) {
                gst::info!(
                    CAT,
                    "server certificate accepted by the application despite: {}",
                    found.describe(failed)
                );
                return Ok(ServerCertVerified::assertion());
            }
        }
        let mut text = format!("server certificate rejected: {}", found.describe(failed));
        if failed.contains(Flags::UNKNOWN_CA) {
            text.push_str(&format!(
                " (trusted: {}; set tls-ca-file to the server's CA)",
                self.anchors.source
            ));
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(Rejected {
                flags: failed,
                text,
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Encrypted bytes rustls may hold before a writer must wait for the socket.
const TLS_BUFFER: usize = 256 * 1024;
/// Plaintext taken per `try_write`: many interleaved frames, sealed into 16 KiB records.
const TLS_CHUNK: usize = 64 * 1024;

/// The streaming half of a TLS connection: its state and the socket's write side.
pub struct TlsWire {
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
    pub fn new(mut conn: ClientConnection, tcp: OwnedWriteHalf) -> Arc<TlsWire> {
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
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
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
    pub fn flush(&self) -> io::Result<()> {
        self.flush_locked(&mut self.conn.lock().unwrap())
    }

    /// Whether sealed bytes wait for the socket.
    pub fn backlog(&self) -> bool {
        self.conn.lock().unwrap().wants_write()
    }

    pub async fn writable(&self) -> io::Result<()> {
        self.tcp.writable().await
    }

    /// Ends the TLS session (close_notify, bounded by `stall`) and the socket's write side.
    pub async fn close(&self, stall: Duration) {
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
pub struct TlsReader {
    rd: OwnedReadHalf,
    wire: Arc<TlsWire>,
    cipher: Vec<u8>,
    start: usize,
    end: usize,
}

impl TlsReader {
    pub fn new(rd: OwnedReadHalf, wire: Arc<TlsWire>) -> TlsReader {
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
    pub async fn read(&mut self, buf: &mut [u8], needs_flush: &mut bool) -> io::Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn dates() {
        assert_eq!(
            utc(UnixTime::since_unix_epoch(Duration::ZERO)),
            "1970-01-01 00:00:00 UTC"
        );
        assert_eq!(
            utc(UnixTime::since_unix_epoch(Duration::from_secs(
                951_782_400 + 3661
            ))),
            "2000-02-29 01:01:01 UTC"
        );
        assert_eq!(
            utc(UnixTime::since_unix_epoch(Duration::from_secs(
                4_102_444_799
            ))),
            "2099-12-31 23:59:59 UTC"
        );
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("cam.example"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad name").is_err());
    }

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    fn leaf(
        ca: &Ca,
        names: &[&str],
        years: Option<(i32, i32)>,
    ) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some((a, b)) = years {
            p.not_before = rcgen::date_time_ymd(a, 1, 1);
            p.not_after = rcgen::date_time_ymd(b, 1, 1);
        }
        let c = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
        (c.der().clone(), key)
    }

    fn roots(ca: &Ca) -> Anchors {
        anchors_of(ca.cert.der().clone())
    }

    /// As if `cert` were the one certificate of tls-ca-file.
    fn anchors_of(cert: CertificateDer<'static>) -> Anchors {
        let mut roots = RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        Anchors {
            roots,
            pinned: vec![cert],
            source: "test".into(),
        }
    }

    fn check(anchors: &Anchors, cert: &CertificateDer<'_>, host: &str) -> Findings {
        assess(
            anchors,
            cert,
            &[],
            &server_name(host).unwrap(),
            UnixTime::now(),
            &rustls::crypto::ring::default_provider(),
        )
    }

    #[test]
    fn a_good_chain_has_no_findings() {
        let ca = ca("test CA");
        let (cert, _) = leaf(&ca, &["cam.example", "127.0.0.1"], None);
        assert_eq!(
            check(&roots(&ca), &cert, "cam.example").flags,
            Flags::empty()
        );
        assert_eq!(check(&roots(&ca), &cert, "127.0.0.1").flags, Flags::empty());
    }

    /// webpki reports only the first problem; every one is found and named.
    #[test]
    fn every_problem_is_found() {
        let ours = ca("test CA");
        let other = ca("someone else");
        let ca = ours;
        let (cert, _) = leaf(&ca, &["cam.example"], Some((2020, 2021)));
        let f = check(&roots(&other), &cert, "other.example");
        assert_eq!(
            f.flags,
            Flags::EXPIRED | Flags::UNKNOWN_CA | Flags::BAD_IDENTITY,
            "{f:?}"
        );
        let all = f.describe(Flags::all());
        assert!(all.contains("expired on 2021-01-01 00:00:00 UTC"), "{all}");
        assert!(all.contains("unknown issuer"), "{all}");
        assert!(
            all.contains("not valid for other.example (it is for cam.example)"),
            "{all}"
        );
        // Only what the mask keeps is described.
        assert_eq!(
            f.describe(Flags::BAD_IDENTITY),
            "host name mismatch: the certificate is not valid for other.example (it is for cam.example)"
        );

        let (future, _) = leaf(&ca, &["cam.example"], Some((2090, 2091)));
        let f = check(&roots(&ca), &future, "cam.example");
        assert_eq!(f.flags, Flags::NOT_ACTIVATED, "{f:?}");
        // An IP address is checked against IP SANs only, never DNS names.
        let (cert, _) = leaf(&ca, &["cam.example"], None);
        assert_eq!(
            check(&roots(&ca), &cert, "10.0.0.1").flags,
            Flags::BAD_IDENTITY
        );
        assert_eq!(
            check(&roots(&ca), &cert, "cam.example").flags,
            Flags::empty()
        );
    }

    /// The server thread: the plaintext it decrypted and the application-data records it saw.
    type TestServer = std::thread::JoinHandle<(Vec<u8>, usize)>;

    /// `openssl req -x509` makes self-signed server certificates that say CA:TRUE, which webpki
    /// refuses as a server certificate: trusted as themselves when given in tls-ca-file.
    #[test]
    fn self_signed_ca_certificates_are_trusted_as_themselves() {
        let self_signed = |years: Option<(i32, i32)>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec!["cam.example".to_string()]).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            if let Some((a, b)) = years {
                p.not_before = rcgen::date_time_ymd(a, 1, 1);
                p.not_after = rcgen::date_time_ymd(b, 1, 1);
            }
            p.self_signed(&key).unwrap().der().clone()
        };
        let cert = self_signed(None);
        let trusted = anchors_of(cert.clone());
        assert_eq!(check(&trusted, &cert, "cam.example").flags, Flags::empty());
        assert_eq!(
            check(&trusted, &cert, "other.example").flags,
            Flags::BAD_IDENTITY
        );
        let f = check(&roots(&ca("another CA")), &cert, "cam.example");
        assert_eq!(f.flags, Flags::UNKNOWN_CA, "{f:?}");
        assert!(f.describe(Flags::all()).contains("self-signed"), "{f:?}");
        // Its own dates still count.
        let old = self_signed(Some((2020, 2021)));
        let f = check(&anchors_of(old.clone()), &old, "cam.example");
        assert_eq!(f.flags, Flags::EXPIRED, "{f:?}");
        assert!(f
            .describe(Flags::all())
            .contains("expired on 2021-01-01 00:00:00 UTC"));
        let future = self_signed(Some((2090, 2091)));
        assert_eq!(
            check(&anchors_of(future.clone()), &future, "cam.example").flags,
            Flags::NOT_ACTIVATED
        );
    }

    #[test]
    fn der_validity_dates() {
        let ca = ca("test CA");
        for (a, b) in [(1999, 2049), (2020, 2021), (2050, 2100)] {
            let (cert, _) = leaf(&ca, &["x.example"], Some((a, b)));
            let (nb, na) = validity(cert.as_ref()).unwrap();
            let year = |t: u64| utc(UnixTime::since_unix_epoch(Duration::from_secs(t)));
            assert_eq!(year(nb), format!("{a}-01-01 00:00:00 UTC"));
            assert_eq!(year(na), format!("{b}-01-01 00:00:00 UTC"));
        }
        assert_eq!(validity(b"\x30\x03\x02\x01"), None);
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        // UTCTime years 50-99 are 19xx: before 1970 is out of range here.
        assert_eq!(der_time(0x17, b"500101000000Z"), None);
        assert_eq!(der_time(0x18, b"20500101000000Z"), Some(2_524_608_000));
    }

    #[test]
    fn der_time_takes_ascii_digits_only_and_never_panics() {
        // Multi-byte UTF-8 of the right byte length: slicing the text at byte offsets cut
        // into a character and panicked.
        for (tag, bad) in [
            (0x17, "2\u{e9}010100000Z"),
            (0x17, "24\u{e9}01000000Z"),
            (0x17, "2401\u{e9}100000Z"),
            (0x17, "240110000\u{e9}0Z"),
            (0x18, "202\u{e9}010100000Z"),
            (0x18, "2024\u{e9}01000000Z"),
            (0x18, "2401\u{e9}10000000Z"),
            (0x17, "\u{1f600}01010000Z"),
        ] {
            let n = if tag == 0x17 { 13 } else { 15 };
            assert_eq!(bad.len(), n, "{bad:?} has the length of a good one");
            assert_eq!(der_time(tag, bad.as_bytes()), None, "{bad:?}");
        }
        // Bytes that are no UTF-8 at all, signs and spaces that parse::<i64> took as numbers.
        assert_eq!(der_time(0x17, b"24\xff\xfe01000000Z"), None);
        assert_eq!(der_time(0x17, b"24+101000000Z"), None);
        assert_eq!(der_time(0x17, b"24-101000000Z"), None);
        assert_eq!(der_time(0x18, b"+0240101000000Z"), None);
        assert_eq!(der_time(0x17, b"24 101000000Z"), None);
        // Fields out of range, lengths and tags that do not fit.
        assert_eq!(der_time(0x17, b"241301000000Z"), None);
        assert_eq!(der_time(0x17, b"240100000000Z"), None);
        assert_eq!(der_time(0x17, b"240132000000Z"), None);
        assert_eq!(der_time(0x17, b"240101240000Z"), None);
        assert_eq!(der_time(0x17, b"240101006000Z"), None);
        assert_eq!(der_time(0x17, b"240101000061Z"), None);
        assert_eq!(der_time(0x17, b"2401010000Z"), None);
        assert_eq!(der_time(0x18, b"240101000000Z"), None);
        assert_eq!(der_time(0x17, b"240101000000"), None);
        assert_eq!(der_time(0x13, b"240101000000Z"), None);
        assert_eq!(der_time(0x17, b""), None);
        // And good ones still read.
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"240229123456Z"), Some(1_709_210_096));
        assert_eq!(der_time(0x18, b"20240229123456Z"), Some(1_709_210_096));
    }

    /// A rustls server on a loopback socket, decrypting what the wire sends; the raw bytes
    /// are parsed into TLS records to count them.
    fn tls_pair(
        rt: &tokio::runtime::Runtime,
    ) -> (
        Arc<TlsWire>,
        TlsReader,
        TestServer,
        std::sync::mpsc::Sender<usize>,
    ) {
        let ca = ca("test CA");
        let (cert, key) = leaf(&ca, &["127.0.0.1"], None);
        let server_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Blocking server on a thread: std sockets, rustls' own I/O helpers.
        // The server reads once told how many plaintext bytes to wait for (or to the end).
        let (go_tx, go_rx) = std::sync::mpsc::channel::<usize>();
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            socket2::SockRef::from(&sock)
                .set_recv_buffer_size(64 * 1024)
                .unwrap();
            let mut conn = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).unwrap();
            }
            // Not reading until the client queued everything: its socket fills up.
            let want = go_rx.recv().unwrap_or(usize::MAX);
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            // From here read the raw records ourselves, feeding rustls.
            let mut raw = Vec::new();
            let mut plain = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            while plain.len() < want {
                let n = sock.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
                let mut rd = &buf[..n];
                while !rd.is_empty() {
                    conn.read_tls(&mut rd).unwrap();
                    let st = conn.process_new_packets().unwrap();
                    let mut p = vec![0u8; st.plaintext_bytes_to_read()];
                    conn.reader().read_exact(&mut p).unwrap();
                    plain.extend_from_slice(&p);
                    if st.peer_has_closed() {
                        break;
                    }
                }
            }
            let mut records = 0;
            let mut at = 0;
            while at + 5 <= raw.len() {
                if raw[at] == 23 {
                    records += 1;
                }
                at += 5 + u16::from_be_bytes([raw[at + 3], raw[at + 4]]) as usize;
            }
            (plain, records)
        });
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert.der().clone()).unwrap();
        let cfg = client_config_with_roots(roots);
        let tcp = rt.block_on(tokio::net::TcpStream::connect(addr)).unwrap();
        socket2::SockRef::from(&tcp)
            .set_send_buffer_size(64 * 1024)
            .unwrap();
        let tls = rt
            .block_on(
                tokio_rustls::TlsConnector::from(cfg)
                    .connect(server_name("127.0.0.1").unwrap(), tcp),
            )
            .unwrap();
        let (tcp, conn) = tls.into_inner();
        let (rd, wr) = tcp.into_split();
        let wire = TlsWire::new(conn, wr);
        let reader = TlsReader::new(rd, wire.clone());
        (wire, reader, server, go_tx)
    }

    fn client_config_with_roots(roots: RootCertStore) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verifier {
                    anchors: Anchors {
                        roots,
                        pinned: Vec::new(),
                        source: "test".into(),
                    },
                    flags: Flags::VALIDATE_ALL,
                    accept: None,
                    provider,
                }))
                .with_no_client_auth(),
        )
    }

    /// One write of many frames' bytes becomes a few 16 KiB records, not one per frame; what
    /// the socket did not take stays sealed in rustls until the writer flushes it, and every
    /// byte arrives once, in order.
    #[test]
    fn writes_are_batched_into_full_records_and_nothing_is_stranded() {
        use crate::net::queue::{write_all, OutFrame, SendQueue, Wire};
        gst::init().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (wire, _reader, server, go) = tls_pair(&rt);
        let q = Arc::new(SendQueue::new(8 << 20));
        let w = Wire::Tls(wire.clone());
        q.set_wire(Some(w.clone()));
        // 2000 frames of 1000 bytes (2 MB) queued at once: direct writes until the socket is
        // full, sealed records waiting in rustls, the rest for the writer.
        let mut expected = Vec::new();
        let frames: Vec<OutFrame> = (0..2000u32)
            .map(|i| {
                let mut pkt = vec![0x80u8, 96];
                pkt.extend_from_slice(&i.to_be_bytes());
                pkt.resize(996, (i % 251) as u8);
                expected.extend_from_slice(&[b'$', 0, 0x03, 0xe4]);
                expected.extend_from_slice(&pkt);
                OutFrame::rtp(gst::Buffer::from_slice(pkt), 0, None).unwrap()
            })
            .collect();
        q.push_all(frames).unwrap();
        // The socket is full: sealed records wait in rustls, the rest in the queue.
        assert!(
            wire.backlog(),
            "the socket took everything: the test proves nothing"
        );
        assert!(q.level() > 0);
        go.send(usize::MAX).unwrap();
        let writer = {
            let q = q.clone();
            rt.spawn(async move {
                let mut batch = Vec::new();
                while q.take(&mut batch).await.is_some() {
                    write_all(&w, &batch, Duration::from_secs(5)).await.unwrap();
                    q.written(&mut batch);
                }
                q.set_wire(None);
                w.close(Duration::from_secs(5)).await;
            })
        };
        q.close();
        rt.block_on(writer).unwrap();
        let (plain, records) = server.join().unwrap();
        assert_eq!(plain.len(), expected.len());
        assert!(plain == expected, "bytes differ");
        // 2 MB in 16 KiB records is 123; allow for partial records at batch edges.
        assert!(records < 300, "{records} records for 2000 frames");
        println!("2000 frames, {} bytes: {records} TLS records", plain.len());
    }

    /// A direct write that leaves sealed records in rustls (the socket filled up) and then no
    /// more data: the writer task must send them when the socket drains, with nothing queued.
    #[test]
    fn sealed_bytes_left_by_a_direct_write_are_flushed_by_the_writer() {
        use crate::net::queue::{write_all, SendQueue, Wire};
        gst::init().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (wire, _reader, server, go) = tls_pair(&rt);
        // Direct writes until one is sealed whole but not all sent: the socket is full, the
        // rest waits in rustls, nothing is queued.
        let chunk = vec![7u8; 1000];
        let mut sent = 0;
        for _ in 0..20_000 {
            sent += wire.try_write(&chunk).unwrap();
            if wire.backlog() {
                break;
            }
        }
        assert!(wire.backlog(), "the socket never filled");
        let q = Arc::new(SendQueue::new(8 << 20));
        let w = Wire::Tls(wire.clone());
        // The queue sees the backlog (as after a producer's direct write) and wakes the writer.
        q.set_wire(Some(w.clone()));
        assert_eq!(q.level(), 0, "bytes queued: the case is not the one tested");
        let writer = {
            let q = q.clone();
            rt.spawn(async move {
                let mut batch = Vec::new();
                while q.take(&mut batch).await.is_some() {
                    write_all(&w, &batch, Duration::from_secs(5)).await.unwrap();
                    q.written(&mut batch);
                }
            })
        };
        // The queue stays open: only the writer's flush can deliver the rest.
        go.send(sent).unwrap();
        let (plain, _) = server.join().unwrap();
        assert_eq!(plain.len(), sent, "sealed bytes stranded in rustls");
        assert!(!wire.backlog());
        q.cancel();
        rt.block_on(writer).unwrap();
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let e = load_roots(Some(std::path::Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("rtspannounce-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let e = load_roots(Some(&empty)).unwrap_err();
        assert!(e.contains("no usable CA certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
