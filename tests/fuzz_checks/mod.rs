//! Checks shared by the fuzz targets (`fuzz/fuzz_targets/*.rs` include this file with
//! `#[path = "../../tests/fuzz_checks/mod.rs"]`), the corpus replay (`tests/fuzz_corpus.rs`) and
//! the split property test (`tests/split_property.rs`).
//!
//! Every check panics on a violated invariant, which is what libFuzzer reports as a crash and
//! what fails a test. The findings of the first fuzzing runs (see `fuzz/README.md`, "Findings")
//! are fixed; their checks now fail like any other. Setting `CONNECT_TUNNEL_FUZZ_LENIENT` makes
//! them counted instead, should one come back and a long run need to keep looking past it.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use connect_tunnel::httparse;
use connect_tunnel::{
    establish, try_parse_reply, BodyLength, ConnectHandshake, ConnectRequest, Credentials, Error,
    InvalidInput, Phase, Reply, ReplyProblem, Target, MAX_AUTH_ATTEMPTS, MAX_INTERIM_REPLIES,
    MAX_REPLY_HEADERS, REPLY_HEAD_CAPACITY,
};

/// The target every fuzzed handshake asks for.
pub const TARGET: &str = "fuzz.example:443";
/// The credentials every fuzzed handshake sends (so a Digest challenge is answered).
pub const USER: &str = "user";
/// See [`USER`].
pub const PASSWORD: &str = "pass";
/// `base64("user:pass")`.
const BASIC: &str = "dXNlcjpwYXNz";
/// The client's limit on a refusal body it skips to reuse the connection (`tunnel.rs`).
const MAX_SKIPPED_BODY: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Known findings
// ---------------------------------------------------------------------------------------------

/// Behaviours found and reported, tolerated (and counted) unless strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// F1: a Digest challenge value holding CR/LF (obs-fold inside a quoted string) or too long
    /// for the request buffer makes `establish` fail with `Error::InvalidInput` in build
    /// CONNECT, blaming the caller's input for the proxy's reply.
    DigestValueBreaksRequest,
    /// F2: `Content-Length: +5` is taken as 5 (`u64::from_str` accepts a sign); RFC 9110
    /// allows digits only.
    ContentLengthSign,
}

static KNOWN_COUNTS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("CONNECT_TUNNEL_FUZZ_LENIENT").is_none())
}

fn known(finding: Known, detail: &str) {
    assert!(!strict(), "known finding {finding:?}: {detail}");
    KNOWN_COUNTS[finding as usize].fetch_add(1, Ordering::Relaxed);
}

/// How often each known finding was met since the start of the process.
pub fn known_counts() -> [(Known, usize); 2] {
    [
        (
            Known::DigestValueBreaksRequest,
            KNOWN_COUNTS[0].load(Ordering::Relaxed),
        ),
        (
            Known::ContentLengthSign,
            KNOWN_COUNTS[1].load(Ordering::Relaxed),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Target `reply_parser`
// ---------------------------------------------------------------------------------------------

/// Everything a parsed reply says, owned, for comparing two parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub head_len: usize,
    pub version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub schemes: Vec<String>,
    pub body: BodyLength,
    pub keeps_alive: bool,
}

/// Parses `input` with a full-size header array.
pub fn parse(input: &[u8]) -> Result<Option<Summary>, ReplyProblem> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_REPLY_HEADERS];
    Ok(try_parse_reply(input, &mut headers)?.map(|r| summarize(&r)))
}

