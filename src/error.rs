//! The crate's one error type, and the phase each error comes from.

use std::fmt;
use std::io;

/// The phases of establishing and using a tunnel, in the order they run.
///
/// Log lines and errors name these, so a failure can be placed in the flow at a glance:
///
/// ```text
/// acquire addresses -> build CONNECT -> write -> await reply -> hand off -> exchange -> close
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Parsing the proxy URL and the target, and resolving the proxy's name.
    AcquireAddresses,
    /// Encoding the CONNECT request into its fixed buffer.
    BuildConnect,
    /// Opening TCP (trying each of the proxy's addresses in turn) and TLS to the proxy, and
    /// sending the request.
    Write,
    /// Reading and parsing the proxy's reply.
    AwaitReply,
    /// Passing the open tunnel to a [`StreamHandler`](crate::StreamHandler).
    HandOff,
    /// The handler's raw byte exchange.
    Exchange,
    /// Ending the tunnel: TLS `close_notify`, then TCP shutdown.
    Close,
}

impl Phase {
    /// The phase's name as it appears in logs and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Phase::AcquireAddresses => "acquire addresses",
            Phase::BuildConnect => "build CONNECT",
            Phase::Write => "write",
            Phase::AwaitReply => "await reply",
            Phase::HandOff => "hand off",
            Phase::Exchange => "exchange",
            Phase::Close => "close",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a piece of input was refused before any socket was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidInput {
    /// The proxy URL is malformed (no host, bad port, bad percent-encoding, ...).
    ProxyUrl,
    /// The proxy URL's scheme is neither `http` nor `https`.
    ProxyScheme,
    /// The target is not `host:port` or `[v6addr]:port`.
    Target,
    /// A value contains CR, LF or NUL, which would break the request's framing.
    ForbiddenByte,
    /// A header name is empty or is not an HTTP token.
    HeaderName,
    /// A header is not of the form `Name: value`.
    HeaderSyntax,
    /// The request does not fit the fixed request buffer.
    RequestTooLarge,
    /// A certificate, key or CA file holds no usable PEM item (a file that cannot be read at
    /// all is [`Error::TlsFile`], which names it).
    TlsMaterial,
    /// TLS was asked for, but this build of the crate has no `tls` feature.
    TlsUnavailable,
    /// A socket option is out of the range the system accepts (keepalive idle time 1–32767 s,
    /// user timeout 1 ms – 2147483.647 s, `i32::MAX` ms).
    SocketOption,
    /// A proxy user name contains `:`, which Basic authentication (`user:password`) cannot
    /// carry.
    UserName,
}

impl InvalidInput {
    fn describe(self) -> &'static str {
        match self {
            InvalidInput::ProxyUrl => "malformed proxy URL",
            InvalidInput::ProxyScheme => "proxy URL scheme must be http or https",
            InvalidInput::Target => "target must be host:port or [v6addr]:port",
            InvalidInput::ForbiddenByte => "CR, LF or NUL is not allowed",
            InvalidInput::HeaderName => "header name is not an HTTP token",
            InvalidInput::HeaderSyntax => "header must be 'Name: value'",
            InvalidInput::RequestTooLarge => "CONNECT request exceeds the request buffer",
            InvalidInput::TlsMaterial => "unusable TLS certificate, key or CA file",
            InvalidInput::TlsUnavailable => "this build has no TLS support",
            InvalidInput::SocketOption => "socket option out of range",
            InvalidInput::UserName => "a user name cannot contain ':' in Basic authentication",
        }
    }
}

/// Why a proxy's reply could not be understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyProblem {
    /// The bytes are not an HTTP/1.x status line and headers.
    NotHttp,
    /// The reply head does not fit the fixed reply-head buffer.
    HeadTooLarge,
    /// The reply has more headers than the fixed header capacity.
    TooManyHeaders,
    /// More interim (1xx) replies than the handshake accepts.
    TooManyInterim,
    /// The proxy closed the connection before a complete reply head.
    ClosedEarly,
}

