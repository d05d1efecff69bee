//! One run of the server, wired from its options: logging, Ctrl-C, the
//! descriptor limit and the connection limits sized from it, TLS (or
//! not), access tokens, the catalog and its watch, then the listeners on
//! a tokio runtime until Ctrl-C. Each piece is built in its own module;
//! this one only connects them and turns errors into an exit status.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use log::{error, info, warn};
use tokio_util::sync::CancellationToken;

use crate::catalog::{watch, Catalog};
use crate::cli::Args;
use crate::net::auth::Tokens;
use crate::net::conn::LineTimeouts;
use crate::net::table::{Limits, Table};
use crate::net::transport::{self, Transport};
use crate::net::{limits, listener, Config, Ctx};
use crate::status;
use crate::status::Stats;
use crate::transfer::pace::SpeedFloor;
use crate::transfer::plan::{PlanConfig, Plans};

/// How connections are set up, for the fastdl ports and for the HTTP
/// face: TLS with the server's identity (made on first start; ALPN says
/// which protocol), or plain TCP with `--plaintext`.
fn transports_for(args: &Args) -> Result<(Transport, Transport)> {
    if args.plaintext {
        return Ok((Transport::Plain, Transport::Plain));
    }
    let path = args.identity_path().context(
        "no place for the server identity: neither XDG_CONFIG_HOME nor HOME is set; pass --identity FILE",
    )?;
    let (identity, origin) = fastdl_tls::identity::Identity::load_or_create(&path)?;
    match origin {
        fastdl_tls::identity::Origin::Created => {
            info!(
                "made a new server identity in {} (mode 0600)",
                path.display()
            )
        }
        fastdl_tls::identity::Origin::Loaded => {
            if fastdl_tls::identity::Identity::too_open(&path) {
                warn!(
                    "{} can be read by others than its owner: chmod 600 it",
                    path.display()
                );
            }
        }
    }
    info!(
        "server identity {} (from {}); clients pin it on first contact; \
         curl: --pinnedpubkey {}",
        identity.fingerprint,
        path.display(),
        identity.fingerprint
    );
    let config = |alpn: &[u8]| {
        identity
            .server_config(&[alpn])
            .context("cannot set up TLS with the server identity")
    };
    Ok((
        transport::tls(config(fastdl_tls::ALPN_FASTDL)?),
        transport::tls(config(fastdl_tls::ALPN_HTTP1)?),
    ))
}

/// How long shutdown waits for connections to close after Ctrl-C.
const DRAIN: Duration = Duration::from_millis(1500);

/// Runs the server with `args`; the process's exit status.
pub fn main(args: Args) -> ExitCode {
    if let Some(code) = fastdl_support::docs::asked_for(Args::command(), args.completions, args.man)
    {
        return code;
    }
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
    fastdl_support::logging::init(args.level(), &args.log)?;
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        fastdl_support::signals::handle(move || shutdown.cancel())?;
    }
    let limits = connection_limits(&args);
    let (transport, http_transport) = transports_for(&args)?;
    let tokens = load_tokens(&args)?;
    let (catalog, rescan, _watcher) = start_catalog(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("net")
        .build()
        .context("cannot start the event loop")?;
    let send_floor = SpeedFloor {
        min_rate: args.speed_limit,
        window: Duration::from_secs(args.speed_time),
    };
    let ctx = |stats: &Arc<Stats>| {
        let table = Arc::new(Table::new(limits, shutdown.clone()));
        let plans = Arc::new(Plans::new(
            PlanConfig {
                max_plans: args.max_plans as usize,
                max_per_addr: args.max_plans_per_client as usize,
                unit: args.plan_unit,
                floor: send_floor,
            },
            Arc::clone(stats),
            shutdown.clone(),
            transport.clone(),
        ));
        Arc::new(Ctx {
            catalog: Arc::clone(&catalog),
            stats: Arc::clone(stats),
            table,
            plans,
            config: Config {
                lines: LineTimeouts {
                    idle: Duration::from_secs(args.idle_timeout),
                    per_line: Duration::from_secs(args.request_timeout),
                },
                send_floor,
                max_range: args.max_range,
            },
            transport: transport.clone(),
            tokens,
            rescan: rescan.clone(),
            index_pages: Default::default(),
            closing: Default::default(),
        })
    };
    runtime.block_on(serve(&args, ctx, http_transport, shutdown.clone()))?;
    // Sessions saw the shutdown and close; anything still running (a send
    // to a slow reader) is dropped with the runtime.
    runtime.shutdown_timeout(DRAIN);
    info!("stopped");
    Ok(())
}

