//! The driver: runs the phases against real sockets, then hands over the open tunnel.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "tls")]
use rustls::pki_types::ServerName;

use crate::address::{Proxy, ProxyScheme, Target};
use crate::body::{BodyLength, ChunkedSkipper};
use crate::config::Config;
use crate::error::{Error, InvalidInput, Phase, ReplyProblem};
use crate::handshake::{ConnectHandshake, Handshake, Step};
use crate::reply::REPLY_HEAD_CAPACITY;
use crate::request::{ConnectRequest, REQUEST_CAPACITY};
#[cfg(feature = "tls")]
use crate::tls::{self, RawBuf, TlsShared};
use crate::transport::{self, io_error, remaining, ReadSide, Sink, Source, WriteSide};

/// What runs over an open tunnel: the handler style of using a [`Connector`].
///
/// The handler reads and writes raw bytes on the [`Tunnel`] until it is done; the connector then
/// closes it. Closures `FnMut(&mut Tunnel) -> io::Result<()>` are handlers too.
pub trait StreamHandler {
    /// Exchanges bytes over the open tunnel. Bytes the proxy sent right after its reply are the
    /// first ones `tunnel.read` returns.
    fn handle(&mut self, tunnel: &mut Tunnel) -> io::Result<()>;
}

impl<F: FnMut(&mut Tunnel) -> io::Result<()>> StreamHandler for F {
    fn handle(&mut self, tunnel: &mut Tunnel) -> io::Result<()> {
        self(tunnel)
    }
}

