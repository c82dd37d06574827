//! Witness leases: a relay admits new rooms only while a majority of the introducers vouch for
//! it, so two sides of a partition never both do.
//!
//! **The rule.** Every probe period a relay sends each introducer a `Ping` (its incarnation,
//! where it gossips, a sequence number, the lease it asks for). An introducer answers with an
//! `Ack` that lists every relay it has heard a ping from within that relay's lease (plus a
//! tenth, plus [`SLACK`]). The relay holds a lease while a majority of the introducers it knows
//! of have answered a ping it sent less than a lease ago; its roster then includes every relay
//! those answers list. A relay that holds no lease, or is not linked to every relay on its
//! roster, admits no new room (4007), as a joining relay or as an owner.
//!
//! **Why it holds.** Two relays that both hold a lease at one moment have a common introducer
//! (two majorities of one set meet). Of its two answers the later one was sent while the earlier
//! relay's lease was still running at the introducer, so it lists that relay: one of the two
//! knows the other, so it is not ready until it is linked to it, and a link puts each on the
//! other's roster. Two ready relays therefore see each other, and rendezvous hashing gives one
//! room one owner among any two relays that see each other. The side of a partition without a
//! majority of the introducers stops admitting within one lease; the other side keeps the cut
//! relays on its roster (so admits nothing) until the introducers stop listing them, a tenth of
//! a lease later than their leases could have run.
//!
//! **Restarts.** An introducer that starts answers nobody for the longest lease plus a tenth:
//! its list would miss relays that pinged its previous run, and by then every relay with a live
//! lease has pinged it again. An answer is tied to the ping it answers (its sequence number), so
//! a replayed answer gives no lease that its ping's age does not already allow. Everything is
//! sealed with a key derived from the cluster secret.
//!
//! **Cost.** With no majority of the introducers reachable, no relay admits new rooms (rooms
//! already paired go on). Run three introducers: one may be down, or restarting, at a time.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// Added to every lease an introducer keeps listing a relay for, over the tenth.
pub const SLACK: Duration = Duration::from_millis(100);
/// Probe periods per lease: a lease outlives three lost pings.
pub const PERIODS_PER_LEASE: u32 = 4;
/// Pings whose answers are still awaited, at most (older ones are forgotten).
const PINGS_KEPT: usize = 64;
/// Relays an answer lists at most (a datagram stays well under 64 KiB).
pub const MAX_LISTED: usize = 1024;

/// How long an introducer keeps listing a relay that asked for `lease`, and how long a new
/// introducer answers nobody.
pub fn listed_for(lease: Duration) -> Duration {
    lease + lease / 10 + SLACK
}

/// A relay's ping to an introducer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ping {
    /// The relay's incarnation.
    pub relay: u64,
    /// Where the relay gossips and links (the answer goes there).
    pub addr: SocketAddr,
    /// Numbers the relay's pings.
    pub seq: u64,
    /// The lease the relay holds from an answer, counted from when it sent the ping.
    pub lease: Duration,
}

/// An introducer's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The introducer's incarnation.
    pub introducer: u64,
    /// The relay that pinged.
    pub relay: u64,
    /// The ping answered.
    pub seq: u64,
    /// The relays whose leases may be running, with where they link.
    pub listed: Vec<(u64, SocketAddr)>,
}

/// A lease datagram's plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Ping(Ping),
    Ack(Ack),
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        match self {
            Message::Ping(p) => {
                b.push(b'P');
                b.extend_from_slice(&p.relay.to_be_bytes());
                b.extend_from_slice(&p.seq.to_be_bytes());
                let ms = u32::try_from(p.lease.as_millis()).unwrap_or(u32::MAX);
                b.extend_from_slice(&ms.to_be_bytes());
                put_addr(&mut b, p.addr);
            }
            Message::Ack(a) => {
                b.push(b'A');
                b.extend_from_slice(&a.introducer.to_be_bytes());
                b.extend_from_slice(&a.relay.to_be_bytes());
                b.extend_from_slice(&a.seq.to_be_bytes());
                let n = a.listed.len().min(MAX_LISTED);
                b.extend_from_slice(&(n as u16).to_be_bytes());
                for (id, addr) in a.listed.iter().take(n) {
                    b.extend_from_slice(&id.to_be_bytes());
                    put_addr(&mut b, *addr);
                }
            }
        }
        b
    }

    pub fn decode(mut b: &[u8]) -> Option<Message> {
        let b = &mut b;
        let msg = match take::<1>(b)?[0] {
            b'P' => {
                let relay = u64::from_be_bytes(take(b)?);
                let seq = u64::from_be_bytes(take(b)?);
                let lease = Duration::from_millis(u64::from(u32::from_be_bytes(take(b)?)));
                Message::Ping(Ping { relay, addr: get_addr(b)?, seq, lease })
            }
            b'A' => {
                let introducer = u64::from_be_bytes(take(b)?);
                let relay = u64::from_be_bytes(take(b)?);
                let seq = u64::from_be_bytes(take(b)?);
                let n = usize::from(u16::from_be_bytes(take(b)?));
                if n > MAX_LISTED {
                    return None;
                }
                let mut listed = Vec::with_capacity(n);
                for _ in 0..n {
                    listed.push((u64::from_be_bytes(take(b)?), get_addr(b)?));
                }
                Message::Ack(Ack { introducer, relay, seq, listed })
            }
            _ => return None,
        };
        b.is_empty().then_some(msg)
    }
}

