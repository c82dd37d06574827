//! Why a session ended, what the user is told, and the exit code for each class of reason.
//!
//! Every ending has its own variant and message, so that what the user reads is what really
//! happened: a peer that said goodbye is not a peer that was lost, and a relay shutting down is
//! not a full room. The relay's error and close codes map to messages in one table,
//! [`relay_says`].

use crate::crypto::CryptoError;
use ghostwire_shared::ErrorCode;
use std::fmt;

/// Exit codes, one per class of reason (documented in README and docs/PROTOCOL.md).
pub mod exit {
    /// The conversation ended normally and everything typed was sent.
    pub const OK: u8 = 0;
    /// The conversation ended normally, but some lines typed or piped in were not sent
    /// (each is reported on stderr).
    pub const UNSENT: u8 = 1;
    /// Bad input: an invalid room code, URL, CA file or flag (clap also exits 2 for bad flags).
    pub const BAD_INPUT: u8 = 2;
    /// The relay could not be reached, refused us, or the connection to the peer was lost.
    pub const NETWORK: u8 = 3;
    /// The peer or relay broke the protocol (unexpected frame, unknown kind, bad encoding, flood, version).
    pub const PROTOCOL: u8 = 4;
    /// An attack was detected: tampering, replay, reflection, reordering, a weak or swapped key,
    /// or a user reported that the verification codes differ.
    pub const SECURITY: u8 = 5;
}

/// Why the session was destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The user quit (/quit, Ctrl-C, Ctrl-D at a terminal, a signal).
    Quit,
    /// Both sides finished sending (end of input on both), everything was delivered.
    Finished,
    /// Input ended and everything was sent; the peer cannot be told (legacy v1).
    EndOfInput,
    /// The peer said goodbye, or finished and left.
    PeerLeft,
    /// The peer left before the keys were exchanged.
    PeerLeftEarly,
    /// The peer is gone without saying goodbye: the relay lost it (the reason says how).
    PeerLost(String),
    /// A room code, URL or file given was not valid.
    BadInput(String),
    /// The relay could not be reached or the connection failed.
    Network(String),
    /// The relay ended the connection with one of its codes (ERROR frame or close code).
    Relay {
        /// The code.
        code: u16,
        /// The relay's own reason (shown only for codes this client does not know).
        reason: String,
        /// Whether we were paired with a peer when it happened.
        paired: bool,
    },
    /// The peer or relay broke the protocol.
    Protocol(String),
    /// A cryptographic check failed.
    Security(CryptoError),
    /// This user reported that the verification codes differ (/mismatch).
    VerificationMismatch,
    /// The peer reported that the verification codes differ.
    PeerMismatch,
    /// The code's secret did not confirm the key exchange: the peer typed another code, or a
    /// relay is in the middle. The code must not be used again.
    VerificationFailed,
    /// The session ended for this reason after our key-confirmation MAC was sent and before the
    /// peer's verified: whoever holds our MAC (a relay in the middle) can test guesses of the
    /// code offline, so this counts as a failed verification and the code is burnt.
    Unconfirmed(Box<End>),
    /// A resume after a drop failed its checks (a replay, or someone without the session key).
    ResumeFailed(crate::resume::ResumeError),
}

impl End {
    /// The process exit code for this reason.
    pub fn exit_code(&self) -> u8 {
        match self {
            End::Quit | End::Finished | End::EndOfInput | End::PeerLeft | End::PeerLeftEarly => exit::OK,
            End::BadInput(_) => exit::BAD_INPUT,
            // The code itself can no longer be used.
            End::Relay { code, .. } if *code == ErrorCode::Burnt.as_u16() => exit::BAD_INPUT,
            End::Network(_) | End::Relay { .. } | End::PeerLost(_) => exit::NETWORK,
            End::Protocol(_) => exit::PROTOCOL,
            End::Security(e) if !e.is_security() => exit::PROTOCOL,
            End::Security(_)
            | End::VerificationMismatch
            | End::PeerMismatch
            | End::VerificationFailed
            | End::Unconfirmed(_)
            | End::ResumeFailed(_) => exit::SECURITY,
        }
    }
}

impl End {
    /// What happened, without the advice that goes with it alone ("run ghostwire again"): for
    /// an ending that is folded into another, as [`End::Unconfirmed`] folds its cause.
    pub fn cause(&self) -> String {
        match self {
            End::Quit => "you ended it".into(),
            End::Relay { code, .. } => match ErrorCode::from_u16(*code) {
                Some(known) => format!("the relay ended it: {} (error {code})", known.reason()),
                None => format!("the relay ended it (error {code})"),
            },
            other => other.to_string(),
        }
    }
}