/// Opens tunnels through one proxy with one configuration.
///
/// Building it loads TLS material once; each [`connect`](Connector::connect) then runs the
/// phases: acquire addresses, build CONNECT, write, await reply.
#[derive(Debug)]
pub struct Connector {
    proxy: Proxy,
    config: Config,
    #[cfg(feature = "tls")]
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    #[cfg(feature = "tls")]
    target_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Connector {
    /// A connector for `proxy` with `config`. For an `https://` proxy this reads the CA and
    /// client certificate files now, so a bad file is reported before any connection.
    ///
    /// Built without the `tls` feature, an `https://` proxy or TLS to the target is refused
    /// with [`InvalidInput::TlsUnavailable`].
    pub fn new(proxy: Proxy, config: Config) -> Result<Connector, Error> {
        config.socket.check()?;
        #[cfg(not(feature = "tls"))]
        {
            if proxy.scheme() == ProxyScheme::Https || config.target_tls.is_some() {
                return Err(Error::invalid(
                    Phase::AcquireAddresses,
                    InvalidInput::TlsUnavailable,
                    "TLS (this build has no tls feature)",
                ));
            }
            Ok(Connector { proxy, config })
        }
        #[cfg(feature = "tls")]
        Self::with_tls(proxy, config)
    }

    #[cfg(feature = "tls")]
    fn with_tls(proxy: Proxy, config: Config) -> Result<Connector, Error> {
        let tls = match proxy.scheme() {
            ProxyScheme::Http => None,
            ProxyScheme::Https => {
                let name = ServerName::try_from(proxy.host().to_owned()).map_err(|_| {
                    Error::invalid(
                        Phase::AcquireAddresses,
                        InvalidInput::ProxyUrl,
                        "proxy host (as a TLS name)",
                    )
                })?;
                Some((tls::client_config(config.proxy_tls_options())?, name))
            }
        };
        let target_tls = match config.target_tls.as_ref() {
            Some(opts) => Some(tls::client_config(opts)?),
            None => None,
        };
        Ok(Connector {
            proxy,
            config,
            tls,
            target_tls,
        })
    }

    /// The proxy this connector uses.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// The configuration this connector uses.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Opens a tunnel to `target` with CONNECT and returns it for the caller to drive.
    pub fn connect(&self, target: &Target) -> Result<Tunnel, Error> {
        let mut request = ConnectRequest::new(target);
        request.credentials = self
            .config
            .credentials
            .as_ref()
            .or(self.proxy.credentials());
        request.user_agent = self.config.user_agent.as_deref();
        request.headers = &self.config.headers;
        log::info!("acquire addresses: proxy {}, target {target}", self.proxy);
        let started = Instant::now();
        let tunnel = self.through_proxy(&mut ConnectHandshake::new(request), started)?;
        self.with_target_layer(tunnel, target, started)
    }

    /// Opens a plain TCP connection straight to `target`, without the proxy — for targets the
    /// proxy must not be used for (the CLI's `NO_PROXY`) — with the same deadline, socket options
    /// and TLS to the target as [`connect`](Self::connect).
    pub fn connect_direct(&self, target: &Target) -> Result<Tunnel, Error> {
        log::info!("acquire addresses: no proxy, target {target}");
        let started = Instant::now();
        let deadline = started + self.config.connect_timeout;
        let addrs = transport::resolve(target.host(), target.port(), deadline)?;
        let sock = transport::connect_tcp(&addrs, &self.config.socket, deadline)?;
        let read_sock = sock.try_clone().map_err(|source| Error::Io {
            phase: Phase::Write,
            source,
        })?;
        let (rx, tx) = transport::plain_sides(sock, read_sock);
        let tunnel = Tunnel {
            reader: TunnelReader::proxy(rx, Box::new([]), 0, 0),
            writer: TunnelWriter::proxy(tx),
            handshake_time: started.elapsed(),
        };
        self.with_target_layer(tunnel, target, started)
    }

    /// Runs TLS to the target over `tunnel` when the configuration asks for it.
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    fn with_target_layer(
        &self,
        tunnel: Tunnel,
        target: &Target,
        started: Instant,
    ) -> Result<Tunnel, Error> {
        #[cfg(feature = "tls")]
        if let Some(config) = &self.target_tls {
            let name = ServerName::try_from(target.host().to_owned()).map_err(|_| {
                Error::invalid(
                    Phase::HandOff,
                    InvalidInput::Target,
                    "target host (as a TLS name)",
                )
            })?;
            let deadline = started + self.config.connect_timeout;
            return with_target_tls(tunnel, config.clone(), name, deadline, started);
        }
        Ok(tunnel)
    }

    /// Opens a tunnel to `target`, passes it to `handler`, then closes it.
    pub fn run(&self, target: &Target, handler: &mut dyn StreamHandler) -> Result<(), Error> {
        let mut tunnel = self.connect(target)?;
        log::info!("hand off: tunnel open after {:?}", tunnel.handshake_time());
        let result = handler.handle(&mut tunnel);
        log::info!("exchange: handler finished");
        let closed = tunnel.close();
        result.map_err(|source| Error::Handler { source })?;
        closed
    }

    /// Opens a tunnel using any [`Handshake`]: the seam for ways through a proxy other than
    /// CONNECT. One deadline ([`Config::connect_timeout`]) bounds every phase up to the open
    /// tunnel, retries after authentication challenges included.
    ///
    /// TLS to the target needs the target's name, which only the handshake knows: a
    /// configuration with [`Config::target_tls`] is refused here (use [`connect`](Self::connect)).
    pub fn connect_with(&self, handshake: &mut dyn Handshake) -> Result<Tunnel, Error> {
        if self.config.target_tls.is_some() {
            return Err(Error::invalid(
                Phase::HandOff,
                InvalidInput::Target,
                "target TLS with connect_with (use connect)",
            ));
        }
        self.through_proxy(handshake, Instant::now())
    }

    /// The phases up to the open tunnel, through the proxy, from `started`.
    fn through_proxy(
        &self,
        handshake: &mut dyn Handshake,
        started: Instant,
    ) -> Result<Tunnel, Error> {
        let deadline = started + self.config.connect_timeout;

        // Acquire addresses.
        let addrs = transport::resolve(self.proxy.host(), self.proxy.port(), deadline)?;
        log::debug!(
            "acquire addresses: {} resolves to {addrs:?}",
            self.proxy.host()
        );

        // The request is built in the buffer the reply is read into afterwards.
        let mut head = vec![0u8; REPLY_HEAD_CAPACITY.max(REQUEST_CAPACITY)].into_boxed_slice();
        let mut connection: Option<(ReadSide, WriteSide)> = None;
        loop {
            // Build CONNECT.
            let request_len = handshake.encode_request(&mut head[..REQUEST_CAPACITY])?;
            log::debug!(
                "build CONNECT: {} request, {request_len} bytes",
                handshake.name()
            );

            // Write: TCP to the first address that answers and TLS, unless a connection kept
            // alive after an authentication challenge is reused; then the request.
            let (rx, tx) = match connection.as_mut() {
                Some(open) => open,
                None => connection.insert(self.open(&addrs, deadline)?),
            };
            tx.write_all_by(&head[..request_len], deadline)
                .map_err(|e| io_error(e, Phase::Write))?;
            log::debug!("write: request sent");

            // Await reply.
            let (step, filled) = await_reply(rx, handshake, &mut head, Some(deadline))?;
            match step {
                Step::Open { reply_len } => {
                    let Some((rx, tx)) = connection else {
                        unreachable!("a reply was read on this connection")
                    };
                    return open_tunnel(rx, tx, head, reply_len, filled, started);
                }
                Step::Retry {
                    reply_len,
                    body,
                    keep_alive,
                } => {
                    let reused = keep_alive
                        && skip_body(rx, &mut head, reply_len, filled, body, Some(deadline))?;
                    log::debug!(
                        "await reply: retrying on {} connection",
                        if reused { "the same" } else { "a new" }
                    );
                    if !reused {
                        connection = None;
                    }
                }
            }
        }
    }

    /// Opens TCP to the proxy and, for an `https://` proxy, TLS.
    fn open(
        &self,
        addrs: &[std::net::SocketAddr],
        deadline: Instant,
    ) -> Result<(ReadSide, WriteSide), Error> {
        let phase = Phase::Write;
        #[allow(unused_mut)] // written only by TLS
        let mut sock = transport::connect_tcp(addrs, &self.config.socket, deadline)?;
        #[allow(unused_mut)] // written only by TLS
        let mut read_sock = sock
            .try_clone()
            .map_err(|source| Error::Io { phase, source })?;
        #[cfg(feature = "tls")]
        if let Some((config, name)) = &self.tls {
            let conn = tls::handshake(
                config.clone(),
                name.clone(),
                &mut read_sock,
                &mut sock,
                deadline,
                phase,
                |source| Error::Tls { source },
            )?;
            log::debug!(
                "write: TLS to the proxy established ({:?})",
                conn.protocol_version()
            );
            return Ok(transport::tls_sides(sock, read_sock, conn));
        }
        Ok(transport::plain_sides(sock, read_sock))
    }
}

impl Source for ReadSide {
    fn read_by(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        self.read(buf, deadline)
    }
}

/// Any `Read`: its own timeouts, if any, bound it.
struct Unbounded<'s, S>(&'s mut S);

