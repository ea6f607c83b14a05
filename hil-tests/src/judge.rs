//! Pass/fail per scenario, and the summary table.
//!
//! `hil judge` reads the camera's result file (which carries the media server's final receipt)
//! and the scenario's marks file (`impair_start NS`, `impair_end NS`, optionally `recover_from
//! NS`: when the thing that should let the stream recover happened, e.g. new credentials given),
//! computes the metrics below, checks the scenario's `--expect` criteria, prints each check and
//! appends one row to the results file. `hil table` prints the rows as one table.
//!
//! | metric | meaning |
//! |---|---|
//! | `receipt` | 1 if the server's final receipt reached the camera |
//! | `corrupt`, `ooo`, `dup` | packets delivered changed (CRC), out of order, duplicated |
//! | `stale` | packets of a superseded connection, discarded by the server |
//! | `dropped` | packets the camera did not send: captured with no tunnel, or later than its latency bound |
//! | `lost` | packets written into a tunnel that never arrived (`written - rx`) |
//! | `missing` | sequence gaps the server saw (= dropped + lost when nothing is at the end) |
//! | `reconnects` | tunnels opened after the first |
//! | `never` | `Retry::Never` errors the camera reported (and stopped retrying on) |
//! | `attempts_failed`, `refused_503` | failed connection attempts that were retried, and those that were a 503 |
//! | `tunnels_lost` | open tunnels that ended with an error |
//! | `handshake_ms`, `p50_ms`, `p99_ms`, `max_ms` | first handshake; one-way packet latency |
//! | `recover_s` | from `recover_from` (else `impair_end`) to the first two healthy 250 ms buckets of capture time (each with >= 10 of 12.5 audio packets, max latency <= `--healthy-latency-ms`); 999 if never |
//! | `losses_outside` | loss ranges not inside [impair_start - slack, recover point + `--recover-within`] (any loss, without an impairment) |
//! | `reopen_s` | from the recovery point to the first tunnel opened after the impairment began (negative: during it) |
//! | `window_max_ms` | worst latency of packets captured during the impairment |
//! | any `--fact NAME=VALUE` | numbers the runner measured elsewhere (e.g. Squid's 407 count) |

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;

use crate::args::Args;
use crate::wire;

pub const HELP: &str = "\
hil judge: check one scenario's result against its criteria; append a row to the results file

    hil judge --scenario NAME --result CAMERA_RESULT [--marks FILE] --rows FILE
              [--expect 'METRIC OP VALUE']... [--fact NAME=VALUE]... [--mode LABEL]
              [--recover-within SECS] [--healthy-latency-ms MS] [--slack-s SECS] [--note TEXT]

    OP is one of <= >= == < >. Metrics: see the module documentation or hil-tests/README.md.

hil table ROWS_FILE   print the summary table (exit 1 if a row failed)
";

/// Parsed camera result file.
struct CameraResult {
    kv: BTreeMap<String, String>,
    events: Vec<(u64, String, String)>,
}

fn read_result(path: &str) -> Result<CameraResult, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut kv = BTreeMap::new();
    let mut events = Vec::new();
    for line in text.lines() {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        if k == "event" {
            let mut it = v.splitn(3, ' ');
            let t = it.next().and_then(|t| t.parse().ok()).unwrap_or(0);
            let kind = it.next().unwrap_or("").to_owned();
            events.push((t, kind, it.next().unwrap_or("").to_owned()));
        } else {
            kv.insert(k.to_owned(), v.to_owned());
        }
    }
    Ok(CameraResult { kv, events })
}

fn read_marks(path: &str) -> Result<BTreeMap<String, u64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

