//! Resuming a session over a new connection: where the two sides meet again, and the
//! handshake that proves each is the same peer and gives the channel new keys.
//!
//! No I/O happens here. The state machine keeps a [`Resumption`] for a session whose peer
//! announced resuming (`"resume":1` in its key frame) and uses it after a connection drops.
//!
//! **Where they meet.** Not in the room of the human code, which is never used again: in a
//! *rendezvous room* whose name is derived from the session's first root key. Only the two
//! sides can compute it. A stranger who knows the room code, or the relay, cannot join it
//! except by guessing 82 bits, and the relay needs no memory of the session: a relay that
//! restarted, or another replica behind the load balancer, pairs the two again like any two
//! clients.
//!
//! **The handshake** is Noise's `NNpsk0` in spirit: each side sends a fresh X25519 key under a
//! MAC keyed by a pre-shared key (PSK) that is derived from the session's current root key and
//! the number of the generation it opens. The side with the lower session key opens
//! ([`Resumption::open`]); the other answers ([`Resumption::answer`]), its MAC covering both fresh
//! keys; the opener checks it ([`Resumption::finish`]). The new root key is HKDF over the old
//! root (salt), the fresh X25519 secret, and the transcript (generation, both fresh keys, both
//! receive counters), so every generation has new keys, and whoever lacks the old root can
//! neither answer nor open. A message from an earlier generation carries a MAC under another
//! PSK and fails; a replayed opening makes the answer's MAC (or the first record) fail. Either
//! failure is a [`ResumeError`], which ends the session like any deviation.
//!
//! **One generation of slack.** The answering side has derived the new keys before it knows
//! the opener got the answer. Until a record opens under the new keys it keeps the previous
//! root too ([`Resumption::confirmed`] drops it), and an opening for the generation after
//! either of them is accepted. A drop in the middle of a resume therefore never leaves the
//! two sides a generation apart.
//!
//! Each message also says how many records its sender received (`rcv`), so each side seals
//! again exactly what the other is missing, in order, under the new keys.

use crate::crypto::{CryptoError, KeyPair, PublicBytes};
use ghostwire_shared::RoomCode;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// A root or derived key (wiped on drop).
type Secret = Zeroizing<[u8; 32]>;

/// A resume message: the generation it opens, the sender's fresh key, how many records the
/// sender received, and the MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The generation this resume opens (1 for the first resume of a session).
    pub generation: u64,
    /// The sender's fresh X25519 public key.
    pub key: PublicBytes,
    /// How many of our records the sender has received.
    pub received: u64,
    /// HMAC-SHA-256 under the generation's PSK.
    pub mac: [u8; 32],
}

/// Why a resume message was refused: every one ends the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// The MAC does not verify: the sender does not hold the session's key, or the message is
    /// from another generation or another attempt (a replay).
    #[error("a resume failed authentication: it was replayed, or sent by someone without the session key")]
    BadMac,
    /// An opening for a generation we cannot be at.
    #[error("a resume named a generation this session is not at (a replay of an old one)")]
    Generation,
    /// The fresh key is ours, zero or of low order.
    #[error("a resume carried a weak or reflected key")]
    Key(CryptoError),
    /// The opener received an opening (both sides think they open), or the answerer an answer.
    #[error("both sides tried to open the resume")]
    Role,
}

/// The keys of a new generation, and where the peer is in our records.
pub struct NewKeys {
    /// The key the channel seals and opens with from now on.
    pub key: Secret,
    /// How many of our records the peer has received: we seal again from there.
    pub peer_received: u64,
}

/// An opening sent and not answered yet: the fresh key pair, kept until the answer.
pub struct Opening {
    keys: KeyPair,
    hello: Hello,
}

