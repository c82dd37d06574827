//! `ghostwire`, the terminal client, as a library (the binary is a thin wrapper).
//!
//! Module map: [`state`] (the state machine, no I/O), [`crypto`] (keys, boxes,
//! verification code), [`proto`] (the SIGNAL kinds two clients exchange),
//! [`receipts`] (which lines the peer confirmed), [`session`] (the driver that runs a session), [`ui`] (interactive and piped
//! front ends), [`plain`] (line input for a terminal the editor cannot drive), [`net`] (ws/wss to the relay), [`harden`] (core dumps, memory
//! locking), [`end`] (why a session ended, exit codes), [`cli`] (flags, room codes), [`code`]
//! (codes with a secret part, the word list), [`pake`] (SPAKE2 and key confirmation).

pub mod cli;
pub mod code;
pub mod crypto;
pub mod end;
pub mod files;
pub mod harden;
pub mod net;
pub mod pake;
pub mod plain;
pub mod proto;
pub mod receipts;
pub mod record;
pub mod resume;
pub mod session;
pub mod state;
pub mod transfer;
pub mod ui;
