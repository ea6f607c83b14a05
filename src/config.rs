//! How a [`Connector`](crate::Connector) behaves: deadline, request headers, TLS, sockets.

use std::path::PathBuf;
use std::time::Duration;

use crate::address::Credentials;
use crate::request::Header;
use crate::transport::{ClientCert, SocketOptions, TlsOptions, TrustAnchors};

/// The default `User-Agent`: `connect-tunnel/<version>`.
pub const DEFAULT_USER_AGENT: &str = concat!("connect-tunnel/", env!("CARGO_PKG_VERSION"));

/// Configuration for establishing tunnels. Built with setters that take and return `self`.
///
/// ```
/// use std::time::Duration;
/// use connect_tunnel::Config;
///
/// let config = Config::default()
///     .connect_timeout(Duration::from_secs(10))
///     .proxy_ca_file("/etc/ssl/proxy-ca.pem")
///     .header("X-Device-Id: cam-0042")?;
/// # Ok::<(), connect_tunnel::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) connect_timeout: Duration,
    pub(crate) user_agent: Option<String>,
    pub(crate) headers: Vec<Header>,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) tls: TlsOptions,
    pub(crate) target_tls: Option<TlsOptions>,
    pub(crate) socket: SocketOptions,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            connect_timeout: Duration::from_secs(30),
            user_agent: Some(DEFAULT_USER_AGENT.to_owned()),
            headers: Vec::new(),
            credentials: None,
            tls: TlsOptions::default(),
            target_tls: None,
            socket: SocketOptions::default(),
        }
    }
}

impl Config {
    /// The one deadline for resolving the proxy, connecting, TLS, sending CONNECT and reading
    /// the reply, together. Defaults to 30 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The `User-Agent` sent on CONNECT; `None` sends none. Defaults to [`DEFAULT_USER_AGENT`].
    /// A value with CR, LF or NUL is refused when the request is built.
    pub fn user_agent(mut self, user_agent: Option<&str>) -> Self {
        self.user_agent = user_agent.map(str::to_owned);
        self
    }

    /// Adds a header (`"Name: value"`) to the CONNECT request. Refuses CR, LF and NUL.
    pub fn header(mut self, line: &str) -> Result<Self, crate::Error> {
        self.headers.push(Header::parse(line)?);
        Ok(self)
    }

    /// Adds an already checked header.
    pub fn add_header(mut self, header: Header) -> Self {
        self.headers.push(header);
        self
    }

