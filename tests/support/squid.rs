//! A real Squid (Debian `squid-openssl`) as a child process on free loopback ports.
//!
//! One plain `http_port` on 127.0.0.1 and one `https_port` (certificate from a [`TestCa`]) on
//! 127.0.0.1 and, where IPv6 loopback exists, the same port on [::1] (so `localhost` reaches it
//! whichever address a client tries first). Basic auth is required; CONNECT is allowed only to
//! the given ports on 127.0.0.1 (and on the names in [`SquidOptions::allowed_names`]):
//! - allowed port, right credentials: `200 Connection established`;
//! - no or wrong credentials: `407` (checked before anything else);
//! - port not allowed, or a host other than 127.0.0.1: `403`.
//!
//! [`SquidOptions::auth`] picks the scheme: Basic (`basic_ncsa_auth`, the default), Digest only
//! (`digest_file_auth`: the 407 then offers nothing but `Digest`, so a client must answer the
//! challenge), or both (Squid then sends two `Proxy-Authenticate` headers, Digest first).
//!
//! Squid does not exit when a port cannot be bound: it logs `commBind Cannot bind socket` and
//! keeps serving its other ports. So readiness is taken from its own `cache.log` (`Accepting ...
//! local=ADDR:PORT` for every listener) plus a TCP connection to each, while the child lives;
//! a bind error or an early exit means another try with new ports (3 in all).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{
    basic_auth_value, free_port, ipv6_loopback_available, is_root, percent_encode, port_accepts,
    read_to_string_lossy, require_peer, run_checked, stop_child, user_ids, write_file, TempDir,
    TestCa, SIGINT,
};

pub const SQUID: &str = "/usr/sbin/squid";
pub const BASIC_NCSA_AUTH: &str = "/usr/lib/squid/basic_ncsa_auth";
pub const DIGEST_FILE_AUTH: &str = "/usr/lib/squid/digest_file_auth";

/// How long one start attempt may take before it counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const START_ATTEMPTS: usize = 3;

/// Which proxy authentication schemes Squid offers (when [`SquidOptions::require_auth`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SquidAuth {
    /// Basic only (`basic_ncsa_auth` with an htpasswd file). The default.
    Basic,
    /// Digest only (`digest_file_auth` with `user:password` lines): Basic credentials are
    /// refused, the 407 carries one `Proxy-Authenticate: Digest …`.
    Digest,
    /// Both: the 407 carries `Digest …` and `Basic …`.
    DigestAndBasic,
}

/// What to start; [`SquidOptions::new`] gives the defaults [`Squid::start`] uses.
#[derive(Clone, Debug)]
pub struct SquidOptions {
    /// CONNECT target ports allowed on 127.0.0.1.
    pub allowed_ports: Vec<u16>,
    /// Require Basic credentials (default true). When false, any client may CONNECT to the
    /// allowed ports.
    pub require_auth: bool,
    /// Make the `https_port` require a client certificate signed by the Squid's [`TestCa`]
    /// (`clientca=` + `tls-cafile=`). Default false.
    pub require_client_cert: bool,
    /// Extra squid.conf lines, inserted before the `http_access` rules (so an `http_access`
    /// line here takes precedence over the built-in ones).
    pub extra_config: Vec<String>,
    /// Authentication schemes offered (default [`SquidAuth::Basic`]).
    pub auth: SquidAuth,
    /// Host names allowed as CONNECT targets besides 127.0.0.1 (`dstdomain`, default none). A
    /// name here that does not resolve lets a test see Squid's own answer to a failed lookup.
    pub allowed_names: Vec<String>,
}

impl SquidOptions {
    pub fn new(allowed_ports: &[u16]) -> SquidOptions {
        SquidOptions {
            allowed_ports: allowed_ports.to_vec(),
            require_auth: true,
            require_client_cert: false,
            extra_config: Vec::new(),
            auth: SquidAuth::Basic,
            allowed_names: Vec::new(),
        }
    }
}

/// A running Squid; stopped (SIGINT, bounded wait, then SIGKILL), reaped and its temp dir
/// removed on drop.
pub struct Squid {
    pub plain_port: u16,
    pub tls_port: u16,
    pub ca: TestCa,
    pub user: String,
    pub password: String,
    /// Squid's working dir (config, logs, pid file, htpasswd), owned by `proxy`.
    pub dir: PathBuf,
    pub options: SquidOptions,
    /// How long the successful start attempt took (spawn to ready).
    pub start_time: Duration,
    child: Child,
    _tmp: TempDir,
}

