//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the same checks the
//! fuzz targets run (`tests/fuzz_checks/mod.rs`), so `cargo test` on stable exercises every
//! input the fuzzers kept. Fails when a corpus directory is missing or empty.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seed_corpus` rewrites the hand-made seeds
//! (`seed-*` files); the other files come from `cargo fuzz` runs, minimised with `cargo fuzz cmin`.
//! The `finding_*` tests reproduce the fuzzers' findings (see `fuzz/README.md`), now fixed.

mod fuzz_checks;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fuzz_checks::{check_handshake, check_reply, known_counts};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Every file of one target's corpus, sorted by name; panics if there are none.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} unreadable: {e}", dir.display()));
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus directory {} is empty",
        dir.display()
    );
    files
}

/// Runs `check` on every corpus file of `target`, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let files = corpus(target);
    let started = Instant::now();
    for (path, bytes) in &files {
        let outcome = std::panic::catch_unwind(|| check(bytes));
        if let Err(panic) = outcome {
            eprintln!("{target}: {} fails its check", path.display());
            std::panic::resume_unwind(panic);
        }
    }
    eprintln!(
        "{target}: {} inputs replayed in {:?}; known findings met: {:?}",
        files.len(),
        started.elapsed(),
        known_counts()
    );
}

#[test]
fn reply_parser_corpus() {
    replay("reply_parser", check_reply);
}

#[test]
fn handshake_corpus() {
    replay("handshake", check_handshake);
}

#[test]
fn seeds_are_in_the_corpus() {
    // The real proxies' replies stay in the corpus even when a minimisation would drop them.
    for (name, bytes) in fuzz_checks::reply_seeds() {
        let path = corpus_dir("reply_parser").join(format!("seed-{name}"));
        assert_eq!(fs::read(&path).ok(), Some(bytes), "{}", path.display());
    }
    for (name, bytes) in fuzz_checks::handshake_seeds() {
        let path = corpus_dir("handshake").join(format!("seed-{name}"));
        assert_eq!(fs::read(&path).ok(), Some(bytes), "{}", path.display());
    }
}

#[test]
#[ignore = "writes the seed files; run by hand after changing the seeds"]
fn write_seed_corpus() {
    for (target, seeds) in [
        (
            "reply_parser",
            fuzz_checks::reply_seeds()
                .into_iter()
                .map(|(n, b)| (n.to_string(), b))
                .collect::<Vec<_>>(),
        ),
        ("handshake", fuzz_checks::handshake_seeds()),
    ] {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}

// The fuzzers' findings (fuzz/README.md), fixed: each test states the behaviour the library
// has now.

/// A Squid-style Digest 407 whose challenge value is `challenge`, kept alive with an empty
/// body, then the 200 for the retry; read in two pieces cut where the 407 ends.
fn digest_then_200(challenge: &str) -> fuzz_checks::Run {
    let first = format!(
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: {challenge}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let payload = [
        first.as_bytes(),
        b"HTTP/1.1 200 Connection established\r\n\r\nok",
    ]
    .concat();
    fuzz_checks::run_establish(
        fuzz_checks::ScriptedProxy::split(&payload, &[first.len()]),
        true,
    )
}

/// F1a: an obs-folded line inside the quoted nonce (RFC 9112 section 5.2: a client must read
/// each obs-fold as a space) makes `establish` fail with `InvalidInput { BuildConnect,
/// ForbiddenByte, "proxy authorization" }`: the proxy's reply is blamed on the caller's input
/// (exit code 2). Expected: the retry is sent with `nonce="a b"` and the tunnel opens (or, at
/// the least, an `Auth` error).
#[test]
fn finding_f1a_folded_digest_nonce_is_not_an_input_error() {
    let run = digest_then_200("Digest realm=\"r\", nonce=\"a\r\n b\", qop=\"auth\"");
    match &run.result {
        Ok(bytes) => assert_eq!(bytes, b"ok"),
        Err(e) => panic!("{e:?}"),
    }
    let written = String::from_utf8(run.proxy.written.clone()).unwrap();
    assert!(written.contains("nonce=\"a b\""), "{written}");
}

/// F1b: a Digest challenge whose nonce is too long to echo in the 4 KiB request buffer ends in
/// `InvalidInput { BuildConnect, RequestTooLarge }`, again blaming the caller. Expected: the
/// challenge is unusable, so the handshake ends in `Error::Auth` listing the schemes.
#[test]
fn finding_f1b_huge_digest_nonce_is_not_an_input_error() {
    let nonce = "n".repeat(4000);
    let run = digest_then_200(&format!("Digest realm=\"r\", nonce=\"{nonce}\""));
    match &run.result {
        Err(connect_tunnel::Error::Auth {
            status: 407,
            schemes,
            credentials_sent: true,
        }) => assert_eq!(schemes, &["Digest"]),
        other => panic!("{other:?}"),
    }
}

/// F1c: an obs-fold between the challenge's parameters hides the parameter after it (the name
/// keeps its CR LF), so a valid Digest challenge is not answered and the handshake ends in
/// `Error::Auth`. Expected: the retry, as for the unfolded challenge.
#[test]
fn finding_f1c_folded_digest_parameters_are_read() {
    let run = digest_then_200("Digest realm=\"r\",\r\n nonce=\"ab\"");
    match &run.result {
        Ok(bytes) => assert_eq!(bytes, b"ok"),
        Err(e) => panic!("{e:?}"),
    }
}

/// F2: `Content-Length: +5` is read as 5 bytes (`u64::from_str` takes a leading `+`); RFC 9110
/// section 8.6 allows digits only, and RFC 9112 section 6.3 makes an invalid length in a
/// response end the connection. Expected: `UntilClose`, so the connection is not reused.
#[test]
fn finding_f2_signed_content_length_is_invalid() {
    for value in ["+5", "+0", "5, +5"] {
        let head = format!("HTTP/1.1 407 x\r\nContent-Length: {value}\r\n\r\n");
        let mut headers =
            [connect_tunnel::httparse::EMPTY_HEADER; connect_tunnel::MAX_REPLY_HEADERS];
        let reply = connect_tunnel::try_parse_reply(head.as_bytes(), &mut headers)
            .unwrap()
            .unwrap();
        assert_eq!(
            reply.body_length(),
            connect_tunnel::BodyLength::UntilClose,
            "Content-Length: {value}"
        );
    }
}
