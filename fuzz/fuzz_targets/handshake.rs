//! `establish` with credentials (so Digest challenges are answered) over an in-memory proxy
//! that sends the fuzz input's payload in the reads the input chooses. Input layout and checks:
//! `tests/fuzz_checks/mod.rs` (`HandshakeInput`, `check_run`), shared with the corpus replay
//! that `cargo test` runs (`tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::check_handshake(data);
});
