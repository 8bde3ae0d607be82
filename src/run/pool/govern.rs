//! Memory governance and recycling (ARCHITECTURE.md, "A worker's life").
//!
//! Every `MOLT_SAMPLE_INTERVAL` the memory of each worker's whole process tree is
//! measured off the supervisor task. Then, in order:
//! 1. a worker over the hard cap is killed at once (one runaway request must not swap the
//!    dyno); its in-flight requests fail;
//! 2. a pool past the usable budget by half the reserve ("near the whole budget") loses
//!    its largest worker at once, before the platform or the kernel acts;
//! 3. a worker over the soft cap, past its lifetime, or (on reconcile) at its request
//!    limit is queued for a graceful recycle; so is the largest worker of a pool above
//!    the usable budget.
//!
//! Graceful recycles go one at a time: the replacement starts first when memory allows
//! (the pool plus one fresh worker fits the usable budget), else the old worker drains
//! first. A cap below what the app needs to boot would recycle forever: the kill-loop
//! guard notices workers recycled for memory that were already over the cap before they
//! served a request, says so with the numbers, and pauses memory recycling with a
//! growing back-off. (Age alone would not do: a fast leak legitimately recycles young
//! workers.)
//!
//! Recycling in lulls (`MOLT_RECYCLE_HORIZON`): a worker that grows steadily reaches its
//! soft cap at a moment the leak picks, which under daily traffic is at the peak, when
//! the replacement's cold start hurts most. So at each sample, [`early_recycle`] predicts
//! from each worker's growth per hour when it will reach the cap; one predicted to reach
//! it within the horizon is recycled at once if the pool is in a lull: nothing queues, the
//! other workers can carry what the pool holds now, the smoothed request rate is at most
//! [`LULL_SHARE`] of its recent peak ([`LullMeter`]), no other recycle is under way, and
//! memory allows the replacement to start first. If no lull comes, the cap acts as before.

use std::fmt;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::worker::Target;
use super::{State, Supervisor};
use crate::budget;
use crate::observe::event;
use crate::sys::memory::TreeMemory;
use crate::units::{format_signed_size, format_size};

/// Memory recycles in a row of workers over their cap at boot that trip the kill-loop
/// guard.
const GUARD_STREAK: u32 = 3;

/// First pause of memory recycling once the guard trips; doubles each time after.
const GUARD_PAUSE_START: Duration = Duration::from_secs(60);
const GUARD_PAUSE_MAX: Duration = Duration::from_secs(30 * 60);

/// Why a worker is being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// SIGHUP or `molt restart`.
    Restart,
    /// Over its soft cap (`MOLT_WORKER_MEMORY`).
    Memory,
    /// The largest worker of a pool over the usable budget.
    Pool,
    /// Served `MOLT_MAX_REQUESTS` (with jitter).
    Requests,
    /// Lived `MOLT_MAX_LIFETIME` (with jitter).
    Lifetime,
    /// Idle past `MOLT_IDLE_TIMEOUT` while the pool is above its minimum.
    Idle,
    /// Refused a connection while it was still running.
    Refused,
    /// Predicted to reach its soft cap within `MOLT_RECYCLE_HORIZON`, recycled in a lull.
    Lull,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Restart => "restart",
            Reason::Memory => "memory",
            Reason::Pool => "pool",
            Reason::Requests => "requests",
            Reason::Lifetime => "lifetime",
            Reason::Idle => "idle",
            Reason::Refused => "refused",
            Reason::Lull => "lull",
        }
    }

    pub(super) fn is_memory(self) -> bool {
        matches!(self, Reason::Memory | Reason::Pool)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The recycle in progress.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recycle {
    pub(crate) id: u64,
    pub(crate) reason: Reason,
    /// Start the replacement before draining (memory allows an extra worker).
    pub(crate) replace_first: bool,
}

/// Notices memory recycles that cannot help: a cap below the app's boot footprint.
#[derive(Debug, Default)]
pub(crate) struct KillLoopGuard {
    streak: u32,
    pause: Option<Duration>,
    pub(crate) paused_until: Option<Instant>,
}

impl KillLoopGuard {
    pub(super) fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|until| now < until)
    }

    /// Records a memory recycle or kill; `over_at_boot` says the worker was over the cap
    /// before it served a request. Returns the pause to start when this one completes a
    /// streak of such recycles.
    fn record(&mut self, over_at_boot: bool, now: Instant) -> Option<Duration> {
        if !over_at_boot {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < GUARD_STREAK {
            return None;
        }
        self.streak = 0;
        let pause = self
            .pause
            .map_or(GUARD_PAUSE_START, |p| (p * 2).min(GUARD_PAUSE_MAX));
        self.pause = Some(pause);
        self.paused_until = Some(now + pause);
        Some(pause)
    }
}

/// A seed for jitter that differs between runs and between molts.
pub(crate) fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    #[allow(clippy::cast_possible_truncation, reason = "only the low bits matter")]
    let mixed = (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32);
    mixed | 1
}

