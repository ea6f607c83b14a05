//! The camera: streams RTP at real-time pace through the proxy, keeping the tunnel up with
//! `Connector::run_reconnecting` and `Backoff`, and writes what happened to a result file.
//!
//! - **Source.** G.711-sized audio (a 184-byte RTP packet every 20 ms) and video at 25 frames/s
//!   (2,500-byte frames, a 10,000-byte key frame every second, split into packets of at most
//!   1,000 bytes): about 0.65 Mbit/s. Each packet is stamped with its capture time (the
//!   moment the schedule says it exists), so the server's latency includes any wait in the
//!   camera.
//! - **Latency bound.** A packet whose turn comes more than `--max-delay-ms` after its capture
//!   time is dropped, not sent (counted as `dropped_late`); packets captured while there is no
//!   tunnel are dropped as `dropped_offline`. Nothing is ever queued without bound.
//! - **Dead tunnel.** The server sends a receiver report every 250 ms. No report for
//!   `--dead-after` seconds, or a write that makes no progress for as long, ends the tunnel
//!   (with a TCP reset, so nothing queued on the dead connection is delivered later); the
//!   handler returns the error and `run_reconnecting` reconnects after a backoff delay.
//! - **`Retry::Never`.** When `run_reconnecting` returns an error that retrying cannot fix
//!   (407, 403, certificate), the camera records it and stops trying. With
//!   `--credentials-file` it re-reads that file every 250 ms and starts again, once, when its
//!   content changes: a rotated password reaches the camera without the proxy being hammered
//!   with the old one.
//! - **End.** After `--duration` seconds it sends an RTCP BYE and waits for the server's final
//!   receipt (over the tunnel, so it also works when the server is on another machine), which
//!   goes into the result file with everything the camera counted.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connect_tunnel::{
    Backoff, Config, Connector, Credentials, Proxy, Retry, StreamHandler, Target, Tunnel,
};

use connect_tunnel::media::RECOMMENDED_SEND_BUFFER;

use crate::args::Args;
use crate::wire::{self, FrameReader, Media, Packet};

const AUDIO_SSRC: u32 = 0x0A0D_10A0;
const VIDEO_SSRC: u32 = 0x0F1D_E000;
/// First sequence numbers near the top of the 16-bit range: every run wraps.
const AUDIO_FIRST: u16 = 65_000;
const VIDEO_FIRST: u16 = 64_000;
const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
const AUDIO_PACKET: usize = 12 + 8 + 160 + 4;
const VIDEO_INTERVAL: Duration = Duration::from_millis(40);
const VIDEO_FRAME: usize = 2_500;
const VIDEO_KEY_FRAME: usize = 10_000;
const VIDEO_KEY_EVERY: u64 = 25;
const VIDEO_CHUNK: usize = 1_000;
/// How long the camera waits for the final receipt after its BYE.
const FINAL_WAIT: Duration = Duration::from_secs(5);

pub const HELP: &str = "\
hil camera: stream RTP through a proxy with connect-tunnel, reconnecting; write a result file

    hil camera --proxy URL --target HOST:PORT --duration SECS --result FILE [OPTIONS]

    --proxy URL               http://[user:pass@]host:port or https://...
    --credentials-file FILE   'user:password' (one line); read at start and re-read after a
                              Retry::Never error (replaces credentials in the URL)
    --target HOST:PORT        the media server, as the proxy reaches it
    --duration SECS           stream length [10]
    --scenario NAME           recorded in the result and sent to the server [adhoc]
    --result FILE             where to write the result (key value lines) [-: stdout]
    --proxy-cacert FILE       CA for an https:// proxy;  --proxy-insecure: no verification
    --connect-timeout SECS    deadline for TCP + TLS + CONNECT [3]
    --dead-after SECS         no receiver report (or no write progress) this long: tunnel dead [3]
    --max-delay-ms MS         drop packets whose turn comes later than this [150]
    --backoff-initial-ms MS   first reconnect delay [250];  --backoff-max-ms MS: cap [2000]
    --sndbuf BYTES            SO_SNDBUF of the tunnel [4096: the library's
                              media::RECOMMENDED_SEND_BUFFER]
    --user-timeout-ms MS      TCP_USER_TIMEOUT [10000] (Linux counts a receiver's closed
                              window against it: keep it above the longest stall a slow
                              link may cause; --dead-after detects dead tunnels sooner)
