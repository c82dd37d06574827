//! Why a session ended, and the exit code for each class of reason.

use crate::crypto::CryptoError;
use crate::state::Event;
use std::fmt;

/// Exit codes, one per class of reason (documented in README and docs/PROTOCOL.md).
pub mod exit {
    /// The conversation ended normally: /quit, end of input, or the peer left.
    pub const OK: u8 = 0;
    /// Bad input: an invalid room code or flag (clap also exits 2 for bad flags).
    pub const BAD_INPUT: u8 = 2;
    /// The relay could not be reached, closed the connection, or sent ERROR.
    pub const NETWORK: u8 = 3;
    /// The peer or relay broke the protocol (unexpected frame, unknown kind, bad encoding, flood, version).
    pub const PROTOCOL: u8 = 4;
    /// An attack was detected: tampering, replay, reflection, reordering, a weak or swapped key,
    /// or the users reported that their verification codes differ.
    pub const SECURITY: u8 = 5;
}

/// Why the session was destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The user quit.
    Quit,
    /// Input ended (non-interactive mode) after everything queued was sent.
    EndOfInput,
    /// The peer left.
    PeerLeft,
    /// The room code given was not valid.
    BadInput(String),
    /// The relay could not be reached or the connection failed.
    Network(String),
    /// The relay refused us with an ERROR frame.
    Relay {
        /// The ERROR code.
        code: u16,
        /// The relay's reason.
        reason: String,
    },
    /// The peer or relay broke the protocol.
    Protocol(String),
    /// A cryptographic check failed.
    Security(CryptoError),
    /// The users' verification codes differ (reported with /mismatch).
    VerificationMismatch,
}

impl End {
    /// The process exit code for this reason.
    pub fn exit_code(&self) -> u8 {
        match self {
            End::Quit | End::EndOfInput | End::PeerLeft => exit::OK,
            End::BadInput(_) => exit::BAD_INPUT,
            End::Network(_) | End::Relay { .. } => exit::NETWORK,
            End::Protocol(_) => exit::PROTOCOL,
            End::Security(e) if !e.is_security() => exit::PROTOCOL,
            End::Security(_) | End::VerificationMismatch => exit::SECURITY,
        }
    }

    /// The state-machine event that carries this reason.
    pub fn event(&self) -> Event {
        match self {
            End::Quit | End::EndOfInput | End::BadInput(_) | End::VerificationMismatch => Event::Quit,
            End::PeerLeft => Event::PeerLeft,
            End::Network(_) => Event::NetworkError,
            End::Relay { .. } => Event::RelayError,
            End::Protocol(_) | End::Security(_) => Event::Deviation,
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Quit => write!(f, "you ended the session"),
            End::EndOfInput => write!(f, "end of input: everything was sent"),
            End::PeerLeft => write!(f, "your peer left"),
            End::BadInput(why) => write!(f, "bad input: {why}"),
            End::Network(why) => write!(f, "network: {why}"),
            End::Relay { code: 1001, .. } => {
                write!(f, "the relay is shutting down (error 1001): run ghostwire again to reconnect")
            }
            End::Relay { code, reason } => write!(f, "the relay refused: {reason} (error {code})"),
            End::Protocol(why) => write!(f, "protocol violation: {why}"),
            End::Security(e) if !e.is_security() => write!(f, "protocol violation: {e}"),
            End::Security(e) => write!(f, "SECURITY: {e}"),
            End::VerificationMismatch => {
                write!(f, "SECURITY: the verification codes differ: someone may be in the middle")
            }
        }
    }
}
