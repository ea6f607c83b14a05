//! Latency benchmark: what a CONNECT tunnel costs next to a direct TCP connection, on loopback.
//!
//! Run with `cargo bench --bench latency` (or `scripts/bench.sh`, which installs Squid first).
//! See `docs/BENCHMARKS.md` for what each figure means.
//!
//! One echo server (std `TcpListener`, one thread per connection, a fixed buffer, `TCP_NODELAY`
//! on) is reached four ways:
//!
//! 1. direct TCP (the floor);
//! 2. connect-tunnel through the reference reverse proxy (`examples/common/reverse_proxy.rs`),
//!    TLS listener;
//! 3. connect-tunnel through a real Squid, plain `http_port`;
//! 4. connect-tunnel through the same Squid, TLS `https_port`.
//!
//! For each path it measures
//!
//! - **set-up**: from the `Connector::connect` call (for direct TCP: `TcpStream::connect`) to the
//!   open tunnel, and to the first byte echoed back through it; [`SETUPS`] runs per path,
//!   interleaved round-robin across the paths so that drift on the machine hits all alike;
//! - **round trip** of 160-byte packets (one 20 ms G.711 frame) over one open tunnel: [`PACKETS`]
//!   packets in a row, each written and its echo read in full before the next is sent.
//!
//! This reports figures; it asserts nothing about speed. It does check that every echo matches
//! what was sent and that `TCP_NODELAY` is on where this process owns the socket.
//!
//! Run without `--bench` (as `cargo test --all-targets` does) it makes a short smoke pass
//! instead: a few set-ups and packets per path, no files written.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../examples/common/reverse_proxy.rs"]
#[allow(dead_code)]
mod reverse_proxy;

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use connect_tunnel::{Config, Connector, Proxy, Target};

use reverse_proxy::{ProxyConfig, ReverseProxy, User};
use support::Squid;

