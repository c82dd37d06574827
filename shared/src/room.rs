//! Room codes: the shared secret-ish name two people type to meet.
//!
//! A room code is 8 to 16 characters of `A-Z` and `0-9`. It is validated once,
//! at the edge, into [`RoomCode`]; everything past that point takes the
//! newtype, so an unvalidated string can never reach the room table.

use regex::Regex;
use std::fmt;
use std::sync::OnceLock;

/// The pattern every room code matches, for documentation and other clients.
pub const ROOM_CODE_PATTERN: &str = "^[A-Z0-9]{8,16}$";

fn pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // The pattern is a constant checked by the unit tests, so this cannot fail at run time.
    #[allow(clippy::expect_used)]
    RE.get_or_init(|| Regex::new(ROOM_CODE_PATTERN).expect("room code pattern compiles"))
}

/// A validated room code.
///
/// `Debug` does not print the code itself: room codes must not end up in logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoomCode(String);

/// A string that is not a valid room code. It carries a description, not the
/// value, so that it can be shown or logged without leaking what was typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("room code must be 8 to 16 characters, only A-Z and 0-9 (got {len} characters{detail})")]
pub struct RoomCodeError {
    len: usize,
    detail: &'static str,
}

impl RoomCode {
    /// Validates `s` against [`ROOM_CODE_PATTERN`].
    ///
    /// # Errors
    /// [`RoomCodeError`] when `s` is too short, too long, or has a character
    /// outside `A-Z0-9` (lower case included: codes are case-sensitive on the wire).
    pub fn parse(s: &str) -> Result<RoomCode, RoomCodeError> {
        if pattern().is_match(s) {
            return Ok(RoomCode(s.to_owned()));
        }
        let len = s.chars().count();
        let detail = if !(8..=16).contains(&len) {
            ""
        } else if s.chars().any(|c| c.is_ascii_lowercase()) {
            ", lower-case letters are not allowed"
        } else {
            ", with a character outside A-Z and 0-9"
        };
        Err(RoomCodeError { len, detail })
    }

    /// The code as typed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RoomCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoomCode(<redacted>)")
    }
}

impl std::str::FromStr for RoomCode {
    type Err = RoomCodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RoomCode::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_rejects() {
        for ok in ["ABCDEFGH", "A1B2C3D4E5F6G7H8", "00000000"] {
            assert_eq!(RoomCode::parse(ok).map(|c| c.as_str().to_owned()), Ok(ok.to_owned()));
        }
        for bad in
            ["", "ABCDEFG", "A1B2C3D4E5F6G7H8X", "abcdefgh", "ABCD EFG", "ABCDEFG\n", "ÄBCDEFGH", "ABCDEFGH\u{0}"]
        {
            assert!(RoomCode::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn debug_and_error_do_not_leak_the_code() {
        let code = RoomCode::parse("SECRET12").map_err(|e| e.to_string());
        assert!(!format!("{code:?}").contains("SECRET12"));
        let err = RoomCode::parse("secret12").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!err.contains("secret12") && err.contains("lower-case"), "{err}");
    }

    proptest! {
        #[test]
        fn never_panics_and_agrees_with_a_plain_check(s in ".{0,40}") {
            let plain = (8..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            prop_assert_eq!(RoomCode::parse(&s).is_ok(), plain);
        }

        #[test]
        fn valid_codes_are_accepted(s in "[A-Z0-9]{8,16}") {
            prop_assert!(RoomCode::parse(&s).is_ok());
        }
    }
}
