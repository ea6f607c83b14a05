//! Peer comparison: connect-tunnel's command-line tool next to the tools a user might pick
//! instead, all through the same locally started Squid to the same echo / sink server.
//!
//! Run with `scripts/bench-peers.sh` (installs the tools, runs this with `--bench`, writes the
//! table into `docs/BENCHMARKS.md`). See that document for what each figure means.
//!
//! Every tool is driven the same way: spawned with piped stdin and stdout, used as a stdio relay
//! (what `ssh -o ProxyCommand=…` does with it). Measured for each, in one run:
//!
//! 1. set-up: from just before the spawn to the first echoed byte read from its stdout;
//! 2. round trips of 160-byte packets, 10,000 in a row, each written to stdin and its echo read
//!    in full from stdout before the next;
//! 3. bulk: 1 GiB to a sink (one direction) and 1 GiB echoed (both directions at once);
//! 4. the tool's CPU time (user + sys) and peak resident memory in the bulk runs, from GNU
//!    `time` (`wait4`'s rusage of the tool process).
//!
//! The echo and sink servers run in this process (std threads, fixed buffers). Squid is the
//! test suite's (`tests/support/squid.rs`) with extra rules for GNU httptunnel's GET/POST to its
//! `hts` server. Every child runs in its own process group under a watchdog that kills the
//! group when a bound passes; every child is reaped.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it makes a short smoke pass of the
//! harness itself: direct TCP and connect-tunnel (plain and TLS) with tiny sizes, no files.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{find_program, free_port, Squid, SquidOptions, TempDir};

/// One 20 ms G.711 frame (8 kHz, 8 bits per sample), as in `benches/latency.rs`.
const PACKET_SIZE: usize = 160;
const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
/// The bulk pattern repeats every this many bytes (a prime, so that a lost or doubled block of
/// any power-of-two size shows up as a mismatch).
const PATTERN_LEN: usize = 131_071;
/// Bytes per write into a tool's stdin in the bulk runs.
const WRITE_CHUNK: usize = 64 * 1024;
/// How long a tool may take to exit once its stdin is closed before its group is killed.
const EXIT_GRACE: Duration = Duration::from_secs(3);
/// A bulk run whose counter stands still this long is declared stalled and its tool killed.
const STALL_LIMIT: Duration = Duration::from_secs(5);
/// GNU httptunnel's bytes per HTTP request, both ends (see [`Hts`]).
const HTTPTUNNEL_CONTENT_LENGTH: &str = "2000M";
/// Bound on one set-up (spawn to first echoed byte).
const SETUP_LIMIT: Duration = Duration::from_secs(15);

struct Plan {
    full: bool,
    setups: usize,
    setup_warmup: usize,
    packets: usize,
    packet_warmup: usize,
    rtt_rounds: usize,
    bulk_bytes: u64,
    bulk_rounds: usize,
    /// Bound on one round trip series (all packets of one run).
    rtt_limit: Duration,
}

impl Plan {
    fn from_env(full: bool) -> Plan {
        let n = |name: &str, default: u64| -> u64 {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        if full {
            Plan {
                full,
                setups: n("PEERS_SETUPS", 21) as usize,
                setup_warmup: 2,
                packets: n("PEERS_PACKETS", 10_000) as usize,
                packet_warmup: 200,
                rtt_rounds: n("PEERS_RTT_ROUNDS", 5) as usize,
                bulk_bytes: n("PEERS_BULK_MIB", 1024) * MIB,
                bulk_rounds: n("PEERS_BULK_ROUNDS", 3) as usize,
                rtt_limit: Duration::from_secs(n("PEERS_RTT_LIMIT_SECS", 60)),
            }
        } else {
            Plan {
                full,
                setups: 2,
                setup_warmup: 1,
                packets: 100,
                packet_warmup: 10,
                rtt_rounds: 1,
                bulk_bytes: 4 * MIB,
                bulk_rounds: 1,
                rtt_limit: Duration::from_secs(30),
            }
        }
    }

    /// Bound on one bulk run: generous for 40 MiB/s, never below 30 s.
    fn bulk_limit(&self) -> Duration {
        Duration::from_secs((self.bulk_bytes / (40 * MIB)).max(30))
    }
}

// ---------------------------------------------------------------------------------------------
// The tools
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    /// No proxy: the floor.
    Floor,
    /// connect-tunnel itself.
    Ct,
    /// A tool a user might pick instead.
    Peer,
    /// A second connect-tunnel build (`PEERS_CT_ALT_BIN`), for A/B comparisons: reported,
    /// kept out of the targets.
    Alt,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// This process connects to the server itself (no relay process).
    InProcess,
    SocatDirect,
    CtPlain,
    CtTls,
    CtAltPlain,
    CtAltTls,
    SocatProxy,
    Ncat,
    Proxytunnel,
    ProxytunnelTls,
    Corkscrew,
    /// GNU httptunnel with its default 100 KiB per HTTP request.
    HttptunnelDefault,
    /// GNU httptunnel with [`HTTPTUNNEL_CONTENT_LENGTH`] per HTTP request.
    Httptunnel,
}

impl Kind {
    fn is_httptunnel(self) -> bool {
        matches!(self, Kind::Httptunnel | Kind::HttptunnelDefault)
    }

    /// `-c` for htc and hts: None for their default.
    fn httptunnel_content_length(self) -> Option<&'static str> {
        (self == Kind::Httptunnel).then_some(HTTPTUNNEL_CONTENT_LENGTH)
    }
}

struct Tool {
    kind: Kind,
    key: &'static str,
    name: &'static str,
    class: Class,
    /// TLS between the tool and the proxy.
    tls: bool,
    /// The program that must be installed (None: this process).
    program: Option<&'static str>,
}

