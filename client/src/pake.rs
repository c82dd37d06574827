//! The key exchange authenticated by the code's secret: SPAKE2, then key confirmation.
//!
//! Both clients run SPAKE2 in symmetric mode (`spake2` 0.4, Ed25519 group, the construction the
//! Rust magic-wormhole uses) with the secret words as the password and the protocol and room as
//! the identity. The relay sees the two SPAKE2 messages; without the password they are random
//! group elements, and nothing in them lets it test a guess offline. The shared key `K` is equal
//! on both sides only if both used the same password and nobody replaced a message.
//!
//! SPAKE2 gives no key confirmation, and the X25519 keys of the session are exchanged after it,
//! so both are bound here: each side sends `HMAC-SHA256(Kc, "ghostwire confirm v1" ‖ own SPAKE2
//! message ‖ transcript)`, where `Kc = HKDF-SHA256(salt "ghostwire pake v1", ikm K, info
//! "confirm")` and the transcript holds the protocol version, the room, both SPAKE2 messages and
//! both X25519 public keys (each pair in byte order, length-prefixed). A relay that substituted
//! any of them, or a peer with another secret, cannot produce the peer's MAC: the session ends
//! before any message is sent. Every value derived from `K` is wiped on drop.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::Zeroizing;

/// The protocol the transcript and the SPAKE2 identity name.
pub const VERSION: &[u8] = b"ghostwire pake v1";

/// Why the exchange cannot be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PakeError {
    /// The peer's SPAKE2 message is malformed (wrong length or not a group element).
    #[error("the peer's PAKE message is malformed")]
    BadMessage,
}

/// Our half of SPAKE2, before the peer's message.
pub struct Start {
    state: Spake2<Ed25519Group>,
    mine: Vec<u8>,
}

impl Start {
    /// Starts SPAKE2 for `room` with `password` (the normalised secret words).
    pub fn new(room: &str, password: &[u8]) -> Start {
        let id = [VERSION, b" room ", room.as_bytes()].concat();
        let (state, mine) = Spake2::<Ed25519Group>::start_symmetric(&Password::new(password), &Identity::new(&id));
        Start { state, mine }
    }

    /// The message to send the peer.
    pub fn message(&self) -> &[u8] {
        &self.mine
    }

    /// Finishes with the peer's message: the shared key.
    ///
    /// # Errors
    /// [`PakeError::BadMessage`] when the message cannot be a SPAKE2 message.
    pub fn finish(self, theirs: &[u8]) -> Result<Shared, PakeError> {
        let key = self.state.finish(theirs).map_err(|_| PakeError::BadMessage)?;
        Ok(Shared { key: Zeroizing::new(key), mine: self.mine, theirs: theirs.to_vec() })
    }
}

/// SPAKE2 done: the shared key and both messages.
pub struct Shared {
    key: Zeroizing<Vec<u8>>,
    mine: Vec<u8>,
    theirs: Vec<u8>,
}

/// The two confirmation MACs of one side: the one to send and the one to expect.
pub struct Confirm {
    /// Ours, to send.
    pub mine: [u8; 32],
    /// The peer's, as it must be.
    expected: Zeroizing<[u8; 32]>,
}

impl Confirm {
    /// Whether the peer's MAC is the one expected (constant time).
    pub fn check(&self, theirs: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        theirs.len() == 32 && bool::from(theirs.ct_eq(self.expected.as_ref()))
    }
}

impl Shared {
    /// The confirmation MACs over the whole exchange, once the X25519 keys are known.
    pub fn confirm(&self, room: &str, my_key: &[u8; 32], peer_key: &[u8; 32]) -> Confirm {
        let kc = confirm_key(&self.key);
        let t = transcript(room, &self.mine, &self.theirs, my_key, peer_key);
        Confirm { mine: mac(&kc, &self.mine, &t), expected: Zeroizing::new(mac(&kc, &self.theirs, &t)) }
    }
}

/// `Kc = HKDF-SHA256(salt "ghostwire pake v1", ikm K, info "confirm")`.
fn confirm_key(k: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut kc = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
    let _ = Hkdf::<Sha256>::new(Some(VERSION), k).expand(b"confirm", kc.as_mut());
    kc
}

/// The transcript: version, room, both SPAKE2 messages and both public keys, each pair in byte
/// order (the same on both sides), every field length-prefixed (4 bytes, big-endian).
fn transcript(room: &str, pake_a: &[u8], pake_b: &[u8], key_a: &[u8; 32], key_b: &[u8; 32]) -> Vec<u8> {
    let (p1, p2) = if pake_a <= pake_b { (pake_a, pake_b) } else { (pake_b, pake_a) };
    let (k1, k2) = if key_a <= key_b { (key_a, key_b) } else { (key_b, key_a) };
    let mut t = Vec::new();
    for field in [VERSION, room.as_bytes(), p1, p2, k1.as_slice(), k2.as_slice()] {
        t.extend_from_slice(&(field.len() as u32).to_be_bytes());
        t.extend_from_slice(field);
    }
    t
}

