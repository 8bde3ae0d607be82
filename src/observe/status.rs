//! The pool's state as `molt status` shows it: the report the supervisor fills in, and
//! its two renderings, a table for people and JSON for machines.

use std::fmt::Write as _;
use std::time::Duration;

use crate::units::{format_signed_size, format_size};

/// The pool as `molt status` shows it.
#[derive(Debug, Clone)]
pub(crate) struct StatusReport {
    pub(crate) pid: u32,
    pub(crate) budget: u64,
    pub(crate) budget_source: String,
    pub(crate) usable: u64,
    pub(crate) soft_cap: u64,
    pub(crate) hard_cap: u64,
    pub(crate) min_workers: usize,
    pub(crate) max_workers: usize,
    pub(crate) desired: usize,
    pub(crate) queue: usize,
    pub(crate) pool_memory: u64,
    pub(crate) molt_rss: u64,
    pub(crate) memory_guard_paused_s: Option<u64>,
    /// `pool`, `prefork`, or `deciding` until the first instance's tree is known.
    pub(crate) mode: &'static str,
    /// The adopted preforking server, in prefork mode.
    pub(crate) server: Option<&'static str>,
    pub(crate) load: Load,
    pub(crate) workers: Vec<WorkerRow>,
}

/// How busy the pool is, and what it went through since molt started: the figures to
/// scale dynos or pods on (docs/scaling.md).
#[derive(Debug, Clone, Default)]
pub(crate) struct Load {
    /// The share of time the ready workers held at least one request, from 0 to 1, over
    /// the last interval (see `pool::report`); `None` until one has been measured.
    pub(crate) utilization: Option<f64>,
    /// The pool runs its most workers and requests still wait: more workers would not
    /// come from molt, only from more dynos or pods.
    pub(crate) saturated: bool,
    /// Since molt started: worker boots that failed, recycles and kills by reason.
    pub(crate) boot_failures: u64,
    pub(crate) recycles: Vec<(&'static str, u64)>,
    pub(crate) kills: Vec<(&'static str, u64)>,
}

/// One worker in [`StatusReport`].
#[derive(Debug, Clone)]
pub(crate) struct WorkerRow {
    /// The worker; a child's row carries its master's.
    pub(crate) id: u64,
    pub(crate) pid: i32,
    /// `worker` (an instance in pool mode), `master` (an adopted preforking master, its
    /// memory its own) or `child` (one of its children).
    pub(crate) role: &'static str,
    pub(crate) state: &'static str,
    pub(crate) age_s: u64,
    /// None for a child: the kernel, not molt, hands its master's connections to it.
    pub(crate) requests: Option<u64>,
    pub(crate) in_flight: Option<usize>,
    pub(crate) memory: Option<u64>,
    pub(crate) peak: u64,
    pub(crate) growth_per_request: Option<f64>,
    pub(crate) growth_per_hour: Option<f64>,
    /// CPU time of the worker's tree, seconds.
    pub(crate) cpu_s: f64,
    /// Requests it takes at once now (learned or fixed); `None` is unlimited.
    pub(crate) limit: Option<usize>,
    /// Whether `limit` is learned from latency (`MOLT_WORKER_CONCURRENCY=auto`).
    pub(crate) learned: bool,
    /// A learned limit's baseline latency (without queueing) and its last window's.
    pub(crate) latency_baseline: Option<Duration>,
    pub(crate) latency_last: Option<Duration>,
}

/// A limit for the table: the number, `~` after a learned one, `none` for unlimited.
fn limit(w: &WorkerRow) -> String {
    if w.role == "child" {
        // Its master's connections are handed to it by the kernel: the limit is the master's.
        return "-".to_owned();
    }
    match w.limit {
        None => "none".to_owned(),
        Some(n) if w.learned => format!("{n}~"),
        Some(n) => n.to_string(),
    }
}

/// A latency for the table, to a tenth of a millisecond below 10 ms.
fn latency(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| {
            let ms = d.as_secs_f64() * 1000.0;
            if ms < 10.0 {
                format!("{ms:.1}ms")
            } else {
                format!("{ms:.0}ms")
            }
        },
    )
}

/// A latency for JSON: milliseconds to a hundredth.
fn millis(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 100_000.0).round() / 100.0)
}

fn size(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), format_size)
}

fn rate(bytes: Option<f64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), format_signed_size)
}

