//! The JSON frames of the protocol.
//!
//! Two views of the same bytes live here:
//!
//! * [`inspect`] is the relay's view of a client frame. The relay is blind: it
//!   reads `type` (and `room` for JOIN, `kind` for SIGNAL), checks the frame is
//!   one well-formed JSON object, and keeps nothing else. It borrows from the
//!   frame text, so forwarding a SIGNAL costs one parse and no copy; the relay
//!   forwards the original text, never a re-serialisation.
//! * [`ClientFrame`] and [`RelayFrame`] are the typed frames, split by
//!   direction, that a client builds and decodes. A SIGNAL keeps every field
//!   besides `type` and `kind` as opaque JSON.

use crate::code::ErrorCode;
use crate::room::{RoomCode, RoomCodeError};
use crate::MAX_KIND_BYTES;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// PEER_FOUND as the relay sends it (equal to `RelayFrame::PeerFound.to_json()`).
pub const PEER_FOUND_JSON: &str = r#"{"type":"PEER_FOUND"}"#;
/// PEER_LEFT as the relay sends it (equal to `RelayFrame::PeerLeft.to_json()`).
pub const PEER_LEFT_JSON: &str = r#"{"type":"PEER_LEFT"}"#;

/// What the relay needs to know about a frame a client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// `{"type":"JOIN","room":CODE}`.
    Join(RoomCode),
    /// `{"type":"SIGNAL","kind":KIND,...}`; everything else in it is opaque.
    Signal {
        /// The SIGNAL's kind, 1 to 64 bytes.
        kind: Cow<'a, str>,
    },
}

/// Why a frame was refused. Each maps to exactly one [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame is not a JSON object (bad JSON, an array, a number...).
    #[error("not a JSON object")]
    NotAnObject,
    /// The frame is a JSON object but a field has the wrong JSON type, or a key repeats.
    #[error("invalid field: {0}")]
    BadField(String),
    /// No `type` field.
    #[error("missing \"type\"")]
    MissingType,
    /// A `type` the protocol does not have.
    #[error("unknown type")]
    UnknownType,
    /// A type only the relay may send (PEER_FOUND, PEER_LEFT, ERROR).
    #[error("type reserved for the relay")]
    RelayOnlyType,
    /// A SIGNAL without a `kind` of 1 to 64 bytes.
    #[error("SIGNAL needs a \"kind\" of 1 to {MAX_KIND_BYTES} bytes")]
    BadKind,
    /// A JOIN whose room code is missing or invalid.
    #[error(transparent)]
    BadRoomCode(#[from] RoomCodeError),
    /// A binary WebSocket frame (the protocol is text only).
    #[error("binary frames are not part of the protocol")]
    Binary,
    /// A frame over the size limit.
    #[error("frame larger than {0} bytes")]
    TooLarge(usize),
}

impl FrameError {
    /// The wire code the relay answers this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::NotAnObject
            | FrameError::BadField(_)
            | FrameError::MissingType
            | FrameError::UnknownType
            | FrameError::BadKind
            | FrameError::Binary => ErrorCode::Malformed,
            FrameError::RelayOnlyType => ErrorCode::OutOfOrder,
            FrameError::BadRoomCode(_) => ErrorCode::BadRoomCode,
            FrameError::TooLarge(_) => ErrorCode::TooLarge,
        }
    }
}

/// The fields the relay looks at; serde skips every other field unread.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
}

