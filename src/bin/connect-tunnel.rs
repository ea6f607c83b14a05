//! `connect-tunnel`: open a CONNECT tunnel through an HTTP(S) proxy and relay stdin/stdout
//! through it (an ssh `ProxyCommand`), or forward local TCP connections through it.

#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use connect_tunnel::{Config, Connector, Credentials, Error, Proxy, SocketOptions, Target};

/// Prints one diagnostic line on stderr, like `eprintln!`, but ignores a failed write (a
/// closed pipe, say) instead of panicking: a reader that went away must not kill the process,
/// a relay thread or, with `panic = abort`, the whole forwarder.
macro_rules! diag {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr().lock(), $($arg)*);
    }};
}

const USAGE: &str = "\
Usage: connect-tunnel [OPTIONS] <TARGET>

Opens a tunnel to TARGET (host:port or [v6addr]:port) through an HTTP or HTTPS proxy with
CONNECT, then relays stdin to the tunnel and the tunnel to stdout (use it as an ssh
ProxyCommand), or with --listen forwards local TCP connections through it.

Options:
  -x, --proxy <URL>            http://[user[:password]@]host[:port] or https://...
                               default: HTTPS_PROXY, https_proxy, ALL_PROXY, all_proxy
                               (NO_PROXY / no_proxy honoured: a match connects directly)
  -U, --proxy-user <USER:PASSWORD>
                               Basic credentials for the proxy (override the URL's)
      --proxy-cacert <FILE>    PEM CA bundle to trust for an https:// proxy
      --proxy-cert <FILE>      client certificate (PEM) for mutual TLS to the proxy
      --proxy-key <FILE>       its private key (PEM)
      --proxy-insecure         do not verify the proxy's certificate (warns on stderr)
  -H, --proxy-header <\"Name: value\">
                               extra header on the CONNECT request (repeatable)
  -A, --user-agent <STRING>    User-Agent on the CONNECT request (empty: none)
      --tls                    run TLS to the target inside the tunnel (end to end), verifying
                               the target's certificate against its host name
      --cacert <FILE>          PEM CA bundle to trust for the target (implies --tls)
      --cert <FILE>            client certificate (PEM) for the target (implies --tls)
      --key <FILE>             its private key (PEM)
  -k, --insecure               do not verify the target's certificate (implies --tls; warns)
      --connect-timeout <SECS> deadline for resolve + connect + TLS + CONNECT exchange
                               (default 30; below 1000000000)
      --dscp <0-63>            DSCP marking for the packets to the proxy (46 = EF, voice)
      --keepalive <SECS>       TCP keepalive idle time, 1-32767 (default 30; 0 turns it off)
      --user-timeout <SECS>    0.001-2147483.647: drop the connection when sent data stays
                               unacknowledged this long (TCP_USER_TIMEOUT; dead-peer
                               detection). Linux counts a peer's closed receive window
                               too: set it above the longest time the far end may stop
                               reading
      --buffer-size <BYTES>    relay buffer per direction and tunnel (default 65536;
                               1024-1048576): bytes moved per system call
  -l, --listen <ADDR>          forward mode: accept local TCP connections on ADDR and open
                               one tunnel for each
      --drain-timeout <SECS>   forward mode: on SIGTERM/SIGINT stop accepting and let live
                               tunnels finish for up to SECS (default 10), then exit
      --no-half-close          when the local side ends its sending direction, do not pass
                               the half-close on (for proxies that then drop the tunnel)
  -v, --verbose                log phases to stderr (-vv for more); never a password or token
  -h, --help                   print this help
  -V, --version                print the version

Certificate, key and CA files are read up to 1 MiB; a larger one is refused.

Exit codes: 0 success; 1 the tunnel failed after it opened; 2 usage or invalid input;
3 proxy unreachable (name, TCP or TLS failure) or TLS to the target failed;
4 proxy authentication required or rejected;
5 other non-2xx reply; 6 invalid, oversize or truncated reply; 7 connect deadline passed.
";

/// What the command line asked for.
struct Options {
    target: Target,
    proxy: Option<Proxy>,
    config: Config,
    insecure: bool,
    target_insecure: bool,
    listen: Option<String>,
    drain: Duration,
    half_close: bool,
    buffer_size: usize,
    verbosity: u8,
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
struct Fail {
    code: u8,
    message: String,
}

impl Fail {
    fn usage(message: impl Into<String>) -> Fail {
        Fail {
            code: 2,
            message: format!("{}\nTry 'connect-tunnel --help'.", message.into()),
        }
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            diag!("connect-tunnel: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run() -> Result<(), Fail> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(opts) = parse_args(&args)? else {
        return Ok(());
    };
    init_logging(opts.verbosity);
    if opts.insecure {
        diag!("connect-tunnel: warning: --proxy-insecure: the proxy's certificate is NOT verified");
    }
    if opts.target_insecure {
        diag!("connect-tunnel: warning: --insecure: the target's certificate is NOT verified");
    }
    let (proxy, direct) = match opts.proxy {
        Some(p) => (p, false),
        None => proxy_from_env(&opts.target)?,
    };
    if direct {
        log::info!("NO_PROXY matches {}: connecting directly", opts.target);
    }
    let dial = Arc::new(Dial {
        connector: Connector::new(proxy, opts.config)?,
        target: opts.target,
        direct,
    });
    let relay = Relay {
        half_close: opts.half_close,
        buffer_size: opts.buffer_size,
    };
    match opts.listen {
        None => stdio_mode(&dial, relay),
        Some(addr) => forward_mode(dial, &addr, relay, opts.drain),
    }
}

fn parse_args(args: &[String]) -> Result<Option<Options>, Fail> {
    let mut target = None;
    let mut proxy_url = None;
    let mut user = None;
    let mut cacert = None;
    let (mut cert, mut key) = (None, None);
    let mut insecure = false;
    let mut target_tls = false;
    let mut target_ca = None;
    let (mut target_cert, mut target_key) = (None, None);
    let mut target_insecure = false;
    let mut headers = Vec::new();
    let mut user_agent = None;
    let mut timeout = None;
    let mut dscp = None;
    let mut keepalive = None;
    let mut user_timeout = None;
    let mut listen = None;
    let mut drain = Duration::from_secs(10);
    let mut half_close = true;
    let mut buffer_size = RELAY_BUFFER;
    let mut verbosity = 0u8;

    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // Accept both "--opt value" and "--opt=value".
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, Fail> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| Fail::usage(format!("{name} needs a value"))),
            }
        };
        match name {
            "-h" | "--help" => {
                // Like diagnostics, a closed standard output is no reason to panic.
                let _ = io::stdout().write_all(USAGE.as_bytes());
                return Ok(None);
            }
            "-V" | "--version" => {
                let _ = writeln!(io::stdout(), "connect-tunnel {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "-x" | "--proxy" => proxy_url = Some(value(name)?),
            "-U" | "--proxy-user" => user = Some(value(name)?),
            "--proxy-cacert" => cacert = Some(value(name)?),
            "--proxy-cert" => cert = Some(value(name)?),
            "--proxy-key" => key = Some(value(name)?),
            "--proxy-insecure" => insecure = true,
            "--tls" => target_tls = true,
            "--cacert" => target_ca = Some(value(name)?),
            "--cert" => target_cert = Some(value(name)?),
            "--key" => target_key = Some(value(name)?),
            "-k" | "--insecure" => target_insecure = true,
            "-H" | "--proxy-header" => headers.push(value(name)?),
            "-A" | "--user-agent" => user_agent = Some(value(name)?),
            "--connect-timeout" => timeout = Some(seconds(name, &value(name)?, false)?),
            "--dscp" => {
                let v = value(name)?;
                dscp = Some(
                    v.parse::<u8>()
                        .ok()
                        .filter(|d| *d < 64)
                        .ok_or_else(|| Fail::usage(format!("--dscp: not 0-63: {v}")))?,
                );
            }
            "--keepalive" => {
                let v = value(name)?;
                keepalive = Some(
                    seconds(name, &v, true)
                        .ok()
                        .filter(|d| d.is_zero() || SocketOptions::KEEPALIVE_RANGE.contains(d))
                        .ok_or_else(|| {
                            Fail::usage(format!("--keepalive: not 0 (off) or 1-32767 seconds: {v}"))
                        })?,
                );
            }
            "--user-timeout" => {
                let v = value(name)?;
                user_timeout = Some(
                    seconds(name, &v, false)
                        .ok()
                        .filter(|d| SocketOptions::USER_TIMEOUT_RANGE.contains(d))
                        .ok_or_else(|| {
                            Fail::usage(format!(
                                "--user-timeout: not 0.001-2147483.647 seconds: {v}"
                            ))
                        })?,
                );
            }
            "-l" | "--listen" => listen = Some(value(name)?),
            "--drain-timeout" => drain = seconds(name, &value(name)?, true)?,
            "--no-half-close" => half_close = false,
            "--buffer-size" => {
                let v = value(name)?;
                buffer_size = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (MIN_RELAY_BUFFER..=MAX_RELAY_BUFFER).contains(n))
                    .ok_or_else(|| {
                        Fail::usage(format!(
                            "--buffer-size: not {MIN_RELAY_BUFFER}-{MAX_RELAY_BUFFER}: {v}"
                        ))
                    })?;
            }
            "-v" | "--verbose" => verbosity += 1,
            _ if name.len() > 2
                && name.starts_with('-')
                && name[1..].bytes().all(|b| b == b'v') =>
            {
                verbosity = verbosity.saturating_add((name.len() - 1) as u8)
            }
            "--" => {
                let rest = it.by_ref();
                match (rest.next(), rest.next()) {
                    (Some(t), None) if target.is_none() => target = Some(t.clone()),
                    _ => return Err(Fail::usage("after --, exactly one TARGET")),
                }
            }
            _ if name.starts_with('-') && name.len() > 1 => {
                return Err(Fail::usage(format!("unknown option {name}")))
            }
            _ if target.is_none() => target = Some(arg.clone()),
            _ => return Err(Fail::usage(format!("unexpected argument {arg}"))),
        }
    }

    let target = Target::parse(&target.ok_or_else(|| Fail::usage("missing TARGET (host:port)"))?)?;
    let proxy = proxy_url.as_deref().map(Proxy::parse).transpose()?;
    let mut config = Config::default();
    if let Some(user) = user {
        config = config.credentials(Some(Credentials::parse(&user)?));
    }
    if let Some(path) = cacert {
        config = config.proxy_ca_file(path);
    }
    match (cert, key) {
        (Some(c), Some(k)) => config = config.proxy_client_cert(c, k),
        (None, None) => {}
        _ => return Err(Fail::usage("--proxy-cert and --proxy-key go together")),
    }
    config = config.proxy_verify(!insecure);
    if target_tls || target_insecure {
        config = config.target_tls(true);
    }
    if let Some(path) = target_ca {
        config = config.target_ca_file(path);
    }
    match (target_cert, target_key) {
        (Some(c), Some(k)) => config = config.target_client_cert(c, k),
        (None, None) => {}
        _ => return Err(Fail::usage("--cert and --key go together")),
    }
    if target_insecure {
        config = config.target_verify(false);
    }
    for h in &headers {
        config = config.header(h)?;
    }
    if let Some(ua) = user_agent {
        config = config.user_agent((!ua.is_empty()).then_some(ua.as_str()));
    }
    if dscp.is_some() {
        config = config.dscp(dscp);
    }
    if let Some(idle) = keepalive {
        config = config.keepalive((!idle.is_zero()).then_some(idle));
    }
    if user_timeout.is_some() {
        config = config.user_timeout(user_timeout);
    }
    if let Some(timeout) = timeout {
        config = config.connect_timeout(timeout);
    }
    Ok(Some(Options {
        target,
        proxy,
        config,
        insecure,
        target_insecure,
        listen,
        drain,
        half_close,
        buffer_size,
        verbosity,
    }))
}

