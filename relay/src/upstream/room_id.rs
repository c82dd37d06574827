//! Keyed room ids: the only form of a room any upstream sees.
//!
//! A room code is what two people share; anyone who learns it can join. So no upstream, and
//! nothing an upstream writes to a broker or a link, ever holds one. The connection task turns
//! the code into a [`RoomId`] the moment a JOIN is read: HMAC-SHA256 keyed with the cluster
//! secret (the same on every relay that shares a room space, so they agree), cut to 128 bits.
//! Without the secret, a broker's contents cannot be tested against guessed codes. The
//! in-process upstream, which shares nothing, gets a random key of its own.

use crate::config::{Config, Secret, UpstreamKind};
use crate::Error;
use ghostwire_shared::RoomCode;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// The shortest accepted cluster secret.
pub const MIN_SECRET: usize = 16;

/// A room as upstreams know it: 128 bits of HMAC of its code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoomId([u8; 16]);

impl RoomId {
    /// Lower-case hex, for broker keys and subjects.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The 16 bytes, for binary broker keys.
    pub fn bytes(&self) -> [u8; 16] {
        self.0
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not secret, but not worth a log line either: ids of live rooms stay out of logs.
        f.write_str("RoomId(..)")
    }
}

/// Makes room ids with one key.
pub struct RoomKeyer {
    key: Hmac<Sha256>,
}

impl RoomKeyer {
    /// The keyer `config` calls for: the cluster secret (from the flag, the variable or the
    /// file) for a distributed upstream, a random key for the in-process one.
    ///
    /// # Errors
    /// [`Error::Config`] when a distributed upstream has no secret of at least [`MIN_SECRET`]
    /// characters, or its file cannot be read.
    pub fn for_config(config: &Config) -> Result<RoomKeyer, Error> {
        if config.upstream == UpstreamKind::Local {
            use rand_core::RngCore;
            let mut key = zeroize::Zeroizing::new([0u8; 32]);
            rand_core::OsRng.fill_bytes(key.as_mut());
            return RoomKeyer::new(key.as_ref());
        }
        let secret = cluster_secret(config)?;
        RoomKeyer::new(secret.expose().as_bytes())
    }

    fn new(key: &[u8]) -> Result<RoomKeyer, Error> {
        let key = Hmac::<Sha256>::new_from_slice(key).map_err(|e| Error::Config(format!("--cluster-secret: {e}")))?;
        Ok(RoomKeyer { key })
    }

    /// The id of the room `code`.
    pub fn id(&self, code: &RoomCode) -> RoomId {
        let mut mac = self.key.clone();
        mac.update(b"ghostwire room v1\0");
        mac.update(code.as_str().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        RoomId(id)
    }
}

/// The cluster secret a distributed upstream shares (from the flag, the variable or the file).
///
/// # Errors
/// [`Error::Config`] when there is none of at least [`MIN_SECRET`] characters, or its file
/// cannot be read.
pub fn cluster_secret(config: &Config) -> Result<Secret, Error> {
    let from_file = match &config.cluster_secret_file {
        Some(path) => {
            Some(Secret::from_file(path).map_err(|e| Error::Config(format!("--cluster-secret-file {path:?}: {e}")))?)
        }
        None => None,
    };
    match from_file.or_else(|| config.cluster_secret.clone()) {
        Some(secret) if secret.expose().len() >= MIN_SECRET => Ok(secret),
        _ => Err(Error::Config(format!(
            "--upstream {} needs --cluster-secret (or GHOSTWIRE_CLUSTER_SECRET, or --cluster-secret-file) \
             of at least {MIN_SECRET} characters, the same on every relay",
            config.upstream.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_are_keyed_and_stable() {
        let code = RoomCode::parse("ABCD1234").unwrap();
        let a = RoomKeyer::new(b"test-cluster-secret-0123456789").unwrap();
        let b = RoomKeyer::new(b"another-secret-0123456789").unwrap();
        assert_eq!(a.id(&code), a.id(&code));
        assert_ne!(a.id(&code), b.id(&code), "another secret, another id");
        assert_ne!(a.id(&code), a.id(&RoomCode::parse("ABCD1235").unwrap()));
        // The NATS upstream's names since it shipped: HMAC-SHA256(secret, "ghostwire room v1\0" ‖ code),
        // first 16 bytes in hex (checked with Python's hmac module).
        assert_eq!(a.id(&code).hex(), "1ad2730f4897db7f0947e8ecb503a26e");
        assert!(!format!("{:?}", a.id(&code)).contains(&a.id(&code).hex()));
    }
}
