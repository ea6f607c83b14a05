//! Split replies: the proxy's reply (head with headers, then stream bytes) cut at EVERY byte
//! offset k: the proxy writes `bytes[..k]`, flushes (TCP_NODELAY is on), pauses, then writes the
//! rest. The outcome and the bytes the client reads must be the same for every k. Also the whole
//! reply one byte per write.

mod scripted;

use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use connect_tunnel::Error;
use scripted::{bound_reads, read_head, read_until_eof, serve, target, write_in_pieces};

/// Pause between the pieces: long enough for the client to read the first piece on its own.
const PAUSE: Duration = Duration::from_millis(4);

/// What the client saw: the tunnel's bytes until EOF, or the error's description.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Opened(Vec<u8>),
    Failed(String),
}

/// Runs one connection whose reply is written in pieces cut at `cuts`, and reports the outcome.
fn run(reply: &'static [u8], cuts: Vec<usize>, pause: Duration) -> Outcome {
    let proxy = serve(move |mut s: TcpStream| {
        read_head(&mut s);
        // A client that saw a complete refusal may be gone before the last piece.
        let _ = write_in_pieces(&mut s, reply, &cuts, pause);
        let _ = s.shutdown(Shutdown::Write);
        scripted::drain_until_closed(&mut s);
    });
    let outcome = match proxy.connector().connect(&target()) {
        Ok(mut tunnel) => {
            bound_reads(tunnel.get_ref());
            let (bytes, err) = read_until_eof(&mut tunnel, 1 << 20);
            assert!(err.is_none(), "read error {err:?}");
            tunnel.close().unwrap();
            Outcome::Opened(bytes)
        }
        Err(e) => Outcome::Failed(describe(&e)),
    };
    proxy.finish();
    outcome
}

fn describe(e: &Error) -> String {
    format!("{e:?} exit {}", e.exit_code())
}

/// Cuts `reply` at every offset 0..=len and checks each outcome equals `expected`.
fn every_offset(reply: &'static [u8], expected: Outcome) {
    for k in 0..=reply.len() {
        let got = run(reply, vec![k], PAUSE);
        assert_eq!(
            got,
            expected,
            "reply cut at {k}: {:?} | {:?}",
            String::from_utf8_lossy(&reply[..k]),
            String::from_utf8_lossy(&reply[k..])
        );
    }
}

fn opened(stream: &[u8]) -> Outcome {
    Outcome::Opened(stream.to_vec())
}

#[test]
fn success_with_headers_and_stream_bytes_at_every_offset() {
    const REPLY: &[u8] = b"HTTP/1.1 200 Connection established\r\n\
        Proxy-agent: scripted/1.0\r\nVia: 1.1 proxy (squid/6.6)\r\n\r\n\
        SSH-2.0-OpenSSH_9.6\r\n\x00\x01\r\n\r\n";
    every_offset(REPLY, opened(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\r\n\r\n"));
}

#[test]
fn interim_then_success_at_every_offset() {
    const REPLY: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.0 200 OK\r\nX-A: b\r\n\r\nDATA";
    every_offset(REPLY, opened(b"DATA"));
}

#[test]
fn bare_lf_with_folded_header_at_every_offset() {
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\nVia: 1.1 a,\n 1.1 b\n\nDATA\n\n";
    every_offset(REPLY, opened(b"DATA\n\n"));
}

#[test]
fn empty_reason_at_every_offset() {
    const REPLY: &[u8] = b"HTTP/1.1 200\r\n\r\nX";
    every_offset(REPLY, opened(b"X"));
}

#[test]
fn auth_challenge_at_every_offset() {
    const REPLY: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
        Proxy-Authenticate: Digest realm=\"a\", nonce=\"b\"\r\n\
        Proxy-Authenticate: Basic realm=\"c\"\r\n\r\n<html>";
    let expected = Outcome::Failed(
        "Auth { status: 407, schemes: [\"Digest\", \"Basic\"], credentials_sent: false } exit 4"
            .into(),
    );
    every_offset(REPLY, expected);
}

#[test]
fn refusal_at_every_offset() {
    const REPLY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad";
    let expected =
        Outcome::Failed("Refused { status: 502, reason: \"Bad Gateway\" } exit 5".into());
    every_offset(REPLY, expected);
}

#[test]
fn one_byte_per_write() {
    const REPLY: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 200 Connection established\r\nProxy-agent: scripted/1.0\r\n\r\n\
        SSH-2.0-OpenSSH_9.6\r\n";
    let cuts: Vec<usize> = (1..REPLY.len()).collect();
    assert_eq!(
        run(REPLY, cuts, Duration::from_millis(1)),
        opened(b"SSH-2.0-OpenSSH_9.6\r\n")
    );
}

#[test]
fn one_byte_per_write_refusal() {
    const REPLY: &[u8] = b"HTTP/1.0 403 Forbidden\r\nX-Why: policy\r\n\r\n";
    let cuts: Vec<usize> = (1..REPLY.len()).collect();
    assert_eq!(
        run(REPLY, cuts, Duration::from_millis(1)),
        Outcome::Failed("Refused { status: 403, reason: \"Forbidden\" } exit 5".into())
    );
}
