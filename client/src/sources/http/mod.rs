//! HTTP(S) servers as a [`Source`]: nginx, Apache, object stores, CDNs,
//! and fastdl-server's own HTTP face.
//!
//! One source stands for the whole web: a URL names its server, and
//! `ureq`'s agent keeps connections alive per host (so the engine's
//! `--connections` workers for this source become that many parallel
//! ranged requests to whichever server a file is on). Chosen over
//! reqwest's blocking client (a tokio runtime underneath, for nothing
//! here) and hyper (an HTTP engine to drive by hand): blocking reads fit
//! the engine's threads, it speaks through rustls with our provider, and
//! it reads proxies from the usual environment variables. Measured on
//! 1 GiB from nginx over loopback, see BENCHMARKS.md.
//!
//! A file is first probed (`probe`): a `GET` of its first piece, whose
//! answer says its size, whether ranges are served, its validators, its
//! name and any digest the server announces, and already holds its
//! first bytes (all of a small file). Then `channel` fetches the other
//! pieces with `Range` and `If-Range` (one request at a time per
//! connection: HTTP/1.1 without pipelining), and a server without
//! ranges sends the whole file over one connection ([`Http::push`]).
//! A file that changes on the server answers a range with `200` (its
//! `If-Range` no longer holds): the attempt stops as changed and starts
//! over, never mixing versions.

pub mod channel;
pub mod probe;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fastdl_protocol::digest::piece_range;
use fastdl_protocol::PIECE_SIZE;
use ureq::http::{Response, StatusCode};
use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
use ureq::{Agent, Body};

use crate::download::outcome::Job;
use crate::download::source::{Channel, Source, SourceError, Trouble};
use crate::net::pace::{Paced, SpeedFloor};

/// Redirects followed for one request at most (curl's default is 50,
/// browsers stop near 20; a loop is found long before either).
pub const MAX_REDIRECTS: u32 = 10;

/// How long to wait for a TCP connect (and TLS handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the HTTP source is set up.
pub struct Options {
    /// `--cacert`: trust only this PEM bundle (a private CA) instead of
    /// the system's roots, as curl does.
    pub cacert: Option<std::path::PathBuf>,
    /// The progress deadline of every answer.
    pub floor: SpeedFloor,
    /// Connections kept alive per host (the engine's workers for this
    /// source, plus the probes).
    pub per_host: usize,
}

/// Why the HTTP source could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--cacert {path}: {why}")]
    CaCert { path: String, why: String },
}

/// The web, as a source.
pub struct Http {
    agent: Agent,
    floor: SpeedFloor,
}

impl Http {
    pub fn new(options: &Options) -> Result<Http, SetupError> {
        let roots = match &options.cacert {
            Some(path) => RootCerts::Specific(Arc::new(load_pem(path)?)),
            None => RootCerts::PlatformVerifier,
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(roots)
            .unversioned_rustls_crypto_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .build();
        let agent = Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(MAX_REDIRECTS)
            .max_idle_connections_per_host(options.per_host.max(1))
            .max_idle_connections(options.per_host.max(1) * 8)
            .user_agent(concat!("fastdl/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(options.floor.window))
            // A read that waits a whole window without a byte ends (a
            // stall); a trickle is judged by `Paced` over the body. There
            // is no deadline on a whole body: the time the client holds a
            // transfer back (`--limit-rate`) is not the server's.
            .timeout_per_read(Some(options.floor.window))
            .timeout_per_write(Some(options.floor.window))
            .build()
            .into();
        Ok(Http {
            agent,
            floor: options.floor,
        })
    }

    /// The agent, shared with the prober.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    pub fn floor(&self) -> SpeedFloor {
        self.floor
    }
}

/// The certificates of a PEM bundle.
fn load_pem(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, SetupError> {
    let fail = |why: String| SetupError::CaCert {
        path: path.display().to_string(),
        why,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&bytes) {
        if let ureq::tls::PemItem::Certificate(cert) = item.map_err(|e| fail(e.to_string()))? {
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        return Err(fail("no certificate in it".into()));
    }
    Ok(certs)
}

/// A `GET` of `url` (bytes `range` of it, if given, only while
/// `validator` still holds). Its headers come within the progress
/// deadline's window; its body is held to the deadline by [`body_of`].
/// An `https` URL is never followed to plain `http` (the user chose
/// TLS; a redirect must not drop it): that fails with
/// `ureq::Error::RequireHttpsOnly` (see [`is_downgrade`]).
pub fn get(
    agent: &Agent,
    url: &str,
    range: Option<(u64, u64)>,
    validator: Option<&str>,
) -> Result<Response<Body>, ureq::Error> {
    let mut request = agent.get(url);
    if let Some((offset, length)) = range {
        request = request.header(
            "Range",
            format!("bytes={offset}-{}", offset + length.max(1) - 1),
        );
        if let Some(validator) = validator {
            request = request.header("If-Range", validator);
        }
    }
    if url
        .get(..6)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https:"))
    {
        request = request.config().https_only(true).build();
    }
    request.call()
}

/// Whether a request failed because a redirect led from `https` to plain
/// `http` (see [`get`]).
pub fn is_downgrade(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::RequireHttpsOnly(_))
}

/// The first `length` bytes of an answer's body, as a reader that, once
/// they are read, reads the body to its end: only a body read to its end
/// gives its connection back to the agent's pool (measured: without it,
/// every request of 1000 small files opened its own connection). A body
/// longer than announced is an error, not silently cut. Its reads are
/// held to the progress deadline (`floor`) as a fastdl connection's are:
/// a read that waits a whole window in vain, or a window of waiting that
/// brings less than the floor, fails as too slow.
pub fn body_of(response: Response<Body>, length: u64, floor: SpeedFloor) -> BodyOf {
    BodyOf {
        inner: Paced::new(StallsTimedOut(response.into_body().into_reader()), floor),
        left: length,
        ended: false,
    }
}

/// See [`body_of`].
pub struct BodyOf {
    inner: Paced<StallsTimedOut>,
    left: u64,
    ended: bool,
}

/// ureq's body reader with its read time-outs as `TimedOut` errors, the
/// form in which [`Paced`] recognises a stall (ureq wraps them as `Other`).
struct StallsTimedOut(ureq::BodyReader<'static>);

impl Read for StallsTimedOut {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if e.kind() != std::io::ErrorKind::TimedOut && is_timeout(&e) {
                std::io::Error::new(std::io::ErrorKind::TimedOut, e)
            } else {
                e
            }
        })
    }
}

impl BodyOf {
    /// Reads past the last byte once: ureq then sees the body's end.
    fn end(&mut self) -> std::io::Result<()> {
        if !self.ended {
            self.ended = true;
            if self.inner.read(&mut [0u8; 1])? > 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the answer is longer than announced",
                ));
            }
        }
        Ok(())
    }
}

