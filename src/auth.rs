//! Proxy authentication: reading challenges and answering Digest (RFC 7616, and the older
//! RFC 2617 form). Basic is encoded with the request (`request.rs`); tokens and other custom
//! schemes are caller-supplied `Proxy-Authorization` headers. No I/O.

use std::fmt::Write as _;

use crate::address::Credentials;
use crate::md5::md5;
use crate::sha256::sha256;

/// One challenge from a `Proxy-Authenticate` (or `WWW-Authenticate`) header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge<'a> {
    /// The scheme as sent (`Basic`, `Digest`, ...).
    pub scheme: &'a str,
    /// `name=value` parameters, values unquoted.
    pub params: Vec<(&'a str, String)>,
}

impl Challenge<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Blanks between the parts of a challenge; CR and LF appear only as an obs-fold (RFC 9112
/// section 5.2), which a client reads as a space.
const BLANKS: [char; 4] = [' ', '\t', '\r', '\n'];

/// Longest realm, nonce or opaque a Digest answer echoes. Longer ones make the challenge
/// unusable rather than the request too large for its buffer.
const MAX_DIGEST_PARAM: usize = 512;

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Splits at commas that are not inside a quoted string.
fn split_outside_quotes(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// Parses `name = token` or `name = "quoted"`; `None` when the item is not a parameter.
fn parse_param(item: &str) -> Option<(&str, String)> {
    let (name, value) = item.split_once('=')?;
    let name = name.trim_matches(BLANKS);
    if name.is_empty() || !name.chars().all(is_token_char) {
        return None;
    }
    let value = value.trim_matches(BLANKS);
    let value = match value.strip_prefix('"') {
        Some(quoted) => {
            let mut out = String::with_capacity(quoted.len());
            let mut chars = quoted.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?),
                    '"' => break,
                    // An obs-fold inside the quotes: one space for the fold and its blanks.
                    '\r' | '\n' => {
                        out.truncate(out.trim_end_matches([' ', '\t']).len());
                        out.push(' ');
                        while chars.clone().next().is_some_and(|c| BLANKS.contains(&c)) {
                            chars.next();
                        }
                    }
                    c => out.push(c),
                }
            }
            out
        }
        None => value.to_owned(),
    };
    Some((name, value))
}

/// Every challenge in one header value, e.g. `Digest realm="a", nonce="n", Basic realm="b"`.
pub(crate) fn challenges(value: &str) -> Vec<Challenge<'_>> {
    let mut out: Vec<Challenge<'_>> = Vec::new();
    for item in split_outside_quotes(value) {
        let item = item.trim_matches(BLANKS);
        if item.is_empty() {
            continue;
        }
        let end = item.find(|c: char| !is_token_char(c)).unwrap_or(item.len());
        let (token, rest) = item.split_at(end);
        let starts_challenge =
            !token.is_empty() && !rest.trim_start_matches(BLANKS).starts_with('=');
        if starts_challenge {
            let mut challenge = Challenge {
                scheme: token,
                params: Vec::new(),
            };
            if let Some(p) = parse_param(rest) {
                challenge.params.push(p);
            }
            out.push(challenge);
        } else if let (Some(current), Some(p)) = (out.last_mut(), parse_param(item)) {
            current.params.push(p);
        }
    }
    out
}

/// Digest hash algorithms, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum DigestAlgorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl DigestAlgorithm {
    fn parse(name: Option<&str>) -> Option<DigestAlgorithm> {
        let name = name.unwrap_or("MD5");
        [
            ("MD5", DigestAlgorithm::Md5),
            ("MD5-sess", DigestAlgorithm::Md5Sess),
            ("SHA-256", DigestAlgorithm::Sha256),
            ("SHA-256-sess", DigestAlgorithm::Sha256Sess),
        ]
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, a)| a)
    }

    fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Md5Sess => "MD5-sess",
            DigestAlgorithm::Sha256 => "SHA-256",
            DigestAlgorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn is_sess(self) -> bool {
        matches!(self, DigestAlgorithm::Md5Sess | DigestAlgorithm::Sha256Sess)
    }

    /// Lower-case hex of the hash of `data`.
    fn hex(self, data: &str) -> String {
        let digest: Vec<u8> = match self {
            DigestAlgorithm::Md5 | DigestAlgorithm::Md5Sess => md5(data.as_bytes()).to_vec(),
            DigestAlgorithm::Sha256 | DigestAlgorithm::Sha256Sess => {
                sha256(data.as_bytes()).to_vec()
            }
        };
        digest.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// Quality of protection chosen from the challenge's `qop` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qop {
    Auth,
    AuthInt,
}

/// What a Digest challenge asks for, and the client's count of answers to its nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DigestState {
    realm: String,
    nonce: String,
    opaque: Option<String>,
    algorithm: DigestAlgorithm,
    /// Whether the challenge named its algorithm (RFC 2617 servers may not).
    algorithm_named: bool,
    qop: Option<Qop>,
    userhash: bool,
    /// Whether the server said the previous answer failed only because the nonce aged.
    pub stale: bool,
    nc: u32,
}

