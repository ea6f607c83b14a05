//! Forward mode's clean shutdown: on SIGTERM it stops accepting, lets live tunnels finish
//! within the drain time, then exits 0; tunnels still open after it are closed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod support;

/// A proxy that answers CONNECT with 200 and then echoes.
fn echoing_proxy() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// Starts forward mode; returns the child and the address it announced.
fn forward(proxy: u16, drain: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_connect-tunnel"))
        .args([
            "-x",
            &format!("http://127.0.0.1:{proxy}"),
            "-l",
            "127.0.0.1:0",
        ])
        .args(["--drain-timeout", drain, "media.example.com:554"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("connect-tunnel: listening on ") {
                let _ = tx.send(a.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no listening line");
    (child, addr.parse().unwrap())
}

fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

fn terminate(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn sigterm_stops_accepting_and_lets_live_tunnels_finish() {
    let (mut child, addr) = forward(echoing_proxy(), "20");
    let mut live = TcpStream::connect(addr).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_once(&mut live, b"before");
    terminate(&child);
    // The listener closes: new connections are refused (allow a moment for the signal).
    let until = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        assert!(Instant::now() < until, "still accepting after SIGTERM");
        thread::sleep(Duration::from_millis(50));
    }
    // The live tunnel still works, and the process stays until it ends.
    echo_once(&mut live, b"after the signal");
    assert_eq!(child.try_wait().unwrap(), None, "exited with a tunnel open");
    drop(live);
    assert_eq!(
        support::exit_code_within(&mut child, Duration::from_secs(10)),
        Some(0)
    );
}

#[test]
fn tunnels_left_after_the_drain_time_are_closed() {
    let (mut child, addr) = forward(echoing_proxy(), "0.5");
    let mut live = TcpStream::connect(addr).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_once(&mut live, b"x");
    let started = Instant::now();
    terminate(&child);
    assert_eq!(
        support::exit_code_within(&mut child, Duration::from_secs(10)),
        Some(0)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The process is gone, so the local connection ends.
    let mut rest = Vec::new();
    assert!(matches!(live.read_to_end(&mut rest), Ok(0) | Err(_)));
}
