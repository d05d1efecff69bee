//! One run of the client, wired from its options: logging and progress,
//! Ctrl-C, the output folder, the servers, the engine and its lander, the
//! first lists, the input (read once, or watched), the scheduler, and the
//! exit status. Each piece is built in its own module; this one only
//! connects them, and turns errors into messages and exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::CommandFactory;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crossbeam_channel::Receiver;
use fastdl_tls::known::KnownServers;
use log::{error, info, warn};

use crate::cli::Args;
use crate::disk::outdir::OutDir;
use crate::download::outcome::Report;
use crate::download::ratelimit::RateLimit;
use crate::download::source::Source;
use crate::download::{Engine, Settings};
use crate::lists::{fetch_all, Lists};
use crate::net::connection;
use crate::net::transport::{Endpoint, Security};
use crate::progress::Progress;
use crate::retry::Backoff;
use crate::schedule::input::{self, InputWatcher};
use crate::schedule::item::Item;
use crate::schedule::names::Policy;
use crate::schedule::scheduler::{Parts, Scheduler, Summary, Web};
use crate::schedule::web_slots::WebSlots;
use crate::shutdown::Shutdown;
use crate::sources::fastdl::Server;
use crate::sources::http::probe::Prober;
use crate::sources::http::{Http, Options as HttpOptions};

/// Exit status when Ctrl-C interrupted a `--once` run (128 + SIGINT, as
/// shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// The longest wait between two attempts at a file (or at the first list).
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// Runs the client; errors are shown on stderr and in the log.
pub fn main(args: Args) -> ExitCode {
    if let Some(code) = fastdl_support::docs::asked_for(Args::command(), args.completions, args.man)
    {
        return code;
    }
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            eprintln!("fastdl-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--json`: a progress event per file in progress every second, until
/// shutdown (or the end of the process).
fn report_progress_every_second(progress: &Arc<Progress>, shutdown: &Arc<Shutdown>) -> Result<()> {
    let (progress, shutdown) = (Arc::clone(progress), Arc::clone(shutdown));
    std::thread::Builder::new()
        .name("json progress".into())
        .spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                shutdown.signal().recv_timeout(Duration::from_secs(1))
            {
                for (name, bytes, size) in progress.live_files() {
                    progress.events.progress(&name, bytes, size);
                }
            }
        })
        .context("cannot start the progress thread")?;
    Ok(())
}

/// Runs the client: 0 when every name of a `--once` run landed (and after
/// Ctrl-C in watch mode), 1 on failures, 130 when a `--once` run was
/// interrupted.
pub fn run(args: Args) -> Result<ExitCode> {
    // A file-size limit (RLIMIT_FSIZE) must show up as a write error naming
    // the file, not kill the process.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let bars = !args.quiet && std::io::stderr().is_terminal();
    let progress = Arc::new(Progress::new(bars, args.json));
    start_logging(&args, &progress)?;
    let shutdown = Arc::new(Shutdown::default());
    {
        let shutdown = Arc::clone(&shutdown);
        fastdl_support::signals::handle(move || shutdown.trigger())?;
    }
    if args.json {
        report_progress_every_second(&progress, &shutdown)?;
    }
    let out = OutDir::open(&args.out)
        .with_context(|| format!("cannot create the output folder {}", args.out.display()))?;
    let servers: Vec<Arc<Server>> = endpoints(&args, &shutdown)?
        .into_iter()
        .map(|endpoint| Arc::new(Server::new(endpoint)))
        .collect();
    let once_names = once_lines(&args)?;
    // A `--once` list of URLs only needs no fastdl server at all.
    let needs_lists = once_names.as_ref().is_none_or(|lines| {
        lines
            .iter()
            .any(|line| matches!(line, input::Line::Text(text) if matches!(Item::parse(text), Ok(Item::Name(_)))))
    });
    let http = Arc::new(Http::new(&HttpOptions {
        cacert: args.cacert.clone(),
        floor: args.speed_floor(),
        per_host: (args.connections + args.jobs) as usize,
    })?);
    let (engine, outcomes) = start_engine(
        &args,
        &servers,
        &http,
        needs_lists,
        out,
        &progress,
        &shutdown,
    )?;
    let backoff = Backoff {
        first: Duration::from_secs(args.retry_wait),
        max: MAX_RETRY_WAIT,
    };
    let (lists, unreachable) = if needs_lists {
        let Some(first) = start_lists(&args, &servers, backoff, &progress, &shutdown)? else {
            return Ok(interrupted(args.once));
        };
        first
    } else {
        (Lists::empty(servers.len()), None)
    };
    let poll = Duration::from_secs(args.poll);
    let names = names_from(&args, once_names, poll, &shutdown)?;
    let policy = Policy {
        once: args.once,
        retries: u32::try_from(args.retries).unwrap_or(u32::MAX),
        backoff,
        poll,
    };
    let web = Web {
        source: servers.len(),
        prober: Prober::start(
            http.agent().clone(),
            http.floor(),
            args.jobs as usize,
            engine.limit(),
        ),
        slots: WebSlots::new(
            4 * args.jobs as usize,
            2 * args.jobs * fastdl_protocol::PIECE_SIZE,
        ),
    };
    // Watch mode hears of list changes as they happen; --once decides
    // on the lists it fetched.
    let list_changes = if args.once {
        crossbeam_channel::never()
    } else {
        let (changed, list_changes) = crossbeam_channel::unbounded();
        crate::lists::watch::start(&servers, &changed, &shutdown);
        list_changes
    };
    let parts = Parts {
        engine,
        servers,
        web,
        lists,
        unreachable,
        outcomes,
        progress,
        list_changes,
    };
    let scheduler = Scheduler::new(parts, policy, Arc::clone(&shutdown));
    report(scheduler.run(names), args.once)
}

