//! The media server: accepts the camera's connections (through the proxy), checks every packet
//! and answers with receiver reports and, after the camera's BYE, a final receipt.
//!
//! A camera session (its random id, sent in `HELO` on every connection) spans all its
//! connections, so a stream that reconnects is checked as one: sequence numbers must keep
//! increasing across connections; a gap is a loss, recorded as the capture-time interval it
//! falls in. Data still arriving on an older connection of the session after a newer one has
//! started is discarded as `stale` and never counted as delivered (a real media server would do
//! the same; the camera resets dead connections, so there should be little of it).
//!
//! The final receipt (`RCPT` with `final=1`) carries: `conns rx bytes missing corrupt ooo dup
//! stale junk neg_latency p50_us p99_us max_us`, `lr=` the loss ranges (ms after the stream's
//! start, merged when closer than 300 ms), and `tl=` a timeline of 250 ms buckets of capture
//! time: `audio/all/max-latency-ms` per bucket.
//!
//! Control (`--control ADDR`): `listen off` closes the listening socket and resets every
//! connection (the server is "down": a proxy in front answers 503), `listen on` opens it again,
//! `status`, `sessions`, `report SESSION`.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::wire::{self, FrameReader, Packet};

pub const HELP: &str = "\
hil server: receive camera streams, check them, report

    hil server --listen ADDR [--control ADDR] [--report-dir DIR] [--idle-timeout SECS]

    --listen ADDR        where the proxy connects (e.g. 0.0.0.0:5004)
    --control ADDR       command port (listen on|off, status, sessions, report SESSION);
                         keep it on 127.0.0.1 or a lab-only address
    --report-dir DIR     write each session's final receipt to DIR/SCENARIO-SESSION.txt
    --idle-timeout SECS  drop a connection silent this long [10]
";

const BUCKET_MS: u64 = 250;
const MAX_BUCKETS: usize = 4 * 3600 * 4;
const MAX_LOSS_RANGES: usize = 64;
const MERGE_NS: u64 = 300_000_000;
const MAX_SESSIONS: usize = 64;
const RR_INTERVAL: Duration = Duration::from_millis(250);

struct Ssrc {
    expected: u64,
    last_send_ns: u64,
}

#[derive(Default)]
struct Session {
    id: u64,
    scenario: String,
    start_ns: u64,
    current_conn: u32,
    connections: u32,
    audio_ssrc: u32,
    ssrcs: HashMap<u32, Ssrc>,
    rx: u64,
    bytes: u64,
    missing: u64,
    corrupt: u64,
    ooo: u64,
    dup: u64,
    stale: u64,
    junk: u64,
    neg_latency: u64,
    lat_us: Vec<u32>,
    loss_ranges: Vec<(u64, u64)>,
    buckets: Vec<[u32; 3]>,
    created: Option<Instant>,
}

/// The 64-bit sequence number nearest to `expected` whose low 16 bits are `seq`.
fn extend(expected: u64, seq: u16) -> u64 {
    let cand = (expected & !0xffff) | u64::from(seq);
    [cand.wrapping_sub(0x10000), cand, cand + 0x10000]
        .into_iter()
        .min_by_key(|c| c.abs_diff(expected))
        .unwrap_or(cand)
}

impl Session {
    fn add_loss(&mut self, from_ns: u64, to_ns: u64) {
        let full = self.loss_ranges.len() >= MAX_LOSS_RANGES;
        if let Some(last) = self.loss_ranges.last_mut() {
            if from_ns <= last.1 + MERGE_NS || full {
                last.1 = last.1.max(to_ns);
                return;
            }
        }
        self.loss_ranges.push((from_ns, to_ns));
    }

