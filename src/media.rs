//! Real-time media over an open tunnel: RFC 4571 framing, and sending with a bound on queueing
//! delay.
//!
//! # Framing (RFC 4571)
//!
//! Over a byte stream, each RTP or RTCP packet is preceded by its length as a 16-bit big-endian
//! number:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |            LENGTH             |  RTP or RTCP packet ...       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! A packet is therefore at most [`MAX_PACKET`] (65535) bytes. A LENGTH of zero is valid and
//! codes the *null packet* (RFC 4571, section 2): [`FrameDecoder`] and [`PacketReader`] consume
//! it and count it, and never hand it out, so an RTP parser never sees an empty packet.
//!
//! - [`encode_frame`] and [`try_decode_frame`] are pure functions over byte slices.
//! - [`FrameDecoder`] is a sans-IO push decoder: give it whatever a read returned, a part of a
//!   frame or many frames, and it hands back whole packets.
//! - [`PacketReader`] and [`PacketWriter`] are blocking adapters over any `Read` / `Write` (a
//!   [`Tunnel`](crate::Tunnel), its [`TunnelReader`](crate::TunnelReader) and
//!   [`TunnelWriter`](crate::TunnelWriter), a `TcpStream`), each with one fixed buffer
//!   allocated at construction and nothing allocated per packet.
//!
//! # Latency-bounded sending
//!
//! TCP delivers every byte, in order. When the link is slower than the media for a while, the
//! packets that do not fit wait, and each later packet waits behind them: the delay grows for as
//! long as the link is slow and is paid back only when it recovers. For real-time media a late
//! packet is as good as a lost one, so [`MediaSender`] keeps the waiting bounded:
//!
//! ```text
//! producer --send(packet, key)--> PacketQueue ---------> writer thread --> sink (TunnelWriter)
//!  (never waits for the sink)     byte ring + descriptors   RFC 4571 frame,     kernel send buffer
//!                                 with enqueue times;       one write_all       (SO_SNDBUF) -> link
//!                                 packets over the bound
//!                                 are dropped whole
//! ```
//!
//! [`PacketQueue`] is the sans-IO core, with time passed in; [`MediaSender`] adds the writer
//! thread and a clock. [`DropPolicy`] says which packets go when the bound (or the storage) is
//! exceeded, and [`SenderStats`] reports what was written and what was dropped.
//!
//! **The kernel send buffer is a second queue the sender cannot drop from.** A packet handed to
//! the socket waits behind everything already in `SO_SNDBUF`; with Linux defaults (autotuned up
//! to megabytes) `write_all` never blocks, the queue never fills, and the bound does nothing
//! while the kernel holds seconds of media. Set a small send buffer with
//! [`Config::send_buffer_size`](crate::Config::send_buffer_size): [`RECOMMENDED_SEND_BUFFER`]
//! for media around 1 Mbit/s, or [`send_buffer_for`] the media rate and round trip (the buffer
//! must hold what is in flight, or throughput suffers). The sender counts a full kernel buffer
//! ([`SenderConfig::kernel_send_buffer`]) into each packet's expected wait, so the bound covers
//! it too. Queues beyond this host (a proxy's buffers, a router in front of a slow link) are out
//! of the sender's reach. `docs/MEDIA.md` has the measurements.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Length of the RFC 4571 length prefix: 2 bytes, big-endian.
pub const LENGTH_PREFIX_LEN: usize = 2;

/// Largest packet RFC 4571 can carry: its length field is 16 bits.
pub const MAX_PACKET: usize = u16::MAX as usize;

/// Largest frame: the length prefix and a [`MAX_PACKET`]-byte packet.
pub const MAX_FRAME: usize = LENGTH_PREFIX_LEN + MAX_PACKET;

/// Bytes a [`PacketReader`] can read beyond one largest frame, so that one read returns many
/// small packets.
pub const READ_AHEAD: usize = 16 * 1024;

/// Default bound on queueing delay in a [`MediaSender`]: 200 ms.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(200);

/// Default byte capacity of a [`PacketQueue`]: 256 KiB, about 2 s of 1 Mbit/s media.
pub const DEFAULT_QUEUE_BYTES: usize = 256 * 1024;

/// Default packet capacity of a [`PacketQueue`]: 1024 packets.
pub const DEFAULT_QUEUE_PACKETS: usize = 1024;

/// Recommended `SO_SNDBUF` ([`Config::send_buffer_size`](crate::Config::send_buffer_size)) for
/// a [`MediaSender`] with media around 1 Mbit/s: 4 KiB (Linux doubles it to 8 KiB). Measured
/// in `examples/latency_bound.rs`, see `docs/MEDIA.md`.
pub const RECOMMENDED_SEND_BUFFER: usize = 4 * 1024;

/// The `SO_SNDBUF` to ask for ([`Config::send_buffer_size`](crate::Config::send_buffer_size))
/// for media of `bits_per_second` over a path whose round trip is `round_trip`: the
/// bandwidth-delay product, so that the buffer holds what is in flight and little more, and at
/// least [`RECOMMENDED_SEND_BUFFER`]. A smaller buffer caps the throughput at about
/// buffer / round trip; a larger one hides up to buffer / link rate of delay when the link is
/// slow. Give the [`MediaSender`] twice the result as [`SenderConfig::kernel_send_buffer`]
/// (Linux doubles the value asked for).
///
/// ```
/// use std::time::Duration;
/// use connect_tunnel::media::{send_buffer_for, RECOMMENDED_SEND_BUFFER};
///
/// assert_eq!(send_buffer_for(1_000_000, Duration::from_millis(20)), RECOMMENDED_SEND_BUFFER);
/// assert_eq!(send_buffer_for(1_000_000, Duration::from_millis(100)), 12_500);
/// ```
pub fn send_buffer_for(bits_per_second: u64, round_trip: Duration) -> usize {
    let bdp = u128::from(bits_per_second) * round_trip.as_nanos() / 8 / 1_000_000_000;
    usize::try_from(bdp)
        .unwrap_or(usize::MAX)
        .max(RECOMMENDED_SEND_BUFFER)
}

/// Default [`SenderConfig::kernel_send_buffer`]: what Linux makes of
/// [`RECOMMENDED_SEND_BUFFER`] (it doubles the value asked for).
pub const DEFAULT_KERNEL_SEND_BUFFER: usize = 2 * RECOMMENDED_SEND_BUFFER;

