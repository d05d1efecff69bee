//! Plumbing shared by `fastdl-server` and `fastdl-client`: logging to
//! terminal and file, byte counts written and read (through `bytesize` and
//! `parse-size`), text from peers made safe for a log line, where the
//! user's configuration lives, the signals a service gets (`signals`), and
//! completions and man pages from the clap definitions (`docs`). Nothing
//! about the protocol lives here.

pub mod docs;
pub mod logging;
pub mod signals;

/// Where fastdl keeps a file of the user's configuration:
/// `$XDG_CONFIG_HOME/fastdl/<file>`, else `$HOME/.config/fastdl/<file>`;
/// `None` if neither variable is set (a service without a home: the
/// path must then be given).
pub fn config_path(file: &str) -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?)
            .join(".config"),
    };
    Some(base.join("fastdl").join(file))
}

/// A progress deadline, as both ends judge a peer: `min_rate` bytes per
/// second over `window` (`--speed-limit` and `--speed-time`, named as in
/// curl). The client judges the time it waits for the server; the server
/// judges what the client takes off its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeedFloor {
    /// Bytes per second below which a window fails.
    pub min_rate: u64,
    /// The time one judgement covers.
    pub window: std::time::Duration,
}

impl SpeedFloor {
    /// Bytes `time` must bring at the floor rate. A judgement covers at
    /// least a window but may cover more (one read waited long), and is
    /// held to the rate over all of it, not to one window's bytes.
    pub fn min_bytes_over(&self, time: std::time::Duration) -> u64 {
        (self.min_rate as f64 * time.as_secs_f64()).ceil() as u64
    }
}

/// Longest quoted text in a log line, in characters.
pub const QUOTE_LIMIT: usize = 120;

/// Text that came from a peer or from a user's file, fit for one log
/// line: in double quotes, control characters escaped, and cut to
/// [`QUOTE_LIMIT`] characters with its full length noted. A 50 MB line in
/// input.txt is logged as its first 120 characters, not copied whole.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(QUOTE_LIMIT) + 24);
    out.push('"');
    let mut chars = text.chars();
    for c in chars.by_ref().take(QUOTE_LIMIT) {
        out.extend(c.escape_debug());
    }
    out.push('"');
    if chars.next().is_some() {
        out.push_str(&format!("… ({} bytes)", text.len()));
    }
    out
}

/// Whether `c` reorders the text around it on screen (the Unicode bidi
/// controls): a name holding one can show as another name (`txt.exe`
/// written backwards), so such names are shown escaped.
pub fn is_bidi(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` as it is when it is short and has no control characters, else
/// [`quote`]d: for names that did not pass the name rules, shown in a log
/// line or a summary.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().count() <= QUOTE_LIMIT && !text.chars().any(|c| c.is_control() || is_bidi(c)) {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(quote(text))
    }
}

/// Human-readable byte count in binary units (`1.5 KiB`, `3.0 GiB`,
/// `1023 B`), as `bytesize` writes it.
pub fn human_bytes(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// Parses a byte count with an optional unit, binary as in curl and aria2
/// (`500K` is 512,000 bytes; `1.5M`, `2G`, `1.5 MiB` and plain `1048576`
/// work too), with `parse-size`. Zero is refused: every count given on
/// the command line is a rate or a size that must be positive.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let bytes = parse_size::Config::new()
        .with_binary()
        .parse_size(text.trim())
        .map_err(|e| format!("{text:?} is not a byte count ({e}; examples: 500K, 2M, 1G)"))?;
    if bytes == 0 {
        return Err(format!("{text:?} must be more than zero"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn quotes_are_bounded_and_on_one_line() {
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("x\ny\0"), "\"x\\ny\\0\"");
        let long = "é".repeat(50_000);
        let q = quote(&long);
        assert!(
            q.starts_with(&format!("\"{}\"", "é".repeat(QUOTE_LIMIT))),
            "{q}"
        );
        assert!(q.ends_with("… (100000 bytes)"), "{q}");
        assert!(q.len() < 400);
        assert_eq!(printable("../x"), "../x");
        assert_eq!(printable("a\nb"), "\"a\\nb\"");
        assert_eq!(printable("cod.\u{202e}fdp"), "\"cod.\\u{202e}fdp\"");
        assert!(printable(&long).len() < 400);
    }

    #[test]
    fn byte_counts_parse_like_curl() {
        assert_eq!(parse_bytes("100"), Ok(100));
        assert_eq!(parse_bytes("500K"), Ok(500 << 10));
        assert_eq!(parse_bytes("2m"), Ok(2 << 20));
        assert_eq!(parse_bytes("1.5M"), Ok(3 << 19));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.5 MiB"), Ok(3 << 19));
        for bad in ["", "x", "0", "-5K", "K", "nan"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
