//! Early data: the target's first bytes arrive in the same write (the same TCP segment) as the
//! proxy's `200` head. They must be the first bytes the tunnel yields, intact, whichever way the
//! tunnel is used: `Read` on the `Tunnel`, the handler style (`Connector::run`), or the reader
//! half of `split()`.

mod scripted;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use connect_tunnel::{Tunnel, REPLY_HEAD_CAPACITY};
use scripted::{bound_reads, pattern, read_head, read_to_eof, serve, target, within};

const HEAD: &[u8] = b"HTTP/1.1 200 Connection established\r\nProxy-agent: scripted\r\n\r\n";
const EARLY: &[u8] = b"SSH-2.0-OpenSSH_9.6\r\n";
const LATER: &[u8] = b"\x00\x00\x01\x0c\x0a\x14 key exchange init, sent later";
const HELLO: &[u8] = b"SSH-2.0-client\r\n";

/// A proxy that writes `HEAD` + `early` with ONE write call, waits for the client's `HELLO`,
/// then sends `later` and closes its sending side. Returns what the client sent.
fn proxy_with_early(early: &'static [u8], later: &'static [u8]) -> scripted::Scripted<Vec<u8>> {
    serve(move |mut s: TcpStream| {
        read_head(&mut s);
        let first = [HEAD, early].concat();
        // One write: with TCP_NODELAY on loopback this is one segment.
        assert_eq!(s.write(&first).unwrap(), first.len(), "one write");
        let mut hello = vec![0u8; HELLO.len()];
        s.read_exact(&mut hello).unwrap();
        s.write_all(later).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let rest = read_to_eof(&mut s, 1 << 20);
        [hello, rest].concat()
    })
}

#[test]
fn early_bytes_are_the_first_bytes_read_from_the_tunnel() {
    let proxy = proxy_with_early(EARLY, LATER);
    let mut tunnel = proxy.connector().connect(&target()).unwrap();
    bound_reads(tunnel.get_ref());
    // The very first read returns exactly the early bytes (they are already buffered).
    let mut buf = [0u8; 4096];
    let n = tunnel.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], EARLY);
    tunnel.write_all(HELLO).unwrap();
    assert_eq!(read_to_eof(&mut tunnel, 1 << 20), LATER);
    tunnel.close().unwrap();
    assert_eq!(proxy.finish(), HELLO);
}

#[test]
fn early_bytes_survive_tiny_reads() {
    let proxy = proxy_with_early(EARLY, LATER);
    let mut tunnel = proxy.connector().connect(&target()).unwrap();
    bound_reads(tunnel.get_ref());
    let mut got = Vec::new();
    let mut one = [0u8; 1];
    while got.len() < EARLY.len() {
        assert_eq!(tunnel.read(&mut one).unwrap(), 1);
        got.push(one[0]);
    }
    assert_eq!(got, EARLY);
    tunnel.write_all(HELLO).unwrap();
    assert_eq!(read_to_eof(&mut tunnel, 1 << 20), LATER);
    tunnel.close().unwrap();
    assert_eq!(proxy.finish(), HELLO);
}

#[test]
fn early_bytes_reach_the_handler_first() {
    let proxy = proxy_with_early(EARLY, LATER);
    let connector = proxy.connector();
    let mut seen = Vec::new();
    let mut handler = |tunnel: &mut Tunnel| -> io::Result<()> {
        bound_reads(tunnel.get_ref());
        let mut first = vec![0u8; EARLY.len()];
        tunnel.read_exact(&mut first)?;
        seen.push(first);
        tunnel.write_all(HELLO)?;
        let mut rest = Vec::new();
        tunnel.read_to_end(&mut rest)?;
        seen.push(rest);
        Ok(())
    };
    connector.run(&target(), &mut handler).unwrap();
    assert_eq!(seen, [EARLY.to_vec(), LATER.to_vec()]);
    assert_eq!(proxy.finish(), HELLO);
}

#[test]
fn early_bytes_come_first_from_the_split_reader() {
    let proxy = proxy_with_early(EARLY, LATER);
    let tunnel = proxy.connector().connect(&target()).unwrap();
    bound_reads(tunnel.get_ref());
    let (mut reader, mut writer) = tunnel.split();
    assert_eq!(reader.buffered(), EARLY, "the tail kept with the reply");
    let reading = thread::spawn(move || read_to_eof(&mut reader, 1 << 20));
    writer.write_all(HELLO).unwrap();
    let got = within(Duration::from_secs(30), "split reader", move || {
        reading.join().unwrap()
    });
    assert_eq!(got, [EARLY, LATER].concat());
    writer.shutdown_write().unwrap();
    assert_eq!(proxy.finish(), HELLO);
}

#[test]
fn early_bytes_after_interim_replies_in_the_same_write() {
    const REPLY: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nEARLY";
    let proxy = serve(|mut s: TcpStream| {
        read_head(&mut s);
        s.write_all(REPLY).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        scripted::drain_until_closed(&mut s);
    });
    let mut tunnel = proxy.connector().connect(&target()).unwrap();
    bound_reads(tunnel.get_ref());
    assert_eq!(read_to_eof(&mut tunnel, 1 << 20), b"EARLY");
    tunnel.close().unwrap();
    proxy.finish();
}

/// A large tail: 6 KiB right behind the head, within the 8 KiB reply buffer, then 64 KiB more.
#[test]
fn large_early_tail_then_more_data() {
    let data = pattern(6 * 1024 + 64 * 1024);
    let (early, more) = data.split_at(6 * 1024);
    assert!(HEAD.len() + early.len() < REPLY_HEAD_CAPACITY);
    let (early, more) = (early.to_vec(), more.to_vec());
    let proxy = serve(move |mut s: TcpStream| {
        read_head(&mut s);
        s.write_all(&[HEAD, &early].concat()).unwrap();
        thread::sleep(Duration::from_millis(20));
        s.write_all(&more).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        scripted::drain_until_closed(&mut s);
    });
    let tunnel = proxy.connector().connect(&target()).unwrap();
    bound_reads(tunnel.get_ref());
    let (mut reader, writer) = tunnel.split();
    // Whatever came with the head is a prefix of the early tail (all of it, on loopback).
    let buffered = reader.buffered().to_vec();
    assert!(
        data.starts_with(&buffered),
        "buffered bytes are stream bytes"
    );
    let got = read_to_eof(&mut reader, 1 << 20);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "stream bytes differ");
    drop((reader, writer));
    proxy.finish();
}

/// A tail longer than the reply buffer: the buffer holds what fits, the socket the rest.
#[test]
fn early_tail_larger_than_the_reply_buffer() {
    let data = pattern(3 * REPLY_HEAD_CAPACITY);
    let first = [HEAD, &data].concat();
    let proxy = serve(move |mut s: TcpStream| {
        read_head(&mut s);
        s.write_all(&first).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        scripted::drain_until_closed(&mut s);
    });
    let mut tunnel = proxy.connector().connect(&target()).unwrap();
    bound_reads(tunnel.get_ref());
    let got = read_to_eof(&mut tunnel, 1 << 20);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "stream bytes differ");
    tunnel.close().unwrap();
    proxy.finish();
}
