//! Skipping the body of a reply that does not open the tunnel (a 407 before a retry on the same
//! connection). No I/O: bytes go in, the count consumed comes out.

/// How a non-2xx reply's body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyLength {
    /// Exactly this many bytes (`Content-Length`).
    Exactly(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the proxy closes the connection (no length given).
    UntilClose,
}

/// Skips a chunked body, chunk sizes, extensions and trailers included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkedSkipper {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `digits` so far bounds its length.
    Size {
        size: u64,
        digits: u8,
    },
    /// Skipping a chunk extension up to LF.
    Extension {
        size: u64,
    },
    /// Skipping chunk data.
    Data {
        left: u64,
    },
    /// Expecting CRLF (or LF) after the data.
    DataEnd {
        seen_cr: bool,
    },
    /// At the start of a trailer line; an empty line ends the body.
    TrailerStart,
    /// Inside a trailer line, up to LF.
    Trailer,
    /// Saw CR at the start of a trailer line.
    TrailerEndCr,
    Done,
}

/// The chunked framing is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidChunk;

impl ChunkedSkipper {
    pub(crate) fn new() -> Self {
        ChunkedSkipper {
            state: State::Size { size: 0, digits: 0 },
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes body bytes from `input`; returns how many belonged to the body. Stops at the
    /// body's end, so what follows is left to the caller.
    pub(crate) fn skip(&mut self, input: &[u8]) -> Result<usize, InvalidChunk> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            let b = input[i];
            self.state = match self.state {
                State::Size { size, digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 16 => State::Size {
                        size: size * 16 + u64::from(d),
                        digits: digits + 1,
                    },
                    None if digits > 0 && matches!(b, b';' | b' ' | b'\t' | b'\r') => {
                        State::Extension { size }
                    }
                    None if digits > 0 && b == b'\n' => Self::after_size(size),
                    _ => return Err(InvalidChunk),
                },
                State::Extension { size } => match b {
                    b'\n' => Self::after_size(size),
                    _ => State::Extension { size },
                },
                State::Data { left } => {
                    let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd { seen_cr: false }
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::DataEnd { seen_cr } => match b {
                    b'\r' if !seen_cr => State::DataEnd { seen_cr: true },
                    b'\n' => State::Size { size: 0, digits: 0 },
                    _ => return Err(InvalidChunk),
                },
                State::TrailerStart => match b {
                    b'\n' => State::Done,
                    b'\r' => State::TrailerEndCr,
                    _ => State::Trailer,
                },
                State::TrailerEndCr => match b {
                    b'\n' => State::Done,
                    _ => return Err(InvalidChunk),
                },
                State::Trailer => match b {
                    b'\n' => State::TrailerStart,
                    _ => State::Trailer,
                },
                State::Done => State::Done,
            };
            i += 1;
        }
        Ok(i)
    }

    fn after_size(size: u64) -> State {
        if size == 0 {
            State::TrailerStart
        } else {
            State::Data { left: size }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: x\r\n\r\nNEXT";

    #[test]
    fn skips_whole_body_and_stops_at_its_end() {
        let mut s = ChunkedSkipper::new();
        assert_eq!(s.skip(BODY).unwrap(), BODY.len() - 4);
        assert!(s.is_done());
    }

    #[test]
    fn any_split_gives_the_same_end() {
        let body_len = BODY.len() - 4;
        for cut in 0..=body_len {
            let mut s = ChunkedSkipper::new();
            let a = s.skip(&BODY[..cut]).unwrap();
            assert_eq!(a, cut, "all of the first part is body");
            let b = s.skip(&BODY[cut..]).unwrap();
            assert_eq!(a + b, body_len, "cut at {cut}");
            assert!(s.is_done());
        }
    }

    #[test]
    fn bare_lf_and_no_trailer() {
        let mut s = ChunkedSkipper::new();
        assert_eq!(s.skip(b"3\nabc\n0\n\nX").unwrap(), 9);
        assert!(s.is_done());
    }

    #[test]
    fn broken_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"11111111111111111\r\n",
            b"0\r\n\rX",
        ] {
            assert_eq!(
                ChunkedSkipper::new().skip(bad),
                Err(InvalidChunk),
                "{bad:?}"
            );
        }
    }
}