/// A number of seconds from option `name`: decimal digits with an optional fraction (`30`,
/// `0.5`, `.25`), below 10^9, to the nanosecond (further digits are dropped); zero only when
/// `zero_ok`, and then only written as zero (`0`, `0.0`): a value that rounds down to zero
/// (`0.0000000001`) is refused rather than taken as zero. Parsed by hand: floating-point parsing
/// would add ~17 KB to the firmware binary.
fn seconds(name: &str, v: &str, zero_ok: bool) -> Result<Duration, Fail> {
    let bad = || {
        let least = if zero_ok { "0" } else { "0.000000001" };
        Fail::usage(format!(
            "{name}: not a number of seconds from {least} to 999999999.999999999: {v}"
        ))
    };
    let (whole, fraction) = v.split_once('.').unwrap_or((v, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(bad());
    }
    let secs = match whole {
        "" => 0,
        _ => whole.parse::<u64>().map_err(|_| bad())?,
    };
    let nanos = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    let d = Duration::new(secs, nanos);
    let written_zero = v.bytes().all(|b| b == b'0' || b == b'.');
    if secs >= 1_000_000_000 || (d.is_zero() && !(zero_ok && written_zero)) {
        return Err(bad());
    }
    Ok(d)
}

/// The proxy from the environment, as curl reads it, and whether NO_PROXY says to bypass it
/// for `target`.
fn proxy_from_env(target: &Target) -> Result<(Proxy, bool), Fail> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let url = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .into_iter()
        .find_map(var)
        .ok_or_else(|| Fail::usage("no proxy: give -x/--proxy or set HTTPS_PROXY"))?;
    let no_proxy = var("NO_PROXY")
        .or_else(|| var("no_proxy"))
        .unwrap_or_default();
    Ok((
        Proxy::parse(&url)?,
        no_proxy_matches(&no_proxy, target.host()),
    ))
}

