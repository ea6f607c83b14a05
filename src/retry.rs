//! Long-running use: which errors are worth retrying, and exponential backoff with jitter.
//!
//! An appliance runs for months. When its tunnel drops or cannot be established it should try
//! again — sooner at first, then less often, never in lockstep with a fleet of its siblings —
//! but it should not hammer a proxy that has said no for a reason retrying cannot fix (a 407
//! with the same credentials, a 403, a certificate that does not verify).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::address::Target;
use crate::error::{Error, Phase};
use crate::tunnel::{Connector, StreamHandler, Tunnel};

/// Whether trying again, unchanged, may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The network, a timeout, the proxy's or the target's temporary state: try again later.
    Later,
    /// Retrying with the same configuration will fail the same way: report it instead.
    Never,
}

impl Error {
    /// Classifies the error for a reconnect loop: network failures, deadlines, 5xx, 408, 429
    /// and malformed replies are worth retrying; invalid input, authentication failures, other
    /// 4xx and certificate problems are not.
    pub fn retry(&self) -> Retry {
        match self {
            Error::InvalidInput { .. } | Error::TlsFile { .. } | Error::Auth { .. } => Retry::Never,
            Error::Refused { status, .. } => match status {
                408 | 429 | 500..=599 => Retry::Later,
                _ => Retry::Never,
            },
            // A TLS failure that rustls decided (certificate, name, protocol) repeats; one that
            // the network caused (a reset or a close during the handshake) may not.
            Error::Tls { source } | Error::TargetTls { source } => {
                if source.kind() == std::io::ErrorKind::InvalidData {
                    Retry::Never
                } else {
                    Retry::Later
                }
            }
            _ => Retry::Later,
        }
    }
}

/// Exponential backoff with jitter, capped. Pure arithmetic: the caller sleeps.
///
/// Attempt `n` (0-based) waits `min(initial × 2ⁿ, max)`, then scaled by a random factor in
/// `[1 − jitter, 1]` so that devices that lost the same proxy at the same moment spread out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay. Defaults to 1 s.
    pub initial: Duration,
    /// The cap. Defaults to 60 s.
    pub max: Duration,
    /// The fraction of each delay that is random, 0.0–1.0. Defaults to 0.5.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry), with `random` a value
    /// in `[0, 1)` (use [`Backoff::delay`] for one drawn from the system).
    pub fn delay_with(&self, attempt: u32, random: f64) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << attempt.min(20));
        let capped = exp.min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter * random.clamp(0.0, 1.0);
        capped.mul_f64(factor)
    }

    /// The delay before retry number `attempt`, with jitter from the system's random source.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, random_unit())
    }
}

