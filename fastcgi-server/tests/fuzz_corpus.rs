//! Replays the corpus kept for each fuzz target (`tests/corpus/<target>/`, minimised by
//! `scripts/fuzz --update-corpus`) through the very functions the cargo-fuzz targets call, so a
//! decoder regression on any of those inputs fails a plain stable `cargo test`, fuzzer or not.
#![allow(clippy::unwrap_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

#[path = "../fuzz/harness.rs"]
mod harness;

/// Fewer inputs than this means the corpus went missing, not that it is small.
const MIN_INPUTS: usize = 10;

/// Every input of one target's corpus through `run`; all panics are collected, then reported
/// together with the files that caused them.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    assert!(inputs.len() >= MIN_INPUTS, "{}: {} inputs, expected at least {MIN_INPUTS}", dir.display(), inputs.len());
    let panicked: Vec<String> = inputs
        .iter()
        .filter_map(|path| {
            let data = std::fs::read(path).unwrap();
            let payload = catch_unwind(AssertUnwindSafe(|| run(&data))).err()?;
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Some(format!("{}: {message}", path.display()))
        })
        .collect();
    assert!(
        panicked.is_empty(),
        "{} of {} `{target}` corpus inputs panicked (reproduce one under the fuzzer with \
         `cd fastcgi-server && cargo fuzz run -s none {target} FILE`):\n{}",
        panicked.len(),
        inputs.len(),
        panicked.join("\n")
    );
}

#[test]
fn server_corpus_replays_without_panic() {
    replay("server", harness::server);
}

#[test]
fn client_corpus_replays_without_panic() {
    replay("client", harness::client);
}

#[test]
fn scgi_corpus_replays_without_panic() {
    replay("scgi", harness::scgi);
}

#[test]
fn cgi_corpus_replays_without_panic() {
    replay("cgi", harness::cgi);
}

#[test]
fn http_corpus_replays_without_panic() {
    replay("http", harness::http);
}
