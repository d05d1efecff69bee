//! What the HTTP face answers: status lines and headers for files (ETag
//! from the BLAKE3 digest, Last-Modified, the digest itself as
//! `Repr-Digest`, ranges), errors, and the index (an HTML page and a JSON
//! listing of the published files).

use std::fmt::Write;
use std::ops::Bound;
use std::time::SystemTime;

use base64::Engine as _;
use fastdl_protocol::Listing;
use headers::HeaderMapExt;

use super::request::Request;
use std::sync::Arc;

use crate::catalog::{FileInfo, Snapshot};

/// What a file request gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The whole file (200).
    Whole,
    /// Bytes `offset..offset + length` (206).
    Part { offset: u64, length: u64 },
    /// A range outside the file (416).
    Unsatisfiable,
}

/// Whether an `If-Range` value still names this version of the file, by
/// exact match (RFC 9110, 13.1.5): the same strong ETag, or exactly the
/// Last-Modified date, and a date only while it is a strong validator
/// (the file is at least a second older than `now`: within the second of
/// its mtime, two versions could carry the same date). A later date is
/// not a match: a file put back with an older mtime (`cp -p`, `rsync -t`)
/// is another version.
fn if_range_holds(
    value: &str,
    etag: &headers::ETag,
    modified: SystemTime,
    now: SystemTime,
) -> bool {
    let value = value.trim();
    let mut ours = headers::HeaderMap::new();
    ours.typed_insert(etag.clone());
    ours.typed_insert(headers::LastModified::from(modified));
    let same = |name: &str| {
        ours.get(name)
            .is_some_and(|v| v.as_bytes() == value.as_bytes())
    };
    if value.starts_with('"') {
        return same("etag");
    }
    if value.starts_with("W/") {
        return false;
    }
    let strong = now
        .duration_since(modified)
        .is_ok_and(|age| age >= std::time::Duration::from_secs(1));
    strong && same("last-modified")
}

/// The answer to a request for a file of `size` bytes with validators
/// `etag` and `modified`: a single satisfiable range is served as such;
/// several ranges, a malformed one, or an `If-Range` that no longer holds
/// get the whole file, as RFC 9110 allows.
pub fn answer(request: &Request, size: u64, etag: &headers::ETag, modified: SystemTime) -> Answer {
    let Some(range) = request.headers.typed_get::<headers::Range>() else {
        return Answer::Whole;
    };
    if let Some(if_range) = request.headers.get("if-range") {
        let holds = if_range
            .to_str()
            .is_ok_and(|v| if_range_holds(v, etag, modified, SystemTime::now()));
        if !holds {
            return Answer::Whole;
        }
    }
    let ranges: Vec<(Bound<u64>, Bound<u64>)> = range.satisfiable_ranges(size).collect();
    let [(start, end)] = ranges.as_slice() else {
        // Several ranges (or a suffix longer than the file): the whole file.
        return if ranges.is_empty() && size == 0 {
            Answer::Unsatisfiable
        } else {
            Answer::Whole
        };
    };
    let start = match *start {
        Bound::Included(s) => s,
        _ => return Answer::Whole,
    };
    let last = match *end {
        Bound::Included(e) if e < start => return Answer::Whole,
        Bound::Included(e) => e.min(size.saturating_sub(1)),
        Bound::Unbounded => size.saturating_sub(1),
        Bound::Excluded(_) => return Answer::Whole,
    };
    if start >= size {
        return Answer::Unsatisfiable;
    }
    Answer::Part {
        offset: start,
        length: last - start + 1,
    }
}

/// The strong ETag of a file: its BLAKE3 digest (a new version is a new
/// tag, and the same bytes keep it across restarts and renames).
pub fn etag(info: &FileInfo) -> headers::ETag {
    format!("\"{}\"", info.tree.root)
        .parse()
        .unwrap_or_else(|_| "\"0\"".parse().expect("a valid tag"))
}

