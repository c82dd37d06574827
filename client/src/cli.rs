//! Command-line flags, and the room code: validation, normalisation, generation.

use clap::Parser;
use crypto_box::aead::rand_core::RngCore;
use crypto_box::aead::OsRng;
use ghostwire_shared::RoomCode;
use std::path::PathBuf;

/// Ghostwire: end-to-end encrypted 1:1 chat in the terminal. Nothing is written to disk.
///
/// One person runs `ghostwire --new`, which prints a code such as K7Q2M9XA-tulip-cider-lunar,
/// and tells it to the other, who runs `ghostwire` and types it at the prompt (or sets
/// GHOSTWIRE_CODE). The part before the first `-` is the room the relay sees; the words are a
/// secret it never sees, which proves the key exchange: a relay in the middle is caught with
/// nothing to compare ("verification failed", exit 5), and the code is then burnt: the relay
/// refuses it from then on (a code with words is good for one session). A code with
/// words is refused on the command line (every user of the machine can read it). A bare room
/// code (`ghostwire ROOMCODE` on both sides) still works: then compare the verification code
/// shown to both of you, by voice or in person; if it differs, someone is in the middle: type
/// /mismatch.
///
/// The words come from the EFF short word list #1 by the Electronic Frontier Foundation,
/// licensed CC BY 4.0 (https://www.eff.org/dice).
///
/// Commands while chatting: /help, /verify (show the verification code again), /mismatch
/// (the codes differ: ends both sides as a security failure), /quit (so do Ctrl-C and Ctrl-D).
/// To send a line that starts with /, type it as //. Commands are only typed: a pasted block
/// of lines, and every line from a pipe, is sent as it is.
///
/// Typing, pasting or piping faster than 80 messages a second (20 to an older peer) is fine:
/// lines are queued (up to 1000) and sent in order, paced under the relay's limit.
///
/// With standard input or output not a terminal, each stdin line is a message, whatever it
/// starts with (held until the session is connected; the code must then come from ROOMCODE,
/// GHOSTWIRE_CODE or --new), received messages go to stdout one per line, status lines to
/// stderr. End of input means "nothing more to say": everything queued is sent, the peer is
/// told, and messages are still received until the peer finishes or leaves.
///
/// Exit codes: 0 the conversation ended normally (/quit, Ctrl-C, both finished, the peer left)
/// and everything was sent; 1 as 0, but some lines were not sent, or were sent and never
/// confirmed by the peer's receipt (each is shown); 2 bad input
/// (room code, a code the relay refuses as burnt, a secret code on the command line, --legacy-v1 with one, URL, CA file, flag); 3 network or relay error, or the connection to the peer
/// was lost; 4 protocol violation; 5 security failure (tampering, replay, reflection,
/// reordering, a weak or swapped key, codes differ on either side, a code's secret did not
/// verify: wrong code or a relay in the middle, or the session ended after this side sent its
/// proof of the code and before the peer's arrived: the code is burnt either way).
#[derive(Debug, Parser)]
#[command(name = "ghostwire", version, about, long_about)]
pub struct Args {
    /// A bare room code: 8 to 16 characters, A-Z and 0-9 (lower case is accepted and
    /// upper-cased). A code with a secret part is refused here: type it at the prompt (shown when
    /// this is omitted) or put it in GHOSTWIRE_CODE.
    #[arg(value_name = "ROOMCODE", conflicts_with = "new")]
    pub room: Option<String>,

    /// Make up a fresh code with a secret part (an 8-symbol room and 3 words, ~31 bits that a
    /// relay gets one guess at), print it once the relay is reached, and wait in that room. With --legacy-v1, a bare room
    /// code of 16 symbols (79 bits; no look-alikes).
    #[arg(long)]
    pub new: bool,

    /// The relay's WebSocket URL (ws:// or wss://).
    #[arg(long, env = "GHOSTWIRE_RELAY", default_value = DEFAULT_RELAY)]
    pub relay: String,

    /// A PEM file of CA certificates to trust for wss:// (for a relay with a private CA);
    /// an error with ws://.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Talk to a peer that speaks only the prototype's format (no verification code, no replay
    /// counter, no padding). Never chosen automatically.
    #[arg(long)]
    pub legacy_v1: bool,

    /// Reach the relay through a SOCKS5 proxy: socks5h://HOST:PORT has the proxy resolve the
    /// relay's name (no DNS query leaves this machine; .onion relays work); socks5://HOST:PORT
    /// resolves it here (with a warning). Nothing but the proxy is ever connected to, and there
    /// is no direct fallback. A username and password come from GHOSTWIRE_PROXY_USER and
    /// GHOSTWIRE_PROXY_PASSWORD, never from the URL. ALL_PROXY is not used.
    #[arg(long, env = "GHOSTWIRE_PROXY", value_name = "URL", conflicts_with = "tor")]
    pub proxy: Option<String>,

    /// Shorthand for --proxy socks5h://127.0.0.1:9050, Tor's SOCKS port.
    #[arg(long)]
    pub tor: bool,