    /// Credentials for proxy authentication (Basic, and Digest when the proxy asks for it);
    /// these win over credentials in the proxy URL.
    pub fn credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Trust the CA certificates in this PEM file for an `https://` proxy, instead of the
    /// default trust ([`TrustAnchors::WebPki`]: the built-in Mozilla roots, or the system's CA
    /// bundle in a build without the `webpki-roots` feature).
    pub fn proxy_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.trust = TrustAnchors::PemFile(path.into());
        self
    }

    /// Trust the CA certificates in this PEM text, instead of the default trust
    /// ([`TrustAnchors::WebPki`]).
    pub fn proxy_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.trust = TrustAnchors::Pem(pem.into());
        self
    }

    /// Present this client certificate chain and key (PEM files) to the proxy: mutual TLS.
    pub fn proxy_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.client_cert = Some(ClientCert::Files {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Present this client certificate chain and key, PEM held in memory, to the proxy.
    pub fn proxy_client_cert_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client_cert = Some(ClientCert::Pem {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Turn verification of the proxy's certificate and name on or off. Defaults to on.
    /// Off makes the connection open to interception; use it only to diagnose.
    pub fn proxy_verify(mut self, verify: bool) -> Self {
        self.tls.verify = verify;
        self
    }

    /// Run TLS to the target inside the tunnel (end to end; TLS-in-TLS when the proxy hop is
    /// TLS too), verifying the target's certificate against the target's host name with the
    /// default trust ([`TrustAnchors::WebPki`]) unless [`target_ca_file`](Self::target_ca_file)
    /// or [`target_ca_pem`](Self::target_ca_pem) says otherwise. Defaults to off.
    pub fn target_tls(mut self, on: bool) -> Self {
        self.target_tls = on.then(|| self.target_tls.take().unwrap_or_default());
        self
    }

    fn target_tls_mut(&mut self) -> &mut TlsOptions {
        self.target_tls.get_or_insert_with(TlsOptions::default)
    }

    /// Trust the CA certificates in this PEM file for the target's certificate. Turns
    /// [`target_tls`](Self::target_tls) on.
    pub fn target_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.target_tls_mut().trust = TrustAnchors::PemFile(path.into());
        self
    }

    /// Trust the CA certificates in this PEM text for the target's certificate. Turns
    /// [`target_tls`](Self::target_tls) on.
    pub fn target_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.target_tls_mut().trust = TrustAnchors::Pem(pem.into());
        self
    }

    /// Present this client certificate chain and key (PEM files) to the target. Turns
    /// [`target_tls`](Self::target_tls) on.
    pub fn target_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.target_tls_mut().client_cert = Some(ClientCert::Files {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Present this client certificate chain and key, PEM held in memory, to the target. Turns
    /// [`target_tls`](Self::target_tls) on.
    pub fn target_client_cert_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.target_tls_mut().client_cert = Some(ClientCert::Pem {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Verify the target's certificate and name (defaults to on). Off makes the end-to-end TLS
    /// open to interception. Turns [`target_tls`](Self::target_tls) on.
    pub fn target_verify(mut self, verify: bool) -> Self {
        self.target_tls_mut().verify = verify;
        self
    }

    /// The TLS settings for the target, when TLS to the target is on.
    pub fn target_tls_options(&self) -> Option<&TlsOptions> {
        self.target_tls.as_ref()
    }

    /// `TCP_NODELAY`. Defaults to on.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.socket.nodelay = on;
        self
    }

    /// TCP keepalive idle time; `None` turns keepalive off. Defaults to 30 s.
    pub fn keepalive(mut self, idle: Option<Duration>) -> Self {
        self.socket.keepalive = idle;
        self
    }

    /// `SO_SNDBUF`; `None` keeps the system default (the default).
    pub fn send_buffer_size(mut self, bytes: Option<usize>) -> Self {
        self.socket.send_buffer_size = bytes;
        self
    }

    /// `SO_RCVBUF`; `None` keeps the system default (the default).
    pub fn recv_buffer_size(mut self, bytes: Option<usize>) -> Self {
        self.socket.recv_buffer_size = bytes;
        self
    }

    /// DSCP code point (0–63) for the connection, e.g. `Some(46)` (EF) for voice. Defaults to
    /// `None` (the system's default marking). Values above 63 are masked to 6 bits.
    pub fn dscp(mut self, dscp: Option<u8>) -> Self {
        self.socket.dscp = dscp;
        self
    }

    /// `TCP_USER_TIMEOUT` on Linux: unacknowledged data older than this drops the connection,
    /// so a dead peer surfaces as an error within the bound. Defaults to `None` (the kernel's
    /// retransmission limits, many minutes). Ignored on other systems. From 1 ms to
    /// 2147483.647 s (`i32::MAX` ms, the kernel's limit); [`Connector::new`](crate::Connector::new)
    /// refuses other values ([`InvalidInput::SocketOption`](crate::InvalidInput::SocketOption)).
    ///
    /// Linux also counts the time during which the peer advertises a closed receive window
    /// (data waits unsent because of a zero window; tcp(7)): a peer that is alive but stops
    /// reading for longer than the bound makes the connection fail with `ETIMEDOUT` too. Set it
    /// above the longest stall the application tolerates from the far end (a paused player, a
    /// slow consumer), not just above the network's round-trip time.
    pub fn user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.socket.user_timeout = timeout;
        self
    }

    /// The TLS settings for the proxy (used when the proxy URL is `https://`).
    pub fn proxy_tls_options(&self) -> &TlsOptions {
        &self.tls
    }

    /// The socket options in force.
    pub fn socket_options(&self) -> &SocketOptions {
        &self.socket
    }
}