/// curl's NO_PROXY rules: `*` matches all; otherwise a comma-separated list of names (a
/// leading dot optional) matching the host itself or any subdomain, or exact IP addresses.
fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry
                .trim_start_matches('.')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let entry = entry.trim_start_matches('[').trim_end_matches(']');
            host == entry || host.ends_with(&format!(".{entry}"))
        })
}

/// How to reach the target: through the proxy, or directly when NO_PROXY says so (with the
/// same deadline, socket options and TLS to the target either way).
struct Dial {
    connector: Connector,
    target: Target,
    direct: bool,
}

/// An open connection to the target, in halves, with a handle to tear it down.
struct Halves {
    reader: connect_tunnel::TunnelReader,
    writer: connect_tunnel::TunnelWriter,
    /// The socket under both halves: shutting it down ends both directions.
    socket: TcpStream,
    /// Whether TLS to the target runs inside: then only that layer's own end counts.
    target_tls: bool,
}

/// A writer whose sending direction can be ended on its own.
trait HalfWrite: Write {
    fn shutdown_write(&mut self) -> io::Result<()>;
}

impl HalfWrite for connect_tunnel::TunnelWriter {
    fn shutdown_write(&mut self) -> io::Result<()> {
        connect_tunnel::TunnelWriter::shutdown_write(self)
    }
}

