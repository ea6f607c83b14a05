//! Phase 1, acquire addresses: the proxy (from a URL) and the target authority.

use std::fmt;
use std::net::Ipv6Addr;

use crate::error::{Error, InvalidInput, Phase};

/// How the client talks to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyScheme {
    /// Plain TCP (`http://`, default port 80).
    Http,
    /// TLS to the proxy (`https://`, default port 443).
    Https,
}

impl ProxyScheme {
    /// The port used when the URL names none: 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            ProxyScheme::Http => 80,
            ProxyScheme::Https => 443,
        }
    }
}

/// A user name and password for the proxy. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl Credentials {
    /// Credentials from a user name and a password.
    ///
    /// Refuses CR, LF and NUL anywhere, and a `:` in the user name (Basic cannot carry it).
    pub fn new(user: &str, password: &str) -> Result<Credentials, Error> {
        check_no_forbidden(user.as_bytes(), Phase::BuildConnect, "proxy user")?;
        check_no_forbidden(password.as_bytes(), Phase::BuildConnect, "proxy password")?;
        if user.contains(':') {
            return Err(Error::invalid(
                Phase::BuildConnect,
                InvalidInput::UserName,
                "proxy user",
            ));
        }
        Ok(Credentials {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Parses `user:password` (split at the first `:`), as curl's `-U` takes it.
    pub fn parse(user_colon_password: &str) -> Result<Credentials, Error> {
        match user_colon_password.split_once(':') {
            Some((user, password)) => Credentials::new(user, password),
            None => Credentials::new(user_colon_password, ""),
        }
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password.
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Where the proxy is: scheme, host, port and optional credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    scheme: ProxyScheme,
    host: String,
    port: u16,
    credentials: Option<Credentials>,
}

impl Proxy {
    /// A proxy at `host:port` reached with `scheme`, without credentials.
    pub fn new(scheme: ProxyScheme, host: &str, port: u16) -> Result<Proxy, Error> {
        let host = checked_host_port(
            host,
            port,
            InvalidInput::ProxyUrl,
            ("proxy host", "proxy port"),
        )?;
        Ok(Proxy {
            scheme,
            host,
            port,
            credentials: None,
        })
    }

    /// Parses `http://[user[:password]@]host[:port][/]` or `https://…`.
    ///
    /// A URL without a scheme is taken as `http://`, as curl does. The port defaults to 80 for
    /// `http` and 443 for `https`. IPv6 literals are bracketed. User and password are
    /// percent-decoded.
    pub fn parse(url: &str) -> Result<Proxy, Error> {
        let bad = |what| Error::invalid(Phase::AcquireAddresses, InvalidInput::ProxyUrl, what);
        check_no_forbidden(url.as_bytes(), Phase::AcquireAddresses, "proxy URL")?;
        let (scheme, rest) = match url.split_once("://") {
            Some((s, rest)) => {
                let scheme = if s.eq_ignore_ascii_case("http") {
                    ProxyScheme::Http
                } else if s.eq_ignore_ascii_case("https") {
                    ProxyScheme::Https
                } else {
                    return Err(Error::invalid(
                        Phase::AcquireAddresses,
                        InvalidInput::ProxyScheme,
                        "proxy URL scheme",
                    ));
                };
                (scheme, rest)
            }
            None => (ProxyScheme::Http, url),
        };
        let authority = match rest.find(['/', '?', '#']) {
            Some(i) if &rest[i..] == "/" => &rest[..i],
            Some(_) => return Err(bad("proxy URL (has a path)")),
            None => rest,
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (host, port) =
            split_host_port(hostport).ok_or_else(|| bad("proxy URL host or port"))?;
        let port = match port {
            Some(p) => p,
            None => scheme.default_port(),
        };
        let mut proxy = Proxy::new(scheme, host, port)?;
        if let Some(userinfo) = userinfo {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let user = percent_decode(user).ok_or_else(|| bad("proxy URL user"))?;
            let password = percent_decode(password).ok_or_else(|| bad("proxy URL password"))?;
            proxy.credentials = Some(Credentials::new(&user, &password)?);
        }
        Ok(proxy)
    }

    /// Replaces the credentials (for example from `-U user:password`).
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> Proxy {
        self.credentials = credentials;
        self
    }

    /// `Http` or `Https`.
    pub fn scheme(&self) -> ProxyScheme {
        self.scheme
    }

    /// The host name or address literal (IPv6 without brackets). Also the TLS server name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The credentials, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }
}

impl fmt::Display for Proxy {
    /// `scheme://host:port`, never the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            ProxyScheme::Http => "http",
            ProxyScheme::Https => "https",
        };
        write!(f, "{scheme}://{}", Authority(&self.host, self.port))
    }
}

/// The destination behind the proxy: the authority that goes into `CONNECT host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    host: String,
    port: u16,
}

impl Target {
    /// A target from a host (name, IPv4 or IPv6 literal, brackets optional) and a port.
    pub fn new(host: &str, port: u16) -> Result<Target, Error> {
        let host = checked_host_port(
            host,
            port,
            InvalidInput::Target,
            ("target host", "target port"),
        )?;
        Ok(Target { host, port })
    }

    /// Parses `host:port` or `[v6addr]:port`. The port is required.
    pub fn parse(authority: &str) -> Result<Target, Error> {
        check_no_forbidden(authority.as_bytes(), Phase::AcquireAddresses, "target")?;
        match split_host_port(authority) {
            Some((host, Some(port))) => Target::new(host, port),
            _ => Err(Error::invalid(
                Phase::AcquireAddresses,
                InvalidInput::Target,
                "target",
            )),
        }
    }

    /// The host (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Target {
    /// The authority as sent: `host:port`, IPv6 literals bracketed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Authority(&self.host, self.port).fmt(f)
    }
}

