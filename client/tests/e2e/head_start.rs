//! `--once`'s head start against the real server: the first name's
//! digests and first pieces are asked for while the list is on its way.
//! When the guess is right the download takes the answers over (nothing is
//! fetched twice); when it is wrong (the name is not listed, the file is
//! shorter than the pieces asked for) the answers are dropped and every
//! other name still arrives intact.

use crate::helpers::{assert_exit, Env};
use fastdl_testkit::{hash_file, write_file};

const MIB: usize = 1 << 20;

/// The text between `start` and `end` on the last log line holding `start`.
fn logged_between<'a>(log: &'a str, start: &str, end: &str) -> &'a str {
    log.lines()
        .rev()
        .find_map(|l| l.split(start).nth(1))
        .and_then(|rest| rest.split(end).next())
        .unwrap_or_else(|| panic!("no {start:?}...{end:?} in the log:\n{log}"))
}

/// The amount the log says a file's download fetched, e.g. "8.0 MiB".
fn fetched(log: &str, name: &str) -> String {
    logged_between(log, &format!("{name}: done, "), " fetched")
        .split(" verified, ")
        .nth(1)
        .unwrap_or_else(|| panic!("no fetched amount for {name}:\n{log}"))
        .to_owned()
}

#[test]
fn the_first_pieces_go_out_with_the_list_and_are_used() {
    let env = Env::new();
    let want = write_file(&env.res.join("big.bin"), 8 * MIB, 1);
    let server = env.server(&[]);
    env.write_input(&["big.bin"]);
    let output = env.once(&server.url(), &["-v"]);
    assert_exit(&output, 0, &env);
    assert_eq!(hash_file(&env.out_path("big.bin")), want);
    let log = env.log();
    // The list connection and the warmed ones (3 by default) take their
    // answers over. A warmed connection that is not ready in time is left
    // out (the workers connect on their own), so at least the list
    // connection and one warmed one must have been used.
    let taken: usize = logged_between(&log, "big.bin: head start taken over on ", " ")
        .parse()
        .unwrap_or_else(|e| panic!("connection count: {e}\n{log}"));
    assert!((2..=4).contains(&taken), "{log}");
    assert_eq!(fetched(&log, "big.bin"), "8.0 MiB", "nothing fetched twice");
}

#[test]
fn a_first_name_that_is_not_listed_costs_nothing_else() {
    let env = Env::new();
    let short = write_file(&env.res.join("short.bin"), 3 * MIB / 2, 2);
    let big = write_file(&env.res.join("big.bin"), 5 * MIB, 3);
    let server = env.server(&[]);
    env.write_input(&["absent.bin", "short.bin", "big.bin"]);
    let output = env.once(&server.url(), &["-v"]);
    assert_exit(&output, 1, &env);
    assert!(crate::helpers::stderr(&output).contains("absent.bin"));
    assert_eq!(hash_file(&env.out_path("short.bin")), short);
    assert_eq!(hash_file(&env.out_path("big.bin")), big);
    let log = env.log();
    assert!(!log.contains("head start taken over"), "{log}");
    assert_eq!(fetched(&log, "big.bin"), "5.0 MiB");
}

#[test]
fn a_first_file_shorter_than_the_guess_arrives_intact() {
    let env = Env::new();
    // 1.5 MiB: piece 0 was guessed right; the guesses for pieces 1..3 (whole
    // MiBs) lie outside the file and are refused.
    let short = write_file(&env.res.join("short.bin"), 3 * MIB / 2, 4);
    let big = write_file(&env.res.join("big.bin"), 5 * MIB, 5);
    let server = env.server(&[]);
    env.write_input(&["short.bin", "big.bin"]);
    let output = env.once(&server.url(), &["-v"]);
    assert_exit(&output, 0, &env);
    assert_eq!(hash_file(&env.out_path("short.bin")), short);
    assert_eq!(hash_file(&env.out_path("big.bin")), big);
    let log = env.log();
    assert!(
        log.contains("short.bin: head start taken over on 1 connection(s)"),
        "{log}"
    );
    assert_eq!(fetched(&log, "short.bin"), "1.5 MiB");
    assert_eq!(fetched(&log, "big.bin"), "5.0 MiB");
}
