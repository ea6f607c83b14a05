//! The latency-bound experiment: ~1 Mbit/s of RTP (20 ms audio packets marked key, 1200-byte
//! video packets) through a tunnel and the reference reverse proxy, over a link that drops to
//! half the media rate for a few seconds, with and without connect-tunnel's delay bound, for
//! several kernel send-buffer sizes. Prints one table row per run and the worst latency per
//! second for a few runs; `docs/MEDIA.md` holds a recorded output.
//!
//! ```text
//! cargo run --release --example latency_bound            # the full table (about a minute)
//! cargo run --release --example latency_bound -- --quick # shorter link schedule, fewer rows
//! ```

#[path = "common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::time::Duration;

use common::latency_lab::{media_rate_bps, run_trial, Schedule, Trial, TrialReport};
use connect_tunnel::media::{DropPolicy, RECOMMENDED_SEND_BUFFER};

/// The link's rate when it is fine: 4 Mbit/s.
const FAST: u64 = 4_000_000;
/// The link's rate during the dip: 0.5 Mbit/s, half the media rate.
const SLOW: u64 = 500_000;
/// The bound used in the bounded runs.
const BOUND: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    common::logger::init(log::LevelFilter::Error);
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("latency_bound [--quick]: see the doc comment of examples/latency_bound.rs");
        return ExitCode::SUCCESS;
    }
    let schedule = if quick {
        Schedule::dip(
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(2),
            FAST,
            SLOW,
        )
    } else {
        Schedule::dip(
            Duration::from_secs(2),
            Duration::from_secs(4),
            Duration::from_secs(4),
            FAST,
            SLOW,
        )
    };
    let kib = |n: usize| Some(n * 1024);
    let mut runs: Vec<(Option<Duration>, DropPolicy, Option<usize>)> = vec![
        (None, DropPolicy::Oldest, None),
        (None, DropPolicy::Oldest, Some(RECOMMENDED_SEND_BUFFER)),
        (Some(BOUND), DropPolicy::Oldest, None),
    ];
    let buffers: &[usize] = if quick { &[2, 8] } else { &[2, 4, 8, 16, 64] };
    for &b in buffers {
        runs.push((Some(BOUND), DropPolicy::Oldest, kib(b)));
    }
    runs.push((Some(BOUND), DropPolicy::NonKeyFirst, None));
    runs.push((Some(BOUND), DropPolicy::NonKeyFirst, kib(2)));
    runs.push((
        Some(BOUND),
        DropPolicy::NonKeyFirst,
        Some(RECOMMENDED_SEND_BUFFER),
    ));

    println!(
        "media {:.2} Mbit/s (audio 184 B key + 2 x video 1200 B every 20 ms, RFC 4571); link {} Mbit/s, \
         {} Mbit/s for {:?} from t={:?}, then {} Mbit/s; through the reference reverse proxy",
        media_rate_bps() as f64 / 1e6,
        FAST as f64 / 1e6,
        SLOW as f64 / 1e6,
        schedule.phases[1].duration,
        schedule.phases[0].duration,
        FAST as f64 / 1e6,
    );
    println!();
    println!(
        "| bound | policy | SO_SNDBUF set (kernel) | sent | delivered | dropped key / non-key | \
         latency p50 / p99 / max (ms) | audio p99 (ms) | queue wait max (ms) | after write p99 / max (ms) | corrupt / out of order |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut reports = Vec::new();
    let mut ok = true;
    for (max_delay, policy, send_buffer) in runs {
        let trial = Trial {
            max_delay,
            policy,
            send_buffer,
            schedule: schedule.clone(),
        };
        match run_trial(&trial) {
            Ok(report) => {
                ok &= print_row(&report);
                reports.push(report);
            }
            Err(e) => {
                eprintln!("latency_bound: trial {trial:?}: {e}");
                ok = false;
            }
        }
    }
    println!();
    println!("worst latency (ms) of the packets sent in each second:");
    println!();
    let seconds = schedule.total().as_secs() as usize;
    print!("| run |");
    for s in 0..seconds {
        print!(" {s}-{} s |", s + 1);
    }
    println!();
    print!("|---|");
    for _ in 0..seconds {
        print!("---|");
    }
    println!();
    for report in &reports {
        let t = &report.trial;
        let interesting = t.max_delay.is_none() && t.send_buffer.is_none()
            || t.max_delay.is_some() && t.send_buffer.is_none() && t.policy == DropPolicy::Oldest
            || t.max_delay.is_some() && t.send_buffer == Some(RECOMMENDED_SEND_BUFFER);
        if !interesting {
            continue;
        }
        print!("| {} |", label(report));
        for v in report.max_by_second_ms() {
            print!(" {v:.0} |");
        }
        println!();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn label(report: &TrialReport) -> String {
    let t = &report.trial;
    let bound = t
        .max_delay
        .map_or("none".to_string(), |d| format!("{} ms", d.as_millis()));
    let buf = t
        .send_buffer
        .map_or("default".to_string(), |b| format!("{} KiB", b / 1024));
    format!("{bound}, {:?}, SO_SNDBUF {buf}", t.policy)
}

/// Prints one row; returns whether the run was correct (nothing corrupted or reordered, every
/// packet accounted for).
fn print_row(r: &TrialReport) -> bool {
    let t = &r.trial;
    let s = &r.stats;
    let bound = t
        .max_delay
        .map_or("none".to_string(), |d| format!("{} ms", d.as_millis()));
    let policy = if t.max_delay.is_none() {
        "-".to_string()
    } else {
        format!("{:?}", t.policy)
    };
    let buf = match t.send_buffer {
        None => format!("default ({} KiB)", r.send_buffer_actual / 1024),
        Some(b) => format!("{} KiB ({} KiB)", b / 1024, r.send_buffer_actual / 1024),
    };
    println!(
        "| {bound} | {policy} | {buf} | {} | {} | {} / {} | {:.0} / {:.0} / {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {} / {} |",
        r.produced,
        r.delivered(),
        s.dropped_key.packets,
        s.dropped_non_key.packets,
        r.quantile_ms(0.5, false),
        r.quantile_ms(0.99, false),
        r.quantile_ms(1.0, false),
        r.quantile_ms(0.99, true),
        s.max_queue_delay.as_secs_f64() * 1e3,
        r.after_write_quantile_ms(0.99),
        r.after_write_quantile_ms(1.0),
        r.received.corrupted,
        r.received.out_of_order,
    );
    let accounted = s.accepted.packets == r.delivered() + s.dropped().packets
        && s.written.packets == r.delivered()
        && s.accepted.packets == r.produced;
    let clean = r.received.corrupted == 0
        && r.received.out_of_order == 0
        && r.received.error.is_none()
        && r.write_error.is_none();
    if !accounted || !clean {
        eprintln!("latency_bound: run {} is not clean: {r:?}", label(r));
    }
    accounted && clean
}