impl ReplyProblem {
    fn describe(self) -> &'static str {
        match self {
            ReplyProblem::NotHttp => "not an HTTP/1.x reply",
            ReplyProblem::HeadTooLarge => "reply head exceeds the reply buffer",
            ReplyProblem::TooManyHeaders => "reply has more headers than allowed",
            ReplyProblem::TooManyInterim => "too many interim (1xx) replies",
            ReplyProblem::ClosedEarly => "connection closed before a complete reply",
        }
    }
}

/// Every way establishing or using a tunnel can fail.
///
/// Each variant says which [`Phase`] failed (see [`Error::phase`]) and why.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Input was refused before a socket was opened (phase: acquire addresses or build CONNECT).
    InvalidInput {
        /// The phase that refused it.
        phase: Phase,
        /// What was wrong.
        kind: InvalidInput,
        /// Which input it was (never its value: it may be a secret).
        what: &'static str,
    },
    /// A certificate, key or CA file could not be read: missing, unreadable, or larger than
    /// [`MAX_PEM_FILE_SIZE`](crate::MAX_PEM_FILE_SIZE) (phase: acquire addresses). What a file
    /// that was read holds is checked afterwards: malformed or unusable content is
    /// [`InvalidInput::TlsMaterial`].
    TlsFile {
        /// Which file it was (`CA file`, `client certificate`, `client key`, `system CA
        /// bundle`).
        what: &'static str,
        /// The file's path.
        path: std::path::PathBuf,
        /// The system's error, or one of kind `InvalidData` for a file over the size limit.
        source: io::Error,
    },
    /// The proxy's host name did not resolve (phase: acquire addresses).
    Resolve {
        /// The name that was looked up.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// No TCP connection could be opened to any of the proxy's addresses (phase: write).
    Connect {
        /// The last address tried.
        addr: std::net::SocketAddr,
        /// The error for that address.
        source: io::Error,
    },
    /// The TLS handshake with the proxy failed: untrusted or expired certificate, wrong name,
    /// a peer that does not speak TLS, a rejected client certificate (phase: write; over TLS
    /// 1.3 a rejected client certificate is only reported once the reply is awaited).
    Tls {
        /// What rustls or the socket reported.
        source: io::Error,
    },
    /// TLS to the target inside the tunnel failed: untrusted or expired certificate, wrong
    /// name, a target that does not speak TLS (phase: hand off).
    TargetTls {
        /// What rustls or the tunnel reported.
        source: io::Error,
    },
    /// The phase's deadline passed (phases acquire addresses to await reply share one deadline).
    Timeout {
        /// The phase that was running when the deadline passed.
        phase: Phase,
    },
    /// An I/O error on the established connection in the given phase.
    Io {
        /// The phase that failed.
        phase: Phase,
        /// The underlying error.
        source: io::Error,
    },
    /// The proxy's reply could not be understood (phase: await reply).
    Reply {
        /// What was wrong with it.
        problem: ReplyProblem,
    },
    /// The proxy requires authentication or rejected the credentials: a 407, or a 401 from a
    /// proxy that answers a wrong password that way (phase: await reply).
    Auth {
        /// The status code (407 or 401).
        status: u16,
        /// The authentication schemes the proxy offered (`Basic`, `Digest`, ...), in order.
        schemes: Vec<String>,
        /// Whether credentials were sent with the request.
        credentials_sent: bool,
    },
    /// The proxy answered with a status other than 2xx, 1xx or an authentication challenge
    /// (phase: await reply).
    Refused {
        /// The status code.
        status: u16,
        /// The reason phrase, as sent (may be empty).
        reason: String,
    },
    /// The stream handler returned an error (phase: exchange).
    Handler {
        /// The handler's error.
        source: io::Error,
    },
}