fn summarize(r: &Reply<'_, '_>) -> Summary {
    Summary {
        head_len: r.head_len,
        version: r.version,
        status: r.status,
        reason: r.reason.to_owned(),
        headers: r
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
        schemes: r.auth_schemes().map(str::to_owned).collect(),
        body: r.body_length(),
        keeps_alive: r.keeps_alive(),
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// UTF-8 values of the headers named `name`, as `Reply::header_values` gives them.
fn values<'a>(s: &'a Summary, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    s.headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
}

/// The strict prefixes of a head of `head_len` bytes that are checked: all of them for a
/// short head, otherwise the first and last 64 and an even spread in between.
fn prefixes(head_len: usize) -> Vec<usize> {
    if head_len <= 256 {
        return (0..head_len).collect();
    }
    let mut cuts: Vec<usize> = (0..64).chain(head_len - 64..head_len).collect();
    cuts.extend((0..128).map(|i| 64 + i * (head_len - 128) / 128));
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// The `reply_parser` target: `try_parse_reply` on arbitrary bytes, then the reply's methods.
///
/// Invariants: no panic; `head_len <= input.len()`; the head ends with an empty line; parsing
/// the head alone gives the same reply; every strict prefix of the head is `Ok(None)`; an
/// error stays the same error with more bytes appended; `auth_schemes` yields tokens;
/// `body_length` and `keeps_alive` agree with the headers they read.
pub fn check_reply(input: &[u8]) {
    let parsed = parse(input);
    // The same bytes parse the same way twice.
    assert_eq!(parse(input), parsed, "parse is not deterministic");
    match parsed {
        Ok(None) => {}
        Err(problem) => {
            assert!(
                matches!(
                    problem,
                    ReplyProblem::NotHttp | ReplyProblem::TooManyHeaders
                ),
                "try_parse_reply returned {problem:?}, which is the caller's to decide"
            );
            // More bytes cannot repair a broken head.
            let mut longer = input.to_vec();
            longer.extend_from_slice(b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");
            assert_eq!(parse(&longer), Err(problem), "more bytes changed the error");
        }
        Ok(Some(reply)) => {
            let n = reply.head_len;
            assert!(n <= input.len(), "head_len {n} > input {}", input.len());
            assert!(n >= "HTTP/1.1 200\n\n".len(), "head_len {n} too short");
            let head = &input[..n];
            assert!(
                head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
                "head does not end with an empty line"
            );
            assert!(reply.version <= 1, "version {}", reply.version);
            assert!(reply.status <= 999, "status {}", reply.status);
            assert!(reply.headers.len() <= MAX_REPLY_HEADERS);
            // The head alone, and the head with anything after it, parse the same.
            assert_eq!(parse(head), Ok(Some(reply.clone())), "head alone differs");
            for cut in prefixes(n) {
                assert_eq!(
                    parse(&input[..cut]),
                    Ok(None),
                    "strict prefix of {cut} of {n} head bytes is not Ok(None)"
                );
            }
            check_reply_methods(&reply);
        }
    }
}

fn check_reply_methods(reply: &Summary) {
    for scheme in &reply.schemes {
        assert!(is_token(scheme), "scheme {scheme:?} is not a token");
    }
    let challenge_header = if reply.status == 401 {
        "WWW-Authenticate"
    } else {
        "Proxy-Authenticate"
    };
    let challenge_bytes: usize = values(reply, challenge_header).map(str::len).sum();
    assert!(
        reply.schemes.len() <= challenge_bytes,
        "more schemes than bytes"
    );

    let te = values(reply, "Transfer-Encoding").last();
    let lengths: Vec<&str> = values(reply, "Content-Length")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    match reply.body {
        BodyLength::Chunked => {
            let last = te.expect("chunked without Transfer-Encoding");
            let last = last.rsplit(',').next().unwrap().trim();
            assert!(last.eq_ignore_ascii_case("chunked"), "chunked from {te:?}");
        }
        BodyLength::Exactly(n) => {
            assert!(
                te.is_none(),
                "Content-Length used despite Transfer-Encoding"
            );
            assert!(!lengths.is_empty(), "Exactly({n}) without Content-Length");
            for v in &lengths {
                if !v.bytes().all(|b| b.is_ascii_digit()) {
                    known(
                        Known::ContentLengthSign,
                        &format!("Content-Length {v:?} taken as {n}"),
                    );
                }
                assert_eq!(v.trim_start_matches('+').parse::<u64>(), Ok(n));
            }
        }
        BodyLength::UntilClose => {
            let valid = !lengths.is_empty()
                && lengths
                    .iter()
                    .all(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                && lengths
                    .iter()
                    .all(|v| v.parse::<u64>().ok() == lengths[0].parse::<u64>().ok())
                && lengths[0].parse::<u64>().is_ok();
            assert!(
                te.is_some() || !valid,
                "valid Content-Length {lengths:?} ignored"
            );
        }
        other => panic!("unknown body length {other:?}"),
    }

    let connection_tokens: Vec<String> = ["Connection", "Proxy-Connection"]
        .iter()
        .flat_map(|name| values(reply, name).collect::<Vec<_>>())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let has = |t: &str| connection_tokens.iter().any(|x| x == t);
    let expected = if reply.version == 1 {
        !has("close")
    } else {
        has("keep-alive") && !has("close")
    };
    assert_eq!(reply.keeps_alive, expected, "keeps_alive");
}

// ---------------------------------------------------------------------------------------------
// Target `handshake`
// ---------------------------------------------------------------------------------------------

/// A fuzz input for the `handshake` target, decoded.
///
/// Layout: byte 0 holds flags: bits 0-2 the number of cut points `k`, bit 3 "every read after
/// a cut first fails with `Interrupted`", bit 4 "the stream ends with `ConnectionReset`
/// instead of EOF". Then `k` cut points, `u16` little-endian, each taken modulo
/// `payload.len() + 1`. The rest is what the proxy sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeInput {
    /// Offsets into `payload` where one read must end; sorted, unique.
    pub cuts: Vec<usize>,
    pub interrupt: bool,
    pub reset_at_end: bool,
    pub payload: Vec<u8>,
}

impl HandshakeInput {
    pub fn decode(data: &[u8]) -> HandshakeInput {
        let Some((&flags, rest)) = data.split_first() else {
            return HandshakeInput {
                cuts: Vec::new(),
                interrupt: false,
                reset_at_end: false,
                payload: Vec::new(),
            };
        };
        let k = usize::from(flags & 7).min(rest.len() / 2);
        let (raw, payload) = rest.split_at(2 * k);
        let mut cuts: Vec<usize> = raw
            .chunks_exact(2)
            .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (payload.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        HandshakeInput {
            cuts,
            interrupt: flags & 8 != 0,
            reset_at_end: flags & 16 != 0,
            payload: payload.to_vec(),
        }
    }

    /// The fuzz input that decodes to `self` (at most 7 cuts, each below 65536).
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.cuts.len() <= 7);
        let mut out = vec![
            self.cuts.len() as u8
                | if self.interrupt { 8 } else { 0 }
                | if self.reset_at_end { 16 } else { 0 },
        ];
        for &c in &self.cuts {
            out.extend_from_slice(&u16::try_from(c).unwrap().to_le_bytes());
        }
        out.extend_from_slice(&self.payload);
        out
    }
}

/// An in-memory proxy: serves `payload` in reads that never cross a cut point (nor go past
/// what the reader asks for), then EOF or a reset; records what the client writes and where
/// in the payload each read ended and each request was flushed.
#[derive(Debug)]
pub struct ScriptedProxy {
    payload: Vec<u8>,
    /// Ends of the pieces: the cuts, then `payload.len()`.
    ends: Vec<usize>,
    interrupt: bool,
    reset_at_end: bool,
    interrupt_pending: bool,
    /// Bytes of payload delivered so far.
    pub pos: usize,
    /// Payload offsets where a read ended.
    pub read_ends: Vec<usize>,
    /// Whether a read returned EOF (or the reset).
    pub ended: bool,
    /// Everything the client wrote.
    pub written: Vec<u8>,
    /// `pos` at each flush: where in the payload each request was sent.
    pub flushed_at: Vec<usize>,
}

impl ScriptedProxy {
    pub fn new(input: &HandshakeInput) -> ScriptedProxy {
        let mut ends: Vec<usize> = input.cuts.iter().copied().filter(|&c| c > 0).collect();
        ends.push(input.payload.len());
        ends.dedup();
        ScriptedProxy {
            payload: input.payload.clone(),
            ends,
            interrupt: input.interrupt,
            reset_at_end: input.reset_at_end,
            interrupt_pending: false,
            pos: 0,
            read_ends: Vec::new(),
            ended: false,
            written: Vec::new(),
            flushed_at: Vec::new(),
        }
    }

    /// A proxy that sends `payload` in pieces ending at `cuts`.
    pub fn split(payload: &[u8], cuts: &[usize]) -> ScriptedProxy {
        let mut cuts = cuts.to_vec();
        cuts.sort_unstable();
        cuts.dedup();
        ScriptedProxy::new(&HandshakeInput {
            cuts,
            interrupt: false,
            reset_at_end: false,
            payload: payload.to_vec(),
        })
    }
}

impl Read for ScriptedProxy {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.interrupt_pending {
            self.interrupt_pending = false;
            return Err(io::ErrorKind::Interrupted.into());
        }
        if self.pos == self.payload.len() {
            self.ended = true;
            return if self.reset_at_end {
                Err(io::ErrorKind::ConnectionReset.into())
            } else {
                Ok(0)
            };
        }
        let piece_end = *self.ends.iter().find(|&&e| e > self.pos).unwrap();
        let n = buf.len().min(piece_end - self.pos);
        buf[..n].copy_from_slice(&self.payload[self.pos..self.pos + n]);
        self.pos += n;
        self.read_ends.push(self.pos);
        if self.pos == piece_end && self.interrupt {
            self.interrupt_pending = true;
        }
        Ok(n)
    }
}

impl Write for ScriptedProxy {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushed_at.push(self.pos);
        Ok(())
    }
}