/// `HMAC-SHA256(Kc, "ghostwire confirm v1" ‖ sender's SPAKE2 message ‖ transcript)`.
fn mac(kc: &[u8; 32], sender: &[u8], transcript: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(kc).unwrap_or_else(|_| unreachable!("HMAC key of any length"));
    m.update(b"ghostwire confirm v1");
    m.update(&(sender.len() as u32).to_be_bytes());
    m.update(sender);
    m.update(transcript);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn the_same_secret_confirms_on_both_sides() {
        let (a, b) = (Start::new("K7Q2M9XA", b"tulip-cider-lunar"), Start::new("K7Q2M9XA", b"tulip-cider-lunar"));
        let (ma, mb) = (a.message().to_vec(), b.message().to_vec());
        let (sa, sb) = (a.finish(&mb).unwrap(), b.finish(&ma).unwrap());
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        let (ca, cb) = (sa.confirm("K7Q2M9XA", &ka, &kb), sb.confirm("K7Q2M9XA", &kb, &ka));
        assert!(ca.check(&cb.mine) && cb.check(&ca.mine));
        assert_ne!(ca.mine, cb.mine, "the two directions differ: a reflected MAC is refused");
        assert!(!ca.check(&ca.mine));
    }

    #[test]
    fn another_secret_or_another_key_fails() {
        let (a, b) = (Start::new("K7Q2M9XA", b"tulip-cider-lunar"), Start::new("K7Q2M9XA", b"tulip-cider-lunas"));
        let (ma, mb) = (a.message().to_vec(), b.message().to_vec());
        let (sa, sb) = (a.finish(&mb).unwrap(), b.finish(&ma).unwrap());
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        assert!(!sa.confirm("K7Q2M9XA", &ka, &kb).check(&sb.confirm("K7Q2M9XA", &kb, &ka).mine));
        // Same secret, but a relay swapped one public key: the transcripts differ.
        let (a, b) = (Start::new("K7Q2M9XA", b"w-w-w"), Start::new("K7Q2M9XA", b"w-w-w"));
        let (ma, mb) = (a.message().to_vec(), b.message().to_vec());
        let (sa, sb) = (a.finish(&mb).unwrap(), b.finish(&ma).unwrap());
        assert!(!sa.confirm("K7Q2M9XA", &ka, &[9u8; 32]).check(&sb.confirm("K7Q2M9XA", &kb, &ka).mine));
        assert!(Start::new("R", b"x").finish(b"short").is_err());
    }

    /// Test vectors of the key schedule (docs/PROTOCOL.md section 8.2): from a fixed SPAKE2 key,
    /// messages and public keys to `Kc`, the transcript and both MACs.
    #[test]
    fn key_schedule_vectors() {
        let k = [0x11u8; 32];
        let (pa, pb) = ([0xaau8; 33], [0xbbu8; 33]);
        let (ka, kb) = ([0x01u8; 32], [0x02u8; 32]);
        let kc = confirm_key(&k);
        assert_eq!(hex(kc.as_ref()), KC);
        let t = transcript("K7Q2M9XA", &pa, &pb, &ka, &kb);
        assert_eq!(t, transcript("K7Q2M9XA", &pb, &pa, &kb, &ka), "the same from both sides");
        assert_eq!(hex(&Sha256Digest::digest(&t)), T_SHA256);
        assert_eq!(hex(&mac(&kc, &pa, &t)), MAC_A);
        assert_eq!(hex(&mac(&kc, &pb, &t)), MAC_B);
    }

    use sha2::Digest as _;
    type Sha256Digest = Sha256;

    // Computed independently with Python's hmac and hashlib (HKDF written out per RFC 5869).
    const KC: &str = "60674ce3980d4c8693f52bd01d4a58db491ff08728b4e004cc83edc08839c51f";
    const T_SHA256: &str = "aae4c4bf854882f5ab48a0cf187e8991659299e8f0507602440317fdc77cdfa2";
    const MAC_A: &str = "37b24cc24e69b96744c52e42f25d8f908e8699c578a9cb7fa4c777f469e96077";
    const MAC_B: &str = "f5724d395bf7e4a230cc5a23933712901fe8c1009342df3e8505bcd69e0dce4a";
}
