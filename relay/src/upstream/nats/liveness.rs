//! Which relays are still heard: the failure detector behind PEER_LEFT for a vanished relay.
//!
//! Only relays that a local seat is paired with are tracked. Each gets a
//! cancellation token that the seats watch; a relay not heard for the
//! timeout is dropped from the table and its token cancelled, which ends
//! every pair with it at once. A relay heard again later is tracked afresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The heartbeat table.
pub(super) struct Liveness {
    relays: Mutex<HashMap<Box<str>, Heard>>,
    /// When each relay was last heard, tracked or not (entries older than the timeout are
    /// swept): a seat that does not answer on a relay heard recently is not taken for dead.
    heard: Mutex<HashMap<Box<str>, Instant>>,
    timeout: Duration,
}

struct Heard {
    at: Instant,
    dead: CancellationToken,
}

impl Liveness {
    /// A table that declares a relay dead after `timeout` of silence.
    pub(super) fn new(timeout: Duration) -> Liveness {
        Liveness { relays: Mutex::new(HashMap::new()), heard: Mutex::new(HashMap::new()), timeout }
    }

    /// How long a relay may be silent before it counts as dead.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A heartbeat from `relay` arrived.
    pub(super) fn heard(&self, relay: &str) {
        let now = Instant::now();
        if let Some(h) = self.relays.lock().unwrap_or_else(|p| p.into_inner()).get_mut(relay) {
            h.at = now;
        }
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        match heard.get_mut(relay) {
            Some(at) => *at = now,
            None => {
                heard.insert(relay.into(), now);
            }
        }
    }

    /// Whether `relay` was heard within the timeout: its seats may be briefly unreachable (it is
    /// reconnecting), but it is not dead.
    pub(super) fn alive(&self, relay: &str) -> bool {
        self.heard.lock().unwrap_or_else(|p| p.into_inner()).get(relay).is_some_and(|at| at.elapsed() < self.timeout)
    }

    /// A token cancelled when `relay` goes silent; tracking starts now if it had not.
    pub(super) fn watch(&self, relay: &str) -> CancellationToken {
        let mut relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        let h =
            relays.entry(relay.into()).or_insert_with(|| Heard { at: Instant::now(), dead: CancellationToken::new() });
        h.dead.clone()
    }

    /// Declares dead every relay silent for the timeout; returns how many.
    pub(super) fn sweep(&self) -> usize {
        self.heard.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, at| at.elapsed() < self.timeout);
        let mut relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        let before = relays.len();
        relays.retain(|_, h| {
            let alive = h.at.elapsed() < self.timeout;
            if !alive {
                h.dead.cancel();
            }
            alive
        });
        before - relays.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silent_relays_are_declared_dead_and_heard_ones_are_not() {
        let table = Liveness::new(Duration::from_secs(5));
        let (a, b) = (table.watch("a"), table.watch("b"));
        tokio::time::advance(Duration::from_secs(4)).await;
        table.heard("a");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(table.sweep(), 1);
        assert!(!a.is_cancelled());
        assert!(b.is_cancelled());
        // Watching again starts afresh.
        assert!(!table.watch("b").is_cancelled());
        assert!(table.alive("a") && !table.alive("b") && !table.alive("never"));
    }
}