/// What one run of `establish` over a [`ScriptedProxy`] gave.
#[derive(Debug)]
pub struct Run {
    /// The tunnel's bytes until EOF (or the reset), or the handshake's error.
    pub result: Result<Vec<u8>, Error>,
    /// `Established::buffered` right after the handshake.
    pub buffered: Vec<u8>,
    /// Payload bytes read by the handshake itself.
    pub handshake_read: usize,
    /// The proxy after the run.
    pub proxy: ScriptedProxy,
}

/// Runs `establish` with a CONNECT to [`TARGET`], with or without credentials, over `proxy`,
/// and on success reads the tunnel to its end.
pub fn run_establish(mut proxy: ScriptedProxy, with_credentials: bool) -> Run {
    let target = Target::parse(TARGET).unwrap();
    let credentials = Credentials::new(USER, PASSWORD).unwrap();
    let mut request = ConnectRequest::new(&target);
    if with_credentials {
        request.credentials = Some(&credentials);
    }
    let mut handshake = ConnectHandshake::new(request);
    let (result, buffered, handshake_read) = match establish(&mut proxy, &mut handshake) {
        Err(e) => {
            let read = proxy.pos;
            (Err(e), Vec::new(), read)
        }
        Ok(mut open) => {
            let buffered = open.buffered().to_vec();
            let handshake_read = open.get_ref().pos;
            let mut bytes = Vec::new();
            let mut buf = [0u8; 700];
            loop {
                match open.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("tunnel read failed: {e}"),
                }
                assert!(bytes.len() <= 1 << 20, "endless tunnel");
            }
            (Ok(bytes), buffered, handshake_read)
        }
    };
    Run {
        result,
        buffered,
        handshake_read,
        proxy,
    }
}