/// `value` plus up to `percent`% more, as gunicorn's `max_requests_jitter` adds, so that
/// workers started together do not recycle together.
pub(crate) fn with_jitter(value: u64, percent: u8, rng: &mut u64) -> u64 {
    // xorshift64: plenty for spreading recycles, and no dependency.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let spread = value / 100 * u64::from(percent) + value % 100 * u64::from(percent) / 100;
    value + *rng % (spread + 1)
}

/// A lull is a smoothed request rate at most this share of its recent peak.
pub(crate) const LULL_SHARE: f64 = 0.5;

/// How long the request rate is smoothed over: a lull is minutes of lower traffic, not
/// the gap between two requests.
const RATE_SMOOTHING: Duration = Duration::from_secs(30);

/// The recent peak fades by half in this time, so that a peak of last week does not make
/// every hour of today look like a lull, while the peak of this afternoon still marks
/// tonight as one.
const PEAK_HALF_LIFE: Duration = Duration::from_secs(12 * 3600);

/// The pool's request rate, smoothed, and its recent peak: what says a lull is now.
#[derive(Debug, Default)]
pub(crate) struct LullMeter {
    /// Requests each worker had been handed at the last sample.
    served: Vec<(u64, u64)>,
    at: Option<Instant>,
    /// Requests a second, smoothed over [`RATE_SMOOTHING`].
    pub(crate) rate: f64,
    /// The highest smoothed rate, fading with a half-life of [`PEAK_HALF_LIFE`].
    pub(crate) peak: f64,
}

impl LullMeter {
    /// Takes in what each worker had been handed at `now` (a worker not seen before
    /// started from nothing).
    pub(crate) fn observe(&mut self, served: Vec<(u64, u64)>, now: Instant) {
        let handed: u64 = served
            .iter()
            .map(|&(id, n)| {
                let before = self
                    .served
                    .iter()
                    .find(|(known, _)| *known == id)
                    .map_or(0, |&(_, n)| n);
                n.saturating_sub(before)
            })
            .sum();
        let elapsed = self.at.map(|at| now.saturating_duration_since(at));
        self.served = served;
        self.at = Some(now);
        let Some(elapsed) = elapsed.filter(|e| !e.is_zero()) else {
            return;
        };
        let seconds = elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss, reason = "a rate")]
        let now_rate = handed as f64 / seconds;
        let weight = 1.0 - (-seconds / RATE_SMOOTHING.as_secs_f64()).exp();
        self.rate += weight * (now_rate - self.rate);
        let fade = 0.5_f64.powf(seconds / PEAK_HALF_LIFE.as_secs_f64());
        self.peak = (self.peak * fade).max(self.rate);
    }

    /// Whether traffic is in a lull: at most [`LULL_SHARE`] of its recent peak.
    pub(crate) fn is_lull(&self) -> bool {
        self.rate <= LULL_SHARE * self.peak
    }
}

/// One ready worker as the lull recycling sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grower {
    pub(crate) id: u64,
    /// Bytes at the last sample.
    pub(crate) memory: u64,
    /// Its first sample once ready (what it held before it grew).
    pub(crate) footprint: Option<u64>,
    /// Growth per hour after warm-up, once measured.
    pub(crate) per_hour: Option<f64>,
    pub(crate) in_flight: usize,
    /// Requests it takes at once; `None` unlimited.
    pub(crate) capacity: Option<usize>,
}

impl Grower {
    /// When it reaches `soft_cap` at its growth so far. Only a worker past half of the
    /// way from its footprint to the cap is predicted: noise in the first minutes of
    /// measurement must not recycle a worker that does not grow.
    pub(crate) fn time_to_cap(&self, soft_cap: u64) -> Option<Duration> {
        let per_hour = self.per_hour.filter(|g| *g > 0.0)?;
        let footprint = self.footprint.unwrap_or(0).min(soft_cap);
        let halfway = footprint + (soft_cap - footprint) / 2;
        if self.memory < halfway || self.memory >= soft_cap {
            return None;
        }
        #[allow(clippy::cast_precision_loss, reason = "a prediction")]
        let hours = (soft_cap - self.memory) as f64 / per_hour;
        Some(Duration::from_secs_f64((hours * 3600.0).min(1e9)))
    }
}

/// The worker to recycle now, in a lull, before it reaches `soft_cap`: the one predicted
/// to reach it soonest within `horizon`, when `lull` holds, nothing is `queued` and the
/// other workers can take every request the pool holds. Pure: the supervisor checks the
/// rest (no recycle under way, memory for the replacement).
pub(crate) fn early_recycle(
    workers: &[Grower],
    soft_cap: u64,
    horizon: Duration,
    queued: usize,
    lull: bool,
) -> Option<u64> {
    if !lull || queued > 0 {
        return None;
    }
    let held: usize = workers.iter().map(|w| w.in_flight).sum();
    let (id, _) = workers
        .iter()
        .filter_map(|w| w.time_to_cap(soft_cap).map(|t| (w, t)))
        .filter(|&(_, t)| t <= horizon)
        .min_by_key(|&(_, t)| t)
        .map(|(w, t)| (w.id, t))?;
    let others: Option<usize> = workers
        .iter()
        .filter(|w| w.id != id)
        .map(|w| w.capacity)
        .try_fold(0usize, |sum, c| c.map(|c| sum.saturating_add(c)));
    // The replacement starts first, so no capacity is lost; but it starts cold, so the
    // others (unlimited: `None`) should have room for all the pool holds now. A worker
    // alone has no others: the lull is all there is.
    let spare = workers.len() == 1 || others.is_none_or(|others| others > held);
    spare.then_some(id)
}