/// Name of a [`MediaSender`]'s writer thread.
pub const WRITER_THREAD_NAME: &str = "media-sender";

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// A packet, or a frame's LENGTH field, over the limit: `len` bytes where at most `max` are
    /// allowed. When decoding, the stream cannot be followed past it.
    TooLong {
        /// The packet's length.
        len: usize,
        /// The limit: [`MAX_PACKET`] or a smaller one chosen by the caller.
        max: usize,
    },
    /// The output buffer is too small for the frame or packet.
    NoRoom {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { len, max } => {
                write!(f, "packet of {len} bytes over the limit of {max} bytes")
            }
            FrameError::NoRoom { needed, available } => {
                write!(
                    f,
                    "buffer of {available} bytes too small for {needed} bytes"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Why [`MediaSender::send`] or [`PacketQueue::push`] refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The packet is longer than the queue can ever hold (its byte capacity, or
    /// [`MAX_PACKET`]).
    TooLarge {
        /// The packet's length.
        len: usize,
        /// The largest packet accepted.
        max: usize,
    },
    /// The writer thread stopped after a write error; [`MediaSender::finish`] returns the error.
    Stopped,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::TooLarge { len, max } => {
                write!(
                    f,
                    "packet of {len} bytes larger than the largest queueable, {max}"
                )
            }
            SendError::Stopped => f.write_str("the writer stopped after a write error"),
        }
    }
}

impl std::error::Error for SendError {}

// ---------------------------------------------------------------------------------------------
// Codec
// ---------------------------------------------------------------------------------------------

/// Writes `packet` behind its 2-byte big-endian length into `out`; returns the frame length
/// (`2 + packet.len()`). An empty packet encodes the null packet, `00 00`.
///
/// ```
/// use connect_tunnel::media::encode_frame;
///
/// let mut out = [0u8; 8];
/// assert_eq!(encode_frame(b"abc", &mut out), Ok(5));
/// assert_eq!(&out[..5], b"\x00\x03abc");
/// ```
pub fn encode_frame(packet: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    let len = u16::try_from(packet.len()).map_err(|_| FrameError::TooLong {
        len: packet.len(),
        max: MAX_PACKET,
    })?;
    let needed = LENGTH_PREFIX_LEN + packet.len();
    let available = out.len();
    let frame = out
        .get_mut(..needed)
        .ok_or(FrameError::NoRoom { needed, available })?;
    frame[..LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    frame[LENGTH_PREFIX_LEN..].copy_from_slice(packet);
    Ok(needed)
}

/// The length of the whole frame at the start of `input`, once all of it is there.
fn frame_len(input: &[u8], max_packet: usize) -> Result<Option<usize>, FrameError> {
    let [hi, lo, ..] = *input else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > max_packet {
        return Err(FrameError::TooLong {
            len,
            max: max_packet,
        });
    }
    let total = LENGTH_PREFIX_LEN + len;
    Ok((input.len() >= total).then_some(total))
}

/// Decodes the frame at the start of `input`: `Ok(None)` while it is incomplete, otherwise the
/// number of bytes it takes and its packet, borrowed from `input`. An empty packet is the null
/// packet. A LENGTH over `max_packet` (at most [`MAX_PACKET`] is meaningful) is
/// [`FrameError::TooLong`].
///
/// ```
/// use connect_tunnel::media::{try_decode_frame, MAX_PACKET};
///
/// let stream = b"\x00\x03abc\x00\x01z";
/// assert_eq!(try_decode_frame(stream, MAX_PACKET), Ok(Some((5, &b"abc"[..]))));
/// assert_eq!(try_decode_frame(&stream[5..], MAX_PACKET), Ok(Some((3, &b"z"[..]))));
/// assert_eq!(try_decode_frame(&stream[..4], MAX_PACKET), Ok(None));
/// ```
pub fn try_decode_frame(
    input: &[u8],
    max_packet: usize,
) -> Result<Option<(usize, &[u8])>, FrameError> {
    Ok(frame_len(input, max_packet)?.map(|n| (n, &input[LENGTH_PREFIX_LEN..n])))
}

/// A sans-IO RFC 4571 decoder: give it the bytes each read returned, in order, and it returns
/// whole packets however the reads split or merged them.
///
/// A packet that lies whole in the input is returned borrowed from it; one that spans inputs is
/// assembled in the decoder's buffer of `max_packet` bytes, allocated once by the constructor.
/// Null packets are consumed and counted ([`null_packets`](Self::null_packets)).
///
/// ```
/// use connect_tunnel::media::FrameDecoder;
///
/// let mut decoder = FrameDecoder::new();
/// let mut packets = Vec::new();
/// for read in [&b"\x00\x03a"[..], b"bc\x00\x00\x00\x01z\x00"] {
///     let mut input = read;
///     while !input.is_empty() {
///         let (used, packet) = decoder.try_decode(input)?;
///         input = &input[used..];
///         if let Some(packet) = packet {
///             packets.push(packet.to_vec());
///         }
///     }
/// }
/// assert_eq!(packets, [b"abc".to_vec(), b"z".to_vec()]);
/// assert_eq!(decoder.null_packets(), 1);
/// assert!(!decoder.is_between_frames()); // one byte of the next length prefix is held
/// # Ok::<(), connect_tunnel::media::FrameError>(())
/// ```
pub struct FrameDecoder {
    buf: Box<[u8]>,
    /// Bytes of the length prefix seen so far (0, 1 or 2).
    prefix_len: usize,
    prefix: [u8; LENGTH_PREFIX_LEN],
    /// Packet bytes of the current frame held in `buf`.
    filled: usize,
    null_packets: u64,
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("max_packet", &self.buf.len())
            .field("pending", &self.pending())
            .field("null_packets", &self.null_packets)
            .finish()
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    /// A decoder for packets of up to [`MAX_PACKET`] bytes (a 64 KiB buffer).
    pub fn new() -> FrameDecoder {
        FrameDecoder::with_max_packet(MAX_PACKET)
    }

    /// A decoder for packets of up to `max_packet` bytes (at most [`MAX_PACKET`]); a longer
    /// LENGTH is [`FrameError::TooLong`].
    pub fn with_max_packet(max_packet: usize) -> FrameDecoder {
        FrameDecoder {
            buf: vec![0; max_packet.min(MAX_PACKET)].into_boxed_slice(),
            prefix_len: 0,
            prefix: [0; LENGTH_PREFIX_LEN],
            filled: 0,
            null_packets: 0,
        }
    }

    /// The largest packet accepted.
    pub fn max_packet(&self) -> usize {
        self.buf.len()
    }

    /// Consumes bytes from `input` up to the end of the next packet, and returns how many it
    /// consumed and that packet; `None` when all of `input` was consumed without completing
    /// one. Call again with the rest of `input` until it is empty.
    ///
    /// After an error the stream cannot be followed any more; further calls return the same
    /// error.
    pub fn try_decode<'a>(
        &'a mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<&'a [u8]>), FrameError> {
        let max = self.buf.len();
        let mut used = 0;
        loop {
            let rest = &input[used..];
            if self.prefix_len == LENGTH_PREFIX_LEN {
                let len = usize::from(u16::from_be_bytes(self.prefix));
                if len > max {
                    return Err(FrameError::TooLong { len, max });
                }
                let take = (len - self.filled).min(rest.len());
                self.buf[self.filled..self.filled + take].copy_from_slice(&rest[..take]);
                self.filled += take;
                used += take;
                if self.filled < len {
                    return Ok((used, None));
                }
                self.prefix_len = 0;
                self.filled = 0;
                if len == 0 {
                    self.null_packets += 1;
                    continue;
                }
                return Ok((used, Some(&self.buf[..len])));
            }
            if self.prefix_len == 0 {
                // Between frames: a frame that lies whole in the input needs no copy.
                if let Some(n) = frame_len(rest, max)? {
                    used += n;
                    if n == LENGTH_PREFIX_LEN {
                        self.null_packets += 1;
                        continue;
                    }
                    return Ok((used, Some(&input[used - n + LENGTH_PREFIX_LEN..used])));
                }
            }
            let Some(&byte) = rest.first() else {
                return Ok((used, None));
            };
            self.prefix[self.prefix_len] = byte;
            self.prefix_len += 1;
            used += 1;
        }
    }

    /// Whether the decoder is at a frame boundary: an end of stream here is a clean one.
    pub fn is_between_frames(&self) -> bool {
        self.prefix_len == 0
    }

    /// Bytes of an incomplete frame held (prefix and packet bytes).
    pub fn pending(&self) -> usize {
        self.prefix_len + self.filled
    }

    /// Null packets (LENGTH 0) consumed so far.
    pub fn null_packets(&self) -> u64 {
        self.null_packets
    }
}

// ---------------------------------------------------------------------------------------------
// Blocking adapters
// ---------------------------------------------------------------------------------------------

/// Reads RFC 4571 frames from any `Read` and returns their packets, from one fixed buffer of
/// `2 + max_packet + READ_AHEAD` bytes allocated at construction.
///
/// One read may bring many packets, or part of one; no boundary is lost either way. A read
/// error (a timeout included) leaves the reader where it was, so reading can resume. Null
/// packets are skipped and counted.
///
/// ```
/// use connect_tunnel::media::PacketReader;
///
/// let mut reader = PacketReader::new(&b"\x00\x02hi\x00\x00\x00\x01!"[..]);
/// assert_eq!(reader.read_packet()?, Some(&b"hi"[..]));
/// assert_eq!(reader.read_packet()?, Some(&b"!"[..]));
/// assert_eq!(reader.read_packet()?, None); // a clean end of stream, between frames
/// assert_eq!(reader.null_packets(), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct PacketReader<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    max_packet: usize,
    null_packets: u64,
}

impl<R> fmt::Debug for PacketReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketReader")
            .field("max_packet", &self.max_packet)
            .field("buffered", &(self.end - self.start))
            .field("null_packets", &self.null_packets)
            .finish()
    }
}

impl<R: Read> PacketReader<R> {
    /// A reader for packets of up to [`MAX_PACKET`] bytes.
    pub fn new(inner: R) -> PacketReader<R> {
        PacketReader::with_max_packet(inner, MAX_PACKET)
    }

    /// A reader for packets of up to `max_packet` bytes (at most [`MAX_PACKET`]): a smaller
    /// buffer, and a longer LENGTH is an `InvalidData` error carrying a [`FrameError`].
    pub fn with_max_packet(inner: R, max_packet: usize) -> PacketReader<R> {
        let max_packet = max_packet.min(MAX_PACKET);
        PacketReader {
            inner,
            buf: vec![0; LENGTH_PREFIX_LEN + max_packet + READ_AHEAD].into_boxed_slice(),
            start: 0,
            end: 0,
            max_packet,
            null_packets: 0,
        }
    }

    /// The next packet. `Ok(None)` at an end of stream between frames; an end of stream inside
    /// a frame is `UnexpectedEof`; a LENGTH over the limit is `InvalidData`.
    pub fn read_packet(&mut self) -> io::Result<Option<&[u8]>> {
        loop {
            match frame_len(&self.buf[self.start..self.end], self.max_packet) {
                Ok(Some(n)) => {
                    let at = self.start;
                    self.start += n;
                    if n == LENGTH_PREFIX_LEN {
                        self.null_packets += 1;
                        continue;
                    }
                    return Ok(Some(&self.buf[at + LENGTH_PREFIX_LEN..at + n]));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            // Keep the incomplete frame at the front, so a whole one fits behind it.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return if self.end == 0 {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream ended inside an RFC 4571 frame",
                    ))
                };
            }
            self.end += n;
        }
    }
}

impl<R> PacketReader<R> {
    /// Bytes read from the stream and not returned yet (the start of the next frames).
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Null packets skipped so far.
    pub fn null_packets(&self) -> u64 {
        self.null_packets
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying reader, mutably (for timeouts). Reading from it directly skips
    /// [`buffered`](Self::buffered) bytes and loses the framing.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The underlying reader; [`buffered`](Self::buffered) bytes are lost.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes packets to any `Write` as RFC 4571 frames: length and packet together with one
/// `write_all` from a fixed staging buffer of `2 + max_packet` bytes allocated at construction,
/// so a frame never goes out as two small TCP segments (with `TCP_NODELAY`) and nothing is
/// allocated per packet.
///
/// After an error the peer may have received part of a frame; the stream's framing is then
/// unknown and it should be closed.
///
/// ```
/// use connect_tunnel::media::PacketWriter;
///
/// let mut writer = PacketWriter::new(Vec::new());
/// writer.write_packet(b"hi")?;
/// writer.write_packet(b"")?; // the null packet
/// assert_eq!(writer.get_ref().as_slice(), b"\x00\x02hi\x00\x00");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct PacketWriter<W> {
    inner: W,
    staging: Box<[u8]>,
}

impl<W> fmt::Debug for PacketWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketWriter")
            .field("max_packet", &(self.staging.len() - LENGTH_PREFIX_LEN))
            .finish()
    }
}

impl<W: Write> PacketWriter<W> {
    /// A writer for packets of up to [`MAX_PACKET`] bytes.
    pub fn new(inner: W) -> PacketWriter<W> {
        PacketWriter::with_max_packet(inner, MAX_PACKET)
    }

    /// A writer for packets of up to `max_packet` bytes (at most [`MAX_PACKET`]); a longer one
    /// is an `InvalidInput` error carrying a [`FrameError`], and nothing is written.
    pub fn with_max_packet(inner: W, max_packet: usize) -> PacketWriter<W> {
        let max_packet = max_packet.min(MAX_PACKET);
        PacketWriter {
            inner,
            staging: vec![0; LENGTH_PREFIX_LEN + max_packet].into_boxed_slice(),
        }
    }

