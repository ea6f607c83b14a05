//! The impairment relay: a TCP forwarder between the camera and the proxy whose link can be
//! made worse while a stream runs.
//!
//! Each accepted connection is forwarded to `--upstream`; each direction is a reader thread and
//! a writer thread with a bounded queue between them (16 KiB of data due to be sent; data held
//! for a delay is "on the wire" and bounded separately, 4 MiB), so a slow link pushes back on the
//! sender as a real one does instead of buffering without bound (the accepted sockets' receive
//! buffer is kept small too: `--rcvbuf`).
//!
//! Impairments, switched at any time over the control port (`hil ctl ADDR COMMAND`):
//!
//! | command            | effect |
//! |--------------------|--------|
//! | `delay MS [JITTER]`| every chunk is held MS ± JITTER ms (uniform), order kept |
//! | `rate KBIT`        | each direction limited to KBIT kbit/s (token bucket, 1500-byte burst); 0 = off |
//! | `cut`              | nothing moves either way, new connections are accepted and held: a black hole |
//! | `restore`          | ends a cut; held data and connections go on |
//! | `reset`            | every current connection is reset (RST) on both sides |
//! | `clear`            | delay 0, rate off, no cut |
//! | `status`           | the current settings and connection count |

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::args::Args;

pub const HELP: &str = "\
hil relay: a TCP relay with switchable delay, jitter, bandwidth limit, cut and reset

    hil relay --listen ADDR --upstream ADDR --control ADDR [--rcvbuf BYTES]

    Commands on the control port: delay MS [JITTER_MS], rate KBIT (0: off), cut, restore,
    reset, clear, status.
";

const QUEUE_BYTES: usize = 16 * 1024;
const CHUNK: usize = 4 * 1024;
/// Bound on bytes held for a delay (the link's "propagation"), whatever their release time.
const MAX_HELD: usize = 4 * 1024 * 1024;
const TICK: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Impairment {
    delay_ms: u64,
    jitter_ms: u64,
    rate_kbit: u64,
    cut: bool,
}

struct Shared {
    imp: Mutex<Impairment>,
    changed: Condvar,
    /// Bumped by `reset`: connections from an older epoch reset themselves.
    epoch: AtomicU64,
    live: AtomicU64,
    total: AtomicU64,
    rng: Mutex<u64>,
}

impl Shared {
    fn get(&self) -> Impairment {
        self.imp.lock().map(|g| *g).unwrap_or_default()
    }

