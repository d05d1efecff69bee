//! Logging to the terminal (stderr) and to a log file, through `log`
//! (`simplelog` writes the lines).
//!
//! A binary that draws progress bars wraps the logger [`build`] makes in
//! `indicatif-log-bridge`, so that log lines are printed above the bars
//! instead of through them; the others call [`init`].
//!
//! The log file is reopened by name after [`reopen`] (called on SIGHUP,
//! see `signals`): logrotate's convention, so that a rotated log is let go
//! and a new one started without a restart. The reopen happens at the next
//! line, which [`reopen`] writes at once.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, LineWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

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
/// (which always gets at least info).
pub fn init(level: LevelFilter, file: &Path) -> Result<()> {
    let (logger, max) = build(level, file)?;
    log::set_boxed_logger(logger).context("cannot start logging")?;
    log::set_max_level(max);
    Ok(())
}

/// Set by [`reopen`]; the log file's writer reopens its file at its next
/// write.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Asks for the log file to be reopened by its name (after logrotate moved
/// it away), and logs a line so that it happens now.
pub fn reopen() {
    REOPEN.store(true, Ordering::SeqCst);
    log::info!("log file reopened (SIGHUP)");
}

/// The log file, reopened by name when [`reopen`] asked for it.
struct LogFile {
    path: PathBuf,
    file: LineWriter<File>,
    /// Whether the last write ended a line: the file is only switched
    /// between records, never in the middle of one.
    at_line_start: bool,
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.at_line_start && REOPEN.swap(false, Ordering::SeqCst) {
            let _ = self.file.flush();
            match open_log(&self.path) {
                Ok(file) => self.file = LineWriter::new(file),
                // Keep writing where we did: losing the log is worse.
                Err(e) => eprintln!("cannot reopen log file {}: {e}", self.path.display()),
            }
        }
        let n = self.file.write(buf)?;
        if n > 0 {
            self.at_line_start = buf[n - 1] == b'\n';
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The logger [`init`] installs, not installed yet, and the most detailed
/// level it logs (for `log::set_max_level`).
pub fn build(level: LevelFilter, file: &Path) -> Result<(Box<dyn log::Log>, LevelFilter)> {
    let log_file =
        open_log(file).with_context(|| format!("cannot open log file {}", file.display()))?;
    // termcolor's Auto looks only at TERM, so ask whether stderr is a terminal.
    let colors = if std::io::stderr().is_terminal() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let term: Box<dyn SharedLogger> =
        TermLogger::new(level, config(), TerminalMode::Stderr, colors);
    let combined = CombinedLogger::new(vec![
        term,
        // simplelog writes a record in several pieces: a LineWriter turns
        // each record into one write (it matters with thousands of files).
        WriteLogger::new(
            level.max(LevelFilter::Info),
            config(),
            LogFile {
                path: file.to_path_buf(),
                file: LineWriter::new(log_file),
                at_line_start: true,
            },
        ),
    ]);
    let max = combined.level();
    Ok((combined, max))
}