impl DigestState {
    /// The state for a Digest challenge, or `None` when it lacks a nonce or asks for an
    /// algorithm or protection this client does not support.
    pub(crate) fn from_challenge(c: &Challenge<'_>) -> Option<DigestState> {
        if !c.scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let algorithm = DigestAlgorithm::parse(c.param("algorithm"))?;
        let qop = match c.param("qop") {
            None => None,
            Some(list) => {
                let offered = |q: &str| list.split(',').any(|x| x.trim().eq_ignore_ascii_case(q));
                if offered("auth") {
                    Some(Qop::Auth)
                } else if offered("auth-int") {
                    Some(Qop::AuthInt)
                } else {
                    return None;
                }
            }
        };
        // Echoed in the answer: refuse what cannot go into a request line by line or would not
        // fit its buffer.
        let echoable = |v: &str| {
            v.len() <= MAX_DIGEST_PARAM && !v.bytes().any(|b| b.is_ascii_control() && b != b'\t')
        };
        if !["realm", "nonce", "opaque"]
            .iter()
            .filter_map(|name| c.param(name))
            .all(echoable)
        {
            return None;
        }
        Some(DigestState {
            realm: c.param("realm").unwrap_or("").to_owned(),
            nonce: c.param("nonce")?.to_owned(),
            opaque: c.param("opaque").map(str::to_owned),
            algorithm,
            algorithm_named: c.param("algorithm").is_some(),
            qop,
            userhash: c
                .param("userhash")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            stale: c
                .param("stale")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            nc: 0,
        })
    }

    /// The strength used to pick among several challenges.
    pub(crate) fn strength(&self) -> (DigestAlgorithm, bool) {
        (self.algorithm, self.qop.is_some())
    }

    /// The `Proxy-Authorization` value answering this challenge for `CONNECT uri`, with
    /// `cnonce` (used only with qop). Each call counts one more use of the nonce.
    pub(crate) fn authorization(&mut self, creds: &Credentials, uri: &str, cnonce: &str) -> String {
        self.nc = self.nc.wrapping_add(1);
        let alg = self.algorithm;
        let nc = format!("{:08x}", self.nc);
        let mut ha1 = alg.hex(&format!(
            "{}:{}:{}",
            creds.user(),
            self.realm,
            creds.password()
        ));
        if alg.is_sess() {
            ha1 = alg.hex(&format!("{ha1}:{}:{cnonce}", self.nonce));
        }
        let ha2 = match self.qop {
            Some(Qop::AuthInt) => alg.hex(&format!("CONNECT:{uri}:{}", alg.hex(""))),
            _ => alg.hex(&format!("CONNECT:{uri}")),
        };
        let response = match self.qop {
            None => alg.hex(&format!("{ha1}:{}:{ha2}", self.nonce)),
            Some(q) => {
                let q = if q == Qop::Auth { "auth" } else { "auth-int" };
                alg.hex(&format!("{ha1}:{}:{nc}:{cnonce}:{q}:{ha2}", self.nonce))
            }
        };
        let username = if self.userhash {
            alg.hex(&format!("{}:{}", creds.user(), self.realm))
        } else {
            creds.user().to_owned()
        };
        let mut v = format!(
            "Digest username={}, realm={}, nonce={}, uri={}",
            quote(&username),
            quote(&self.realm),
            quote(&self.nonce),
            quote(uri)
        );
        if self.algorithm_named || alg != DigestAlgorithm::Md5 {
            let _ = write!(v, ", algorithm={}", alg.name());
        }
        let _ = write!(v, ", response=\"{response}\"");
        if let Some(q) = self.qop {
            let q = if q == Qop::Auth { "auth" } else { "auth-int" };
            let _ = write!(v, ", qop={q}, nc={nc}, cnonce=\"{cnonce}\"");
        }
        if let Some(opaque) = &self.opaque {
            let _ = write!(v, ", opaque={}", quote(opaque));
        }
        if self.userhash {
            v.push_str(", userhash=true");
        }
        v
    }
}

