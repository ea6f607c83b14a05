//! The handshake seam: what is sent to the proxy and how its answer opens the tunnel.
//!
//! The driver ([`Connector::connect_with`](crate::Connector::connect_with)) owns sockets,
//! buffers and the deadline; a [`Handshake`] only turns configuration into request bytes and
//! reply bytes into a decision. CONNECT is the one implemented here; other ways through a
//! reverse proxy (a WebSocket upgrade, raw TLS routed by SNI) fill the same seam.

use crate::auth::{new_cnonce, DigestState};
use crate::body::BodyLength;
use crate::error::{Error, ReplyProblem};
use crate::reply::{try_parse_reply, Reply, MAX_INTERIM_REPLIES, MAX_REPLY_HEADERS};
use crate::request::{encode_connect, ConnectRequest};

/// How many requests one handshake sends at most: the first, and answers to authentication
/// challenges. A proxy that answers 407 forever ends in an authentication error, not a loop.
pub const MAX_AUTH_ATTEMPTS: usize = 3;

/// What a complete reply means for the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// The tunnel is open. The first `reply_len` bytes were the reply (interim replies
    /// included); the rest already belong to the stream.
    Open {
        /// Bytes of reply before the stream.
        reply_len: usize,
    },
    /// Send the request again ([`Handshake::encode_request`] builds the new one), after the
    /// `reply_len` bytes of reply head and a body delimited by `body`: on the same connection
    /// when `keep_alive`, otherwise on a new one.
    Retry {
        /// Bytes of reply head.
        reply_len: usize,
        /// How the reply's body is delimited.
        body: BodyLength,
        /// Whether the proxy keeps the connection open.
        keep_alive: bool,
    },
}

/// A request/reply exchange that opens a tunnel over an established connection. No I/O.
pub trait Handshake {
    /// A short name for logs, e.g. `"CONNECT"`.
    fn name(&self) -> &'static str;

    /// Writes the next request into `buf` and returns its length. Refusing bad input here
    /// happens before the request is sent.
    fn encode_request(&mut self, buf: &mut [u8]) -> Result<usize, Error>;

    /// Looks at every reply byte received since the last request was sent (always from the
    /// first one).
    ///
    /// Returns `Ok(None)` when more bytes are needed, the [`Step`] to take once the reply is
    /// complete, or the error that ends the attempt.
    fn try_reply(&mut self, input: &[u8]) -> Result<Option<Step>, Error>;
}

/// The HTTP/1.1 `CONNECT` handshake (RFC 9110 section 9.3.6), with proxy authentication.
///
/// Basic credentials go with the first request. When the proxy answers 407 offering Digest, the
/// request is sent again answering the strongest Digest challenge (SHA-256 before MD5), and
/// again when the proxy says the nonce went `stale`; at most [`MAX_AUTH_ATTEMPTS`] requests.
#[derive(Debug, Clone)]
pub struct ConnectHandshake<'a> {
    request: ConnectRequest<'a>,
    digest: Option<DigestState>,
    sent: usize,
}

impl<'a> ConnectHandshake<'a> {
    /// A CONNECT handshake sending `request`.
    pub fn new(request: ConnectRequest<'a>) -> Self {
        ConnectHandshake {
            request,
            digest: None,
            sent: 0,
        }
    }

    fn caller_authorization(&self) -> bool {
        self.request.authorization.is_some()
            || self
                .request
                .headers
                .iter()
                .any(|h| h.name().eq_ignore_ascii_case("Proxy-Authorization"))
    }

    fn sends_credentials(&self) -> bool {
        self.request.credentials.is_some() || self.caller_authorization()
    }

    /// Decides what a 407 (or 401 challenge) means: a retry answering Digest, or the end.
    fn on_challenge(&mut self, reply: &Reply<'_, '_>) -> Result<Step, Error> {
        let challenges = reply.challenges();
        let may_retry = self.request.credentials.is_some()
            && !self.caller_authorization()
            && self.sent < MAX_AUTH_ATTEMPTS
            && reply.status == 407;
        let best = challenges
            .iter()
            .filter_map(DigestState::from_challenge)
            .max_by_key(DigestState::strength);
        if let (true, Some(digest)) = (may_retry, best) {
            if self.digest.is_none() || digest.stale {
                log::info!(
                    "await reply: proxy asks for Digest{}; answering",
                    if digest.stale { " (stale nonce)" } else { "" }
                );
                self.digest = Some(digest);
                return Ok(Step::Retry {
                    reply_len: reply.head_len,
                    body: reply.body_length(),
                    keep_alive: reply.keeps_alive(),
                });
            }
        }
        Err(Error::Auth {
            status: reply.status,
            schemes: challenges
                .iter()
                .take(MAX_REPLY_HEADERS)
                .map(|c| c.scheme.to_owned())
                .collect(),
            credentials_sent: self.sends_credentials(),
        })
    }
}