impl HalfWrite for TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl HalfWrite for std::fs::File {
    /// Standard output has no sending direction to end apart from closing it, which the
    /// process does when it exits.
    fn shutdown_write(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Dial {
    fn open(&self) -> Result<Halves, Fail> {
        let tunnel = if self.direct {
            self.connector.connect_direct(&self.target)?
        } else {
            self.connector.connect(&self.target)?
        };
        let socket = tunnel.get_ref().try_clone().map_err(|e| Fail {
            code: 1,
            message: format!("hand off: {e}"),
        })?;
        let target_tls = tunnel.is_target_tls();
        let (reader, writer) = tunnel.split();
        Ok(Halves {
            reader,
            writer,
            socket,
            target_tls,
        })
    }
}

/// Relay buffer per direction and tunnel, by default: 64 KiB moves a bulk stream in a quarter
/// of the system calls 16 KiB needs (measured in docs/BENCHMARKS.md), and a small packet still
/// leaves in one call as soon as it arrives.
const RELAY_BUFFER: usize = 64 * 1024;
/// Smallest relay buffer `--buffer-size` accepts.
const MIN_RELAY_BUFFER: usize = 1024;
/// Largest relay buffer `--buffer-size` accepts.
const MAX_RELAY_BUFFER: usize = 1024 * 1024;

/// How the two directions of a tunnel are relayed.
#[derive(Clone, Copy)]
struct Relay {
    /// Pass the end of the local side's sending direction on to the tunnel.
    half_close: bool,
    /// Bytes of the one buffer each direction copies through.
    buffer_size: usize,
}

/// Copies `from` to `to` through one buffer of `size` bytes, allocated once, until end of
/// stream, then half-closes `to` (when `half_close`). Returns the bytes copied. Each read is
/// written out at once: nothing waits in the buffer for more to arrive.
fn pump(
    mut from: impl Read,
    to: &mut dyn HalfWrite,
    size: usize,
    half_close: bool,
) -> io::Result<u64> {
    let mut buf = vec![0u8; size];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
        total += n as u64;
    }
    if half_close {
        to.shutdown_write()?;
    }
    Ok(total)
}

/// Standard input or output as a plain file: std's `Stdout` is line-buffered even on a pipe
/// and would split binary data at its last newline into two writes; `Stdin` would add a lock
/// and a buffer the relay does not need.
fn std_stream(fd: std::os::fd::BorrowedFd<'_>, which: &str) -> Result<std::fs::File, Fail> {
    fd.try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| Fail {
            code: 1,
            message: format!("hand off: {which}: {e}"),
        })
}

