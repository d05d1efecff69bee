//! Logging to the terminal (stderr) and to a log file, through `log`.
//!
//! A binary that draws progress bars passes its own terminal writer so that
//! log lines are printed around the bars instead of through them.

use std::fs::OpenOptions;
use std::io::{IsTerminal, LineWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use log::LevelFilter;
use simplelog::{
    ColorChoice, CombinedLogger, Config, ConfigBuilder, SharedLogger, TermLogger, TerminalMode,
    WriteLogger,
};

fn config() -> Config {
    ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .add_filter_allow_str("fastdl")
        .build()
}

/// The terminal level for `-q` and `-v` counts: warn, info, debug, trace.
pub fn level(quiet: bool, verbose: u8) -> LevelFilter {
    match (quiet, verbose) {
        (true, _) => LevelFilter::Warn,
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Starts logging at `level` to the terminal and, appending, to `file`
/// (which always gets at least info). `terminal` replaces stderr when given.
pub fn init(
    level: LevelFilter,
    file: &Path,
    terminal: Option<Box<dyn Write + Send>>,
) -> Result<()> {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("cannot open log file {}", file.display()))?;
    let term: Box<dyn SharedLogger> = match terminal {
        Some(writer) => WriteLogger::new(level, config(), LineWriter::new(writer)),
        None => {
            // termcolor's Auto looks only at TERM, so ask whether stderr is a terminal.
            let colors = if std::io::stderr().is_terminal() {
                ColorChoice::Auto
            } else {
                ColorChoice::Never
            };
            TermLogger::new(level, config(), TerminalMode::Stderr, colors)
        }
    };
    CombinedLogger::init(vec![
        term,
        // simplelog writes a record in several pieces: a LineWriter turns
        // each record into one write (it matters with thousands of files).
        WriteLogger::new(
            level.max(LevelFilter::Info),
            config(),
            LineWriter::new(log_file),
        ),
    ])
    .context("cannot start logging")?;
    Ok(())
}
