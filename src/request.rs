//! Phase 2, build CONNECT: encode the request into a caller's fixed buffer. No I/O.

use crate::address::{check_no_forbidden, Credentials, Target};
use crate::error::{Error, InvalidInput, Phase};

/// Capacity of the fixed buffer the CONNECT request is built in, in bytes.
pub const REQUEST_CAPACITY: usize = 4096;

/// An extra header for the CONNECT request, checked when made.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    name: String,
    value: String,
}

impl Header {
    /// A header from a name and a value.
    ///
    /// The name must be an HTTP token; neither may hold CR, LF or NUL. Surrounding blanks of
    /// the value are trimmed.
    pub fn new(name: &str, value: &str) -> Result<Header, Error> {
        check_no_forbidden(name.as_bytes(), Phase::BuildConnect, "header name")?;
        check_no_forbidden(value.as_bytes(), Phase::BuildConnect, "header value")?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(Error::invalid(
                Phase::BuildConnect,
                InvalidInput::HeaderName,
                "header name",
            ));
        }
        Ok(Header {
            name: name.to_owned(),
            value: value.trim_matches([' ', '\t']).to_owned(),
        })
    }

    /// Parses `Name: value`, as curl's `-H` takes it.
    pub fn parse(line: &str) -> Result<Header, Error> {
        check_no_forbidden(line.as_bytes(), Phase::BuildConnect, "header")?;
        match line.split_once(':') {
            Some((name, value)) => Header::new(name, value),
            None => Err(Error::invalid(
                Phase::BuildConnect,
                InvalidInput::HeaderSyntax,
                "header",
            )),
        }
    }

    /// The header's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The header's value.
    pub fn value(&self) -> &str {
        &self.value
    }

    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

impl std::fmt::Debug for Header {
    /// Shows the name only: values such as `Proxy-Authorization` are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What goes into one CONNECT request. Made with [`ConnectRequest::new`]; fields may be added.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ConnectRequest<'a> {
    /// The authority to open: `CONNECT {target} HTTP/1.1` and `Host: {target}`.
    pub target: &'a Target,
    /// Sent as `Proxy-Authorization: Basic …` unless `authorization` is set or `headers` has
    /// its own `Proxy-Authorization`.
    pub credentials: Option<&'a Credentials>,
    /// A complete `Proxy-Authorization` value (a Digest answer, a token), sent instead of
    /// Basic. A `Proxy-Authorization` in `headers` still wins. Refused if it holds CR, LF or NUL.
    pub authorization: Option<&'a str>,
    /// The `User-Agent` value; `None` sends none. A `User-Agent` in `headers` replaces it.
    pub user_agent: Option<&'a str>,
    /// Extra headers, in order. A `Host` here replaces the default one.
    pub headers: &'a [Header],
}

impl<'a> ConnectRequest<'a> {
    /// A request for `target` with no credentials, no `User-Agent` and no extra headers.
    pub fn new(target: &'a Target) -> Self {
        ConnectRequest {
            target,
            credentials: None,
            authorization: None,
            user_agent: None,
            headers: &[],
        }
    }
}

