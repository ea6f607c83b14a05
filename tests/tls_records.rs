//! How the reading side of a TLS tunnel hands out records (a scripted rustls proxy): records
//! already received come out of one read together, and a TLS failure that follows data is
//! reported only after every byte before it was delivered.

mod scripted;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use connect_tunnel::Config;
use scripted::tls::{serve_tls, url, Ca, TlsStream};
use scripted::{bound_reads, connector, drain_until_closed, pattern, read_head, target};

const REPLY: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
/// Plaintext of one full TLS record.
const RECORD: usize = 16384;

fn trusting(ca: &Ca) -> Config {
    Config::default()
        .connect_timeout(scripted::CLIENT_TIMEOUT)
        .proxy_ca_pem(ca.pem.clone())
}

/// Four full records wait in the client's socket: one 64 KiB read returns more than one of
/// them (one record per read would be four times the calls for a bulk stream), and all of them
/// arrive intact and in order.
#[test]
fn one_read_returns_several_records_already_received() {
    let data = pattern(4 * RECORD);
    let expected = data.clone();
    let ca = Ca::new("scripted CA");
    let proxy = serve_tls(ca.server_config("localhost"), move |mut tls: TlsStream| {
        read_head(&mut tls);
        tls.write_all(REPLY).unwrap();
        for record in data.chunks(RECORD) {
            tls.write_all(record).unwrap();
        }
        tls.conn.send_close_notify();
        let _ = tls.flush();
        let _ = tls.sock.shutdown(Shutdown::Write);
        drain_until_closed(&mut tls.sock);
    });
    let mut tunnel = connector(&url(&proxy), trusting(&ca))
        .connect(&target())
        .unwrap();
    bound_reads(tunnel.get_ref());
    // Let all four records arrive before the first read.
    thread::sleep(Duration::from_millis(300));
    let mut buf = vec![0u8; 4 * RECORD];
    let mut sizes = Vec::new();
    let mut got = Vec::new();
    loop {
        match tunnel.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                sizes.push(n);
                got.extend_from_slice(&buf[..n]);
            }
            Err(e) => panic!("read failed after {} bytes: {e}", got.len()),
        }
    }
    assert!(
        got == expected,
        "{} bytes, {} expected",
        got.len(),
        4 * RECORD
    );
    // The first read may return only what came in with the reply (the rest of the reply
    // buffer); after that, one read takes in what is waiting.
    assert!(
        sizes.iter().any(|&n| n > RECORD),
        "no read returned more than one record; read sizes {sizes:?}"
    );
    tunnel.close().unwrap();
    proxy.finish();
}

/// Three records of data, then a forged record that cannot be decrypted, all in the client's
/// socket at once: every byte of the three records comes out first, then the failure, as
/// `InvalidData`, and no end-of-stream before it.
#[test]
fn failure_after_data_comes_after_every_byte_of_it() {
    let data = pattern(3 * RECORD);
    let expected = data.clone();
    let ca = Ca::new("scripted CA");
    let proxy = serve_tls(ca.server_config("localhost"), move |mut tls: TlsStream| {
        read_head(&mut tls);
        tls.write_all(REPLY).unwrap();
        for record in data.chunks(RECORD) {
            tls.write_all(record).unwrap();
        }
        tls.flush().unwrap();
        // An application-data record of 32 bytes that no key encrypted.
        let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        forged.extend_from_slice(&[0x5a; 32]);
        tls.sock.write_all(&forged).unwrap();
        drain_until_closed(&mut tls.sock);
    });
    let mut tunnel = connector(&url(&proxy), trusting(&ca))
        .connect(&target())
        .unwrap();
    bound_reads(tunnel.get_ref());
    thread::sleep(Duration::from_millis(300));
    let mut buf = vec![0u8; 4 * RECORD];
    let mut got = Vec::new();
    let failure = loop {
        match tunnel.read(&mut buf) {
            Ok(0) => panic!(
                "end of stream instead of a TLS failure, after {} bytes",
                got.len()
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert!(
        got == expected,
        "{} bytes before the failure, {} expected",
        got.len(),
        3 * RECORD
    );
    assert_eq!(failure.kind(), io::ErrorKind::InvalidData, "{failure}");
    drop(tunnel);
    proxy.finish();
}
