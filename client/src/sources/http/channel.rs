//! One connection's worth of requests to HTTP servers: each range is one
//! `GET` with `Range` and `If-Range` (HTTP/1.1 connections answer one
//! request at a time, so the engine keeps one in flight per connection),
//! and its answer must be exactly the range asked for, of this version of
//! the file: `206` with the matching `Content-Range`. Anything else tells
//! the engine what happened (changed, busy, broken) without a byte of it
//! landing.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use fastdl_protocol::Digest;
use headers::HeaderMapExt;
use ureq::http::StatusCode;
use ureq::Agent;

use super::probe::is_etag;
use super::{body_of, classify_error, classify_status, get};
use crate::download::outcome::Job;
use crate::download::source::{Channel, SourceError, Trouble};
use crate::net::pace::SpeedFloor;

/// A range asked for and not sent yet.
struct Asked {
    url: String,
    offset: u64,
    length: u64,
    size: u64,
    validator: Option<String>,
}

/// Requests to HTTP servers, one at a time, over the agent's kept-alive
/// connections.
pub struct HttpChannel {
    agent: Agent,
    floor: SpeedFloor,
    asked: Option<Asked>,
    body: Box<dyn Read + Send>,
}

impl HttpChannel {
    pub fn new(agent: Agent, floor: SpeedFloor) -> HttpChannel {
        HttpChannel {
            agent,
            floor,
            asked: None,
            body: Box::new(std::io::empty()),
        }
    }
}

/// A range answer of another version of the file than its first answer.
#[derive(Debug, thiserror::Error)]
#[error(
    "{url} answered a range of another version of the file (validator {got}, first answer {want})"
)]
pub struct OtherVersion {
    url: String,
    want: String,
    got: String,
}

/// The validator of an answer, when it is not `want` (the file's first
/// answer's): its ETag when `want` is one, else its Last-Modified. An
/// answer without it is not known to be of the same version (RFC 9110
/// has a `206` carry the validators a `200` would), so it counts as
/// another.
fn other_version(want: &str, headers: &ureq::http::HeaderMap) -> Option<String> {
    let field = if is_etag(want) {
        "etag"
    } else {
        "last-modified"
    };
    match headers.get(field) {
        None => Some(format!("none (no {field})")),
        Some(got) if got.as_bytes() != want.as_bytes() => {
            Some(String::from_utf8_lossy(got.as_bytes()).into_owned())
        }
        Some(_) => None,
    }
}

fn unexpected(text: String) -> SourceError {
    SourceError {
        trouble: Trouble::Broken,
        cause: text.into(),
    }
}

impl Channel for HttpChannel {
    fn ask_range(&mut self, file: &Job, offset: u64, length: u64) -> Result<(), SourceError> {
        // The request goes out when its answer is awaited: nothing can be
        // pipelined behind it anyway.
        self.asked = Some(Asked {
            url: file.remote.clone(),
            offset,
            length,
            size: file.entry.size,
            validator: file.validator.clone(),
        });
        Ok(())
    }

    fn ask_digests(&mut self, _file: &Job) -> Result<(), SourceError> {
        Err(unexpected("HTTP servers give no per-piece digests".into()))
    }

    fn await_range(&mut self, length: u64) -> Result<(), SourceError> {
        let Some(asked) = self.asked.take() else {
            return Err(unexpected("no range was asked for".into()));
        };
        // The previous answer's connection goes back to the pool first.
        self.body = Box::new(std::io::empty());
        let response = get(
            &self.agent,
            &asked.url,
            Some((asked.offset, asked.length)),
            asked.validator.as_deref(),
        )
        .map_err(classify_error)?;
        if response.status() != StatusCode::PARTIAL_CONTENT {
            return Err(classify_status(response.status(), &asked.url));
        }
        let range = response.headers().typed_get::<headers::ContentRange>();
        let end = asked.offset + length - 1;
        let exact = range.is_some_and(|r| {
            r.bytes_range() == Some((asked.offset, end)) && r.bytes_len() == Some(asked.size)
        });
        if !exact || length != asked.length {
            // Another range, or another total size: another version.
            return Err(classify_status(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &asked.url,
            ));
        }
        if let Some(want) = asked.validator.as_deref() {
            // A server that ignores `If-Range` sends a range of whatever
            // it has now: its validator tells.
            if let Some(got) = other_version(want, response.headers()) {
                return Err(SourceError {
                    trouble: Trouble::Changed,
                    cause: Box::new(OtherVersion {
                        url: fastdl_support::quote(&asked.url),
                        want: fastdl_support::quote(want),
                        got: fastdl_support::quote(&got),
                    }),
                });
            }
        }
        self.body = Box::new(body_of(response, length, self.floor));
        Ok(())
    }

    fn body(&mut self) -> &mut dyn Read {
        &mut self.body
    }

    fn read_digests(&mut self, _file: &Job) -> Result<Vec<Digest>, SourceError> {
        Err(unexpected("HTTP servers give no per-piece digests".into()))
    }

    fn rtt(&self) -> Duration {
        Duration::ZERO
    }

    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}
