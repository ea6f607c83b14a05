//! Reply shapes: every reply a real proxy sends that opens a tunnel does open it, with the stream
//! bytes that follow intact; every refusal becomes its typed error and exit code; and the request
//! the proxy receives is exactly the one documented.

mod scripted;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use connect_tunnel::{
    Config, Credentials, Error, ReplyProblem, Target, Tunnel, DEFAULT_USER_AGENT,
};
use scripted::{
    bound_reads, connector, head_text, read_head, read_to_eof, serve, target, CLIENT_TIMEOUT,
};

/// What the target "says" first, sent by the proxy after its reply head (in a later write).
const BANNER: &[u8] = b"SSH-2.0-OpenSSH_9.6 scripted\r\n";
/// What the client sends once the tunnel is open.
const HELLO: &[u8] = b"SSH-2.0-client\r\n\x00\x01\x02\xff binary too";
/// What the target sends after it read the client's bytes, before it closes.
const BYE: &[u8] = b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\nnot a reply, just stream bytes";

/// What one successful exchange saw on both ends.
struct Exchange {
    /// The request head the proxy received.
    request: Vec<u8>,
    /// Every byte the client read from the tunnel until EOF.
    client_read: Vec<u8>,
}

/// Opens a tunnel through a proxy that answers `reply` (one write), then `BANNER` (a second
/// write); the client sends `HELLO`, the proxy checks it, answers `BYE` and closes.
fn exchange_with(reply: &'static [u8], config: Config) -> Exchange {
    let proxy = serve(move |mut s: TcpStream| {
        let request = read_head(&mut s);
        s.write_all(reply).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        s.write_all(BANNER).unwrap();
        let mut hello = vec![0u8; HELLO.len()];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(hello, HELLO, "client bytes through the tunnel");
        s.write_all(BYE).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // The client closes after reading EOF.
        let rest = read_to_eof(&mut s, 1 << 20);
        assert!(rest.is_empty(), "unexpected client bytes {rest:?}");
        request
    });
    let mut tunnel: Tunnel = connector(&proxy.url(), config)
        .connect(&target())
        .unwrap_or_else(|e| panic!("tunnel through {reply:?}: {e}"));
    bound_reads(tunnel.get_ref());
    tunnel.write_all(HELLO).unwrap();
    let client_read = read_to_eof(&mut tunnel, 1 << 20);
    tunnel.close().expect("close");
    let request = proxy.finish();
    Exchange {
        request,
        client_read,
    }
}

fn exchange(reply: &'static [u8]) -> Exchange {
    exchange_with(reply, Config::default().connect_timeout(CLIENT_TIMEOUT))
}

/// Asserts that `reply` opens the tunnel and that the client reads exactly `tail` (the bytes the
/// reply write carried after its head), then the banner, then the goodbye.
fn assert_opens(reply: &'static [u8], tail: &[u8]) {
    let ex = exchange(reply);
    let expected = [tail, BANNER, BYE].concat();
    assert_eq!(
        ex.client_read,
        expected,
        "stream bytes after {:?}",
        String::from_utf8_lossy(reply)
    );
}

/// Runs a proxy that answers `reply` and returns the client's error.
fn refusal_with(reply: &'static [u8], config: Config) -> Error {
    let proxy = serve(scripted::answer(reply));
    let err = connector(&proxy.url(), config)
        .connect(&target())
        .expect_err("the tunnel must not open");
    proxy.finish();
    err
}

fn refusal(reply: &'static [u8]) -> Error {
    refusal_with(reply, Config::default().connect_timeout(CLIENT_TIMEOUT))
}

#[test]
fn squid_style_200() {
    assert_opens(b"HTTP/1.1 200 Connection established\r\n\r\n", b"");
}

#[test]
fn apache_style_http10_200_with_proxy_agent() {
    assert_opens(
        b"HTTP/1.0 200 Connection Established\r\nProxy-agent: Apache/2.4.58 (Unix)\r\n\r\n",
        b"",
    );
}

#[test]
fn empty_reason_phrase() {
    assert_opens(b"HTTP/1.1 200\r\n\r\n", b"");
    // Status line with the separating space but no reason.
    assert_opens(b"HTTP/1.1 200 \r\n\r\n", b"");
}

#[test]
fn bare_lf_line_endings() {
    assert_opens(b"HTTP/1.1 200 OK\nVia: 1.1 proxy\n\n", b"");
    assert_opens(b"HTTP/1.0 200 Connection established\n\n", b"");
}

#[test]
fn interim_replies_before_the_200_are_skipped() {
    assert_opens(
        b"HTTP/1.1 100 Continue\r\n\r\n\
          HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
          HTTP/1.1 102 Processing\r\n\r\n\
          HTTP/1.1 200 Connection established\r\n\r\n",
        b"",
    );
}

#[test]
fn other_2xx_statuses_open_the_tunnel() {
    assert_opens(b"HTTP/1.1 204 No Content\r\n\r\n", b"");
    assert_opens(b"HTTP/1.1 299 Whatever\r\nX-A: b\r\n\r\n", b"");
}

