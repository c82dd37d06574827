//! The mesh upstream: relays that share rooms by linking to each other directly, no broker.
//!
//! * **Membership** ([`gossip`]): SWIM through `foca`, every datagram sealed with a key derived
//!   from the cluster secret. Introducers (`--mesh-introducer`) are relays that own no rooms and
//!   serve no clients; they are the seeds every relay announces itself to (`--introducers`),
//!   and the witnesses of the relays' leases ([`lease`]). Once the relays know each other, the
//!   roster keeps itself; new rooms need a majority of the introducers answering.
//! * **Links** ([`links`]): each relay dials every relay on the roster; a Noise `XXpsk3`
//!   handshake proves both hold the cluster secret, and the link then carries numbered messages
//!   that a reconnect resumes without loss, duplication or reordering.
//! * **Rooms** ([`rooms`]): a room's owner is the relay with the highest rendezvous score for its
//!   keyed id over the live roster. Every join goes to the owner, which decides it under one lock:
//!   at most two seats, however joins race through different relays. The owner only decides;
//!   frames go straight between the two seats' relays ([`seat`]).
//! * **Faults.** A relay given up by the links (silent or unreachable for `--mesh-peer-timeout`,
//!   or answering as a new incarnation): its partners end with 4011, the rooms it held at owners
//!   are freed at once, and the seats whose owner it was record their rooms at the new owner. A
//!   relay's incarnation is random per start, so nothing addressed to a previous run reaches a
//!   new one.
//!
//! **Burns** go to every relay on the roster, so a later owner knows them too; the burn
//! returns once the room's owner has recorded it (`Msg::Burnt`).
//!
//! **Partitions.** A relay admits new rooms only while ready: known to the membership,
//! holding a lease from a majority of the introducers ([`lease`]), and linked to every relay on
//! its roster; an owner checks the same, and that the room is its own, before it decides a join.
//! Two ready relays always see each other, so they agree on every room's owner: in a full
//! two-way partition only the side with a majority of the introducers admits. A relay the links
//! gave up for silence stays on the roster while the membership says it is alive or a lease
//! answer lists it, so a cut that the membership does not see (TCP only, one way, a stranger
//! holding handshake slots) makes the relays on both sides refuse new rooms (4007) rather than
//! each own the other's; the membership's walk relinks them when the cut heals.
//!
//! **Owner changes.** When a room's owner changes with the roster, its seats record it at the
//! new owner (`Hold`), which holds back joins to rooms of a relay that left within a grace
//! ([`roster`]) so the records arrive first. Not covered: a pair whose seats and owner are all
//! on the side of a partition without the introducers' majority (docs/PROTOCOL.md, section 26).

mod gossip;
mod lease;
mod links;
pub mod rooms;
mod roster;
mod seat;
pub mod wire;

use super::{BoxFuture, JoinError, Joined, Mailbox, RoomId, Upstream};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::Error;
use links::{Handler, Links, Settings};
use rooms::Rooms;
use seat::Event;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wire::{Msg, SeatRef, Verdict};

/// Rooms shared by linked relays.
pub struct Mesh {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// What the seats, the links' handler and the membership share.
struct Shared {
    links: Arc<Links>,
    roster: Arc<roster::Roster>,
    rooms: Mutex<Rooms>,
    seats: Mutex<HashMap<u64, mpsc::UnboundedSender<Event>>>,
    next_seat: AtomicU64,
    /// Burns sent and not yet recorded by their room's owner: the owner, and whom to tell.
    burns: Mutex<HashMap<u64, (u64, tokio::sync::oneshot::Sender<()>)>>,
    /// Seats held (joins in progress included); published as this relay's load.
    open: Arc<AtomicUsize>,
    seats_gone: Notify,
    max_rooms: usize,
    peer_queue: usize,
    max_batch_bytes: usize,
    introducer: bool,
    /// Known to at least one other member of the mesh.
    active: Arc<AtomicBool>,
    /// The witness leases this relay holds (`None` on an introducer).
    leases: Option<Arc<Mutex<lease::Leases>>>,
    /// An introducer answers lease pings (and is ready) from this moment on.
    answers_from: tokio::time::Instant,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// The owner of `room` as this relay sees the roster (this relay included).
    fn owner(&self, room: &[u8; 16]) -> Option<u64> {
        rooms::owner(room, self.candidates())
    }

