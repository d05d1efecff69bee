//! The server's token file (`fastdl_server::net::auth::parse`): arbitrary
//! text, as an administrator may write it.
//!
//! Properties: no panic; every token is a valid access token (what `AUTH`
//! accepts on the wire), and a label never starts or ends with spaces;
//! writing the tokens and labels out and parsing again gives the same.

#![no_main]

use fastdl_protocol::message::is_access_token;
use fastdl_server::net::auth::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(tokens) = parse(text) else {
        return;
    };
    let mut written = String::new();
    for (token, label) in &tokens {
        assert!(is_access_token(token), "{token:?}");
        assert_eq!(label.trim(), label);
        written.push_str(&format!("{token} {label}\n"));
    }
    assert_eq!(parse(&written).expect("rewritten file parses"), tokens);
});
