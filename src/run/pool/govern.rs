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
        self.counters.kills += 1;
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
