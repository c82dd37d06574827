//! The room log: the state every relay computes from the same ordered records of one partition.
//!
//! On Kafka the log is the sequencer. Every record about a room (a seat joining, its frames, its
//! departure) is keyed by the room's keyed id, so all of them land in one partition, in one
//! order that every relay reads alike. Each relay feeds the records of every partition, in
//! offset order, to one [`Partition`] apiece and acts on the outcomes that concern its own
//! seats. Because the outcome of a record depends only on the records before it, every relay
//! reaches the same verdicts without talking to the others:
//!
//! * **Arbitration.** A join is admitted if fewer than two live seats hold the room *at its
//!   place in the log*. Two relays producing joins at the same moment get an order from the
//!   broker, and both read the same one: at most two seats, however the joins race. A relay
//!   answers its joiner only once it has read its own JOIN back.
//! * **Time is the log's.** Records carry the broker's append time (topics use
//!   `message.timestamp.type=LogAppendTime`); a partition's clock is the latest timestamp
//!   applied, never a relay's own clock. Every relay writes [`Record::Alive`] to every partition
//!   each heartbeat, which also moves the clock on. A relay whose last record in a partition is
//!   older than the TTL by that clock has lapsed: its seats there are lost, and every relay
//!   agrees on the record at which that happened.
//! * **A restarted relay is a new relay** (a fresh random [`RelayId`]), so nothing of its former
//!   life can reach a new room; its old seats lapse like any dead relay's.
//! * **Burns.** [`Record::Burn`] refuses every join of its room ([`Outcome::Burnt`]) for the
//!   time it names, from its place in the log on, by log time: a join after it in the log is
//!   refused by every relay alike, and the burner's frames after it come later in the log.
//! * **Frames and departures** are checked against the room's seats: a frame is delivered to
//!   the partner only from a seat that holds the room, and a departure comes after every frame
//!   its seat sent, since both are in the same partition.
//!
//! Nothing here does I/O or reads a clock: it is the part of the Kafka upstream that must be
//! right, kept where a test can drive it record by record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

/// A relay process: random at each start, so a restarted relay is a new one.
pub type RelayId = u64;

/// A seat: one client connection on one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seat {
    /// The relay holding the connection.
    pub relay: RelayId,
    /// The connection's number on that relay.
    pub n: u64,
}

/// One record of the log, as written by a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<R> {
    /// The relay is alive (each heartbeat, to every partition).
    Alive {
        /// Who.
        relay: RelayId,
    },
    /// `seat` asks to join `room`.
    Join {
        /// The room.
        room: R,
        /// The joiner.
        seat: Seat,
    },
    /// A frame from `from` for its partner in `room` (the bytes travel beside the record).
    Frame {
        /// The room.
        room: R,
        /// The sender.
        from: Seat,
    },
    /// `seat` leaves `room`, after every frame it sent.
    Leave {
        /// The room.
        room: R,
        /// The leaver.
        seat: Seat,
    },
    /// Relay `relay` burns `room` for `ttl_ms` of log time (a client there said BURN).
    Burn {
        /// The room.
        room: R,
        /// The writer.
        relay: RelayId,
        /// How long joins are refused.
        ttl_ms: i64,
    },
}

/// What a record meant, for the relays holding the seats it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<R> {
    /// `seat` holds `room` alone: it waits.
    Waiting {
        /// The room.
        room: R,
        /// The waiter.
        seat: Seat,
    },
    /// `room` has its two seats: both are told PEER_FOUND.
    Paired {
        /// The room.
        room: R,
        /// The seat that joined first.
        first: Seat,
        /// The seat whose join paired the room.
        second: Seat,
    },
    /// `seat` was refused (4012): `room` is burnt.
    Burnt {
        /// The room.
        room: R,
        /// The refused joiner.
        seat: Seat,
    },
    /// `seat` was refused (4002): two live seats hold `room`.
    Full {
        /// The room.
        room: R,
        /// The refused joiner.
        seat: Seat,
    },
    /// Deliver the frame to `to`.
    Deliver {
        /// The room.
        room: R,
        /// The partner of the sender.
        to: Seat,
    },
    /// A frame from a seat that does not hold the room with a partner (stale, confused or
    /// forged, or the partner has gone): dropped.
    Dropped {
        /// The room.
        room: R,
        /// The seat the record named.
        from: Seat,
    },
    /// `seat` left `room`; `partner`, if any, is told PEER_LEFT.
    Left {
        /// The room.
        room: R,
        /// The leaver.
        seat: Seat,
        /// Its partner.
        partner: Option<Seat>,
    },
    /// `seat`'s relay lapsed (silent past the TTL in log time): the seat is gone, and
    /// `partner`, if any, is told the peer was lost (4011).
    Lost {
        /// The room.
        room: R,
        /// The lapsed seat.
        seat: Seat,
        /// Its partner.
        partner: Option<Seat>,
    },
}

