//! The client-to-client messages carried inside SIGNAL frames.
//!
//! The relay sees only `{"type":"SIGNAL","kind":...}`; these are the kinds
//! two Ghostwire clients exchange (see docs/PROTOCOL.md, part 2):
//!
//! | kind | fields | version |
//! |---|---|---|
//! | `KEY_COMMIT` | `v`: 2, `commit`: base64 SHA-256 commitment | v2 only |
//! | `KEY_EXCHANGE` | `key`: base64 32-byte X25519 public key; `v`: 2 (absent in v1); `rx`: messages/s the sender takes, `ack`: 1 if it sends and reads receipts (v2, optional) | both |
//! | `MSG` | `payload`: base64 (24-byte nonce ‖ crypto_box) | both |
//! | `PAKE` | `v`: 2, `msg`: base64 SPAKE2 message (33 bytes) | v2, codes with a secret |
//! | `KEY_CONFIRM` | `v`: 2, `mac`: base64 HMAC-SHA256 over the exchange (32 bytes) | v2, codes with a secret |

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ghostwire_shared::frame::Signal;
use ghostwire_shared::ClientFrame;
use serde_json::{json, Map, Value};

/// The longest message a user may send, in characters (the UI refuses longer lines; every
/// frame this client sends then fits the smallest frame limit a relay accepts).
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// The version marker of the hardened protocol.
pub const V2: u64 = 2;

/// A decoded peer message.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerMsg {
    /// v2 commitment to the sender's public key.
    Commit {
        /// SHA-256 commitment.
        commit: [u8; 32],
    },
    /// The sender's public key; `v2` says whether it is marked as the hardened protocol.
    Key {
        /// The key bytes (length checked later, to name the error precisely).
        key: Vec<u8>,
        /// `"v":2` present.
        v2: bool,
        /// Messages per second the sender takes before it calls it a flood, if it says.
        rx: Option<u64>,
        /// The sender sends and reads receipts (`"ack":1`).
        acks: bool,
        /// It resumes over a new connection after a drop (`"resume":1`, [`crate::resume`]).
        resume: bool,
        /// It reads file transfer records (`"files":1`, [`crate::transfer`]).
        files: bool,
    },
    /// RESUME: one side's half of the resume handshake.
    Resume(crate::resume::Hello),
    /// An encrypted message.
    Msg {
        /// nonce ‖ box.
        payload: Vec<u8>,
    },
    /// The sender's SPAKE2 message (length checked by the PAKE).
    Pake {
        /// The message.
        msg: Vec<u8>,
    },
    /// The sender's key confirmation MAC (checked by the PAKE).
    Confirm {
        /// The MAC.
        mac: Vec<u8>,
    },
}

