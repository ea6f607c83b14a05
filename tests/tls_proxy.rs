//! TLS to the proxy (`https://` proxy URL): a scripted rustls proxy with a certificate for
//! `localhost` signed by a throw-away CA that the client trusts through `Config::proxy_ca_pem`.
//! Success paths (early data, a 1 MiB echo both ways over split halves, half-close) and the
//! handshake failures, which are all `Error::Tls` (exit code 3).

mod scripted;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use connect_tunnel::{
    Config, Connector, Error, InvalidInput, Phase, Proxy, DEFAULT_USER_AGENT, SYSTEM_CA_BUNDLES,
};
use scripted::tls::{serve_tls, url, Ca, TlsStream};
use scripted::{
    bound_reads, connector, drain_until_closed, head_text, pattern, pattern_byte, read_head,
    read_to_eof, serve, target, within, CLIENT_TIMEOUT,
};

const REPLY: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
const EARLY: &[u8] = b"SSH-2.0-OpenSSH_9.6 over TLS\r\n";
const LIMIT: Duration = Duration::from_secs(60);

fn trusting(ca: &Ca) -> Config {
    Config::default()
        .connect_timeout(CLIENT_TIMEOUT)
        .proxy_ca_pem(ca.pem.clone())
}

/// Ends the server's side properly: `close_notify`, TCP shutdown, then waits for the client to
/// close.
fn close_tls(mut tls: TlsStream) {
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(Shutdown::Write);
    drain_until_closed(&mut tls.sock);
}

/// Reads plaintext until the client's `close_notify` (Ok(0)); fails on anything else.
fn read_until_close_notify(tls: &mut TlsStream, limit: usize) -> Vec<u8> {
    scripted::read_to_eof(tls, limit)
}

#[test]
fn tunnel_opens_over_tls_with_early_data() {
    let ca = Ca::new("scripted CA");
    let proxy = serve_tls(ca.server_config("localhost"), |mut tls: TlsStream| {
        let head = read_head(&mut tls);
        // The 200 and the target's first bytes in one TLS write (one record).
        tls.write_all(&[REPLY, EARLY].concat()).unwrap();
        let got = read_until_close_notify(&mut tls, 1 << 20);
        tls.write_all(b"bye").unwrap();
        close_tls(tls);
        (head, got)
    });
    let mut tunnel = connector(&url(&proxy), trusting(&ca))
        .connect(&target())
        .unwrap();
    assert!(tunnel.is_tls());
    bound_reads(tunnel.get_ref());
    let mut buf = [0u8; 1024];
    let n = tunnel.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], EARLY, "first bytes read are the early data");
    tunnel.write_all(b"hello through TLS").unwrap();
    tunnel.shutdown_write().unwrap();
    assert_eq!(read_to_eof(&mut tunnel, 1 << 20), b"bye");
    tunnel.close().unwrap();
    let (head, got) = proxy.finish();
    assert_eq!(
        head_text(&head),
        format!(
            "CONNECT target.example:22 HTTP/1.1\r\nHost: target.example:22\r\n\
             User-Agent: {DEFAULT_USER_AGENT}\r\n\r\n"
        )
    );
    assert_eq!(got, b"hello through TLS");
}

#[test]
fn refusal_over_tls_is_typed() {
    let ca = Ca::new("scripted CA");
    let proxy = serve_tls(ca.server_config("localhost"), |mut tls: TlsStream| {
        read_head(&mut tls);
        tls.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\n\r\n")
            .unwrap();
        close_tls(tls);
    });
    let err = connector(&url(&proxy), trusting(&ca))
        .connect(&target())
        .unwrap_err();
    match &err {
        Error::Auth {
            status: 407,
            schemes,
            ..
        } => assert_eq!(schemes, &["Basic"]),
        other => panic!("expected Auth, got {other:?}"),
    }
    proxy.finish();
}

/// The server echoes until the client's close_notify, then sends a tail and closes.
fn echo_then_tail(tail: &'static [u8]) -> impl FnOnce(TlsStream) -> usize + Send + 'static {
    move |mut tls: TlsStream| {
        read_head(&mut tls);
        tls.write_all(REPLY).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut echoed = 0;
        loop {
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    tls.write_all(&buf[..n]).unwrap();
                    echoed += n;
                }
                Err(e) => panic!("echo read after {echoed} bytes: {e}"),
            }
        }
        tls.write_all(tail).unwrap();
        close_tls(tls);
        echoed
    }
}

