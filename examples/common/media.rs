//! RTP media for the demo: packets (RFC 3550), their framing over a byte stream (RFC 4571), a
//! real-time camera-like source, and a media server that checks what arrives.
//!
//! # Packets
//!
//! Each packet is a 12-byte RTP header (V=2, no padding, no extension, no CSRC) followed by a
//! payload laid out for checking:
//!
//! ```text
//! +--------------+---------------------+-------------------+------------------+
//! | RTP header   | send time, ns (u64) | media bytes       | CRC-32 (u32)     |
//! | 12 bytes     | 8 bytes, big-endian | G.711 or video    | of all before it |
//! +--------------+---------------------+-------------------+------------------+
//! ```
//!
//! The send time is read from a [`Clock`] both ends agree on, so the receiver can compute
//! latency; the CRC-32 lets it spot a packet changed in transit.
//!
//! # Framing
//!
//! RFC 4571 (each packet preceded by its length as a 16-bit big-endian number) comes from the
//! library, `connect_tunnel::media`: the camera sends through a latency-bounded
//! [`MediaSender`], which writes each frame with one `write_all`; the server reads with a
//! [`PacketReader`], which splits the byte stream back into packets from one fixed buffer.
//!
//! # Source and server
//!
//! [`send_stream`] paces a camera's output by the wall clock: a 20 ms G.711 µ-law audio packet
//! (160 bytes, payload type 0) every 20 ms, and a video frame (a few KB of test pattern, split
//! into packets of at most [`MAX_SOURCE_PACKET`] bytes, marker bit on the last) every 40 ms.
//! Audio and the packets of each second's video key frame are sent as key packets: with
//! [`DropPolicy::NonKeyFirst`] a slow link costs video first.
//! [`MediaServer`] accepts one connection, reads packets until EOF, checks sequence numbers per
//! SSRC (lost, out of order, duplicated) and checksums, measures latency, answers with a one-line
//! receipt and returns a [`MediaReport`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use connect_tunnel::media::{
    encode_frame, DropPolicy, MediaSender, PacketReader, SendError, SenderConfig, SenderStats,
};

/// Length of the fixed RTP header the source sends.
pub const RTP_HEADER_LEN: usize = 12;
/// Length of the send timestamp at the start of each payload.
pub const SEND_TIME_LEN: usize = 8;
/// Length of the CRC-32 at the end of each packet.
pub const CHECKSUM_LEN: usize = 4;
/// Bytes of each packet that are not media.
pub const PACKET_OVERHEAD: usize = RTP_HEADER_LEN + SEND_TIME_LEN + CHECKSUM_LEN;
/// Largest packet the source builds (video frames are split to fit).
pub const MAX_SOURCE_PACKET: usize = 1200;

/// RTP payload type of G.711 µ-law audio (RFC 3551).
pub const PT_PCMU: u8 = 0;
/// Dynamic RTP payload type used for the test video.
pub const PT_VIDEO: u8 = 96;
/// SSRC of the audio stream.
pub const AUDIO_SSRC: u32 = 0x0A0D_10A0;
/// SSRC of the video stream.
pub const VIDEO_SSRC: u32 = 0x0F1D_E000;
/// Audio packet interval.
pub const AUDIO_PACKET_INTERVAL: Duration = Duration::from_millis(20);
/// Audio samples (8 kHz, one byte each in µ-law) per packet.
pub const AUDIO_SAMPLES_PER_PACKET: usize = 160;
/// Audio sample rate.
pub const AUDIO_RATE: u32 = 8000;
/// Video frames per second.
pub const VIDEO_FPS: u32 = 25;
/// RTP clock rate of video.
pub const VIDEO_CLOCK: u32 = 90_000;
/// First sequence numbers: near the top of the 16-bit range, so a few seconds of stream wrap
/// around and the receiver's wrap handling is exercised every run.
pub const AUDIO_FIRST_SEQUENCE: u16 = 65_436;
/// See [`AUDIO_FIRST_SEQUENCE`].
pub const VIDEO_FIRST_SEQUENCE: u16 = 65_236;
/// Largest WAV file [`send_stream`] loads.
pub const MAX_WAV_BYTES: u64 = 64 * 1024 * 1024;
/// The media server gives up on a connection silent for this long.
pub const RECEIVE_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------------

/// Where send timestamps come from; sender and receiver must use the same kind.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// Nanoseconds since a shared `Instant`: monotonic, for a sender and receiver in one process.
    Shared(Instant),
    /// Nanoseconds since the Unix epoch: for separate processes (and machines with synced
    /// clocks).
    Unix,
}

impl Clock {
    /// The current time in nanoseconds on this clock.
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Shared(epoch) => epoch.elapsed().as_nanos() as u64,
            Clock::Unix => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RTP packets
// ---------------------------------------------------------------------------------------------

/// Why a packet could not be built or was refused on receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than its RTP header (with CSRCs and extension) or the test payload.
    TooShort,
    /// The version field is not 2.
    BadVersion,
    /// The padding count does not fit the packet.
    BadPadding,
    /// The CRC-32 at the end does not match the rest: the packet was changed in transit.
    Checksum,
    /// The output buffer is too small for the packet.
    NoRoom,
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PacketError::TooShort => "packet too short",
            PacketError::BadVersion => "RTP version is not 2",
            PacketError::BadPadding => "bad RTP padding",
            PacketError::Checksum => "checksum mismatch",
            PacketError::NoRoom => "buffer too small for the packet",
        })
    }
}

/// The fields of an RTP fixed header this demo uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit: the last packet of a video frame.
    pub marker: bool,
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Sequence number, +1 per packet of one SSRC.
    pub sequence: u16,
    /// Media timestamp in the payload type's clock rate.
    pub timestamp: u32,
    /// Synchronization source: one per stream.
    pub ssrc: u32,
}

impl RtpHeader {
    /// Writes the 12-byte header (V=2, P=0, X=0, CC=0).
    pub fn encode(&self, out: &mut [u8; RTP_HEADER_LEN]) {
        out[0] = 2 << 6;
        out[1] = (u8::from(self.marker) << 7) | (self.payload_type & 0x7f);
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
    }

