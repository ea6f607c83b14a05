//! A reference reverse proxy that answers `CONNECT`, blocking, one thread per connection.
//!
//! It implements the two things the proxy side of a naked tunnel owns:
//!
//! - the **address mapping table**: a public name such as `media.example.com:443` maps to the
//!   back-end socket address that actually serves it; a name not in the table is refused with
//!   `403 Forbidden`;
//! - the **authentication process**: Basic credentials in `Proxy-Authorization`, checked per
//!   identity; missing or wrong credentials get `407` with a `Proxy-Authenticate` challenge, and
//!   each identity may reach only the public names listed for it (others get `403`).
//!
//! The flow of one connection; failures are logged with the phase that failed (`head`,
//! `backend`, `relay`):
//!
//! ```text
//! client                          proxy                                 back-end
//!   |--- TLS handshake ------------>|  head phase (TLS skipped with a plain listener):
//!   |--- CONNECT name:port -------->|  at most HEAD_CAPACITY bytes, within head_deadline
//!   |<-- 400/405/408/431 -----------|  garbage, not CONNECT, too slow, too big: then closed
//!   |<-- 407 (no/wrong creds) ------|  authentication: stays open for a retry (at most
//!   |                               |  MAX_REQUESTS_PER_CONNECTION requests)
//!   |<-- 403 (not in table/list) ---|  mapping table, then the identity's list: then closed
//!   |                               |--- backend phase: TCP connect ------------>|
//!   |<-- 502 (back-end unreachable)-|    (BACKEND_CONNECT_TIMEOUT)
//!   |<-- 200 Connection established-|
//!   |<========== relay phase: bytes both ways, half-close preserved ===========>|
//! ```
//!
//! Bytes the client sent after its request head (before it saw the `200`) are data and go to the
//! back-end first.
//!
//! With TLS the listener uses a certificate made at start-up by rcgen: a throw-away CA and a
//! server certificate for `localhost` and `127.0.0.1` signed by it. [`ReverseProxy::ca_pem`] gives
//! the CA certificate a client should trust.
//!
//! # Relaying over one TLS session from two threads
//!
//! A `rustls::ServerConnection` cannot be cloned, yet each direction of the relay blocks on its
//! own socket. The TCP socket is split with `try_clone`; the TLS state sits behind a mutex that is
//! never held across a socket call:
//!
//! - the reading thread reads raw bytes from its socket clone *unlocked*, then locks to
//!   `read_tls` / `process_new_packets` / drain plaintext;
//! - a writer takes the *send* mutex first, then the TLS lock to encrypt and move the records into
//!   a buffer owned by the send half (`write_tls`), drops the TLS lock, and writes the buffer to
//!   the socket while still holding the send mutex. Records reach the socket in the order they
//!   were produced because production and sending happen under the same send mutex; the lock
//!   order is always send → TLS, so the two threads cannot deadlock.
//!
//! The reading thread writes too, rarely: when rustls has something to send after processing
//! input (an alert, a key-update answer) it takes the send mutex like any writer, after dropping
//! the TLS lock.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection};

/// Largest request head (request line and headers) the proxy accepts: 8 KiB. A longer head gets
/// `431 Request Header Fields Too Large`.
pub const HEAD_CAPACITY: usize = 8 * 1024;

/// Most header lines in one request head; more gets `431`.
pub const MAX_HEADERS: usize = 32;

/// Time allowed for the TLS handshake plus one complete request head. Defaults to 10 s.
pub const DEFAULT_HEAD_DEADLINE: Duration = Duration::from_secs(10);

/// Time allowed to open the TCP connection to a back-end before answering `502`.
pub const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed to write a refusal after the head deadline has passed (the `408` case).
pub const REPLY_DEADLINE: Duration = Duration::from_secs(2);

/// Size of each relay buffer (one per direction).
pub const RELAY_BUFFER: usize = 16 * 1024;

/// Most requests read on one connection: a `407` keeps the connection open so the client can
/// retry with credentials, but not forever.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 4;

/// Most connections served at once (two or three threads each); further ones are closed at
/// once.
pub const MAX_CONNECTIONS: usize = 512;

/// Most finished sessions kept for [`ReverseProxy::sessions`]; older ones are dropped.
pub const SESSION_HISTORY: usize = 256;

/// The realm sent in the `Proxy-Authenticate` challenge.
pub const REALM: &str = "connect-tunnel reference proxy";

/// One identity that may use the proxy.
#[derive(Clone)]
pub struct User {
    /// User name, as sent in the Basic credentials.
    pub name: String,
    /// Password, compared in constant time and never logged.
    pub password: String,
    /// Public names (`host:port`) this identity may reach.
    pub allowed: Vec<String>,
}

impl User {
    /// A user allowed to reach the given public names.
    pub fn new(name: &str, password: &str, allowed: &[&str]) -> Self {
        User {
            name: name.to_owned(),
            password: password.to_owned(),
            allowed: allowed.iter().map(|name| normalize_name(name)).collect(),
        }
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("allowed", &self.allowed)
            .finish()
    }
}

/// What the proxy serves and to whom.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Address to listen on. Defaults to `127.0.0.1:0` (a free loopback port).
    pub listen: SocketAddr,
    /// The address mapping table: public name (`host:port`, host compared case-insensitively)
    /// → back-end address. Defaults to empty.
    pub mapping: Vec<(String, SocketAddr)>,
    /// The identities. When empty, no credentials are asked for and every mapped name may be
    /// reached. Defaults to empty.
    pub users: Vec<User>,
    /// Listen with TLS (a certificate made at start-up) rather than plain TCP. Defaults to true.
    pub tls: bool,
    /// Deadline for the TLS handshake plus one request head. Defaults to
    /// [`DEFAULT_HEAD_DEADLINE`].
    pub head_deadline: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            mapping: Vec::new(),
            users: Vec::new(),
            tls: true,
            head_deadline: DEFAULT_HEAD_DEADLINE,
        }
    }
}