/// `audio/all/max_ms` buckets of `tl=250:...`.
fn timeline(receipt: &str) -> (u64, Vec<[u64; 3]>) {
    let Some(tl) = wire::field(receipt, "tl") else {
        return (250, Vec::new());
    };
    let (width, rest) = tl.split_once(':').unwrap_or(("250", ""));
    let width = width.parse().unwrap_or(250);
    let buckets = rest
        .split(',')
        .filter(|b| !b.is_empty())
        .map(|b| {
            let mut v = [0u64; 3];
            for (i, x) in b.split('/').take(3).enumerate() {
                v[i] = x.parse().unwrap_or(0);
            }
            v
        })
        .collect();
    (width, buckets)
}

fn loss_ranges(receipt: &str) -> Vec<(u64, u64)> {
    wire::field(receipt, "lr")
        .unwrap_or("-")
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    fn set(&mut self, k: &str, v: f64) {
        self.0.insert(k.to_owned(), v);
    }
    fn get(&self, k: &str) -> Option<f64> {
        self.0.get(k).copied()
    }
}

fn check(m: &Metrics, expr: &str) -> Result<(bool, String), String> {
    let ops = ["<=", ">=", "==", "<", ">"];
    let (name, op, value) = ops
        .iter()
        .find_map(|op| {
            let (a, b) = expr.split_once(op)?;
            Some((a.trim(), *op, b.trim()))
        })
        .ok_or(format!("--expect {expr:?}: expected METRIC OP VALUE"))?;
    let want: f64 = value
        .parse()
        .map_err(|_| format!("--expect {expr:?}: {value} is not a number"))?;
    let Some(have) = m.get(name) else {
        return Ok((false, format!("{name} unknown (not measured)")));
    };
    let ok = match op {
        "<=" => have <= want,
        ">=" => have >= want,
        "==" => (have - want).abs() < 1e-9,
        "<" => have < want,
        _ => have > want,
    };
    Ok((
        ok,
        format!("{name} = {} (want {op} {value})", fmt_num(have)),
    ))
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

pub fn main(mut args: Args) -> Result<bool, String> {
    let scenario = args.required("--scenario")?;
    let result_path = args.required("--result")?;
    let rows = args.required("--rows")?;
    let marks_path = args.value("--marks");
    let expects = args.values("--expect");
    let facts = args.values("--fact");
    let mode = args.value("--mode").unwrap_or_else(|| "local".into());
    let note = args.value("--note").unwrap_or_default();
    let recover_within: f64 = args.number("--recover-within", 5.0)?;
    let healthy_ms: f64 = args.number("--healthy-latency-ms", 100.0)?;
    let slack_s: f64 = args.number("--slack-s", 1.0)?;
    args.finish()?;

    let mut m = Metrics(BTreeMap::new());
    let mut problems: Vec<String> = Vec::new();
    let camera = match read_result(&result_path) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.push(format!("no camera result: {e}"));
            None
        }
    };
    let marks = match &marks_path {
        Some(p) => read_marks(p)?,
        None => BTreeMap::new(),
    };
    let mut handshake = "-".to_string();
    if let Some(c) = &camera {
        let n = |k: &str| {
            c.kv.get(k)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let receipt = c.kv.get("receipt").cloned().unwrap_or_default();
        let r = |k: &str| wire::num(&receipt, k).unwrap_or(0) as f64;
        m.set("receipt", n("final_receipt"));
        for k in ["rx", "missing", "corrupt", "ooo", "dup", "stale", "junk"] {
            m.set(k, r(k));
        }
        m.set("neg_latency", r("neg_latency"));
        m.set("written", n("written"));
        m.set("dropped_late", n("dropped_late"));
        m.set("dropped_offline", n("dropped_offline"));
        m.set("dropped", n("dropped_late") + n("dropped_offline"));
        m.set("lost", (n("written") - r("rx")).max(0.0));
        m.set("reconnects", (n("connections") - 1.0).max(0.0));
        m.set("connections", n("connections"));
        for k in ["never", "attempts_failed", "refused_503", "tunnels_lost"] {
            m.set(k, n(k));
        }
        if let Some(h) =
            c.kv.get("handshake_first_ms")
                .and_then(|v| v.parse::<f64>().ok())
        {
            m.set("handshake_ms", h);
            handshake = format!("{h:.1}");
        }
        m.set("p50_ms", r("p50_us") / 1000.0);
        m.set("p99_ms", r("p99_us") / 1000.0);
        m.set("max_ms", r("max_us") / 1000.0);

        let start_ns = n("start_ns") as u64;
        let (width, buckets) = timeline(&receipt);
        let rel_ms = |ns: u64| ns.saturating_sub(start_ns) as f64 / 1e6;
        let imp_start = marks.get("impair_start").map(|v| rel_ms(*v));
        let imp_end = marks.get("impair_end").map(|v| rel_ms(*v));
        let recover_from = marks.get("recover_from").map(|v| rel_ms(*v)).or(imp_end);
        let healthy = |i: usize| {
            buckets
                .get(i)
                .is_some_and(|b| b[0] >= 10 && (b[2] as f64) <= healthy_ms)
        };
        if let Some(from) = recover_from {
            let first = (from / width as f64).floor().max(0.0) as usize;
            let at = (first..buckets.len()).find(|&i| healthy(i) && healthy(i + 1));
            let rec = at.map_or(999.0, |i| {
                ((i as f64 * width as f64 - from) / 1000.0).max(0.0)
            });
            m.set("recover_s", rec);
        }
        // Losses (gaps, dropped or lost) must fall inside the impairment window.
        let window = match (imp_start, recover_from) {
            (Some(a), Some(b)) => Some((a - slack_s * 1000.0, b + recover_within * 1000.0)),
            _ => None,
        };
        let outside = loss_ranges(&receipt)
            .iter()
            .filter(|(a, b)| match window {
                Some((lo, hi)) => (*a as f64) < lo || (*b as f64) > hi,
                None => true,
            })
            .count();
        m.set("losses_outside", outside as f64);
        if let (Some(a), Some(b)) = (imp_start, imp_end) {
            let lo = (a / width as f64).floor() as usize;
            let hi = (b / width as f64).ceil() as usize;
            let worst = buckets
                .iter()
                .enumerate()
                .filter(|(i, _)| *i >= lo && *i <= hi)
                .map(|(_, b)| b[2])
                .max()
                .unwrap_or(0);
            m.set("window_max_ms", worst as f64);
        }
        // When the tunnel came back: the first tunnel opened after the impairment began.
        if let (Some(a), Some(from)) = (marks.get("impair_start"), recover_from) {
            if let Some(open) = c.events.iter().find(|e| e.1 == "open" && e.0 >= *a) {
                m.set("reopen_s", (rel_ms(open.0) - from) / 1000.0);
            }
        }
        // Retry::Never reported exactly when: the first `gave_up retry=never` event.
        let nevers = c
            .events
            .iter()
            .filter(|e| e.1 == "gave_up" && e.2.contains("retry=never"))
            .count();
        m.set("never_events", nevers as f64);
    }
    for f in &facts {
        let (k, v) = f
            .split_once('=')
            .ok_or(format!("--fact {f}: expected NAME=VALUE"))?;
        let v: f64 = v.parse().map_err(|_| format!("--fact {f}: not a number"))?;
        m.set(k, v);
    }

    println!("-- {scenario} ({mode})");
    let mut pass = problems.is_empty();
    for p in &problems {
        println!("   FAIL {p}");
    }
    let mut failed_names = Vec::new();
    for e in &expects {
        let (ok, text) = check(&m, e)?;
        println!("   {} {text}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            pass = false;
            failed_names.push(
                e.split(['<', '>', '='])
                    .next()
                    .unwrap_or(e)
                    .trim()
                    .to_owned(),
            );
        }
    }
    let g = |k: &str| m.get(k).map_or("-".to_string(), fmt_num);
    let g1 = |k: &str| m.get(k).map_or("-".to_string(), |v| format!("{v:.1}"));
    let mut notes = Vec::new();
    for (k, label) in [
        ("never", "never"),
        ("refused_503", "503s"),
        ("attempts_failed", "failed attempts"),
        ("stale", "stale"),
    ] {
        if m.get(k).unwrap_or(0.0) > 0.0 {
            notes.push(format!("{label}={}", g(k)));
        }
    }
    if let Some(v) = m.get("reopen_s") {
        notes.push(format!("tunnel back {v:+.2}s"));
    }
    for f in &facts {
        notes.push(f.clone());
    }
    if !note.is_empty() {
        notes.push(note);
    }
    if !failed_names.is_empty() {
        notes.push(format!("failed: {}", failed_names.join(",")));
    }
    if !problems.is_empty() {
        notes.push(problems.join("; "));
    }
    let recover = match m.get("recover_s") {
        Some(v) if v >= 999.0 => "never".to_string(),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    };
    let row = [
        mode,
        scenario,
        if pass { "PASS".into() } else { "FAIL".into() },
        handshake,
        g1("p50_ms"),
        g1("p99_ms"),
        g("dropped"),
        g("lost"),
        g("reconnects"),
        recover,
        notes.join(" "),
    ]
    .join("\t");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&rows)
        .map_err(|e| format!("{rows}: {e}"))?;
    writeln!(f, "{row}").map_err(|e| format!("{rows}: {e}"))?;
    Ok(pass)
}

