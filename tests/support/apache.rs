//! A real Apache httpd 2.4 (Debian `apache2`) as a forward proxy with `mod_proxy_connect`, as a
//! child process on free loopback ports.
//!
//! A private config in a temp dir (own `ServerRoot`, `PidFile`, `Mutex`, `DefaultRuntimeDir`,
//! logs), modules loaded from Debian's `/usr/lib/apache2/modules`, `-DFOREGROUND`. One plain
//! listener on 127.0.0.1 and one TLS listener (`mod_ssl`, certificate from a [`TestCa`]) on
//! 127.0.0.1 and, where IPv6 loopback exists, the same port on [::1]. `ProxyRequests On`,
//! `AllowCONNECT <allowed ports>`, and inside `<Proxy "*">`:
//! - Basic authentication (`AuthUserFile` written with `openssl passwd -apr1`), unless
//!   [`ApacheOptions::require_auth`] is false;
//! - an allow-list of target hosts (`Require expr` on `REQUEST_URI`, which for CONNECT is
//!   `host:port`): 127.0.0.1 and [`ApacheOptions::allowed_names`].
//!
//! What a client sees (measured with Apache 2.4 on Debian 12):
//! - allowed host and port, right credentials: `HTTP/1.0 200 Connection Established` with a
//!   `Proxy-agent` header;
//! - no or wrong credentials (allowed host): `407` offering Basic, keep-alive;
//! - a host outside the allow-list: `403 Forbidden` (checked before the credentials); a port
//!   outside `AllowCONNECT`: `403 Proxy Error`;
//! - target refuses the connection: `503` (then closes); a name that does not resolve: `502`.
//!
//! Readiness: Apache's own error log says `resuming normal operations`, its pid file names the
//! child, and every listener accepts TCP. A bind failure (Apache then exits) means another try
//! with new ports (3 in all).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    basic_auth_value, free_port, group_name, ipv6_loopback_available, is_root, log_file,
    percent_encode, read_to_string_lossy, require_peer, run_checked, stop_child, user_ids,
    wait_daemon_ready, write_file, Readiness, TempDir, TestCa, SIGTERM,
};

pub const APACHE: &str = "/usr/sbin/apache2";
pub const MODULES_DIR: &str = "/usr/lib/apache2/modules";

/// The modules the config loads (`mod_NAME.so` in [`MODULES_DIR`]); `unixd`, `so` and
/// `log_config` are compiled into Debian's binary.
const MODULES: &[&str] = &[
    "mpm_event",
    "authn_core",
    "authn_file",
    "authz_core",
    "authz_user",
    "auth_basic",
    "proxy",
    "proxy_connect",
    "ssl",
];

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const START_ATTEMPTS: usize = 3;

/// What to start; [`ApacheOptions::new`] gives the defaults [`Apache::start`] uses.
#[derive(Clone, Debug)]
pub struct ApacheOptions {
    /// CONNECT target ports allowed (`AllowCONNECT`).
    pub allowed_ports: Vec<u16>,
    /// Require Basic credentials (default true). When false, any client may CONNECT to the
    /// allowed hosts and ports.
    pub require_auth: bool,
    /// Host names allowed as CONNECT targets besides 127.0.0.1 (default none).
    pub allowed_names: Vec<String>,
}

impl ApacheOptions {
    pub fn new(allowed_ports: &[u16]) -> ApacheOptions {
        ApacheOptions {
            allowed_ports: allowed_ports.to_vec(),
            require_auth: true,
            allowed_names: Vec::new(),
        }
    }
}

/// A running Apache; stopped (SIGTERM, bounded wait, then SIGKILL), reaped and its temp dir
/// removed on drop.
pub struct Apache {
    pub plain_port: u16,
    pub tls_port: u16,
    pub ca: TestCa,
    pub user: String,
    pub password: String,
    /// Apache's `ServerRoot`: config, logs, pid file, htpasswd.
    pub dir: PathBuf,
    pub options: ApacheOptions,
    /// How long the successful start attempt took (spawn to ready).
    pub start_time: Duration,
    child: Child,
    _tmp: TempDir,
}

impl Apache {
    /// Starts Apache in the foreground as a child on free loopback ports (see the module doc),
    /// with Basic authentication and the given allowed ports. Returns `None` only when Apache
    /// is missing and `CI` is not `"true"` (see [`super::require_peer`]); panics with Apache's
    /// logs if it cannot be started.
    pub fn start(allowed_ports: &[u16]) -> Option<Apache> {
        Apache::start_with(ApacheOptions::new(allowed_ports))
    }