/// An HTTP date.
fn http_date(time: SystemTime) -> String {
    let mut map = headers::HeaderMap::new();
    map.typed_insert(headers::Date::from(time));
    map.get("date")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The status line and headers of a file answer (no body).
pub fn file_head(info: &FileInfo, answer: &Answer, keep_alive: bool) -> String {
    let size = info.size;
    let mut head = String::new();
    let (status, length) = match *answer {
        Answer::Whole => ("200 OK", size),
        Answer::Part { length, .. } => ("206 Partial Content", length),
        Answer::Unsatisfiable => ("416 Range Not Satisfiable", 0),
    };
    let _ = write!(head, "HTTP/1.1 {status}\r\n");
    common(&mut head, keep_alive);
    let _ = write!(
        head,
        "Content-Type: application/octet-stream\r\nContent-Length: {length}\r\nAccept-Ranges: bytes\r\n"
    );
    let tag = format!("\"{}\"", info.tree.root);
    let _ = write!(
        head,
        "ETag: {tag}\r\nLast-Modified: {}\r\nRepr-Digest: blake3=:{}:\r\n",
        http_date(info.mtime),
        base64::engine::general_purpose::STANDARD.encode(info.tree.root.0)
    );
    match *answer {
        Answer::Part { offset, length } => {
            let _ = write!(
                head,
                "Content-Range: bytes {offset}-{}/{size}\r\n",
                offset + length - 1
            );
        }
        Answer::Unsatisfiable => {
            let _ = write!(head, "Content-Range: bytes */{size}\r\n");
        }
        Answer::Whole => {}
    }
    head.push_str("\r\n");
    head
}

/// Headers every answer carries.
fn common(head: &mut String, keep_alive: bool) {
    let _ = write!(
        head,
        "Server: fastdl/{}\r\nDate: {}\r\nConnection: {}\r\n",
        env!("CARGO_PKG_VERSION"),
        http_date(SystemTime::now()),
        if keep_alive { "keep-alive" } else { "close" }
    );
}

/// A short answer with a text body: an error, or a redirect-free notice.
pub fn text(status: &str, body: &str, extra: &[(&str, &str)], keep_alive: bool) -> String {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    common(&mut head, keep_alive);
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let _ = write!(
        head,
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    head
}

/// A whole answer with `body` of `content_type` (the index).
pub fn page_head(content_type: &str, length: usize, keep_alive: bool) -> String {
    let mut head = "HTTP/1.1 200 OK\r\n".to_owned();
    common(&mut head, keep_alive);
    let _ = write!(
        head,
        "Content-Type: {content_type}\r\nContent-Length: {length}\r\nCache-Control: no-cache\r\n\r\n"
    );
    head
}

/// The index pages of the current list, rendered at the first request
/// after each change and shared by every connection (as the fastdl `LIST`
/// reply is): 10,000 files make a 9.5 MB page, which rendered per request
/// and held by each slow reader would let a few dozen of them take
/// gigabytes.
#[derive(Default)]
pub struct IndexPages {
    cached: std::sync::Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    /// The snapshot the pages below were rendered from (weak: an old
    /// snapshot is not kept alive for them).
    of: std::sync::Weak<Snapshot>,
    html: Option<Arc<str>>,
    json: Option<Arc<str>>,
}

impl IndexPages {
    /// The HTML or JSON index of `snapshot`.
    pub fn get(&self, snapshot: &Arc<Snapshot>, json: bool) -> Arc<str> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if !std::ptr::eq(cached.of.as_ptr(), Arc::as_ptr(snapshot)) {
            *cached = Cached {
                of: Arc::downgrade(snapshot),
                html: None,
                json: None,
            };
        }
        let slot = if json {
            &mut cached.json
        } else {
            &mut cached.html
        };
        let page = slot.get_or_insert_with(|| {
            if json {
                index_json(&snapshot.listing).into()
            } else {
                index_html(&snapshot.listing).into()
            }
        });
        Arc::clone(page)
    }
}

/// Characters kept as they are in a link to a file (unreserved, and `/`).
const PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// A file's path as a link.
pub fn link(name: &str) -> String {
    format!("/{}", percent_encoding::utf8_percent_encode(name, PATH))
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The index page: every published file, linked, with size and digest.
/// A name as the index shows it: bidi controls written out (`\u{202e}`),
/// so that a name cannot display as another (`evil\u{202e}txt.exe` as
/// "evilexe.txt").
fn visible(name: &str) -> String {
    name.chars()
        .map(|c| {
            if fastdl_support::is_bidi(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub fn index_html(listing: &Listing) -> String {
    let mut body = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>fastdl</title></head><body>\n\
         <h1>Files</h1>\n<p><a href=\"/index.json\">JSON</a></p>\n<table>\n\
         <tr><th>name</th><th>bytes</th><th>BLAKE3</th></tr>\n",
    );
    for entry in listing.entries().iter() {
        let _ = writeln!(
            body,
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td><code>{}</code></td></tr>",
            escape_html(&link(&entry.name)),
            escape_html(&visible(&entry.name)),
            entry.size,
            entry.digest
        );
    }
    body.push_str("</table>\n</body></html>\n");
    body
}

/// The listing as JSON: `{"files": [{"name", "size", "blake3", "url"}]}`.
pub fn index_json(listing: &Listing) -> String {
    let files: Vec<serde_json::Value> = listing
        .entries()
        .iter()
        .map(|entry| {
            serde_json::json!({
                "name": entry.name,
                "size": entry.size,
                "blake3": entry.digest.to_string(),
                "url": link(&entry.name),
            })
        })
        .collect();
    serde_json::json!({ "files": files }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_controls_are_written_out_in_the_index() {
        assert_eq!(visible("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(visible("plain ü.txt"), "plain ü.txt");
    }

    #[test]
    fn index_pages_are_rendered_once_per_list_and_shared() {
        let pages = IndexPages::default();
        let list = Arc::new(Snapshot::default());
        let html = pages.get(&list, false);
        assert!(Arc::ptr_eq(&html, &pages.get(&list, false)));
        assert!(pages.get(&list, true).starts_with('{'));
        let changed = Arc::new(Snapshot::default());
        assert!(!Arc::ptr_eq(&html, &pages.get(&changed, false)));
        // A list is not kept alive for its pages.
        drop(list);
        drop(changed);
        assert!(pages.cached.lock().unwrap().of.upgrade().is_none());
    }

    fn request(range: &str, if_range: Option<&str>) -> Request {
        let mut head = format!("GET /f HTTP/1.1\r\nRange: {range}\r\n");
        if let Some(value) = if_range {
            head.push_str(&format!("If-Range: {value}\r\n"));
        }
        head.push_str("\r\n");
        Request::parse(head.as_bytes()).unwrap()
    }

    #[test]
    fn single_ranges_are_served_others_get_the_whole_file() {
        let tag: headers::ETag = "\"abc\"".parse().unwrap();
        let now = SystemTime::now();
        let answer_of = |range: &str| answer(&request(range, None), 100, &tag, now);
        assert_eq!(
            answer_of("bytes=0-9"),
            Answer::Part {
                offset: 0,
                length: 10
            }
        );
        assert_eq!(
            answer_of("bytes=90-"),
            Answer::Part {
                offset: 90,
                length: 10
            }
        );
        assert_eq!(
            answer_of("bytes=-5"),
            Answer::Part {
                offset: 95,
                length: 5
            }
        );
        assert_eq!(
            answer_of("bytes=50-500"),
            Answer::Part {
                offset: 50,
                length: 50
            }
        );
        assert_eq!(answer_of("bytes=100-"), Answer::Unsatisfiable);
        assert_eq!(answer_of("bytes=0-1,5-6"), Answer::Whole);
        assert_eq!(answer_of("bytes=9-2"), Answer::Whole);
        assert_eq!(answer_of("lines=1-2"), Answer::Whole);
        let stale = answer(&request("bytes=0-9", Some("\"old\"")), 100, &tag, now);
        let weak = answer(&request("bytes=0-9", Some("W/\"abc\"")), 100, &tag, now);
        assert_eq!(weak, Answer::Whole, "a weak tag never matches");
        assert_eq!(stale, Answer::Whole, "If-Range no longer holds");
        let fresh = answer(&request("bytes=0-9", Some("\"abc\"")), 100, &tag, now);
        assert_eq!(
            fresh,
            Answer::Part {
                offset: 0,
                length: 10
            }
        );
    }

    #[test]
    fn if_range_dates_match_exactly_and_only_when_strong() {
        let tag: headers::ETag = "\"abc\"".parse().unwrap();
        let modified = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let date = "Tue, 14 Nov 2023 22:13:20 GMT";
        let later = modified + std::time::Duration::from_secs(60);
        assert!(if_range_holds(date, &tag, modified, later));
        // A date after the file's: not this version (it was put back
        // with an older mtime).
        assert!(!if_range_holds(
            "Tue, 14 Nov 2023 22:14:20 GMT",
            &tag,
            modified,
            later
        ));
        // Within the second of its mtime, a date is weak.
        assert!(!if_range_holds(date, &tag, modified, modified));
        assert!(if_range_holds("\"abc\"", &tag, modified, modified));
        assert!(!if_range_holds("\"abd\"", &tag, modified, later));
    }

    #[test]
    fn links_and_the_page_escape_names() {
        assert_eq!(link("a b/c&d.bin"), "/a%20b/c%26d.bin");
        let listing = Listing::new(vec![fastdl_protocol::Entry {
            name: "<x>.bin".into(),
            size: 1,
            digest: fastdl_protocol::Digest::of(b"x"),
        }]);
        let html = index_html(&listing);
        assert!(html.contains("&lt;x&gt;.bin") && !html.contains("<x>"));
        let json: serde_json::Value = serde_json::from_str(&index_json(&listing)).unwrap();
        assert_eq!(json["files"][0]["name"], "<x>.bin");
        assert_eq!(json["files"][0]["url"], "/%3Cx%3E.bin");
    }
}