const TOOLS: &[Tool] = &[
    Tool {
        kind: Kind::InProcess,
        key: "direct",
        name: "direct TCP, in-process (floor)",
        class: Class::Floor,
        tls: false,
        program: None,
    },
    Tool {
        kind: Kind::SocatDirect,
        key: "socat-direct",
        name: "`socat - TCP:` (relay, no proxy)",
        class: Class::Floor,
        tls: false,
        program: Some("socat"),
    },
    Tool {
        kind: Kind::CtPlain,
        key: "ct",
        name: "**connect-tunnel**, `http://`",
        class: Class::Ct,
        tls: false,
        program: None,
    },
    Tool {
        kind: Kind::CtTls,
        key: "ct-tls",
        name: "**connect-tunnel**, `https://`",
        class: Class::Ct,
        tls: true,
        program: None,
    },
    Tool {
        kind: Kind::CtAltPlain,
        key: "ct-alt",
        name: "connect-tunnel, `PEERS_CT_ALT_BIN`, `http://`",
        class: Class::Alt,
        tls: false,
        program: None,
    },
    Tool {
        kind: Kind::CtAltTls,
        key: "ct-alt-tls",
        name: "connect-tunnel, `PEERS_CT_ALT_BIN`, `https://`",
        class: Class::Alt,
        tls: true,
        program: None,
    },
    Tool {
        kind: Kind::SocatProxy,
        key: "socat",
        name: "`socat - PROXY:`",
        class: Class::Peer,
        tls: false,
        program: Some("socat"),
    },
    Tool {
        kind: Kind::Ncat,
        key: "ncat",
        name: "`ncat --proxy-type http`",
        class: Class::Peer,
        tls: false,
        program: Some("ncat"),
    },
    Tool {
        kind: Kind::Proxytunnel,
        key: "proxytunnel",
        name: "`proxytunnel`",
        class: Class::Peer,
        tls: false,
        program: Some("proxytunnel"),
    },
    Tool {
        kind: Kind::ProxytunnelTls,
        key: "proxytunnel-tls",
        name: "`proxytunnel -E` (TLS)",
        class: Class::Peer,
        tls: true,
        program: Some("proxytunnel"),
    },
    Tool {
        kind: Kind::Corkscrew,
        key: "corkscrew",
        name: "`corkscrew`",
        class: Class::Peer,
        tls: false,
        program: Some("corkscrew"),
    },
    Tool {
        kind: Kind::HttptunnelDefault,
        key: "httptunnel-default",
        name: "GNU httptunnel, defaults (`htc` → `hts`)",
        class: Class::Peer,
        tls: false,
        program: Some("htc"),
    },
    Tool {
        kind: Kind::Httptunnel,
        key: "httptunnel",
        name: "GNU httptunnel, `-c 2000M`",
        class: Class::Peer,
        tls: false,
        program: Some("htc"),
    },
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dest {
    Echo,
    Sink,
}

/// Everything a tool's command line needs.
struct Ctx {
    echo: SocketAddr,
    sink: SocketAddr,
    squid_plain: u16,
    squid_tls: u16,
    ca_pem: PathBuf,
    user: String,
    password: String,
    ct_bin: PathBuf,
    ct_alt_bin: Option<PathBuf>,
    corkscrew_auth: PathBuf,
    hts_echo: u16,
    hts_sink: u16,
    /// Where the tools' stderr and GNU time's reports go.
    dir: PathBuf,
}

impl Ctx {
    fn port(&self, dest: Dest) -> u16 {
        match dest {
            Dest::Echo => self.echo.port(),
            Dest::Sink => self.sink.port(),
        }
    }

    fn userinfo(&self) -> String {
        format!(
            "{}:{}",
            support::percent_encode(&self.user),
            support::percent_encode(&self.password)
        )
    }

    fn auth(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }

    /// The connect-tunnel binary for `tool` (the alternative build for the `Alt` rows).
    fn ct(&self, tool: &Tool) -> String {
        match (&self.ct_alt_bin, tool.class) {
            (Some(alt), Class::Alt) => alt.display().to_string(),
            _ => self.ct_bin.display().to_string(),
        }
    }

    /// The command line for `tool` toward `dest`; None for the in-process path.
    fn argv(&self, tool: &Tool, dest: Dest) -> Option<Vec<String>> {
        let d = self.port(dest);
        let p = self.squid_plain;
        let t = self.squid_tls;
        let s = |x: &str| x.to_string();
        let v = match tool.kind {
            Kind::InProcess => return None,
            Kind::SocatDirect => vec![s("socat"), s("-"), format!("TCP:127.0.0.1:{d}")],
            Kind::CtPlain | Kind::CtAltPlain => vec![
                self.ct(tool),
                s("-x"),
                format!("http://{}@127.0.0.1:{p}", self.userinfo()),
                format!("127.0.0.1:{d}"),
            ],
            Kind::CtTls | Kind::CtAltTls => vec![
                self.ct(tool),
                s("-x"),
                format!("https://{}@127.0.0.1:{t}", self.userinfo()),
                s("--proxy-cacert"),
                self.ca_pem.display().to_string(),
                format!("127.0.0.1:{d}"),
            ],
            Kind::SocatProxy => vec![
                s("socat"),
                s("-"),
                format!(
                    "PROXY:127.0.0.1:127.0.0.1:{d},proxyport={p},proxyauth={}",
                    self.auth()
                ),
            ],
            Kind::Ncat => vec![
                s("ncat"),
                s("--proxy"),
                format!("127.0.0.1:{p}"),
                s("--proxy-type"),
                s("http"),
                s("--proxy-auth"),
                self.auth(),
                s("127.0.0.1"),
                d.to_string(),
            ],
            Kind::Proxytunnel => vec![
                s("proxytunnel"),
                s("-q"),
                s("-p"),
                format!("127.0.0.1:{p}"),
                s("-P"),
                self.auth(),
                s("-d"),
                format!("127.0.0.1:{d}"),
            ],
            Kind::ProxytunnelTls => vec![
                s("proxytunnel"),
                s("-q"),
                s("-E"),
                s("-C"),
                self.ca_pem.display().to_string(),
                s("-p"),
                format!("127.0.0.1:{t}"),
                s("-P"),
                self.auth(),
                s("-d"),
                format!("127.0.0.1:{d}"),
            ],
            Kind::Corkscrew => vec![
                s("corkscrew"),
                s("127.0.0.1"),
                p.to_string(),
                s("127.0.0.1"),
                d.to_string(),
                self.corkscrew_auth.display().to_string(),
            ],
            Kind::Httptunnel | Kind::HttptunnelDefault => {
                let hts = match dest {
                    Dest::Echo => self.hts_echo,
                    Dest::Sink => self.hts_sink,
                };
                let mut v = vec![s("htc"), s("-s")];
                if let Some(c) = tool.kind.httptunnel_content_length() {
                    v.extend([s("-c"), s(c)]);
                }
                v.extend([
                    s("-P"),
                    format!("127.0.0.1:{p}"),
                    s("-A"),
                    self.auth(),
                    format!("127.0.0.1:{hts}"),
                ]);
                v
            }
        };
        Some(v)
    }
}

// ---------------------------------------------------------------------------------------------
// Echo and sink servers (in this process)
// ---------------------------------------------------------------------------------------------

/// Echo: writes back every byte it reads (64 KiB buffer, `TCP_NODELAY`), half-closes at EOF.
/// Sink: reads an 8-byte little-endian count, answers `R`, reads and discards that many bytes,
/// answers `K`, then reads to EOF.
fn start_server(dest: Dest) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::Builder::new()
        .name(format!("{dest:?} server"))
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                let _ = thread::Builder::new().spawn(move || {
                    let _ = match dest {
                        Dest::Echo => serve_echo(conn),
                        Dest::Sink => serve_sink(conn),
                    };
                });
            }
        })?;
    Ok(addr)
}

fn serve_echo(mut conn: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return conn.shutdown(Shutdown::Write);
        }
        conn.write_all(&buf[..n])?;
    }
}

fn serve_sink(mut conn: TcpStream) -> io::Result<()> {
    let mut head = [0u8; 8];
    conn.read_exact(&mut head)?;
    let mut left = u64::from_le_bytes(head);
    conn.write_all(b"R")?;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = buf.len().min(left.try_into().unwrap_or(usize::MAX));
        let n = conn.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        left -= n as u64;
    }
    conn.write_all(b"K")?;
    while conn.read(&mut buf)? > 0 {}
    conn.shutdown(Shutdown::Write)
}

// ---------------------------------------------------------------------------------------------
// Child processes: own process group, watchdog, reaping
// ---------------------------------------------------------------------------------------------

fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What each process of group `pgid` is doing: `comm state wchan` from /proc, for a stall
/// report (a process asleep in `sk_stream_wait_memory` waits for room in a full socket buffer,
/// one in `pipe_write` for room in a full pipe).
fn group_state(pgid: u32) -> String {
    group_members(pgid)
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The processes of group `pgid`: pid and `comm state wchan`.
fn group_members(pgid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let Ok(stat) = fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state, ppid, pgrp.
        if f.get(2).and_then(|g| g.parse::<u32>().ok()) != Some(pgid) {
            continue;
        }
        let wchan = fs::read_to_string(path.join("wchan")).unwrap_or_default();
        out.push((
            pid,
            format!(
                "{} {} {}",
                &stat[open + 1..close],
                f.first().unwrap_or(&"?"),
                if wchan.is_empty() { "-" } else { wchan.trim() }
            ),
        ));
    }
    out
}

fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Kills the process group `pgid` when `limit` passes before it is disarmed, or, when given a
/// progress counter, when the counter stays still for `stall`.
struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<Option<String>>>,
}

impl Watchdog {
    fn arm(pgid: u32, limit: Duration, what: String) -> Watchdog {
        Watchdog::arm_progress(pgid, limit, None, what)
    }