/// Encodes `req` into `buf` and returns the number of bytes written.
///
/// Fails with [`InvalidInput::RequestTooLarge`] when `buf` is too small and with
/// [`InvalidInput::ForbiddenByte`] when the user agent holds CR, LF or NUL (targets, credentials
/// and headers were checked when they were made).
pub fn encode_connect(req: &ConnectRequest<'_>, buf: &mut [u8]) -> Result<usize, Error> {
    let mut w = Cursor { buf, len: 0 };
    let has = |name: &str| req.headers.iter().any(|h| h.is(name));
    w.put(b"CONNECT ")?;
    w.display(req.target)?;
    w.put(b" HTTP/1.1\r\n")?;
    if !has("Host") {
        w.put(b"Host: ")?;
        w.display(req.target)?;
        w.put(b"\r\n")?;
    }
    if !has("Proxy-Authorization") {
        if let Some(value) = req.authorization {
            check_no_forbidden(value.as_bytes(), Phase::BuildConnect, "proxy authorization")?;
            w.put(b"Proxy-Authorization: ")?;
            w.put(value.as_bytes())?;
            w.put(b"\r\n")?;
        } else if let Some(c) = req.credentials {
            w.put(b"Proxy-Authorization: Basic ")?;
            let plain = c.user().bytes().chain(*b":").chain(c.password().bytes());
            w.base64(plain)?;
            w.put(b"\r\n")?;
        }
    }
    if let (Some(ua), false) = (req.user_agent, has("User-Agent")) {
        check_no_forbidden(ua.as_bytes(), Phase::BuildConnect, "user agent")?;
        w.put(b"User-Agent: ")?;
        w.put(ua.as_bytes())?;
        w.put(b"\r\n")?;
    }
    for h in req.headers {
        w.put(h.name.as_bytes())?;
        w.put(b": ")?;
        w.put(h.value.as_bytes())?;
        w.put(b"\r\n")?;
    }
    w.put(b"\r\n")?;
    Ok(w.len)
}