    /// Parses a packet's header; returns it and the payload (after CSRCs and header extension,
    /// before padding).
    pub fn parse(packet: &[u8]) -> Result<(RtpHeader, &[u8]), PacketError> {
        if packet.len() < RTP_HEADER_LEN {
            return Err(PacketError::TooShort);
        }
        if packet[0] >> 6 != 2 {
            return Err(PacketError::BadVersion);
        }
        let padding = packet[0] & 0x20 != 0;
        let extension = packet[0] & 0x10 != 0;
        let csrc_count = usize::from(packet[0] & 0x0f);
        let header = RtpHeader {
            marker: packet[1] & 0x80 != 0,
            payload_type: packet[1] & 0x7f,
            sequence: u16::from_be_bytes([packet[2], packet[3]]),
            timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        };
        let mut start = RTP_HEADER_LEN + 4 * csrc_count;
        if extension {
            let words = packet
                .get(start + 2..start + 4)
                .ok_or(PacketError::TooShort)?;
            start += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
        }
        let mut end = packet.len();
        if padding {
            let count = usize::from(*packet.last().ok_or(PacketError::TooShort)?);
            if count == 0 || count > end {
                return Err(PacketError::BadPadding);
            }
            end -= count;
        }
        if start > end {
            return Err(PacketError::TooShort);
        }
        Ok((header, &packet[start..end]))
    }
}

/// CRC-32 (IEEE 802.3, reflected, as in zlib and Ethernet) lookup table, built at compile time.
const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32 of `data` (IEEE polynomial; `crc32(b"123456789") == 0xCBF4_3926`).
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &b| {
        CRC32_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8)
    })
}

/// Builds a test packet into `out`: header, send time, media, CRC-32. Returns its length.
pub fn build_packet(
    header: &RtpHeader,
    send_time_ns: u64,
    media: &[u8],
    out: &mut [u8],
) -> Result<usize, PacketError> {
    let len = PACKET_OVERHEAD + media.len();
    if out.len() < len {
        return Err(PacketError::NoRoom);
    }
    let mut fixed = [0u8; RTP_HEADER_LEN];
    header.encode(&mut fixed);
    out[..RTP_HEADER_LEN].copy_from_slice(&fixed);
    let media_start = RTP_HEADER_LEN + SEND_TIME_LEN;
    out[RTP_HEADER_LEN..media_start].copy_from_slice(&send_time_ns.to_be_bytes());
    out[media_start..media_start + media.len()].copy_from_slice(media);
    let crc = crc32(&out[..len - CHECKSUM_LEN]);
    out[len - CHECKSUM_LEN..len].copy_from_slice(&crc.to_be_bytes());
    Ok(len)
}

/// A received test packet that passed its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestPacket<'a> {
    /// Its RTP header.
    pub header: RtpHeader,
    /// The sender's clock when it was built.
    pub send_time_ns: u64,
    /// The media bytes.
    pub media: &'a [u8],
}

/// Verifies a packet built by [`build_packet`]: RTP header, then the CRC-32.
pub fn check_packet(packet: &[u8]) -> Result<TestPacket<'_>, PacketError> {
    if packet.len() < PACKET_OVERHEAD {
        return Err(PacketError::TooShort);
    }
    let (body, tail) = packet.split_at(packet.len() - CHECKSUM_LEN);
    let expected = u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32(body) != expected {
        return Err(PacketError::Checksum);
    }
    let (header, payload) = RtpHeader::parse(body)?;
    if payload.len() < SEND_TIME_LEN {
        return Err(PacketError::TooShort);
    }
    let (time, media) = payload.split_at(SEND_TIME_LEN);
    let mut time_bytes = [0u8; SEND_TIME_LEN];
    time_bytes.copy_from_slice(time);
    Ok(TestPacket {
        header,
        send_time_ns: u64::from_be_bytes(time_bytes),
        media,
    })
}

/// RTCP packet type of BYE (RFC 3550 section 6.6).
pub const RTCP_BYE: u8 = 203;

/// Builds an RTCP BYE for `ssrcs` (at most 31) into `out`; returns its length.
///
/// The source ends its stream with one: the server then answers with its receipt, so the
/// sender learns the result without half-closing first (some proxies end the whole tunnel on
/// a half-close).
pub fn build_bye(ssrcs: &[u32], out: &mut [u8]) -> Result<usize, PacketError> {
    let len = 4 + 4 * ssrcs.len();
    if ssrcs.is_empty() || ssrcs.len() > 31 {
        return Err(PacketError::TooShort);
    }
    let out = out.get_mut(..len).ok_or(PacketError::NoRoom)?;
    out[0] = (2 << 6) | ssrcs.len() as u8;
    out[1] = RTCP_BYE;
    out[2..4].copy_from_slice(&(ssrcs.len() as u16).to_be_bytes());
    for (slot, ssrc) in out[4..].chunks_exact_mut(4).zip(ssrcs) {
        slot.copy_from_slice(&ssrc.to_be_bytes());
    }
    Ok(len)
}

/// Whether `packet` is an RTCP BYE (RTP and RTCP share the stream as in RFC 5761).
pub fn is_rtcp_bye(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] >> 6 == 2 && packet[1] == RTCP_BYE
}

// ---------------------------------------------------------------------------------------------
// Receiving: sequence checks and the report
// ---------------------------------------------------------------------------------------------

/// Sequence bookkeeping for one SSRC, with extended (wrap-aware) sequence numbers.
#[derive(Clone, Debug)]
struct SequenceState {
    ssrc: u32,
    first: u64,
    highest: u64,
    /// Bit i set: sequence `highest - i` was received (i < 128).
    window: u128,
    unique: u64,
}

impl SequenceState {
    fn new(ssrc: u32, sequence: u16) -> Self {
        // Start the extended numbers one cycle up so a late packet from before the first
        // never goes below zero.
        let ext = (1u64 << 16) + u64::from(sequence);
        SequenceState {
            ssrc,
            first: ext,
            highest: ext,
            window: 1,
            unique: 1,
        }
    }