/// Reads a client frame the way the relay does: validates that it is one JSON
/// object and extracts its `type`, plus `room` (JOIN) or `kind` (SIGNAL).
///
/// # Errors
/// A [`FrameError`] naming the first rule the frame breaks.
pub fn inspect(text: &str) -> Result<Inbound<'_>, FrameError> {
    // serde's derived struct visitor also accepts a JSON array; the protocol does not.
    if !text.trim_start().starts_with('{') {
        return Err(FrameError::NotAnObject);
    }
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => FrameError::BadField(strip_position(&e)),
        _ => FrameError::NotAnObject,
    })?;
    match env.ty.as_deref() {
        None => Err(FrameError::MissingType),
        Some("JOIN") => {
            let room = env.room.ok_or(FrameError::BadField("JOIN needs \"room\"".into()))?;
            Ok(Inbound::Join(RoomCode::parse(&room)?))
        }
        Some("SIGNAL") => match env.kind {
            Some(kind) if !kind.is_empty() && kind.len() <= MAX_KIND_BYTES => Ok(Inbound::Signal { kind }),
            _ => Err(FrameError::BadKind),
        },
        Some("PEER_FOUND" | "PEER_LEFT" | "ERROR") => Err(FrameError::RelayOnlyType),
        Some(_) => Err(FrameError::UnknownType),
    }
}

/// serde_json's message without "at line 1 column 9", which says nothing to a peer.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// A SIGNAL's content: its `kind` and every other field, opaque.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// What the two clients agreed this SIGNAL is (KEY_EXCHANGE, MSG, ...).
    pub kind: String,
    /// All other fields, as the sender wrote them.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A frame a client sends to the relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientFrame {
    /// Join a room; must be the first frame.
    Join {
        /// The room code, validated.
        room: RoomCode,
    },
    /// A frame for the other peer, forwarded verbatim.
    Signal(Signal),
}

/// A frame the relay sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RelayFrame {
    /// A second peer joined: both are told, then SIGNALs flow.
    PeerFound,
    /// A SIGNAL the other peer sent.
    Signal(Signal),
    /// The other peer is gone; the room is freed.
    PeerLeft,
    /// The relay refuses something; the connection closes with the same code.
    Error {
        /// The numeric code, as in [`ErrorCode`] (a client should accept codes it does not know).
        code: u16,
        /// A short human-readable reason.
        reason: String,
    },
}

impl ClientFrame {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every key is a string and every value is JSON.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl RelayFrame {
    /// The ERROR frame for `code`, with its standard reason.
    pub fn error(code: ErrorCode) -> RelayFrame {
        RelayFrame::Error { code: code.as_u16(), reason: code.reason().to_owned() }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes a frame received from the relay, refusing anything over `max_bytes`.
    ///
    /// # Errors
    /// [`FrameError`] if the text is too large or not one of the relay's frames.
    pub fn parse(text: &str, max_bytes: usize) -> Result<RelayFrame, FrameError> {
        if text.len() > max_bytes {
            return Err(FrameError::TooLarge(max_bytes));
        }
        if !text.trim_start().starts_with('{') {
            return Err(FrameError::NotAnObject);
        }
        serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => FrameError::BadField(strip_position(&e)),
            _ => FrameError::NotAnObject,
        })
    }
}

