//! The burnt rooms a relay decides joins for (in-process, and a mesh room's owner): each with
//! the moment its burn ends, kept about one TTL's worth.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// Burnt rooms by key, and when each burn ends.
pub struct Burns<K>(HashMap<K, Instant>);

impl<K> Default for Burns<K> {
    fn default() -> Self {
        Burns(HashMap::new())
    }
}

impl<K: Eq + Hash> Burns<K> {
    /// Refuses `room` until `until` (a later end of an earlier burn stands).
    pub fn burn(&mut self, room: K, until: Instant) {
        // Burns that ended are forgotten each time the table doubles, so it holds about one
        // TTL's worth of burns however long the relay runs.
        if self.0.len() >= 1024 && self.0.len().is_power_of_two() {
            let now = Instant::now();
            self.0.retain(|_, end| *end > now);
        }
        let end = self.0.entry(room).or_insert(until);
        *end = (*end).max(until);
    }

    /// Whether `room` is burnt now (a burn that ended is forgotten here).
    pub fn contains(&mut self, room: &K) -> bool {
        match self.0.get(room) {
            Some(end) if *end > Instant::now() => true,
            Some(_) => {
                self.0.remove(room);
                false
            }
            None => false,
        }
    }

    /// Burns kept (some may have ended).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets the burns that ended.
    pub fn sweep(&mut self) {
        let now = Instant::now();
        self.0.retain(|_, end| *end > now);
    }
}