/// One finished client connection, as the proxy saw it.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    /// Connection number, counting from 1.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The identity that authenticated, if any.
    pub identity: Option<String>,
    /// The public name asked for in the last request.
    pub public_name: Option<String>,
    /// The back-end the name mapped to, if the tunnel opened.
    pub backend: Option<SocketAddr>,
    /// Status of the last reply sent (0 when none was sent).
    pub status: u16,
    /// Requests read on this connection (a 407 then a retry makes 2).
    pub requests: usize,
    /// Bytes relayed client → back-end (including bytes sent before the 200).
    pub bytes_up: u64,
    /// Bytes relayed back-end → client.
    pub bytes_down: u64,
    /// Time from accept to close.
    pub duration: Duration,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
}

/// A running reverse proxy. Dropping it stops the accept loop and closes live tunnels.
pub struct ReverseProxy {
    local_addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl ReverseProxy {
    /// Binds `config.listen`, makes the TLS certificate if needed, and runs the accept loop on a
    /// background thread.
    pub fn start(config: ProxyConfig) -> io::Result<ReverseProxy> {
        let (tls, ca_pem) = if config.tls {
            let (server_config, ca_pem) = make_tls_config()?;
            (Some(Arc::new(server_config)), ca_pem)
        } else {
            (None, String::new())
        };
        let listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        let mapping = config
            .mapping
            .iter()
            .map(|(name, addr)| (normalize_name(name), *addr))
            .collect();
        let users = config
            .users
            .iter()
            .map(|user| User {
                allowed: user.allowed.iter().map(|n| normalize_name(n)).collect(),
                ..user.clone()
            })
            .collect();
        let shared = Arc::new(Shared {
            mapping,
            users,
            tls,
            head_deadline: config.head_deadline,
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            live: Mutex::new(Vec::new()),
            sessions: Mutex::new(Vec::new()),
        });
        let loop_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(listener, loop_shared))?;
        log::info!(
            "listening on {local_addr} ({}), {} public name(s), {} identity(ies)",
            if config.tls { "TLS" } else { "plain TCP" },
            shared.mapping.len(),
            shared.users.len()
        );
        Ok(ReverseProxy {
            local_addr,
            ca_pem,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// PEM of the CA certificate a client should trust; empty with a plain listener.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Whether the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// The finished connections so far (at most [`SESSION_HISTORY`]), oldest first.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        lock(&self.shared.sessions).clone()
    }

    /// Waits up to `timeout` for a finished session that opened a tunnel to `public_name`.
    pub fn wait_for_session(&self, public_name: &str, timeout: Duration) -> Option<SessionRecord> {
        let wanted = normalize_name(public_name);
        let deadline = Instant::now() + timeout;
        loop {
            let found = lock(&self.shared.sessions)
                .iter()
                .rev()
                .find(|s| s.status == 200 && s.public_name.as_deref() == Some(wanted.as_str()))
                .cloned();
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops accepting, closes live tunnels and waits for the accept loop to end.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(handle) = self.accept_thread.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() with a connection of our own.
        let _ = TcpStream::connect_timeout(&wake_addr(self.local_addr), Duration::from_secs(1));
        let _ = handle.join();
        for (_, socket) in lock(&self.shared.live).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        log::info!("proxy on {} stopped", self.local_addr);
    }
}

impl Drop for ReverseProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Address to connect to in order to wake the accept loop (an unspecified listen address is
/// reached through loopback).
fn wake_addr(local: SocketAddr) -> SocketAddr {
    let mut addr = local;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => [127, 0, 0, 1].into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// State shared by the accept loop and the connection threads.
struct Shared {
    mapping: HashMap<String, SocketAddr>,
    users: Vec<User>,
    tls: Option<Arc<ServerConfig>>,
    head_deadline: Duration,
    stop: AtomicBool,
    next_id: AtomicU64,
    /// Connections being served now.
    active: AtomicUsize,
    /// Sockets of live connections (client and back-end), closed on shutdown.
    live: Mutex<Vec<(u64, TcpStream)>>,
    sessions: Mutex<Vec<SessionRecord>>,
}

impl Shared {
    fn register(&self, id: u64, socket: &TcpStream) {
        if let Ok(clone) = socket.try_clone() {
            lock(&self.live).push((id, clone));
        }
    }

    fn finish(&self, record: SessionRecord) {
        lock(&self.live).retain(|(id, _)| *id != record.id);
        let mut sessions = lock(&self.sessions);
        if sessions.len() == SESSION_HISTORY {
            sessions.remove(0);
        }
        sessions.push(record);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        match incoming {
            Ok(stream) => {
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                    log::warn!("conn#{id}: {MAX_CONNECTIONS} connections already, closing");
                    continue;
                }
                let conn_shared = Arc::clone(&shared);
                let spawned = thread::Builder::new()
                    .name(format!("proxy-conn-{id}"))
                    .spawn(move || {
                        let _slot = ActiveSlot(&conn_shared.active);
                        handle_connection(id, stream, &conn_shared);
                    });
                if let Err(e) = spawned {
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                    log::warn!("conn#{id}: cannot start a thread: {e}");
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Gives a connection's slot back when its thread ends, even by panic.
struct ActiveSlot<'a>(&'a AtomicUsize);

impl Drop for ActiveSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The certificate chain and key for the listener, and the CA certificate's PEM.
fn make_tls_config() -> io::Result<(ServerConfig, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let tls_err = |e: rcgen::Error| io::Error::other(format!("certificate generation: {e}"));

    let mut ca_params = CertificateParams::new(Vec::new()).map_err(tls_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "connect-tunnel reference proxy CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut leaf_params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(tls_err)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().map_err(tls_err)?;
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer).map_err(tls_err)?;

    let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(io::Error::other)?;
    Ok((config, ca_cert.pem()))
}

/// `Host:443` → `host:443`; names are matched case-insensitively.
fn normalize_name(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

// ---------------------------------------------------------------------------------------------
// One connection
// ---------------------------------------------------------------------------------------------

/// Phases of one connection, named as in the log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// TLS handshake and reading the request head.
    Head,
    /// Opening the TCP connection to the back-end.
    Backend,
    /// Relaying bytes both ways.
    Relay,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Head => "head",
            Phase::Backend => "backend",
            Phase::Relay => "relay",
        })
    }
}

/// What to do with one parsed request.
enum Decision {
    /// Answer with this status and close (or, if `keep_alive`, read another request).
    Reject {
        status: u16,
        extra_header: Option<String>,
        keep_alive: bool,
        why: String,
    },
    /// Open a tunnel.
    Open(Route),
}

/// Where an accepted request goes, and for whom.
struct Route {
    identity: Option<String>,
    public_name: String,
    backend: SocketAddr,
}

fn handle_connection(id: u64, socket: TcpStream, shared: &Shared) {
    let started = Instant::now();
    // Replies and relayed media are small writes that must not wait for delayed ACKs.
    let _ = socket.set_nodelay(true);
    let peer = socket
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    shared.register(id, &socket);
    let mut record = SessionRecord {
        id,
        peer,
        identity: None,
        public_name: None,
        backend: None,
        status: 0,
        requests: 0,
        bytes_up: 0,
        bytes_down: 0,
        duration: Duration::ZERO,
        error: None,
    };
    if let Err((phase, e)) = serve(id, socket, shared, &mut record) {
        log::warn!("conn#{id} {peer}: {phase} failed: {e}");
        record.error = Some(format!("{phase}: {e}"));
    }
    record.duration = started.elapsed();
    if record.status == 200 {
        log::info!(
            "conn#{id} {peer} closed: identity={} name={} backend={} up={} B down={} B in {:.3} s{}",
            record.identity.as_deref().unwrap_or("-"),
            record.public_name.as_deref().unwrap_or("-"),
            record.backend.map(|a| a.to_string()).unwrap_or_default(),
            record.bytes_up,
            record.bytes_down,
            record.duration.as_secs_f64(),
            record
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    shared.finish(record);
}

fn serve(
    id: u64,
    socket: TcpStream,
    shared: &Shared,
    record: &mut SessionRecord,
) -> Result<(), (Phase, io::Error)> {
    let head_err = |e| (Phase::Head, e);
    let mut client = match &shared.tls {
        Some(config) => {
            let conn = ServerConnection::new(Arc::clone(config))
                .map_err(|e| (Phase::Head, io::Error::other(format!("TLS setup: {e}"))))?;
            ClientStream::Tls {
                conn: Box::new(conn),
                socket,
            }
        }
        None => ClientStream::Plain(socket),
    };

    let mut head = [0u8; HEAD_CAPACITY];
    let mut filled = 0;
    let (route, head_len) = loop {
        if record.requests == MAX_REQUESTS_PER_CONNECTION {
            log::info!(
                "conn#{id}: {MAX_REQUESTS_PER_CONNECTION} requests without a tunnel, closing"
            );
            return Ok(());
        }
        let deadline = Instant::now() + shared.head_deadline;
        let parsed = match read_head(&mut client, shared, &mut head, &mut filled, deadline) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(()), // the client closed between requests
            Err(HeadError::Io(e)) => return Err(head_err(e)),
            Err(HeadError::Reply(status, why)) => {
                log::info!("conn#{id} {}: {status} ({why})", record.peer);
                record.status = status;
                // The head deadline may be what passed: give the reply its own short one.
                let reply_deadline = Instant::now() + REPLY_DEADLINE;
                let _ = write_reply(&mut client, status, None, false, reply_deadline);
                return Ok(());
            }
        };
        record.requests += 1;
        let (decision, head_len) = parsed;
        match decision {
            Decision::Reject {
                status,
                extra_header,
                keep_alive,
                why,
            } => {
                log::info!("conn#{id} {}: {status} ({why})", record.peer);
                record.status = status;
                write_reply(
                    &mut client,
                    status,
                    extra_header.as_deref(),
                    keep_alive,
                    deadline,
                )
                .map_err(head_err)?;
                if !keep_alive {
                    return Ok(());
                }
                head.copy_within(head_len..filled, 0);
                filled -= head_len;
            }
            Decision::Open(route) => break (route, head_len),
        }
    };
    let backend = route.backend;
    record.identity = route.identity;
    record.public_name = Some(route.public_name);

    let backend_stream = match TcpStream::connect_timeout(&backend, BACKEND_CONNECT_TIMEOUT) {
        Ok(stream) => stream,
        Err(e) => {
            record.status = 502;
            let deadline = Instant::now() + shared.head_deadline;
            let _ = write_reply(&mut client, 502, None, false, deadline);
            return Err((Phase::Backend, e));
        }
    };
    let _ = backend_stream.set_nodelay(true);
    shared.register(id, &backend_stream);
    record.backend = Some(backend);

    let deadline = Instant::now() + shared.head_deadline;
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n", deadline)
        .map_err(head_err)?;
    record.status = 200;
    log::info!(
        "conn#{id} {}: tunnel open: identity={} name={} backend={backend}",
        record.peer,
        record.identity.as_deref().unwrap_or("-"),
        record.public_name.as_deref().unwrap_or("-"),
    );

    // Bytes that followed the request head are stream data: they go first.
    let early = &head[head_len..filled];
    let result = relay(client, backend_stream, early);
    record.bytes_up = result.up;
    record.bytes_down = result.down;
    match result.error {
        Some(e) => Err((Phase::Relay, e)),
        None => Ok(()),
    }
}

enum HeadError {
    Io(io::Error),
    /// Answer with this status and close.
    Reply(u16, String),
}

/// Reads until `head[..filled]` holds one complete request head and decides what to do with it.
/// Returns `None` if the client closed cleanly before sending anything.
fn read_head(
    client: &mut ClientStream,
    shared: &Shared,
    head: &mut [u8; HEAD_CAPACITY],
    filled: &mut usize,
    deadline: Instant,
) -> Result<Option<(Decision, usize)>, HeadError> {
    loop {
        if *filled > 0 {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&head[..*filled]) {
                Ok(httparse::Status::Complete(len)) => {
                    let decision = decide(&request, shared);
                    return Ok(Some((decision, len)));
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(HeadError::Reply(
                        431,
                        format!("more than {MAX_HEADERS} header lines"),
                    ));
                }
                Err(e) => return Err(HeadError::Reply(400, format!("unparsable head: {e}"))),
            }
        }
        if *filled == head.len() {
            return Err(HeadError::Reply(
                431,
                format!("request head longer than {HEAD_CAPACITY} bytes"),
            ));
        }
        let n = client
            .read(&mut head[*filled..], deadline)
            .map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => HeadError::Reply(408, "head deadline passed".into()),
                _ => HeadError::Io(e),
            });
        let n = match n {
            // A TLS client that goes away between requests (after a 407, say) without
            // close_notify is still a clean end of the connection.
            Err(HeadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof && *filled == 0 => {
                return Ok(None)
            }
            other => other?,
        };
        if n == 0 {
            return if *filled == 0 {
                Ok(None)
            } else {
                Err(HeadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed in the middle of a request head",
                )))
            };
        }
        *filled += n;
    }
}

/// Applies the authentication process and the address mapping table to one request head.
fn decide(request: &httparse::Request<'_, '_>, shared: &Shared) -> Decision {
    let refuse = |status, why: String| Decision::Reject {
        status,
        extra_header: None,
        keep_alive: false,
        why,
    };
    let method = request.method.unwrap_or("");
    if method != "CONNECT" {
        return Decision::Reject {
            status: 405,
            extra_header: Some("Allow: CONNECT".to_owned()),
            keep_alive: false,
            why: format!("method {method} is not CONNECT"),
        };
    }
    let target = request.path.unwrap_or("");
    let Some(public_name) = parse_authority(target) else {
        return refuse(400, format!("CONNECT target {target:?} is not host:port"));
    };

    // Authentication: who is asking?
    let user = if shared.users.is_empty() {
        None
    } else {
        match authenticate(request.headers, &shared.users) {
            Ok(user) => Some(user),
            Err(why) => {
                return Decision::Reject {
                    status: 407,
                    extra_header: Some(format!("Proxy-Authenticate: Basic realm=\"{REALM}\"")),
                    keep_alive: true,
                    why: format!("{why}, CONNECT {public_name}"),
                }
            }
        }
    };

    // Mapping table, then the identity's own list.
    let Some(&backend) = shared.mapping.get(&public_name) else {
        return refuse(403, format!("{public_name} is not in the mapping table"));
    };
    if let Some(user) = user {
        if !user.allowed.contains(&public_name) {
            return refuse(
                403,
                format!("identity {} may not reach {public_name}", user.name),
            );
        }
    }
    Decision::Open(Route {
        identity: user.map(|u| u.name.clone()),
        public_name,
        backend,
    })
}

/// `host:port` (or `[v6]:port`) with a port in 1..=65535, lower-cased; `None` otherwise.
fn parse_authority(target: &str) -> Option<String> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|v6| {
            !v6.is_empty()
                && v6
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        })
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    (port != 0 && host_ok).then(|| normalize_name(target))
}

