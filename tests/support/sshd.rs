//! A real OpenSSH server as a child process on a free 127.0.0.1 port, with a private config,
//! fresh ed25519 host and client keys, and public-key login for the current user only.
//!
//! Readiness: sshd's own log (`-E`) says `Server listening on 127.0.0.1 port PORT`, the child is
//! alive, and a TCP connection gets an `SSH-2.0-` banner. A bind failure (sshd then exits) means
//! another try with a new port (3 in all).

use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{
    current_user_name, free_port, is_root, read_to_string_lossy, require_peer, run_checked,
    stop_child, write_file, TempDir, SIGTERM,
};

pub const SSHD: &str = "/usr/sbin/sshd";
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const START_ATTEMPTS: usize = 3;

/// A running sshd; stopped (SIGTERM, bounded wait, then SIGKILL), reaped and its temp dir
/// removed on drop.
pub struct Sshd {
    pub port: u16,
    /// Private key (ed25519, mode 0600) whose public half is the only authorized key.
    pub client_key: PathBuf,
    /// The user to log in as: the user running the tests.
    pub user: String,
    /// Working dir: config, keys, `sshd.log`.
    pub dir: PathBuf,
    /// How long the successful start attempt took (spawn to ready).
    pub start_time: Duration,
    child: Child,
    _tmp: TempDir,
}

impl Sshd {
    /// Starts sshd in the foreground (`-D`) as a child. Returns `None` only when sshd, ssh or
    /// ssh-keygen is missing and `CI` is not `"true"` (see [`super::require_peer`]); panics with
    /// sshd's log if it cannot be started.
    pub fn start() -> Option<Sshd> {
        if !require_peer(SSHD) || !require_peer("ssh") || !require_peer("ssh-keygen") {
            return None;
        }
        // sshd refuses to start without its privilege-separation directory.
        if is_root() && !Path::new("/run/sshd").is_dir() {
            let _ = fs::create_dir_all("/run/sshd");
        }
        let user = current_user_name();
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let tmp = TempDir::new("sshd");
            let host_key = tmp.join("host_ed25519");
            let client_key = tmp.join("client_ed25519");
            for key in [&host_key, &client_key] {
                let key = key.to_str().expect("utf-8 temp path");
                run_checked(
                    "ssh-keygen",
                    &[
                        "-q",
                        "-t",
                        "ed25519",
                        "-N",
                        "",
                        "-C",
                        "connect-tunnel-test",
                        "-f",
                        key,
                    ],
                );
            }
            let authorized = tmp.join("authorized_keys");
            let client_pub = fs::read(tmp.join("client_ed25519.pub")).expect("read client key");
            write_file(&authorized, client_pub, 0o600);

            let port = free_port();
            let conf = tmp.join("sshd_config");
            write_file(&conf, sshd_config(&tmp.path, port, &host_key, &user), 0o600);
            let log = tmp.join("sshd.log");

            let spawned = Instant::now();
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-f")
                .arg(&conf)
                .arg("-E")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {SSHD}: {e}"));
            match wait_ready(&mut child, &log, port) {
                Ok(()) => {
                    return Some(Sshd {
                        port,
                        client_key,
                        user,
                        dir: tmp.path.clone(),
                        start_time: spawned.elapsed(),
                        child,
                        _tmp: tmp,
                    });
                }
                Err(reason) => {
                    stop_child(&mut child, SIGTERM, Duration::from_secs(5));
                    let report = format!(
                        "attempt {attempt} (port {port}): {reason}\n--- sshd.log ---\n{}",
                        read_to_string_lossy(&log)
                    );
                    if attempt < START_ATTEMPTS {
                        eprintln!("sshd start attempt {attempt} failed ({reason}); retrying");
                    }
                    failures.push(report);
                }
            }
        }
        panic!(
            "sshd did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// `ssh -F /dev/null -i KEY -o BatchMode=yes -o StrictHostKeyChecking=no
    /// -o UserKnownHostsFile=/dev/null -o ProxyCommand=PROXY_COMMAND -p PORT USER@127.0.0.1
    /// REMOTE_CMD`, plus `IdentitiesOnly`, `ConnectTimeout=10` and `LogLevel=ERROR`; stdin null
    /// (override it if needed). Pass `"none"` as `proxy_command` for a direct connection; in a
    /// real one `%h` and `%p` are the target host and port. Run it with a bound, e.g.
    /// [`super::output_with_timeout`].
    pub fn ssh_command(&self, proxy_command: &str, remote_cmd: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(&self.client_key)
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-o", "ConnectTimeout=10"])
            .args(["-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("ProxyCommand={proxy_command}"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", self.user))
            .arg(remote_cmd)
            .stdin(Stdio::null());
        cmd
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        read_to_string_lossy(&self.dir.join("sshd.log"))
    }

    /// Stops sshd now (what drop does); always reaped.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, SIGTERM, Duration::from_secs(5));
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sshd_config(dir: &Path, port: u16, host_key: &Path, user: &str) -> String {
    let d = dir.display();
    format!(
        "# connect-tunnel test sshd: loopback only, one key, no PAM\n\
         Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {host_key}\n\
         PidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {d}/authorized_keys\n\
         AllowUsers {user}\n\
         UsePAM no\n\
         StrictModes no\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         X11Forwarding no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         UseDNS no\n\
         MaxStartups 100\n\
         LogLevel VERBOSE\n",
        host_key = host_key.display(),
    )
}

fn wait_ready(child: &mut Child, log: &Path, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let listening = format!("Server listening on 127.0.0.1 port {port}.");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("sshd exited early ({status})"));
        }
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(&listening) {
            let banner = read_banner(port);
            return match (banner, child.try_wait()) {
                (Ok(b), Ok(None)) if b.starts_with("SSH-2.0-") => Ok(()),
                (Ok(b), Ok(None)) => Err(format!("port {port} answered {b:?}, not SSH-2.0-")),
                (Err(e), Ok(None)) => Err(format!("no banner on port {port}: {e}")),
                (_, Ok(Some(status))) => Err(format!("sshd exited right after start ({status})")),
                (_, Err(e)) => Err(format!("try_wait: {e}")),
            };
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready within {READY_TIMEOUT:?}"));
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Connects to 127.0.0.1:`port` and reads the first line the server sends (bounded, 5 s).
pub fn read_banner(port: u16) -> Result<String, String> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    Ok(String::from_utf8_lossy(line).trim_end().to_string())
}
