//! Broker errors that repeat, logged once each while they repeat.
//!
//! A broker that refuses this relay (a wrong token, TLS against a plaintext listener) answers
//! every reconnect attempt, about once a second, with the same error. Logging each one buries
//! everything else: the first of each is logged at WARN, the repeats are counted (DEBUG shows
//! each), and the counts are logged once at INFO when the connection is healthy again.

use std::collections::HashMap;

/// At most this many distinct errors are remembered; a new one beyond is logged and not kept.
const KEPT: usize = 32;

/// The errors seen since the connection was last healthy, and how often each came.
pub struct Repeats {
    /// What the errors are, for the log line ("NATS server error").
    what: &'static str,
    seen: HashMap<String, u64>,
}

impl Repeats {
    /// Repeats of the errors `what` names ("NATS server error").
    pub fn new(what: &'static str) -> Repeats {
        Repeats { what, seen: HashMap::new() }
    }

    /// One occurrence of `error`: logged at WARN the first time, counted after.
    pub fn saw(&mut self, error: &str) {
        let what = self.what;
        if let Some(times) = self.seen.get_mut(error) {
            *times += 1;
            tracing::debug!(error, times = *times, "{what} repeated");
            return;
        }
        tracing::warn!(error, "{what} (logged once while it repeats; /readyz says whether the relay is ready)");
        if self.seen.len() < KEPT {
            self.seen.insert(error.to_owned(), 1);
        }
    }

    /// The connection is healthy: says how often each error came, and forgets them.
    pub fn settled(&mut self) {
        let what = self.what;
        for (error, times) in self.seen.drain() {
            if times > 1 {
                tracing::info!(error = %error, times, "{what} repeated, now over");
            }
        }
    }

    /// How often `error` was seen since the last [`settled`](Self::settled).
    #[cfg(test)]
    fn times(&self, error: &str) -> u64 {
        self.seen.get(error).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::Repeats;

    #[test]
    fn each_error_is_counted_apart_and_forgotten_when_settled() {
        let mut r = Repeats::new("test error");
        for _ in 0..3 {
            r.saw("authorization violation");
        }
        r.saw("permissions violation");
        r.saw("authorization violation");
        assert_eq!((r.times("authorization violation"), r.times("permissions violation")), (4, 1));
        r.settled();
        assert_eq!(r.times("authorization violation"), 0);
    }
}
