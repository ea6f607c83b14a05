//! What travels between the camera and the media server, inside the tunnel.
//!
//! Every packet is framed as in RFC 4571 (a 16-bit big-endian length, then the packet).
//!
//! Media packets are RTP (RFC 3550, V=2, no CSRC, no extension) with a payload laid out for
//! checking:
//!
//! ```text
//! | RTP header (12) | send time, ns since the Unix epoch (8) | pattern bytes | CRC-32 (4) |
//! ```
//!
//! Control packets are RTCP-shaped (so a demultiplexer keeps them apart from RTP by the
//! second byte, RFC 5761): an APP packet (PT 204) whose 4-byte name says what it is and whose
//! data is ASCII `key=value` pairs separated by spaces, or a BYE (PT 203).
//!
//! - camera -> server `HELO`: `session=HEX conn=N scenario=NAME start_ns=N audio_ssrc=HEX
//!   audio_first=SEQ video_ssrc=HEX video_first=SEQ`, first on every connection;
//! - camera -> server BYE: the stream is over, answer with the final receipt;
//! - server -> camera `RCPT`: a receiver report (every few hundred ms, and right after `HELO`),
//!   or with `final=1` the full report (see [`crate::server`]).

use std::io::{self, Read};
use std::time::{SystemTime, UNIX_EPOCH};

/// RTP fixed header length.
pub const RTP_HEADER_LEN: usize = 12;
/// Send time + CRC: bytes of every media packet's payload that are not pattern.
pub const CHECK_OVERHEAD: usize = 8 + 4;
/// Largest frame payload RFC 4571 framing can carry.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// RTCP packet types used here.
pub const RTCP_BYE: u8 = 203;
/// See [`RTCP_BYE`].
pub const RTCP_APP: u8 = 204;

/// Nanoseconds since the Unix epoch (the clock both ends and the scripts' `date +%s%N` share).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// One media packet's header fields and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Media {
    pub ssrc: u32,
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    /// Total RTP packet length (header + payload), at least `RTP_HEADER_LEN + CHECK_OVERHEAD`.
    pub len: usize,
}

/// Appends `m` as an RFC 4571 frame to `out`, stamped with `send_ns`.
pub fn push_media_frame(out: &mut Vec<u8>, m: &Media, send_ns: u64) {
    let len = m.len.clamp(RTP_HEADER_LEN + CHECK_OVERHEAD, MAX_FRAME);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    let start = out.len();
    out.push(2 << 6);
    out.push((u8::from(m.marker) << 7) | (m.payload_type & 0x7f));
    out.extend_from_slice(&m.sequence.to_be_bytes());
    out.extend_from_slice(&m.timestamp.to_be_bytes());
    out.extend_from_slice(&m.ssrc.to_be_bytes());
    out.extend_from_slice(&send_ns.to_be_bytes());
    let pattern = len - RTP_HEADER_LEN - CHECK_OVERHEAD;
    let seed = m.sequence as usize ^ m.ssrc as usize;
    out.extend((0..pattern).map(|i| (seed.wrapping_add(i * 7)) as u8));
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A media packet as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence: u16,
    pub send_ns: u64,
}

/// What a frame is.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// RTP media that passed its checks.
    Media(Received),
    /// RTP whose CRC does not match: changed in transit.
    Corrupt,
    /// RTCP APP: name and text.
    App([u8; 4], &'a str),
    /// RTCP BYE.
    Bye,
    /// Anything else.
    Junk,
}

/// Classifies and checks one frame's payload.
pub fn parse(p: &[u8]) -> Packet<'_> {
    if p.len() < 4 || p[0] >> 6 != 2 {
        return Packet::Junk;
    }
    match p[1] {
        RTCP_APP => {
            if p.len() < 12 {
                return Packet::Junk;
            }
            let name = [p[8], p[9], p[10], p[11]];
            match std::str::from_utf8(&p[12..]) {
                Ok(text) => Packet::App(name, text.trim_end()),
                Err(_) => Packet::Junk,
            }
        }
        RTCP_BYE => Packet::Bye,
        200..=202 => Packet::Junk,
        _ => {
            if p.len() < RTP_HEADER_LEN + CHECK_OVERHEAD {
                return Packet::Corrupt;
            }
            let (body, tail) = p.split_at(p.len() - 4);
            if crc32(body) != u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]) {
                return Packet::Corrupt;
            }
            let mut ns = [0u8; 8];
            ns.copy_from_slice(&p[12..20]);
            Packet::Media(Received {
                ssrc: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
                payload_type: p[1] & 0x7f,
                sequence: u16::from_be_bytes([p[2], p[3]]),
                send_ns: u64::from_be_bytes(ns),
            })
        }
    }
}

