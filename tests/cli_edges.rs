//! CLI behaviour at the edges: NO_PROXY keeps every requested option (TLS to the target
//! included), forward mode tears a tunnel down when its local client resets, and a proxy that
//! cuts a `--tls` stream short cannot make the CLI report success.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

mod support;

const CLI: &str = env!("CARGO_BIN_EXE_connect-tunnel");

/// A CA (PEM, written to a temp file) and a TLS server config for 127.0.0.1 signed by it.
fn tls_material(tag: &str) -> (std::path::PathBuf, Arc<rustls::ServerConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let path = std::env::temp_dir().join(format!("ct-edges-{tag}-{}.pem", std::process::id()));
    std::fs::write(&path, ca.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    (path, Arc::new(config))
}

/// A TLS server that sends `len` bytes and then ends the TLS stream properly.
fn tls_sender(config: Arc<rustls::ServerConfig>, len: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            let config = config.clone();
            thread::spawn(move || {
                let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let data = vec![b'z'; len];
                if tls.write_all(&data).and_then(|()| tls.flush()).is_ok() {
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
                thread::sleep(Duration::from_millis(200));
            });
        }
    });
    port
}

/// A CONNECT proxy that relays at most `limit` bytes from the target, then closes both sides
/// (a FIN, no TLS alert): a proxy that truncates.
fn truncating_proxy(limit: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut client in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 16384];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head).into_owned();
                let authority = line.split_whitespace().nth(1).unwrap().to_owned();
                let mut target = TcpStream::connect(authority).unwrap();
                client.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
                let mut c2t = client.try_clone().unwrap();
                let mut t2c = target.try_clone().unwrap();
                thread::spawn(move || {
                    let _ = std::io::copy(&mut c2t, &mut t2c);
                });
                let mut sent = 0;
                while sent < limit {
                    match target.read(&mut buf[..(limit - sent).min(16384)]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if client.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            sent += n;
                        }
                    }
                }
                let _ = client.shutdown(Shutdown::Both);
                let _ = target.shutdown(Shutdown::Both);
            });
        }
    });
    port
}

#[test]
fn no_proxy_keeps_tls_to_the_target() {
    let (ca, config) = tls_material("noproxy");
    let port = tls_sender(config, 1000);
    // The proxy in the environment is never contacted: nothing listens there.
    let out = Command::new(CLI)
        .env("HTTPS_PROXY", "http://127.0.0.1:1")
        .env("NO_PROXY", "127.0.0.1")
        .arg("--cacert")
        .arg(&ca)
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout,
        vec![b'z'; 1000],
        "the stream came through TLS intact"
    );
    // The same target without a CA that trusts it: refused, so TLS really ran directly.
    let out = Command::new(CLI)
        .env("HTTPS_PROXY", "http://127.0.0.1:1")
        .env("NO_PROXY", "127.0.0.1")
        .args(["--tls", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_proxy_cannot_truncate_a_tls_stream_unnoticed() {
    let (ca, config) = tls_material("trunc");
    let target = tls_sender(config, 1_000_000);
    let proxy = truncating_proxy(200_000);
    let out = Command::new(CLI)
        .args(["-x", &format!("http://127.0.0.1:{proxy}"), "--cacert"])
        .arg(&ca)
        .arg(format!("127.0.0.1:{target}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.stdout.len() < 1_000_000);
    assert_eq!(out.status.code(), Some(1), "truncation must not exit 0");
}

#[test]
fn forward_mode_tears_down_tunnels_of_clients_that_reset() {
    // A proxy answering 200 and then holding its side open, counting live connections.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    let live = Arc::new(AtomicUsize::new(0));
    let counter = live.clone();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let live = counter.clone();
            thread::spawn(move || {
                live.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
                // Silent target: never sends; returns when the client side goes away.
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                live.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let mut child = Command::new(CLI)
        .args([
            "-x",
            &format!("http://127.0.0.1:{proxy_port}"),
            "-l",
            "127.0.0.1:0",
        ])
        .arg("media.example.com:554")
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
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no listening line")
        .parse()
        .unwrap();
    for _ in 0..20 {
        let s = TcpStream::connect(addr).unwrap();
        nudge(&s);
        // Reset: SO_LINGER 0 then close.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    }
    // Every tunnel the resets left behind must be torn down.
    let until = Instant::now() + Duration::from_secs(10);
    thread::sleep(Duration::from_millis(300));
    while live.load(Ordering::SeqCst) > 0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    let left = live.load(Ordering::SeqCst);
    let _ = child.kill();
    let _ = support::exit_code_within(&mut child, Duration::from_secs(5));
    assert_eq!(
        left, 0,
        "{left} tunnels still open after their clients reset"
    );
}

/// Sends a byte so the forwarder has opened the tunnel before the reset.
fn nudge(mut s: &TcpStream) {
    s.write_all(b"x").unwrap();
    thread::sleep(Duration::from_millis(30));
}