/// How a run of reply heads from the start of some bytes ends, as the handshake reads them:
/// interim (1xx except 101) heads are skipped, at most `MAX_INTERIM_REPLIES`.
#[derive(Debug)]
pub enum Walk {
    /// The first non-interim head: where it starts, and the reply.
    Final { start: usize, reply: Summary },
    /// The bytes end inside a head.
    Partial,
    /// A head is broken.
    Problem(ReplyProblem),
}

/// Walks the reply heads at the start of `bytes`.
pub fn walk(bytes: &[u8]) -> Walk {
    let mut offset = 0;
    for _ in 0..=MAX_INTERIM_REPLIES {
        match parse(&bytes[offset..]) {
            Ok(None) => return Walk::Partial,
            Err(p) => return Walk::Problem(p),
            Ok(Some(r)) if (100..200).contains(&r.status) && r.status != 101 => {
                offset += r.head_len;
            }
            Ok(Some(reply)) => {
                return Walk::Final {
                    start: offset,
                    reply,
                }
            }
        }
    }
    Walk::Problem(ReplyProblem::TooManyInterim)
}

/// Length of the chunked body at the start of `b`, complete and well framed as the client
/// accepts it (`5\r\n`, `5;ext\r\n`, bare LF, trailers), or `None`. Written line by line,
/// independently of the client's state machine.
pub fn chunked_len(b: &[u8]) -> Option<usize> {
    let line_end = |from: usize| b[from..].iter().position(|&c| c == b'\n').map(|p| from + p);
    let mut i = 0;
    loop {
        let digits = b[i..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&b[i..i + digits]).ok()?, 16).ok()?;
        i += digits;
        match *b.get(i)? {
            b'\n' => i += 1,
            b';' | b' ' | b'\t' | b'\r' => i = line_end(i)? + 1,
            _ => return None,
        }
        if size == 0 {
            loop {
                match *b.get(i)? {
                    b'\n' => return Some(i + 1),
                    b'\r' => return (*b.get(i + 1)? == b'\n').then_some(i + 2),
                    _ => i = line_end(i)? + 1,
                }
            }
        }
        i = i.checked_add(usize::try_from(size).ok()?)?;
        if b.get(i) == Some(&b'\r') {
            i += 1;
        }
        if *b.get(i)? != b'\n' {
            return None;
        }
        i += 1;
    }
}

/// Where the body of a reply whose head ends at `head_end` ends, if the client can skip it to
/// reuse the connection: framing complete and at most `MAX_SKIPPED_BODY` bytes.
fn skippable_body_end(payload: &[u8], head_end: usize, body: BodyLength) -> Option<usize> {
    let end = match body {
        BodyLength::Exactly(n) => head_end.checked_add(usize::try_from(n).ok()?)?,
        BodyLength::Chunked => head_end + chunked_len(&payload[head_end..])?,
        _ => return None,
    };
    (end - head_end <= MAX_SKIPPED_BODY && end <= payload.len()).then_some(end)
}

fn offers_digest(reply: &Summary) -> bool {
    reply
        .schemes
        .iter()
        .any(|s| s.eq_ignore_ascii_case("Digest"))
}

/// Whether a challenge header of `reply` holds what F1 is about: CR or LF inside a value, or
/// values long enough to overflow the 4 KiB request buffer when echoed.
fn digest_values_break_request(reply: &Summary) -> bool {
    let name = if reply.status == 401 {
        "WWW-Authenticate"
    } else {
        "Proxy-Authenticate"
    };
    let values: Vec<&str> = values(reply, name).collect();
    values.iter().any(|v| v.contains(['\r', '\n']))
        || values.iter().map(|v| v.len()).sum::<usize>() > 3000
}

/// The `handshake` target: `establish` with credentials over a proxy that sends the decoded
/// payload in the decoded pieces, checked by [`check_run`].
pub fn check_handshake(data: &[u8]) {
    let input = HandshakeInput::decode(data);
    let run = run_establish(ScriptedProxy::new(&input), true);
    check_run(&input, &run);
}