    /// Writes one packet as a frame, with one `write_all`.
    pub fn write_packet(&mut self, packet: &[u8]) -> io::Result<()> {
        let max = self.staging.len() - LENGTH_PREFIX_LEN;
        if packet.len() > max {
            let e = FrameError::TooLong {
                len: packet.len(),
                max,
            };
            return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
        }
        let n = encode_frame(packet, &mut self.staging)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.inner.write_all(&self.staging[..n])
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W> PacketWriter<W> {
    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The underlying writer, mutably. Writing to it directly breaks the framing unless whole
    /// frames are written.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

// ---------------------------------------------------------------------------------------------
// The byte ring
// ---------------------------------------------------------------------------------------------

/// Fixed-capacity FIFO of bytes that can also remove a range from the middle (moving the
/// shorter side). Logical offsets count from the oldest byte.
struct ByteRing {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
}

impl ByteRing {
    fn with_capacity(capacity: usize) -> ByteRing {
        ByteRing {
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    fn free(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Physical index of logical offset `at` (`at < capacity`).
    fn phys(&self, at: usize) -> usize {
        let p = self.head + at;
        if p >= self.buf.len() {
            p - self.buf.len()
        } else {
            p
        }
    }

    /// Appends `data`; the caller has checked that it fits.
    fn push_back(&mut self, data: &[u8]) {
        debug_assert!(data.len() <= self.free());
        let mut done = 0;
        while done < data.len() {
            let at = self.phys(self.len);
            let n = (data.len() - done).min(self.buf.len() - at);
            self.buf[at..at + n].copy_from_slice(&data[done..done + n]);
            done += n;
            self.len += n;
        }
    }

    /// Copies `out.len()` bytes from logical offset `from` into `out`.
    fn copy_out(&self, from: usize, out: &mut [u8]) {
        debug_assert!(from + out.len() <= self.len);
        let mut done = 0;
        while done < out.len() {
            let at = self.phys(from + done);
            let n = (out.len() - done).min(self.buf.len() - at);
            out[done..done + n].copy_from_slice(&self.buf[at..at + n]);
            done += n;
        }
    }

    /// Forgets the `n` oldest bytes.
    fn pop_front(&mut self, n: usize) {
        debug_assert!(n <= self.len);
        self.head = self.phys(n);
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
    }

    /// Removes `n` bytes at logical offset `at`, keeping the order of the rest.
    fn remove(&mut self, at: usize, n: usize) {
        debug_assert!(at + n <= self.len);
        let before = at;
        let after = self.len - at - n;
        if before <= after {
            // Move the older part up by n, then drop the n bytes now at the front.
            self.move_within(0, n, before);
            self.pop_front(n);
        } else {
            self.move_within(at + n, at, after);
            self.len -= n;
        }
    }

    /// Moves `count` bytes from logical offset `src` to `dst` (the ranges may overlap), in
    /// physically contiguous pieces.
    fn move_within(&mut self, src: usize, dst: usize, count: usize) {
        let cap = self.buf.len();
        if dst < src {
            let (mut s, mut d, mut left) = (src, dst, count);
            while left > 0 {
                let (ps, pd) = (self.phys(s), self.phys(d));
                let n = left.min(cap - ps).min(cap - pd);
                self.buf.copy_within(ps..ps + n, pd);
                s += n;
                d += n;
                left -= n;
            }
        } else if dst > src {
            // Back to front, so that no byte is overwritten before it is moved.
            let (mut s_end, mut d_end, mut left) = (src + count, dst + count, count);
            while left > 0 {
                let (ps, pd) = (self.phys(s_end - 1), self.phys(d_end - 1));
                let n = left.min(ps + 1).min(pd + 1);
                self.buf.copy_within(ps + 1 - n..ps + 1, pd + 1 - n);
                s_end -= n;
                d_end -= n;
                left -= n;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The queue
// ---------------------------------------------------------------------------------------------

/// Which packets go when the queueing-delay bound, or the queue's storage, is exceeded. Packets
/// are always dropped whole; the order of the rest is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DropPolicy {
    /// Drop the oldest packet while it is expected to wait longer than the bound before it
    /// leaves the host: its age, plus what is left of the write in flight and of a full kernel
    /// send buffer ([`SenderConfig::kernel_send_buffer`]) at the rate the sink has been taking
    /// bytes (before any write was timed: its age alone). Key flags are ignored. When
    /// the storage is full, drop the oldest packets until the new one fits. The default.
    #[default]
    Oldest,
    /// Drop non-key packets first. When some packet is expected to wait longer than the bound
    /// (as for `Oldest`, plus the queued bytes ahead of it), the oldest non-key packets at or
    /// ahead of it are dropped until it is not; key packets go only when they alone exceed
    /// the bound, oldest first. When the storage is full, the oldest non-key packet goes, a new
    /// non-key packet is itself dropped if only key packets are queued, and key packets go
    /// only when key packets alone fill the storage.
    ///
    /// Mark as key what must survive a slow link: audio, video key frames. The drops happen
    /// before a packet is late, so the bound holds more tightly than with `Oldest`, and what
    /// is delivered is fresher.
    NonKeyFirst,
}

/// How a [`PacketQueue`] (and a [`MediaSender`]) behaves. Build it from
/// `SenderConfig::default()` and change the fields you need.
#[derive(Debug, Clone, Copy)]
pub struct SenderConfig {
    /// The bound on a packet's wait before it leaves the host: from [`send`](MediaSender::send)
    /// until its write starts, plus the kernel send buffer ahead of it
    /// ([`kernel_send_buffer`](Self::kernel_send_buffer)). `None` bounds nothing (the delay
    /// grows with the backlog; packets are dropped only when the storage is full). Defaults to
    /// [`DEFAULT_MAX_DELAY`].
    pub max_delay: Option<Duration>,
    /// Which packets go first. Defaults to [`DropPolicy::Oldest`].
    pub policy: DropPolicy,
    /// Byte capacity of the queue, allocated once (at least 1). A packet longer than this, or
    /// than [`MAX_PACKET`], is refused. Defaults to [`DEFAULT_QUEUE_BYTES`].
    pub queue_bytes: usize,
    /// Packet capacity of the queue, allocated once (at least 1). Defaults to
    /// [`DEFAULT_QUEUE_PACKETS`].
    pub queue_packets: usize,
    /// Bytes the kernel send buffer holds beyond the queue, counted into every packet's
    /// expected wait once the drain rate is known: on Linux, twice the `SO_SNDBUF` asked for
    /// with [`Config::send_buffer_size`](crate::Config::send_buffer_size). With it the bound
    /// covers the wait in the kernel too. Defaults to [`DEFAULT_KERNEL_SEND_BUFFER`], right for
    /// a socket set to [`RECOMMENDED_SEND_BUFFER`]; 0 bounds the queue alone.
    pub kernel_send_buffer: usize,
    /// Where a [`MediaSender`] reads the time. Defaults to `Instant::now`; a test may pass a
    /// fake clock.
    pub clock: fn() -> Instant,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            max_delay: Some(DEFAULT_MAX_DELAY),
            policy: DropPolicy::Oldest,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            queue_packets: DEFAULT_QUEUE_PACKETS,
            kernel_send_buffer: DEFAULT_KERNEL_SEND_BUFFER,
            clock: Instant::now,
        }
    }
}

/// A number of packets and their bytes (packet bytes, without the 2-byte length prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Packets.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

impl Counts {
    fn add(&mut self, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
    }

    /// The sum of two counts.
    pub fn plus(self, other: Counts) -> Counts {
        Counts {
            packets: self.packets + other.packets,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// What a [`PacketQueue`] or [`MediaSender`] did with the packets it was given.
///
/// Every accepted packet is in exactly one place:
/// `accepted = written + dropped_key + dropped_non_key + unsent + queued + in_flight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderStats {
    /// Packets taken into the queue.
    pub accepted: Counts,
    /// Packets refused because they could never fit ([`SendError::TooLarge`]).
    pub refused: Counts,
    /// Packets written whole to the sink.
    pub written: Counts,
    /// Key packets dropped.
    pub dropped_key: Counts,
    /// Non-key packets dropped.
    pub dropped_non_key: Counts,
    /// Of the dropped packets, how many went for the delay bound.
    pub dropped_late: u64,
    /// Of the dropped packets, how many went to make room in full storage.
    pub dropped_for_room: u64,
    /// Packets never written because the writer stopped on an error (the one whose write
    /// failed included).
    pub unsent: Counts,
    /// Packets waiting in the queue.
    pub queued: Counts,
    /// The packet being written, if any.
    pub in_flight: Counts,
    /// The longest queueing delay of a packet taken for writing: from its enqueueing to the
    /// start of its write.
    pub max_queue_delay: Duration,
}

impl SenderStats {
    /// All dropped packets, key and non-key.
    pub fn dropped(&self) -> Counts {
        self.dropped_key.plus(self.dropped_non_key)
    }
}

/// A packet taken from a [`PacketQueue`] for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Popped {
    /// Its length; the packet is in the first `len` bytes of the output buffer.
    pub len: usize,
    /// Whether it was sent as a key packet.
    pub key: bool,
    /// How long it waited in the queue.
    pub waited: Duration,
}

/// One queued packet; its bytes follow those of the packets before it in the ring.
#[derive(Debug, Clone, Copy)]
struct Descriptor {
    len: usize,
    key: bool,
    enqueued: Instant,
}

#[derive(Clone, Copy)]
enum Reason {
    Late,
    Room,
}

/// How fast the sink has been taking bytes: exponentially weighted sums (weight 15/16 per write)
/// of the bytes written and of the time spent inside `write_all`. Time spent waiting for
/// packets is not counted, so a fast link reads as fast however little media there is.
#[derive(Debug, Clone, Copy, Default)]
struct DrainRate {
    bytes: f64,
    nanos: f64,
}

impl DrainRate {
    /// Weight of the past at each new write.
    const DECAY: f64 = 15.0 / 16.0;

    fn record(&mut self, bytes: usize, elapsed: Duration) {
        self.bytes = self.bytes * Self::DECAY + bytes as f64;
        self.nanos = self.nanos * Self::DECAY + elapsed.as_nanos() as f64;
    }

    /// Expected time to write `bytes`; zero before anything was written.
    fn time_for(&self, bytes: usize) -> Duration {
        if self.bytes <= 0.0 {
            return Duration::ZERO;
        }
        // Saturates at u64::MAX nanoseconds.
        Duration::from_nanos((bytes as f64 * self.nanos / self.bytes) as u64)
    }
}

/// The sans-IO core of [`MediaSender`]: a fixed-capacity packet queue that drops packets by a
/// delay bound and a [`DropPolicy`], with the time passed in.
///
/// Packet bytes live in one byte ring and their descriptors (length, key flag, enqueue time) in
/// a deque, both allocated by [`new`](Self::new) and never grown. A driver calls
/// [`push`](Self::push) for each packet, [`pop`](Self::pop) to take the next one for writing,
/// then [`record_written`](Self::record_written) or [`record_unsent`](Self::record_unsent).
///
/// ```
/// use std::time::{Duration, Instant};
/// use connect_tunnel::media::{PacketQueue, SenderConfig, MAX_PACKET};
///
/// let config = SenderConfig { max_delay: Some(Duration::from_millis(100)), ..SenderConfig::default() };
/// let mut queue = PacketQueue::new(&config);
/// let t0 = Instant::now();
/// queue.push(b"old", false, t0)?;
/// queue.push(b"new", true, t0 + Duration::from_millis(80))?;
/// let mut out = vec![0u8; MAX_PACKET];
/// // 150 ms later the first packet has waited too long and is dropped whole.
/// let popped = queue.pop(t0 + Duration::from_millis(150), &mut out)?.unwrap();
/// assert_eq!(&out[..popped.len], b"new");
/// queue.record_written(Duration::from_micros(5));
/// assert_eq!(queue.stats().dropped_non_key.packets, 1);
/// assert_eq!(queue.stats().written.packets, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PacketQueue {
    max_delay: Option<Duration>,
    policy: DropPolicy,
    kernel_send_buffer: usize,
    ring: ByteRing,
    packets: VecDeque<Descriptor>,
    packet_capacity: usize,
    /// The packet taken by `pop` and not yet reported written or unsent: its length and when
    /// it was taken.
    in_flight: Option<(usize, Instant)>,
    /// When the last write ended: the kernel send buffer was (at most) full then, and has been
    /// draining since.
    last_write_end: Option<Instant>,
    rate: DrainRate,
    stats: SenderStats,
}

impl fmt::Debug for PacketQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketQueue")
            .field("max_delay", &self.max_delay)
            .field("policy", &self.policy)
            .field("queued", &self.packets.len())
            .field("queued_bytes", &self.ring.len)
            .finish()
    }
}

impl PacketQueue {
    /// An empty queue with the capacities, bound and policy of `config`; this allocates its
    /// storage, once.
    pub fn new(config: &SenderConfig) -> PacketQueue {
        let packet_capacity = config.queue_packets.max(1);
        PacketQueue {
            max_delay: config.max_delay,
            policy: config.policy,
            kernel_send_buffer: config.kernel_send_buffer,
            ring: ByteRing::with_capacity(config.queue_bytes),
            packets: VecDeque::with_capacity(packet_capacity),
            packet_capacity,
            in_flight: None,
            last_write_end: None,
            rate: DrainRate::default(),
            stats: SenderStats::default(),
        }
    }

    /// The largest packet [`push`](Self::push) accepts.
    pub fn max_packet(&self) -> usize {
        self.ring.buf.len().min(MAX_PACKET)
    }

    /// Packets waiting (not counting one being written).
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether no packet is waiting.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Counts so far, with the queue's current contents.
    pub fn stats(&self) -> SenderStats {
        let mut stats = self.stats;
        stats.queued = Counts {
            packets: self.packets.len() as u64,
            bytes: self.ring.len as u64,
        };
        if let Some((len, _)) = self.in_flight {
            stats.in_flight = Counts {
                packets: 1,
                bytes: len as u64,
            };
        }
        stats
    }

    /// The rate at which the sink has been taking bytes, in bytes per second; `None` before
    /// the first write was recorded or when writes took no measurable time.
    pub fn drain_rate(&self) -> Option<u64> {
        let per_mib = self.rate.time_for(1 << 20);
        (!per_mib.is_zero()).then(|| ((1u128 << 20) * 1_000_000_000 / per_mib.as_nanos()) as u64)
    }

    /// Queues `packet` at time `now`, first dropping what the bound and the policy say must go
    /// (the new packet itself, under [`DropPolicy::NonKeyFirst`], when it is non-key and only
    /// key packets fill the storage). Never waits.
    pub fn push(&mut self, packet: &[u8], key: bool, now: Instant) -> Result<(), SendError> {
        let max = self.max_packet();
        if packet.len() > max {
            self.stats.refused.add(packet.len());
            return Err(SendError::TooLarge {
                len: packet.len(),
                max,
            });
        }
        self.stats.accepted.add(packet.len());
        self.expire(now);
        while self.packets.len() == self.packet_capacity || self.ring.free() < packet.len() {
            let victim = match self.policy {
                DropPolicy::Oldest => 0,
                DropPolicy::NonKeyFirst => match self.packets.iter().position(|d| !d.key) {
                    Some(i) => i,
                    None if !key => {
                        self.stats.dropped_non_key.add(packet.len());
                        self.stats.dropped_for_room += 1;
                        return Ok(());
                    }
                    None => 0,
                },
            };
            self.drop_at(victim, Reason::Room);
        }
        self.ring.push_back(packet);
        self.packets.push_back(Descriptor {
            len: packet.len(),
            key,
            enqueued: now,
        });
        if self.policy == DropPolicy::NonKeyFirst {
            self.expire(now);
        }
        Ok(())
    }

    /// Drops, at time `now`, what the bound and the policy say must go. [`push`](Self::push)
    /// and [`pop`](Self::pop) call it; a driver may call it at any time.
    pub fn expire(&mut self, now: Instant) {
        let Some(bound) = self.max_delay else {
            return;
        };
        match self.policy {
            DropPolicy::Oldest => {
                while let Some(front) = self.packets.front() {
                    if self.expected_wait(now, front.enqueued, 0) <= bound {
                        break;
                    }
                    self.drop_at(0, Reason::Late);
                }
            }
            DropPolicy::NonKeyFirst => {
                while let Some(late) = self.first_expected_late(now, bound) {
                    let victim = self
                        .packets
                        .iter()
                        .take(late + 1)
                        .position(|d| !d.key)
                        .unwrap_or(0);
                    self.drop_at(victim, Reason::Late);
                }
            }
        }
    }

    /// How long a packet enqueued at `enqueued`, with `ahead` queued bytes before it, is
    /// expected to wait before it leaves the host: its age; what is left of the write in
    /// flight; the bytes ahead at the drain rate; and what is left of a full kernel send buffer
    /// (full while a write is in flight, draining at the same rate since the last one ended).
    fn expected_wait(&self, now: Instant, enqueued: Instant, ahead: usize) -> Duration {
        let kernel = self.rate.time_for(self.kernel_send_buffer);
        let (in_flight, kernel) = match (self.in_flight, self.last_write_end) {
            (Some((len, taken)), _) => {
                let writing = now.saturating_duration_since(taken);
                (self.rate.time_for(len).saturating_sub(writing), kernel)
            }
            (None, Some(end)) => (
                Duration::ZERO,
                kernel.saturating_sub(now.saturating_duration_since(end)),
            ),
            (None, None) => (Duration::ZERO, Duration::ZERO),
        };
        now.saturating_duration_since(enqueued) + in_flight + self.rate.time_for(ahead) + kernel
    }

    /// The oldest packet expected to wait longer than `bound`.
    fn first_expected_late(&self, now: Instant, bound: Duration) -> Option<usize> {
        let mut ahead = 0;
        for (i, d) in self.packets.iter().enumerate() {
            if self.expected_wait(now, d.enqueued, ahead) > bound {
                return Some(i);
            }
            ahead += d.len;
        }
        None
    }

    fn drop_at(&mut self, index: usize, reason: Reason) {
        let offset: usize = self.packets.iter().take(index).map(|d| d.len).sum();
        let Some(d) = self.packets.remove(index) else {
            return;
        };
        self.ring.remove(offset, d.len);
        if d.key {
            self.stats.dropped_key.add(d.len);
        } else {
            self.stats.dropped_non_key.add(d.len);
        }
        match reason {
            Reason::Late => self.stats.dropped_late += 1,
            Reason::Room => self.stats.dropped_for_room += 1,
        }
    }

    /// Takes the next packet for writing at time `now`, after [`expire`](Self::expire): copies
    /// it into `out` and returns its length, key flag and wait; `Ok(None)` when nothing is
    /// queued. The packet is then in flight until [`record_written`](Self::record_written) or
    /// [`record_unsent`](Self::record_unsent). An `out` shorter than the packet is
    /// [`FrameError::NoRoom`] and leaves it queued.
    pub fn pop(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<Popped>, FrameError> {
        self.expire(now);
        let Some(&front) = self.packets.front() else {
            return Ok(None);
        };
        let available = out.len();
        let out = out.get_mut(..front.len).ok_or(FrameError::NoRoom {
            needed: front.len,
            available,
        })?;
        self.ring.copy_out(0, out);
        self.ring.pop_front(front.len);
        self.packets.pop_front();
        let waited = now.saturating_duration_since(front.enqueued);
        self.stats.max_queue_delay = self.stats.max_queue_delay.max(waited);
        self.in_flight = Some((front.len, now));
        Ok(Some(Popped {
            len: front.len,
            key: front.key,
            waited,
        }))
    }

    /// The packet in flight was written whole, in `elapsed` from when it was taken (the time
    /// spent in the write; it feeds the drain-rate estimate).
    pub fn record_written(&mut self, elapsed: Duration) {
        if let Some((len, taken)) = self.in_flight.take() {
            self.stats.written.add(len);
            self.rate.record(len, elapsed);
            self.last_write_end = Some(taken + elapsed);
        }
    }

    /// The write of the packet in flight failed: it counts as unsent.
    pub fn record_unsent(&mut self) {
        if let Some((len, _)) = self.in_flight.take() {
            self.stats.unsent.add(len);
        }
    }

    /// Empties the queue, counting its packets as unsent (the writer has stopped).
    pub fn discard(&mut self) {
        for d in self.packets.drain(..) {
            self.stats.unsent.add(d.len);
        }
        self.ring.pop_front(self.ring.len);
    }
}

// ---------------------------------------------------------------------------------------------
// The sender
// ---------------------------------------------------------------------------------------------

struct State {
    queue: PacketQueue,
    /// `finish` was called: write what is left (within the bound), then stop.
    closing: bool,
    /// The sender was dropped without `finish`: stop after the current write.
    abandoned: bool,
    /// The writer stopped.
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    clock: fn() -> Instant,
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the writer thread hands back: the sink and the error that stopped it, if any.
type WriterOutcome<W> = (W, Option<io::Error>);

enum WriterThread<'scope, W> {
    Owned(thread::JoinHandle<WriterOutcome<W>>),
    Scoped(thread::ScopedJoinHandle<'scope, WriterOutcome<W>>),
}

/// The result of [`MediaSender::finish`].
#[derive(Debug)]
pub struct Finished<W> {
    /// Final counts: nothing is queued or in flight any more.
    pub stats: SenderStats,
    /// The write (or final flush) error that stopped the writer, if any.
    pub error: Option<io::Error>,
    /// The sink, back from the writer thread (to write more, or shut it down).
    pub sink: W,
}

/// Sends media packets over a byte stream with a bound on queueing delay: a [`PacketQueue`]
/// filled by [`send`](Self::send), which never waits for the sink, and drained by a writer
/// thread that writes each packet as an RFC 4571 frame with one `write_all`.
///
/// `send` takes `&self`: producers on several threads (audio, video) can share one sender.
/// The writer thread holds the queue's lock only to copy one packet out, never while writing.
/// Give the socket a small send buffer ([`RECOMMENDED_SEND_BUFFER`], see the
/// [module docs](self)); to bound [`finish`](Self::finish) when the peer may stop reading, set
/// a write timeout on the socket.
///
/// ```no_run
/// use std::time::Duration;
/// use connect_tunnel::media::{DropPolicy, MediaSender, SenderConfig, RECOMMENDED_SEND_BUFFER};
/// use connect_tunnel::{Config, Connector, Proxy, Target};
///
/// let config = Config::default().send_buffer_size(Some(RECOMMENDED_SEND_BUFFER));
/// let connector = Connector::new(Proxy::parse("http://proxy.example.com:3128")?, config)?;
/// let tunnel = connector.connect(&Target::parse("media.example.com:5004")?)?;
/// let (_reader, writer) = tunnel.split();
/// let sender = MediaSender::spawn(writer, SenderConfig {
///     max_delay: Some(Duration::from_millis(200)),
///     policy: DropPolicy::NonKeyFirst,
///     ..SenderConfig::default()
/// })?;
/// # let (audio_packet, video_packet) = (&[0u8; 172][..], &[0u8; 1200][..]);
/// sender.send(audio_packet, true)?;   // key: audio survives a slow link
/// sender.send(video_packet, false)?;
/// let finished = sender.finish();
/// println!("dropped {:?}", finished.stats.dropped());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MediaSender<'scope, W> {
    shared: Arc<Shared>,
    writer: Option<WriterThread<'scope, W>>,
}

impl<W> fmt::Debug for MediaSender<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaSender")
            .field("stats", &lock(&self.shared).queue.stats())
            .finish()
    }
}

impl<W: Write + Send + 'static> MediaSender<'static, W> {
    /// Starts the writer thread over `sink` (e.g. a [`TunnelWriter`](crate::TunnelWriter)).
    /// Allocates the queue here, once (the writer thread allocates its frame buffer, once).
    pub fn spawn(sink: W, config: SenderConfig) -> io::Result<MediaSender<'static, W>> {
        let (shared, frame) = prepare(&config);
        let for_writer = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name(WRITER_THREAD_NAME.into())
            .spawn(move || write_loop(&for_writer, sink, frame))?;
        Ok(MediaSender {
            shared,
            writer: Some(WriterThread::Owned(handle)),
        })
    }
}

impl<'scope, W: Write + Send + 'scope> MediaSender<'scope, W> {
    /// Starts the writer thread in `scope` over a borrowed sink, such as the `&mut Tunnel` a
    /// [`StreamHandler`](crate::StreamHandler) is given.
    pub fn spawn_scoped<'env>(
        scope: &'scope thread::Scope<'scope, 'env>,
        sink: W,
        config: SenderConfig,
    ) -> io::Result<MediaSender<'scope, W>> {
        let (shared, frame) = prepare(&config);
        let for_writer = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name(WRITER_THREAD_NAME.into())
            .spawn_scoped(scope, move || write_loop(&for_writer, sink, frame))?;
        Ok(MediaSender {
            shared,
            writer: Some(WriterThread::Scoped(handle)),
        })
    }

