//! The first request for a URL: a `GET` of its first piece. Its answer
//! tells what the file is (its size, its validators, whether ranges are
//! served, the name it lands under, any digest the server announces) and
//! already holds its first bytes, so a file of one piece is complete
//! after one round trip, as with curl.
//!
//! Probes run on a small pool of threads (the [`Prober`]), so that many
//! small files are fetched in parallel while the scheduler only waits
//! for results.

use std::io::Read;
use std::sync::Arc;

use base64::Engine as _;
use crossbeam_channel::{Receiver, Sender};
use fastdl_protocol::digest::PieceHasher;
use fastdl_protocol::{Digest, PIECE_SIZE};
use headers::HeaderMapExt;
use ureq::http::{HeaderMap, StatusCode, Uri};
use ureq::{Agent, ResponseExt};

use super::{get, is_timeout};
use crate::download::head::Head;
use crate::download::outcome::{Algo, Check, Claimant};
use crate::download::ratelimit::{Limited, RateLimit};
use crate::net::pace::SpeedFloor;

/// What a probe found out about a URL.
#[derive(Debug, Clone)]
pub struct Probed {
    /// Where the file is after redirects: later ranges go there directly.
    pub url: String,
    /// The name it lands under (one component, through the name rules).
    pub name: String,
    /// The whole file's size (from Content-Range, or Content-Length of a 200).
    pub size: u64,
    /// Whether the server serves ranges.
    pub ranges: bool,
    /// What a range request must carry as `If-Range`: the strong ETag, or
    /// else the Last-Modified date.
    pub validator: Option<String>,
    /// A key of this version of the file: the URL asked for, the size and
    /// the validators (a journal must match it to be resumed).
    pub version: Digest,
    /// The digest the server announces (`Repr-Digest`), if any.
    pub announced: Option<Check>,
    /// The first piece (all of a file of one piece); `None` if it was not
    /// read (a large file from a server without ranges).
    pub head: Option<Arc<Head>>,
}

/// Reads into all of `buf` unless the reader ends first; how much it read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("HTTP {0}")]
    Status(StatusCode),
    #[error("refused a redirect from https to plain http (the file would travel without TLS); put the http:// URL in the input to allow it")]
    Downgrade,
    #[error("{0}")]
    Request(ureq::Error),
    #[error("reading the answer: {0}")]
    Body(std::io::Error),
    #[error("the server does not say how large the file is (no Content-Length or Content-Range)")]
    NoSize,
    #[error("no usable file name in the URL's path or its Content-Disposition")]
    NoName,
    #[error("the answer was not what was asked for: {0}")]
    Unexpected(String),
}

impl ProbeError {
    /// Whether trying again soon cannot help: the server says the file is
    /// not there or not for us (4xx, apart from time-outs and rate limits),
    /// or it cannot be named or sized.
    pub fn is_permanent(&self) -> bool {
        match self {
            ProbeError::Status(status) => {
                status.is_client_error() && !matches!(status.as_u16(), 408 | 429)
            }
            ProbeError::NoSize | ProbeError::NoName | ProbeError::Downgrade => true,
            _ => false,
        }
    }

    /// Whether the server was too slow for the progress deadline.
    pub fn is_too_slow(&self) -> bool {
        match self {
            ProbeError::Request(ureq::Error::Timeout(_)) => true,
            ProbeError::Body(e) => is_timeout(e),
            _ => false,
        }
    }
}

impl From<ureq::Error> for ProbeError {
    fn from(e: ureq::Error) -> ProbeError {
        if super::is_downgrade(&e) {
            ProbeError::Downgrade
        } else {
            ProbeError::Request(e)
        }
    }
}