/// `--once` knows its lines before the lists: they are read now (`None`
/// in watch mode, which watches the file instead).
fn once_lines(args: &Args) -> Result<Option<Vec<input::Line>>> {
    if !args.once {
        return Ok(None);
    }
    let content = input::read_input(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?
        .with_context(|| format!("{} does not exist", args.input.display()))?;
    Ok(Some(content.lines()))
}

/// The servers' first lists, printed when there are any; `None` if
/// Ctrl-C came first. `--once` tries as often as for a file; watch mode
/// goes on after one try, its names waiting for the lists.
fn start_lists(
    args: &Args,
    servers: &[Arc<Server>],
    backoff: Backoff,
    progress: &Progress,
    shutdown: &Arc<Shutdown>,
) -> Result<Option<(Lists, Option<String>)>> {
    let tries = if args.once { args.retries as u32 } else { 1 };
    let Some((lists, unreachable)) = first_lists(servers, tries, backoff, shutdown)? else {
        return Ok(None);
    };
    if unreachable.is_none() {
        crate::lists::print(&lists.by_server, &mut progress.events.text_out());
    }
    Ok(Some((lists, unreachable)))
}

/// Logging to the terminal (above the progress bars, if any) and the log
/// file.
fn start_logging(args: &Args, progress: &Progress) -> Result<()> {
    let (logger, max) = fastdl_support::logging::build(args.level(), &args.log)?;
    match progress.bars() {
        // Log lines above the bars, not through them.
        Some(multi) => indicatif_log_bridge::LogWrapper::new(multi.clone(), logger)
            .try_init()
            .context("cannot start logging")?,
        None => log::set_boxed_logger(logger).context("cannot start logging")?,
    }
    log::set_max_level(max);
    Ok(())
}

/// The engine over `servers`, with its lander; the outcomes of both come
/// out of the receiver.
/// The engine's sources are the fastdl servers, then the web.
fn start_engine(
    args: &Args,
    servers: &[Arc<Server>],
    http: &Arc<Http>,
    needs_lists: bool,
    out: OutDir,
    progress: &Arc<Progress>,
    shutdown: &Arc<Shutdown>,
) -> Result<(Engine, Receiver<Report>)> {
    let (outcomes_tx, outcomes_rx) = crossbeam_channel::unbounded();
    let (verified_tx, verified_rx) = crossbeam_channel::unbounded();
    let mut sources: Vec<Arc<dyn Source>> = servers
        .iter()
        .map(|s| Arc::clone(s) as Arc<dyn Source>)
        .collect();
    sources.push(Arc::clone(http) as Arc<dyn Source>);
    let settings = Settings {
        connections: args.connections as usize,
        max_files: args.jobs as usize,
        plan: args.plan,
        limit: args.limit_rate.map(|rate| Arc::new(RateLimit::new(rate))),
        // Downloads will follow at once: connect while the lists come.
        connect_early: args.once && needs_lists,
    };
    let engine = Engine::start(
        sources,
        settings,
        out,
        Arc::clone(progress),
        Arc::clone(shutdown),
        outcomes_tx.clone(),
        verified_tx,
    );
    std::thread::Builder::new()
        .name("lander".into())
        .spawn(move || crate::disk::lander::run(verified_rx, outcomes_tx))
        .context("cannot start the lander thread")?;
    Ok((engine, outcomes_rx))
}

/// Where the names come from: the ones read already (`--once`), or the
/// input watcher (watch mode).
fn names_from(
    args: &Args,
    once_names: Option<Vec<input::Line>>,
    poll: Duration,
    shutdown: &Arc<Shutdown>,
) -> Result<Receiver<Vec<input::Line>>> {
    let (names_tx, names_rx) = crossbeam_channel::unbounded();
    if let Some(names) = once_names {
        let _ = names_tx.send(names);
        return Ok(names_rx);
    }
    info!(
        "watching {} for names; Ctrl-C to stop",
        args.input.display()
    );
    let watcher = InputWatcher::new(&args.input, poll, names_tx, Arc::clone(shutdown));
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || watcher.run())
        .context("cannot start the input watcher")?;
    Ok(names_rx)
}