impl Connector {
    /// Connects to `target`, retrying errors that are [`Retry::Later`] after the delays of
    /// `backoff`, until it succeeds, an error is [`Retry::Never`] (returned), or `stop` is set
    /// (the last error is returned; a [`Error::Timeout`] if there was none).
    pub fn connect_retrying(
        &self,
        target: &Target,
        backoff: &Backoff,
        stop: &AtomicBool,
    ) -> Result<Tunnel, Error> {
        let mut attempt = 0;
        loop {
            let err = match self.connect(target) {
                Ok(tunnel) => return Ok(tunnel),
                Err(e) => e,
            };
            if err.retry() == Retry::Never {
                log::warn!("{err}; not retrying");
                return Err(err);
            }
            let delay = backoff.delay(attempt);
            log::warn!("{err}; retrying in {delay:.1?}");
            if !sleep_unless_stopped(delay, stop) {
                return Err(err);
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// Keeps a tunnel to `target` up for `handler`: connects (as
    /// [`connect_retrying`](Self::connect_retrying)), runs the handler, and when the handler
    /// fails — the tunnel dropped, a dead peer was detected — closes what is left and starts
    /// again after a backoff delay. Returns `Ok` when the handler returns `Ok` (it is done) or
    /// `stop` is set, and the error when one is [`Retry::Never`].
    pub fn run_reconnecting(
        &self,
        target: &Target,
        backoff: &Backoff,
        stop: &AtomicBool,
        handler: &mut dyn StreamHandler,
    ) -> Result<(), Error> {
        let mut attempt = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut tunnel = match self.connect_retrying(target, backoff, stop) {
                Ok(t) => t,
                Err(_) if stop.load(Ordering::Relaxed) => return Ok(()),
                Err(e) => return Err(e),
            };
            let opened = Instant::now();
            let result = handler.handle(&mut tunnel);
            let _ = tunnel.close();
            let err = match result {
                Ok(()) => return Ok(()),
                Err(source) => Error::Io {
                    phase: Phase::Exchange,
                    source,
                },
            };
            // A tunnel that stayed up a while starts the backoff afresh.
            if opened.elapsed() > backoff.max {
                attempt = 0;
            }
            let delay = backoff.delay(attempt);
            log::warn!("{err}; reconnecting in {delay:.1?}");
            if !sleep_unless_stopped(delay, stop) {
                return Ok(());
            }
            attempt = attempt.saturating_add(1);
        }
        Ok(())
    }
}

/// Sleeps for `delay` in short steps; `false` if `stop` was set meanwhile.
fn sleep_unless_stopped(delay: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + delay;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// A value in `[0, 1)` from the kernel's random source, or from the clock if that fails.
fn random_unit() -> f64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        bytes = u64::from(nanos)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .to_le_bytes();
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{InvalidInput, Phase, ReplyProblem};
    use std::io;

    #[test]
    fn classification() {
        let later = [
            Error::Timeout {
                phase: Phase::AwaitReply,
            },
            Error::Connect {
                addr: "127.0.0.1:1".parse().unwrap(),
                source: io::ErrorKind::ConnectionRefused.into(),
            },
            Error::Refused {
                status: 503,
                reason: String::new(),
            },
            Error::Refused {
                status: 429,
                reason: String::new(),
            },
            Error::Reply {
                problem: ReplyProblem::ClosedEarly,
            },
            Error::Tls {
                source: io::ErrorKind::UnexpectedEof.into(),
            },
            Error::Io {
                phase: Phase::Exchange,
                source: io::ErrorKind::ConnectionReset.into(),
            },
        ];
        for e in later {
            assert_eq!(e.retry(), Retry::Later, "{e}");
        }
        let never = [
            Error::Auth {
                status: 407,
                schemes: vec![],
                credentials_sent: true,
            },
            Error::Refused {
                status: 403,
                reason: String::new(),
            },
            Error::Tls {
                source: io::Error::new(io::ErrorKind::InvalidData, "bad certificate"),
            },
            Error::InvalidInput {
                phase: Phase::BuildConnect,
                kind: InvalidInput::ForbiddenByte,
                what: "x",
            },
            Error::TlsFile {
                what: "CA file",
                path: "/nonexistent".into(),
                source: io::Error::from(io::ErrorKind::NotFound),
            },
        ];
        for e in never {
            assert_eq!(e.retry(), Retry::Never, "{e}");
        }
    }

    #[test]
    fn backoff_doubles_caps_and_jitters_down_only() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            jitter: 0.5,
        };
        let no_jitter: Vec<_> = (0..7).map(|n| b.delay_with(n, 0.0)).collect();
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(
            no_jitter,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(2000),
                ms(2000)
            ]
        );
        assert_eq!(
            b.delay_with(3, 0.999_999),
            ms(800).mul_f64(1.0 - 0.5 * 0.999_999)
        );
        assert_eq!(
            b.delay_with(u32::MAX, 0.0),
            ms(2000),
            "huge attempt counts saturate"
        );
        for n in 0..10 {
            let d = b.delay(n);
            assert!(
                d <= b.delay_with(n, 0.0) && d >= b.delay_with(n, 1.0),
                "{d:?}"
            );
        }
    }

    #[test]
    fn random_unit_is_in_range_and_varies() {
        let draws: Vec<f64> = (0..32).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|r| (0.0..1.0).contains(r)));
        assert!(draws.windows(2).any(|w| w[0] != w[1]));
    }
}