impl Read for BodyOf {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            self.end()?;
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        if self.left == 0 {
            // Ends the body now, while the connection is warm.
            self.end()?;
        }
        Ok(n)
    }
}

/// The `Content-Length` of an answer, if it has one.
pub fn content_length(response: &Response<Body>) -> Option<u64> {
    use headers::HeaderMapExt;
    response
        .headers()
        .typed_get::<headers::ContentLength>()
        .map(|l| l.0)
}

/// How the engine should take a failed request.
pub fn classify_error(e: ureq::Error) -> SourceError {
    let trouble = match &e {
        ureq::Error::Timeout(_) => Trouble::TooSlow,
        _ => Trouble::Broken,
    };
    SourceError {
        trouble,
        cause: Box::new(e),
    }
}

/// How the engine should take an answer with an unexpected status.
pub fn classify_status(status: StatusCode, url: &str) -> SourceError {
    let trouble = match status.as_u16() {
        // The file's version is gone (If-Range failed: the whole file came
        // back), or the file itself is.
        200 | 404 | 410 | 416 => Trouble::Changed,
        408 | 429 | 503 => Trouble::Busy,
        _ => Trouble::Broken,
    };
    SourceError {
        trouble,
        cause: Box::new(StatusError {
            status,
            url: fastdl_support::quote(url),
        }),
    }
}

/// An answer that was not the one asked for.
#[derive(Debug, thiserror::Error)]
#[error("{url} answered HTTP {status}")]
pub struct StatusError {
    /// The status the server answered with.
    pub status: StatusCode,
    /// The URL asked for (for the message).
    pub url: String,
}

/// A body read error that is the progress deadline running out.
pub fn is_timeout(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            .is_some_and(|inner| matches!(inner, ureq::Error::Timeout(_)))
}

impl Source for Http {
    fn name(&self) -> &str {
        "http"
    }

    fn on_demand(&self) -> bool {
        true
    }

    fn connect(&self) -> Result<Box<dyn Channel>, SourceError> {
        Ok(Box::new(channel::HttpChannel::new(
            self.agent.clone(),
            self.floor,
        )))
    }

    fn max_depth(&self) -> usize {
        1
    }

    fn note(&self, _e: &SourceError) {}

    fn fatal(&self) -> Option<String> {
        None
    }

    /// A server without ranges: one `GET` of the whole file, landed
    /// piece by piece as it streams in.
    fn push(
        &self,
        file: &Job,
        land: &(dyn Fn(&mut dyn Read, u64) -> std::io::Result<bool> + Sync),
    ) -> Option<Result<(), SourceError>> {
        let size = file.entry.size;
        let response = match get(&self.agent, &file.remote, None, None) {
            Ok(response) => response,
            Err(e) => return Some(Err(classify_error(e))),
        };
        if response.status() != StatusCode::OK {
            return Some(Err(classify_status(response.status(), &file.remote)));
        }
        if content_length(&response).is_some_and(|length| length != size) {
            // Another size than probed: another version of the file.
            return Some(Err(classify_status(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &file.remote,
            )));
        }
        let mut body = body_of(response, size, self.floor);
        for piece in 0..size.div_ceil(PIECE_SIZE) {
            let length = piece_range(size, piece).1;
            let mut reader = (&mut body).take(length);
            if let Err(e) = land(&mut reader, piece) {
                let trouble = if is_timeout(&e) {
                    Trouble::TooSlow
                } else {
                    Trouble::Broken
                };
                return Some(Err(SourceError {
                    trouble,
                    cause: Box::new(e),
                }));
            }
        }
        Some(Ok(()))
    }
}
