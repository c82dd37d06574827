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
use crate::json::{self, JsonError};
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
    /// `{"type":"BURN"}`: the code of the room this connection is paired in is about to be
    /// tested (the sender's key confirmation follows), so the relay must refuse the room from
    /// now on. Sent only to a relay that announced it ([`FEATURES_HEADER`]).
    Burn,
}

/// The HTTP header of the WebSocket upgrade answer in which a relay lists what it supports
/// beyond the prototype's protocol, comma-separated. A client sends `BURN` only to a relay that
/// lists [`FEATURE_BURN`]: an older relay would close the connection on an unknown type.
pub const FEATURES_HEADER: &str = "ghostwire-features";
/// The feature name for the `BURN` frame.
pub const FEATURE_BURN: &str = "burn";

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

/// Reads a client frame the way the relay does: validates that it is one JSON
/// object and extracts its `type`, plus `room` (JOIN) or `kind` (SIGNAL).
///
/// The reading is [`crate::json`]'s, one pass and no allocation for the frames
/// clients send; it decides exactly as serde_json would (the tests compare them).
///
/// # Errors
/// A [`FrameError`] naming the first rule the frame breaks.
pub fn inspect(text: &str) -> Result<Inbound<'_>, FrameError> {
    let fields = json::read_object(text)?;
    let ty = fields.ty.string("type")?;
    let kind = fields.kind.string("kind")?;
    let room = fields.room.string("room")?;
    match ty.as_deref() {
        None => Err(FrameError::MissingType),
        Some("JOIN") => {
            let room = room.ok_or(FrameError::BadField("JOIN needs \"room\"".into()))?;
            Ok(Inbound::Join(RoomCode::parse(&room)?))
        }
        Some("SIGNAL") => match kind {
            Some(kind) if !kind.is_empty() && kind.len() <= MAX_KIND_BYTES => Ok(Inbound::Signal { kind }),
            _ => Err(FrameError::BadKind),
        },
        Some("BURN") => Ok(Inbound::Burn),
        Some("PEER_FOUND" | "PEER_LEFT" | "ERROR") => Err(FrameError::RelayOnlyType),
        Some(_) => Err(FrameError::UnknownType),
    }
}

impl From<JsonError> for FrameError {
    fn from(e: JsonError) -> FrameError {
        match e {
            JsonError::Syntax => FrameError::NotAnObject,
            JsonError::Duplicate(name) => FrameError::BadField(format!("duplicate field `{name}`")),
            JsonError::NotAString(name) => FrameError::BadField(format!("\"{name}\" must be a string")),
        }
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
    /// Tell the relay to refuse this room from now on (see [`Inbound::Burn`]).
    Burn,
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
        assert_eq!(inspect(&ClientFrame::Burn.to_json()), Ok(Inbound::Burn));
        assert_eq!(ClientFrame::Burn.to_json(), r#"{"type":"BURN"}"#);
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

    /// The relay's reading as it was before `crate::json`, through serde_json's derive: the oracle
    /// that `inspect` must agree with, decision for decision.
    fn serde_inspect(text: &str) -> Result<Inbound<'_>, ErrorCode> {
        #[derive(Deserialize)]
        struct Envelope<'a> {
            #[serde(rename = "type", borrow)]
            ty: Option<Cow<'a, str>>,
            #[serde(borrow)]
            kind: Option<Cow<'a, str>>,
            #[serde(borrow)]
            room: Option<Cow<'a, str>>,
        }
        if !text.trim_start().starts_with('{') {
            return Err(ErrorCode::Malformed);
        }
        let env: Envelope<'_> = serde_json::from_str(text).map_err(|_| ErrorCode::Malformed)?;
        match env.ty.as_deref() {
            None => Err(ErrorCode::Malformed),
            Some("JOIN") => {
                let room = env.room.ok_or(ErrorCode::Malformed)?;
                RoomCode::parse(&room).map(Inbound::Join).map_err(|_| ErrorCode::BadRoomCode)
            }
            Some("SIGNAL") => match env.kind {
                Some(kind) if !kind.is_empty() && kind.len() <= MAX_KIND_BYTES => Ok(Inbound::Signal { kind }),
                _ => Err(ErrorCode::Malformed),
            },
            Some("BURN") => Ok(Inbound::Burn),
            Some("PEER_FOUND" | "PEER_LEFT" | "ERROR") => Err(ErrorCode::OutOfOrder),
            Some(_) => Err(ErrorCode::Malformed),
        }
    }

    fn agrees_with_serde(text: &str) -> Result<(), TestCaseError> {
        prop_assert_eq!(inspect(text).map_err(|e| e.code()), serde_inspect(text), "{:?}", text);
        Ok(())
    }

    fn assert_agrees_with_serde(text: &str) {
        assert_eq!(inspect(text).map_err(|e| e.code()), serde_inspect(text), "{text:?}");
    }

