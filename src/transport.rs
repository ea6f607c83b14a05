//! Sockets and TLS: resolving and connecting within a deadline, socket options, the TLS client
//! configuration, and one stream type for plain and TLS connections to the proxy.
//!
//! A rustls connection cannot be cloned like a `TcpStream`, yet a relay wants one thread per
//! direction. So the TLS state lives behind a mutex that is never held while a thread is blocked
//! on the socket: a reader reads raw bytes unlocked and only then locks to decrypt; a writer
//! locks to encrypt, then writes the records out under a separate send lock that keeps them in
//! order.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConnection;

use crate::error::{Error, InvalidInput, Phase};

/// Size of the buffer raw TLS bytes are read into, and of the buffer TLS records are staged in
/// before they are written.
pub const TLS_IO_CHUNK: usize = 16 * 1024;

/// Socket options applied to the connection to the proxy, through socket2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// `TCP_NODELAY`. Defaults to on: this is real-time traffic.
    pub nodelay: bool,
    /// TCP keepalive idle time before the first probe; `None` leaves keepalive off.
    /// Defaults to 30 s.
    pub keepalive: Option<Duration>,
    /// `SO_SNDBUF` in bytes; `None` keeps the system default.
    pub send_buffer_size: Option<usize>,
    /// `SO_RCVBUF` in bytes; `None` keeps the system default.
    pub recv_buffer_size: Option<usize>,
    /// DSCP code point (0–63) for the packets to the proxy, e.g. 46 (EF) for voice, 34 (AF41)
    /// for video; set as IPv4 TOS or IPv6 traffic class. `None` leaves the default.
    pub dscp: Option<u8>,
    /// `TCP_USER_TIMEOUT` (Linux): how long sent data may stay unacknowledged before the
    /// connection is dropped, bounding dead-peer detection while data is in flight. With
    /// keepalive, also bounds detection on an idle connection. `None` leaves the default.
    pub user_timeout: Option<Duration>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            nodelay: true,
            keepalive: Some(Duration::from_secs(30)),
            send_buffer_size: None,
            recv_buffer_size: None,
            dscp: None,
            user_timeout: None,
        }
    }
}

/// Which certificate authorities the client trusts for the proxy's certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum TrustAnchors {
    /// The Mozilla root program, from webpki-roots (the default).
    WebPki,
    /// The certificates in a PEM file.
    PemFile(PathBuf),
    /// The certificates in PEM text held in memory.
    Pem(Vec<u8>),
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustAnchors::WebPki => f.write_str("WebPki"),
            TrustAnchors::PemFile(p) => f.debug_tuple("PemFile").field(p).finish(),
            TrustAnchors::Pem(b) => write!(f, "Pem({} bytes)", b.len()),
        }
    }
}

/// TLS settings for an `https://` proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// Whom to trust. Defaults to [`TrustAnchors::WebPki`].
    pub trust: TrustAnchors,
    /// A client certificate chain and its private key (PEM files) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Verify the proxy's certificate and name. Defaults to `true`; turning it off makes the
    /// connection open to interception.
    pub verify: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            trust: TrustAnchors::WebPki,
            client_cert: None,
            verify: true,
        }
    }
}

fn tls_material(what: &'static str) -> Error {
    Error::invalid(Phase::AcquireAddresses, InvalidInput::TlsMaterial, what)
}

/// Builds the rustls client configuration (ring provider) once, for every connection.
pub(crate) fn client_config(opts: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|_| tls_material("TLS protocol versions"))?;
    let builder = if opts.verify {
        let mut roots = rustls::RootCertStore::empty();
        match &opts.trust {
            TrustAnchors::WebPki => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            TrustAnchors::PemFile(path) => {
                let certs =
                    CertificateDer::pem_file_iter(path).map_err(|_| tls_material("CA file"))?;
                add_roots(&mut roots, certs)?;
            }
            TrustAnchors::Pem(pem) => {
                add_roots(&mut roots, CertificateDer::pem_slice_iter(pem))?;
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let config = match &opts.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|_| tls_material("client certificate file"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| tls_material("client certificate file"))?;
            if chain.is_empty() {
                return Err(tls_material("client certificate file"));
            }
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|_| tls_material("client key file"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|_| tls_material("client certificate and key"))?
        }
    };
    Ok(Arc::new(config))
}

fn add_roots<'a>(
    roots: &mut rustls::RootCertStore,
    certs: impl Iterator<Item = Result<CertificateDer<'a>, rustls::pki_types::pem::Error>>,
) -> Result<(), Error> {
    for cert in certs {
        let cert = cert.map_err(|_| tls_material("CA file"))?;
        roots
            .add(cert)
            .map_err(|_| tls_material("CA certificate"))?;
    }
    if roots.is_empty() {
        return Err(tls_material("CA file (no certificate in it)"));
    }
    Ok(())
}

