//! The published list: numbered entry lines carrying name, size and digest.
//!
//! One entry is `<index>) <name>\t<size>\t<digest>`, in the seed's
//! `1) name` style. Names cannot contain tabs or other control characters
//! (see [`crate::name`]), so the last two tab-separated fields are always
//! size and digest, whatever the name holds. The same lines make up the
//! server's `text.txt` and the body of the `LIST` reply.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use crate::digest::Digest;
use crate::error::ProtocolError;
use crate::line::{expect_line, write_line};
use crate::message::Reply;
use crate::name::validate_name;
use crate::{MAX_LIST_BYTES, MAX_LIST_ENTRIES, MAX_REPLY_LINE};

/// One published file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub digest: Digest,
}

impl Entry {
    /// The entry line for position `index` (1-based).
    pub fn to_line(&self, index: usize) -> String {
        format!("{index}) {}\t{}\t{}", self.name, self.size, self.digest)
    }

    /// Parses an entry line, returning its index and the entry.
    pub fn parse_line(line: &str) -> Result<(u64, Entry), ProtocolError> {
        let bad = || ProtocolError::malformed("list entry", line);
        let (index, rest) = line.split_once(") ").ok_or_else(bad)?;
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) || index.len() > 20 {
            return Err(bad());
        }
        let index: u64 = index.parse().map_err(|_| bad())?;
        let mut fields = rest.rsplitn(3, '\t');
        let (Some(digest), Some(size), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        if size.is_empty() || size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let size: u64 = size.parse().map_err(|_| bad())?;
        let digest = Digest::from_hex(digest).ok_or_else(bad)?;
        validate_name(name)?;
        Ok((
            index,
            Entry {
                name: name.to_owned(),
                size,
                digest,
            },
        ))
    }
}

/// A whole list, in index order, with lookup by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

impl Listing {
    /// Builds a listing, sorted by name; later duplicates of a name are dropped.
    pub fn new(mut entries: Vec<Entry>) -> Listing {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        let by_name = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Listing { entries, by_name }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry lines, each ending in `\n`: the content of `text.txt`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (i, entry) in self.entries.iter().enumerate() {
            out.push_str(&entry.to_line(i + 1));
            out.push('\n');
        }
        out
    }

