//! What one line of input.txt asks for: a file of the fastdl server(s),
//! by name, or a URL (`http://` or `https://`), optionally followed by the
//! digest the file must have:
//!
//! ```text
//! movies/night.mkv
//! https://example.org/iso/disk%201.iso  sha256=4a5e...64 hex digits
//! http://mirror.local/data.bin blake3=9f2c...64 hex digits
//! ```

use crate::download::outcome::{Algo, Check, Claimant};

/// One line's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A name the fastdl server(s) list.
    Name(String),
    /// A URL, and the digest its file must have, if the line gives one.
    Url { url: String, check: Option<Check> },
}

impl Item {
    /// What the line asks for, or why it cannot be read.
    pub fn parse(line: &str) -> Result<Item, String> {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if !is_url(first) {
            // Names may hold spaces: the whole line is the name.
            return Ok(Item::Name(line.to_owned()));
        }
        check_url(first)?;
        let mut check = None;
        for word in words {
            if check.is_some() {
                return Err(format!("more than one digest after the URL: {word:?}"));
            }
            check = Some(parse_digest(word)?);
        }
        Ok(Item::Url {
            url: first.to_owned(),
            check,
        })
    }

    /// The key the scheduler knows the line by (a name, or a URL).
    pub fn key(&self) -> &str {
        match self {
            Item::Name(name) => name,
            Item::Url { url, .. } => url,
        }
    }
}

fn is_url(word: &str) -> bool {
    let lower = word.get(..8).unwrap_or(word).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// A URL the client can fetch: absolute, http or https, with a host.
fn check_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("not a valid URL: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(())
}

/// `sha256=HEX` or `blake3=HEX` (64 hex digits).
fn parse_digest(word: &str) -> Result<Check, String> {
    let (algo, hex) = match word.split_once('=') {
        Some(("sha256", hex)) => (Algo::Sha256, hex),
        Some(("blake3", hex)) => (Algo::Blake3, hex),
        _ => {
            return Err(format!(
                "after the URL, expected sha256=HEX or blake3=HEX, got {}",
                fastdl_support::quote(word)
            ))
        }
    };
    let want = decode_hex(hex)
        .filter(|bytes| bytes.len() == 32)
        .ok_or_else(|| format!("{}= needs 64 hex digits", algo.as_str()))?;
    Ok(Check {
        algo,
        want,
        from: Claimant::Input,
    })
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_names_with_their_spaces() {
        assert_eq!(
            Item::parse("my file.bin").unwrap(),
            Item::Name("my file.bin".into())
        );
        assert_eq!(
            Item::parse("httpfoo/x").unwrap(),
            Item::Name("httpfoo/x".into())
        );
    }

    #[test]
    fn urls_with_and_without_a_digest() {
        let hex = "ab".repeat(32);
        match Item::parse(&format!("https://h.example/a%20b.iso  sha256={hex}")).unwrap() {
            Item::Url {
                url,
                check: Some(check),
            } => {
                assert_eq!(url, "https://h.example/a%20b.iso");
                assert_eq!(check.algo, Algo::Sha256);
                assert_eq!(check.want, vec![0xab; 32]);
                assert_eq!(check.from, Claimant::Input);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Item::parse("HTTP://h/x").unwrap(),
            Item::Url {
                url: "HTTP://h/x".into(),
                check: None
            }
        );
        let blake = Item::parse(&format!("http://h/x blake3={hex}")).unwrap();
        assert!(matches!(
            blake,
            Item::Url {
                check: Some(Check {
                    algo: Algo::Blake3,
                    ..
                }),
                ..
            }
        ));
    }

    #[test]
    fn bad_digests_and_urls_are_refused_with_a_reason() {
        let hex = "ab".repeat(32);
        for line in [
            "http://h/x sha256=abc".to_owned(),
            "http://h/x md5=abcd".to_owned(),
            format!("http://h/x sha256={hex} sha256={hex}"),
            format!("http://h/x sha256={}", "zz".repeat(32)),
            "http:///nohost".to_owned(),
            "http://h/x y".to_owned(),
        ] {
            assert!(Item::parse(&line).is_err(), "{line}");
        }
    }
}
