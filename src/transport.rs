//! Sockets: resolving and connecting within a deadline, socket options, and the reading and
//! writing sides of the connection to the proxy, plain or TLS (TLS itself is in `tls.rs`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::mpsc;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "tls")]
use rustls::ClientConnection;

use crate::error::{Error, InvalidInput, Phase};
#[cfg(feature = "tls")]
use crate::tls::{RawBuf, TlsShared};

/// Size of the buffer raw TLS bytes are read into, and of the buffer TLS records are staged in
/// before they are written: room for four full records (16 KiB of plaintext each, plus header,
/// tag and padding: 16,640 B), so that a 64 KiB write leaves in one system call and one read
/// can take in as much.
pub const TLS_IO_CHUNK: usize = 4 * 16_640;

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
    /// keepalive, also bounds detection on an idle connection. Linux counts time during which
    /// the peer advertises a closed receive window too, so a peer that stops reading for longer
    /// fails the connection: set it above the longest stall the application tolerates. `None`
    /// leaves the default.
    pub user_timeout: Option<Duration>,
}

impl SocketOptions {
    /// The [`keepalive`](SocketOptions::keepalive) idle times Linux accepts for `TCP_KEEPIDLE`:
    /// 1–32767 s.
    pub const KEEPALIVE_RANGE: RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(32767);
    /// The [`user_timeout`](SocketOptions::user_timeout) values the kernel accepts:
    /// `TCP_USER_TIMEOUT` takes a C `int` of milliseconds, so 1 ms to `i32::MAX` ms
    /// (2147483.647 s, about 24.8 days).
    pub const USER_TIMEOUT_RANGE: RangeInclusive<Duration> =
        Duration::from_millis(1)..=Duration::from_millis(i32::MAX as u64);

    /// Refuses values the kernel would reject at connect time, so they are reported as input
    /// errors up front: [`KEEPALIVE_RANGE`](Self::KEEPALIVE_RANGE) and
    /// [`USER_TIMEOUT_RANGE`](Self::USER_TIMEOUT_RANGE).
    pub(crate) fn check(&self) -> Result<(), Error> {
        let bad = |what| {
            Err(Error::invalid(
                Phase::AcquireAddresses,
                InvalidInput::SocketOption,
                what,
            ))
        };
        if let Some(idle) = self.keepalive {
            if !Self::KEEPALIVE_RANGE.contains(&idle) {
                return bad("keepalive idle time");
            }
        }
        if let Some(t) = self.user_timeout {
            if !Self::USER_TIMEOUT_RANGE.contains(&t) {
                return bad("user timeout");
            }
        }
        Ok(())
    }
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

/// The system CA bundles the default trust falls back to when the crate is built without the
/// `webpki-roots` feature, in the order they are tried (as curl does): Debian, Ubuntu,
/// Raspberry Pi OS and Buildroot; Fedora and RHEL; Alpine, OpenWrt and macOS. The first that
/// exists is used.
pub const SYSTEM_CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The largest certificate, key or CA file (PEM) the crate reads, in bytes: 1 MiB, five times
/// a full system CA bundle (Debian's `/etc/ssl/certs/ca-certificates.crt` is about 220 KB). A
/// larger file, or one that never ends (`/dev/zero`), is refused with [`Error::TlsFile`]
/// naming it, after reading at most this much plus one byte.
pub const MAX_PEM_FILE_SIZE: u64 = 1024 * 1024;

/// Which certificate authorities the client trusts for the proxy's certificate (or the
/// target's, for TLS inside the tunnel).
#[derive(Clone, PartialEq, Eq)]
pub enum TrustAnchors {
    /// The default trust. With the crate feature `webpki-roots` (on by default): the Mozilla
    /// root program, built into the binary. Without it: the system's CA bundle, the first of
    /// [`SYSTEM_CA_BUNDLES`] that exists, read when the connector is built; if none exists,
    /// building the connector fails with [`InvalidInput::TlsMaterial`] naming the paths tried
    /// (give a CA file instead: [`PemFile`](Self::PemFile), `--proxy-cacert`, `--cacert`).
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

/// A client certificate chain and its private key, PEM, for mutual TLS.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientCert {
    /// Read from these files when the connector is built.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Held in memory (for example, read from the device's secure storage).
    Pem {
        /// The certificate chain, leaf first.
        cert: Vec<u8>,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: Vec<u8>,
    },
}

impl std::fmt::Debug for ClientCert {
    /// Never shows the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCert::Files { cert, key } => f
                .debug_struct("Files")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            ClientCert::Pem { cert, .. } => {
                write!(f, "Pem({} bytes of certificate, key hidden)", cert.len())
            }
        }
    }
}