/// Checks one run against an independent reading of the payload.
///
/// - at most `MAX_AUTH_ATTEMPTS` requests, each a well-formed CONNECT, the first with Basic,
///   the others with Digest; request `i + 1` was sent exactly when the body of the 407 that
///   answered request `i` had been read, and only when that 407 offered Digest and kept the
///   connection alive;
/// - on success, the final reply is 2xx, its head fits the reply buffer, and the tunnel yields
///   exactly the payload after it (the buffered part first);
/// - on failure, the error is the one the bytes call for: a refusal's status and reason, a
///   challenge's schemes, the reply problem, or the I/O condition the stream produced.
pub fn check_run(input: &HandshakeInput, run: &Run) {
    let payload = &input.payload;
    let proxy = &run.proxy;
    assert!(proxy.pos <= payload.len());

    // The requests.
    let written = String::from_utf8(proxy.written.clone()).expect("request is not UTF-8");
    let requests: Vec<&str> = written.split_inclusive("\r\n\r\n").collect();
    let sent = proxy.flushed_at.len();
    assert_eq!(
        requests.len(),
        sent,
        "requests written vs flushed: {written:?}"
    );
    assert!(
        (1..=MAX_AUTH_ATTEMPTS).contains(&sent),
        "{sent} requests sent"
    );
    for (i, request) in requests.iter().enumerate() {
        let start = format!("CONNECT {TARGET} HTTP/1.1\r\nHost: {TARGET}\r\n");
        assert!(request.starts_with(&start), "request {i}: {request:?}");
        assert!(request.ends_with("\r\n\r\n"));
        let auth = if i == 0 {
            format!("\r\nProxy-Authorization: Basic {BASIC}\r\n")
        } else {
            // `userhash=true` challenges get a hashed user name.
            "\r\nProxy-Authorization: Digest username=\"".to_string()
        };
        assert!(request.contains(&auth), "request {i}: {request:?}");
        assert_eq!(request.matches("\r\n\r\n").count(), 1);
    }

    // Every request but the last was answered by a 407 offering Digest, kept alive, whose body
    // ended exactly where the next request was sent.
    let mut seq = 0;
    for (i, &at) in proxy.flushed_at.iter().enumerate() {
        assert_eq!(
            at, seq,
            "request {i} sent after {at} reply bytes, expected {seq}"
        );
        if i + 1 == sent {
            break;
        }
        let Walk::Final { start, reply } = walk(&payload[seq..]) else {
            panic!("retry {i} without a complete final reply");
        };
        let head_end = seq + start + reply.head_len;
        assert!(
            head_end - seq <= REPLY_HEAD_CAPACITY,
            "reply head over capacity"
        );
        assert_eq!(reply.status, 407, "retry after {}", reply.status);
        assert!(
            offers_digest(&reply),
            "retry without Digest: {:?}",
            reply.schemes
        );
        assert!(reply.keeps_alive, "retry on a connection the proxy closes");
        let body_end = skippable_body_end(payload, head_end, reply.body)
            .unwrap_or_else(|| panic!("retry after a body that cannot be skipped"));
        seq = body_end;
    }
    let rest = &payload[seq..];

    match &run.result {
        Ok(tunnel) => {
            let Walk::Final { start, reply } = walk(rest) else {
                panic!("opened without a complete final reply");
            };
            assert!(
                (200..300).contains(&reply.status),
                "opened on {}",
                reply.status
            );
            let head_end = seq + start + reply.head_len;
            assert!(
                head_end - seq <= REPLY_HEAD_CAPACITY,
                "reply head over capacity"
            );
            assert_eq!(
                tunnel.as_slice(),
                &payload[head_end..],
                "tunnel bytes are not the payload after the reply head"
            );
            assert!(run.handshake_read >= head_end);
            assert_eq!(run.buffered, &payload[head_end..run.handshake_read]);
        }
        Err(error) => check_error(input, run, seq, sent, error),
    }
}