/// Accepts any certificate and name, but still checks handshake signatures. Used only when the
/// caller turned verification off.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Time left until `deadline`, or the timeout error for `phase` when none is left.
pub(crate) fn remaining(deadline: Instant, phase: Phase) -> Result<Duration, Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(Error::Timeout { phase })
    } else {
        Ok(left)
    }
}

/// Maps an I/O error seen before `deadline` to a typed error: a socket timeout is the deadline.
pub(crate) fn io_error(e: io::Error, phase: Phase) -> Error {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        Error::Timeout { phase }
    } else {
        Error::Io { phase, source: e }
    }
}

/// Resolves `host:port`, bounded by `deadline`. Name look-up (getaddrinfo) cannot be
/// interrupted, so it runs on a helper thread that is abandoned if the deadline passes first.
pub(crate) fn resolve(host: &str, port: u16, deadline: Instant) -> Result<Vec<SocketAddr>, Error> {
    let phase = Phase::AcquireAddresses;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = mpsc::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = tx.send((name.as_str(), port).to_socket_addrs().map(Vec::from_iter));
        })
        .map_err(|e| Error::Io { phase, source: e })?;
    let failed = |source| Error::Resolve {
        host: host.to_owned(),
        source,
    };
    match rx.recv_timeout(remaining(deadline, phase)?) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(failed(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses",
        ))),
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(Error::Timeout { phase }),
    }
}

/// Opens TCP to the first of `addrs` that accepts, in order, within `deadline`.
pub(crate) fn connect_tcp(
    addrs: &[SocketAddr],
    opts: &SocketOptions,
    deadline: Instant,
) -> Result<TcpStream, Error> {
    let phase = Phase::Write;
    let mut last = None;
    for &addr in addrs {
        let left = remaining(deadline, phase)?;
        log::debug!("write: connecting to proxy at {addr}");
        match connect_one(addr, opts, left) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Each attempt may use all the time left, so its timing out is the deadline.
                return Err(Error::Timeout { phase });
            }
            Err(e) => {
                log::debug!("write: {addr}: {e}");
                last = Some((addr, e));
            }
        }
    }
    match last {
        Some((addr, source)) => Err(Error::Connect { addr, source }),
        None => Err(Error::Io {
            phase,
            source: io::Error::new(io::ErrorKind::NotFound, "no proxy address"),
        }),
    }
}

fn connect_one(addr: SocketAddr, opts: &SocketOptions, timeout: Duration) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(opts.nodelay)?;
    if let Some(idle) = opts.keepalive {
        let ka = TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(5).min(idle));
        socket.set_tcp_keepalive(&ka)?;
    }
    if let Some(n) = opts.send_buffer_size {
        socket.set_send_buffer_size(n)?;
    }
    if let Some(n) = opts.recv_buffer_size {
        socket.set_recv_buffer_size(n)?;
    }
    if let Some(dscp) = opts.dscp {
        let tos = u32::from(dscp & 0x3f) << 2;
        match addr {
            SocketAddr::V4(_) => socket.set_tos_v4(tos)?,
            SocketAddr::V6(_) => socket.set_tclass_v6(tos)?,
        }
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if opts.user_timeout.is_some() {
        socket.set_tcp_user_timeout(opts.user_timeout)?;
    }
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}

/// Where a TLS session reads its records from: the proxy socket, or (for TLS to the target
/// inside the tunnel) the tunnel itself. Each read is bounded by `deadline` when one is given.
pub(crate) trait Source {
    /// Reads raw bytes.
    fn read_by(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize>;
}

impl Source for TcpStream {
    fn read_by(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        if let Some(deadline) = deadline {
            self.set_read_timeout(Some(time_left(deadline)?))?;
        }
        self.read(buf)
    }
}

/// Where a TLS session writes its records to, and how its sending direction ends.
pub(crate) trait Sink: Write {
    /// Ends the sending direction (after any `close_notify` was written).
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// Bounds the writes that follow.
    fn set_write_timeout(&mut self, t: Option<Duration>) -> io::Result<()>;
}

/// Ends a socket's sending direction. A connection the peer has already torn down has no
/// sending direction left to end, so `NotConnected` counts as done.
fn shutdown_write(sock: &TcpStream) -> io::Result<()> {
    match sock.shutdown(Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

impl Sink for TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        shutdown_write(self)
    }

    fn set_write_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, t)
    }
}

/// A `Source` seen as a plain `Read`, bounded by one deadline.
struct Bounded<'a, S: ?Sized>(&'a mut S, Option<Instant>);

impl<S: Source + ?Sized> Read for Bounded<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_by(buf, self.1)
    }
}