/// stdin -> tunnel, tunnel -> stdout. Ends when the tunnel's receiving side ends.
fn stdio_mode(dial: &Dial, relay: Relay) -> Result<(), Fail> {
    use std::os::fd::AsFd;
    let stdin = std_stream(io::stdin().as_fd(), "stdin")?;
    let mut stdout = std_stream(io::stdout().as_fd(), "stdout")?;
    let Halves {
        reader,
        mut writer,
        target_tls,
        ..
    } = dial.open()?;
    std::thread::spawn(move || {
        match pump(stdin, &mut writer, relay.buffer_size, relay.half_close) {
            Ok(n) => log::debug!("exchange: stdin ended after {n} bytes"),
            Err(e) => log::warn!("exchange: sending: {e}"),
        }
        // Without half-close the writer is kept until the process ends.
        if !relay.half_close {
            std::mem::forget(writer);
        }
    });
    match pump(reader, &mut stdout, relay.buffer_size, false) {
        Ok(n) => {
            log::info!("close: tunnel ended after {n} bytes received");
            Ok(())
        }
        Err(e) if proxy_ended_tls_uncleanly(&e, target_tls) => Ok(()),
        Err(e) => Err(Fail {
            code: 1,
            message: format!("exchange: {e}"),
        }),
    }
}

/// Whether the proxy ended its TLS connection without `close_notify`, which Apache's TLS
/// listener does whenever the target closes, after every byte has arrived: the CLI takes that as
/// the end of the tunnel. Not when TLS to the target runs inside: that layer's own
/// `close_notify` is what proves the stream complete, and the proxy must not be able to cut it
/// short unnoticed.
fn proxy_ended_tls_uncleanly(e: &io::Error, target_tls: bool) -> bool {
    let yes = !target_tls && e.kind() == io::ErrorKind::UnexpectedEof;
    if yes {
        log::warn!(
            "close: the proxy ended TLS without close_notify; taken as the end of the tunnel"
        );
    }
    yes
}