/// Probes `url`: a `GET` of its first piece (read within `limit`).
pub fn probe(
    agent: &Agent,
    url: &str,
    floor: SpeedFloor,
    limit: Option<&RateLimit>,
) -> Result<Probed, ProbeError> {
    let response = get(agent, url, Some((0, PIECE_SIZE)), None)?;
    let status = response.status();
    let final_url = response.get_uri().to_string();
    let headers = response.headers().clone();
    let range = headers.typed_get::<headers::ContentRange>();
    let (size, ranges) = match status {
        StatusCode::PARTIAL_CONTENT => {
            let size = range
                .as_ref()
                .and_then(|r| r.bytes_len())
                .ok_or(ProbeError::NoSize)?;
            match range.and_then(|r| r.bytes_range()) {
                Some((0, end)) if size.min(PIECE_SIZE).checked_sub(1) == Some(end) => {}
                other => {
                    return Err(ProbeError::Unexpected(format!(
                        "asked for the first {PIECE_SIZE} bytes, got range {other:?} of {size}"
                    )))
                }
            }
            (size, true)
        }
        // The whole file: ranges are not served (or it is small and the
        // server ignores ranges on it).
        StatusCode::OK => (
            super::content_length(&response).ok_or(ProbeError::NoSize)?,
            false,
        ),
        // Asking for the first byte of an empty file.
        StatusCode::RANGE_NOT_SATISFIABLE if range.and_then(|r| r.bytes_len()) == Some(0) => {
            (0, true)
        }
        status => return Err(ProbeError::Status(status)),
    };
    let name = name_for(&final_url, &headers).ok_or(ProbeError::NoName)?;
    let etag = header_text(&headers, "etag");
    let last_modified = header_text(&headers, "last-modified");
    // `If-Range` takes a strong ETag or a date, never a weak ETag.
    let validator = etag
        .clone()
        .filter(|e| is_etag(e))
        .or_else(|| last_modified.clone());
    // Without a validator nothing tells two versions of a file apart, so
    // a file of more than one piece must come in one answer: no ranges
    // over several connections, no resume across runs.
    let ranges = ranges && (validator.is_some() || size <= PIECE_SIZE);
    let head_length = size.min(PIECE_SIZE);
    // The first piece, unless it would mean reading a large file whole.
    let head = if size > 0 && (ranges || size <= PIECE_SIZE) {
        let len = head_length as usize;
        let mut buf = Head::buffer(len);
        let got = read_full(
            &mut Limited::new(super::body_of(response, head_length, floor), limit),
            &mut buf[..len],
        )
        .map_err(ProbeError::Body)?;
        if got != len {
            return Err(ProbeError::Unexpected(format!(
                "the answer ended after {got} of {head_length} bytes"
            )));
        }
        let mut hasher = PieceHasher::new(size, 0);
        hasher.update(&buf[..len]);
        Some(Arc::new(Head::new(buf, len, hasher.finalize())))
    } else {
        None
    };
    let version = Digest::of(
        format!(
            "{url}\n{size}\n{}\n{}",
            etag.as_deref().unwrap_or(""),
            last_modified.as_deref().unwrap_or("")
        )
        .as_bytes(),
    );
    Ok(Probed {
        url: final_url,
        name,
        size,
        ranges,
        validator,
        version,
        announced: announced(&headers, status == StatusCode::OK),
        head,
    })
}

