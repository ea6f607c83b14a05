//! A real video over RTSP through the CLI's forward mode and a real Squid's TLS listener with
//! Basic authentication (issue 4; docs/MEDIA-INTEROP.md).
//!
//! ```text
//! ffmpeg (RTSP client, TCP-interleaved RTP)
//!   -> connect-tunnel -l 127.0.0.1:0 --proxy-cacert CA -U camera:… (forward mode)
//!   -> Squid https_port (TLS, Basic auth, CONNECT allowed to the server's port only)
//!   -> GStreamer RTSP server (python3 + GstRtspServer) serving Megamind.avi
//! ```
//!
//! ffmpeg copies the streams it receives into a Matroska file (`-c copy`); the test then hashes
//! every decoded video frame of that file and of the source clip (`-f framemd5`) and requires the
//! two lists to be equal: all 270 frames, same order, same pixels. The AC-3 audio packets that
//! arrive must be a contiguous run of the source's (GStreamer's AVI → RTP path drops the first
//! and last AC-3 frame with or without a tunnel), and Squid's access log must show the CONNECT.
//!
//! Peers: `scripts/install-media-deps.sh` (GStreamer, the RTSP server's Python bindings, ffmpeg,
//! the clip under /var/cache/connect-tunnel) and `scripts/install-test-deps.sh` (Squid). Without
//! them the test prints `SKIP` and passes, unless `CI=true`, where it fails.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    in_ci, output_with_timeout, require_peer, stop_child, write_file, Squid, TempDir, SIGTERM,
};

const CLI: &str = env!("CARGO_BIN_EXE_connect-tunnel");
const PYTHON: &str = "/usr/bin/python3";
const FFMPEG: &str = "ffmpeg";
/// Where `scripts/install-media-deps.sh` puts the clip; `CONNECT_TUNNEL_MEDIA_DIR` moves it.
const DEFAULT_MEDIA_DIR: &str = "/var/cache/connect-tunnel";
const MOUNT: &str = "/megamind";
/// The clip's frame count (FACTS.md: 270 frames of MPEG-4 video).
const SOURCE_FRAMES: usize = 270;

/// The RTSP server. It binds an ephemeral port itself (no race for a "free" port) and prints
/// `RTSP-READY <port>` once it listens. Mount points match on the path only, so the URL may
/// name whatever host:port the client used (here the forwarder's). TCP-interleaved transport
/// only; one new pipeline per client, so every client gets the clip from its first frame.
const SERVER_PY: &str = r#"
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

Gst.init(None)
clip, mount = sys.argv[1], sys.argv[2]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service("0")
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    '( filesrc location="%s" ! avidemux name=d '
    'd.video_0 ! queue ! rtpmp4vpay name=pay0 pt=96 config-interval=1 '
    'd.audio_0 ! queue ! ac3parse ! rtpac3pay name=pay1 pt=97 )' % clip
)
factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
factory.set_shared(False)
server.get_mount_points().add_factory(mount, factory)
if server.attach(None) == 0:
    sys.exit("rtsp server: attach failed")
print("RTSP-READY %d" % server.get_bound_port(), flush=True)
GLib.MainLoop().run()
"#;

/// True if `path` exists; otherwise the same rule as [`require_peer`]: panic under `CI=true`,
/// else print `SKIP` and return false.
fn require_file(path: &Path, what: &str) -> bool {
    if path.is_file() {
        return true;
    }
    let hint = "run `bash scripts/install-media-deps.sh`";
    if in_ci() {
        panic!("{what} ({}) is missing and CI=true; {hint}", path.display());
    }
    eprintln!("SKIP: {what} ({}) not found; {hint}", path.display());
    false
}

/// True if `/usr/bin/python3` can load the RTSP server bindings (same rule as
/// [`require_peer`] otherwise).
fn require_rtsp_bindings() -> bool {
    let mut cmd = Command::new(PYTHON);
    cmd.args([
        "-c",
        "import gi; gi.require_version('GstRtspServer', '1.0'); \
         gi.require_version('GstRtsp', '1.0'); \
         from gi.repository import GstRtspServer, GstRtsp",
    ])
    .stdin(Stdio::null());
    let ok = output_with_timeout(&mut cmd, Duration::from_secs(30))
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return true;
    }
    let hint = "install gir1.2-gst-rtsp-server-1.0 and python3-gst-1.0 \
                (`bash scripts/install-media-deps.sh`)";
    if in_ci() {
        panic!("{PYTHON} cannot load GstRtspServer and CI=true; {hint}");
    }
    eprintln!("SKIP: {PYTHON} cannot load GstRtspServer; {hint}");
    false
}

