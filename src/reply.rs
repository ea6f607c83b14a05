//! Phase 4, await reply: parse the proxy's reply head from bytes. No I/O.
//!
//! [`try_parse_reply`] looks at what has arrived so far and answers `Ok(None)` while the head is
//! incomplete; the caller keeps reading into the same fixed buffer and asks again. Whatever
//! follows the head belongs to the tunnel, so the parsed [`Reply`] says exactly how many bytes
//! the head used.

use crate::error::ReplyProblem;

/// Capacity of the fixed buffer the reply head is read into, in bytes. Interim (1xx) replies
/// count too. Bytes read past the head stay in this buffer and are the first tunnel bytes.
pub const REPLY_HEAD_CAPACITY: usize = 8192;

/// How many header lines one reply may carry.
pub const MAX_REPLY_HEADERS: usize = 32;

/// How many interim (1xx) replies are skipped before the handshake gives up.
pub const MAX_INTERIM_REPLIES: usize = 8;

/// One parsed reply head. Borrows its text from the input.
#[derive(Debug)]
pub struct Reply<'h, 'b> {
    /// Bytes of input the head occupied, including its final empty line.
    pub head_len: usize,
    /// The minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The status code.
    pub status: u16,
    /// The reason phrase; may be empty.
    pub reason: &'b str,
    /// The header lines, in order.
    pub headers: &'h [httparse::Header<'b>],
}

impl<'b> Reply<'_, 'b> {
    /// `1xx`: an interim reply, to be skipped (except `101`, which is a final answer).
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// `2xx`: the tunnel is open.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Values of every header named `name` (case-insensitive), as text; values that are not
    /// UTF-8 are skipped.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b str> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    }

    /// The authentication schemes offered in the challenge headers: `Proxy-Authenticate` for a
    /// 407, `WWW-Authenticate` for a 401. A header may carry several challenges.
    pub fn auth_schemes(&self) -> impl Iterator<Item = &'b str> + '_ {
        self.challenges().into_iter().map(|c| c.scheme)
    }

    /// Every challenge in the challenge headers, in order.
    pub(crate) fn challenges(&self) -> Vec<crate::auth::Challenge<'b>> {
        let name = if self.status == 401 {
            "WWW-Authenticate"
        } else {
            "Proxy-Authenticate"
        };
        self.header_values(name)
            .flat_map(crate::auth::challenges)
            .collect()
    }

    /// How the body that follows this head is delimited, for a reply that does not open the
    /// tunnel: `Transfer-Encoding` first, then `Content-Length`, else until close.
    pub fn body_length(&self) -> crate::body::BodyLength {
        use crate::body::BodyLength;
        if let Some(te) = self.header_values("Transfer-Encoding").last() {
            let last = te.rsplit(',').next().unwrap_or("").trim();
            return if last.eq_ignore_ascii_case("chunked") {
                BodyLength::Chunked
            } else {
                BodyLength::UntilClose
            };
        }
        // 1*DIGIT (RFC 9110 section 8.6): `u64::from_str` alone would also take a `+`.
        let parse = |v: &str| {
            let v = v.trim();
            if v.bytes().all(|b| b.is_ascii_digit()) {
                v.parse::<u64>().ok()
            } else {
                None
            }
        };
        let mut lengths = self
            .header_values("Content-Length")
            .flat_map(|v| v.split(','));
        match lengths.next().map(parse) {
            Some(Some(n)) if lengths.all(|v| parse(v) == Some(n)) => BodyLength::Exactly(n),
            _ => BodyLength::UntilClose,
        }
    }

    /// Whether the proxy keeps the connection open after this reply: HTTP/1.1 unless
    /// `Connection: close` (or `Proxy-Connection: close`); HTTP/1.0 only with `keep-alive`.
    pub fn keeps_alive(&self) -> bool {
        let has = |token: &str| {
            ["Connection", "Proxy-Connection"].iter().any(|name| {
                self.header_values(name)
                    .flat_map(|v| v.split(','))
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
            })
        };
        if self.version >= 1 {
            !has("close")
        } else {
            has("keep-alive") && !has("close")
        }
    }
}

