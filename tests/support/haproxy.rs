//! A real HAProxy (Debian `haproxy`, 2.6) as an authenticating, allow-listing front end for
//! CONNECT, chained in front of another CONNECT proxy, as a child process on a free 127.0.0.1
//! port.
//!
//! HAProxy cannot open a tunnel to a target itself; in `mode http` it forwards a CONNECT to its
//! backend server (here: the upstream CONNECT proxy, e.g. an [`super::Apache`] without
//! authentication) and relays the tunnel once that answers 2xx. In front of it, this config:
//! - checks `Proxy-Authorization: Basic` against a `userlist`. `http_auth()` only reads
//!   `Authorization`, so the frontend first copies `Proxy-Authorization` into `Authorization`
//!   (after deleting any `Authorization` the client sent) and deletes both before forwarding;
//! - answers a missing or wrong credential with `407` + `Proxy-Authenticate: Basic
//!   realm="connect-tunnel-test"` (`http-request return`), keep-alive with a Content-Length;
//! - answers a target whose `host:port` is not on its allow-list with `403` (`http-request
//!   deny`), and anything but CONNECT with `405`;
//! - passes every other CONNECT through: the upstream's answer (200, 503, 502, …) reaches the
//!   client as the upstream sent it.
//!
//! Note that HAProxy answers `400` to a CONNECT whose `Host` header differs from its authority.
//!
//! Readiness: HAProxy prints nothing when it starts serving; with `-V` it prints `Using epoll()
//! as the polling mechanism.` once its listeners are bound (a bind failure prints an `[ALERT]`
//! and exits instead). That line in its own stderr, the child alive and the port accepting TCP
//! make it ready; a failure means another try with a new port (3 in all). `-db` keeps it in the
//! foreground (no pid file then), and its request log goes to the same stderr file.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    basic_auth_value, free_port, is_root, log_file, percent_encode, read_to_string_lossy,
    require_peer, stop_child, user_ids, wait_daemon_ready, write_file, Readiness, TempDir, SIGTERM,
};

pub const HAPROXY: &str = "/usr/sbin/haproxy";

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const START_ATTEMPTS: usize = 3;

/// What to start.
#[derive(Clone, Debug)]
pub struct HaproxyOptions {
    /// The CONNECT proxy HAProxy forwards admitted requests to (plain HTTP).
    pub upstream: SocketAddr,
    /// CONNECT target ports allowed.
    pub allowed_ports: Vec<u16>,
    /// Host names allowed as CONNECT targets besides 127.0.0.1 (default none).
    pub allowed_names: Vec<String>,
}

impl HaproxyOptions {
    pub fn new(upstream: SocketAddr, allowed_ports: &[u16]) -> HaproxyOptions {
        HaproxyOptions {
            upstream,
            allowed_ports: allowed_ports.to_vec(),
            allowed_names: Vec::new(),
        }
    }
}

/// A running HAProxy; stopped (SIGTERM, bounded wait, then SIGKILL), reaped and its temp dir
/// removed on drop. The upstream proxy is the caller's to keep alive.
pub struct Haproxy {
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Working dir: config and `stderr.txt` (start-up messages and the request log).
    pub dir: PathBuf,
    pub options: HaproxyOptions,
    /// How long the successful start attempt took (spawn to ready).
    pub start_time: Duration,
    child: Child,
    _tmp: TempDir,
}