fn clip_path() -> PathBuf {
    let dir = std::env::var_os("CONNECT_TUNNEL_MEDIA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MEDIA_DIR));
    dir.join("Megamind.avi")
}

/// A child process that is stopped (signal, bounded grace, then SIGKILL) and reaped on drop,
/// with what it wrote to stderr collected by a thread (for failure messages).
struct Peer {
    name: &'static str,
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Peer {
    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        stop_child(&mut self.child, SIGTERM, Duration::from_secs(5));
        if std::thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.name, self.stderr_text());
        }
    }
}

/// Spawns `cmd` with stdout and stderr piped; every line of either goes to the returned
/// channel and stderr is also kept in [`Peer::stderr`].
fn spawn_peer(name: &'static str, cmd: &mut Command) -> (Peer, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let (tx, rx) = mpsc::channel();
    let stderr = Arc::new(Mutex::new(String::new()));
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    let tx_out = tx.clone();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx_out.send(line);
        }
    });
    let kept = Arc::clone(&stderr);
    thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Ok(mut s) = kept.lock() {
                s.push_str(&line);
                s.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    (
        Peer {
            name,
            child,
            stderr,
        },
        rx,
    )
}

/// Waits up to `timeout` for a line starting with `prefix`; returns the rest of it.
fn wait_line(
    peer: &mut Peer,
    rx: &mpsc::Receiver<String>,
    prefix: &str,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.trim().to_string();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                thread::sleep(Duration::from_millis(100));
            }
        }
        if let Ok(Some(status)) = peer.child.try_wait() {
            panic!(
                "{} exited ({status}) before printing `{prefix}`; stderr:\n{}",
                peer.name,
                peer.stderr_text()
            );
        }
        if left.is_zero() {
            panic!(
                "{} did not print `{prefix}` within {timeout:?}; stderr:\n{}",
                peer.name,
                peer.stderr_text()
            );
        }
    }
}