    /// Records one packet; returns what it was.
    fn record(&mut self, sequence: u16) -> Arrival {
        let delta = sequence.wrapping_sub(self.highest as u16) as i16;
        if delta > 0 {
            let step = delta as u32;
            self.highest += u64::from(step);
            self.window = if step >= 128 {
                1
            } else {
                (self.window << step) | 1
            };
            self.unique += 1;
            Arrival::InOrder
        } else if delta == 0 {
            Arrival::Duplicate
        } else {
            let back = u32::from(delta.unsigned_abs());
            if back < 128 {
                let bit = 1u128 << back;
                if self.window & bit != 0 {
                    return Arrival::Duplicate;
                }
                self.window |= bit;
            }
            if self.highest - u64::from(back) < self.first {
                self.first = self.highest - u64::from(back);
            }
            self.unique += 1;
            Arrival::Late
        }
    }

    fn lost(&self) -> u64 {
        (self.highest - self.first + 1).saturating_sub(self.unique)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrival {
    InOrder,
    Late,
    Duplicate,
}

/// What the media server saw on one connection.
#[derive(Clone, Debug, Default)]
pub struct MediaReport {
    /// Packets received (including corrupted and duplicated ones).
    pub packets: u64,
    /// RTP bytes received (frame payloads, without the 2-byte length prefixes).
    pub bytes: u64,
    /// Packets never received, from gaps in each SSRC's sequence numbers.
    pub lost: u64,
    /// Packets whose checksum or RTP header was wrong.
    pub corrupted: u64,
    /// Packets that arrived after a later sequence number of their SSRC.
    pub out_of_order: u64,
    /// Packets received more than once.
    pub duplicated: u64,
    /// Packets with the marker bit (complete video frames).
    pub frames_marked: u64,
    /// Distinct SSRCs seen.
    pub streams: usize,
    /// Whether the stream ended with an RTCP BYE (rather than just EOF).
    pub bye: bool,
    /// Receive time minus send time, per good packet, in arrival order.
    pub latencies_ns: Vec<u64>,
    /// From the first packet to the end of the stream.
    pub elapsed: Duration,
}

impl MediaReport {
    /// The `q`-quantile (0.0..=1.0) of the latencies, nearest-rank; 0 when there are none.
    pub fn latency_quantile_ns(&self, q: f64) -> u64 {
        if self.latencies_ns.is_empty() {
            return 0;
        }
        let mut sorted = self.latencies_ns.clone();
        sorted.sort_unstable();
        let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.saturating_sub(1).min(sorted.len() - 1)]
    }

    /// Median latency.
    pub fn p50_ns(&self) -> u64 {
        self.latency_quantile_ns(0.50)
    }

    /// 99th percentile latency.
    pub fn p99_ns(&self) -> u64 {
        self.latency_quantile_ns(0.99)
    }

    /// Largest latency.
    pub fn max_ns(&self) -> u64 {
        self.latencies_ns.iter().copied().max().unwrap_or(0)
    }

    /// Whether nothing was lost, corrupted, reordered or duplicated.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.corrupted == 0 && self.out_of_order == 0 && self.duplicated == 0
    }

    /// The one-line receipt the server sends back to the sender.
    pub fn receipt(&self) -> String {
        format!(
            "RECEIPT packets={} bytes={} lost={} corrupted={} out_of_order={} duplicated={} \
             p50_us={} p99_us={} max_us={}\n",
            self.packets,
            self.bytes,
            self.lost,
            self.corrupted,
            self.out_of_order,
            self.duplicated,
            self.p50_ns() / 1000,
            self.p99_ns() / 1000,
            self.max_ns() / 1000
        )
    }
}

/// The server's receipt, as parsed by the sender.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Receipt {
    /// Packets the server received.
    pub packets: u64,
    /// RTP bytes the server received.
    pub bytes: u64,
    /// Packets the server found missing.
    pub lost: u64,
    /// Packets that failed their checks.
    pub corrupted: u64,
    /// Packets that arrived late.
    pub out_of_order: u64,
    /// Packets received twice.
    pub duplicated: u64,
    /// Median latency the server measured, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// Largest latency, µs.
    pub max_us: u64,
}

impl Receipt {
    /// Parses a line made by [`MediaReport::receipt`]; `None` if it is not one.
    pub fn parse(line: &str) -> Option<Receipt> {
        let mut fields = line.trim().split(' ');
        if fields.next()? != "RECEIPT" {
            return None;
        }
        let mut receipt = Receipt::default();
        for field in fields {
            let (key, value) = field.split_once('=')?;
            let value: u64 = value.parse().ok()?;
            let slot = match key {
                "packets" => &mut receipt.packets,
                "bytes" => &mut receipt.bytes,
                "lost" => &mut receipt.lost,
                "corrupted" => &mut receipt.corrupted,
                "out_of_order" => &mut receipt.out_of_order,
                "duplicated" => &mut receipt.duplicated,
                "p50_us" => &mut receipt.p50_us,
                "p99_us" => &mut receipt.p99_us,
                "max_us" => &mut receipt.max_us,
                _ => continue, // newer fields are fine
            };
            *slot = value;
        }
        Some(receipt)
    }
}

/// Most SSRCs tracked on one connection; packets of further SSRCs count as corrupted.
pub const MAX_STREAMS: usize = 16;

/// Reads framed test packets until an RTCP BYE or EOF, and checks each one.
pub fn receive_stream(reader: impl Read, clock: Clock) -> io::Result<MediaReport> {
    let mut frames = PacketReader::new(reader);
    let mut report = MediaReport::default();
    let mut streams: Vec<SequenceState> = Vec::with_capacity(MAX_STREAMS);
    let mut first_arrival: Option<Instant> = None;
    while let Some(packet) = frames.read_packet()? {
        let now_ns = clock.now_ns();
        first_arrival.get_or_insert_with(Instant::now);
        if is_rtcp_bye(packet) {
            report.bye = true;
            break;
        }
        report.packets += 1;
        report.bytes += packet.len() as u64;
        let checked = match check_packet(packet) {
            Ok(checked) => checked,
            Err(e) => {
                report.corrupted += 1;
                log::warn!("packet #{}: {e}", report.packets);
                continue;
            }
        };
        let ssrc = checked.header.ssrc;
        let sequence = checked.header.sequence;
        let known = streams.iter().position(|s| s.ssrc == ssrc);
        let arrival = match known {
            Some(index) => streams[index].record(sequence),
            None if streams.len() < MAX_STREAMS => {
                streams.push(SequenceState::new(ssrc, sequence));
                Arrival::InOrder
            }
            None => {
                report.corrupted += 1;
                log::warn!("packet #{}: too many SSRCs", report.packets);
                continue;
            }
        };
        match arrival {
            Arrival::InOrder => {}
            Arrival::Late => report.out_of_order += 1,
            Arrival::Duplicate => {
                report.duplicated += 1;
                continue;
            }
        }
        if checked.header.marker {
            report.frames_marked += 1;
        }
        report
            .latencies_ns
            .push(now_ns.saturating_sub(checked.send_time_ns));
    }
    report.lost = streams.iter().map(SequenceState::lost).sum();
    report.streams = streams.len();
    report.elapsed = first_arrival.map_or(Duration::ZERO, |t| t.elapsed());
    Ok(report)
}

