//! The roster: the relays this one counts as the mesh, the ones that left it lately, and a
//! signal for every change.
//!
//! Rooms are owned by rendezvous hashing over the roster, so a change moves rooms. Two things
//! follow, and both need to know what changed: the seats whose room moved record it at the new
//! owner (`Msg::Hold`, see `seat`), and the new owner of a room whose previous owner left lately
//! admits no new seat to it until those records can have arrived (see `Shared::moved_lately`).

use prometheus::IntGauge;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The relays this one knows of (incarnation → link address), this relay not included.
pub struct Roster {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    size: IntGauge,
    /// Relays that left within the grace, as of the last change or [`Roster::refresh`].
    moving: IntGauge,
    /// After a relay leaves, how long the rooms it owned admit no new seat.
    grace: Duration,
}

#[derive(Default)]
struct Inner {
    live: HashMap<u64, SocketAddr>,
    /// Relays that left, and when (forgotten once they come back).
    departed: HashMap<u64, Instant>,
}

/// Departures remembered at most this long (far beyond any grace asked for).
const REMEMBER: Duration = Duration::from_secs(3600);

impl Roster {
    /// A roster that shows its size and its departures within `grace` on the two gauges.
    pub fn new(size: IntGauge, moving: IntGauge, grace: Duration) -> Roster {
        Roster { inner: Mutex::default(), changed: watch::Sender::new(0), size, moving, grace }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` and signals when it changed who is on the roster.
    fn update(&self, change: impl FnOnce(&mut Inner) -> bool) {
        let (changed, len) = {
            let mut inner = self.lock();
            let changed = change(&mut inner);
            (changed, inner.live.len())
        };
        self.size.set(len as i64);
        self.refresh();
        if changed {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Adds (or moves) relay `id`.
    pub fn insert(&self, id: u64, addr: SocketAddr) {
        self.update(|inner| {
            inner.departed.remove(&id);
            inner.live.insert(id, addr).is_none()
        });
    }

    /// Takes relay `id` off.
    pub fn remove(&self, id: u64) {
        self.update(|inner| {
            let gone = inner.live.remove(&id).is_some();
            if gone {
                inner.departed.insert(id, Instant::now());
            }
            gone
        });
    }

    /// Makes the roster `next`, noting who left.
    pub fn set(&self, next: HashMap<u64, SocketAddr>) {
        self.update(|inner| {
            let now = Instant::now();
            let mut changed = false;
            for id in inner.live.keys().filter(|id| !next.contains_key(id)).copied().collect::<Vec<_>>() {
                inner.departed.insert(id, now);
                changed = true;
            }
            for id in next.keys() {
                changed |= !inner.live.contains_key(id);
                inner.departed.remove(id);
            }
            inner.departed.retain(|_, at| at.elapsed() < REMEMBER);
            inner.live = next;
            changed
        });
    }

    /// The relays on the roster.
    pub fn ids(&self) -> Vec<u64> {
        self.lock().live.keys().copied().collect()
    }

    /// The relays on the roster, with their link addresses.
    pub fn snapshot(&self) -> HashMap<u64, SocketAddr> {
        self.lock().live.clone()
    }

    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// The relays that left within the grace, each with the end of its grace: the rooms they
    /// owned admit no new seat until then.
    pub fn moving(&self) -> Vec<(u64, Instant)> {
        let now = Instant::now();
        self.lock().departed.iter().map(|(id, at)| (*id, *at + self.grace)).filter(|(_, end)| *end > now).collect()
    }

    /// Brings the gauge of departures within the grace up to date (graces end with time).
    pub fn refresh(&self) {
        self.moving.set(self.moving().len() as i64);
    }

    /// A receiver that wakes at every change of who is on the roster.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    #[tokio::test]
    async fn changes_are_signalled_and_departures_remembered() {
        let gauge = |name: &str| IntGauge::new(name, name).unwrap();
        let r = Roster::new(gauge("size"), gauge("moving"), Duration::from_secs(1));
        let mut changes = r.changes();
        r.insert(1, addr(1));
        r.insert(2, addr(2));
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        r.insert(1, addr(3));
        assert!(!changes.has_changed().unwrap(), "a new address for a known relay moves no room");
        r.set(HashMap::from([(2, addr(2)), (3, addr(3))]));
        assert!(changes.has_changed().unwrap());
        assert_eq!(r.moving().len(), 1);
        assert_eq!(r.moving()[0].0, 1);
        r.insert(1, addr(1));
        assert!(r.moving().is_empty(), "back again: not departed");
        r.remove(3);
        assert_eq!((r.moving()[0].0, r.moving.get()), (3, 1));
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(1)).await;
        r.refresh();
        assert!(r.moving().is_empty() && r.moving.get() == 0, "the grace is over");
        let mut ids = r.ids();
        ids.sort_unstable();
        assert_eq!((ids, r.size.get()), (vec![1, 2], 2));
    }
}
