//! The relay crate's one error type: what can stop the relay from starting.
//!
//! Per-connection failures are not errors of the relay: they end that
//! connection with a wire code (see `conn`) and never surface here.

use std::net::SocketAddr;

/// A failure to start or run the relay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The TLS certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The configuration contradicts itself.
    #[error("configuration: {0}")]
    Config(String),
}
