//! Links between relays: authenticated, encrypted, reliable and ordered, one per direction.
//!
//! Each relay dials every other relay it knows of and sends its messages for that relay on that
//! connection only; what it receives comes in on the connections the others dialled. A link
//! starts with a Noise `XXpsk3` handshake (`snow`): both sides prove they hold the cluster secret
//! (the pre-shared key is derived from it) before a byte of the mesh passes, and everything after
//! is encrypted and authenticated. A wrong secret fails the handshake's last message; the
//! listener learns nothing and closes the socket (counted in `link_auth_failures_total`).
//!
//! **Nothing lost across a drop.** The dialer numbers its messages in a *session* (a random
//! number that starts afresh when a peer is given up) and keeps each until the listener
//! acknowledges it. After a reconnect the listener says where it stands (`Welcome { next }`) and
//! the dialer sends again from there; the listener drops what it already had. So a link that
//! drops and comes back within `--mesh-peer-timeout` loses, duplicates and reorders nothing.
//!
//! **Liveness.** Both sides beat every `--mesh-heartbeat`. A peer is given up (and every seat
//! that depends on it ends, see the module above) when its own link to us has been silent, or
//! ours to it down or unacknowledged, for `--mesh-peer-timeout`; or at once when its address
//! answers with another incarnation (it restarted). A given-up incarnation is quarantined for one
//! timeout, after which a new session may start with it (a healed partition: the membership's
//! walk links it again, see `gossip`).
//!
//! **Knocking costs little.** An inbound connection holds a handshake permit only while it
//! handshakes: at most 64 at once, at most 4 from one source address, and a connection that
//! has not sent its first message within a second is closed. A stranger without the secret
//! cannot keep a relay from linking to the others.

use super::wire::{Envelope, Malformed, Msg};
use crate::metrics::Metrics;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{timeout, Instant};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The Noise protocol of every link.
const PATTERN: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";
/// The longest Noise message.
const NOISE_MAX: usize = 65_535;
/// Plaintext bytes per Noise message: the message minus its tag and our one-byte chunk flag.
const CHUNK: usize = NOISE_MAX - 16 - 1;
/// A reassembled record may be at most this large (a frame batch of the largest frames).
const RECORD_MAX: usize = 64 * 1024 * 1024;
/// Time for a connection and its handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The listener acknowledges at the latest after this many messages, or this long.
const ACK_EVERY: u64 = 64;
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Inbound handshakes in progress at most: more connections are closed unanswered, so knocking
/// without the secret cannot pile up tasks (each handshake is bounded by `CONNECT_TIMEOUT`).
const HANDSHAKES: usize = 64;
/// Inbound handshakes in progress from one source address at most: a stranger who opens many
/// connections holds only these, and relays at other addresses still get in.
const HANDSHAKES_PER_SOURCE: usize = 4;
/// The dialer speaks first (Noise's `-> e`): a connection silent for this long is closed, so a
/// socket that sends nothing holds a handshake permit for this, not for `CONNECT_TIMEOUT`.
const FIRST_MESSAGE: Duration = Duration::from_secs(1);

/// What the mesh does with what links bring.
pub trait Handler: Send + Sync + 'static {
    /// A message from relay `from`, in the order it sent them, each once.
    fn deliver(&self, from: u64, msg: Msg);
    /// Relay `id` was given up: nothing more comes from it or reaches it.
    fn peer_lost(&self, id: u64);
    /// Relay `id`, reachable at `addr`, linked to us (perhaps before the membership said so).
    fn met(&self, id: u64, addr: &str);
}

/// Timing and identity of this relay's links.
#[derive(Clone)]
pub struct Settings {
    /// This relay's incarnation.
    pub me: u64,
    /// Where other relays reach this relay's listener.
    pub advertise: String,
    /// The pre-shared key of the Noise handshake.
    pub psk: [u8; 32],
    /// Beat interval.
    pub heartbeat: Duration,
    /// Silence, or a link down, for this long gives a peer up.
    pub peer_timeout: Duration,
    /// The address links are dialled from: `--mesh-listen`'s, when that names one, so that a
    /// firewall (or a test's cut) sees the mesh's traffic come from the mesh's address.
    pub source: Option<std::net::IpAddr>,
}