/// The rooms of one partition, as the records so far have left them.
pub struct Partition<R> {
    ttl_ms: i64,
    /// The latest timestamp applied: the partition's clock.
    now_ms: i64,
    /// Each relay's latest record here.
    last_seen: BTreeMap<RelayId, i64>,
    /// The seats of each room, in join order (at most two).
    rooms: HashMap<R, Vec<Seat>>,
    /// The rooms each relay holds seats in, for lapsing them.
    held: BTreeMap<RelayId, BTreeSet<(u64, R)>>,
    /// The highest seat number each relay has asked to join with. A relay numbers its seats in
    /// the order it writes their joins, so a join at or below it is one read again (a producer
    /// retry): it changes nothing.
    joined: BTreeMap<RelayId, u64>,
    /// Burnt rooms, and the log time each burn ends.
    burnt: HashMap<R, i64>,
}

impl<R: Copy + Eq + Hash + Ord> Partition<R> {
    /// An empty partition whose relays lapse after `ttl_ms` of log time without a record.
    pub fn new(ttl_ms: i64) -> Partition<R> {
        Partition {
            ttl_ms,
            now_ms: i64::MIN,
            last_seen: BTreeMap::new(),
            rooms: HashMap::new(),
            held: BTreeMap::new(),
            joined: BTreeMap::new(),
            burnt: HashMap::new(),
        }
    }

    /// Applies the next record, appended at `timestamp_ms` (log time), and says what it meant.
    pub fn apply(&mut self, timestamp_ms: i64, record: Record<R>) -> Vec<Outcome<R>> {
        self.now_ms = self.now_ms.max(timestamp_ms);
        let writer = match &record {
            Record::Alive { relay } | Record::Burn { relay, .. } => *relay,
            Record::Join { seat, .. } | Record::Leave { seat, .. } => seat.relay,
            Record::Frame { from, .. } => from.relay,
        };
        self.last_seen.insert(writer, self.now_ms);
        let mut out = self.lapse();
        match record {
            Record::Alive { .. } => {}
            Record::Join { room, seat } => out.extend(self.join(room, seat)),
            Record::Frame { room, from } => out.push(self.frame(room, from)),
            Record::Leave { room, seat } => out.extend(self.leave(room, seat)),
            Record::Burn { room, ttl_ms, .. } => self.burn(room, ttl_ms),
        }
        out
    }

    /// The seats holding `room` now.
    pub fn seats(&self, room: &R) -> &[Seat] {
        self.rooms.get(room).map_or(&[], Vec::as_slice)
    }

    /// Rooms with at least one seat.
    pub fn open_rooms(&self) -> usize {
        self.rooms.len()
    }

    /// The state as bytes, for a snapshot record: the clock, each relay's last record and
    /// highest seat number, and every room's seats in join order. [`restore`](Self::restore)
    /// gives back a partition that applies every later record exactly as this one does.
    pub fn snapshot(&self) -> Vec<u8>
    where
        R: AsRef<[u8]>,
    {
        let mut out = Vec::with_capacity(32 + self.rooms.len() * 48);
        out.extend_from_slice(&self.now_ms.to_be_bytes());
        put_len(&mut out, self.last_seen.len());
        for (relay, seen) in &self.last_seen {
            out.extend_from_slice(&relay.to_be_bytes());
            out.extend_from_slice(&seen.to_be_bytes());
        }
        put_len(&mut out, self.joined.len());
        for (relay, n) in &self.joined {
            out.extend_from_slice(&relay.to_be_bytes());
            out.extend_from_slice(&n.to_be_bytes());
        }
        // Rooms in key order, so two relays with the same state write the same bytes.
        let mut rooms: Vec<(&R, &Vec<Seat>)> = self.rooms.iter().collect();
        rooms.sort_by(|a, b| a.0.cmp(b.0));
        put_len(&mut out, rooms.len());
        for (room, seats) in rooms {
            out.extend_from_slice(room.as_ref());
            out.push(u8::try_from(seats.len()).unwrap_or(2));
            for seat in seats {
                out.extend_from_slice(&seat.relay.to_be_bytes());
                out.extend_from_slice(&seat.n.to_be_bytes());
            }
        }
        // Burns that have not ended, last (a snapshot of an older relay simply has none).
        let mut burnt: Vec<(&R, &i64)> = self.burnt.iter().filter(|(_, until)| **until > self.now_ms).collect();
        burnt.sort_by(|a, b| a.0.cmp(b.0));
        if !burnt.is_empty() {
            put_len(&mut out, burnt.len());
            for (room, until) in burnt {
                out.extend_from_slice(room.as_ref());
                out.extend_from_slice(&until.to_be_bytes());
            }
        }
        out
    }

