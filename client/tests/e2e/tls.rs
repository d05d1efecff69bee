//! TLS and access control end to end (issue 17): what a relay on the path
//! sees, a changed server identity, tokens, plaintext and TLS never mixed,
//! and a corrupted record.

use std::fs;

use fastdl_testkit::{
    client, hash_file, run_with_deadline, write_file, FlipProxy, Server, TapProxy, DEADLINE,
};

use crate::helpers::{assert_exit, stderr, tree, Env};

const MIB: usize = 1 << 20;

/// The server's fingerprint, from the line it logs at start.
fn fingerprint_of(server: &Server) -> String {
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("server identity sha256//"))
        .unwrap_or_else(|| panic!("no identity line in the log:\n{log}"));
    line.split_whitespace()
        .find(|w| w.starts_with("sha256//"))
        .unwrap()
        .to_owned()
}

#[test]
fn a_relay_on_the_path_sees_neither_the_bytes_nor_the_name() {
    let env = Env::new();
    let name = "plans for the secret ünïcødé project.bin";
    let digest = write_file(&env.res.join(name), 3 * MIB + 17, 41);
    let content = fs::read(env.res.join(name)).unwrap();
    let server = env.server(&[]);
    let tap = TapProxy::start(server.addr);
    env.write_input(&[name]);
    let output = env.once(&tap.addr.to_string(), &[]);
    assert_exit(&output, 0, &env);
    assert_eq!(hash_file(&env.out_path(name)), digest);
    assert!(
        tap.seen.lock().unwrap().len() > 3 * MIB,
        "the relay carried the file"
    );
    assert!(!tap.saw(name.as_bytes()), "the name crossed in clear");
    assert!(!tap.saw(b"secret"), "part of the name crossed in clear");
    for at in [0, MIB, 2 * MIB + 5, 3 * MIB - 32] {
        assert!(
            !tap.saw(&content[at..at + 32]),
            "file bytes at {at} crossed in clear"
        );
    }
    assert!(!tap.saw(b"FASTDL"), "even the protocol is not visible");

    // The same relay in front of a --plaintext pair sees everything: the
    // check above can fail.
    let plain = Server::start(&env.res, &env.tmp.path().join("plain"), &["--plaintext"]);
    let tap = TapProxy::start(plain.addr);
    fs::remove_file(env.out_path(name)).unwrap();
    let output = env.once(&tap.addr.to_string(), &["--plaintext"]);
    assert_exit(&output, 0, &env);
    assert!(tap.saw(name.as_bytes()) && tap.saw(&content[MIB..MIB + 32]));
}

#[test]
fn a_new_identity_on_a_pinned_address_is_refused() {
    let env = Env::new();
    write_file(&env.res.join("a.bin"), 1000, 42);
    write_file(&env.res.join("b.bin"), 2000, 43);
    let mut first = env.server(&[]);
    let port = first.addr.port();
    let pinned = fingerprint_of(&first);
    env.write_input(&["a.bin"]);
    assert_exit(&env.once(&first.url(), &[]), 0, &env);
    let known = fs::read_to_string(env.work.join("known_servers")).unwrap();
    assert_eq!(
        known,
        format!("{} {pinned}\n", first.url()),
        "pinned on first contact"
    );

    // Another server (another identity) on the same address.
    first.kill();
    let impostor = Server::start_on(&env.res, &env.tmp.path().join("other"), port, &[]);
    let seen = fingerprint_of(&impostor);
    assert_ne!(seen, pinned);
    env.write_input(&["b.bin"]);
    let output = env.once(&impostor.url(), &[]);
    assert_exit(&output, 1, &env);
    let err = stderr(&output);
    for part in [impostor.url().as_str(), &pinned, &seen, "known_servers"] {
        assert!(
            err.contains(part),
            "the refusal should name {part:?}:\n{err}"
        );
    }
    assert_eq!(tree(&env.out), ["a.bin"], "nothing more landed");
    assert_eq!(
        fs::read_to_string(env.work.join("known_servers")).unwrap(),
        known,
        "the pin is not replaced"
    );

    // Accepting the new identity on purpose, as the message says.
    fs::write(
        env.work.join("known_servers"),
        format!("{} {seen}\n", impostor.url()),
    )
    .unwrap();
    assert_exit(&env.once(&impostor.url(), &[]), 0, &env);
}