impl<S: Read> Source for Unbounded<'_, S> {
    fn read_by(&mut self, buf: &mut [u8], _: Option<Instant>) -> io::Result<usize> {
        self.0.read(buf)
    }
}

/// Runs `handshake` over a stream the caller has already connected — any `Read + Write`: a
/// TLS stream from another library, a serial link, an in-memory stream in a test — and returns
/// the stream once the tunnel is open.
///
/// The phases are those of [`Connector::connect_with`] from build CONNECT on, with the same
/// fixed buffers; time is bounded only by the stream's own timeouts. An authentication retry
/// happens on the same stream when the proxy keeps it open; when the proxy closes it instead,
/// this fails with an [`Error::Io`] of kind `ConnectionAborted` in the await reply phase,
/// since only the caller can connect again.
pub fn establish<S: Read + Write>(
    mut stream: S,
    handshake: &mut dyn Handshake,
) -> Result<Established<S>, Error> {
    let mut head = vec![0u8; REPLY_HEAD_CAPACITY.max(REQUEST_CAPACITY)].into_boxed_slice();
    loop {
        let request_len = handshake.encode_request(&mut head[..REQUEST_CAPACITY])?;
        stream
            .write_all(&head[..request_len])
            .and_then(|()| stream.flush())
            .map_err(|e| io_error(e, Phase::Write))?;
        let (step, filled) = await_reply(&mut Unbounded(&mut stream), handshake, &mut head, None)?;
        match step {
            Step::Open { reply_len } => {
                return Ok(Established {
                    stream,
                    head,
                    pos: reply_len,
                    end: filled,
                })
            }
            Step::Retry {
                reply_len,
                body,
                keep_alive,
            } => {
                let reusable = keep_alive
                    && skip_body(
                        &mut Unbounded(&mut stream),
                        &mut head,
                        reply_len,
                        filled,
                        body,
                        None,
                    )?;
                if !reusable {
                    return Err(Error::Io {
                        phase: Phase::AwaitReply,
                        source: io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "the proxy wants a new connection for the next attempt",
                        ),
                    });
                }
            }
        }
    }
}

