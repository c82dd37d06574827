//! The end-to-end cryptography: ephemeral keys, the commit-then-reveal key
//! exchange, the verification code and the message boxes.
//!
//! Everything here is pure computation over bytes (no I/O), so each rule is
//! tested directly. The primitives are NaCl's: X25519 and crypto_box
//! (XSalsa20-Poly1305) with a random 24-byte nonce prepended to the ciphertext,
//! as the prototype did. On top of it the hardened protocol (v2, the default)
//! adds, inside the box:
//!
//! * a **direction** byte and a **counter**, so a replayed, reordered, dropped
//!   or reflected message is caught (crypto_box's key is the same in both
//!   directions, so a relay that bounces your own frame back would otherwise
//!   have it decrypt fine);
//! * a **record kind**: a text, or one of the [`Notice`]s (finished sending,
//!   goodbye, codes differ) by which a peer says how the conversation ends,
//!   where the relay cannot forge or hide them;
//! * **padding** to 256-byte buckets, so the length of a message leaks only
//!   its bucket.
//!
//! Before any key is revealed each side sends a commitment (SHA-256 of its
//! public key) and reveals only after receiving the other's: a relay in the
//! middle must commit to its substitute keys before it learns the real ones,
//! so it cannot grind keys to make the two verification codes match (the ZRTP
//! argument). Its chance per attempt is 1 in 10^10, and a failed attempt is
//! visible to the users.
//!
//! Secrets: the long-lived secret is x25519-dalek's `StaticSecret`, wiped on
//! drop. crypto_box 0.9's `SecretKey` wipes only its scalar on drop, so one is
//! made only inside [`KeyPair::agree`] to derive the box key and dropped at
//! once; the box (`SalsaBox`) wipes its key on drop. Plaintext lives in
//! `Zeroizing` buffers. Rust may leave copies of moved values on the stack;
//! the client also locks its memory and disables core dumps (see `harden`).

use crypto_box::aead::{Aead, AeadCore, OsRng};
use crypto_box::SalsaBox;
use crypto_secretbox::{KeyInit, XSalsa20Poly1305};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use zeroize::Zeroizing;

/// Plaintext is padded to a multiple of this many bytes (v2).
pub const PAD_BUCKET: usize = 256;
/// Bytes of the v2 header inside the box: direction (1), counter (8), record kind (1), length (2).
const HEADER: usize = 12;
/// The largest plaintext of a record that is not a file chunk (a line of 1,000 characters
/// pads to at most 4 KiB): a peer cannot pass other records off as bulk.
pub const SMALL_MAX: usize = 8 * 1024;
/// The NaCl nonce length.
pub const NONCE_LEN: usize = 24;
/// The Poly1305 tag length.
const TAG_LEN: usize = 16;

/// A public key as it travels: 32 bytes.
pub type PublicBytes = [u8; 32];

/// Which protocol the session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The prototype's format: KEY_EXCHANGE with just `key`; MSG plaintext is the UTF-8 text.
    Legacy1,
    /// The hardened format (commitment, direction, counter, padding), marked `"v":2`.
    Hardened2,
}

/// Why a key or a message was refused. Each is its own reason to end the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A key that is not 32 bytes.
    #[error("the peer's key is not 32 bytes")]
    BadKeyLength,
    /// The peer's key equals ours (a reflected key exchange).
    #[error("the peer's key is our own key: the key exchange was reflected")]
    ReflectedKey,
    /// An all-zero or low-order key, which would make the shared secret predictable.
    #[error("the peer's key is weak (zero or low order)")]
    WeakKey,
    /// The revealed key does not match the commitment.
    #[error("the peer's key does not match its commitment: someone changed it in transit")]
    CommitMismatch,
    /// The box did not open: tampered with, or encrypted under another key.
    #[error("a message failed authentication: it was tampered with or forged")]
    Tampered,
    /// A message we have already received.
    #[error("a message was replayed")]
    Replay,
    /// A message we sent ourselves, sent back to us.
    #[error("our own message was reflected back to us")]
    Reflection,
    /// A counter ahead of the next expected one: a message was dropped or reordered.
    #[error("a message is missing or out of order")]
    OutOfOrder,
    /// The box opened but its content is not a valid padded message.
    #[error("a message's content is malformed")]
    BadContent,
    /// The box is too short to hold a nonce and a tag.
    #[error("a message is too short to be a box")]
    Truncated,
}