/// Echoes `total` bytes both ways over split halves on two threads: the writer sends in chunks
/// of the given sizes then ends its direction; the reader expects the echo, the server's tail,
/// then EOF. `socket_buffer` shrinks both ends' socket buffers (SO_SNDBUF / SO_RCVBUF), so
/// that the two directions wait on each other often.
fn echo_both_ways(total: usize, chunk_sizes: &'static [usize], socket_buffer: Option<usize>) {
    const TAIL: &[u8] = b"-- end of echo --";
    // The data first: the scripted proxy's read timeout (SERVER_IO_TIMEOUT) runs from the
    // moment it has answered, so nothing slow may come between that and the first write.
    let data = Arc::new(pattern(total));
    let ca = Ca::new("scripted CA");
    let echo = echo_then_tail(TAIL);
    let proxy = serve_tls(ca.server_config("localhost"), move |tls: TlsStream| {
        if let Some(size) = socket_buffer {
            let sock = socket2::SockRef::from(&tls.sock);
            sock.set_send_buffer_size(size).unwrap();
            sock.set_recv_buffer_size(size).unwrap();
        }
        echo(tls)
    });
    let config = trusting(&ca)
        .send_buffer_size(socket_buffer)
        .recv_buffer_size(socket_buffer);
    let tunnel = connector(&url(&proxy), config).connect(&target()).unwrap();
    // Tighter than `bound_reads`: a stall shows as an error after 10 s.
    let stall = Some(Duration::from_secs(10));
    tunnel.get_ref().set_read_timeout(stall).unwrap();
    tunnel.get_ref().set_write_timeout(stall).unwrap();
    let (mut reader, mut writer) = tunnel.split();
    let to_send = data.clone();
    let writing = thread::spawn(move || {
        let mut sizes = chunk_sizes.iter().cycle();
        let mut sent = 0;
        while sent < to_send.len() {
            let n = (*sizes.next().unwrap()).min(to_send.len() - sent);
            if let Err(e) = writer.write_all(&to_send[sent..sent + n]) {
                panic!("tunnel write failed after {sent} of {total} bytes: {e}");
            }
            sent += n;
        }
        writer.flush().unwrap();
        writer.shutdown_write().unwrap();
        writer
    });
    let reading = thread::spawn(move || {
        let (got, err) = scripted::read_until_eof(&mut reader, total + 1024);
        if let Some(e) = err {
            panic!(
                "tunnel read failed after {} of {total} bytes: {e}",
                got.len()
            );
        }
        (got, reader)
    });
    let ((got, reader), writer) = within(Duration::from_secs(30), "TLS echo", move || {
        (reading.join().unwrap(), writing.join().unwrap())
    });
    assert_eq!(got.len(), total + TAIL.len());
    assert!(got[..total] == data[..], "echoed bytes differ");
    assert_eq!(&got[total..], TAIL);
    drop((reader, writer));
    assert_eq!(proxy.finish(), total);
}

#[test]
fn one_mib_echo_both_ways_over_split_halves() {
    // Uneven chunk sizes, some larger than a TLS record.
    echo_both_ways(
        1 << 20,
        &[1, 100, 16 * 1024, 16 * 1024 + 1, 40_000, 7],
        None,
    );
}

/// `pattern` (one period computed, then copied) is byte for byte `pattern_byte`, across
/// period boundaries and for a length that ends inside a period.
#[test]
fn pattern_is_pattern_byte() {
    let len = 3 * 251 * 7 + 100;
    let data = pattern(len);
    assert_eq!(data.len(), len);
    for (i, byte) in data.iter().enumerate() {
        assert_eq!(*byte, pattern_byte(i as u64), "byte {i}");
    }
}

/// Both halves busy at once with little socket buffering: the reading half must never wait for
/// the writing half while the writing half waits for the peer, or the two deadlock with an
/// echoing peer.
#[test]
fn echo_with_small_socket_buffers_does_not_deadlock() {
    echo_both_ways(8 << 20, &[64 * 1024], Some(32 * 1024));
}