/// TLS settings for one TLS layer: to the proxy, or to the target inside the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// Whom to trust. Defaults to [`TrustAnchors::WebPki`]: the built-in Mozilla roots, or the
    /// system's CA bundle in a build without the `webpki-roots` feature.
    pub trust: TrustAnchors,
    /// A client certificate chain and its private key for mutual TLS.
    pub client_cert: Option<ClientCert>,
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
#[cfg_attr(not(feature = "tls"), allow(dead_code))] // only TLS writes through it
pub(crate) trait Sink: Write {
    /// Ends the sending direction (after any `close_notify` was written).
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// Bounds the writes that follow.
    fn set_write_timeout(&mut self, t: Option<Duration>) -> io::Result<()>;
}

/// Ends a socket's sending direction. A connection the peer has already torn down has no
/// sending direction left to end, so `NotConnected` counts as done.
pub(crate) fn shutdown_write(sock: &TcpStream) -> io::Result<()> {
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

/// Time left until `deadline` as a socket timeout, or a `TimedOut` error.
pub(crate) fn time_left(deadline: Instant) -> io::Result<Duration> {
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
    #[cfg(feature = "tls")]
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
    #[cfg(feature = "tls")]
    Tls(Arc<TlsShared<TcpStream>>),
}

/// The sides of a plain connection; `read_sock` is a clone of `sock`.
pub(crate) fn plain_sides(sock: TcpStream, read_sock: TcpStream) -> (ReadSide, WriteSide) {
    (ReadSide::Plain(read_sock), WriteSide::Plain(sock))
}

/// The sides of a TLS connection whose handshake is done; `read_sock` is a clone of `sock`.
#[cfg(feature = "tls")]
pub(crate) fn tls_sides(
    sock: TcpStream,
    read_sock: TcpStream,
    conn: ClientConnection,
) -> (ReadSide, WriteSide) {
    let shared = Arc::new(TlsShared::new(conn, sock));
    let read = ReadSide::Tls {
        shared: shared.clone(),
        sock: read_sock,
        raw: RawBuf::new(),
    };
    (read, WriteSide::Tls(shared))
}

impl ReadSide {
    /// The socket (a clone sharing the same kernel socket as the write side's).
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            ReadSide::Plain(s) => s,
            #[cfg(feature = "tls")]
            ReadSide::Tls { sock, .. } => sock,
        }
    }

    /// Reads stream bytes; with a deadline, every socket read is bounded by it.
    pub(crate) fn read(&mut self, out: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        match self {
            ReadSide::Plain(s) => s.read_by(out, deadline),
            #[cfg(feature = "tls")]
            ReadSide::Tls { shared, sock, raw } => shared.read(sock, raw, out, deadline),
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        match self {
            ReadSide::Plain(_) => false,
            #[cfg(feature = "tls")]
            ReadSide::Tls { .. } => true,
        }
    }
}

impl WriteSide {
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteSide::Plain(s) => s.write(buf),
            #[cfg(feature = "tls")]
            WriteSide::Tls(shared) => shared.write(buf),
        }
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self {
            WriteSide::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            WriteSide::Tls(shared) => shared.flush(),
        }
    }

    /// Ends the sending direction: TLS `close_notify` where there is TLS, then TCP shutdown.
    pub(crate) fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            WriteSide::Plain(s) => shutdown_write(s),
            #[cfg(feature = "tls")]
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
            #[cfg(feature = "tls")]
            WriteSide::Tls(shared) => shared.set_write_timeout(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `TCP_USER_TIMEOUT` is a C `int` of milliseconds: values up to `i32::MAX` ms pass, larger
    /// ones (which the kernel would refuse at connect time) are input errors up front.
    #[test]
    fn user_timeout_is_checked_against_the_kernels_int() {
        let check = |t: Duration| {
            SocketOptions {
                user_timeout: Some(t),
                ..SocketOptions::default()
            }
            .check()
        };
        for ok in [
            Duration::from_millis(1),
            Duration::from_secs(30),
            Duration::from_millis(i32::MAX as u64),
        ] {
            assert!(check(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            Duration::ZERO,
            Duration::from_micros(999),
            Duration::from_millis(i32::MAX as u64 + 1),
            Duration::from_millis(u64::from(u32::MAX)),
        ] {
            match check(bad) {
                Err(Error::InvalidInput {
                    kind: InvalidInput::SocketOption,
                    what: "user timeout",
                    ..
                }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