/// A caller's stream after [`establish`]: reads return first the stream bytes that arrived with
/// the proxy's reply, then the rest.
pub struct Established<S> {
    stream: S,
    head: Box<[u8]>,
    pos: usize,
    end: usize,
}

impl<S> Established<S> {
    /// Stream bytes that arrived with the reply and have not been read yet.
    pub fn buffered(&self) -> &[u8] {
        &self.head[self.pos..self.end]
    }

    /// The underlying stream. Reading from it directly skips [`buffered`](Self::buffered).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The underlying stream, mutably. Reading from it directly skips the buffered bytes.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

impl<S: Read> Read for Established<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.end {
            return Ok(take_buffered(&self.head[..self.end], &mut self.pos, buf));
        }
        self.stream.read(buf)
    }
}

impl<S: Write> Write for Established<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Copies buffered bytes `buffer[*pos..]` into `buf`, advancing `pos`.
fn take_buffered(buffer: &[u8], pos: &mut usize, buf: &mut [u8]) -> usize {
    let n = buf.len().min(buffer.len() - *pos);
    buf[..n].copy_from_slice(&buffer[*pos..*pos + n]);
    *pos += n;
    n
}

/// Reads into `head` until the handshake decides; returns its step and the bytes read.
fn await_reply(
    rx: &mut dyn Source,
    handshake: &mut dyn Handshake,
    head: &mut [u8],
    deadline: Option<Instant>,
) -> Result<(Step, usize), Error> {
    let phase = Phase::AwaitReply;
    let closed_early = Error::Reply {
        problem: ReplyProblem::ClosedEarly,
    };
    let mut filled = 0;
    loop {
        if filled == head.len() {
            return Err(Error::Reply {
                problem: ReplyProblem::HeadTooLarge,
            });
        }
        if let Some(deadline) = deadline {
            remaining(deadline, phase)?;
        }
        match rx.read_by(&mut head[filled..], deadline) {
            Ok(0) => return Err(closed_early),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(closed_early),
            // A TLS alert or protocol error from the proxy. Over TLS 1.3 the proxy checks a
            // client certificate after the client's side of the handshake is done, so a
            // missing or rejected one is reported here.
            #[cfg(feature = "tls")]
            Err(e) if tls::is_tls_failure(&e) => return Err(Error::Tls { source: e }),
            Err(e) => return Err(io_error(e, phase)),
        }
        if let Some(step) = handshake.try_reply(&head[..filled])? {
            return Ok((step, filled));
        }
    }
}

/// Largest body of a refusal that is read and discarded to keep its connection; a larger one
/// means a new connection instead.
const MAX_SKIPPED_BODY: u64 = 64 * 1024;

