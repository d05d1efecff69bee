//! `validate_name`: whatever it accepts is a harmless relative path.
//!
//! Properties of every accepted name: not empty, at most 1024 bytes, no
//! component over 255 bytes; no leading `/`, no `\`, no control character
//! (NUL, CR, LF, tab, DEL, C1), no leading or trailing whitespace; no empty
//! component (`a//b`, trailing `/`), no `.` or `..` component (the text
//! `..` inside a component, as in `a..b`, is a legitimate name); as a
//! `Path` it is relative and made of normal components only, one per
//! `/`-separated part, so joined to a folder it stays inside it.
//!
//! And the parsers agree with it: `GET 0 1 <name>`, `PIECES <name>` and an
//! entry line carrying the name are accepted exactly when the name is, and
//! give back the same name.
#![no_main]

use std::path::{Component, Path};

use fastdl_protocol::name::{MAX_COMPONENT_LEN, MAX_NAME_LEN};
use fastdl_protocol::{validate_name, Digest, Entry, Request};
use libfuzzer_sys::fuzz_target;

fn check_accepted(name: &str) {
    assert!(!name.is_empty());
    assert!(name.len() <= MAX_NAME_LEN, "{} bytes", name.len());
    assert!(!name.starts_with('/'), "{name:?}");
    assert!(!name.ends_with('/'), "{name:?}");
    assert!(!name.contains('\\'), "{name:?}");
    assert!(!name.contains("//"), "{name:?}");
    assert!(!name.chars().any(char::is_control), "{name:?}");
    assert!(!name.bytes().any(|b| b < 0x20 || b == 0x7f), "{name:?}");
    assert_eq!(name.trim(), name, "{name:?}");
    assert!(!name.starts_with(char::is_whitespace) && !name.ends_with(char::is_whitespace));
    let parts: Vec<&str> = name.split('/').collect();
    for part in &parts {
        assert!(!part.is_empty(), "{name:?}");
        assert!(*part != "." && *part != "..", "{name:?}");
        assert!(part.len() <= MAX_COMPONENT_LEN, "{name:?}");
    }
    let path = Path::new(name);
    assert!(path.is_relative(), "{name:?}");
    let components: Vec<Component> = path.components().collect();
    assert_eq!(components.len(), parts.len(), "{name:?}: {components:?}");
    assert!(
        components.iter().all(|c| matches!(c, Component::Normal(_))),
        "{name:?}: {components:?}"
    );
    let root = Path::new("/srv/fastdl/resources");
    assert!(root.join(path).starts_with(root));
}

fn check_parsers(name: &str, valid: bool) {
    let get = Request::parse(&format!("GET 0 1 {name}"));
    let pieces = Request::parse(&format!("PIECES {name}"));
    let entry = Entry {
        name: name.to_owned(),
        size: 1,
        digest: Digest([7; 32]),
    };
    let line = Entry::parse_line(&entry.to_line(3));
    if valid {
        assert_eq!(
            get.ok(),
            Some(Request::Get {
                offset: 0,
                length: 1,
                name: name.to_owned()
            })
        );
        assert_eq!(
            pieces.ok(),
            Some(Request::Pieces {
                name: name.to_owned()
            })
        );
        assert_eq!(line.ok(), Some((3, entry)));
    } else {
        assert!(get.is_err(), "GET accepted {name:?}");
        assert!(pieces.is_err(), "PIECES accepted {name:?}");
        assert!(line.is_err(), "an entry line accepted {name:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let valid = validate_name(name).is_ok();
    if valid {
        check_accepted(name);
    }
    check_parsers(name, valid);
});