";

/// The media schedule: which packet is due when.
struct Source {
    start: Instant,
    start_ns: u64,
    audio_index: u64,
    video_frame: u64,
    audio_seq: u16,
    video_seq: u16,
    queue: std::collections::VecDeque<(Instant, Media)>,
}

impl Source {
    fn new() -> Source {
        Source {
            start: Instant::now(),
            start_ns: wire::now_ns(),
            audio_index: 0,
            video_frame: 0,
            audio_seq: AUDIO_FIRST,
            video_seq: VIDEO_FIRST,
            queue: Default::default(),
        }
    }

    fn refill(&mut self) {
        if !self.queue.is_empty() {
            return;
        }
        let audio_due = self.start + AUDIO_INTERVAL * self.audio_index as u32;
        let video_due = self.start + VIDEO_INTERVAL * self.video_frame as u32;
        if audio_due <= video_due {
            self.queue.push_back((
                audio_due,
                Media {
                    ssrc: AUDIO_SSRC,
                    payload_type: 0,
                    marker: false,
                    sequence: self.audio_seq,
                    timestamp: (self.audio_index * 160) as u32,
                    len: AUDIO_PACKET,
                },
            ));
            self.audio_seq = self.audio_seq.wrapping_add(1);
            self.audio_index += 1;
        } else {
            let size = if self.video_frame.is_multiple_of(VIDEO_KEY_EVERY) {
                VIDEO_KEY_FRAME
            } else {
                VIDEO_FRAME
            };
            let mut left = size;
            while left > 0 {
                let chunk = left.min(VIDEO_CHUNK);
                left -= chunk;
                self.queue.push_back((
                    video_due,
                    Media {
                        ssrc: VIDEO_SSRC,
                        payload_type: 96,
                        marker: left == 0,
                        sequence: self.video_seq,
                        timestamp: (self.video_frame * 3600) as u32,
                        len: 12 + wire::CHECK_OVERHEAD + chunk,
                    },
                ));
                self.video_seq = self.video_seq.wrapping_add(1);
            }
            self.video_frame += 1;
        }
    }

    fn peek_due(&mut self) -> Instant {
        self.refill();
        self.queue.front().map_or(self.start, |(due, _)| *due)
    }

    fn pop(&mut self) -> (Instant, Media) {
        self.refill();
        self.queue.pop_front().expect("refilled")
    }

    /// The capture time of a packet due at `due`, on the Unix clock.
    fn capture_ns(&self, due: Instant) -> u64 {
        self.start_ns + due.duration_since(self.start).as_nanos() as u64
    }
}

#[derive(Default, Debug)]
struct Counts {
    generated: u64,
    written: u64,
    written_bytes: u64,
    dropped_late: u64,
    dropped_offline: u64,
    /// Sum and maximum of how late written packets were sent, in microseconds.
    late_sum_us: u64,
    late_max_us: u64,
}

struct Settings {
    duration: Duration,
    dead_after: Duration,
    max_delay: Duration,
}

