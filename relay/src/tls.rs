//! wss:// through rustls: loads the PEM certificate chain and key given on the command line.

use crate::error::Error;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Builds the TLS acceptor (TLS 1.2 and 1.3, ring provider, ALPN http/1.1).
///
/// # Errors
/// [`Error::Tls`] naming the file that could not be read or the reason rustls refused the pair.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, Error> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("reading certificates from {}: {e}", cert.display())))?;
    let Some(leaf) = certs.first() else {
        return Err(Error::Tls(format!("no certificate found in {}", cert.display())));
    };
    for warning in warnings(leaf) {
        tracing::warn!(certificate = %cert.display(), "{warning}");
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("reading private key from {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(format!("certificate and key do not form a usable pair: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What is wrong with the certificate the relay serves, though rustls accepts it: clients will
/// refuse it, so the operator hears of it at start rather than from every user.
pub fn warnings(leaf: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return vec!["the served certificate cannot be parsed as X.509; clients will likely refuse it".into()];
    };
    let mut out = Vec::new();
    if cert.is_ca() {
        out.push(
            "the served certificate is a CA certificate (basicConstraints CA:TRUE): TLS clients refuse a CA \
             certificate as a server's; serve a leaf certificate signed by that CA"
                .to_owned(),
        );
    }
    let names = cert.subject_alternative_name().ok().flatten().map_or(0, |san| {
        san.value
            .general_names
            .iter()
            .filter(|n| matches!(n, GeneralName::DNSName(_) | GeneralName::IPAddress(_)))
            .count()
    });
    if names == 0 {
        out.push(
            "the served certificate names no host (no DNS or IP subjectAltName): clients check the name \
             against those and will refuse it"
                .to_owned(),
        );
    }
    if !cert.validity().is_valid() {
        out.push(format!(
            "the served certificate is not valid now (valid from {} to {})",
            cert.validity().not_before,
            cert.validity().not_after
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn made(names: &[&str], ca: bool) -> CertificateDer<'static> {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().clone()
    }

    #[test]
    fn a_leaf_with_a_name_is_fine() {
        assert!(warnings(&made(&["relay.example"], false)).is_empty());
        assert!(warnings(&made(&["127.0.0.1"], false)).is_empty());
    }

    #[test]
    fn a_ca_certificate_or_one_without_names_is_named() {
        let ca = warnings(&made(&["relay.example"], true));
        assert!(ca.len() == 1 && ca[0].contains("is a CA certificate"), "{ca:?}");
        let nameless = warnings(&made(&[], false));
        assert!(nameless.len() == 1 && nameless[0].contains("names no host"), "{nameless:?}");
    }
}
