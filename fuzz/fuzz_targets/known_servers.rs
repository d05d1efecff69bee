//! The client's known-servers file (`fastdl_tls::known::parse`): arbitrary
//! text, as a user or another program may leave it.
//!
//! Properties: no panic; every entry has an address with a port separator
//! and no space or control character, and a fingerprint whose written form
//! parses back to it; writing the entries out as the client does and
//! parsing again gives the same entries.

#![no_main]

use fastdl_tls::known::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(entries) = parse(text) else {
        return;
    };
    let mut written = String::new();
    for (_, addr, fp) in &entries {
        assert!(addr.contains(':'));
        assert!(!addr.chars().any(|c| c.is_whitespace() || c.is_control()));
        let shown = fp.to_string();
        assert_eq!(shown.parse::<fastdl_tls::Fingerprint>().as_ref(), Ok(fp));
        written.push_str(&format!("{addr} {fp}\n"));
    }
    let again = parse(&written).expect("what the client writes parses");
    let pairs = |e: &[(usize, String, fastdl_tls::Fingerprint)]| {
        e.iter().map(|(_, a, f)| (a.clone(), *f)).collect::<Vec<_>>()
    };
    assert_eq!(pairs(&again), pairs(&entries));
});