/// Whether a validator is a strong ETag (`"..."`), not a date or a weak
/// `W/"..."` one.
pub fn is_etag(validator: &str) -> bool {
    validator.starts_with('"')
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The name a file lands under: the filename of its Content-Disposition,
/// else the last segment of its URL's path, percent-decoded; only the
/// last component of either, through the client's name rules.
pub fn name_for(url: &str, headers: &HeaderMap) -> Option<String> {
    let disposition = headers
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .map(content_disposition::parse_content_disposition)
        .and_then(|d| d.filename_full());
    let from_path = || {
        let uri: Uri = url.parse().ok()?;
        let segment = uri.path().rsplit('/').next()?;
        percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    [disposition, from_path()]
        .into_iter()
        .flatten()
        .map(|name| last_component(&name))
        .find(|name| {
            fastdl_protocol::validate_name(name).is_ok()
                && !crate::disk::store::is_working_name(name)
        })
}

/// The part of `name` after its last `/` or `\`: a name from a server
/// never makes folders.
fn last_component(name: &str) -> String {
    name.rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// The digest a server announces for the whole file (RFC 9530): its
/// `Repr-Digest`, or its `Content-Digest` when that covers the whole file
/// as stored (`whole`: a `200` answer, not a range, and no
/// `Content-Encoding`; the digest of a `206` covers only its part).
/// Of several algorithms, the cheapest to check first: BLAKE3 (what
/// fastdl-server's HTTP face announces), then SHA-256, then SHA-512.
pub fn announced(headers: &HeaderMap, whole: bool) -> Option<Check> {
    if let Some(check) = digest_field(headers, "repr-digest") {
        return Some(check);
    }
    let encoded = headers
        .get("content-encoding")
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    if whole && !encoded {
        return digest_field(headers, "content-digest");
    }
    None
}

/// The best known digest in one RFC 9530 field, if any.
fn digest_field(headers: &HeaderMap, field: &str) -> Option<Check> {
    let value = headers.get(field)?.to_str().ok()?;
    let dictionary: sfv::Dictionary = sfv::Parser::new(value).parse().ok()?;
    let mut found: Vec<(Algo, Vec<u8>)> = Vec::new();
    for (key, entry) in &dictionary {
        let sfv::ListEntry::Item(item) = entry else {
            continue;
        };
        let Some(bytes) = item.bare_item.as_byte_sequence() else {
            continue;
        };
        let algo = match (key.as_str(), bytes.len()) {
            ("blake3", 32) => Algo::Blake3,
            ("sha-256", 32) => Algo::Sha256,
            ("sha-512", 64) => Algo::Sha512,
            _ => continue,
        };
        found.push((algo, bytes.to_vec()));
    }
    found.sort_by_key(|(algo, _)| *algo as u8);
    found.into_iter().next().map(|(algo, want)| Check {
        algo,
        want,
        from: Claimant::Server,
    })
}

/// A digest as a `Repr-Digest` value carries it (for tests and the
/// server's face).
pub fn repr_digest(key: &str, bytes: &[u8]) -> String {
    format!(
        "{key}=:{}:",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A pool of threads probing URLs. Results come back tagged with the key
/// they were asked under.
pub struct Prober {
    requests: Sender<(String, String)>,
    /// `(key, result)` for every probe asked for.
    pub results: Receiver<(String, Result<Probed, ProbeError>)>,
}

impl Prober {
    /// Starts `threads` probing threads over `agent`, their first pieces
    /// held to `--limit-rate` (`limit`) as every other byte is.
    pub fn start(
        agent: Agent,
        floor: SpeedFloor,
        threads: usize,
        limit: Option<Arc<RateLimit>>,
    ) -> Prober {
        let (requests, jobs) = crossbeam_channel::unbounded::<(String, String)>();
        let (done, results) = crossbeam_channel::unbounded();
        for i in 0..threads.max(1) {
            let (jobs, done, agent) = (jobs.clone(), done.clone(), agent.clone());
            let limit = limit.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("probe {i}"))
                .spawn(move || {
                    for (key, url) in jobs {
                        let result = probe(&agent, &url, floor, limit.as_deref());
                        if done.send((key, result)).is_err() {
                            return;
                        }
                    }
                });
            if let Err(e) = spawned {
                log::error!("cannot start a probe thread: {e}");
            }
        }
        Prober { requests, results }
    }

    /// Probes `url`; the result comes back under `key`.
    pub fn ask(&self, key: &str, url: &str) {
        let _ = self.requests.send((key.to_owned(), url.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn names_come_from_the_disposition_or_the_decoded_path_never_with_folders() {
        let none = HeaderMap::new();
        assert_eq!(
            name_for("http://h/dir/my%20file.bin?x=1", &none).as_deref(),
            Some("my file.bin")
        );
        let cd = headers(&[("content-disposition", "attachment; filename=\"report.pdf\"")]);
        assert_eq!(
            name_for("http://h/download?id=3", &cd).as_deref(),
            Some("report.pdf")
        );
        // A folder in either is dropped; dot names are refused.
        let sneaky = headers(&[(
            "content-disposition",
            "attachment; filename=\"../../etc/passwd\"",
        )]);
        assert_eq!(name_for("http://h/x/", &sneaky).as_deref(), Some("passwd"));
        // The shape of the client's own working files is never taken.
        let ours = headers(&[(
            "content-disposition",
            "attachment; filename=\".r.pdf.fastdl-journal\"",
        )]);
        assert_eq!(name_for("http://h/r.pdf", &ours).as_deref(), Some("r.pdf"));
        assert_eq!(name_for("http://h/.r.pdf.fastdl-part", &none), None);
        assert_eq!(name_for("http://h/a%2F..%2Fb", &none).as_deref(), Some("b"));
        assert_eq!(name_for("http://h/%2e%2e", &none), None);
        assert_eq!(name_for("http://h/", &none), None);
    }

    #[test]
    fn an_announced_digest_is_read_and_the_cheapest_wins() {
        let sha = [7u8; 32];
        let b3 = [9u8; 32];
        let both = format!(
            "{}, {}",
            repr_digest("sha-256", &sha),
            repr_digest("blake3", &b3)
        );
        let check = announced_whole(&headers(&[("repr-digest", &both)])).unwrap();
        assert_eq!((check.algo, check.want), (Algo::Blake3, b3.to_vec()));
        let only_sha = repr_digest("sha-256", &sha);
        let check = announced_whole(&headers(&[("repr-digest", &only_sha)])).unwrap();
        assert_eq!((check.algo, check.from), (Algo::Sha256, Claimant::Server));
        // Unknown algorithms, wrong lengths and garbage are ignored.
        assert!(announced_whole(&headers(&[("repr-digest", "md5=:AAAA:")])).is_none());
        assert!(announced_whole(&headers(&[("repr-digest", "sha-256=:AAAA:")])).is_none());
        assert!(announced_whole(&headers(&[("repr-digest", "not a dictionary ((")])).is_none());
    }

    fn announced_whole(headers: &HeaderMap) -> Option<Check> {
        announced(headers, true)
    }

    #[test]
    fn content_digest_counts_only_for_a_whole_unencoded_body() {
        let digest = repr_digest("sha-256", &[7; 32]);
        let field = [("content-digest", digest.as_str())];
        let check = announced(&headers(&field), true).unwrap();
        assert_eq!((check.algo, check.want), (Algo::Sha256, vec![7; 32]));
        // The digest of a 206 covers only the range it carries.
        assert!(announced(&headers(&field), false).is_none());
        let gzipped = [
            ("content-digest", digest.as_str()),
            ("content-encoding", "gzip"),
        ];
        assert!(announced(&headers(&gzipped), true).is_none());
        // Repr-Digest wins over Content-Digest, and counts for a range too.
        let repr = repr_digest("blake3", &[9; 32]);
        let both = [
            ("content-digest", digest.as_str()),
            ("repr-digest", repr.as_str()),
        ];
        assert_eq!(
            announced(&headers(&both), false).unwrap().algo,
            Algo::Blake3
        );
    }

    #[test]
    fn only_client_errors_are_permanent() {
        assert!(ProbeError::Status(StatusCode::NOT_FOUND).is_permanent());
        assert!(!ProbeError::Status(StatusCode::TOO_MANY_REQUESTS).is_permanent());
        assert!(!ProbeError::Status(StatusCode::BAD_GATEWAY).is_permanent());
        assert!(ProbeError::NoName.is_permanent());
    }
}
