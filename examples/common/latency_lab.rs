//! The latency-bound experiment: real-time media through connect-tunnel's [`MediaSender`], a
//! link that becomes slower than the media for a few seconds, the reference reverse proxy, and
//! a receiver that checks and timestamps every packet.
//!
//! ```text
//! source --send--> MediaSender --> tunnel socket --> ThrottledRelay --> reverse proxy --> receiver
//!  every 20 ms:    queue, bound,    SO_SNDBUF         token bucket,      CONNECT, Basic    CRC-32, order
//!  audio 184 B key drop policy                        rate schedule      mapping table     per SSRC,
//!  2 video 1200 B                                     small SO_RCVBUF                      latency
//! ```
//!
//! The relay stands for the slow link: it reads from the client no faster than its token
//! bucket allows and keeps only a small receive buffer, so the backlog builds on the sending
//! host (in the sender's queue and in the kernel send buffer), as it does behind a slow uplink.
//! `tests/media_latency_bound.rs` asserts correctness on short runs;
//! `examples/latency_bound.rs` prints the figures in `docs/MEDIA.md`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use connect_tunnel::media::{
    DropPolicy, MediaSender, PacketReader, SenderConfig, SenderStats, DEFAULT_KERNEL_SEND_BUFFER,
};
use connect_tunnel::{Config, Connector, Proxy, Target};

use super::media::{
    build_packet, check_packet, Clock, RtpHeader, AUDIO_SSRC, PT_PCMU, PT_VIDEO, VIDEO_SSRC,
};
use super::reverse_proxy::{ProxyConfig, ReverseProxy, User};

/// Media tick: one audio packet and [`VIDEO_PACKETS_PER_TICK`] video packets every 20 ms.
pub const TICK: Duration = Duration::from_millis(20);
/// Audio bytes per packet (20 ms of 8 kHz G.711): the packet is 184 bytes with the RTP header,
/// send time and CRC-32.
pub const AUDIO_MEDIA: usize = 160;
/// Video packets per tick.
pub const VIDEO_PACKETS_PER_TICK: usize = 2;
/// Video media bytes per packet: the packet is 1200 bytes.
pub const VIDEO_MEDIA: usize = 1176;
/// Bytes on the wire per tick: (184 + 2) + 2 × (1200 + 2).
pub const WIRE_BYTES_PER_TICK: u64 = 186 + 2 * 1202;
/// Receive buffer of the relay's accepted sockets (the kernel doubles it): the "link queue".
pub const RELAY_RECV_BUFFER: usize = 4 * 1024;
/// The relay reads once at least this many tokens (bytes) are available.
pub const RELAY_READ_QUANTUM: usize = 256;
/// Largest token bucket: the most the relay passes at once after an idle spell.
pub const RELAY_BURST: f64 = 3000.0;
/// The public name the proxy maps to the receiver.
pub const PUBLIC_NAME: &str = "media.example.com:443";

/// The media rate in bits per second, framing included (about 1.04 Mbit/s).
pub fn media_rate_bps() -> u64 {
    WIRE_BYTES_PER_TICK * 8 * 1000 / TICK.as_millis() as u64
}

/// One stretch of the link: its rate, for how long.
#[derive(Clone, Copy, Debug)]
pub struct LinkPhase {
    /// How long it lasts.
    pub duration: Duration,
    /// Link rate, bits per second.
    pub rate_bps: u64,
}

/// The link's rate over time, from the start of the media; the last rate holds afterwards.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The stretches, in order.
    pub phases: Vec<LinkPhase>,
}

impl Schedule {
    /// `fast` for `before`, then `slow` for `slow_for`, then `fast` again for `after`.
    pub fn dip(
        before: Duration,
        slow_for: Duration,
        after: Duration,
        fast: u64,
        slow: u64,
    ) -> Self {
        Schedule {
            phases: vec![
                LinkPhase {
                    duration: before,
                    rate_bps: fast,
                },
                LinkPhase {
                    duration: slow_for,
                    rate_bps: slow,
                },
                LinkPhase {
                    duration: after,
                    rate_bps: fast,
                },
            ],
        }
    }

