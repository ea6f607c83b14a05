//! Interop of the crate's RFC 4571 module (`connect_tunnel::media`) with GStreamer, through a
//! real Squid (issue 4; docs/MEDIA-INTEROP.md).
//!
//! GStreamer → tunnel → crate (speech made by espeak-ng at test time):
//!
//! ```text
//! gst-launch-1.0: wav → PCMU or Opus → rtp…pay → rtpstreampay → tcpclientsink
//!   -> connect-tunnel -l 127.0.0.1:0 (forward mode) -> Squid http_port (Basic auth)
//!   -> receiver: media::PacketReader over the accepted TcpStream, records every packet
//! ```
//!
//! compared with two references made without any tunnel by the same pipeline: its
//! `rtpstreampay ! filesink` output parsed with `media::FrameDecoder` (fed in odd-sized pieces),
//! and its `tcpclientsink` output read by `media::PacketReader` over a local socket. Every packet
//! must be byte-for-byte the same, in the same order (so payloads, RTP sequence numbers —
//! which wrap past 65535 on purpose — timestamps and marker bits too).
//!
//! Crate → tunnel → GStreamer: the test µ-law-encodes the speech itself (8 kHz, 20 ms = 160-byte
//! payloads, RTP headers), sends the packets with `media::PacketWriter` over a library `Tunnel`
//! through Squid's TLS port, and with `media::MediaSender` (paced like live audio) through its
//! plain port, to `tcpserversrc ! rtpstreamdepay ! rtppcmudepay ! mulawdec ! wavenc`. The audio
//! GStreamer decodes must equal, sample for sample, its decode of the same packets sent over a
//! plain local socket, and the G.711 expansion of the bytes sent.
//!
//! Peers: `scripts/install-media-deps.sh` (GStreamer, espeak-ng) and
//! `scripts/install-test-deps.sh` (Squid). Without them the tests print `SKIP` and pass, unless
//! `CI=true`, where they fail.

mod support;

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use connect_tunnel::media::{FrameDecoder, MediaSender, PacketReader, PacketWriter, SenderConfig};
use connect_tunnel::{Config, Connector, Proxy, Target};
use support::{
    in_ci, output_with_timeout, require_peer, stop_child, wait_child_for, Squid, TempDir, SIGTERM,
};

const CLI: &str = env!("CARGO_BIN_EXE_connect-tunnel");
const GST_LAUNCH: &str = "gst-launch-1.0";
const GST_INSPECT: &str = "gst-inspect-1.0";
const ESPEAK: &str = "espeak-ng";

const SPEECH: &str = "Carry real time media through an H T T P proxy with CONNECT. \
                      Then use the socket nakedly. One, two, three, four, five.";
/// RTP parameters fixed in every pipeline, so that runs are byte-for-byte comparable. The first
/// sequence number is close to 65535 so that the numbers wrap during the run.
const SEQ_START: u16 = 65_400;
const SSRC: u32 = 0x1234_5678;
/// A bound on every single wait (process runs, accepts, reads).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Peers present or not
// ---------------------------------------------------------------------------------------------

