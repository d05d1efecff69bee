//! The connection table: how many connections are open, from where, and
//! which are only waiting for a request, so that under pressure the server
//! frees the least useful connection instead of refusing the newest.
//!
//! Rules (PROTOCOL.md, "Limits"):
//! - At most `max_total` connections. A new one past it closes the
//!   connection that has waited longest for its next request (idle, or
//!   trickling a request line), with `ERROR TIMEOUT`; only if every
//!   connection is busy with a request is the new one refused
//!   (`ERROR BUSY`).
//! - At most `max_per_addr` connections from one address. An address at
//!   its limit loses its own longest-waiting connection first; only when
//!   all of them are busy is it refused. So the limit really counts
//!   requests in progress, and a client sharing its address (a NAT, a
//!   VPN exit) with someone holding hundreds of idle connections is still
//!   served: its new connections push the idle ones out.
//!
//! "Waiting since" is when a connection began to wait for its current
//! request (its accept, or the end of its last reply), so a slow trickler
//! ages like an idle one. The choice of whom to close is a pure function
//! of the table ([`Inner::victim`]), tested without sockets.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// The limits the table keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_total: usize,
    pub max_per_addr: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "server is at its connection limit ({0}) and every connection is busy; try again later"
    )]
    Total(usize),
    #[error("too many busy connections from your address (limit {0}); try again later")]
    PerAddress(usize),
}

struct Entry {
    addr: IpAddr,
    /// `Some(since)` while waiting for a request; `None` while busy.
    waiting: Option<Instant>,
    /// Cancelled to close the connection (eviction or shutdown).
    close: CancellationToken,
}

#[derive(Default)]
struct PerAddr {
    open: usize,
    waiting: BTreeSet<(Instant, u64)>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    waiting: BTreeSet<(Instant, u64)>,
    per_addr: HashMap<IpAddr, PerAddr>,
    evicted: u64,
}

/// The table, shared by the listeners and every connection.
pub struct Table {
    limits: Limits,
    inner: Mutex<Inner>,
    /// Parent of every connection's close token: shutdown closes them all.
    shutdown: CancellationToken,
}

/// A connection's place in the table; dropping it leaves the table.
pub struct Ticket {
    table: Arc<Table>,
    id: u64,
    /// Cancelled when the connection is to be closed: evicted to make
    /// room, or the server shutting down.
    pub close: CancellationToken,
}

/// What one admission did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Connections closed to make room (0 or 1 each way).
    pub evicted: usize,
}

/// Counts for the status line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub waiting: usize,
    pub busy: usize,
    /// Connections closed to make room since start.
    pub evicted: u64,
}

impl Inner {
    /// The connection to close so that one more from `addr` fits, if one
    /// must close: `Ok(None)` if there is room, `Err` if only busy
    /// connections stand in the way.
    fn victim(&self, limits: &Limits, addr: IpAddr) -> Result<Option<u64>, Refusal> {
        if let Some(mine) = self.per_addr.get(&addr) {
            if mine.open >= limits.max_per_addr {
                return match mine.waiting.first() {
                    Some(&(_, id)) => Ok(Some(id)),
                    None => Err(Refusal::PerAddress(limits.max_per_addr)),
                };
            }
        }
        if self.conns.len() >= limits.max_total {
            return match self.waiting.first() {
                Some(&(_, id)) => Ok(Some(id)),
                None => Err(Refusal::Total(limits.max_total)),
            };
        }
        Ok(None)
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.conns.remove(&id)?;
        if let Some(since) = entry.waiting {
            self.waiting.remove(&(since, id));
        }
        if let Some(mine) = self.per_addr.get_mut(&entry.addr) {
            mine.open -= 1;
            if let Some(since) = entry.waiting {
                mine.waiting.remove(&(since, id));
            }
            if mine.open == 0 {
                self.per_addr.remove(&entry.addr);
            }
        }
        Some(entry)
    }

    fn set_waiting(&mut self, id: u64, waiting: Option<Instant>) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        let before = std::mem::replace(&mut entry.waiting, waiting);
        let mine = self.per_addr.entry(entry.addr).or_default();
        if let Some(since) = before {
            self.waiting.remove(&(since, id));
            mine.waiting.remove(&(since, id));
        }
        if let Some(since) = waiting {
            self.waiting.insert((since, id));
            mine.waiting.insert((since, id));
        }
    }
}