/// Formats `host:port`, bracketing IPv6 literals.
struct Authority<'a>(&'a str, u16);

impl fmt::Display for Authority<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.contains(':') {
            write!(f, "[{}]:{}", self.0, self.1)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

/// The host without IPv6 brackets, once host and port are checked; errors are `kind`, naming
/// `what.0` for the host and `what.1` for the port.
fn checked_host_port(
    host: &str,
    port: u16,
    kind: InvalidInput,
    what: (&'static str, &'static str),
) -> Result<String, Error> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    check_host(host, Phase::AcquireAddresses, kind, what.0)?;
    if port == 0 {
        return Err(Error::invalid(Phase::AcquireAddresses, kind, what.1));
    }
    Ok(host.to_owned())
}

/// Splits `host[:port]` / `[v6][:port]`. `None` when malformed.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let close = rest.find(']')?;
        let host = &rest[..close];
        host.parse::<Ipv6Addr>().ok()?;
        match &rest[close + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            // An unbracketed IPv6 literal is ambiguous: refuse it.
            Some((h, _)) if h.contains(':') => return None,
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|&p| p != 0)?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

fn check_host(
    host: &str,
    phase: Phase,
    kind: InvalidInput,
    what: &'static str,
) -> Result<(), Error> {
    check_no_forbidden(host.as_bytes(), phase, what)?;
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'@' | b'[' | b']' | b'?' | b'#'))
        && (!host.contains(':') || host.parse::<Ipv6Addr>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(phase, kind, what))
    }
}

/// Refuses CR, LF and NUL: they would end or split a request line or header.
pub(crate) fn check_no_forbidden(
    bytes: &[u8],
    phase: Phase,
    what: &'static str,
) -> Result<(), Error> {
    if bytes.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        Err(Error::invalid(phase, InvalidInput::ForbiddenByte, what))
    } else {
        Ok(())
    }
}