impl CryptoError {
    /// Whether this is an attack on the session (as opposed to a peer that speaks the protocol badly).
    pub fn is_security(self) -> bool {
        !matches!(self, CryptoError::BadKeyLength | CryptoError::BadContent | CryptoError::Truncated)
    }
}

/// This session's ephemeral key pair.
pub struct KeyPair {
    secret: x25519_dalek::StaticSecret,
    public: PublicBytes,
}

impl KeyPair {
    /// A fresh key pair from the operating system's CSPRNG.
    pub fn generate() -> KeyPair {
        let secret = x25519_dalek::StaticSecret::random_from_rng(OsRng);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        KeyPair { secret, public }
    }

    /// A key pair from fixed secret bytes (test vectors only).
    pub fn from_secret(bytes: [u8; 32]) -> KeyPair {
        let secret = x25519_dalek::StaticSecret::from(bytes);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        KeyPair { secret, public }
    }

    /// Our public key.
    pub fn public(&self) -> &PublicBytes {
        &self.public
    }

    /// The commitment to our public key that v2 sends before revealing it.
    pub fn commitment(&self) -> [u8; 32] {
        commitment(&self.public)
    }

    /// Checks the peer's key and derives the shared box (crypto_box_beforenm).
    ///
    /// # Errors
    /// [`CryptoError::ReflectedKey`] for our own key, [`CryptoError::WeakKey`] for a low-order one.
    pub fn agree(&self, peer: &PublicBytes) -> Result<SalsaBox, CryptoError> {
        self.check(peer)?;
        let secret = Zeroizing::new(self.secret.to_bytes());
        let sk = crypto_box::SecretKey::from_bytes(*secret);
        Ok(SalsaBox::new(&crypto_box::PublicKey::from_bytes(*peer), &sk))
    }

    /// Checks the peer's key and returns the raw X25519 shared secret (for a key schedule that
    /// hashes it with the transcript; never used as a key as it is).
    ///
    /// # Errors
    /// As [`KeyPair::agree`].
    pub fn shared(&self, peer: &PublicBytes) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        self.check(peer)?;
        let dh = self.secret.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
        Ok(Zeroizing::new(dh.to_bytes()))
    }

    fn check(&self, peer: &PublicBytes) -> Result<(), CryptoError> {
        if peer == &self.public {
            return Err(CryptoError::ReflectedKey);
        }
        if is_low_order(peer) {
            return Err(CryptoError::WeakKey);
        }
        Ok(())
    }
}

/// Whether `u` is a low-order point (or zero): X25519 with any scalar that is a multiple of the
/// cofactor maps exactly those points to zero. The scalar is public; no secret is involved.
fn is_low_order(u: &PublicBytes) -> bool {
    // A clamped scalar (a multiple of 8 below 2^255 with bit 254 set), fixed and public.
    let mut k = [0x55u8; 32];
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    x25519_dalek::x25519(k, *u) == [0u8; 32]
}

/// SHA-256 commitment to a public key, domain-separated.
pub fn commitment(public: &PublicBytes) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ghostwire/v2/commit\0");
    h.update(public);
    h.finalize().into()
}

/// The verification code both users compare: 10 digits derived from both public keys
/// (in a fixed order, so both sides compute the same code), shown as `12345 67890`.
pub fn verification_code(a: &PublicBytes, b: &PublicBytes) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha256::new();
    h.update(b"ghostwire/v2/verification\0");
    h.update(lo);
    h.update(hi);
    let d = h.finalize();
    let n = u64::from_be_bytes([0, 0, 0, d[0], d[1], d[2], d[3], d[4]]) % 10_000_000_000;
    format!("{:05} {:05}", n / 100_000, n % 100_000)
}

/// What a peer says about the conversation itself, inside the encrypted channel (v2 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// "I have nothing more to say" (end of input); the peer keeps reading.
    Done,
    /// "I am leaving" (/quit, Ctrl-C, Ctrl-D at a terminal).
    Bye,
    /// "The verification codes differ" (/mismatch).
    Mismatch,
}

impl Notice {
    const fn kind(self) -> u8 {
        match self {
            Notice::Done => 1,
            Notice::Bye => 2,
            Notice::Mismatch => 3,
        }
    }
}