impl Squid {
    /// Starts squid in the foreground as a child on free loopback ports (see the module doc).
    /// Returns `None` only when squid is missing and `CI` is not `"true"` (see
    /// [`super::require_peer`]); panics with Squid's logs if it cannot be started.
    pub fn start(allowed_ports: &[u16]) -> Option<Squid> {
        Squid::start_with(SquidOptions::new(allowed_ports))
    }

    /// Like [`Squid::start`] with all options.
    pub fn start_with(options: SquidOptions) -> Option<Squid> {
        if !require_peer(SQUID) || !require_peer(BASIC_NCSA_AUTH) || !require_peer("openssl") {
            return None;
        }
        if options.auth != SquidAuth::Basic && !require_peer(DIGEST_FILE_AUTH) {
            return None;
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
            let tmp = TempDir::new("squid");
            let plain_port = free_port();
            let tls_port = free_port();
            let conf = squid_conf(&tmp.path, plain_port, tls_port, &ca, &options);
            write_file(&tmp.join("squid.conf"), conf, 0o644);
            write_file(&tmp.join("passwd"), &htpasswd_line, 0o644);
            write_file(
                &tmp.join("digest_passwd"),
                format!("{user}:{password}\n"),
                0o644,
            );
            give_to_proxy_user(&tmp.path);

            let spawned = Instant::now();
            let mut child = Command::new(SQUID)
                .arg("-N")
                .arg("-f")
                .arg(tmp.join("squid.conf"))
                .current_dir(&tmp.path)
                .stdin(Stdio::null())
                .stdout(log_file(&tmp.join("stdout.txt")))
                .stderr(log_file(&tmp.join("stderr.txt")))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {SQUID}: {e}"));

            let mut listeners = vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), plain_port),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), tls_port),
            ];
            if ipv6_loopback_available() {
                listeners.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), tls_port));
            }
            match wait_ready(&mut child, &tmp.path, &listeners) {
                Ok(()) => {
                    return Some(Squid {
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
                    stop_child(&mut child, SIGINT, Duration::from_secs(5));
                    let report = format!(
                        "attempt {attempt} (plain port {plain_port}, tls port {tls_port}): \
                         {reason}\n--- stderr ---\n{}\n--- cache.log ---\n{}",
                        read_to_string_lossy(&tmp.join("stderr.txt")),
                        read_to_string_lossy(&tmp.join("cache.log")),
                    );
                    if attempt < START_ATTEMPTS {
                        eprintln!("squid start attempt {attempt} failed ({reason}); retrying");
                    }
                    failures.push(report);
                }
            }
        }
        panic!(
            "squid did not start in {START_ATTEMPTS} attempts:\n{}",
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

    /// True while the squid child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn cache_log(&self) -> String {
        read_to_string_lossy(&self.dir.join("cache.log"))
    }

    pub fn access_log(&self) -> String {
        read_to_string_lossy(&self.dir.join("access.log"))
    }

    /// Stops squid now (what drop does): SIGINT (Squid's fast shutdown, no client grace
    /// period), up to 10 s, then SIGKILL; always reaped.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, SIGINT, Duration::from_secs(10));
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        self.stop();
    }
}

fn log_file(path: &Path) -> Stdio {
    Stdio::from(fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display())))
}

