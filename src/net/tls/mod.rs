//! RTSPS: the TLS client configuration, certificate checks that honour `tls-validation-flags`,
//! and the streaming side of a TLS connection.
//!
//! The handshake runs through `tokio-rustls` with our verifier (`verify`); once RECORD is
//! answered the connection streams through `stream`.

mod accept;
mod dates;
mod roots;
mod stream;
#[cfg(test)]
mod tests;
mod verify;

pub(crate) use accept::bounded_handshake;
pub(crate) use roots::{load_roots, Anchors};
pub(crate) use stream::{TlsReader, TlsWire};
pub(crate) use verify::rejected;

use gio::TlsCertificateFlags as Flags;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use verify::Verifier;

/// Asks the application whether to accept a certificate that failed the checks in `flags`
/// (the element's `accept-certificate` signal). The chain starts with the server's certificate.
/// Called on a thread of its own, never on an I/O worker; an answer after the handshake's
/// deadline is not waited for (see `accept`).
pub(crate) type AcceptHandler = Arc<dyn Fn(&[CertificateDer<'_>], Flags) -> bool + Send + Sync>;

/// What the element's TLS properties say.
#[derive(Clone)]
pub(crate) struct TlsOptions {
    /// Checks that make a certificate fail (`tls-validation-flags`).
    pub(crate) validation_flags: Flags,
    /// PEM file of CA certificates trusted instead of the system store (`tls-ca-file`).
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) accept: Option<AcceptHandler>,
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

/// The client configuration for a session: ring crypto, TLS 1.2 and 1.3, our verifier.
pub(crate) fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, String> {
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
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is not a valid TLS server name"))
}