/// A record opened from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// A message to show.
    Text(Zeroizing<String>),
    /// A notice about the conversation.
    Notice(Notice),
    /// A receipt: every record we numbered below this one reached the peer.
    Ack(u64),
    /// A record of a file transfer ([`crate::transfer`]).
    File(crate::transfer::FileRecord),
}

/// Record kind of a text message (v2).
const TEXT: u8 = 0;
/// Record kind of a receipt (v2, with a peer that announced them): an 8-byte record number.
const ACK: u8 = 4;

/// The authenticated cipher of a channel: XSalsa20-Poly1305 either way, keyed by crypto_box's
/// X25519 (the first generation, as the prototype did) or by a key from the resume schedule
/// (every later generation; see [`crate::resume`]). The wire format is the same.
enum Cipher {
    Box(SalsaBox),
    Secret(XSalsa20Poly1305),
}

impl Cipher {
    fn encrypt(&self, nonce: &crypto_box::Nonce, plain: &[u8]) -> Vec<u8> {
        // Encryption of an in-memory buffer with a valid key and nonce cannot fail.
        match self {
            Cipher::Box(b) => b.encrypt(nonce, plain).unwrap_or_default(),
            Cipher::Secret(s) => s.encrypt(nonce, plain).unwrap_or_default(),
        }
    }

    fn decrypt(&self, nonce: &[u8], ct: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self {
            Cipher::Box(b) => b.decrypt(nonce.into(), ct),
            Cipher::Secret(s) => s.decrypt(nonce.into(), ct),
        }
        .map_err(|_| CryptoError::Tampered)
    }
}

/// The two halves of an established session: one box, a counter per direction.
pub struct Channel {
    boxed: Cipher,
    version: Version,
    /// v2: the direction byte we put in what we send; the peer's is the other one.
    my_direction: u8,
    sent: u64,
    expected: u64,
    /// v1 only (v2 has counters): nonces we sent (reflection) and received (replay).
    sent_nonces: HashSet<[u8; NONCE_LEN]>,
    seen_nonces: HashSet<[u8; NONCE_LEN]>,
}

impl Channel {
    /// A channel over `boxed` between `mine` and `peer` public keys.
    pub fn new(boxed: SalsaBox, version: Version, mine: &PublicBytes, peer: &PublicBytes) -> Channel {
        Channel {
            boxed: Cipher::Box(boxed),
            version,
            my_direction: if mine < peer { 1 } else { 2 },
            sent: 0,
            expected: 0,
            sent_nonces: HashSet::new(),
            seen_nonces: HashSet::new(),
        }
    }

    /// Encrypts `text`: nonce || box(content).
    pub fn seal(&mut self, text: &str) -> Vec<u8> {
        self.seal_record(TEXT, text)
    }

    /// Encrypts a notice (v2; `None` in v1, which has no way to say it).
    pub fn seal_notice(&mut self, notice: Notice) -> Option<Vec<u8>> {
        (self.version == Version::Hardened2).then(|| self.seal_record(notice.kind(), ""))
    }

    /// Encrypts a receipt for every record received so far (v2 only; `None` in v1).
    pub fn seal_ack(&mut self) -> Option<Vec<u8>> {
        let next = self.expected.to_be_bytes();
        (self.version == Version::Hardened2).then(|| self.seal_bytes(ACK, &next))
    }

    /// Encrypts the body of a file transfer's record of `kind` (v2 only). A chunk fills its own size class,
    /// [`CHUNK_PLAIN`](crate::transfer::CHUNK_PLAIN) bytes, whatever it holds; every other
    /// record pads like a line.
    pub fn seal_file(&mut self, kind: u8, body: &[u8]) -> Option<Vec<u8>> {
        (self.version == Version::Hardened2).then(|| self.seal_body(kind, body))
    }

    /// Encrypts `body` as a record of `kind`, padded to its size class.
    pub fn seal_body(&mut self, kind: u8, body: &[u8]) -> Vec<u8> {
        self.seal_bytes(kind, body)
    }

    /// The number the next record we seal will carry (how many we sealed so far).
    pub fn sealed(&self) -> u64 {
        self.sent
    }

    /// The number of the next record we expect from the peer (how many we opened so far).
    pub fn received(&self) -> u64 {
        self.expected
    }

    /// Whether we are the lower of the two keys (direction 1): the side that opens a resume.
    pub fn first(&self) -> bool {
        self.my_direction == 1
    }