/// What a session keeps to be resumed: its current root key and generation, and where the two
/// sides meet.
pub struct Resumption {
    root: Secret,
    generation: u64,
    /// The answering side's root before its last resume, until a record proves the opener
    /// reached the same generation.
    previous: Option<Secret>,
    room: RoomCode,
    opener: bool,
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else { return [0; 32] };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> Secret {
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA-256's limit of 8,160.
    let _ = Hkdf::<Sha256>::new(Some(salt), ikm).expand_multi_info(info, out.as_mut_slice());
    out
}

/// The name of the rendezvous room for a session with root key `root`: 16 characters of
/// `A-Z0-9` (a valid room code, 82 bits).
fn rendezvous(root: &[u8; 32]) -> Option<RoomCode> {
    const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let digest = hmac(root, &[b"ghostwire/v2/resume/room"]);
    let mut n = u128::from_be_bytes(digest[..16].try_into().unwrap_or([0; 16]));
    let name: String = (0..16)
        .map(|_| {
            let c = ALPHABET[(n % 36) as usize] as char;
            n /= 36;
            c
        })
        .collect();
    // 16 characters of the alphabet always make a valid room code.
    RoomCode::parse(&name).ok()
}

impl Resumption {
    /// What a session keeps to resume, from the X25519 secret of its key exchange and the two
    /// public keys (the transcript). (`None` cannot happen: the room name is always valid.)
    pub fn new(shared: &[u8; 32], mine: &PublicBytes, peer: &PublicBytes) -> Option<Resumption> {
        let (lo, hi) = if mine < peer { (mine, peer) } else { (peer, mine) };
        let root = hkdf(b"ghostwire/v2/root", shared, &[lo, hi]);
        let room = rendezvous(&root)?;
        Some(Resumption { root, generation: 0, previous: None, room, opener: mine < peer })
    }

    /// The rendezvous room, the same for every resume of the session.
    pub fn room(&self) -> &RoomCode {
        &self.room
    }

    /// Whether this side opens resumes (the lower session key).
    pub fn opener(&self) -> bool {
        self.opener
    }

    /// The generation the channel is at.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A record opened under the current keys: the peer is at this generation too.
    pub fn confirmed(&mut self) {
        self.previous = None;
    }

    /// Opens a resume, saying we received `received` records. Only the opener calls this.
    pub fn open(&self, received: u64) -> Opening {
        let keys = KeyPair::generate();
        let generation = self.generation + 1;
        let key = *keys.public();
        let mac = opening_mac(&psk(&self.root, generation), generation, &key, received);
        Opening { keys, hello: Hello { generation, key, received, mac } }
    }

    /// Answers the peer's opening, saying we received `received` records: the answer to send
    /// and the new keys. The resumption moves to the new generation at once, keeping the
    /// previous root until [`Resumption::confirmed`].
    ///
    /// # Errors
    /// A [`ResumeError`]: the session must end.
    pub fn answer(&mut self, opening: &Hello, received: u64) -> Result<(Hello, NewKeys), ResumeError> {
        if self.opener {
            return Err(ResumeError::Role);
        }
        // The opener is at our generation, or (if it never got our last answer) at the one before.
        let candidates =
            [Some((self.generation, &self.root)), self.previous.as_ref().map(|p| (self.generation - 1, p))];
        let mut base = None;
        let mut generation_known = false;
        for (g, root) in candidates.into_iter().flatten() {
            if opening.generation == g + 1 {
                generation_known = true;
                let mac =
                    opening_mac(&psk(root, opening.generation), opening.generation, &opening.key, opening.received);
                if bool::from(subtle::ConstantTimeEq::ct_eq(&mac[..], &opening.mac[..])) {
                    base = Some(Zeroizing::new(**root));
                }
            }
        }
        let base = match (base, generation_known) {
            (Some(base), _) => base,
            (None, true) => return Err(ResumeError::BadMac),
            (None, false) => return Err(ResumeError::Generation),
        };
        let generation = opening.generation;
        let keys = KeyPair::generate();
        let shared = keys.shared(&opening.key).map_err(ResumeError::Key)?;
        let key = *keys.public();
        let psk = psk(&base, generation);
        let mac = answer_mac(&psk, generation, &opening.key, &key, received);
        let (root, channel_key) = next_root(&base, &shared, generation, &opening.key, &key, opening.received, received);
        self.previous = Some(base);
        self.root = root;
        self.generation = generation;
        let answer = Hello { generation, key, received, mac };
        Ok((answer, NewKeys { key: channel_key, peer_received: opening.received }))
    }

