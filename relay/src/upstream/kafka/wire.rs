//! The bytes of a record on the rooms topic.
//!
//! A record's key is the keyed room id (16 bytes; none for a heartbeat), so every record about a
//! room lands in one partition. Its value is a fixed header and, for frames, the frames:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | kind: `j` join, `f` frames, `k` acknowledgement, `l` departure, `a` alive, `s` snapshot, `b` burn |
//! | 8 | the writer's relay id (big-endian) |
//! | 8 | the seat's number on that relay (0 for `a`, `s` and `b`) |
//! | 8 | `f`: the first frame's number; `k`: every frame below it was delivered; `l`: frames sent; `s`: the first offset the state does not include; `b`: the burn's length in ms |
//! | … | `f`: each frame as a 4-byte big-endian length and its bytes; `s`: the partition's state ([`Partition::snapshot`](super::log::Partition::snapshot)) |
//!
//! and then, last, a 16-byte tag under the cluster secret over the topic, the partition, the key
//! and these bytes ([`broker_auth`](crate::upstream::broker_auth)), added on produce and checked
//! (and removed) before a record is decoded; a record that fails is dropped by every relay alike.
//!
//! Nothing else travels: no room code, no client address, only frames that are already
//! end-to-end encrypted by the clients.

use super::log::{Record, RelayId, Seat};
use bytes::{BufMut, Bytes, BytesMut};

const HEADER: usize = 1 + 8 + 8 + 8;

/// A decoded record value, beside the log's view of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A heartbeat.
    Alive,
    /// A join request.
    Join,
    /// Frames numbered from `first`.
    Frames {
        /// The first frame's number.
        first: u64,
        /// The frames, slices of the record (not copies).
        frames: Vec<Bytes>,
    },
    /// Every frame below `next` was delivered.
    Ack {
        /// The next frame expected.
        next: u64,
    },
    /// The departure, after `sent` frames.
    Leave {
        /// Frames the leaver sent in all.
        sent: u64,
    },
    /// The room is burnt for `ttl_ms`.
    Burn {
        /// How long, in ms of log time.
        ttl_ms: u64,
    },
    /// The partition's state after every record below offset `next`.
    Snapshot {
        /// The first offset the state does not include.
        next: u64,
        /// The state's bytes.
        state: Bytes,
    },
}

/// A record's value: who wrote it and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The writing seat (`n` is 0 for a heartbeat).
    pub seat: Seat,
    /// What it says.
    pub body: Body,
}

impl Value {
    /// The record the room log applies, for the room `room` (ignored for heartbeats).
    pub fn record<R>(&self, room: R) -> Record<R> {
        match self.body {
            // A snapshot moves the clock like a heartbeat of its writer, for every reader alike.
            Body::Alive | Body::Snapshot { .. } => Record::Alive { relay: self.seat.relay },
            Body::Join => Record::Join { room, seat: self.seat },
            Body::Frames { .. } | Body::Ack { .. } => Record::Frame { room, from: self.seat },
            Body::Leave { .. } => Record::Leave { room, seat: self.seat },
            Body::Burn { ttl_ms } => {
                Record::Burn { room, relay: self.seat.relay, ttl_ms: i64::try_from(ttl_ms).unwrap_or(i64::MAX) }
            }
        }
    }
}

fn header(kind: u8, seat: Seat, number: u64, extra: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(HEADER + extra);
    b.put_u8(kind);
    b.put_u64(seat.relay);
    b.put_u64(seat.n);
    b.put_u64(number);
    b
}

/// A heartbeat of `relay`.
pub fn alive(relay: RelayId) -> Bytes {
    header(b'a', Seat { relay, n: 0 }, 0, 0).freeze()
}

/// `seat` asks to join the record's room.
pub fn join(seat: Seat) -> Bytes {
    header(b'j', seat, 0, 0).freeze()
}

/// `frames` from `seat`, numbered from `first`.
pub fn frames(seat: Seat, first: u64, frames: &[Bytes]) -> Bytes {
    let len = frames.iter().map(|f| 4 + f.len()).sum();
    let mut b = header(b'f', seat, first, len);
    for f in frames {
        // A frame is at most the relay's --max-frame (far below 4 GiB).
        b.put_u32(u32::try_from(f.len()).unwrap_or(u32::MAX));
        b.put_slice(f);
    }
    b.freeze()
}