    /// Waits (checking every `TICK`) while there is a cut; true if the connection should go on.
    ///
    /// After a cut, a connection whose end reset it meanwhile (the camera gave up on it) is
    /// dropped: in a real black hole nothing that was in flight arrives after the cut.
    fn wait_uncut(&self, conn: &Conn) -> bool {
        let mut waited = false;
        loop {
            if !conn.ok(self) {
                return false;
            }
            let Ok(g) = self.imp.lock() else { return false };
            if !g.cut {
                break;
            }
            waited = true;
            let _ = self.changed.wait_timeout(g, TICK);
        }
        if waited && conn.reset_by_peer() {
            conn.dead.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// A value in [0, 1).
    fn random(&self) -> f64 {
        let mut s = self.rng.lock().map(|g| *g).unwrap_or(0x9E37_79B9_7F4A_7C15);
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        if let Ok(mut g) = self.rng.lock() {
            *g = s;
        }
        (s >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One relayed connection's shared fate.
struct Conn {
    epoch: u64,
    dead: AtomicBool,
    /// Its sockets, to look for a pending reset after a cut.
    probes: Mutex<Vec<TcpStream>>,
}

impl Conn {
    fn reset_by_peer(&self) -> bool {
        self.probes.lock().is_ok_and(|p| {
            p.iter()
                .any(|s| matches!(s.take_error(), Ok(Some(_)) | Err(_)))
        })
    }

    fn ok(&self, shared: &Shared) -> bool {
        !self.dead.load(Ordering::SeqCst) && shared.epoch.load(Ordering::SeqCst) == self.epoch
    }
    fn was_reset(&self, shared: &Shared) -> bool {
        shared.epoch.load(Ordering::SeqCst) != self.epoch
    }
}

enum Item {
    Data(Instant, Vec<u8>),
    Eof,
}

struct Queue {
    items: Mutex<(VecDeque<Item>, usize)>,
    cond: Condvar,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn reader(shared: Arc<Shared>, conn: Arc<Conn>, mut src: TcpStream, q: Arc<Queue>) {
    let _ = src.set_read_timeout(Some(TICK));
    let mut buf = vec![0u8; CHUNK];
    let mut last_release = Instant::now();
    loop {
        if !shared.wait_uncut(&conn) {
            break;
        }
        // Bounded queue: wait for room. Bytes still being delayed are on the wire, not in a
        // queue: only bytes whose release time has come count against the bound.
        {
            let Ok(mut g) = q.items.lock() else { break };
            while g.1 >= MAX_HELD || ready_bytes(&g.0) >= QUEUE_BYTES {
                if !conn.ok(&shared) {
                    return;
                }
                g = match q.cond.wait_timeout(g, TICK) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                };
            }
        }
        let n = match src.read(&mut buf) {
            Ok(0) => {
                push(&q, Item::Eof);
                break;
            }
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => {
                conn.dead.store(true, Ordering::SeqCst);
                break;
            }
        };
        let imp = shared.get();
        let jitter = if imp.jitter_ms > 0 {
            (shared.random() * 2.0 - 1.0) * imp.jitter_ms as f64
        } else {
            0.0
        };
        let hold = (imp.delay_ms as f64 + jitter).max(0.0);
        let release = (Instant::now() + Duration::from_secs_f64(hold / 1000.0)).max(last_release);
        last_release = release;
        push(&q, Item::Data(release, buf[..n].to_vec()));
    }
}

fn ready_bytes(items: &VecDeque<Item>) -> usize {
    let now = Instant::now();
    items
        .iter()
        .map(|i| match i {
            Item::Data(release, d) if *release <= now => d.len(),
            _ => 0,
        })
        .sum()
}

fn push(q: &Queue, item: Item) {
    if let Ok(mut g) = q.items.lock() {
        if let Item::Data(_, d) = &item {
            g.1 += d.len();
        }
        g.0.push_back(item);
        q.cond.notify_all();
    }
}

fn writer(shared: Arc<Shared>, conn: Arc<Conn>, mut dst: TcpStream, q: Arc<Queue>) {
    let _ = dst.set_write_timeout(Some(TICK));
    // Token bucket in bytes.
    let mut tokens = 0.0f64;
    let mut refilled = Instant::now();
    'outer: loop {
        let item = {
            let Ok(mut g) = q.items.lock() else { break };
            loop {
                if !conn.ok(&shared) {
                    break 'outer;
                }
                if let Some(item) = g.0.pop_front() {
                    break item;
                }
                g = match q.cond.wait_timeout(g, TICK) {
                    Ok((g, _)) => g,
                    Err(_) => break 'outer,
                };
            }
        };
        let (release, data) = match item {
            Item::Eof => {
                let _ = dst.shutdown(Shutdown::Write);
                break;
            }
            Item::Data(r, d) => (r, d),
        };
        if let Ok(mut g) = q.items.lock() {
            g.1 -= data.len();
            q.cond.notify_all();
        }
        while Instant::now() < release {
            if !conn.ok(&shared) {
                break 'outer;
            }
            std::thread::sleep((release - Instant::now()).min(TICK));
        }
        let mut off = 0;
        while off < data.len() {
            if !shared.wait_uncut(&conn) {
                break 'outer;
            }
            let imp = shared.get();
            let mut piece = data.len() - off;
            if imp.rate_kbit > 0 {
                let rate = imp.rate_kbit as f64 * 1000.0 / 8.0; // bytes per second
                let now = Instant::now();
                tokens = (tokens + now.duration_since(refilled).as_secs_f64() * rate).min(1500.0);
                refilled = now;
                piece = piece.min(1500);
                if tokens < piece as f64 {
                    let wait = (piece as f64 - tokens) / rate;
                    std::thread::sleep(Duration::from_secs_f64(wait).min(TICK));
                    continue;
                }
            }
            match dst.write(&data[off..off + piece]) {
                Ok(0) => {
                    conn.dead.store(true, Ordering::SeqCst);
                    break 'outer;
                }
                Ok(n) => {
                    off += n;
                    if imp.rate_kbit > 0 {
                        tokens -= n as f64;
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(_) => {
                    conn.dead.store(true, Ordering::SeqCst);
                    break 'outer;
                }
            }
        }
    }
}

fn relay_connection(shared: Arc<Shared>, down: TcpStream, upstream: SocketAddr) {
    let conn = Arc::new(Conn {
        epoch: shared.epoch.load(Ordering::SeqCst),
        dead: AtomicBool::new(false),
        probes: Mutex::new(down.try_clone().into_iter().collect()),
    });
    shared.live.fetch_add(1, Ordering::SeqCst);
    shared.total.fetch_add(1, Ordering::SeqCst);
    let peer = down.peer_addr().map_or("?".into(), |a| a.to_string());
    // A connection accepted during a cut waits in the black hole.
    if shared.wait_uncut(&conn) {
        match TcpStream::connect_timeout(&upstream, Duration::from_secs(3)) {
            Ok(up) => {
                if let (Ok(mut p), Ok(u)) = (conn.probes.lock(), up.try_clone()) {
                    p.push(u);
                }
                let _ = up.set_nodelay(true);
                let _ = down.set_nodelay(true);
                let threads = [
                    (down.try_clone(), up.try_clone()),
                    (up.try_clone(), down.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                .flat_map(|(src, dst)| {
                    let q = Arc::new(Queue {
                        items: Mutex::new((VecDeque::new(), 0)),
                        cond: Condvar::new(),
                    });
                    let (s1, c1, q1) = (shared.clone(), conn.clone(), q.clone());
                    let (s2, c2) = (shared.clone(), conn.clone());
                    [
                        std::thread::spawn(move || reader(s1, c1, src, q1)),
                        std::thread::spawn(move || writer(s2, c2, dst, q)),
                    ]
                })
                .collect::<Vec<_>>();
                for t in threads {
                    let _ = t.join();
                }
                if conn.was_reset(&shared) {
                    for s in [&down, &up] {
                        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                    }
                    log::info!(target: "hil::relay", "{peer}: reset");
                }
            }
            Err(e) => log::info!(target: "hil::relay", "{peer}: upstream {upstream}: {e}"),
        }
    } else if conn.was_reset(&shared) {
        let _ = socket2::SockRef::from(&down).set_linger(Some(Duration::ZERO));
    }
    shared.live.fetch_sub(1, Ordering::SeqCst);
}

fn control(shared: &Shared, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("error: {s}: not a number"))
    };
    let mut imp = shared.get();
    let result = match words.as_slice() {
        ["delay", ms] => num(ms).map(|ms| {
            imp.delay_ms = ms;
            imp.jitter_ms = 0;
        }),
        ["delay", ms, jitter] => num(ms).and_then(|ms| {
            let j = num(jitter)?;
            imp.delay_ms = ms;
            imp.jitter_ms = j.min(ms);
            Ok(())
        }),
        ["rate", kbit] => num(kbit).map(|k| imp.rate_kbit = k),
        ["cut"] => {
            imp.cut = true;
            Ok(())
        }
        ["restore"] => {
            imp.cut = false;
            Ok(())
        }
        ["clear"] => {
            imp = Impairment::default();
            Ok(())
        }
        ["reset"] => {
            shared.epoch.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        ["status"] => Ok(()),
        _ => Err(
            "error: commands: delay MS [JITTER], rate KBIT, cut, restore, reset, clear, status"
                .into(),
        ),
    };
    if let Err(e) = result {
        return e;
    }
    if let Ok(mut g) = shared.imp.lock() {
        *g = imp;
    }
    shared.changed.notify_all();
    log::info!(target: "hil::relay", "{line}: now {imp:?}");
    format!(
        "ok delay_ms={} jitter_ms={} rate_kbit={} cut={} connections={} accepted={}",
        imp.delay_ms,
        imp.jitter_ms,
        imp.rate_kbit,
        u8::from(imp.cut),
        shared.live.load(Ordering::SeqCst),
        shared.total.load(Ordering::SeqCst)
    )
}

pub fn main(mut args: Args) -> Result<bool, String> {
    let listen = args.required("--listen")?;
    let upstream_text = args.required("--upstream")?;
    let control_addr = args.required("--control")?;
    let rcvbuf: usize = args.number("--rcvbuf", 16 * 1024)?;
    args.finish()?;
    let upstream = upstream_text
        .to_socket_addrs()
        .map_err(|e| format!("--upstream {upstream_text}: {e}"))?
        .next()
        .ok_or("--upstream: no address")?;
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("--listen {listen}: expected IP:PORT"))?;
    // A small receive buffer on the accepted sockets (inherited from the listener), so a rate
    // limit pushes back on the camera instead of filling a multi-megabyte kernel buffer.
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(|e| e.to_string())?;
    socket.set_reuse_address(true).map_err(|e| e.to_string())?;
    socket
        .set_recv_buffer_size(rcvbuf)
        .map_err(|e| e.to_string())?;
    socket
        .bind(&addr.into())
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    socket.listen(16).map_err(|e| e.to_string())?;
    let listener: TcpListener = socket.into();
    let seed = crate::wire::now_ns() | 1;
    let shared = Arc::new(Shared {
        imp: Mutex::new(Impairment::default()),
        changed: Condvar::new(),
        epoch: AtomicU64::new(0),
        live: AtomicU64::new(0),
        total: AtomicU64::new(0),
        rng: Mutex::new(seed),
    });
    let s = shared.clone();
    let bound = crate::ctl::serve(&control_addr, Arc::new(move |line: &str| control(&s, line)))?;
    log::info!(target: "hil::relay", "relaying {listen} -> {upstream}, control on {bound}");
    for down in listener.incoming() {
        match down {
            Ok(down) => {
                let s = shared.clone();
                std::thread::spawn(move || relay_connection(s, down, upstream));
            }
            Err(e) => {
                log::warn!(target: "hil::relay", "accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(true)
}