/// Live tunnels in forward mode at most; further local connections are closed at once.
const MAX_TUNNELS: usize = 256;

/// Accepts local connections and opens one tunnel for each. On SIGTERM or SIGINT it stops
/// accepting, lets live tunnels finish for up to `drain`, then exits.
fn forward_mode(dial: Arc<Dial>, addr: &str, relay: Relay, drain: Duration) -> Result<(), Fail> {
    let listener = TcpListener::bind(addr).map_err(|e| Fail {
        code: 2,
        message: format!("cannot listen on {addr}: {e}"),
    })?;
    let local = listener.local_addr().map_err(|e| Fail {
        code: 1,
        message: e.to_string(),
    })?;
    let stopping = Arc::new(AtomicBool::new(false));
    watch_signals(stopping.clone(), local)?;
    let live = Arc::new(AtomicUsize::new(0));
    diag!("connect-tunnel: listening on {local}");
    for conn in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let client = match conn {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: do not spin.
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if live.load(Ordering::SeqCst) >= MAX_TUNNELS {
            log::warn!("accept: {MAX_TUNNELS} tunnels open already; closing the new connection");
            continue;
        }
        let slot = Slot::take(&live);
        let dial = dial.clone();
        let spawned = std::thread::Builder::new().spawn(move || {
            // Released when the thread ends, however it ends (a panic included).
            let _slot = slot;
            let peer = client
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            if let Err(f) = forward_one(&dial, client, relay) {
                diag!("connect-tunnel: {peer}: {}", f.message);
            }
        });
        if let Err(e) = spawned {
            // The closure, its slot and the local connection are dropped: the slot is free.
            log::warn!("accept: cannot start a tunnel thread: {e}");
        }
    }
    drop(listener);
    let deadline = std::time::Instant::now() + drain;
    let mut open = live.load(Ordering::SeqCst);
    if open > 0 {
        diag!("connect-tunnel: stopping: waiting up to {drain:?} for {open} tunnel(s)");
    }
    while open > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        open = live.load(Ordering::SeqCst);
    }
    if open > 0 {
        diag!("connect-tunnel: stopping: closing {open} tunnel(s) still open");
    }
    Ok(())
}

/// One of forward mode's [`MAX_TUNNELS`] live-tunnel slots, taken from the shared count and
/// given back when dropped: a tunnel thread that ends in any way, a panic included, cannot
/// leak its slot.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(live: &Arc<AtomicUsize>) -> Slot {
        live.fetch_add(1, Ordering::SeqCst);
        Slot(live.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// On SIGTERM or SIGINT, sets `stopping` and wakes the accept loop with a connection to its
/// own listener.
fn watch_signals(stopping: Arc<AtomicBool>, local: std::net::SocketAddr) -> Result<(), Fail> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| Fail {
        code: 1,
        message: format!("cannot watch signals: {e}"),
    })?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            log::info!("close: signal {signal}: no new tunnels");
            stopping.store(true, Ordering::SeqCst);
            let wake = match local.ip() {
                ip if ip.is_unspecified() && local.is_ipv4() => {
                    std::net::SocketAddr::from(([127, 0, 0, 1], local.port()))
                }
                ip if ip.is_unspecified() => {
                    std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, local.port()))
                }
                _ => local,
            };
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        }
    });
    Ok(())
}