impl Supervisor {
    /// Measures every worker's tree off this task; the result arrives as
    /// [`Event::Sampled`].
    pub(super) fn start_sample(&mut self, now: Instant) {
        self.next_sample = now + self.config.sample_interval;
        if self.sampling {
            return;
        }
        self.sampling = true;
        let targets = self
            .workers
            .iter()
            .map(|w| Target {
                id: w.id,
                pid: w.pid,
                prefork_port: w.brood.as_ref().map(|_| w.slot.addr.port()),
            })
            .collect();
        self.procs.measure(targets, self.events_tx.clone());
    }

    pub(super) fn on_sampled(
        &mut self,
        samples: Vec<(u64, Option<TreeMemory>)>,
        molt_rss: Option<u64>,
        now: Instant,
    ) {
        self.sampling = false;
        for (id, memory) in samples {
            let Some(memory) = memory else { continue };
            if let Some(w) = self.worker_mut(id) {
                let served = w.slot.served();
                w.mem
                    .record(memory.bytes, memory.cpu_ticks, served, w.ready_since, now);
            }
        }
        if let Some(rss) = molt_rss {
            self.molt_rss = rss;
        }
        let served = self
            .workers
            .iter()
            .map(|w| (w.id, w.slot.served()))
            .collect();
        self.lull.observe(served, now);
        self.refresh_budget();
        event!(
            Debug,
            "sample",
            workers = self.workers.len(),
            pool_bytes = self.pool_memory(),
            usable_bytes = self.budget.usable,
            molt_bytes = self.molt_rss,
        );
        if self.phase == super::Phase::Running {
            self.govern(now);
        }
    }

    /// Re-derives the budget from the latest facts: molt's own RSS and the footprint of
    /// a freshly booted worker (which sets the automatic maximum), each held steady against
    /// sampling noise by the one rule of [`super::memstats::Steady`]: the caps and the maximum move only on
    /// a real difference, logged with the old and new values.
    fn refresh_budget(&mut self) {
        // Only workers that finished booting: early samples of a booting one show a shell
        // or an interpreter half loaded. The best footprint is a sample of a ready worker
        // that has served nothing yet; it holds after that worker goes, so the caps do
        // not jump back after a recycle. A worker under load from its first moment is
        // never sampled idle: then its first sample once ready stands in (larger by what
        // it grew until then), rather than leaving the pool at min_workers for good.
        let ready = || self.workers.iter().filter(|w| w.ready_since.is_some());
        // An adopted master's workers are its children: a child's first sample, most of
        // it shared with the master, is what one more worker costs.
        let children = || {
            ready()
                .filter_map(|w| w.brood.as_ref())
                .flat_map(|b| &b.children)
        };
        let (idle, busy) = if self.mode == super::Mode::Prefork {
            (None, children().filter_map(|c| c.mem.first_ready).max())
        } else {
            (
                ready().filter_map(|w| w.mem.footprint).max(),
                ready().filter_map(|w| w.mem.first_ready).max(),
            )
        };
        if let Some(change) = self.footprint.observe(idle, busy) {
            event!(
                Info,
                "footprint",
                old = change.old.map_or_else(|| "-".to_owned(), format_size),
                new = format_size(change.new),
            );
        }
        self.molt_rss_steady.observe(self.molt_rss);
        self.facts.worker_footprint = self.footprint.value().or(self.facts.worker_footprint);
        self.facts.molt_rss = self.molt_rss_steady.value().unwrap_or(self.molt_rss);
        let budget = budget::derive(&self.config, &self.facts);
        let old = &self.budget;
        let moved = (budget.soft_cap, budget.hard_cap, budget.max_workers)
            != (old.soft_cap, old.hard_cap, old.max_workers);
        if moved {
            event!(
                Info,
                "budget",
                usable = format_size(budget.usable),
                soft_cap = format_size(budget.soft_cap),
                hard_cap = format_size(budget.hard_cap),
                max_workers = budget.max_workers,
                footprint = self
                    .facts
                    .worker_footprint
                    .map_or_else(|| "-".to_owned(), format_size),
                old_usable = format_size(old.usable),
                old_soft_cap = format_size(old.soft_cap),
                old_hard_cap = format_size(old.hard_cap),
                old_max_workers = old.max_workers,
            );
        }
        self.budget = budget;
    }

    /// Total memory of the pool at the last sample (an adopted master's tree holds its
    /// children, so they count once).
    pub(super) fn pool_memory(&self) -> u64 {
        self.workers.iter().filter_map(|w| w.mem.now).sum()
    }

