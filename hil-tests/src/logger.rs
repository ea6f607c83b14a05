//! A small stderr logger that also keeps the library's warnings as timestamped events.
//!
//! `Connector::run_reconnecting` reports each failed attempt and each dropped tunnel as a `warn`
//! record (`...; retrying in 1.2s`, `...; reconnecting in 0.5s`, `...; not retrying`); the camera
//! counts those to report attempts, 503s and authentication failures.
//!
//! `HIL_LOG=debug` (or `info`, `warn`) sets the level printed; default `info` for this program
//! and `warn` for the library.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::wire::now_ns;

/// A library warning as it happened.
#[derive(Clone, Debug)]
pub struct LibEvent {
    pub at_ns: u64,
    pub message: String,
}

static EVENTS: Mutex<Vec<LibEvent>> = Mutex::new(Vec::new());

struct Logger {
    start: Instant,
    name: &'static str,
    verbose: bool,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        let ours = m.target().starts_with("hil");
        m.level() <= Level::Warn || (ours && m.level() <= Level::Info) || self.verbose
    }

    fn log(&self, r: &Record) {
        if r.target().starts_with("connect_tunnel") && r.level() <= Level::Warn {
            if let Ok(mut events) = EVENTS.lock() {
                if events.len() < 100_000 {
                    events.push(LibEvent {
                        at_ns: now_ns(),
                        message: r.args().to_string(),
                    });
                }
            }
        }
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = self.start.elapsed().as_secs_f64();
        let _ = writeln!(
            std::io::stderr().lock(),
            "[{} {t:8.3} {:5} {}] {}",
            self.name,
            r.level(),
            r.target(),
            r.args()
        );
    }

    fn flush(&self) {}
}

/// Installs the logger; `name` prefixes each line (the subcommand).
pub fn init(name: &'static str) {
    let verbose = matches!(
        std::env::var("HIL_LOG").as_deref(),
        Ok("debug") | Ok("trace")
    );
    let logger = Box::leak(Box::new(Logger {
        start: Instant::now(),
        name,
        verbose,
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(if verbose {
            LevelFilter::Debug
        } else {
            LevelFilter::Info
        });
    }
}

/// The library's warnings so far.
pub fn lib_events() -> Vec<LibEvent> {
    EVENTS.lock().map(|e| e.clone()).unwrap_or_default()
}
