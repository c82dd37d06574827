//! Membership: who is in the mesh, by SWIM (`foca`), every datagram sealed.
//!
//! foca does the protocol (probes, indirect probes, suspicion, dissemination piggybacked on
//! probes) and leaves the transport to us, which is why it was chosen over chitchat, whose
//! transport cannot see the bytes it sends: every datagram here is sealed with
//! XChaCha20-Poly1305 under a key derived from the cluster secret (random 24-byte nonce ‖
//! ciphertext), so without the secret nothing joins the membership, reads it or injects into it
//! (the way Serf and Consul use their gossip key). A datagram that does not open is dropped and
//! counted. Introducers are the seeds: every relay announces itself to them at start, every
//! two probe periods (at most 2 s) while it knows no one, and every third such round after, so
//! an introducer that restarted empty learns the mesh again. Between relays, foca's own
//! dissemination keeps the roster whole, introducers or not.
//!
//! The same socket carries the witness leases ([`super::lease`]), sealed under a key of their
//! own: every probe period a relay pings every introducer, and the introducers answer.

use super::lease::{self, Leases, Witness};
use super::links::Links;
use super::roster::Roster;
use crate::metrics::Metrics;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::XChaCha20Poly1305;
use foca::{BroadcastHandler, Config, Foca, Identity, Invalidates, PostcardCodec, Timer};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A member of the mesh as the membership knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Where it gossips, and (for a relay) where its link listener is: the same port.
    pub addr: SocketAddr,
    /// Its incarnation (random per start); 0 for a seed not met yet.
    pub incarnation: u64,
    /// When it started (milliseconds since the epoch): a restart at the same address wins.
    pub started: u64,
    /// A relay (owns rooms, takes links) or an introducer (membership only).
    pub relay: bool,
    /// Bumped when the node rejoins after being declared down.
    pub renewal: u16,
}

impl Identity for Node {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Node { renewal: self.renewal.wrapping_add(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, other: &Self) -> bool {
        (self.started, self.renewal) > (other.started, other.renewal)
    }
}

/// Each relay's load as it last published it: incarnation → (version, seats held).
pub type Loads = Arc<Mutex<HashMap<u64, (u64, u32)>>>;

/// A load broadcast's identity: a newer version from the same relay replaces an older one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadKey {
    relay: u64,
    version: u64,
}

impl Invalidates for LoadKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.relay == other.relay && self.version > other.version
    }
}

/// Loads carried in the membership's own messages (foca's custom broadcasts): 20 bytes, the
/// relay's incarnation, a version and the seats it holds.
struct LoadBroadcasts(Loads);

fn load_bytes(relay: u64, version: u64, seats: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&relay.to_be_bytes());
    b[8..16].copy_from_slice(&version.to_be_bytes());
    b[16..].copy_from_slice(&seats.to_be_bytes());
    b
}

impl BroadcastHandler<Node> for LoadBroadcasts {
    type Key = LoadKey;
    type Error = super::wire::Malformed;

    fn receive_item(&mut self, data: &[u8], _sender: Option<&Node>) -> Result<Option<LoadKey>, Self::Error> {
        let data: &[u8; 20] = data.try_into().map_err(|_| super::wire::Malformed)?;
        let word = |r: std::ops::Range<usize>| data[r].iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
        let (relay, version, seats) = (word(0..8), word(8..16), word(16..20) as u32);
        let mut loads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match loads.get(&relay) {
            Some((known, _)) if *known >= version => Ok(None),
            _ => {
                loads.insert(relay, (version, seats));
                Ok(Some(LoadKey { relay, version }))
            }
        }
    }
}

/// Seals and opens datagrams.
struct Seal(XChaCha20Poly1305);

impl Seal {
    fn seal(&self, data: &[u8]) -> Option<Vec<u8>> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self.0.encrypt(&nonce, data).ok()?;
        let mut out = Vec::with_capacity(24 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        if datagram.len() < 24 + 16 {
            return None;
        }
        let (nonce, sealed) = datagram.split_at(24);
        self.0.decrypt(nonce.into(), sealed).ok()
    }
}