/// Reads and discards the body after a reply head, so the connection can carry the next
/// request. `head[start..filled]` holds bytes already read past the head. Returns whether the
/// connection is fit for reuse: `false` for a body delimited by close, a body over
/// [`MAX_SKIPPED_BODY`], broken framing, bytes beyond the body, or a connection that ended.
fn skip_body(
    rx: &mut dyn Source,
    head: &mut [u8],
    start: usize,
    filled: usize,
    body: BodyLength,
    deadline: Option<Instant>,
) -> Result<bool, Error> {
    let (mut pos, mut end) = (start, filled);
    let mut skipped = 0u64;
    let mut chunked = ChunkedSkipper::new();
    loop {
        let pending = &head[pos..end];
        let (used, done) = match body {
            BodyLength::Exactly(n) if n > MAX_SKIPPED_BODY => return Ok(false),
            BodyLength::Exactly(n) => {
                let used = (n - skipped).min(pending.len() as u64) as usize;
                (used, skipped + used as u64 == n)
            }
            BodyLength::Chunked => match chunked.skip(pending) {
                Ok(used) => (used, chunked.is_done()),
                Err(_) => return Ok(false),
            },
            _ => return Ok(false),
        };
        pos += used;
        skipped += used as u64;
        if done {
            // Anything after the body was not asked for: do not reuse the connection.
            return Ok(pos == end);
        }
        if skipped > MAX_SKIPPED_BODY {
            return Ok(false);
        }
        if let Some(deadline) = deadline {
            remaining(deadline, Phase::AwaitReply)?;
        }
        match rx.read_by(head, deadline) {
            Ok(0) => return Ok(false),
            Ok(n) => (pos, end) = (0, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => (pos, end) = (0, 0),
            Err(e) => {
                return match io_error(e, Phase::AwaitReply) {
                    timeout @ Error::Timeout { .. } => Err(timeout),
                    _ => Ok(false),
                }
            }
        }
    }
}

/// The tunnel is open: clear the handshake's timeouts and hand over the stream.
fn open_tunnel(
    rx: ReadSide,
    tx: WriteSide,
    head: Box<[u8]>,
    reply_len: usize,
    filled: usize,
    started: Instant,
) -> Result<Tunnel, Error> {
    rx.socket()
        .set_read_timeout(None)
        .and_then(|()| tx.set_write_timeout(None))
        .map_err(|source| Error::Io {
            phase: Phase::AwaitReply,
            source,
        })?;
    let handshake_time = started.elapsed();
    log::info!(
        "await reply: tunnel open in {handshake_time:?}, {} stream bytes arrived with the reply",
        filled - reply_len
    );
    Ok(Tunnel {
        reader: TunnelReader::proxy(rx, head, reply_len, filled),
        writer: TunnelWriter::proxy(tx),
        handshake_time,
    })
}

/// An open tunnel: raw bytes both ways over the connection to the proxy.
///
/// Reads return first the bytes that arrived with the proxy's reply, then the rest of the
/// stream. Plain and TLS connections to the proxy are the same type. For one thread per
/// direction, [`split`](Tunnel::split) it.
pub struct Tunnel {
    reader: TunnelReader,
    writer: TunnelWriter,
    handshake_time: Duration,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("tls", &self.is_tls())
            .field("buffered", &self.reader.buffered().len())
            .field("handshake_time", &self.handshake_time)
            .finish()
    }
}

impl Tunnel {
    /// Time from the start of the connect call to the open tunnel.
    pub fn handshake_time(&self) -> Duration {
        self.handshake_time
    }

    /// Whether the connection to the proxy is TLS.
    pub fn is_tls(&self) -> bool {
        self.reader.proxy_is_tls()
    }

    /// Whether TLS to the target runs inside the tunnel (see [`Config::target_tls`]).
    pub fn is_target_tls(&self) -> bool {
        match self.reader.inner {
            ReadInner::Proxy { .. } => false,
            #[cfg(feature = "tls")]
            ReadInner::TargetTls { .. } => true,
        }
    }

    /// The TCP socket to the proxy, for socket options and timeouts.
    pub fn get_ref(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Ends the sending direction (TLS `close_notify`, then TCP shutdown) while reading goes on.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.writer.shutdown_write()
    }

    /// Splits the tunnel into a reading half and a writing half that can move to separate
    /// threads. Over TLS both halves share the one TLS session.
    pub fn split(self) -> (TunnelReader, TunnelWriter) {
        (self.reader, self.writer)
    }

    /// Ends the tunnel: `close_notify` where there is TLS, then TCP shutdown of both
    /// directions. Errors are reported, not ignored.
    pub fn close(mut self) -> Result<(), Error> {
        let phase = Phase::Close;
        if !self.writer.write_closed {
            match self.writer.shutdown_write() {
                Ok(()) => {}
                // The peer is already gone: nothing left to close.
                Err(e) if is_gone(&e) => {}
                Err(source) => return Err(Error::Io { phase, source }),
            }
        }
        match self.get_ref().shutdown(Shutdown::Both) {
            Err(e) if !is_gone(&e) => Err(Error::Io { phase, source: e }),
            _ => Ok(()),
        }
    }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotConnected | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

impl Read for Tunnel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for Tunnel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// The reading half of a [`Tunnel`].
pub struct TunnelReader {
    inner: ReadInner,
}

enum ReadInner {
    /// Bytes straight from the connection to the proxy.
    Proxy {
        side: ReadSide,
        /// The reply-head buffer; `head[pos..end]` are stream bytes that came with the reply.
        head: Box<[u8]>,
        pos: usize,
        end: usize,
    },
    /// TLS to the target inside the tunnel: records come from the tunnel below.
    #[cfg(feature = "tls")]
    TargetTls {
        shared: Arc<TlsShared<TunnelWriter>>,
        below: Box<TunnelReader>,
        raw: RawBuf,
    },
}

impl TunnelReader {
    fn proxy(side: ReadSide, head: Box<[u8]>, pos: usize, end: usize) -> Self {
        TunnelReader {
            inner: ReadInner::Proxy {
                side,
                head,
                pos,
                end,
            },
        }
    }

