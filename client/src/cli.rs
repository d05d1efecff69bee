//! Command-line options of `fastdl-client`.

use std::path::PathBuf;

use clap::Parser;
use log::LevelFilter;

/// Downloads the files named in an input file from a fastdl server, and
/// the URLs in it from any HTTP(S) server.
///
/// On start the client prints the server's list. Then it watches --input:
/// every name appended to it (one per line; blank lines and # comments are
/// skipped) that the server lists is downloaded into --out over parallel
/// connections, verified piece by piece and as a whole (size and BLAKE3),
/// flushed to disk, and only then given its final name. A file already in
/// --out with the same content is skipped; a different one is never
/// overwritten: the new download is kept as "name (1).ext". Names the
/// server does not list are reported once and checked again whenever the
/// list is fetched again. A line that starts with http:// or https:// is a
/// URL, optionally followed by sha256=HEX or blake3=HEX to verify it
/// against; it is fetched over --connections parallel ranges (one
/// connection when the server has no ranges) and named after the URL's
/// path or the server's Content-Disposition. An input of URLs only needs
/// no fastdl server. Stop with Ctrl-C: unfinished downloads leave hidden
/// part files behind.
///
/// With --once, the client reads the input file once, downloads every name
/// in it, and exits 0 only if all of them were downloaded and verified.
#[derive(Debug, Parser)]
#[command(name = "fastdl-client", version, about, long_about)]
pub struct Args {
    /// Server to download from, as HOST:PORT. Repeat it to download from
    /// several mirrors at once: each file comes only from the servers whose
    /// size and digest for it agree with a strict majority of the servers
    /// listing it (--connections per agreeing server).
    #[arg(long = "server", value_name = "HOST:PORT", default_values_t = [String::from("127.0.0.1:1337")], env = "FASTDL_SERVER", value_delimiter = ',')]
    pub servers: Vec<String>,