    #[test]
    fn inspect_agrees_with_serde_json_on_the_edges_of_the_grammar() {
        let values = [
            "0",
            "-0",
            "01",
            "-",
            "1.",
            "1.5",
            ".5",
            "1e",
            "1e+",
            "1E-7",
            "1e5x",
            "-01",
            "2.0e+10",
            "1x",
            "true",
            "tru",
            "truex",
            "false",
            "null",
            "nul",
            "None",
            "[]",
            "[ ]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{}",
            "{ }",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "{\"a\":}",
            "[[[[[]]]]]",
            "[[[[[]]]]",
            "\"\"",
            "\"\\u00e9\"",
            "\"\\u00G9\"",
            "\"\\u12\"",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud83d\\n\"",
            "\"\\ud83d\\u0041\"",
            "\"a\tb\"",
            "\"a\u{1}b\"",
            "\"\u{7f}\"",
            "\"\\/\"",
            "\"é漢😀\"",
            "'x'",
            "\"unterminated",
        ];
        let keys = ["type", "kind", "room", "payload", "t\\u0079pe", "k\\u0069nd", "\\ud800", "p\\u0061yload"];
        for v in values {
            for key in keys {
                assert_agrees_with_serde(&format!("{{\"{key}\":{v}}}"));
                assert_agrees_with_serde(&format!("{{\"type\":\"SIGNAL\",\"kind\":\"MSG\",\"{key}\":{v}}}"));
                assert_agrees_with_serde(&format!("{{\"type\":\"JOIN\",\"room\":\"ALPHA123\",\"{key}\":{v}}}"));
            }
            assert_agrees_with_serde(v);
        }
        for ws in [" ", "\t", "\n", "\r", "\u{c}", "\u{a0}", "\u{feff}", "\u{2028}", ""] {
            assert_agrees_with_serde(&format!(
                "{ws}{{{ws}\"type\"{ws}:{ws}\"SIGNAL\"{ws},{ws}\"kind\":\"M\"{ws}}}{ws}"
            ));
        }
        let deep = format!("{{\"type\":\"SIGNAL\",\"kind\":\"MSG\",\"p\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
        assert_agrees_with_serde(&deep);
        assert!(inspect(&deep).is_ok(), "skipped values nest to any depth, as with serde_json");
    }

    /// JSON text with the relay's three fields among others, escapes, surrogates and nesting.
    fn json_value() -> impl Strategy<Value = String> {
        let string = "\"([a-zA-Z0-9 é漢]|\\\\[\"\\\\/bfnrtx]|\\\\u[0-9a-fA-F]{4}|\\\\ud83d\\\\ude00|\\\\ud800)*\"";
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
            string,
            prop::sample::select(vec!["\"JOIN\"", "\"SIGNAL\"", "\"MSG\"", "\"ALPHA123\"", "\"PEER_LEFT\"", "\"\""])
                .prop_map(str::to_owned),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((json_key(), inner), 0..4).prop_map(|m| {
                    format!("{{{}}}", m.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(","))
                }),
            ]
        })
    }

    fn json_key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "\"type\"",
                "\"kind\"",
                "\"room\"",
                "\"t\\u0079pe\"",
                "\"payload\"",
                "\"\\ud800\""
            ])
            .prop_map(str::to_owned),
            "\"[a-z]{1,4}\"",
        ]
    }

    /// Mostly frames the relay accepts (a SIGNAL or a JOIN, with other members around its own in
    /// any order), so that a wrong decision shows as a different outcome, not one more refusal.
    fn json_frame() -> impl Strategy<Value = String> {
        let own = prop::sample::select(vec![
            vec!["\"type\":\"SIGNAL\"", "\"kind\":\"MSG\""],
            vec!["\"type\":\"JOIN\"", "\"room\":\"ALPHA123\""],
            vec!["\"t\\u0079pe\":\"SIGNAL\"", "\"kind\":\"K\\u00e9\""],
            vec!["\"type\":\"PEER_FOUND\""],
        ]);
        let others = prop::collection::vec((json_key(), json_value()).prop_map(|(k, v)| format!("{k}:{v}")), 0..4);
        (own, others, any::<u64>()).prop_map(|(own, mut members, seed)| {
            for (n, m) in own.into_iter().enumerate() {
                let at = (seed >> (8 * n)) as usize % (members.len() + 1);
                members.insert(at, m.to_owned());
            }
            format!("{{{}}}", members.join(","))
        })
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
        fn inspect_agrees_with_serde_json_on_any_text(s in "\\PC{0,120}") {
            agrees_with_serde(&s)?;
        }

        #[test]
        fn inspect_agrees_with_serde_json_on_json_and_its_near_misses(
            frame in json_frame(),
            at in any::<prop::sample::Index>(),
            c in prop::sample::select(vec!['"', '\\', ',', ':', '{', '}', '[', ']', ' ', 'a', '0', '\u{1}']),
        ) {
            agrees_with_serde(&frame)?;
            let cut = frame.char_indices().map(|(i, _)| i).nth(at.index(frame.chars().count().max(1))).unwrap_or(0);
            agrees_with_serde(&frame[..cut])?;
            agrees_with_serde(&format!("{}{c}{}", &frame[..cut], &frame[cut..]))?;
            let mut rest = frame[cut..].chars();
            rest.next();
            agrees_with_serde(&format!("{}{}", &frame[..cut], rest.as_str()))?;
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