/// The stream handler `run_reconnecting` calls for every tunnel it opens.
struct Camera {
    settings: Settings,
    scenario: String,
    session: u64,
    source: Source,
    end: Instant,
    /// Whether the media clock runs (from the first open tunnel on).
    started: bool,
    /// When the watchdog stops everything, in ms after `base`.
    hard_end_ms: Arc<std::sync::atomic::AtomicU64>,
    base: Instant,
    stop: Arc<AtomicBool>,
    conn_no: u32,
    counts: Counts,
    handshakes: Vec<Duration>,
    events: Vec<(u64, &'static str, String)>,
    last_rr: Option<String>,
    final_receipt: Option<String>,
    out: Vec<u8>,
    frames: FrameReader,
}

/// A socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO`: EAGAIN). `TimedOut` (ETIMEDOUT) is not one:
/// that is the kernel giving up on the connection (`TCP_USER_TIMEOUT`, keepalive).
fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Camera {
    fn event(&mut self, kind: &'static str, detail: String) {
        log::info!(target: "hil::camera", "{kind} {detail}");
        self.events.push((wire::now_ns(), kind, detail));
    }

    /// Writes `self.out` completely. A write that makes no progress for `dead_after` (the
    /// socket's send timeout lets us look every 100 ms) means the tunnel is dead.
    fn write_out(&mut self, tunnel: &mut Tunnel) -> io::Result<()> {
        let mut off = 0;
        let mut progress = Instant::now();
        while off < self.out.len() {
            match tunnel.write(&self.out[off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    off += n;
                    progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    if progress.elapsed() >= self.settings.dead_after {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "no write progress for {:?}: tunnel dead",
                                self.settings.dead_after
                            ),
                        ));
                    }
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(io::Error::other("stopped"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads for up to `wait` and handles the server's frames; `Ok(true)` if a report came.
    fn read_reports(&mut self, tunnel: &mut Tunnel, wait: Duration) -> io::Result<bool> {
        tunnel
            .get_ref()
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match self.frames.fill(tunnel) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the tunnel was closed by the far end",
                ))
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e),
        }
        let mut got = false;
        while let Some(frame) = self.frames.next_frame() {
            if let Packet::App(name, text) = wire::parse(frame) {
                if &name == b"RCPT" {
                    got = true;
                    if wire::num(text, "final") == Some(1) {
                        self.final_receipt = Some(text.to_owned());
                    } else {
                        self.last_rr = Some(text.to_owned());
                    }
                }
            }
        }
        Ok(got)
    }

    /// Waits until `due` (at most 50 ms), reading the server's reports meanwhile; `Ok(true)` if
    /// one came. Socket timeouts have the kernel's tick as granularity (often 10 ms, which would
    /// show as latency), so the last stretch is a precise sleep after a non-blocking look.
    fn wait_until(&mut self, tunnel: &mut Tunnel, due: Instant) -> io::Result<bool> {
        const COARSE: Duration = Duration::from_millis(20);
        let wait = due
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        if wait > COARSE + Duration::from_millis(5) {
            return self.read_reports(tunnel, wait - COARSE);
        }
        let mut got = false;
        if readable(tunnel)? {
            got = self.read_reports(tunnel, Duration::from_millis(1))?;
        }
        let left = due.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            std::thread::sleep(left);
        }
        Ok(got)
    }

    /// Ends the tunnel with a reset: what is still queued on it must never arrive later.
    fn abort(tunnel: &Tunnel) {
        let _ = socket2::SockRef::from(tunnel.get_ref()).set_linger(Some(Duration::ZERO));
    }

    fn stream(&mut self, tunnel: &mut Tunnel) -> io::Result<()> {
        tunnel
            .get_ref()
            .set_write_timeout(Some(Duration::from_millis(100)))?;
        self.frames = FrameReader::default();
        // What was captured while there was no tunnel is gone.
        let now = Instant::now();
        while self.source.peek_due() + self.settings.max_delay < now
            && self.source.peek_due() < self.end
        {
            self.source.pop();
            self.counts.generated += 1;
            self.counts.dropped_offline += 1;
        }
        self.out.clear();
        let hello = format!(
            "session={:016x} conn={} scenario={} start_ns={} audio_ssrc={AUDIO_SSRC:08x} \
             audio_first={AUDIO_FIRST} video_ssrc={VIDEO_SSRC:08x} video_first={VIDEO_FIRST}",
            self.session, self.conn_no, self.scenario, self.source.start_ns
        );
        wire::push_app_frame(&mut self.out, AUDIO_SSRC, b"HELO", &hello);
        self.write_out(tunnel)?;
        let mut last_report = Instant::now();
        let mut first_report = true;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= self.end {
                return self.finish(tunnel);
            }
            let due = self.source.peek_due().min(self.end);
            if self.wait_until(tunnel, due)? {
                last_report = Instant::now();
                if first_report {
                    first_report = false;
                    let conn = self.conn_no;
                    self.event("first_report", format!("conn={conn}"));
                }
            }
            if last_report.elapsed() >= self.settings.dead_after {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no receiver report for {:?}: tunnel dead",
                        self.settings.dead_after
                    ),
                ));
            }
            while self.source.peek_due() <= Instant::now() && self.source.peek_due() < self.end {
                let (due, media) = self.source.pop();
                self.counts.generated += 1;
                let late = due.elapsed();
                if late > self.settings.max_delay {
                    self.counts.dropped_late += 1;
                    continue;
                }
                let late_us = late.as_micros() as u64;
                self.counts.late_sum_us += late_us;
                self.counts.late_max_us = self.counts.late_max_us.max(late_us);
                self.out.clear();
                wire::push_media_frame(&mut self.out, &media, self.source.capture_ns(due));
                self.write_out(tunnel)?;
                self.counts.written += 1;
                self.counts.written_bytes += media.len as u64;
            }
        }
    }

    /// BYE, then the server's final receipt, then half-close.
    fn finish(&mut self, tunnel: &mut Tunnel) -> io::Result<()> {
        self.out.clear();
        wire::push_bye_frame(&mut self.out, AUDIO_SSRC);
        self.write_out(tunnel)?;
        let deadline = Instant::now() + FINAL_WAIT;
        while self.final_receipt.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stop.load(Ordering::Relaxed) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no final receipt from the media server",
                ));
            }
            self.read_reports(tunnel, left.min(Duration::from_millis(100)))?;
        }
        let _ = tunnel.shutdown_write();
        Ok(())
    }
}