fn take<const N: usize>(b: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = b.split_first_chunk::<N>()?;
    *b = rest;
    Some(*head)
}

fn put_addr(b: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            b.push(4);
            b.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            b.push(6);
            b.extend_from_slice(&a.ip().octets());
        }
    }
    b.extend_from_slice(&addr.port().to_be_bytes());
}

fn get_addr(b: &mut &[u8]) -> Option<SocketAddr> {
    let ip: std::net::IpAddr = match take::<1>(b)?[0] {
        4 => std::net::Ipv4Addr::from(take::<4>(b)?).into(),
        6 => std::net::Ipv6Addr::from(take::<16>(b)?).into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes(take(b)?)))
}

/// One introducer's answer that gives a lease.
#[derive(Debug)]
struct Held {
    until: Instant,
    listed: Vec<(u64, SocketAddr)>,
}

/// A relay's side: the pings it sent, the leases it holds.
#[derive(Debug)]
pub struct Leases {
    me: u64,
    addr: SocketAddr,
    lease: Duration,
    next_seq: u64,
    sent: BTreeMap<u64, Instant>,
    held: HashMap<u64, Held>,
    /// The most introducers this relay has known of at once: the majority is of these.
    introducers: usize,
}

impl Leases {
    pub fn new(me: u64, addr: SocketAddr, lease: Duration) -> Leases {
        Leases { me, addr, lease, next_seq: 1, sent: BTreeMap::new(), held: HashMap::new(), introducers: 1 }
    }

    /// The ping to send to every introducer now; `introducers` is how many there are now.
    pub fn ping(&mut self, introducers: usize, now: Instant) -> Ping {
        self.introducers = self.introducers.max(introducers);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent.insert(seq, now);
        while self.sent.len() > PINGS_KEPT {
            self.sent.pop_first();
        }
        Ping { relay: self.me, addr: self.addr, seq, lease: self.lease }
    }

    /// An introducer answered: the lease runs from when the ping went out.
    pub fn answered(&mut self, ack: Ack) {
        if ack.relay != self.me {
            return;
        }
        let Some(sent) = self.sent.get(&ack.seq) else { return };
        let until = *sent + self.lease;
        match self.held.get(&ack.introducer) {
            Some(h) if h.until >= until => {}
            _ => {
                self.held.insert(ack.introducer, Held { until, listed: ack.listed });
            }
        }
    }

    /// The introducers whose answers still give a lease, and how many are needed.
    fn count(&self, now: Instant) -> (usize, usize) {
        let live = self.held.values().filter(|h| h.until > now).count();
        (live, self.introducers / 2 + 1)
    }

    /// The introducers whose answers give this relay a lease now.
    pub fn witnesses(&self, now: Instant) -> usize {
        self.count(now).0
    }

    /// `Ok` while a majority of the introducers vouch for this relay.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let (live, needed) = self.count(now);
        if live >= needed {
            Ok(())
        } else {
            Err(format!("holds no lease: {live} of the {needed} introducers needed answered within {:?}", self.lease))
        }
    }

    /// Every relay a live answer lists (this one excluded).
    pub fn listed(&mut self, now: Instant) -> HashMap<u64, SocketAddr> {
        self.held.retain(|_, h| h.until > now);
        let me = self.me;
        self.held.values().flat_map(|h| h.listed.iter().copied()).filter(|(id, _)| *id != me).collect()
    }
}

/// An introducer's side: who pinged, and for how long to list them.
#[derive(Debug)]
pub struct Witness {
    me: u64,
    started: Instant,
    relays: HashMap<u64, (SocketAddr, Instant)>,
}

impl Witness {
    pub fn new(me: u64, now: Instant) -> Witness {
        Witness { me, started: now, relays: HashMap::new() }
    }