/// Two full-size records (16 KiB of plaintext each) and then a run of tiny records, all queued
/// in the client's socket before it reads. However the raw reads cut them, every byte must come
/// out of the tunnel, in order.
#[test]
fn records_that_arrive_together_are_all_delivered() {
    const TINY: usize = 100;
    let data = pattern(2 * 16384 + TINY);
    let expected = data.clone();
    let ca = Ca::new("scripted CA");
    let proxy = serve_tls(ca.server_config("localhost"), move |mut tls: TlsStream| {
        read_head(&mut tls);
        tls.write_all(REPLY).unwrap();
        // One record each: 16384, 16384, then 1-byte records.
        tls.write_all(&data[..16384]).unwrap();
        tls.write_all(&data[16384..32768]).unwrap();
        for byte in &data[32768..] {
            tls.write_all(std::slice::from_ref(byte)).unwrap();
        }
        close_tls(tls);
    });
    let mut tunnel = connector(&url(&proxy), trusting(&ca))
        .connect(&target())
        .unwrap();
    bound_reads(tunnel.get_ref());
    // Let everything arrive before the first read.
    thread::sleep(Duration::from_millis(300));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tunnel.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "tunnel read failed after {} of {} bytes: {e}",
                got.len(),
                expected.len()
            ),
        }
    }
    assert!(
        got == expected,
        "{} bytes read, {} expected",
        got.len(),
        expected.len()
    );
    tunnel.close().unwrap();
    proxy.finish();
}

/// The client ends its direction; the server sees the end, then sends its tail and closes; the
/// client reads all of the tail, then a clean EOF.
#[test]
fn half_close_then_server_tail() {
    let tail = pattern(100_000);
    let expected = tail.clone();
    let ca = Ca::new("scripted CA");
    let proxy = serve_tls(ca.server_config("localhost"), move |mut tls: TlsStream| {
        read_head(&mut tls);
        tls.write_all(REPLY).unwrap();
        let got = read_until_close_notify(&mut tls, 1 << 20);
        tls.write_all(&tail).unwrap();
        close_tls(tls);
        got
    });
    let mut tunnel = connector(&url(&proxy), trusting(&ca))
        .connect(&target())
        .unwrap();
    bound_reads(tunnel.get_ref());
    tunnel.write_all(b"last request").unwrap();
    tunnel.shutdown_write().unwrap();
    let got = read_to_eof(&mut tunnel, 1 << 20);
    assert!(got == expected, "tail differs ({} bytes)", got.len());
    // EOF stays EOF.
    assert_eq!(tunnel.read(&mut [0u8; 16]).unwrap(), 0);
    tunnel.close().unwrap();
    assert_eq!(proxy.finish(), b"last request");
}

/// The server side of a failing handshake: drive it until it fails or the client leaves.
fn handshake_fails(mut tls: TlsStream) -> Option<String> {
    let TlsStream { conn, sock } = &mut tls;
    conn.complete_io(sock).err().map(|e| e.to_string())
}

fn assert_tls_error(result: Result<connect_tunnel::Tunnel, Error>) -> io::Error {
    match result {
        Err(Error::Tls { source }) => {
            let e = Error::Tls {
                source: io::Error::new(source.kind(), source.to_string()),
            };
            assert_eq!(e.exit_code(), 3);
            assert_eq!(e.phase(), Phase::Write);
            source
        }
        other => panic!("expected Error::Tls, got {other:?}"),
    }
}

#[test]
fn untrusted_ca_is_a_tls_error() {
    let ca = Ca::new("scripted CA");
    let other = Ca::new("some other CA");
    let proxy = serve_tls(ca.server_config("localhost"), handshake_fails);
    let source = assert_tls_error(connector(&url(&proxy), trusting(&other)).connect(&target()));
    assert!(
        source.to_string().contains("UnknownIssuer"),
        "unexpected reason: {source}"
    );
    assert!(
        proxy.finish().is_some(),
        "the server saw the handshake fail"
    );
}