    /// A resume: from now on records are sealed and opened with `key`, and the next record we
    /// seal is number `next` (the first one the peer has not received). The caller checks that
    /// `next` is honest and seals again what the peer missed.
    pub fn rekey(&mut self, key: &[u8; 32], next: u64) {
        self.boxed = Cipher::Secret(XSalsa20Poly1305::new(key.into()));
        self.sent = next;
    }

    fn seal_record(&mut self, kind: u8, text: &str) -> Vec<u8> {
        self.seal_bytes(kind, text.as_bytes())
    }

    fn seal_bytes(&mut self, kind: u8, text: &[u8]) -> Vec<u8> {
        let content = match self.version {
            Version::Legacy1 => Zeroizing::new(text.to_vec()),
            Version::Hardened2 => {
                let mut buf = Zeroizing::new(Vec::with_capacity(padded_len(text.len())));
                buf.push(self.my_direction);
                buf.extend_from_slice(&self.sent.to_be_bytes());
                buf.push(kind);
                // Texts are at most a few KiB (the UI caps them); the length field holds 65,535.
                buf.extend_from_slice(&(text.len().min(u16::MAX as usize) as u16).to_be_bytes());
                buf.extend_from_slice(text);
                buf.resize(class_len(kind, text.len()), 0);
                buf
            }
        };
        self.sent += 1;
        let nonce = SalsaBox::generate_nonce(&mut OsRng);
        if self.version == Version::Legacy1 {
            self.sent_nonces.insert(nonce.into());
        }
        let ct = self.boxed.encrypt(&nonce, content.as_slice());
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts and checks a box from the peer, returning what it holds.
    ///
    /// # Errors
    /// The [`CryptoError`] naming what is wrong with it.
    pub fn open(&mut self, data: &[u8]) -> Result<Record, CryptoError> {
        if data.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Truncated);
        }
        let (nonce, ct) = data.split_at(NONCE_LEN);
        let nonce_arr: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Truncated)?;
        if self.version == Version::Legacy1 {
            if self.sent_nonces.contains(&nonce_arr) {
                return Err(CryptoError::Reflection);
            }
            if self.seen_nonces.contains(&nonce_arr) {
                return Err(CryptoError::Replay);
            }
        }
        let plain = Zeroizing::new(self.boxed.decrypt(nonce, ct)?);
        let (kind, text) = match self.version {
            Version::Legacy1 => {
                self.seen_nonces.insert(nonce_arr);
                (TEXT, std::str::from_utf8(&plain).map_err(|_| CryptoError::BadContent)?)
            }
            Version::Hardened2 => {
                if plain.len() < HEADER || plain.len() % PAD_BUCKET != 0 {
                    return Err(CryptoError::BadContent);
                }
                // Each record in its size class: a chunk fills its own, anything else is short.
                let chunk = plain[9] == crate::transfer::CHUNK_KIND;
                if chunk != (plain.len() == crate::transfer::CHUNK_PLAIN) || (!chunk && plain.len() > SMALL_MAX) {
                    return Err(CryptoError::BadContent);
                }
                if plain[0] == self.my_direction {
                    return Err(CryptoError::Reflection);
                }
                if plain[0] != 3 - self.my_direction {
                    return Err(CryptoError::BadContent);
                }
                let mut ctr = [0u8; 8];
                ctr.copy_from_slice(&plain[1..9]);
                let counter = u64::from_be_bytes(ctr);
                if counter < self.expected {
                    return Err(CryptoError::Replay);
                }
                if counter > self.expected {
                    return Err(CryptoError::OutOfOrder);
                }
                let len = u16::from_be_bytes([plain[10], plain[11]]) as usize;
                let body = plain.get(HEADER..HEADER + len).ok_or(CryptoError::BadContent)?;
                if plain[HEADER + len..].iter().any(|b| *b != 0) {
                    return Err(CryptoError::BadContent);
                }
                self.expected += 1;
                if plain[9] == ACK {
                    let next: [u8; 8] = body.try_into().map_err(|_| CryptoError::BadContent)?;
                    return Ok(Record::Ack(u64::from_be_bytes(next)));
                }
                if (crate::transfer::FIRST_KIND..=crate::transfer::LAST_KIND).contains(&plain[9]) {
                    let record =
                        crate::transfer::FileRecord::decode(plain[9], body).map_err(|_| CryptoError::BadContent)?;
                    return Ok(Record::File(record));
                }
                (plain[9], std::str::from_utf8(body).map_err(|_| CryptoError::BadContent)?)
            }
        };
        let notice = |n: Notice| if text.is_empty() { Ok(Record::Notice(n)) } else { Err(CryptoError::BadContent) };
        match kind {
            TEXT => Ok(Record::Text(Zeroizing::new(text.to_owned()))),
            1 => notice(Notice::Done),
            2 => notice(Notice::Bye),
            3 => notice(Notice::Mismatch),
            _ => Err(CryptoError::BadContent),
        }
    }
}

