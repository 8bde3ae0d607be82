//! What the supervisor tells the outside: the `molt status` report and, every
//! `MOLT_METRICS_INTERVAL`, one l2met line that Heroku log-drain tools (Librato and
//! others) chart without setup.

use std::fmt::Write as _;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Reason, State, Supervisor};
use crate::observe::emit;
use crate::observe::status::{StatusReport, WorkerRow};

/// Events counted between two metrics lines.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) kills: u64,
    recycles: [u64; REASONS.len()],
}

impl Counters {
    pub(crate) fn count_recycle(&mut self, reason: Reason) {
        self.recycles[reason_index(reason)] += 1;
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

const REASONS: [Reason; 7] = [
    Reason::Restart,
    Reason::Memory,
    Reason::Pool,
    Reason::Requests,
    Reason::Lifetime,
    Reason::Idle,
    Reason::Refused,
];

fn reason_index(reason: Reason) -> usize {
    REASONS
        .iter()
        .position(|r| *r == reason)
        .expect("REASONS lists every reason")
}

impl Supervisor {
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
            let _ = reply.send(self.status_report(now));
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
            let _ = reply.send(self.status_report(now));
        }
        if held.metrics {
            self.write_metrics();
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
        self.write_metrics();
    }

    fn write_metrics(&mut self) {
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
        emit(&line);
        #[cfg(test)]
        self.metrics_lines.push(line);
        self.counters = Counters::default();
    }
}

/// Megabytes with one decimal: one unit per metric, as l2met consumers expect.
fn mb(bytes: u64) -> String {
    let tenths = bytes * 10 / (1024 * 1024);
    format!("{}.{}MB", tenths / 10, tenths % 10)
}