    /// Checks the peer's answer to our `opening` and moves to the new generation.
    ///
    /// # Errors
    /// A [`ResumeError`]: the session must end.
    pub fn finish(&mut self, opening: Opening, answer: &Hello) -> Result<NewKeys, ResumeError> {
        if !self.opener {
            return Err(ResumeError::Role);
        }
        let mine = &opening.hello;
        if answer.generation != mine.generation {
            return Err(ResumeError::Generation);
        }
        let psk = psk(&self.root, mine.generation);
        let expected = answer_mac(&psk, mine.generation, &mine.key, &answer.key, answer.received);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &answer.mac[..])) {
            return Err(ResumeError::BadMac);
        }
        let shared = opening.keys.shared(&answer.key).map_err(ResumeError::Key)?;
        let (root, channel_key) =
            next_root(&self.root, &shared, mine.generation, &mine.key, &answer.key, mine.received, answer.received);
        self.root = root;
        self.generation = mine.generation;
        self.previous = None;
        Ok(NewKeys { key: channel_key, peer_received: answer.received })
    }
}

impl Opening {
    /// The message to send.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }
}

/// The PSK of generation `generation` under `root`.
fn psk(root: &[u8; 32], generation: u64) -> Secret {
    hkdf(root, b"", &[b"ghostwire/v2/resume/psk", &generation.to_be_bytes()])
}

fn opening_mac(psk: &[u8; 32], generation: u64, key: &PublicBytes, received: u64) -> [u8; 32] {
    hmac(psk, &[b"ghostwire/v2/resume/open", &generation.to_be_bytes(), key, &received.to_be_bytes()])
}

fn answer_mac(psk: &[u8; 32], generation: u64, opener: &PublicBytes, key: &PublicBytes, received: u64) -> [u8; 32] {
    hmac(psk, &[b"ghostwire/v2/resume/answer", &generation.to_be_bytes(), opener, key, &received.to_be_bytes()])
}

