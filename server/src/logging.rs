//! Logging to the terminal (stderr) and to the log file, through `log`.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use log::LevelFilter;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, TermLogger, TerminalMode, WriteLogger,
};

/// Starts logging at `level` to stderr and, appending, to `file`.
pub fn init(level: LevelFilter, file: &Path) -> Result<()> {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("cannot open log file {}", file.display()))?;
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .add_filter_allow_str("fastdl")
        .build();
    // termcolor's Auto looks only at TERM, so ask whether stderr is a terminal.
    let colors = if std::io::stderr().is_terminal() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    CombinedLogger::init(vec![
        TermLogger::new(level, config.clone(), TerminalMode::Stderr, colors),
        WriteLogger::new(level.max(LevelFilter::Info), config, log_file),
    ])
    .context("cannot start logging")?;
    Ok(())
}