    fn arm_progress(
        pgid: u32,
        limit: Duration,
        progress: Option<(Arc<AtomicU64>, Duration, &'static str)>,
        what: String,
    ) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            let start = Instant::now();
            let mut last = (0u64, Instant::now());
            let tick = Duration::from_millis(250);
            loop {
                match rx.recv_timeout(tick) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return None,
                }
                let reason = if start.elapsed() > limit {
                    Some(format!("no result within {limit:?}"))
                } else if let Some((counter, stall, unit)) = &progress {
                    let now = counter.load(Ordering::Relaxed);
                    if now != last.0 {
                        last = (now, Instant::now());
                        None
                    } else if last.1.elapsed() > *stall {
                        Some(format!(
                            "stalled: no progress for {stall:?} after {now} {unit} [{}]",
                            group_state(pgid)
                        ))
                    } else {
                        None
                    }
                } else {
                    None
                };
                if let Some(reason) = reason {
                    eprintln!("peers: {what}: {reason}; killing it");
                    kill_group(pgid);
                    return Some(reason);
                }
            }
        });
        Watchdog {
            cancel: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops watching; says why it killed the group, if it did.
    fn disarm(mut self) -> Option<String> {
        drop(self.cancel.take());
        self.thread.take().and_then(|t| t.join().ok().flatten())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CPU time and peak resident memory of one tool process (GNU time: `%U %S %M`).
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    cpu_secs: f64,
    max_rss_kib: u64,
}

/// A spawned tool with piped stdin and stdout.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    time_report: Option<PathBuf>,
    /// How long it may take to exit at the end of its input.
    grace: Duration,
}