/// The receiving end: accepts one connection and checks the stream on it.
pub struct MediaServer {
    listener: TcpListener,
}

impl MediaServer {
    /// Listens on `addr` (port 0 for a free one).
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<MediaServer> {
        Ok(MediaServer {
            listener: TcpListener::bind(addr)?,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts one connection, receives until the sender ends its direction, sends the receipt
    /// line back, and closes.
    pub fn serve_one(&self, clock: Clock) -> io::Result<MediaReport> {
        let (stream, peer) = self.listener.accept()?;
        log::info!("media server: connection from {peer}");
        serve_connection(stream, clock)
    }

    /// [`serve_one`](Self::serve_one) on a background thread.
    pub fn spawn(self, clock: Clock) -> thread::JoinHandle<io::Result<MediaReport>> {
        thread::Builder::new()
            .name("media-server".into())
            .spawn(move || self.serve_one(clock))
            .expect("spawn the media server thread")
    }
}

/// The server's side of the ending:
///
/// ```text
/// sender                          server
///   |--- media ... RTCP BYE ------->|  receive_stream stops at the BYE
///   |<-- RECEIPT ... \n ------------|
///   |--- EOF (half-close) --------->|  anything after the BYE is counted as corrupted
///   |<-- EOF -----------------------|
/// ```
///
/// A sender that just half-closes (no BYE) still gets the receipt, if its proxy keeps the other
/// direction open.
fn serve_connection(stream: TcpStream, clock: Clock) -> io::Result<MediaReport> {
    stream.set_read_timeout(Some(RECEIVE_IDLE_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let mut report = receive_stream(&stream, clock)?;
    log::info!(
        "media server: stream ended ({}): {} packets, {} bytes, {} lost, {} corrupted",
        if report.bye { "RTCP BYE" } else { "EOF" },
        report.packets,
        report.bytes,
        report.lost,
        report.corrupted
    );
    let mut writer = &stream;
    if let Err(e) = writer.write_all(report.receipt().as_bytes()) {
        log::warn!("media server: could not send the receipt: {e}");
        return Ok(report);
    }
    if report.bye {
        // Wait for the sender to end its direction; nothing more should come.
        let mut trailing = [0u8; 1024];
        let mut reader = &stream;
        loop {
            match reader.read(&mut trailing) {
                Ok(0) => break,
                Ok(n) => {
                    log::warn!("media server: {n} bytes after the BYE");
                    report.corrupted += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("media server: waiting for the sender's EOF: {e}");
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    Ok(report)
}

/// Longest receipt line [`read_receipt`] accepts.
pub const MAX_RECEIPT_LINE: usize = 512;

/// Reads the server's receipt line (after the sender's BYE); `None` if the stream ended first.
pub fn read_receipt(reader: &mut impl Read) -> io::Result<Option<Receipt>> {
    let mut line = [0u8; MAX_RECEIPT_LINE];
    let mut len = 0;
    while len < line.len() {
        match reader.read(&mut line[len..len + 1]) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        len += 1;
        if line[len - 1] == b'\n' {
            let text = std::str::from_utf8(&line[..len])
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "receipt is not UTF-8"))?;
            return Receipt::parse(text).map(Some).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a receipt: {text:?}"),
                )
            });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "receipt line too long",
    ))
}

// ---------------------------------------------------------------------------------------------
// Sending: the camera
// ---------------------------------------------------------------------------------------------

/// What [`send_stream`] sent.
#[derive(Clone, Debug, Default)]
pub struct SendStats {
    /// Packets the camera produced and handed to the sender.
    pub packets: u64,
    /// Of which audio.
    pub audio_packets: u64,
    /// Of which video.
    pub video_packets: u64,
    /// Video frames produced.
    pub video_frames: u64,
    /// RTP bytes produced (without the framing).
    pub bytes: u64,
    /// What the latency-bounded sender did with them: written, dropped (key and non-key),
    /// longest queueing delay.
    pub sender: SenderStats,
    /// Every byte written to the stream: the framed packets written and the framed RTCP BYE.
    pub wire_bytes: u64,
    /// From the first packet to the last.
    pub elapsed: Duration,
    /// The furthest behind its schedule a packet was produced (a busy machine; the sender
    /// never makes the camera wait).
    pub max_lateness: Duration,
}

impl SendStats {
    /// Packets written whole to the stream.
    pub fn written_packets(&self) -> u64 {
        self.sender.written.packets
    }

    /// RTP bytes written (without the framing).
    pub fn written_bytes(&self) -> u64 {
        self.sender.written.bytes
    }

    /// Packets the sender dropped to keep within its delay bound.
    pub fn dropped_packets(&self) -> u64 {
        self.sender.dropped().packets
    }
}

/// How the camera sends by default: a 200 ms bound on queueing delay, video dropped before
/// audio and key frames, and the kernel send buffer the library recommends (see
/// `connect_tunnel::media`).
pub fn default_sender_config() -> SenderConfig {
    SenderConfig {
        policy: DropPolicy::NonKeyFirst,
        ..SenderConfig::default()
    }
}

/// A camera: audio from a WAV file or a test tone, and a generated test-pattern video.
pub struct MediaSource {
    audio: Vec<u8>,
    audio_pos: usize,
    audio_sequence: u16,
    audio_timestamp: u32,
    video_sequence: u16,
    frame_number: u32,
    clock: Clock,
    packet: [u8; MAX_SOURCE_PACKET],
}

/// Called with each built packet, its header, and whether it is a key packet (audio, or part
/// of a video key frame).
pub type PacketSink<'a> = dyn FnMut(&[u8], &RtpHeader, bool) -> io::Result<()> + 'a;

impl MediaSource {
    /// A source whose audio comes from `wav` (any 8- or 16-bit PCM WAV, converted to 8 kHz
    /// µ-law) or, without one, a 440 Hz tone.
    pub fn new(wav: Option<&Path>, clock: Clock) -> io::Result<MediaSource> {
        let audio = match wav {
            Some(path) => {
                let file = std::fs::File::open(path)?;
                let mut bytes = Vec::new();
                file.take(MAX_WAV_BYTES).read_to_end(&mut bytes)?;
                let wav = parse_wav(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                log::info!(
                    "audio: {}: {} Hz, {} channel(s), {} bit, {:.1} s",
                    path.display(),
                    wav.sample_rate,
                    wav.channels,
                    wav.bits,
                    wav.samples.len() as f64 / f64::from(wav.sample_rate)
                );
                wav.to_ulaw_8k()
            }
            None => tone_ulaw(440.0),
        };
        if audio.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the WAV file has no samples",
            ));
        }
        Ok(MediaSource {
            audio,
            audio_pos: 0,
            audio_sequence: AUDIO_FIRST_SEQUENCE,
            audio_timestamp: 0x1000_0000,
            video_sequence: VIDEO_FIRST_SEQUENCE,
            frame_number: 0,
            clock,
            packet: [0u8; MAX_SOURCE_PACKET],
        })
    }

    /// Builds the next 20 ms audio packet and passes it to `sink`.
    pub fn next_audio(&mut self, sink: &mut PacketSink<'_>) -> io::Result<()> {
        let mut media = [0u8; AUDIO_SAMPLES_PER_PACKET];
        for byte in &mut media {
            *byte = self.audio[self.audio_pos];
            self.audio_pos = (self.audio_pos + 1) % self.audio.len();
        }
        let header = RtpHeader {
            marker: false,
            payload_type: PT_PCMU,
            sequence: self.audio_sequence,
            timestamp: self.audio_timestamp,
            ssrc: AUDIO_SSRC,
        };
        self.audio_sequence = self.audio_sequence.wrapping_add(1);
        self.audio_timestamp = self
            .audio_timestamp
            .wrapping_add(AUDIO_SAMPLES_PER_PACKET as u32);
        let len = build_packet(&header, self.clock.now_ns(), &media, &mut self.packet)
            .map_err(|e| io::Error::other(e.to_string()))?;
        sink(&self.packet[..len], &header, true)
    }

    /// Builds the next video frame's packets and passes each to `sink`; returns how many.
    pub fn next_video_frame(&mut self, sink: &mut PacketSink<'_>) -> io::Result<u64> {
        let frame = self.frame_number;
        self.frame_number += 1;
        let size = video_frame_size(frame);
        let timestamp = frame.wrapping_mul(VIDEO_CLOCK / VIDEO_FPS);
        let mut media = [0u8; MAX_SOURCE_PACKET - PACKET_OVERHEAD];
        let mut offset = 0;
        let mut packets = 0;
        while offset < size {
            let chunk = (size - offset).min(media.len());
            for (i, byte) in media[..chunk].iter_mut().enumerate() {
                *byte = test_pattern(frame, offset + i);
            }
            offset += chunk;
            let header = RtpHeader {
                marker: offset == size,
                payload_type: PT_VIDEO,
                sequence: self.video_sequence,
                timestamp,
                ssrc: VIDEO_SSRC,
            };
            self.video_sequence = self.video_sequence.wrapping_add(1);
            let len = build_packet(
                &header,
                self.clock.now_ns(),
                &media[..chunk],
                &mut self.packet,
            )
            .map_err(|e| io::Error::other(e.to_string()))?;
            sink(&self.packet[..len], &header, is_key_frame(frame))?;
            packets += 1;
        }
        Ok(packets)
    }
}

/// Whether video frame number `frame` is a key frame: one each second.
pub fn is_key_frame(frame: u32) -> bool {
    frame % VIDEO_FPS == 0
}

/// Frame sizes like a real encoder's: a large key frame each second, smaller frames between.
fn video_frame_size(frame: u32) -> usize {
    if is_key_frame(frame) {
        12_000
    } else {
        2_000 + (frame as usize * 7919) % 3_000
    }
}

/// Test-pattern bytes: a diagonal gradient that moves one step per frame.
fn test_pattern(frame: u32, index: usize) -> u8 {
    let x = index % 64;
    let y = index / 64;
    (x + y + frame as usize) as u8
}

/// Streams media to `writer` in real time for `duration`: audio every 20 ms, a video frame
/// every 40 ms, through a latency-bounded [`MediaSender`] configured by `config` (its writer
/// thread writes each packet framed per RFC 4571 with one `write_all`; packets that would wait
/// too long are dropped whole); then an RTCP BYE (counted only in `wire_bytes`). The camera is
/// never held up by the link. Read the receipt with [`read_receipt`] afterwards.
pub fn send_stream<W: Write + Send>(
    writer: &mut W,
    duration: Duration,
    wav: Option<&Path>,
    clock: Clock,
    config: SenderConfig,
) -> io::Result<SendStats> {
    let mut source = MediaSource::new(wav, clock)?;
    let ticks = (duration.as_micros() / AUDIO_PACKET_INTERVAL.as_micros()).max(1) as u32;
    let ticks_per_frame = 1000 / VIDEO_FPS / AUDIO_PACKET_INTERVAL.as_millis() as u32; // 2
    let mut stats = SendStats::default();
    let started = Instant::now();
    let finished = thread::scope(|scope| -> io::Result<_> {
        let sender = MediaSender::spawn_scoped(scope, &mut *writer, config)?;
        let (mut packets, mut bytes) = (0, 0);
        let mut sink = |packet: &[u8], _header: &RtpHeader, key: bool| -> io::Result<()> {
            sender.send(packet, key).map_err(|e| match e {
                SendError::Stopped => io::Error::new(io::ErrorKind::BrokenPipe, e),
                other => io::Error::other(other),
            })?;
            packets += 1;
            bytes += packet.len() as u64;
            Ok(())
        };
        let mut produce = || -> io::Result<()> {
            for tick in 0..ticks {
                let due = started + AUDIO_PACKET_INTERVAL * tick;
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                } else {
                    stats.max_lateness = stats.max_lateness.max(now - due);
                }
                source.next_audio(&mut sink)?;
                stats.audio_packets += 1;
                if tick % ticks_per_frame == 0 {
                    stats.video_packets += source.next_video_frame(&mut sink)?;
                    stats.video_frames += 1;
                }
            }
            Ok(())
        };
        let produced = produce();
        (stats.packets, stats.bytes) = (packets, bytes);
        // Write what is left (within the bound) before reporting; a write error explains a
        // stopped sender better than the send that found it stopped.
        let finished = sender.finish();
        match (finished.error, produced) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(finished.stats),
        }
    })?;
    stats.sender = finished;
    stats.wire_bytes = stats.written_bytes() + 2 * stats.written_packets();
    let mut bye = [0u8; 12];
    let bye_len = build_bye(&[AUDIO_SSRC, VIDEO_SSRC], &mut bye)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut frame = [0u8; 2 + 12];
    let frame_len = encode_frame(&bye[..bye_len], &mut frame).map_err(io::Error::other)?;
    writer.write_all(&frame[..frame_len])?;
    stats.wire_bytes += frame_len as u64;
    writer.flush()?;
    stats.elapsed = started.elapsed();
    Ok(stats)
}

