//! Test support: real peer daemons (Squid, Apache `mod_proxy_connect`, tinyproxy, HAProxy, sshd)
//! on free loopback ports, a throw-away CA, and small helpers (free ports, base64, bounded process
//! runs, daemon readiness).
//!
//! Include from an integration test with `mod support;`. Only std and the dev-dependency `rcgen`
//! are used; the daemons come from Debian packages (`scripts/install-test-deps.sh`).
//!
//! Rules this module keeps, because tests share a noisy machine:
//! - never a fixed port: [`free_port`] asks the kernel, and every daemon's readiness is checked
//!   against its own log and its own child process, never just "something answers on the port";
//! - every wait is bounded;
//! - every child is reaped (`wait`) when its handle drops, and its temp dir removed.
#![allow(dead_code, unused_imports)]

pub mod apache;
pub mod haproxy;
pub mod squid;
pub mod sshd;
pub mod tinyproxy;

pub use apache::{Apache, ApacheOptions};
pub use haproxy::{Haproxy, HaproxyOptions};
pub use squid::{Squid, SquidAuth, SquidOptions};
pub use sshd::Sshd;
pub use tinyproxy::{Tinyproxy, TinyproxyOptions};

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

// ---------------------------------------------------------------------------------------------
// Peers present or not
// ---------------------------------------------------------------------------------------------

/// True when `CI` is `"true"`: missing peers are then a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Finds an executable: `name` with a `/` is taken as a path; otherwise `PATH` is searched, then
/// `/usr/sbin`, `/sbin`, `/usr/local/sbin` (daemons live there and a user's `PATH` may lack them).
pub fn find_program(name: &str) -> Option<PathBuf> {
    fn executable(p: &Path) -> bool {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// True if the peer program `name` is present. When it is missing: with `CI=true` this panics
/// with a clear message (CI must never skip silently); otherwise it prints a `SKIP` line to
/// stderr and returns false, so the calling test can return early.
pub fn require_peer(name: &str) -> bool {
    if find_program(name).is_some() {
        return true;
    }
    let hint = "install it with `bash scripts/install-test-deps.sh`";
    if in_ci() {
        panic!("required test peer `{name}` is missing and CI=true; {hint}");
    }
    eprintln!("SKIP: test peer `{name}` not found; {hint}");
    false
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// True when `[::1]` can be bound here (IPv6 loopback present).
pub fn ipv6_loopback_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok())
}

/// A TCP port that was free on 127.0.0.1 (and on [::1] where IPv6 loopback exists) a moment ago,
/// and that this process has not handed out before. Someone else may still take it before the
/// caller binds: the daemon starters here detect that and retry with new ports.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if ipv6_loopback_available() && TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        drop(listener);
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("free_port: no free loopback port found in 100 tries");
}

/// True if a TCP connection to `addr` succeeds within `timeout`: retries (every 20 ms) while the
/// connection is refused, so it also waits for a listener that is still starting. The probe
/// connection is closed at once.
pub fn port_accepts(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, left).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(20).min(left));
    }
}

// ---------------------------------------------------------------------------------------------
// Daemon readiness
// ---------------------------------------------------------------------------------------------

/// What [`wait_daemon_ready`] looks at to decide that a daemon the tests spawned is serving.
pub struct Readiness<'a> {
    /// The daemon's name, for messages.
    pub name: &'a str,
    /// The daemon's own log files (in its temp dir), read as one text.
    pub logs: &'a [PathBuf],
    /// A substring of the log line that says the daemon is serving.
    pub ready: &'a str,
    /// Substrings of log lines that mean this attempt failed (bind error, fatal config error).
    pub fatal: &'a [&'a str],
    /// Every address the daemon must accept TCP connections on.
    pub listeners: &'a [SocketAddr],
    /// A pid file the daemon writes; when given, it must name the child (the daemon we
    /// started, not another one that answers on the port).
    pub pid_file: Option<&'a Path>,
    /// How long the attempt may take.
    pub timeout: Duration,
}

