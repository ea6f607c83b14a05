//! Carry any non-HTTP stream through an HTTP(S) proxy: send `CONNECT host:port`, read the
//! proxy's answer, then use the same socket nakedly, raw bytes both ways.
//!
//! ```text
//! acquire addresses -> build CONNECT -> write -> await reply -> hand off -> exchange -> close
//!  (resolve proxy)    (fixed buffer)   (TCP, TLS,  (parse head,   (StreamHandler
//!                                       request)   keep the tail)  or Tunnel)
//! ```
//!
//! One deadline bounds the first four phases together. Every buffer has a fixed, named
//! capacity ([`REQUEST_CAPACITY`], [`REPLY_HEAD_CAPACITY`], [`MAX_REPLY_HEADERS`],
//! [`TLS_IO_CHUNK`]); filling one is a typed error, never a reallocation. Bytes that arrive
//! after the proxy's reply head are the first bytes the tunnel reads.
//!
//! The crate is blocking (`std::net`, no async runtime). The codecs ([`encode_connect`],
//! [`try_parse_reply`]) and the [`Handshake`] seam do no I/O; [`Connector`] owns the sockets,
//! TLS (rustls) and the deadline.
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use connect_tunnel::{Config, Connector, Proxy, Target};
//!
//! let proxy = Proxy::parse("https://camera:secret@proxy.example.com")?;
//! let connector = Connector::new(proxy, Config::default())?;
//! connector.run(&Target::parse("media.example.com:443")?, &mut |tunnel: &mut connect_tunnel::Tunnel| {
//!     tunnel.write_all(b"hello")?;
//!     let mut reply = [0u8; 5];
//!     tunnel.read_exact(&mut reply)
//! })?;
//! # Ok::<(), connect_tunnel::Error>(())
//! ```
//!
//! Cargo features: `tls` (rustls with *ring*: TLS to the proxy and to the target),
//! `webpki-roots` (the Mozilla roots built in as the default trust; without it the default
//! trust is the system's CA bundle, see [`SYSTEM_CA_BUNDLES`]), `tls-log` (rustls's own log
//! records, off by default to keep firmware small) and `cli` (the command-line tool). The
//! default is `cli`, `tls`, `webpki-roots`.
//!
//! Not in scope: serving as a proxy, HTTP requests other than CONNECT, async I/O.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod address;
mod auth;
mod body;
mod config;
mod error;
mod handshake;
mod md5;
pub mod media;
mod reply;
mod request;
mod retry;
mod sha256;
#[cfg(feature = "tls")]
mod tls;
mod transport;
mod tunnel;

pub use address::{Credentials, Proxy, ProxyScheme, Target};
pub use body::BodyLength;
pub use config::{Config, DEFAULT_USER_AGENT};
pub use error::{Error, InvalidInput, Phase, ReplyProblem};
pub use handshake::{ConnectHandshake, Handshake, Step, MAX_AUTH_ATTEMPTS};
pub use reply::{
    try_parse_reply, Reply, MAX_INTERIM_REPLIES, MAX_REPLY_HEADERS, REPLY_HEAD_CAPACITY,
};
pub use request::{encode_connect, ConnectRequest, Header, REQUEST_CAPACITY};
pub use retry::{Backoff, Retry};
pub use transport::{
    ClientCert, SocketOptions, TlsOptions, TrustAnchors, MAX_PEM_FILE_SIZE, SYSTEM_CA_BUNDLES,
    TLS_IO_CHUNK,
};
pub use tunnel::{
    establish, Connector, Established, StreamHandler, Tunnel, TunnelReader, TunnelWriter,
};

/// Re-export of `httparse`, whose header type appears in [`Reply`].
pub use httparse;

/// The README's code examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