    /// Queues one packet (`key`: see [`DropPolicy::NonKeyFirst`]) and wakes the writer. Never
    /// waits for the sink; drops are reported in [`stats`](Self::stats), not as errors.
    pub fn send(&self, packet: &[u8], key: bool) -> Result<(), SendError> {
        let mut state = lock(&self.shared);
        if state.stopped {
            return Err(SendError::Stopped);
        }
        let now = (self.shared.clock)();
        state.queue.push(packet, key, now)?;
        drop(state);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Counts so far.
    pub fn stats(&self) -> SenderStats {
        lock(&self.shared).queue.stats()
    }

    /// Lets the writer write what is left (dropping, by the bound, what waited too long),
    /// flush, and stop; returns the final counts, the error that stopped it, if any, and the
    /// sink. Blocks until then. A panic in the sink is resumed here.
    pub fn finish(mut self) -> Finished<W> {
        lock(&self.shared).closing = true;
        self.shared.wake.notify_all();
        let joined = match self.writer.take() {
            Some(WriterThread::Owned(handle)) => handle.join(),
            Some(WriterThread::Scoped(handle)) => handle.join(),
            None => unreachable!("the writer is taken only here, and finish consumes the sender"),
        };
        let (sink, error) = joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Finished {
            stats: lock(&self.shared).queue.stats(),
            error,
            sink,
        }
    }
}

impl<W> Drop for MediaSender<'_, W> {
    /// Without [`finish`](MediaSender::finish): the writer stops after its current write,
    /// dropping what is queued, and the sink is dropped with it. Nothing waits for it (a scoped
    /// writer is joined by its scope).
    fn drop(&mut self) {
        if self.writer.is_some() {
            let mut state = lock(&self.shared);
            state.closing = true;
            state.abandoned = true;
            drop(state);
            self.shared.wake.notify_all();
        }
    }
}