/// Decodes `%XX` escapes. `None` on a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_url_defaults_and_ports() {
        let p = Proxy::parse("https://proxy.example.com").unwrap();
        assert_eq!(
            (p.scheme(), p.host(), p.port()),
            (ProxyScheme::Https, "proxy.example.com", 443)
        );
        let p = Proxy::parse("http://proxy.example.com/").unwrap();
        assert_eq!(p.port(), 80);
        let p = Proxy::parse("HTTP://10.0.0.1:3128").unwrap();
        assert_eq!((p.host(), p.port()), ("10.0.0.1", 3128));
        let p = Proxy::parse("proxy:8080").unwrap();
        assert_eq!((p.scheme(), p.port()), (ProxyScheme::Http, 8080));
        let p = Proxy::parse("https://[::1]:8443").unwrap();
        assert_eq!((p.host(), p.port()), ("::1", 8443));
        assert_eq!(p.to_string(), "https://[::1]:8443");
    }

    #[test]
    fn proxy_url_credentials_are_percent_decoded_and_hidden() {
        let p = Proxy::parse("http://cam%40site:p%3Ass%20w@proxy:3128").unwrap();
        let c = p.credentials().unwrap();
        assert_eq!((c.user(), c.password()), ("cam@site", "p:ss w"));
        assert!(!format!("{p:?}").contains("p:ss w"));
        assert_eq!(p.to_string(), "http://proxy:3128");
        let p = Proxy::parse("http://user@proxy").unwrap();
        assert_eq!(p.credentials().unwrap().password(), "");
    }

    #[test]
    fn proxy_url_errors() {
        for bad in [
            "ftp://proxy",
            "http://",
            "http://proxy:0",
            "http://proxy:99999",
            "http://proxy:port",
            "http://proxy/path",
            "http://::1:80",
            "http://[zz]:80",
            "http://u:%zz@proxy",
        ] {
            assert!(Proxy::parse(bad).is_err(), "{bad} accepted");
        }
        let e = Proxy::parse("http://u:p%0d%0aX@proxy").unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidInput {
                kind: InvalidInput::ForbiddenByte,
                ..
            }
        ));
        let e = Proxy::parse("http://proxy\r\n").unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidInput {
                kind: InvalidInput::ForbiddenByte,
                ..
            }
        ));
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("media.example.com:443").unwrap().to_string(),
            "media.example.com:443"
        );
        let t = Target::parse("[2001:db8::1]:5004").unwrap();
        assert_eq!((t.host(), t.port()), ("2001:db8::1", 5004));
        assert_eq!(t.to_string(), "[2001:db8::1]:5004");
        assert_eq!(
            Target::new("2001:db8::1", 22).unwrap().to_string(),
            "[2001:db8::1]:22"
        );
        for bad in [
            "host",
            "host:",
            ":22",
            "host:0",
            "2001:db8::1:22",
            "ho st:22",
            "a/b:1",
            "[::1]",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} accepted");
        }
        let e = Target::parse("host\r\nX: y:22").unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidInput {
                kind: InvalidInput::ForbiddenByte,
                ..
            }
        ));
        assert!(Target::new("a\0b", 1).is_err());
    }

    #[test]
    fn credentials_parse_and_refuse() {
        let c = Credentials::parse("user:pa:ss").unwrap();
        assert_eq!((c.user(), c.password()), ("user", "pa:ss"));
        assert!(Credentials::new("u", "p\n").is_err());
        assert!(Credentials::new("u\0", "p").is_err());
        let e = Credentials::new("a:b", "p").unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidInput {
                kind: InvalidInput::UserName,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "build CONNECT: invalid proxy user: a user name cannot contain ':' in Basic \
             authentication"
        );
        // A percent-encoded ':' in a URL's user name is refused the same way.
        let e = Proxy::parse("http://u%3Ax:p@proxy").unwrap_err();
        assert!(e.to_string().contains("cannot contain ':'"), "{e}");
        assert!(!e.to_string().contains("Name: value"), "{e}");
    }
}