impl Error {
    /// The phase this error comes from.
    pub fn phase(&self) -> Phase {
        match self {
            Error::InvalidInput { phase, .. } => *phase,
            Error::TlsFile { .. } | Error::Resolve { .. } => Phase::AcquireAddresses,
            Error::Connect { .. } | Error::Tls { .. } => Phase::Write,
            Error::TargetTls { .. } => Phase::HandOff,
            Error::Timeout { phase } | Error::Io { phase, .. } => *phase,
            Error::Reply { .. } | Error::Auth { .. } | Error::Refused { .. } => Phase::AwaitReply,
            Error::Handler { .. } => Phase::Exchange,
        }
    }

    pub(crate) fn invalid(phase: Phase, kind: InvalidInput, what: &'static str) -> Error {
        Error::InvalidInput { phase, kind, what }
    }

    /// The CLI's exit code for this error, as documented in the README:
    /// 2 invalid input, 3 proxy unreachable or TLS failure (to the proxy or the target), 4 authentication, 5 other non-2xx reply,
    /// 6 invalid/oversize/truncated reply, 7 deadline passed, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::InvalidInput { .. } | Error::TlsFile { .. } => 2,
            Error::Resolve { .. }
            | Error::Connect { .. }
            | Error::Tls { .. }
            | Error::TargetTls { .. } => 3,
            Error::Auth { .. } => 4,
            Error::Refused { .. } => 5,
            Error::Reply { .. } => 6,
            Error::Io {
                phase: Phase::Write | Phase::AwaitReply,
                ..
            } => 6,
            Error::Timeout { .. } => 7,
            Error::Io { .. } | Error::Handler { .. } => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidInput { phase, kind, what } => {
                write!(f, "{phase}: invalid {what}: {}", kind.describe())
            }
            Error::TlsFile { what, path, source } => {
                write!(f, "acquire addresses: {what} {}: {source}", path.display())
            }
            Error::Resolve { host, source } => {
                write!(
                    f,
                    "acquire addresses: cannot resolve proxy host {host}: {source}"
                )
            }
            Error::Connect { addr, source } => {
                write!(f, "write: cannot connect to proxy at {addr}: {source}")
            }
            Error::Tls { source } => write!(f, "TLS to the proxy failed: {source}"),
            Error::TargetTls { source } => {
                write!(f, "hand off: TLS to the target failed: {source}")
            }
            Error::Timeout { phase } => write!(f, "{phase}: connect deadline passed"),
            Error::Io { phase, source } => write!(f, "{phase}: {source}"),
            Error::Reply { problem } => write!(f, "await reply: {}", problem.describe()),
            Error::Auth {
                status,
                schemes,
                credentials_sent,
            } => {
                let what = if *credentials_sent {
                    "proxy rejected the credentials"
                } else {
                    "proxy requires authentication"
                };
                write!(f, "await reply: {what} (status {status}")?;
                if !schemes.is_empty() {
                    write!(f, ", offers {}", schemes.join(", "))?;
                }
                f.write_str(")")
            }
            Error::Refused { status, reason } => {
                write!(
                    f,
                    "await reply: proxy refused the tunnel with status {status}"
                )?;
                if !reason.is_empty() {
                    write!(f, " {reason}")?;
                }
                Ok(())
            }
            Error::Handler { source } => write!(f, "exchange: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::TlsFile { source, .. }
            | Error::Resolve { source, .. }
            | Error::Connect { source, .. }
            | Error::Tls { source }
            | Error::TargetTls { source }
            | Error::Io { source, .. }
            | Error::Handler { source } => Some(source),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Timeout { .. } => io::ErrorKind::TimedOut,
            Error::InvalidInput { .. } | Error::TlsFile { .. } => io::ErrorKind::InvalidInput,
            Error::Auth { .. } | Error::Refused { .. } => io::ErrorKind::ConnectionRefused,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