#[test]
fn tokens_keep_out_whoever_has_none_or_a_wrong_one() {
    let env = Env::new();
    let digest = write_file(&env.res.join("f.bin"), 2 * MIB, 44);
    let tokens = env.tmp.path().join("tokens");
    fs::write(
        &tokens,
        "# who may\ncorrect-horse-battery-staple-42 alice\n",
    )
    .unwrap();
    let server = env.server(&["--token-file", tokens.to_str().unwrap()]);
    env.write_input(&["f.bin"]);

    let none = env.once(&server.url(), &[]);
    assert_exit(&none, 1, &env);
    assert!(stderr(&none).contains("token"), "{}", stderr(&none));
    assert!(!stderr(&none).contains("f.bin  "), "the list was shown");

    let wrong = env.once(&server.url(), &["--token", "wrong-horse-battery-staple-42"]);
    assert_exit(&wrong, 1, &env);
    assert!(
        stderr(&wrong).contains("token not accepted"),
        "{}",
        stderr(&wrong)
    );
    assert!(tree(&env.out).is_empty(), "{:?}", tree(&env.out));

    let right = run_with_deadline(
        client(&server.url(), &env.work)
            .arg("--once")
            .env("FASTDL_TOKEN", "correct-horse-battery-staple-42"),
        DEADLINE,
    );
    assert_exit(&right, 0, &env);
    assert_eq!(hash_file(&env.out_path("f.bin")), digest);
    assert!(server.log_text().contains("token accepted (alice)"));
    assert!(
        !server.log_text().contains("correct-horse") && !env.log().contains("correct-horse"),
        "a token in a log"
    );
}

#[test]
fn tls_and_plaintext_never_mix() {
    let env = Env::new();
    let digest = write_file(&env.res.join("f.bin"), 300_000, 45);
    env.write_input(&["f.bin"]);

    let plain = Server::start(&env.res, &env.tmp.path().join("plain"), &["--plaintext"]);
    let output = env.once(&plain.url(), &["--retries", "1"]);
    assert_exit(&output, 1, &env);
    assert!(
        stderr(&output).contains("PLAINTEXT_ONLY") && stderr(&output).contains("--plaintext"),
        "{}",
        stderr(&output)
    );
    let tls = env.server(&[]);
    let output = env.once(&tls.url(), &["--plaintext", "--retries", "1"]);
    assert_exit(&output, 1, &env);
    assert!(
        stderr(&output).contains("TLS_REQUIRED"),
        "{}",
        stderr(&output)
    );
    assert!(tree(&env.out).is_empty());

    let output = env.once(&plain.url(), &["--plaintext"]);
    assert_exit(&output, 0, &env);
    assert_eq!(hash_file(&env.out_path("f.bin")), digest);
}

#[test]
fn a_flipped_byte_of_ciphertext_is_a_clean_retry() {
    let env = Env::new();
    let digest = write_file(&env.res.join("f.bin"), 6 * MIB, 46);
    let server = env.server(&[]);
    // Well inside the data of some connection.
    let proxy = FlipProxy::start(server.addr, (3 * MIB / 2) as u64);
    env.write_input(&["f.bin"]);
    let output = env.once(&proxy.addr.to_string(), &[]);
    assert_exit(&output, 0, &env);
    assert!(proxy.flipped.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(hash_file(&env.out_path("f.bin")), digest);
    assert_eq!(tree(&env.out), ["f.bin"]);
}