impl StreamHandler for Camera {
    fn handle(&mut self, tunnel: &mut Tunnel) -> io::Result<()> {
        self.conn_no += 1;
        if !self.started {
            // The stream starts with the first tunnel, as a camera's session would: media
            // captured while the first handshake runs would only measure the handshake.
            self.started = true;
            self.source = Source::new();
            self.end = self.source.start + self.settings.duration;
            let hard_end = self.end + FINAL_WAIT + Duration::from_secs(3);
            self.hard_end_ms.store(
                hard_end.duration_since(self.base).as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        self.handshakes.push(tunnel.handshake_time());
        let (conn, ms) = (self.conn_no, tunnel.handshake_time().as_secs_f64() * 1e3);
        self.event("open", format!("conn={conn} handshake_ms={ms:.2}"));
        let result = self.stream(tunnel);
        if let Err(e) = &result {
            Camera::abort(tunnel);
            self.event("tunnel_lost", format!("conn={conn} {e}"));
        }
        result
    }
}

/// Whether a read would return at once (data, end of stream or an error): a non-blocking peek.
fn readable(tunnel: &Tunnel) -> io::Result<bool> {
    let socket = tunnel.get_ref();
    socket.set_nonblocking(true)?;
    let result = socket.peek(&mut [0u8; 1]);
    socket.set_nonblocking(false)?;
    Ok(match result {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    })
}

fn read_credentials(path: &PathBuf) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        return wire::now_ns() ^ u64::from(std::process::id()) << 32;
    }
    u64::from_le_bytes(b)
}