    /// The partition a [`snapshot`](Self::snapshot) describes; `None` for bytes that are not one.
    pub fn restore(ttl_ms: i64, bytes: &[u8]) -> Option<Partition<R>>
    where
        R: for<'a> TryFrom<&'a [u8]> + AsRef<[u8]> + Default,
    {
        let key_len = R::default().as_ref().len();
        let mut r = Reader(bytes);
        let mut p = Partition::new(ttl_ms);
        p.now_ms = r.i64()?;
        for _ in 0..r.len()? {
            let relay = r.u64()?;
            p.last_seen.insert(relay, r.i64()?);
        }
        for _ in 0..r.len()? {
            let relay = r.u64()?;
            p.joined.insert(relay, r.u64()?);
        }
        for _ in 0..r.len()? {
            let room = R::try_from(r.take(key_len)?).ok()?;
            let count = *r.take(1)?.first()?;
            if !(1..=2).contains(&count) {
                return None;
            }
            let mut seats = Vec::new();
            for _ in 0..count {
                let seat = Seat { relay: r.u64()?, n: r.u64()? };
                p.held.entry(seat.relay).or_default().insert((seat.n, room));
                seats.push(seat);
            }
            p.rooms.insert(room, seats);
        }
        if !r.0.is_empty() {
            for _ in 0..r.len()? {
                let room = R::try_from(r.take(key_len)?).ok()?;
                p.burnt.insert(room, r.i64()?);
            }
        }
        r.0.is_empty().then_some(p)
    }

    /// Removes the seats of every relay silent for longer than the TTL.
    fn lapse(&mut self) -> Vec<Outcome<R>> {
        let deadline = self.now_ms.saturating_sub(self.ttl_ms);
        let lapsed: Vec<RelayId> =
            self.last_seen.iter().filter(|(_, seen)| **seen < deadline).map(|(relay, _)| *relay).collect();
        let mut out = Vec::new();
        for relay in lapsed {
            self.last_seen.remove(&relay);
            self.joined.remove(&relay);
            for (n, room) in self.held.remove(&relay).unwrap_or_default() {
                let seat = Seat { relay, n };
                // A partner on the same relay may have ended with the pair already.
                if self.seats(&room).contains(&seat) {
                    let partner = self.end(room, seat);
                    out.push(Outcome::Lost { room, seat, partner });
                }
            }
        }
        out
    }

    fn join(&mut self, room: R, seat: Seat) -> Option<Outcome<R>> {
        let highest = self.joined.entry(seat.relay).or_insert(0);
        let again = seat.n <= *highest && *highest != 0;
        *highest = (*highest).max(seat.n);
        if again {
            // The same join read twice (a producer retry): the verdict it had stands, told
            // again to a seat that holds the room, and nothing to one that was refused or left.
            let seats = self.seats(&room);
            return seats.contains(&seat).then_some(match seats {
                [first, second] => Outcome::Paired { room, first: *first, second: *second },
                _ => Outcome::Waiting { room, seat },
            });
        }
        if let Some(until) = self.burnt.get(&room) {
            if *until > self.now_ms {
                return Some(Outcome::Burnt { room, seat });
            }
            self.burnt.remove(&room);
        }
        let seats = self.rooms.entry(room).or_default();
        if seats.len() >= 2 {
            return Some(Outcome::Full { room, seat });
        }
        seats.push(seat);
        self.held.entry(seat.relay).or_default().insert((seat.n, room));
        Some(match seats.as_slice() {
            [first, second] => Outcome::Paired { room, first: *first, second: *second },
            _ => Outcome::Waiting { room, seat },
        })
    }

