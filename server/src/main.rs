//! `fastdl-server`: publishes a folder and serves it to fastdl clients.
//!
//! Wiring only: options, logging, the catalog and its watcher, the status
//! reporter, the listener, and Ctrl-C. Each job lives in its own module.

mod catalog;
mod cli;
mod limits;
mod listener;
mod pacing;
mod plan;
mod session;
mod status;
mod transfer;
mod watcher;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use log::{error, info};

use crate::catalog::Catalog;
use crate::cli::Args;
use crate::limits::ConnectionLimits;
use crate::plan::{PlanConfig, Plans};
use crate::session::{SessionConfig, Shared};
use crate::status::Stats;
use fastdl_support::shutdown::Shutdown;

fn main() -> ExitCode {
    let args = Args::parse();
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
    let shutdown = Arc::new(Shutdown::default());
    {
        let shutdown = Arc::clone(&shutdown);
        ctrlc::set_handler(move || shutdown.trigger())
            .context("cannot install the Ctrl-C handler")?;
    }

    let catalog = Arc::new(Catalog::new(
        &args.dir,
        &args.list,
        &[&args.list, &args.log],
    )?);
    info!("scanning {}", catalog.root().display());
    catalog.rescan()?;
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    let _watcher = watcher::watch(&catalog, wake_tx.clone());
    {
        let (catalog, shutdown) = (Arc::clone(&catalog), Arc::clone(&shutdown));
        let period = Duration::from_secs(args.rescan);
        std::thread::Builder::new()
            .name("rescan".into())
            .spawn(move || watcher::run_rescans(catalog, wake_rx, period, shutdown))?;
    }

    let addrs: Vec<SocketAddr> = args
        .ports
        .iter()
        .map(|&p| SocketAddr::new(args.bind, p))
        .collect();
    let listeners = listener::bind_all(&addrs)?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    let stats = Arc::new(Stats::new(&ports));
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
        let (stats, shutdown) = (Arc::clone(&stats), Arc::clone(&shutdown));
        let interval = Duration::from_secs(args.status_interval);
        std::thread::Builder::new()
            .name("status".into())
            .spawn(move || status::run_reporter(stats, interval, shutdown))?;
    }

    let shared = Arc::new(Shared {
        catalog,
        stats,
        shutdown: Arc::clone(&shutdown),
        config: SessionConfig {
            idle_timeout: Duration::from_secs(args.idle_timeout),
            request_timeout: Duration::from_secs(args.request_timeout),
            write_timeout: Duration::from_secs(args.write_timeout),
            max_range: args.max_range,
        },
        plans: Arc::new(Plans::new(PlanConfig {
            max_plans: args.max_plans as usize,
            unit: args.plan_unit,
            write_timeout: Duration::from_secs(args.write_timeout),
        })),
        rescan: wake_tx,
    });
    let limits = Arc::new(ConnectionLimits::new(
        args.max_connections as usize,
        args.max_per_client as usize,
    ));
    listener::run(listeners, limits, shared, Duration::from_millis(1500));
    info!("stopped");
    Ok(())
}