/// Why a SIGNAL from the peer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A kind this client does not know.
    #[error("unknown message kind")]
    UnknownKind,
    /// A field that is missing or not a string/number as required.
    #[error("message field {0:?} missing or of the wrong type")]
    BadField(&'static str),
    /// A field that is not valid base64.
    #[error("message field {0:?} is not valid base64")]
    BadBase64(&'static str),
    /// A commitment that is not 32 bytes.
    #[error("commitment is not 32 bytes")]
    BadCommitLength,
    /// A key or MAC that is not 32 bytes.
    #[error("message field {0:?} is not 32 bytes")]
    BadLength(&'static str),
    /// A version this client does not speak.
    #[error("unsupported protocol version {0}")]
    UnknownVersion(u64),
}

fn field<'a>(fields: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, DecodeError> {
    fields.get(name).and_then(Value::as_str).ok_or(DecodeError::BadField(name))
}

fn b64(fields: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, DecodeError> {
    B64.decode(field(fields, name)?).map_err(|_| DecodeError::BadBase64(name))
}

/// The version marker of a message: `None` when absent.
fn number(fields: &Map<String, Value>, name: &'static str) -> Result<u64, DecodeError> {
    fields.get(name).and_then(Value::as_u64).ok_or(DecodeError::BadField(name))
}

/// An optional `1` flag: absent is off.
fn flag(fields: &Map<String, Value>, name: &'static str) -> Result<bool, DecodeError> {
    match fields.get(name) {
        None => Ok(false),
        Some(v) => Ok(v.as_u64().ok_or(DecodeError::BadField(name))? == 1),
    }
}

fn version(fields: &Map<String, Value>) -> Result<Option<u64>, DecodeError> {
    match fields.get("v") {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(V2) => Ok(Some(V2)),
            Some(n) => Err(DecodeError::UnknownVersion(n)),
            None => Err(DecodeError::BadField("v")),
        },
    }
}

/// Decodes a SIGNAL's kind and fields.
///
/// # Errors
/// A [`DecodeError`] for unknown kinds and malformed fields.
pub fn decode(signal: &Signal) -> Result<PeerMsg, DecodeError> {
    let f = &signal.fields;
    match signal.kind.as_str() {
        "KEY_COMMIT" => {
            if version(f)? != Some(V2) {
                return Err(DecodeError::BadField("v"));
            }
            let commit = b64(f, "commit")?.try_into().map_err(|_| DecodeError::BadCommitLength)?;
            Ok(PeerMsg::Commit { commit })
        }
        "KEY_EXCHANGE" => Ok(PeerMsg::Key {
            v2: version(f)? == Some(V2),
            key: b64(f, "key")?,
            // Unauthenticated, like every field before the keys: a relay that changes it can
            // only make the sender slower, or faster than a peer takes (which ends the session,
            // as dropping it would).
            rx: match f.get("rx") {
                None => None,
                Some(rx) => Some(rx.as_u64().ok_or(DecodeError::BadField("rx"))?),
            },
            acks: flag(f, "ack")?,
            resume: flag(f, "resume")?,
            files: flag(f, "files")?,
        }),
        "RESUME" if version(f)? != Some(V2) => Err(DecodeError::BadField("v")),
        "RESUME" => Ok(PeerMsg::Resume(crate::resume::Hello {
            generation: number(f, "g")?,
            key: b64(f, "key")?.try_into().map_err(|_| DecodeError::BadLength("key"))?,
            received: number(f, "rcv")?,
            mac: b64(f, "mac")?.try_into().map_err(|_| DecodeError::BadLength("mac"))?,
        })),
        "MSG" => Ok(PeerMsg::Msg { payload: b64(f, "payload")? }),
        "PAKE" | "KEY_CONFIRM" if version(f)? != Some(V2) => Err(DecodeError::BadField("v")),
        "PAKE" => Ok(PeerMsg::Pake { msg: b64(f, "msg")? }),
        "KEY_CONFIRM" => Ok(PeerMsg::Confirm { mac: b64(f, "mac")? }),
        _ => Err(DecodeError::UnknownKind),
    }
}

fn frame(kind: &str, fields: &[(&str, Value)]) -> String {
    let fields = fields.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    ClientFrame::Signal(Signal { kind: kind.to_owned(), fields }).to_json()
}

/// `{"type":"SIGNAL","kind":"KEY_COMMIT","commit":...,"v":2}`
pub fn commit_frame(commit: &[u8; 32]) -> String {
    frame("KEY_COMMIT", &[("v", json!(V2)), ("commit", json!(B64.encode(commit)))])
}

/// What the peer may send us before it counts as a flood (messages per second, sustained and
/// burst); the rate is announced in our key as `rx`. The burst covers what a relay hands over at
/// once after holding frames through an upstream blip (its `--peer-queue`, 256).
pub const RECV_RATE: (u32, u32) = (120, 600);

/// `{"type":"SIGNAL","kind":"KEY_EXCHANGE","key":...}`, with `"v":2`, `"rx":N` (the messages
/// per second this client takes from its peer, [`RECV_RATE`]) and `"ack":1` (it sends and reads
/// receipts, [`receipts`](crate::receipts)) and `"files":1` (it reads file transfer records,
/// [`transfer`](crate::transfer)) unless legacy; and `"resume":1` if it resumes
/// after a drop ([`crate::resume`]).
pub fn key_frame(key: &[u8; 32], v2: bool, resume: bool) -> String {
    let key = ("key", json!(B64.encode(key)));
    if !v2 {
        return frame("KEY_EXCHANGE", &[key]);
    }
    let mut fields = vec![key, ("v", json!(V2)), ("rx", json!(RECV_RATE.0)), ("ack", json!(1)), ("files", json!(1))];
    if resume {
        fields.push(("resume", json!(1)));
    }
    frame("KEY_EXCHANGE", &fields)
}

/// `{"type":"SIGNAL","kind":"RESUME","v":2,"g":N,"key":...,"rcv":N,"mac":...}`: our half of
/// the resume handshake.
pub fn resume_frame(hello: &crate::resume::Hello) -> String {
    frame(
        "RESUME",
        &[
            ("v", json!(V2)),
            ("g", json!(hello.generation)),
            ("key", json!(B64.encode(hello.key))),
            ("rcv", json!(hello.received)),
            ("mac", json!(B64.encode(hello.mac))),
        ],
    )
}

/// `{"type":"SIGNAL","kind":"PAKE","v":2,"msg":...}`
pub fn pake_frame(msg: &[u8]) -> String {
    frame("PAKE", &[("v", json!(V2)), ("msg", json!(B64.encode(msg)))])
}

/// `{"type":"SIGNAL","kind":"KEY_CONFIRM","v":2,"mac":...}`
pub fn confirm_frame(mac: &[u8; 32]) -> String {
    frame("KEY_CONFIRM", &[("v", json!(V2)), ("mac", json!(B64.encode(mac)))])
}

/// `{"type":"SIGNAL","kind":"MSG","payload":...}`
pub fn msg_frame(sealed: &[u8]) -> String {
    frame("MSG", &[("payload", json!(B64.encode(sealed)))])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ghostwire_shared::RelayFrame;
    use proptest::prelude::*;

    fn signal_of(text: &str) -> Signal {
        match RelayFrame::parse(text, 1 << 16).unwrap() {
            RelayFrame::Signal(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_round_trip() {
        let k = [7u8; 32];
        assert_eq!(decode(&signal_of(&commit_frame(&k))), Ok(PeerMsg::Commit { commit: k }));
        assert_eq!(
            decode(&signal_of(&key_frame(&k, true, false))),
            Ok(PeerMsg::Key { key: k.to_vec(), v2: true, rx: Some(120), acks: true, resume: false, files: true })
        );
        assert_eq!(
            decode(&signal_of(&key_frame(&k, true, true))),
            Ok(PeerMsg::Key { key: k.to_vec(), v2: true, rx: Some(120), acks: true, resume: true, files: true })
        );
        assert_eq!(
            decode(&signal_of(&key_frame(&k, false, true))),
            Ok(PeerMsg::Key { key: k.to_vec(), v2: false, rx: None, acks: false, resume: false, files: false })
        );
        let hello = crate::resume::Hello { generation: 3, key: k, received: 9, mac: [1; 32] };
        assert_eq!(decode(&signal_of(&resume_frame(&hello))), Ok(PeerMsg::Resume(hello)));
        assert_eq!(decode(&signal_of(&msg_frame(b"abc"))), Ok(PeerMsg::Msg { payload: b"abc".to_vec() }));
        assert_eq!(decode(&signal_of(&pake_frame(b"spake"))), Ok(PeerMsg::Pake { msg: b"spake".to_vec() }));
        assert_eq!(decode(&signal_of(&confirm_frame(&k))), Ok(PeerMsg::Confirm { mac: k.to_vec() }));
        assert_eq!(
            key_frame(&k, false, false),
            r#"{"type":"SIGNAL","kind":"KEY_EXCHANGE","key":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="}"#
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (r#"{"type":"SIGNAL","kind":"FILE_CHUNK"}"#, DecodeError::UnknownKind),
            (r#"{"type":"SIGNAL","kind":"MSG"}"#, DecodeError::BadField("payload")),
            (r#"{"type":"SIGNAL","kind":"MSG","payload":5}"#, DecodeError::BadField("payload")),
            (r#"{"type":"SIGNAL","kind":"MSG","payload":"!!"}"#, DecodeError::BadBase64("payload")),
            (r#"{"type":"SIGNAL","kind":"KEY_EXCHANGE","key":"%%%"}"#, DecodeError::BadBase64("key")),
            (r#"{"type":"SIGNAL","kind":"KEY_EXCHANGE","v":3,"key":"AA=="}"#, DecodeError::UnknownVersion(3)),
            (r#"{"type":"SIGNAL","kind":"KEY_EXCHANGE","v":2,"key":"AA==","rx":"fast"}"#, DecodeError::BadField("rx")),
            (r#"{"type":"SIGNAL","kind":"KEY_COMMIT","commit":"AA=="}"#, DecodeError::BadField("v")),
            (r#"{"type":"SIGNAL","kind":"KEY_COMMIT","v":2,"commit":"AA=="}"#, DecodeError::BadCommitLength),
            (r#"{"type":"SIGNAL","kind":"PAKE","msg":"AA=="}"#, DecodeError::BadField("v")),
            (r#"{"type":"SIGNAL","kind":"KEY_CONFIRM","v":2}"#, DecodeError::BadField("mac")),
            (r#"{"type":"SIGNAL","kind":"RESUME","g":1}"#, DecodeError::BadField("v")),
            (r#"{"type":"SIGNAL","kind":"RESUME","v":2,"g":-1}"#, DecodeError::BadField("g")),
            (r#"{"type":"SIGNAL","kind":"RESUME","v":2,"g":1,"key":"AA=="}"#, DecodeError::BadLength("key")),
        ];
        for (text, err) in cases {
            assert_eq!(decode(&signal_of(text)), Err(err), "{text}");
        }
    }

    proptest! {
        #[test]
        fn decoding_never_panics(kind in prop::sample::select(vec!["MSG", "KEY_EXCHANGE", "KEY_COMMIT", "X"]),
                                 field in prop::sample::select(vec!["payload", "key", "commit", "v"]),
                                 value in prop_oneof![".{0,60}".prop_map(Value::from), any::<i64>().prop_map(Value::from), Just(Value::Null)]) {
            let mut fields = Map::new();
            fields.insert(field.to_owned(), value);
            let _ = decode(&Signal { kind: kind.to_owned(), fields });
        }

        #[test]
        fn relay_frames_never_panic(s in ".{0,300}") {
            if let Ok(RelayFrame::Signal(sig)) = RelayFrame::parse(&s, 1 << 16) {
                let _ = decode(&sig);
            }
        }
    }
}
