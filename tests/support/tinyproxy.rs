//! A real tinyproxy (Debian `tinyproxy`, 1.11) as a child process on a free 127.0.0.1 port.
//!
//! A private config in a temp dir, foreground (`-d -c CONF`): `BasicAuth user password` (unless
//! [`TinyproxyOptions::require_auth`] is false), one `ConnectPort` per allowed port, and a host
//! filter (`Filter` + `FilterType ere` + `FilterDefaultDeny Yes`) that admits 127.0.0.1 and
//! [`TinyproxyOptions::allowed_names`] only. Plain listener only: tinyproxy has no TLS.
//!
//! What a client sees (measured with tinyproxy 1.11.1 on Debian 12):
//! - allowed host and port, right credentials: `HTTP/1.0 200 Connection established`;
//! - no credentials: `HTTP/1.0 407` offering Basic, body delimited by close;
//! - **wrong credentials: `401 Unauthorized` with `WWW-Authenticate: Basic`**, not 407;
//! - a port outside the `ConnectPort` list: `403 Access violation`; a host the filter does not
//!   admit: `403 Filtered`;
//! - target refuses the connection, or a name that does not resolve: `500 Unable to connect`.
//!
//! tinyproxy's config grammar takes a BasicAuth password of `[-a-z0-9._]` characters only (no
//! spaces, no quoting), so its password is `s3cret.pass`, not the `s3cret pass` of the others.
//!
//! As root it runs as user `tinyproxy` (or `nobody`), which must own the temp dir: tinyproxy
//! opens its log file after dropping privileges. Readiness: its own log says `Accepting
//! connections`, its pid file names the child, and the port accepts TCP. A bind failure
//! (tinyproxy then exits) means another try with a new port (3 in all).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    basic_auth_value, chown_dir, first_user, free_port, group_name, is_root, log_file,
    percent_encode, read_to_string_lossy, require_peer, stop_child, wait_daemon_ready, write_file,
    Readiness, TempDir, SIGTERM,
};

pub const TINYPROXY: &str = "/usr/bin/tinyproxy";

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const START_ATTEMPTS: usize = 3;

/// What to start; [`TinyproxyOptions::new`] gives the defaults [`Tinyproxy::start`] uses.
#[derive(Clone, Debug)]
pub struct TinyproxyOptions {
    /// CONNECT target ports allowed (`ConnectPort`).
    pub allowed_ports: Vec<u16>,
    /// Require Basic credentials (default true).
    pub require_auth: bool,
    /// Host names the filter admits besides 127.0.0.1 (default none).
    pub allowed_names: Vec<String>,
}

impl TinyproxyOptions {
    pub fn new(allowed_ports: &[u16]) -> TinyproxyOptions {
        TinyproxyOptions {
            allowed_ports: allowed_ports.to_vec(),
            require_auth: true,
            allowed_names: Vec::new(),
        }
    }
}

/// A running tinyproxy; stopped (SIGTERM, bounded wait, then SIGKILL), reaped and its temp dir
/// removed on drop.
pub struct Tinyproxy {
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Working dir: config, filter, log, pid file.
    pub dir: PathBuf,
    pub options: TinyproxyOptions,
    /// How long the successful start attempt took (spawn to ready).
    pub start_time: Duration,
    child: Child,
    _tmp: TempDir,
}

impl Tinyproxy {
    /// Starts tinyproxy in the foreground as a child on a free loopback port (see the module
    /// doc), with Basic authentication and the given allowed ports. Returns `None` only when
    /// tinyproxy is missing and `CI` is not `"true"` (see [`super::require_peer`]); panics with
    /// its log if it cannot be started.
    pub fn start(allowed_ports: &[u16]) -> Option<Tinyproxy> {
        Tinyproxy::start_with(TinyproxyOptions::new(allowed_ports))
    }

