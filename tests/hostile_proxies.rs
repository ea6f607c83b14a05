//! Hostile and broken proxies: silence, dribbling, endless heads, resets, early closes,
//! unreachable addresses, names that do not resolve, refused connections, and request injection.
//! Each must end in its typed error, within the configured deadline (checked with generous
//! slack: this runs on noisy machines), never a hang and never unbounded memory.

mod scripted;

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use connect_tunnel::{
    Config, Connector, Credentials, Error, Header, InvalidInput, Phase, Proxy, ReplyProblem,
    Target, MAX_INTERIM_REPLIES, MAX_REPLY_HEADERS, REPLY_HEAD_CAPACITY,
};
use scripted::{connector, drain_until_closed, read_head, serve, target, within};

/// The deadline the timing tests configure.
const DEADLINE: Duration = Duration::from_secs(1);
/// Slack allowed past a deadline before the test calls it missed.
const SLACK: Duration = Duration::from_secs(2);
/// Upper bound on any single client call in this file (a hang fails the test instead).
const HANG: Duration = Duration::from_secs(30);

/// Connects to `url` with `config` on a bounded thread; returns the result and the time taken.
fn timed_connect(url: String, config: Config) -> (Result<(), Error>, Duration) {
    within(HANG, "connect", move || {
        let connector = connector(&url, config);
        let started = Instant::now();
        let result = connector.connect(&target()).map(drop);
        (result, started.elapsed())
    })
}

fn short_deadline() -> Config {
    Config::default().connect_timeout(DEADLINE)
}

/// Asserts a deadline error from `phase` that came neither early (before the deadline, less a
/// little for timer rounding) nor late (after the deadline plus slack).
fn assert_deadline(result: Result<(), Error>, elapsed: Duration, phase: Phase) {
    assert_deadline_of(DEADLINE, result, elapsed, phase)
}

fn assert_deadline_of(
    deadline: Duration,
    result: Result<(), Error>,
    elapsed: Duration,
    phase: Phase,
) {
    match &result {
        Err(Error::Timeout { phase: p }) if *p == phase => {}
        other => panic!("expected Timeout in {phase:?}, got {other:?} after {elapsed:?}"),
    }
    assert_eq!(result.unwrap_err().exit_code(), 7);
    assert!(
        elapsed + Duration::from_millis(100) >= deadline,
        "deadline error before the deadline: {elapsed:?}"
    );
    assert!(
        elapsed < deadline + SLACK,
        "deadline {deadline:?} not honoured: {elapsed:?}"
    );
}

fn assert_reply_problem(result: &Result<(), Error>, problem: ReplyProblem) {
    match result {
        Err(e @ Error::Reply { problem: p }) if *p == problem => assert_eq!(e.exit_code(), 6),
        other => panic!("expected Reply {{ {problem:?} }}, got {other:?}"),
    }
}

#[test]
fn silent_proxy_hits_the_deadline() {
    let proxy = serve(|mut s: TcpStream| {
        read_head(&mut s);
        // Never answer; hold the connection until the client gives up.
        drain_until_closed(&mut s);
    });
    let (result, elapsed) = timed_connect(proxy.url(), short_deadline());
    assert_deadline(result, elapsed, Phase::AwaitReply);
    proxy.finish();
}

/// One byte every 200 ms of a head that never ends: each read succeeds well within any
/// per-read timeout, so only an overall deadline can stop it.
#[test]
fn dribbling_proxy_hits_the_deadline_not_a_per_read_timeout() {
    let proxy = serve(|mut s: TcpStream| {
        read_head(&mut s);
        let head = b"HTTP/1.1 200 Connection established\r\nX-Dribble: ";
        let mut sent = 0usize;
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let byte = head.get(sent).copied().unwrap_or(b'a');
            if s.write_all(&[byte]).is_err() || Instant::now() > until {
                return sent;
            }
            sent += 1;
            thread::sleep(Duration::from_millis(200));
        }
    });
    let (result, elapsed) = timed_connect(proxy.url(), short_deadline());
    assert_deadline(result, elapsed, Phase::AwaitReply);
    let sent = proxy.finish();
    // Bytes kept coming (at least 4 before the deadline) and stopped soon after it.
    assert!(
        (4..100).contains(&sent),
        "proxy wrote {sent} bytes before the client left"
    );
}