    /// The relays that can own a room: this one and those on the roster not given up.
    fn candidates(&self) -> Vec<u64> {
        let me = self.links.me();
        self.roster.ids().into_iter().filter(|r| !self.links.is_lost(*r)).chain([me]).collect()
    }

    /// Whether this relay may admit a new room, as the joiners' relay or as the room's owner:
    /// known to the mesh, holding a lease from a majority of the introducers, and linked to every
    /// relay on its roster (see [`lease`] for why that keeps a partition's two sides from both
    /// admitting one room).
    fn ready(&self) -> Result<(), String> {
        if self.introducer {
            let wait = self.answers_from.saturating_duration_since(tokio::time::Instant::now());
            if !wait.is_zero() {
                return Err(format!("an introducer answers lease pings after a lease: {wait:.1?} to go"));
            }
            return Ok(());
        }
        if !self.active.load(Ordering::Acquire) {
            return Err("not yet known to any member of the mesh: are the introducers up, reachable over UDP, and \
                        started with this relay's cluster secret? (they log gossip they refuse)"
                .into());
        }
        if let Some(leases) = &self.leases {
            leases.lock().unwrap_or_else(|p| p.into_inner()).check(tokio::time::Instant::now())?;
        }
        let roster = self.roster.len();
        let up = self.links.up();
        if up < roster {
            return Err(format!("linked to {up} of the {roster} relays on the roster"));
        }
        Ok(())
    }

    /// When a relay that left the roster within the grace owned `room`, the end of its grace:
    /// its seats elsewhere are recording the room here (`Msg::Hold`) until then.
    fn moved_lately(&self, room: &[u8; 16]) -> Option<tokio::time::Instant> {
        let moving = self.roster.moving();
        if moving.is_empty() {
            return None;
        }
        let now = self.candidates();
        moving
            .into_iter()
            .filter(|(d, _)| rooms::owner(room, now.iter().copied().chain([*d])) == Some(*d))
            .map(|(_, until)| until)
            .max()
    }

    fn seat(&self, n: u64) -> Option<mpsc::UnboundedSender<Event>> {
        self.seats.lock().unwrap_or_else(|p| p.into_inner()).get(&n).cloned()
    }

    fn tell(&self, n: u64, event: Event) -> bool {
        self.seat(n).is_some_and(|tx| tx.send(event).is_ok())
    }
}

/// The owner's decision on seat `seat` of relay `from` joining `room`.
///
/// Only the owner as this relay sees the roster, and only while ready, decides: the joiner's
/// relay may have judged from a roster that is out of date (refused: 4007 to the client). A
/// room whose previous owner left lately waits, unanswered, until the grace is over, so that
/// the records of its seats elsewhere (`Hold`) arrive first.
fn decide_join(shared: &Arc<Shared>, from: u64, room: [u8; 16], seat: u64) {
    let joiner = SeatRef { relay: from, n: seat };
    if shared.owner(&room) != Some(shared.links.me()) || shared.ready().is_err() {
        shared.metrics.upstream.joins_refused.inc();
        shared.links.send(from, Msg::Verdict { seat, verdict: Verdict::Refused });
        return;
    }
    if let Some(until) = shared.moved_lately(&room) {
        let later = Arc::downgrade(shared);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(shared) = later.upgrade() {
                decide_join(&shared, from, room, seat);
            }
        });
        return;
    }
    admit(shared, room, joiner);
}

/// Applies `joiner`'s join to the room table and answers it (telling a waiting first seat of
/// its partner).
fn admit(shared: &Shared, room: [u8; 16], joiner: SeatRef) {
    let verdict = shared.rooms.lock().unwrap_or_else(|p| p.into_inner()).join(room, joiner);
    if let Verdict::Paired(first) = verdict {
        shared.links.send(first.relay, Msg::Paired { to: first.n, partner: joiner });
    }
    shared.links.send(joiner.relay, Msg::Verdict { seat: joiner.n, verdict });
}

