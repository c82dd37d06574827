//! Authentication of what relays leave on a broker, so that the broker is a dumb pipe.
//!
//! A managed NATS or Kafka is someone else's machine: whoever can publish there could pair a
//! waiting client with a seat of their own, inject frames, announce departures or fill a room's
//! slots. Every message and record a relay writes therefore carries a tag: a keyed hash under a key
//! derived from the cluster secret, 128 bits, over where the message is (its subject,
//! or its topic and key, or its slot's key) and what it says (its bytes, which name the sending
//! relay and seat). A reader checks the tag before it looks at anything else, and drops and
//! counts (`ghostwire_upstream_forged_total`) whatever fails. Without the secret, a broker can
//! still delay and drop, which reads as an outage; it cannot make a message that a relay acts on.
//!
//! The MAC is keyed BLAKE3 (the `blake3` crate, SIMD on x86): a tag covers a whole batch of
//! frames, so its cost is per byte, and BLAKE3 is several times faster per byte than
//! HMAC-SHA256 there (which cost NATS 14% of its frames per second in the cross-relay
//! benchmark; docs/PROTOCOL.md has the figures). The key is derived from the cluster secret
//! with BLAKE3's own key derivation under a context of its own, separate from the room id key,
//! so a leaked room id key does not forge messages and a tag says nothing about room ids.

use subtle::ConstantTimeEq;

/// Bytes of a tag.
pub const TAG: usize = 16;

/// The key every relay of one room space shares for tagging broker traffic.
#[derive(Clone)]
pub struct BrokerKey {
    mac: blake3::Hasher,
}

impl std::fmt::Debug for BrokerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerKey(..)")
    }
}

impl BrokerKey {
    /// The key for `broker` (`"nats"`, `"kafka"`) derived from the cluster secret.
    pub fn derive(secret: &[u8], broker: &str) -> BrokerKey {
        let context = format!("ghostwire broker v1 message key {broker}");
        let key = zeroize::Zeroizing::new(blake3::derive_key(&context, secret));
        BrokerKey { mac: blake3::Hasher::new_keyed(&key) }
    }

    /// The tag of `body` at `place` (each part length-prefixed, so no two lists of parts give
    /// the same input).
    pub fn tag(&self, place: &[&[u8]], body: &[u8]) -> [u8; TAG] {
        let mut mac = self.mac.clone();
        for part in place.iter().chain(std::iter::once(&body)) {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        let mut tag = [0u8; TAG];
        mac.finalize_xof().fill(&mut tag);
        tag
    }

    /// `body ‖ tag`.
    pub fn seal(&self, place: &[&[u8]], body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + TAG);
        out.extend_from_slice(body);
        out.extend_from_slice(&self.tag(place, body));
        out
    }

    /// The length of the body of `sealed` if its tag is right for `place` (constant time).
    pub fn open_len(&self, place: &[&[u8]], sealed: &[u8]) -> Option<usize> {
        let n = sealed.len().checked_sub(TAG)?;
        let (body, tag) = sealed.split_at(n);
        bool::from(self.tag(place, body).ct_eq(tag)).then_some(n)
    }

    /// The body of `sealed` if its tag is right for `place`.
    pub fn open<'a>(&self, place: &[&[u8]], sealed: &'a [u8]) -> Option<&'a [u8]> {
        self.open_len(place, sealed).map(|n| &sealed[..n])
    }

    /// Like [`open`](Self::open), for `Bytes`: the body as a slice of the same buffer.
    pub fn open_bytes(&self, place: &[&[u8]], sealed: bytes::Bytes) -> Option<bytes::Bytes> {
        self.open_len(place, &sealed).map(|n| sealed.slice(..n))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_tag_binds_key_place_and_body() {
        let k = BrokerKey::derive(b"test-cluster-secret-0123456789", "nats");
        let sealed = k.seal(&[b"msg", b"gw.seat.a.f.b"], b"frames");
        assert_eq!(k.open(&[b"msg", b"gw.seat.a.f.b"], &sealed), Some(&b"frames"[..]));
        assert_eq!(k.open(&[b"msg", b"gw.seat.a.l.b"], &sealed), None, "spliced to another subject");
        assert_eq!(k.open(&[b"msg", b"gw.seat.a.f", b".b"], &sealed), None, "parts are framed");
        let other = BrokerKey::derive(b"another-secret-0123456789", "nats");
        assert_eq!(other.open(&[b"msg", b"gw.seat.a.f.b"], &sealed), None, "another secret");
        let kafka = BrokerKey::derive(b"test-cluster-secret-0123456789", "kafka");
        assert_eq!(kafka.open(&[b"msg", b"gw.seat.a.f.b"], &sealed), None, "another broker's key");
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert_eq!(k.open(&[b"msg", b"gw.seat.a.f.b"], &flipped), None, "a changed body");
        assert_eq!(k.open(&[b"msg"], &sealed[..TAG - 1]), None, "shorter than a tag");
        assert_eq!(k.open(&[b"e"], &k.seal(&[b"e"], b"")), Some(&b""[..]), "an empty body");
    }
}