pub fn main(mut args: Args) -> Result<bool, String> {
    let proxy_url = args.required("--proxy")?;
    let target_text = args.required("--target")?;
    let creds_file = args.value("--credentials-file").map(PathBuf::from);
    let duration = args.secs("--duration", 10.0)?;
    let scenario = args.value("--scenario").unwrap_or_else(|| "adhoc".into());
    let result_path = args.value("--result").unwrap_or_else(|| "-".into());
    let cacert = args.value("--proxy-cacert");
    let insecure = args.flag("--proxy-insecure");
    let connect_timeout = args.secs("--connect-timeout", 3.0)?;
    let dead_after = args.secs("--dead-after", 3.0)?;
    let max_delay = args.millis("--max-delay-ms", 150)?;
    let backoff = Backoff {
        initial: args.millis("--backoff-initial-ms", 250)?,
        max: args.millis("--backoff-max-ms", 2000)?,
        jitter: 0.5,
    };
    let sndbuf: usize = args.number("--sndbuf", RECOMMENDED_SEND_BUFFER)?;
    let user_timeout = args.millis("--user-timeout-ms", 10_000)?;
    args.finish()?;
    if scenario.contains(char::is_whitespace) || scenario.contains('=') {
        return Err("--scenario: no spaces or '='".into());
    }

    let proxy = Proxy::parse(&proxy_url).map_err(|e| format!("--proxy: {e}"))?;
    let target = Target::parse(&target_text).map_err(|e| format!("--target: {e}"))?;
    let mut config = Config::default()
        .connect_timeout(connect_timeout)
        .send_buffer_size(Some(sndbuf))
        .user_timeout(Some(user_timeout))
        .keepalive(Some(Duration::from_secs(5)));
    if let Some(ca) = cacert {
        config = config.proxy_ca_file(ca);
    }
    if insecure {
        config = config.proxy_verify(false);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let source = Source::new();
    let base = source.start;
    let end = source.start + duration;
    // Every wait is bounded: whatever happens, the camera stops a little after the end (moved
    // when the first tunnel opens and the stream starts).
    let hard_end_ms = Arc::new(std::sync::atomic::AtomicU64::new(
        (duration + FINAL_WAIT + Duration::from_secs(3)).as_millis() as u64,
    ));
    {
        let (stop, hard_end_ms) = (stop.clone(), hard_end_ms.clone());
        std::thread::spawn(move || loop {
            if base.elapsed().as_millis() as u64 >= hard_end_ms.load(Ordering::Relaxed) {
                stop.store(true, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        });
    }
    let mut camera = Camera {
        settings: Settings {
            duration,
            dead_after,
            max_delay,
        },
        scenario: scenario.clone(),
        session: random_u64(),
        source,
        end,
        started: false,
        hard_end_ms,
        base,
        stop: stop.clone(),
        conn_no: 0,
        counts: Counts::default(),
        handshakes: Vec::new(),
        events: Vec::new(),
        last_rr: None,
        final_receipt: None,
        out: Vec::with_capacity(16 * 1024),
        frames: FrameReader::default(),
    };
    log::info!(target: "hil::camera", "session {:016x}, {scenario}, {:?} via {} to {target_text}",
        camera.session, camera.settings.duration, proxy_url_without_password(&proxy));

    let mut never = 0u32;
    let mut creds_loads = 0u32;
    let mut credentials = None;
    loop {
        if let Some(path) = &creds_file {
            let text = read_credentials(path)?;
            credentials = Some(text);
            creds_loads += 1;
        }
        let mut p = proxy.clone();
        if let Some(text) = &credentials {
            let c = Credentials::parse(text).map_err(|e| format!("credentials file: {e}"))?;
            p = p.with_credentials(Some(c));
        }
        let connector = Connector::new(p, config.clone()).map_err(|e| e.to_string())?;
        match connector.run_reconnecting(&target, &backoff, &stop, &mut camera) {
            Ok(()) => break,
            Err(e) => {
                let class = match e.retry() {
                    Retry::Never => "never",
                    Retry::Later => "later",
                };
                if class == "never" {
                    never += 1;
                }
                camera.event("gave_up", format!("retry={class} {e}"));
                match (&creds_file, &e) {
                    (Some(path), _) if e.retry() == Retry::Never => {
                        // Not retried: wait for a change of configuration.
                        let rejected = credentials.clone().unwrap_or_default();
                        let mut changed = false;
                        while !stop.load(Ordering::Relaxed) && Instant::now() < camera.end {
                            if read_credentials(path).is_ok_and(|t| t != rejected) {
                                changed = true;
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(250));
                        }
                        if !changed {
                            break;
                        }
                        camera.event("credentials_changed", format!("file={}", path.display()));
                    }
                    _ => break,
                }
            }
        }
    }

    let report = result_text(&camera, never, creds_loads);
    if result_path == "-" {
        print!("{report}");
    } else {
        std::fs::write(&result_path, &report).map_err(|e| format!("write {result_path}: {e}"))?;
    }
    let ok = camera.final_receipt.is_some();
    log::info!(target: "hil::camera", "done: {} connections, final receipt {}", camera.conn_no,
        if ok { "received" } else { "MISSING" });
    Ok(ok)
}

fn proxy_url_without_password(p: &Proxy) -> String {
    format!("{:?}://{}:{}", p.scheme(), p.host(), p.port()).to_lowercase()
}

/// The result file: `key value` lines, then `event NS KIND DETAIL` lines in time order.
fn result_text(c: &Camera, never: u32, creds_loads: u32) -> String {
    let mut lib = crate::logger::lib_events();
    let mut retry_later = 0u32;
    let mut refused_503 = 0u32;
    let mut reconnect_waits = 0u32;
    let mut events: Vec<(u64, String, String)> = c
        .events
        .iter()
        .map(|(t, k, d)| (*t, k.to_string(), d.clone()))
        .collect();
    for e in lib.drain(..) {
        let kind = if e.message.contains("; retrying in") {
            retry_later += 1;
            if e.message.contains("status 503") {
                refused_503 += 1;
            }
            "attempt_failed"
        } else if e.message.contains("; reconnecting in") {
            reconnect_waits += 1;
            "reconnect_wait"
        } else if e.message.contains("; not retrying") {
            "not_retrying"
        } else {
            "library_warning"
        };
        events.push((e.at_ns, kind.to_string(), e.message));
    }
    events.sort_by_key(|e| e.0);
    let hs: Vec<f64> = c.handshakes.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let mut s = String::new();
    let mut kv = |k: &str, v: String| {
        s.push_str(k);
        s.push(' ');
        s.push_str(&v);
        s.push('\n');
    };
    kv("scenario", c.scenario.clone());
    kv("session", format!("{:016x}", c.session));
    kv("start_ns", c.source.start_ns.to_string());
    kv("end_ns", wire::now_ns().to_string());
    kv(
        "duration_s",
        format!("{:.3}", c.settings.duration.as_secs_f64()),
    );
    kv("connections", c.conn_no.to_string());
    kv(
        "handshake_first_ms",
        hs.first().map_or("-".into(), |v| format!("{v:.2}")),
    );
    kv(
        "handshake_max_ms",
        hs.iter()
            .cloned()
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
            .map_or("-".into(), |v| format!("{v:.2}")),
    );
    kv("generated", c.counts.generated.to_string());
    kv("written", c.counts.written.to_string());
    kv("written_bytes", c.counts.written_bytes.to_string());
    kv("dropped_late", c.counts.dropped_late.to_string());
    kv("dropped_offline", c.counts.dropped_offline.to_string());
    kv(
        "send_late_mean_ms",
        format!(
            "{:.3}",
            c.counts.late_sum_us as f64 / c.counts.written.max(1) as f64 / 1e3
        ),
    );
    kv(
        "send_late_max_ms",
        format!("{:.3}", c.counts.late_max_us as f64 / 1e3),
    );
    kv("never", never.to_string());
    kv("credential_loads", creds_loads.to_string());
    kv("attempts_failed", retry_later.to_string());
    kv("refused_503", refused_503.to_string());
    kv("tunnels_lost", reconnect_waits.to_string());
    kv(
        "final_receipt",
        u8::from(c.final_receipt.is_some()).to_string(),
    );
    kv(
        "receipt",
        c.final_receipt
            .clone()
            .or_else(|| c.last_rr.clone())
            .unwrap_or_default(),
    );
    for (t, kind, detail) in events {
        s.push_str(&format!("event {t} {kind} {}\n", detail.replace('\n', " ")));
    }
    s
}