/// The root key of the new generation, and the channel key derived from it.
fn next_root(
    root: &[u8; 32],
    shared: &[u8; 32],
    generation: u64,
    opener: &PublicBytes,
    answerer: &PublicBytes,
    opener_received: u64,
    answerer_received: u64,
) -> (Secret, Secret) {
    let next = hkdf(
        root,
        shared,
        &[
            b"ghostwire/v2/resume/root",
            &generation.to_be_bytes(),
            opener,
            answerer,
            &opener_received.to_be_bytes(),
            &answerer_received.to_be_bytes(),
        ],
    );
    let key = hkdf(&next[..], b"", &[b"ghostwire/v2/resume/channel"]);
    (next, key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Two sides of one session: (opener, answerer).
    fn session() -> (Resumption, Resumption) {
        let (a, b) = (KeyPair::generate(), KeyPair::generate());
        let shared = a.shared(b.public()).unwrap();
        let ra = Resumption::new(&shared, a.public(), b.public()).unwrap();
        let rb = Resumption::new(&b.shared(a.public()).unwrap(), b.public(), a.public()).unwrap();
        if ra.opener() {
            (ra, rb)
        } else {
            (rb, ra)
        }
    }

    fn resume(o: &mut Resumption, a: &mut Resumption) -> (NewKeys, NewKeys) {
        let opening = o.open(5);
        let (answer, ka) = a.answer(opening.hello(), 7).unwrap();
        let ko = o.finish(opening, &answer).unwrap();
        (ko, ka)
    }

    #[test]
    fn both_sides_meet_in_the_same_room_and_agree_new_keys_each_generation() {
        let (mut o, mut a) = session();
        assert!(!a.opener());
        assert_eq!(o.room(), a.room());
        let (k1o, k1a) = resume(&mut o, &mut a);
        assert_eq!(*k1o.key, *k1a.key);
        assert_eq!((k1o.peer_received, k1a.peer_received), (7, 5));
        a.confirmed();
        let (k2o, k2a) = resume(&mut o, &mut a);
        assert_eq!(*k2o.key, *k2a.key);
        assert_ne!(*k1o.key, *k2o.key, "each generation has new keys");
        assert_eq!((o.generation(), a.generation()), (2, 2));
        assert_eq!(o.room(), a.room(), "the room stays: a side a generation behind still finds it");
    }

    #[test]
    fn another_session_cannot_resume_this_one() {
        let (o, _) = session();
        let (_, mut stranger) = session();
        let opening = o.open(0);
        assert_eq!(stranger.answer(opening.hello(), 0).err(), Some(ResumeError::BadMac));
        let (o2, _) = session();
        assert_ne!(o.room(), o2.room());
    }

    #[test]
    fn an_opening_from_an_earlier_generation_is_refused() {
        let (mut o, mut a) = session();
        let old = o.open(0);
        let old_hello = old.hello().clone();
        let (answer, _) = a.answer(&old_hello, 0).unwrap();
        o.finish(old, &answer).unwrap();
        a.confirmed();
        resume(&mut o, &mut a);
        a.confirmed();
        // The first generation's opening, replayed at generation 2.
        assert_eq!(a.answer(&old_hello, 0).err(), Some(ResumeError::Generation));
    }

    #[test]
    fn a_replayed_opening_makes_the_answer_fail_for_the_opener() {
        let (mut o, mut a) = session();
        let first = o.open(0);
        let replayed = first.hello().clone();
        drop(first);
        // The opener tries again; the relay delivers the first attempt's opening instead.
        let second = o.open(0);
        let (answer, _) = a.answer(&replayed, 0).unwrap();
        assert_eq!(o.finish(second, &answer).err(), Some(ResumeError::BadMac));
    }

    #[test]
    fn a_changed_field_fails_the_mac() {
        let (o, mut a) = session();
        let opening = o.open(3);
        let mut forged = opening.hello().clone();
        forged.received = 0;
        assert_eq!(a.answer(&forged, 0).err(), Some(ResumeError::BadMac));
    }

    #[test]
    fn an_answer_lost_in_a_drop_leaves_no_side_a_generation_apart() {
        let (mut o, mut a) = session();
        // The answerer moves to generation 1; its answer never reaches the opener.
        let lost = o.open(0);
        a.answer(lost.hello(), 0).unwrap();
        drop(lost);
        // The opener, still at 0, opens generation 1 again: accepted against the previous root.
        let (ko, ka) = resume(&mut o, &mut a);
        assert_eq!(*ko.key, *ka.key);
        // The opener got the answer this time but its first record was lost: it opens
        // generation 2 from the new root, which the answerer has not confirmed yet.
        let (ko, ka) = resume(&mut o, &mut a);
        assert_eq!(*ko.key, *ka.key);
        assert_eq!((o.generation(), a.generation()), (2, 2));
    }

    #[test]
    fn only_the_opener_opens_and_only_the_answerer_answers() {
        let (mut o, mut a) = session();
        let opening = o.open(0);
        assert_eq!(o.answer(opening.hello(), 0).err(), Some(ResumeError::Role));
        let mine = a.open(0);
        let (answer, _) = {
            let (mut o2, mut a2) = session();
            let op = o2.open(0);
            let r = a2.answer(op.hello(), 0).unwrap();
            let _ = o2.finish(op, &r.0);
            r
        };
        assert_eq!(a.finish(mine, &answer).err(), Some(ResumeError::Role));
    }
}
