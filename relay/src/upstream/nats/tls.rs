//! TLS to NATS with a certificate check that remembers why it failed.
//!
//! async-nats (0.46) reports a failed connection attempt by its error kind alone, "IO error",
//! and drops the cause: an untrusted, misnamed or expired server certificate read as "IO
//! error" in the log and `/readyz`, forever. So the relay gives async-nats its own rustls
//! configuration, with the same roots async-nats would use (the `--nats-ca` certificates if
//! given, else the system's), whose verifier is rustls's WebPKI verifier wrapped to keep its
//! last refusal. The keeper adds that refusal to what it reports.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The last certificate refusal, taken by whoever reports it.
#[derive(Clone, Default)]
pub struct Refusal(Arc<Mutex<Option<String>>>);

impl Refusal {
    /// The refusal since the last call, if any.
    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn set(&self, why: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }
}

/// rustls's verifier, remembering why it refused.
#[derive(Debug)]
struct Remembering {
    inner: Arc<WebPkiServerVerifier>,
    last: Arc<Mutex<Option<String>>>,
}

impl ServerCertVerifier for Remembering {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if let Err(e) = &verdict {
            Refusal(Arc::clone(&self.last)).set(e.to_string());
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The client configuration for NATS, trusting `ca` (else the system's roots), and where its
/// refusals are kept; `None` without a CA on a system with no roots (async-nats then says what
/// it says).
///
/// # Errors
/// A sentence naming `--nats-ca` when the file has no usable certificate.
pub fn config(ca: Option<&Path>) -> Result<Option<(ClientConfig, Refusal)>, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--nats-ca {path:?}: {e}"))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("--nats-ca {path:?}: no usable PEM certificate"));
            }
        }
        None => {
            // As async-nats does without a CA: the system's roots (none is fine until TLS is used).
            if let Ok(certs) = rustls_native_certs::load_native_certs() {
                roots.add_parsable_certificates(certs);
            }
            if roots.is_empty() {
                return Ok(None);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .map_err(|e| format!("TLS roots for NATS: {e}"))?;
    let refusal = Refusal::default();
    let verifier = Arc::new(Remembering { inner, last: Arc::clone(&refusal.0) });
    // "dangerous" is rustls's name for any verifier of one's own; this one is rustls's own
    // WebPKI verifier, unchanged but for remembering its refusals.
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS for NATS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some((config, refusal)))
}
