//! Command-line options of `fastdl-server`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use log::LevelFilter;

/// Publishes the files of a folder and serves them to fastdl clients.
///
/// The server scans --dir recursively, lists every regular file (hidden
/// files and symlinks leading out of the folder are never listed), writes
/// the list to --list and keeps it current as files come and go. Clients
/// connect to --port, fetch the list and download files over as many
/// connections as they like. Stop it with Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "fastdl-server", version, about, long_about)]
pub struct Args {
    /// Also serve the published files over HTTP/1.1 on this port (0: a free
    /// one): GET and HEAD with ranges, an index at /, the listing as JSON
    /// at /index.json, ETags from the BLAKE3 digests. HTTPS with the server
    /// identity unless --plaintext (curl: --pinnedpubkey with the printed
    /// fingerprint, and -k since the certificate is self-signed); with
    /// --token-file, requests need "Authorization: Bearer TOKEN".
    #[arg(long, value_name = "PORT", env = "FASTDL_SERVER_HTTP_PORT")]
    pub http_port: Option<u16>,

    /// Address to listen on (0.0.0.0: every interface; 127.0.0.1: this machine only).
    #[arg(
        long,
        default_value = "0.0.0.0",
        value_name = "ADDR",
        env = "FASTDL_SERVER_BIND"
    )]
    pub bind: IpAddr,

    /// Port to listen on; repeat to listen on several ports. 0 picks a free port.
    #[arg(long = "port", value_name = "PORT", default_values_t = [fastdl_protocol::DEFAULT_PORT], env = "FASTDL_SERVER_PORT", value_delimiter = ',')]
    pub ports: Vec<u16>,

    /// Folder whose files are published.
    #[arg(
        long,
        default_value = "resources",
        value_name = "DIR",
        env = "FASTDL_SERVER_DIR"
    )]
    pub dir: PathBuf,

    /// File the published list is written to (replaced atomically on every change).
    #[arg(
        long,
        default_value = "text.txt",
        value_name = "FILE",
        env = "FASTDL_SERVER_LIST"
    )]
    pub list: PathBuf,

    /// Log file (appended to).
    #[arg(
        long,
        default_value = "server.log",
        value_name = "FILE",
        env = "FASTDL_SERVER_LOG"
    )]
    pub log: PathBuf,

    /// Log a status line (connections, transfers, bytes, throughput, per port) every SECS seconds; 0 = never.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "SECS",
        env = "FASTDL_SERVER_STATUS_INTERVAL"
    )]
    pub status_interval: u64,

    /// Rescan the folder every SECS seconds, besides reacting to file-system events.
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..), env = "FASTDL_SERVER_RESCAN")]
    pub rescan: u64,

    /// Most connections open at once [default: 10000, or fewer if the file
    /// descriptor limit does not allow it; the log says which]. A new
    /// connection past it closes the one that has waited longest for a
    /// request (idle, or trickling one), with "ERROR TIMEOUT"; only when
    /// every connection is busy with a request is the new one refused
    /// ("ERROR BUSY").
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), env = "FASTDL_SERVER_MAX_CONNECTIONS")]
    pub max_connections: Option<u64>,

    /// Most connections open at once from one client address. An address
    /// at its limit loses its own longest-waiting connection first; it is
    /// refused ("ERROR BUSY") only when all of its connections are busy.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), env = "FASTDL_SERVER_MAX_PER_CLIENT")]
    pub max_per_client: u64,

    /// Close a connection that sends no request for SECS seconds.
    #[arg(long, default_value_t = 120, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..), env = "FASTDL_SERVER_IDLE_TIMEOUT")]
    pub idle_timeout: u64,

    /// Close a connection whose request line, once begun, is not complete
    /// within SECS seconds (slow-loris peers).
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..), env = "FASTDL_SERVER_REQUEST_TIMEOUT")]
    pub request_timeout: u64,

    /// Progress deadline for everything sent: a peer that takes less than
    /// RATE bytes per second over --speed-time seconds (a slow or stalled
    /// reader) is cut off. What counts is what the peer takes, not what
    /// fills the socket buffers. K, M, G suffixes allowed.
    #[arg(long, default_value = "1K", value_name = "RATE", value_parser = parse_size, env = "FASTDL_SERVER_SPEED_LIMIT")]
    pub speed_limit: u64,

    /// The window, in seconds, over which --speed-limit is judged
    /// (--write-timeout is an older name for it).
    #[arg(long, alias = "write-timeout", default_value_t = 10, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600), env = "FASTDL_SERVER_SPEED_TIME")]
    pub speed_time: u64,

    /// Largest byte range one GET may ask for (K, M, G suffixes allowed).
    #[arg(long, default_value = "64M", value_name = "BYTES", value_parser = parse_size, env = "FASTDL_SERVER_MAX_RANGE")]
    pub max_range: u64,

    /// Most N-stream plans (PLAN requests) open at once; past it a plan request
    /// gets "ERROR BUSY". A plan is open from ACCEPTED until its streams finish.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), env = "FASTDL_SERVER_MAX_PLANS")]
    pub max_plans: u64,

    /// Most N-stream plans open at once for one client address.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), env = "FASTDL_SERVER_MAX_PLANS_PER_CLIENT")]
    pub max_plans_per_client: u64,

    /// Bytes to the plan size table's megabyte (the table: 1 stream under 10 MB
    /// ... 8 streams over 1 GB). Only for tests that want several streams from
    /// small files.
    #[arg(long, default_value_t = fastdl_protocol::plan::MB, value_name = "BYTES", hide_short_help = true,
          value_parser = clap::value_parser!(u64).range(1..), env = "FASTDL_SERVER_PLAN_UNIT")]
    pub plan_unit: u64,

    /// The server's identity: its TLS key and certificate, made on first
    /// start (mode 0600) and kept here. Clients pin its fingerprint
    /// (printed at start). [default: $XDG_CONFIG_HOME/fastdl/server-identity.pem,
    /// else ~/.config/fastdl/server-identity.pem]
    #[arg(long, value_name = "FILE", env = "FASTDL_SERVER_IDENTITY")]
    pub identity: Option<PathBuf>,

    /// Speak plain TCP instead of TLS (protocol 2 without encryption),
    /// for a trusted link where every cycle counts: ranges go out with
    /// sendfile, zero copy. Clients must use --plaintext too; nothing
    /// falls back on its own.
    #[arg(long, env = "FASTDL_SERVER_PLAINTEXT", value_parser = clap::builder::BoolishValueParser::new())]
    pub plaintext: bool,

    /// Only clients presenting one of the tokens in FILE (one per line,
    /// an optional label after it; # comments) see the list or any byte.
    /// The file is read again when it changes. Without it the folder is
    /// public (but, over TLS, encrypted).
    #[arg(long, value_name = "FILE", env = "FASTDL_SERVER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// More detail in the log (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet", env = "FASTDL_SERVER_VERBOSE")]
    pub verbose: u8,

    /// Only warnings and errors on the terminal.
    #[arg(short, long, env = "FASTDL_SERVER_QUIET", value_parser = clap::builder::BoolishValueParser::new())]
    pub quiet: bool,

    /// Print the completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell) and exit; see the README's "Install".
    #[arg(long, value_name = "SHELL", help_heading = "Installing")]
    pub completions: Option<fastdl_support::docs::Shell>,

    /// Print the man page (roff) and exit.
    #[arg(long, help_heading = "Installing")]
    pub man: bool,
}

fn parse_size(text: &str) -> Result<u64, String> {
    fastdl_support::parse_bytes(text)
}

impl Args {
    /// The identity file in use: --identity, or the default.
    pub fn identity_path(&self) -> Option<PathBuf> {
        self.identity
            .clone()
            .or_else(|| fastdl_support::config_path("server-identity.pem"))
    }

    pub fn level(&self) -> LevelFilter {
        fastdl_support::logging::level(self.quiet, self.verbose)
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_option_has_an_environment_variable() {
        let command = Args::command();
        let missing = fastdl_support::docs::options_without_env(&command, "FASTDL_SERVER_");
        assert!(
            missing.is_empty(),
            "no FASTDL_SERVER_ variable for {missing:?}"
        );
    }
}