    /// The whole schedule's length: how long the media runs.
    pub fn total(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }

    /// The rate `elapsed` after the start, bits per second.
    pub fn rate_at(&self, elapsed: Duration) -> u64 {
        let mut end = Duration::ZERO;
        for phase in &self.phases {
            end += phase.duration;
            if elapsed < end {
                return phase.rate_bps;
            }
        }
        self.phases.last().map_or(u64::MAX, |p| p.rate_bps)
    }
}

// ---------------------------------------------------------------------------------------------
// The throttling relay
// ---------------------------------------------------------------------------------------------

/// A userspace TCP relay in front of `upstream` whose client-to-upstream direction follows a
/// rate [`Schedule`] (token bucket); the other direction is copied as it comes. Half-closes are
/// passed on.
pub struct ThrottledRelay {
    addr: SocketAddr,
    start: Arc<OnceLock<Instant>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl ThrottledRelay {
    /// Listens on a free loopback port with a small receive buffer (inherited by accepted
    /// sockets) and relays every connection to `upstream`.
    pub fn start(upstream: SocketAddr, schedule: Schedule) -> io::Result<ThrottledRelay> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_recv_buffer_size(RELAY_RECV_BUFFER)?;
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        socket.listen(16)?;
        let listener: TcpListener = socket.into();
        let addr = listener.local_addr()?;
        let start = Arc::new(OnceLock::new());
        let stop = Arc::new(AtomicBool::new(false));
        let schedule = Arc::new(schedule);
        let (start2, stop2) = (Arc::clone(&start), Arc::clone(&stop));
        let accept = thread::Builder::new()
            .name("relay-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = conn else { continue };
                    let schedule = Arc::clone(&schedule);
                    let start = Arc::clone(&start2);
                    let _ = thread::Builder::new()
                        .name("relay".into())
                        .spawn(move || relay(client, upstream, &schedule, &start));
                }
            })?;
        Ok(ThrottledRelay {
            addr,
            start,
            stop,
            accept: Some(accept),
        })
    }

    /// The relay's address: the "proxy" the client connects to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the schedule's clock (before this, the first phase's rate applies).
    pub fn begin(&self, at: Instant) {
        let _ = self.start.set(at);
    }
}

impl Drop for ThrottledRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

fn relay(client: TcpStream, upstream: SocketAddr, schedule: &Schedule, start: &OnceLock<Instant>) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client_down), Ok(server_down)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let down = thread::spawn(move || copy_down(server_down, client_down));
    throttle_up(client, server, schedule, start);
    let _ = down.join();
}

/// Upstream to client, as fast as it comes.
fn copy_down(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Client to upstream through the token bucket.
fn throttle_up(
    mut from: TcpStream,
    mut to: TcpStream,
    schedule: &Schedule,
    start: &OnceLock<Instant>,
) {
    let mut buf = [0u8; 16 * 1024];
    let mut tokens = RELAY_BURST;
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        let elapsed = start
            .get()
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(*s));
        let rate = schedule.rate_at(elapsed) as f64 / 8.0; // bytes per second
        tokens = (tokens + rate * (now - last).as_secs_f64()).min(RELAY_BURST);
        last = now;
        if tokens < RELAY_READ_QUANTUM as f64 {
            let wait = (RELAY_READ_QUANTUM as f64 - tokens) / rate;
            thread::sleep(Duration::from_secs_f64(wait.clamp(0.000_2, 0.05)));
            continue;
        }
        let allowed = (tokens as usize).min(buf.len());
        match from.read(&mut buf[..allowed]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tokens -= n as f64;
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------------------------

/// One packet that arrived intact.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// Send time, ns after the trial's epoch.
    pub sent_ns: u64,
    /// Arrival minus send time.
    pub latency_ns: u64,
    /// Audio (sent as key) or video.
    pub key: bool,
    /// Its RTP sequence number.
    pub sequence: u16,
    /// Arrival minus the end of the `write_all` that handed it to the kernel: its wait in the
    /// kernel send buffer and on the link. Filled in after the trial.
    pub after_write_ns: u64,
}

/// What the receiver saw.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// Intact packets, in arrival order.
    pub arrivals: Vec<Arrival>,
    /// Packets whose CRC-32 or RTP header was wrong.
    pub corrupted: u64,
    /// Packets whose sequence number was not above the last one of their SSRC.
    pub out_of_order: u64,
    /// A read error, if the stream did not end cleanly.
    pub error: Option<String>,
}

