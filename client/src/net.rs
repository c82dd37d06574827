//! The connection to the relay: ws:// or wss:// (rustls, Mozilla's roots plus `--ca`).
//!
//! [`Target::parse`] checks everything about the relay that can be checked without the network
//! (the URL, the port, the scheme, the CA file) when the client starts, so a mistake there is bad
//! input (exit 2) named at once, not a network error later. [`connect`] then opens the socket;
//! its errors name what failed, and a TLS failure says why the certificate was refused as rustls
//! and webpki reported it, without guessing.

use rustls::{CertificateError, Error as TlsError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// Any byte stream the WebSocket can run over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The WebSocket to the relay.
pub type Socket = WebSocketStream<Box<dyn Io>>;

/// The largest frame accepted from the relay (the relay's own default limit).
pub const MAX_FRAME: usize = ghostwire_shared::DEFAULT_MAX_FRAME_BYTES;

/// A relay to connect to, checked.
#[derive(Clone)]
pub struct Target {
    url: String,
    host: String,
    port: u16,
    /// For wss://: the TLS configuration, and whether a `--ca` file was added to it.
    tls: Option<(Arc<rustls::ClientConfig>, bool)>,
}

impl Target {
    /// Checks `url` (and `ca`, which only wss:// can use).
    ///
    /// # Errors
    /// A sentence naming what is wrong: not a URL, a scheme other than ws/wss, no host, a port
    /// out of range, `--ca` with ws://, an unreadable or empty CA file.
    pub fn parse(url: &str, ca: Option<&Path>) -> Result<Target, String> {
        let parsed = url::Url::parse(url).map_err(|e| match e {
            url::ParseError::InvalidPort => format!("{url:?}: the port must be a number from 1 to 65535"),
            other => format!("{url:?} is not a relay URL ({other}); expected ws://HOST:PORT/ or wss://HOST/"),
        })?;
        let tls = match parsed.scheme() {
            "ws" => false,
            "wss" => true,
            other => return Err(format!("{url:?}: the scheme is {other}://; a relay URL starts with ws:// or wss://")),
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("{url:?} has no host")),
        };
        let port = parsed.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        if port == 0 {
            return Err(format!("{url:?}: the port must be a number from 1 to 65535"));
        }
        let tls = match (tls, ca) {
            (false, Some(_)) => {
                return Err("--ca applies only to wss:// relays: the relay URL is ws:// (unencrypted)".into())
            }
            (false, None) => None,
            (true, ca) => Some((Arc::new(tls_config(ca)?), ca.is_some())),
        };
        Ok(Target { url: url.to_owned(), host, port, tls })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Opens the WebSocket to `target`.
///
/// # Errors
/// A message for the user that names what failed (address, TLS trust, HTTP refusal).
pub async fn connect(target: Target) -> Result<Socket, String> {
    let Target { url, host, port, tls } = target;
    let shown = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot reach the relay at {shown}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = match tls {
        Some((config, have_ca)) => {
            let name = match host.parse::<IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(host.clone())
                    .map_err(|_| format!("{host:?} is not a valid TLS server name"))?,
            };
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| tls_error(&e, &host, have_ca))?;
            Box::new(tls)
        }
        None => Box::new(tcp),
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
        .await
        .map_err(|e| format!("the relay at {url} refused the WebSocket: {e}"))?;
    Ok(ws)
}

fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read CA certificates from {} (--ca): {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("no PEM certificate found in {} (--ca)", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("unusable CA certificate in {} (--ca): {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The reason a TLS handshake failed, in words, from the error rustls reported.
fn tls_error(e: &std::io::Error, host: &str, have_ca: bool) -> String {
    let Some(TlsError::InvalidCertificate(cert)) = e.get_ref().and_then(|inner| inner.downcast_ref::<TlsError>())
    else {
        return format!("TLS handshake with the relay failed: {e}");
    };
    let why = match cert {
        CertificateError::UnknownIssuer if have_ca => {
            "it is signed neither by a CA in the --ca file nor by a public CA".to_owned()
        }
        CertificateError::UnknownIssuer => {
            "it is not signed by a public CA; if the relay uses a private CA, pass it with --ca FILE".to_owned()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("it is not valid for the name {host:?}")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "it has expired".to_owned(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "it is not valid yet (check this machine's clock)".to_owned()
        }
        CertificateError::Other(other)
            if matches!(other.0.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity)) =>
        {
            "it is a CA certificate, which cannot identify a server: the relay must serve a server \
             certificate (one the CA signed)"
                .to_owned()
        }
        other => format!("{other:?}"),
    };
    format!("the relay's TLS certificate is not trusted: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str, ca: Option<&str>) -> String {
        match Target::parse(url, ca.map(Path::new)) {
            Ok(_) => panic!("{url} accepted"),
            Err(why) => why,
        }
    }

    #[test]
    fn bad_urls_are_named_before_any_connection() {
        assert!(refused("ws://127.0.0.1:99999/", None).contains("port must be a number from 1 to 65535"));
        assert!(refused("ws://127.0.0.1:0/", None).contains("port must be"));
        assert!(refused("http://127.0.0.1:8765/", None).contains("scheme is http://"));
        assert!(refused("127.0.0.1:8765", None).contains("ws://"));
        assert!(refused("ws://127.0.0.1:8765/", Some("/nonexistent")).contains("--ca applies only to wss://"));
        assert!(refused("wss://relay.example/", Some("/nonexistent/ca.pem")).contains("cannot read CA certificates"));
        let ok = Target::parse("ws://[::1]:8765/", None).map(|t| (t.host, t.port)).ok();
        assert_eq!(ok, Some(("::1".to_owned(), 8765)));
        assert_eq!(Target::parse("wss://relay.example/", None).map(|t| t.port).ok(), Some(443));
        assert_eq!(Target::parse("ws://relay.example/", None).map(|t| t.port).ok(), Some(80));
    }
}
