//! The rooms a relay owns: the one place a room's seats are decided.
//!
//! Every join for a room goes to its owner (see [`owner`]), which applies it to this table
//! under one lock: vacant → waiting, waiting → paired, paired → full. Joins through different
//! relays race only for that lock, so at most two seats exist, however they interleave. A join
//! is answered again the same way if it arrives twice, and a departure frees the room only if
//! it comes from a seat that holds it, so a stale message never frees a newer room.
//!
//! Burnt rooms are kept beside them, with the moment each burn ends: a new seat is refused
//! ([`Verdict::Burnt`]); the seats already in the room are answered as before.

use super::wire::{SeatRef, Verdict};
use crate::upstream::burns::Burns;
use std::collections::HashMap;
use std::time::Instant;

/// One owned room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Room {
    Waiting(SeatRef),
    Paired(SeatRef, SeatRef),
}

/// The rooms this relay owns, by keyed id.
#[derive(Default)]
pub struct Rooms {
    rooms: HashMap<[u8; 16], Room>,
    /// Burnt rooms, and when each burn ends.
    burnt: Burns<[u8; 16]>,
}

impl Rooms {
    /// Seat `seat` asks for a place in `room`.
    pub fn join(&mut self, room: [u8; 16], seat: SeatRef) -> Verdict {
        let holds = match self.rooms.get(&room) {
            Some(Room::Waiting(a)) => *a == seat,
            Some(Room::Paired(a, b)) => *a == seat || *b == seat,
            None => false,
        };
        if !holds && self.burnt.contains(&room) {
            return Verdict::Burnt;
        }
        match self.rooms.get(&room).copied() {
            None => {
                self.rooms.insert(room, Room::Waiting(seat));
                Verdict::Waiting
            }
            Some(Room::Waiting(first)) if first == seat => Verdict::Waiting,
            Some(Room::Waiting(first)) => {
                self.rooms.insert(room, Room::Paired(first, seat));
                Verdict::Paired(first)
            }
            Some(Room::Paired(first, second)) if second == seat => Verdict::Paired(first),
            // The first seat asking again was told of its partner already.
            Some(Room::Paired(first, _)) if first == seat => Verdict::Waiting,
            Some(Room::Paired(..)) => Verdict::Full,
        }
    }

    /// Seat `seat`, paired with `partner` by the room's previous owner, holds `room` here now
    /// (the roster changed). `false` when the room holds other seats, admitted here meanwhile:
    /// both pairs go on, and the room is not taken from the ones it holds.
    pub fn hold(&mut self, room: [u8; 16], seat: SeatRef, partner: SeatRef) -> bool {
        match self.rooms.get(&room).copied() {
            None => {
                self.rooms.insert(room, Room::Paired(partner, seat));
                true
            }
            Some(Room::Waiting(a)) if a == partner || a == seat => {
                self.rooms.insert(room, Room::Paired(partner, seat));
                true
            }
            Some(Room::Paired(a, b)) => (a, b) == (partner, seat) || (a, b) == (seat, partner),
            Some(Room::Waiting(_)) => false,
        }
    }

    /// Seat `seat` left `room`: the room is free again if the seat held it (a pair ends together).
    pub fn leave(&mut self, room: [u8; 16], seat: SeatRef) -> bool {
        let holds = match self.rooms.get(&room) {
            Some(Room::Waiting(a)) => *a == seat,
            Some(Room::Paired(a, b)) => *a == seat || *b == seat,
            None => false,
        };
        if holds {
            self.rooms.remove(&room);
        }
        holds
    }

    /// Refuses new seats in `room` until `until` (a later end of an earlier burn stands).
    pub fn burn(&mut self, room: [u8; 16], until: Instant) {
        self.burnt.burn(room, until);
    }

    /// Relay `relay` is gone: every room with a seat there is free again.
    pub fn forget_relay(&mut self, relay: u64) -> usize {
        let before = self.rooms.len();
        self.rooms.retain(|_, room| match room {
            Room::Waiting(a) => a.relay != relay,
            Room::Paired(a, b) => a.relay != relay && b.relay != relay,
        });
        before - self.rooms.len()
    }