/// The exit status of a finished run, with the failures listed on stderr.
fn report(summary: Summary, once: bool) -> Result<ExitCode> {
    if let Some(why) = &summary.fatal {
        bail!("{why}; stopping");
    }
    if summary.cancelled {
        info!("stopped; unfinished downloads keep their part files and start again next time");
        return Ok(interrupted(once));
    }
    let failed = summary.failed.len() + summary.more_refused;
    info!(
        "{} downloaded, {} already present, {failed} failed",
        summary.downloaded, summary.already_had,
    );
    for (name, why) in &summary.failed {
        eprintln!("failed: {name}: {why}");
    }
    if summary.more_refused > 0 {
        eprintln!(
            "failed: {} more lines of the input refused (not shown; see above)",
            summary.more_refused
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How to reach each `--server`: its address, TLS with its identity
/// pinned in the known servers (or plain TCP with `--plaintext`), the
/// access token.
fn endpoints(args: &Args, shutdown: &Arc<Shutdown>) -> Result<Vec<Endpoint>> {
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
            shutdown: Arc::clone(shutdown),
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

/// Fetches every server's list, retrying with `backoff` until at least
/// one answers, `tries` times at most. The lists, and why none is known
/// if none is; `None` if interrupted. A server that no retry can help
/// with (another identity, a refused token) ends the run.
fn first_lists(
    servers: &[Arc<Server>],
    tries: u32,
    backoff: Backoff,
    shutdown: &Shutdown,
) -> Result<Option<(Lists, Option<String>)>> {
    let mut tried = 0u32;
    loop {
        let Some(fetched) = fetch_all(servers, shutdown) else {
            return Ok(None);
        };
        let errors: Vec<String> = fetched
            .iter()
            .zip(servers)
            .filter_map(|(result, server)| {
                result
                    .as_ref()
                    .err()
                    .map(|e| format!("{}: {e}", server.addr()))
            })
            .collect();
        if let Some(why) = servers.iter().find_map(|s| s.fatal()) {
            bail!("{why}");
        }
        let mut lists = Lists::default();
        lists.update(servers, fetched);
        if lists.any() {
            for e in &errors {
                warn!("cannot get the list from server {e}; going on without it for now");
            }
            return Ok(Some((lists, None)));
        }
        let why = errors.join("; ");
        tried += 1;
        if tried >= tries {
            warn!("cannot get the list from server {why}");
            return Ok(Some((lists, Some(why))));
        }
        let wait = backoff.wait(tried);
        warn!(
            "cannot get the list from server {why}; retrying in {:.1} s",
            wait.as_secs_f64()
        );
        if shutdown.sleep(wait) {
            return Ok(None);
        }
    }
}
