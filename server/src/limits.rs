//! Connection limits: in total and per client address. A slot is held by a
//! [`Slot`] guard and given back when the guard is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub struct ConnectionLimits {
    max_total: usize,
    max_per_client: usize,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Total(usize),
    PerClient(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total(n) => write!(
                f,
                "server is at its connection limit ({n}); try again later"
            ),
            Refusal::PerClient(n) => {
                write!(
                    f,
                    "too many connections from your address (limit {n}); try again later"
                )
            }
        }
    }
}

pub struct Slot {
    limits: Arc<ConnectionLimits>,
    addr: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_client: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_total,
            max_per_client,
            counts: Mutex::new((0, HashMap::new())),
        }
    }

    pub fn acquire(self: &Arc<Self>, addr: IpAddr) -> Result<Slot, Refusal> {
        let mut guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *guard;
        if *total >= self.max_total {
            return Err(Refusal::Total(self.max_total));
        }
        let mine = per.entry(addr).or_insert(0);
        if *mine >= self.max_per_client {
            return Err(Refusal::PerClient(self.max_per_client));
        }
        *mine += 1;
        *total += 1;
        Ok(Slot {
            limits: Arc::clone(self),
            addr,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *guard;
        *total -= 1;
        if let Some(n) = per.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_slots_come_back() {
        let limits = Arc::new(ConnectionLimits::new(3, 2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = limits.acquire(a).unwrap();
        let _s2 = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).err(), Some(Refusal::PerClient(2)));
        let _s3 = limits.acquire(b).unwrap();
        assert_eq!(limits.acquire(b).err(), Some(Refusal::Total(3)));
        drop(s1);
        assert!(limits.acquire(b).is_ok());
    }
}
