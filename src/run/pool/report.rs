//! What the supervisor tells the outside: the `molt status` report and, every
//! `MOLT_METRICS_INTERVAL`, one l2met line that Heroku log-drain tools (Librato and
//! others) chart without setup.
//!
//! Utilization is the share of time the ready workers held at least one request, as
//! Judoscale's figure of that name: 1 means every worker was busy all the time. It is
//! measured from each worker's busy time (`Slot::busy_time`) between two readings, one
//! per l2met line and one for `molt status` and the metrics listener, taken at most once
//! per `MOLT_SAMPLE_INTERVAL`. An adopted preforking master is one worker here: it is busy
//! while any of its children holds a request.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Reason, State, Supervisor};
use crate::observe::emit;
use crate::observe::status::{Load, StatusReport, WorkerRow};

/// Events counted between two metrics lines.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) kills: u64,
    recycles: [u64; REASONS.len()],
    /// What is not reset with each line.
    lasting: Lasting,
}

/// Counts since molt started, for `molt status` and the metrics listener, and the
/// readings utilization is measured between.
#[derive(Debug, Default)]
struct Lasting {
    recycles: [u64; REASONS.len()],
    kills: [u64; KILL_REASONS.len()],
    boot_failures: u64,
    /// For the l2met line: since the previous line.
    line_busy: Busy,
    /// For `molt status` and the metrics listener: since the previous reading at least
    /// `MOLT_SAMPLE_INTERVAL` ago.
    report_busy: Busy,
}

impl Counters {
    pub(crate) fn count_recycle(&mut self, reason: Reason) {
        self.recycles[reason_index(reason)] += 1;
        self.lasting.recycles[reason_index(reason)] += 1;
    }

    /// A worker or child killed at once, `reason` as its `kill` log line says.
    pub(crate) fn count_kill(&mut self, reason: &str) {
        self.kills += 1;
        let index = KILL_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(KILL_REASONS.len() - 1);
        self.lasting.kills[index] += 1;
    }

    pub(crate) fn count_boot_failure(&mut self) {
        self.lasting.boot_failures += 1;
    }

    /// The counts of one line are done; those since molt started go on.
    fn next_line(&mut self) {
        let lasting = std::mem::take(&mut self.lasting);
        *self = Counters {
            lasting,
            ..Counters::default()
        };
    }
}

/// Why workers are killed, as the `kill` log lines name it; the last catches any other.
const KILL_REASONS: [&str; 6] = [
    "memory_hard",
    "memory_pool",
    "request_timeout",
    "boot_timeout",
    "stop_timeout",
    "other",
];

/// One series of readings of the ready workers' busy time.
#[derive(Debug, Default)]
struct Busy {
    /// When the last reading was taken, with each ready worker's busy time then.
    last: Option<(Instant, HashMap<u64, Duration>)>,
    /// The utilization measured at the last reading.
    utilization: Option<f64>,
}

impl Busy {
    /// Reads the ready workers (id, busy time so far, ready since) at `now` and returns
    /// the utilization since the previous reading: busy time over ready time, summed over
    /// the workers; a worker that became ready since counts from then.
    fn read(&mut self, ready: &[(u64, Duration, Instant)], now: Instant) -> Option<f64> {
        let seen: HashMap<u64, Duration> = ready.iter().map(|&(id, busy, _)| (id, busy)).collect();
        let Some((then, before)) = self.last.replace((now, seen)) else {
            return self.utilization;
        };
        let (mut busy, mut time) = (Duration::ZERO, Duration::ZERO);
        for &(id, busy_now, ready_since) in ready {
            let from = ready_since.max(then);
            time += now.saturating_duration_since(from);
            busy += busy_now.saturating_sub(before.get(&id).copied().unwrap_or_default());
        }
        if !time.is_zero() {
            self.utilization = Some((busy.as_secs_f64() / time.as_secs_f64()).clamp(0.0, 1.0));
        }
        self.utilization
    }
}

/// Samples a held report waits for at most: the one under way when it was held may have
/// been started before the new worker existed, the next one measures it.
const HOLD_SAMPLES: u32 = 2;

