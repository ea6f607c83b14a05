//! The latency-bound experiment as a test: ~1 Mbit/s of RTP through a tunnel, a throttling relay
//! (the link drops to half the media rate for two seconds) and the reference reverse proxy, to
//! a receiver that checks every packet. See `examples/common/latency_lab.rs` for the set-up and
//! `examples/latency_bound.rs` / `docs/MEDIA.md` for the figures.
//!
//! Asserted: nothing corrupted or out of order; every packet accounted for (sent = delivered +
//! dropped, written = delivered); with the bound, drops happen and the p99 latency of what is
//! delivered stays under the bound plus a generous 200 ms; without it, nothing is dropped and
//! the latency grows well past the bound. No tight timing asserts.

#[path = "../examples/common/mod.rs"]
mod common;

use std::time::Duration;

use common::latency_lab::{run_trial, Schedule, Trial, TrialReport};
use connect_tunnel::media::{DropPolicy, RECOMMENDED_SEND_BUFFER};

const BOUND: Duration = Duration::from_millis(200);
/// Slack for the p99 check: the link's own queue, scheduling, a loaded CI machine.
const SLACK_MS: f64 = 200.0;

fn schedule() -> Schedule {
    Schedule::dip(
        Duration::from_millis(1000),
        Duration::from_millis(2000),
        Duration::from_millis(1500),
        4_000_000,
        500_000,
    )
}

fn trial(max_delay: Option<Duration>, policy: DropPolicy) -> TrialReport {
    run_trial(&Trial {
        max_delay,
        policy,
        send_buffer: Some(RECOMMENDED_SEND_BUFFER),
        schedule: schedule(),
    })
    .expect("the trial runs")
}

/// The correctness every run must show, bound or not.
fn assert_correct(r: &TrialReport) {
    let s = &r.stats;
    assert_eq!(r.received.corrupted, 0, "corrupted packets: {s:?}");
    assert_eq!(r.received.out_of_order, 0, "packets out of order: {s:?}");
    assert_eq!(r.received.error, None);
    assert_eq!(r.write_error, None);
    assert_eq!(s.accepted.packets, r.produced, "every packet was queued");
    assert_eq!(s.refused.packets, 0);
    assert_eq!(s.unsent.packets, 0);
    assert_eq!(
        s.written.packets,
        r.delivered(),
        "every written packet arrived"
    );
    assert_eq!(
        r.produced - r.delivered(),
        s.dropped().packets,
        "drops reported = sent - received"
    );
    assert_eq!(
        s.dropped_late + s.dropped_for_room,
        s.dropped().packets,
        "{s:?}"
    );
    // The sequence numbers are checked per SSRC by the receiver; the key split must add up
    // too.
    assert_eq!(
        r.produced_key - r.delivered_key(),
        s.dropped_key.packets,
        "{s:?}"
    );
}

fn assert_bounded(r: &TrialReport) {
    assert_correct(r);
    assert!(
        r.stats.dropped().packets > 0,
        "a link at half the media rate must cost packets: {:?}",
        r.stats
    );
    let p99 = r.quantile_ms(0.99, false);
    let limit = BOUND.as_secs_f64() * 1e3 + SLACK_MS;
    assert!(
        p99 < limit,
        "p99 {p99:.0} ms, limit {limit:.0} ms: {:?}",
        r.stats
    );
}

#[test]
fn bound_with_non_key_first_keeps_latency_and_order() {
    let r = trial(Some(BOUND), DropPolicy::NonKeyFirst);
    assert_bounded(&r);
    // Non-key packets are the ones to go.
    assert!(
        r.stats.dropped_key.packets < r.stats.dropped_non_key.packets,
        "{:?}",
        r.stats
    );
}

#[test]
fn bound_with_oldest_keeps_latency_and_order() {
    assert_bounded(&trial(Some(BOUND), DropPolicy::Oldest));
}

#[test]
fn without_a_bound_nothing_is_dropped_and_latency_grows() {
    let r = trial(None, DropPolicy::Oldest);
    assert_correct(&r);
    assert_eq!(r.stats.dropped().packets, 0);
    assert_eq!(r.delivered(), r.produced);
    // Two seconds at half the media rate: about a second of backlog.
    let max = r.quantile_ms(1.0, false);
    assert!(max > 2.0 * BOUND.as_secs_f64() * 1e3, "max {max:.0} ms");
}