/// The longest burn a relay keeps (a year: `--burn-ttl`'s own bound), whatever a message says.
const MAX_BURN_MS: u64 = 366 * 24 * 3600 * 1000;
/// Time for the room's owner to record a burn.
const BURN_TIMEOUT: Duration = Duration::from_secs(5);

/// Burns `room` for `ttl` at every relay on the roster and this one; resolves once its owner
/// has it.
async fn burn(shared: Arc<Shared>, room: [u8; 16], ttl: Duration) -> Result<(), JoinError> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).min(MAX_BURN_MS);
    shared.rooms.lock().unwrap_or_else(|p| p.into_inner()).burn(room, std::time::Instant::now() + ttl);
    let me = shared.links.me();
    let owner = shared.owner(&room).unwrap_or(me);
    let token = shared.next_seat.fetch_add(1, Ordering::Relaxed);
    let (done, recorded) = tokio::sync::oneshot::channel();
    if owner != me {
        shared.burns.lock().unwrap_or_else(|p| p.into_inner()).insert(token, (owner, done));
    }
    for relay in shared.candidates().into_iter().filter(|r| *r != me) {
        shared.links.send(relay, Msg::Burn { room, ttl_ms, token });
    }
    if owner == me {
        return Ok(());
    }
    let answered = tokio::time::timeout(BURN_TIMEOUT, recorded).await;
    shared.burns.lock().unwrap_or_else(|p| p.into_inner()).remove(&token);
    match answered {
        Ok(Ok(())) => Ok(()),
        _ => Err(JoinError::Unavailable("the room's relay did not record the burn in time".into())),
    }
}

/// The links' handler: routes what arrives to the room table and the seats.
struct Router(Weak<Shared>);

impl Handler for Router {
    fn deliver(&self, from: u64, msg: Msg) {
        let Some(shared) = self.0.upgrade() else { return };
        match msg {
            Msg::Join { room, seat } => decide_join(&shared, from, room, seat),
            // A seat whose room moved here with a roster change: recorded, never refused for
            // the grace (it was admitted by the previous owner). A waiting one is a join.
            Msg::Hold { room, seat, partner } => {
                let holder = SeatRef { relay: from, n: seat };
                if shared.owner(&room) != Some(shared.links.me()) {
                    shared.metrics.upstream.joins_refused.inc();
                    if partner.is_none() {
                        shared.links.send(from, Msg::Verdict { seat, verdict: Verdict::Refused });
                    }
                    return;
                }
                match partner {
                    Some(partner) => {
                        if !shared.rooms.lock().unwrap_or_else(|p| p.into_inner()).hold(room, holder, partner) {
                            shared.metrics.upstream.slot_conflicts.inc();
                        }
                    }
                    None => admit(&shared, room, holder),
                }
            }
            Msg::Verdict { seat, verdict } => {
                shared.tell(seat, Event::Verdict { owner: from, verdict });
            }
            Msg::Paired { to, partner } => {
                if !shared.tell(to, Event::Paired { partner }) {
                    // The waiting seat left as its partner came: the partner hears PEER_LEFT.
                    shared.links.send(partner.relay, Msg::Left { to: partner.n, from: to, sent: 0 });
                }
            }
            Msg::Frames { to, from: seat, first, frames } => {
                if !shared.tell(to, Event::Frames { from: SeatRef { relay: from, n: seat }, first, frames }) {
                    shared.links.send(from, Msg::Gone { to: seat });
                }
            }
            Msg::Ack { to, from: seat, next } => {
                shared.tell(to, Event::Ack { from: SeatRef { relay: from, n: seat }, next });
            }
            Msg::Left { to, from: seat, sent } => {
                shared.tell(to, Event::Left { from: SeatRef { relay: from, n: seat }, sent });
            }
            Msg::Leave { room, seat } => {
                shared.rooms.lock().unwrap_or_else(|p| p.into_inner()).leave(room, SeatRef { relay: from, n: seat });
            }
            Msg::Gone { to } => {
                shared.tell(to, Event::Gone);
            }
            Msg::Burn { room, ttl_ms, token } => {
                let until = std::time::Instant::now() + Duration::from_millis(ttl_ms.min(MAX_BURN_MS));
                shared.rooms.lock().unwrap_or_else(|p| p.into_inner()).burn(room, until);
                shared.links.send(from, Msg::Burnt { token });
            }
            Msg::Burnt { token } => {
                let mut burns = shared.burns.lock().unwrap_or_else(|p| p.into_inner());
                // Only the owner's answer counts: the others only keep the burn for later.
                if burns.get(&token).is_some_and(|(owner, _)| *owner == from) {
                    if let Some((_, done)) = burns.remove(&token) {
                        let _ = done.send(());
                    }
                }
            }
            // Handled by the links themselves (it ends the sender's session).
            Msg::Bye => {}
        }
    }