/// Measured set-ups per path.
const SETUPS: usize = 50;
/// Set-ups per path before measuring (first-use costs: Squid's auth helper, caches).
const SETUP_WARMUP: usize = 3;
/// Measured round trips per path, in a row on one tunnel.
const PACKETS: usize = 10_000;
/// Round trips per path before measuring, on the same tunnel.
const PACKET_WARMUP: usize = 200;
/// One 20 ms G.711 frame (8 kHz, 8 bits per sample).
const PACKET_SIZE: usize = 160;
/// Round trips at least this long are counted separately: Nagle / delayed-ACK stalls (about
/// 40 ms on Linux) show up here.
const STALL: Duration = Duration::from_millis(10);
/// The echo server's per-connection buffer.
const ECHO_BUFFER: usize = 4096;
/// A lost echo fails the bench after this long instead of hanging it.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// Sizes for the smoke pass (run without `--bench`).
const SMOKE_SETUPS: usize = 3;
const SMOKE_PACKETS: usize = 200;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full {
        Plan {
            setups: SETUPS,
            setup_warmup: SETUP_WARMUP,
            packets: PACKETS,
            packet_warmup: PACKET_WARMUP,
        }
    } else {
        Plan {
            setups: SMOKE_SETUPS,
            setup_warmup: 1,
            packets: SMOKE_PACKETS,
            packet_warmup: 10,
        }
    };
    let started = Instant::now();
    let load_at_start = load_average();

    let echo = EchoServer::start().expect("start the echo server");
    let target = Target::new("127.0.0.1", echo.addr.port()).expect("echo target");

    // The reference reverse proxy, TLS listener, one identity allowed to reach the echo server
    // (Basic credentials, as with Squid).
    let public_name = format!("127.0.0.1:{}", echo.addr.port());
    let rp = ReverseProxy::start(ProxyConfig {
        mapping: vec![(public_name.clone(), echo.addr)],
        users: vec![User::new("camera", "secret", &[public_name.as_str()])],
        tls: true,
        ..ProxyConfig::default()
    })
    .expect("start the reference reverse proxy");
    let rp_connector = Connector::new(
        Proxy::parse(&format!(
            "https://camera:secret@127.0.0.1:{}",
            rp.local_addr().port()
        ))
        .expect("reverse proxy URL"),
        Config::default().proxy_ca_pem(rp.ca_pem().as_bytes().to_vec()),
    )
    .expect("connector for the reverse proxy");

    // A real Squid: None when it is not installed and CI is not "true" (it panics with CI=true).
    let squid = Squid::start(&[echo.addr.port()]);

    let mut paths = vec![
        BenchPath {
            name: "direct TCP",
            how: How::Direct(echo.addr),
        },
        BenchPath {
            name: "reference reverse proxy, TLS",
            how: How::Tunnel(Box::new(rp_connector), target.clone()),
        },
    ];
    let mut skipped = Vec::new();
    match &squid {
        Some(squid) => {
            let plain = Connector::new(
                Proxy::parse(&squid.plain_url(true)).expect("squid plain URL"),
                Config::default(),
            )
            .expect("connector for squid http_port");
            // 127.0.0.1 rather than `localhost`, as for the reverse proxy: no name lookup in the
            // figures. The certificate names 127.0.0.1 too.
            let tls_url = format!(
                "https://{}:{}@127.0.0.1:{}",
                support::percent_encode(&squid.user),
                support::percent_encode(&squid.password),
                squid.tls_port
            );
            let tls = Connector::new(
                Proxy::parse(&tls_url).expect("squid TLS URL"),
                Config::default().proxy_ca_file(&squid.ca.ca_pem_path),
            )
            .expect("connector for squid https_port");
            paths.push(BenchPath {
                name: "Squid, plain http_port",
                how: How::Tunnel(Box::new(plain), target.clone()),
            });
            paths.push(BenchPath {
                name: "Squid, TLS https_port",
                how: How::Tunnel(Box::new(tls), target.clone()),
            });
        }
        None => {
            for name in ["Squid, plain http_port", "Squid, TLS https_port"] {
                skipped.push((
                    name,
                    "squid not found (run `bash scripts/install-test-deps.sh`)",
                ));
            }
        }
    }

    // Set-up: interleaved round-robin, warm-up rounds first.
    let mut setups: Vec<(Vec<Duration>, Vec<Duration>)> = paths
        .iter()
        .map(|_| {
            (
                Vec::with_capacity(plan.setups),
                Vec::with_capacity(plan.setups),
            )
        })
        .collect();
    for round in 0..plan.setup_warmup + plan.setups {
        for (path, (open, first)) in paths.iter().zip(setups.iter_mut()) {
            let (t_open, t_first) = path
                .setup_once()
                .unwrap_or_else(|e| panic!("{}: set-up {round}: {e}", path.name));
            if round >= plan.setup_warmup {
                open.push(t_open);
                first.push(t_first);
            }
        }
    }

    // Round trips: one open connection per path, the packets in a row.
    let mut rows = Vec::new();
    for (path, (open, first)) in paths.iter().zip(setups) {
        let rtt = path
            .round_trips(&plan)
            .unwrap_or_else(|e| panic!("{}: round trips: {e}", path.name));
        rows.push(Row {
            name: path.name,
            open: Stats::of(&open),
            first: Stats::of(&first),
            rtt: Stats::of(&rtt),
            samples: [open, first, rtt],
        });
    }
    let squid_version = squid.as_ref().map(|_| squid_version());
    drop(squid);
    rp.shutdown();
    drop(echo);

    let machine = Machine::probe(squid_version, load_at_start);
    let text = render_text(&rows, &skipped, &machine, &plan);
    println!("{text}");
    for row in rows.iter().filter(|r| !r.rtt.slow.is_empty()) {
        let slow: Vec<String> = row
            .rtt
            .slow
            .iter()
            .take(8)
            .map(|d| format!("{:.1}", ms(*d)))
            .collect();
        println!(
            "NOTE: {}: {} of {} round trips took {} ms or more (slowest, ms: {}{}). Stalls near \
             40 ms in every run would point to Nagle / delayed ACK; scattered ones on a busy \
             machine are scheduling.",
            row.name,
            row.rtt.slow.len(),
            row.rtt.n,
            STALL.as_millis(),
            slow.join(", "),
            if row.rtt.slow.len() > slow.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    if full {
        let md = render_markdown(&rows, &skipped, &machine, &plan);
        let dir = target_dir().join("bench");
        for (name, contents) in [
            ("latency.md", md),
            ("latency-samples.csv", samples_csv(&rows)),
        ] {
            let file = dir.join(name);
            match fs::create_dir_all(&dir).and_then(|()| fs::write(&file, contents)) {
                Ok(()) => println!("wrote {}", file.display()),
                Err(e) => eprintln!("cannot write {}: {e}", file.display()),
            }
        }
    } else {
        println!("(smoke pass; run `cargo bench --bench latency` for the full figures)");
    }
    println!("bench took {:.1} s", started.elapsed().as_secs_f64());
}

/// How many set-ups and packets to run.
struct Plan {
    setups: usize,
    setup_warmup: usize,
    packets: usize,
    packet_warmup: usize,
}

/// One way to the echo server.
struct BenchPath {
    name: &'static str,
    how: How,
}

enum How {
    Direct(SocketAddr),
    /// Through a proxy, to the echo server's address.
    Tunnel(Box<Connector>, Target),
}

/// An open connection to the echo server, either way.
enum Conn {
    Direct(TcpStream),
    Tunnel(connect_tunnel::Tunnel),
}

impl BenchPath {
    /// Opens a connection and says how long that took. The socket gets a read timeout (outside
    /// the timed part) so that a lost echo fails the run rather than hanging it.
    fn open(&self) -> io::Result<(Conn, Duration)> {
        let started = Instant::now();
        let conn = match &self.how {
            How::Direct(addr) => {
                let stream = TcpStream::connect(addr)?;
                stream.set_nodelay(true)?;
                Conn::Direct(stream)
            }
            How::Tunnel(connector, target) => {
                Conn::Tunnel(connector.connect(target).map_err(io::Error::other)?)
            }
        };
        let elapsed = started.elapsed();
        conn.socket().set_read_timeout(Some(ECHO_TIMEOUT))?;
        Ok((conn, elapsed))
    }

    /// One set-up: (to the open connection, to the first byte echoed), then a clean close.
    fn setup_once(&self) -> io::Result<(Duration, Duration)> {
        let started = Instant::now();
        let (mut conn, open) = self.open()?;
        conn.write_all(&[0x5a])?;
        conn.flush()?;
        let mut one = [0u8; 1];
        conn.read_exact(&mut one)?;
        let first = started.elapsed();
        if one[0] != 0x5a {
            return Err(io::Error::other("first echoed byte differs"));
        }
        conn.check_nodelay()?;
        conn.close()?;
        Ok((open, first))
    }

    /// `plan.packets` round trips of one packet each on one connection, after the warm-up.
    fn round_trips(&self, plan: &Plan) -> io::Result<Vec<Duration>> {
        let (mut conn, _) = self.open()?;
        conn.check_nodelay()?;
        let mut out = [0u8; PACKET_SIZE];
        let mut back = [0u8; PACKET_SIZE];
        let mut times = Vec::with_capacity(plan.packets);
        for seq in 0..plan.packet_warmup + plan.packets {
            fill_packet(&mut out, seq as u32);
            let sent = Instant::now();
            conn.write_all(&out)?;
            conn.flush()?;
            conn.read_exact(&mut back)?;
            let rtt = sent.elapsed();
            if back != out {
                return Err(io::Error::other(format!("packet {seq}: echo differs")));
            }
            if seq >= plan.packet_warmup {
                times.push(rtt);
            }
        }
        conn.close()?;
        Ok(times)
    }
}

impl Conn {
    /// The TCP socket to the echo server or the proxy.
    fn socket(&self) -> &TcpStream {
        match self {
            Conn::Direct(s) => s,
            Conn::Tunnel(t) => t.get_ref(),
        }
    }

    /// The client socket must have `TCP_NODELAY` on (the library's default).
    fn check_nodelay(&self) -> io::Result<()> {
        if self.socket().nodelay()? {
            Ok(())
        } else {
            Err(io::Error::other("TCP_NODELAY is off on the client socket"))
        }
    }

    fn close(self) -> io::Result<()> {
        match self {
            Conn::Direct(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Tunnel(t) => t.close().map_err(io::Error::other),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Direct(s) => s.read(buf),
            Conn::Tunnel(t) => t.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Direct(s) => s.write(buf),
            Conn::Tunnel(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Direct(s) => s.flush(),
            Conn::Tunnel(t) => t.flush(),
        }
    }
}

/// A frame-like payload: the sequence number, then bytes that change with it.
fn fill_packet(packet: &mut [u8; PACKET_SIZE], seq: u32) {
    packet[..4].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in packet[4..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_add(i).wrapping_mul(31) as u8;
    }
}

// ---------------------------------------------------------------------------------------------
// The echo server
// ---------------------------------------------------------------------------------------------

/// Echoes every byte back: one thread per connection, a fixed [`ECHO_BUFFER`], `TCP_NODELAY` on.
struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start() -> io::Result<EchoServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let accept = thread::Builder::new()
            .name("echo-accept".into())
            .spawn(move || {
                for incoming in listener.incoming() {
                    if stop_flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = incoming else { continue };
                    let _ = thread::Builder::new()
                        .name("echo-conn".into())
                        .spawn(move || echo(stream));
                }
            })?;
        Ok(EchoServer {
            addr,
            stop,
            accept: Some(accept),
        })
    }
}

fn echo(mut stream: TcpStream) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut buf = [0u8; ECHO_BUFFER];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------

/// Order statistics of one series (nearest-rank percentiles).
struct Stats {
    n: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
    /// Samples of at least [`STALL`], slowest first.
    slow: Vec<Duration>,
}

impl Stats {
    fn of(samples: &[Duration]) -> Stats {
        assert!(!samples.is_empty(), "no samples");
        let mut samples = samples.to_vec();
        samples.sort_unstable();
        let rank = |q: f64| {
            let r = (q * samples.len() as f64).ceil() as usize;
            samples[r.clamp(1, samples.len()) - 1]
        };
        Stats {
            n: samples.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
            slow: samples
                .iter()
                .rev()
                .take_while(|d| **d >= STALL)
                .copied()
                .collect(),
        }
    }
}

struct Row {
    name: &'static str,
    open: Stats,
    first: Stats,
    rtt: Stats,
    /// Raw samples in the order taken: set-up to open, set-up to first echo, round trips.
    samples: [Vec<Duration>; 3],
}

/// Every raw sample: `path,series,index,micros`.
fn samples_csv(rows: &[Row]) -> String {
    let mut out = String::from("path,series,index,micros\n");
    for row in rows {
        for (series, samples) in ["setup_open", "setup_first_echo", "rtt"]
            .iter()
            .zip(&row.samples)
        {
            for (i, d) in samples.iter().enumerate() {
                let _ = writeln!(out, "\"{}\",{series},{i},{:.1}", row.name, us(*d));
            }
        }
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The row's cells, in the order of [`HEADER`].
fn cells(row: &Row, direct_p50: Duration) -> Vec<String> {
    vec![
        row.name.to_string(),
        format!("{:.3}", ms(row.open.p50)),
        format!("{:.3}", ms(row.open.p90)),
        format!("{:.3}", ms(row.first.p50)),
        format!("{:.3}", ms(row.first.p90)),
        format!("{:.1}", us(row.rtt.p50)),
        format!("{:.1}", us(row.rtt.p99)),
        format!("{:.1}", us(row.rtt.max)),
        format!(
            "{:.2}x",
            row.rtt.p50.as_secs_f64() / direct_p50.as_secs_f64()
        ),
        row.rtt.slow.len().to_string(),
    ]
}

const HEADER: [&str; 10] = [
    "path",
    "set-up p50 ms",
    "set-up p90 ms",
    "1st echo p50 ms",
    "1st echo p90 ms",
    "RTT p50 us",
    "RTT p99 us",
    "RTT max us",
    "p50 vs direct",
    ">=10ms",
];

fn plan_line(plan: &Plan) -> String {
    format!(
        "set-up: {} runs per path (after {} warm-up), interleaved; RTT: {} x {}-byte packets in a \
         row per path (after {} warm-up); nearest-rank percentiles",
        plan.setups, plan.setup_warmup, plan.packets, PACKET_SIZE, plan.packet_warmup
    )
}

fn render_text(rows: &[Row], skipped: &[(&str, &str)], machine: &Machine, plan: &Plan) -> String {
    let direct = rows[0].rtt.p50;
    let table: Vec<Vec<String>> = std::iter::once(HEADER.iter().map(|h| h.to_string()).collect())
        .chain(rows.iter().map(|r| cells(r, direct)))
        .collect();
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(out, "\nconnect-tunnel latency on loopback");
    let _ = writeln!(out, "{}", plan_line(plan));
    for (i, row) in table.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                let _ = write!(line, "{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(line, "  {cell:>w$}", w = widths[c]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if i == 0 {
            let _ = writeln!(out, "{}", "-".repeat(line.trim_end().chars().count()));
        }
    }
    for (name, why) in skipped {
        let _ = writeln!(out, "{name}: skipped, {why}");
    }
    let _ = writeln!(out, "\nmachine: {}", machine.summary());
    out
}

fn render_markdown(
    rows: &[Row],
    skipped: &[(&str, &str)],
    machine: &Machine,
    plan: &Plan,
) -> String {
    let direct = rows[0].rtt.p50;
    let mut out = String::new();
    let _ = writeln!(out, "Run on {} — {}.\n", machine.date, machine.summary());
    let _ = writeln!(
        out,
        "| Path | Set-up median (ms) | Set-up p90 (ms) | To 1st echo median (ms) | \
         To 1st echo p90 (ms) | RTT p50 (µs) | RTT p99 (µs) | RTT max (µs) | p50 vs direct | \
         RTT ≥ 10 ms |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        let _ = writeln!(out, "| {} |", cells(row, direct).join(" | "));
    }
    for (name, why) in skipped {
        let _ = writeln!(out, "| {name} | skipped: {why} | | | | | | | | |");
    }
    let _ = writeln!(out, "\n{}.", plan_line(plan));
    out
}

// ---------------------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------------------

struct Machine {
    date: String,
    uname: String,
    cpu: String,
    nproc: String,
    rustc: String,
    squid: Option<String>,
    /// 1-, 5- and 15-minute load averages when the bench started.
    load: String,
}

impl Machine {
    fn probe(squid: Option<String>, load: String) -> Machine {
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let nproc = command_line("nproc", &[]).unwrap_or_else(|| {
            thread::available_parallelism()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into())
        });
        Machine {
            date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
                .unwrap_or_else(|| "unknown date".into()),
            uname: command_line("uname", &["-srm"]).unwrap_or_else(|| "unknown OS".into()),
            cpu,
            nproc,
            rustc: command_line("rustc", &["-V"]).unwrap_or_else(|| "rustc ?".into()),
            squid,
            load,
        }
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "{}, {}, nproc {}, {}",
            self.uname, self.cpu, self.nproc, self.rustc
        );
        if let Some(squid) = &self.squid {
            let _ = write!(s, ", {squid}");
        }
        let _ = write!(s, ", load average at start {}", self.load);
        s
    }
}

/// `/proc/loadavg`'s first three fields.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// The first line a command prints, trimmed; `None` if it cannot run or fails.
fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// `Squid Cache: Version 6.x` → `Squid 6.x`.
fn squid_version() -> String {
    command_line(support::squid::SQUID, &["-v"])
        .map(|l| l.replace("Squid Cache: Version", "Squid"))
        .unwrap_or_else(|| "Squid (version unknown)".into())
}

/// Where Cargo puts build output: `CARGO_TARGET_DIR` if set, else `target/` in the package.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}
