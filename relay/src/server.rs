//! The public listener: accept, handshake, hand over to a connection task.
//!
//! The accept loop does nothing but accept and spawn, so a slow or hostile
//! client can never stall it. Everything that can take time (PROXY header,
//! TLS, the HTTP upgrade) runs inside the spawned task under one deadline,
//! `--handshake-timeout`. Limits are enforced before the WebSocket opens and
//! answered with plain HTTP statuses: 503 when the relay holds `--max-conns`,
//! 429 when the client IP holds `--max-conns-per-ip`, 404 for another path.

use crate::borrowed::Borrowed;
use crate::client_ip;
use crate::config::{Config, UpstreamKind};
use crate::conn::{self, Ctx, Drain};
use crate::error::Error;
use crate::limits::{IpSlot, PerIp};
use crate::metrics::{Metrics, Refusal, TlsFailure};
use crate::upstream::{local::Local, RoomKeyer, Upstream};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Bytes tungstenite gathers before writing to the socket. Only the flush after each batch writes,
/// so one batch is one `sendto`; the buffer grows only as large as the batches a connection gets.
/// (Reads go through a buffer of `--read-buffer` bytes borrowed per read: [`crate::borrowed`].)
const WRITE_BUFFER: usize = 64 * 1024;

/// A bound relay, ready to [`run`](Relay::run).
pub struct Relay {
    listener: TcpListener,
    admin: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: Arc<Ctx>,
    conns: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    ws_config: WebSocketConfig,
}

/// The error for an upstream this build does not have.
fn not_compiled_in(kind: UpstreamKind) -> Error {
    Error::Config(format!(
        "--upstream {0}: this relay was built without the `{0}` feature (cargo build --features {0})",
        kind.as_str()
    ))
}

impl Relay {
    /// Checks everything about `config` that can be checked without binding an address or
    /// reaching a broker (`--check-config` and the start of [`bind`](Self::bind)): the flags'
    /// invariants, the TLS files, the cluster secret, the introducers, the upstream being built
    /// in. Returns the TLS acceptor when TLS is configured.
    ///
    /// # Errors
    /// [`Error::Config`] naming the flags, [`Error::Tls`] for unusable TLS files.
    pub fn check(config: &Config) -> Result<Option<TlsAcceptor>, Error> {
        config.validate().map_err(Error::Config)?;
        if config.listen == config.admin_listen && config.listen.port() != 0 {
            return Err(Error::Config("--admin-listen must differ from --listen".into()));
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            (None, None) => None,
            _ => return Err(Error::Config("--tls-cert and --tls-key go together".into())),
        };
        RoomKeyer::for_config(config)?;
        let built = match config.upstream {
            UpstreamKind::Local => true,
            UpstreamKind::Nats => cfg!(feature = "nats"),
            UpstreamKind::Kafka => cfg!(feature = "kafka"),
            UpstreamKind::Mesh => cfg!(feature = "mesh"),
        };
        if !built {
            return Err(not_compiled_in(config.upstream));
        }
        if config.upstream == UpstreamKind::Mesh {
            let introducers = config.mesh.introducer_list().map_err(Error::Config)?;
            if introducers.is_empty() && !config.mesh.introducer {
                return Err(Error::Config(
                    "--upstream mesh needs --introducers host:port[,...] (or --introducers-file)".into(),
                ));
            }
        }
        Ok(tls)
    }