    /// Memory of the workers not already sent SIGKILL, whose memory the kernel is
    /// taking back: counting it would kill a second worker for the first one's size.
    pub(super) fn live_memory(&self) -> u64 {
        self.workers
            .iter()
            .filter(|w| !matches!(w.state, State::Stopping { deadline: None }))
            .filter_map(|w| w.mem.now)
            .sum()
    }

    fn govern(&mut self, now: Instant) {
        let (soft, hard) = (self.budget.soft_cap, self.budget.hard_cap);
        let paused = self.guard.paused(now);
        if !paused {
            let over_hard: Vec<u64> = self
                .workers
                .iter()
                .filter(|w| !matches!(w.state, State::Stopping { .. }))
                .filter(|w| own_memory(w).is_some_and(|m| m > hard))
                .map(|w| w.id)
                .collect();
            for id in over_hard {
                self.note_memory_churn(id, hard, now);
                self.kill(id, "memory_hard");
            }
        }
        // Halfway from the usable budget to the whole of it: act before the platform does.
        let usable = self.budget.usable;
        let critical = usable + (self.budget.total.saturating_sub(usable)) / 2;
        if self.live_memory() + self.molt_rss > critical {
            if self.mode == super::Mode::Prefork {
                self.kill_largest_child();
            } else if let Some(id) = self.largest(|w| !matches!(w.state, State::Stopping { .. })) {
                self.kill(id, "memory_pool");
            }
        }
        self.govern_children(paused, now);
        if paused {
            return;
        }
        let over_soft: Vec<u64> = self
            .workers
            .iter()
            .filter(|w| w.is_ready() && own_memory(w).is_some_and(|m| m > soft))
            .map(|w| w.id)
            .collect();
        for id in over_soft {
            self.request_recycle(id, Reason::Memory, now);
        }
        // An adopted master's children are recycled one by one instead (see brood).
        if self.live_memory() > usable
            && self.recycling.is_none()
            && self.mode != super::Mode::Prefork
        {
            if let Some(id) = self.largest(super::Worker::is_ready) {
                self.request_recycle(id, Reason::Pool, now);
            }
        }
        let expired: Vec<u64> = self
            .workers
            .iter()
            .filter(|w| w.is_ready() && w.lifetime_end.is_some_and(|end| now >= end))
            .map(|w| w.id)
            .collect();
        for id in expired {
            self.request_recycle(id, Reason::Lifetime, now);
        }
        self.recycle_in_lull(now);
    }

    /// Recycles, in a lull, the worker predicted to reach its soft cap soonest within
    /// `MOLT_RECYCLE_HORIZON` (see the module documentation): only one recycle at a time,
    /// never while another is under way or waiting, and only when memory lets the
    /// replacement start first. Children of an adopted master are recycled at their cap.
    fn recycle_in_lull(&mut self, now: Instant) {
        let Some(horizon) = self.config.recycle_horizon else {
            return;
        };
        if self.mode != super::Mode::Pool || self.recycling.is_some() || !self.pending.is_empty() {
            return;
        }
        let footprint = self.facts.worker_footprint.unwrap_or(0);
        if self.pool_memory() + footprint > self.budget.usable {
            return;
        }
        let growers: Vec<Grower> = self
            .workers
            .iter()
            .filter(|w| w.is_ready())
            .filter_map(|w| {
                Some(Grower {
                    id: w.id,
                    memory: own_memory(w)?,
                    footprint: w.mem.first_ready.or(w.mem.footprint),
                    per_hour: w.mem.growth.map(|g| g.per_hour),
                    in_flight: w.slot.in_flight(),
                    capacity: self.dispatcher.capacity_of(&w.slot),
                })
            })
            .collect();
        let soft = self.budget.soft_cap;
        let queued = self.dispatcher.queued();
        let Some(id) = early_recycle(&growers, soft, horizon, queued, self.lull.is_lull()) else {
            return;
        };
        if let Some(w) = growers.iter().find(|w| w.id == id) {
            event!(
                Info,
                "recycle_early",
                worker = id,
                memory = format_size(w.memory),
                soft_cap = format_size(soft),
                cap_in_s = w.time_to_cap(soft).map_or(0, |t| t.as_secs()),
                rate = format!("{:.1}", self.lull.rate),
                peak_rate = format!("{:.1}", self.lull.peak),
            );
        }
        self.request_recycle(id, Reason::Lull, now);
    }

    fn largest(&self, eligible: impl Fn(&super::Worker) -> bool) -> Option<u64> {
        self.workers
            .iter()
            .filter(|w| eligible(w))
            .max_by_key(|w| w.mem.now.unwrap_or(0))
            .filter(|w| w.mem.now.is_some())
            .map(|w| w.id)
    }

    pub(super) fn workers_at_request_limit(&self) -> Vec<u64> {
        self.workers
            .iter()
            .filter(|w| w.is_ready() && w.slot.at_request_limit())
            .map(|w| w.id)
            .collect()
    }