    /// Rooms held.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is held.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

/// The owner of `room` among `relays` (incarnations): the highest rendezvous score. Every relay
/// with the same roster picks the same owner, and a roster change moves only the rooms of the
/// relays that came or went.
pub fn owner(room: &[u8; 16], relays: impl IntoIterator<Item = u64>) -> Option<u64> {
    use sha2::{Digest, Sha256};
    relays.into_iter().max_by_key(|relay| {
        let digest = Sha256::new().chain_update(room).chain_update(relay.to_be_bytes()).finalize();
        let mut score = [0u8; 8];
        score.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(score), *relay)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn seat(relay: u64, n: u64) -> SeatRef {
        SeatRef { relay, n }
    }

    #[test]
    fn a_burnt_room_refuses_new_seats_only() {
        let mut rooms = Rooms::default();
        let r = [2; 16];
        assert_eq!(rooms.join(r, seat(1, 1)), Verdict::Waiting);
        assert_eq!(rooms.join(r, seat(2, 1)), Verdict::Paired(seat(1, 1)));
        rooms.burn(r, Instant::now() + std::time::Duration::from_secs(60));
        // The pair's own repeated joins are answered as before; nobody new gets in, even once
        // the pair has left.
        assert_eq!(rooms.join(r, seat(2, 1)), Verdict::Paired(seat(1, 1)));
        assert_eq!(rooms.join(r, seat(3, 1)), Verdict::Burnt);
        assert!(rooms.leave(r, seat(1, 1)));
        assert_eq!(rooms.join(r, seat(3, 2)), Verdict::Burnt);
        // A burn that ended refuses nothing.
        let other = [3; 16];
        rooms.burn(other, Instant::now());
        assert_eq!(rooms.join(other, seat(3, 3)), Verdict::Waiting);
    }

    #[test]
    fn two_seats_then_full_then_free() {
        let mut rooms = Rooms::default();
        let r = [1; 16];
        assert_eq!(rooms.join(r, seat(1, 1)), Verdict::Waiting);
        assert_eq!(rooms.join(r, seat(1, 1)), Verdict::Waiting, "a repeated join is answered the same");
        assert_eq!(rooms.join(r, seat(2, 1)), Verdict::Paired(seat(1, 1)));
        assert_eq!(rooms.join(r, seat(2, 1)), Verdict::Paired(seat(1, 1)));
        assert_eq!(rooms.join(r, seat(3, 1)), Verdict::Full);
        assert!(!rooms.leave(r, seat(3, 1)), "a seat that was refused frees nothing");
        assert!(rooms.leave(r, seat(2, 1)));
        assert!(rooms.is_empty());
        assert_eq!(rooms.join(r, seat(3, 1)), Verdict::Waiting);
    }

    #[test]
    fn a_pair_held_again_at_a_new_owner_fills_its_room() {
        let mut rooms = Rooms::default();
        let (r, a, b) = ([1; 16], seat(1, 1), seat(2, 1));
        assert!(rooms.hold(r, a, b));
        assert!(rooms.hold(r, b, a), "the partner's record of the same pair agrees");
        assert_eq!(rooms.join(r, seat(3, 1)), Verdict::Full);
        assert!(rooms.leave(r, a));
        // A waiting seat of the pair, recorded first, is completed; a stranger's is not taken.
        assert_eq!(rooms.join(r, a), Verdict::Waiting);
        assert!(rooms.hold(r, b, a));
        assert_eq!(rooms.join(r, seat(3, 1)), Verdict::Full);
        assert!(rooms.leave(r, b));
        assert_eq!(rooms.join(r, seat(3, 1)), Verdict::Waiting);
        assert!(!rooms.hold(r, b, a));
    }

    #[test]
    fn a_gone_relay_frees_its_rooms() {
        let mut rooms = Rooms::default();
        rooms.join([1; 16], seat(1, 1));
        rooms.join([2; 16], seat(2, 1));
        rooms.join([2; 16], seat(1, 2));
        rooms.join([3; 16], seat(2, 2));
        assert_eq!(rooms.forget_relay(1), 2);
        assert_eq!(rooms.len(), 1);
    }

    proptest! {
        /// Whatever order joins and departures arrive in, no room ever holds more than two
        /// seats and every admitted seat was told a verdict consistent with the table.
        #[test]
        fn never_more_than_two(ops in prop::collection::vec((0u8..3, 0u64..4, 0u64..6, any::<bool>()), 0..200)) {
            let mut rooms = Rooms::default();
            let mut admitted: HashMap<u8, Vec<SeatRef>> = HashMap::new();
            for (r, relay, n, join) in ops {
                let room = [r; 16];
                let s = seat(relay, n);
                let inside = admitted.entry(r).or_default();
                if join {
                    match rooms.join(room, s) {
                        Verdict::Full => prop_assert!(inside.len() == 2 && !inside.contains(&s)),
                        _ => if !inside.contains(&s) { inside.push(s) },
                    }
                } else if rooms.leave(room, s) {
                    inside.clear();
                }
                prop_assert!(inside.len() <= 2);
            }
        }

        /// Removing a relay moves only the rooms it owned.
        #[test]
        fn rendezvous_moves_only_the_departed_relays_rooms(room in any::<[u8; 16]>(), gone in 0u64..5) {
            let all: Vec<u64> = (0..5).collect();
            let before = owner(&room, all.iter().copied());
            let after = owner(&room, all.iter().copied().filter(|r| *r != gone));
            if before != Some(gone) {
                prop_assert_eq!(before, after);
            }
        }
    }
}
