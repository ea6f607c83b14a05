//! A standard error nobody reads any more (a closed pipe: `2> >(head -c1)`, a log collector
//! that went away) must not change what the CLI does: diagnostics are dropped, never a panic
//! (exit 101), in stdio mode and in forward mode, where a failed tunnel must also give its
//! live-tunnel slot back.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

mod support;

const CLI: &str = env!("CARGO_BIN_EXE_connect-tunnel");

/// Forward mode's live-tunnel cap (`MAX_TUNNELS` in the CLI); there is no flag to lower it.
const MAX_TUNNELS: usize = 256;

/// A proxy that refuses every CONNECT with 403 once `go` has fired (or at once when it has
/// been dropped), counting the requests it saw.
fn refusing_proxy(go: mpsc::Receiver<()>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = go.recv_timeout(Duration::from_secs(10));
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (port, seen)
}

/// Spawns the CLI with stderr a pipe whose read end is then closed at once.
fn spawn_with_stderr_closed(args: &[&str]) -> Child {
    let mut child = Command::new(CLI)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    child
}

#[test]
fn a_refusal_exits_with_its_code_when_stderr_is_closed() {
    let (go, gate) = mpsc::channel();
    let (port, seen) = refusing_proxy(gate);
    // -vv: the log backend writes to the closed pipe too.
    let mut child = spawn_with_stderr_closed(&[
        "-vv",
        "-x",
        &format!("http://127.0.0.1:{port}"),
        "media.example.com:554",
    ]);
    // The proxy answers only now that nobody reads stderr: the error message meets EPIPE.
    go.send(()).unwrap();
    assert_eq!(
        support::exit_code_within(&mut child, Duration::from_secs(20)),
        Some(5)
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[test]
fn forward_mode_survives_failed_tunnels_when_stderr_is_closed() {
    let (go, gate) = mpsc::channel();
    drop(go);
    let (proxy, seen) = refusing_proxy(gate);
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_with_stderr_closed(&[
        "-x",
        &format!("http://127.0.0.1:{proxy}"),
        "-l",
        &listen,
        "media.example.com:554",
    ]);
    let until = Instant::now() + Duration::from_secs(10);
    let mut first = loop {
        match TcpStream::connect(&listen) {
            Ok(s) => break s,
            Err(e) => {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("the forwarder exited ({status}) instead of listening");
                }
                assert!(Instant::now() < until, "not listening: {e}");
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let mut rest = Vec::new();
    let _ = first.read_to_end(&mut rest);
    // More failed tunnels than there are slots, one after another: each must give its slot
    // back, so every one of them still reaches the proxy.
    let tries = MAX_TUNNELS + 44;
    for i in 0..tries {
        let mut local = TcpStream::connect(&listen)
            .unwrap_or_else(|e| panic!("connection {i}: the forwarder is gone: {e}"));
        local
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        // The tunnel fails and the forwarder closes the local connection.
        let _ = local.read_to_end(&mut rest);
        assert!(
            rest.is_empty(),
            "connection {i}: data from a refused tunnel"
        );
    }
    let until = Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::SeqCst) < tries + 1 && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        tries + 1,
        "connections closed without a tunnel: live-tunnel slots leaked"
    );
    assert_eq!(child.try_wait().unwrap(), None, "the forwarder exited");
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert_eq!(
        support::exit_code_within(&mut child, Duration::from_secs(20)),
        Some(0)
    );
}