/// Header bytes without a blank line, as fast as the socket takes them: the client must stop
/// at its fixed buffer, promptly, with `HeadTooLarge`.
#[test]
fn endless_header_is_head_too_large_promptly() {
    let proxy = serve(|mut s: TcpStream| {
        read_head(&mut s);
        let mut sent = 0usize;
        let mut chunk = b"HTTP/1.1 200 OK\r\nX-Endless: ".to_vec();
        chunk.resize(4096, b'a');
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
            chunk.fill(b'a');
        }
        sent
    });
    let config = Config::default().connect_timeout(Duration::from_secs(20));
    let (result, elapsed) = timed_connect(proxy.url(), config);
    assert_reply_problem(&result, ReplyProblem::HeadTooLarge);
    assert!(
        elapsed < Duration::from_secs(10),
        "HeadTooLarge took {elapsed:?}"
    );
    // The proxy kept writing until the client closed; its writes ended with an error.
    let sent = proxy.finish();
    assert!(sent >= REPLY_HEAD_CAPACITY, "proxy sent only {sent} bytes");
}

/// The bound is exactly the reply buffer: an unfinished head of exactly REPLY_HEAD_CAPACITY
/// bytes is refused at once (no waiting for more), one byte less still waits.
#[test]
fn head_limit_is_exactly_the_reply_buffer() {
    fn unfinished_head(len: usize) -> Vec<u8> {
        let mut head = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
        head.resize(len, b'v');
        head
    }
    // Exactly full and unfinished: HeadTooLarge, long before the (20 s) deadline.
    let head = unfinished_head(REPLY_HEAD_CAPACITY);
    let proxy = serve(move |mut s: TcpStream| {
        read_head(&mut s);
        s.write_all(&head).unwrap();
        drain_until_closed(&mut s);
    });
    let config = Config::default().connect_timeout(Duration::from_secs(20));
    let (result, elapsed) = timed_connect(proxy.url(), config);
    assert_reply_problem(&result, ReplyProblem::HeadTooLarge);
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    proxy.finish();

    // One byte short: the client keeps waiting for the rest, until its deadline.
    let head = unfinished_head(REPLY_HEAD_CAPACITY - 1);
    let proxy = serve(move |mut s: TcpStream| {
        read_head(&mut s);
        s.write_all(&head).unwrap();
        drain_until_closed(&mut s);
    });
    let (result, elapsed) = timed_connect(proxy.url(), short_deadline());
    assert_deadline(result, elapsed, Phase::AwaitReply);
    proxy.finish();
}

/// A complete head that fills the reply buffer exactly is accepted.
#[test]
fn head_of_exactly_the_buffer_size_is_accepted() {
    let mut head = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
    head.resize(REPLY_HEAD_CAPACITY - 4, b'v');
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), REPLY_HEAD_CAPACITY);
    let proxy = serve(move |mut s: TcpStream| {
        read_head(&mut s);
        s.write_all(&head).unwrap();
        s.write_all(b"after").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        drain_until_closed(&mut s);
    });
    let mut tunnel = proxy.connector().connect(&target()).unwrap();
    scripted::bound_reads(tunnel.get_ref());
    assert_eq!(scripted::read_to_eof(&mut tunnel, 1 << 20), b"after");
    tunnel.close().unwrap();
    proxy.finish();
}

