//! Interop with a real Squid (`squid-openssl`): plain and TLS listeners, Basic authentication,
//! an allow-list of target ports. The library and the CLI, each scenario with its typed error
//! and exit code. Under `CI=true` a missing Squid fails these tests instead of skipping them.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use connect_tunnel::{Config, Connector, Error, Proxy, Target};
use support::squid::Squid;

const BANNER: &[u8] = b"SSH-2.0-banner-sent-on-accept\r\n";

/// A target that sends `BANNER` on accept, then echoes until the client half-closes.
fn banner_echo_target() -> u16 {
    echo_target(usize::MAX)
}

/// Like [`banner_echo_target`], but closes after echoing `limit` bytes.
fn echo_target(limit: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            thread::spawn(move || {
                let _ = s.write_all(BANNER);
                let mut buf = [0u8; 16384];
                let mut echoed = 0;
                while echoed < limit {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            echoed += n;
                        }
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

fn connector(url: &str, squid: &Squid) -> Connector {
    let config = Config::default()
        .connect_timeout(Duration::from_secs(10))
        .proxy_ca_file(&squid.ca.ca_pem_path);
    Connector::new(Proxy::parse(url).unwrap(), config).unwrap()
}

fn target(port: u16) -> Target {
    Target::parse(&format!("127.0.0.1:{port}")).unwrap()
}

/// Opens a tunnel, checks the banner arrives intact, then echoes a payload through it.
fn assert_tunnel_works(url: &str, squid: &Squid, port: u16) {
    let mut tunnel = connector(url, squid).connect(&target(port)).unwrap();
    tunnel
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut banner = vec![0u8; BANNER.len()];
    tunnel.read_exact(&mut banner).unwrap();
    assert_eq!(banner, BANNER, "banner through {url}");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let (mut reader, mut writer) = tunnel.split();
    let sent = payload.clone();
    let sender = thread::spawn(move || writer.write_all(&sent).map(|()| writer));
    let mut echoed = vec![0u8; payload.len()];
    reader.read_exact(&mut echoed).unwrap();
    assert!(echoed == payload, "echo through {url} differs");
    sender.join().unwrap().unwrap();
}

#[test]
fn tunnel_through_squid_plain_and_tls_with_banner_intact() {
    let port = banner_echo_target();
    let Some(squid) = Squid::start(&[port]) else {
        return;
    };
    assert_tunnel_works(&squid.plain_url(true), &squid, port);
    assert_tunnel_works(&squid.tls_url(true), &squid, port);
}

#[test]
fn squid_refusals_are_typed() {
    let port = banner_echo_target();
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let Some(squid) = Squid::start(&[port]) else {
        return;
    };
    for url in [squid.plain_url(false), squid.tls_url(false)] {
        match connector(&url, &squid).connect(&target(port)) {
            Err(Error::Auth {
                status: 407,
                schemes,
                credentials_sent: false,
            }) => assert!(schemes.iter().any(|s| s == "Basic"), "{schemes:?}"),
            other => panic!("no credentials via {url}: {other:?}"),
        }
        let wrong = url.replacen("://", "://camera:wrong@", 1);
        match connector(&wrong, &squid).connect(&target(port)) {
            Err(Error::Auth {
                status: 407,
                credentials_sent: true,
                ..
            }) => {}
            other => panic!("wrong password via {url}: {other:?}"),
        }
    }
    for url in [squid.plain_url(true), squid.tls_url(true)] {
        match connector(&url, &squid).connect(&target(closed)) {
            Err(e @ Error::Refused { status: 403, .. }) => assert_eq!(e.exit_code(), 5),
            other => panic!("port outside the allow-list via {url}: {other:?}"),
        }
    }
}

#[test]
fn tls_to_squid_is_verified() {
    let port = banner_echo_target();
    let Some(squid) = Squid::start(&[port]) else {
        return;
    };
    // The default trust (webpki roots, or the system CA bundle) does not know the test CA.
    let proxy = Proxy::parse(&squid.tls_url(true)).unwrap();
    let err = Connector::new(proxy, Config::default())
        .unwrap()
        .connect(&target(port))
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 3);
    // Turning verification off explicitly makes it work.
    let proxy = Proxy::parse(&squid.tls_url(true)).unwrap();
    let c = Connector::new(proxy, Config::default().proxy_verify(false)).unwrap();
    let mut tunnel = c.connect(&target(port)).unwrap();
    let mut banner = vec![0u8; BANNER.len()];
    tunnel.read_exact(&mut banner).unwrap();
    assert_eq!(banner, BANNER);
}

/// Runs the CLI with `args`, feeding `input` on stdin; returns (exit code, stdout, stderr).
fn cli(args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_connect-tunnel"))
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = support::wait_child_for(&mut child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    feeder.join().unwrap();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let code = status
        .and_then(|s| s.code())
        .unwrap_or_else(|| panic!("CLI {args:?} hung: {err}"));
    (code, out, err)
}

#[test]
fn cli_through_squid_relays_and_exits_with_documented_codes() {
    let input: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let port = banner_echo_target();
    let closing = echo_target(input.len());
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let Some(squid) = Squid::start(&[port, closing]) else {
        return;
    };
    let t = format!("127.0.0.1:{port}");
    let ca = squid.ca.ca_pem_path.to_str().unwrap().to_owned();
    let mut expected = BANNER.to_vec();
    expected.extend_from_slice(&input);

    // Stdin to the tunnel, the tunnel to stdout. With --no-half-close the end of stdin is not
    // passed on, the target closes after echoing everything, and every byte arrives.
    for url in [squid.plain_url(true), squid.tls_url(true)] {
        let c = format!("127.0.0.1:{closing}");
        let (code, out, err) = cli(
            &["-x", &url, "--proxy-cacert", &ca, "--no-half-close", &c],
            &input,
        );
        assert_eq!(code, 0, "{url}: {err}");
        assert!(
            out == expected,
            "{url}: {} bytes out of {}",
            out.len(),
            expected.len()
        );
    }
    // By default the end of stdin half-closes the tunnel and the CLI exits when the tunnel
    // ends. Squid ends the whole tunnel on a half-close and may drop what was still in flight,
    // so only a prefix of the echo is guaranteed here.
    for url in [squid.plain_url(true), squid.tls_url(true)] {
        let (code, out, err) = cli(&["-x", &url, "--proxy-cacert", &ca, &t], &input);
        assert_eq!(code, 0, "{url}: {err}");
        assert!(
            expected.starts_with(&out),
            "{url}: stdout is not a prefix of what was sent"
        );
    }
    // -U overrides the URL's credentials. (No half-close: the target closes after the echo.)
    let c = format!("127.0.0.1:{closing}");
    let (code, out, err) = cli(
        &[
            "-x",
            &squid.plain_url(false),
            "-U",
            "camera:s3cret pass",
            "--no-half-close",
            &c,
        ],
        &input,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out == expected,
        "-U: {} bytes out of {}",
        out.len(),
        expected.len()
    );

    let (code, _, err) = cli(&["-x", &squid.plain_url(false), &t], b"");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("407"), "{err}");
    let (code, _, err) = cli(
        &["-x", &squid.plain_url(false), "-U", "camera:nope", &t],
        b"",
    );
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = cli(
        &["-x", &squid.plain_url(true), &format!("127.0.0.1:{closed}")],
        b"",
    );
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("403"), "{err}");
    let (code, _, err) = cli(&["-x", &squid.tls_url(true), &t], b"");
    assert_eq!(code, 3, "untrusted certificate: {err}");
    let (code, _, err) = cli(&["-x", &squid.tls_url(true), "--proxy-insecure", &t], b"");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("NOT verified"), "{err}");
}

#[test]
fn cli_forward_mode_through_squid() {
    let port = banner_echo_target();
    let Some(squid) = Squid::start(&[port]) else {
        return;
    };
    let ca = squid.ca.ca_pem_path.to_str().unwrap().to_owned();
    let mut child = Command::new(env!("CARGO_BIN_EXE_connect-tunnel"))
        .args([
            "-x",
            &squid.tls_url(true),
            "--proxy-cacert",
            &ca,
            "-l",
            "127.0.0.1:0",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The CLI announces the address it listens on.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line.strip_prefix("connect-tunnel: listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr: std::net::SocketAddr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("forward mode did not announce its address")
        .parse()
        .unwrap();
    // Two concurrent local connections, one tunnel each.
    let clients: Vec<_> = (0..2u8)
        .map(|k| {
            thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut banner = vec![0u8; BANNER.len()];
                s.read_exact(&mut banner).unwrap();
                assert_eq!(banner, BANNER);
                let msg = vec![k; 50_000];
                s.write_all(&msg).unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).unwrap();
                assert_eq!(back, msg);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    support::stop_child(&mut child, support::SIGINT, Duration::from_secs(5));
}