/// Runs a TLS client handshake reading from `src` and writing to `sink` within `deadline`, one
/// operation at a time so that a peer that dribbles bytes still meets the deadline. Errors are
/// made with `fail` (the proxy's TLS or the target's), except the deadline, which is
/// [`Error::Timeout`] in `phase`.
pub(crate) fn tls_handshake(
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    src: &mut dyn Source,
    sink: &mut dyn Sink,
    deadline: Instant,
    phase: Phase,
    fail: fn(io::Error) -> Error,
) -> Result<ClientConnection, Error> {
    let failed = |e: io::Error| match io_error(e, phase) {
        Error::Io { source, .. } => fail(source),
        other => other,
    };
    let mut conn = ClientConnection::new(config, server_name)
        .map_err(|e| fail(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    while conn.is_handshaking() {
        while conn.wants_write() {
            sink.set_write_timeout(Some(remaining(deadline, phase)?))
                .map_err(failed)?;
            conn.write_tls(sink).map_err(failed)?;
        }
        sink.flush().map_err(failed)?;
        if !conn.is_handshaking() {
            break;
        }
        remaining(deadline, phase)?;
        let n = match conn.read_tls(&mut Bounded(src, Some(deadline))) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(e)),
        };
        if n == 0 {
            return Err(fail(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection during the TLS handshake",
            )));
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the peer why, if we can; the error that matters is ours.
            let _ = conn.write_tls(sink);
            return Err(fail(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
    }
    // The last flight (the client's Finished) is queued when the handshake completes: send it
    // now, since a peer that speaks first waits for it.
    while conn.wants_write() {
        sink.set_write_timeout(Some(remaining(deadline, phase)?))
            .map_err(failed)?;
        conn.write_tls(sink).map_err(failed)?;
    }
    sink.flush().map_err(failed)?;
    sink.set_write_timeout(None).map_err(failed)?;
    Ok(conn)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave the TLS state half-updated in a way that matters more
    // than the panic itself; keep going with what is there.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `e` carries a rustls error (an alert from the peer, a protocol violation).
pub(crate) fn is_tls_failure(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

fn tls_data_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The sending side of a TLS session: where records go, and the buffer they are staged in.
struct TlsSend<W> {
    sink: W,
    staging: Box<[u8]>,
}

/// One TLS session shared by a reading half and a writing half.
pub(crate) struct TlsShared<W> {
    conn: Mutex<ClientConnection>,
    send: Mutex<TlsSend<W>>,
}

impl<W: Sink> TlsShared<W> {
    pub(crate) fn new(conn: ClientConnection, sink: W) -> TlsShared<W> {
        TlsShared {
            conn: Mutex::new(conn),
            send: Mutex::new(TlsSend {
                sink,
                staging: vec![0; TLS_IO_CHUNK].into_boxed_slice(),
            }),
        }
    }

    /// Writes out every record the TLS state has queued, in order.
    fn send_pending(&self, send: &mut TlsSend<W>) -> io::Result<()> {
        loop {
            let n = {
                let mut conn = lock(&self.conn);
                if !conn.wants_write() {
                    return send.sink.flush();
                }
                conn.write_tls(&mut &mut send.staging[..])?
            };
            send.sink.write_all(&send.staging[..n])?;
        }
    }

    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let n = {
            let mut send = lock(&self.send);
            let n = lock(&self.conn).writer().write(buf)?;
            self.send_pending(&mut send)?;
            n
        };
        self.send_pending_if_free()?;
        Ok(n)
    }

    pub(crate) fn flush(&self) -> io::Result<()> {
        {
            let mut send = lock(&self.send);
            self.send_pending(&mut send)?;
        }
        self.send_pending_if_free()
    }

    /// Sends what is queued unless the other half holds the send lock.
    ///
    /// The reading half must never wait for that lock: the writing half may be blocked in a
    /// socket write to a peer that is itself waiting for this side to read. Whoever holds the
    /// lock sends everything queued before letting go, and looks again after letting go, so a
    /// record the reading half queues (an alert, a key update) is sent by one of the two.
    fn send_pending_if_free(&self) -> io::Result<()> {
        loop {
            match self.send.try_lock() {
                Ok(mut send) => self.send_pending(&mut send)?,
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    self.send_pending(&mut p.into_inner())?
                }
                Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
            }
            if !lock(&self.conn).wants_write() {
                return Ok(());
            }
        }
    }

    /// Sends `close_notify`, then ends the sink's sending direction.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        let mut send = lock(&self.send);
        lock(&self.conn).send_close_notify();
        self.send_pending(&mut send)?;
        send.sink.shutdown_write()
    }

    /// Bounds the sink's writes that follow.
    pub(crate) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        lock(&self.send).sink.set_write_timeout(t)
    }

    /// Reads plaintext into `out`, reading raw bytes from `src` into `raw` when it holds none.
    /// `Ok(0)` means the peer ended the TLS stream properly; an `UnexpectedEof` error means the
    /// connection ended without `close_notify`.
    ///
    /// rustls refuses more records while it holds over 16 KiB of decrypted data, and a record
    /// completed by one read may be followed by more in the same read. So raw bytes are handed
    /// over one `read_tls` call at a time, only once the decrypted data has been read out; what
    /// rustls did not take waits in `raw` for the next call.
    pub(crate) fn read(
        &self,
        src: &mut dyn Source,
        raw: &mut RawBuf,
        out: &mut [u8],
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match lock(&self.conn).reader().read(out) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            let eof = raw.start == raw.end && {
                let n = match src.read_by(&mut raw.buf, deadline) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                (raw.start, raw.end) = (0, n);
                n == 0
            };
            let wants_write = {
                let mut conn = lock(&self.conn);
                let mut chunk = &raw.buf[raw.start..raw.end];
                let taken = conn.read_tls(&mut chunk)?;
                debug_assert!(taken > 0 || eof);
                raw.start += taken;
                if let Err(e) = conn.process_new_packets() {
                    drop(conn);
                    let _ = self.send_pending_if_free();
                    return Err(tls_data_error(e));
                }
                conn.wants_write()
            };
            if wants_write {
                self.send_pending_if_free()?;
            }
        }
    }
}

