//! The connection to the relay: ws:// or wss:// (rustls, Mozilla's roots plus `--ca`).
//!
//! [`Target::parse`] checks everything about the relay that can be checked without the network
//! (the URL, the port, the scheme, the CA file) when the client starts, so a mistake there is bad
//! input (exit 2) named at once, not a network error later. [`connect`] then opens the socket;
//! its errors name what failed, and a TLS failure says why the certificate was refused as rustls
//! and webpki reported it, without guessing.
//!
//! With a [`Proxy`] (`--proxy`, `--tor`) the only socket ever opened is to the proxy: the relay's
//! host name goes to it unresolved (`socks5h`), or is resolved here first when the user chose
//! `socks5`; there is no direct fallback. tokio-socks speaks SOCKS5; its reply codes are turned
//! into sentences here.

use ghostwire_shared::frame::{FEATURES_HEADER, FEATURE_BURN};
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
use zeroize::Zeroizing;

/// Any byte stream the WebSocket can run over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The WebSocket to the relay.
pub type Socket = WebSocketStream<Box<dyn Io>>;

/// An open WebSocket to the relay, and what the relay said it supports.
pub struct Connection {
    /// The socket.
    pub ws: Socket,
    /// The relay takes `BURN` (its upgrade answer listed the feature).
    pub burns: bool,
}

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
    /// The SOCKS5 proxy every connection goes through, if one was asked for.
    proxy: Option<Proxy>,
}

/// A SOCKS5 proxy, checked.
#[derive(Clone)]
pub struct Proxy {
    /// `host:port` of the proxy, as given.
    addr: String,
    /// `socks5h`: the proxy resolves the relay's name. `socks5`: this machine does.
    remote_dns: bool,
    /// Username and password, from the environment.
    auth: Option<(String, Zeroizing<String>)>,
    /// It is Tor's default port (--tor): say so when nothing listens there.
    tor: bool,
}

impl Proxy {
    /// Checks a proxy URL; `auth` is the username and password from the environment.
    ///
    /// # Errors
    /// A sentence naming what is wrong: not a URL, a scheme other than socks5/socks5h, no host or
    /// port, or credentials in the URL (they belong in the environment).
    pub fn parse(url: &str, auth: Option<(String, Zeroizing<String>)>, tor: bool) -> Result<Proxy, String> {
        let what = || format!("--proxy {:?}", redact(url));
        let parsed = url::Url::parse(url)
            .map_err(|e| format!("{} is not a proxy URL ({e}); expected socks5h://HOST:PORT", what()))?;
        let remote_dns = match parsed.scheme() {
            "socks5h" => true,
            "socks5" => false,
            other => {
                return Err(format!(
                    "{}: the scheme is {other}://; Ghostwire speaks SOCKS5: socks5h://HOST:PORT (the proxy resolves \
                     the relay's name) or socks5://HOST:PORT",
                    what()
                ))
            }
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!(
                "{}: credentials do not go in the URL (every local user can read the command line); \
                 set GHOSTWIRE_PROXY_USER and GHOSTWIRE_PROXY_PASSWORD",
                what()
            ));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            None => return Err(format!("{} has no host", what())),
        };
        let Some(port) = parsed.port().filter(|p| *p != 0) else {
            return Err(format!("{}: give the proxy's port, e.g. socks5h://127.0.0.1:9050", what()));
        };
        Ok(Proxy { addr: format!("{host}:{port}"), remote_dns, auth, tor })
    }

    /// Whether the relay's name is looked up on this machine (socks5://): worth a warning.
    pub fn resolves_locally(&self) -> bool {
        !self.remote_dns
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// A URL as it may be shown: without any `user:password@`.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_owned(),
    }
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
        Ok(Target { url: url.to_owned(), host, port, tls, proxy: None })
    }

    /// The same relay, reached through `proxy`.
    pub fn through(mut self, proxy: Proxy) -> Target {
        self.proxy = Some(proxy);
        self
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The proxy in use, if any.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }
}

