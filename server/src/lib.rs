//! `fastdl-server`: publishes a folder and serves it over the fastdl
//! protocol.
//!
//! The layers, from the disk to the wire:
//! - [`catalog`]: what is published: the folder scanned, each file's BLAKE3
//!   piece tree, the list file, the one safe way to open a file, and the
//!   watch that keeps it current (its own threads; hashing is CPU work).
//! - [`net`]: listeners, the connection table (limits and eviction), one
//!   task per connection reading request lines and answering them.
//! - [`transfer`]: every byte sent, held to the progress deadline:
//!   replies, file ranges with `sendfile`, the N-stream plans.
//! - [`status`]: counters and the periodic status line.
//!
//! [`main`] wires them: logging, the descriptor limit, the catalog, the
//! tokio runtime, the listeners, Ctrl-C.

pub mod catalog;
pub mod cli;
pub mod net;
pub mod status;
pub mod transfer;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use log::{error, info};
use tokio_util::sync::CancellationToken;

use crate::catalog::{watch, Catalog};
use crate::cli::Args;
use crate::net::conn::LineTimeouts;
use crate::net::table::{Limits, Table};
use crate::net::{limits, listener, Config, Ctx};
use crate::status::Stats;
use crate::transfer::pace::SpeedFloor;
use crate::transfer::plan::{PlanConfig, Plans};

/// How long shutdown waits for connections to close after Ctrl-C.
const DRAIN: Duration = Duration::from_millis(1500);

/// Runs the server with `args`; the process's exit status.
pub fn main(args: Args) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("fastdl-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    fastdl_support::logging::init(args.level(), &args.log, None)?;
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        ctrlc::set_handler(move || shutdown.cancel())
            .context("cannot install the Ctrl-C handler")?;
    }
    let nofile = limits::raise_nofile();
    let max_plans = args.max_plans as usize;
    let table_limits = Limits {
        max_total: args.max_connections.map_or_else(
            || limits::default_max_connections(nofile, max_plans),
            |n| n as usize,
        ),
        max_per_addr: args.max_per_client as usize,
    };
    info!(
        "file descriptors: {nofile}; at most {} connections, {} per address, {} plans ({} per address)",
        table_limits.max_total, table_limits.max_per_addr, max_plans, args.max_plans_per_client
    );

    let catalog = Arc::new(Catalog::new(
        &args.dir,
        &args.list,
        &[&args.list, &args.log],
    )?);
    info!("scanning {}", catalog.root().display());
    catalog.rescan()?;
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    let _watcher = watch::watch(&catalog, wake_tx.clone());
    {
        let catalog = Arc::clone(&catalog);
        let period = Duration::from_secs(args.rescan);
        std::thread::Builder::new()
            .name("rescan".into())
            .spawn(move || watch::run_rescans(catalog, wake_rx, period))?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("net")
        .build()
        .context("cannot start the event loop")?;
    let addrs: Vec<SocketAddr> = args
        .ports
        .iter()
        .map(|&p| SocketAddr::new(args.bind, p))
        .collect();
    let send_floor = SpeedFloor {
        min_rate: args.speed_limit,
        window: Duration::from_secs(args.speed_time),
    };
    runtime.block_on(async {
        let listeners = listener::bind_all(&addrs)?;
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<_>>()?;
        let stats = Arc::new(Stats::new(&ports));
        let table = Arc::new(Table::new(table_limits, shutdown.clone()));
        let plans = Arc::new(Plans::new(
            PlanConfig {
                max_plans,
                max_per_addr: args.max_plans_per_client as usize,
                unit: args.plan_unit,
                floor: send_floor,
            },
            Arc::clone(&stats),
            shutdown.clone(),
        ));
        let ctx = Arc::new(Ctx {
            catalog: Arc::clone(&catalog),
            stats: Arc::clone(&stats),
            table: Arc::clone(&table),
            plans,
            config: Config {
                lines: LineTimeouts {
                    idle: Duration::from_secs(args.idle_timeout),
                    per_line: Duration::from_secs(args.request_timeout),
                },
                send_floor,
                max_range: args.max_range,
            },
            rescan: wake_tx,
        });
        for listener in &listeners {
            info!("listening on {}", listener.local_addr()?);
        }
        info!(
            "serving {} files from {}; list in {}",
            catalog.snapshot().listing.len(),
            catalog.root().display(),
            args.list.display()
        );
        if args.status_interval > 0 {
            let interval = Duration::from_secs(args.status_interval);
            tokio::spawn(status::run_reporter(stats, Arc::clone(&table), interval));
        }
        for (index, l) in listeners.into_iter().enumerate() {
            tokio::spawn(listener::run(Arc::clone(&ctx), l, index, shutdown.clone()));
        }
        shutdown.cancelled().await;
        info!("stopping");
        anyhow::Ok(())
    })?;
    // Sessions saw the shutdown and close; anything still running (a send
    // to a slow reader) is dropped with the runtime.
    runtime.shutdown_timeout(DRAIN);
    info!("stopped");
    Ok(())
}