/// What waits for the memory of a worker that became ready since the last sample (a
/// replacement right after a recycle): until it is measured, the pool's memory would read
/// as if that worker held none, down to 0 MB for a pool of one. The sample it waits for is
/// started when the worker becomes ready.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// The metrics line that was due.
    metrics: bool,
    /// `molt status` requests.
    reports: Vec<oneshot::Sender<StatusReport>>,
    /// Samples that arrived since the first was held.
    samples: u32,
}

const REASONS: [Reason; 8] = [
    Reason::Restart,
    Reason::Memory,
    Reason::Pool,
    Reason::Requests,
    Reason::Lifetime,
    Reason::Idle,
    Reason::Refused,
    Reason::Lull,
];

fn reason_index(reason: Reason) -> usize {
    REASONS
        .iter()
        .position(|r| *r == reason)
        .expect("REASONS lists every reason")
}

impl Supervisor {
    /// The ready workers as utilization reads them: id, busy time so far, ready since.
    fn busy_readings(&self) -> Vec<(u64, Duration, Instant)> {
        self.workers
            .iter()
            .filter(|w| w.is_ready())
            .filter_map(|w| Some((w.id, w.slot.busy_time(), w.ready_since?)))
            .collect()
    }

    /// The pool runs its most workers and requests still wait for one.
    fn saturated(&self) -> bool {
        let workers = if self.mode == super::Mode::Prefork {
            self.workers
                .iter()
                .filter_map(|w| w.brood.as_ref())
                .map(|b| b.children.len())
                .sum()
        } else {
            self.workers.iter().filter(|w| w.is_live()).count()
        };
        self.dispatcher.queued() > 0 && workers >= self.budget.max_workers
    }

    /// Utilization for `molt status` and the metrics listener: read again once
    /// `MOLT_SAMPLE_INTERVAL` has passed since the last reading, so that a scrape every
    /// second does not measure a moment.
    fn report_utilization(&mut self, now: Instant) -> Option<f64> {
        let due = self
            .counters
            .lasting
            .report_busy
            .last
            .as_ref()
            .is_none_or(|(then, _)| {
                now.saturating_duration_since(*then) >= self.config.sample_interval
            });
        if !due {
            return self.counters.lasting.report_busy.utilization;
        }
        let readings = self.busy_readings();
        self.counters.lasting.report_busy.read(&readings, now)
    }

    /// The status report with its [`Load`], utilization read when due.
    pub(super) fn report(&mut self, now: Instant) -> StatusReport {
        let utilization = self.report_utilization(now);
        let lasting = &self.counters.lasting;
        let load = Load {
            utilization,
            saturated: self.saturated(),
            boot_failures: lasting.boot_failures,
            recycles: REASONS
                .iter()
                .map(|r| (r.as_str(), lasting.recycles[reason_index(*r)]))
                .collect(),
            kills: KILL_REASONS.iter().copied().zip(lasting.kills).collect(),
        };
        StatusReport {
            load,
            ..self.status_report(now)
        }
    }

    /// Whether a worker that takes requests has not been measured yet.
    fn unmeasured_ready(&self) -> bool {
        self.workers
            .iter()
            .any(|w| w.is_ready() && w.mem.now.is_none())
    }

    /// Answers `molt status` now, or once the next sample has measured every ready worker.
    pub(super) fn report_status(&mut self, reply: oneshot::Sender<StatusReport>, now: Instant) {
        if self.unmeasured_ready() {
            self.held.reports.push(reply);
        } else {
            let _ = reply.send(self.report(now));
        }
    }

    /// After a sample: writes what was held for it once every ready worker is measured,
    /// or after [`HOLD_SAMPLES`] whatever they show.
    pub(super) fn release_held(&mut self, now: Instant) {
        if !self.held.metrics && self.held.reports.is_empty() {
            return;
        }
        self.held.samples += 1;
        if self.unmeasured_ready() && self.held.samples < HOLD_SAMPLES {
            return;
        }
        let held = std::mem::take(&mut self.held);
        for reply in held.reports {
            let _ = reply.send(self.report(now));
        }
        if held.metrics {
            self.write_metrics(now);
        }
    }