/// Every link of this relay.
pub struct Links {
    settings: Settings,
    handler: Arc<dyn Handler>,
    metrics: Arc<Metrics>,
    peers: Mutex<HashMap<u64, Arc<Peer>>>,
    /// The sessions of the relays that dial us.
    inbound: Mutex<HashMap<u64, InState>>,
    /// Incarnations given up, when, and how surely they are gone.
    lost: Mutex<HashMap<u64, (Instant, Gone)>>,
    /// Messages to this relay itself, delivered in order by one task (which then answers the
    /// sender, if it waits for the delivery).
    to_self: mpsc::UnboundedSender<(Msg, Option<oneshot::Sender<()>>)>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// One peer relay, as this relay's dialer sees it.
struct Peer {
    id: u64,
    addr: Mutex<String>,
    out: Mutex<Out>,
    wake: Notify,
    /// Notified on every acknowledgement.
    acked: Notify,
    /// When the peer's own link to us last carried anything.
    heard: Mutex<Instant>,
    up: AtomicBool,
    /// Up at least once (a later connection is a reconnect).
    was_up: AtomicBool,
    gone: CancellationToken,
}

/// Why a relay was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// It said goodbye, or a new incarnation answers at its address: it will not come back.
    Certainly,
    /// Its link was down, silent or unacknowledged for the peer timeout: dead, or cut off.
    Silent,
}

/// An inbound handshake in progress: one of the shared permits and one of its source's.
struct Permit {
    _global: tokio::sync::OwnedSemaphorePermit,
    _source: crate::limits::IpSlot,
}

/// What a listener knows of a dialer's session.
struct InState {
    session: u64,
    /// The next message number to hand on.
    next: u64,
    /// Bumped by each new connection of that dialer: only the newest one hands messages on.
    epoch: u64,
}

/// The dialer's session: numbered messages kept until acknowledged.
struct Out {
    session: u64,
    next: u64,
    unacked: VecDeque<(u64, Bytes)>,
    /// Every message below this was acknowledged (the listener said so).
    acked: u64,
    /// When the link last went down (None while up), or the first unacked message waits since.
    down_since: Option<Instant>,
    progress: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
enum LinkEnd {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    #[error("timed out")]
    Timeout,
    #[error("closed")]
    Closed,
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("the address holds another relay now")]
    Replaced,
    #[error("out of order")]
    Order,
    #[error("it has forgotten what it acknowledged")]
    Forgot,
}

impl From<tokio::time::error::Elapsed> for LinkEnd {
    fn from(_: tokio::time::error::Elapsed) -> LinkEnd {
        LinkEnd::Timeout
    }
}

/// An established link: the socket framed in 2-byte lengths, and the Noise transport.
struct Noise {
    io: Framed<TcpStream, LengthDelimitedCodec>,
    transport: snow::TransportState,
    /// The chunks of the record being received (kept here, so `recv` is cancel-safe).
    partial: BytesMut,
    /// Scratch for one Noise message, in and out (allocated once per link).
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_length(2).max_frame_length(NOISE_MAX).new_codec()
}

impl Noise {
    /// Runs the handshake as the dialer (`initiator`) or the listener.
    async fn handshake(stream: TcpStream, psk: &[u8; 32], initiator: bool) -> Result<Noise, LinkEnd> {
        let _ = stream.set_nodelay(true);
        let builder = snow::Builder::new(PATTERN.parse()?);
        let key = builder.generate_keypair()?;
        let builder = snow::Builder::new(PATTERN.parse()?).local_private_key(&key.private)?.psk(3, psk)?;
        let mut hs = if initiator { builder.build_initiator()? } else { builder.build_responder()? };
        let mut io = Framed::new(stream, codec());
        let mut buf = vec![0u8; NOISE_MAX];
        // XX: -> e; <- e, ee, s, es; -> s, se (and the psk).
        for step in 0..3 {
            let ours = (step % 2 == 0) == initiator;
            if ours {
                let n = hs.write_message(&[], &mut buf)?;
                io.send(Bytes::copy_from_slice(&buf[..n])).await?;
            } else {
                let msg = io.next().await.ok_or(LinkEnd::Closed)??;
                hs.read_message(&msg, &mut buf)?;
            }
        }
        Ok(Noise {
            io,
            transport: hs.into_transport_mode()?,
            partial: BytesMut::new(),
            plain: Vec::with_capacity(NOISE_MAX),
            sealed: vec![0u8; NOISE_MAX],
        })
    }