    /// File of names and URLs to download, one per line (only ever read,
    /// never changed): "NAME" for a file of --server, "URL [sha256=HEX |
    /// blake3=HEX]" for a file of a web server.
    #[arg(
        long,
        default_value = "input.txt",
        value_name = "FILE",
        env = "FASTDL_INPUT"
    )]
    pub input: PathBuf,

    /// Folder the downloaded files are saved into.
    #[arg(long, default_value = "data", value_name = "DIR", env = "FASTDL_OUT")]
    pub out: PathBuf,

    /// Parallel connections per server, shared by every file in progress:
    /// each takes the next piece (1 MiB) of the first file that has one
    /// left, so one big file has all of them and many small files keep all
    /// of them busy. On a long, lossy path (tens of milliseconds, some
    /// loss) 8 can be faster; many more rarely help.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64), env = "FASTDL_CONNECTIONS")]
    pub connections: u64,

    /// Let the server plan the transfer (its N-stream plan): it picks
    /// 1 to 8 streams from the file size (1 under 10 MB ... 8 over 1 GB),
    /// opens a port per stream and pushes 1 MiB chunks round-robin, with no
    /// request per chunk. For when the server should decide the
    /// parallelism; it is usually no faster than the default ranged reads (extra
    /// round trips to set up, a fixed share per stream). Chunks are verified
    /// like pieces; anything a broken stream did not deliver is fetched with
    /// ranged reads. Needs the plan ports reachable (not only 1337).
    #[arg(long, env = "FASTDL_PLAN", value_parser = clap::builder::BoolishValueParser::new())]
    pub plan: bool,

    /// Most files in progress at once. Their pieces share the
    /// --connections; each file is verified and lands on its own as soon as
    /// it is complete. Names are started in the order they were written.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256), env = "FASTDL_JOBS")]
    pub jobs: u64,

    /// Also re-read the input file every SECS seconds (besides file-system events),
    /// and re-fetch the list this often while names wait for the server.
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..), env = "FASTDL_POLL")]
    pub poll: u64,

    /// Limit the total download rate, in bytes per second; K, M and G suffixes
    /// (binary) as in curl and aria2: 500K, 2M, 1G.
    #[arg(long, value_name = "RATE", value_parser = parse_rate, env = "FASTDL_LIMIT_RATE")]
    pub limit_rate: Option<u64>,

    /// Read the input file once, download everything in it, and exit:
    /// 0 if every name was downloaded and verified, 1 otherwise.
    #[arg(long, env = "FASTDL_ONCE", value_parser = clap::builder::BoolishValueParser::new())]
    pub once: bool,

    /// Attempts per file in --once mode before it counts as failed (watch
    /// mode retries until the file is done or no longer listed).
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), env = "FASTDL_RETRIES")]
    pub retries: u64,

    /// First wait before a failed file is tried again, in seconds; each
    /// further failure doubles it, up to 60 s.
    #[arg(long, default_value_t = 1, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600), env = "FASTDL_RETRY_WAIT")]
    pub retry_wait: u64,

    /// Progress deadline: a server that delivers less than RATE bytes per
    /// second over --speed-time seconds of waiting for it (trickling, or
    /// stalled) is dropped, and the download tries again later. Time the
    /// client itself holds a transfer back (--limit-rate) does not count.
    /// K, M, G suffixes allowed.
    #[arg(long, default_value = "1K", value_name = "RATE", value_parser = parse_rate, env = "FASTDL_SPEED_LIMIT")]
    pub speed_limit: u64,

    /// The window, in seconds of waiting for a server, over which
    /// --speed-limit is judged; a read that waits this long for a first
    /// byte ends too.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600), env = "FASTDL_SPEED_TIME")]
    pub speed_time: u64,

    /// Speak plain TCP instead of TLS, to a server run with --plaintext,
    /// on a trusted link only: nothing is encrypted and the server's
    /// identity is not checked. Never chosen on its own: a TLS client
    /// refuses a plaintext server, and the reverse.
    #[arg(long, env = "FASTDL_PLAINTEXT", value_parser = clap::builder::BoolishValueParser::new())]
    pub plaintext: bool,

    /// The access token to present to servers started with --token-file.
    /// Prefer the environment variable: a command line can be seen by
    /// other users of the machine.
    #[arg(
        long,
        env = "FASTDL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// The servers met before and their identities (as ssh's
    /// known_hosts): a server met for the first time is pinned here; one
    /// that presents another identity later is refused, nothing is
    /// downloaded from it, and the message says how to accept the new one
    /// on purpose. Lines are "HOST:PORT sha256//BASE64" (as the server
    /// prints at start), and may be written by hand before the first
    /// contact. [default: $XDG_CONFIG_HOME/fastdl/known_servers, else
    /// ~/.config/fastdl/known_servers]
    #[arg(long, value_name = "FILE", env = "FASTDL_KNOWN_SERVERS")]
    pub known_servers: Option<PathBuf>,

    /// For https:// URLs: trust the certificate authorities in this PEM
    /// file (a private CA) instead of the system's, as curl's --cacert.
    /// Proxies come from the usual variables (HTTPS_PROXY, HTTP_PROXY,
    /// ALL_PROXY, NO_PROXY).
    #[arg(long, value_name = "FILE", env = "FASTDL_CACERT")]
    pub cacert: Option<PathBuf>,

    /// Log file (appended to).
    #[arg(
        long,
        default_value = "client.log",
        value_name = "FILE",
        env = "FASTDL_LOG"
    )]
    pub log: PathBuf,

    /// Write the run as JSON events on stdout, one object per line, for
    /// scripts: queued, started, progress (every second), done (with the
    /// digest checked), failed (with the reason and when it is tried
    /// again). Log lines stay on stderr. See the README, "Events".
    #[arg(long, env = "FASTDL_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,

    /// More detail (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet", env = "FASTDL_VERBOSE")]
    pub verbose: u8,

    /// No progress bars; only warnings and errors on the terminal.
    #[arg(short, long, env = "FASTDL_QUIET", value_parser = clap::builder::BoolishValueParser::new())]
    pub quiet: bool,

    /// Print the completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell) and exit; see the README's "Install".
    #[arg(long, value_name = "SHELL", help_heading = "Installing")]
    pub completions: Option<fastdl_support::docs::Shell>,

    /// Print the man page (roff) and exit.
    #[arg(long, help_heading = "Installing")]
    pub man: bool,
}

fn parse_rate(text: &str) -> Result<u64, String> {
    fastdl_support::parse_bytes(text)
}

impl Args {
    /// The progress deadline of every server connection.
    pub fn speed_floor(&self) -> crate::net::pace::SpeedFloor {
        crate::net::pace::SpeedFloor {
            min_rate: self.speed_limit,
            window: std::time::Duration::from_secs(self.speed_time),
        }
    }

    pub fn level(&self) -> LevelFilter {
        fastdl_support::logging::level(self.quiet, self.verbose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_options_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn every_option_has_an_environment_variable() {
        let missing = fastdl_support::docs::options_without_env(&Args::command(), "FASTDL_");
        assert!(missing.is_empty(), "no FASTDL_ variable for {missing:?}");
    }

    #[test]
    fn environment_values_parse_as_the_flags_do() {
        // Only this test sets these variables.
        std::env::set_var("FASTDL_VERBOSE", "2");
        std::env::set_var("FASTDL_ONCE", "1");
        std::env::set_var("FASTDL_SERVER", "a:1,b:2");
        let args = Args::try_parse_from(["fastdl-client"]).unwrap();
        std::env::remove_var("FASTDL_VERBOSE");
        std::env::remove_var("FASTDL_ONCE");
        std::env::remove_var("FASTDL_SERVER");
        assert_eq!(args.verbose, 2);
        assert!(args.once);
        assert_eq!(args.servers, ["a:1", "b:2"]);
    }
}
