//! Trust anchors: the `tls-ca-file` certificates or the system store.

use crate::CAT;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// Reads the trust anchors: the `tls-ca-file` certificates, or the system store (Debian's
/// ca-certificates; `SSL_CERT_FILE`/`SSL_CERT_DIR` override it).
pub(crate) fn load_roots(ca_file: Option<&std::path::Path>) -> Result<Anchors, String> {
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
pub(crate) struct Anchors {
    pub(crate) roots: RootCertStore,
    /// The `tls-ca-file` certificates, matched byte for byte against a server's certificate.
    pub(crate) pinned: Vec<CertificateDer<'static>>,
    /// Where the roots came from, for error texts.
    pub(crate) source: String,
}
