//! The seam between the download engine and where bytes come from.
//!
//! A [`Source`] is one place files can be fetched from: a fastdl server
//! today (`sources::fastdl`), an HTTP server tomorrow. It opens
//! [`Channel`]s: connections that take requests for ranges of a file and
//! answer them in the order asked (a fastdl connection pipelines several;
//! an HTTP/1.1 connection one at a time). The engine never sees a
//! protocol: it asks for ranges, reads their bytes, and judges them.
//! A new kind of source is one new module implementing these two traits.

use std::io::Read;
use std::net::TcpStream;

use std::time::Duration;

use fastdl_protocol::Digest;

use super::outcome::Job;

/// What went wrong with a source, as far as the engine's decisions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// No retry can help (another identity, a refused token, TLS against
    /// plain text): the run stops.
    Fatal,
    /// The source says the file is not what was listed (changed, gone):
    /// the lists are fetched again before another attempt.
    Changed,
    /// The source is there but delivers below the progress deadline.
    TooSlow,
    /// The source is busy (or closed the connection to make room): try
    /// again later on a new connection.
    Busy,
    /// The connection could not be made, broke, or spoke nonsense:
    /// reconnect.
    Broken,
}

/// An error from a source, with its cause kept whole for the log.
#[derive(Debug, thiserror::Error)]
#[error("{cause}")]
pub struct SourceError {
    pub trouble: Trouble,
    #[source]
    pub cause: Box<dyn std::error::Error + Send + Sync>,
}

/// One place files can be fetched from.
pub trait Source: Send + Sync {
    /// How the user named it, for messages ("127.0.0.1:1337").
    fn name(&self) -> &str;

    /// Opens a connection.
    fn connect(&self) -> Result<Box<dyn Channel>, SourceError>;

    /// Most requests one connection may have in flight.
    fn max_depth(&self) -> usize;

    /// Notes an error met with this source; one with [`Trouble::Fatal`]
    /// makes it unusable for the rest of the run.
    fn note(&self, e: &SourceError);

    /// Why this source cannot be used at all, if that is known.
    fn fatal(&self) -> Option<String>;

    /// Whether its connections start only with its first file, for a
    /// source most runs never use (the web): idle workers would still be
    /// woken at every change of the board (measured: 8 workers instead of
    /// 4 nearly doubled the futex calls of 1000 small fastdl files). The
    /// others start at once, so that their connections open while the
    /// lists are fetched.
    fn on_demand(&self) -> bool {
        false
    }

    /// Pushes a whole file over streams of its own (fastdl's `--plan`; an
    /// HTTP server without ranges sends it whole),
    /// handing each piece that arrives to `land` (which reads exactly the
    /// piece's bytes and says whether it landed). `None`: this source
    /// cannot push; the pieces are fetched as usual.
    fn push(
        &self,
        _file: &Job,
        _land: &(dyn Fn(&mut dyn Read, u64) -> std::io::Result<bool> + Sync),
    ) -> Option<Result<(), SourceError>> {
        None
    }
}

/// One connection to a source. Requests are answered in the order they
/// were made.
pub trait Channel: Send {
    /// Asks for `length` bytes of `file` from `offset`.
    fn ask_range(&mut self, file: &Job, offset: u64, length: u64) -> Result<(), SourceError>;

    /// Asks for the per-piece digests of `file` (only asked of sources
    /// whose jobs say they have them: [`Job::per_piece`]).
    fn ask_digests(&mut self, file: &Job) -> Result<(), SourceError>;

    /// Waits for the answer to the oldest request, a range of `length`
    /// bytes; its bytes are then read from [`Self::body`], exactly
    /// `length` of them.
    fn await_range(&mut self, length: u64) -> Result<(), SourceError>;

    /// The bytes of the range [`Self::await_range`] waited for.
    fn body(&mut self) -> &mut dyn Read;

    /// Reads the answer to the oldest request, the digests of `file`.
    fn read_digests(&mut self, file: &Job) -> Result<Vec<Digest>, SourceError>;

    /// The round trip seen when connecting.
    fn rtt(&self) -> Duration;

    /// The socket, to cut the connection from another thread (the end
    /// game cuts connections left receiving copies nobody needs); `None`
    /// if the connection cannot be reached (it then finishes its answer).
    fn socket(&self) -> Option<&TcpStream>;
}