/// Spawns `tool` toward `dest`: under GNU time when `timed`, and after `prefix` (a wrapper such
/// as `perf record … --`) when it is not empty.
fn spawn_tool(
    ctx: &Ctx,
    tool: &Tool,
    dest: Dest,
    timed: bool,
    prefix: &[String],
) -> io::Result<Proc> {
    let argv = ctx
        .argv(tool, dest)
        .ok_or_else(|| io::Error::other("in-process path has no command"))?;
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ctx.dir.join(format!("{}.stderr", tool.key)))?;
    let mut full: Vec<String> = prefix.to_vec();
    let mut time_report = None;
    // Without GNU time (package `time`) the CPU and memory columns stay empty.
    if timed && Path::new("/usr/bin/time").exists() {
        let report = ctx.dir.join(format!("{}.time", tool.key));
        let _ = fs::remove_file(&report);
        full.extend(["/usr/bin/time", "-f", "%U %S %M", "-o"].map(String::from));
        full.push(report.display().to_string());
        full.push("--".into());
        time_report = Some(report);
    }
    full.extend(argv);
    let mut cmd = Command::new(&full[0]);
    cmd.args(&full[1..]);
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .spawn()?;
    Ok(Proc {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        child,
        time_report,
        // htc does not exit at the end of its input (it keeps its tunnel open): no use waiting.
        grace: if tool.kind.is_httptunnel() {
            Duration::from_millis(100)
        } else {
            EXIT_GRACE
        },
    })
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdin(&mut self) -> &mut ChildStdin {
        self.stdin.as_mut().expect("stdin still open")
    }

    fn stdout(&mut self) -> &mut ChildStdout {
        self.stdout.as_mut().expect("stdout still open")
    }

    /// Closes stdin (end of input: the tools half-close or end), waits up to its grace time
    /// ([`EXIT_GRACE`]), then kills the group; always reaps. Returns GNU time's report when
    /// there is one.
    fn finish(mut self) -> Option<Usage> {
        drop(self.stdin.take());
        let deadline = Instant::now() + self.grace;
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        drop(self.stdout.take());
        if !exited && self.time_report.is_some() {
            // Kill the tool under GNU time, not time itself, so that time still reports.
            let leader = self.pid();
            for (pid, _) in group_members(leader) {
                if pid != leader {
                    kill_pid(pid);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    exited = true;
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
        if !exited {
            kill_group(self.pid());
            let _ = self.child.wait();
        } else {
            // The tool under GNU time may have left children in the group (none should).
            kill_group(self.pid());
        }
        let report = fs::read_to_string(self.time_report.as_ref()?).ok()?;
        // GNU time writes a "Command exited with non-zero status" line first in that case.
        let line = report.lines().last()?;
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 {
            return None;
        }
        Some(Usage {
            cpu_secs: f[0].parse::<f64>().ok()? + f[1].parse::<f64>().ok()?,
            max_rss_kib: f[2].parse().ok()?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), for packet and bulk contents.
struct Rng(u64);

impl Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The bulk pattern twice over, so that any slice of up to [`PATTERN_LEN`] bytes starting at
/// any offset in the stream is contiguous.
fn pattern() -> Vec<u8> {
    let mut p = vec![0u8; PATTERN_LEN];
    Rng(0x9e37_79b9_7f4a_7c15).fill(&mut p);
    let mut twice = p.clone();
    twice.extend_from_slice(&p);
    twice
}

fn timeout_err(what: &str) -> String {
    format!("{what}: the tool ended or was killed before the result")
}

/// Spawn (or connect) to the first echoed byte.
fn setup_once(ctx: &Ctx, tool: &Tool) -> Result<Duration, String> {
    if tool.kind == Kind::InProcess {
        let t0 = Instant::now();
        let mut s =
            TcpStream::connect_timeout(&ctx.echo, SETUP_LIMIT).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(SETUP_LIMIT))
            .map_err(|e| e.to_string())?;
        s.write_all(b"Z").map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).map_err(|e| e.to_string())?;
        let dt = t0.elapsed();
        return if b == *b"Z" {
            Ok(dt)
        } else {
            Err("wrong echo".into())
        };
    }
    let hts = Hts::for_tool(ctx, tool, Dest::Echo)?;
    let t0 = Instant::now();
    let mut p = spawn_tool(ctx, tool, Dest::Echo, false, &[]).map_err(|e| e.to_string())?;
    let dog = Watchdog::arm(p.pid(), SETUP_LIMIT, format!("{} set-up", tool.key));
    let mut b = [0u8; 1];
    let r = p
        .stdin()
        .write_all(b"Z")
        .and_then(|()| p.stdout().read_exact(&mut b));
    let dt = t0.elapsed();
    drop(dog);
    p.finish();
    drop(hts);
    match r {
        Ok(()) if b == *b"Z" => Ok(dt),
        Ok(()) => Err("wrong echo".into()),
        Err(e) => Err(format!("{}: {e}", timeout_err("set-up"))),
    }
}

/// `warmup + packets` round trips in a row; returns the measured ones in µs.
fn rtt_run(ctx: &Ctx, tool: &Tool, plan: &Plan) -> Result<Vec<f64>, String> {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut pkt = [0u8; PACKET_SIZE];
    let mut back = [0u8; PACKET_SIZE];
    let mut out = Vec::with_capacity(plan.packets);
    let mut one = |w: &mut dyn Write, r: &mut dyn Read, i: usize| -> Result<Duration, String> {
        rng.fill(&mut pkt);
        pkt[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let t = Instant::now();
        w.write_all(&pkt)
            .and_then(|()| r.read_exact(&mut back))
            .map_err(|e| format!("{} at packet {i}: {e}", timeout_err("round trips")))?;
        let dt = t.elapsed();
        if back != pkt {
            return Err(format!("packet {i} came back changed"));
        }
        Ok(dt)
    };
    let total = plan.packet_warmup + plan.packets;
    if tool.kind == Kind::InProcess {
        let mut s = TcpStream::connect(ctx.echo).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut r = s.try_clone().map_err(|e| e.to_string())?;
        for i in 0..total {
            let dt = one(&mut s, &mut r, i)?;
            if i >= plan.packet_warmup {
                out.push(dt.as_secs_f64() * 1e6);
            }
        }
        return Ok(out);
    }
    let hts = Hts::for_tool(ctx, tool, Dest::Echo)?;
    let mut p = spawn_tool(ctx, tool, Dest::Echo, false, &[]).map_err(|e| e.to_string())?;
    let done = Arc::new(AtomicU64::new(0));
    let dog = Watchdog::arm_progress(
        p.pid(),
        plan.rtt_limit,
        Some((done.clone(), STALL_LIMIT, "packets")),
        format!("{} round trips", tool.key),
    );
    let mut res = Ok(());
    let mut stdin = p.stdin.take().expect("stdin");
    let mut stdout = p.stdout.take().expect("stdout");
    for i in 0..total {
        let r = one(&mut stdin, &mut stdout, i);
        done.store(i as u64 + 1, Ordering::Relaxed);
        match r {
            Ok(dt) if i >= plan.packet_warmup => out.push(dt.as_secs_f64() * 1e6),
            Ok(_) => {}
            Err(e) => {
                res = Err(e);
                break;
            }
        }
    }
    let killed = dog.disarm();
    p.stdin = Some(stdin);
    p.stdout = Some(stdout);
    p.finish();
    drop(hts);
    match (res, killed) {
        (Ok(()), _) => Ok(out),
        (Err(e), Some(why)) => Err(format!("{why} ({e})")),
        (Err(e), None) => Err(e),
    }
}

#[derive(Clone, Copy, Debug)]
struct BulkSample {
    secs: f64,
    usage: Option<Usage>,
    /// CPU seconds Squid spent during the run.
    squid_cpu: Option<f64>,
    /// CPU seconds the `hts` server for this destination spent (httptunnel only).
    hts_cpu: Option<f64>,
}

/// One bulk run. `Sink`: `bytes` one way, timed from the sink's `R` (tunnel open end to end)
/// to its `K` (every byte arrived). `Echo`: `bytes` each way at once, timed from the first write
/// after a one-byte handshake to the last byte read back (and checked).
#[allow(clippy::too_many_arguments)]
fn bulk_run(
    ctx: &Ctx,
    tool: &Tool,
    dest: Dest,
    bytes: u64,
    plan: &Plan,
    pat: &'static [u8],
    watch: &Watch,
    prefix: &[String],
) -> Result<BulkSample, String> {
    let progress = Arc::new(AtomicU64::new(0));
    let hts = Hts::for_tool(ctx, tool, dest)?;
    let squid_before = watch.squid_cpu();
    let (secs, usage) = if tool.kind == Kind::InProcess {
        let s = TcpStream::connect(ctx.port_addr(dest)).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(plan.bulk_limit()))
            .map_err(|e| e.to_string())?;
        let r = s.try_clone().map_err(|e| e.to_string())?;
        (transfer(s, r, dest, bytes, pat, &progress)?, None)
    } else {
        let mut p = spawn_tool(ctx, tool, dest, true, prefix).map_err(|e| e.to_string())?;
        let dog = Watchdog::arm_progress(
            p.pid(),
            plan.bulk_limit() + SETUP_LIMIT,
            Some((progress.clone(), STALL_LIMIT, "bytes")),
            format!("{} bulk {dest:?}", tool.key),
        );
        let w = p.stdin.take().expect("stdin");
        let r = p.stdout.take().expect("stdout");
        let res = transfer(w, r, dest, bytes, pat, &progress);
        let killed = dog.disarm();
        let usage = p.finish();
        match (res, killed) {
            (Ok(secs), _) => (secs, usage),
            (Err(e), Some(why)) => return Err(format!("{why} ({e})")),
            (Err(e), None) => return Err(e),
        }
    };
    let squid_after = watch.squid_cpu();
    let hts_cpu = hts.as_ref().and_then(Hts::cpu);
    drop(hts);
    Ok(BulkSample {
        secs,
        usage,
        squid_cpu: squid_after.zip(squid_before).map(|(a, b)| a - b),
        hts_cpu,
    })
}

impl Ctx {
    fn port_addr(&self, dest: Dest) -> SocketAddr {
        match dest {
            Dest::Echo => self.echo,
            Dest::Sink => self.sink,
        }
    }
}

/// Moves the bulk data through `w` (toward the server) and `r` (back); see [`bulk_run`].
fn transfer<W, R>(
    mut w: W,
    mut r: R,
    dest: Dest,
    bytes: u64,
    pat: &'static [u8],
    progress: &Arc<AtomicU64>,
) -> Result<f64, String>
where
    W: Write + Send + 'static,
    R: Read,
{
    let err = |what: &str, e: io::Error| format!("{}: {e}", timeout_err(what));
    let mut one = [0u8; 1];
    match dest {
        Dest::Sink => {
            w.write_all(&bytes.to_le_bytes())
                .and_then(|()| r.read_exact(&mut one))
                .map_err(|e| err("sink handshake", e))?;
            if one != *b"R" {
                return Err("sink handshake: wrong answer".into());
            }
            let t0 = Instant::now();
            send_pattern(&mut w, bytes, pat, Some(progress)).map_err(|e| err("sending", e))?;
            r.read_exact(&mut one).map_err(|e| err("sink answer", e))?;
            let secs = t0.elapsed().as_secs_f64();
            if one != *b"K" {
                return Err("sink: wrong final answer".into());
            }
            Ok(secs)
        }
        Dest::Echo => {
            w.write_all(b"Z")
                .and_then(|()| r.read_exact(&mut one))
                .map_err(|e| err("echo handshake", e))?;
            let t0 = Instant::now();
            let writer = thread::spawn(move || {
                let res = send_pattern(&mut w, bytes, pat, None);
                (w, res)
            });
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            let mut res = Ok(());
            while got < bytes {
                let want = buf
                    .len()
                    .min((bytes - got).try_into().unwrap_or(usize::MAX));
                match r.read(&mut buf[..want]) {
                    Ok(0) => {
                        res = Err(format!("echo ended after {got} of {bytes} bytes"));
                        break;
                    }
                    Ok(n) => {
                        if !matches_pattern(&buf[..n], got, pat) {
                            res = Err(format!("echo differs near byte {got}"));
                            break;
                        }
                        got += n as u64;
                        progress.store(got, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        res = Err(err("receiving", e));
                        break;
                    }
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            if res.is_err() {
                // A tool blocked writing to its stdout gets EPIPE now and ends, which unblocks
                // the writer; otherwise the watchdog does.
                drop(r);
            }
            let (_w, sent) = writer
                .join()
                .map_err(|_| "writer thread panicked".to_string())?;
            res?;
            sent.map_err(|e| err("sending", e))?;
            Ok(secs)
        }
    }
}

fn send_pattern(
    w: &mut impl Write,
    bytes: u64,
    pat: &[u8],
    progress: Option<&AtomicU64>,
) -> io::Result<()> {
    let mut sent = 0u64;
    while sent < bytes {
        let at = (sent % PATTERN_LEN as u64) as usize;
        let n = WRITE_CHUNK.min((bytes - sent).try_into().unwrap_or(usize::MAX));
        w.write_all(&pat[at..at + n])?;
        sent += n as u64;
        if let Some(p) = progress {
            p.store(sent, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn matches_pattern(data: &[u8], offset: u64, pat: &[u8]) -> bool {
    let mut off = offset;
    data.chunks(PATTERN_LEN).all(|piece| {
        let at = (off % PATTERN_LEN as u64) as usize;
        off += piece.len() as u64;
        piece == &pat[at..at + piece.len()]
    })
}

/// CPU seconds (user + sys, own and reaped children's) of a process, from /proc/PID/stat.
fn proc_cpu(pid: u32, ticks_per_sec: f64) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14..=17: indices 11..=14 here.
    let ticks: u64 = f
        .get(11..15)?
        .iter()
        .filter_map(|x| x.parse::<u64>().ok())
        .sum();
    Some(ticks as f64 / ticks_per_sec)
}

fn ticks_per_sec() -> f64 {
    command_line("getconf", &["CLK_TCK"])
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Squid's CPU time, read around each bulk run.
struct Watch {
    squid: u32,
    ticks_per_sec: f64,
}

impl Watch {
    fn squid_cpu(&self) -> Option<f64> {
        proc_cpu(self.squid, self.ticks_per_sec)
    }
}

// ---------------------------------------------------------------------------------------------
// GNU httptunnel's server
// ---------------------------------------------------------------------------------------------

/// `hts -w [-c 2000M] -F 127.0.0.1:DEST PORT`, killed and reaped on drop. Not in its own
/// process group: an interrupt of the bench reaches it too.
///
/// hts carries one tunnel at a time and does not notice for many seconds that its client (htc,
/// which does not exit at the end of its input, so it is killed) has gone: each use of
/// httptunnel gets a fresh hts, started before the clock runs. `-c 2000M` (on htc too): with
/// the default 100 KiB per HTTP request, bulk data was lost at the request boundaries (a
/// direct htc → hts test without Squid skipped 243,712 bytes after the first 96 KiB, then
/// stalled); 2^31 and more makes Squid answer 502.
struct Hts {
    child: Child,
}

impl Hts {
    /// A fresh hts when `tool` is httptunnel, toward `dest`'s server on its fixed port (the one
    /// Squid lets GET/POST through to).
    fn for_tool(ctx: &Ctx, tool: &Tool, dest: Dest) -> Result<Option<Hts>, String> {
        if !tool.kind.is_httptunnel() {
            return Ok(None);
        }
        let port = match dest {
            Dest::Echo => ctx.hts_echo,
            Dest::Sink => ctx.hts_sink,
        };
        let mut last = String::new();
        for _ in 0..3 {
            match Hts::start(
                port,
                ctx.port_addr(dest),
                tool.kind.httptunnel_content_length(),
                &ctx.dir,
            ) {
                Ok(h) => return Ok(Some(h)),
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(200));
        }
        Err(format!("hts on port {port}: {last}"))
    }

    fn start(
        port: u16,
        dest: SocketAddr,
        content_length: Option<&str>,
        dir: &Path,
    ) -> Result<Hts, String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("hts-{port}.log")))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new("hts");
        cmd.arg("-w");
        if let Some(c) = content_length {
            cmd.args(["-c", c]);
        }
        let mut child = cmd
            .arg("-F")
            .arg(dest.to_string())
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("spawn hts: {e}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("hts exited at start ({status})"));
            }
            // A probe connection would count as hts's one tunnel: wait for the listening
            // socket in /proc instead.
            if listening(port) {
                return Ok(Hts { child });
            }
            if Instant::now() > deadline {
                support::stop_child(&mut child, support::SIGTERM, Duration::from_secs(2));
                return Err(format!("hts not listening on {addr} within 5 s"));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn cpu(&self) -> Option<f64> {
        proc_cpu(self.child.id(), ticks_per_sec())
    }
}

/// True when some socket listens on 127.0.0.1:`port` (/proc/net/tcp, state 0A).
fn listening(port: u16) -> bool {
    let needle = format!("0100007F:{port:04X}");
    fs::read_to_string("/proc/net/tcp")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&needle.as_str()) && f.get(3) == Some(&"0A")
            })
        })
        .unwrap_or(false)
}

impl Drop for Hts {
    fn drop(&mut self) {
        support::stop_child(&mut self.child, support::SIGTERM, Duration::from_secs(2));
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report
// ---------------------------------------------------------------------------------------------

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[derive(Default)]
struct Results {
    setups: Vec<f64>,
    setup_errors: Vec<String>,
    /// Per run: (p50, p99, max) in µs.
    rtt_runs: Vec<(f64, f64, f64)>,
    rtt_errors: Vec<String>,
    sink: Vec<BulkSample>,
    echo: Vec<BulkSample>,
    sink_failed: Vec<String>,
    echo_failed: Vec<String>,
    bulk_errors: Vec<String>,
}

/// `"2/3 runs stalled"` style note for a column whose runs failed, or "".
fn failure_note(failed: &[String], ok: usize) -> String {
    if failed.is_empty() {
        return String::new();
    }
    let what = if failed.iter().all(|e| e.contains("stalled")) {
        "stalled"
    } else {
        "failed"
    };
    format!(" ({}/{} {what})", failed.len(), failed.len() + ok)
}

/// What the report shows for one tool (medians over runs).
#[derive(Clone, Copy, Default)]
struct Row {
    setup_ms: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    sink_mibs: Option<f64>,
    echo_mibs: Option<f64>,
    cpu_sink: Option<f64>,
    cpu_echo: Option<f64>,
    rss_mib: Option<f64>,
    squid_cpu_sink: Option<f64>,
}

impl Results {
    fn row(&self, bytes: u64) -> Row {
        let mib = bytes as f64 / MIB as f64;
        let gib = bytes as f64 / GIB;
        let pick = |f: fn(&(f64, f64, f64)) -> f64| {
            median(&self.rtt_runs.iter().map(f).collect::<Vec<_>>())
        };
        let cpu = |v: &[BulkSample], gibs: f64| {
            median(
                &v.iter()
                    .filter_map(|s| Some((s.usage?.cpu_secs + s.hts_cpu.unwrap_or(0.0)) / gibs))
                    .collect::<Vec<_>>(),
            )
        };
        let rss = self
            .sink
            .iter()
            .chain(&self.echo)
            .filter_map(|s| s.usage.map(|u| u.max_rss_kib))
            .max()
            .map(|k| k as f64 / 1024.0);
        Row {
            setup_ms: median(&self.setups),
            p50: pick(|r| r.0),
            p99: pick(|r| r.1),
            max: pick(|r| r.2),
            sink_mibs: median(&self.sink.iter().map(|s| mib / s.secs).collect::<Vec<_>>()),
            echo_mibs: median(&self.echo.iter().map(|s| mib / s.secs).collect::<Vec<_>>()),
            cpu_sink: cpu(&self.sink, gib),
            cpu_echo: cpu(&self.echo, 2.0 * gib),
            rss_mib: rss,
            squid_cpu_sink: median(
                &self
                    .sink
                    .iter()
                    .filter_map(|s| Some(s.squid_cpu? / gib))
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".to_string(), |x| format!("{x:.decimals$}"))
}

fn ratio(v: Option<f64>, reference: Option<f64>) -> String {
    match (v, reference) {
        (Some(v), Some(r)) if r > 0.0 => format!("{:.2}x", v / r),
        _ => "–".to_string(),
    }
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = support::output_with_timeout(
        Command::new(program).args(args).stdin(Stdio::null()),
        Duration::from_secs(10),
    )
    .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(text)
}

fn first_line_with(program: &str, args: &[&str], needle: &str) -> String {
    command_line(program, args)
        .and_then(|t| {
            t.lines()
                .find(|l| l.to_lowercase().contains(needle))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| format!("{program}: ?"))
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn utc_now() -> String {
    command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("unix time {secs}")
        })
}

fn machine() -> String {
    let uname = command_line("uname", &["-srm"])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into());
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    format!("{uname}, {cpu}, nproc {nproc}")
}

fn versions(ctx: &Ctx) -> Vec<(String, String)> {
    let ct = ctx.ct_bin.display().to_string();
    vec![
        (
            "connect-tunnel".into(),
            first_line_with(&ct, &["--version"], "connect-tunnel"),
        ),
        ("rustc".into(), first_line_with("rustc", &["-V"], "rustc")),
        ("Squid".into(), first_line_with("squid", &["-v"], "version")),
        (
            "socat".into(),
            first_line_with("socat", &["-V"], "socat version"),
        ),
        (
            "ncat".into(),
            first_line_with("ncat", &["--version"], "version"),
        ),
        (
            "proxytunnel".into(),
            first_line_with("proxytunnel", &["-V"], "proxytunnel"),
        ),
        (
            "corkscrew".into(),
            first_line_with("corkscrew", &[], "corkscrew"),
        ),
        ("httptunnel".into(), first_line_with("htc", &["-V"], "htc")),
        (
            "OpenSSL".into(),
            first_line_with("openssl", &["version"], "openssl"),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Targets (issue 4)
// ---------------------------------------------------------------------------------------------

struct Verdict {
    target: String,
    ct: String,
    peer: String,
    margin: String,
    met: Option<bool>,
}

/// The best value among `peers` (lower or higher is better), with the tool's name.
fn best(
    rows: &[(&Tool, Row)],
    tls: Option<bool>,
    f: fn(&Row) -> Option<f64>,
    lower: bool,
) -> Option<(f64, &'static str)> {
    rows.iter()
        .filter(|(t, _)| t.class == Class::Peer && tls.map_or(true, |x| t.tls == x))
        .filter_map(|(t, r)| Some((f(r)?, t.name)))
        .min_by(|a, b| {
            if lower {
                a.0.total_cmp(&b.0)
            } else {
                b.0.total_cmp(&a.0)
            }
        })
}

fn verdicts(rows: &[(&Tool, Row)]) -> Vec<Verdict> {
    let ct = |tls: bool| {
        rows.iter()
            .find(|(t, _)| t.class == Class::Ct && t.tls == tls)
            .map(|(_, r)| *r)
    };
    let mut out = Vec::new();
    let pct = |x: f64| format!("{:+.1} %", x * 100.0);
    for tls in [false, true] {
        let Some(c) = ct(tls) else { continue };
        let which = if tls { "TLS to proxy" } else { "plain" };
        // Lower is better: met when ct <= limit * best.
        let mut lower_is_better =
            |name: String, f: fn(&Row) -> Option<f64>, limit: f64, unit: &str, d: usize| {
                let b = best(rows, Some(tls), f, true);
                let v = f(&c);
                let (peer, margin, met) = match (v, b) {
                    (Some(v), Some((bv, bn))) => (
                        format!("{bv:.d$} {unit} ({bn})"),
                        format!(
                            "{} vs best peer{}",
                            pct(v / bv - 1.0),
                            if limit > 1.0 {
                                format!(" (limit {})", pct(limit - 1.0))
                            } else {
                                String::new()
                            }
                        ),
                        Some(v <= limit * bv),
                    ),
                    _ => ("–".into(), "–".into(), None),
                };
                out.push(Verdict {
                    target: name,
                    ct: format!("{} {unit}", fmt(v, d)),
                    peer,
                    margin,
                    met,
                });
            };
        lower_is_better(
            format!("set-up no worse than the best peer ({which})"),
            |r| r.setup_ms,
            1.0,
            "ms",
            3,
        );
        lower_is_better(
            format!("RTT p50 within 5 % of the best peer ({which})"),
            |r| r.p50,
            1.05,
            "µs",
            1,
        );
        for (label, f) in [
            (
                "to sink",
                (|r: &Row| r.sink_mibs) as fn(&Row) -> Option<f64>,
            ),
            ("echo, each way", |r: &Row| r.echo_mibs),
        ] {
            let b = best(rows, Some(tls), f, false);
            let v = f(&c);
            let (peer, margin, met) = match (v, b) {
                (Some(v), Some((bv, bn))) => (
                    format!("{bv:.0} MiB/s ({bn})"),
                    format!("{:.1} % of best peer (limit 95 %)", v / bv * 100.0),
                    Some(v >= 0.95 * bv),
                ),
                _ => ("–".into(), "–".into(), None),
            };
            out.push(Verdict {
                target: format!("throughput ≥ 95 % of the best peer, {label} ({which})"),
                ct: format!("{} MiB/s", fmt(v, 0)),
                peer,
                margin,
                met,
            });
        }
        let b = best(rows, Some(tls), |r| r.rss_mib, true);
        let v = c.rss_mib;
        let (peer, margin, met) = match (v, b) {
            (Some(v), Some((bv, bn))) => (
                format!("{bv:.1} MiB ({bn})"),
                format!("{:+.1} MiB ({})", v - bv, pct(v / bv - 1.0)),
                Some(v <= bv),
            ),
            _ => ("–".into(), "–".into(), None),
        };
        out.push(Verdict {
            target: format!("peak RSS ≤ the smallest peer's ({which})"),
            ct: format!("{} MiB", fmt(v, 1)),
            peer,
            margin,
            met,
        });
    }
    // p99 at least 10x lower than httptunnel's (each configuration).
    for (t, h) in rows.iter().filter(|(t, _)| t.kind.is_httptunnel()) {
        let Some(c) = ct(false) else { break };
        let (margin, met) = match (c.p99, h.p99) {
            (Some(v), Some(hv)) => (
                format!("{:.1}x lower (limit 10x)", hv / v),
                Some(hv >= 10.0 * v),
            ),
            _ => ("–".into(), None),
        };
        out.push(Verdict {
            target: format!("RTT p99 ≥ 10x lower than {}'s (plain)", t.name),
            ct: format!("{} µs", fmt(c.p99, 1)),
            peer: format!("{} µs", fmt(h.p99, 1)),
            margin,
            met,
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Profiling connect-tunnel when a target is missed
// ---------------------------------------------------------------------------------------------

/// `perf record` of connect-tunnel moving `bytes` to the sink (plain and TLS), flat profile by
/// shared object and symbol; or a note saying why not.
fn profile(ctx: &Ctx, plan: &Plan, pat: &'static [u8], watch: &Watch) -> String {
    let perf_ok = Command::new("perf")
        .args(["stat", "-e", "instructions", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !perf_ok {
        return "`perf stat -e instructions true` fails here: no profile taken (run \
                `valgrind --tool=callgrind` on connect-tunnel by hand)."
            .into();
    }
    let mut text = String::new();
    for (tool, dest) in [
        ("ct", Dest::Sink),
        ("ct-tls", Dest::Sink),
        ("ct", Dest::Echo),
    ] {
        let tool = TOOLS.iter().find(|t| t.key == tool).expect("tool");
        let data = ctx.dir.join(format!("perf-{}-{dest:?}.data", tool.key));
        let prefix = [
            "perf".to_string(),
            "record".into(),
            "-q".into(),
            "-F".into(),
            "1999".into(),
            "-o".into(),
            data.display().to_string(),
            "--".into(),
        ];
        let res = bulk_run(
            ctx,
            tool,
            dest,
            plan.bulk_bytes / 4,
            plan,
            pat,
            watch,
            &prefix,
        );
        let directions = if dest == Dest::Echo { 2.0 } else { 1.0 };
        let relayed_gib = directions * (plan.bulk_bytes / 4) as f64 / GIB;
        let _ = writeln!(
            text,
            "\n{} → {} ({} MiB{}): {}\n",
            tool.name,
            if dest == Dest::Sink { "sink" } else { "echo" },
            plan.bulk_bytes / MIB / 4,
            if dest == Dest::Echo { " each way" } else { "" },
            match &res {
                Ok(s) => format!(
                    "{:.0} MiB/s under perf, {} CPU s/GiB relayed",
                    (plan.bulk_bytes / 4) as f64 / MIB as f64 / s.secs,
                    fmt(s.usage.map(|u| u.cpu_secs / relayed_gib), 3)
                ),
                Err(e) => format!("failed: {e}"),
            }
        );
        if res.is_err() {
            continue;
        }
        let report = command_line(
            "perf",
            &[
                "report",
                "-i",
                &data.display().to_string(),
                "--stdio",
                "--no-children",
                "--sort",
                "dso,sym",
                "--percent-limit",
                "2",
            ],
        )
        .unwrap_or_default();
        text.push_str("```text\n");
        for line in report
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .take(14)
        {
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text.push_str("```\n");
    }
    text
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = Plan::from_env(full);
    let started = Instant::now();
    let load_at_start = load_average();
    let date = utc_now();

    let only: Option<Vec<String>> = std::env::var("PEERS_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let mut skipped: Vec<String> = Vec::new();
    let tools: Vec<&Tool> = TOOLS
        .iter()
        .filter(|t| plan.full || matches!(t.kind, Kind::InProcess | Kind::CtPlain | Kind::CtTls))
        .filter(|t| {
            only.as_ref().map_or(true, |o| {
                o.iter().any(|k| k == t.key) || matches!(t.class, Class::Ct | Class::Alt)
            })
        })
        .filter(|t| t.class != Class::Alt || std::env::var_os("PEERS_CT_ALT_BIN").is_some())
        .filter(|t| match t.program {
            Some(p) if find_program(p).is_none() => {
                skipped.push(format!("{}: `{p}` is not installed", t.name));
                false
            }
            _ => true,
        })
        .collect();

    let echo = start_server(Dest::Echo).expect("start the echo server");
    let sink = start_server(Dest::Sink).expect("start the sink server");
    let hts_echo_port = free_port();
    let hts_sink_port = free_port();
    let mut options = SquidOptions::new(&[echo.port(), sink.port()]);
    // GNU httptunnel's client sends POST and GET for http://127.0.0.1:HTS/…: allowed (with the
    // same credentials) to the two hts ports only.
    options.extra_config = vec![
        format!("acl hts_ports port {hts_echo_port} {hts_sink_port}"),
        "acl hts_dst dst 127.0.0.1".into(),
        "acl hts_methods method GET POST PUT".into(),
        "http_access allow authed hts_ports hts_dst hts_methods".into(),
    ];
    let Some(squid) = Squid::start_with(options) else {
        eprintln!("peers: SKIP: Squid is not installed (scripts/bench-peers.sh installs it)");
        return;
    };
    // A second account with a password every tool can pass: the suite's has a space, which
    // proxytunnel cuts off (it sends `camera:s3cret`). basic_ncsa_auth rereads its file when it
    // changes.
    let (user, password) = ("bench".to_string(), "peers-Bench-42".to_string());
    {
        let out = support::run_checked("openssl", &["passwd", "-apr1", password.as_str()]);
        let line = format!("{user}:{}\n", String::from_utf8_lossy(&out.stdout).trim());
        let path = squid.dir.join("passwd");
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
    }
    let tmp = TempDir::new("peers");
    let corkscrew_auth = tmp.join("corkscrew.auth");
    support::write_file(&corkscrew_auth, format!("{user}:{password}\n"), 0o600);
    let ct_alt_bin = std::env::var_os("PEERS_CT_ALT_BIN").map(PathBuf::from);
    let ct_bin = std::env::var_os("PEERS_CT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_connect-tunnel")));
    let ctx = Ctx {
        echo,
        sink,
        squid_plain: squid.plain_port,
        squid_tls: squid.tls_port,
        ca_pem: squid.ca.ca_pem_path.clone(),
        user,
        password,
        ct_bin,
        ct_alt_bin,
        corkscrew_auth,
        hts_echo: hts_echo_port,
        hts_sink: hts_sink_port,
        dir: tmp.path.clone(),
    };

    let watch = Watch {
        squid: squid.pid(),
        ticks_per_sec: ticks_per_sec(),
    };
    let pat: &'static [u8] = Box::leak(pattern().into_boxed_slice());

    eprintln!(
        "peers: {} tools, squid http_port {} https_port {}, echo {echo}, sink {sink}",
        tools.len(),
        squid.plain_port,
        squid.tls_port
    );
    let mut results: Vec<Results> = tools.iter().map(|_| Results::default()).collect();

    // 1. Set-up, interleaved round-robin.
    let t = Instant::now();
    for round in 0..plan.setup_warmup + plan.setups {
        for (i, tool) in tools.iter().enumerate() {
            match setup_once(&ctx, tool) {
                Ok(d) if round >= plan.setup_warmup => {
                    results[i].setups.push(d.as_secs_f64() * 1e3)
                }
                Ok(_) => {}
                Err(e) => results[i].setup_errors.push(e),
            }
        }
    }
    eprintln!("peers: set-up done in {:.1} s", t.elapsed().as_secs_f64());

    // 2. Round trips, rounds with a rotating tool order. Every sample also goes to a CSV.
    let mut samples = String::from("tool,run,index,micros\n");
    let t = Instant::now();
    for round in 0..plan.rtt_rounds {
        for k in 0..tools.len() {
            let i = (k + round) % tools.len();
            match rtt_run(&ctx, tools[i], &plan) {
                Ok(mut v) => {
                    for (n, us) in v.iter().enumerate() {
                        let _ = writeln!(samples, "{},{round},{n},{us:.1}", tools[i].key);
                    }
                    v.sort_by(f64::total_cmp);
                    results[i].rtt_runs.push((
                        percentile(&v, 0.50),
                        percentile(&v, 0.99),
                        *v.last().unwrap_or(&0.0),
                    ));
                }
                Err(e) => results[i].rtt_errors.push(e),
            }
        }
    }
    eprintln!(
        "peers: round trips done in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // 3. + 4. Bulk, rounds with a rotating tool order; GNU time around every tool.
    let t = Instant::now();
    for round in 0..plan.bulk_rounds {
        for k in 0..tools.len() {
            let i = (k + round) % tools.len();
            for dest in [Dest::Sink, Dest::Echo] {
                let tt = Instant::now();
                match bulk_run(
                    &ctx,
                    tools[i],
                    dest,
                    plan.bulk_bytes,
                    &plan,
                    pat,
                    &watch,
                    &[],
                ) {
                    Ok(s) => {
                        eprintln!(
                            "peers: bulk {:?} {} round {round}: {:.0} MiB/s ({:.1} s)",
                            dest,
                            tools[i].key,
                            plan.bulk_bytes as f64 / MIB as f64 / s.secs,
                            tt.elapsed().as_secs_f64()
                        );
                        match dest {
                            Dest::Sink => results[i].sink.push(s),
                            Dest::Echo => results[i].echo.push(s),
                        }
                    }
                    Err(e) => {
                        eprintln!(
                            "peers: bulk {dest:?} {} round {round}: {e} ({:.1} s)",
                            tools[i].key,
                            tt.elapsed().as_secs_f64()
                        );
                        match dest {
                            Dest::Sink => results[i].sink_failed.push(e.clone()),
                            Dest::Echo => results[i].echo_failed.push(e.clone()),
                        }
                        results[i].bulk_errors.push(format!("{dest:?}: {e}"));
                    }
                }
            }
        }
    }
    eprintln!("peers: bulk done in {:.1} s", t.elapsed().as_secs_f64());

    let rows: Vec<(&Tool, Row)> = tools
        .iter()
        .zip(&results)
        .map(|(t, r)| (*t, r.row(plan.bulk_bytes)))
        .collect();
    let notes: Vec<(String, String)> = results
        .iter()
        .map(|r| {
            (
                failure_note(&r.sink_failed, r.sink.len()),
                failure_note(&r.echo_failed, r.echo.len()),
            )
        })
        .collect();
    let verdicts = verdicts(&rows);
    let missed = verdicts.iter().any(|v| v.met == Some(false));
    let profile_text = if plan.full && missed && std::env::var_os("PEERS_NO_PROFILE").is_none() {
        let t = Instant::now();
        let p = profile(&ctx, &plan, pat, &watch);
        eprintln!("peers: profile done in {:.1} s", t.elapsed().as_secs_f64());
        Some(p)
    } else {
        None
    };

    // Each distinct message once per tool, with how often it came.
    let mut errors: Vec<String> = Vec::new();
    for (tool, r) in tools.iter().zip(&results) {
        let mut seen: Vec<(String, usize)> = Vec::new();
        for e in r
            .setup_errors
            .iter()
            .chain(&r.rtt_errors)
            .chain(&r.bulk_errors)
        {
            match seen.iter_mut().find(|(m, _)| m == e) {
                Some((_, n)) => *n += 1,
                None => seen.push((e.clone(), 1)),
            }
        }
        for (m, n) in seen {
            let times = if n > 1 {
                format!(" (×{n})")
            } else {
                String::new()
            };
            errors.push(format!("{}: {m}{times}", tool.name));
        }
    }

    let md = report(ReportInput {
        plan: &plan,
        ctx: &ctx,
        rows: &rows,
        notes: &notes,
        verdicts: &verdicts,
        date,
        load_at_start,
        load_at_end: load_average(),
        elapsed: started.elapsed(),
        skipped: &skipped,
        errors: &errors,
        profile: profile_text.as_deref(),
    });
    println!("{md}");
    drop(squid);
    if plan.full {
        let out = std::env::var_os("PEERS_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/bench/peers.md"));
        if let Some(dir) = out.parent() {
            let _ = fs::create_dir_all(dir);
        }
        fs::write(&out, &md).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
        let csv = out.with_file_name("peers-rtt-samples.csv");
        fs::write(&csv, &samples).unwrap_or_else(|e| panic!("write {}: {e}", csv.display()));
        eprintln!("peers: wrote {}", out.display());
    } else {
        // The smoke pass checks the harness: every path must have worked.
        assert!(errors.is_empty(), "smoke pass failed: {errors:?}");
        for (tool, r) in tools.iter().zip(&results) {
            assert!(
                !r.setups.is_empty()
                    && !r.rtt_runs.is_empty()
                    && !r.sink.is_empty()
                    && !r.echo.is_empty(),
                "smoke pass: {} measured nothing",
                tool.name
            );
        }
        eprintln!("peers: smoke pass ok (run scripts/bench-peers.sh for figures)");
    }
}

struct ReportInput<'a> {
    plan: &'a Plan,
    ctx: &'a Ctx,
    rows: &'a [(&'a Tool, Row)],
    /// Per row: failure notes for the to-sink and echo columns.
    notes: &'a [(String, String)],
    verdicts: &'a [Verdict],
    date: String,
    load_at_start: String,
    load_at_end: String,
    elapsed: Duration,
    skipped: &'a [String],
    errors: &'a [String],
    profile: Option<&'a str>,
}

fn report(inp: ReportInput<'_>) -> String {
    let plan = inp.plan;
    let mut md = String::new();
    let reference = |tls: bool| {
        inp.rows
            .iter()
            .find(|(t, _)| t.class == Class::Ct && t.tls == tls)
            .map(|(_, r)| *r)
            .unwrap_or_default()
    };
    let _ = writeln!(
        md,
        "Run on {} — {}, load average {} at start, {} at end; the run took {:.0} s.\n",
        inp.date,
        machine(),
        inp.load_at_start,
        inp.load_at_end,
        inp.elapsed.as_secs_f64()
    );
    let _ = writeln!(md, "Versions:");
    for (what, v) in versions(inp.ctx) {
        let _ = writeln!(md, "- {what}: `{v}`");
    }
    let _ = writeln!(
        md,
        "\nThe `vs ct` columns divide a tool's figure by connect-tunnel's from this run: \
         `http://` for the plain rows, `https://` for the TLS row. Below 1.00x is lower (for \
         time and memory: better; for throughput: worse).\n"
    );
    let _ = writeln!(md, "### Set-up and 160-byte round trips\n");
    let _ = writeln!(
        md,
        "| Tool | Set-up median (ms) | vs ct | RTT p50 (µs) | RTT p99 (µs) | RTT max (µs) | p50 vs ct | p99 vs ct |\n|---|--:|--:|--:|--:|--:|--:|--:|"
    );
    for (tool, r) in inp.rows {
        let c = reference(tool.tls);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            tool.name,
            fmt(r.setup_ms, 3),
            ratio(r.setup_ms, c.setup_ms),
            fmt(r.p50, 1),
            fmt(r.p99, 1),
            fmt(r.max, 0),
            ratio(r.p50, c.p50),
            ratio(r.p99, c.p99),
        );
    }
    let _ = writeln!(
        md,
        "\nSet-up: {} spawns per tool (after {} warm-up), interleaved round-robin, median. Round \
         trips: {} runs per tool of {} packets in a row (after {} warm-up), each run's \
         nearest-rank p50 / p99 / max, median over the runs.\n",
        plan.setups, plan.setup_warmup, plan.rtt_rounds, plan.packets, plan.packet_warmup
    );
    let _ = writeln!(md, "### Bulk: {} MiB per run\n", plan.bulk_bytes / MIB);
    let _ = writeln!(
        md,
        "| Tool | To sink (MiB/s) | vs ct | Echo, each way (MiB/s) | vs ct | CPU to sink (s/GiB) | CPU echo (s/GiB) | CPU vs ct | Peak RSS (MiB) | RSS vs ct | Squid CPU to sink (s/GiB) |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for ((tool, r), note) in inp.rows.iter().zip(inp.notes) {
        let c = reference(tool.tls);
        let sink_cell = format!("{}{}", fmt(r.sink_mibs, 0), note.0);
        let echo_cell = format!("{}{}", fmt(r.echo_mibs, 0), note.1);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            tool.name,
            sink_cell,
            ratio(r.sink_mibs, c.sink_mibs),
            echo_cell,
            ratio(r.echo_mibs, c.echo_mibs),
            fmt(r.cpu_sink, 3),
            fmt(r.cpu_echo, 3),
            ratio(r.cpu_sink, c.cpu_sink),
            fmt(r.rss_mib, 1),
            ratio(r.rss_mib, c.rss_mib),
            fmt(r.squid_cpu_sink, 3),
        );
    }
    let _ = writeln!(
        md,
        "\n{} runs per tool and direction, interleaved, median. Echo moves the amount each way \
         at once; its CPU figure is per GiB relayed (both directions counted). CPU is user + \
         sys of the tool process (GNU time, `wait4`), set-up included; for httptunnel it adds \
         the `hts` server's. Peak RSS: the largest `ru_maxrss` of the tool over all its bulk \
         runs (`htc` only for httptunnel). Squid's CPU comes from /proc (10 ms ticks).\n",
        plan.bulk_rounds
    );
    let _ = writeln!(md, "### Targets (issue 4)\n");
    let _ = writeln!(
        md,
        "| Target | connect-tunnel | Best peer | Margin | Met |\n|---|--:|--:|--:|:-:|"
    );
    for v in inp.verdicts {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            v.target,
            v.ct,
            v.peer,
            v.margin,
            match v.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "–",
            }
        );
    }
    if let Some(p) = inp.profile {
        let _ = writeln!(
            md,
            "\n### Profile of connect-tunnel (a target was missed)\n\n`perf record -F 1999` \
             around the tool, flat profile by shared object and symbol (entries ≥ 2 %)."
        );
        md.push_str(p);
    }
    if !inp.skipped.is_empty() || !inp.errors.is_empty() {
        let _ = writeln!(md, "\nNot measured / failed:\n");
        for s in inp.skipped.iter().chain(inp.errors) {
            let _ = writeln!(md, "- {s}");
        }
    }
    md
}
