//! Connection limits: per client IP, counted with guards that release on drop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections per client IP.
pub struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it gives the slot back.
pub struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// A table allowing `max` connections per address.
    pub fn new(max: usize) -> Arc<PerIp> {
        Arc::new(PerIp { max, open: Mutex::new(HashMap::new()) })
    }

    /// Takes a slot for `ip`, or `None` when it already holds `max`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot { table: Arc::clone(self), ip })
    }

    /// Addresses holding at least one slot (for tests and metrics).
    pub fn addresses(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Frames longer than this are *bulk* (file chunks): they cost a connection bytes of its
/// [`ByteBudget`] instead of a token of its frame rate. Every chat frame is shorter: the client
/// caps a line at 1,000 characters, which seals into about 5.5 KiB on the wire.
pub const BULK_FRAME: usize = 8 * 1024;

/// A connection's budget for bulk frames: a token bucket of bytes that may go into debt. A
/// frame is always taken; one that leaves the bucket in debt is held, and the connection's
/// reading paused, until the debt is paid. A fast sender is slowed to the rate (TCP pushes
/// back on it), never cut off, and nothing it sent is dropped.
pub struct ByteBudget {
    rate: u64,
    burst: i64,
    tokens: i64,
    at: tokio::time::Instant,
}

impl ByteBudget {
    /// `rate` bytes per second sustained, `burst` at once; starts full.
    pub fn new(rate: u32, burst: u32, now: tokio::time::Instant) -> ByteBudget {
        ByteBudget { rate: u64::from(rate.max(1)), burst: i64::from(burst), tokens: i64::from(burst), at: now }
    }

    /// Charges `n` bytes at `now`: how long to hold them before reading more, if the budget is
    /// in debt.
    pub fn charge(&mut self, n: usize, now: tokio::time::Instant) -> Option<std::time::Duration> {
        let elapsed = now.saturating_duration_since(self.at);
        self.at = now;
        let refill = elapsed.as_nanos().saturating_mul(u128::from(self.rate)) / 1_000_000_000;
        let refill = i64::try_from(refill).unwrap_or(i64::MAX);
        self.tokens = self.tokens.saturating_add(refill).min(self.burst);
        self.tokens = self.tokens.saturating_sub(i64::try_from(n).unwrap_or(i64::MAX));
        let debt = u64::try_from(-self.tokens).ok().filter(|d| *d > 0)?;
        let nanos = u128::from(debt) * 1_000_000_000 / u128::from(self.rate);
        Some(std::time::Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_byte_budget_slows_a_sender_to_its_rate_and_never_refuses() {
        use std::time::Duration;
        let start = tokio::time::Instant::now();
        let mut b = ByteBudget::new(1_000_000, 200_000, start);
        // The burst passes at once.
        for _ in 0..3 {
            assert_eq!(b.charge(64_000, start), None);
        }
        // The fourth goes 56 KB into debt: held 56 ms.
        assert_eq!(b.charge(64_000, start), Some(Duration::from_millis(56)));
        // Paid after those 56 ms (-56,000 + 56,000): the next frame waits for its own bytes.
        let later = start + Duration::from_millis(56);
        assert_eq!(b.charge(64_000, later), Some(Duration::from_millis(64)));
        // Sending at the rate, a sender is never held for longer than one frame's bytes.
        let mut now = later + Duration::from_millis(64);
        for _ in 0..1000 {
            let held = b.charge(10_000, now).unwrap_or_default();
            assert!(held <= Duration::from_millis(10), "{held:?}");
            now += held.max(Duration::from_millis(10));
        }
        // Idle time refills up to the burst, no more.
        let idle = now + Duration::from_secs(60);
        assert_eq!(b.charge(200_000, idle), None);
        assert!(b.charge(1, idle).is_some());
    }

    #[test]
    fn slots_are_counted_and_returned() {
        let t = PerIp::new(2);
        let ip = IpAddr::from([192, 0, 2, 1]);
        let a = t.acquire(ip);
        let b = t.acquire(ip);
        assert!(a.is_some() && b.is_some());
        assert!(t.acquire(ip).is_none());
        assert!(t.acquire(IpAddr::from([192, 0, 2, 2])).is_some());
        drop(a);
        assert!(t.acquire(ip).is_some());
        drop(b);
        assert_eq!(t.addresses(), 0, "released addresses leave no entry behind");
    }
}