pub const HEADER: [&str; 11] = [
    "mode",
    "scenario",
    "result",
    "handshake ms",
    "p50 ms",
    "p99 ms",
    "dropped",
    "lost",
    "reconnects",
    "recover s",
    "notes",
];

pub fn table(args: Vec<String>) -> Result<bool, String> {
    let [path] = args.as_slice() else {
        return Err("usage: hil table ROWS_FILE".into());
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|s| s.to_string()).collect()];
    rows.extend(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split('\t').map(str::to_owned).collect()),
    );
    let cols = HEADER.len();
    let widths: Vec<usize> = (0..cols - 1)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let (mut pass, mut fail, mut other) = (0, 0, 0);
    for (i, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for c in 0..cols {
            let cell = r.get(c).map_or("", String::as_str);
            match widths.get(c) {
                None => line.push_str(cell),
                Some(&w) if (3..=9).contains(&c) && i > 0 => {
                    line.push_str(&format!("{cell:>w$}  "))
                }
                Some(&w) => line.push_str(&format!("{cell:<w$}  ")),
            }
        }
        println!("{}", line.trim_end());
        if i == 0 {
            println!("{}", "-".repeat(line.trim_end().chars().count().min(160)));
        } else {
            match r.get(2).map(String::as_str) {
                Some("PASS") => pass += 1,
                Some("FAIL") => fail += 1,
                _ => other += 1,
            }
        }
    }
    println!("{pass} passed, {fail} failed, {other} not run (SKIP/MANUAL)");
    Ok(fail == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations() {
        let mut m = Metrics(BTreeMap::new());
        m.set("lost", 0.0);
        m.set("p99_ms", 12.5);
        assert!(check(&m, "lost==0").unwrap().0);
        assert!(check(&m, "p99_ms <= 50").unwrap().0);
        assert!(!check(&m, "p99_ms<12").unwrap().0);
        assert!(check(&m, "p99_ms>12").unwrap().0);
        let (ok, text) = check(&m, "recover_s<=5").unwrap();
        assert!(!ok && text.contains("unknown"));
        assert!(check(&m, "lost").is_err());
        assert!(check(&m, "lost==x").is_err());
    }

    #[test]
    fn receipt_fields() {
        let r = "final=1 lr=4000-13880,15000-15100 tl=250:13/41/7,1/11/0,0/0/0";
        assert_eq!(loss_ranges(r), vec![(4000, 13880), (15000, 15100)]);
        assert_eq!(loss_ranges("final=1 lr=-"), vec![]);
        let (w, b) = timeline(r);
        assert_eq!(w, 250);
        assert_eq!(b, vec![[13, 41, 7], [1, 11, 0], [0, 0, 0]]);
    }
}
