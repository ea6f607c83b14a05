//! The main job: an IP camera streams RTP (RFC 4571 framing) through an HTTPS proxy with
//! CONNECT, using connect-tunnel, and the media server checks every packet.
//!
//! With no arguments everything runs in this process on loopback:
//!
//! ```text
//! camera (connect-tunnel) --TLS--> reference reverse proxy --TCP--> media server
//!   CONNECT media.example.com:443      mapping table:                 checks sequence numbers,
//!   Proxy-Authorization: Basic ...     media.example.com:443 ->       checksums, latency;
//!   then RTP over the naked tunnel     127.0.0.1:<media port>         answers with a receipt
//! ```
//!
//! and one summary is printed: handshake time, packets and bytes each way, lost and corrupted
//! (both must be 0, or the exit code is 1), latency p50/p99/max, and what the camera's
//! latency-bounded sender (`connect_tunnel::media::MediaSender`, RFC 4571 framing) dropped to
//! keep the delay bounded (packets it drops on purpose are not counted as lost).
//!
//! Against a real deployment: `--proxy URL --target HOST:PORT` streams from here, and
//! `--serve ADDR` runs only the media server (e.g. behind a real Squid). See `--help`.

#[path = "common/mod.rs"]
mod common;

use std::io::{self, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::media::{self, Clock, MediaReport, MediaServer, Receipt, SendStats};
use common::reverse_proxy::{ProxyConfig, ReverseProxy, SessionRecord, User};
use connect_tunnel::media::{SenderConfig, RECOMMENDED_SEND_BUFFER};
use connect_tunnel::{Config, Connector, Error, Proxy, StreamHandler, Target, Tunnel};

/// The public name the camera asks the proxy for.
const PUBLIC_NAME: &str = "media.example.com:443";
/// A second public name, reachable only by the operator identity.
const ADMIN_NAME: &str = "admin.example.com:443";
/// Default stream length.
const DEFAULT_DURATION: Duration = Duration::from_secs(5);
/// Deadline for everything up to the open tunnel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for the server's receipt and final EOF, counted from the end of the stream.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(10);

const HELP: &str = "\
camera_stream: stream RTP media through an HTTP(S) proxy with connect-tunnel, and check it

USAGE:
    cargo run --release --example camera_stream [-- OPTIONS]

With no --proxy and no --serve, runs the whole demo in this process: a media server, the
reference reverse proxy (TLS, Basic auth, mapping media.example.com:443 to the media server)
and the camera, then prints one summary. Exit code 1 if anything was lost or corrupted.

OPTIONS:
    --duration SECS       Stream length [default: 5]
    --media FILE.wav      Audio from an 8/16-bit PCM WAV file (converted to 8 kHz mu-law)
                          instead of a 440 Hz tone
    --max-delay MS        Bound on the sender's queueing delay: packets that would wait longer
                          are dropped, video before audio and key frames (0: no bound)
                          [default: 200]

  Camera against a real deployment:
    --proxy URL           Proxy URL, e.g. https://camera:secret@proxy.example.com:3129
    --target HOST:PORT    Where the proxy should connect (the media server, as the proxy
                          knows it)
    --proxy-cacert FILE   PEM CA certificate(s) to trust for an https:// proxy
    --proxy-insecure      Do not verify the proxy's certificate (testing only)

  Media server only:
    --serve ADDR          Listen on ADDR (e.g. 0.0.0.0:5004), receive one stream, print the
                          report, exit (1 if anything was lost or corrupted)

The camera and a --serve server in separate processes timestamp packets with the system clock,
so latency figures are only meaningful on one machine or with synchronised clocks.

EXAMPLES:
    cargo run --release --example camera_stream
    cargo run --release --example camera_stream -- --serve 127.0.0.1:5004
    cargo run --release --example camera_stream -- --proxy http://camera:secret@127.0.0.1:3128 \\
        --target 127.0.0.1:5004 --duration 10

Logs go to stderr; RUST_LOG=info (or debug) shows the phases.
";

/// What the command line asked for.
enum Mode {
    Demo,
    Camera {
        proxy: String,
        target: String,
        cacert: Option<PathBuf>,
        insecure: bool,
    },
    Serve {
        addr: String,
    },
}

struct Args {
    mode: Mode,
    duration: Duration,
    media: Option<PathBuf>,
    /// The sender's bound on queueing delay; `None`: no bound.
    max_delay: Option<Duration>,
}

impl Args {
    /// How the camera sends: the example's default, with the bound asked for.
    fn sender_config(&self) -> SenderConfig {
        SenderConfig {
            max_delay: self.max_delay,
            ..media::default_sender_config()
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut duration = DEFAULT_DURATION;
    let mut media = None;
    let mut max_delay = media::default_sender_config().max_delay;
    let mut proxy = None;
    let mut target = None;
    let mut cacert = None;
    let mut insecure = false;
    let mut serve = None;
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--duration" => {
                let text = value("--duration")?;
                let secs: f64 = text
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                    .ok_or(format!("--duration {text}: expected seconds, > 0"))?;
                duration = Duration::from_secs_f64(secs);
            }
            "--media" => media = Some(PathBuf::from(value("--media")?)),
            "--max-delay" => {
                let text = value("--max-delay")?;
                let ms: u64 = text.parse().ok().filter(|ms| *ms <= 60_000).ok_or(format!(
                    "--max-delay {text}: expected milliseconds, 0 to 60000"
                ))?;
                max_delay = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "--proxy" => proxy = Some(value("--proxy")?),
            "--target" => target = Some(value("--target")?),
            "--proxy-cacert" => cacert = Some(PathBuf::from(value("--proxy-cacert")?)),
            "--proxy-insecure" => insecure = true,
            "--serve" => serve = Some(value("--serve")?),
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    let mode = match (serve, proxy, target) {
        (Some(addr), None, None) => Mode::Serve { addr },
        (Some(_), _, _) => return Err("--serve cannot be combined with --proxy/--target".into()),
        (None, Some(proxy), Some(target)) => Mode::Camera {
            proxy,
            target,
            cacert,
            insecure,
        },
        (None, Some(_), None) => return Err("--proxy needs --target HOST:PORT".into()),
        (None, None, Some(_)) => return Err("--target needs --proxy URL".into()),
        (None, None, None) => {
            if cacert.is_some() || insecure {
                return Err("--proxy-cacert/--proxy-insecure need --proxy".into());
            }
            Mode::Demo
        }
    };
    Ok(Some(Args {
        mode,
        duration,
        media,
        max_delay,
    }))
}

fn main() -> ExitCode {
    common::logger::init(log::LevelFilter::Warn);
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("camera_stream: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match &args.mode {
        Mode::Demo => run_demo(&args),
        Mode::Camera {
            proxy,
            target,
            cacert,
            insecure,
        } => run_camera(&args, proxy, target, cacert.as_deref(), *insecure),
        Mode::Serve { addr } => run_server(addr),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("camera_stream: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The camera: a stream handler
// ---------------------------------------------------------------------------------------------

/// Streams media over the open tunnel, ends with an RTCP BYE, reads the server's receipt, then
/// half-closes and waits for the server's EOF.
struct Camera<'a> {
    duration: Duration,
    wav: Option<&'a Path>,
    clock: Clock,
    sender: SenderConfig,
    handshake: Duration,
    tls: bool,
    sent: Option<SendStats>,
    receipt: Option<Receipt>,
    /// Bytes after the receipt (there should be none).
    trailing: usize,
}

impl StreamHandler for Camera<'_> {
    fn handle(&mut self, tunnel: &mut Tunnel) -> io::Result<()> {
        self.handshake = tunnel.handshake_time();
        self.tls = tunnel.is_tls();
        log::info!("camera: tunnel open after {:?}", self.handshake);
        let sent = media::send_stream(tunnel, self.duration, self.wav, self.clock, self.sender)?;
        self.sent = Some(sent);
        // One deadline for the receipt and the server's EOF, however the bytes trickle in.
        let deadline = Instant::now() + RECEIPT_TIMEOUT;
        self.receipt = media::read_receipt(&mut DeadlineReader { tunnel, deadline })?;
        tunnel.shutdown_write()?;
        let mut rest = [0u8; 256];
        loop {
            match (DeadlineReader { tunnel, deadline }).read(&mut rest) {
                Ok(0) => break,
                Ok(n) => self.trailing += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The receipt is in; a proxy that resets instead of closing is not our problem.
                Err(e) => {
                    log::warn!("camera: after the receipt: {e}");
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Reads from the tunnel with each read's timeout set to what is left before one deadline.
struct DeadlineReader<'t> {
    tunnel: &'t mut Tunnel,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "receipt deadline passed",
            ));
        }
        self.tunnel.get_ref().set_read_timeout(Some(left))?;
        self.tunnel.read(buf)
    }
}

impl<'a> Camera<'a> {
    fn new(duration: Duration, wav: Option<&'a Path>, clock: Clock, sender: SenderConfig) -> Self {
        Camera {
            duration,
            wav,
            clock,
            sender,
            handshake: Duration::ZERO,
            tls: false,
            sent: None,
            receipt: None,
            trailing: 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Demo: everything on loopback
// ---------------------------------------------------------------------------------------------

fn run_demo(args: &Args) -> Result<bool, String> {
    // One process, so both ends can share a monotonic clock.
    let clock = Clock::Shared(Instant::now());

    let server = MediaServer::bind("127.0.0.1:0").map_err(|e| format!("media server: {e}"))?;
    let media_addr = server
        .local_addr()
        .map_err(|e| format!("media server: {e}"))?;
    // The operator's back-end: only there to be mapped; the camera must never reach it.
    let admin = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("admin back-end: {e}"))?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;

    let proxy = ReverseProxy::start(ProxyConfig {
        mapping: vec![
            (PUBLIC_NAME.to_owned(), media_addr),
            (ADMIN_NAME.to_owned(), admin_addr),
        ],
        users: vec![
            User::new("camera", "secret", &[PUBLIC_NAME]),
            User::new("operator", "letmein", &[ADMIN_NAME]),
        ],
        tls: true,
        ..ProxyConfig::default()
    })
    .map_err(|e| format!("reverse proxy: {e}"))?;
    let proxy_url = format!("https://localhost:{}", proxy.local_addr().port());
    let config = Config::default()
        .proxy_ca_pem(proxy.ca_pem().as_bytes().to_vec())
        .connect_timeout(CONNECT_TIMEOUT)
        .send_buffer_size(Some(RECOMMENDED_SEND_BUFFER));
    let connector = |user: &str, password: &str| -> Result<Connector, Error> {
        let url = format!(
            "https://{user}:{password}@localhost:{}",
            proxy.local_addr().port()
        );
        Connector::new(Proxy::parse(&url)?, config.clone())
    };

    // The per-identity table at work, before streaming: both refusals must happen.
    let policy = check_policy(&connector)?;

    let serving = server.spawn(clock);
    let camera_connector = connector("camera", "secret").map_err(|e| e.to_string())?;
    let target = Target::parse(PUBLIC_NAME).map_err(|e| e.to_string())?;
    let mut camera = Camera::new(
        args.duration,
        args.media.as_deref(),
        clock,
        args.sender_config(),
    );
    let run = camera_connector.run(&target, &mut camera);

    let report = serving
        .join()
        .map_err(|_| "media server thread panicked".to_string())?;
    let session = proxy.wait_for_session(PUBLIC_NAME, Duration::from_secs(2));
    run.map_err(|e| format!("camera: {e}"))?;
    let report = report.map_err(|e| format!("media server: {e}"))?;

    let route = format!("{proxy_url} (reference reverse proxy) -> {PUBLIC_NAME} -> {media_addr}");
    Ok(print_summary(
        &camera,
        &route,
        Some(&report),
        session.as_ref(),
        &policy,
    ))
}

/// Tries two connections the proxy must refuse; returns a line describing what happened.
fn check_policy(
    connector: &dyn Fn(&str, &str) -> Result<Connector, Error>,
) -> Result<String, String> {
    let admin = Target::parse(ADMIN_NAME).map_err(|e| e.to_string())?;
    let media = Target::parse(PUBLIC_NAME).map_err(|e| e.to_string())?;
    let camera = connector("camera", "secret").map_err(|e| e.to_string())?;
    let forbidden = match camera.connect(&admin) {
        Err(Error::Refused { status: 403, .. }) => "camera -> admin.example.com:443 refused (403)",
        Err(e) => return Err(format!("policy check: expected a 403, got: {e}")),
        Ok(_) => return Err("policy check: the camera reached the operator's name".into()),
    };
    let impostor = connector("camera", "guess").map_err(|e| e.to_string())?;
    let unauthorized = match impostor.connect(&media) {
        Err(Error::Auth { status: 407, .. }) => "wrong password refused (407)",
        Err(e) => return Err(format!("policy check: expected a 407, got: {e}")),
        Ok(_) => return Err("policy check: a wrong password opened a tunnel".into()),
    };
    Ok(format!("{forbidden}; {unauthorized}"))
}

// ---------------------------------------------------------------------------------------------
// Camera only, against a real deployment
// ---------------------------------------------------------------------------------------------

fn run_camera(
    args: &Args,
    proxy: &str,
    target: &str,
    cacert: Option<&Path>,
    insecure: bool,
) -> Result<bool, String> {
    let parsed = Proxy::parse(proxy).map_err(|e| format!("--proxy: {e}"))?;
    let target_parsed = Target::parse(target).map_err(|e| format!("--target: {e}"))?;
    // A small kernel send buffer, so that the sender's delay bound holds (connect_tunnel::media).
    let mut config = Config::default()
        .connect_timeout(CONNECT_TIMEOUT)
        .send_buffer_size(Some(RECOMMENDED_SEND_BUFFER));
    if let Some(path) = cacert {
        config = config.proxy_ca_file(path);
    }
    if insecure {
        eprintln!("camera_stream: warning: not verifying the proxy's certificate");
        config = config.proxy_verify(false);
    }
    let connector = Connector::new(parsed, config).map_err(|e| e.to_string())?;
    let mut camera = Camera::new(
        args.duration,
        args.media.as_deref(),
        Clock::Unix,
        args.sender_config(),
    );
    connector
        .run(&target_parsed, &mut camera)
        .map_err(|e| format!("camera: {e}"))?;
    let route = format!("{} -> {target_parsed}", connector.proxy());
    Ok(print_summary(&camera, &route, None, None, ""))
}

// ---------------------------------------------------------------------------------------------
// Media server only
// ---------------------------------------------------------------------------------------------

fn run_server(addr: &str) -> Result<bool, String> {
    let server = MediaServer::bind(addr).map_err(|e| format!("--serve {addr}: {e}"))?;
    let local = server.local_addr().map_err(|e| e.to_string())?;
    println!("media server listening on {local}; waiting for one stream");
    let report = server
        .serve_one(Clock::Unix)
        .map_err(|e| format!("media server: {e}"))?;
    println!(
        "received         {} packets, {} bytes in {:.1} s",
        report.packets,
        report.bytes,
        report.elapsed.as_secs_f64()
    );
    print_checks(&report);
    println!(
        "ended by         {}",
        if report.bye {
            "RTCP BYE"
        } else {
            "EOF (no BYE)"
        }
    );
    let ok = report.is_clean() && report.packets > 0;
    println!("result           {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

fn print_checks(report: &MediaReport) {
    println!(
        "lost             {}\ncorrupted        {}\nout of order     {}   duplicated {}",
        report.lost, report.corrupted, report.out_of_order, report.duplicated
    );
    println!(
        "latency          p50 {}   p99 {}   max {}   (send -> media server, {} packets)",
        ms(report.p50_ns()),
        ms(report.p99_ns()),
        ms(report.max_ns()),
        report.latencies_ns.len()
    );
}

/// Prints what the latency-bounded sender dropped (next to the latency figures) and its
/// longest queueing delay.
fn print_drops(camera: &Camera<'_>, sent: &SendStats) {
    let s = &sent.sender;
    let bound = match camera.sender.max_delay {
        Some(d) => format!("{} ms bound, {:?}", d.as_millis(), camera.sender.policy),
        None => "no bound".to_string(),
    };
    println!(
        "dropped          {} key + {} non-key packets ({} bytes) by the sender ({bound}); queueing max {}",
        s.dropped_key.packets,
        s.dropped_non_key.packets,
        s.dropped().bytes,
        ms(s.max_queue_delay.as_nanos() as u64)
    );
}

/// Prints the one summary and returns whether the run passed.
fn print_summary(
    camera: &Camera<'_>,
    route: &str,
    report: Option<&MediaReport>,
    session: Option<&SessionRecord>,
    policy: &str,
) -> bool {
    let Some(sent) = &camera.sent else {
        println!("camera_stream: nothing was sent");
        return false;
    };
    println!(
        "camera_stream: {:.1} s of RTP over {route}",
        sent.elapsed.as_secs_f64()
    );
    println!(
        "handshake        {} (TCP{} + CONNECT + reply)",
        ms(camera.handshake.as_nanos() as u64),
        if camera.tls { " + TLS" } else { "" }
    );
    println!(
        "sent             {} packets ({} audio, {} video in {} frames), {} bytes RTP; {} packets, {} bytes written, {} on the wire with framing and BYE",
        sent.packets,
        sent.audio_packets,
        sent.video_packets,
        sent.video_frames,
        sent.bytes,
        sent.written_packets(),
        sent.written_bytes(),
        sent.wire_bytes
    );
    let dropped = sent.dropped_packets();
    let mut ok = true;
    match report {
        Some(report) => {
            println!(
                "received         {} packets, {} bytes",
                report.packets, report.bytes
            );
            print_checks(report);
            print_drops(camera, sent);
            // What the sender dropped on purpose shows as sequence gaps; nothing else may.
            ok &= report.corrupted == 0
                && report.out_of_order == 0
                && report.duplicated == 0
                && report.lost <= dropped
                && report.packets == sent.written_packets()
                && report.bytes == sent.written_bytes();
            ok &= report.bye;
        }
        None => match &camera.receipt {
            Some(r) => {
                println!(
                    "received         {} packets, {} bytes (the server's receipt)",
                    r.packets, r.bytes
                );
                println!(
                    "lost             {}\ncorrupted        {}\nout of order     {}   duplicated {}",
                    r.lost, r.corrupted, r.out_of_order, r.duplicated
                );
                println!(
                    "latency          p50 {} us   p99 {} us   max {} us   (server's view; needs synced clocks)",
                    r.p50_us, r.p99_us, r.max_us
                );
                print_drops(camera, sent);
            }
            None => println!("received         unknown: no receipt from the media server"),
        },
    }
    match &camera.receipt {
        Some(r) => {
            let matches = r.packets == sent.written_packets()
                && r.bytes == sent.written_bytes()
                && r.lost <= dropped
                && r.corrupted == 0;
            println!(
                "receipt          {}",
                if matches {
                    "matches what was sent"
                } else {
                    "DOES NOT match what was sent"
                }
            );
            ok &= matches;
        }
        None => {
            println!("receipt          none (the tunnel ended before the server answered)");
            ok = false;
        }
    }
    if camera.trailing > 0 {
        println!(
            "trailing         {} unexpected bytes after the receipt",
            camera.trailing
        );
        ok = false;
    }
    if let Some(s) = session {
        println!(
            "proxy relayed    {} bytes up, {} bytes down (identity {}, {} request(s), closed {})",
            s.bytes_up,
            s.bytes_down,
            s.identity.as_deref().unwrap_or("-"),
            s.requests,
            s.error
                .as_deref()
                .map_or("cleanly".to_string(), |e| format!("with error: {e}"))
        );
        ok &= s.bytes_up == sent.wire_bytes && s.error.is_none();
    }
    println!(
        "pacing           max {} behind schedule",
        ms(sent.max_lateness.as_nanos() as u64)
    );
    if !policy.is_empty() {
        println!("policy           {policy}");
    }
    println!("result           {}", if ok { "PASS" } else { "FAIL" });
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Option<Args>, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn command_line_modes() {
        let demo = parse(&["--duration", "1.5"]).unwrap().unwrap();
        assert!(matches!(demo.mode, Mode::Demo));
        assert_eq!(demo.duration, Duration::from_millis(1500));
        assert_eq!(demo.max_delay, Some(Duration::from_millis(200)));
        let unbounded = parse(&["--max-delay", "0"]).unwrap().unwrap();
        assert_eq!(unbounded.max_delay, None);
        assert_eq!(unbounded.sender_config().max_delay, None);
        let bounded = parse(&["--max-delay", "350"]).unwrap().unwrap();
        assert_eq!(bounded.max_delay, Some(Duration::from_millis(350)));
        assert!(parse(&["--max-delay", "-1"]).is_err());
        assert!(parse(&["--max-delay", "1.5"]).is_err());
        let camera = parse(&[
            "--proxy",
            "http://p:3128",
            "--target",
            "m:5004",
            "--proxy-insecure",
        ])
        .unwrap()
        .unwrap();
        assert!(matches!(camera.mode, Mode::Camera { insecure: true, .. }));
        let serve = parse(&["--serve", "127.0.0.1:5004"]).unwrap().unwrap();
        assert!(matches!(serve.mode, Mode::Serve { .. }));
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--proxy", "http://p:3128"]).is_err());
        assert!(parse(&["--serve", "x:1", "--proxy", "http://p", "--target", "m:1"]).is_err());
        assert!(parse(&["--duration", "0"]).is_err());
        assert!(parse(&["--duration", "NaN"]).is_err());
        assert!(parse(&["--proxy-insecure"]).is_err());
        assert!(parse(&["--frobnicate"]).is_err());
    }

    /// The whole demo, shortened: policy checks, half a second of media, a clean report.
    #[test]
    fn short_demo_passes() {
        let args = Args {
            mode: Mode::Demo,
            duration: Duration::from_millis(500),
            media: None,
            max_delay: Some(Duration::from_millis(200)),
        };
        assert_eq!(run_demo(&args), Ok(true));
    }
}