    fn media(&mut self, m: wire::Received, len: usize, conn: u32) {
        if conn < self.current_conn {
            self.stale += 1;
            return;
        }
        let start_ns = self.start_ns;
        let st = self.ssrcs.entry(m.ssrc).or_insert(Ssrc {
            expected: (1 << 32) | u64::from(m.sequence),
            last_send_ns: start_ns,
        });
        let ext = extend(st.expected, m.sequence);
        let mut gap = None;
        if ext >= st.expected {
            if ext > st.expected {
                gap = Some((ext - st.expected, st.last_send_ns, m.send_ns));
            }
            st.expected = ext + 1;
            st.last_send_ns = m.send_ns;
        } else if ext + 1 == st.expected {
            self.dup += 1;
            return;
        } else {
            self.ooo += 1;
            return;
        }
        if let Some((n, from, to)) = gap {
            self.missing += n;
            self.add_loss(from, to);
        }
        self.rx += 1;
        self.bytes += len as u64;
        let now = wire::now_ns();
        let lat_us = if now >= m.send_ns {
            ((now - m.send_ns) / 1000).min(u64::from(u32::MAX)) as u32
        } else {
            self.neg_latency += 1;
            0
        };
        self.lat_us.push(lat_us);
        let idx = (m.send_ns.saturating_sub(self.start_ns) / (BUCKET_MS * 1_000_000)) as usize;
        if idx < MAX_BUCKETS {
            if self.buckets.len() <= idx {
                self.buckets.resize(idx + 1, [0; 3]);
            }
            let b = &mut self.buckets[idx];
            if m.ssrc == self.audio_ssrc {
                b[0] += 1;
            }
            b[1] += 1;
            b[2] = b[2].max(lat_us);
        }
    }

    fn brief(&self, conn: u32) -> String {
        format!(
            "conn={conn} rx={} missing={} corrupt={} ooo={}",
            self.rx, self.missing, self.corrupt, self.ooo
        )
    }

    fn full(&self) -> String {
        let mut lat = self.lat_us.clone();
        lat.sort_unstable();
        let pct = |p: f64| -> u32 {
            if lat.is_empty() {
                0
            } else {
                lat[((lat.len() - 1) as f64 * p).round() as usize]
            }
        };
        let ms = |ns: u64| ns.saturating_sub(self.start_ns) / 1_000_000;
        let lr: Vec<String> = self
            .loss_ranges
            .iter()
            .map(|(a, b)| format!("{}-{}", ms(*a), ms(*b)))
            .collect();
        let tl: Vec<String> = self
            .buckets
            .iter()
            .map(|b| format!("{}/{}/{}", b[0], b[1], b[2] / 1000))
            .collect();
        format!(
            "final=1 session={:016x} scenario={} conns={} rx={} bytes={} missing={} corrupt={} \
             ooo={} dup={} stale={} junk={} neg_latency={} p50_us={} p99_us={} max_us={} lr={} \
             tl={BUCKET_MS}:{}",
            self.id,
            self.scenario,
            self.connections,
            self.rx,
            self.bytes,
            self.missing,
            self.corrupt,
            self.ooo,
            self.dup,
            self.stale,
            self.junk,
            self.neg_latency,
            pct(0.5),
            pct(0.99),
            lat.last().copied().unwrap_or(0),
            if lr.is_empty() {
                "-".into()
            } else {
                lr.join(",")
            },
            tl.join(",")
        )
    }
}

#[derive(Default)]
struct Shared {
    sessions: Mutex<HashMap<u64, Arc<Mutex<Session>>>>,
    want_listen: AtomicBool,
    listening: AtomicBool,
    generation: AtomicU64,
    live: AtomicU64,
    report_dir: Option<String>,
}

impl Shared {
    fn session(&self, id: u64) -> Option<Arc<Mutex<Session>>> {
        self.sessions.lock().ok()?.get(&id).cloned()
    }

    fn hello(&self, text: &str) -> Option<(Arc<Mutex<Session>>, u32)> {
        let id = u64::from_str_radix(wire::field(text, "session")?, 16).ok()?;
        let conn = wire::num(text, "conn")? as u32;
        let mut sessions = self.sessions.lock().ok()?;
        if !sessions.contains_key(&id) && sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.lock().map(|s| s.created).unwrap_or(None))
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                sessions.remove(&k);
            }
        }
        let s = sessions
            .entry(id)
            .or_insert_with(|| {
                let start_ns = wire::num(text, "start_ns").unwrap_or_else(wire::now_ns);
                let mut s = Session {
                    id,
                    scenario: wire::field(text, "scenario").unwrap_or("-").to_owned(),
                    start_ns,
                    created: Some(Instant::now()),
                    ..Session::default()
                };
                for (ssrc_key, first_key) in
                    [("audio_ssrc", "audio_first"), ("video_ssrc", "video_first")]
                {
                    let ssrc =
                        wire::field(text, ssrc_key).and_then(|v| u32::from_str_radix(v, 16).ok());
                    let first = wire::num(text, first_key);
                    if let (Some(ssrc), Some(first)) = (ssrc, first) {
                        s.ssrcs.insert(
                            ssrc,
                            Ssrc {
                                expected: (1 << 32) | (first & 0xffff),
                                last_send_ns: start_ns,
                            },
                        );
                        if ssrc_key == "audio_ssrc" {
                            s.audio_ssrc = ssrc;
                        }
                    }
                }
                Arc::new(Mutex::new(s))
            })
            .clone();
        drop(sessions);
        if let Ok(mut g) = s.lock() {
            g.connections += 1;
            g.current_conn = g.current_conn.max(conn);
        }
        Some((s, conn))
    }
}