impl Table {
    pub fn new(limits: Limits, shutdown: CancellationToken) -> Table {
        Table {
            limits,
            inner: Mutex::new(Inner::default()),
            shutdown,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `addr`, waiting for its first request
    /// since `now`, closing others to make room as the rules say.
    pub fn admit(
        self: &Arc<Self>,
        addr: IpAddr,
        now: Instant,
    ) -> Result<(Ticket, Admitted), Refusal> {
        let mut inner = self.lock();
        let mut admitted = Admitted::default();
        // At most two rounds: one for the address, one for the total.
        for _ in 0..2 {
            match inner.victim(&self.limits, addr)? {
                None => break,
                Some(id) => {
                    if let Some(entry) = inner.remove(id) {
                        entry.close.cancel();
                        inner.evicted += 1;
                        admitted.evicted += 1;
                    }
                }
            }
        }
        if inner.victim(&self.limits, addr)?.is_some() {
            return Err(Refusal::Total(self.limits.max_total));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let close = self.shutdown.child_token();
        inner.conns.insert(
            id,
            Entry {
                addr,
                waiting: None,
                close: close.clone(),
            },
        );
        inner.per_addr.entry(addr).or_default().open += 1;
        inner.set_waiting(id, Some(now));
        drop(inner);
        Ok((
            Ticket {
                table: Arc::clone(self),
                id,
                close,
            },
            admitted,
        ))
    }

    /// Closes the connection that has waited longest for a request, if
    /// any waits: for when descriptors, not the limits, run out. Whether
    /// one was closed.
    pub fn evict_longest_waiting(&self) -> bool {
        let mut inner = self.lock();
        let Some(&(_, id)) = inner.waiting.first() else {
            return false;
        };
        if let Some(entry) = inner.remove(id) {
            entry.close.cancel();
            inner.evicted += 1;
        }
        true
    }

    pub fn counts(&self) -> Counts {
        let inner = self.lock();
        Counts {
            waiting: inner.waiting.len(),
            busy: inner.conns.len() - inner.waiting.len(),
            evicted: inner.evicted,
        }
    }
}

impl Ticket {
    /// The connection now waits for its next request (since `now`): it may
    /// be closed to make room.
    pub fn waiting(&self, now: Instant) {
        self.table.lock().set_waiting(self.id, Some(now));
    }

    /// The connection is busy with a request: it is not closed to make room.
    pub fn busy(&self) {
        self.table.lock().set_waiting(self.id, None);
    }

    /// Whether it was closed to make room (rather than by shutdown).
    pub fn evicted(&self) -> bool {
        self.close.is_cancelled() && !self.table.shutdown.is_cancelled()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.table.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn table(max_total: usize, max_per_addr: usize) -> Arc<Table> {
        Arc::new(Table::new(
            Limits {
                max_total,
                max_per_addr,
            },
            CancellationToken::new(),
        ))
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn the_longest_waiting_goes_first_when_the_server_is_full() {
        let t = table(3, 10);
        let t0 = Instant::now();
        let (old, _) = t.admit(ip(1), t0).unwrap();
        let (busy, _) = t.admit(ip(2), t0).unwrap();
        busy.busy();
        let (newer, _) = t.admit(ip(3), t0 + Duration::from_secs(1)).unwrap();
        let (_new, admitted) = t.admit(ip(4), t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(admitted.evicted, 1);
        assert!(old.evicted() && !newer.close.is_cancelled() && !busy.close.is_cancelled());
        assert_eq!(t.counts().evicted, 1);
        // Waiting again refreshes a connection's age.
        newer.waiting(t0 + Duration::from_secs(5));
        let (_, _) = t.admit(ip(5), t0 + Duration::from_secs(6)).unwrap();
        assert!(!newer.close.is_cancelled(), "the older one went");
    }

    #[test]
    fn only_busy_connections_are_a_reason_to_refuse() {
        let t = table(2, 10);
        let t0 = Instant::now();
        let (a, _) = t.admit(ip(1), t0).unwrap();
        let (b, _) = t.admit(ip(2), t0).unwrap();
        a.busy();
        b.busy();
        assert_eq!(t.admit(ip(3), t0).err(), Some(Refusal::Total(2)));
        drop(a);
        assert!(t.admit(ip(3), t0).is_ok());
    }

    #[test]
    fn an_address_at_its_limit_loses_its_own_idle_connection_first() {
        let t = table(100, 2);
        let t0 = Instant::now();
        let (other, _) = t.admit(ip(9), t0).unwrap();
        let (idle, _) = t.admit(ip(1), t0 + Duration::from_secs(1)).unwrap();
        let (busy, _) = t.admit(ip(1), t0 + Duration::from_secs(2)).unwrap();
        busy.busy();
        let (third, admitted) = t.admit(ip(1), t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(admitted.evicted, 1);
        assert!(idle.evicted(), "its own idle connection went");
        assert!(
            !other.close.is_cancelled(),
            "not the older one of another address"
        );
        third.busy();
        assert_eq!(
            t.admit(ip(1), t0 + Duration::from_secs(4)).err(),
            Some(Refusal::PerAddress(2))
        );
        assert_eq!(
            t.counts(),
            Counts {
                waiting: 1,
                busy: 2,
                evicted: 1
            }
        );
    }

    #[test]
    fn shutdown_closes_every_connection_and_is_not_an_eviction() {
        let shutdown = CancellationToken::new();
        let t = Arc::new(Table::new(
            Limits {
                max_total: 5,
                max_per_addr: 5,
            },
            shutdown.clone(),
        ));
        let (a, _) = t.admit(ip(1), Instant::now()).unwrap();
        shutdown.cancel();
        assert!(a.close.is_cancelled());
        assert!(!a.evicted());
    }
}
