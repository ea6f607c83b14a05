//! `try_parse_reply` on arbitrary bytes, then `auth_schemes`, `body_length` and `keeps_alive`
//! on what parsed. The checks live in `tests/fuzz_checks/mod.rs`, shared with the corpus replay
//! that `cargo test` runs (`tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::check_reply(data);
});
