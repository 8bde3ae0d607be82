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
    pub(crate) workers: Vec<WorkerRow>,
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
    if let Some(paused) = r.memory_guard_paused_s {
        let _ = writeln!(
            out,
            "memory recycling paused for {paused}s more: the caps are below the app's footprint"
        );
    }
    let _ = writeln!(
        out,
        "\n{:>4} {:>8} {:<6} {:<9} {:>8} {:>9} {:>9} {:>8} {:>8} {:>10} {:>9} {:>8}",
        "id",
        "pid",
        "role",
        "state",
        "age",
        "requests",
        "in-flight",
        "memory",
        "peak",
        "growth/req",
        "growth/h",
        "cpu"
    );
    for w in &r.workers {
        let _ = writeln!(
            out,
            "{:>4} {:>8} {:<6} {:<9} {:>8} {:>9} {:>9} {:>8} {:>8} {:>10} {:>9} {:>7.1}s",
            w.id,
            w.pid,
            w.role,
            w.state,
            humantime::format_duration(Duration::from_secs(w.age_s)).to_string(),
            w.requests.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            w.in_flight
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            size(w.memory),
            format_size(w.peak),
            rate(w.growth_per_request),
            rate(w.growth_per_hour),
            w.cpu_s,
        );
    }
    out
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
        "workers": workers,
    });
    format!("{report}\n")
}
