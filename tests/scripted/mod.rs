//! Scripted loopback proxies for the integration tests: a listener on `127.0.0.1:0` whose one
//! accepted connection is handed to a script (a closure) on its own thread. The script reads the
//! CONNECT head and answers with exactly the bytes the test chooses, then does whatever the
//! scenario needs (echo, sink, dribble, reset, ...).
//!
//! Include with `mod scripted;`. Rules kept here, because tests share a noisy 2-core machine:
//! - ports are ephemeral (`bind 127.0.0.1:0`), never fixed;
//! - every wait is bounded: the accept window, the server's socket timeouts, joining the script
//!   ([`Scripted::finish`]) and running client calls ([`within`]);
//! - a script's panic is carried to the test thread by [`Scripted::finish`].
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use connect_tunnel::{Config, Connector, Proxy, Target};

/// How long a scripted proxy waits for its connection.
pub const ACCEPT_WINDOW: Duration = Duration::from_secs(30);
/// Read and write timeouts on the proxy's side of the connection: a script never blocks longer.
pub const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Scripted::finish`] waits for the script to end.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The client's connect deadline in tests that expect success: generous for a noisy machine.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Read timeout put on a tunnel's socket by [`bound_reads`], so a test never hangs on a read.
pub const TUNNEL_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest request head a script accepts.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// The target every test asks the proxy for.
pub const TARGET: &str = "target.example:22";

/// A scripted proxy: one listener, one connection, one script.
pub struct Scripted<T> {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    done: mpsc::Receiver<thread::Result<Option<T>>>,
}

/// Starts a scripted plain-TCP proxy. The accepted socket is blocking, has `TCP_NODELAY` on (so
/// each write the script makes leaves as its own segment) and [`SERVER_IO_TIMEOUT`] timeouts.
pub fn serve<T, F>(script: F) -> Scripted<T>
where
    T: Send + 'static,
    F: FnOnce(TcpStream) -> T + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted proxy");
    let addr = listener.local_addr().expect("local addr");
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, done) = mpsc::channel();
    let (stop2, accepted2) = (stop.clone(), accepted.clone());
    thread::Builder::new()
        .name(format!("scripted-proxy-{}", addr.port()))
        .spawn(move || {
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                let stream = accept_one(&listener, &stop2)?;
                drop(listener);
                accepted2.fetch_add(1, Ordering::SeqCst);
                stream.set_nonblocking(false).expect("blocking stream");
                stream.set_nodelay(true).expect("nodelay");
                stream
                    .set_read_timeout(Some(SERVER_IO_TIMEOUT))
                    .expect("read timeout");
                stream
                    .set_write_timeout(Some(SERVER_IO_TIMEOUT))
                    .expect("write timeout");
                Some(script(stream))
            }));
            let _ = tx.send(result);
        })
        .expect("spawn scripted proxy");
    Scripted {
        addr,
        stop,
        accepted,
        done,
    }
}

/// Accepts one connection within [`ACCEPT_WINDOW`], or none once `stop` is set. The flag is read
/// before each accept, so a connection already queued when `stop` was set is still counted.
fn accept_one(listener: &TcpListener, stop: &AtomicBool) -> Option<TcpStream> {
    let until = Instant::now() + ACCEPT_WINDOW;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        match listener.accept() {
            Ok((stream, _)) => return Some(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stopping || Instant::now() >= until {
                    return None;
                }
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("accept: {e}"),
        }
    }
}

impl<T> Scripted<T> {
    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connector for this proxy with [`CLIENT_TIMEOUT`].
    pub fn connector(&self) -> Connector {
        connector(
            &self.url(),
            Config::default().connect_timeout(CLIENT_TIMEOUT),
        )
    }

    /// A connector for this proxy with `config`.
    pub fn connector_with(&self, config: Config) -> Connector {
        connector(&self.url(), config)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits (bounded) for the script to end and returns its result; re-raises its panic.
    pub fn finish(self) -> T {
        match self.wait() {
            Some(v) => v,
            None => panic!("scripted proxy at {} accepted no connection", self.addr),
        }
    }

    /// Stops listening and asserts that no connection ever reached the listener.
    pub fn assert_no_connection(self) {
        self.stop.store(true, Ordering::SeqCst);
        let addr = self.addr;
        assert!(
            self.wait().is_none(),
            "a connection reached the scripted proxy at {addr}"
        );
    }

    fn wait(&self) -> Option<T> {
        match self.done.recv_timeout(JOIN_TIMEOUT) {
            Ok(Ok(v)) => v,
            Ok(Err(p)) => panic::resume_unwind(p),
            Err(_) => panic!(
                "scripted proxy at {} still running after {JOIN_TIMEOUT:?}",
                self.addr
            ),
        }
    }
}

impl<T> Drop for Scripted<T> {
    fn drop(&mut self) {
        // A test that failed early must not leave the accept loop running for its window.
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A connector for `url` with `config`.
pub fn connector(url: &str, config: Config) -> Connector {
    Connector::new(Proxy::parse(url).expect("proxy url"), config).expect("connector")
}

/// The [`TARGET`] every test asks for.
pub fn target() -> Target {
    Target::parse(TARGET).expect("target")
}

/// Runs `f` on its own thread and waits at most `limit` for it: a client call that hangs fails
/// the test instead of hanging it. Panics in `f` are re-raised.
pub fn within<T, F>(limit: Duration, what: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(format!("within: {what}"))
        .spawn(move || {
            let _ = tx.send(panic::catch_unwind(AssertUnwindSafe(f)));
        })
        .expect("spawn");
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => panic::resume_unwind(p),
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// Reads one request head (through the blank line) a byte at a time, so no byte after it is
/// consumed. Panics on EOF or on a head longer than [`MAX_REQUEST_HEAD`].
pub fn read_head(stream: &mut impl Read) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < MAX_REQUEST_HEAD, "request head too long");
        match stream.read(&mut byte) {
            Ok(0) => panic!(
                "client closed before the end of its request head: {:?}",
                String::from_utf8_lossy(&head)
            ),
            Ok(_) => head.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the request head: {e}"),
        }
    }
    head
}

/// The request head as text.
pub fn head_text(head: &[u8]) -> String {
    String::from_utf8(head.to_vec()).expect("request head is UTF-8")
}

/// Reads until EOF (bounded by the stream's timeouts and by `limit` bytes). An error after some
/// bytes ends the read too; the bytes so far are returned with it.
pub fn read_until_eof(stream: &mut impl Read, limit: usize) -> (Vec<u8>, Option<io::Error>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                assert!(out.len() <= limit, "more than {limit} bytes before EOF");
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (out, Some(e)),
        }
    }
}

/// Reads until EOF and panics on an error.
pub fn read_to_eof(stream: &mut impl Read, limit: usize) -> Vec<u8> {
    match read_until_eof(stream, limit) {
        (out, None) => out,
        (out, Some(e)) => panic!("read error after {} bytes: {e}", out.len()),
    }
}

/// Sets [`TUNNEL_READ_TIMEOUT`] on a tunnel's socket so that no read in a test blocks forever.
pub fn bound_reads(sock: &TcpStream) {
    sock.set_read_timeout(Some(TUNNEL_READ_TIMEOUT))
        .expect("read timeout");
    sock.set_write_timeout(Some(TUNNEL_READ_TIMEOUT))
        .expect("write timeout");
}

/// Keeps the connection open until the client closes it (or the server timeouts pass), reading
/// and discarding whatever arrives. Returns the bytes discarded.
pub fn drain_until_closed(stream: &mut impl Read) -> usize {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

/// The answer most scripts give: read the head, write `reply` in one write, then keep the
/// connection open until the client closes it. Returns the request head.
pub fn answer(reply: &'static [u8]) -> impl FnOnce(TcpStream) -> Vec<u8> + Send + 'static {
    move |mut s: TcpStream| {
        let head = read_head(&mut s);
        s.write_all(reply).expect("write reply");
        drain_until_closed(&mut s);
        head
    }
}

/// Bytes `0, 1, 2, ...` of a pattern with a prime period, so a shifted or repeated chunk never
/// matches by accident: byte `i` is [`pattern_byte`]`(i)`.
///
/// The pattern repeats every `251 * 7` bytes, so one period is computed and then copied. A
/// 64-bit `%` and `/` per byte (software division on 32-bit ARM) took ~13 s for 8 MiB,
/// unoptimised under qemu-arm.
pub fn pattern(len: usize) -> Vec<u8> {
    const PERIOD: usize = 251 * 7;
    let period: Vec<u8> = (0..PERIOD as u64).map(pattern_byte).collect();
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(PERIOD);
        out.extend_from_slice(&period[..n]);
    }
    out
}

/// Byte `i` of [`pattern`].
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8 ^ ((i / 251) % 7) as u8
}

/// Writes `bytes` in the given cut points, flushing and pausing after each piece. Stops at the
/// first error (a client that has seen enough may close early) and returns it.
pub fn write_in_pieces(
    stream: &mut TcpStream,
    bytes: &[u8],
    cuts: &[usize],
    pause: Duration,
) -> io::Result<()> {
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        if cut > start {
            stream.write_all(&bytes[start..cut])?;
            stream.flush()?;
            thread::sleep(pause);
            start = cut;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

pub mod tls {
    //! A throw-away PKI (rcgen) and a scripted TLS proxy (rustls `ServerConnection`).

    use std::net::TcpStream;
    use std::sync::Arc;

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ServerConfig, ServerConnection, StreamOwned};

    use super::{serve, Scripted};

    /// The TLS stream a TLS script gets.
    pub type TlsStream = StreamOwned<ServerConnection, TcpStream>;

    /// A CA and the server configurations made with it.
    pub struct Ca {
        /// The CA certificate, PEM: what a client trusts.
        pub pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        /// A fresh CA.
        pub fn new(name: &str) -> Ca {
            let key = KeyPair::generate().expect("CA key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key).expect("self-sign CA");
            Ca {
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A rustls server configuration whose certificate, signed by this CA, names `dns_name`.
        pub fn server_config(&self, dns_name: &str) -> Arc<ServerConfig> {
            let mut params =
                CertificateParams::new(vec![dns_name.to_owned()]).expect("server params");
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, dns_name);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate().expect("server key");
            let cert = params.signed_by(&key, &self.issuer).expect("sign server");
            let chain = vec![CertificateDer::from(cert.der().to_vec())];
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("server cert");
            Arc::new(config)
        }
    }

    /// Starts a scripted TLS proxy: the script gets the TLS stream before the handshake (it
    /// completes on the first read).
    pub fn serve_tls<T, F>(config: Arc<ServerConfig>, script: F) -> Scripted<T>
    where
        T: Send + 'static,
        F: FnOnce(TlsStream) -> T + Send + 'static,
    {
        serve(move |tcp| {
            let conn = ServerConnection::new(config).expect("server connection");
            script(StreamOwned::new(conn, tcp))
        })
    }

    /// `https://localhost:port` for a scripted proxy.
    pub fn url<T>(proxy: &Scripted<T>) -> String {
        format!("https://localhost:{}", proxy.addr().port())
    }
}
