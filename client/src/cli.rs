//! Command-line flags, and the room code: validation, normalisation, generation.

use clap::Parser;
use crypto_box::aead::rand_core::RngCore;
use crypto_box::aead::OsRng;
use ghostwire_shared::RoomCode;
use std::path::PathBuf;

/// Ghostwire: end-to-end encrypted 1:1 chat in the terminal. Nothing is written to disk.
///
/// Both people run `ghostwire ROOMCODE` with the same code (or one runs `ghostwire --new` and
/// tells the other the code it prints). Compare the verification code shown to both of you,
/// by voice or in person: if it differs, someone is in the middle; type /mismatch.
///
/// Commands while chatting: /help, /verify (show the verification code again), /mismatch
/// (the codes differ: end as a security failure), /quit.
///
/// With standard input not a terminal, lines from stdin are sent (held until the session is
/// connected), received messages go to stdout one per line, status lines to stderr, and end
/// of input quits once everything was sent.
///
/// Exit codes: 0 the conversation ended normally (/quit, end of input, the peer left);
/// 2 bad input; 3 network or relay error; 4 protocol violation; 5 security failure
/// (tampering, replay, reflection, reordering, a weak or swapped key, codes differ).
#[derive(Debug, Parser)]
#[command(name = "ghostwire", version, about, long_about)]
pub struct Args {
    /// The room code: 8 to 16 characters, A-Z and 0-9 (lower case is accepted and upper-cased).
    /// Prompted for when omitted.
    #[arg(value_name = "ROOMCODE", conflicts_with = "new")]
    pub room: Option<String>,

    /// Make up a fresh random room code (82 bits), print it, and wait in that room.
    #[arg(long)]
    pub new: bool,

    /// The relay's WebSocket URL (ws:// or wss://).
    #[arg(long, env = "GHOSTWIRE_RELAY", default_value = "ws://127.0.0.1:8765/")]
    pub relay: String,

    /// A PEM file of CA certificates to trust for wss:// (for a relay with a private CA).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Talk to a peer that speaks only the prototype's format (no verification code, no replay
    /// counter, no padding). Never chosen automatically.
    #[arg(long)]
    pub legacy_v1: bool,

    /// Clear the screen and the terminal's scrollback when the session ends.
    #[arg(long)]
    pub wipe_screen: bool,
}

/// Length of generated room codes: 16 symbols of 36 = 82.7 bits.
pub const NEW_CODE_LEN: usize = 16;
const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A fresh random room code from the OS CSPRNG (rejection sampling: no modulo bias).
pub fn new_room_code() -> RoomCode {
    let mut out = String::with_capacity(NEW_CODE_LEN);
    while out.len() < NEW_CODE_LEN {
        let mut b = [0u8; 32];
        OsRng.fill_bytes(&mut b);
        for x in b {
            // 252 = 7 * 36: bytes at or above it would favour the first symbols.
            if x < 252 && out.len() < NEW_CODE_LEN {
                out.push(ALPHABET[(x % 36) as usize] as char);
            }
        }
    }
    // Built from the alphabet at the validated length; parsing cannot fail, but never panic.
    RoomCode::parse(&out).unwrap_or_else(|_| new_room_code())
}

/// Validates what a person typed: surrounding spaces trimmed, letters upper-cased, then the
/// relay's own rule (`^[A-Z0-9]{8,16}$`).
///
/// # Errors
/// A message saying what is wrong, without repeating the input.
pub fn parse_room_code(typed: &str) -> Result<RoomCode, String> {
    RoomCode::parse(&typed.trim().to_ascii_uppercase()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_are_valid_and_differ() {
        let a = new_room_code();
        let b = new_room_code();
        assert_eq!(a.as_str().len(), NEW_CODE_LEN);
        assert_ne!(a, b);
        assert!(36f64.powi(NEW_CODE_LEN as i32).log2() >= 80.0);
    }

    #[test]
    fn typed_codes_are_normalised_then_validated() {
        assert_eq!(parse_room_code(" abcd1234 \n").map(|c| c.as_str().to_owned()), Ok("ABCD1234".into()));
        assert!(parse_room_code("abc").is_err());
        assert!(parse_room_code("ABCD-1234").is_err());
    }
}