/// Parses one reply head from the start of `input`.
///
/// Returns `Ok(None)` when the head is not complete yet (more bytes are needed), the parsed head
/// when it is, and an error when the bytes cannot be an HTTP/1.x reply or carry more headers
/// than `headers` holds. HTTP/1.0 and 1.1, an empty reason phrase and bare-LF line endings are
/// accepted. Deciding that the head is too large is the caller's: it knows its buffer.
pub fn try_parse_reply<'h, 'b>(
    input: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<Option<Reply<'h, 'b>>, ReplyProblem> {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true);
    let mut response = httparse::Response::new(headers);
    let head_len = match config.parse_response(&mut response, input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReplyProblem::TooManyHeaders),
        Err(_) => return Err(ReplyProblem::NotHttp),
    };
    // On Complete, httparse has filled in version and code.
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return Err(ReplyProblem::NotHttp);
    };
    Ok(Some(Reply {
        head_len,
        version,
        status,
        reason: response.reason.unwrap_or(""),
        headers: response.headers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = (usize, u8, u16, String, Vec<String>);

    fn parse(input: &[u8]) -> Result<Option<Parsed>, ReplyProblem> {
        let mut h = [httparse::EMPTY_HEADER; MAX_REPLY_HEADERS];
        Ok(try_parse_reply(input, &mut h)?.map(|r| {
            let schemes = r.auth_schemes().map(str::to_owned).collect();
            (
                r.head_len,
                r.version,
                r.status,
                r.reason.to_owned(),
                schemes,
            )
        }))
    }

    #[test]
    fn squid_style_200() {
        let input = b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-x";
        assert_eq!(
            parse(input).unwrap(),
            Some((39, 1, 200, "Connection established".into(), vec![]))
        );
    }

    #[test]
    fn http10_with_header_and_empty_reason_and_bare_lf() {
        let input = b"HTTP/1.0 200 Connection Established\r\nProxy-agent: Apache\r\n\r\n";
        assert_eq!(parse(input).unwrap().unwrap().0, input.len());
        let input = b"HTTP/1.1 200\r\n\r\n";
        let r = parse(input).unwrap().unwrap();
        assert_eq!((r.0, r.2, r.3.as_str()), (16, 200, ""));
        let input = b"HTTP/1.1 200 OK\nVia: x\n\nDATA";
        assert_eq!(parse(input).unwrap().unwrap().0, input.len() - 4);
    }

    #[test]
    fn partial_until_complete_at_every_split() {
        let input = b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n";
        for cut in 0..input.len() {
            assert_eq!(parse(&input[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(parse(input).unwrap().unwrap().4, vec!["Basic".to_string()]);
    }

    #[test]
    fn schemes_from_several_headers_and_lists() {
        let input = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
            Proxy-Authenticate: Digest realm=\"a, b\", nonce=\"n\", qop=\"auth\", stale=false\r\n\
            Proxy-Authenticate: Basic realm=\"Squid\"\r\n\
            Proxy-Authenticate: Negotiate, NTLM\r\n\r\n";
        assert_eq!(
            parse(input).unwrap().unwrap().4,
            vec!["Digest", "Basic", "Negotiate", "NTLM"]
        );
        let input =
            b"HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"tinyproxy\"\r\n\r\n";
        assert_eq!(parse(input).unwrap().unwrap().4, vec!["Basic"]);
    }

    #[test]
    fn garbage_is_not_http() {
        for input in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"\x16\x03\x01\x00",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
        ] {
            assert_eq!(parse(input), Err(ReplyProblem::NotHttp), "{input:?}");
        }
    }

    #[test]
    fn too_many_headers() {
        let mut input = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_REPLY_HEADERS {
            input.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        assert_eq!(parse(&input), Err(ReplyProblem::TooManyHeaders));
    }
}