/// The TCP connection to the relay: direct, or through the proxy (which then carries the rest).
async fn open(host: &str, port: u16, proxy: Option<&Proxy>) -> Result<Box<dyn Io>, String> {
    let shown = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let Some(proxy) = proxy else {
        let tcp = TcpStream::connect((host, port)).await.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                "; nothing listens there: start a relay (ghostwire-relay, or ./run.sh in the source tree \
                 for a local demo) or give another with --relay"
            } else {
                ""
            };
            format!("cannot reach the relay at {shown}: {e}{hint}")
        })?;
        let _ = tcp.set_nodelay(true);
        return Ok(Box::new(tcp));
    };
    let tcp = TcpStream::connect(proxy.addr.as_str()).await.map_err(|e| {
        if proxy.tor {
            format!("cannot reach Tor's SOCKS port at {} ({e}): is Tor running?", proxy.addr)
        } else {
            format!("cannot reach the SOCKS5 proxy at {}: {e}", proxy.addr)
        }
    })?;
    let _ = tcp.set_nodelay(true);
    let target: (String, u16) = if proxy.remote_dns {
        (host.to_owned(), port)
    } else {
        // socks5:// was chosen: the name is looked up here (the user was warned at start).
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve the relay's name {host:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("the relay's name {host:?} has no address"))?;
        (addr.ip().to_string(), port)
    };
    let target = (target.0.as_str(), target.1);
    let stream = match &proxy.auth {
        Some((user, password)) => {
            tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(tcp, target, user, password).await
        }
        None => tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, target).await,
    };
    stream.map(|s| Box::new(s) as Box<dyn Io>).map_err(|e| socks_error(&e, &proxy.addr, &shown))
}

/// A SOCKS5 failure in words: the proxy's own refusal, its authentication, or its reply code.
fn socks_error(e: &tokio_socks::Error, proxy: &str, relay: &str) -> String {
    use tokio_socks::Error as E;
    let why = match e {
        E::NoAcceptableAuthMethods | E::AuthorizationRequired => {
            "it requires authentication: set GHOSTWIRE_PROXY_USER and GHOSTWIRE_PROXY_PASSWORD".to_owned()
        }
        E::PasswordAuthFailure(_) => "it refused the username and password".to_owned(),
        E::ConnectionRefused => format!("it could not reach the relay at {relay}: connection refused"),
        E::HostUnreachable => format!("it could not reach the relay at {relay}: host unreachable"),
        E::NetworkUnreachable => format!("it could not reach the relay at {relay}: network unreachable"),
        E::TtlExpired => format!("it could not reach the relay at {relay}: TTL expired"),
        E::GeneralSocksServerFailure => {
            format!(
                "it could not reach the relay at {relay} (general failure: for a name, often that it does not resolve)"
            )
        }
        E::ConnectionNotAllowedByRuleset => format!("its rules do not allow a connection to {relay}"),
        E::CommandNotSupported | E::AddressTypeNotSupported => {
            format!("it does not support this request ({e}); is it a SOCKS5 proxy?")
        }
        E::Io(io) => format!("the connection to it failed: {io}"),
        other => format!("it answered in a way SOCKS5 does not allow ({other}); is it a SOCKS5 proxy?"),
    };
    format!("the SOCKS5 proxy at {proxy}: {why}")
}

/// Opens the WebSocket to `target`.
///
/// # Errors
/// A message for the user that names what failed (address, TLS trust, HTTP refusal).
pub async fn connect(target: Target) -> Result<Connection, String> {
    let Target { url, host, port, tls, proxy } = target;
    let is_tls = tls.is_some();
    let tcp = open(&host, port, proxy.as_ref()).await?;
    let stream: Box<dyn Io> = match tls {
        Some((config, have_ca)) => {
            let name = match host.parse::<IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(host.clone())
                    .map_err(|_| format!("{host:?} is not a valid TLS server name"))?,
            };
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| {
                let why = tls_error(&e, &host, have_ca);
                // A plain relay answers a TLS hello with an HTTP error or by closing.
                match e.kind() {
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                        if !why.contains("certificate") =>
                    {
                        format!(
                            "{why}; the relay may not speak TLS: if it is a plain relay, use ws:// instead of wss://"
                        )
                    }
                    _ => why,
                }
            })?;
            Box::new(tls)
        }
        None => tcp,
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (ws, answer) =
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config)).await.map_err(|e| {
            use tokio_tungstenite::tungstenite::Error as WsError;
            // A TLS relay answers plain HTTP with TLS bytes, which do not parse as HTTP.
            let hint = match (&e, is_tls) {
                (WsError::HttpFormat(_) | WsError::Protocol(_), false) => {
                    "; the relay may speak TLS: if it does, use wss:// instead of ws://"
                }
                _ => "",
            };
            format!("the relay at {url} refused the WebSocket: {e}{hint}")
        })?;
    let burns = answer
        .headers()
        .get_all(FEATURES_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim().eq_ignore_ascii_case(FEATURE_BURN));
    Ok(Connection { ws, burns })
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
             certificate (one the CA signed; docs/DEPLOY.md section 2 makes both in three commands)"
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