    pub(super) fn status_report(&self, now: Instant) -> StatusReport {
        let ticks = crate::sys::memory::clock_ticks_per_second();
        #[allow(clippy::cast_precision_loss, reason = "seconds for people to read")]
        let cpu_s = |ticks_used: u64| ticks_used as f64 / ticks as f64;
        let mut workers = Vec::new();
        for w in &self.workers {
            let learned = w.slot.learned();
            workers.push(WorkerRow {
                id: w.id,
                pid: w.pid.as_raw(),
                role: if w.brood.is_some() {
                    "master"
                } else {
                    "worker"
                },
                state: match w.state {
                    State::Booting { .. } => "booting",
                    State::Ready if self.recycling.as_ref().is_some_and(|r| r.id == w.id) => {
                        "recycling"
                    }
                    State::Ready => "ready",
                    State::Draining { .. } => "draining",
                    State::Stopping { .. } => "stopping",
                },
                age_s: now.duration_since(w.started).as_secs(),
                requests: Some(w.slot.served()),
                in_flight: Some(w.slot.in_flight()),
                // A master's own: its children have rows of their own.
                memory: match &w.brood {
                    Some(brood) => brood.own,
                    None => w.mem.now,
                },
                peak: w.mem.peak,
                growth_per_request: w.mem.growth.map(|g| g.per_request),
                growth_per_hour: w.mem.growth.map(|g| g.per_hour),
                cpu_s: cpu_s(w.mem.cpu_ticks),
                limit: self.dispatcher.capacity_of(&w.slot),
                learned: learned.is_some(),
                latency_baseline: learned.and_then(|l| l.baseline),
                latency_last: learned.and_then(|l| l.last_window),
            });
            let Some(brood) = &w.brood else { continue };
            for child in &brood.children {
                let retiring = brood.retiring.is_some_and(|r| r.pid == child.pid);
                workers.push(WorkerRow {
                    id: w.id,
                    pid: child.pid,
                    role: "child",
                    state: if retiring { "recycling" } else { "ready" },
                    age_s: now.duration_since(child.seen).as_secs(),
                    requests: None,
                    in_flight: None,
                    memory: child.mem.now,
                    peak: child.mem.peak,
                    growth_per_request: None,
                    growth_per_hour: child.mem.growth.map(|g| g.per_hour),
                    cpu_s: cpu_s(child.mem.cpu_ticks),
                    limit: None,
                    learned: false,
                    latency_baseline: None,
                    latency_last: None,
                });
            }
        }
        StatusReport {
            pid: std::process::id(),
            budget: self.budget.total,
            budget_source: self
                .budget
                .derivation
                .iter()
                .find(|(item, _)| *item == "budget")
                .map(|(_, why)| why.clone())
                .unwrap_or_default(),
            usable: self.budget.usable,
            soft_cap: self.budget.soft_cap,
            hard_cap: self.budget.hard_cap,
            min_workers: self.config.min_workers,
            max_workers: self.budget.max_workers,
            desired: self.desired,
            queue: self.dispatcher.queued(),
            pool_memory: self.pool_memory(),
            molt_rss: self.molt_rss,
            memory_guard_paused_s: self
                .guard
                .paused_until
                .filter(|until| *until > now)
                .map(|until| until.duration_since(now).as_secs()),
            mode: match self.mode {
                super::Mode::Deciding => "deciding",
                super::Mode::Pool => "pool",
                super::Mode::Prefork => "prefork",
            },
            server: self
                .workers
                .iter()
                .find_map(|w| w.brood.as_ref().map(|b| b.server.name())),
            load: Load::default(),
            workers,
        }
    }

    /// Writes one l2met line and resets the counters it reports; held for the next sample
    /// while a ready worker has not been measured (see [`Held`]).
    pub(super) fn emit_metrics(&mut self, now: Instant) {
        let Some(every) = self.config.metrics_interval else {
            return;
        };
        self.next_metrics = Some(now + every);
        if self.unmeasured_ready() {
            self.held.metrics = true;
            return;
        }
        self.write_metrics(now);
    }