/// The report as a table for people, in the manner of `passenger-status`.
pub(crate) fn text(r: &StatusReport) -> String {
    let workers = r.workers.iter().filter(|w| w.role != "master").count();
    let mode = match r.server {
        Some(server) => format!("{} ({server})", r.mode),
        None => r.mode.to_owned(),
    };
    let mut out = format!(
        "molt {}: {workers} workers (min {}, max {}, wanted {}), queue {}, mode {mode}\n",
        r.pid, r.min_workers, r.max_workers, r.desired, r.queue
    );
    if r.workers.iter().any(|w| w.learned) {
        let _ = writeln!(
            out,
            "limits marked ~ are learned from each worker's latency (MOLT_WORKER_CONCURRENCY=auto)"
        );
    }
    let _ = writeln!(
        out,
        "memory: pool {} of {} usable; budget {} ({}); caps {} soft, {} hard; molt itself {}",
        format_size(r.pool_memory),
        format_size(r.usable),
        format_size(r.budget),
        r.budget_source,
        format_size(r.soft_cap),
        format_size(r.hard_cap),
        format_size(r.molt_rss),
    );
    let _ = writeln!(
        out,
        "load: utilization {}, {}",
        r.load
            .utilization
            .map_or_else(|| "-".to_owned(), |u| format!("{:.0}%", u * 100.0)),
        if r.load.saturated {
            "saturated (at max workers and queueing: add dynos or pods)"
        } else {
            "not saturated"
        }
    );
    if let Some(paused) = r.memory_guard_paused_s {
        let _ = writeln!(
            out,
            "memory recycling paused for {paused}s more: the caps are below the app's footprint"
        );
    }
    let _ = writeln!(
        out,
        "\n{:>4} {:>8} {:<6} {:<9} {:>8} {:>9} {:>9} {:>6} {:>17} {:>8} {:>8} {:>10} {:>9} {:>8}",
        "id",
        "pid",
        "role",
        "state",
        "age",
        "requests",
        "in-flight",
        "limit",
        "latency base/last",
        "memory",
        "peak",
        "growth/req",
        "growth/h",
        "cpu"
    );
    for w in &r.workers {
        let _ =
            writeln!(
            out,
            "{:>4} {:>8} {:<6} {:<9} {:>8} {:>9} {:>9} {:>6} {:>17} {:>8} {:>8} {:>10} {:>9} {:>7.1}s",
            w.id,
            w.pid,
            w.role,
            w.state,
            humantime::format_duration(Duration::from_secs(w.age_s)).to_string(),
            w.requests.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            w.in_flight
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            limit(w),
            format!("{}/{}", latency(w.latency_baseline), latency(w.latency_last)),
            size(w.memory),
            format_size(w.peak),
            rate(w.growth_per_request),
            rate(w.growth_per_hour),
            w.cpu_s,
        );
    }
    out
}

