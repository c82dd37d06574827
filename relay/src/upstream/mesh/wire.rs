//! The bytes of the mesh: the messages relays send each other over a link, and the link's own
//! envelope around them.
//!
//! Everything is big-endian and length-checked; a message that does not parse closes the link
//! it came on (the peer is authenticated, so that is a bug or a version skew, never input to
//! trust). Room ids are the upstream layer's keyed ids, seats are numbers local to the relay
//! that holds them, relays are their incarnation numbers (random per process start).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A seat anywhere in the mesh: the relay (its incarnation) and the seat's number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeatRef {
    /// The relay's incarnation.
    pub relay: u64,
    /// The seat's number on that relay.
    pub n: u64,
}

/// What the owner of a room answers a join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First in the room.
    Waiting,
    /// Second: the first is `partner` (already told).
    Paired(SeatRef),
    /// Two seats hold the room.
    Full,
    /// The receiver does not decide this room now: another relay owns it by the receiver's
    /// roster, or the receiver is not ready (no lease, or not linked to every relay).
    Refused,
    /// The room is burnt.
    Burnt,
}

/// A message between relays. The sending relay is the link's, so only seats on the receiver
/// are named by number alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// To the room's owner: seat `seat` of the sender asks for a place in `room`.
    Join {
        /// The keyed room id.
        room: [u8; 16],
        /// The joining seat on the sender.
        seat: u64,
    },
    /// The owner's answer to the `Join` of seat `seat` (on the receiver).
    Verdict {
        /// The seat that asked.
        seat: u64,
        /// The outcome.
        verdict: Verdict,
    },
    /// To a waiting seat: its partner is `partner` (sent by the owner and by the partner's relay).
    Paired {
        /// The waiting seat on the receiver.
        to: u64,
        /// Its partner.
        partner: SeatRef,
    },
    /// Frames from seat `from` of the sender to seat `to`, numbered from `first`.
    Frames {
        /// The receiving seat.
        to: u64,
        /// The sending seat (on the sender).
        from: u64,
        /// The first frame's number.
        first: u64,
        /// The frames, byte for byte.
        frames: Vec<Bytes>,
    },
    /// Seat `from` handed every frame below `next` to its connection.
    Ack {
        /// The seat acknowledged to.
        to: u64,
        /// The acknowledging seat.
        from: u64,
        /// The next frame it expects.
        next: u64,
    },
    /// Seat `from` left after sending `sent` frames.
    Left {
        /// Its partner.
        to: u64,
        /// The seat that left.
        from: u64,
        /// Frames it sent in all.
        sent: u64,
    },
    /// To the room's owner: seat `seat` of the sender left `room`, which is free again.
    Leave {
        /// The keyed room id.
        room: [u8; 16],
        /// The seat that left.
        seat: u64,
    },
    /// To a room's new owner (the roster changed): seat `seat` of the sender holds a place in
    /// `room`, paired with `partner` or waiting. A waiting seat is answered with a `Verdict`.
    Hold {
        /// The keyed room id.
        room: [u8; 16],
        /// The seat on the sender.
        seat: u64,
        /// Its partner, once paired.
        partner: Option<SeatRef>,
    },
    /// Seat `to` (on the sender of the message this answers) is unknown here: its pair is lost.
    Gone {
        /// The seat on the receiver whose partner is gone.
        to: u64,
    },
    /// The sender is shutting down, its departures sent: give it up now.
    Bye,
    /// `room` is burnt for `ttl_ms` (sent to every relay, so a later owner knows it too); the
    /// receiver answers `Burnt` with the same `token`.
    Burn {
        /// The keyed room id.
        room: [u8; 16],
        /// How long joins are refused, in ms.
        ttl_ms: u64,
        /// The sender's number for this burn.
        token: u64,
    },
    /// The answer to `Burn` number `token`: recorded.
    Burnt {
        /// The burn's number on the receiver.
        token: u64,
    },
}

/// The envelope of one link record (inside the Noise transport).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Envelope {
    /// Dialer → acceptor, first: who is calling, whom it expects, its session, its link address.
    Hello {
        /// The dialer's incarnation.
        from: u64,
        /// The incarnation the dialer expects to reach (0: whoever listens there).
        to: u64,
        /// The dialer's session with this peer: a new one starts numbering afresh.
        session: u64,
        /// Where the acceptor reaches the dialer's own listener (`host:port`).
        addr: String,
    },
    /// Acceptor → dialer: who answers, and the next message number it expects in the session.
    Welcome {
        /// The acceptor's incarnation.
        me: u64,
        /// The first message number it has not received.
        next: u64,
    },
    /// Dialer → acceptor: message `seq` of the session.
    Data {
        /// Its number.
        seq: u64,
        /// The message.
        msg: Msg,
    },
    /// Acceptor → dialer: every message below `next` was received.
    Ack {
        /// The first message number not received.
        next: u64,
    },
    /// Either way: still here.
    Beat,
}

/// A record that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed mesh record")]
pub struct Malformed;