    async fn send(&mut self, env: &Envelope) -> Result<(), LinkEnd> {
        self.feed(&env.encode()).await?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), LinkEnd> {
        SinkExt::<Bytes>::flush(&mut self.io).await?;
        Ok(())
    }

    /// Queues one record, in chunks of at most one Noise message each (written out by `flush`,
    /// or when the buffer fills).
    async fn feed(&mut self, record: &[u8]) -> Result<(), LinkEnd> {
        let mut chunks = record.chunks(CHUNK).peekable();
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let last = chunks.peek().is_none();
            self.plain.clear();
            self.plain.push(u8::from(last));
            self.plain.extend_from_slice(chunk);
            let n = self.transport.write_message(&self.plain, &mut self.sealed)?;
            self.io.feed(Bytes::copy_from_slice(&self.sealed[..n])).await?;
            if last {
                return Ok(());
            }
        }
    }

    /// The next whole record. Cancel-safe: chunks already read wait in `partial`.
    async fn recv(&mut self) -> Result<Envelope, LinkEnd> {
        loop {
            let sealed = self.io.next().await.ok_or(LinkEnd::Closed)??;
            let n = self.transport.read_message(&sealed, &mut self.sealed)?;
            let (&flag, data) = self.sealed[..n].split_first().ok_or(Malformed)?;
            if self.partial.len() + data.len() > RECORD_MAX {
                return Err(Malformed.into());
            }
            self.partial.extend_from_slice(data);
            if flag == 1 {
                return Ok(Envelope::decode(self.partial.split().freeze())?);
            }
        }
    }
}