/// The connection limits, sized from the descriptor limit (raised to its
/// hard limit first) unless given.
fn connection_limits(args: &Args) -> Limits {
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
    let affordable = limits::affordable_connections(nofile, max_plans);
    if table_limits.max_total > affordable {
        warn!(
            "--max-connections {} is more than {nofile} file descriptors serve at once ({affordable}); \
             when they run out, waiting connections are closed to accept new ones",
            table_limits.max_total
        );
    }
    table_limits
}

/// The access tokens of `--token-file`, if given.
fn load_tokens(args: &Args) -> Result<Option<Tokens>> {
    let Some(path) = &args.token_file else {
        return Ok(None);
    };
    let tokens = Tokens::load(path)?;
    info!(
        "access by token only: {} tokens in {}",
        tokens.count(),
        path.display()
    );
    Ok(Some(tokens))
}

/// The catalog, scanned once, with its watch and rescan thread running;
/// also the channel that asks for a rescan, and the watcher (kept alive
/// by the caller).
fn start_catalog(
    args: &Args,
) -> Result<(
    Arc<Catalog>,
    crossbeam_channel::Sender<()>,
    Option<notify::RecommendedWatcher>,
)> {
    // The server's own files are never published, even when they sit in
    // the folder: its list and log, its private key, its tokens.
    let identity = args.identity_path();
    let mut own: Vec<&Path> = vec![&args.list, &args.log];
    own.extend(identity.as_deref());
    own.extend(args.token_file.as_deref());
    let catalog = Arc::new(Catalog::new(&args.dir, &args.list, &own)?);
    info!("scanning {}", catalog.root().display());
    catalog.rescan()?;
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    let watcher = watch::watch(&catalog, wake_tx.clone());
    {
        let catalog = Arc::clone(&catalog);
        let period = Duration::from_secs(args.rescan);
        std::thread::Builder::new()
            .name("rescan".into())
            .spawn(move || watch::run_rescans(catalog, wake_rx, period))?;
    }
    Ok((catalog, wake_tx, watcher))
}

/// Binds every port, then serves until `shutdown`. `ctx` makes the
/// sessions' shared context once the ports (and so the counters) are known.
async fn serve(
    args: &Args,
    ctx: impl FnOnce(&Arc<Stats>) -> Arc<Ctx>,
    http_transport: Transport,
    shutdown: CancellationToken,
) -> Result<()> {
    let addrs: Vec<SocketAddr> = args
        .ports
        .iter()
        .chain(&args.http_port)
        .map(|&p| SocketAddr::new(args.bind, p))
        .collect();
    let mut listeners = listener::bind_all(&addrs)?;
    let http = args.http_port.and_then(|_| listeners.pop());
    let ports: Vec<u16> = listeners
        .iter()
        .chain(&http)
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    let stats = Arc::new(Stats::new(&ports));
    let ctx = ctx(&stats);
    for listener in &listeners {
        let addr = listener.local_addr()?;
        info!("listening on {addr}");
        if args.plaintext && !addr.ip().is_loopback() {
            warn!(
                "listening on {addr} WITHOUT TLS (--plaintext): anyone on the path can read \
                 and alter every byte, and any token; use it on trusted links only"
            );
        }
    }
    info!(
        "serving {} files from {}; list in {}",
        ctx.catalog.snapshot().listing.len(),
        ctx.catalog.root().display(),
        args.list.display()
    );
    if args.status_interval > 0 {
        let interval = Duration::from_secs(args.status_interval);
        tokio::spawn(status::run_reporter(
            stats,
            Arc::clone(&ctx.table),
            interval,
        ));
    }
    let fastdl_ports = listeners.len();
    for (index, l) in listeners.into_iter().enumerate() {
        tokio::spawn(listener::run(Arc::clone(&ctx), l, index, shutdown.clone()));
    }
    if let Some(http) = http {
        let addr = http.local_addr()?;
        let scheme = if args.plaintext { "http" } else { "https" };
        info!("HTTP face on {addr} ({scheme}://{addr}/)");
        tokio::spawn(crate::http::run(
            Arc::clone(&ctx),
            http,
            fastdl_ports,
            http_transport,
            shutdown.clone(),
        ));
    }
    shutdown.cancelled().await;
    info!("stopping");
    Ok(())
}