/// A quoted-string, escaping `"` and `\`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A fresh client nonce: 16 bytes from the kernel's random source, as hex. Should that source
/// be unreadable, a hash of the time, the process and a counter still differs per request,
/// which is what Digest needs of a cnonce.
pub(crate) fn new_cnonce() -> String {
    use std::io::Read;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let seed = format!(
            "{t}:{}:{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        bytes.copy_from_slice(&sha256(seed.as_bytes())[..16]);
    }
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_in_one_header_and_params() {
        let c = challenges(
            r#"Digest realm="a, b", nonce="n\"1", qop="auth,auth-int", stale=TRUE, Basic realm="Squid", Negotiate"#,
        );
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].scheme, "Digest");
        assert_eq!(c[0].param("realm"), Some("a, b"));
        assert_eq!(c[0].param("nonce"), Some("n\"1"));
        assert_eq!(c[0].param("qop"), Some("auth,auth-int"));
        assert_eq!(c[1].scheme, "Basic");
        assert_eq!(c[1].param("realm"), Some("Squid"));
        assert_eq!(c[2].scheme, "Negotiate");
        assert!(c[2].params.is_empty());
    }

    /// RFC 7616 section 3.9.1: the MD5 and SHA-256 examples ("Mufasa", "Circle of Life").
    /// The RFC's request is `GET /dir/index.html`; for CONNECT the method differs, so this
    /// checks the RFC vectors with the hashing parts directly.
    #[test]
    fn rfc7616_vectors() {
        let ha1 = DigestAlgorithm::Md5.hex("Mufasa:http-auth@example.org:Circle of Life");
        let ha2 = DigestAlgorithm::Md5.hex("GET:/dir/index.html");
        let resp = DigestAlgorithm::Md5.hex(&format!(
            "{ha1}:7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v:00000001:f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ:auth:{ha2}"
        ));
        assert_eq!(resp, "8ca523f5e9506fed4657c9700eebdbec");
        let s = DigestAlgorithm::Sha256;
        let ha1 = s.hex("Mufasa:http-auth@example.org:Circle of Life");
        let ha2 = s.hex("GET:/dir/index.html");
        let resp = s.hex(&format!(
            "{ha1}:7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v:00000001:f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ:auth:{ha2}"
        ));
        assert_eq!(
            resp,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    /// RFC 2617 section 3.5's example, no algorithm named, qop=auth.
    #[test]
    fn rfc2617_vector() {
        let a = DigestAlgorithm::Md5;
        let ha1 = a.hex("Mufasa:testrealm@host.com:Circle Of Life");
        let ha2 = a.hex("GET:/dir/index.html");
        let resp = a.hex(&format!(
            "{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"
        ));
        assert_eq!(resp, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn connect_authorization_header() {
        let c = challenges(r#"Digest realm="squid", nonce="abc", qop="auth", opaque="op""#);
        let mut d = DigestState::from_challenge(&c[0]).unwrap();
        let creds = Credentials::new("camera", "s3cret").unwrap();
        let v = d.authorization(&creds, "media.example.com:443", "0a4f113b");
        let ha1 = DigestAlgorithm::Md5.hex("camera:squid:s3cret");
        let ha2 = DigestAlgorithm::Md5.hex("CONNECT:media.example.com:443");
        let resp = DigestAlgorithm::Md5.hex(&format!("{ha1}:abc:00000001:0a4f113b:auth:{ha2}"));
        assert_eq!(
            v,
            format!(
                "Digest username=\"camera\", realm=\"squid\", nonce=\"abc\", uri=\"media.example.com:443\", \
                 response=\"{resp}\", qop=auth, nc=00000001, cnonce=\"0a4f113b\", opaque=\"op\""
            )
        );
        // The nonce count goes up with each use.
        assert!(d.authorization(&creds, "h:1", "x").contains("nc=00000002"));
    }

    #[test]
    fn no_qop_and_sess_and_unsupported() {
        let c = challenges(r#"Digest realm="r", nonce="n""#);
        let mut d = DigestState::from_challenge(&c[0]).unwrap();
        let creds = Credentials::new("u", "p").unwrap();
        let v = d.authorization(&creds, "h:1", "cn");
        let ha1 = DigestAlgorithm::Md5.hex("u:r:p");
        let ha2 = DigestAlgorithm::Md5.hex("CONNECT:h:1");
        let resp = DigestAlgorithm::Md5.hex(&format!("{ha1}:n:{ha2}"));
        assert!(v.ends_with(&format!("response=\"{resp}\"")), "{v}");
        assert!(!v.contains("qop") && !v.contains("algorithm"), "{v}");

        let c = challenges(r#"Digest realm="r", nonce="n", algorithm=SHA-256-sess, qop="auth""#);
        let mut d = DigestState::from_challenge(&c[0]).unwrap();
        let v = d.authorization(&creds, "h:1", "cn");
        let s = DigestAlgorithm::Sha256;
        let ha1 = s.hex(&format!("{}:n:cn", s.hex("u:r:p")));
        let resp = s.hex(&format!(
            "{ha1}:n:00000001:cn:auth:{}",
            s.hex("CONNECT:h:1")
        ));
        assert!(v.contains(&format!("response=\"{resp}\"")), "{v}");
        assert!(v.contains("algorithm=SHA-256-sess"), "{v}");

        for bad in [
            r#"Digest realm="r", nonce="n", algorithm=SHA-512-256"#,
            r#"Digest realm="r""#,
            r#"Digest realm="r", nonce="n", qop="other""#,
            r#"Basic realm="r""#,
        ] {
            assert_eq!(
                DigestState::from_challenge(&challenges(bad)[0]),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn cnonces_differ() {
        assert_ne!(new_cnonce(), new_cnonce());
        assert_eq!(new_cnonce().len(), 32);
    }
}