impl Msg {
    fn put(&self, b: &mut BytesMut) {
        match self {
            Msg::Join { room, seat } => {
                b.put_u8(b'J');
                b.put_slice(room);
                b.put_u64(*seat);
            }
            Msg::Verdict { seat, verdict } => {
                b.put_u8(b'V');
                b.put_u64(*seat);
                match verdict {
                    Verdict::Waiting => b.put_u8(b'w'),
                    Verdict::Full => b.put_u8(b'f'),
                    Verdict::Refused => b.put_u8(b'r'),
                    Verdict::Burnt => b.put_u8(b'b'),
                    Verdict::Paired(p) => {
                        b.put_u8(b'p');
                        b.put_u64(p.relay);
                        b.put_u64(p.n);
                    }
                }
            }
            Msg::Paired { to, partner } => {
                b.put_u8(b'P');
                b.put_u64(*to);
                b.put_u64(partner.relay);
                b.put_u64(partner.n);
            }
            Msg::Frames { to, from, first, frames } => {
                b.put_u8(b'F');
                b.put_u64(*to);
                b.put_u64(*from);
                b.put_u64(*first);
                b.put_u32(frames.len() as u32);
                for f in frames {
                    b.put_u32(f.len() as u32);
                    b.put_slice(f);
                }
            }
            Msg::Ack { to, from, next } => {
                b.put_u8(b'K');
                b.put_u64(*to);
                b.put_u64(*from);
                b.put_u64(*next);
            }
            Msg::Left { to, from, sent } => {
                b.put_u8(b'L');
                b.put_u64(*to);
                b.put_u64(*from);
                b.put_u64(*sent);
            }
            Msg::Leave { room, seat } => {
                b.put_u8(b'X');
                b.put_slice(room);
                b.put_u64(*seat);
            }
            Msg::Hold { room, seat, partner } => {
                b.put_u8(b'H');
                b.put_slice(room);
                b.put_u64(*seat);
                match partner {
                    None => b.put_u8(0),
                    Some(p) => {
                        b.put_u8(1);
                        b.put_u64(p.relay);
                        b.put_u64(p.n);
                    }
                }
            }
            Msg::Gone { to } => {
                b.put_u8(b'G');
                b.put_u64(*to);
            }
            Msg::Bye => b.put_u8(b'B'),
            Msg::Burn { room, ttl_ms, token } => {
                b.put_u8(b'N');
                b.put_slice(room);
                b.put_u64(*ttl_ms);
                b.put_u64(*token);
            }
            Msg::Burnt { token } => {
                b.put_u8(b'O');
                b.put_u64(*token);
            }
        }
    }

    fn take(b: &mut Bytes) -> Result<Msg, Malformed> {
        let msg = match u8s(b)? {
            b'J' => Msg::Join { room: room(b)?, seat: u64s(b)? },
            b'V' => {
                let seat = u64s(b)?;
                let verdict = match u8s(b)? {
                    b'w' => Verdict::Waiting,
                    b'f' => Verdict::Full,
                    b'r' => Verdict::Refused,
                    b'b' => Verdict::Burnt,
                    b'p' => Verdict::Paired(SeatRef { relay: u64s(b)?, n: u64s(b)? }),
                    _ => return Err(Malformed),
                };
                Msg::Verdict { seat, verdict }
            }
            b'P' => Msg::Paired { to: u64s(b)?, partner: SeatRef { relay: u64s(b)?, n: u64s(b)? } },
            b'F' => {
                let (to, from, first) = (u64s(b)?, u64s(b)?, u64s(b)?);
                let count = u32s(b)? as usize;
                let mut frames = Vec::with_capacity(count.min(256));
                for _ in 0..count {
                    let len = u32s(b)? as usize;
                    if b.remaining() < len {
                        return Err(Malformed);
                    }
                    frames.push(b.split_to(len));
                }
                Msg::Frames { to, from, first, frames }
            }
            b'K' => Msg::Ack { to: u64s(b)?, from: u64s(b)?, next: u64s(b)? },
            b'L' => Msg::Left { to: u64s(b)?, from: u64s(b)?, sent: u64s(b)? },
            b'X' => Msg::Leave { room: room(b)?, seat: u64s(b)? },
            b'H' => {
                let (room, seat) = (room(b)?, u64s(b)?);
                let partner = match u8s(b)? {
                    0 => None,
                    1 => Some(SeatRef { relay: u64s(b)?, n: u64s(b)? }),
                    _ => return Err(Malformed),
                };
                Msg::Hold { room, seat, partner }
            }
            b'G' => Msg::Gone { to: u64s(b)? },
            b'B' => Msg::Bye,
            b'N' => Msg::Burn { room: room(b)?, ttl_ms: u64s(b)?, token: u64s(b)? },
            b'O' => Msg::Burnt { token: u64s(b)? },
            _ => return Err(Malformed),
        };
        Ok(msg)
    }
}