/// Finds the identity named by the request's Basic `Proxy-Authorization`, or says why not.
/// The reason names the user but never the password.
fn authenticate<'u>(
    headers: &[httparse::Header<'_>],
    users: &'u [User],
) -> Result<&'u User, String> {
    let Some(header) = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
    else {
        return Err("no Proxy-Authorization".to_owned());
    };
    let value = std::str::from_utf8(header.value).map_err(|_| "credentials are not UTF-8")?;
    let (scheme, encoded) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(format!("unsupported scheme {scheme:?}"));
    }
    let mut decoded = [0u8; 512];
    let credentials = decode_base64(encoded.trim().as_bytes(), &mut decoded)
        .ok_or("credentials are not valid base64")?;
    let colon = credentials
        .iter()
        .position(|&b| b == b':')
        .ok_or("credentials have no ':'")?;
    let (name, password) = (&credentials[..colon], &credentials[colon + 1..]);
    let shown = String::from_utf8_lossy(name);
    let user = users
        .iter()
        .find(|u| u.name.as_bytes() == name)
        .ok_or_else(|| format!("unknown identity {shown:?}"))?;
    if constant_time_eq(user.password.as_bytes(), password) {
        Ok(user)
    } else {
        Err(format!("wrong password for {shown:?}"))
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decodes standard base64 (padding optional) into `out`; `None` if the input is not base64 or
/// does not fit.
fn decode_base64<'o>(input: &[u8], out: &'o mut [u8]) -> Option<&'o [u8]> {
    let unpadded = input
        .strip_suffix(b"==")
        .or_else(|| input.strip_suffix(b"="))
        .unwrap_or(input);
    if unpadded.len() % 4 == 1 {
        return None;
    }
    let (mut acc, mut bits, mut len) = (0u32, 0u32, 0usize);
    for &c in unpadded {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(len)? = (acc >> bits) as u8;
            len += 1;
        }
        acc &= (1 << bits) - 1;
    }
    Some(&out[..len])
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "Connection established",
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        _ => "",
    }
}

