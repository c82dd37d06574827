//! The connection to the relay: ws:// or wss:// (rustls, Mozilla's roots plus `--ca`).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// Any byte stream the WebSocket can run over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The WebSocket to the relay.
pub type Socket = WebSocketStream<Box<dyn Io>>;

/// The largest frame accepted from the relay (the relay's own default limit).
pub const MAX_FRAME: usize = ghostwire_shared::DEFAULT_MAX_FRAME_BYTES;

/// Opens the WebSocket to `url`.
///
/// # Errors
/// A message for the user that names what failed (address, TLS trust, HTTP refusal).
pub async fn connect(url: &str, ca: Option<&Path>) -> Result<Socket, String> {
    let uri: Uri = url.parse().map_err(|_| format!("{url:?} is not a URL (expected ws://HOST:PORT/ or wss://...)"))?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(format!("{url:?}: the relay URL must start with ws:// or wss://")),
    };
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp =
        TcpStream::connect((host, port)).await.map_err(|e| format!("cannot reach the relay at {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if tls {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(ca)?));
        let name =
            ServerName::try_from(host.to_owned()).map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
        let tls = connector.connect(name, tcp).await.map_err(|e| tls_error(&e, ca.is_some()))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
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
            .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("no certificate found in {}", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("unusable CA certificate in {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn tls_error(e: &std::io::Error, have_ca: bool) -> String {
    let inner = e.to_string();
    if inner.contains("invalid peer certificate") {
        let hint = if have_ca {
            "it is not signed by the --ca given, nor by a public CA"
        } else {
            "if the relay uses a private CA, pass it with --ca FILE"
        };
        format!("the relay's TLS certificate is not trusted ({inner}); {hint}")
    } else {
        format!("TLS handshake with the relay failed: {inner}")
    }
}
