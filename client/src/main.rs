//! `fastdl-client`: shows a fastdl server's list, then downloads the names
//! written to input.txt, verified, into the output folder.
//!
//! Wiring only: options, logging and progress, the connection pools (warmed
//! at startup in `--once` mode, with the first name's head start), the
//! first list, the input watcher, the scheduler, Ctrl-C and the exit
//! status.

mod cli;
mod connection;
mod download;
mod expected;
mod fetcher;
mod head_start;
mod input;
mod journal;
mod lander;
mod leftovers;
mod mirrors;
mod outdir;
mod pace;
mod piece_writer;
mod pieces;
mod plan;
mod pool;
mod progress;
mod ratelimit;
mod scheduler;
mod store;
mod transport;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use fastdl_protocol::Listing;
use fastdl_support::human_bytes;
use fastdl_support::shutdown::Shutdown;
use log::{error, info, warn};

use crate::cli::Args;
use crate::connection::Ahead;
use crate::download::Downloader;
use crate::head_start::HeadStart;
use crate::input::InputWatcher;
use crate::outdir::OutDir;
use crate::pool::Pool;
use crate::progress::Progress;
use crate::ratelimit::RateLimit;
use crate::scheduler::{fetch_lists, Policy, Scheduler};
use crate::transport::{Endpoint, Security};
use fastdl_tls::known::KnownServers;

/// Exit status when Ctrl-C interrupted a `--once` run.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            eprintln!("fastdl-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    // A file-size limit (RLIMIT_FSIZE) must show up as a write error naming
    // the file, not kill the process.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let bars = !args.quiet && std::io::stderr().is_terminal();
    let progress = Arc::new(Progress::new(bars));
    fastdl_support::logging::init(args.level(), &args.log, progress.log_writer())?;
    let shutdown = Arc::new(Shutdown::default());
    {
        let shutdown = Arc::clone(&shutdown);
        ctrlc::set_handler(move || shutdown.trigger())
            .context("cannot install the Ctrl-C handler")?;
    }
    let out = OutDir::open(&args.out)
        .with_context(|| format!("cannot create the output folder {}", args.out.display()))?;

    let connections = args.connections as usize;
    let jobs = args.jobs as usize;
    let mut pools = Vec::new();
    for endpoint in endpoints(&args)? {
        pools.push(Pool::new(endpoint, connections * jobs));
    }
    let addrs: Vec<_> = pools.iter().map(Pool::addr).collect();
    let downloader = Arc::new(Downloader {
        pools,
        out,
        connections,
        plan: args.plan,
        limit: args.limit_rate.map(RateLimit::new),
        progress,
        shutdown: Arc::clone(&shutdown),
    });
    // `--once` knows its names before the list: read them now.
    let once_names = if args.once {
        let content = input::read_input(&args.input)
            .with_context(|| format!("cannot read {}", args.input.display()))?
            .with_context(|| format!("{} does not exist", args.input.display()))?;
        Some(input::parse_names(&content))
    } else {
        None
    };
    let head_start = once_names
        .as_deref()
        .and_then(|names| HeadStart::plan(names, &downloader.out, addrs.len(), args.plan))
        .map(Arc::new);
    // There will be downloads: open their connections (all but the one the
    // list comes over) while the lists are fetched, instead of one
    // handshake per worker afterwards, the first file's first pieces
    // already asked for.
    let warming: Vec<_> = (0..downloader.pools.len())
        .filter(|_| args.once)
        .map(|index| {
            let downloader = Arc::clone(&downloader);
            let head_start = head_start.clone();
            std::thread::spawn(move || {
                downloader.pools[index].warm(connections - 1, |i| {
                    head_start
                        .as_ref()
                        .map_or_else(Vec::new, |h| h.with_warm(i))
                })
            })
        })
        .collect();
    let with_list = head_start.as_ref().map_or_else(Vec::new, |h| h.with_list());
    let Some(lists) = first_lists(&downloader, &args, &shutdown, &with_list)? else {
        return Ok(interrupted(args.once));
    };
    // The first download takes the warmed connections over: they must be
    // in the pool before it starts.
    for warm in warming {
        let _ = warm.join();
    }
    print_lists(&lists);

    let poll = Duration::from_secs(args.poll);
    let policy = Policy {
        once: args.once,
        retries: args.retries,
        retry_wait: Duration::from_secs(args.retry_wait),
        poll,
    };
    let scheduler = Scheduler::new(
        Arc::clone(&downloader),
        lists,
        jobs,
        policy,
        Arc::clone(&shutdown),
    );

    let (names_tx, names_rx) = crossbeam_channel::unbounded();
    if let Some(names) = once_names {
        let _ = names_tx.send(names);
        drop(names_tx);
    } else {
        info!(
            "watching {} for names; Ctrl-C to stop",
            args.input.display()
        );
        let watcher = InputWatcher::new(&args.input, poll, names_tx, Arc::clone(&shutdown));
        std::thread::Builder::new()
            .name("input".into())
            .spawn(move || watcher.run())?;
    }

    let summary = scheduler.run(names_rx);
    if let Some(why) = &summary.fatal {
        bail!("{why}; stopping");
    }
    if summary.cancelled {
        info!("stopped; unfinished downloads keep their part files and start again next time");
        return Ok(interrupted(args.once));
    }
    info!(
        "{} downloaded, {} already present, {} failed",
        summary.downloaded,
        summary.already_had,
        summary.failed.len()
    );
    for (name, why) in &summary.failed {
        let why = why.strip_prefix(&format!("{name}: ")).unwrap_or(why);
        eprintln!("failed: {name}: {why}");
    }
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How to reach each `--server`: its address, TLS with its identity
/// pinned in the known servers (or plain TCP with `--plaintext`), the
/// access token.
fn endpoints(args: &Args) -> Result<Vec<Endpoint>> {
    if let Some(token) = &args.token {
        if !fastdl_protocol::message::is_access_token(token) {
            bail!("--token (or FASTDL_TOKEN): a token is 1 to 512 visible ASCII characters, without spaces");
        }
    }
    let known = if args.plaintext {
        None
    } else {
        let path = args
            .known_servers
            .clone()
            .or_else(|| fastdl_support::config_path("known_servers"))
            .context("no place for the known servers: neither XDG_CONFIG_HOME nor HOME is set; pass --known-servers FILE")?;
        Some(Arc::new(KnownServers::load(&path)?))
    };
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for server in &args.servers {
        let addr = connection::resolve(server).with_context(|| {
            format!("cannot resolve server address {server:?} (want HOST:PORT)")
        })?;
        if endpoints.iter().any(|e| e.addr == addr) {
            bail!("--server {server} is given twice");
        }
        let security = match &known {
            Some(known) => Security::tls(server, known),
            None => Security::Plain,
        };
        endpoints.push(Endpoint {
            addr,
            shown: server.clone(),
            security,
            token: args.token.clone(),
            floor: args.speed_floor(),
        });
    }
    Ok(endpoints)
}