/// Writes an error reply with a one-line text body.
fn write_reply(
    client: &mut ClientStream,
    status: u16,
    extra_header: Option<&str>,
    keep_alive: bool,
    deadline: Instant,
) -> io::Result<()> {
    let mut buf = [0u8; 512];
    let mut cursor = io::Cursor::new(&mut buf[..]);
    let reason = reason(status);
    let body_len = "000 \n".len() + reason.len(); // the body is "{status} {reason}\n"
    write!(cursor, "HTTP/1.1 {status} {reason}\r\n")?;
    if let Some(header) = extra_header {
        write!(cursor, "{header}\r\n")?;
    }
    write!(
        cursor,
        "Content-Type: text/plain\r\nContent-Length: {body_len}\r\nConnection: {}\r\n\r\n{status} {reason}\n",
        if keep_alive { "keep-alive" } else { "close" }
    )?;
    let len = cursor.position() as usize;
    client.write_all(&buf[..len], deadline)
}

// ---------------------------------------------------------------------------------------------
// The client's stream: plain or TLS, then split for the relay
// ---------------------------------------------------------------------------------------------

/// The client's side before the relay starts: one thread, deadline-bounded calls.
enum ClientStream {
    Plain(TcpStream),
    Tls {
        conn: Box<ServerConnection>,
        socket: TcpStream,
    },
}