fn send_app(stream: &mut TcpStream, out: &mut Vec<u8>, text: &str) -> io::Result<()> {
    out.clear();
    wire::push_app_frame(out, 0x5E4E_0001, b"RCPT", text);
    stream.write_all(out)
}

fn connection(shared: Arc<Shared>, mut stream: TcpStream, idle: Duration) {
    let generation = shared.generation.load(Ordering::SeqCst);
    let peer = stream.peer_addr().map_or("?".into(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut frames = FrameReader::default();
    let mut out = Vec::with_capacity(8192);
    let mut session: Option<(Arc<Mutex<Session>>, u32)> = None;
    let mut last_rx = Instant::now();
    let mut last_rr = Instant::now();
    let end = loop {
        if shared.generation.load(Ordering::SeqCst) != generation {
            // `listen off`: go down hard.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            break "reset (listen off)".to_string();
        }
        match frames.fill(&mut stream) {
            Ok(0) => break "closed by peer".into(),
            Ok(_) => last_rx = Instant::now(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => break format!("error: {e}"),
        }
        let mut reply: Option<String> = None;
        while let Some(frame) = frames.next_frame() {
            let len = frame.len();
            match wire::parse(frame) {
                Packet::App(name, text) if &name == b"HELO" => {
                    session = shared.hello(text);
                    if let Some((s, conn)) = &session {
                        if let Ok(s) = s.lock() {
                            log::info!(target: "hil::server", "{peer}: session {:016x} ({}) connection {conn}",
                                s.id, s.scenario);
                            reply = Some(s.brief(*conn));
                        }
                    }
                }
                Packet::Media(m) => {
                    if let Some((s, conn)) = &session {
                        if let Ok(mut s) = s.lock() {
                            s.media(m, len, *conn);
                        }
                    }
                }
                Packet::Corrupt => {
                    if let Some((s, _)) = &session {
                        if let Ok(mut s) = s.lock() {
                            s.corrupt += 1;
                        }
                    }
                }
                Packet::Bye => {
                    if let Some((s, _)) = &session {
                        if let Ok(s) = s.lock() {
                            let text = s.full();
                            log::info!(target: "hil::server", "session {:016x} ({}) ended: {}",
                                s.id, s.scenario, text.split(" lr=").next().unwrap_or(""));
                            if let Some(dir) = &shared.report_dir {
                                let path = format!("{dir}/{}-{:016x}.txt", s.scenario, s.id);
                                let _ = std::fs::write(path, format!("{text}\n"));
                            }
                            reply = Some(text);
                        }
                    }
                }
                Packet::App(..) | Packet::Junk => {
                    if let Some((s, _)) = &session {
                        if let Ok(mut s) = s.lock() {
                            s.junk += 1;
                        }
                    }
                }
            }
            if let Some(text) = reply.take() {
                if send_app(&mut stream, &mut out, &text).is_err() {
                    break;
                }
                last_rr = Instant::now();
            }
        }
        if last_rr.elapsed() >= RR_INTERVAL {
            if let Some((s, conn)) = &session {
                let text = s.lock().map(|s| s.brief(*conn)).unwrap_or_default();
                if let Err(e) = send_app(&mut stream, &mut out, &text) {
                    break format!("report: {e}");
                }
            }
            last_rr = Instant::now();
        }
        if last_rx.elapsed() >= idle {
            break format!("idle for {idle:?}");
        }
    };
    log::info!(target: "hil::server", "{peer}: connection ended: {end}");
    shared.live.fetch_sub(1, Ordering::SeqCst);
}

fn accept_loop(shared: Arc<Shared>, addr: String, idle: Duration) {
    let mut listener: Option<TcpListener> = None;
    let mut last_bind_error = Instant::now() - Duration::from_secs(60);
    loop {
        let want = shared.want_listen.load(Ordering::SeqCst);
        if want && listener.is_none() {
            match TcpListener::bind(&addr) {
                Ok(l) => {
                    let _ = l.set_nonblocking(true);
                    log::info!(target: "hil::server", "listening on {addr}");
                    listener = Some(l);
                    shared.listening.store(true, Ordering::SeqCst);
                }
                Err(e) => {
                    if last_bind_error.elapsed() > Duration::from_secs(5) {
                        log::warn!(target: "hil::server", "bind {addr}: {e}; retrying");
                        last_bind_error = Instant::now();
                    }
                }
            }
        } else if !want && listener.is_some() {
            listener = None;
            shared.generation.fetch_add(1, Ordering::SeqCst);
            shared.listening.store(false, Ordering::SeqCst);
            log::info!(target: "hil::server", "stopped listening; connections reset");
        }
        match &listener {
            Some(l) => match l.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    shared.live.fetch_add(1, Ordering::SeqCst);
                    let shared = shared.clone();
                    std::thread::spawn(move || connection(shared, stream, idle));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => {
                    log::warn!(target: "hil::server", "accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            },
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn control(shared: &Shared, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["listen", state @ ("on" | "off")] => {
            let on = *state == "on";
            shared.want_listen.store(on, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(5);
            while shared.listening.load(Ordering::SeqCst) != on {
                if Instant::now() >= deadline {
                    return format!("error: listen {state} not done within 5 s (see the log)");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            format!("ok listen {state}")
        }
        ["status"] => format!(
            "ok listening={} connections={} sessions={}",
            u8::from(shared.listening.load(Ordering::SeqCst)),
            shared.live.load(Ordering::SeqCst),
            shared.sessions.lock().map(|s| s.len()).unwrap_or(0)
        ),
        ["sessions"] => {
            let list: Vec<String> = shared
                .sessions
                .lock()
                .map(|m| {
                    m.values()
                        .filter_map(|s| {
                            s.lock()
                                .ok()
                                .map(|s| format!("{:016x}:{}", s.id, s.scenario))
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("ok {}", list.join(" "))
        }
        ["report", id] => match u64::from_str_radix(id, 16)
            .ok()
            .and_then(|id| shared.session(id))
        {
            Some(s) => format!("ok {}", s.lock().map(|s| s.full()).unwrap_or_default()),
            None => format!("error: no session {id}"),
        },
        _ => "error: commands: listen on|off, status, sessions, report SESSION".into(),
    }
}

pub fn main(mut args: Args) -> Result<bool, String> {
    let listen = args.required("--listen")?;
    let control_addr = args.value("--control");
    let report_dir = args.value("--report-dir");
    let idle = args.secs("--idle-timeout", 10.0)?;
    args.finish()?;
    if let Some(dir) = &report_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
    }
    // Bind once up front so a wrong address is an error, not a retry loop.
    drop(TcpListener::bind(&listen).map_err(|e| format!("--listen {listen}: {e}"))?);
    let shared = Arc::new(Shared {
        report_dir,
        ..Shared::default()
    });
    shared.want_listen.store(true, Ordering::SeqCst);
    if let Some(addr) = control_addr {
        let s = shared.clone();
        let bound = crate::ctl::serve(&addr, Arc::new(move |line: &str| control(&s, line)))?;
        log::info!(target: "hil::server", "control on {bound}");
    }
    let s = shared.clone();
    let acceptor = std::thread::spawn(move || accept_loop(s, listen, idle));
    let _ = acceptor.join();
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_wraps_both_ways() {
        let e = (1u64 << 32) | 65_535;
        assert_eq!(extend(e, 65_535), e);
        assert_eq!(extend(e, 0), e + 1);
        assert_eq!(extend(e + 1, 65_535), e);
        assert_eq!(extend(e, 1000), e + 1001);
    }

    #[test]
    fn gaps_duplicates_and_reordering() {
        let mut s = Session {
            start_ns: 0,
            audio_ssrc: 1,
            ..Session::default()
        };
        let m = |seq: u16, t: u64| wire::Received {
            ssrc: 1,
            payload_type: 0,
            sequence: seq,
            send_ns: t,
        };
        s.current_conn = 1;
        for (seq, t) in [(65_534, 1), (65_535, 2), (2, 5_000_000_000), (2, 6), (1, 7)] {
            s.media(m(seq, t), 100, 1);
        }
        assert_eq!((s.rx, s.missing, s.dup, s.ooo), (3, 2, 1, 1));
        assert_eq!(s.loss_ranges, vec![(2, 5_000_000_000)]);
        s.current_conn = 2;
        s.media(m(3, 8), 100, 1);
        assert_eq!(s.stale, 1);
        assert!(s.full().contains("lr=0-5000"));
    }
}