/// The padded size of a v2 plaintext holding `text_len` bytes of text.
pub fn padded_len(text_len: usize) -> usize {
    (HEADER + text_len).div_ceil(PAD_BUCKET) * PAD_BUCKET
}

/// The padded size of a v2 plaintext of `kind` holding `len` bytes: a chunk's class, or the
/// line buckets.
fn class_len(kind: u8, len: usize) -> usize {
    if kind == crate::transfer::CHUNK_KIND {
        crate::transfer::CHUNK_PLAIN
    } else {
        padded_len(len)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn arr(s: &str) -> [u8; 32] {
        hex(s).try_into().unwrap()
    }

    // RFC 7748 §6.1 key pairs, which NaCl's box test vectors also use (alicesk, bobpk).
    const ALICE_SK: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PK: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const BOB_SK: &str = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
    const BOB_PK: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";

    #[test]
    fn a_receipt_is_a_record_of_the_same_size_as_a_short_line() {
        let (mut a, mut b) = pair(Version::Hardened2);
        let line = a.seal("hello");
        assert_eq!(b.open(&line).unwrap(), Record::Text(Zeroizing::new("hello".into())));
        let ack = b.seal_ack().unwrap();
        assert_eq!(ack.len(), line.len(), "a receipt cannot be told from a line by its size");
        assert_eq!(a.open(&ack).unwrap(), Record::Ack(1));
        // A receipt replayed is a replay like any record.
        assert_eq!(a.open(&ack), Err(CryptoError::Replay));
        let (mut v1, _) = pair(Version::Legacy1);
        assert_eq!(v1.seal_ack(), None, "v1 has no receipts");
    }

    /// Every chunk is one size on the wire, full or not; a transfer's other records are the
    /// size of a short line; a record that is not a chunk may not be bulk.
    #[test]
    fn file_records_keep_their_size_classes() {
        use crate::transfer::{FileRecord, CHUNK, CHUNK_KIND};
        let (mut a, mut b) = pair(Version::Hardened2);
        let seal = |a: &mut Channel, r: &FileRecord| a.seal_file(r.kind(), &r.encode()).unwrap();
        let small = FileRecord::Chunk { id: 1, data: Zeroizing::new(vec![7; 3]) };
        let full = FileRecord::Chunk { id: 1, data: Zeroizing::new(vec![7; CHUNK]) };
        let (s, f) = (seal(&mut a, &small), seal(&mut a, &full));
        assert_eq!(s.len(), f.len(), "a short last chunk looks like any other");
        assert_eq!(b.open(&s).unwrap(), Record::File(small));
        assert_eq!(b.open(&f).unwrap(), Record::File(full));
        let accept = seal(&mut a, &FileRecord::Accept(1));
        assert_eq!(accept.len(), a.seal("hi").len(), "an answer looks like a short line");
        assert!(b.open(&accept).is_ok());
        // A text record of bulk size is refused (only chunks may be bulk).
        let (mut a, mut b) = pair(Version::Hardened2);
        let bulk = a.seal_body(TEXT, &[b'x'; SMALL_MAX]);
        assert_eq!(b.open(&bulk), Err(CryptoError::BadContent));
        assert_eq!(a.seal_file(CHUNK_KIND, &[0; 4]).map(|c| c.len()), Some(f.len()));
        let (mut v1, _) = pair(Version::Legacy1);
        assert_eq!(v1.seal_file(CHUNK_KIND, &[0; 4]), None, "v1 has no files");
    }

    /// The largest frame this client sends, a SIGNAL carrying the longest line of the widest
    /// characters (v2 and legacy v1), fits the smallest `--max-frame-bytes` a relay accepts.
    #[test]
    fn the_largest_frame_fits_the_smallest_frame_limit_a_relay_accepts() {
        let widest = "😀".repeat(crate::proto::MAX_MESSAGE_CHARS);
        for version in [Version::Hardened2, Version::Legacy1] {
            let (mut a, _) = pair(version);
            let frame = crate::proto::msg_frame(&a.seal(&widest));
            assert!(frame.len() <= ghostwire_shared::MIN_MAX_FRAME_BYTES, "{version:?}: {} bytes", frame.len());
            assert!(frame.len() > ghostwire_shared::MIN_MAX_FRAME_BYTES / 2, "the limit stays close to what is sent");
        }
    }

    #[test]
    fn rfc7748_public_keys() {
        assert_eq!(KeyPair::from_secret(arr(ALICE_SK)).public(), &arr(ALICE_PK));
        assert_eq!(KeyPair::from_secret(arr(BOB_SK)).public(), &arr(BOB_PK));
    }

    /// NaCl's `tests/box.c` / `box2.c` vector (also in libsodium's test suite): alicesk + bobpk,
    /// this nonce and 131-byte message give this 147-byte box; bobsk + alicepk open it.
    #[test]
    fn nacl_box_known_answer() {
        let nonce = hex("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37");
        let m = hex(concat!(
            "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffc",
            "e5ecbaaf33bd751a1ac728d45e6c61296cdc3c01233561f41db66cce314adb31",
            "0e3be8250c46f06dceea3a7fa1348057e2f6556ad6b1318a024a838f21af1fde",
            "048977eb48f59ffd4924ca1c60902e52f0a089bc76897040e082f93776384864",
            "5e0705"
        ));
        let c = hex(concat!(
            "f3ffc7703f9400e52a7dfb4b3d3305d98e993b9f48681273c29650ba32fc76ce",
            "48332ea7164d96a4476fb8c531a1186ac0dfc17c98dce87b4da7f011ec48c972",
            "71d2c20f9b928fe2270d6fb863d51738b48eeee314a7cc8ab932164548e526ae",
            "90224368517acfeabd6bb3732bc0e9da99832b61ca01b6de56244a9e88d5f9b3",
            "7973f622a43d14a6599b1f654cb45a74e355a5"
        ));
        let alice = KeyPair::from_secret(arr(ALICE_SK));
        let bob = KeyPair::from_secret(arr(BOB_SK));
        let sealed = alice.agree(&arr(BOB_PK)).unwrap().encrypt(nonce.as_slice().into(), m.as_slice()).unwrap();
        assert_eq!(sealed, c);
        let opened = bob.agree(&arr(ALICE_PK)).unwrap().decrypt(nonce.as_slice().into(), c.as_slice()).unwrap();
        assert_eq!(opened, m);
    }

    /// The low-order points of Curve25519 (libsodium's blacklist), each refused as a peer key.
    #[test]
    fn low_order_keys_are_refused() {
        let me = KeyPair::generate();
        let p_minus_1 = {
            let mut k = [0xffu8; 32];
            k[0] = 0xec;
            k[31] = 0x7f;
            k
        };
        let mut order8_a = arr("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        let order8_b = arr("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157");
        let mut one = [0u8; 32];
        one[0] = 1;
        for k in [[0u8; 32], one, order8_a, order8_b, p_minus_1] {
            assert_eq!(me.agree(&k).err(), Some(CryptoError::WeakKey), "{k:02x?}");
        }
        order8_a[31] |= 0x80; // the same point with the ignored top bit set
        assert_eq!(me.agree(&order8_a).err(), Some(CryptoError::WeakKey));
        assert_eq!(me.agree(me.public()).err(), Some(CryptoError::ReflectedKey));
        assert!(me.agree(&arr(BOB_PK)).is_ok());
    }

    fn text_of(s: &str) -> Record {
        Record::Text(Zeroizing::new(s.to_owned()))
    }

    fn pair(version: Version) -> (Channel, Channel) {
        let (a, b) = (KeyPair::generate(), KeyPair::generate());
        let ca = Channel::new(a.agree(b.public()).unwrap(), version, a.public(), b.public());
        let cb = Channel::new(b.agree(a.public()).unwrap(), version, b.public(), a.public());
        (ca, cb)
    }

    #[test]
    fn v2_round_trip_and_padding_hides_length() {
        let (mut a, mut b) = pair(Version::Hardened2);
        for text in ["", "hi", "héllo 👻", &"x".repeat(1000), &"ü".repeat(1000)] {
            let sealed = a.seal(text);
            assert_eq!((sealed.len() - NONCE_LEN - TAG_LEN) % PAD_BUCKET, 0);
            assert_eq!(b.open(&sealed).unwrap(), text_of(text));
        }
        assert_eq!(a.seal("a").len(), a.seal(&"a".repeat(200)).len(), "same bucket, same size");
        let reply = b.seal("back");
        assert_eq!(a.open(&reply).unwrap(), text_of("back"));
    }

    #[test]
    fn v2_catches_replay_reflection_reorder_drop_and_tamper() {
        let (mut a, mut b) = pair(Version::Hardened2);
        let m0 = a.seal("zero");
        let m1 = a.seal("one");
        let m2 = a.seal("two");
        // Reflection: our own message sent back to us decrypts under the shared key, but is refused.
        assert_eq!(a.open(&m0).err(), Some(CryptoError::Reflection));
        // Reorder / drop: m1 before m0.
        assert_eq!(b.open(&m1).err(), Some(CryptoError::OutOfOrder));
        assert_eq!(b.open(&m0).unwrap(), text_of("zero"));
        // Replay.
        assert_eq!(b.open(&m0).err(), Some(CryptoError::Replay));
        // Tamper: any flipped bit.
        let mut bad = m1.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(b.open(&bad).err(), Some(CryptoError::Tampered));
        let mut bad = m1.clone();
        bad[0] ^= 1; // the nonce
        assert_eq!(b.open(&bad).err(), Some(CryptoError::Tampered));
        assert_eq!(b.open(&m1[..20]).err(), Some(CryptoError::Truncated));
        assert_eq!(b.open(&m1).unwrap(), text_of("one"));
        assert_eq!(b.open(&m2).unwrap(), text_of("two"));
        // A box from a third party (another key) does not open.
        let (mut c, _) = pair(Version::Hardened2);
        assert_eq!(b.open(&c.seal("forged")).err(), Some(CryptoError::Tampered));
    }

    #[test]
    fn v2_notices_travel_in_the_counted_sequence_and_look_like_texts() {
        let (mut a, mut b) = pair(Version::Hardened2);
        let short = pair(Version::Hardened2).0.seal("x").len();
        let mut sent = Vec::new();
        for n in [Notice::Done, Notice::Bye, Notice::Mismatch] {
            let sealed = a.seal_notice(n).unwrap();
            assert_eq!(sealed.len(), short, "a notice is the size of a short text");
            assert_eq!(b.open(&sealed).unwrap(), Record::Notice(n));
            sent.push(sealed);
        }
        assert_eq!(b.open(&sent[0]).err(), Some(CryptoError::Replay), "notices are counted like texts");
        assert_eq!(b.open(&a.seal("after")).unwrap(), text_of("after"));
        let (mut v1, _) = pair(Version::Legacy1);
        assert_eq!(v1.seal_notice(Notice::Bye), None, "v1 cannot say it");
    }

    #[test]
    fn v1_is_the_prototype_format_and_still_refuses_replay_and_reflection() {
        let (mut a, mut b) = pair(Version::Legacy1);
        let m = a.seal("hello");
        assert_eq!(m.len(), NONCE_LEN + TAG_LEN + 5, "v1 plaintext is the UTF-8 text, unpadded");
        assert_eq!(a.open(&m).err(), Some(CryptoError::Reflection));
        assert_eq!(b.open(&m).unwrap(), text_of("hello"));
        assert_eq!(b.open(&m).err(), Some(CryptoError::Replay));
    }

    #[test]
    fn commitment_and_verification_code_vectors() {
        // Test vectors for docs/PROTOCOL.md (RFC 7748 keys), computed independently with Python's hashlib.
        let (a, b) = (arr(ALICE_PK), arr(BOB_PK));
        let hexs = |x: [u8; 32]| x.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hexs(commitment(&a)), "bf8f0f1a687988b08484fd0bb3d8c85f578594a4f391fd948cf24137e4a832d4");
        let code = verification_code(&a, &b);
        assert_eq!(code, verification_code(&b, &a), "both sides compute the same code");
        assert_eq!(code, "05423 22108");
    }
}