// ---------------------------------------------------------------------------------------------
// Audio: WAV reading, µ-law, the test tone
// ---------------------------------------------------------------------------------------------

/// PCM audio read from a WAV file, mixed down to mono.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wav {
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels in the file (the samples here are their average).
    pub channels: u16,
    /// Bits per sample in the file (8 or 16).
    pub bits: u16,
    /// Mono samples, 16-bit signed.
    pub samples: Vec<i16>,
}

/// Why a WAV file was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WavError {
    /// Not a RIFF/WAVE file.
    NotWav,
    /// A chunk runs past the end of the file, or `fmt ` is too short.
    Truncated,
    /// No `fmt ` chunk before the `data` chunk.
    NoFormat,
    /// No `data` chunk.
    NoData,
    /// Not integer PCM (format tag given), or not 8/16-bit, or zero channels or rate.
    Unsupported(String),
}

impl fmt::Display for WavError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WavError::NotWav => f.write_str("not a RIFF/WAVE file"),
            WavError::Truncated => f.write_str("truncated WAV file"),
            WavError::NoFormat => f.write_str("no fmt chunk before the data chunk"),
            WavError::NoData => f.write_str("no data chunk"),
            WavError::Unsupported(what) => write!(f, "unsupported WAV: {what}"),
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an 8- or 16-bit integer PCM WAV file (mono, stereo or more channels).
pub fn parse_wav(bytes: &[u8]) -> Result<Wav, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let mut format: Option<(u16, u32, u16)> = None;
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let declared = le32(bytes, at + 4) as usize;
        let body_start = at + 8;
        // Streaming writers leave the data size at 0 or 0xFFFFFFFF: take what is there.
        let body_end = if id == b"data" {
            body_start.saturating_add(declared).min(bytes.len())
        } else {
            body_start
                .checked_add(declared)
                .filter(|&end| end <= bytes.len())
                .ok_or(WavError::Truncated)?
        };
        let body = &bytes[body_start..body_end];
        match id {
            b"fmt " => {
                if body.len() < 16 {
                    return Err(WavError::Truncated);
                }
                let mut tag = le16(body, 0);
                if tag == 0xFFFE && body.len() >= 26 {
                    tag = le16(body, 24); // WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes
                }
                if tag != 1 {
                    return Err(WavError::Unsupported(format!(
                        "format tag {tag:#06x}, not PCM"
                    )));
                }
                let channels = le16(body, 2);
                let rate = le32(body, 4);
                let bits = le16(body, 14);
                if channels == 0 || rate == 0 {
                    return Err(WavError::Unsupported("zero channels or sample rate".into()));
                }
                if bits != 8 && bits != 16 {
                    return Err(WavError::Unsupported(format!("{bits}-bit samples")));
                }
                format = Some((channels, rate, bits));
            }
            b"data" => {
                let (channels, sample_rate, bits) = format.ok_or(WavError::NoFormat)?;
                let width = usize::from(bits / 8) * usize::from(channels);
                let samples = body
                    .chunks_exact(width)
                    .map(|frame| {
                        let sum: i32 = frame
                            .chunks_exact(usize::from(bits / 8))
                            .map(|s| match bits {
                                8 => (i32::from(s[0]) - 128) << 8,
                                _ => i32::from(i16::from_le_bytes([s[0], s[1]])),
                            })
                            .sum();
                        (sum / i32::from(channels)) as i16
                    })
                    .collect();
                return Ok(Wav {
                    sample_rate,
                    channels,
                    bits,
                    samples,
                });
            }
            _ => {}
        }
        at = body_end + (declared & 1); // chunks are padded to an even length
    }
    Err(WavError::NoData)
}