    /// Stream bytes that arrived with the proxy's reply and have not been read yet (none once
    /// TLS to the target runs inside the tunnel: those bytes were TLS records).
    pub fn buffered(&self) -> &[u8] {
        match &self.inner {
            ReadInner::Proxy { head, pos, end, .. } => &head[*pos..*end],
            #[cfg(feature = "tls")]
            ReadInner::TargetTls { .. } => &[],
        }
    }

    /// The TCP socket to the proxy.
    pub fn get_ref(&self) -> &TcpStream {
        match &self.inner {
            ReadInner::Proxy { side, .. } => side.socket(),
            #[cfg(feature = "tls")]
            ReadInner::TargetTls { below, .. } => below.get_ref(),
        }
    }

    fn proxy_is_tls(&self) -> bool {
        match &self.inner {
            ReadInner::Proxy { side, .. } => side.is_tls(),
            #[cfg(feature = "tls")]
            ReadInner::TargetTls { below, .. } => below.proxy_is_tls(),
        }
    }
}

impl Source for TunnelReader {
    fn read_by(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.inner {
            ReadInner::Proxy {
                side,
                head,
                pos,
                end,
            } => {
                if *pos < *end {
                    return Ok(take_buffered(&head[..*end], pos, buf));
                }
                side.read(buf, deadline)
            }
            #[cfg(feature = "tls")]
            ReadInner::TargetTls { shared, below, raw } => {
                shared.read(&mut **below, raw, buf, deadline)
            }
        }
    }
}

impl Read for TunnelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_by(buf, None)
    }
}

/// The writing half of a [`Tunnel`].
pub struct TunnelWriter {
    inner: WriteInner,
    write_closed: bool,
}

enum WriteInner {
    /// Bytes straight to the connection to the proxy.
    Proxy(WriteSide),
    /// TLS to the target inside the tunnel: records go to the tunnel below.
    #[cfg(feature = "tls")]
    TargetTls(Arc<TlsShared<TunnelWriter>>),
}

impl TunnelWriter {
    fn proxy(side: WriteSide) -> Self {
        TunnelWriter {
            inner: WriteInner::Proxy(side),
            write_closed: false,
        }
    }

    /// Ends the sending direction: TLS `close_notify` where there is TLS (to the target inside
    /// the tunnel first, then to the proxy), then TCP shutdown of the sending side. The other
    /// direction keeps flowing.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.write_closed = true;
        match &mut self.inner {
            WriteInner::Proxy(side) => side.shutdown_write(),
            #[cfg(feature = "tls")]
            WriteInner::TargetTls(shared) => shared.shutdown_write(),
        }
    }
}

impl Sink for TunnelWriter {
    fn shutdown_write(&mut self) -> io::Result<()> {
        TunnelWriter::shutdown_write(self)
    }

    fn set_write_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        match &mut self.inner {
            WriteInner::Proxy(side) => side.set_write_timeout(t),
            #[cfg(feature = "tls")]
            WriteInner::TargetTls(shared) => shared.set_write_timeout(t),
        }
    }
}

impl Write for TunnelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            WriteInner::Proxy(side) => side.write(buf),
            #[cfg(feature = "tls")]
            WriteInner::TargetTls(shared) => shared.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            WriteInner::Proxy(side) => side.flush(),
            #[cfg(feature = "tls")]
            WriteInner::TargetTls(shared) => shared.flush(),
        }
    }
}