/// The default trust verifies: the built-in Mozilla roots (feature `webpki-roots`, default), or
/// in a build without them the system's CA bundle (`SYSTEM_CA_BUNDLES`, as curl). Either way a
/// private CA's certificate is refused; a machine with no system bundle refuses to build the
/// connector instead, with an error naming the paths tried.
#[test]
fn default_trust_refuses_a_private_ca() {
    let ca = Ca::new("scripted CA");
    let proxy = serve_tls(ca.server_config("localhost"), handshake_fails);
    let config = Config::default().connect_timeout(CLIENT_TIMEOUT);
    let no_bundle = cfg!(not(feature = "webpki-roots"))
        && !SYSTEM_CA_BUNDLES.iter().any(|p| Path::new(p).is_file());
    let connector = match Connector::new(Proxy::parse(&url(&proxy)).unwrap(), config) {
        Ok(connector) => connector,
        Err(Error::InvalidInput {
            kind: InvalidInput::TlsMaterial,
            what,
            ..
        }) if no_bundle => {
            assert!(what.contains(SYSTEM_CA_BUNDLES[0]), "{what}");
            proxy.assert_no_connection();
            return;
        }
        Err(e) => panic!("connector with the default trust: {e}"),
    };
    assert!(!no_bundle, "built a TLS connector with no trust anchors");
    let source = assert_tls_error(connector.connect(&target()));
    assert!(
        source.to_string().contains("UnknownIssuer"),
        "unexpected reason: {source}"
    );
    assert!(
        proxy.finish().is_some(),
        "the server saw the handshake fail"
    );
}

#[test]
fn wrong_name_is_a_tls_error() {
    let ca = Ca::new("scripted CA");
    let proxy = serve_tls(ca.server_config("other.example"), handshake_fails);
    let source = assert_tls_error(connector(&url(&proxy), trusting(&ca)).connect(&target()));
    assert!(
        source.to_string().contains("not valid for name"),
        "unexpected reason: {source}"
    );
    proxy.finish();
}

#[test]
fn plain_http_server_on_the_tls_port_is_a_tls_error() {
    let ca = Ca::new("scripted CA");
    let proxy = serve(|mut s: TcpStream| {
        let mut hello = [0u8; 5];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(hello[0], 0x16, "a TLS handshake record");
        s.write_all(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\
              This is a plain HTTP port.\n",
        )
        .unwrap();
        let _ = s.shutdown(Shutdown::Write);
        drain_until_closed(&mut s);
    });
    assert_tls_error(connector(&url(&proxy), trusting(&ca)).connect(&target()));
    proxy.finish();
}

#[test]
fn server_closing_during_the_handshake_is_a_tls_error() {
    let ca = Ca::new("scripted CA");
    let proxy = serve(|mut s: TcpStream| {
        // Read the whole ClientHello record (so the close is a FIN, not a reset), then close.
        let mut header = [0u8; 5];
        s.read_exact(&mut header).unwrap();
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        drain_until_closed(&mut s);
    });
    let source = assert_tls_error(connector(&url(&proxy), trusting(&ca)).connect(&target()));
    assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof, "{source}");
    proxy.finish();
}

#[test]
fn stalled_handshake_hits_the_deadline() {
    let ca = Ca::new("scripted CA");
    let proxy = serve(|mut s: TcpStream| {
        // Accept, read the ClientHello, never answer.
        drain_until_closed(&mut s);
    });
    let deadline = Duration::from_secs(1);
    let url = url(&proxy);
    let config = trusting(&ca).connect_timeout(deadline);
    let (result, elapsed) = within(LIMIT, "stalled TLS handshake", move || {
        let connector = connector(&url, config);
        let started = Instant::now();
        let result = connector.connect(&target()).map(drop);
        (result, started.elapsed())
    });
    match &result {
        Err(
            e @ Error::Timeout {
                phase: Phase::Write,
            },
        ) => assert_eq!(e.exit_code(), 7),
        other => panic!("expected Timeout in write, got {other:?}"),
    }
    assert!(
        elapsed < deadline + Duration::from_secs(2),
        "took {elapsed:?}"
    );
    proxy.finish();
}

#[test]
fn verification_off_accepts_the_untrusted_proxy() {
    let ca = Ca::new("scripted CA");
    let other = Ca::new("some other CA");
    let proxy = serve_tls(ca.server_config("other.example"), |mut tls: TlsStream| {
        read_head(&mut tls);
        tls.write_all(&[REPLY, EARLY].concat()).unwrap();
        close_tls(tls);
    });
    let config = trusting(&other).proxy_verify(false);
    let mut tunnel = connector(&url(&proxy), config).connect(&target()).unwrap();
    bound_reads(tunnel.get_ref());
    assert_eq!(read_to_eof(&mut tunnel, 1 << 20), EARLY);
    tunnel.close().unwrap();
    proxy.finish();
}