impl Haproxy {
    /// Starts HAProxy in the foreground as a child on a free loopback port (see the module
    /// doc). Returns `None` only when HAProxy is missing and `CI` is not `"true"` (see
    /// [`super::require_peer`]); panics with its output if it cannot be started.
    pub fn start_with(options: HaproxyOptions) -> Option<Haproxy> {
        if !require_peer(HAPROXY) {
            return None;
        }
        let user = "camera".to_string();
        let password = "s3cret pass".to_string();
        // As root, HAProxy drops to its package's user after binding (it writes no files).
        let run_as = if is_root() { user_ids("haproxy") } else { None };

        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let tmp = TempDir::new("haproxy");
            let port = free_port();
            let conf = haproxy_conf(port, &user, &password, &options, run_as.as_ref());
            write_file(&tmp.join("haproxy.cfg"), conf, 0o644);

            let spawned = Instant::now();
            let mut child = Command::new(HAPROXY)
                .arg("-db")
                .arg("-V")
                .arg("-f")
                .arg(tmp.join("haproxy.cfg"))
                .current_dir(&tmp.path)
                .stdin(Stdio::null())
                .stdout(log_file(&tmp.join("stdout.txt")))
                .stderr(log_file(&tmp.join("stderr.txt")))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {HAPROXY}: {e}"));
            let listeners = [SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)];
            let logs = [tmp.join("stdout.txt"), tmp.join("stderr.txt")];
            let readiness = Readiness {
                name: "haproxy",
                logs: &logs,
                ready: "as the polling mechanism",
                fatal: &["[ALERT]"],
                listeners: &listeners,
                pid_file: None,
                timeout: READY_TIMEOUT,
            };
            match wait_daemon_ready(&mut child, &readiness) {
                Ok(()) => {
                    return Some(Haproxy {
                        port,
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
                        "attempt {attempt} (port {port}): {reason}\n--- stdout ---\n{}\n\
                         --- stderr ---\n{}",
                        read_to_string_lossy(&tmp.join("stdout.txt")),
                        read_to_string_lossy(&tmp.join("stderr.txt")),
                    );
                    if attempt < START_ATTEMPTS {
                        eprintln!("haproxy start attempt {attempt} failed ({reason}); retrying");
                    }
                    failures.push(report);
                }
            }
        }
        panic!(
            "haproxy did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// `http://camera:s3cret%20pass@127.0.0.1:PORT` (or without the userinfo).
    pub fn url(&self, with_credentials: bool) -> String {
        let userinfo = if with_credentials {
            format!(
                "{}:{}@",
                percent_encode(&self.user),
                percent_encode(&self.password)
            )
        } else {
            String::new()
        };
        format!("http://{userinfo}127.0.0.1:{}", self.port)
    }

    /// `Basic …` for a `Proxy-Authorization` header with the right credentials.
    pub fn proxy_authorization(&self) -> String {
        basic_auth_value(&self.user, &self.password)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the HAProxy child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Start-up messages and the request log (one line per request, `option httplog`).
    pub fn log(&self) -> String {
        read_to_string_lossy(&self.dir.join("stderr.txt"))
    }

    /// Stops HAProxy now (what drop does): SIGTERM (hard stop), up to 5 s, then SIGKILL;
    /// always reaped.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, SIGTERM, Duration::from_secs(5));
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A regular expression (PCRE, in an HAProxy config word) matching `host` literally.
fn regex_literal(host: &str) -> String {
    let mut out = String::new();
    for ch in host.chars() {
        if ch.is_ascii_alphanumeric() || ch == '-' {
            out.push(ch);
        } else if ch == '.' || ch == ':' || ch == '[' || ch == ']' {
            out.push('\\');
            out.push(ch);
        } else {
            panic!("unsupported character {ch:?} in allowed host {host:?}");
        }
    }
    out
}

/// A double-quoted HAProxy config string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        if matches!(ch, '"' | '\\' | '$') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

fn haproxy_conf(
    port: u16,
    user: &str,
    password: &str,
    options: &HaproxyOptions,
    run_as: Option<&(u32, u32)>,
) -> String {
    let hosts = std::iter::once("127.0.0.1")
        .chain(options.allowed_names.iter().map(String::as_str))
        .map(regex_literal)
        .collect::<Vec<_>>()
        .join("|");
    let ports = if options.allowed_ports.is_empty() {
        "0".to_string()
    } else {
        options
            .allowed_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join("|")
    };
    let mut c = String::from(
        "# connect-tunnel test HAProxy: authenticating, allow-listing CONNECT front end\n\
         global\n\
         \x20   log stderr format iso local0 info\n\
         \x20   maxconn 200\n",
    );
    if let Some((uid, gid)) = run_as {
        // Drops privileges after binding; stderr (the log) stays open.
        c.push_str(&format!("    uid {uid}\n    gid {gid}\n"));
    }
    c.push_str(&format!(
        "defaults\n\
         \x20   mode http\n\
         \x20   log global\n\
         \x20   option httplog\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 30s\n\
         \x20   timeout server 30s\n\
         \x20   timeout tunnel 60s\n\
         userlist proxy_users\n\
         \x20   user {user} insecure-password {}\n\
         frontend connect_front\n\
         \x20   bind 127.0.0.1:{port}\n\
         \x20   acl is_connect method CONNECT\n\
         \x20   acl allowed_target url -m reg ^({hosts}):({ports})$\n\
         \x20   http-request deny deny_status 405 if !is_connect\n\
         \x20   # http_auth() reads Authorization: hand it the Proxy-Authorization value.\n\
         \x20   http-request del-header authorization\n\
         \x20   http-request set-header authorization %[req.hdr(proxy-authorization)] \
         if {{ req.hdr(proxy-authorization) -m found }}\n\
         \x20   acl auth_ok http_auth(proxy_users)\n\
         \x20   http-request return status 407 content-type text/plain \
         string \"proxy authentication required\" \
         hdr Proxy-Authenticate \"Basic realm=\\\"connect-tunnel-test\\\"\" if !auth_ok\n\
         \x20   http-request deny deny_status 403 if !allowed_target\n\
         \x20   http-request del-header authorization\n\
         \x20   http-request del-header proxy-authorization\n\
         \x20   default_backend upstream\n\
         backend upstream\n\
         \x20   server upstream {}\n",
        quoted(password),
        options.upstream,
    ));
    c
}