#[test]
fn content_length_on_a_2xx_is_ignored() {
    // The five bytes are the start of the stream, not a body to skip.
    assert_opens(
        b"HTTP/1.1 200 Connection established\r\nContent-Length: 5\r\n\r\nHELLO",
        b"HELLO",
    );
    // Announced but absent: the next bytes (the banner) are stream bytes, not swallowed.
    assert_opens(
        b"HTTP/1.1 200 Connection established\r\nContent-Length: 5\r\n\r\n",
        b"",
    );
}

#[test]
fn transfer_encoding_chunked_on_a_2xx_is_ignored() {
    assert_opens(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nHELLO\r\n0\r\n\r\n",
        b"5\r\nHELLO\r\n0\r\n\r\n",
    );
}

#[test]
fn auth_407_with_digest_and_basic_challenges() {
    let err = refusal(
        b"HTTP/1.1 407 Proxy Authentication Required\r\n\
          Proxy-Authenticate: Digest realm=\"squid, inc\", nonce=\"abc\", qop=\"auth\", stale=false\r\n\
          Proxy-Authenticate: Basic realm=\"Squid proxy-caching web server\"\r\n\
          Content-Type: text/html\r\nContent-Length: 12\r\n\r\n<html></html>",
    );
    match &err {
        Error::Auth {
            status: 407,
            schemes,
            credentials_sent: false,
        } => assert_eq!(schemes, &["Digest", "Basic"]),
        other => panic!("expected Auth 407, got {other:?}"),
    }
    assert_eq!(err.exit_code(), 4);
}

#[test]
fn auth_407_after_credentials_were_sent() {
    let proxy = serve(scripted::answer(
        b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n",
    ));
    let url = format!("http://user:wrong@{}", proxy.addr());
    let err = connector(&url, Config::default().connect_timeout(CLIENT_TIMEOUT))
        .connect(&target())
        .unwrap_err();
    let request = head_text(&proxy.finish());
    assert!(request.contains("\r\nProxy-Authorization: Basic dXNlcjp3cm9uZw==\r\n"));
    match &err {
        Error::Auth {
            status: 407,
            schemes,
            credentials_sent: true,
        } => assert_eq!(schemes, &["Basic"]),
        other => panic!("expected Auth 407 with credentials sent, got {other:?}"),
    }
    assert_eq!(err.exit_code(), 4);
}

#[test]
fn auth_401_with_www_authenticate() {
    let err = refusal(
        b"HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"tinyproxy\"\r\n\r\n",
    );
    match &err {
        Error::Auth {
            status: 401,
            schemes,
            credentials_sent: false,
        } => assert_eq!(schemes, &["Basic"]),
        other => panic!("expected Auth 401, got {other:?}"),
    }
    assert_eq!(err.exit_code(), 4);
}

#[test]
fn a_401_without_a_challenge_is_a_refusal() {
    let err = refusal(b"HTTP/1.1 401 Unauthorized\r\n\r\n");
    match &err {
        Error::Refused {
            status: 401,
            reason,
        } => assert_eq!(reason, "Unauthorized"),
        other => panic!("expected Refused 401, got {other:?}"),
    }
    assert_eq!(err.exit_code(), 5);
}

#[test]
fn refusals_403_502_503_carry_status_and_reason() {
    let cases: [(&'static [u8], u16, &str); 4] = [
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
            403,
            "Forbidden",
        ),
        (
            b"HTTP/1.1 502 Bad Gateway\r\nX-Squid-Error: ERR_CONNECT_FAIL 111\r\n\r\n<body>",
            502,
            "Bad Gateway",
        ),
        (
            b"HTTP/1.0 503 Service Unavailable\r\n\r\n",
            503,
            "Service Unavailable",
        ),
        (b"HTTP/1.1 503\r\n\r\n", 503, ""),
    ];
    for (reply, want_status, want_reason) in cases {
        let err = refusal(reply);
        match &err {
            Error::Refused { status, reason } => {
                assert_eq!((*status, reason.as_str()), (want_status, want_reason))
            }
            other => panic!("expected Refused {want_status}, got {other:?}"),
        }
        assert_eq!(err.exit_code(), 5);
    }
}

#[test]
fn a_101_is_final_and_refused() {
    let err = refusal(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
    assert!(
        matches!(&err, Error::Refused { status: 101, reason } if reason == "Switching Protocols"),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), 5);
}

#[test]
fn non_http_garbage_is_not_http() {
    for reply in [
        &b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"<html><body>hello</body></html>\r\n\r\n",
    ] {
        let err = refusal(reply);
        assert!(
            matches!(
                err,
                Error::Reply {
                    problem: ReplyProblem::NotHttp
                }
            ),
            "{reply:?} -> {err:?}"
        );
        assert_eq!(err.exit_code(), 6);
    }
}