    /// Queues a graceful recycle, unless one is already queued or under way for it.
    pub(super) fn request_recycle(&mut self, id: u64, reason: Reason, now: Instant) {
        let known = self.recycling.as_ref().is_some_and(|r| r.id == id)
            || self.pending.iter().any(|(p, _)| *p == id);
        if known {
            return;
        }
        if reason.is_memory() {
            let cap = if reason == Reason::Memory {
                self.budget.soft_cap
            } else {
                self.budget.usable
            };
            self.note_memory_churn(id, cap, now);
            if self.guard.paused(now) {
                return;
            }
        }
        self.pending.push_back((id, reason));
    }

    /// Feeds the kill-loop guard with a memory recycle or kill of worker `id` for going
    /// over `cap`.
    fn note_memory_churn(&mut self, id: u64, cap: u64, now: Instant) {
        let Some(w) = self.workers.iter().find(|w| w.id == id) else {
            return;
        };
        self.record_churn(w.mem.footprint, cap, now);
    }

    /// Feeds the kill-loop guard with a memory recycle or kill for going over `cap` of a
    /// worker (or child) whose boot footprint was `footprint`.
    pub(super) fn record_churn(&mut self, footprint: Option<u64>, cap: u64, now: Instant) {
        let over_at_boot = footprint.is_some_and(|f| f > cap);
        if let Some(pause) = self.guard.record(over_at_boot, now) {
            let footprint = format_size(footprint.unwrap_or(0));
            event!(
                Warn,
                "memory_guard",
                level = "error",
                streak = GUARD_STREAK,
                footprint = footprint,
                soft_cap = format_size(self.budget.soft_cap),
                hard_cap = format_size(self.budget.hard_cap),
                pause_s = pause.as_secs(),
                message = format!(
                    "{GUARD_STREAK} workers in a row were over their memory cap before serving \
                     a request: the app needs about {footprint} to boot. Memory recycling is \
                     paused for {}s. Raise MOLT_WORKER_MEMORY (and MOLT_WORKER_MEMORY_HARD) \
                     above {footprint}, or lower MOLT_MAX_WORKERS.",
                    pause.as_secs()
                ),
            );
        }
    }