    /// A relay pinged: the answer, unless this introducer is too new to know every relay whose
    /// lease may be running (it starts answering after the lease asked for, plus a tenth).
    pub fn pinged(&mut self, ping: Ping, now: Instant) -> Option<Ack> {
        let lease = ping.lease.min(Duration::from_secs(3600));
        self.relays.retain(|_, (_, until)| *until > now);
        if self.relays.len() >= MAX_LISTED && !self.relays.contains_key(&ping.relay) {
            return None;
        }
        self.relays.insert(ping.relay, (ping.addr, now + listed_for(lease)));
        if now.duration_since(self.started) < listed_for(lease) {
            return None;
        }
        let listed = self.relays.iter().map(|(id, (addr, _))| (*id, *addr)).collect();
        Some(Ack { introducer: self.me, relay: ping.relay, seq: ping.seq, listed })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const L: Duration = Duration::from_secs(4);

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    #[test]
    fn messages_round_trip_and_trailing_bytes_are_refused() {
        let ping = Message::Ping(Ping { relay: 7, addr: addr(9), seq: 3, lease: L });
        let v6 = SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), 5);
        let ack = Message::Ack(Ack { introducer: 1, relay: 7, seq: 3, listed: vec![(7, addr(9)), (8, v6)] });
        for m in [ping, ack] {
            let mut b = m.encode();
            assert_eq!(Message::decode(&b), Some(m));
            b.push(0);
            assert_eq!(Message::decode(&b), None);
            b.truncate(b.len() - 3);
            assert_eq!(Message::decode(&b), None);
        }
        assert_eq!(Message::decode(b""), None);
        assert_eq!(Message::decode(b"X"), None);
    }

    #[test]
    fn a_new_introducer_answers_only_after_a_lease() {
        let t0 = Instant::now();
        let mut w = Witness::new(1, t0);
        let ping = |seq| Ping { relay: 7, addr: addr(9), seq, lease: L };
        assert!(w.pinged(ping(1), t0 + L).is_none(), "within the lease and its tenth: silent");
        let ack = w.pinged(ping(2), t0 + listed_for(L)).unwrap();
        assert_eq!((ack.relay, ack.seq, ack.listed), (7, 2, vec![(7, addr(9))]));
    }

    #[test]
    fn a_lease_needs_a_majority_and_runs_from_the_ping() {
        let t0 = Instant::now();
        let mut r = Leases::new(7, addr(9), L);
        let p = r.ping(3, t0);
        let ack = |introducer| Ack { introducer, relay: 7, seq: p.seq, listed: vec![(8, addr(8))] };
        r.answered(ack(1));
        assert!(r.check(t0).is_err(), "one of three is no majority");
        r.answered(ack(2));
        assert!(r.check(t0).is_ok());
        assert_eq!(r.listed(t0).into_keys().collect::<Vec<_>>(), vec![8]);
        // An answer to no ping of ours, or to another relay, gives nothing.
        r.answered(Ack { introducer: 3, relay: 7, seq: 99, listed: vec![] });
        r.answered(Ack { introducer: 3, relay: 6, seq: p.seq, listed: vec![] });
        assert_eq!(r.count(t0).0, 2);
        assert!(r.check(t0 + L).is_err(), "the lease ran from the ping, not from the answers");
        assert!(r.listed(t0 + L).is_empty());
        // Fewer introducers later (one is down) does not lower the majority.
        let p2 = r.ping(1, t0 + L);
        r.answered(Ack { introducer: 1, relay: 7, seq: p2.seq, listed: vec![] });
        assert!(r.check(t0 + L).is_err());
    }

    proptest! {
        /// Whatever the timing, two relays holding leases at one moment from three introducers
        /// have one answer that lists the other: the fact the mesh's safety rests on.
        #[test]
        fn two_relays_that_hold_leases_at_once_see_each_other(
            pings in prop::collection::vec((0u8..2, 0u8..3, 0u64..20_000), 1..60),
            at in 0u64..24_000,
        ) {
            let t0 = Instant::now();
            let ms = |n: u64| t0 + Duration::from_millis(n);
            // Introducers started long ago: answering from the first ping.
            let mut ws: Vec<Witness> = (0..3).map(|i| Witness::new(100 + i, t0 - Duration::from_secs(60))).collect();
            let mut rs = [Leases::new(1, addr(1), L), Leases::new(2, addr(2), L)];
            let mut pings = pings;
            pings.sort_by_key(|p| p.2);
            for (r, w, t) in pings {
                // Only what has happened by `at`: the ping, its handling, its answer.
                if t + 40 > at {
                    continue;
                }
                let ping = rs[usize::from(r)].ping(3, ms(t));
                // Delivered and answered a little later; the answer arrives later still.
                if let Some(ack) = ws[usize::from(w)].pinged(ping, ms(t + 40)) {
                    rs[usize::from(r)].answered(ack);
                }
            }
            let now = ms(at);
            if rs[0].check(now).is_ok() && rs[1].check(now).is_ok() {
                let a_knows_b = rs[0].listed(now).contains_key(&2);
                let b_knows_a = rs[1].listed(now).contains_key(&1);
                prop_assert!(a_knows_b || b_knows_a);
            }
        }
    }
}