struct Cursor<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let end = self.len + bytes.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(Error::InvalidInput {
            phase: Phase::BuildConnect,
            kind: InvalidInput::RequestTooLarge,
            what: "CONNECT request",
        })?;
        dst.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn display(&mut self, v: &dyn std::fmt::Display) -> Result<(), Error> {
        use std::io::Write;
        let rest = &mut self.buf[self.len..];
        let room = rest.len();
        let mut slice: &mut [u8] = rest;
        write!(slice, "{v}").map_err(|_| Error::InvalidInput {
            phase: Phase::BuildConnect,
            kind: InvalidInput::RequestTooLarge,
            what: "CONNECT request",
        })?;
        self.len += room - slice.len();
        Ok(())
    }

    /// Standard base64 with padding (RFC 4648 section 4), streamed from `input`.
    fn base64(&mut self, mut input: impl Iterator<Item = u8>) -> Result<(), Error> {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        loop {
            let Some(a) = input.next() else { return Ok(()) };
            let b = input.next();
            let c = if b.is_some() { input.next() } else { None };
            let n =
                (u32::from(a) << 16) | (u32::from(b.unwrap_or(0)) << 8) | u32::from(c.unwrap_or(0));
            let sextet = |shift: u32| ALPHABET[((n >> shift) & 63) as usize];
            let out = [
                sextet(18),
                sextet(12),
                if b.is_some() { sextet(6) } else { b'=' },
                if c.is_some() { sextet(0) } else { b'=' },
            ];
            self.put(&out)?;
            if c.is_none() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(req: &ConnectRequest<'_>) -> String {
        let mut buf = [0u8; REQUEST_CAPACITY];
        let n = encode_connect(req, &mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn minimal_request_exact_bytes() {
        let t = Target::parse("media.example.com:443").unwrap();
        let req = ConnectRequest {
            target: &t,
            credentials: None,
            authorization: None,
            user_agent: None,
            headers: &[],
        };
        assert_eq!(
            encode(&req),
            "CONNECT media.example.com:443 HTTP/1.1\r\nHost: media.example.com:443\r\n\r\n"
        );
    }

    #[test]
    fn full_request_exact_bytes() {
        let t = Target::parse("[2001:db8::7]:22").unwrap();
        // RFC 7617's own example: Aladdin / open sesame.
        let c = Credentials::new("Aladdin", "open sesame").unwrap();
        let h = [Header::parse("X-Device-Id:  cam-0042 ").unwrap()];
        let req = ConnectRequest {
            target: &t,
            credentials: Some(&c),
            authorization: None,
            user_agent: Some("connect-tunnel/0.1"),
            headers: &h,
        };
        assert_eq!(
            encode(&req),
            "CONNECT [2001:db8::7]:22 HTTP/1.1\r\n\
             Host: [2001:db8::7]:22\r\n\
             Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\
             User-Agent: connect-tunnel/0.1\r\n\
             X-Device-Id: cam-0042\r\n\r\n"
        );
    }

    #[test]
    fn base64_padding_lengths() {
        let t = Target::parse("h:1").unwrap();
        for (user, pass, b64) in [
            ("a", "", "YTo="),
            ("ab", "", "YWI6"),
            ("abc", "", "YWJjOg=="),
            ("", "", "Og=="),
        ] {
            let c = Credentials::new(user, pass).unwrap();
            let req = ConnectRequest {
                target: &t,
                credentials: Some(&c),
                authorization: None,
                user_agent: None,
                headers: &[],
            };
            assert!(encode(&req).contains(&format!("Basic {b64}\r\n")), "{user}");
        }
    }

    #[test]
    fn authorization_value_replaces_basic() {
        let t = Target::parse("h:1").unwrap();
        let c = Credentials::new("u", "p").unwrap();
        let req = ConnectRequest {
            credentials: Some(&c),
            authorization: Some("Digest username=\"u\""),
            ..ConnectRequest::new(&t)
        };
        assert_eq!(
            encode(&req),
            "CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\nProxy-Authorization: Digest username=\"u\"\r\n\r\n"
        );
        let req = ConnectRequest {
            authorization: Some("Bearer a\r\nX: y"),
            ..ConnectRequest::new(&t)
        };
        assert!(matches!(
            encode_connect(&req, &mut [0u8; 256]),
            Err(Error::InvalidInput {
                kind: InvalidInput::ForbiddenByte,
                ..
            })
        ));
    }

    #[test]
    fn caller_headers_replace_defaults() {
        let t = Target::parse("h:1").unwrap();
        let c = Credentials::new("u", "p").unwrap();
        let h = [
            Header::parse("Proxy-Authorization: Bearer tok").unwrap(),
            Header::parse("User-Agent: cam").unwrap(),
            Header::parse("host: other:1").unwrap(),
        ];
        let req = ConnectRequest {
            target: &t,
            credentials: Some(&c),
            authorization: None,
            user_agent: Some("x"),
            headers: &h,
        };
        assert_eq!(
            encode(&req),
            "CONNECT h:1 HTTP/1.1\r\nProxy-Authorization: Bearer tok\r\nUser-Agent: cam\r\nhost: other:1\r\n\r\n"
        );
    }

    #[test]
    fn refuses_injection() {
        assert!(matches!(
            Header::parse("X: a\r\nEvil: 1"),
            Err(Error::InvalidInput {
                kind: InvalidInput::ForbiddenByte,
                ..
            })
        ));
        assert!(Header::new("X", "a\0").is_err());
        assert!(matches!(
            Header::parse("No colon"),
            Err(Error::InvalidInput {
                kind: InvalidInput::HeaderSyntax,
                ..
            })
        ));
        assert!(matches!(
            Header::new("Bad Name", "v"),
            Err(Error::InvalidInput {
                kind: InvalidInput::HeaderName,
                ..
            })
        ));
        assert!(Header::new("", "v").is_err());
        let t = Target::parse("h:1").unwrap();
        let req = ConnectRequest {
            target: &t,
            credentials: None,
            authorization: None,
            user_agent: Some("a\nb"),
            headers: &[],
        };
        assert!(encode_connect(&req, &mut [0u8; 256]).is_err());
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        let t = Target::parse("media.example.com:443").unwrap();
        let req = ConnectRequest {
            target: &t,
            credentials: None,
            authorization: None,
            user_agent: None,
            headers: &[],
        };
        let full = encode(&req).len();
        for cap in 0..full {
            let mut buf = vec![0u8; cap];
            assert!(matches!(
                encode_connect(&req, &mut buf),
                Err(Error::InvalidInput {
                    kind: InvalidInput::RequestTooLarge,
                    ..
                })
            ));
        }
        assert_eq!(encode_connect(&req, &mut vec![0u8; full]).unwrap(), full);
    }

    #[test]
    fn debug_hides_header_values() {
        let h = Header::parse("Proxy-Authorization: Bearer secret-token").unwrap();
        assert!(!format!("{h:?}").contains("secret"));
    }
}