/// What the membership task needs.
pub struct Gossip {
    /// This node.
    pub me: Node,
    /// The UDP socket, bound to the link listener's port.
    pub socket: UdpSocket,
    /// The sealing key.
    pub key: [u8; 32],
    /// The introducers, `host:port`.
    pub seeds: Vec<String>,
    /// Probe period (the interval between two probes of a member).
    pub probe_period: Duration,
    /// Seats this relay holds now (published as its load).
    pub seats: Arc<std::sync::atomic::AtomicUsize>,
    /// Every relay's published load.
    pub loads: Loads,
    /// The key that seals lease pings and answers.
    pub lease_key: [u8; 32],
    /// A relay's leases (`None` on an introducer, which answers pings instead).
    pub leases: Option<Arc<Mutex<Leases>>>,
}

/// Runs the membership until `stop`; keeps `roster` and the links up to date.
pub async fn run(
    g: Gossip,
    roster: Arc<Roster>,
    links: Option<Arc<Links>>,
    active: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let seal = Seal(XChaCha20Poly1305::new(&g.key.into()));
    let lease_seal = Seal(XChaCha20Poly1305::new(&g.lease_key.into()));
    let mut witness = Witness::new(g.me.incarnation, tokio::time::Instant::now());
    let mut pinging = tokio::time::interval(g.probe_period);
    pinging.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut introducers: Vec<SocketAddr> = Vec::new();
    let (timer_tx, mut timers) = mpsc::unbounded_channel::<Timer<Node>>();
    let mut config = Config::new_lan(std::num::NonZeroU32::new(16).unwrap_or(std::num::NonZeroU32::MIN));
    config.probe_period = g.probe_period;
    config.probe_rtt = (g.probe_period / 3).max(Duration::from_millis(5));
    config.suspect_to_down_after = g.probe_period * 3;
    config.periodic_gossip = Some(foca::PeriodicParams {
        frequency: (g.probe_period / 5).max(Duration::from_millis(10)),
        num_members: std::num::NonZeroUsize::MIN.saturating_add(2),
    });
    let rng: rand_foca::rngs::StdRng = rand_foca::make_rng();
    let mut foca =
        Foca::with_custom_broadcast(g.me.clone(), config, rng, PostcardCodec, LoadBroadcasts(Arc::clone(&g.loads)));
    let mut published: Option<(u64, u32)> = None;
    let mut rt = foca::AccumulatingRuntime::new();
    let mut buf = vec![0u8; 65_536];
    // Alone (at start, after a partition): announce to the introducers often. Not alone: still
    // now and then, so an introducer that restarted with an empty roster learns the mesh again
    // and can introduce newcomers to it.
    let alone_every = Duration::from_secs(2).min(g.probe_period * 2);
    let mut announce = tokio::time::interval(alone_every);
    let mut rounds = 0u32;
    let mut refused = Refused::default();
    let out = Outlet {
        socket: &g.socket,
        seal: &seal,
        timers: timer_tx,
        roster,
        links,
        leases: g.leases.clone(),
        active,
        metrics: &metrics,
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                let _ = foca.leave_cluster(&mut rt);
                out.flush(&mut rt).await;
                return;
            }
            got = g.socket.recv_from(&mut buf) => {
                let Ok((n, from)) = got else { continue };
                if let Some(data) = seal.open(&buf[..n]) {
                    let _ = foca.handle_data(&data, &mut rt);
                } else if let Some(msg) = lease_seal.open(&buf[..n]).and_then(|d| lease::Message::decode(&d)) {
                    match (msg, &g.leases) {
                        (lease::Message::Ping(ping), None) => {
                            let to = ping.addr;
                            if let Some(ack) = witness.pinged(ping, tokio::time::Instant::now()) {
                                if let Some(sealed) = lease_seal.seal(&lease::Message::Ack(ack).encode()) {
                                    let _ = g.socket.send_to(&sealed, to).await;
                                }
                            }
                        }
                        (lease::Message::Ack(ack), Some(leases)) => {
                            leases.lock().unwrap_or_else(|p| p.into_inner()).answered(ack);
                            out.reconcile(foca.iter_members().map(|m| m.id()));
                        }
                        _ => out.metrics.upstream.foreign_messages.inc(),
                    }
                } else {
                    out.metrics.upstream.gossip_refused.inc();
                    refused.saw(from, tokio::time::Instant::now());
                }
            }
            _ = pinging.tick(), if g.leases.is_some() => {
                if introducers.is_empty() {
                    introducers = resolve(&g.seeds, g.me.addr).await;
                }
                if let Some(leases) = &g.leases {
                    let now = tokio::time::Instant::now();
                    let ping = {
                        let mut leases = leases.lock().unwrap_or_else(|p| p.into_inner());
                        out.metrics.upstream.lease_witnesses.set(leases.witnesses(now) as i64);
                        leases.ping(introducers.len(), now)
                    };
                    if let Some(sealed) = lease_seal.seal(&lease::Message::Ping(ping).encode()) {
                        for to in &introducers {
                            let _ = g.socket.send_to(&sealed, to).await;
                        }
                    }
                }
                // A relay whose lease just ran out must not wait for the next announce round
                // to drop what only that lease listed.
                out.reconcile(foca.iter_members().map(|m| m.id()));
                out.roster.refresh();
            }
            Some(timer) = timers.recv() => {
                let _ = foca.handle_timer(timer, &mut rt);
            }
            _ = announce.tick() => {
                rounds = rounds.wrapping_add(1);
                // Publish this relay's load when it changed (a new version replaces the old).
                if g.me.relay {
                    let seats = u32::try_from(g.seats.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
                    if published.is_none_or(|(_, s)| s != seats) {
                        let version = published.map_or(1, |(v, _)| v + 1);
                        let _ = foca.add_broadcast(&load_bytes(g.me.incarnation, version, seats));
                        published = Some((version, seats));
                    }
                }
                out.metrics.upstream.mesh_seats.set(mesh_seats(&out.roster, &g.loads, g.me.incarnation) as i64);
                out.reconcile(foca.iter_members().map(|m| m.id()));
                let alone = foca.iter_members().next().is_none();
                if alone || rounds % 3 == 0 {
                    introducers = resolve(&g.seeds, g.me.addr).await;
                    for addr in &introducers {
                        let stranger = Node { addr: *addr, incarnation: 0, started: 0, relay: false, renewal: 0 };
                        let _ = foca.announce(stranger, &mut rt);
                    }
                }
            }
        }
        out.flush(&mut rt).await;
    }
}