impl Wav {
    /// Resamples to 8 kHz (linear interpolation) and encodes as G.711 µ-law.
    pub fn to_ulaw_8k(&self) -> Vec<u8> {
        if self.samples.is_empty() {
            return Vec::new();
        }
        let step = f64::from(self.sample_rate) / f64::from(AUDIO_RATE);
        let out_len = (self.samples.len() as f64 / step).ceil() as usize;
        (0..out_len)
            .map(|i| {
                let pos = i as f64 * step;
                let index = pos as usize;
                let frac = pos - index as f64;
                let a = f64::from(self.samples[index.min(self.samples.len() - 1)]);
                let b = f64::from(self.samples[(index + 1).min(self.samples.len() - 1)]);
                linear_to_ulaw((a + (b - a) * frac) as i16)
            })
            .collect()
    }
}

/// G.711 µ-law encoding of one 16-bit sample.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut magnitude = i32::from(sample);
    let sign = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0
    };
    let magnitude = magnitude.min(CLIP) + BIAS;
    let top = (magnitude >> 7) as u32 & 0xff;
    let exponent = if top == 0 {
        0
    } else {
        31 - top.leading_zeros()
    };
    let mantissa = (magnitude >> (exponent + 3)) & 0x0f;
    !(sign | ((exponent as i32) << 4) | mantissa) as u8
}