fn receive(listener: TcpListener, clock: Clock) -> Received {
    let mut got = Received::default();
    let stream = match listener.accept() {
        Ok((stream, _)) => stream,
        Err(e) => {
            got.error = Some(format!("accept: {e}"));
            return got;
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = PacketReader::new(stream);
    let mut last_audio: Option<u16> = None;
    let mut last_video: Option<u16> = None;
    loop {
        let packet = match reader.read_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(e) => {
                got.error = Some(format!("read: {e}"));
                break;
            }
        };
        let now_ns = clock.now_ns();
        let Ok(checked) = check_packet(packet) else {
            got.corrupted += 1;
            continue;
        };
        let key = checked.header.payload_type == PT_PCMU;
        let last = if key {
            &mut last_audio
        } else {
            &mut last_video
        };
        let sequence = checked.header.sequence;
        if last.is_some_and(|l| (sequence.wrapping_sub(l) as i16) <= 0) {
            got.out_of_order += 1;
        }
        *last = Some(sequence);
        got.arrivals.push(Arrival {
            sent_ns: checked.send_time_ns,
            latency_ns: now_ns.saturating_sub(checked.send_time_ns),
            key,
            sequence,
            after_write_ns: 0,
        });
    }
    got
}

// ---------------------------------------------------------------------------------------------
// When each packet reached the kernel
// ---------------------------------------------------------------------------------------------

/// When each packet's `write_all` returned, ns after the epoch plus one (0: never), by SSRC
/// and sequence number.
pub struct WriteLog {
    audio: Vec<AtomicU64>,
    video: Vec<AtomicU64>,
}

impl WriteLog {
    fn new() -> WriteLog {
        let slots = || (0..=u16::MAX as usize).map(|_| AtomicU64::new(0)).collect();
        WriteLog {
            audio: slots(),
            video: slots(),
        }
    }

    fn written_ns(&self, key: bool, sequence: u16) -> Option<u64> {
        let slots = if key { &self.audio } else { &self.video };
        match slots[usize::from(sequence)].load(Ordering::SeqCst) {
            0 => None,
            n => Some(n - 1),
        }
    }
}

/// The sender's sink: the tunnel's writer, noting when each frame was handed to the kernel.
/// `MediaSender` writes each frame with one `write_all`, which this overrides.
pub struct TimedWriter<W> {
    inner: W,
    clock: Clock,
    log: Arc<WriteLog>,
}

impl<W: Write> Write for TimedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_all(&mut self, frame: &[u8]) -> io::Result<()> {
        self.inner.write_all(frame)?;
        // The frame: 2-byte length, then the RTP header (payload type, sequence number).
        if frame.len() >= 2 + 12 {
            let key = frame[3] & 0x7f == PT_PCMU;
            let sequence = u16::from_be_bytes([frame[4], frame[5]]);
            let slots = if key {
                &self.log.audio
            } else {
                &self.log.video
            };
            slots[usize::from(sequence)].store(self.clock.now_ns() + 1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// One trial
// ---------------------------------------------------------------------------------------------

/// One run of the experiment.
#[derive(Clone, Debug)]
pub struct Trial {
    /// The sender's bound; `None` for none.
    pub max_delay: Option<Duration>,
    /// The sender's drop policy.
    pub policy: DropPolicy,
    /// `SO_SNDBUF` asked for; `None` keeps the system default.
    pub send_buffer: Option<usize>,
    /// The link.
    pub schedule: Schedule,
}

/// What one trial measured.
#[derive(Clone, Debug)]
pub struct TrialReport {
    /// The trial.
    pub trial: Trial,
    /// The sender's final counts.
    pub stats: SenderStats,
    /// `SO_SNDBUF` as the kernel reports it (Linux doubles what was asked).
    pub send_buffer_actual: usize,
    /// Packets the source produced.
    pub produced: u64,
    /// Of which key (audio).
    pub produced_key: u64,
    /// What the receiver saw.
    pub received: Received,
    /// The writer's error, if any.
    pub write_error: Option<String>,
}

impl TrialReport {
    /// Latencies of delivered packets (all, or key only), sorted, in ns.
    pub fn latencies(&self, key_only: bool) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .received
            .arrivals
            .iter()
            .filter(|a| !key_only || a.key)
            .map(|a| a.latency_ns)
            .collect();
        v.sort_unstable();
        v
    }

    /// Nearest-rank quantile of the delivered packets' latencies, in ms.
    pub fn quantile_ms(&self, q: f64, key_only: bool) -> f64 {
        let v = self.latencies(key_only);
        if v.is_empty() {
            return 0.0;
        }
        let rank = (q * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1] as f64 / 1e6
    }

    /// Nearest-rank quantile of the time from the end of each delivered packet's write to its
    /// arrival (the kernel send buffer and the link), in ms.
    pub fn after_write_quantile_ms(&self, q: f64) -> f64 {
        let mut v: Vec<u64> = self
            .received
            .arrivals
            .iter()
            .map(|a| a.after_write_ns)
            .collect();
        v.sort_unstable();
        if v.is_empty() {
            return 0.0;
        }
        let rank = (q * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1] as f64 / 1e6
    }

    /// Packets delivered intact.
    pub fn delivered(&self) -> u64 {
        self.received.arrivals.len() as u64
    }

    /// Key packets delivered intact.
    pub fn delivered_key(&self) -> u64 {
        self.received.arrivals.iter().filter(|a| a.key).count() as u64
    }

    /// The largest latency of packets sent in each whole second, in ms (0 for a second with
    /// nothing delivered).
    pub fn max_by_second_ms(&self) -> Vec<f64> {
        let seconds = self.trial.schedule.total().as_secs_f64().ceil() as usize;
        let mut out = vec![0.0f64; seconds.max(1)];
        for a in &self.received.arrivals {
            let s = ((a.sent_ns / 1_000_000_000) as usize).min(out.len() - 1);
            out[s] = out[s].max(a.latency_ns as f64 / 1e6);
        }
        out
    }
}

/// Builds the source's packets for one tick into `sender`; returns (packets, key packets).
fn send_tick<W: Write + Send>(
    sender: &MediaSender<'_, W>,
    clock: Clock,
    tick: u64,
    packet: &mut [u8],
) -> (u64, u64) {
    let mut audio = [0u8; AUDIO_MEDIA];
    for (i, b) in audio.iter_mut().enumerate() {
        *b = (tick as usize * 7 + i) as u8;
    }
    let header = RtpHeader {
        marker: false,
        payload_type: PT_PCMU,
        sequence: tick as u16,
        timestamp: (tick * AUDIO_MEDIA as u64) as u32,
        ssrc: AUDIO_SSRC,
    };
    let len = build_packet(&header, clock.now_ns(), &audio, packet).expect("audio fits");
    let _ = sender.send(&packet[..len], true);
    let mut video = [0u8; VIDEO_MEDIA];
    for v in 0..VIDEO_PACKETS_PER_TICK {
        let sequence = tick * VIDEO_PACKETS_PER_TICK as u64 + v as u64;
        for (i, b) in video.iter_mut().enumerate() {
            *b = (sequence as usize * 13 + i) as u8;
        }
        let header = RtpHeader {
            marker: v + 1 == VIDEO_PACKETS_PER_TICK,
            payload_type: PT_VIDEO,
            sequence: sequence as u16,
            timestamp: (tick * 1800) as u32,
            ssrc: VIDEO_SSRC,
        };
        let len = build_packet(&header, clock.now_ns(), &video, packet).expect("video fits");
        let _ = sender.send(&packet[..len], false);
    }
    (1 + VIDEO_PACKETS_PER_TICK as u64, 1)
}

/// Runs one trial end to end on loopback: receiver, reference reverse proxy (plain HTTP,
/// Basic auth, mapping table), throttling relay, tunnel, sender, paced source.
pub fn run_trial(trial: &Trial) -> io::Result<TrialReport> {
    let epoch = Instant::now();
    let clock = Clock::Shared(epoch);

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let receiver_addr = listener.local_addr()?;
    let receiving = thread::Builder::new()
        .name("receiver".into())
        .spawn(move || receive(listener, clock))?;

    let proxy = ReverseProxy::start(ProxyConfig {
        mapping: vec![(PUBLIC_NAME.to_owned(), receiver_addr)],
        users: vec![User::new("camera", "secret", &[PUBLIC_NAME])],
        tls: false,
        ..ProxyConfig::default()
    })?;
    let relay = ThrottledRelay::start(proxy.local_addr(), trial.schedule.clone())?;

    let url = format!("http://camera:secret@{}", relay.local_addr());
    let other = |e: connect_tunnel::Error| io::Error::other(e.to_string());
    let config = Config::default()
        .send_buffer_size(trial.send_buffer)
        .connect_timeout(Duration::from_secs(10));
    let connector = Connector::new(Proxy::parse(&url).map_err(other)?, config).map_err(other)?;
    let tunnel = connector
        .connect(&Target::parse(PUBLIC_NAME).map_err(other)?)
        .map_err(other)?;
    let send_buffer_actual = socket2::SockRef::from(tunnel.get_ref()).send_buffer_size()?;
    let (reader, writer) = tunnel.split();
    let log = Arc::new(WriteLog::new());
    let sender = MediaSender::spawn(
        TimedWriter {
            inner: writer,
            clock,
            log: Arc::clone(&log),
        },
        SenderConfig {
            max_delay: trial.max_delay,
            policy: trial.policy,
            queue_bytes: 4 * 1024 * 1024,
            queue_packets: 16 * 1024,
            // What the documentation says: Linux doubles the SO_SNDBUF asked for.
            kernel_send_buffer: trial
                .send_buffer
                .map_or(DEFAULT_KERNEL_SEND_BUFFER, |n| 2 * n),
            ..SenderConfig::default()
        },
    )?;

    // The media: paced by the clock, never blocked by the link.
    let ticks = (trial.schedule.total().as_micros() / TICK.as_micros()) as u64;
    let mut packet = [0u8; 1500];
    let (mut produced, mut produced_key) = (0, 0);
    let started = Instant::now();
    relay.begin(started);
    for tick in 0..ticks {
        let due = started + TICK * tick as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let (n, k) = send_tick(&sender, clock, tick, &mut packet);
        produced += n;
        produced_key += k;
    }
    let finished = sender.finish();
    let mut writer = finished.sink.inner;
    let _ = writer.shutdown_write();
    let mut received = receiving
        .join()
        .map_err(|_| io::Error::other("receiver panicked"))?;
    for a in &mut received.arrivals {
        if let Some(written) = log.written_ns(a.key, a.sequence) {
            a.after_write_ns = (a.sent_ns + a.latency_ns).saturating_sub(written);
        }
    }
    drop(reader);
    drop(relay);
    proxy.shutdown();
    Ok(TrialReport {
        trial: trial.clone(),
        stats: finished.stats,
        send_buffer_actual,
        produced,
        produced_key,
        received,
        write_error: finished.error.map(|e| e.to_string()),
    })
}