    fn write_metrics(&mut self, now: Instant) {
        let (requests, queue_p95) = self.dispatcher.take_stats();
        // In prefork mode the workers are the children of the adopted master.
        let children: Option<usize> = (self.mode == super::Mode::Prefork).then(|| {
            self.workers
                .iter()
                .filter_map(|w| w.brood.as_ref())
                .map(|b| b.children.len())
                .sum()
        });
        let ready =
            children.unwrap_or_else(|| self.workers.iter().filter(|w| w.is_ready()).count());
        let mut line = format!(
            "molt at=metrics sample#molt.workers={} sample#molt.workers.ready={ready} \
             sample#molt.memory.pool={} sample#molt.memory.molt={} sample#molt.memory.usable={} \
             sample#molt.memory.limit={} sample#molt.queue={} count#molt.requests={requests} \
             measure#molt.queue_wait.p95={}ms count#molt.kills={}",
            children.unwrap_or(self.workers.len()),
            mb(self.pool_memory()),
            mb(self.molt_rss),
            mb(self.budget.usable),
            mb(self.budget.total),
            self.dispatcher.queued(),
            queue_p95.as_millis(),
            self.counters.kills,
        );
        for reason in REASONS {
            let count = self.counters.recycles[reason_index(reason)];
            let _ = write!(line, " count#molt.recycles.{reason}={count}");
        }
        // What the ready workers take at once together; not given when one is unlimited.
        let limits: Option<usize> = self
            .workers
            .iter()
            .filter(|w| w.is_ready())
            .map(|w| self.dispatcher.capacity_of(&w.slot))
            .sum();
        if let Some(total) = limits {
            let _ = write!(line, " sample#molt.concurrency.limit={total}");
        }
        if let Some(largest) = self.workers.iter().filter_map(|w| w.mem.now).max() {
            let _ = write!(line, " sample#molt.memory.worker.max={}", mb(largest));
        }
        let readings = self.busy_readings();
        if let Some(utilization) = self.counters.lasting.line_busy.read(&readings, now) {
            let _ = write!(line, " sample#molt.utilization={utilization:.3}");
        }
        let _ = write!(
            line,
            " sample#molt.saturated={}",
            u8::from(self.saturated())
        );
        emit(&line);
        #[cfg(test)]
        self.metrics_lines.push(line);
        self.counters.next_line();
    }
}

/// Megabytes with one decimal: one unit per metric, as l2met consumers expect.
fn mb(bytes: u64) -> String {
    let tenths = bytes * 10 / (1024 * 1024);
    format!("{}.{}MB", tenths / 10, tenths % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_is_busy_time_over_ready_time_between_readings() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let secs = Duration::from_secs;
        let mut busy = Busy::default();
        assert_eq!(
            busy.read(&[(1, secs(0), at(0))], at(0)),
            None,
            "one reading"
        );
        // Worker 1 busy 3 of 4 seconds; worker 2 ready since second 2 and busy 1 of 2.
        let readings = [(1, secs(3), at(0)), (2, secs(1), at(2))];
        let utilization = busy.read(&readings, at(4)).expect("two readings");
        assert!((utilization - 4.0 / 6.0).abs() < 1e-9, "{utilization}");
        // Worker 1 gone; worker 2 busy for all of the next 2 seconds.
        assert_eq!(busy.read(&[(2, secs(3), at(2))], at(6)), Some(1.0));
        // No time passed: the last figure stands.
        assert_eq!(busy.read(&[(2, secs(3), at(2))], at(6)), Some(1.0));
        // A busy time read a little ahead of the clock cannot make it exceed 1.
        assert_eq!(busy.read(&[(2, secs(9), at(2))], at(7)), Some(1.0));
    }

    #[test]
    fn kills_are_counted_by_reason_and_kept_across_lines() {
        let mut counters = Counters::default();
        counters.count_kill("memory_hard");
        counters.count_kill("something_new");
        counters.count_recycle(Reason::Memory);
        counters.count_boot_failure();
        counters.next_line();
        assert_eq!((counters.kills, counters.recycles), (0, [0; REASONS.len()]));
        assert_eq!(counters.lasting.kills, [1, 0, 0, 0, 0, 1]);
        assert_eq!(counters.lasting.recycles[reason_index(Reason::Memory)], 1);
        assert_eq!(counters.lasting.boot_failures, 1);
    }
}
