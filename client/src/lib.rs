//! `ghostwire`, the terminal client, as a library (the binary is a thin wrapper).
//!
//! Module map: [`state`] (the state machine, no I/O), [`crypto`] (keys, boxes,
//! verification code), [`proto`] (the SIGNAL kinds two clients exchange),
//! [`session`] (the driver that runs a session), [`ui`] (interactive and piped
//! front ends), [`net`] (ws/wss to the relay), [`harden`] (core dumps, memory
//! locking), [`end`] (why a session ended, exit codes), [`cli`] (flags, room codes).

pub mod cli;
pub mod crypto;
pub mod end;
pub mod harden;
pub mod net;
pub mod proto;
pub mod session;
pub mod state;
pub mod ui;