/// `require_peer` for the programs, plus the GStreamer elements `elements` (by
/// `gst-inspect-1.0 --exists`), under the same rule: missing is a panic with `CI=true`, else a
/// `SKIP` line and `false`.
fn require_gstreamer(elements: &[&str]) -> bool {
    if !require_peer(GST_LAUNCH) || !require_peer(GST_INSPECT) || !require_peer(ESPEAK) {
        return false;
    }
    let missing: Vec<&str> = elements
        .iter()
        .copied()
        .filter(|e| {
            let mut cmd = Command::new(GST_INSPECT);
            cmd.args(["--exists", e]).stdin(Stdio::null());
            !output_with_timeout(&mut cmd, Duration::from_secs(30))
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let hint = "run `bash scripts/install-media-deps.sh`";
    if in_ci() {
        panic!("GStreamer elements {missing:?} are missing and CI=true; {hint}");
    }
    eprintln!("SKIP: GStreamer elements {missing:?} not found; {hint}");
    false
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Runs a command to completion within [`STEP_TIMEOUT`]; panics with its output if it fails.
fn run(program: &str, args: &[String]) -> Vec<u8> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    let out = output_with_timeout(&mut cmd, STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `gst-launch-1.0 -q` with a pipeline description given as one string (split on spaces; the
/// pipelines here have no quoted parts).
fn gst_args(pipeline: &str) -> Vec<String> {
    std::iter::once("-q".to_string())
        .chain(pipeline.split_whitespace().map(str::to_string))
        .collect()
}

/// A child process, stopped (signal, bounded grace, then SIGKILL) and reaped on drop; every
/// line it prints on stdout or stderr goes to `lines`, and stderr is also kept for messages.
struct Peer {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Peer {
    fn spawn(name: &'static str, cmd: &mut Command) -> Peer {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, lines) = mpsc::channel();
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
        Peer {
            name,
            child,
            lines,
            stderr,
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits up to `timeout` for a printed line containing `marker`; returns what follows it.
    fn wait_for(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    if let Some(at) = line.find(marker) {
                        return line[at + marker.len()..].trim().to_string();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(50));
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before printing `{marker}`; stderr:\n{}",
                    self.name,
                    self.stderr_text()
                );
            }
            if left.is_zero() {
                panic!(
                    "{} did not print `{marker}` within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr_text()
                );
            }
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; panics unless it exits 0.
    fn wait_success(&mut self, timeout: Duration) {
        match wait_child_for(&mut self.child, timeout) {
            Some(status) if status.success() => {}
            Some(status) => panic!(
                "{} failed ({status}); stderr:\n{}",
                self.name,
                self.stderr_text()
            ),
            None => panic!(
                "{} did not finish within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr_text()
            ),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        stop_child(&mut self.child, SIGTERM, Duration::from_secs(5));
        if thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.name, self.stderr_text());
        }
    }
}

/// `connect-tunnel -x PROXY -l 127.0.0.1:0 TARGET` and the address it listens on.
fn forward_mode(proxy_url: &str, target: &str) -> (Peer, SocketAddr) {
    let mut peer = Peer::spawn(
        "connect-tunnel",
        Command::new(CLI).args(["-x", proxy_url, "-l", "127.0.0.1:0", target]),
    );
    let addr = peer
        .wait_for("connect-tunnel: listening on ", Duration::from_secs(15))
        .parse()
        .expect("forward mode's listening address");
    (peer, addr)
}

// ---------------------------------------------------------------------------------------------
// Speech
// ---------------------------------------------------------------------------------------------

/// speech.wav (22.05 kHz mono, as espeak-ng writes it) in `dir`.
fn make_speech(dir: &Path) -> std::path::PathBuf {
    let wav = dir.join("speech.wav");
    run(
        ESPEAK,
        &["-w".into(), wav.display().to_string(), SPEECH.into()],
    );
    wav
}

/// The samples of the `data` chunk of a 16-bit PCM WAV file.
fn wav_samples(path: &Path) -> Vec<i16> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "{} is not a WAV file",
        path.display()
    );
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        if id == b"fmt " {
            let format = u16::from_le_bytes([body[0], body[1]]);
            let bits = u16::from_le_bytes([body[14], body[15]]);
            assert_eq!(
                (format, bits),
                (1, 16),
                "{}: not 16-bit PCM",
                path.display()
            );
        }
        if id == b"data" {
            return body
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
        }
        at += 8 + len + (len & 1);
    }
    panic!("{}: no data chunk", path.display());
}

/// G.711 µ-law encoding of one 16-bit sample (the classic Sun reference algorithm).
fn mulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    // The position of the highest set bit above bit 7: the segment (0..=7).
    let exponent = match s >> 7 {
        0 => 0,
        high => 31 - high.leading_zeros() as i32,
    };
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// G.711 µ-law decoding of one byte.
fn mulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0f);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// RTP packets (RFC 3550: V=2, PT 0 = PCMU, marker on the first) carrying 160 µ-law bytes
/// (20 ms at 8 kHz) each; the last one may be shorter.
fn pcmu_packets(ulaw: &[u8]) -> Vec<Vec<u8>> {
    ulaw.chunks(160)
        .enumerate()
        .map(|(i, payload)| {
            let seq = SEQ_START.wrapping_add(i as u16);
            let timestamp = (i as u32).wrapping_mul(160);
            let mut p = Vec::with_capacity(12 + payload.len());
            p.push(0x80);
            p.push(if i == 0 { 0x80 } else { 0x00 });
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&timestamp.to_be_bytes());
            p.extend_from_slice(&SSRC.to_be_bytes());
            p.extend_from_slice(payload);
            p
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// RTP checks
// ---------------------------------------------------------------------------------------------

/// The fixed RTP header fields of a packet: (payload type, sequence number, timestamp, SSRC,
/// payload offset).
fn rtp_header(p: &[u8]) -> (u8, u16, u32, u32, usize) {
    assert!(p.len() >= 12, "RTP packet of {} bytes", p.len());
    assert_eq!(p[0] >> 6, 2, "RTP version");
    let csrcs = usize::from(p[0] & 0x0f);
    let mut offset = 12 + 4 * csrcs;
    if p[0] & 0x10 != 0 {
        let words = usize::from(u16::from_be_bytes([p[offset + 2], p[offset + 3]]));
        offset += 4 + 4 * words;
    }
    (
        p[1] & 0x7f,
        u16::from_be_bytes([p[2], p[3]]),
        u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        offset,
    )
}

/// Checks that `packets` is one RTP stream with the fixed SSRC and consecutive sequence numbers
/// starting at [`SEQ_START`] (so wrapping past 65535); returns the total payload bytes.
fn check_rtp_stream(packets: &[Vec<u8>], payload_type: u8) -> usize {
    assert!(!packets.is_empty(), "no RTP packets");
    let mut payload_bytes = 0;
    for (i, p) in packets.iter().enumerate() {
        let (pt, seq, _ts, ssrc, offset) = rtp_header(p);
        assert_eq!(pt, payload_type, "payload type of packet {i}");
        assert_eq!(ssrc, SSRC, "SSRC of packet {i}");
        assert_eq!(
            seq,
            SEQ_START.wrapping_add(i as u16),
            "sequence number of packet {i}"
        );
        payload_bytes += p.len() - offset;
    }
    payload_bytes
}

/// Panics at the first packet where `got` and `want` differ, naming it by index and sequence
/// number.
fn assert_same_packets(what: &str, got: &[Vec<u8>], want: &[Vec<u8>]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let seq = |p: &[u8]| (p.len() >= 4).then(|| u16::from_be_bytes([p[2], p[3]]));
            panic!(
                "{what}: packet {i} differs (received {} bytes, seq {:?}; expected {} bytes, \
                 seq {:?})",
                g.len(),
                seq(g),
                w.len(),
                seq(w)
            );
        }
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: packets received vs expected"
    );
}

// ---------------------------------------------------------------------------------------------
// Receiving with the crate
// ---------------------------------------------------------------------------------------------

/// Accepts one connection on `listener` within `timeout` and reads it to its end with
/// `media::PacketReader`, on a thread; the packets come back through the handle.
fn receive_packets(listener: TcpListener) -> thread::JoinHandle<io::Result<Vec<Vec<u8>>>> {
    thread::spawn(move || {
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "no connection"));
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(STEP_TIMEOUT))?;
        let mut reader = PacketReader::new(stream);
        let mut packets = Vec::new();
        while let Some(p) = reader.read_packet()? {
            packets.push(p.to_vec());
        }
        Ok(packets)
    })
}