#[test]
fn request_bytes_default_shape_and_trimmed_custom_header() {
    let config = Config::default()
        .connect_timeout(CLIENT_TIMEOUT)
        .header("X-Device-Id:  cam-0042 ")
        .unwrap();
    let ex = exchange_with(b"HTTP/1.1 200 Connection established\r\n\r\n", config);
    assert_eq!(
        head_text(&ex.request),
        format!(
            "CONNECT target.example:22 HTTP/1.1\r\n\
             Host: target.example:22\r\n\
             User-Agent: {DEFAULT_USER_AGENT}\r\n\
             X-Device-Id: cam-0042\r\n\r\n"
        )
    );
}

#[test]
fn request_bytes_credentials_from_url_and_custom_header() {
    // User "cam@site", password "p@ss:w rd%/é", percent-encoded in the URL.
    let proxy = serve(scripted::answer(
        b"HTTP/1.1 200 Connection established\r\n\r\n",
    ));
    let url = format!(
        "http://cam%40site:p%40ss%3Aw%20rd%25%2F%C3%A9@{}",
        proxy.addr()
    );
    let config = Config::default()
        .connect_timeout(CLIENT_TIMEOUT)
        .header("X-Device-Id: cam-0042")
        .unwrap();
    let tunnel = connector(&url, config).connect(&target()).unwrap();
    tunnel.close().unwrap();
    assert_eq!(
        head_text(&proxy.finish()),
        format!(
            "CONNECT target.example:22 HTTP/1.1\r\n\
             Host: target.example:22\r\n\
             Proxy-Authorization: Basic Y2FtQHNpdGU6cEBzczp3IHJkJS/DqQ==\r\n\
             User-Agent: {DEFAULT_USER_AGENT}\r\n\
             X-Device-Id: cam-0042\r\n\r\n"
        )
    );
}

#[test]
fn request_bytes_ipv6_target_config_credentials_no_user_agent() {
    let proxy = serve(scripted::answer(b"HTTP/1.1 200 OK\r\n\r\n"));
    // Config credentials win over the URL's; no User-Agent; a Host override.
    let url = format!("http://url-user:url-pass@{}", proxy.addr());
    let config = Config::default()
        .connect_timeout(CLIENT_TIMEOUT)
        .user_agent(None)
        .credentials(Some(Credentials::new("Aladdin", "open sesame").unwrap()))
        .header("Host: media.example.com")
        .unwrap()
        .header("X-Empty:")
        .unwrap();
    let t = Target::parse("[2001:db8::7]:5004").unwrap();
    connector(&url, config)
        .connect(&t)
        .unwrap()
        .close()
        .unwrap();
    assert_eq!(
        head_text(&proxy.finish()),
        "CONNECT [2001:db8::7]:5004 HTTP/1.1\r\n\
         Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\
         Host: media.example.com\r\n\
         X-Empty: \r\n\r\n"
    );
}

#[test]
fn refusal_reason_is_capped() {
    let proxy = serve(|mut s: TcpStream| {
        read_head(&mut s);
        let reply = format!("HTTP/1.1 403 {}\r\n\r\n", "x".repeat(1000));
        s.write_all(reply.as_bytes()).unwrap();
        scripted::drain_until_closed(&mut s);
    });
    let err = proxy.connector().connect(&target()).unwrap_err();
    proxy.finish();
    match err {
        Error::Refused {
            status: 403,
            reason,
        } => assert_eq!(reason, "x".repeat(128)),
        other => panic!("{other:?}"),
    }
}

/// The documented exit codes, one error of each kind: 2 invalid input, 3 proxy unreachable,
/// 4 authentication, 5 other non-2xx, 6 invalid reply, 7 deadline passed.
#[test]
fn exit_codes_follow_the_documented_table() {
    let invalid = Target::parse("no-port").unwrap_err();
    let unreachable = {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        connector(
            &format!("http://127.0.0.1:{port}"),
            Config::default().connect_timeout(CLIENT_TIMEOUT),
        )
        .connect(&target())
        .unwrap_err()
    };
    let auth = refusal(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
    let refused = refusal(b"HTTP/1.1 403 Forbidden\r\n\r\n");
    let garbage = refusal(b"SSH-2.0-OpenSSH_9.6\r\n");
    let deadline = {
        let proxy = serve(|mut s: TcpStream| {
            read_head(&mut s);
            scripted::drain_until_closed(&mut s);
        });
        let config = Config::default().connect_timeout(Duration::from_millis(500));
        let err = proxy.connector_with(config).connect(&target()).unwrap_err();
        proxy.finish();
        err
    };
    let table = [
        (&invalid, 2),
        (&unreachable, 3),
        (&auth, 4),
        (&refused, 5),
        (&garbage, 6),
        (&deadline, 7),
    ];
    for (err, code) in table {
        assert_eq!(err.exit_code(), code, "{err:?}");
    }
    assert!(matches!(invalid, Error::InvalidInput { .. }));
    assert!(matches!(unreachable, Error::Connect { .. }));
    assert!(matches!(auth, Error::Auth { status: 407, .. }));
    assert!(matches!(refused, Error::Refused { status: 403, .. }));
    assert!(matches!(
        garbage,
        Error::Reply {
            problem: ReplyProblem::NotHttp
        }
    ));
    assert!(matches!(deadline, Error::Timeout { .. }));
}
