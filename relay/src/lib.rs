//! Ghostwire's blind relay, as a library.
//!
//! [`Relay::bind`] opens the public and admin listeners; [`Relay::run`] serves
//! until its shutdown token is cancelled, then closes every connection with
//! 1001 and returns within `--drain-timeout`. The binary is a thin wrapper
//! that parses flags and turns SIGTERM/SIGINT into that cancellation; the
//! tests call the same two functions on `127.0.0.1:0`.
//!
//! Module map: [`config`] (flags), [`server`] (accept loop, TLS, handshake,
//! limits), `conn` (one task per connection), [`upstream`] (the room space
//! behind one trait), [`metrics`], `admin` (health and metrics listener),
//! [`client_ip`] (trusted proxies), [`borrowed`] (read buffers held only
//! while data moves).

mod admin;
pub mod borrowed;
pub mod client_ip;
pub mod config;
mod conn;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod probe;
pub mod server;
pub mod tls;
pub mod upstream;

pub use config::{Config, UpstreamKind};
pub use error::Error;
pub use server::Relay;