#[test]
fn too_many_headers() {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_REPLY_HEADERS {
        head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let proxy = serve(move |mut s: TcpStream| {
        read_head(&mut s);
        s.write_all(&head).unwrap();
        drain_until_closed(&mut s);
    });
    let (result, _) = timed_connect(proxy.url(), short_deadline());
    assert_reply_problem(&result, ReplyProblem::TooManyHeaders);
    proxy.finish();
}

#[test]
fn too_many_interim_replies() {
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    // As many as allowed, then the 200: opens.
    let reply = [
        interim.repeat(MAX_INTERIM_REPLIES),
        b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
    ]
    .concat();
    let proxy = serve(move |mut s: TcpStream| {
        read_head(&mut s);
        s.write_all(&reply).unwrap();
        drain_until_closed(&mut s);
    });
    let (result, _) = timed_connect(proxy.url(), short_deadline());
    assert!(result.is_ok(), "{result:?}");
    proxy.finish();
    // One more: refused, even though a 200 follows.
    let reply = [
        interim.repeat(MAX_INTERIM_REPLIES + 1),
        b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
    ]
    .concat();
    let proxy = serve(move |mut s: TcpStream| {
        read_head(&mut s);
        s.write_all(&reply).unwrap();
        drain_until_closed(&mut s);
    });
    let (result, _) = timed_connect(proxy.url(), short_deadline());
    assert_reply_problem(&result, ReplyProblem::TooManyInterim);
    proxy.finish();
}

/// Half the head, then a TCP reset (SO_LINGER 0): an I/O error in await reply, exit code 6.
#[test]
fn reset_mid_reply() {
    let proxy = serve(|mut s: TcpStream| {
        read_head(&mut s);
        s.write_all(b"HTTP/1.1 200 Connection est").unwrap();
        thread::sleep(Duration::from_millis(50));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let (result, elapsed) = timed_connect(proxy.url(), Config::default());
    proxy.finish();
    let err = result.unwrap_err();
    match &err {
        Error::Io {
            phase: Phase::AwaitReply,
            source,
        } => assert_eq!(source.kind(), std::io::ErrorKind::ConnectionReset),
        other => panic!("expected Io in await reply, got {other:?}"),
    }
    assert_eq!(err.exit_code(), 6);
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[test]
fn clean_close_mid_reply_is_closed_early() {
    let proxy = serve(|mut s: TcpStream| {
        read_head(&mut s);
        s.write_all(b"HTTP/1.1 200 Connection established\r\nProxy-ag")
            .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        drain_until_closed(&mut s);
    });
    let (result, _) = timed_connect(proxy.url(), Config::default());
    assert_reply_problem(&result, ReplyProblem::ClosedEarly);
    proxy.finish();
}

#[test]
fn close_before_any_reply_is_closed_early() {
    let proxy = serve(|mut s: TcpStream| {
        // Read the whole request first: closing with unread bytes would be a reset.
        read_head(&mut s);
        drop(s);
    });
    let (result, _) = timed_connect(proxy.url(), Config::default());
    assert_reply_problem(&result, ReplyProblem::ClosedEarly);
    proxy.finish();
}

/// A close right after a complete interim reply: still a truncated reply.
#[test]
fn close_after_an_interim_reply_is_closed_early() {
    let proxy = serve(|mut s: TcpStream| {
        read_head(&mut s);
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        drain_until_closed(&mut s);
    });
    let (result, _) = timed_connect(proxy.url(), Config::default());
    assert_reply_problem(&result, ReplyProblem::ClosedEarly);
    proxy.finish();
}

/// A listener whose accept queue is full (listen backlog 0, filled by connections nobody
/// accepts): the kernel drops further SYNs, so a connect can only end by the deadline.
/// Returns the listener (keep it alive) and the connections that fill its queue.
fn listener_that_never_accepts() -> (socket2::Socket, Vec<socket2::Socket>, std::net::SocketAddr) {
    use socket2::{Domain, Protocol, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..64 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        match s.connect_timeout(&addr.into(), Duration::from_millis(300)) {
            Ok(()) => fillers.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (listener, fillers, addr),
            Err(e) => panic!("filling the accept queue: {e}"),
        }
    }
    panic!("the accept queue of a backlog-0 listener never filled");
}

/// The connect attempt itself is bounded by the deadline, and reported as the deadline passing
/// (`Timeout` in the write phase, exit code 7), not as an unreachable proxy (exit code 3). Several
/// attempts, because whether the connect timer fires a fraction of a millisecond before or
/// after the deadline varies from run to run.
#[test]
fn listener_that_never_accepts_hits_the_deadline() {
    let (_listener, _fillers, addr) = listener_that_never_accepts();
    let deadline = Duration::from_millis(500);
    for attempt in 0..6 {
        let config = Config::default().connect_timeout(deadline);
        let (result, elapsed) = timed_connect(format!("http://{addr}"), config);
        eprintln!("attempt {attempt}: {result:?} after {elapsed:?}");
        assert_deadline_of(deadline, result, elapsed, Phase::Write);
    }
}

/// A non-routable address: depending on the network it is a timeout, an immediate
/// "unreachable", or (behind an intercepting egress proxy) something that answers. Only the
/// bound is asserted: the call ends within the deadline plus slack.
#[test]
fn unroutable_address_is_bounded_by_the_deadline() {
    let (result, elapsed) = timed_connect("http://10.255.255.1:9".into(), short_deadline());
    assert!(result.is_err(), "a tunnel opened to 10.255.255.1:9");
    assert!(elapsed < DEADLINE + SLACK, "took {elapsed:?}: {result:?}");
}

#[test]
fn unresolvable_name_is_a_resolve_error() {
    let config = Config::default().connect_timeout(Duration::from_secs(20));
    let (result, _) = timed_connect("http://no-such-host.invalid:3128".into(), config);
    match &result {
        Err(e @ Error::Resolve { host, .. }) => {
            assert_eq!(host, "no-such-host.invalid");
            assert_eq!(e.exit_code(), 3);
            assert_eq!(e.phase(), Phase::AcquireAddresses);
        }
        other => panic!("expected Resolve, got {other:?}"),
    }
}

#[test]
fn refused_connection_is_a_connect_error() {
    // A port that was just free and is now closed.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (result, elapsed) = timed_connect(format!("http://127.0.0.1:{port}"), short_deadline());
    match &result {
        Err(e @ Error::Connect { addr, source }) => {
            assert_eq!(addr.port(), port);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
            assert_eq!(e.exit_code(), 3);
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    assert!(elapsed < DEADLINE + SLACK, "took {elapsed:?}");
}

fn assert_forbidden(result: Result<impl std::fmt::Debug, Error>) {
    match result {
        Err(
            e @ Error::InvalidInput {
                kind: InvalidInput::ForbiddenByte,
                ..
            },
        ) => assert_eq!(e.exit_code(), 2),
        other => panic!("expected InvalidInput ForbiddenByte, got {other:?}"),
    }
}

/// CR or LF in anything that reaches the request is refused before any connection is made.
#[test]
fn request_injection_is_refused_before_connecting() {
    let proxy = serve(|mut s: TcpStream| {
        read_head(&mut s);
    });
    // Values checked when they are made.
    assert_forbidden(Config::default().header("X-A: b\r\nX-Injected: 1"));
    assert_forbidden(Config::default().header("X-A: b\nHost: evil"));
    assert_forbidden(Header::new("X-A", "b\r\n\r\nGET / HTTP/1.1"));
    assert_forbidden(Header::new("X-A\r\nX-B", "c"));
    assert_forbidden(Target::parse("target.example:22\r\nX-Injected: 1"));
    assert_forbidden(Target::parse("target.example\r\n:22"));
    assert_forbidden(Target::new("target.example\nX", 22));
    assert_forbidden(Credentials::new("user", "pass\r\nX-Injected: 1"));
    assert_forbidden(Proxy::parse(&format!(
        "http://user:pa%0D%0Ass@{}",
        proxy.addr()
    )));
    assert_forbidden(Proxy::parse(&format!(
        "http://us%0Aer:pass@{}",
        proxy.addr()
    )));
    // A value checked when the request is built: refused by connect, before any socket.
    let config = Config::default()
        .connect_timeout(DEADLINE)
        .user_agent(Some("agent\r\nX-Injected: 1"));
    let connector = Connector::new(Proxy::parse(&proxy.url()).unwrap(), config).unwrap();
    match connector.connect(&target()) {
        Err(
            e @ Error::InvalidInput {
                phase: Phase::BuildConnect,
                kind: InvalidInput::ForbiddenByte,
                ..
            },
        ) => assert_eq!(e.exit_code(), 2),
        other => panic!("expected InvalidInput in build CONNECT, got {other:?}"),
    }
    proxy.assert_no_connection();
}

/// A request that does not fit its fixed buffer is refused before connecting too.
#[test]
fn oversize_request_is_refused_before_connecting() {
    let proxy = serve(|mut s: TcpStream| {
        read_head(&mut s);
    });
    let mut config = Config::default().connect_timeout(DEADLINE);
    for i in 0..64 {
        config = config
            .header(&format!("X-Filler-{i}: {}", "f".repeat(100)))
            .unwrap();
    }
    match proxy.connector_with(config).connect(&target()) {
        Err(
            e @ Error::InvalidInput {
                phase: Phase::BuildConnect,
                kind: InvalidInput::RequestTooLarge,
                ..
            },
        ) => assert_eq!(e.exit_code(), 2),
        other => panic!("expected RequestTooLarge, got {other:?}"),
    }
    proxy.assert_no_connection();
}