/// One second of a sine tone at 8 kHz, µ-law; 440 Hz repeats exactly each second.
pub fn tone_ulaw(frequency: f64) -> Vec<u8> {
    (0..AUDIO_RATE)
        .map(|n| {
            let t = f64::from(n) / f64::from(AUDIO_RATE);
            let value =
                0.3 * f64::from(i16::MAX) * (2.0 * std::f64::consts::PI * frequency * t).sin();
            linear_to_ulaw(value as i16)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns the given chunks, one per read call.
    struct Chunked {
        chunks: Vec<Vec<u8>>,
        next: usize,
    }

    impl Read for Chunked {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(chunk) = self.chunks.get_mut(self.next) else {
                return Ok(0);
            };
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                self.next += 1;
            }
            Ok(n)
        }
    }

    fn sample_header() -> RtpHeader {
        RtpHeader {
            marker: true,
            payload_type: PT_VIDEO,
            sequence: 0x1234,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x0102_0304,
        }
    }

    #[test]
    fn rtp_header_exact_bytes_and_round_trip() {
        let mut out = [0u8; RTP_HEADER_LEN];
        sample_header().encode(&mut out);
        assert_eq!(
            out,
            [0x80, 0xE0, 0x12, 0x34, 0xDE, 0xAD, 0xBE, 0xEF, 0x01, 0x02, 0x03, 0x04]
        );
        let (header, payload) = RtpHeader::parse(&out).unwrap();
        assert_eq!(header, sample_header());
        assert!(payload.is_empty());
    }

    #[test]
    fn rtp_parse_skips_csrcs_extension_and_padding() {
        let mut packet = vec![0xB1, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]; // V=2 P=1 X=1 CC=1
        packet.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        packet.extend_from_slice(&[0xBE, 0xDE, 0, 1, 7, 7, 7, 7]); // extension, one word
        packet.extend_from_slice(b"media");
        packet.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let (header, payload) = RtpHeader::parse(&packet).unwrap();
        assert_eq!(header.sequence, 1);
        assert_eq!(payload, b"media");
        assert_eq!(RtpHeader::parse(&[0x40; 12]), Err(PacketError::BadVersion));
        assert_eq!(RtpHeader::parse(&[0x80; 11]), Err(PacketError::TooShort));
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn checksum_detects_every_flipped_bit() {
        let mut packet = [0u8; 64];
        let len = build_packet(&sample_header(), 42_000, b"some media bytes", &mut packet).unwrap();
        let good = check_packet(&packet[..len]).unwrap();
        assert_eq!(good.header, sample_header());
        assert_eq!(good.send_time_ns, 42_000);
        assert_eq!(good.media, b"some media bytes");
        for bit in 0..len * 8 {
            let mut bad = packet;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                check_packet(&bad[..len]).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    /// The server reads with the library's RFC 4571 reader: one byte per read, a null packet
    /// in the middle, and the BYE at the end.
    #[test]
    fn receiver_reads_frames_split_one_byte_per_read() {
        let clock = Clock::Shared(Instant::now());
        let mut wire = connect_tunnel::media::PacketWriter::new(Vec::new());
        let mut packet = [0u8; 64];
        for sequence in [7u16, 8] {
            let header = RtpHeader {
                sequence,
                ..sample_header()
            };
            let len = build_packet(&header, clock.now_ns(), b"media", &mut packet).unwrap();
            wire.write_packet(&packet[..len]).unwrap();
            wire.write_packet(b"").unwrap(); // RFC 4571's null packet: skipped
        }
        let len = build_bye(&[sample_header().ssrc], &mut packet).unwrap();
        wire.write_packet(&packet[..len]).unwrap();
        let chunks = wire.into_inner().iter().map(|&b| vec![b]).collect();
        let report = receive_stream(Chunked { chunks, next: 0 }, clock).unwrap();
        assert_eq!(report.packets, 2);
        assert!(report.bye);
        assert!(report.is_clean(), "{report:?}");
    }

    /// A hand-built 16-bit stereo WAV with a LIST chunk before the data and an odd-sized chunk.
    #[test]
    fn wav_16_bit_stereo() {
        let mut wav = Vec::new();
        let data: [i16; 6] = [1000, 3000, -2000, -4000, 32767, 32767];
        wav.extend_from_slice(b"RIFF\0\0\0\0WAVE");
        wav.extend_from_slice(b"fmt \x10\0\0\0");
        wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
        wav.extend_from_slice(&2u16.to_le_bytes()); // stereo
        wav.extend_from_slice(&16_000u32.to_le_bytes());
        wav.extend_from_slice(&64_000u32.to_le_bytes()); // byte rate
        wav.extend_from_slice(&4u16.to_le_bytes()); // block align
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"LIST\x03\0\0\0abc\0"); // odd length, one pad byte
        wav.extend_from_slice(b"data\x0c\0\0\0");
        for s in data {
            wav.extend_from_slice(&s.to_le_bytes());
        }
        let parsed = parse_wav(&wav).unwrap();
        assert_eq!(
            parsed,
            Wav {
                sample_rate: 16_000,
                channels: 2,
                bits: 16,
                samples: vec![2000, -3000, 32767],
            }
        );
        // 16 kHz → 8 kHz keeps every other sample.
        assert_eq!(
            parsed.to_ulaw_8k(),
            vec![linear_to_ulaw(2000), linear_to_ulaw(32767)]
        );
    }

    #[test]
    fn wav_8_bit_mono_with_streaming_data_size() {
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF\xff\xff\xff\xffWAVEfmt \x10\0\0\0");
        wav.extend_from_slice(&[1, 0, 1, 0]); // PCM, mono
        wav.extend_from_slice(&8000u32.to_le_bytes());
        wav.extend_from_slice(&8000u32.to_le_bytes());
        wav.extend_from_slice(&[1, 0, 8, 0]); // block align 1, 8 bits
        wav.extend_from_slice(b"data\xff\xff\xff\xff");
        wav.extend_from_slice(&[128, 255, 0]);
        let parsed = parse_wav(&wav).unwrap();
        assert_eq!(parsed.samples, vec![0, 127 << 8, -128 << 8]);
        assert_eq!(parsed.to_ulaw_8k().len(), 3);
    }

    #[test]
    fn wav_refusals() {
        assert_eq!(parse_wav(b"RIFX\0\0\0\0WAVE"), Err(WavError::NotWav));
        assert_eq!(
            parse_wav(b"RIFF\0\0\0\0WAVEdata\0\0\0\0"),
            Err(WavError::NoFormat)
        );
        assert_eq!(parse_wav(b"RIFF\0\0\0\0WAVE"), Err(WavError::NoData));
        let mut float = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0".to_vec();
        float.extend_from_slice(&[3, 0, 1, 0, 0x40, 0x1f, 0, 0, 0, 0, 0, 0, 4, 0, 32, 0]);
        assert!(matches!(parse_wav(&float), Err(WavError::Unsupported(_))));
    }

    #[test]
    fn ulaw_reference_values() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(1000), 0xCE);
        let tone = tone_ulaw(440.0);
        assert_eq!(tone.len(), 8000);
    }

    #[test]
    fn sequence_tracking_counts_loss_reorder_duplicates_across_wrap() {
        let mut state = SequenceState::new(1, 65_534);
        assert_eq!(state.record(65_535), Arrival::InOrder);
        assert_eq!(state.record(1), Arrival::InOrder); // 0 missing so far
        assert_eq!(state.lost(), 1);
        assert_eq!(state.record(0), Arrival::Late); // it arrives late
        assert_eq!(state.lost(), 0);
        assert_eq!(state.record(0), Arrival::Duplicate);
        assert_eq!(state.record(1), Arrival::Duplicate);
        assert_eq!(state.record(5), Arrival::InOrder);
        assert_eq!(state.lost(), 3); // 2, 3, 4
        assert_eq!(state.record(65_533), Arrival::Late); // before the first one seen
        assert_eq!(state.lost(), 3);
    }

    /// The source's stream, received in-process: counts match and nothing is flagged.
    #[test]
    fn source_to_receiver_in_memory() {
        let clock = Clock::Shared(Instant::now());
        let mut source = MediaSource::new(None, clock).unwrap();
        let mut wire = connect_tunnel::media::PacketWriter::new(Vec::new());
        let mut sent = 0u64;
        let mut keys = 0u64;
        let mut sink = |packet: &[u8], header: &RtpHeader, key: bool| {
            assert!(packet.len() <= MAX_SOURCE_PACKET);
            assert_eq!(header.payload_type == PT_PCMU, header.ssrc == AUDIO_SSRC);
            sent += 1;
            keys += u64::from(key);
            wire.write_packet(packet)
        };
        let mut frames = 0;
        for tick in 0..300 {
            source.next_audio(&mut sink).unwrap();
            if tick % 2 == 0 {
                source.next_video_frame(&mut sink).unwrap();
                frames += 1;
            }
        }
        // Audio (300 packets) and the packets of the key frames (every 25th frame, 12 000
        // bytes: 11 packets each) are key.
        assert_eq!(keys, 300 + 6 * 11);
        let wire = wire.into_inner();
        let report = receive_stream(&wire[..], clock).unwrap();
        assert_eq!(report.packets, sent);
        assert_eq!(report.frames_marked, frames);
        assert_eq!(report.streams, 2);
        assert!(report.is_clean(), "{report:?}");
        // Corrupt one packet's media byte in the middle of the wire image.
        let middle = wire.len() / 2;
        let mut damaged = wire.clone();
        damaged[middle] ^= 0x10;
        let report = receive_stream(&damaged[..], clock).unwrap();
        assert!(report.corrupted + report.lost >= 1, "{report:?}");
    }

    #[test]
    fn bye_exact_bytes_and_detection() {
        let mut out = [0u8; 16];
        let len = build_bye(&[0x0102_0304, 0x0506_0708], &mut out).unwrap();
        assert_eq!(&out[..len], &[0x82, 203, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(is_rtcp_bye(&out[..len]));
        let mut rtp = [0u8; 64];
        let rtp_len = build_packet(&sample_header(), 1, b"x", &mut rtp).unwrap();
        assert!(!is_rtcp_bye(&rtp[..rtp_len]));
    }

    /// The whole exchange over loopback TCP: 300 ms of media, BYE, receipt, half-close, EOF.
    #[test]
    fn send_stream_to_media_server_over_tcp() {
        let clock = Clock::Shared(Instant::now());
        let server = MediaServer::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let serving = server.spawn(clock);
        let mut stream = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        // No bound here: this is about the exchange, and a loaded machine must not drop.
        let config = SenderConfig {
            max_delay: None,
            ..default_sender_config()
        };
        let sent =
            send_stream(&mut stream, Duration::from_millis(300), None, clock, config).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(280));
        assert_eq!(sent.written_packets(), sent.packets);
        assert_eq!(sent.wire_bytes, sent.bytes + 2 * sent.packets + 2 + 12);
        assert_eq!(sent.audio_packets, 15);
        assert_eq!(sent.video_frames, 8);
        let receipt = read_receipt(&mut stream).unwrap().unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let report = serving.join().unwrap().unwrap();
        assert!(report.bye);
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.packets, sent.packets);
        assert_eq!(report.bytes, sent.bytes);
        assert_eq!(report.latencies_ns.len() as u64, sent.packets);
        assert_eq!((receipt.packets, receipt.bytes), (sent.packets, sent.bytes));
    }

    #[test]
    fn receipt_round_trip() {
        let report = MediaReport {
            packets: 10,
            bytes: 1234,
            latencies_ns: vec![5_000, 1_000, 3_000],
            ..MediaReport::default()
        };
        let receipt = Receipt::parse(&report.receipt()).unwrap();
        assert_eq!(receipt.packets, 10);
        assert_eq!(receipt.bytes, 1234);
        assert_eq!((receipt.p50_us, receipt.max_us), (3, 5));
        assert_eq!(Receipt::parse("HTTP/1.1 200 OK"), None);
    }

    #[test]
    fn quantiles_nearest_rank() {
        let report = MediaReport {
            latencies_ns: (1..=100).rev().collect(),
            ..MediaReport::default()
        };
        assert_eq!(report.p50_ns(), 50);
        assert_eq!(report.p99_ns(), 99);
        assert_eq!(report.max_ns(), 100);
        assert_eq!(MediaReport::default().p99_ns(), 0);
    }
}