fn forward_one(dial: &Dial, client: TcpStream, relay: Relay) -> Result<(), Fail> {
    let _ = client.set_nodelay(true);
    let Halves {
        reader,
        mut writer,
        socket,
        target_tls,
    } = dial.open()?;
    let io_fail = |e: io::Error| Fail {
        code: 1,
        message: format!("exchange: {e}"),
    };
    let client_in = client.try_clone().map_err(io_fail)?;
    // Local side -> tunnel. If the local side fails (a reset), the tunnel is torn down so the
    // other direction ends too instead of waiting on the target.
    let up = std::thread::Builder::new()
        .spawn(move || {
            let sent = pump(client_in, &mut writer, relay.buffer_size, relay.half_close);
            if sent.is_err() {
                let _ = socket.shutdown(Shutdown::Both);
            }
            sent
        })
        .map_err(io_fail)?;
    let mut client_out = client;
    let down = match pump(reader, &mut client_out, relay.buffer_size, true) {
        Err(e) if proxy_ended_tls_uncleanly(&e, target_tls) => {
            client_out.shutdown(Shutdown::Write).map(|()| 0)
        }
        other => other,
    };
    if down.is_err() {
        // The tunnel failed: end the local connection so the other direction stops reading.
        let _ = client_out.shutdown(Shutdown::Both);
    }
    let up = up
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("relay thread panicked")));
    let _ = client_out.shutdown(Shutdown::Both);
    let (down, up) = (down.map_err(io_fail)?, up.map_err(io_fail)?);
    log::info!("close: {up} bytes sent, {down} bytes received");
    Ok(())
}

/// A minimal `log` backend: one line per record on stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            diag!(
                "connect-tunnel: {}: {}",
                record.level().as_str().to_ascii_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