    /// Like [`Apache::start`] with all options.
    pub fn start_with(options: ApacheOptions) -> Option<Apache> {
        if !require_peer(APACHE) || !require_peer("openssl") {
            return None;
        }
        for module in MODULES {
            let so = format!("{MODULES_DIR}/mod_{module}.so");
            if !Path::new(&so).is_file() {
                let hint = "install apache2 with `bash scripts/install-test-deps.sh`";
                if super::in_ci() {
                    panic!("Apache module {so} is missing and CI=true; {hint}");
                }
                eprintln!("SKIP: Apache module {so} not found; {hint}");
                return None;
            }
        }
        let user = "camera".to_string();
        let password = "s3cret pass".to_string();
        let ca = TestCa::new();
        let htpasswd_line = {
            let out = run_checked("openssl", &["passwd", "-apr1", password.as_str()]);
            let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
            format!("{user}:{hash}\n")
        };

        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let tmp = TempDir::new("apache");
            let plain_port = free_port();
            let tls_port = free_port();
            let conf = apache_conf(&tmp.path, plain_port, tls_port, &ca, &options);
            write_file(&tmp.join("httpd.conf"), conf, 0o644);
            // Read per request by the worker processes (www-data): world-readable test data.
            write_file(&tmp.join("passwd"), &htpasswd_line, 0o644);

            let spawned = Instant::now();
            let mut child = Command::new(APACHE)
                .arg("-f")
                .arg(tmp.join("httpd.conf"))
                .arg("-DFOREGROUND")
                .current_dir(&tmp.path)
                // Debian's apache2 reads nothing from the environment when given -f, but a
                // stray APACHE_CONFDIR could point it elsewhere.
                .env_remove("APACHE_CONFDIR")
                .stdin(Stdio::null())
                .stdout(log_file(&tmp.join("stdout.txt")))
                .stderr(log_file(&tmp.join("stderr.txt")))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {APACHE}: {e}"));

            let mut listeners = vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), plain_port),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), tls_port),
            ];
            if ipv6_loopback_available() {
                listeners.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), tls_port));
            }
            let logs = [tmp.join("error.log"), tmp.join("stderr.txt")];
            let pid_file = tmp.join("httpd.pid");
            let readiness = Readiness {
                name: "apache2",
                logs: &logs,
                ready: "resuming normal operations",
                // AH00072: could not bind; AH00451: no listening sockets; AH00015: cannot
                // open logs; AH00526: syntax error.
                fatal: &["AH00072", "AH00451", "AH00015", "AH00526", "Syntax error"],
                listeners: &listeners,
                pid_file: Some(&pid_file),
                timeout: READY_TIMEOUT,
            };
            match wait_daemon_ready(&mut child, &readiness) {
                Ok(()) => {
                    return Some(Apache {
                        plain_port,
                        tls_port,
                        ca,
                        user,
                        password,
                        dir: tmp.path.clone(),
                        options,
                        start_time: spawned.elapsed(),
                        child,
                        _tmp: tmp,
                    });
                }
                Err(reason) => {
                    stop_child(&mut child, SIGTERM, Duration::from_secs(5));
                    let report = format!(
                        "attempt {attempt} (plain port {plain_port}, tls port {tls_port}): \
                         {reason}\n--- stderr ---\n{}\n--- error.log ---\n{}",
                        read_to_string_lossy(&tmp.join("stderr.txt")),
                        read_to_string_lossy(&tmp.join("error.log")),
                    );
                    if attempt < START_ATTEMPTS {
                        eprintln!("apache start attempt {attempt} failed ({reason}); retrying");
                    }
                    failures.push(report);
                }
            }
        }
        panic!(
            "apache did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// `http://camera:s3cret%20pass@127.0.0.1:PORT` (or without the userinfo).
    pub fn plain_url(&self, with_credentials: bool) -> String {
        format!(
            "http://{}127.0.0.1:{}",
            self.userinfo(with_credentials),
            self.plain_port
        )
    }

    /// `https://camera:s3cret%20pass@localhost:PORT` (or without the userinfo). The server
    /// certificate is for `localhost`, `127.0.0.1` and `::1`; trust [`TestCa::ca_pem_path`].
    pub fn tls_url(&self, with_credentials: bool) -> String {
        format!(
            "https://{}localhost:{}",
            self.userinfo(with_credentials),
            self.tls_port
        )
    }

    fn userinfo(&self, with_credentials: bool) -> String {
        if with_credentials {
            format!(
                "{}:{}@",
                percent_encode(&self.user),
                percent_encode(&self.password)
            )
        } else {
            String::new()
        }
    }

    /// `Basic …` for a `Proxy-Authorization` header with the right credentials.
    pub fn proxy_authorization(&self) -> String {
        basic_auth_value(&self.user, &self.password)
    }

    pub fn plain_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.plain_port)
    }

    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.tls_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the Apache parent process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn error_log(&self) -> String {
        read_to_string_lossy(&self.dir.join("error.log"))
    }

    pub fn access_log(&self) -> String {
        read_to_string_lossy(&self.dir.join("access.log"))
    }

    /// Stops Apache now (what drop does): SIGTERM (the parent stops its workers and exits), up
    /// to 10 s, then SIGKILL; always reaped.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, SIGTERM, Duration::from_secs(10));
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A regular expression (PCRE, inside an Apache `m#…#` match) for one host name, literally.
fn regex_literal(host: &str) -> String {
    let mut out = String::new();
    for ch in host.chars() {
        if ch.is_ascii_alphanumeric() || ch == '-' {
            out.push(ch);
        } else if ch.is_ascii_punctuation() && ch != '#' && ch != '"' {
            out.push('\\');
            out.push(ch);
        } else {
            panic!("unsupported character {ch:?} in allowed host {host:?}");
        }
    }
    out
}