fn check_error(input: &HandshakeInput, run: &Run, seq: usize, sent: usize, error: &Error) {
    let payload = &input.payload;
    let rest = &payload[seq..];
    let read_since_request = run.handshake_read - seq;
    match error {
        Error::Reply {
            problem: ReplyProblem::ClosedEarly,
        } => {
            assert!(run.proxy.ended && run.handshake_read == payload.len());
            assert!(!input.reset_at_end, "a reset reported as a clean close");
            assert!(matches!(walk(rest), Walk::Partial), "{:?}", walk(rest));
            assert!(rest.len() < REPLY_HEAD_CAPACITY);
        }
        Error::Reply {
            problem: ReplyProblem::HeadTooLarge,
        } => {
            assert_eq!(read_since_request, REPLY_HEAD_CAPACITY);
            let head = &rest[..REPLY_HEAD_CAPACITY];
            assert!(matches!(walk(head), Walk::Partial), "{:?}", walk(head));
        }
        Error::Reply { problem } => match walk(rest) {
            Walk::Problem(p) => assert_eq!(p, *problem),
            other => panic!("{problem:?} for {other:?}"),
        },
        Error::Refused { status, reason } => {
            let Walk::Final { reply, .. } = walk(rest) else {
                panic!("refused without a final reply");
            };
            assert_eq!(reply.status, *status);
            assert!(!(200..300).contains(status), "{status} refused");
            let challenged = reply.status == 407
                || (reply.status == 401 && values(&reply, "WWW-Authenticate").next().is_some());
            assert!(!challenged, "challenge {status} taken as a refusal");
            let expected: String = reply.reason.chars().take(128).collect();
            assert_eq!(reason, &expected);
        }
        Error::Auth {
            status,
            schemes,
            credentials_sent,
        } => {
            let Walk::Final { reply, .. } = walk(rest) else {
                panic!("auth error without a final reply");
            };
            assert!(*credentials_sent);
            assert_eq!(reply.status, *status);
            assert!(*status == 407 || *status == 401, "auth error on {status}");
            let expected: Vec<String> = reply
                .schemes
                .iter()
                .take(MAX_REPLY_HEADERS)
                .cloned()
                .collect();
            assert_eq!(schemes, &expected);
        }
        Error::Io {
            phase: Phase::AwaitReply,
            source,
        } if source.kind() == io::ErrorKind::ConnectionAborted => {
            // A retry was due, but the connection could not carry it.
            let Walk::Final { start, reply } = walk(rest) else {
                panic!("retry without a final reply");
            };
            assert_eq!(reply.status, 407);
            assert!(offers_digest(&reply));
            assert!(sent < MAX_AUTH_ATTEMPTS);
            let head_end = seq + start + reply.head_len;
            let reusable = reply.keeps_alive
                && skippable_body_end(payload, head_end, reply.body)
                    .is_some_and(|end| run.proxy.read_ends.contains(&end));
            assert!(!reusable, "a reusable connection was given up");
        }
        Error::Io {
            phase: Phase::AwaitReply,
            source,
        } if source.kind() == io::ErrorKind::ConnectionReset => {
            assert!(input.reset_at_end && run.proxy.ended);
        }
        Error::InvalidInput {
            phase: Phase::BuildConnect,
            kind: InvalidInput::ForbiddenByte | InvalidInput::RequestTooLarge,
            ..
        } if sent >= 1 => {
            // The request after a Digest challenge could not be built.
            let Walk::Final { reply, .. } = walk(rest) else {
                panic!("{error:?} without a final reply");
            };
            assert_eq!(reply.status, 407);
            assert!(
                digest_values_break_request(&reply),
                "{error:?} for an ordinary challenge {:?}",
                values(&reply, "Proxy-Authenticate").collect::<Vec<_>>()
            );
            known(Known::DigestValueBreaksRequest, &format!("{error:?}"));
        }
        other => panic!("unexpected error {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

/// A Squid-5.7-like error page of about 3 KB.
fn squid_error_page() -> String {
    let mut page = String::from(
        "<!DOCTYPE html PUBLIC \"-//W3C//DTD HTML 4.01//EN\" \"http://www.w3.org/TR/html4/strict.dtd\">\n\
         <html><head>\n<meta type=\"copyright\" content=\"Copyright (C) 1996-2023 The Squid Software Foundation and contributors\">\n\
         <meta http-equiv=\"Content-Type\" CONTENT=\"text/html; charset=utf-8\">\n\
         <title>ERROR: Cache Access Denied</title>\n<style type=\"text/css\"><!--\n",
    );
    for rule in [
        "body\n:lang(fa) { direction: rtl; font-size: 100%; font-family: Tahoma, Roya, sans-serif; float: right; }",
        ":lang(he) { direction: rtl; }",
        "#content { padding: 1em 0.5em 0 0.5em; }",
        "body { background-color: #FFFFFF; color: #000000; font-family: verdana, sans-serif; }",
        "p { margin: 0.5em 0 0.5em 0; }",
        "address { font-style: normal; font-size: x-small; padding: 0.5em 0 0.5em 0; }",
        "h1 { font-weight: bold; font-size: 1.5em; color: #990000; }",
        "#titles h1, #titles h2 { color: #000000; }",
        "#footer { color: #990000; font-size: x-small; border-top: 1px solid #990000; }",
        "pre { font-family: sans-serif; }",
        "#dirmsg { font-family: courier, monospace; color: black; font-size: 10pt; }",
        "#dirlisting { margin-left: 2%; margin-right: 2%; }",
        "#dirlisting tr.entry td.icon,td.filename,td.size,td.date { border-bottom: groove; }",
        "#dirlisting td.size { width: 50px; text-align: right; padding-right: 5px; }",
        "#data { padding: 0.5em 0 0.5em 0; border: 1px solid #990000; }",
        "#sysmsg { font-family: sans-serif; }",
    ] {
        page.push_str(rule);
        page.push('\n');
    }
    page.push_str(
        "--></style>\n</head><body id=ERR_CACHE_ACCESS_DENIED>\n<div id=\"titles\">\n\
         <h1>ERROR</h1>\n<h2>Cache Access Denied.</h2>\n</div>\n<hr>\n\n<div id=\"content\">\n\
         <p>The following error was encountered while trying to retrieve the URL: \
         <a href=\"media.example.com:443\">media.example.com:443</a></p>\n\n\
         <blockquote id=\"error\">\n<p><b>Cache Access Denied.</b></p>\n</blockquote>\n\n\
         <p>Sorry, you are not currently allowed to request media.example.com:443 from this cache \
         until you have authenticated yourself.</p>\n\n\
         <p>Please contact the <a href=\"mailto:webmaster?subject=CacheErrorInfo%20-%20ERR_CACHE_ACCESS_DENIED\
         &amp;body=CacheHost%3A%20proxy%0D%0AErrPage%3A%20ERR_CACHE_ACCESS_DENIED%0D%0AErr%3A%20%5Bnone%5D%0D%0A\
         TimeStamp%3A%20Wed,%2003%20Dec%202025%2016%3A02%3A11%20GMT%0D%0A%0D%0AClientIP%3A%20127.0.0.1%0D%0A%0D%0A\
         HTTP%20Request%3A%0D%0ACONNECT%20%20HTTP%2F1.1%0AHost%3A%20media.example.com%3A443%0D%0A%0D%0A%0D%0A\">\
         cache administrator</a> if you have difficulties authenticating yourself.</p>\n\n<br>\n</div>\n\n\
         <script language=\"javascript\">\nif ('[unknown method]' != '[unknown method]') document.getElementById('missing-method').style.display = 'block';\n\
         </script>\n\n<hr>\n<div id=\"footer\">\n\
         <p>Generated Wed, 03 Dec 2025 16:02:11 GMT by proxy (squid/5.7)</p>\n\
         <!-- ERR_CACHE_ACCESS_DENIED -->\n</div>\n</body></html>\n",
    );
    while page.len() < 3000 {
        page.push_str("<!-- padding to the size of a real Squid error page -->\n");
    }
    page
}

fn with_body(head: &str, body: &str) -> Vec<u8> {
    let head = head.replace("{len}", &body.len().to_string());
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

const SQUID_HEAD: &str = "Server: squid/5.7\r\nMime-Version: 1.0\r\n\
    Date: Wed, 03 Dec 2025 16:02:11 GMT\r\nContent-Type: text/html;charset=utf-8\r\n\
    Content-Length: {len}\r\n";
const SQUID_TAIL: &str = "Vary: Accept-Language\r\nContent-Language: en\r\n\
    X-Cache: MISS from proxy\r\nX-Cache-Lookup: NONE from proxy:3128\r\n\
    Via: 1.1 proxy (squid/5.7)\r\nConnection: keep-alive\r\n\r\n";

/// Replies as real proxies send them (shapes from `/work/shared/FACTS.md`) and the odd shapes
/// the parser must take, each with a name. Some carry stream bytes after a 200.
pub fn reply_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let page = squid_error_page();
    let squid = |status: &str, extra: &str| {
        with_body(
            &format!(
                "HTTP/1.1 {status}\r\n{SQUID_HEAD}X-Squid-Error: ERR 0\r\n{extra}{SQUID_TAIL}"
            ),
            &page,
        )
    };
    let apache_body = "<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n\
        <title>407 Proxy Authentication Required</title>\n</head><body>\n\
        <h1>Proxy Authentication Required</h1>\n<p>This server could not verify that you\n\
        are authorized to access the document\nrequested.  Either you supplied the wrong\n\
        credentials (e.g., bad password), or your\nbrowser doesn't understand how to supply\n\
        the credentials required.</p>\n</body></html>\n";
    let tinyproxy_body = |code: &str, title: &str| {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.1//EN\" \
             \"http://www.w3.org/TR/xhtml11/DTD/xhtml11.dtd\">\n\n<html>\n\n<head><title>{code} {title}</title></head>\n\n\
             <body>\n\n<h1>{title}</h1>\n\n<p>This proxy requires authentication.</p>\n\n<hr />\n\n\
             <p><em>Generated by <a href=\"https://tinyproxy.github.io/\">tinyproxy</a> version 1.11.1.</em></p>\n\n\
             </body>\n\n</html>\n"
        )
    };
    let digest = "Proxy-Authenticate: Digest realm=\"Squid proxy-caching web server\", \
        nonce=\"cH4FaQAAAABQx+6RoVUAAJ4xPWkAAAAA\", qop=\"auth\", stale=false\r\n\
        Proxy-Authenticate: Basic realm=\"Squid proxy-caching web server\"\r\n";
    vec![
        ("squid-200", b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec()),
        (
            "squid-200-ssh-banner",
            b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
                .to_vec(),
        ),
        (
            "apache-200",
            b"HTTP/1.0 200 Connection Established\r\nProxy-agent: Apache/2.4.62 (Debian)\r\n\r\n"
                .to_vec(),
        ),
        (
            "tinyproxy-200-rtsp",
            b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\nRTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n"
                .to_vec(),
        ),
        (
            "squid-407-basic",
            squid(
                "407 Proxy Authentication Required",
                "Proxy-Authenticate: Basic realm=\"Squid proxy-caching web server\"\r\n",
            ),
        ),
        ("squid-407-digest-basic", squid("407 Proxy Authentication Required", digest)),
        ("squid-403", squid("403 Forbidden", "")),
        ("squid-503", {
            let mut r = squid("503 Service Unavailable", "");
            let at = r.windows(22).position(|w| w == b"Connection: keep-alive").unwrap();
            r.splice(at..at + 22, b"Connection: close".iter().copied());
            r
        }),
        ("squid-500", squid("500 Internal Server Error", "")),
        (
            "apache-407",
            with_body(
                "HTTP/1.1 407 Proxy Authentication Required\r\nDate: Wed, 03 Dec 2025 16:02:11 GMT\r\n\
                 Server: Apache/2.4.62 (Debian)\r\nProxy-Authenticate: Basic realm=\"proxy\"\r\n\
                 Content-Length: {len}\r\nKeep-Alive: timeout=5, max=100\r\nConnection: Keep-Alive\r\n\
                 Content-Type: text/html; charset=iso-8859-1\r\n\r\n",
                apache_body,
            ),
        ),
        (
            "apache-502",
            with_body(
                "HTTP/1.1 502 Proxy Error\r\nDate: Wed, 03 Dec 2025 16:02:11 GMT\r\n\
                 Server: Apache/2.4.62 (Debian)\r\nContent-Length: {len}\r\n\
                 Keep-Alive: timeout=5, max=100\r\nConnection: Keep-Alive\r\n\
                 Content-Type: text/html; charset=iso-8859-1\r\n\r\n",
                "<html><body><h1>Proxy Error</h1>DNS lookup failure for: nowhere.invalid</body></html>\n",
            ),
        ),
        (
            "tinyproxy-407-close",
            with_body(
                "HTTP/1.0 407 Proxy Authentication Required\r\nServer: tinyproxy/1.11.1\r\n\
                 Content-Type: text/html\r\nConnection: close\r\n\
                 Proxy-Authenticate: Basic realm=\"tinyproxy\"\r\n\r\n",
                &tinyproxy_body("407", "Proxy Authentication Required"),
            ),
        ),
        (
            "tinyproxy-401",
            with_body(
                "HTTP/1.0 401 Unauthorized\r\nServer: tinyproxy/1.11.1\r\nContent-Type: text/html\r\n\
                 Connection: close\r\nWWW-Authenticate: Basic realm=\"tinyproxy\"\r\n\r\n",
                &tinyproxy_body("401", "Unauthorized"),
            ),
        ),
        (
            "tinyproxy-403",
            b"HTTP/1.0 403 Filtered\r\nServer: tinyproxy/1.11.1\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n<html>Filtered</html>\n".to_vec(),
        ),
        (
            "interim-100-103-200",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n\r\nDATA".to_vec(),
        ),
        ("bare-lf-200", b"HTTP/1.1 200 OK\nVia: 1.1 proxy\n\nSSH-2.0-x\n".to_vec()),
        ("empty-reason-200", b"HTTP/1.1 200\r\n\r\n".to_vec()),
        ("empty-reason-space-200", b"HTTP/1.0 200 \r\n\r\n\x00\x01\x02".to_vec()),
        (
            "chunked-407-digest",
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"n\", qop=\"auth\"\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ndeny\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: x\r\n\r\n".to_vec(),
        ),
        (
            "digest-sha256-stale",
            b"HTTP/1.1 407 x\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"n2\", algorithm=SHA-256, qop=\"auth,auth-int\", opaque=\"o\", userhash=true, stale=TRUE\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        (
            "obs-fold-header",
            b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\tc\r\nServer : x\r\n\r\n".to_vec(),
        ),
        ("refused-101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n".to_vec()),
        (
            "content-length-list",
            b"HTTP/1.1 407 x\r\nProxy-Authenticate: Basic realm=x\r\nContent-Length: 3, 3\r\nProxy-Connection: close\r\n\r\nabc".to_vec(),
        ),
        ("not-http-ssh", b"SSH-2.0-OpenSSH_9.2p1\r\n".to_vec()),
        ("not-http-tls", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec()),
        ("http2-preface", b"HTTP/2 200\r\n\r\n".to_vec()),
    ]
}

/// The replies a Digest retry needs: the 407 on the first request and the 200 on the second,
/// with where the 407's body ends.
pub fn digest_conversations() -> Vec<(&'static str, Vec<u8>, usize)> {
    let mut out = Vec::new();
    for (name, first) in reply_seeds() {
        if !name.contains("digest") {
            continue;
        }
        let mut payload = first.clone();
        let body_end = payload.len();
        payload.extend_from_slice(
            b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-OpenSSH_9.2\r\n",
        );
        out.push((name, payload, body_end));
    }
    out
}

/// The seed corpus of the `handshake` target: each reply in one read, in reads of 1 byte at
/// the start, with interrupts and a reset; Digest conversations cut where the 407 ends.
pub fn handshake_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, reply) in reply_seeds() {
        let whole = HandshakeInput {
            cuts: vec![],
            interrupt: false,
            reset_at_end: false,
            payload: reply.clone(),
        };
        out.push((name.to_string(), whole.encode()));
        let cuts: Vec<usize> = [
            1,
            2,
            9,
            13,
            30,
            reply.len() / 2,
            reply.len().saturating_sub(1),
        ]
        .into_iter()
        .filter(|&c| c < reply.len())
        .collect();
        let split = HandshakeInput {
            cuts,
            interrupt: true,
            reset_at_end: true,
            ..whole
        };
        out.push((format!("{name}-split"), split.encode()));
    }
    for (name, payload, body_end) in digest_conversations() {
        let input = HandshakeInput {
            cuts: vec![body_end],
            interrupt: false,
            reset_at_end: false,
            payload,
        };
        out.push((format!("{name}-then-200"), input.encode()));
    }
    // Stale nonces until the attempts run out: three 407s, the third ends in an auth error.
    let stale = b"HTTP/1.1 407 x\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"s\", stale=true\r\nContent-Length: 2\r\n\r\nxx";
    let n = stale.len();
    let input = HandshakeInput {
        cuts: vec![n, 2 * n],
        interrupt: false,
        reset_at_end: false,
        payload: [&stale[..], stale, stale, b"HTTP/1.1 200 OK\r\n\r\n"].concat(),
    };
    out.push(("stale-digest-three-times".to_string(), input.encode()));
    out
}