/// `seat` has delivered every frame below `next`.
pub fn ack(seat: Seat, next: u64) -> Bytes {
    header(b'k', seat, next, 0).freeze()
}

/// `seat` leaves after `sent` frames.
pub fn leave(seat: Seat, sent: u64) -> Bytes {
    header(b'l', seat, sent, 0).freeze()
}

/// `relay` burns the record's room for `ttl_ms`.
pub fn burn(relay: RelayId, ttl_ms: u64) -> Bytes {
    header(b'b', Seat { relay, n: 0 }, ttl_ms, 0).freeze()
}

/// The state of a partition after every record below offset `next`, written by `relay`.
pub fn snapshot(relay: RelayId, next: u64, state: &[u8]) -> Bytes {
    let mut b = header(b's', Seat { relay, n: 0 }, next, state.len());
    b.put_slice(state);
    b.freeze()
}

/// Reads a record's value; `None` for anything this relay did not write the way it writes.
pub fn decode(value: Bytes) -> Option<Value> {
    if value.len() < HEADER {
        return None;
    }
    let word = |at: usize| value.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    let seat = Seat { relay: word(1)?, n: word(9)? };
    let number = word(17)?;
    let body = match value[0] {
        b'a' if value.len() == HEADER => Body::Alive,
        b'j' if value.len() == HEADER => Body::Join,
        b'k' if value.len() == HEADER => Body::Ack { next: number },
        b'l' if value.len() == HEADER => Body::Leave { sent: number },
        b'b' if value.len() == HEADER => Body::Burn { ttl_ms: number },
        b's' => Body::Snapshot { next: number, state: value.slice(HEADER..) },
        b'f' => {
            let mut frames = Vec::new();
            let mut at = HEADER;
            while at < value.len() {
                let len = value.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes)? as usize;
                let end = at.checked_add(4)?.checked_add(len)?;
                if end > value.len() {
                    return None;
                }
                frames.push(value.slice(at + 4..end));
                at = end;
            }
            if frames.is_empty() {
                return None;
            }
            Body::Frames { first: number, frames }
        }
        _ => return None,
    };
    Some(Value { seat, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Seat = Seat { relay: 0x0102_0304_0506_0708, n: 42 };

    #[test]
    fn every_kind_round_trips() {
        assert_eq!(decode(alive(7)), Some(Value { seat: Seat { relay: 7, n: 0 }, body: Body::Alive }));
        assert_eq!(decode(join(S)), Some(Value { seat: S, body: Body::Join }));
        assert_eq!(decode(ack(S, 9)), Some(Value { seat: S, body: Body::Ack { next: 9 } }));
        assert_eq!(decode(leave(S, 3)), Some(Value { seat: S, body: Body::Leave { sent: 3 } }));
        assert_eq!(
            decode(burn(7, 60_000)),
            Some(Value { seat: Seat { relay: 7, n: 0 }, body: Body::Burn { ttl_ms: 60_000 } })
        );
        let state = Bytes::from_static(b"state");
        assert_eq!(
            decode(snapshot(7, 12, &state)),
            Some(Value { seat: Seat { relay: 7, n: 0 }, body: Body::Snapshot { next: 12, state } })
        );
        let fs = vec![Bytes::from_static(b"{}"), Bytes::new(), Bytes::from_static("é".as_bytes())];
        assert_eq!(decode(frames(S, 5, &fs)), Some(Value { seat: S, body: Body::Frames { first: 5, frames: fs } }));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(decode(Bytes::from_static(b"short")), None);
        let mut cut = frames(S, 1, &[Bytes::from_static(b"abcdef")]).to_vec();
        cut.pop();
        assert_eq!(decode(Bytes::from(cut)), None, "a frame cut short");
        let mut long = join(S).to_vec();
        long.push(0);
        assert_eq!(decode(Bytes::from(long)), None, "a join with a tail");
        let mut unknown = join(S).to_vec();
        unknown[0] = b'z';
        assert_eq!(decode(Bytes::from(unknown)), None);
        assert_eq!(decode(header(b'f', S, 0, 0).freeze()), None, "frames without a frame");
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(Bytes::from(bytes));
        }
    }
}
