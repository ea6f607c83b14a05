//! An expired proxy certificate is refused like any other bad certificate: `Error::Tls`,
//! exit code 3, with the reason in the message — library and CLI.

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use connect_tunnel::{Config, Connector, Error, Proxy, Target};
use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A TLS "proxy" on loopback whose certificate for `localhost` expired in 2021; returns its
/// port and the CA (PEM) that signed it.
fn expired_proxy() -> (u16, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            let config = config.clone();
            thread::spawn(move || {
                let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let _ = tls.read(&mut [0u8; 64]);
            });
        }
    });
    (port, ca.pem())
}

#[test]
fn expired_certificate_is_a_tls_error_exit_3() {
    let (port, ca_pem) = expired_proxy();
    let proxy = Proxy::parse(&format!("https://localhost:{port}")).unwrap();
    let config = Config::default()
        .proxy_ca_pem(ca_pem.clone())
        .connect_timeout(Duration::from_secs(10));
    let err = Connector::new(proxy, config)
        .unwrap()
        .connect(&Target::parse("media.example.com:443").unwrap())
        .unwrap_err();
    match &err {
        Error::Tls { source } => assert!(
            source.to_string().contains("certificate expired"),
            "{source}"
        ),
        other => panic!("expected Error::Tls, got {other:?}"),
    }
    assert_eq!(err.exit_code(), 3);

    let dir = std::env::temp_dir().join(format!("ct-expired-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_connect-tunnel"))
        .args(["-x", &format!("https://localhost:{port}"), "--proxy-cacert"])
        .arg(&ca_path)
        .args(["--connect-timeout", "10", "media.example.com:443"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("certificate expired"), "{stderr}");
}