/// The shared state, with the queue allocated, and the length of the writer's frame buffer.
fn prepare(config: &SenderConfig) -> (Arc<Shared>, usize) {
    let queue = PacketQueue::new(config);
    let frame = LENGTH_PREFIX_LEN + queue.max_packet();
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue,
            closing: false,
            abandoned: false,
            stopped: false,
        }),
        wake: Condvar::new(),
        clock: config.clock,
    });
    (shared, frame)
}

/// The writer thread: takes packets in order and writes each as one frame (from a buffer of
/// `frame_len` bytes allocated here, once), until closed and empty, abandoned, or a write fails.
fn write_loop<W: Write>(shared: &Shared, mut sink: W, frame_len: usize) -> WriterOutcome<W> {
    let mut frame = vec![0u8; frame_len];
    let mut error = None;
    let mut state = lock(shared);
    loop {
        if state.abandoned {
            break;
        }
        let now = (shared.clock)();
        let popped = match state.queue.pop(now, &mut frame[LENGTH_PREFIX_LEN..]) {
            Ok(popped) => popped,
            // The frame buffer holds the largest packet the queue accepts.
            Err(e) => {
                error = Some(io::Error::other(e));
                break;
            }
        };
        let Some(popped) = popped else {
            if state.closing {
                break;
            }
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        drop(state);
        let len = popped.len;
        frame[..LENGTH_PREFIX_LEN].copy_from_slice(&(len as u16).to_be_bytes());
        let started = (shared.clock)();
        let written = sink.write_all(&frame[..LENGTH_PREFIX_LEN + len]);
        let elapsed = (shared.clock)().saturating_duration_since(started);
        state = lock(shared);
        match written {
            Ok(()) => state.queue.record_written(elapsed),
            Err(e) => {
                log::warn!("media sender: write failed: {e}");
                state.queue.record_unsent();
                error = Some(e);
                break;
            }
        }
    }
    state.queue.discard();
    state.stopped = true;
    drop(state);
    if error.is_none() {
        error = sink.flush().err();
    }
    (sink, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{mpsc, OnceLock};

    // --- codec -------------------------------------------------------------------------------

    #[test]
    fn encode_exact_bytes() {
        let mut out = [0xEEu8; 8];
        assert_eq!(encode_frame(b"abc", &mut out), Ok(5));
        assert_eq!(out, [0x00, 0x03, b'a', b'b', b'c', 0xEE, 0xEE, 0xEE]);
        assert_eq!(encode_frame(b"", &mut out), Ok(2));
        assert_eq!(&out[..2], [0x00, 0x00]);
        let mut big = vec![0u8; MAX_FRAME];
        let packet: Vec<u8> = (0..MAX_PACKET).map(|i| i as u8).collect();
        assert_eq!(encode_frame(&packet, &mut big), Ok(MAX_FRAME));
        assert_eq!(&big[..3], [0xFF, 0xFF, 0x00]);
        assert_eq!(
            encode_frame(&[0u8; 300], &mut big),
            Ok(302),
            "0x012C prefix"
        );
        assert_eq!(&big[..2], [0x01, 0x2C]);
        assert_eq!(
            encode_frame(&vec![0u8; MAX_PACKET + 1], &mut vec![0u8; MAX_FRAME + 1]),
            Err(FrameError::TooLong {
                len: MAX_PACKET + 1,
                max: MAX_PACKET
            })
        );
        assert_eq!(
            encode_frame(b"abc", &mut [0u8; 4]),
            Err(FrameError::NoRoom {
                needed: 5,
                available: 4
            })
        );
    }

    #[test]
    fn decode_exact_bytes_and_limits() {
        assert_eq!(try_decode_frame(b"", MAX_PACKET), Ok(None));
        assert_eq!(try_decode_frame(b"\x00", MAX_PACKET), Ok(None));
        assert_eq!(
            try_decode_frame(b"\x00\x00", MAX_PACKET),
            Ok(Some((2, &b""[..])))
        );
        assert_eq!(try_decode_frame(b"\x00\x02h", MAX_PACKET), Ok(None));
        assert_eq!(
            try_decode_frame(b"\x00\x02hiX", MAX_PACKET),
            Ok(Some((4, &b"hi"[..])))
        );
        assert_eq!(
            try_decode_frame(b"\x05\xDC", 1200),
            Err(FrameError::TooLong {
                len: 1500,
                max: 1200
            })
        );
        assert_eq!(
            FrameError::TooLong {
                len: 1500,
                max: 1200
            }
            .to_string(),
            "packet of 1500 bytes over the limit of 1200 bytes"
        );
    }

    /// A stream of varied packets (the null packet among them) and its encoding.
    fn sample_stream() -> (Vec<Vec<u8>>, Vec<u8>) {
        let sizes = [1usize, 0, 12, 172, 0, 0, 1200, 3, 255, 256, 2, 1500, 0, 7];
        let packets: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        let mut wire = Vec::new();
        for p in &packets {
            let mut frame = vec![0u8; LENGTH_PREFIX_LEN + p.len()];
            encode_frame(p, &mut frame).unwrap();
            wire.extend_from_slice(&frame);
        }
        let expected = packets.into_iter().filter(|p| !p.is_empty()).collect();
        (expected, wire)
    }

    fn decode_chunks(decoder: &mut FrameDecoder, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for chunk in chunks {
            let mut input = *chunk;
            while !input.is_empty() {
                let (used, packet) = decoder.try_decode(input).unwrap();
                assert!(used > 0 && used <= input.len());
                if let Some(p) = packet {
                    out.push(p.to_vec());
                }
                input = &input[used..];
            }
        }
        out
    }

    #[test]
    fn decoder_split_at_every_byte() {
        let (expected, wire) = sample_stream();
        for cut in 0..=wire.len() {
            let mut decoder = FrameDecoder::new();
            let got = decode_chunks(&mut decoder, &[&wire[..cut], &wire[cut..]]);
            assert_eq!(got, expected, "cut at {cut}");
            assert!(decoder.is_between_frames());
            assert_eq!(decoder.pending(), 0);
            assert_eq!(decoder.null_packets(), 4);
        }
    }

    #[test]
    fn decoder_split_at_every_pair_of_bytes_and_one_byte_at_a_time() {
        let (expected, wire) = sample_stream();
        let short = &wire[..60];
        let short_expected: Vec<Vec<u8>> = {
            let mut d = FrameDecoder::new();
            decode_chunks(&mut d, &[short])
        };
        for a in 0..=short.len() {
            for b in a..=short.len() {
                let mut d = FrameDecoder::new();
                let got = decode_chunks(&mut d, &[&short[..a], &short[a..b], &short[b..]]);
                assert_eq!(got, short_expected, "cuts at {a}, {b}");
            }
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let mut decoder = FrameDecoder::new();
        assert_eq!(decode_chunks(&mut decoder, &bytes), expected);
    }

    #[test]
    fn decoder_merged_packets_are_borrowed_from_the_input() {
        let (expected, wire) = sample_stream();
        let mut decoder = FrameDecoder::new();
        let mut input = &wire[..];
        let mut got = Vec::new();
        while !input.is_empty() {
            let (used, packet) = decoder.try_decode(input).unwrap();
            if let Some(p) = packet {
                // Whole in the input: no copy.
                let inside = input.as_ptr_range();
                assert!(inside.contains(&p.as_ptr()));
                got.push(p.to_vec());
            }
            input = &input[used..];
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn decoder_too_long_is_sticky_and_small_limit_works() {
        let mut decoder = FrameDecoder::with_max_packet(4);
        assert_eq!(decoder.max_packet(), 4);
        let (used, p) = decoder.try_decode(b"\x00\x04abcd").unwrap();
        assert_eq!((used, p), (6, Some(&b"abcd"[..])));
        let err = FrameError::TooLong { len: 5, max: 4 };
        assert_eq!(decoder.try_decode(b"\x00"), Ok((1, None)));
        assert_eq!(decoder.try_decode(b"\x05abcde"), Err(err));
        assert_eq!(decoder.try_decode(b"abcde"), Err(err));
        let mut whole = FrameDecoder::with_max_packet(4);
        assert_eq!(whole.try_decode(b"\x00\x05abcde"), Err(err));
    }

    /// A reader that returns the given chunks, one per read call, with an error between some.
    struct Chunked {
        chunks: VecDeque<io::Result<Vec<u8>>>,
    }

    impl Read for Chunked {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.chunks.pop_front() {
                None => Ok(0),
                Some(Err(e)) => Err(e),
                Some(Ok(mut chunk)) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        chunk.drain(..n);
                        self.chunks.push_front(Ok(chunk));
                    }
                    Ok(n)
                }
            }
        }
    }

    fn chunked(chunks: &[&[u8]]) -> Chunked {
        Chunked {
            // An empty read means the end of the stream: leave empty chunks out.
            chunks: chunks
                .iter()
                .filter(|c| !c.is_empty())
                .map(|c| Ok(c.to_vec()))
                .collect(),
        }
    }

    fn read_all<R: Read>(reader: &mut PacketReader<R>) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some(p) = reader.read_packet()? {
            out.push(p.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn reader_split_at_every_byte_and_merged() {
        let (expected, wire) = sample_stream();
        for cut in 0..=wire.len() {
            let mut reader = PacketReader::new(chunked(&[&wire[..cut], &wire[cut..]]));
            assert_eq!(read_all(&mut reader).unwrap(), expected, "cut at {cut}");
            assert_eq!(reader.null_packets(), 4);
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let mut reader = PacketReader::new(chunked(&bytes));
        assert_eq!(read_all(&mut reader).unwrap(), expected);
    }

    #[test]
    fn reader_many_frames_in_one_read_and_largest_frames() {
        let mut wire = Vec::new();
        for i in 0..5000u16 {
            wire.extend_from_slice(&2u16.to_be_bytes());
            wire.extend_from_slice(&i.to_be_bytes());
        }
        let big: Vec<u8> = (0..MAX_PACKET).map(|i| (i * 7) as u8).collect();
        for _ in 0..3 {
            wire.extend_from_slice(&u16::MAX.to_be_bytes());
            wire.extend_from_slice(&big);
        }
        let mut reader = PacketReader::new(chunked(&[&wire]));
        for i in 0..5000u16 {
            assert_eq!(reader.read_packet().unwrap(), Some(&i.to_be_bytes()[..]));
        }
        for _ in 0..3 {
            assert_eq!(reader.read_packet().unwrap(), Some(&big[..]));
        }
        assert_eq!(reader.read_packet().unwrap(), None);
    }

    #[test]
    fn reader_resumes_after_a_timeout_mid_frame() {
        let mut source = chunked(&[b"\x00\x05he", b"llo\x00"]);
        source
            .chunks
            .insert(1, Err(io::Error::from(io::ErrorKind::WouldBlock)));
        source
            .chunks
            .insert(3, Err(io::Error::from(io::ErrorKind::TimedOut)));
        source.chunks.push_back(Ok(b"\x01!".to_vec()));
        let mut reader = PacketReader::new(source);
        let e = reader.read_packet().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(reader.buffered(), b"\x00\x05he");
        assert_eq!(reader.read_packet().unwrap(), Some(&b"hello"[..]));
        let e = reader.read_packet().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(reader.read_packet().unwrap(), Some(&b"!"[..]));
        assert_eq!(reader.read_packet().unwrap(), None);
    }

    #[test]
    fn reader_errors() {
        let mut reader = PacketReader::new(&b"\x00\x05hel"[..]);
        let e = reader.read_packet().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut reader = PacketReader::new(&b"\x00"[..]);
        assert_eq!(
            reader.read_packet().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut reader = PacketReader::with_max_packet(&b"\x00\x02hi\x00\x03abc"[..], 2);
        assert_eq!(reader.read_packet().unwrap(), Some(&b"hi"[..]));
        let e = reader.read_packet().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let inner = e.into_inner().unwrap().downcast::<FrameError>().unwrap();
        assert_eq!(*inner, FrameError::TooLong { len: 3, max: 2 });
    }

    /// Counts write calls, to show one frame is one write.
    struct CountingWriter {
        data: Vec<u8>,
        writes: usize,
    }

    impl Write for CountingWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.data.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writer_one_write_per_frame_and_round_trip() {
        let (expected, _) = sample_stream();
        let mut writer = PacketWriter::new(CountingWriter {
            data: Vec::new(),
            writes: 0,
        });
        for p in &expected {
            writer.write_packet(p).unwrap();
        }
        writer.flush().unwrap();
        assert_eq!(writer.get_ref().writes, expected.len());
        let wire = writer.into_inner().data;
        assert_eq!(&wire[..3], [0x00, 0x01, 0x00]);
        let mut reader = PacketReader::new(&wire[..]);
        assert_eq!(read_all(&mut reader).unwrap(), expected);

        let mut small = PacketWriter::with_max_packet(Vec::new(), 2);
        let e = small.write_packet(b"abc").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(small.get_ref().is_empty());
    }

    // --- byte ring ---------------------------------------------------------------------------

    /// Random pushes, pops and middle removals against a `VecDeque` model, at every head
    /// position of a small ring.
    #[test]
    fn ring_matches_a_model() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for capacity in [1usize, 2, 7, 16, 33] {
            let mut ring = ByteRing::with_capacity(capacity);
            let mut model: VecDeque<u8> = VecDeque::new();
            let mut next = 0u8;
            for _ in 0..20_000 {
                match rand(4) {
                    0 | 1 => {
                        let n = rand(ring.free() + 1);
                        let data: Vec<u8> = (0..n)
                            .map(|_| {
                                next = next.wrapping_add(1);
                                next
                            })
                            .collect();
                        ring.push_back(&data);
                        model.extend(&data);
                    }
                    2 => {
                        let n = rand(ring.len + 1);
                        let mut out = vec![0u8; n];
                        ring.copy_out(0, &mut out);
                        ring.pop_front(n);
                        let expected: Vec<u8> = model.drain(..n).collect();
                        assert_eq!(out, expected);
                    }
                    _ => {
                        let at = rand(ring.len + 1);
                        let n = rand(ring.len - at + 1);
                        ring.remove(at, n);
                        model.drain(at..at + n);
                    }
                }
                assert_eq!(ring.len, model.len());
                let mut all = vec![0u8; ring.len];
                ring.copy_out(0, &mut all);
                assert!(all.iter().eq(model.iter()), "capacity {capacity}");
            }
        }
    }

    // --- queue -------------------------------------------------------------------------------

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn base() -> Instant {
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn at(n: u64) -> Instant {
        base() + ms(n)
    }

    fn config(max_delay: Option<u64>, policy: DropPolicy) -> SenderConfig {
        SenderConfig {
            max_delay: max_delay.map(ms),
            policy,
            kernel_send_buffer: 0,
            ..SenderConfig::default()
        }
    }

    /// A packet of `len` bytes whose first byte is `id`.
    fn packet(id: u8, len: usize) -> Vec<u8> {
        let mut p = vec![id; len];
        p[0] = id;
        p
    }

    /// Pops everything at time `now`, recording each write as instant; returns the first bytes.
    fn drain_ids(queue: &mut PacketQueue, now: Instant) -> Vec<u8> {
        let mut out = vec![0u8; MAX_PACKET];
        let mut ids = Vec::new();
        while queue.pop(now, &mut out).unwrap().is_some() {
            ids.push(out[0]);
            queue.record_written(Duration::ZERO);
        }
        ids
    }

    fn check_conservation(stats: &SenderStats) {
        let total = stats
            .written
            .plus(stats.dropped())
            .plus(stats.unsent)
            .plus(stats.queued)
            .plus(stats.in_flight);
        assert_eq!(stats.accepted, total, "{stats:?}");
        assert_eq!(
            stats.dropped_late + stats.dropped_for_room,
            stats.dropped().packets
        );
    }

    #[test]
    fn oldest_drops_packets_over_the_bound_oldest_first() {
        let mut q = PacketQueue::new(&config(Some(100), DropPolicy::Oldest));
        for (i, t) in [0u64, 20, 40, 60, 80].iter().enumerate() {
            q.push(&packet(i as u8, 100), i == 0, at(*t)).unwrap();
        }
        // At 150 ms, packets enqueued at 0 and 20 waited 150 and 130 ms: dropped, the key
        // packet among them (Oldest ignores the flag). 40 waited 110: dropped too.
        assert_eq!(drain_ids(&mut q, at(150)), [3, 4]);
        let s = q.stats();
        assert_eq!(
            s.dropped_key,
            Counts {
                packets: 1,
                bytes: 100
            }
        );
        assert_eq!(
            s.dropped_non_key,
            Counts {
                packets: 2,
                bytes: 200
            }
        );
        assert_eq!(s.dropped_late, 3);
        assert_eq!(s.written.packets, 2);
        assert_eq!(s.max_queue_delay, ms(90));
        check_conservation(&s);
    }

    #[test]
    fn bound_is_inclusive_and_no_bound_drops_nothing() {
        let mut q = PacketQueue::new(&config(Some(100), DropPolicy::Oldest));
        q.push(b"a", false, at(0)).unwrap();
        assert_eq!(drain_ids(&mut q, at(100)), [b'a']);
        let mut q = PacketQueue::new(&config(None, DropPolicy::NonKeyFirst));
        q.push(b"a", false, at(0)).unwrap();
        q.push(b"b", false, at(0)).unwrap();
        assert_eq!(drain_ids(&mut q, at(3_600_000)), [b'a', b'b']);
        assert_eq!(q.stats().max_queue_delay, ms(3_600_000));
    }

    #[test]
    fn oldest_makes_room_by_dropping_the_oldest() {
        let mut q = PacketQueue::new(&SenderConfig {
            queue_bytes: 1000,
            queue_packets: 3,
            ..config(None, DropPolicy::Oldest)
        });
        q.push(&packet(1, 400), true, at(0)).unwrap();
        q.push(&packet(2, 400), false, at(1)).unwrap();
        q.push(&packet(3, 400), false, at(2)).unwrap(); // 1200 > 1000: packet 1 goes
        q.push(&packet(4, 10), false, at(3)).unwrap();
        q.push(&packet(5, 10), false, at(4)).unwrap(); // 3 packets already: packet 2 goes
        assert_eq!(
            q.push(&packet(6, 1001), true, at(5)),
            Err(SendError::TooLarge {
                len: 1001,
                max: 1000
            })
        );
        let s = q.stats();
        assert_eq!(s.refused.packets, 1);
        assert_eq!(s.dropped_for_room, 2);
        assert_eq!(s.dropped_key.packets, 1);
        assert_eq!(drain_ids(&mut q, at(5)), [3, 4, 5]);
        check_conservation(&q.stats());
    }

    #[test]
    fn non_key_first_makes_room_from_non_key_packets() {
        let mut q = PacketQueue::new(&SenderConfig {
            queue_bytes: 1000,
            queue_packets: 100,
            ..config(None, DropPolicy::NonKeyFirst)
        });
        q.push(&packet(1, 300), true, at(0)).unwrap();
        q.push(&packet(2, 300), false, at(1)).unwrap();
        q.push(&packet(3, 300), true, at(2)).unwrap();
        q.push(&packet(4, 300), true, at(3)).unwrap(); // 1200: the non-key 2 goes
        assert_eq!(q.stats().dropped_non_key.packets, 1);
        q.push(&packet(5, 100), false, at(4)).unwrap(); // fits: 1000
        q.push(&packet(6, 100), false, at(5)).unwrap(); // full: the non-key 5 goes
        q.push(&packet(7, 300), false, at(6)).unwrap(); // needs 300: 6 goes, still 900+300: itself
        let s = q.stats();
        assert_eq!(s.dropped_non_key.packets, 4);
        assert_eq!(s.dropped_key.packets, 0);
        q.push(&packet(8, 300), true, at(7)).unwrap(); // only keys left: the oldest key goes
        let s = q.stats();
        assert_eq!(
            s.dropped_key,
            Counts {
                packets: 1,
                bytes: 300
            }
        );
        assert_eq!(s.dropped_for_room, 5);
        assert_eq!(drain_ids(&mut q, at(8)), [3, 4, 8]);
        check_conservation(&q.stats());
    }

    #[test]
    fn non_key_first_without_a_rate_estimate_is_age_only() {
        let mut q = PacketQueue::new(&config(Some(100), DropPolicy::NonKeyFirst));
        q.push(&packet(1, 100), true, at(0)).unwrap();
        q.push(&packet(2, 100), false, at(10)).unwrap();
        q.push(&packet(3, 100), true, at(20)).unwrap();
        // At 105 ms the key packet 1 alone waited over the bound: it goes, nothing else.
        assert_eq!(drain_ids(&mut q, at(105)), [2, 3]);
        let s = q.stats();
        assert_eq!(s.dropped_key.packets, 1);
        assert_eq!(s.dropped_non_key.packets, 0);
    }

    /// Teaches the queue a drain rate of 100 bytes per ms (100 kB/s).
    fn learn_rate(q: &mut PacketQueue, now: Instant) {
        let mut out = vec![0u8; MAX_PACKET];
        for _ in 0..32 {
            q.push(&[0u8; 1000], true, now).unwrap();
            q.pop(now, &mut out).unwrap().unwrap();
            q.record_written(ms(10));
        }
        let rate = q.drain_rate().unwrap();
        assert!((99_900..=100_100).contains(&rate), "{rate}");
    }

    #[test]
    fn non_key_first_drops_non_key_packets_ahead_of_a_key_packet_expected_late() {
        let mut q = PacketQueue::new(&config(Some(100), DropPolicy::NonKeyFirst));
        learn_rate(&mut q, at(0));
        let before = q.stats();
        // 8 non-key packets of 1000 bytes (80 ms of link), then a key packet: expected wait
        // 80 ms, fine.
        for i in 0..8 {
            q.push(&packet(i, 1000), false, at(1000)).unwrap();
        }
        q.push(&packet(100, 160), true, at(1000)).unwrap();
        assert_eq!(q.stats().dropped(), before.dropped());
        // Four more non-key packets: the last would wait 120 ms > 100; the oldest non-key
        // packets go until it would not (two of them), and no key packet.
        for i in 8..12 {
            q.push(&packet(i, 1000), false, at(1000)).unwrap();
        }
        let s = q.stats();
        assert_eq!(
            s.dropped_non_key.packets - before.dropped_non_key.packets,
            2
        );
        assert_eq!(s.dropped_key, before.dropped_key);
        // 20 ms later, a key packet behind 10 000 bytes would wait 100 ms: fine; 30 ms later it
        // would not be, and the oldest non-key packets go first, not the key ones.
        q.push(&packet(101, 160), true, at(1020)).unwrap();
        assert_eq!(
            q.stats().dropped_non_key.packets - before.dropped_non_key.packets,
            4
        );
        let ids = drain_ids(&mut q, at(1020));
        assert_eq!(ids, [4, 5, 6, 7, 100, 8, 9, 10, 11, 101]);
        assert_eq!(q.stats().dropped_key, before.dropped_key);
        check_conservation(&q.stats());
    }

    #[test]
    fn non_key_first_drops_key_packets_when_they_alone_exceed_the_bound() {
        let mut q = PacketQueue::new(&config(Some(100), DropPolicy::NonKeyFirst));
        learn_rate(&mut q, at(0));
        let before = q.stats();
        // A non-key packet, then 15 key packets of 1000 bytes: 150 ms of link. The eleventh key
        // packet would start after 101 ms: the non-key packet goes. From the twelfth on, key
        // packets alone exceed the bound: one key packet goes for each, oldest first.
        q.push(&packet(50, 100), false, at(1000)).unwrap();
        for i in 0..15 {
            q.push(&packet(i, 1000), true, at(1000)).unwrap();
        }
        let s = q.stats();
        assert_eq!(
            s.dropped_non_key.packets - before.dropped_non_key.packets,
            1
        );
        assert_eq!(s.dropped_key.packets - before.dropped_key.packets, 4);
        assert_eq!(
            drain_ids(&mut q, at(1000)),
            [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
        );
    }

    #[test]
    fn the_kernel_send_buffer_counts_once_the_rate_is_known() {
        for policy in [DropPolicy::Oldest, DropPolicy::NonKeyFirst] {
            let mut q = PacketQueue::new(&SenderConfig {
                kernel_send_buffer: 5000,
                ..config(Some(100), policy)
            });
            // No rate yet: age alone.
            q.push(&packet(1, 100), false, at(0)).unwrap();
            assert_eq!(drain_ids(&mut q, at(90)), [1], "{policy:?}");
            learn_rate(&mut q, at(1000));
            // 100 bytes per ms: a full kernel buffer is 50 ms more while a write is in flight;
            // the packet in flight (1000 bytes) is expected to take 10 ms.
            let mut out = vec![0u8; MAX_PACKET];
            q.push(&packet(2, 1000), false, at(2000)).unwrap();
            q.pop(at(2000), &mut out).unwrap().unwrap();
            q.push(&packet(3, 100), true, at(2000)).unwrap();
            q.push(&packet(4, 100), false, at(2005)).unwrap();
            // Packet 4 at 2006: 1 ms old + 4 ms left of the write + 1 ms for packet 3 + 50 ms.
            q.expire(at(2006));
            // Packet 3 at 2049 (the write has overrun its 10 ms): 49 + 50 ms, fine; at 2051:
            // 101 ms, it goes. Packet 4: 46 + 1 + 50 ms, it stays.
            q.expire(at(2049));
            assert_eq!(q.stats().dropped().packets, 0, "{policy:?}");
            q.expire(at(2051));
            assert_eq!(q.stats().dropped_key.packets, 1, "{policy:?}");
            // The write turns out to have ended at 2030 (which slows the rate estimate: the
            // kernel buffer is now 57 ms); 70 ms later that has drained, and packet 4, 95 ms
            // old, is written.
            q.record_written(ms(30));
            assert_eq!(drain_ids(&mut q, at(2100)), [4], "{policy:?}");
            assert_eq!(q.stats().dropped_key.packets, 1, "{policy:?}");
        }
    }

    #[test]
    fn unsent_and_discard_are_counted() {
        let mut q = PacketQueue::new(&config(None, DropPolicy::Oldest));
        let mut out = vec![0u8; 10];
        q.push(b"abc", false, at(0)).unwrap();
        q.push(b"defg", false, at(0)).unwrap();
        assert_eq!(
            q.pop(at(0), &mut out[..2]),
            Err(FrameError::NoRoom {
                needed: 3,
                available: 2
            })
        );
        q.pop(at(0), &mut out).unwrap().unwrap();
        q.record_unsent();
        q.discard();
        let s = q.stats();
        assert_eq!(
            s.unsent,
            Counts {
                packets: 2,
                bytes: 7
            }
        );
        assert!(q.is_empty());
        check_conservation(&s);
    }

    // --- sender ------------------------------------------------------------------------------

    static FAKE_MS: AtomicU64 = AtomicU64::new(0);

    /// The sender tests' clock: `base()` plus `FAKE_MS`.
    fn fake_now() -> Instant {
        base() + ms(FAKE_MS.load(Ordering::SeqCst))
    }

    /// A sink whose every write waits for a permit, then hands the frame to the test.
    struct Gate {
        permits: mpsc::Receiver<()>,
        frames: mpsc::Sender<Vec<u8>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.permits
                .recv()
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            self.frames.send(buf.to_vec()).unwrap();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn wait_for(sender: &MediaSender<'_, Gate>, what: impl Fn(&SenderStats) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !what(&sender.stats()) {
            assert!(Instant::now() < deadline, "{:?}", sender.stats());
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// One test drives the fake clock; the writer blocks on a channel, so every step is
    /// deterministic.
    #[test]
    fn sender_bounds_delay_with_a_blocked_writer_and_reports_drops() {
        FAKE_MS.store(0, Ordering::SeqCst);
        let (permit, permits) = mpsc::channel();
        let (frames_tx, frames) = mpsc::channel();
        let sender = MediaSender::spawn(
            Gate {
                permits,
                frames: frames_tx,
            },
            SenderConfig {
                clock: fake_now,
                ..config(Some(100), DropPolicy::Oldest)
            },
        )
        .unwrap();
        sender.send(b"A", true).unwrap();
        // The writer takes A and blocks in its write.
        wait_for(&sender, |s| s.in_flight.packets == 1);
        FAKE_MS.store(10, Ordering::SeqCst);
        sender.send(b"B", false).unwrap();
        FAKE_MS.store(20, Ordering::SeqCst);
        sender.send(b"C", true).unwrap();
        // 150 ms: B and C waited over the bound; D is sent now.
        FAKE_MS.store(150, Ordering::SeqCst);
        sender.send(b"D", false).unwrap();
        let s = sender.stats();
        assert_eq!((s.dropped_key.packets, s.dropped_non_key.packets), (1, 1));
        assert_eq!(s.queued.packets, 1);
        permit.send(()).unwrap();
        permit.send(()).unwrap();
        assert_eq!(frames.recv().unwrap(), b"\x00\x01A");
        assert_eq!(frames.recv().unwrap(), b"\x00\x01D");
        let finished = sender.finish();
        assert!(finished.error.is_none());
        let s = finished.stats;
        assert_eq!(
            s.written,
            Counts {
                packets: 2,
                bytes: 2
            }
        );
        assert_eq!(
            s.dropped(),
            Counts {
                packets: 2,
                bytes: 2
            }
        );
        assert_eq!(s.max_queue_delay, Duration::ZERO);
        check_conservation(&s);
        assert_eq!(s.queued.packets + s.in_flight.packets, 0);
    }

    #[test]
    fn sender_reports_a_write_error_and_refuses_more() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::ConnectionReset.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sender = MediaSender::spawn(Broken, config(None, DropPolicy::Oldest)).unwrap();
        sender.send(b"x", false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sender.send(b"y", false) != Err(SendError::Stopped) {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(1));
        }
        let finished = sender.finish();
        assert_eq!(
            finished.error.map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionReset)
        );
        assert_eq!(finished.stats.written.packets, 0);
        assert!(finished.stats.unsent.packets >= 1);
        check_conservation(&finished.stats);
    }

    #[test]
    fn scoped_sender_over_a_borrowed_sink_drains_on_finish() {
        let mut wire = Vec::new();
        let stats = thread::scope(|scope| {
            let sender =
                MediaSender::spawn_scoped(scope, &mut wire, config(None, DropPolicy::Oldest))
                    .unwrap();
            for i in 0..100u8 {
                sender.send(&[i; 10], i % 5 == 0).unwrap();
            }
            let finished = sender.finish();
            assert!(finished.error.is_none());
            finished.stats
        });
        assert_eq!(stats.written.packets, 100);
        let mut reader = PacketReader::new(&wire[..]);
        for i in 0..100u8 {
            assert_eq!(reader.read_packet().unwrap(), Some(&[i; 10][..]));
        }
        assert_eq!(reader.read_packet().unwrap(), None);
    }

    #[test]
    fn dropping_an_unfinished_sender_stops_its_writer() {
        let (permit, permits) = mpsc::channel();
        let (frames_tx, frames) = mpsc::channel();
        let sender = MediaSender::spawn(
            Gate {
                permits,
                frames: frames_tx,
            },
            config(None, DropPolicy::Oldest),
        )
        .unwrap();
        sender.send(b"1", false).unwrap();
        sender.send(b"2", false).unwrap();
        wait_for(&sender, |s| s.in_flight.packets == 1);
        drop(sender);
        permit.send(()).unwrap();
        assert_eq!(frames.recv().unwrap(), b"\x00\x011");
        // The writer gives up the rest and drops the sink, closing the channel.
        assert!(frames.recv().is_err());
    }

    #[test]
    fn a_sender_can_be_shared_by_producer_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<MediaSender<'static, std::net::TcpStream>>();
        shareable::<PacketQueue>();
    }

    #[test]
    fn sizes_stay_small() {
        assert!(std::mem::size_of::<FrameDecoder>() <= 64);
        assert!(std::mem::size_of::<PacketReader<std::net::TcpStream>>() <= 64);
        assert!(std::mem::size_of::<MediaSender<'static, std::net::TcpStream>>() <= 64);
    }
}