/// Appends an RTCP APP packet named `name` carrying `text` (padded with spaces to 32 bits) as
/// a frame.
pub fn push_app_frame(out: &mut Vec<u8>, ssrc: u32, name: &[u8; 4], text: &str) {
    let pad = (4 - text.len() % 4) % 4;
    let len = 12 + text.len() + pad;
    let len = len.min(MAX_FRAME);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.push(2 << 6);
    out.push(RTCP_APP);
    out.extend_from_slice(&(((len / 4) - 1) as u16).to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(name);
    let body = &text.as_bytes()[..(len - 12).min(text.len())];
    out.extend_from_slice(body);
    out.extend(std::iter::repeat_n(b' ', len - 12 - body.len()));
}

/// Appends an RTCP BYE for `ssrc` as a frame.
pub fn push_bye_frame(out: &mut Vec<u8>, ssrc: u32) {
    out.extend_from_slice(&8u16.to_be_bytes());
    out.extend_from_slice(&[(2 << 6) | 1, RTCP_BYE, 0, 1]);
    out.extend_from_slice(&ssrc.to_be_bytes());
}

/// Splits a byte stream into RFC 4571 frames.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            buf: vec![0; 2 * (MAX_FRAME + 2)],
            start: 0,
            end: 0,
        }
    }
}

impl FrameReader {
    /// One read from `r` into the buffer; `Ok(0)` at end of stream.
    pub fn fill<R: Read + ?Sized>(&mut self, r: &mut R) -> io::Result<usize> {
        if self.start > 0 && self.end + MAX_FRAME + 2 > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame buffer full: drain frames before reading more",
            ));
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The next complete frame's payload, if one is buffered.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        let avail = self.end - self.start;
        if avail < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([
            self.buf[self.start],
            self.buf[self.start + 1],
        ]));
        if avail < 2 + len {
            return None;
        }
        let from = self.start + 2;
        self.start = from + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // The slice below still points at the old bytes, which stay in place.
            return Some(&self.buf[from..from + len]);
        }
        Some(&self.buf[from..from + len])
    }
}

/// The value of `key` in a `key=value key=value` text.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_ascii_whitespace().find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// `field` parsed as a number.
pub fn num(text: &str, key: &str) -> Option<u64> {
    field(text, key)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn media_round_trip_and_corruption() {
        let m = Media {
            ssrc: 7,
            payload_type: 96,
            marker: true,
            sequence: 65535,
            timestamp: 9,
            len: 300,
        };
        let mut out = Vec::new();
        push_media_frame(&mut out, &m, 42);
        push_app_frame(&mut out, 7, b"HELO", "a=1 b=xyz");
        push_bye_frame(&mut out, 7);
        let mut r = FrameReader::default();
        let mut src: &[u8] = &out;
        while r.fill(&mut src).unwrap() > 0 {}
        let f = r.next_frame().unwrap().to_vec();
        assert_eq!(f.len(), 300);
        assert_eq!(
            parse(&f),
            Packet::Media(Received {
                ssrc: 7,
                payload_type: 96,
                sequence: 65535,
                send_ns: 42
            })
        );
        let mut bad = f.clone();
        bad[100] ^= 1;
        assert_eq!(parse(&bad), Packet::Corrupt);
        let app = r.next_frame().unwrap().to_vec();
        match parse(&app) {
            Packet::App(name, text) => {
                assert_eq!(&name, b"HELO");
                assert_eq!(field(text, "b"), Some("xyz"));
                assert_eq!(num(text, "a"), Some(1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(r.next_frame().unwrap()), Packet::Bye);
        assert!(r.next_frame().is_none());
    }
}
