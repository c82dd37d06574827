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

#[cfg(test)]
mod tests {
    use super::*;

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