/// Gossip that did not open with the cluster secret, logged at most once a minute: a relay
/// started with another secret is refused without a word on its side (it only sees silence),
/// so the side that refuses says so.
#[derive(Default)]
struct Refused {
    last_logged: Option<tokio::time::Instant>,
    since: u64,
}

impl Refused {
    const EVERY: Duration = Duration::from_secs(60);

    fn saw(&mut self, from: SocketAddr, now: tokio::time::Instant) {
        self.since += 1;
        if self.last_logged.is_some_and(|at| now.duration_since(at) < Refused::EVERY) {
            return;
        }
        tracing::warn!(
            %from,
            datagrams = self.since,
            "refused gossip not sealed with this cluster secret: a relay started with another \
             --cluster-secret, or not a relay (logged at most once a minute; \
             ghostwire_upstream_gossip_refused_total counts them)"
        );
        self.last_logged = Some(now);
        self.since = 0;
    }
}

/// Every address the introducers' names resolve to (this node's own left out).
async fn resolve(seeds: &[String], me: SocketAddr) -> Vec<SocketAddr> {
    let mut all = Vec::new();
    for seed in seeds {
        if let Ok(addrs) = tokio::net::lookup_host(seed.as_str()).await {
            all.extend(addrs.filter(|a| *a != me));
        }
    }
    all.sort_unstable();
    all.dedup();
    all
}

/// Seats held by the relays on the roster and this one, as last published.
fn mesh_seats(roster: &Roster, loads: &Loads, me: u64) -> u64 {
    let live = roster.ids();
    let loads = loads.lock().unwrap_or_else(|p| p.into_inner());
    live.iter().chain(std::iter::once(&me)).filter_map(|r| loads.get(r)).map(|(_, s)| u64::from(*s)).sum()
}

/// Where what foca produces goes.
struct Outlet<'a> {
    socket: &'a UdpSocket,
    seal: &'a Seal,
    timers: mpsc::UnboundedSender<Timer<Node>>,
    roster: Arc<Roster>,
    links: Option<Arc<Links>>,
    leases: Option<Arc<Mutex<Leases>>>,
    active: Arc<AtomicBool>,
    metrics: &'a Metrics,
}