/// Waits until the child is ready by [`Readiness`]: its own log has the ready line and no fatal
/// line, its pid file (if any) names it, every listener accepts a TCP connection, and it is
/// still alive afterwards. Bounded by `timeout`; `Err` says why the attempt failed.
pub fn wait_daemon_ready(child: &mut Child, r: &Readiness<'_>) -> Result<(), String> {
    let deadline = Instant::now() + r.timeout;
    let name = r.name;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{name} exited early ({status})"));
        }
        let log: String = r.logs.iter().map(|p| read_to_string_lossy(p)).collect();
        if let Some(line) = log.lines().find(|l| r.fatal.iter().any(|f| l.contains(f))) {
            return Err(format!("{name} reported: {line}"));
        }
        let pid_ok = match r.pid_file {
            None => true,
            Some(p) => fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .is_some_and(|pid| pid == child.id()),
        };
        if log.contains(r.ready)
            && pid_ok
            && r.listeners
                .iter()
                .all(|addr| port_accepts(*addr, Duration::from_millis(500)))
        {
            return match child.try_wait() {
                Ok(None) => Ok(()),
                Ok(Some(status)) => Err(format!("{name} exited right after start ({status})")),
                Err(e) => Err(format!("try_wait: {e}")),
            };
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name} not ready within {:?} (ready line seen: {}, pid file ok: {pid_ok}, \
                 listeners wanted: {:?})",
                r.timeout,
                log.contains(r.ready),
                r.listeners
            ));
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// A file for a child's stdout or stderr.
pub fn log_file(path: &Path) -> Stdio {
    Stdio::from(fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display())))
}

/// Changes the owner of `dir` and of every file directly in it (daemons that drop to another
/// user must write there).
pub fn chown_dir(dir: &Path, uid: u32, gid: u32) {
    let entries = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()));
    for entry in std::iter::once(dir.to_path_buf()).chain(entries) {
        std::os::unix::fs::chown(&entry, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", entry.display()));
    }
}

/// The first of `names` that is a user in /etc/passwd, with its uid and gid.
pub fn first_user(names: &[&str]) -> Option<(String, u32, u32)> {
    names
        .iter()
        .find_map(|n| user_ids(n).map(|(u, g)| (n.to_string(), u, g)))
}

/// The name of the group with this gid, from /etc/group.
pub fn group_name(gid: u32) -> Option<String> {
    let text = fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[2].parse() == Ok(gid)).then(|| f[0].to_string())
    })
}

// ---------------------------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------------------------

/// Set this variable (any value) to keep the daemons' temp dirs (configs, logs) for debugging.
pub const KEEP_DIRS_ENV: &str = "CONNECT_TUNNEL_KEEP_TEST_DIRS";

/// A directory under `std::env::temp_dir()` named `connect-tunnel-KIND-PID-N-NANOS`, mode 0755
/// (so a daemon that drops to another user can traverse it), removed on drop unless
/// [`KEEP_DIRS_ENV`] is set.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(kind: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "connect-tunnel-{kind}-{}-{n}-{nanos}",
            std::process::id()
        ));
        if path.exists() {
            let _ = fs::remove_dir_all(&path);
        }
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_DIRS_ENV).is_some() {
            eprintln!("keeping {} ({KEEP_DIRS_ENV} is set)", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Writes `contents` to `path` with the given mode.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>, mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// The file's contents as text, or a note saying why it could not be read.
pub fn read_to_string_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// Users and processes (from /proc and kill(1): no unsafe code, no extra crate)
// ---------------------------------------------------------------------------------------------

pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

/// The effective uid, from the `Uid:` line of /proc/self/status (real, effective, ...).
pub fn effective_uid() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
        })
        .expect("effective uid from /proc/self/status")
}

pub fn is_root() -> bool {
    effective_uid() == 0
}

/// `(name, uid, gid)` from /etc/passwd for a user name or a numeric uid.
fn passwd_entry(matches: impl Fn(&str, u32) -> bool) -> Option<(String, u32, u32)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let uid = f[2].parse().ok()?;
        let gid = f[3].parse().ok()?;
        matches(f[0], uid).then(|| (f[0].to_string(), uid, gid))
    })
}

/// uid and gid of the named user, from /etc/passwd.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    passwd_entry(|n, _| n == name).map(|(_, u, g)| (u, g))
}

/// Name of the user this process runs as.
pub fn current_user_name() -> String {
    let uid = effective_uid();
    passwd_entry(|_, u| u == uid)
        .map(|(n, _, _)| n)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".to_string())
}

/// Sends `signal` to the child (if it still runs), waits up to `grace` for it to exit, then
/// kills it; always reaps it. Never blocks longer than about `grace` + 5 s.
pub fn stop_child(child: &mut Child, signal: i32, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // The pid is our own unreaped child, so it cannot have been recycled.
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if wait_child_for(child, grace).is_some() {
        return;
    }
    let _ = child.kill();
    let _ = wait_child_for(child, Duration::from_secs(5));
}