    /// Like [`Tinyproxy::start`] with all options.
    pub fn start_with(options: TinyproxyOptions) -> Option<Tinyproxy> {
        if !require_peer(TINYPROXY) {
            return None;
        }
        let user = "camera".to_string();
        let password = "s3cret.pass".to_string();
        let run_as = if is_root() {
            let (name, uid, gid) = first_user(&["tinyproxy", "nobody"])
                .expect("neither user `tinyproxy` nor `nobody` exists");
            let group = group_name(gid).unwrap_or_else(|| gid.to_string());
            Some((name, group, uid, gid))
        } else {
            None
        };

        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let tmp = TempDir::new("tinyproxy");
            let port = free_port();
            let d = tmp.path.display();
            let mut conf = format!(
                "# connect-tunnel test tinyproxy: CONNECT to allowed hosts and ports only\n\
                 Port {port}\n\
                 Listen 127.0.0.1\n\
                 Timeout 60\n\
                 LogFile \"{d}/tinyproxy.log\"\n\
                 LogLevel Info\n\
                 PidFile \"{d}/tinyproxy.pid\"\n\
                 MaxClients 50\n\
                 DisableViaHeader Yes\n\
                 Filter \"{d}/filter\"\n\
                 FilterType ere\n\
                 FilterDefaultDeny Yes\n\
                 FilterURLs Off\n"
            );
            if let Some((name, group, _, _)) = &run_as {
                conf.push_str(&format!("User {name}\nGroup {group}\n"));
            }
            if options.require_auth {
                conf.push_str(&format!("BasicAuth {user} {password}\n"));
            }
            for p in &options.allowed_ports {
                conf.push_str(&format!("ConnectPort {p}\n"));
            }
            if options.allowed_ports.is_empty() {
                // Without any ConnectPort line tinyproxy allows every port; 0 matches none.
                conf.push_str("ConnectPort 0\n");
            }
            let filter: String = std::iter::once("127.0.0.1")
                .chain(options.allowed_names.iter().map(String::as_str))
                .map(|host| format!("^{}$\n", ere_literal(host)))
                .collect();
            write_file(&tmp.join("tinyproxy.conf"), conf, 0o644);
            write_file(&tmp.join("filter"), filter, 0o644);
            if let Some((_, _, uid, gid)) = &run_as {
                chown_dir(&tmp.path, *uid, *gid);
            }

            let spawned = Instant::now();
            let mut child = Command::new(TINYPROXY)
                .arg("-d")
                .arg("-c")
                .arg(tmp.join("tinyproxy.conf"))
                .current_dir(&tmp.path)
                .stdin(Stdio::null())
                .stdout(log_file(&tmp.join("stdout.txt")))
                .stderr(log_file(&tmp.join("stderr.txt")))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {TINYPROXY}: {e}"));
            let listeners = [SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)];
            let logs = [tmp.join("tinyproxy.log"), tmp.join("stderr.txt")];
            let pid_file = tmp.join("tinyproxy.pid");
            let readiness = Readiness {
                name: "tinyproxy",
                logs: &logs,
                ready: "Accepting connections",
                fatal: &[
                    "Could not create listening sockets",
                    "Unable to parse config",
                    "Syntax error",
                ],
                listeners: &listeners,
                pid_file: Some(&pid_file),
                timeout: READY_TIMEOUT,
            };
            match wait_daemon_ready(&mut child, &readiness) {
                Ok(()) => {
                    return Some(Tinyproxy {
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
                        "attempt {attempt} (port {port}): {reason}\n--- stderr ---\n{}\n\
                         --- tinyproxy.log ---\n{}",
                        read_to_string_lossy(&tmp.join("stderr.txt")),
                        read_to_string_lossy(&tmp.join("tinyproxy.log")),
                    );
                    if attempt < START_ATTEMPTS {
                        eprintln!("tinyproxy start attempt {attempt} failed ({reason}); retrying");
                    }
                    failures.push(report);
                }
            }
        }
        panic!(
            "tinyproxy did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// `http://camera:s3cret.pass@127.0.0.1:PORT` (or without the userinfo).
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

    /// True while the tinyproxy child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        read_to_string_lossy(&self.dir.join("tinyproxy.log"))
    }

    /// Stops tinyproxy now (what drop does): SIGTERM, up to 5 s, then SIGKILL; always reaped.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, SIGTERM, Duration::from_secs(5));
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A POSIX extended regular expression matching `host` literally.
fn ere_literal(host: &str) -> String {
    let mut out = String::new();
    for ch in host.chars() {
        if ch.is_ascii_alphanumeric() || ch == '-' {
            out.push(ch);
        } else if ch.is_ascii_punctuation() {
            out.push('\\');
            out.push(ch);
        } else {
            panic!("unsupported character {ch:?} in allowed host {host:?}");
        }
    }
    out
}