impl Outlet<'_> {
    /// Makes the roster what it means: every relay the membership says is alive, every relay
    /// a live lease answer lists, and every relay whose link to us is up, less those known dead;
    /// and links again the ones whose quarantine is over.
    ///
    /// A link-level give-up (a TCP-only outage, a one-way cut, a stranger holding the handshake
    /// slots) leaves the membership unchanged, so no MemberUp would ever bring that relay back:
    /// without this walk, two live relays that gave each other up stayed apart for good, each
    /// owning the other's rooms. A live relay whose link is down stays on the roster, so this
    /// relay is not ready, and refuses new rooms (4007), until the link is back or the
    /// membership declares it down.
    fn reconcile<'n>(&self, members: impl Iterator<Item = &'n Node>) {
        let Some(links) = &self.links else { return };
        let listed = match &self.leases {
            Some(l) => l.lock().unwrap_or_else(|p| p.into_inner()).listed(tokio::time::Instant::now()),
            None => HashMap::new(),
        };
        let alive: HashMap<u64, SocketAddr> = members
            .filter(|n| n.relay)
            .map(|n| (n.incarnation, n.addr))
            .chain(listed)
            .filter(|(id, _)| !links.is_dead(*id))
            .collect();
        // Linked first, then on the roster: a seat whose room moves to a relay with the roster
        // change sends its record on that link. (The roster's lock is never held while the
        // links are called: they call back into it.)
        for (id, addr) in &alive {
            if !links.is_lost(*id) {
                links.ensure(*id, &addr.to_string());
            }
        }
        let mut next = alive;
        for (id, addr) in self.roster.snapshot() {
            if links.is_up(id) {
                next.entry(id).or_insert(addr);
            }
        }
        self.roster.set(next);
    }

    /// Sends what foca wants sent, schedules its timers, applies its notifications.
    async fn flush(&self, rt: &mut foca::AccumulatingRuntime<Node>) {
        let (socket, seal, timers, roster, links, active, metrics) =
            (self.socket, self.seal, &self.timers, &self.roster, self.links.as_ref(), &self.active, self.metrics);
        while let Some((to, data)) = rt.to_send() {
            if let Some(sealed) = seal.seal(&data) {
                let _ = socket.send_to(&sealed, to.addr).await;
            }
        }
        while let Some((after, timer)) = rt.to_schedule() {
            let timers = timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = timers.send(timer);
            });
        }
        while let Some(note) = rt.to_notify() {
            match note {
                // Linked first, then on the roster (see `reconcile`).
                foca::OwnedNotification::MemberUp(node) if node.relay => {
                    if let Some(links) = links {
                        links.ensure(node.incarnation, &node.addr.to_string());
                    }
                    roster.insert(node.incarnation, node.addr);
                }
                // Down in the membership. Whether it leaves the roster is `reconcile`'s to say (at
                // the next ping round): not while its link to us is up (a UDP-only cut: both
                // sides keep computing the same owners), nor while a lease answer lists it (its
                // own lease may still be running). Its links decide whether its rooms end (they
                // are given up only after `--mesh-peer-timeout`), so a short cut loses nothing
                // even when the membership is quicker to judge.
                foca::OwnedNotification::MemberDown(node) if node.relay => {
                    metrics.upstream.suspicions.inc();
                }
                foca::OwnedNotification::Active => active.store(true, Ordering::Release),
                foca::OwnedNotification::Idle | foca::OwnedNotification::Defunct => {
                    active.store(false, Ordering::Release)
                }
                foca::OwnedNotification::Rename(old, new) => {
                    if old.relay && old.incarnation != new.incarnation {
                        roster.remove(old.incarnation);
                    }
                    if new.relay {
                        roster.insert(new.incarnation, new.addr);
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_datagram_sealed_under_another_key_does_not_open() {
        let a = Seal(XChaCha20Poly1305::new(&[1u8; 32].into()));
        let b = Seal(XChaCha20Poly1305::new(&[2u8; 32].into()));
        let sealed = a.seal(b"probe").unwrap();
        assert_eq!(a.open(&sealed).as_deref(), Some(&b"probe"[..]));
        assert!(b.open(&sealed).is_none());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(a.open(&flipped).is_none());
        assert!(a.open(&sealed[..20]).is_none());
    }
}