    /// Clear the screen and the terminal's scrollback when the session ends.
    #[arg(long)]
    pub wipe_screen: bool,

    /// How long reaching the relay may take: TCP, the SOCKS5 proxy, TLS and the WebSocket upgrade
    /// together (e.g. 10s, 500ms, 1m). A relay that accepts and never answers ends the session
    /// after this, as a network error (exit 3).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = connect_timeout)]
    pub connect_timeout: std::time::Duration,

    /// How long a session whose connection drops (a network change, a relay restart or a
    /// rolling deploy) keeps trying to resume: it reconnects by itself, meets the peer again
    /// and re-sends what did not arrive, with new keys and without the code. 0 turns resuming
    /// off: a drop then ends the session, as with peers that do not resume. Resume state is in
    /// RAM only: a process that exits ends its session.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = resume_window)]
    pub resume_window: std::time::Duration,
}

/// `--resume-window`: a human duration, zero to turn resuming off, at most a day.
fn resume_window(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d > std::time::Duration::from_secs(86_400) => Err("it must be at most 24h".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (write it as e.g. 5m or 30s, or 0 to turn resuming off)")),
    }
}

/// `--connect-timeout`: a human duration, above zero.
fn connect_timeout(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("it must be above zero (e.g. 10s)".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (write it as e.g. 10s, 500ms or 1m)")),
    }
}

/// Tor's default SOCKS port, for --tor.
pub const TOR_PROXY: &str = "socks5h://127.0.0.1:9050";

impl Args {
    /// The proxy asked for, if any: --proxy (or GHOSTWIRE_PROXY), or Tor's port with --tor.
    pub fn proxy(&self) -> Option<&str> {
        if self.tor {
            Some(TOR_PROXY)
        } else {
            self.proxy.as_deref()
        }
    }
}

/// The relay used when none is given.
pub const DEFAULT_RELAY: &str = "ws://127.0.0.1:8765/";

/// The command the other person must run to join with the same relay settings: with `code`
/// when it is a bare room code, without it for a code with a secret (typed at the prompt).
pub fn join_command(args: &Args, code: Option<&RoomCode>) -> String {
    let mut words = vec!["ghostwire".to_owned()];
    if args.relay != DEFAULT_RELAY {
        words.extend(["--relay".to_owned(), shell_quote(&args.relay)]);
    }
    if let Some(ca) = &args.ca {
        words.extend(["--ca".to_owned(), shell_quote(&ca.display().to_string())]);
    }
    if args.legacy_v1 {
        words.push("--legacy-v1".to_owned());
    }
    if args.tor {
        words.push("--tor".to_owned());
    }
    if let Some(code) = code {
        words.push(code.as_str().to_owned());
    }
    words.join(" ")
}

/// `s` as one shell word: as it is when it is plain, else in single quotes.
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Length of generated room codes: 16 symbols of 31 = 79.3 bits.
pub const NEW_CODE_LEN: usize = 16;
/// Symbols of generated room codes: A-Z and 0-9 without the look-alikes 0/O and 1/I/L, so a
/// code read aloud or copied by eye cannot become another room. (Any A-Z0-9 code is still
/// accepted, as the prototype defined it.)
const ALPHABET: &[u8; 31] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// A fresh random room code from the OS CSPRNG.
pub fn new_room_code() -> RoomCode {
    // Built from the alphabet at the validated length; parsing cannot fail, but never panic.
    RoomCode::parse(&random_symbols(NEW_CODE_LEN)).unwrap_or_else(|_| new_room_code())
}

/// `len` random symbols of [`ALPHABET`] from the OS CSPRNG (rejection sampling: no modulo bias).
pub fn random_symbols(len: usize) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let mut b = [0u8; 32];
        OsRng.fill_bytes(&mut b);
        for x in b {
            // 248 = 8 * 31: bytes at or above it would favour the first symbols.
            if x < 248 && out.len() < len {
                out.push(ALPHABET[(x % 31) as usize] as char);
            }
        }
    }
    out
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
        assert!(31f64.powi(NEW_CODE_LEN as i32).log2() >= 79.0);
    }

    #[test]
    fn the_join_command_carries_what_the_other_side_needs() {
        let code = RoomCode::parse("ABCD1234").unwrap_or_else(|_| new_room_code());
        let args = |extra: &[&str]| Args::parse_from([&["ghostwire", "--new"], extra].concat());
        assert_eq!(join_command(&args(&[]), Some(&code)), "ghostwire ABCD1234");
        assert_eq!(join_command(&args(&[]), None), "ghostwire");
        assert_eq!(
            join_command(&args(&["--relay", "wss://relay.example/", "--ca", "my ca.pem", "--legacy-v1"]), Some(&code)),
            "ghostwire --relay wss://relay.example/ --ca 'my ca.pem' --legacy-v1 ABCD1234"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn typed_codes_are_normalised_then_validated() {
        assert_eq!(parse_room_code(" abcd1234 \n").map(|c| c.as_str().to_owned()), Ok("ABCD1234".into()));
        assert!(parse_room_code("abc").is_err());
        assert!(parse_room_code("ABCD-1234").is_err());
    }
}