    /// Writes the whole `LIST` reply: header, entry lines, `END`.
    pub fn write_reply<W: Write + ?Sized>(&self, writer: &mut W) -> Result<(), ProtocolError> {
        let mut text = Reply::List {
            count: self.entries.len() as u64,
        }
        .to_string();
        text.push('\n');
        text.push_str(&self.to_text());
        text.push_str("END\n");
        writer.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Reads the body of a `LIST <count>` reply (entry lines and `END`).
    pub fn read_body<R: BufRead + ?Sized>(
        reader: &mut R,
        count: u64,
    ) -> Result<Listing, ProtocolError> {
        if count > MAX_LIST_ENTRIES {
            return Err(ProtocolError::Unexpected(format!(
                "list of {count} entries (at most {MAX_LIST_ENTRIES} accepted)"
            )));
        }
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for expected in 1..=count {
            let line = expect_line(reader, MAX_REPLY_LINE)?;
            bytes += line.len() + 1;
            if bytes > MAX_LIST_BYTES {
                return Err(ProtocolError::Unexpected(format!(
                    "list longer than {MAX_LIST_BYTES} bytes"
                )));
            }
            let (index, entry) = Entry::parse_line(&line)?;
            if index != expected {
                return Err(ProtocolError::malformed(
                    "list entry (index out of order)",
                    &line,
                ));
            }
            entries.push(entry);
        }
        let end = expect_line(reader, MAX_REPLY_LINE)?;
        if Reply::parse(&end)? != Reply::End {
            return Err(ProtocolError::Unexpected(end));
        }
        Ok(Listing::new(entries))
    }

    /// Writes this listing's `text.txt` form through `writer`.
    pub fn write_text<W: Write + ?Sized>(&self, writer: &mut W) -> Result<(), ProtocolError> {
        writer.write_all(self.to_text().as_bytes())?;
        Ok(())
    }
}

/// Writes the `PIECES` reply for a file: header, one digest per line, `END`.
pub fn write_pieces<W: Write + ?Sized>(
    writer: &mut W,
    size: u64,
    pieces: &[Digest],
) -> Result<(), ProtocolError> {
    let header = Reply::Pieces {
        size,
        piece_size: crate::PIECE_SIZE,
        count: pieces.len() as u64,
    };
    let mut text = String::with_capacity(66 * (pieces.len() + 2));
    text.push_str(&header.to_string());
    text.push('\n');
    for digest in pieces {
        text.push_str(&digest.to_string());
        text.push('\n');
    }
    text.push_str("END\n");
    writer.write_all(text.as_bytes())?;
    Ok(())
}

/// Reads the body of a `PIECES` reply: `count` digest lines and `END`.
pub fn read_pieces<R: BufRead + ?Sized>(
    reader: &mut R,
    count: u64,
) -> Result<Vec<Digest>, ProtocolError> {
    if count > crate::digest::piece_count(u64::MAX) {
        return Err(ProtocolError::Unexpected(format!("{count} pieces")));
    }
    let mut pieces = Vec::new();
    for _ in 0..count {
        let line = expect_line(reader, MAX_REPLY_LINE)?;
        pieces.push(
            Digest::from_hex(&line)
                .ok_or_else(|| ProtocolError::malformed("piece digest", &line))?,
        );
    }
    let end = expect_line(reader, MAX_REPLY_LINE)?;
    if Reply::parse(&end)? != Reply::End {
        return Err(ProtocolError::Unexpected(end));
    }
    Ok(pieces)
}

/// Writes a line; re-exported for callers that frame their own replies.
pub fn write_reply<W: Write + ?Sized>(writer: &mut W, reply: &Reply) -> Result<(), ProtocolError> {
    write_line(writer, &reply.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::expect_line;

    fn entry(name: &str, size: u64) -> Entry {
        Entry {
            name: name.into(),
            size,
            digest: Digest::of(name.as_bytes()),
        }
    }

    #[test]
    fn entry_lines_round_trip_with_awkward_names() {
        for name in [
            "a",
            "with  two spaces",
            "ünïcødé/文件 1).txt",
            "x\u{a0}y",
            "1) 2) 3",
        ] {
            let e = entry(name, 42);
            let line = e.to_line(7);
            assert!(line.starts_with(&format!("7) {name}\t")), "{line}");
            assert_eq!(Entry::parse_line(&line).unwrap(), (7, e));
        }
    }

    #[test]
    fn bad_entry_lines_are_refused() {
        let good = entry("a", 1).to_line(1);
        let digest = Digest::of(b"a").to_string();
        for line in [
            "".to_owned(),
            "1 a\t1\tdigest".to_owned(),
            format!("x) a\t1\t{digest}"),
            format!("1) a\t-1\t{digest}"),
            format!("1) a\t1\t{}", &digest[1..]),
            format!("1) ../a\t1\t{digest}"),
            format!("1) \t1\t{digest}"),
            format!("1) a 1 {digest}"),
            good.replace('\t', " "),
        ] {
            assert!(Entry::parse_line(&line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn listing_reply_round_trips() {
        let listing = Listing::new(vec![entry("b", 2), entry("a", 1), entry("dir/c d", 0)]);
        assert_eq!(listing.entries()[0].name, "a");
        let mut wire = Vec::new();
        listing.write_reply(&mut wire).unwrap();
        let mut r = &wire[..];
        let header = Reply::parse(&expect_line(&mut r, 100).unwrap()).unwrap();
        assert_eq!(header, Reply::List { count: 3 });
        let back = Listing::read_body(&mut r, 3).unwrap();
        assert_eq!(back, listing);
        assert_eq!(back.get("dir/c d").unwrap().size, 0);
        assert!(back.get("zzz").is_none());
    }

    #[test]
    fn listing_body_checks_order_count_and_end() {
        let listing = Listing::new(vec![entry("a", 1), entry("b", 2)]);
        let text = listing.to_text();
        let swapped: String = text.lines().rev().map(|l| format!("{l}\n")).collect();
        assert!(Listing::read_body(&mut format!("{swapped}END\n").as_bytes(), 2).is_err());
        assert!(
            Listing::read_body(&mut text.as_bytes(), 2).is_err(),
            "missing END"
        );
        assert!(Listing::read_body(&mut format!("{text}END\n").as_bytes(), 3).is_err());
        assert!(Listing::read_body(&mut &b""[..], MAX_LIST_ENTRIES + 1).is_err());
    }

    #[test]
    fn pieces_reply_round_trips() {
        let pieces = vec![Digest::of(b"1"), Digest::of(b"2")];
        let mut wire = Vec::new();
        write_pieces(&mut wire, 3 << 19, &pieces).unwrap();
        let mut r = &wire[..];
        let header = Reply::parse(&expect_line(&mut r, 100).unwrap()).unwrap();
        assert_eq!(
            header,
            Reply::Pieces {
                size: 3 << 19,
                piece_size: crate::PIECE_SIZE,
                count: 2
            }
        );
        assert_eq!(read_pieces(&mut r, 2).unwrap(), pieces);
    }
}