#[cfg(feature = "tls")]
/// Runs TLS to the target over an open tunnel, within `deadline`, verifying the target's
/// certificate against `name`; returns the tunnel carrying the target's plaintext.
fn with_target_tls(
    tunnel: Tunnel,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    deadline: Instant,
    started: Instant,
) -> Result<Tunnel, Error> {
    let phase = Phase::HandOff;
    let Tunnel {
        mut reader,
        mut writer,
        ..
    } = tunnel;
    let conn = tls::handshake(
        config,
        name,
        &mut reader,
        &mut writer,
        deadline,
        phase,
        |source| Error::TargetTls { source },
    )?;
    reader
        .get_ref()
        .set_read_timeout(None)
        .map_err(|source| Error::Io { phase, source })?;
    log::debug!(
        "hand off: TLS to the target established ({:?})",
        conn.protocol_version()
    );
    let shared = Arc::new(TlsShared::new(conn, writer));
    Ok(Tunnel {
        reader: TunnelReader {
            inner: ReadInner::TargetTls {
                shared: shared.clone(),
                below: Box::new(reader),
                raw: RawBuf::new(),
            },
        },
        writer: TunnelWriter {
            inner: WriteInner::TargetTls(shared),
            write_closed: false,
        },
        handshake_time: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{Credentials, Target};

    /// An in-memory proxy: replies are served in the given chunks, writes are recorded.
    struct Scripted {
        chunks: std::collections::VecDeque<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Scripted {
        fn new(chunks: &[&[u8]]) -> Self {
            Scripted {
                chunks: chunks
                    .iter()
                    .filter(|c| !c.is_empty())
                    .map(|c| c.to_vec())
                    .collect(),
                written: Vec::new(),
            }
        }
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(chunk) = self.chunks.front_mut() else {
                return Ok(0);
            };
            let n = buf.len().min(chunk.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
            Ok(n)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn establish_answers_digest_on_the_same_stream_and_keeps_early_data() {
        let t = Target::parse("cam:554").unwrap();
        let c = Credentials::new("u", "p").unwrap();
        let mut request = ConnectRequest::new(&t);
        request.credentials = Some(&c);
        let stream = Scripted::new(&[
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"n\", qop=\"auth\"\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nde",
            b"ny\r\n0\r\n\r\n",
            b"HTTP/1.1 200 Connection established\r\n\r\nRTSP/1.0 200",
            b" OK",
        ]);
        let mut open = establish(stream, &mut ConnectHandshake::new(request)).unwrap();
        assert_eq!(open.buffered(), b"RTSP/1.0 200");
        let mut all = Vec::new();
        open.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"RTSP/1.0 200 OK");
        let written = String::from_utf8(open.get_ref().written.clone()).unwrap();
        let requests: Vec<&str> = written.split_inclusive("\r\n\r\n").collect();
        assert_eq!(requests.len(), 2, "{written}");
        assert!(requests[0].contains("Proxy-Authorization: Basic dTpw\r\n"));
        assert!(requests[1].contains("Proxy-Authorization: Digest username=\"u\""));
    }

    #[test]
    fn establish_reports_a_close_after_the_challenge() {
        let t = Target::parse("cam:554").unwrap();
        let c = Credentials::new("u", "p").unwrap();
        let mut request = ConnectRequest::new(&t);
        request.credentials = Some(&c);
        let stream = Scripted::new(&[
            b"HTTP/1.0 407 x\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"n\"\r\n\r\n<html>",
        ]);
        match establish(stream, &mut ConnectHandshake::new(request)) {
            Err(Error::Io {
                phase: Phase::AwaitReply,
                source,
            }) => {
                assert_eq!(source.kind(), io::ErrorKind::ConnectionAborted)
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn establish_every_split_of_the_reply() {
        let reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nProxy-agent: x\r\n\r\nDATA";
        for cut in 0..=reply.len() {
            let t = Target::parse("h:1").unwrap();
            let stream = Scripted::new(&[&reply[..cut], &reply[cut..]]);
            let mut open =
                establish(stream, &mut ConnectHandshake::new(ConnectRequest::new(&t))).unwrap();
            let mut all = Vec::new();
            open.read_to_end(&mut all).unwrap();
            assert_eq!(all, b"DATA", "cut at {cut}");
        }
    }
}
