//! The reconnect policy: transient failures are retried with backoff, the tunnel is re-opened
//! when it drops, and refusals that retrying cannot fix are reported after one attempt.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use connect_tunnel::{Backoff, Config, Connector, Error, Proxy, Retry, Target, Tunnel};

/// What the proxy does with its n-th connection.
type Script = fn(usize, &mut TcpStream);

fn read_head(s: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// A scripted proxy; returns its port and its count of connections.
fn proxy(script: Script) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                read_head(&mut s);
                script(n, &mut s);
            });
        }
    });
    (port, count)
}

fn connector(port: u16) -> Connector {
    let proxy = Proxy::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    Connector::new(
        proxy,
        Config::default().connect_timeout(Duration::from_secs(5)),
    )
    .unwrap()
}

fn fast() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        jitter: 0.5,
    }
}

fn target() -> Target {
    Target::parse("media.example.com:5004").unwrap()
}

#[test]
fn transient_failures_are_retried_then_the_stream_resumes() {
    // 1st: 503. 2nd: opens, sends part of a message, then drops. 3rd: opens and serves.
    let (port, count) = proxy(|n, s| match n {
        0 => {
            let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        }
        1 => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nhal");
        }
        _ => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nhello, complete\n");
        }
    });
    let stop = AtomicBool::new(false);
    let mut sessions = Vec::new();
    let mut handler = |t: &mut Tunnel| {
        let mut line = Vec::new();
        t.read_to_end(&mut line)?;
        sessions.push(String::from_utf8_lossy(&line).into_owned());
        if line.ends_with(b"\n") {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "message cut short",
            ))
        }
    };
    connector(port)
        .run_reconnecting(&target(), &fast(), &stop, &mut handler)
        .unwrap();
    assert_eq!(sessions, ["hal", "hello, complete\n"]);
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn refusals_that_retrying_cannot_fix_are_not_hammered() {
    let (port, count) = proxy(|_, s| {
        let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    });
    let stop = AtomicBool::new(false);
    let err = connector(port)
        .connect_retrying(&target(), &fast(), &stop)
        .unwrap_err();
    assert!(matches!(err, Error::Refused { status: 403, .. }), "{err:?}");
    assert_eq!(err.retry(), Retry::Never);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(count.load(Ordering::SeqCst), 1, "a 403 was retried");

    let (port, count) = proxy(|_, s| {
        let _ = s.write_all(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n",
        );
    });
    let err = connector(port)
        .connect_retrying(&target(), &fast(), &stop)
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert_eq!(count.load(Ordering::SeqCst), 1, "a 407 was retried");
}

#[test]
fn stop_ends_the_retry_loop_promptly() {
    // A proxy that always answers 502: retried forever until stopped.
    let (port, count) = proxy(|_, s| {
        let _ = s.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(600));
        stopper.store(true, Ordering::SeqCst);
    });
    let started = Instant::now();
    let slow = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(30),
        jitter: 0.0,
    };
    let err = connector(port)
        .connect_retrying(&target(), &slow, &stop)
        .unwrap_err();
    assert!(matches!(err, Error::Refused { status: 502, .. }), "{err:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    // 50, 100, 200, 400 ms...: a handful of attempts in 600 ms, not a tight loop.
    let n = count.load(Ordering::SeqCst);
    assert!((2..=6).contains(&n), "{n} attempts");
}