fn init_logging(verbosity: u8) {
    static LOGGER: StderrLog = StderrLog;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(match verbosity {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            _ => log::LevelFilter::Debug,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_rules() {
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("example.com", "example.com"));
        assert!(no_proxy_matches("example.com", "cam.Example.com"));
        assert!(no_proxy_matches(" .example.com , other", "cam.example.com"));
        assert!(!no_proxy_matches("example.com", "badexample.com"));
        assert!(no_proxy_matches("10.0.0.1,::1", "::1"));
        assert!(!no_proxy_matches("", "host"));
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn usage_errors_exit_2() {
        for bad in [
            &[][..],
            &["--bogus", "h:1"],
            &["h"],
            &["-x"],
            &["--connect-timeout", "-1", "h:1"],
            &["-H", "X: a\r\nY: b", "h:1"],
            &["--proxy-cert", "c.pem", "h:1"],
            &["-x", "ftp://p", "h:1"],
            &["h:1", "extra"],
            &["--buffer-size", "1023", "h:1"],
            &["--buffer-size", "1048577", "h:1"],
            &["--buffer-size", "64k", "h:1"],
            &["--keepalive", "0.5", "h:1"],
            &["--keepalive", "32768", "h:1"],
            &["--keepalive", "0.0000000001", "h:1"],
            &["--user-timeout", "0.0009", "h:1"],
            &["--user-timeout", "2147483.648", "h:1"],
            &["--user-timeout", "4294967.295", "h:1"],
            &["--connect-timeout", "1000000000", "h:1"],
            &["--drain-timeout", "0.0000000001", "h:1"],
        ] {
            match parse_args(&args(bad)) {
                Err(f) => assert_eq!(f.code, 2, "{bad:?}"),
                Ok(_) => panic!("{bad:?} accepted"),
            }
        }
    }

    /// A refused value's message names the option and the range it takes.
    #[test]
    fn range_errors_name_the_option_and_its_range() {
        let message = |list: &[&str]| match parse_args(&args(list)) {
            Err(f) => f.message,
            Ok(_) => panic!("{list:?} accepted"),
        };
        for v in ["0.5", "32768", "0.0000000001", "x"] {
            let m = message(&["--keepalive", v, "h:1"]);
            assert!(
                m.starts_with("--keepalive: not 0 (off) or 1-32767 seconds: "),
                "{m}"
            );
        }
        for v in ["0", "2147483.648", "4294967.295"] {
            let m = message(&["--user-timeout", v, "h:1"]);
            assert!(
                m.starts_with("--user-timeout: not 0.001-2147483.647 seconds: "),
                "{m}"
            );
        }
        let m = message(&["--connect-timeout", "1000000000", "h:1"]);
        assert!(m.contains("999999999.999999999"), "{m}");
        assert!(m.starts_with("--connect-timeout: "), "{m}");
    }

    /// The ends of the keepalive and user-timeout ranges are accepted; 0 turns keepalive off.
    #[test]
    fn socket_option_ranges_are_inclusive() {
        let parse = |list: &[&str]| parse_args(&args(list)).unwrap().unwrap();
        let ka = |v: &str| {
            parse(&["--keepalive", v, "h:1"])
                .config
                .socket_options()
                .keepalive
        };
        assert_eq!(ka("0"), None);
        assert_eq!(ka("0.0"), None);
        assert_eq!(ka("1"), Some(Duration::from_secs(1)));
        assert_eq!(ka("32767"), Some(Duration::from_secs(32767)));
        let ut = |v: &str| {
            parse(&["--user-timeout", v, "h:1"])
                .config
                .socket_options()
                .user_timeout
        };
        assert_eq!(ut("0.001"), Some(Duration::from_millis(1)));
        assert_eq!(
            ut("2147483.647"),
            Some(Duration::from_millis(i32::MAX as u64))
        );
    }

    #[test]
    fn options_parse() {
        let o = parse_args(&args(&[
            "-x",
            "http://p:3128",
            "--proxy-user=u:p",
            "-H",
            "X-A: 1",
            "--no-half-close",
            "-vv",
            "[::1]:22",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(o.target.to_string(), "[::1]:22");
        assert_eq!(o.proxy.unwrap().port(), 3128);
        assert!(!o.half_close);
        assert_eq!(o.verbosity, 2);
        assert_eq!(o.buffer_size, RELAY_BUFFER);
        let o = parse_args(&args(&["--buffer-size=1024", "h:1"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.buffer_size, 1024);
    }

    #[test]
    fn seconds_are_decimal() {
        let ok = |v: &str, zero_ok| seconds("--t", v, zero_ok).map_err(|f| f.code);
        assert_eq!(ok("30", false), Ok(Duration::from_secs(30)));
        assert_eq!(ok("0.5", false), Ok(Duration::from_millis(500)));
        assert_eq!(ok(".25", false), Ok(Duration::from_millis(250)));
        assert_eq!(ok("10.", false), Ok(Duration::from_secs(10)));
        assert_eq!(ok("0", true), Ok(Duration::ZERO));
        assert_eq!(ok("0.000", true), Ok(Duration::ZERO));
        // Not zero as written, zero once rounded to the nanosecond: refused, never "off".
        assert_eq!(ok("0.0000000001", true), Err(2));
        assert_eq!(ok("1.0000000019", false), Ok(Duration::new(1, 1)));
        assert_eq!(
            ok("999999999.999999999", false),
            Ok(Duration::new(999_999_999, 999_999_999))
        );
        for bad in [
            "",
            ".",
            "0",
            "0.0",
            "0.0000000001",
            "-1",
            "+5",
            "1e3",
            "inf",
            "NaN",
            "1.2.3",
            " 1",
            "1s",
            "1000000000",
            "99999999999999999999999",
        ] {
            assert_eq!(ok(bad, false), Err(2), "{bad:?}");
        }
    }

    /// A relay buffer smaller than what arrives still moves every byte, in order, and passes
    /// the end of the stream on.
    #[test]
    fn pump_copies_everything_through_a_small_buffer() {
        struct Out(Vec<u8>, bool);
        impl Write for Out {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl HalfWrite for Out {
            fn shutdown_write(&mut self) -> io::Result<()> {
                self.1 = true;
                Ok(())
            }
        }
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Out(Vec::new(), false);
        let n = pump(&data[..], &mut out, MIN_RELAY_BUFFER, true).unwrap();
        assert_eq!(n, data.len() as u64);
        assert!(out.0 == data && out.1);
    }
}