/// Raw bytes read for a TLS session and not yet handed to it: `buf[start..end]`.
pub(crate) struct RawBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl RawBuf {
    pub(crate) fn new() -> RawBuf {
        RawBuf {
            buf: vec![0; TLS_IO_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
}

/// Time left until `deadline` as a socket timeout, or a `TimedOut` error.
fn time_left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

/// The receiving side of the connection to the proxy.
pub(crate) enum ReadSide {
    /// Plain TCP (a clone of the socket the write side holds).
    Plain(TcpStream),
    /// TLS: the shared state, a clone of the socket for raw reads, and the raw read buffer.
    Tls {
        shared: Arc<TlsShared<TcpStream>>,
        sock: TcpStream,
        raw: RawBuf,
    },
}

/// The sending side of the connection to the proxy.
pub(crate) enum WriteSide {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS: the shared state, which owns the socket it sends on.
    Tls(Arc<TlsShared<TcpStream>>),
}

/// Splits an open connection into its receiving and sending sides; `read_sock` is a clone of
/// `sock`.
pub(crate) fn sides(
    sock: TcpStream,
    read_sock: TcpStream,
    tls: Option<ClientConnection>,
) -> (ReadSide, WriteSide) {
    match tls {
        None => (ReadSide::Plain(read_sock), WriteSide::Plain(sock)),
        Some(conn) => {
            let shared = Arc::new(TlsShared::new(conn, sock));
            let read = ReadSide::Tls {
                shared: shared.clone(),
                sock: read_sock,
                raw: RawBuf::new(),
            };
            (read, WriteSide::Tls(shared))
        }
    }
}

impl ReadSide {
    /// The socket (a clone sharing the same kernel socket as the write side's).
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            ReadSide::Plain(s) => s,
            ReadSide::Tls { sock, .. } => sock,
        }
    }

    /// Reads stream bytes; with a deadline, every socket read is bounded by it.
    pub(crate) fn read(&mut self, out: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        match self {
            ReadSide::Plain(s) => s.read_by(out, deadline),
            ReadSide::Tls { shared, sock, raw } => shared.read(sock, raw, out, deadline),
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, ReadSide::Tls { .. })
    }
}

impl WriteSide {
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteSide::Plain(s) => s.write(buf),
            WriteSide::Tls(shared) => shared.write(buf),
        }
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self {
            WriteSide::Plain(s) => s.flush(),
            WriteSide::Tls(shared) => shared.flush(),
        }
    }

    /// Ends the sending direction: TLS `close_notify` where there is TLS, then TCP shutdown.
    pub(crate) fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            WriteSide::Plain(s) => shutdown_write(s),
            WriteSide::Tls(shared) => shared.shutdown_write(),
        }
    }

    /// Writes all of `buf` with every socket write bounded by `deadline`.
    pub(crate) fn write_all_by(&mut self, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
        while !buf.is_empty() {
            self.set_write_timeout(Some(time_left(deadline)?))?;
            match self.write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.set_write_timeout(Some(time_left(deadline)?))?;
        self.flush()
    }

    /// Sets the socket's write timeout.
    pub(crate) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            WriteSide::Plain(s) => s.set_write_timeout(t),
            WriteSide::Tls(shared) => shared.set_write_timeout(t),
        }
    }
}
