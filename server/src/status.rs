//! Counters for the status report, and the task that logs it every
//! `--status-interval` seconds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;

use crate::net::table::Table;
use fastdl_support::human_bytes;

/// Counters of one listening port.
#[derive(Debug, Default)]
pub struct PortStats {
    /// The port these counters are for.
    pub port: u16,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub active: AtomicUsize,
    /// Bytes of file data sent since start.
    pub bytes_sent: AtomicU64,
}

impl PortStats {
    /// Counts a connection accepted on this port as active until the
    /// returned guard is dropped (however its session ends).
    pub fn enter(&self) -> ActiveGuard<'_> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self)
    }
}

/// One active connection of a port, counted while it lives.
pub struct ActiveGuard<'a>(&'a PortStats);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counters of the whole server.
#[derive(Debug, Default)]
pub struct Stats {
    /// One per listening port (fastdl ports, then the HTTP face).
    pub ports: Vec<PortStats>,
    /// Ranges being sent now.
    pub active_transfers: AtomicUsize,
    /// Connections refused (busy) since start.
    pub refused: AtomicU64,
}

impl Stats {
    pub fn new(ports: &[u16]) -> Stats {
        Stats {
            ports: ports
                .iter()
                .map(|&port| PortStats {
                    port,
                    ..PortStats::default()
                })
                .collect(),
            ..Stats::default()
        }
    }

    fn total_sent(&self) -> u64 {
        self.ports
            .iter()
            .map(|p| p.bytes_sent.load(Ordering::Relaxed))
            .sum()
    }

    fn total_active(&self) -> usize {
        self.ports
            .iter()
            .map(|p| p.active.load(Ordering::Relaxed))
            .sum()
    }
}

/// Logs a status line every `interval`, for the life of the runtime.
pub async fn run_reporter(stats: Arc<Stats>, table: Arc<Table>, interval: Duration) {
    let mut last_sent = stats.total_sent();
    let mut last_time = Instant::now();
    let mut ticks = tokio::time::interval_at((last_time + interval).into(), interval);
    loop {
        ticks.tick().await;
        let sent = stats.total_sent();
        let secs = last_time.elapsed().as_secs_f64().max(1e-9);
        let rate = (sent - last_sent) as f64 / secs;
        last_sent = sent;
        last_time = Instant::now();
        let counts = table.counts();
        let ports: Vec<String> = stats
            .ports
            .iter()
            .map(|p| {
                format!(
                    "port {}: {} open, {} accepted, {} sent",
                    p.port,
                    p.active.load(Ordering::Relaxed),
                    p.accepted.load(Ordering::Relaxed),
                    human_bytes(p.bytes_sent.load(Ordering::Relaxed))
                )
            })
            .collect();
        info!(
            "status: {} connections ({} waiting for a request, {} busy), {} active transfers, \
             {} sent, {}/s, {} refused, {} closed to make room | {}",
            stats.total_active(),
            counts.waiting,
            counts.busy,
            stats.active_transfers.load(Ordering::Relaxed),
            human_bytes(sent),
            human_bytes(rate as u64),
            stats.refused.load(Ordering::Relaxed),
            counts.evicted,
            ports.join(" | ")
        );
    }
}
