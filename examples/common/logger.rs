//! A minimal `log` backend that writes to stderr, so the examples need no logger crate.
//!
//! The level comes from `RUST_LOG` (`error`, `warn`, `info`, `debug`, `trace`, `off`), falling
//! back to the level the example passes in.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    start: Instant,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // rustls logs at debug/trace under its own target; keep it out unless asked for.
        if record.level() > Level::Info && record.target().starts_with("rustls") {
            return;
        }
        let elapsed = self.start.elapsed();
        let _ = writeln!(
            std::io::stderr().lock(),
            "[{:>4}.{:03}s {:<5} {}] {}",
            elapsed.as_secs(),
            elapsed.subsec_millis(),
            record.level(),
            short_target(record.target()),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// The last path segment of a log target: `camera_stream::common::media` → `media`.
fn short_target(target: &str) -> &str {
    target.rsplit("::").next().unwrap_or(target)
}

/// Installs the logger once; later calls (from tests, say) are ignored.
pub fn init(default: LevelFilter) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| value.parse::<LevelFilter>().ok())
        .unwrap_or(default);
    static LOGGER: OnceLock<StderrLogger> = OnceLock::new();
    let logger = LOGGER.get_or_init(|| StderrLogger {
        start: Instant::now(),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
