//! The handshake seam: what is sent to the proxy and how its answer opens the tunnel.
//!
//! The driver ([`Connector::connect_with`](crate::Connector::connect_with)) owns sockets,
//! buffers and the deadline; a [`Handshake`] only turns configuration into request bytes and
//! reply bytes into a decision. CONNECT is the one implemented here; other ways through a
//! reverse proxy (a WebSocket upgrade, raw TLS routed by SNI) fill the same seam.

use crate::error::{Error, ReplyProblem};
use crate::reply::{try_parse_reply, MAX_INTERIM_REPLIES, MAX_REPLY_HEADERS};
use crate::request::{encode_connect, ConnectRequest};

/// A request/reply exchange that opens a tunnel over an established connection. No I/O.
pub trait Handshake {
    /// A short name for logs, e.g. `"CONNECT"`.
    fn name(&self) -> &'static str;

    /// Writes the request into `buf` and returns its length. Refusing bad input here happens
    /// before the request is sent.
    fn encode_request(&self, buf: &mut [u8]) -> Result<usize, Error>;

    /// Looks at every reply byte received so far (always from the first one).
    ///
    /// Returns `Ok(None)` when more bytes are needed, `Ok(Some(n))` when the tunnel is open and
    /// the first `n` bytes were the reply (the rest already belong to the stream), or the
    /// error that ends the attempt.
    fn try_reply(&mut self, input: &[u8]) -> Result<Option<usize>, Error>;
}

/// The HTTP/1.1 `CONNECT` handshake (RFC 9110 section 9.3.6).
#[derive(Debug, Clone, Copy)]
pub struct ConnectHandshake<'a> {
    request: ConnectRequest<'a>,
}

impl<'a> ConnectHandshake<'a> {
    /// A CONNECT handshake sending `request`.
    pub fn new(request: ConnectRequest<'a>) -> Self {
        ConnectHandshake { request }
    }

    fn sends_credentials(&self) -> bool {
        self.request.credentials.is_some()
            || self
                .request
                .headers
                .iter()
                .any(|h| h.name().eq_ignore_ascii_case("Proxy-Authorization"))
    }
}

impl Handshake for ConnectHandshake<'_> {
    fn name(&self) -> &'static str {
        "CONNECT"
    }

    fn encode_request(&self, buf: &mut [u8]) -> Result<usize, Error> {
        encode_connect(&self.request, buf)
    }

    fn try_reply(&mut self, input: &[u8]) -> Result<Option<usize>, Error> {
        let mut offset = 0;
        for _ in 0..=MAX_INTERIM_REPLIES {
            let mut headers = [httparse::EMPTY_HEADER; MAX_REPLY_HEADERS];
            let reply = match try_parse_reply(&input[offset..], &mut headers) {
                Ok(Some(reply)) => reply,
                Ok(None) => return Ok(None),
                Err(problem) => return Err(Error::Reply { problem }),
            };
            if reply.is_interim() {
                log::debug!("await reply: skipping interim reply {}", reply.status);
                offset += reply.head_len;
                continue;
            }
            if reply.is_success() {
                return Ok(Some(offset + reply.head_len));
            }
            let challenged = reply.status == 407
                || (reply.status == 401
                    && reply.header_values("WWW-Authenticate").next().is_some());
            return Err(if challenged {
                Error::Auth {
                    status: reply.status,
                    schemes: reply
                        .auth_schemes()
                        .take(MAX_REPLY_HEADERS)
                        .map(str::to_owned)
                        .collect(),
                    credentials_sent: self.sends_credentials(),
                }
            } else {
                Error::Refused {
                    status: reply.status,
                    reason: reply.reason.chars().take(128).collect(),
                }
            });
        }
        Err(Error::Reply {
            problem: ReplyProblem::TooManyInterim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{Credentials, Target};

    fn run(reply: &[u8]) -> Result<Option<usize>, Error> {
        let t = Target::parse("h:22").unwrap();
        let c = Credentials::new("u", "p").unwrap();
        let req = ConnectRequest {
            target: &t,
            credentials: Some(&c),
            user_agent: None,
            headers: &[],
        };
        ConnectHandshake::new(req).try_reply(reply)
    }

    #[test]
    fn any_2xx_opens_and_keeps_the_tail() {
        let r = b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-x\r\n";
        assert_eq!(run(r).unwrap(), Some(39));
        let r = b"HTTP/1.0 204 \r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\nX";
        assert_eq!(run(r).unwrap(), Some(r.len() - 1));
    }

    #[test]
    fn interim_replies_are_skipped() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\n\r\nD";
        assert_eq!(run(r).unwrap(), Some(r.len() - 1));
        assert_eq!(
            run(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2").unwrap(),
            None
        );
        let many = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM_REPLIES + 1);
        assert!(matches!(
            run(&many),
            Err(Error::Reply {
                problem: ReplyProblem::TooManyInterim
            })
        ));
    }

    #[test]
    fn auth_and_refusals() {
        let r = b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"s\"\r\nContent-Length: 3\r\n\r\nabc";
        match run(r) {
            Err(Error::Auth {
                status: 407,
                schemes,
                credentials_sent: true,
            }) => assert_eq!(schemes, ["Basic"]),
            other => panic!("{other:?}"),
        }
        let r = b"HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"t\"\r\n\r\n";
        assert!(matches!(run(r), Err(Error::Auth { status: 401, .. })));
        let r = b"HTTP/1.1 401 Unauthorized\r\n\r\n";
        assert!(matches!(run(r), Err(Error::Refused { status: 401, .. })));
        match run(b"HTTP/1.1 403 Forbidden\r\n\r\n") {
            Err(Error::Refused {
                status: 403,
                reason,
            }) => assert_eq!(reason, "Forbidden"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Err(Error::Refused { status: 101, .. })
        ));
        assert!(matches!(
            run(b"HTTP/1.1 503 \r\n\r\n"),
            Err(Error::Refused { status: 503, .. })
        ));
    }
}