/// What a relay code means for the user: the whole sentence.
///
/// `paired` says whether a peer was already found (an upstream failure then loses that peer).
pub fn relay_says(code: u16, reason: &str, paired: bool) -> String {
    let Some(known) = ErrorCode::from_u16(code) else {
        return format!("the relay refused: {reason} (error {code})");
    };
    let what = match known {
        ErrorCode::GoingAway => "the relay is shutting down: run ghostwire again to reconnect",
        ErrorCode::Malformed => "the relay could not read a frame this client sent",
        ErrorCode::BadRoomCode => "the relay refused the room code",
        ErrorCode::RoomFull => "the room is full: two people are already in it (choose another code)",
        ErrorCode::OutOfOrder => "the relay received a frame out of order from this client",
        ErrorCode::RateLimited => "this client sent faster than the relay allows",
        ErrorCode::TooLarge => "this client sent a frame larger than the relay accepts",
        ErrorCode::RelayFull => "the relay is at capacity: try again later",
        ErrorCode::UpstreamUnavailable if paired => {
            "the connection to your peer was lost: the relay lost its room service"
        }
        ErrorCode::UpstreamUnavailable => "the relay cannot reach its room service: try again later",
        ErrorCode::JoinTimeout => "the relay gave up waiting for this client to join",
        ErrorCode::SlowConsumer => "the relay dropped this client for reading too slowly",
        ErrorCode::WaitTimeout => "nobody joined the room in time: run ghostwire again to keep waiting",
        ErrorCode::PeerLost => "the connection to your peer was lost: the relay can no longer reach it",
        ErrorCode::Burnt => {
            "this code is burnt: it was already used to test a proof of its secret, and each new try would \
             give a relay in the middle one more guess. Make a new code with ghostwire --new and pass it on"
        }
    };
    format!("{what} (error {code})")
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Quit => write!(f, "you ended the session"),
            End::Finished => write!(f, "you both finished: everything was sent"),
            End::EndOfInput => write!(f, "end of input: everything was sent"),
            End::PeerLeft => write!(f, "your peer left"),
            End::PeerLeftEarly => write!(f, "your peer left before the keys were exchanged"),
            End::PeerLost(why) => write!(f, "the connection to your peer was lost: {why}"),
            End::BadInput(why) => write!(f, "bad input: {why}"),
            End::Network(why) => write!(f, "network: {why}"),
            End::Relay { code, reason, paired } => f.write_str(&relay_says(*code, reason, *paired)),
            End::Protocol(why) => write!(f, "protocol violation: {why}"),
            End::Security(e) if !e.is_security() => write!(f, "protocol violation: {e}"),
            End::Security(e) => write!(f, "SECURITY: {e}"),
            End::VerificationMismatch => {
                write!(f, "SECURITY: the verification codes differ: someone may be in the middle")
            }
            End::VerificationFailed => write!(
                f,
                "verification failed: wrong code or a relay in the middle. This code is burnt: make a \
                 new one with ghostwire --new and pass it on again"
            ),
            End::Unconfirmed(why) => write!(
                f,
                "verification failed: the session ended ({}) after this side sent its proof of the code \
                 and before your peer's proof arrived. A relay in the middle could now test guesses of the \
                 code, so it is burnt: make a new one with ghostwire --new and pass it on again",
                why.cause()
            ),
            End::ResumeFailed(e) => write!(f, "SECURITY: {e}; the session is destroyed"),
            End::PeerMismatch => write!(
                f,
                "SECURITY: your peer reported that the verification codes differ: someone may be in the middle"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_relay_code_has_its_own_sentence_with_its_number() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let said = relay_says(code.as_u16(), "ignored", false);
            assert!(said.ends_with(&format!("(error {})", code.as_u16())), "{said}");
            assert!(!said.contains("ignored"), "known codes use their own words: {said}");
            assert!(seen.insert(said), "{code} shares its sentence");
        }
        assert!(relay_says(4999, "odd", false).contains("odd"), "unknown codes show the relay's reason");
        assert!(relay_says(4007, "", true).contains("connection to your peer was lost"));
    }

    #[test]
    fn endings_map_to_their_documented_exit_codes() {
        let relay = |code| End::Relay { code, reason: String::new(), paired: false };
        let cases = [
            (End::Quit, 0),
            (End::Finished, 0),
            (End::EndOfInput, 0),
            (End::PeerLeft, 0),
            (End::PeerLeftEarly, 0),
            (End::PeerLost("x".into()), 3),
            (End::BadInput("x".into()), 2),
            (End::Network("x".into()), 3),
            (relay(1001), 3),
            (relay(4002), 3),
            (End::Protocol("x".into()), 4),
            (End::Security(CryptoError::BadContent), 4),
            (End::Security(CryptoError::Replay), 5),
            (End::VerificationMismatch, 5),
            (End::VerificationFailed, 5),
            (End::PeerMismatch, 5),
            (End::Unconfirmed(Box::new(relay(1001))), 5),
            (End::Unconfirmed(Box::new(End::Quit)), 5),
        ];
        for (end, code) in cases {
            assert_eq!(end.exit_code(), code, "{end}");
        }
    }
}