    /// Binds both listeners and prepares TLS and the upstream. Nothing is served until [`run`](Self::run).
    ///
    /// # Errors
    /// [`Error::Bind`] if an address is taken or not local, [`Error::Tls`] for an unusable certificate.
    pub async fn bind(config: Config, shutdown: CancellationToken) -> Result<Relay, Error> {
        let tls = Relay::check(&config)?;
        let listener = listen(config.listen, config.listen_backlog)?;
        let admin = listen(config.admin_listen, 128)?;
        let metrics = Arc::new(Metrics::new(&config));
        let rooms = RoomKeyer::for_config(&config)?;
        let upstream: Arc<dyn Upstream> = match config.upstream {
            UpstreamKind::Local => Arc::new(Local::new(config.max_rooms)),
            #[cfg(feature = "nats")]
            UpstreamKind::Nats => Arc::new(crate::upstream::nats::Nats::connect(&config, Arc::clone(&metrics)).await?),
            #[cfg(not(feature = "nats"))]
            UpstreamKind::Nats => return Err(not_compiled_in(UpstreamKind::Nats)),
            #[cfg(feature = "kafka")]
            UpstreamKind::Kafka => {
                Arc::new(crate::upstream::kafka::Kafka::connect(&config, Arc::clone(&metrics)).await?)
            }
            #[cfg(not(feature = "kafka"))]
            UpstreamKind::Kafka => return Err(not_compiled_in(UpstreamKind::Kafka)),
            #[cfg(feature = "mesh")]
            UpstreamKind::Mesh => Arc::new(crate::upstream::mesh::Mesh::connect(&config, Arc::clone(&metrics)).await?),
            #[cfg(not(feature = "mesh"))]
            UpstreamKind::Mesh => return Err(not_compiled_in(UpstreamKind::Mesh)),
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(crate::borrowed::FRAME_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .max_write_buffer_size(WRITE_BUFFER + 2 * config.max_frame_bytes + 64)
            .max_message_size(Some(config.max_frame_bytes))
            .max_frame_size(Some(config.max_frame_bytes));
        Ok(Relay {
            listener,
            admin,
            tls,
            conns: Arc::new(Semaphore::new(config.max_conns)),
            per_ip: PerIp::new(config.max_conns_per_ip),
            ctx: Arc::new(Ctx { config, rooms, upstream, metrics, shutdown, drain: Drain::new() }),
            ws_config,
        })
    }

    /// The address the WebSocket listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.ctx.config.listen)
    }

    /// The address the admin listener is bound to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.ctx.config.admin_listen)
    }