impl Handshake for ConnectHandshake<'_> {
    fn name(&self) -> &'static str {
        "CONNECT"
    }

    fn encode_request(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.sent += 1;
        let mut request = self.request;
        let answer;
        if let (Some(digest), Some(creds)) = (self.digest.as_mut(), self.request.credentials) {
            answer = digest.authorization(creds, &self.request.target.to_string(), &new_cnonce());
            request.authorization = Some(&answer);
        }
        encode_connect(&request, buf)
    }

    fn try_reply(&mut self, input: &[u8]) -> Result<Option<Step>, Error> {
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
                return Ok(Some(Step::Open {
                    reply_len: offset + reply.head_len,
                }));
            }
            let challenged = reply.status == 407
                || (reply.status == 401
                    && reply.header_values("WWW-Authenticate").next().is_some());
            if challenged {
                return match self.on_challenge(&reply)? {
                    Step::Retry {
                        body, keep_alive, ..
                    } => Ok(Some(Step::Retry {
                        reply_len: offset + reply.head_len,
                        body,
                        keep_alive,
                    })),
                    step => Ok(Some(step)),
                };
            }
            return Err(Error::Refused {
                status: reply.status,
                reason: reply.reason.chars().take(128).collect(),
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
    use crate::body::BodyLength;

    fn run(reply: &[u8]) -> Result<Option<usize>, Error> {
        let t = Target::parse("h:22").unwrap();
        let c = Credentials::new("u", "p").unwrap();
        let req = ConnectRequest {
            credentials: Some(&c),
            ..ConnectRequest::new(&t)
        };
        let mut h = ConnectHandshake::new(req);
        h.encode_request(&mut [0u8; 512]).unwrap();
        Ok(match h.try_reply(reply)? {
            Some(Step::Open { reply_len }) => Some(reply_len),
            Some(other) => panic!("unexpected {other:?}"),
            None => None,
        })
    }

    fn request_text(h: &mut ConnectHandshake<'_>) -> String {
        let mut buf = [0u8; 1024];
        let n = h.encode_request(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    const SQUID_DIGEST_407: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
        Proxy-Authenticate: Digest realm=\"squid\", nonce=\"n1\", qop=\"auth\", stale=false\r\n\
        Proxy-Authenticate: Basic realm=\"squid\"\r\n\
        Content-Length: 12\r\n\r\n<html></html>";

    #[test]
    fn digest_retry_after_basic_then_gives_up() {
        let t = Target::parse("media.example.com:443").unwrap();
        let c = Credentials::new("camera", "pw").unwrap();
        let mut h = ConnectHandshake::new(ConnectRequest {
            credentials: Some(&c),
            ..ConnectRequest::new(&t)
        });
        assert!(request_text(&mut h).contains("Proxy-Authorization: Basic Y2FtZXJhOnB3\r\n"));
        let head_len = SQUID_DIGEST_407.len() - 13;
        assert_eq!(
            h.try_reply(SQUID_DIGEST_407).unwrap(),
            Some(Step::Retry {
                reply_len: head_len,
                body: BodyLength::Exactly(12),
                keep_alive: true
            })
        );
        let second = request_text(&mut h);
        assert!(second.contains("Proxy-Authorization: Digest username=\"camera\", realm=\"squid\", nonce=\"n1\", uri=\"media.example.com:443\""), "{second}");
        assert!(
            second.contains("qop=auth, nc=00000001, cnonce=\""),
            "{second}"
        );
        // The same challenge again (not stale): the credentials are wrong.
        match h.try_reply(SQUID_DIGEST_407) {
            Err(Error::Auth {
                status: 407,
                schemes,
                credentials_sent: true,
            }) => assert_eq!(schemes, ["Digest", "Basic"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stale_nonce_is_answered_but_not_forever() {
        let t = Target::parse("h:1").unwrap();
        let c = Credentials::new("u", "p").unwrap();
        let mut h = ConnectHandshake::new(ConnectRequest {
            credentials: Some(&c),
            ..ConnectRequest::new(&t)
        });
        let stale = b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"n2\", algorithm=SHA-256, stale=true\r\n\r\n";
        let mut sent = 0;
        loop {
            request_text(&mut h);
            sent += 1;
            match h.try_reply(stale) {
                Ok(Some(Step::Retry {
                    keep_alive: false,
                    body: BodyLength::UntilClose,
                    ..
                })) => {}
                Err(Error::Auth { .. }) => break,
                other => panic!("{other:?}"),
            }
            assert!(sent < 10, "endless retries");
        }
        assert_eq!(sent, MAX_AUTH_ATTEMPTS);
    }

    #[test]
    fn strongest_digest_wins_and_no_credentials_means_no_retry() {
        let t = Target::parse("h:1").unwrap();
        let c = Credentials::new("u", "p").unwrap();
        let mut h = ConnectHandshake::new(ConnectRequest {
            credentials: Some(&c),
            ..ConnectRequest::new(&t)
        });
        request_text(&mut h);
        let two = b"HTTP/1.1 407 x\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"a\", algorithm=MD5\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"b\", algorithm=SHA-256\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(h.try_reply(two), Ok(Some(Step::Retry { .. }))));
        assert!(request_text(&mut h).contains("nonce=\"b\", uri=\"h:1\", algorithm=SHA-256"));

        let mut anonymous = ConnectHandshake::new(ConnectRequest::new(&t));
        request_text(&mut anonymous);
        assert!(matches!(
            anonymous.try_reply(two),
            Err(Error::Auth {
                credentials_sent: false,
                ..
            })
        ));
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