/// Counts by reason as one JSON object.
fn by_reason(counts: &[(&str, u64)]) -> serde_json::Value {
    counts
        .iter()
        .map(|&(reason, n)| (reason.to_owned(), n.into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The report as JSON for machines; sizes in bytes, rates to a tenth of a byte.
pub(crate) fn json(r: &StatusReport) -> String {
    let tenths = |v: Option<f64>| {
        v.filter(|v| v.is_finite())
            .map(|v| (v * 10.0).round() / 10.0)
    };
    let workers: Vec<serde_json::Value> = r
        .workers
        .iter()
        .map(|w| {
            serde_json::json!({
                "id": w.id,
                "pid": w.pid,
                "role": w.role,
                "state": w.state,
                "age_s": w.age_s,
                "requests": w.requests,
                "in_flight": w.in_flight,
                "limit": w.limit,
                "limit_learned": w.learned,
                "latency_baseline_ms": millis(w.latency_baseline),
                "latency_last_ms": millis(w.latency_last),
                "memory": w.memory,
                "peak": w.peak,
                "growth_per_request": tenths(w.growth_per_request),
                "growth_per_hour": tenths(w.growth_per_hour),
                "cpu_s": (w.cpu_s * 100.0).round() / 100.0,
            })
        })
        .collect();
    let report = serde_json::json!({
        "pid": r.pid,
        "budget": r.budget,
        "budget_source": r.budget_source,
        "usable": r.usable,
        "soft_cap": r.soft_cap,
        "hard_cap": r.hard_cap,
        "min_workers": r.min_workers,
        "max_workers": r.max_workers,
        "desired": r.desired,
        "queue": r.queue,
        "pool_memory": r.pool_memory,
        "molt_rss": r.molt_rss,
        "memory_guard_paused_s": r.memory_guard_paused_s,
        "mode": r.mode,
        "server": r.server,
        "utilization": r.load.utilization.map(|u| (u * 1000.0).round() / 1000.0),
        "saturated": r.load.saturated,
        "boot_failures": r.load.boot_failures,
        "recycles": by_reason(&r.load.recycles),
        "kills": by_reason(&r.load.kills),
        "workers": workers,
    });
    format!("{report}\n")
}

/// A report to test what reads one: a pool of `workers` on a 512 MB cgroup budget.
#[cfg(test)]
pub(crate) fn sample_report(workers: Vec<WorkerRow>) -> StatusReport {
    StatusReport {
        pid: 7,
        budget: 512 << 20,
        budget_source: "cgroup".to_owned(),
        usable: 430 << 20,
        soft_cap: 200 << 20,
        hard_cap: 300 << 20,
        min_workers: 1,
        max_workers: 2,
        desired: 1,
        queue: 0,
        pool_memory: 80 << 20,
        molt_rss: 5 << 20,
        memory_guard_paused_s: None,
        mode: "pool",
        server: None,
        load: Load {
            utilization: Some(0.4567),
            saturated: false,
            boot_failures: 0,
            recycles: vec![("memory", 2)],
            kills: Vec::new(),
        },
        workers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(workers: Vec<WorkerRow>) -> StatusReport {
        sample_report(workers)
    }

    fn row(limit: Option<usize>, learned: bool) -> WorkerRow {
        WorkerRow {
            id: 1,
            pid: 4242,
            role: "worker",
            state: "ready",
            age_s: 30,
            requests: Some(1203),
            in_flight: Some(3),
            memory: Some(80 << 20),
            peak: 90 << 20,
            growth_per_request: None,
            growth_per_hour: None,
            cpu_s: 1.5,
            limit,
            learned,
            latency_baseline: learned.then_some(Duration::from_micros(101_234)),
            latency_last: learned.then_some(Duration::from_micros(4_560)),
        }
    }

    #[test]
    fn each_worker_shows_its_limit_and_latency() {
        // The limit and latency columns of each worker's line.
        let columns = |text: &str| -> Vec<(String, String)> {
            text.lines()
                .filter(|l| l.contains("4242"))
                .map(|l| {
                    let cells: Vec<&str> = l.split_whitespace().collect();
                    (cells[7].to_owned(), cells[8].to_owned())
                })
                .collect()
        };
        let learned = text_of(vec![row(Some(20), true)]);
        assert!(learned.contains("limits marked ~ are learned"), "{learned}");
        assert!(learned.contains(" in-flight  limit latency base/last "));
        let cell = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(columns(&learned), [cell("20~", "101ms/4.6ms")]);

        let fixed = text_of(vec![row(Some(1), false), row(None, false)]);
        assert!(!fixed.contains("learned"));
        assert_eq!(columns(&fixed), [cell("1", "-/-"), cell("none", "-/-")]);

        let json: serde_json::Value =
            serde_json::from_str(&json(&report(vec![row(Some(20), true)]))).unwrap();
        let w = &json["workers"][0];
        assert_eq!(w["limit"], 20);
        assert_eq!(w["limit_learned"], true);
        assert_eq!(w["latency_baseline_ms"], 101.23);
        assert_eq!(w["latency_last_ms"], 4.56);
        let json: serde_json::Value =
            serde_json::from_str(&json_of(vec![row(None, false)])).unwrap();
        assert!(json["workers"][0]["limit"].is_null(), "unlimited");
    }

    #[test]
    fn utilization_and_saturation_are_shown() {
        let text = text_of(vec![row(Some(1), false)]);
        assert!(
            text.contains("\nload: utilization 46%, not saturated\n"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&json_of(vec![row(Some(1), false)])).unwrap();
        assert_eq!(json["utilization"], 0.457);
        assert_eq!(json["saturated"], false);
        assert_eq!(json["recycles"]["memory"], 2);
        assert_eq!(json["kills"], serde_json::json!({}));
    }

    fn text_of(workers: Vec<WorkerRow>) -> String {
        text(&report(workers))
    }

    fn json_of(workers: Vec<WorkerRow>) -> String {
        json(&report(workers))
    }
}
