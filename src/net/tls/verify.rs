//! The certificate verifier: every problem of a server's chain found and named, then weighed
//! against `tls-validation-flags` and, for what fails, the application's `accept-certificate`.

use super::accept::{self, Answer};
use super::dates::{utc, validity};
use super::{AcceptHandler, Anchors};
use crate::CAT;
use gio::TlsCertificateFlags as Flags;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// A certificate the checks refused; the text says which checks failed.
#[derive(Debug, Clone)]
pub(crate) struct Rejected {
    pub(crate) text: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Rejected {}

/// Our verdict as rustls carries it out of the handshake (see [`rejected`]).
fn rejection(text: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Rejected {
        text,
    }))))
}

/// Finds our verdict in a failed TLS handshake's error.
pub(crate) fn rejected(err: &io::Error) -> Option<&Rejected> {
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
pub(super) struct Findings {
    pub(crate) flags: Flags,
    problems: Vec<(Flags, String)>,
}

impl Findings {
    fn add(&mut self, flag: Flags, text: String) {
        self.flags |= flag;
        self.problems.push((flag, text));
    }

    /// The problems that count under `mask`, in the order they were found.
    pub(crate) fn describe(&self, mask: Flags) -> String {
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
pub(super) fn assess(
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

/// rustls lists a certificate's names as `DnsName("x")` / `IpAddress(..)`: the name alone.
fn presented_name(p: &str) -> &str {
    p.strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
        .unwrap_or(p)
}

pub(super) struct Verifier {
    pub(super) anchors: Anchors,
    pub(super) flags: Flags,
    pub(super) accept: Option<AcceptHandler>,
    pub(super) provider: Arc<CryptoProvider>,
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
            match accept::ask(accept, chain, failed) {
                Answer::Accepted => {
                    gst::info!(
                        CAT,
                        "server certificate accepted by the application despite: {}",
                        found.describe(failed)
                    );
                    return Ok(ServerCertVerified::assertion());
                }
                Answer::Refused => {}
                Answer::Late(timeout) => {
                    return Err(rejection(format!(
                        "server certificate rejected: the accept-certificate handler did not \
                         answer in time (the TLS handshake is bounded by tcp-timeout, \
                         {timeout:?}); the certificate failed: {}",
                        found.describe(failed)
                    )));
                }
            }
        }
        let mut text = format!("server certificate rejected: {}", found.describe(failed));
        if failed.contains(Flags::UNKNOWN_CA) {
            text.push_str(&format!(
                " (trusted: {}; set tls-ca-file to the server's CA)",
                self.anchors.source
            ));
        }
        Err(rejection(text))
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