impl ClientStream {
    fn socket(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(socket) | ClientStream::Tls { socket, .. } => socket,
        }
    }

    /// Sets both socket timeouts to what is left before `deadline`.
    fn arm(&self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        self.socket().set_read_timeout(Some(left))?;
        self.socket().set_write_timeout(Some(left))
    }

    /// One read (driving the TLS handshake first if needed), bounded by `deadline`.
    fn read(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        loop {
            self.arm(deadline)?;
            let result = match self {
                ClientStream::Plain(socket) => socket.read(buf),
                ClientStream::Tls { conn, socket } => {
                    rustls::Stream::new(conn.as_mut(), socket).read(buf)
                }
            };
            match result {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(deadline_error(e)),
                Ok(n) => return Ok(n),
            }
        }
    }

    fn write_all(&mut self, data: &[u8], deadline: Instant) -> io::Result<()> {
        self.arm(deadline)?;
        let result = match self {
            ClientStream::Plain(socket) => socket.write_all(data),
            ClientStream::Tls { conn, socket } => {
                let mut stream = rustls::Stream::new(conn.as_mut(), socket);
                stream.write_all(data).and_then(|()| stream.flush())
            }
        };
        result.map_err(deadline_error)
    }

    /// Splits into a receiving and a sending half for the two relay threads.
    fn split(self) -> io::Result<(ClientRx, ClientTx)> {
        self.socket().set_read_timeout(None)?;
        self.socket().set_write_timeout(None)?;
        match self {
            ClientStream::Plain(socket) => Ok((
                ClientRx::Plain(socket.try_clone()?),
                ClientTx::Plain(socket),
            )),
            ClientStream::Tls { conn, socket } => {
                let rx_socket = socket.try_clone()?;
                let rx_control = socket.try_clone()?;
                let tx_control = socket.try_clone()?;
                let shared = Arc::new(TlsShared {
                    conn: Mutex::new(*conn),
                    send: Mutex::new(SendHalf {
                        socket,
                        records: Vec::with_capacity(RELAY_BUFFER + 1024),
                    }),
                });
                Ok((
                    ClientRx::Tls(TlsRx {
                        shared: Arc::clone(&shared),
                        socket: rx_socket,
                        control: rx_control,
                        raw: vec![0; RELAY_BUFFER + 1024].into_boxed_slice(),
                        raw_start: 0,
                        raw_end: 0,
                    }),
                    ClientTx::Tls(TlsTx {
                        shared,
                        control: tx_control,
                    }),
                ))
            }
        }
    }
}

/// Socket timeouts surface as `WouldBlock` on Unix; report them as the deadline passing.
fn deadline_error(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, "deadline passed")
        }
        _ => e,
    }
}

/// One TLS session shared by the two relay threads. Lock order: `send`, then `conn`.
struct TlsShared {
    conn: Mutex<ServerConnection>,
    send: Mutex<SendHalf>,
}

/// The socket records are written to, and the buffer they are gathered in first.
struct SendHalf {
    socket: TcpStream,
    records: Vec<u8>,
}

impl TlsShared {
    /// Encrypts `plain` (possibly nothing), queues a close_notify if `close`, and writes every
    /// pending record to the socket. Returns how much of `plain` was taken.
    fn send(&self, plain: &[u8], close: bool) -> io::Result<usize> {
        let mut send = lock(&self.send);
        let send = &mut *send;
        let taken = {
            let mut conn = lock(&self.conn);
            let taken = if plain.is_empty() {
                0
            } else {
                conn.writer().write(plain)?
            };
            if close {
                conn.send_close_notify();
            }
            while conn.wants_write() {
                conn.write_tls(&mut send.records)?;
            }
            taken
        }; // TLS lock released: the reading thread can decrypt while we block on the socket.
        let written = send.socket.write_all(&send.records);
        send.records.clear();
        written?;
        if close {
            send.socket.shutdown(Shutdown::Write)?;
        }
        Ok(taken)
    }
}

