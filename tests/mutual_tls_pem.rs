//! Mutual TLS with a device certificate held in memory (as read from secure storage), against
//! a real Squid that requires client certificates; and a certificate from another CA refused.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use connect_tunnel::{Config, Connector, Error, Proxy, Target};
use support::squid::{Squid, SquidOptions};
use support::TestCa;

#[test]
fn device_certificate_from_memory() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"hello camera\n");
        }
    });
    let mut options = SquidOptions::new(&[port]);
    options.require_client_cert = true;
    let Some(squid) = Squid::start_with(options) else {
        return;
    };
    let device = squid.ca.client_cert("camera-0042");
    let connect = |cert: &str, key: &str| {
        let config = Config::default()
            .connect_timeout(Duration::from_secs(10))
            .proxy_ca_pem(squid.ca.ca_pem.clone())
            .proxy_client_cert_pem(cert.as_bytes().to_vec(), key.as_bytes().to_vec());
        Connector::new(Proxy::parse(&squid.tls_url(true)).unwrap(), config)
            .unwrap()
            .connect(&Target::parse(&format!("127.0.0.1:{port}")).unwrap())
    };
    let mut tunnel = connect(&device.cert_pem, &device.key_pem).unwrap();
    tunnel
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = [0u8; 13];
    tunnel.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"hello camera\n");

    // A certificate the proxy's CA did not sign: refused as a TLS failure, exit 3.
    let stranger = TestCa::new().client_cert("stranger");
    match connect(&stranger.cert_pem, &stranger.key_pem) {
        Err(e @ Error::Tls { .. }) => assert_eq!(e.exit_code(), 3),
        other => panic!("a foreign client certificate was not refused: {other:?}"),
    }

    // Garbage instead of PEM is an input error before any connection.
    let err = Connector::new(
        Proxy::parse(&squid.tls_url(true)).unwrap(),
        Config::default().proxy_client_cert_pem(b"not pem".to_vec(), b"nor this".to_vec()),
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
}