    fn met(&self, id: u64, addr: &str) {
        let Some(shared) = self.0.upgrade() else { return };
        if let Ok(addr) = addr.parse::<SocketAddr>() {
            shared.roster.insert(id, addr);
        }
    }

    fn peer_lost(&self, id: u64) {
        let Some(shared) = self.0.upgrade() else { return };
        // Known dead (it said goodbye, or restarted): off the roster now. Only silent: it stays
        // while the membership says it is alive (see `gossip::Outlet::reconcile`), and, not
        // linked, keeps this relay from admitting new rooms that the two could otherwise each
        // claim to own.
        if shared.links.is_dead(id) {
            shared.roster.remove(id);
        }
        shared.rooms.lock().unwrap_or_else(|p| p.into_inner()).forget_relay(id);
        let seats: Vec<_> = shared.seats.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for seat in seats {
            let _ = seat.send(Event::RelayLost(id));
        }
    }
}

impl Mesh {
    /// Binds the link listener and the gossip socket (one port, TCP and UDP), joins the mesh
    /// through the introducers, and starts linking.
    ///
    /// # Errors
    /// [`Error::Config`] for a missing cluster secret or an unreadable introducers file;
    /// [`Error::Bind`] when the port cannot be bound.
    pub async fn connect(config: &Config, metrics: Arc<Metrics>) -> Result<Mesh, Error> {
        let mesh = &config.mesh;
        let secret = super::room_id::cluster_secret(config)?;
        let (psk, gossip_key, lease_key) = links::keys(secret.expose().as_bytes());
        // `Relay::check` made sure a relay has introducers.
        let seeds = mesh.introducer_list().map_err(Error::Config)?;
        let (listener, socket) = bind_pair(mesh.listen).await?;
        let listen = listener.local_addr().map_err(|e| bind_error(mesh.listen, e))?;
        let advertise = match &mesh.advertise {
            Some(a) => a.clone(),
            None => listen.to_string(),
        };
        let advertised: SocketAddr =
            match tokio::net::lookup_host(advertise.as_str()).await.ok().and_then(|mut a| a.next()) {
                Some(a) => a,
                None => {
                    return Err(Error::Config(format!("--mesh-advertise {advertise:?} does not resolve to an address")))
                }
            };
        let incarnation = loop {
            use rand_core::RngCore;
            let n = rand_core::OsRng.next_u64();
            if n != 0 {
                break n;
            }
        };
        let stop = CancellationToken::new();
        let lease_length = mesh.probe_period.saturating_mul(lease::PERIODS_PER_LEASE);
        let settings = Settings {
            me: incarnation,
            advertise: advertised.to_string(),
            psk,
            heartbeat: mesh.heartbeat,
            peer_timeout: mesh.peer_timeout,
            source: (!listen.ip().is_unspecified()).then_some(listen.ip()),
        };
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| Shared {
            links: Links::new(settings, Arc::new(Router(weak.clone())), Arc::clone(&metrics), stop.child_token()),
            // The grace: the skew between two relays' rosters (one probe period of lease answers,
            // one of the rounds that recompute the roster) and the records' trip, with room; at
            // most 3 s, so a join it holds back is still answered within the seat's 5 s.
            roster: Arc::new(roster::Roster::new(
                metrics.upstream.roster_size.clone(),
                metrics.upstream.rooms_moving.clone(),
                mesh.probe_period.saturating_mul(3).min(Duration::from_secs(3)),
            )),
            rooms: Mutex::new(Rooms::default()),
            seats: Mutex::new(HashMap::new()),
            next_seat: AtomicU64::new(1),
            burns: Mutex::new(HashMap::new()),
            open: Arc::new(AtomicUsize::new(0)),
            seats_gone: Notify::new(),
            max_rooms: config.max_rooms,
            peer_queue: config.peer_queue as usize,
            max_batch_bytes: (256 * 1024).max(config.max_frame_bytes + 64),
            introducer: mesh.introducer,
            active: Arc::new(AtomicBool::new(false)),
            leases: (!mesh.introducer)
                .then(|| Arc::new(Mutex::new(lease::Leases::new(incarnation, advertised, lease_length)))),
            answers_from: tokio::time::Instant::now() + lease::listed_for(lease_length),
            metrics: Arc::clone(&metrics),
        });
        if !mesh.introducer {
            shared.links.listen(listener);
        }
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let me = gossip::Node { addr: advertised, incarnation, started, relay: !mesh.introducer, renewal: 0 };
        let g = gossip::Gossip {
            me,
            socket,
            key: gossip_key,
            seeds,
            probe_period: mesh.probe_period,
            seats: Arc::clone(&shared.open),
            loads: Arc::default(),
            lease_key,
            leases: shared.leases.clone(),
        };
        let tasks = TaskTracker::new();
        let links = (!mesh.introducer).then(|| Arc::clone(&shared.links));
        let active = Arc::clone(&shared.active);
        tasks.spawn(gossip::run(g, Arc::clone(&shared.roster), links, active, Arc::clone(&metrics), stop.clone()));
        tracing::info!(
            listen = %listen,
            advertise = %advertised,
            introducer = mesh.introducer,
            relay = %format_args!("{incarnation:016x}"),
            "mesh upstream started"
        );
        Ok(Mesh { shared, tasks, stop })
    }
}