    /// Kills a worker's group at once (hard cap, stuck request): its in-flight requests
    /// fail. The exit is reaped as usual and the pool refilled.
    pub(super) fn kill(&mut self, id: u64, reason: &str) {
        let (soft, hard) = (self.budget.soft_cap, self.budget.hard_cap);
        let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
            return;
        };
        if matches!(w.state, State::Stopping { deadline: None }) {
            return;
        }
        w.abort_task();
        event!(
            Warn,
            "kill",
            worker = id,
            pid = w.pid,
            reason = reason,
            memory = w.mem.now.map_or_else(|| "-".to_owned(), format_size),
            soft_cap = format_size(soft),
            hard_cap = format_size(hard),
            requests = w.slot.served(),
            in_flight = w.slot.in_flight(),
        );
        self.procs.signal_group(w.pid, Signal::SIGKILL);
        w.slot.upstreams.clear();
        w.state = State::Stopping { deadline: None };
        self.counters.count_kill(reason);
    }

    /// One recycle at a time: picks the next worker to replace, starts its replacement
    /// first when memory allows, and drains it once the replacement is ready (or at once
    /// when memory does not allow an extra worker).
    pub(super) fn advance_recycle(&mut self, now: Instant) {
        if self.recycling.is_none() {
            while let Some((id, reason)) = self.pending.pop_front() {
                if let Some(w) = self.workers.iter().find(|w| w.id == id && w.is_ready()) {
                    // A new instance of an adopted master costs what this one holds.
                    let footprint = match &w.brood {
                        Some(_) => w.mem.now.unwrap_or(0),
                        None => self.facts.worker_footprint.unwrap_or(0),
                    };
                    let replace_first = self.pool_memory() + footprint <= self.budget.usable;
                    self.recycling = Some(Recycle {
                        id,
                        reason,
                        replace_first,
                    });
                    break;
                }
            }
        }
        let Some(recycle) = self.recycling else {
            return;
        };
        let others_ready = self
            .workers
            .iter()
            .filter(|w| w.is_ready() && w.id != recycle.id)
            .count();
        let (soft, hard) = (self.budget.soft_cap, self.budget.hard_cap);
        let Some(w) = self.workers.iter().find(|w| w.id == recycle.id) else {
            return;
        };
        let replacement_ready = others_ready >= self.instances_wanted();
        if w.is_ready() && (replacement_ready || !recycle.replace_first) {
            let growth = w.mem.growth;
            event!(
                Info,
                "recycle",
                worker = recycle.id,
                pid = w.pid,
                reason = recycle.reason,
                memory = w.mem.now.map_or_else(|| "-".to_owned(), format_size),
                soft_cap = format_size(soft),
                hard_cap = format_size(hard),
                requests = w.slot.served(),
                age_s = now.duration_since(w.started).as_secs(),
                growth_per_request =
                    growth.map_or_else(|| "-".to_owned(), |g| format_signed_size(g.per_request)),
                growth_per_hour =
                    growth.map_or_else(|| "-".to_owned(), |g| format_signed_size(g.per_hour)),
                replace_first = recycle.replace_first,
            );
            self.counters.count_recycle(recycle.reason);
            self.drain(recycle.id, now);
        }
    }

    /// Applies the scaler's decision for this moment.
    pub(super) fn scale(&mut self, now: Instant) {
        use crate::run::pool::scaler::{
            self, Decision, PoolView, ScaleSettings, WorkerPhase, WorkerView,
        };
        match self.mode {
            super::Mode::Pool => {}
            super::Mode::Prefork => return self.scale_children(now),
            // Until the first instance is known, it is the whole pool.
            super::Mode::Deciding => return,
        }
        let views: Vec<WorkerView> = self
            .workers
            .iter()
            .map(|w| WorkerView {
                id: w.id,
                phase: match w.state {
                    State::Booting { .. } => WorkerPhase::Booting,
                    State::Ready => WorkerPhase::Ready {
                        in_flight: w.slot.in_flight(),
                        idle_since: w.slot.idle_since(),
                        capacity: self.dispatcher.capacity_of(&w.slot),
                        rising_since: w.slot.learned().and_then(|l| l.rising_since),
                    },
                    State::Draining { .. } | State::Stopping { .. } => WorkerPhase::Leaving,
                },
                memory: w.mem.now,
                served: w.slot.warmth(),
            })
            .collect();
        let view = PoolView {
            workers: &views,
            queued: self.dispatcher.queued(),
            usable_memory: self.budget.usable,
            pool_memory: self.pool_memory(),
            worker_footprint: self.facts.worker_footprint,
            boot_blocked: now < self.spawn_after,
        };
        let settings = ScaleSettings {
            min_workers: self.config.min_workers,
            max_workers: self.budget.max_workers,
            new_worker_capacity: self.dispatcher.default_capacity(),
            idle_timeout: self.config.idle_timeout,
        };
        let live = self.workers.iter().filter(|w| w.is_live()).count();
        let plan = scaler::plan(&view, &settings, now.into_std());
        match plan.decision {
            Decision::Hold => {}
            Decision::Start(n) => {
                let desired = (live + n).clamp(
                    self.config.min_workers,
                    settings.max_workers.max(self.config.min_workers),
                );
                if desired > self.desired {
                    event!(
                        Info,
                        "scale",
                        direction = "up",
                        workers = desired,
                        queue = view.queued,
                        limited_by = plan.limited_by.map_or("-", scaler::Limit::as_str)
                    );
                }
                self.desired = desired.max(self.desired);
            }
            Decision::Retire(ids) => {
                for id in ids {
                    if self.desired <= self.config.min_workers {
                        break;
                    }
                    if self.recycling.as_ref().is_some_and(|r| r.id == id) {
                        continue;
                    }
                    self.desired -= 1;
                    event!(
                        Info,
                        "scale",
                        direction = "down",
                        workers = self.desired,
                        worker = id
                    );
                    self.counters.count_recycle(Reason::Idle);
                    self.drain(id, now);
                }
            }
        }
    }
}