impl Envelope {
    /// The record's bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        match self {
            Envelope::Hello { from, to, session, addr } => {
                b.put_u8(b'h');
                b.put_u64(*from);
                b.put_u64(*to);
                b.put_u64(*session);
                b.put_u16(addr.len().min(u16::MAX as usize) as u16);
                b.put_slice(&addr.as_bytes()[..addr.len().min(u16::MAX as usize)]);
            }
            Envelope::Welcome { me, next } => {
                b.put_u8(b'w');
                b.put_u64(*me);
                b.put_u64(*next);
            }
            Envelope::Data { seq, msg } => {
                b.put_u8(b'd');
                b.put_u64(*seq);
                msg.put(&mut b);
            }
            Envelope::Ack { next } => {
                b.put_u8(b'a');
                b.put_u64(*next);
            }
            Envelope::Beat => b.put_u8(b'b'),
        }
        b.freeze()
    }

    /// Parses a whole record.
    ///
    /// # Errors
    /// [`Malformed`] when it is short, has bytes left over, or an unknown kind.
    pub fn decode(mut b: Bytes) -> Result<Envelope, Malformed> {
        let env = match u8s(&mut b)? {
            b'h' => {
                let (from, to, session) = (u64s(&mut b)?, u64s(&mut b)?, u64s(&mut b)?);
                let len = u16s(&mut b)? as usize;
                if b.remaining() < len {
                    return Err(Malformed);
                }
                let addr = String::from_utf8(b.split_to(len).to_vec()).map_err(|_| Malformed)?;
                Envelope::Hello { from, to, session, addr }
            }
            b'w' => Envelope::Welcome { me: u64s(&mut b)?, next: u64s(&mut b)? },
            b'd' => Envelope::Data { seq: u64s(&mut b)?, msg: Msg::take(&mut b)? },
            b'a' => Envelope::Ack { next: u64s(&mut b)? },
            b'b' => Envelope::Beat,
            _ => return Err(Malformed),
        };
        if b.has_remaining() {
            return Err(Malformed);
        }
        Ok(env)
    }
}

fn u8s(b: &mut Bytes) -> Result<u8, Malformed> {
    b.try_get_u8().map_err(|_| Malformed)
}

fn u16s(b: &mut Bytes) -> Result<u16, Malformed> {
    b.try_get_u16().map_err(|_| Malformed)
}

fn u32s(b: &mut Bytes) -> Result<u32, Malformed> {
    b.try_get_u32().map_err(|_| Malformed)
}

fn u64s(b: &mut Bytes) -> Result<u64, Malformed> {
    b.try_get_u64().map_err(|_| Malformed)
}

fn room(b: &mut Bytes) -> Result<[u8; 16], Malformed> {
    let mut r = [0u8; 16];
    b.try_copy_to_slice(&mut r).map_err(|_| Malformed)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn every_kind() -> Vec<Envelope> {
        let s = SeatRef { relay: 7, n: 9 };
        let msgs = vec![
            Msg::Join { room: [3; 16], seat: 4 },
            Msg::Verdict { seat: 1, verdict: Verdict::Waiting },
            Msg::Verdict { seat: 2, verdict: Verdict::Full },
            Msg::Verdict { seat: 4, verdict: Verdict::Refused },
            Msg::Verdict { seat: 5, verdict: Verdict::Burnt },
            Msg::Burn { room: [8; 16], ttl_ms: 3_600_000, token: 7 },
            Msg::Burnt { token: 7 },
            Msg::Hold { room: [7; 16], seat: 5, partner: None },
            Msg::Hold { room: [7; 16], seat: 6, partner: Some(s) },
            Msg::Verdict { seat: 3, verdict: Verdict::Paired(s) },
            Msg::Paired { to: 5, partner: s },
            Msg::Frames { to: 1, from: 2, first: 3, frames: vec![Bytes::from_static(b"{\"a\":1}"), Bytes::new()] },
            Msg::Ack { to: 1, from: 2, next: 3 },
            Msg::Left { to: 1, from: 2, sent: 3 },
            Msg::Leave { room: [9; 16], seat: 2 },
            Msg::Gone { to: 4 },
            Msg::Bye,
        ];
        let mut all: Vec<Envelope> =
            msgs.into_iter().enumerate().map(|(i, msg)| Envelope::Data { seq: i as u64, msg }).collect();
        all.push(Envelope::Hello { from: 1, to: 2, session: 3, addr: "127.0.0.1:7946".into() });
        all.push(Envelope::Welcome { me: 2, next: 10 });
        all.push(Envelope::Ack { next: 11 });
        all.push(Envelope::Beat);
        all
    }

    #[test]
    fn every_record_round_trips() {
        for env in every_kind() {
            assert_eq!(Envelope::decode(env.encode()).ok(), Some(env));
        }
    }

    proptest! {
        /// No byte string panics the parser; a cut record never parses.
        #[test]
        fn garbage_and_cut_records_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..200), cut in 0usize..100) {
            let _ = Envelope::decode(Bytes::from(bytes));
            for env in every_kind() {
                let whole = env.encode();
                if cut < whole.len() {
                    prop_assert!(Envelope::decode(whole.slice(..cut)).is_err());
                }
            }
        }
    }
}
