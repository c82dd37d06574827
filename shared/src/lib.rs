//! Ghostwire's wire format, shared by the relay and the client.
//!
//! This crate is the frame layer only: the JSON frames that travel over the
//! WebSocket ([`frame`]), the validated room code ([`room`]) and the one table
//! of error codes ([`code`]) that both ERROR frames and WebSocket close frames
//! carry. It does no I/O, so both sides (and their tests) hold the same
//! definitions and cannot drift apart. `docs/PROTOCOL.md` describes the same
//! protocol for people writing their own client.

pub mod code;
pub mod frame;
mod json;
pub mod room;

pub use code::ErrorCode;
pub use frame::{ClientFrame, FrameError, Inbound, RelayFrame};
pub use room::{RoomCode, RoomCodeError};

/// The largest text frame the relay accepts by default, in bytes (64 KiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// The smallest `--max-frame-bytes` a relay accepts: room for the largest frame a client of the
/// current protocol sends (a SIGNAL carrying a 1,000-character line of 4-byte characters, padded,
/// sealed and base64-encoded: about 5.6 KB; the client's tests check it fits), and so for a JOIN.
pub const MIN_MAX_FRAME_BYTES: usize = 8 * 1024;

/// The longest `kind` a SIGNAL frame may carry, in bytes.
pub const MAX_KIND_BYTES: usize = 64;