fn apache_conf(
    dir: &Path,
    plain_port: u16,
    tls_port: u16,
    ca: &TestCa,
    options: &ApacheOptions,
) -> String {
    let d = dir.display();
    let mut c = String::new();
    c.push_str("# connect-tunnel test Apache: a forward proxy for CONNECT only, private paths\n");
    for line in [
        format!("ServerRoot {d}"),
        "ServerName localhost".into(),
        format!("PidFile {d}/httpd.pid"),
        format!("DefaultRuntimeDir {d}"),
        format!("Mutex file:{d} default"),
        format!("ErrorLog {d}/error.log"),
        "LogLevel notice".into(),
    ] {
        c.push_str(&line);
        c.push('\n');
    }
    for module in MODULES {
        c.push_str(&format!(
            "LoadModule {module}_module {MODULES_DIR}/mod_{module}.so\n"
        ));
    }
    if is_root() {
        // The parent stays root (it binds and reads the key); workers run as www-data.
        let (_, gid) = user_ids("www-data").expect(
            "user `www-data` missing (the apache2 package creates it): \
             run scripts/install-test-deps.sh",
        );
        let group = group_name(gid).unwrap_or_else(|| "www-data".into());
        c.push_str(&format!("User www-data\nGroup {group}\n"));
    }
    for line in [
        // One worker process is plenty for tests and starts fast.
        "StartServers 1",
        "ServerLimit 2",
        "ThreadsPerChild 25",
        "MinSpareThreads 5",
        "MaxSpareThreads 50",
        "MaxRequestWorkers 50",
        "KeepAlive On",
        "KeepAliveTimeout 5",
        "Timeout 30",
    ] {
        c.push_str(line);
        c.push('\n');
    }
    c.push_str(&format!("Listen 127.0.0.1:{plain_port}\n"));
    c.push_str(&format!("Listen 127.0.0.1:{tls_port} https\n"));
    let mut tls_vhost = format!("127.0.0.1:{tls_port}");
    if ipv6_loopback_available() {
        c.push_str(&format!("Listen [::1]:{tls_port} https\n"));
        tls_vhost.push_str(&format!(" [::1]:{tls_port}"));
    }
    c.push_str(&format!(
        "LogFormat \"%h %u \\\"%r\\\" %>s %I %O\" tunnel\n\
         CustomLog {d}/access.log tunnel\n"
    ));
    let ports = if options.allowed_ports.is_empty() {
        // AllowCONNECT needs a value; port 0 matches no real CONNECT target.
        "0".to_string()
    } else {
        options
            .allowed_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let hosts = std::iter::once("127.0.0.1")
        .chain(options.allowed_names.iter().map(String::as_str))
        .map(regex_literal)
        .collect::<Vec<_>>()
        .join("|");
    c.push_str(&format!(
        "ProxyRequests On\n\
         ProxyVia Off\n\
         AllowCONNECT {ports}\n\
         <Proxy \"*\">\n"
    ));
    if options.require_auth {
        c.push_str(&format!(
            "  AuthType Basic\n\
             \x20 AuthName \"connect-tunnel-test\"\n\
             \x20 AuthBasicProvider file\n\
             \x20 AuthUserFile {d}/passwd\n"
        ));
    }
    // For CONNECT, REQUEST_URI is the authority, `host:port`.
    c.push_str("  <RequireAll>\n");
    if options.require_auth {
        c.push_str("    Require valid-user\n");
    }
    c.push_str(&format!(
        "    Require expr \"%{{REQUEST_URI}} =~ m#^({hosts}):[0-9]+$#\"\n\
         \x20 </RequireAll>\n\
         </Proxy>\n"
    ));
    c.push_str(&format!(
        "SSLSessionCache none\n\
         <VirtualHost {tls_vhost}>\n\
         \x20 SSLEngine on\n\
         \x20 SSLCertificateFile {}\n\
         \x20 SSLCertificateKeyFile {}\n\
         </VirtualHost>\n",
        ca.server_cert_path.display(),
        ca.server_key_path.display()
    ));
    c
}