/// Receiving half of the client's stream.
enum ClientRx {
    Plain(TcpStream),
    Tls(TlsRx),
}

/// Sending half of the client's stream.
enum ClientTx {
    Plain(TcpStream),
    Tls(TlsTx),
}

struct TlsRx {
    shared: Arc<TlsShared>,
    /// Read from without holding any lock.
    socket: TcpStream,
    /// Used only to abort.
    control: TcpStream,
    /// Raw TLS bytes read from the socket but not yet given to rustls.
    raw: Box<[u8]>,
    raw_start: usize,
    raw_end: usize,
}

struct TlsTx {
    shared: Arc<TlsShared>,
    /// Used only to abort, so aborting never waits for a lock.
    control: TcpStream,
}

impl Read for TlsRx {
    /// Plaintext from the client; `Ok(0)` once it sent close_notify or closed TCP.
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut must_flush = false;
            let mut fed = false;
            {
                let mut conn = lock(&self.shared.conn);
                match conn.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        log::debug!("client closed TCP without close_notify");
                        return Ok(0);
                    }
                    Err(e) => return Err(e),
                }
                if self.raw_start < self.raw_end {
                    let mut pending = &self.raw[self.raw_start..self.raw_end];
                    let taken = conn.read_tls(&mut pending)?;
                    if taken == 0 {
                        return Err(io::Error::other("rustls took no bytes"));
                    }
                    self.raw_start += taken;
                    fed = true;
                    let processed = conn.process_new_packets();
                    must_flush = conn.wants_write();
                    if let Err(e) = processed {
                        drop(conn);
                        let _ = self.shared.send(&[], false); // the alert rustls queued
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                }
            }
            if must_flush {
                // A key update answer or similar: send it (lock order send → conn).
                self.shared.send(&[], false)?;
            }
            if fed {
                continue; // look for plaintext again before blocking
            }
            // Nothing buffered anywhere: block on the socket without holding a lock.
            let n = loop {
                match self.socket.read(&mut self.raw) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n == 0 {
                // Let rustls see the EOF; its reader then reports close_notify or not.
                lock(&self.shared.conn).read_tls(&mut &[][..])?;
            }
            self.raw_start = 0;
            self.raw_end = n;
        }
    }
}

impl Write for TlsTx {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let chunk = &data[..data.len().min(RELAY_BUFFER)];
        self.shared.send(chunk, false)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for ClientRx {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientRx::Plain(socket) => socket.read(buf),
            ClientRx::Tls(tls) => tls.read(buf),
        }
    }
}

impl ClientRx {
    /// Unblocks both relay threads by closing the client's socket.
    fn abort(&self) {
        let socket = match self {
            ClientRx::Plain(socket) => socket,
            ClientRx::Tls(tls) => &tls.control,
        };
        let _ = socket.shutdown(Shutdown::Both);
    }
}

impl Write for ClientTx {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            ClientTx::Plain(socket) => socket.write(data),
            ClientTx::Tls(tls) => tls.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ClientTx {
    /// Ends the direction towards the client: close_notify (TLS), then TCP `shutdown(Write)`.
    fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            ClientTx::Plain(socket) => socket.shutdown(Shutdown::Write),
            ClientTx::Tls(tls) => tls.shared.send(&[], true).map(|_| ()),
        }
    }

    fn abort(&self) {
        let socket = match self {
            ClientTx::Plain(socket) => socket,
            ClientTx::Tls(tls) => &tls.control,
        };
        let _ = socket.shutdown(Shutdown::Both);
    }
}

struct RelayResult {
    up: u64,
    down: u64,
    error: Option<io::Error>,
}

/// Copies `from` into `to` until `from` ends; returns the bytes copied and the error, if any.
fn pump(from: &mut impl Read, to: &mut impl Write, buf: &mut [u8]) -> (u64, Option<io::Error>) {
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return (total, None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (total, Some(e)),
        };
        if let Err(e) = to.write_all(&buf[..n]) {
            return (total, Some(e));
        }
        total += n as u64;
    }
}