    /// The relay's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.ctx.metrics)
    }

    /// Serves until the shutdown token given to [`bind`](Self::bind) is cancelled, then closes every
    /// connection with 1001 and returns once they are gone or `--drain-timeout` has passed.
    pub async fn run(self) {
        let Relay { listener, admin, tls, ctx, conns, per_ip, ws_config } = self;
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(crate::admin::serve(admin, Arc::clone(&ctx), admin_stop.clone()));
        let tracker = TaskTracker::new();
        let next_id = AtomicU64::new(1);
        let accept = Accept { ctx: Arc::clone(&ctx), tls, conns, per_ip, ws_config };
        let accept = Arc::new(accept);
        loop {
            let accepted = tokio::select! {
                () = ctx.shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((sock, peer)) => {
                    let id = next_id.fetch_add(1, Relaxed);
                    let span = if ctx.config.log_ips {
                        tracing::debug_span!("conn", id, ip = %peer.ip())
                    } else {
                        tracing::debug_span!("conn", id)
                    };
                    tracker.spawn(Arc::clone(&accept).connection(sock, peer).instrument(span));
                }
                Err(e) => {
                    // Out of file descriptors or memory: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        tracker.close();
        let open = tracker.len();
        let spread = ctx.config.drain_spread;
        tracing::info!(open, spread = %humantime::format_duration(spread), "shutting down: closing connections with 1001");
        let drained = async {
            ctx.drain.close(spread).await;
            tracker.wait().await;
        };
        if tokio::time::timeout(ctx.config.drain_timeout, drained).await.is_err() {
            tracing::warn!(left = tracker.len(), "drain deadline passed; dropping the remaining connections");
        }
        ctx.upstream.close().await;
        admin_stop.cancel();
        let _ = admin_task.await;
    }
}

/// What each connection task needs from the listener.
struct Accept {
    ctx: Arc<Ctx>,
    tls: Option<TlsAcceptor>,
    conns: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    ws_config: WebSocketConfig,
}

impl Accept {
    async fn connection(self: Arc<Self>, mut sock: TcpStream, peer: SocketAddr) {
        let metrics = &self.ctx.metrics;
        let _ = sock.set_nodelay(true);
        let peer_trusted = self.ctx.config.is_trusted_proxy(peer.ip());
        // A peer that is not a trusted proxy is the client: its slot is taken now, before TLS and
        // the upgrade, so one address can hold at most --max-conns-per-ip connections in any
        // state, half-open ones included, and cannot crowd out other addresses. (A trusted
        // proxy carries many clients; theirs are counted once it names them.)
        let early_slot = if peer_trusted {
            None
        } else {
            match self.per_ip.acquire(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    metrics.refused(Refusal::PerIpLimit);
                    if self.tls.is_none() {
                        refuse(&mut sock, HTTP_429).await;
                    }
                    return;
                }
            }
        };
        let Ok(_permit) = Arc::clone(&self.conns).try_acquire_owned() else {
            metrics.refused(Refusal::Capacity);
            if self.tls.is_none() {
                refuse(&mut sock, HTTP_503).await;
            }
            return;
        };
        let deadline = self.ctx.config.handshake_timeout;
        // Boxed, twice: a task's future is as large as its largest await point. The handshake
        // (PROXY header, TLS, upgrade) is boxed and freed when done; it hands back the connection's
        // own future, boxed at the size it needs, so an idle connection keeps neither the TLS
        // handshake's state nor room for a TLS stream it does not have.
        let serve = Box::pin(tokio::time::timeout(deadline, async {
            let mut ip = peer.ip();
            // Whether the hop that names the client is itself trusted: hop by hop, so once a PROXY
            // header names a client, that client's own X-Forwarded-For counts only if the named
            // address is a trusted proxy too.
            let mut trusted = peer_trusted;
            let mut slot = early_slot;
            if trusted && self.ctx.config.proxy_protocol {
                match client_ip::read_proxy_header(&mut sock).await {
                    Ok(Some(named)) => {
                        ip = named;
                        trusted = self.ctx.config.is_trusted_proxy(named);
                    }
                    // UNKNOWN or LOCAL: the proxy speaks for itself. The connection counts against
                    // the proxy's own address, and nothing the client sends later (its
                    // X-Forwarded-For) may name another.
                    Ok(None) => trusted = false,
                    Err(e) => {
                        tracing::debug!(error = %e, "bad PROXY header");
                        return Err(Refusal::ProxyHeader);
                    }
                }
                // Once the header has named the client, its slot is taken at once, before TLS and
                // the upgrade, as for a direct client: half-open connections named for one
                // address hold at most --max-conns-per-ip.
                if !trusted {
                    match self.per_ip.acquire(ip) {
                        Some(taken) => slot = Some(taken),
                        None => {
                            if self.tls.is_none() {
                                refuse(&mut sock, HTTP_429).await;
                            }
                            return Err(Refusal::PerIpLimit);
                        }
                    }
                }
            }
            let chunk = self.ctx.config.read_buffer as usize;
            match &self.tls {
                None => self.upgrade(Borrowed::new(sock, chunk), ip, trusted, slot).await.map(|(ws, slot)| self.serve(ws, slot)),
                Some(tls) => match tls.accept(sock).await {
                    Ok(stream) => self
                        .upgrade(Borrowed::new(stream, chunk), ip, trusted, slot)
                        .await
                        .map(|(ws, slot)| self.serve(ws, slot)),
                    Err(e) => {
                        let why = TlsFailure::of(&e);
                        // The first failure of each kind is worth an operator's look (a client
                        // that rejects the certificate above all); the rest are counted.
                        if metrics.tls_failed(why) {
                            tracing::warn!(reason = why.as_str(), error = %e, "TLS handshake failed (the first for this reason; later ones are counted in tls_handshake_failures_total)");
                        } else {
                            tracing::debug!(reason = why.as_str(), error = %e, "TLS handshake failed");
                        }
                        Err(Refusal::Tls)
                    }
                },
            }
        }))
        .await;
        let serve = match serve {
            Ok(Ok(serve)) => serve,
            Ok(Err(why)) => return metrics.refused(why),
            Err(_) => return metrics.refused(Refusal::Timeout),
        };
        metrics.connections_total.inc();
        metrics.connections_open.inc();
        serve.await;
        metrics.connections_open.dec();
    }

    /// The connection's task body, boxed; the per-IP slot is held until it ends.
    fn serve<S>(&self, ws: WebSocketStream<S>, slot: IpSlot) -> Pin<Box<dyn Future<Output = ()> + Send>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ctx = Arc::clone(&self.ctx);
        Box::pin(async move {
            let _slot = slot;
            conn::serve(ws, ctx).await
        })
    }

    /// The HTTP upgrade: path check, client IP, per-IP limit (unless `held`, the slot taken at
    /// accept). The reason if refused or failed.
    async fn upgrade<S>(
        &self,
        stream: S,
        ip: IpAddr,
        trusted: bool,
        held: Option<IpSlot>,
    ) -> Result<(WebSocketStream<S>, IpSlot), Refusal>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut slot = held;
        let mut refusal_reason = Refusal::Upgrade;
        // The signature is tungstenite's callback type; its error is an HTTP response by design.
        #[allow(clippy::result_large_err)]
        let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            let path = req.uri().path();
            if path != "/" && path != "/ws" {
                return Err(refusal(StatusCode::NOT_FOUND, "not found: the relay serves WebSocket on / and /ws"));
            }
            let client = if trusted {
                let xff = req.headers().get_all("x-forwarded-for").into_iter().filter_map(|v| v.to_str().ok());
                client_ip::from_forwarded_for(xff, ip, |a| self.ctx.config.is_trusted_proxy(a))
            } else {
                ip
            };
            if slot.is_none() {
                match self.per_ip.acquire(client) {
                    Some(s) => slot = Some(s),
                    None => {
                        refusal_reason = Refusal::PerIpLimit;
                        return Err(refusal(StatusCode::TOO_MANY_REQUESTS, "too many connections from this address"));
                    }
                }
            }
            if self.ctx.config.log_ips {
                tracing::debug!(client = %client, "upgrade");
            }
            // What this relay takes beyond the prototype's frames (a client sends BURN only then).
            let mut resp = resp;
            resp.headers_mut().insert(
                ghostwire_shared::frame::FEATURES_HEADER,
                tokio_tungstenite::tungstenite::http::HeaderValue::from_static(ghostwire_shared::frame::FEATURE_BURN),
            );
            Ok(resp)
        };
        match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(self.ws_config)).await {
            Ok(ws) => slot.map(|s| (ws, s)).ok_or(Refusal::Upgrade),
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket handshake failed");
                Err(refusal_reason)
            }
        }
    }
}