fn interrupted(once: bool) -> ExitCode {
    if once {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    }
}

/// Fetches every server's list, retrying with backoff until at least one
/// answers: forever in watch mode, up to `--retries` times with `--once`.
/// `ahead` goes out right after each `LIST` request. `None` if interrupted.
fn first_lists(
    downloader: &Downloader,
    args: &Args,
    shutdown: &Shutdown,
    ahead: &[Ahead],
) -> Result<Option<Vec<Option<Listing>>>> {
    let mut attempt = 0u64;
    loop {
        let fetched = fetch_lists(downloader, ahead);
        let mut errors = Vec::new();
        let lists: Vec<Option<Listing>> = fetched
            .into_iter()
            .zip(&downloader.pools)
            .map(|(result, pool)| match result {
                Ok(list) => Some(list),
                Err(e) => {
                    errors.push(format!("{}: {e}", pool.addr()));
                    None
                }
            })
            .collect();
        if let Some(why) = downloader.fatal() {
            bail!("{why}");
        }
        if lists.iter().any(Option::is_some) {
            for e in &errors {
                warn!("cannot get the list from server {e}; going on without it for now");
            }
            return Ok(Some(lists));
        }
        let why = errors.join("; ");
        attempt += 1;
        if args.once && attempt >= args.retries {
            bail!("cannot get the list from server {why}");
        }
        let wait = Duration::from_secs(1 << attempt.min(5));
        warn!(
            "cannot get the list from server {why}; retrying in {} s",
            wait.as_secs()
        );
        let until = std::time::Instant::now() + wait;
        while std::time::Instant::now() < until {
            if shutdown.is_requested() {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Prints the list (merged over all servers, marking names not every server
/// holds and names the servers disagree on).
fn print_lists(lists: &[Option<Listing>]) {
    let merged = mirrors::merge(lists);
    let reachable = lists.iter().filter(|l| l.is_some()).count();
    if lists.len() == 1 {
        println!("{} files on the server:", merged.len());
    } else {
        println!(
            "{} files on {reachable} of {} servers:",
            merged.len(),
            lists.len()
        );
    }
    for (i, entry) in merged.iter().enumerate() {
        let mut marks = Vec::new();
        if lists.len() > 1 && entry.held_by < lists.len() {
            marks.push(format!("on {} of {} servers", entry.held_by, lists.len()));
        }
        if entry.conflict {
            marks.push("servers disagree on its content".to_owned());
        }
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!("  [{}]", marks.join("; "))
        };
        println!(
            "{}) {}  {}{marks}",
            i + 1,
            entry.name,
            human_bytes(entry.size)
        );
    }
}