/// Relays both ways until both directions have ended. When one side ends its sending direction,
/// only the matching direction is shut down on the other side; the other keeps flowing.
fn relay(client: ClientStream, backend: TcpStream, early: &[u8]) -> RelayResult {
    let fail = |e| RelayResult {
        up: 0,
        down: 0,
        error: Some(e),
    };
    let (mut client_rx, mut client_tx) = match client.split() {
        Ok(halves) => halves,
        Err(e) => return fail(e),
    };
    let mut backend_rx = match backend.try_clone() {
        Ok(clone) => clone,
        Err(e) => return fail(e),
    };
    let mut backend_tx = backend;
    if let Err(e) = backend_tx.write_all(early) {
        client_rx.abort();
        return fail(e);
    }
    let early_len = early.len() as u64;

    let up = thread::Builder::new()
        .name(format!(
            "{}-up",
            thread::current().name().unwrap_or("proxy-conn")
        ))
        .spawn(move || {
            let mut buf = [0u8; RELAY_BUFFER];
            let (bytes, error) = pump(&mut client_rx, &mut backend_tx, &mut buf);
            match error {
                None => {
                    let _ = backend_tx.shutdown(Shutdown::Write);
                }
                Some(_) => {
                    client_rx.abort();
                    let _ = backend_tx.shutdown(Shutdown::Both);
                }
            }
            (bytes, error)
        });
    let up = match up {
        Ok(handle) => handle,
        Err(e) => {
            client_tx.abort();
            let _ = backend_rx.shutdown(Shutdown::Both);
            return fail(e);
        }
    };

    let mut buf = [0u8; RELAY_BUFFER];
    let (down, mut down_error) = pump(&mut backend_rx, &mut client_tx, &mut buf);
    if down_error.is_none() {
        if let Err(e) = client_tx.shutdown_write() {
            down_error = Some(e);
        }
    }
    if down_error.is_some() {
        client_tx.abort();
        let _ = backend_rx.shutdown(Shutdown::Both);
    }
    let (up_bytes, up_error) = up
        .join()
        .unwrap_or_else(|_| (0, Some(io::Error::other("relay thread panicked"))));
    let error = match (up_error, down_error) {
        (Some(e), _) => Some(io::Error::new(e.kind(), format!("client → back-end: {e}"))),
        (None, Some(e)) => Some(io::Error::new(e.kind(), format!("back-end → client: {e}"))),
        (None, None) => None,
    };
    RelayResult {
        up: early_len + up_bytes,
        down,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    const MEDIA: &str = "media.example.com:443";
    const CAMERA_AUTH: &str = "Proxy-Authorization: Basic Y2FtZXJhOnNlY3JldA==\r\n"; // camera:secret

    /// A back-end that reads until EOF, then answers with `reply_len` pattern bytes and closes.
    /// Its thread returns how many bytes it read.
    fn sink_then_reply(reply_len: usize) -> (SocketAddr, JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut received = Vec::new();
            stream.read_to_end(&mut received).unwrap();
            let reply: Vec<u8> = (0..reply_len).map(|i| (i % 251) as u8).collect();
            stream.write_all(&reply).unwrap();
            received
        });
        (addr, handle)
    }

    fn start(tls: bool, backend: SocketAddr) -> ReverseProxy {
        ReverseProxy::start(ProxyConfig {
            mapping: vec![
                (MEDIA.to_owned(), backend),
                ("admin.example.com:443".to_owned(), backend),
            ],
            users: vec![
                User::new("camera", "secret", &[MEDIA]),
                User::new("ops", "pw", &["admin.example.com:443"]),
            ],
            tls,
            head_deadline: Duration::from_millis(500),
            ..ProxyConfig::default()
        })
        .unwrap()
    }

    /// Reads one reply head and its Content-Length body; returns the status.
    fn read_reply(stream: &mut impl Read) -> u16 {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).unwrap(), 1, "EOF inside reply head");
            head.push(byte[0]);
        }
        let text = String::from_utf8(head).unwrap();
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).unwrap();
        text[9..12].parse().unwrap()
    }

    fn tls_connect(proxy: &ReverseProxy) -> StreamOwned<ClientConnection, TcpStream> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(proxy.ca_pem().as_bytes()).unwrap())
            .unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let socket = TcpStream::connect(proxy.local_addr()).unwrap();
        StreamOwned::new(conn, socket)
    }

    fn status_for(proxy: &ReverseProxy, request: &[u8]) -> u16 {
        let mut stream = TcpStream::connect(proxy.local_addr()).unwrap();
        stream.write_all(request).unwrap();
        read_reply(&mut stream)
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        let mut out = [0u8; 32];
        assert_eq!(
            decode_base64(b"Y2FtZXJhOnNlY3JldA==", &mut out),
            Some(&b"camera:secret"[..])
        );
        assert_eq!(decode_base64(b"YWI", &mut out), Some(&b"ab"[..]));
        assert_eq!(decode_base64(b"YWJj", &mut out), Some(&b"abc"[..]));
        assert_eq!(decode_base64(b"Y", &mut out), None);
        assert_eq!(decode_base64(b"Y2F*", &mut out), None);
        let mut tiny = [0u8; 2];
        assert_eq!(decode_base64(b"YWJj", &mut tiny), None);
    }

    #[test]
    fn authority_forms() {
        assert_eq!(
            parse_authority("Media.Example.com:443").as_deref(),
            Some("media.example.com:443")
        );
        assert_eq!(parse_authority("[::1]:8554").as_deref(), Some("[::1]:8554"));
        assert_eq!(parse_authority("media.example.com"), None);
        assert_eq!(parse_authority("media.example.com:0"), None);
        assert_eq!(parse_authority("media.example.com:99999"), None);
        assert_eq!(parse_authority("http://media.example.com:443"), None);
        assert_eq!(parse_authority(":443"), None);
    }

    #[test]
    fn refusals_use_the_right_status() {
        let (backend, _) = sink_then_reply(0);
        let proxy = start(false, backend);
        let connect = |target: &str, auth: &str| {
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n").into_bytes()
        };
        assert_eq!(status_for(&proxy, &connect(MEDIA, "")), 407);
        let wrong = "Proxy-Authorization: Basic Y2FtZXJhOndyb25n\r\n"; // camera:wrong
        assert_eq!(status_for(&proxy, &connect(MEDIA, wrong)), 407);
        let ops = "Proxy-Authorization: Basic b3BzOnB3\r\n"; // ops:pw
        assert_eq!(status_for(&proxy, &connect(MEDIA, ops)), 403);
        assert_eq!(
            status_for(&proxy, &connect("admin.example.com:443", CAMERA_AUTH)),
            403
        );
        assert_eq!(
            status_for(&proxy, &connect("other.example.com:443", CAMERA_AUTH)),
            403
        );
        assert_eq!(
            status_for(&proxy, &connect("media.example.com", CAMERA_AUTH)),
            400
        );
        assert_eq!(
            status_for(&proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            405
        );
        assert_eq!(status_for(&proxy, b"\x16\x03\x01 not http\r\n\r\n"), 400);
        let mut huge = connect(MEDIA, CAMERA_AUTH);
        huge.truncate(huge.len() - 2);
        huge.extend(format!("X-Pad: {}\r\n\r\n", "a".repeat(HEAD_CAPACITY)).bytes());
        assert_eq!(status_for(&proxy, &huge), 431);
        let mut many = connect(MEDIA, CAMERA_AUTH);
        many.truncate(many.len() - 2);
        for i in 0..MAX_HEADERS {
            many.extend(format!("X-{i}: y\r\n").bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(status_for(&proxy, &many), 431);
    }

    #[test]
    fn unreachable_backend_is_502() {
        let dead = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = start(false, dead);
        let request = format!("CONNECT {MEDIA} HTTP/1.1\r\n{CAMERA_AUTH}\r\n");
        assert_eq!(status_for(&proxy, request.as_bytes()), 502);
    }

    #[test]
    fn slow_head_gets_408_at_the_deadline() {
        let (backend, _) = sink_then_reply(0);
        let proxy = start(false, backend);
        let started = Instant::now();
        let mut stream = TcpStream::connect(proxy.local_addr()).unwrap();
        stream.write_all(b"CONNECT media.exa").unwrap();
        assert_eq!(read_reply(&mut stream), 408);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }

    /// 407, then a retry on the same connection with early data, then half-close both ways.
    #[test]
    fn plain_retry_early_data_and_half_close() {
        let (backend, received) = sink_then_reply(300_000);
        let proxy = start(false, backend);
        let mut stream = TcpStream::connect(proxy.local_addr()).unwrap();
        stream
            .write_all(format!("CONNECT {MEDIA} HTTP/1.1\r\nHost: {MEDIA}\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_reply(&mut stream), 407);
        let upload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut request = format!("CONNECT {MEDIA} HTTP/1.1\r\n{CAMERA_AUTH}\r\n").into_bytes();
        request.extend_from_slice(b"early");
        stream.write_all(&request).unwrap();
        assert_eq!(read_reply(&mut stream), 200);
        stream.write_all(&upload).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        assert_eq!(reply.len(), 300_000);
        let got = received.join().unwrap();
        assert_eq!(&got[..5], b"early");
        assert!(got[5..] == upload[..]);
        let session = proxy
            .wait_for_session(MEDIA, Duration::from_secs(2))
            .unwrap();
        assert_eq!(session.identity.as_deref(), Some("camera"));
        assert_eq!(session.requests, 2);
        assert_eq!(session.bytes_up, 1_000_005);
        assert_eq!(session.bytes_down, 300_000);
        assert!(session.error.is_none(), "{:?}", session.error);
    }

    /// Over TLS: upload 1 MB, close_notify, then the back-end's 1 MB reply still arrives whole.
    #[test]
    fn tls_half_close_keeps_the_other_direction() {
        let (backend, received) = sink_then_reply(1_000_000);
        let proxy = start(true, backend);
        let mut stream = tls_connect(&proxy);
        stream
            .write_all(format!("CONNECT {MEDIA} HTTP/1.1\r\n{CAMERA_AUTH}\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_reply(&mut stream), 200);
        let upload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
        stream.write_all(&upload).unwrap();
        stream.conn.send_close_notify();
        stream.flush().unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        assert_eq!(reply.len(), 1_000_000);
        assert!(reply.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        assert!(received.join().unwrap() == upload);
        let session = proxy
            .wait_for_session(MEDIA, Duration::from_secs(2))
            .unwrap();
        assert_eq!(
            (session.bytes_up, session.bytes_down),
            (1_000_000, 1_000_000)
        );
    }

    /// Both directions at once over TLS: an echo back-end, a writer thread and a reader thread.
    #[test]
    fn tls_full_duplex_echo() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut rx = stream.try_clone().unwrap();
            let mut tx = stream;
            io::copy(&mut rx, &mut tx).unwrap();
            tx.shutdown(Shutdown::Write).unwrap();
        });
        let proxy = start(true, backend);
        let mut stream = tls_connect(&proxy);
        stream
            .write_all(format!("CONNECT {MEDIA} HTTP/1.1\r\n{CAMERA_AUTH}\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_reply(&mut stream), 200);
        // Echo 2 MB in 4 KiB steps, reading back as we go, so both directions stay busy.
        let mut sent = 0usize;
        let mut back = vec![0u8; 4096];
        for round in 0..512u32 {
            let chunk: Vec<u8> = (0..4096u32).map(|i| (i ^ round) as u8).collect();
            stream.write_all(&chunk).unwrap();
            stream.read_exact(&mut back).unwrap();
            assert_eq!(back, chunk);
            sent += chunk.len();
        }
        stream.conn.send_close_notify();
        stream.flush().unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let session = proxy
            .wait_for_session(MEDIA, Duration::from_secs(2))
            .unwrap();
        assert_eq!(session.bytes_up, sent as u64);
        assert_eq!(session.bytes_down, sent as u64);
    }

    #[test]
    fn shutdown_stops_accepting_and_closes_tunnels() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = listener.local_addr().unwrap();
        let _backend = thread::spawn(move || {
            let (held, _) = listener.accept().unwrap();
            thread::sleep(Duration::from_secs(5));
            drop(held);
        });
        let proxy = start(false, backend);
        let addr = proxy.local_addr();
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(format!("CONNECT {MEDIA} HTTP/1.1\r\n{CAMERA_AUTH}\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_reply(&mut stream), 200);
        proxy.shutdown();
        let mut rest = Vec::new();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0);
        assert!(TcpStream::connect(addr).is_err());
    }
}