/// The per-packet (`copy`) or per-frame MD5s of one stream of `file`, in order, from
/// `ffmpeg -f framemd5`.
fn stream_hashes(file: &Path, stream: &str, copy: bool) -> Vec<String> {
    let mut cmd = Command::new(FFMPEG);
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-i"])
        .arg(file)
        .args(["-map", stream]);
    if copy {
        cmd.args(["-c", "copy"]);
    } else {
        cmd.args(["-fps_mode", "passthrough"]);
    }
    cmd.args(["-f", "framemd5", "-"]).stdin(Stdio::null());
    let out = output_with_timeout(&mut cmd, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ffmpeg framemd5 {}: {e}", file.display()));
    assert!(
        out.status.success(),
        "ffmpeg framemd5 {} failed ({}): {}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.rsplit(',').next().unwrap_or("").trim().to_string())
        .collect()
}

#[test]
fn megamind_over_rtsp_through_forward_mode_and_squid_tls_with_basic_auth() {
    let started = Instant::now();
    let clip = clip_path();
    if !require_peer(FFMPEG)
        || !require_peer(PYTHON)
        || !require_file(&clip, "the Megamind.avi clip")
        || !require_rtsp_bindings()
    {
        return;
    }
    let tmp = TempDir::new("rtsp-video");

    // 1. The RTSP server, on a port it picked itself.
    let script = tmp.join("rtsp_server.py");
    write_file(&script, SERVER_PY, 0o644);
    let (mut server, server_lines) = spawn_peer(
        "rtsp server",
        Command::new(PYTHON).arg(&script).arg(&clip).arg(MOUNT),
    );
    let server_port: u16 = wait_line(
        &mut server,
        &server_lines,
        "RTSP-READY ",
        Duration::from_secs(30),
    )
    .parse()
    .expect("RTSP-READY <port>");

    // 2. Squid admitting authenticated CONNECT to that port only.
    let Some(squid) = Squid::start(&[server_port]) else {
        return;
    };

    // 3. Forward mode through Squid's TLS port (certificate checked against the test CA,
    //    Basic credentials from -U).
    let (mut forwarder, forwarder_lines) = spawn_peer(
        "connect-tunnel",
        Command::new(CLI)
            .arg("-x")
            .arg(squid.tls_url(false))
            .arg("--proxy-cacert")
            .arg(&squid.ca.ca_pem_path)
            .arg("-U")
            .arg(format!("{}:{}", squid.user, squid.password))
            .args(["-l", "127.0.0.1:0"])
            .arg(format!("127.0.0.1:{server_port}")),
    );
    let listen: SocketAddr = wait_line(
        &mut forwarder,
        &forwarder_lines,
        "connect-tunnel: listening on ",
        Duration::from_secs(15),
    )
    .parse()
    .expect("forward mode's listening address");

    // 4. ffmpeg pulls the clip through it and copies the streams into Matroska.
    let received = tmp.join("received.mkv");
    let url = format!("rtsp://{listen}{MOUNT}");
    let pull_started = Instant::now();
    let mut pull = Command::new(FFMPEG);
    pull.args([
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
    ])
    .args(["-y", "-fflags", "+genpts", "-rtsp_transport", "tcp"])
    // Socket I/O timeout (microseconds): a stalled tunnel ends ffmpeg, not the test run.
    .args(["-timeout", "20000000"])
    .args(["-i", &url, "-map", "0", "-c", "copy"])
    .arg(&received)
    .stdin(Stdio::null());
    let out = output_with_timeout(&mut pull, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("ffmpeg pulling {url}: {e}"));
    let pull_time = pull_started.elapsed();
    assert!(
        out.status.success(),
        "ffmpeg pulling {url} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // 5. Every video frame identical, in order.
    let source_video = stream_hashes(&clip, "0:v", false);
    let got_video = stream_hashes(&received, "0:v", false);
    assert_eq!(
        source_video.len(),
        SOURCE_FRAMES,
        "the source clip should have {SOURCE_FRAMES} video frames"
    );
    assert_eq!(
        got_video.len(),
        source_video.len(),
        "video frames received vs in the source"
    );
    if let Some(i) = (0..got_video.len()).find(|&i| got_video[i] != source_video[i]) {
        panic!(
            "video frame {i} differs: received {} vs source {}",
            got_video[i], source_video[i]
        );
    }

    // 6. Audio: the AC-3 packets received are a contiguous, intact run of the source's.
    let source_audio = stream_hashes(&clip, "0:a", true);
    let got_audio = stream_hashes(&received, "0:a", true);
    assert!(
        got_audio.len() + 2 >= source_audio.len() && !got_audio.is_empty(),
        "AC-3 packets: received {}, source {}",
        got_audio.len(),
        source_audio.len()
    );
    let at = source_audio
        .windows(got_audio.len())
        .position(|w| w == got_audio.as_slice());
    assert!(
        at.is_some(),
        "the {} AC-3 packets received are not a contiguous run of the source's {}",
        got_audio.len(),
        source_audio.len()
    );

    // 7. It really went through Squid: the CONNECT is in its access log (written when the
    //    tunnel closes, which follows ffmpeg's exit).
    let needle = format!("CONNECT 127.0.0.1:{server_port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !squid.access_log().contains(&needle) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let log = squid.access_log();
    let line = log
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no `{needle}` in Squid's access log:\n{log}"));
    assert!(
        line.contains(&squid.user),
        "the CONNECT was not authenticated as {}: {line}",
        squid.user
    );

    assert!(
        matches!(forwarder.child.try_wait(), Ok(None)),
        "forward mode should still be serving; stderr:\n{}",
        forwarder.stderr_text()
    );
    drop(forwarder);
    drop(squid);
    drop(server);
    eprintln!(
        "rtsp_video: {} video frames identical (framemd5), {} of {} AC-3 packets intact \
         (source packets {}..={}), pull {:.1} s, test {:.1} s",
        got_video.len(),
        got_audio.len(),
        source_audio.len(),
        at.unwrap_or(0),
        at.unwrap_or(0) + got_audio.len() - 1,
        pull_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
