//! The in-process upstream: both peers of every room are on this relay.
//!
//! Rooms sit in a sharded table of `std::sync::Mutex<HashMap>`, locked only to
//! join or leave and never across an `.await`. Once paired, each connection
//! holds its partner's mailbox directly, so the frame path takes no lock on
//! the room table: a frame is one push into the partner's bounded inbox.
//!
//! Burnt rooms sit beside the rooms in each shard, with the moment each burn ends; a join
//! checks them under the same lock. At most `max_rooms` burns are kept per shard beyond those
//! that ended: a burn past that bound is refused (the connection ends with 4007 and its
//! client's key confirmation never leaves), so burning cannot grow the relay without bound.

use super::burns::Burns;
use super::{BoxFuture, Frame, JoinError, Joined, LinkError, Mailbox, PeerLink, RoomId, Seat, SendError, Upstream};
use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Rooms in this process.
pub struct Local {
    inner: Arc<Inner>,
}

struct Inner {
    shards: [Mutex<Shard>; SHARDS],
    hasher: RandomState,
    rooms: AtomicUsize,
    max_rooms: usize,
    next_seat: AtomicU64,
}

#[derive(Default)]
struct Shard {
    rooms: HashMap<RoomId, Room>,
    burnt: Burns<RoomId>,
}

enum Room {
    Waiting { seat: u64, mailbox: Mailbox },
    Paired { a: (u64, Mailbox), b: (u64, Mailbox) },
}

impl Local {
    /// An empty room table that holds at most `max_rooms` rooms.
    pub fn new(max_rooms: usize) -> Local {
        Local {
            inner: Arc::new(Inner {
                shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
                hasher: RandomState::new(),
                rooms: AtomicUsize::new(0),
                max_rooms,
                next_seat: AtomicU64::new(1),
            }),
        }
    }
}

impl Inner {
    fn shard(&self, room: &RoomId) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(room) as usize) % SHARDS;
        // A poisoned shard only means another task panicked while holding it; the map is still consistent
        // because every critical section below is a single insert or remove.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn join(self: &Arc<Self>, room: &RoomId, me: Mailbox) -> Result<Joined, JoinError> {
        let seat = self.next_seat.fetch_add(1, Ordering::Relaxed);
        let guard = || Seat::new(LocalSeat { inner: Arc::clone(self), room: *room, seat });
        let mut shard = self.shard(room);
        if shard.burnt.contains(room) {
            return Err(JoinError::Burnt);
        }
        match shard.rooms.entry(*room) {
            Entry::Vacant(v) => {
                if self.rooms.fetch_add(1, Ordering::AcqRel) >= self.max_rooms {
                    self.rooms.fetch_sub(1, Ordering::AcqRel);
                    return Err(JoinError::AtCapacity);
                }
                v.insert(Room::Waiting { seat, mailbox: me });
                drop(shard);
                Ok(Joined::Waiting(guard()))
            }
            Entry::Occupied(mut o) => match o.get() {
                Room::Paired { .. } => Err(JoinError::RoomFull),
                Room::Waiting { seat: first, mailbox } => {
                    let first_box = mailbox.clone();
                    let to_first = LocalLink { peer: first_box.clone() };
                    let to_me = LocalLink { peer: me.clone() };
                    // The first peer learns of us while we hold the shard lock and before we can send
                    // anything, so PeerFound reaches it ahead of our first frame. If it is already
                    // gone, its seat's drop runs after us and tells us PeerLeft.
                    first_box.inbox.peer_found(Box::new(to_me));
                    let first = *first;
                    o.insert(Room::Paired { a: (first, first_box), b: (seat, me) });
                    drop(shard);
                    Ok(Joined::Paired(guard(), Box::new(to_first)))
                }
            },
        }
    }

    fn leave(&self, room: &RoomId, seat: u64) {
        let mut shard = self.shard(room);
        let partner = match shard.rooms.get(room) {
            Some(Room::Waiting { seat: s, .. }) if *s == seat => None,
            Some(Room::Paired { a, b }) if a.0 == seat => Some(Arc::clone(&b.1.inbox)),
            Some(Room::Paired { a, b }) if b.0 == seat => Some(Arc::clone(&a.1.inbox)),
            // The room was already freed by the partner, or reused by others since.
            _ => return,
        };
        shard.rooms.remove(room);
        drop(shard);
        self.rooms.fetch_sub(1, Ordering::AcqRel);
        if let Some(inbox) = partner {
            inbox.peer_left();
        }
    }
}

impl Inner {
    fn burn(&self, room: &RoomId, ttl: Duration) -> Result<(), JoinError> {
        let mut shard = self.shard(room);
        if shard.burnt.len() >= self.max_rooms {
            shard.burnt.sweep();
            if shard.burnt.len() >= self.max_rooms {
                return Err(JoinError::Unavailable("too many burnt rooms".into()));
            }
        }
        shard.burnt.burn(*room, Instant::now() + ttl);
        Ok(())
    }
}

struct LocalSeat {
    inner: Arc<Inner>,
    room: RoomId,
    seat: u64,
}

impl Drop for LocalSeat {
    fn drop(&mut self) {
        self.inner.leave(&self.room, self.seat);
    }
}

struct LocalLink {
    peer: Mailbox,
}

impl PeerLink for LocalLink {
    fn send(&mut self, frame: Frame) -> Result<(), SendError> {
        self.peer.inbox.push(frame)
    }

    fn writable(&self) -> BoxFuture<'static, Result<(), LinkError>> {
        let inbox = Arc::clone(&self.peer.inbox);
        Box::pin(async move { std::future::poll_fn(|cx| inbox.poll_writable(cx)).await })
    }
}

impl Upstream for Local {
    fn join<'a>(&'a self, room: &'a RoomId, me: Mailbox) -> BoxFuture<'a, Result<Joined, JoinError>> {
        let result = self.inner.join(room, me);
        Box::pin(std::future::ready(result))
    }

    fn burn<'a>(&'a self, room: &'a RoomId, ttl: Duration) -> BoxFuture<'a, Result<(), JoinError>> {
        Box::pin(std::future::ready(self.inner.burn(room, ttl)))
    }

    fn open_rooms(&self) -> usize {
        self.inner.rooms.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "local"
    }
}