/// Polls the child until it exits or `timeout` passes; `Some(status)` once reaped.
pub fn wait_child_for(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Waits up to `limit` for the child to exit and returns its exit code (`None` when a signal
/// ended it); a child still running at `limit` is killed and reaped, and the answer is `None`.
pub fn exit_code_within(child: &mut Child, limit: Duration) -> Option<i32> {
    match wait_child_for(child, limit) {
        Some(status) => status.code(),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

/// Runs `cmd` to completion with captured stdout/stderr (stdin null unless the caller set it),
/// killing it if it runs longer than `timeout`; the error then carries what it printed.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_child_for(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{:?} did not finish within {timeout:?}; stdout: {}; stderr: {}",
                cmd.get_program(),
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        )),
    }
}

/// Runs a short helper command (key generation and the like), panicking with its output if it
/// fails or takes longer than 30 s.
pub fn run_checked<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    let out = output_with_timeout(&mut cmd, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    if !out.status.success() {
        panic!(
            "{program} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Encodings
// ---------------------------------------------------------------------------------------------

/// Standard base64 with padding (RFC 4648), as `Proxy-Authorization: Basic` wants.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for URL userinfo).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Basic <base64(user:password)>`, the value of a `Proxy-Authorization` header.
pub fn basic_auth_value(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A throw-away certificate authority and a server certificate it signed for `localhost`,
/// `127.0.0.1` and `::1` (ECDSA P-256), as PEM files in a temp dir (removed on drop) and in
/// memory. [`TestCa::client_cert`] mints client certificates for mutual-TLS tests; a second
/// `TestCa::new()` is an unrelated CA (for "wrong CA" cases).
pub struct TestCa {
    /// The CA certificate (PEM), the trust anchor clients should load.
    pub ca_pem_path: PathBuf,
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    /// The server certificate (leaf only, PEM) and its PKCS#8 key (PEM).
    pub server_cert_path: PathBuf,
    pub server_key_path: PathBuf,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub server_cert_der: Vec<u8>,
    pub server_key_der: Vec<u8>,
    /// The temp dir holding the files (mode 0755, files 0644: daemons that drop privileges
    /// must read them; these are test keys).
    pub dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    minted: AtomicUsize,
    _tmp: TempDir,
}

/// A client certificate and key signed by a [`TestCa`].
pub struct ClientCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        static CA_COUNTER: AtomicUsize = AtomicUsize::new(0);
        let tmp = TempDir::new("ca");
        let n = CA_COUNTER.fetch_add(1, Ordering::Relaxed);

        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.distinguished_name = DistinguishedName::new();
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!("connect-tunnel test CA {}-{n}", std::process::id()),
        );
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let mut server_params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()])
                .expect("server params");
        server_params.distinguished_name = DistinguishedName::new();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.use_authority_key_identifier_extension = true;
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().expect("generate server key");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("sign server cert");

        let ca_pem = ca_cert.pem();
        let server_cert_pem = server_cert.pem();
        let server_key_pem = server_key.serialize_pem();
        let ca_pem_path = tmp.join("ca.pem");
        let server_cert_path = tmp.join("server-cert.pem");
        let server_key_path = tmp.join("server-key.pem");
        write_file(&ca_pem_path, &ca_pem, 0o644);
        write_file(&server_cert_path, &server_cert_pem, 0o644);
        write_file(&server_key_path, &server_key_pem, 0o644);

        TestCa {
            ca_pem_path,
            ca_pem,
            ca_der: ca_cert.der().to_vec(),
            server_cert_path,
            server_key_path,
            server_cert_pem,
            server_key_pem,
            server_cert_der: server_cert.der().to_vec(),
            server_key_der: server_key.serialize_der(),
            dir: tmp.path.clone(),
            issuer,
            minted: AtomicUsize::new(0),
            _tmp: tmp,
        }
    }

    /// Mints a client certificate (`clientAuth`) with the given common name, signed by this CA,
    /// written as `client-N-cert.pem` / `client-N-key.pem` in [`TestCa::dir`].
    pub fn client_cert(&self, common_name: &str) -> ClientCert {
        let n = self.minted.fetch_add(1, Ordering::Relaxed);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("generate client key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign client cert");
        let cert_path = self.dir.join(format!("client-{n}-cert.pem"));
        let key_path = self.dir.join(format!("client-{n}-key.pem"));
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        write_file(&cert_path, &cert_pem, 0o644);
        write_file(&key_path, &key_pem, 0o600);
        ClientCert {
            cert_path,
            key_path,
            cert_pem,
            key_pem,
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}