impl Links {
    /// Links for this relay; `handler` gets what arrives. Nothing is dialled until [`ensure`].
    pub fn new(
        settings: Settings,
        handler: Arc<dyn Handler>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Arc<Links> {
        let (to_self, mut self_rx) = mpsc::unbounded_channel();
        let links = Arc::new(Links {
            settings,
            handler,
            metrics,
            peers: Mutex::new(HashMap::new()),
            inbound: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashMap::new()),
            to_self,
            tasks: TaskTracker::new(),
            stop,
        });
        let weak = Arc::downgrade(&links);
        let stopped = links.stop.clone();
        links.tasks.spawn(async move {
            // What was queued before the stop is still handed on; then the task ends (the
            // sender lives as long as the links, so `recv` alone would wait forever).
            while let Some((msg, done)) = tokio::select! {
                biased;
                next = self_rx.recv() => next,
                () = stopped.cancelled() => None,
            } {
                let Some(links) = weak.upgrade() else { return };
                links.handler.deliver(links.settings.me, msg);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        });
        links
    }

    /// This relay's incarnation.
    pub fn me(&self) -> u64 {
        self.settings.me
    }

    /// Serves the links other relays dial, until the mesh stops.
    pub fn listen(self: &Arc<Self>, listener: TcpListener) {
        let links = Arc::clone(self);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        let per_source = crate::limits::PerIp::new(HANDSHAKES_PER_SOURCE);
        self.tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = links.stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, from)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // The source's own share first, so one address cannot take the shared permits.
                let Some(source) = per_source.acquire(from.ip()) else {
                    links.metrics.upstream.handshakes_refused.inc();
                    continue;
                };
                let Ok(global) = Arc::clone(&handshakes).try_acquire_owned() else {
                    links.metrics.upstream.handshakes_refused.inc();
                    continue;
                };
                let permit = Permit { _global: global, _source: source };
                let links2 = Arc::clone(&links);
                links.tasks.spawn(async move {
                    let stop = links2.stop.clone();
                    tokio::select! {
                        () = stop.cancelled() => {}
                        end = links2.serve_inbound(stream, permit) => {
                            tracing::debug!(%end, "an inbound mesh link ended");
                        }
                    }
                });
            }
        });
    }

    /// Makes sure relay `id` at `addr` is dialled (unless it is this relay, or was given up
    /// within its quarantine).
    pub fn ensure(self: &Arc<Self>, id: u64, addr: &str) {
        if id == self.settings.me || self.stop.is_cancelled() {
            return;
        }
        if self.is_lost(id) {
            return;
        }
        let mut peers = lock(&self.peers);
        if let Some(peer) = peers.get(&id) {
            *lock(&peer.addr) = addr.to_owned();
            return;
        }
        let now = Instant::now();
        let peer = Arc::new(Peer {
            id,
            addr: Mutex::new(addr.to_owned()),
            out: Mutex::new(Out {
                session: rand_session(),
                next: 0,
                unacked: VecDeque::new(),
                acked: 0,
                down_since: Some(now),
                progress: now,
            }),
            wake: Notify::new(),
            acked: Notify::new(),
            heard: Mutex::new(now),
            up: AtomicBool::new(false),
            was_up: AtomicBool::new(false),
            gone: CancellationToken::new(),
        });
        peers.insert(id, Arc::clone(&peer));
        drop(peers);
        lock(&self.lost).remove(&id);
        let links = Arc::clone(self);
        self.tasks.spawn(async move { links.dial(peer).await });
    }

    /// Whether `id` was given up and is still in quarantine.
    pub fn is_lost(&self, id: u64) -> bool {
        lock(&self.lost).get(&id).is_some_and(|(at, _)| at.elapsed() < self.quarantine())
    }

    /// Whether `id` is known to be gone for good (it said goodbye, or its address answers as a
    /// new incarnation), not only silent.
    pub fn is_dead(&self, id: u64) -> bool {
        lock(&self.lost).get(&id).is_some_and(|(_, gone)| *gone == Gone::Certainly)
    }

    /// How long a given-up incarnation is refused: one peer timeout, by which time the other
    /// side has given this relay up too (both judge the same silence), so the sessions that
    /// start after it start clean on both sides.
    fn quarantine(&self) -> Duration {
        self.settings.peer_timeout
    }

    /// Whether the link to `id` is up now.
    pub fn is_up(&self, id: u64) -> bool {
        lock(&self.peers).get(&id).is_some_and(|p| p.up.load(Ordering::Relaxed))
    }

    /// Queues `msg` for relay `to`; `false` if that relay is not (or no longer) linked.
    pub fn send(&self, to: u64, msg: Msg) -> bool {
        if to == self.settings.me {
            return self.to_self.send((msg, None)).is_ok();
        }
        self.queue(to, msg).is_some()
    }

    /// Queues `msg` for relay `to` and resolves `true` once that relay has handled it (its
    /// handler ran), `false` if it was given up or `wait` passed first.
    pub async fn send_handled(&self, to: u64, msg: Msg, wait: Duration) -> bool {
        if to == self.settings.me {
            let (done, handled) = oneshot::channel();
            return self.to_self.send((msg, Some(done))).is_ok()
                && timeout(wait, handled).await.is_ok_and(|r| r.is_ok());
        }
        let Some((peer, seq)) = self.queue(to, msg) else { return false };
        let handled = async {
            loop {
                let acked = peer.acked.notified();
                tokio::pin!(acked);
                acked.as_mut().enable();
                if lock(&peer.out).unacked.front().is_none_or(|(s, _)| *s > seq) {
                    return true;
                }
                tokio::select! {
                    () = acked => {}
                    () = peer.gone.cancelled() => return false,
                }
            }
        };
        timeout(wait, handled).await.unwrap_or(false)
    }

    fn queue(&self, to: u64, msg: Msg) -> Option<(Arc<Peer>, u64)> {
        let peer = lock(&self.peers).get(&to).cloned()?;
        let mut out = lock(&peer.out);
        let seq = out.next;
        out.next += 1;
        if out.unacked.is_empty() {
            out.progress = Instant::now();
        }
        out.unacked.push_back((seq, Envelope::Data { seq, msg }.encode()));
        drop(out);
        peer.wake.notify_one();
        Some((peer, seq))
    }

    /// Links up now.
    pub fn up(&self) -> usize {
        lock(&self.peers).values().filter(|p| p.up.load(Ordering::Relaxed)).count()
    }

    /// Gives up relay `id`: forgets its sessions and tells the handler.
    pub fn give_up(&self, id: u64, why: &str, gone: Gone) {
        let Some(peer) = lock(&self.peers).remove(&id) else { return };
        peer.gone.cancel();
        lock(&self.inbound).remove(&id);
        {
            let mut lost = lock(&self.lost);
            let quarantine = self.quarantine();
            lost.retain(|_, (at, _)| at.elapsed() < quarantine);
            lost.insert(id, (Instant::now(), gone));
        }
        self.metrics.upstream.peer_deaths.inc();
        tracing::info!(relay = %format_args!("{id:016x}"), why, "gave up a relay of the mesh");
        self.handler.peer_lost(id);
    }

    /// The dialer of one peer: connects, resends what is unacknowledged, sends, beats; gives the
    /// peer up when the link stays down or silent for the peer timeout.
    async fn dial(self: Arc<Self>, peer: Arc<Peer>) {
        let mut backoff = Duration::from_millis(50);
        let watchdog = {
            let links = Arc::clone(&self);
            let peer = Arc::clone(&peer);
            self.tasks.spawn(async move { links.watch(peer).await })
        };
        loop {
            if peer.gone.is_cancelled() || self.stop.is_cancelled() {
                break;
            }
            let addr = lock(&peer.addr).clone();
            let end = tokio::select! {
                () = peer.gone.cancelled() => break,
                () = self.stop.cancelled() => break,
                end = self.run_outbound(&peer, &addr) => end,
            };
            let was_up = peer.up.swap(false, Ordering::Relaxed);
            {
                let mut out = lock(&peer.out);
                if out.down_since.is_none() {
                    out.down_since = Some(Instant::now());
                }
            }
            if was_up {
                self.metrics.upstream.suspicions.inc();
                self.metrics.upstream.links_up.set(self.up() as i64);
                tracing::debug!(relay = %format_args!("{:016x}", peer.id), %end, "a mesh link went down");
                backoff = Duration::from_millis(50);
            }
            match end {
                LinkEnd::Replaced => {
                    self.give_up(peer.id, "its address answers as another relay (it restarted)", Gone::Certainly);
                    break;
                }
                LinkEnd::Forgot => {
                    self.give_up(peer.id, "it gave this relay up: the link's session is lost", Gone::Silent);
                    break;
                }
                _ => {}
            }
            if let LinkEnd::Noise(_) = end {
                self.metrics.upstream.link_auth_failures.inc();
            }
            tokio::select! {
                () = peer.gone.cancelled() => break,
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.settings.heartbeat.min(Duration::from_secs(1)));
        }
        watchdog.abort();
        if peer.up.swap(false, Ordering::Relaxed) {
            self.metrics.upstream.links_up.set(self.up() as i64);
        }
    }

    /// Gives `peer` up once its link has been down, unacknowledged or silent for the timeout.
    async fn watch(self: Arc<Self>, peer: Arc<Peer>) {
        let timeout_after = self.settings.peer_timeout;
        let mut tick = tokio::time::interval((self.settings.heartbeat / 4).max(Duration::from_millis(10)));
        loop {
            tick.tick().await;
            let now = Instant::now();
            let (down, stalled) = {
                let out = lock(&peer.out);
                let down = out.down_since.is_some_and(|at| now.duration_since(at) >= timeout_after);
                // Unacknowledged only counts while the link is up to carry acknowledgements.
                let stalled = out.down_since.is_none()
                    && !out.unacked.is_empty()
                    && now.duration_since(out.progress) >= timeout_after;
                (down, stalled)
            };
            let silent = now.duration_since(*lock(&peer.heard)) >= timeout_after;
            let why = if down {
                "its link stayed down"
            } else if stalled {
                "it acknowledged nothing"
            } else if silent {
                "it was not heard"
            } else {
                continue;
            };
            self.give_up(peer.id, why, Gone::Silent);
            return;
        }
    }

    /// A TCP connection to `addr`, from the mesh's own address when it has one.
    async fn connect(&self, addr: &str) -> std::io::Result<TcpStream> {
        let Some(source) = self.settings.source else { return TcpStream::connect(addr).await };
        let mut last = std::io::Error::other(format!("{addr} does not resolve to an address"));
        for to in tokio::net::lookup_host(addr).await? {
            let socket = match to {
                std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            if to.is_ipv4() == source.is_ipv4() {
                socket.bind(std::net::SocketAddr::new(source, 0))?;
            }
            match socket.connect(to).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// One outbound connection to `peer`, until it fails.
    async fn run_outbound(&self, peer: &Peer, addr: &str) -> LinkEnd {
        match self.outbound(peer, addr).await {
            Ok(()) => LinkEnd::Closed,
            Err(e) => e,
        }
    }

    async fn outbound(&self, peer: &Peer, addr: &str) -> Result<(), LinkEnd> {
        let stream = timeout(CONNECT_TIMEOUT, self.connect(addr)).await??;
        let mut link = timeout(CONNECT_TIMEOUT, Noise::handshake(stream, &self.settings.psk, true)).await??;
        let session = lock(&peer.out).session;
        let hello =
            Envelope::Hello { from: self.settings.me, to: peer.id, session, addr: self.settings.advertise.clone() };
        link.send(&hello).await?;
        let next = match timeout(CONNECT_TIMEOUT, link.recv()).await?? {
            Envelope::Welcome { me, .. } if me != peer.id => return Err(LinkEnd::Replaced),
            Envelope::Welcome { next, .. } => next,
            _ => return Err(Malformed.into()),
        };
        if lock(&peer.out).acked > next {
            // It has forgotten messages it acknowledged (it gave this relay up meanwhile): what
            // depended on them cannot be repaired, only ended.
            return Err(LinkEnd::Forgot);
        }
        // Everything below `next` arrived before the drop; the rest goes again.
        let mut sent_upto = {
            let mut out = lock(&peer.out);
            ack(&mut out, next);
            out.down_since = None;
            // What was queued while the link was down could not be acknowledged: the wait for
            // an acknowledgement starts now (the down time is judged by `down_since`).
            out.progress = Instant::now();
            next
        };
        peer.acked.notify_waiters();
        peer.up.store(true, Ordering::Relaxed);
        if peer.was_up.swap(true, Ordering::Relaxed) {
            self.metrics.upstream.reconnects.inc();
        }
        self.metrics.upstream.links_up.set(self.up() as i64);
        let mut beat = tokio::time::interval(self.settings.heartbeat);
        beat.reset();
        loop {
            // Send what was queued since, oldest first (and, after a reconnect, all unacked).
            loop {
                let batch: Vec<(u64, Bytes)> = {
                    let out = lock(&peer.out);
                    out.unacked.iter().filter(|(s, _)| *s >= sent_upto).take(64).cloned().collect()
                };
                let Some(&(last, _)) = batch.last() else { break };
                for (seq, record) in &batch {
                    if *seq < next {
                        self.metrics.upstream.retransmits.inc();
                    }
                    link.feed(record).await?;
                }
                link.flush().await?;
                sent_upto = last + 1;
                beat.reset();
            }
            let notified = peer.wake.notified();
            tokio::select! {
                () = notified => {}
                _ = beat.tick() => link.send(&Envelope::Beat).await?,
                got = link.recv() => match got? {
                    Envelope::Ack { next } => {
                        ack(&mut lock(&peer.out), next);
                        peer.acked.notify_waiters();
                    }
                    Envelope::Beat => {}
                    _ => return Err(Malformed.into()),
                },
            }
        }
    }

    /// One inbound connection: the dialer's session, in order, each message once.
    async fn serve_inbound(self: &Arc<Self>, stream: TcpStream, permit: Permit) -> LinkEnd {
        match self.inbound(stream, permit).await {
            Ok(()) => LinkEnd::Closed,
            Err(e) => {
                if let LinkEnd::Noise(_) = e {
                    self.metrics.upstream.link_auth_failures.inc();
                    tracing::warn!("refused a mesh link that does not hold the cluster secret");
                }
                e
            }
        }
    }

    async fn inbound(self: &Arc<Self>, stream: TcpStream, permit: Permit) -> Result<(), LinkEnd> {
        // A dialer speaks at once: silence past FIRST_MESSAGE gives the permit back.
        timeout(FIRST_MESSAGE, stream.readable()).await??;
        let mut link = timeout(CONNECT_TIMEOUT, Noise::handshake(stream, &self.settings.psk, false)).await??;
        let (from, to, session, addr) = match timeout(CONNECT_TIMEOUT, link.recv()).await?? {
            Envelope::Hello { from, to, session, addr } => (from, to, session, addr),
            _ => return Err(Malformed.into()),
        };
        // Authenticated: no longer a handshake in progress.
        drop(permit);
        if to != self.settings.me {
            // Meant for an earlier incarnation at this address: the dialer learns it restarted
            // and gives that one up. Its session with *this* incarnation is another session,
            // perhaps already running: it must not be reset by this one.
            link.send(&Envelope::Welcome { me: self.settings.me, next: 0 }).await?;
            return Err(LinkEnd::Replaced);
        }
        let (mut next, epoch) = {
            let mut inbound = lock(&self.inbound);
            let entry = inbound.entry(from).or_insert(InState { session, next: 0, epoch: 0 });
            if entry.session != session {
                *entry = InState { session, next: 0, epoch: entry.epoch };
            }
            // This connection takes over from any earlier one of the same dialer still open.
            entry.epoch += 1;
            (entry.next, entry.epoch)
        };
        link.send(&Envelope::Welcome { me: self.settings.me, next }).await?;
        // Replies go on our own link to it: make sure there is one, and that the rooms count
        // it before it counts itself ready.
        // Linked first, then on the roster: a seat whose room moves to it on the roster change
        // sends its record on that link.
        if !self.is_lost(from) {
            self.ensure(from, &addr);
            self.handler.met(from, &addr);
        }
        let heard = |links: &Links| {
            if let Some(peer) = lock(&links.peers).get(&from) {
                *lock(&peer.heard) = Instant::now();
            }
        };
        heard(self);
        let mut acked = next;
        let ack_timer = tokio::time::sleep(ACK_DELAY);
        tokio::pin!(ack_timer);
        let mut beat = tokio::time::interval(self.settings.heartbeat);
        beat.reset();
        loop {
            tokio::select! {
                got = link.recv() => {
                    heard(self);
                    match got? {
                        Envelope::Data { seq, msg: Msg::Bye } => {
                            // It shut down after its departures (acknowledged before this).
                            let _ = link.send(&Envelope::Ack { next: seq + 1 }).await;
                            self.give_up(from, "it shut down", Gone::Certainly);
                            return Ok(());
                        }
                        Envelope::Data { seq, msg } => {
                            {
                                // Checked, advanced and handed on under one lock: a connection
                                // that took over can neither repeat nor overtake this message.
                                let mut inbound = lock(&self.inbound);
                                let Some(entry) = inbound.get_mut(&from).filter(|e| e.epoch == epoch) else {
                                    return Err(LinkEnd::Closed);
                                };
                                if seq > entry.next {
                                    return Err(LinkEnd::Order);
                                }
                                if seq == entry.next {
                                    entry.next += 1;
                                    if !self.is_lost(from) {
                                        self.handler.deliver(from, msg);
                                    }
                                }
                                next = entry.next;
                            }
                            if next - acked >= ACK_EVERY {
                                link.send(&Envelope::Ack { next }).await?;
                                acked = next;
                            } else if next > acked && ack_timer.is_elapsed() {
                                ack_timer.as_mut().reset(Instant::now() + ACK_DELAY);
                            }
                        }
                        Envelope::Beat => {}
                        _ => return Err(Malformed.into()),
                    }
                }
                () = &mut ack_timer, if next > acked => {
                    link.send(&Envelope::Ack { next }).await?;
                    acked = next;
                }
                _ = beat.tick() => link.send(&Envelope::Beat).await?,
            }
        }
    }

    /// Tells every linked relay this one is leaving (after its departures), so they give it up
    /// at once rather than after the peer timeout; waits (bounded) until they have it.
    pub async fn say_bye(&self, wait: Duration) {
        let ids: Vec<u64> = lock(&self.peers).keys().copied().collect();
        let byes = ids.into_iter().map(|id| self.send_handled(id, Msg::Bye, wait));
        futures_util::future::join_all(byes).await;
    }

    /// Stops every link (after the mesh's departures were sent, see `Mesh::close`).
    pub async fn close(&self) {
        self.stop.cancel();
        self.tasks.close();
        let _ = timeout(Duration::from_secs(2), self.tasks.wait()).await;
    }
}

/// The listener has every message below `next`.
fn ack(out: &mut Out, next: u64) {
    out.acked = out.acked.max(next);
    let before = out.unacked.len();
    while out.unacked.front().is_some_and(|(s, _)| *s < next) {
        out.unacked.pop_front();
    }
    if out.unacked.len() < before || out.unacked.is_empty() {
        out.progress = Instant::now();
    }
}

fn rand_session() -> u64 {
    use rand_core::RngCore;
    rand_core::OsRng.next_u64()
}

/// The Noise pre-shared key, the gossip key and the lease key, derived from the cluster secret
/// with HKDF.
pub fn keys(secret: &[u8]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"ghostwire mesh v1"), secret);
    let mut psk = [0u8; 32];
    let mut gossip = [0u8; 32];
    let mut lease = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 8160, so expand cannot fail.
    let _ = hk.expand(b"link psk", &mut psk);
    let _ = hk.expand(b"gossip key", &mut gossip);
    let _ = hk.expand(b"lease key", &mut lease);
    (psk, gossip, lease)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_record_larger_than_a_noise_message_crosses_in_chunks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let psk = [7u8; 32];
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut link = Noise::handshake(s, &psk, false).await.unwrap();
            link.recv().await.unwrap()
        });
        let mut link = Noise::handshake(TcpStream::connect(addr).await.unwrap(), &psk, true).await.unwrap();
        let big = Bytes::from(vec![b'x'; 200_000]);
        let msg = Msg::Frames { to: 1, from: 2, first: 0, frames: vec![big] };
        link.send(&Envelope::Data { seq: 0, msg: msg.clone() }).await.unwrap();
        assert_eq!(server.await.unwrap(), Envelope::Data { seq: 0, msg });
    }

    /// What a test relay's links delivered, and whom they gave up.
    #[derive(Default)]
    struct Seen {
        delivered: Mutex<Vec<(u64, Msg)>>,
        lost: Mutex<Vec<u64>>,
    }

    impl Handler for Seen {
        fn deliver(&self, from: u64, msg: Msg) {
            lock(&self.delivered).push((from, msg));
        }
        fn peer_lost(&self, id: u64) {
            lock(&self.lost).push(id);
        }
        fn met(&self, _: u64, _: &str) {}
    }

    /// Links for relay `me`, listening on a loopback port.
    async fn relay(me: u64) -> (Arc<Links>, Arc<Seen>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let settings = Settings {
            me,
            advertise: addr.clone(),
            psk: [7u8; 32],
            heartbeat: Duration::from_millis(200),
            peer_timeout: Duration::from_secs(5),
            source: None,
        };
        let seen = Arc::new(Seen::default());
        let metrics = Arc::new(Metrics::new(&crate::Config::for_tests()));
        let links = Links::new(settings, Arc::clone(&seen) as Arc<dyn Handler>, metrics, CancellationToken::new());
        links.listen(listener);
        (links, seen, addr)
    }

    fn beat(n: u64) -> Msg {
        Msg::Frames { to: 1, from: 2, first: n, frames: vec![] }
    }

    /// A relay restarted on its old address is reached by two of a dialer's sessions: the one
    /// for the incarnation that is gone, and the one for the new one. The first learns of the
    /// restart; it must not reset the second, or the listener forgets messages it acknowledged
    /// and the link never carries another one (it did: a flaky restart test in the mesh suite).
    #[tokio::test]
    async fn a_dial_to_an_earlier_incarnation_leaves_the_new_ones_session_alone() {
        let (listener, heard, addr) = relay(10).await;
        let (dialer, seen, _) = relay(20).await;
        dialer.ensure(10, &addr);
        let wait = Duration::from_secs(5);
        for n in 0..3 {
            assert!(dialer.send_handled(10, beat(n), wait).await, "message {n} before");
        }
        // The incarnation that used to listen there (9), still on the dialer's roster.
        dialer.ensure(9, &addr);
        timeout(wait, async {
            while !lock(&seen.lost).contains(&9) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        for n in 3..6 {
            assert!(dialer.send_handled(10, beat(n), wait).await, "message {n} after");
        }
        let firsts: Vec<u64> = lock(&heard.delivered)
            .iter()
            .map(|(from, m)| match m {
                Msg::Frames { first, .. } if *from == 20 => *first,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(firsts, (0..6).collect::<Vec<_>>(), "each once, in order");
        assert!(!lock(&seen.lost).contains(&10) && dialer.is_up(10));
        listener.close().await;
        dialer.close().await;
    }

    #[tokio::test]
    async fn a_wrong_key_fails_the_handshake_on_both_sides() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            Noise::handshake(s, &[1u8; 32], false).await.map(|_| ())
        });
        let client = Noise::handshake(TcpStream::connect(addr).await.unwrap(), &[2u8; 32], true).await;
        let server = server.await.unwrap();
        assert!(matches!(server, Err(LinkEnd::Noise(_))), "{server:?}");
        // The dialer's last message went out; it learns of the refusal when the socket closes.
        if let Ok(mut link) = client {
            assert!(link.recv().await.is_err());
        }
    }
}