/// Squid switches to `proxy` when started as root: its working dir and files must belong to it.
fn give_to_proxy_user(dir: &Path) {
    if !is_root() {
        return;
    }
    let (uid, gid) = user_ids("proxy").expect(
        "user `proxy` missing (the squid package creates it): run scripts/install-test-deps.sh",
    );
    for entry in [dir.to_path_buf()].into_iter().chain(
        fs::read_dir(dir)
            .expect("read squid dir")
            .filter_map(|e| e.ok().map(|e| e.path())),
    ) {
        chown(&entry, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown proxy {}: {e}", entry.display()));
    }
}

fn squid_conf(
    dir: &Path,
    plain_port: u16,
    tls_port: u16,
    ca: &TestCa,
    options: &SquidOptions,
) -> String {
    let d = dir.display();
    let mut tls_opts = format!(
        "tls-cert={} tls-key={}",
        ca.server_cert_path.display(),
        ca.server_key_path.display()
    );
    if options.require_client_cert {
        let ca_path = ca.ca_pem_path.display();
        tls_opts.push_str(&format!(" clientca={ca_path} tls-cafile={ca_path}"));
    }
    let mut c = String::new();
    c.push_str("# connect-tunnel test squid: minimal, no disk cache, quick start and stop\n");
    c.push_str(&format!("http_port 127.0.0.1:{plain_port}\n"));
    c.push_str(&format!("https_port 127.0.0.1:{tls_port} {tls_opts}\n"));
    if ipv6_loopback_available() {
        c.push_str(&format!("https_port [::1]:{tls_port} {tls_opts}\n"));
    }
    if is_root() {
        c.push_str("cache_effective_user proxy\n");
    }
    for line in [
        format!("pid_filename {d}/squid.pid"),
        format!("cache_log {d}/cache.log"),
        format!("access_log stdio:{d}/access.log"),
        "cache_store_log none".into(),
        "netdb_filename none".into(),
        format!("coredump_dir {d}"),
        "cache deny all".into(),
        "cache_mem 8 MB".into(),
        "shutdown_lifetime 1 seconds".into(),
        "pinger_enable off".into(),
        "visible_hostname connect-tunnel-test".into(),
        "logfile_rotate 0".into(),
    ] {
        c.push_str(&line);
        c.push('\n');
    }
    if options.require_auth {
        // Squid offers the schemes in the order they are configured.
        if options.auth != SquidAuth::Basic {
            c.push_str(&format!(
                "auth_param digest program {DIGEST_FILE_AUTH} {d}/digest_passwd\n\
                 auth_param digest children 2 startup=1 idle=1\n\
                 auth_param digest realm connect-tunnel-test\n"
            ));
        }
        if options.auth != SquidAuth::Digest {
            c.push_str(&format!(
                "auth_param basic program {BASIC_NCSA_AUTH} {d}/passwd\n\
                 auth_param basic children 2 startup=1 idle=1\n\
                 auth_param basic realm connect-tunnel-test\n"
            ));
        }
        c.push_str("acl authed proxy_auth REQUIRED\n");
    }
    let ports = if options.allowed_ports.is_empty() {
        // An acl needs at least one value; port 0 matches no real CONNECT target.
        "0".to_string()
    } else {
        options
            .allowed_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    c.push_str(&format!(
        "acl CONNECT method CONNECT\n\
         acl SSL_ports port {ports}\n\
         acl allowed_targets dst 127.0.0.1\n"
    ));
    if !options.allowed_names.is_empty() {
        c.push_str(&format!(
            "acl allowed_names dstdomain {}\n",
            options.allowed_names.join(" ")
        ));
    }
    for line in &options.extra_config {
        c.push_str(line);
        c.push('\n');
    }
    if options.require_auth {
        c.push_str("http_access deny !authed\n");
    }
    c.push_str("http_access deny CONNECT !SSL_ports\n");
    if options.allowed_names.is_empty() {
        c.push_str("http_access deny CONNECT !allowed_targets\n");
    } else {
        // Names first: a listed name is allowed without the `dst` look-up.
        c.push_str("http_access deny CONNECT !allowed_names !allowed_targets\n");
    }
    c.push_str(
        "http_access allow CONNECT\n\
         http_access deny all\n",
    );
    c
}

fn wait_ready(child: &mut Child, dir: &Path, listeners: &[SocketAddr]) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("squid exited early ({status})"));
        }
        let log = fs::read_to_string(dir.join("cache.log")).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("Cannot bind") || l.contains("FATAL"))
        {
            return Err(format!("squid reported: {line}"));
        }
        let all_accepting = listeners.iter().all(|addr| {
            let needle = format!("local={addr} ");
            log.lines()
                .any(|l| l.contains("Accepting") && l.contains(&needle))
        });
        if all_accepting
            && listeners
                .iter()
                .all(|addr| port_accepts(*addr, Duration::from_millis(500)))
        {
            // Still ours and alive after answering?
            return match child.try_wait() {
                Ok(None) => Ok(()),
                Ok(Some(status)) => Err(format!("squid exited right after start ({status})")),
                Err(e) => Err(format!("try_wait: {e}")),
            };
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not ready within {READY_TIMEOUT:?} (listeners wanted: {listeners:?})"
            ));
        }
        thread::sleep(Duration::from_millis(25));
    }
}