    /// Refuses joins of `room` until `ttl_ms` from now (log time). Burns that ended are
    /// forgotten on the way, so the table holds only burns of the last TTL.
    fn burn(&mut self, room: R, ttl_ms: i64) {
        let now = self.now_ms;
        if self.burnt.len() >= 1024 && self.burnt.len().is_power_of_two() {
            self.burnt.retain(|_, until| *until > now);
        }
        let until = now.saturating_add(ttl_ms.max(0));
        let entry = self.burnt.entry(room).or_insert(until);
        *entry = (*entry).max(until);
    }

    fn frame(&self, room: R, from: Seat) -> Outcome<R> {
        match self.seats(&room) {
            [a, b] if *a == from => Outcome::Deliver { room, to: *b },
            [a, b] if *b == from => Outcome::Deliver { room, to: *a },
            _ => Outcome::Dropped { room, from },
        }
    }

    fn leave(&mut self, room: R, seat: Seat) -> Option<Outcome<R>> {
        if !self.seats(&room).contains(&seat) {
            return None;
        }
        let partner = self.end(room, seat);
        Some(Outcome::Left { room, seat, partner })
    }

    /// Ends `seat`'s place in `room`, and its partner's: a pair ends together (the partner's
    /// connection is told and closes), so the room is free at once, and the partner's own later
    /// departure changes nothing. Returns the partner.
    fn end(&mut self, room: R, seat: Seat) -> Option<Seat> {
        let seats = self.rooms.remove(&room).unwrap_or_default();
        for s in &seats {
            if let Some(rooms) = self.held.get_mut(&s.relay) {
                rooms.remove(&(s.n, room));
            }
        }
        seats.into_iter().find(|s| *s != seat)
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

/// Reads a snapshot front to back; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)?.try_into().ok().map(i64::from_be_bytes)
    }
    fn len(&mut self) -> Option<usize> {
        let n = self.take(4)?.try_into().ok().map(u32::from_be_bytes)? as usize;
        // Each entry is at least 8 bytes: a count beyond what is left is not a snapshot.
        (n <= self.0.len() / 8).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TTL: i64 = 5_000;

    fn seat(relay: RelayId, n: u64) -> Seat {
        Seat { relay, n }
    }

    #[test]
    fn the_first_two_joins_in_log_order_pair_and_the_third_is_refused() {
        let mut p = Partition::new(TTL);
        let (a, b, c) = (seat(1, 1), seat(2, 1), seat(3, 1));
        assert_eq!(p.apply(0, Record::Join { room: 7, seat: a }), vec![Outcome::Waiting { room: 7, seat: a }]);
        assert_eq!(
            p.apply(1, Record::Join { room: 7, seat: b }),
            vec![Outcome::Paired { room: 7, first: a, second: b }]
        );
        assert_eq!(p.apply(2, Record::Join { room: 7, seat: c }), vec![Outcome::Full { room: 7, seat: c }]);
        assert_eq!(p.apply(3, Record::Frame { room: 7, from: b }), vec![Outcome::Deliver { room: 7, to: a }]);
        // A refused seat's frames go nowhere.
        assert_eq!(p.apply(4, Record::Frame { room: 7, from: c }), vec![Outcome::Dropped { room: 7, from: c }]);
        assert_eq!(
            p.apply(5, Record::Leave { room: 7, seat: a }),
            vec![Outcome::Left { room: 7, seat: a, partner: Some(b) }]
        );
        // The pair ended together: the room is free at once, the partner's frames go nowhere
        // and its own departure, when its connection has closed, changes nothing.
        assert_eq!(p.open_rooms(), 0);
        assert_eq!(p.apply(6, Record::Frame { room: 7, from: b }), vec![Outcome::Dropped { room: 7, from: b }]);
        assert_eq!(p.apply(7, Record::Leave { room: 7, seat: b }), vec![]);
        // The room is free again at once, for a new seat.
        let d = seat(3, 2);
        assert_eq!(p.apply(8, Record::Join { room: 7, seat: d }), vec![Outcome::Waiting { room: 7, seat: d }]);
    }

    #[test]
    fn a_silent_relay_lapses_by_log_time_and_its_partners_are_told() {
        let mut p = Partition::new(TTL);
        let (a, b) = (seat(1, 1), seat(2, 1));
        p.apply(0, Record::Join { room: 9, seat: a });
        p.apply(10, Record::Join { room: 9, seat: b });
        // Relay 2 keeps writing; relay 1 falls silent after t=0. Up to the TTL nothing lapses.
        assert_eq!(p.apply(TTL, Record::Alive { relay: 2 }), vec![]);
        let lost = p.apply(TTL + 1, Record::Alive { relay: 2 });
        assert_eq!(lost, vec![Outcome::Lost { room: 9, seat: a, partner: Some(b) }]);
        assert_eq!(p.seats(&9), &[] as &[Seat], "the partner ends with the pair");
        // A stale frame or departure of the lapsed seat changes nothing.
        assert_eq!(p.apply(TTL + 2, Record::Leave { room: 9, seat: a }), vec![]);
        // Its relay coming back (a record it wrote late) does not bring the seat back.
        assert_eq!(p.apply(TTL + 3, Record::Frame { room: 9, from: a }), vec![Outcome::Dropped { room: 9, from: a }]);
    }

    #[test]
    fn time_does_not_run_backwards_and_a_join_read_twice_keeps_its_verdict() {
        let mut p = Partition::new(TTL);
        let (a, b) = (seat(1, 1), seat(2, 1));
        p.apply(100, Record::Join { room: 1, seat: a });
        // An older timestamp (a broker restarted with a slower clock) does not move the clock back.
        assert_eq!(
            p.apply(50, Record::Join { room: 1, seat: b }),
            vec![Outcome::Paired { room: 1, first: a, second: b }]
        );
        assert_eq!(
            p.apply(60, Record::Join { room: 1, seat: b }),
            vec![Outcome::Paired { room: 1, first: a, second: b }]
        );
        assert_eq!(p.seats(&1), &[a, b]);
    }

    #[test]
    fn a_refused_join_read_again_after_a_departure_does_not_get_in() {
        let mut p = Partition::new(TTL);
        let (a, b, c) = (seat(1, 1), seat(2, 1), seat(3, 1));
        p.apply(0, Record::Join { room: 4, seat: a });
        p.apply(1, Record::Join { room: 4, seat: b });
        assert_eq!(p.apply(2, Record::Join { room: 4, seat: c }), vec![Outcome::Full { room: 4, seat: c }]);
        p.apply(3, Record::Leave { room: 4, seat: b });
        // The producer's retry of c's join lands after the pair ended: c's relay already told it
        // "full".
        assert_eq!(p.apply(4, Record::Join { room: 4, seat: c }), vec![]);
        assert_eq!(p.seats(&4), &[] as &[Seat]);
        // A new seat of the same relay is a new join.
        let d = seat(3, 2);
        assert_eq!(p.apply(5, Record::Join { room: 4, seat: d }), vec![Outcome::Waiting { room: 4, seat: d }]);
    }

    #[test]
    fn a_burn_refuses_later_joins_until_it_ends_in_log_time() {
        let mut p = Partition::new(TTL);
        let (a, b, c, d) = (seat(1, 1), seat(2, 1), seat(3, 1), seat(3, 2));
        p.apply(0, Record::Join { room: 5, seat: a });
        p.apply(1, Record::Join { room: 5, seat: b });
        assert_eq!(p.apply(2, Record::Burn { room: 5, relay: 1, ttl_ms: 1_000 }), vec![]);
        // The pair goes on: its frames are delivered.
        assert_eq!(p.apply(3, Record::Frame { room: 5, from: a }), vec![Outcome::Deliver { room: 5, to: b }]);
        p.apply(4, Record::Leave { room: 5, seat: a });
        assert_eq!(p.apply(1_001, Record::Join { room: 5, seat: c }), vec![Outcome::Burnt { room: 5, seat: c }]);
        // A restored snapshot keeps the burn.
        let mut q = Partition::<[u8; 1]>::new(TTL);
        q.apply(10, Record::Burn { room: [5], relay: 1, ttl_ms: 1_000 });
        let mut q = Partition::<[u8; 1]>::restore(TTL, &q.snapshot()).expect("a snapshot restores");
        assert_eq!(q.apply(500, Record::Join { room: [5], seat: c }), vec![Outcome::Burnt { room: [5], seat: c }]);
        // Once log time passes the end, the room is free.
        assert_eq!(p.apply(1_002, Record::Join { room: 5, seat: d }), vec![Outcome::Waiting { room: 5, seat: d }]);
    }

    /// Records as the broker might order them: joins, frames, leaves and heartbeats of a few
    /// relays and seats over a few rooms, with timestamps that mostly move forward.
    fn records() -> impl Strategy<Value = Vec<(i64, Record<u8>)>> {
        let seat = (1u64..4, 1u64..4).prop_map(|(relay, n)| Seat { relay, n });
        let record = prop_oneof![
            (1u64..4).prop_map(|relay| Record::Alive { relay }),
            (0u8..3, seat.clone()).prop_map(|(room, seat)| Record::Join { room, seat }),
            (0u8..3, seat.clone()).prop_map(|(room, from)| Record::Frame { room, from }),
            (0u8..3, seat).prop_map(|(room, seat)| Record::Leave { room, seat }),
            (0u8..3, 1u64..4, 0i64..5_000).prop_map(|(room, relay, ttl_ms)| Record::Burn { room, relay, ttl_ms }),
        ];
        proptest::collection::vec((0i64..3_000, record), 0..80).prop_map(|steps| {
            let mut t = 0;
            steps
                .into_iter()
                .map(|(dt, r)| {
                    t += dt;
                    (t, r)
                })
                .collect()
        })
    }

    proptest! {
        /// A partition restored from a snapshot taken after any prefix of the log applies the
        /// rest exactly as the one that read it all: a relay starting from a snapshot agrees.
        #[test]
        fn a_restored_snapshot_agrees_with_the_whole_log(log in records(), cut in 0usize..80) {
            let log: Vec<(i64, Record<[u8; 1]>)> = log.into_iter().map(|(t, r)| (t, match r {
                Record::Alive { relay } => Record::Alive { relay },
                Record::Join { room, seat } => Record::Join { room: [room], seat },
                Record::Frame { room, from } => Record::Frame { room: [room], from },
                Record::Leave { room, seat } => Record::Leave { room: [room], seat },
                Record::Burn { room, relay, ttl_ms } => Record::Burn { room: [room], relay, ttl_ms },
            })).collect();
            let cut = cut.min(log.len());
            let mut whole = Partition::new(TTL);
            for (t, r) in &log[..cut] {
                whole.apply(*t, r.clone());
            }
            let bytes = whole.snapshot();
            let mut restored = Partition::<[u8; 1]>::restore(TTL, &bytes).expect("a snapshot restores");
            prop_assert_eq!(restored.snapshot(), bytes);
            for (t, r) in &log[cut..] {
                prop_assert_eq!(whole.apply(*t, r.clone()), restored.apply(*t, r.clone()));
            }
        }

        #[test]
        fn any_bytes_restore_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Partition::<[u8; 1]>::restore(TTL, &bytes);
        }

        /// Whatever the order: never more than two seats in a room, every relay reading the same
        /// records reaches the same outcomes, frames reach only a paired partner, and a seat that
        /// left or was lost receives nothing more.
        #[test]
        fn every_relay_agrees_and_no_room_ever_holds_three(log in records()) {
            let (mut one, mut other) = (Partition::new(TTL), Partition::new(TTL));
            let (mut joined, mut gone) = (std::collections::HashSet::new(), std::collections::HashSet::new());
            for (t, record) in log {
                // A seat is one connection: it joins one room, once (a relay never reuses its
                // number), and once it left or was lost it stays gone.
                if let Record::Join { seat, .. } = &record {
                    if !joined.insert(*seat) {
                        continue;
                    }
                }
                let outcomes = one.apply(t, record.clone());
                prop_assert_eq!(&outcomes, &other.apply(t, record));
                for room in 0..3u8 {
                    prop_assert!(one.seats(&room).len() <= 2);
                }
                for outcome in outcomes {
                    match outcome {
                        Outcome::Deliver { room, to } => {
                            prop_assert!(one.seats(&room).contains(&to));
                            prop_assert!(!gone.contains(&to));
                        }
                        Outcome::Left { seat, .. } | Outcome::Lost { seat, .. } => {
                            gone.insert(seat);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