fn bind_error(addr: SocketAddr, source: std::io::Error) -> Error {
    Error::Bind { addr, source }
}

/// Binds TCP and UDP on one port (the port of `addr`, or one free for both when it is 0).
async fn bind_pair(addr: SocketAddr) -> Result<(tokio::net::TcpListener, tokio::net::UdpSocket), Error> {
    for _ in 0..20 {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| bind_error(addr, e))?;
        let bound = listener.local_addr().map_err(|e| bind_error(addr, e))?;
        match tokio::net::UdpSocket::bind(bound).await {
            Ok(socket) => return Ok((listener, socket)),
            Err(e) if addr.port() != 0 => return Err(bind_error(addr, e)),
            Err(_) => continue,
        }
    }
    Err(bind_error(addr, std::io::Error::other("no port free for both TCP and UDP")))
}

impl Upstream for Mesh {
    fn join<'a>(&'a self, room: &'a RoomId, me: Mailbox) -> BoxFuture<'a, Result<Joined, JoinError>> {
        // Without a lease, or not linked to every relay on the roster: another relay may be
        // deciding this room's owner from another roster, so no new room is admitted here
        // (4007) until it is.
        if let Err(why) = self.ready() {
            return Box::pin(std::future::ready(Err(JoinError::Unavailable(why))));
        }
        Box::pin(seat::join(Arc::clone(&self.shared), &self.tasks, *room, me))
    }

    fn burn<'a>(&'a self, room: &'a RoomId, ttl: Duration) -> BoxFuture<'a, Result<(), JoinError>> {
        Box::pin(burn(Arc::clone(&self.shared), room.bytes(), ttl))
    }

    fn ready(&self) -> Result<(), String> {
        self.shared.ready()
    }

    fn open_rooms(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "mesh"
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let seats = super::until_zero(&self.shared.open, &self.shared.seats_gone);
            let _ = tokio::time::timeout(Duration::from_secs(5), seats).await;
            // The departures are on the links, in order; after them, a goodbye, so the other
            // relays give this one up now and its rooms there move on at once.
            self.shared.links.say_bye(Duration::from_secs(2)).await;
            self.stop.cancel();
            self.shared.links.close().await;
            self.tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        })
    }
}