/// The memory a worker is held to its caps by: its tree, less the children of an
/// adopted master, which are governed one by one.
fn own_memory(w: &super::Worker) -> Option<u64> {
    match &w.brood {
        Some(brood) => brood.own,
        // Its tree may be a master with children: until it is known, it is not held to
        // one worker's caps (the pool guard still holds it).
        None if w.inspecting => None,
        None => w.mem.now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::pool::memstats::MemStats;

    const MB: u64 = 1024 * 1024;
    const HOUR: u64 = 3600;
    const SOFT_CAP: u64 = 300 * MB;
    const FOOTPRINT: u64 = 100 * MB;
    /// Requests a second at the daily peak; each worker takes 4 at once.
    const PEAK_RATE: f64 = 24.0;

    /// Requests a second at `t` seconds into a day: 10% of the peak at 02:00, the peak
    /// at 14:00, a cosine between.
    fn daily_rate(t: u64) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "seconds in a few days")]
        let day = ((t + 22 * HOUR) % (24 * HOUR)) as f64 / (24.0 * 3600.0);
        PEAK_RATE * (0.55 - 0.45 * (2.0 * std::f64::consts::PI * day).cos())
    }

    struct SimWorker {
        id: u64,
        mem: MemStats,
        bytes: f64,
        served: u64,
        owed: f64,
        born: Instant,
    }

    #[derive(Debug, Default)]
    struct SimResult {
        /// Recycles while traffic was above 70% of the peak, and below 30%.
        at_peak: u32,
        in_trough: u32,
        early: u32,
        total: u32,
        /// The most any worker held at a sample.
        max_memory: u64,
    }

    /// Three workers under twelve days of daily traffic, each request leaking
    /// `leak_per_request` bytes (plus `noise` bytes of jitter up and down per sample),
    /// sampled every 5 s. A worker over the soft cap is recycled at the sample that sees
    /// it (one at a time, as the supervisor does); with a horizon, `early_recycle` picks
    /// workers in lulls as the supervisor would.
    fn simulate(leak_per_request: f64, noise: f64, horizon: Option<Duration>) -> SimResult {
        const STEP: u64 = 5;
        const DAYS: u64 = 12;
        let t0 = Instant::now();
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next_id = 1;
        let mut fresh = |at: Instant| {
            let w = SimWorker {
                id: next_id,
                mem: MemStats::default(),
                #[allow(clippy::cast_precision_loss, reason = "test sizes")]
                bytes: FOOTPRINT as f64,
                served: 0,
                owed: 0.0,
                born: at,
            };
            next_id += 1;
            w
        };
        let mut workers: Vec<SimWorker> = (0..3).map(|_| fresh(t0)).collect();
        let mut meter = LullMeter::default();
        let mut result = SimResult::default();
        for step in 0..(DAYS * 24 * HOUR / STEP) {
            let t = step * STEP;
            let now = t0 + Duration::from_secs(t);
            let rate = daily_rate(t);
            let share = rate / PEAK_RATE;
            for w in &mut workers {
                #[allow(clippy::cast_precision_loss, reason = "test sizes")]
                let requests = rate * STEP as f64 / 3.0 + w.owed;
                let whole = requests.floor();
                w.owed = requests - whole;
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let whole_requests = whole as u64;
                w.served += whole_requests;
                w.bytes += whole * leak_per_request;
                #[allow(clippy::cast_precision_loss, reason = "test sizes")]
                let wobble = (rng % 1000) as f64 / 1000.0 * 2.0 - 1.0;
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let sampled = (w.bytes + wobble * noise).max(0.0) as u64;
                w.mem.record(sampled, 0, w.served, Some(w.born), now);
                result.max_memory = result.max_memory.max(sampled);
            }
            meter.observe(workers.iter().map(|w| (w.id, w.served)).collect(), now);
            // Each worker holds its share of 4 requests at once: 4 at the peak.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let in_flight = (share * 4.0).ceil() as usize;
            let growers: Vec<Grower> = workers
                .iter()
                .map(|w| Grower {
                    id: w.id,
                    memory: w.mem.now.unwrap_or(0),
                    footprint: w.mem.first_ready.or(w.mem.footprint),
                    per_hour: w.mem.growth.map(|g| g.per_hour),
                    in_flight,
                    capacity: Some(4),
                })
                .collect();
            let over_cap = workers
                .iter()
                .position(|w| w.mem.now.is_some_and(|m| m > SOFT_CAP));
            let early = horizon.and_then(|h| {
                early_recycle(&growers, SOFT_CAP, h, 0, meter.is_lull())
                    .and_then(|id| workers.iter().position(|w| w.id == id))
            });
            let Some(index) = over_cap.or(early) else {
                continue;
            };
            result.total += 1;
            if over_cap.is_none() {
                result.early += 1;
            }
            if share > 0.7 {
                result.at_peak += 1;
            } else if share < 0.3 {
                result.in_trough += 1;
            }
            workers[index] = fresh(now);
        }
        result
    }

    #[test]
    fn recycles_move_from_the_peaks_to_the_lulls_of_a_daily_curve() {
        // 400 bytes a request: each worker reaches its cap about every 32 hours, sooner
        // when it grows fastest, at the peak. A horizon of 9 hours reaches back from the
        // peak to the night before.
        let before = simulate(400.0, 0.0, None);
        let after = simulate(400.0, 0.0, Some(Duration::from_secs(9 * HOUR)));
        assert!(
            before.at_peak >= 10,
            "the cap recycles at the peak: {before:?}"
        );
        assert!(
            after.at_peak * 2 <= before.at_peak,
            "lulls take most of the peak's recycles: {before:?} {after:?}"
        );
        assert!(
            after.in_trough >= 3 * before.in_trough,
            "{before:?} {after:?}"
        );
        assert!(after.early > 0, "{after:?}");
        // Never over the cap by more than a sample's growth, and no higher than before.
        assert!(
            after.max_memory <= before.max_memory,
            "{before:?} {after:?}"
        );
        assert!(after.max_memory <= SOFT_CAP + MB, "{after:?}");
        // The early ones cost some of each worker's life, not a multiple of the recycles.
        assert!(after.total <= before.total * 3 / 2, "{before:?} {after:?}");
    }

    #[test]
    fn a_worker_that_does_not_grow_is_never_recycled_early() {
        // Memory that wobbles by 2 MB up and down from sample to sample, and no leak.
        let flat = simulate(
            0.0,
            2.0 * 1024.0 * 1024.0,
            Some(Duration::from_secs(9 * HOUR)),
        );
        assert_eq!((flat.total, flat.early), (0, 0), "{flat:?}");
        // A worker that grows, but would take days to reach its cap, is not either.
        let slow = simulate(16.0, 0.0, Some(Duration::from_secs(9 * HOUR)));
        assert_eq!(slow.total, 0, "{slow:?}");
    }

    #[test]
    fn a_horizon_of_minutes_changes_nothing_when_the_cap_comes_at_the_peak() {
        // No lull within ten minutes of the cap: the cap acts as it did.
        let before = simulate(400.0, 0.0, None);
        let after = simulate(400.0, 0.0, Some(Duration::from_secs(600)));
        assert!(after.total <= before.total + 1, "{before:?} {after:?}");
        assert!(
            after.max_memory <= before.max_memory,
            "{before:?} {after:?}"
        );
    }

    fn grower(id: u64, memory: u64, per_hour: f64, in_flight: usize) -> Grower {
        Grower {
            id,
            memory,
            footprint: Some(FOOTPRINT),
            #[allow(clippy::cast_precision_loss, reason = "test sizes")]
            per_hour: Some(per_hour * MB as f64),
            in_flight,
            capacity: Some(2),
        }
    }

    #[test]
    fn an_early_recycle_needs_a_lull_an_empty_queue_and_room_in_the_others() {
        let ten_min = Duration::from_secs(600);
        // Worker 2 reaches 300 MB in 6 minutes (30 MB at 300 MB/h); worker 1 in an hour.
        let pool = [
            grower(1, 250 * MB, 50.0, 0),
            grower(2, 270 * MB, 300.0, 1),
            grower(3, 120 * MB, 0.0, 1),
        ];
        assert_eq!(early_recycle(&pool, SOFT_CAP, ten_min, 0, true), Some(2));
        assert_eq!(early_recycle(&pool, SOFT_CAP, ten_min, 0, false), None);
        assert_eq!(early_recycle(&pool, SOFT_CAP, ten_min, 1, true), None);
        assert_eq!(
            early_recycle(&pool, SOFT_CAP, Duration::from_secs(60), 0, true),
            None,
            "outside the horizon"
        );
        // The others hold 4 requests between them and take 4 at once: no room.
        let busy = [
            grower(1, 250 * MB, 50.0, 2),
            grower(2, 270 * MB, 300.0, 1),
            grower(3, 120 * MB, 0.0, 1),
        ];
        assert_eq!(early_recycle(&busy, SOFT_CAP, ten_min, 0, true), None);
        // Over the cap already: the cap's recycle, not an early one.
        let over = [grower(1, 310 * MB, 300.0, 0), grower(2, 100 * MB, 0.0, 0)];
        assert_eq!(early_recycle(&over, SOFT_CAP, ten_min, 0, true), None);
    }

    #[test]
    fn the_lull_meter_follows_the_rate_against_its_recent_peak() {
        let t0 = Instant::now();
        let mut meter = LullMeter::default();
        let mut served = 0;
        // Ten minutes at 100 requests a second, then ten at 20.
        for s in (2..=600).step_by(2) {
            served += 200;
            meter.observe(vec![(1, served)], t0 + Duration::from_secs(s));
        }
        assert!((meter.rate - 100.0).abs() < 1.0, "{meter:?}");
        assert!(!meter.is_lull());
        for s in (602..=1200).step_by(2) {
            served += 40;
            meter.observe(vec![(1, served)], t0 + Duration::from_secs(s));
        }
        assert!((meter.rate - 20.0).abs() < 1.0, "{meter:?}");
        assert!(meter.is_lull());
        // A replacement starts from nothing; the worker it replaced is gone.
        meter.observe(vec![(2, 40)], t0 + Duration::from_secs(1202));
        assert!((meter.rate - 20.0).abs() < 1.0, "{meter:?}");
    }

    #[test]
    fn jitter_stays_within_its_percentage_and_varies() {
        let mut rng = 0x2545_F491_4F6C_DD1D;
        let values: Vec<u64> = (0..200).map(|_| with_jitter(1000, 10, &mut rng)).collect();
        assert!(
            values.iter().all(|v| (1000..=1100).contains(v)),
            "{values:?}"
        );
        let distinct: std::collections::BTreeSet<_> = values.iter().collect();
        assert!(
            distinct.len() > 50,
            "jitter should spread values: {}",
            distinct.len()
        );
        assert_eq!(with_jitter(1000, 0, &mut rng), 1000);
        assert!(with_jitter(7, 10, &mut rng) <= 7 + 1);
    }

    #[test]
    fn guard_trips_on_a_streak_of_workers_over_their_cap_at_boot_and_backs_off() {
        let t0 = Instant::now();
        let mut guard = KillLoopGuard::default();
        assert_eq!(guard.record(true, t0), None);
        assert_eq!(guard.record(true, t0), None);
        assert_eq!(guard.record(true, t0), Some(GUARD_PAUSE_START));
        assert!(guard.paused(t0 + Duration::from_secs(59)));
        assert!(!guard.paused(t0 + Duration::from_secs(60)));
        // A worker that grew past its cap (a leak, however fast) breaks the streak.
        assert_eq!(guard.record(true, t0), None);
        assert_eq!(guard.record(false, t0), None);
        assert_eq!(guard.record(true, t0), None);
        assert_eq!(guard.record(true, t0), None);
        assert_eq!(guard.record(true, t0), Some(GUARD_PAUSE_START * 2));
        for _ in 0..20 {
            guard.record(true, t0);
        }
        assert_eq!(guard.pause, Some(GUARD_PAUSE_MAX));
    }
}