const HTTP_429: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 39\r\nConnection: close\r\n\r\ntoo many connections from this address\n";
const HTTP_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 18\r\nConnection: close\r\n\r\nrelay at capacity\n";

/// Answers a refused plain-TCP client with `response`, for at most a second. Boxed: it is rare,
/// and as an await in the connection's future its timer would be sized into every connection.
fn refuse<'a>(sock: &'a mut TcpStream, response: &'static [u8]) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            sock.write_all(response).await?;
            sock.shutdown().await?;
            // A lingering close: what the client (or its proxy) already sent is read and
            // dropped, so that closing does not reset the connection and destroy the answer
            // before the client has read it.
            let mut sink = [0u8; 512];
            while sock.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
    })
}

fn refusal(status: StatusCode, why: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(format!("{why}\n")));
    *resp.status_mut() = status;
    resp
}

fn listen(addr: SocketAddr, backlog: u32) -> Result<TcpListener, Error> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog)
    };
    bind().map_err(|source| Error::Bind { addr, source })
}

#[cfg(all(test, not(feature = "nats")))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A build without the `nats` feature still parses `--upstream nats` and refuses it by name.
    #[tokio::test]
    async fn an_upstream_not_compiled_in_is_a_clear_configuration_error() {
        let mut config = Config::for_tests();
        config.upstream = UpstreamKind::Nats;
        config.cluster_secret = Some("test-cluster-secret-0123456789".parse().unwrap());
        let err = Relay::bind(config, CancellationToken::new()).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("built without the `nats` feature"), "{err}");
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// The accept side's future lives in every connection's task cell for the connection's life,
    /// beside the boxed connection future: its rare paths (the handshake, refusals) are boxed.
    #[test]
    fn the_accept_side_future_stays_small() {
        fn future_size<A, B, C, F: Future, G: Fn(A, B, C) -> F>(_: &G) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(&|accept: Arc<Accept>, sock: TcpStream, peer: SocketAddr| accept.connection(sock, peer));
        assert!(size <= 320, "the accept-side future is {size} bytes, over its 320-byte budget");
    }
}
