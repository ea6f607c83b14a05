//! TLS end to end to the target inside the tunnel, through a real Squid: over its plain
//! listener (TLS inside TCP) and its TLS listener (TLS inside TLS). The target's certificate is
//! verified against the target's own name; each failure is `Error::TargetTls`, exit code 3.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use connect_tunnel::{Config, Connector, Error, Proxy, Target};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::squid::Squid;

const BANNER: &[u8] = b"220 tls-target ready\r\n";

/// A CA and a server certificate for `names`, as (CA PEM, server chain DER, key DER).
fn ca_and_cert(names: &[&str]) -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (ca.pem(), cert.der().clone(), key)
}

/// A TLS target: banner on accept, then echo until the client ends its side.
fn tls_echo_target(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> u16 {
    tls_echo_target_closing(cert, key, usize::MAX)
}

/// Like [`tls_echo_target`], but ends the stream (close_notify) after echoing `limit` bytes.
fn tls_echo_target_closing(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    limit: usize,
) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(sock) = conn else { continue };
            let config = config.clone();
            thread::spawn(move || {
                let _ = sock.set_read_timeout(Some(Duration::from_secs(20)));
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                if tls.write_all(BANNER).and_then(|()| tls.flush()).is_err() {
                    return;
                }
                let mut buf = [0u8; 16384];
                let mut echoed = 0;
                while echoed < limit {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                                break;
                            }
                            echoed += n;
                        }
                    }
                }
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

/// A plain target that does not speak TLS.
fn plain_target() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"SSH-2.0-not-tls\r\n");
        }
    });
    port
}

fn target(port: u16) -> Target {
    Target::parse(&format!("127.0.0.1:{port}")).unwrap()
}

#[test]
fn tls_to_the_target_through_squid_plain_and_tls() {
    let (ca_pem, cert, key) = ca_and_cert(&["127.0.0.1"]);
    let port = tls_echo_target(cert, key);
    let Some(squid) = Squid::start(&[port]) else {
        return;
    };
    for url in [squid.plain_url(true), squid.tls_url(true)] {
        let config = Config::default()
            .connect_timeout(Duration::from_secs(10))
            .proxy_ca_file(&squid.ca.ca_pem_path)
            .target_ca_pem(ca_pem.clone());
        let connector = Connector::new(Proxy::parse(&url).unwrap(), config).unwrap();
        let mut tunnel = connector.connect(&target(port)).unwrap();
        assert!(tunnel.is_target_tls());
        assert_eq!(tunnel.is_tls(), url.starts_with("https"));
        tunnel
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut banner = vec![0u8; BANNER.len()];
        tunnel.read_exact(&mut banner).unwrap();
        assert_eq!(banner, BANNER, "via {url}");
        // Both directions at once, through two TLS layers when the proxy hop is TLS.
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 31 + i / 97) as u8).collect();
        let (mut reader, mut writer) = tunnel.split();
        let sent = payload.clone();
        let sender = thread::spawn(move || writer.write_all(&sent).map(|()| writer));
        let mut echoed = vec![0u8; payload.len()];
        reader.read_exact(&mut echoed).unwrap();
        assert!(echoed == payload, "echo via {url} differs");
        // Half-close: close_notify to the target, whose echo loop then ends and closes.
        let mut writer = sender.join().unwrap().unwrap();
        writer.shutdown_write().unwrap();
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
        assert!(
            rest.is_empty(),
            "unexpected bytes after the echo: {}",
            rest.len()
        );
    }
}

#[test]
fn target_certificate_failures_are_typed_exit_3() {
    let (ca_pem, cert, key) = ca_and_cert(&["127.0.0.1"]);
    let good = tls_echo_target(cert, key);
    let (other_ca, cert, key) = ca_and_cert(&["other.example"]);
    let wrong_name = tls_echo_target(cert, key);
    let plain = plain_target();
    let Some(squid) = Squid::start(&[good, wrong_name, plain]) else {
        return;
    };
    let connect = |config: Config, port: u16| {
        let config = config
            .connect_timeout(Duration::from_secs(10))
            .proxy_ca_file(&squid.ca.ca_pem_path);
        Connector::new(Proxy::parse(&squid.tls_url(true)).unwrap(), config)
            .unwrap()
            .connect(&target(port))
    };
    let cases = [
        (
            "untrusted (default trust)",
            Config::default().target_tls(true),
            good,
        ),
        (
            "wrong name",
            Config::default().target_ca_pem(other_ca.clone()),
            wrong_name,
        ),
        (
            "target does not speak TLS",
            Config::default().target_ca_pem(ca_pem.clone()),
            plain,
        ),
    ];
    for (what, config, port) in cases {
        match connect(config, port) {
            Err(e @ Error::TargetTls { .. }) => assert_eq!(e.exit_code(), 3, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // Verification off, explicitly: the wrong name is accepted.
    let mut t = connect(Config::default().target_verify(false), wrong_name).unwrap();
    let mut banner = vec![0u8; BANNER.len()];
    t.read_exact(&mut banner).unwrap();
    assert_eq!(banner, BANNER);
}

#[test]
fn cli_tls_to_the_target() {
    const PING: &[u8] = b"ping over two TLS layers\n";
    let (ca_pem, cert, key) = ca_and_cert(&["127.0.0.1"]);
    let port = tls_echo_target_closing(cert, key, PING.len());
    let Some(squid) = Squid::start(&[port]) else {
        return;
    };
    let dir = support::TempDir::new("target-ca");
    let ca_path = dir.join("target-ca.pem");
    support::write_file(&ca_path, &ca_pem, 0o644);
    let run = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_connect-tunnel"))
            .args(["-x", &squid.tls_url(true), "--proxy-cacert"])
            .arg(&squid.ca.ca_pem_path)
            .args(extra)
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The target ends the stream after echoing PING; stdin stays open until then, so no
        // half-close reaches Squid (which would end the tunnel early).
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(PING).unwrap();
        let status =
            support::wait_child_for(&mut child, Duration::from_secs(30)).expect("CLI hung");
        drop(stdin);
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code(), out, err)
    };
    let (code, out, err) = run(&["--cacert", ca_path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, [BANNER, PING].concat());
    let (code, _, err) = run(&["--tls"]);
    assert_eq!(code, Some(3), "untrusted target certificate: {err}");
    assert!(err.contains("TLS to the target failed"), "{err}");
}