fn join_receiver(handle: thread::JoinHandle<io::Result<Vec<Vec<u8>>>>, what: &str) -> Vec<Vec<u8>> {
    handle
        .join()
        .unwrap_or_else(|_| panic!("{what}: receiver thread panicked"))
        .unwrap_or_else(|e| panic!("{what}: receiving failed: {e}"))
}

/// Decodes an RFC 4571 byte stream with `media::FrameDecoder`, fed in pieces of odd sizes (1,
/// 2, 3, … 97 bytes, cycling) so that length prefixes and packets are split everywhere.
fn decode_stream(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut decoder = FrameDecoder::new();
    let mut packets = Vec::new();
    let mut at = 0;
    let mut piece = 1;
    while at < bytes.len() {
        let end = (at + piece).min(bytes.len());
        let mut input = &bytes[at..end];
        while !input.is_empty() {
            let (used, packet) = decoder.try_decode(input).expect("valid RFC 4571 stream");
            if let Some(p) = packet {
                packets.push(p.to_vec());
            }
            input = &input[used..];
        }
        at = end;
        piece = piece % 97 + 1;
    }
    assert!(
        decoder.is_between_frames() && decoder.pending() == 0,
        "the stream ended inside a frame"
    );
    packets
}

// ---------------------------------------------------------------------------------------------
// GStreamer → forward mode → Squid → PacketReader
// ---------------------------------------------------------------------------------------------