impl Serialize for RoomCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RoomCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        RoomCode::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn room(s: &str) -> RoomCode {
        RoomCode::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn golden_json_per_variant() {
        let join = ClientFrame::Join { room: room("ALPHA123") };
        assert_eq!(join.to_json(), r#"{"type":"JOIN","room":"ALPHA123"}"#);
        let mut fields = serde_json::Map::new();
        fields.insert("key".into(), json!("AAAA"));
        let sig = Signal { kind: "KEY_EXCHANGE".into(), fields };
        assert_eq!(
            ClientFrame::Signal(sig.clone()).to_json(),
            r#"{"type":"SIGNAL","kind":"KEY_EXCHANGE","key":"AAAA"}"#
        );
        assert_eq!(RelayFrame::PeerFound.to_json(), PEER_FOUND_JSON);
        assert_eq!(RelayFrame::PeerLeft.to_json(), PEER_LEFT_JSON);
        assert_eq!(
            RelayFrame::error(ErrorCode::RoomFull).to_json(),
            r#"{"type":"ERROR","code":4002,"reason":"room full"}"#
        );
        let back = RelayFrame::parse(r#"{"type":"SIGNAL","kind":"KEY_EXCHANGE","key":"AAAA"}"#, 1024);
        assert_eq!(back, Ok(RelayFrame::Signal(sig)));
    }

    #[test]
    fn inspect_accepts_the_protocol() {
        assert_eq!(inspect(r#"{"type":"JOIN","room":"ALPHA123"}"#), Ok(Inbound::Join(room("ALPHA123"))));
        assert_eq!(
            inspect(r#" {"payload":{"x":[1,2]},"kind":"MSG","type":"SIGNAL"}"#),
            Ok(Inbound::Signal { kind: "MSG".into() })
        );
    }

    #[test]
    fn inspect_maps_each_deviation_to_its_code() {
        let cases: &[(&str, ErrorCode)] = &[
            ("not json", ErrorCode::Malformed),
            ("[\"SIGNAL\",\"MSG\",null]", ErrorCode::Malformed),
            ("42", ErrorCode::Malformed),
            ("{\"type\":\"SIGNAL\"", ErrorCode::Malformed),
            ("{}", ErrorCode::Malformed),
            ("{\"type\":7}", ErrorCode::Malformed),
            ("{\"type\":\"HELLO\"}", ErrorCode::Malformed),
            ("{\"type\":\"SIGNAL\"}", ErrorCode::Malformed),
            ("{\"type\":\"SIGNAL\",\"kind\":\"\"}", ErrorCode::Malformed),
            ("{\"type\":\"SIGNAL\",\"kind\":5}", ErrorCode::Malformed),
            ("{\"type\":\"SIGNAL\",\"type\":\"JOIN\",\"kind\":\"MSG\"}", ErrorCode::Malformed),
            ("{\"type\":\"JOIN\"}", ErrorCode::Malformed),
            ("{\"type\":\"JOIN\",\"room\":\"short\"}", ErrorCode::BadRoomCode),
            ("{\"type\":\"PEER_FOUND\"}", ErrorCode::OutOfOrder),
            ("{\"type\":\"ERROR\",\"code\":1}", ErrorCode::OutOfOrder),
            ("{\"type\":\"SIGNAL\",\"kind\":\"MSG\"} trailing", ErrorCode::Malformed),
        ];
        for (text, code) in cases {
            assert_eq!(inspect(text).map_err(|e| e.code()).err(), Some(*code), "{text}");
        }
        let long_kind = format!("{{\"type\":\"SIGNAL\",\"kind\":\"{}\"}}", "K".repeat(MAX_KIND_BYTES + 1));
        assert_eq!(inspect(&long_kind).err(), Some(FrameError::BadKind));
    }

    proptest! {
        #[test]
        fn inspect_never_panics(s in ".{0,200}") {
            let _ = inspect(&s);
            let _ = RelayFrame::parse(&s, 100);
        }

        #[test]
        fn inspect_never_panics_on_json_like_input(
            ty in prop::sample::select(vec!["JOIN", "SIGNAL", "PEER_FOUND", "X", ""]),
            key in "[a-z]{1,6}",
            val in prop_oneof![Just("null".to_owned()), "[0-9]{1,5}", "\"[A-Z0-9]{0,20}\"", Just("{}".to_owned())],
        ) {
            let text = format!("{{\"type\":\"{ty}\",\"{key}\":{val}}}");
            let _ = inspect(&text);
            let _ = RelayFrame::parse(&text, 1 << 16);
        }

        #[test]
        fn every_signal_round_trips(kind in "[A-Z_]{1,20}", v in "\\PC{0,50}") {
            let mut fields = serde_json::Map::new();
            fields.insert("payload".into(), json!(v));
            let frame = ClientFrame::Signal(Signal { kind: kind.clone(), fields });
            let text = frame.to_json();
            prop_assert_eq!(inspect(&text), Ok(Inbound::Signal { kind: kind.into() }));
        }
    }
}
