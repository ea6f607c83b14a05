//! Proves the Squid test harness (tests/support) with raw sockets and hand-written CONNECT
//! requests only, independent of the crate's own code.
#![cfg(unix)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use support::{base64, basic_auth_value, free_port, Squid, SquidOptions};

const BANNER: &[u8] = b"SSH-2.0-test\r\n";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A target on 127.0.0.1 that writes the banner to every connection it accepts.
fn banner_target() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind target");
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(BANNER);
            // Keep it open briefly so the proxy relays the banner before any close.
            thread::spawn(move || {
                thread::sleep(Duration::from_secs(2));
                drop(conn);
            });
        }
    });
    port
}

/// Sends a CONNECT to 127.0.0.1:`target` over a fresh connection to `proxy`; returns the status
/// code, the whole response head, the bytes read past it and the stream.
fn connect(
    proxy: SocketAddr,
    target: u16,
    authorization: Option<&str>,
) -> (u16, String, Vec<u8>, TcpStream) {
    let mut s = TcpStream::connect_timeout(&proxy, IO_TIMEOUT).expect("connect to squid");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut req = format!("CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n");
    if let Some(a) = authorization {
        req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send CONNECT");

    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(buf.len() < 64 * 1024, "response head too long");
        let n = s.read(&mut chunk).expect("read response head");
        assert!(n > 0, "squid closed before a full response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, head, buf[head_end..].to_vec(), s)
}

#[test]
fn base64_and_urls() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"camera:s3cret pass"), "Y2FtZXJhOnMzY3JldCBwYXNz");
    assert_eq!(
        basic_auth_value("camera", "s3cret pass"),
        "Basic Y2FtZXJhOnMzY3JldCBwYXNz"
    );
}

#[test]
fn plain_port_connect_statuses() {
    let target = banner_target();
    let started = Instant::now();
    let Some(squid) = Squid::start(&[target]) else {
        return;
    };
    eprintln!(
        "squid ready in {:?} (spawn to ready {:?})",
        started.elapsed(),
        squid.start_time
    );
    assert_eq!(
        squid.plain_url(true),
        format!("http://camera:s3cret%20pass@127.0.0.1:{}", squid.plain_port)
    );
    assert_eq!(
        squid.plain_url(false),
        format!("http://127.0.0.1:{}", squid.plain_port)
    );
    assert_eq!(
        squid.tls_url(true),
        format!("https://camera:s3cret%20pass@localhost:{}", squid.tls_port)
    );
    let proxy = squid.plain_addr();
    let good = format!("Basic {}", base64(b"camera:s3cret pass"));
    assert_eq!(good, squid.proxy_authorization());

    // Allowed port, right credentials: 200, then the target's banner as stream data.
    let (status, head, mut data, mut s) = connect(proxy, target, Some(&good));
    assert_eq!(status, 200, "{head}");
    let mut chunk = [0u8; 256];
    while data.len() < BANNER.len() {
        let n = s.read(&mut chunk).expect("read banner through tunnel");
        assert!(n > 0, "tunnel closed before the banner; got {data:?}");
        data.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(data, BANNER);

    // No credentials, wrong password: 407 with a Basic challenge.
    let (status, head, _, _) = connect(proxy, target, None);
    assert_eq!(status, 407, "{head}");
    assert!(head.contains("Proxy-Authenticate: Basic"), "{head}");
    let wrong = format!("Basic {}", base64(b"camera:wrong pass"));
    let (status, head, _, _) = connect(proxy, target, Some(&wrong));
    assert_eq!(status, 407, "{head}");

    // Port not allowed: 403.
    let other = free_port();
    assert_ne!(other, target);
    let (status, head, _, _) = connect(proxy, other, Some(&good));
    assert_eq!(status, 403, "{head}");

    assert!(squid.access_log().contains("CONNECT 127.0.0.1:"));
    stop_and_check(squid);
}

#[test]
fn tls_port_accepts_tcp() {
    let Some(squid) = Squid::start(&[free_port()]) else {
        return;
    };
    TcpStream::connect_timeout(&squid.tls_addr(), IO_TIMEOUT).expect("TLS port on 127.0.0.1");
    if support::ipv6_loopback_available() {
        let v6: SocketAddr = format!("[::1]:{}", squid.tls_port).parse().unwrap();
        TcpStream::connect_timeout(&v6, IO_TIMEOUT).expect("TLS port on [::1]");
    }
    assert!(squid.ca.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(Path::new(&squid.ca.ca_pem_path).is_file());
    assert!(squid.ca.server_key_pem.contains("PRIVATE KEY"));
    stop_and_check(squid);
}

#[test]
fn client_cert_variant_starts() {
    let mut options = SquidOptions::new(&[free_port()]);
    options.require_client_cert = true;
    let Some(squid) = Squid::start_with(options) else {
        return;
    };
    TcpStream::connect_timeout(&squid.tls_addr(), IO_TIMEOUT).expect("TLS port");
    let client = squid.ca.client_cert("camera-01");
    assert!(client.cert_path.is_file() && client.key_path.is_file());
    assert!(client.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    stop_and_check(squid);
}

/// Drops the Squid, timing the stop, and checks that the child was reaped and its dir removed.
fn stop_and_check(squid: Squid) {
    let pid = squid.pid();
    let dir = squid.dir.clone();
    let ca_dir = squid.ca.dir.clone();
    let t = Instant::now();
    drop(squid);
    eprintln!("squid stopped in {:?}", t.elapsed());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "squid pid {pid} still exists (not reaped?)"
    );
    if std::env::var_os(support::KEEP_DIRS_ENV).is_none() {
        assert!(!dir.exists(), "squid dir {} left behind", dir.display());
        assert!(!ca_dir.exists(), "CA dir {} left behind", ca_dir.display());
    }
}