/// The part of the sending pipeline after the WAV file: encode, payload, RFC 4571 framing.
fn encode_chain(codec: Codec) -> String {
    let rtp = format!("seqnum-offset={SEQ_START} timestamp-offset=0 ssrc={SSRC}");
    match codec {
        Codec::Pcmu => format!(
            "audioconvert ! audioresample ! audio/x-raw,rate=8000,channels=1 ! mulawenc ! \
             rtppcmupay min-ptime=20000000 max-ptime=20000000 {rtp} ! rtpstreampay"
        ),
        Codec::Opus => format!(
            "audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=1 ! opusenc ! \
             rtpopuspay pt=96 {rtp} ! rtpstreampay"
        ),
    }
}

#[derive(Clone, Copy, Debug)]
enum Codec {
    Pcmu,
    Opus,
}

fn gstreamer_through_forward_mode(codec: Codec) {
    let started = Instant::now();
    let (payloader, encoder, payload_type) = match codec {
        Codec::Pcmu => ("rtppcmupay", "mulawenc", 0),
        Codec::Opus => ("rtpopuspay", "opusenc", 96),
    };
    if !require_gstreamer(&[
        "wavparse",
        "audioconvert",
        "audioresample",
        encoder,
        payloader,
        "rtpstreampay",
        "tcpclientsink",
        "filesink",
    ]) {
        return;
    }
    let tmp = TempDir::new("gst-rfc4571");
    let speech = make_speech(&tmp.path);
    let source = format!("filesrc location={} ! wavparse", speech.display());
    let chain = encode_chain(codec);

    // Reference 1: the pipeline's RFC 4571 output in a file, parsed with FrameDecoder.
    // `buffer-mode=unbuffered`: GStreamer 1.22.0's filesink in its default (internally
    // buffered) mode writes this Opus stream wrongly (one frame loses 12 of its 173 bytes),
    // while unbuffered or fully buffered filesink, fdsink and tcpclientsink write it whole.
    let stream_file = tmp.join("reference.rtpstream");
    run(
        GST_LAUNCH,
        &gst_args(&format!(
            "{source} ! {chain} ! filesink buffer-mode=unbuffered location={}",
            stream_file.display()
        )),
    );
    let from_file = decode_stream(&fs::read(&stream_file).expect("read reference stream"));

    // Reference 2: the same pipeline to a local socket, read with PacketReader.
    let direct = TcpListener::bind("127.0.0.1:0").expect("bind");
    let direct_port = direct.local_addr().unwrap().port();
    let receiver = receive_packets(direct);
    run(
        GST_LAUNCH,
        &gst_args(&format!(
            "{source} ! {chain} ! tcpclientsink host=127.0.0.1 port={direct_port} sync=false"
        )),
    );
    let from_socket = join_receiver(receiver, "direct socket");
    assert_same_packets("direct socket vs file", &from_socket, &from_file);

    // Through the tunnel: GStreamer -> forward mode -> Squid (plain, Basic) -> PacketReader.
    let tunneled = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target_port = tunneled.local_addr().unwrap().port();
    let Some(squid) = Squid::start(&[target_port]) else {
        return;
    };
    let (mut forwarder, listen) =
        forward_mode(&squid.plain_url(true), &format!("127.0.0.1:{target_port}"));
    let receiver = receive_packets(tunneled);
    let sent_at = Instant::now();
    run(
        GST_LAUNCH,
        &gst_args(&format!(
            "{source} ! {chain} ! tcpclientsink host=127.0.0.1 port={} sync=false",
            listen.port()
        )),
    );
    let through_tunnel = join_receiver(receiver, "through the tunnel");
    let transfer = sent_at.elapsed();
    assert_same_packets(
        "through the tunnel vs reference",
        &through_tunnel,
        &from_file,
    );
    let payload_bytes = check_rtp_stream(&through_tunnel, payload_type);
    if let Codec::Pcmu = codec {
        let sizes_ok = through_tunnel[..through_tunnel.len() - 1]
            .iter()
            .all(|p| p.len() == 12 + 160);
        assert!(sizes_ok, "PCMU packets should carry 160 bytes (20 ms)");
    }

    let needle = format!("CONNECT 127.0.0.1:{target_port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !squid.access_log().contains(&needle) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        squid.access_log().contains(&needle),
        "no `{needle}` in Squid's access log:\n{}",
        squid.access_log()
    );
    assert!(
        matches!(forwarder.child.try_wait(), Ok(None)),
        "forward mode should still be serving; stderr:\n{}",
        forwarder.stderr_text()
    );
    eprintln!(
        "gstreamer_rfc4571 {codec:?}: {} RTP packets ({} payload bytes, seq {}..{} wrapping) \
         identical through forward mode + Squid, direct socket and file; pipeline through the \
         tunnel {:.2} s, test {:.1} s",
        through_tunnel.len(),
        payload_bytes,
        SEQ_START,
        SEQ_START.wrapping_add(through_tunnel.len() as u16 - 1),
        transfer.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn pcmu_speech_from_gstreamer_through_forward_mode_and_squid() {
    gstreamer_through_forward_mode(Codec::Pcmu);
}

#[test]
fn opus_speech_from_gstreamer_through_forward_mode_and_squid() {
    gstreamer_through_forward_mode(Codec::Opus);
}

// ---------------------------------------------------------------------------------------------
// PacketWriter / MediaSender → Tunnel → Squid → GStreamer
// ---------------------------------------------------------------------------------------------

/// A GStreamer RFC 4571 PCMU receiver writing the decoded audio to `wav`. It binds a port of
/// its own choosing (`port=0`); `-v` makes it print `current-port = N` once it listens, and it
/// exits at the end of the stream after finishing the WAV file.
fn gstreamer_pcmu_receiver(wav: &Path) -> (Peer, u16) {
    let pipeline = format!(
        "tcpserversrc host=127.0.0.1 port=0 ! \
         application/x-rtp-stream,media=audio,clock-rate=8000,encoding-name=PCMU,payload=0 ! \
         rtpstreamdepay ! rtppcmudepay ! mulawdec ! wavenc ! filesink location={}",
        wav.display()
    );
    let mut peer = Peer::spawn(
        "gst-launch-1.0 receiver",
        Command::new(GST_LAUNCH)
            .args(["-v", "-e"])
            .args(pipeline.split_whitespace()),
    );
    let port = peer
        .wait_for("current-port = ", Duration::from_secs(30))
        .parse()
        .expect("tcpserversrc's current-port");
    (peer, port)
}

enum Sender {
    /// `PacketWriter` over the whole `Tunnel`, through Squid's TLS port.
    PacketWriterOverTls,
    /// `MediaSender` over the tunnel's writing half, paced at 20 ms like live audio, through
    /// Squid's plain port.
    MediaSenderPaced,
}

fn crate_to_gstreamer(sender: Sender) {
    let started = Instant::now();
    if !require_gstreamer(&[
        "wavparse",
        "audioconvert",
        "audioresample",
        "tcpserversrc",
        "rtpstreamdepay",
        "rtppcmudepay",
        "mulawdec",
        "wavenc",
    ]) {
        return;
    }
    let tmp = TempDir::new("gst-rfc4571-rx");
    let speech = make_speech(&tmp.path);

    // The speech as 8 kHz 16-bit mono, µ-law-encoded here, in 20 ms RTP packets.
    let pcm8k = tmp.join("speech-8k.wav");
    run(
        GST_LAUNCH,
        &gst_args(&format!(
            "filesrc location={} ! wavparse ! audioconvert ! audioresample ! \
             audio/x-raw,format=S16LE,rate=8000,channels=1 ! wavenc ! filesink location={}",
            speech.display(),
            pcm8k.display()
        )),
    );
    let ulaw: Vec<u8> = wav_samples(&pcm8k).into_iter().map(mulaw_encode).collect();
    let packets = pcmu_packets(&ulaw);
    let expected: Vec<i16> = ulaw.iter().copied().map(mulaw_decode).collect();
    assert!(
        packets.len() > 100,
        "speech too short: {} packets",
        packets.len()
    );

    // Reference: the same packets over a plain local socket.
    let reference_wav = tmp.join("reference.wav");
    let (mut reference_rx, reference_port) = gstreamer_pcmu_receiver(&reference_wav);
    {
        let stream =
            TcpStream::connect(("127.0.0.1", reference_port)).expect("connect to reference");
        stream.set_write_timeout(Some(STEP_TIMEOUT)).unwrap();
        let mut writer = PacketWriter::new(stream);
        for p in &packets {
            writer.write_packet(p).expect("write to reference receiver");
        }
        writer.flush().unwrap();
    }
    reference_rx.wait_success(STEP_TIMEOUT);
    let reference = wav_samples(&reference_wav);

    // Through Squid with the library.
    let tunneled_wav = tmp.join("tunneled.wav");
    let (mut tunneled_rx, target_port) = gstreamer_pcmu_receiver(&tunneled_wav);
    let Some(squid) = Squid::start(&[target_port]) else {
        return;
    };
    let target = Target::parse(&format!("127.0.0.1:{target_port}")).unwrap();
    let sent_at = Instant::now();
    let how = match sender {
        Sender::PacketWriterOverTls => {
            let proxy = Proxy::parse(&squid.tls_url(true)).unwrap();
            let config = Config::default()
                .proxy_ca_file(&squid.ca.ca_pem_path)
                .connect_timeout(Duration::from_secs(20));
            let connector = Connector::new(proxy, config).expect("connector");
            let tunnel = connector
                .connect(&target)
                .expect("tunnel through Squid (TLS)");
            assert!(tunnel.is_tls());
            tunnel
                .get_ref()
                .set_write_timeout(Some(STEP_TIMEOUT))
                .unwrap();
            let mut writer = PacketWriter::new(tunnel);
            for p in &packets {
                writer.write_packet(p).expect("write through the tunnel");
            }
            writer.flush().unwrap();
            writer.into_inner().close().expect("close the tunnel");
            "PacketWriter over a TLS tunnel"
        }
        Sender::MediaSenderPaced => {
            let proxy = Proxy::parse(&squid.plain_url(true)).unwrap();
            let config = Config::default().connect_timeout(Duration::from_secs(20));
            let connector = Connector::new(proxy, config).expect("connector");
            let tunnel = connector.connect(&target).expect("tunnel through Squid");
            tunnel
                .get_ref()
                .set_write_timeout(Some(STEP_TIMEOUT))
                .unwrap();
            tunnel
                .get_ref()
                .set_read_timeout(Some(STEP_TIMEOUT))
                .unwrap();
            let (mut reader, writer) = tunnel.split();
            let media = MediaSender::spawn(
                writer,
                SenderConfig {
                    // Loopback never holds a packet this long; the bound is here so that a
                    // stall of this busy machine does not drop speech.
                    max_delay: Some(Duration::from_secs(5)),
                    ..SenderConfig::default()
                },
            )
            .expect("media sender");
            let first = Instant::now();
            for (i, p) in packets.iter().enumerate() {
                let due = first + Duration::from_millis(20) * i as u32;
                thread::sleep(due.saturating_duration_since(Instant::now()));
                media.send(p, true).expect("queue a packet");
            }
            let finished = media.finish();
            assert!(finished.error.is_none(), "sender: {:?}", finished.error);
            assert_eq!(finished.stats.written.packets, packets.len() as u64);
            assert_eq!(finished.stats.dropped().packets, 0);
            let mut writer = finished.sink;
            writer.shutdown_write().expect("half-close the tunnel");
            // Squid passes the end on and closes the tunnel; the receiver sends nothing.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
            assert!(rest.is_empty(), "the receiver sent {} bytes", rest.len());
            "MediaSender (20 ms pacing) over a plain tunnel"
        }
    };
    tunneled_rx.wait_success(STEP_TIMEOUT);
    let transfer = sent_at.elapsed();
    let tunneled = wav_samples(&tunneled_wav);

    assert_eq!(
        reference.len(),
        packets.iter().map(|p| p.len() - 12).sum::<usize>(),
        "reference decode: one sample per µ-law byte"
    );
    assert_eq!(
        reference, expected,
        "GStreamer's reference decode vs the G.711 expansion of the bytes sent"
    );
    assert_eq!(tunneled.len(), reference.len(), "samples decoded");
    if let Some(i) = (0..tunneled.len()).find(|&i| tunneled[i] != reference[i]) {
        panic!(
            "sample {i} differs: through the tunnel {} vs reference {}",
            tunneled[i], reference[i]
        );
    }
    let needle = format!("CONNECT 127.0.0.1:{target_port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !squid.access_log().contains(&needle) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        squid.access_log().contains(&needle),
        "no `{needle}` in Squid's access log:\n{}",
        squid.access_log()
    );
    eprintln!(
        "gstreamer_rfc4571 crate -> GStreamer ({how}): {} packets, {} samples ({:.2} s of \
         speech) decoded identically to the reference; sending + decoding {:.2} s, test {:.1} s",
        packets.len(),
        tunneled.len(),
        tunneled.len() as f64 / 8000.0,
        transfer.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn pcmu_from_packet_writer_through_squid_tls_to_gstreamer() {
    crate_to_gstreamer(Sender::PacketWriterOverTls);
}

#[test]
fn pcmu_from_media_sender_through_squid_to_gstreamer() {
    crate_to_gstreamer(Sender::MediaSenderPaced);
}
