//! One HTTP/1.1 request head, parsed by `httparse`, and what the face
//! needs from it: the method, the listed name the target asks for, the
//! range (through the `headers` crate's typed headers), whether the
//! connection stays open, the bearer token.

use headers::{HeaderMap, HeaderName, HeaderValue};

/// Most header lines one request may carry.
const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug)]
pub struct Request {
    /// `GET` and `HEAD` are answered; anything else gets 405.
    pub method: String,
    /// The request target as sent (origin form: `/path?query`).
    pub target: String,
    /// HTTP/1.`minor`.
    pub minor: u8,
    /// Every header, for ranges, validators, keep-alive and the token.
    pub headers: HeaderMap,
}

/// Why a head is not a request this face answers (400).
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    #[error("malformed request: {0}")]
    Parse(httparse::Error),
    #[error("incomplete request head")]
    Partial,
    #[error("a request body is not accepted here")]
    Body,
}

impl Request {
    /// Parses a whole head (ending with its blank line).
    pub fn parse(head: &[u8]) -> Result<Request, BadRequest> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut slots);
        match parsed.parse(head).map_err(BadRequest::Parse)? {
            // The head ends where httparse says; a head whose end is
            // found elsewhere (mixed line endings) could hide a second
            // request: refused, never half-read.
            httparse::Status::Complete(n) if n == head.len() => {}
            httparse::Status::Complete(_) => {
                return Err(BadRequest::Parse(httparse::Error::NewLine))
            }
            httparse::Status::Partial => return Err(BadRequest::Partial),
        }
        let mut headers = HeaderMap::new();
        for header in parsed.headers.iter() {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(header.name.as_bytes()),
                HeaderValue::from_bytes(header.value),
            ) else {
                return Err(BadRequest::Parse(httparse::Error::HeaderValue));
            };
            headers.append(name, value);
        }
        let request = Request {
            method: parsed.method.unwrap_or_default().to_owned(),
            target: parsed.path.unwrap_or_default().to_owned(),
            minor: parsed.version.unwrap_or(1),
            headers,
        };
        // GET and HEAD carry no body; one announced would be left unread
        // and taken for the next request. Any Content-Length other than
        // exactly one "0" is refused: an invalid value or two that differ
        // must not read as "no body" (request smuggling behind a proxy).
        let chunked = request.headers.contains_key("transfer-encoding");
        let lengths: Vec<&HeaderValue> = request.headers.get_all("content-length").iter().collect();
        let body = match lengths.as_slice() {
            [] => false,
            [only] => only.as_bytes().trim_ascii() != b"0",
            _ => true,
        };
        if chunked || body {
            return Err(BadRequest::Body);
        }
        Ok(request)
    }

    /// Whether the connection stays open after the answer (HTTP/1.1
    /// unless `Connection: close`; HTTP/1.0 only with `keep-alive`).
    pub fn keep_alive(&self) -> bool {
        let connection = self
            .headers
            .get("connection")
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if self.minor == 0 {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        }
    }

    /// The token of an `Authorization: Bearer TOKEN` header.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.headers.get("authorization")?.to_str().ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }

    /// Whether the client prefers JSON (an `Accept` that names it).
    pub fn wants_json(&self) -> bool {
        self.headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json"))
    }
}

/// What a request target asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `/` (and `/index.html`): the index page.
    Index,
    /// `/index.json`: the listing as JSON.
    Json,
    /// A file, by its name (percent-decoded path without the leading `/`).
    File(String),
    /// Not something this face serves (not origin form, not UTF-8 after
    /// decoding, or a path the name rules refuse): the reason.
    Refused(&'static str),
}

/// Reads a request target. Only listed names are served, and a name must
/// pass the protocol's name rules after percent-decoding, so `..`,
/// `%2e%2e`, encoded slashes that make `..`, absolute paths and empty
/// segments are all refused before any file is looked up.
pub fn target(raw: &str) -> Target {
    let Some(path) = raw.strip_prefix('/') else {
        return Target::Refused("the request target must be a path starting with /");
    };
    // The query and fragment name nothing here.
    let path = path.split(['?', '#']).next().unwrap_or("");
    match path {
        "" | "index.html" => return Target::Index,
        "index.json" => return Target::Json,
        _ => {}
    }
    let Ok(name) = percent_encoding::percent_decode_str(path).decode_utf8() else {
        return Target::Refused("the path is not UTF-8");
    };
    if fastdl_protocol::validate_name(&name).is_err() {
        return Target::Refused("not a name this server could list");
    }
    Target::File(name.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use headers::HeaderMapExt;

    #[test]
    fn a_body_in_any_form_is_refused() {
        let with =
            |extra: &str| Request::parse(format!("GET / HTTP/1.1\r\n{extra}\r\n").as_bytes());
        assert!(with("Content-Length: 0\r\n").is_ok());
        assert!(with("").is_ok());
        for bad in [
            "Content-Length: 30\r\n",
            "Content-Length: 30x\r\n",
            "Content-Length: 0\r\nContent-Length: 31\r\n",
            "Content-Length: 0\r\nContent-Length: 0\r\n",
            "Transfer-Encoding: chunked\r\n",
        ] {
            assert!(matches!(with(bad), Err(BadRequest::Body)), "{bad:?}");
        }
    }

    #[test]
    fn a_head_that_ends_before_its_bytes_do_is_refused() {
        // httparse ends this head at the first "\n\r\n"; what follows
        // would be another request read as part of this one.
        let head = b"GET /a HTTP/1.1\nHost: x\n\r\nGET /b HTTP/1.1\r\n\r\n";
        assert!(Request::parse(head).is_err());
    }

    #[test]
    fn a_request_head_is_parsed_with_its_headers() {
        let head = b"GET /a%20b.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\nConnection: close\r\nAuthorization: Bearer s3cret\r\n\r\n";
        let request = Request::parse(head).unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.target, "/a%20b.bin");
        assert!(!request.keep_alive());
        assert_eq!(request.bearer(), Some("s3cret"));
        assert!(request.headers.typed_get::<headers::Range>().is_some());
        let old = Request::parse(b"HEAD / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!old.keep_alive());
        assert!(Request::parse(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").is_err());
        assert!(Request::parse(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").is_err());
    }

    #[test]
    fn targets_are_names_or_refused() {
        assert_eq!(target("/"), Target::Index);
        assert_eq!(target("/index.json"), Target::Json);
        assert_eq!(
            target("/dir/a%20b.bin?x=1"),
            Target::File("dir/a b.bin".into())
        );
        for raw in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/a/%2e%2e%2f%2e%2e/etc/passwd",
            "/a%2f..%2f..%2fb",
            "//etc/passwd",
            "/%2Fetc%2Fpasswd",
            "http://host/x",
            "*",
            "/a/./b",
            "/%ff",
        ] {
            assert!(matches!(target(raw), Target::Refused(_)), "{raw}");
        }
    }
}
