//! The socket options the configuration asks for are really set on the connection to the
//! proxy (read back from the kernel through socket2).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use connect_tunnel::{Config, Connector, Proxy, Target};
use socket2::SockRef;

/// A proxy that answers every CONNECT with 200 and then holds the connection open briefly.
fn proxy() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                thread::sleep(Duration::from_secs(2));
            });
        }
    });
    port
}

#[test]
fn configured_options_reach_the_socket() {
    let port = proxy();
    let config = Config::default()
        .dscp(Some(46))
        .user_timeout(Some(Duration::from_secs(7)))
        .keepalive(Some(Duration::from_secs(11)))
        .send_buffer_size(Some(64 * 1024));
    let proxy = Proxy::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let tunnel = Connector::new(proxy, config)
        .unwrap()
        .connect(&Target::parse("media.example.com:5004").unwrap())
        .unwrap();
    let sock = SockRef::from(tunnel.get_ref());
    assert!(sock.tcp_nodelay().unwrap(), "TCP_NODELAY is on by default");
    assert_eq!(sock.tos_v4().unwrap(), 46 << 2, "DSCP EF");
    assert_eq!(
        sock.tcp_user_timeout().unwrap(),
        Some(Duration::from_secs(7))
    );
    assert!(sock.keepalive().unwrap());
    assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(11));
    // Linux doubles SO_SNDBUF for bookkeeping; it must at least reflect the request.
    assert!(sock.send_buffer_size().unwrap() >= 64 * 1024);
}

#[test]
fn defaults_leave_marking_alone_and_nodelay_on() {
    let port = proxy();
    let proxy = Proxy::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let config = Config::default().nodelay(true);
    let tunnel = Connector::new(proxy, config)
        .unwrap()
        .connect(&Target::parse("h:1").unwrap())
        .unwrap();
    let sock = SockRef::from(tunnel.get_ref());
    assert!(sock.tcp_nodelay().unwrap());
    assert_eq!(sock.tos_v4().unwrap(), 0);
    assert_eq!(sock.tcp_user_timeout().unwrap(), None);
    assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
}
