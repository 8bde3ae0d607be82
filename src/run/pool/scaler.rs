//! The autoscaling decision: how many workers to start, or which idle ones to retire.
//!
//! [`plan`] is a pure function of a [`PoolView`], the [`ScaleSettings`] and the time, with
//! no I/O and no clock of its own, so its rules are tested on simulated time. The
//! supervisor calls it after each event and tick and applies the [`Decision`] through its
//! reconcile step; it never starts or stops a process here.
//!
//! `live` below means Booting + Ready workers. Leaving workers (draining or stopping) count
//! for memory, because their processes still hold it, but not for capacity, because they
//! take no new requests.
//!
//! 1. **The floor.** If `live < min_workers`, start `min_workers - live`, whatever the
//!    memory: memory governance (recycling the largest worker) deals with a pool over its
//!    budget, and a pool below its floor would answer nothing at all. Not while
//!    `boot_blocked`: boots are failing and backing off, so starting more is pointless.
//! 2. **Scale up when requests must queue.** The dispatcher queues a request only when no
//!    Ready worker has spare capacity, so `queued > 0` means the pool is short. Not while
//!    `boot_blocked`. Each booting worker will bring as many slots as a ready worker
//!    takes now: the *per-worker capacity* is the median of the Ready workers' capacities
//!    (fixed, or learned; the lower middle one of an even count), or
//!    `new_worker_capacity` while none is ready (unlimited: enough for the whole queue).
//!    Only what the queue still lacks is started:
//!    `needed = ceil(queued / capacity) - booting`, or `1 - booting` when unlimited. The
//!    start count is the least of `needed`, `max_workers - live` and what
//!    memory allows: `(usable_memory - pool_memory - reserved) / footprint`, where the
//!    footprint is the measured size of a freshly booted worker, else the largest current
//!    sample, and `reserved` is what booting workers will still grow by to reach the
//!    footprint. With no footprint and no sample at all, one worker is started at a time,
//!    and only while none is booting, so the first one is measured before more follow.
//!    The floor's workers (rule 1) are started first and counted as booting here.
//!
//!    **A rising learned limit comes first.** While a Ready worker's learned limit is still
//!    finding its level from below (it has only risen so far and can rise more; see
//!    `Limiter::is_rising`) and it rose, or the worker got its first request, less than
//!    [`RISING_PATIENCE`] ago, requests queue because the limit has not caught up with
//!    the worker yet, not because the pool is short: the queue starts nothing, and the
//!    plan says [`Limit::Learning`]. An I/O-bound Node worker starts at 1 and needs a few
//!    seconds to reach the 20 or 100 it serves; workers started for that queue would stay,
//!    since least-busy routing keeps them all busy. A worker whose limit stops rising
//!    (the level is found, or it went `RISING_PATIENCE` without a rise) no longer holds the
//!    queue back, so a one-at-a-time app waits for scale-up at most that long.
//! 3. **Scale down after idleness.** With nothing queued, Ready workers with no request in
//!    flight that have been idle for at least `idle_timeout` are retired gracefully, all at
//!    once, as long as `live` stays at or above `min_workers`. The coldest (fewest requests
//!    served; a worker molt warmed up counts as warm) go first, then the newest (highest
//!    id): the dispatcher sends requests to warm workers first and ties to the earliest
//!    workers in the pool, so under a steady light load the cold and later workers are the
//!    ones left idle, and retiring them keeps the warm, long-serving ones. Nothing is retired while `boot_blocked`, because a worker
//!    retired then could not be replaced if a burst arrived.
//! 4. **No flapping timers.** Scaling down needs a full `idle_timeout` of idleness per
//!    worker, so bursts every few seconds keep the pool at the size they need, and an idle
//!    period brings it down once. A burst that fits in the idle capacity never queues
//!    (the dispatcher hands requests to free workers first), so it starts nothing.
//! 5. **Stuck boots still count.** A worker that has been booting for a long time still
//!    counts as the capacity it will bring; the boot timeout elsewhere kills it, and only
//!    then does the scaler start its replacement. Piling more workers on top would only
//!    multiply the memory a failing boot uses.
//!
//! `idle_timeout` is taken literally: `Duration::ZERO` retires an idle worker as soon as it
//! is idle, and `Duration::MAX` never does.

use std::time::{Duration, Instant};

/// Longest a rising learned limit holds scale-up back after it last rose (or its worker
/// got its first request). From a start of 1 the first rise comes after one window of 32 answers,
/// 3.2 s for requests of 100 ms; later ones come faster, as the limit is higher.
pub(crate) const RISING_PATIENCE: Duration = Duration::from_secs(5);

/// The settings the decision depends on, already validated and derived by the caller.
#[derive(Debug, Clone)]
pub(crate) struct ScaleSettings {
    /// Workers kept running even when idle (`MOLT_MIN_WORKERS`).
    pub(crate) min_workers: usize,
    /// Most live workers (`MOLT_MAX_WORKERS`, or derived from the budget); at least
    /// `min_workers`.
    pub(crate) max_workers: usize,
    /// Requests a worker is taken to serve at once while no worker is ready to say: the
    /// fixed `MOLT_WORKER_CONCURRENCY`, or where a learned limit starts; `None` unlimited.
    pub(crate) new_worker_capacity: Option<usize>,
    /// Idleness after which a worker above the floor is retired (`MOLT_IDLE_TIMEOUT`).
    pub(crate) idle_timeout: Duration,
}

/// Where a worker is in its lifecycle, as far as scaling cares.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WorkerPhase {
    /// Started, not yet accepting connections.
    Booting,
    /// Receiving requests. `idle_since` is `Some(t)` when `in_flight` has been 0 since `t`.
    Ready {
        in_flight: usize,
        idle_since: Option<Instant>,
        /// Requests it takes at once now, fixed or learned; `None` is unlimited.
        capacity: Option<usize>,
        /// While its learned limit is still rising: since when (its last rise, else its
        /// first request).
        rising_since: Option<Instant>,
    },
    /// Draining or stopping: holds memory, takes no new requests.
    Leaving,
}

/// One worker as the scaler sees it.
#[derive(Debug, Clone)]
pub(crate) struct WorkerView {
    pub(crate) id: u64,
    pub(crate) phase: WorkerPhase,
    /// Bytes at the last sample; `None` before the first one.
    pub(crate) memory: Option<u64>,
    /// How warm it is: the requests it has served, more once molt warmed it up
    /// (`Slot::warmth`).
    pub(crate) served: u64,
}

/// The pool at one moment.
#[derive(Debug, Clone)]
pub(crate) struct PoolView<'a> {
    pub(crate) workers: &'a [WorkerView],
    /// Requests waiting for a worker right now.
    pub(crate) queued: usize,
    /// Bytes the pool may use: the budget times the target share, minus molt's own memory.
    pub(crate) usable_memory: u64,
    /// Bytes the pool uses now: the sum of the workers' last samples.
    pub(crate) pool_memory: u64,
    /// Typical bytes of a freshly booted worker; `None` until one was measured.
    pub(crate) worker_footprint: Option<u64>,
    /// Boot failures are backing off: starting more workers now is pointless.
    pub(crate) boot_blocked: bool,
}

/// What the supervisor should do to the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Start this many workers.
    Start(usize),
    /// Retire these idle workers (ids), gracefully.
    Retire(Vec<u64>),
    /// Change nothing.
    Hold,
}

/// What kept the pool from starting every worker the floor or the queue needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Boot failures are backing off.
    BootBackoff,
    /// The pool is at `max_workers`.
    MaxWorkers,
    /// Memory headroom does not fit another worker's footprint.
    Memory,
    /// No worker has been measured yet, so workers start one at a time.
    FootprintUnknown,
    /// A worker's learned limit is still rising and will take the queue.
    Learning,
}

impl Limit {
    /// The value for a logfmt field, e.g. `limited_by=memory`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Limit::BootBackoff => "boot_backoff",
            Limit::MaxWorkers => "max_workers",
            Limit::Memory => "memory",
            Limit::FootprintUnknown => "footprint_unknown",
            Limit::Learning => "learning",
        }
    }
}

/// A decision and, for the log, what held a start back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) decision: Decision,
    /// Set when fewer workers are started than the floor or the queue needed, including
    /// none (`Hold` while requests queue).
    pub(crate) limited_by: Option<Limit>,
}

/// Decides how the pool should change now (see the module documentation for the rules),
/// and what limited a start, so the caller can log why a queue was not fully served.
pub(crate) fn plan(view: &PoolView<'_>, settings: &ScaleSettings, now: Instant) -> Plan {
    let booting = view
        .workers
        .iter()
        .filter(|w| matches!(w.phase, WorkerPhase::Booting))
        .count();
    let ready = view
        .workers
        .iter()
        .filter(|w| matches!(w.phase, WorkerPhase::Ready { .. }))
        .count();
    let live = booting + ready;
    let floor = settings.min_workers.saturating_sub(live);

    if floor == 0 && view.queued == 0 {
        return Plan {
            decision: retire_idle(view, settings, live, now),
            limited_by: None,
        };
    }
    if view.boot_blocked {
        return Plan {
            decision: Decision::Hold,
            limited_by: Some(Limit::BootBackoff),
        };
    }

    // The floor's workers are started regardless of memory; the queue's extra workers are
    // counted on top of them, as if they were already booting.
    let booting = booting + floor;
    let live = live + floor;
    let learning = view.queued > 0 && still_rising(view, now);
    let needed = if view.queued == 0 || learning {
        0
    } else {
        match per_worker_capacity(view, settings) {
            // An unlimited worker takes the whole queue once it is ready.
            None => 1usize.saturating_sub(booting),
            Some(capacity) => view.queued.div_ceil(capacity).saturating_sub(booting),
        }
    };

    let mut extra = needed;
    let mut limited_by = learning.then_some(Limit::Learning);
    let room = settings.max_workers.saturating_sub(live);
    if room < extra {
        extra = room;
        limited_by = Some(Limit::MaxWorkers);
    }
    let (fits, memory_limit) = memory_fits(view, booting, floor);
    if fits < extra {
        extra = fits;
        limited_by = Some(memory_limit);
    }

    let start = floor + extra;
    Plan {
        decision: if start == 0 {
            Decision::Hold
        } else {
            Decision::Start(start)
        },
        limited_by,
    }
}

/// What each worker is taken to serve at once: the median of the Ready workers'
/// capacities, the lower middle one of an even count (unlimited counts as the highest);
/// `new_worker_capacity` while none is ready. A worker that takes nothing now (a preforking
/// master with no child ready) says nothing about what a worker takes.
fn per_worker_capacity(view: &PoolView<'_>, settings: &ScaleSettings) -> Option<usize> {
    let mut capacities: Vec<usize> = view
        .workers
        .iter()
        .filter_map(|w| match w.phase {
            WorkerPhase::Ready { capacity, .. } => Some(capacity.unwrap_or(usize::MAX)),
            WorkerPhase::Booting | WorkerPhase::Leaving => None,
        })
        .filter(|&capacity| capacity > 0)
        .collect();
    if capacities.is_empty() {
        return settings.new_worker_capacity.filter(|&c| c > 0);
    }
    capacities.sort_unstable();
    let median = capacities[(capacities.len() - 1) / 2];
    (median < usize::MAX).then_some(median)
}

/// Whether a Ready worker's learned limit is still rising, and rose (or the worker got its
/// first request) less than [`RISING_PATIENCE`] ago.
fn still_rising(view: &PoolView<'_>, now: Instant) -> bool {
    view.workers.iter().any(|w| match w.phase {
        WorkerPhase::Ready {
            rising_since: Some(since),
            ..
        } => now.saturating_duration_since(since) < RISING_PATIENCE,
        _ => false,
    })
}

/// How many more workers the memory headroom fits, and which limit applies when it fits
/// fewer than needed. `booting` includes the `floor` workers about to start.
fn memory_fits(view: &PoolView<'_>, booting: usize, floor: usize) -> (usize, Limit) {
    let headroom = view.usable_memory.saturating_sub(view.pool_memory);
    // A zero footprint would be a failed measurement, not a free worker.
    let footprint = view
        .worker_footprint
        .filter(|&bytes| bytes > 0)
        .or_else(|| {
            view.workers
                .iter()
                .filter_map(|w| w.memory)
                .filter(|&bytes| bytes > 0)
                .max()
        });
    let Some(footprint) = footprint else {
        // Nothing measured yet: start one, and more only once it has been sampled, so that
        // a heavy app cannot start a whole pool it cannot hold.
        let fits = usize::from(booting == 0 && headroom > 0);
        return (fits, Limit::FootprintUnknown);
    };
    // A booting worker's sample is below what it will use once the app is loaded, so
    // the difference is reserved; otherwise every tick during a boot would see headroom
    // that the booting workers are about to take.
    let growing: u64 = view
        .workers
        .iter()
        .filter(|w| matches!(w.phase, WorkerPhase::Booting))
        .map(|w| footprint.saturating_sub(w.memory.unwrap_or(0)))
        .sum();
    let reserved = growing.saturating_add(footprint.saturating_mul(floor as u64));
    let free = headroom.saturating_sub(reserved);
    let fits = usize::try_from(free / footprint).unwrap_or(usize::MAX);
    (fits, Limit::Memory)
}

/// The idle workers to retire, coldest (fewest requests served) first, then newest, down to
/// the floor.
fn retire_idle(
    view: &PoolView<'_>,
    settings: &ScaleSettings,
    live: usize,
    now: Instant,
) -> Decision {
    if view.boot_blocked {
        return Decision::Hold;
    }
    let surplus = live.saturating_sub(settings.min_workers);
    if surplus == 0 {
        return Decision::Hold;
    }
    let mut idle: Vec<(u64, u64)> = view
        .workers
        .iter()
        .filter(|w| match w.phase {
            WorkerPhase::Ready {
                in_flight: 0,
                idle_since: Some(since),
                ..
            } => now.saturating_duration_since(since) >= settings.idle_timeout,
            _ => false,
        })
        .map(|w| (w.id, w.served))
        .collect();
    if idle.is_empty() {
        return Decision::Hold;
    }
    // Coldest first, then highest ids: the dispatcher sends requests to warm workers first
    // and breaks ties toward the earliest, so the cold and newest ones are those a light
    // load leaves idle, and retiring them keeps the warm, long-serving ones.
    idle.sort_unstable_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
    idle.truncate(surplus);
    Decision::Retire(idle.into_iter().map(|(id, _)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decision alone, as most rules are stated.
    fn decide(view: &PoolView<'_>, settings: &ScaleSettings, now: Instant) -> Decision {
        plan(view, settings, now).decision
    }

    const MB: u64 = 1024 * 1024;
    const IDLE: Duration = Duration::from_secs(5 * 60);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    /// `concurrency` is what workers that are not ready yet are taken to serve; ready
    /// ones say for themselves (see [`serving`]); 0 is unlimited.
    fn settings(min: usize, max: usize, concurrency: usize) -> ScaleSettings {
        ScaleSettings {
            min_workers: min,
            max_workers: max,
            new_worker_capacity: (concurrency > 0).then_some(concurrency),
            idle_timeout: IDLE,
        }
    }

    /// A Ready phase of a worker with a fixed capacity of 1.
    fn ready_phase(in_flight: usize, idle_since: Option<Instant>) -> WorkerPhase {
        WorkerPhase::Ready {
            in_flight,
            idle_since,
            capacity: Some(1),
            rising_since: None,
        }
    }

    /// The workers, each Ready one taking `concurrency` at once (0 unlimited).
    fn serving(mut workers: Vec<WorkerView>, concurrency: usize) -> Vec<WorkerView> {
        for w in &mut workers {
            if let WorkerPhase::Ready { capacity, .. } = &mut w.phase {
                *capacity = (concurrency > 0).then_some(concurrency);
            }
        }
        workers
    }

    fn booting(id: u64) -> WorkerView {
        WorkerView {
            id,
            phase: WorkerPhase::Booting,
            memory: Some(100 * MB),
            served: 0,
        }
    }

    fn busy(id: u64, in_flight: usize) -> WorkerView {
        WorkerView {
            id,
            phase: ready_phase(in_flight, None),
            memory: Some(100 * MB),
            served: 0,
        }
    }

    fn idle(id: u64, since: Instant) -> WorkerView {
        WorkerView {
            id,
            phase: ready_phase(0, Some(since)),
            memory: Some(100 * MB),
            served: 0,
        }
    }

    fn leaving(id: u64) -> WorkerView {
        WorkerView {
            id,
            phase: WorkerPhase::Leaving,
            memory: Some(100 * MB),
            served: 0,
        }
    }

    /// A pool with memory to spare: 10 GB usable, 100 MB per worker.
    fn roomy(workers: &[WorkerView], queued: usize) -> PoolView<'_> {
        PoolView {
            workers,
            queued,
            usable_memory: 10 * 1024 * MB,
            pool_memory: workers.iter().filter_map(|w| w.memory).sum(),
            worker_footprint: Some(100 * MB),
            boot_blocked: false,
        }
    }

    #[test]
    fn empty_pool_starts_min_workers() {
        let t0 = Instant::now();
        let view = roomy(&[], 0);
        assert_eq!(decide(&view, &settings(2, 6, 1), t0), Decision::Start(2));
    }

    #[test]
    fn crash_below_min_starts_the_missing_workers() {
        let t0 = Instant::now();
        // Worker 2 crashed; worker 3 is draining for memory and does not count either.
        let workers = [idle(1, t0), leaving(3)];
        let view = roomy(&workers, 0);
        assert_eq!(
            decide(&view, &settings(3, 6, 1), at(t0, 10)),
            Decision::Start(2)
        );
    }

    #[test]
    fn floor_is_kept_regardless_of_memory() {
        let t0 = Instant::now();
        let workers = [busy(1, 1)];
        let view = PoolView {
            pool_memory: 900 * MB,
            usable_memory: 800 * MB,
            ..roomy(&workers, 0)
        };
        assert_eq!(decide(&view, &settings(2, 6, 1), t0), Decision::Start(1));
    }

    #[test]
    fn floor_waits_while_boot_blocked() {
        let t0 = Instant::now();
        let view = PoolView {
            boot_blocked: true,
            ..roomy(&[], 0)
        };
        let plan = plan(&view, &settings(1, 6, 1), t0);
        assert_eq!(plan.decision, Decision::Hold);
        assert_eq!(plan.limited_by, Some(Limit::BootBackoff));
    }

    #[test]
    fn burst_starts_exactly_what_the_queue_needs() {
        let t0 = Instant::now();
        // (concurrency, busy workers, queued, expected)
        let cases = [
            (1, 1, 1, Decision::Start(1)),
            (1, 1, 3, Decision::Start(3)),
            (4, 1, 4, Decision::Start(1)),
            (4, 1, 5, Decision::Start(2)),
            (4, 1, 9, Decision::Start(3)),
            // Unlimited concurrency: one worker takes the whole queue once ready.
            (0, 0, 1, Decision::Start(1)),
            (0, 0, 50, Decision::Start(1)),
        ];
        for (concurrency, busy_workers, queued, expected) in cases {
            let workers = serving(
                (1..=busy_workers).map(|id| busy(id, 4)).collect(),
                concurrency,
            );
            let view = roomy(&workers, queued);
            let got = decide(&view, &settings(0, 20, concurrency), t0);
            assert_eq!(
                got, expected,
                "concurrency {concurrency}, {busy_workers} busy, {queued} queued"
            );
        }
    }

    #[test]
    fn each_worker_counts_for_the_median_of_the_ready_workers_capacities() {
        let t0 = Instant::now();
        let with = |capacities: &[Option<usize>]| -> Vec<WorkerView> {
            (1..)
                .zip(capacities)
                .map(|(id, &capacity)| WorkerView {
                    phase: WorkerPhase::Ready {
                        in_flight: 4,
                        idle_since: None,
                        capacity,
                        rising_since: None,
                    },
                    ..busy(id, 4)
                })
                .collect()
        };
        // (ready workers' capacities, queued, expected)
        let cases = [
            // Median 5: ten more requests need two more workers.
            (vec![Some(1), Some(5), Some(100)], 10, Decision::Start(2)),
            // An even count takes the lower middle one.
            (vec![Some(10), Some(2)], 10, Decision::Start(5)),
            // A master with no child ready takes nothing and says nothing.
            (vec![Some(0), Some(0), Some(4)], 8, Decision::Start(2)),
            // Mostly unlimited: one more takes the queue.
            (vec![None, None, Some(4)], 50, Decision::Start(1)),
            (vec![Some(3), Some(3), None], 7, Decision::Start(3)),
        ];
        for (capacities, queued, expected) in cases {
            let workers = with(&capacities);
            let view = roomy(&workers, queued);
            // new_worker_capacity plays no part while workers are ready.
            let got = decide(&view, &settings(1, 20, 7), t0);
            assert_eq!(got, expected, "{capacities:?}, {queued} queued");
        }
        // With none ready, the capacity a new worker starts with: 4 queued, 2 per worker,
        // one booting.
        let workers = [booting(1)];
        let view = roomy(&workers, 4);
        assert_eq!(decide(&view, &settings(1, 20, 2), t0), Decision::Start(1));
    }

    #[test]
    fn a_rising_learned_limit_takes_the_queue_before_another_worker() {
        // Guards against the five Node processes molt used to start for one I/O-bound
        // app: a worker learning upward from 1 queues requests that its own growth takes
        // a few seconds later, and workers started for them would stay for good.
        let t0 = Instant::now();
        let rising = |since: Instant| WorkerView {
            phase: WorkerPhase::Ready {
                in_flight: 1,
                idle_since: None,
                capacity: Some(1),
                rising_since: Some(since),
            },
            ..busy(1, 1)
        };
        let workers = [rising(t0)];
        let view = roomy(&workers, 19);
        let held = plan(&view, &settings(1, 5, 1), at(t0, 4));
        assert_eq!(held.decision, Decision::Hold);
        assert_eq!(held.limited_by, Some(Limit::Learning));
        // A limit that has not risen for RISING_PATIENCE holds nothing back any more.
        let started = plan(&view, &settings(1, 5, 1), t0 + RISING_PATIENCE);
        assert_eq!(started.decision, Decision::Start(4));
        assert_eq!(started.limited_by, Some(Limit::MaxWorkers));
        // One that has stopped rising (its level found) holds nothing back.
        let workers = [busy(1, 1)];
        let view = roomy(&workers, 3);
        assert_eq!(decide(&view, &settings(1, 5, 1), t0), Decision::Start(3));
        // The floor is kept whatever a limit does.
        let workers = [rising(t0)];
        let view = roomy(&workers, 3);
        assert_eq!(decide(&view, &settings(2, 5, 1), t0), Decision::Start(1));
    }

    #[test]
    fn never_starts_past_max() {
        let t0 = Instant::now();
        // (busy workers, booting workers, max, expected)
        let cases = [
            (3, 0, 4, Decision::Start(1)),
            (4, 0, 4, Decision::Hold),
            // Booting workers count toward max too.
            (1, 1, 2, Decision::Hold),
        ];
        for (busy_workers, boots, max, expected) in cases {
            let mut workers: Vec<_> = (1..=busy_workers).map(|id| busy(id, 1)).collect();
            workers.extend((busy_workers + 1..=busy_workers + boots).map(booting));
            let view = roomy(&workers, 10);
            let plan = plan(&view, &settings(1, max, 1), at(t0, 1));
            assert_eq!(
                plan.decision, expected,
                "{busy_workers} busy, {boots} booting, max {max}"
            );
            assert_eq!(plan.limited_by, Some(Limit::MaxWorkers));
        }
    }

    #[test]
    fn booting_workers_count_against_the_queue() {
        // Guards against over-spawning while the first batch boots: without this, every
        // tick during a slow boot would start another worker per queued request.
        let t0 = Instant::now();
        // (concurrency, booting workers, queued, expected)
        let cases = [
            (1, 3, 3, Decision::Hold),
            (1, 3, 5, Decision::Start(2)),
            (4, 1, 4, Decision::Hold),
            (4, 1, 12, Decision::Start(2)),
            (0, 1, 50, Decision::Hold),
        ];
        for (concurrency, boots, queued, expected) in cases {
            let mut workers = serving(vec![busy(1, 4)], concurrency);
            workers.extend((2..2 + boots).map(booting));
            let view = roomy(&workers, queued);
            let plan = plan(&view, &settings(1, 20, concurrency), at(t0, 2));
            assert_eq!(
                plan.decision, expected,
                "concurrency {concurrency}, {boots} booting, {queued} queued"
            );
            // Waiting for boots to finish is not a limit worth logging.
            assert_eq!(plan.limited_by, None);
        }
    }

    #[test]
    fn floor_and_queue_start_together() {
        let t0 = Instant::now();
        let view = roomy(&[], 4);
        // One for the floor, three more for the rest of the queue.
        assert_eq!(decide(&view, &settings(1, 8, 1), t0), Decision::Start(4));
        // The floor's workers count as booting capacity for the queue.
        assert_eq!(decide(&view, &settings(3, 8, 1), t0), Decision::Start(4));
        assert_eq!(decide(&view, &settings(6, 8, 1), t0), Decision::Start(6));
    }

    #[test]
    fn memory_headroom_limits_the_start_count() {
        let t0 = Instant::now();
        let workers = [busy(1, 1), busy(2, 1)];
        // 250 MB workers: 500 MB used of 1000 MB leaves room for two more.
        let view = PoolView {
            usable_memory: 1000 * MB,
            pool_memory: 500 * MB,
            worker_footprint: Some(250 * MB),
            ..roomy(&workers, 5)
        };
        let plan = plan(&view, &settings(1, 10, 1), t0);
        assert_eq!(plan.decision, Decision::Start(2));
        assert_eq!(plan.limited_by, Some(Limit::Memory));
    }

    #[test]
    fn booting_workers_reserve_the_memory_they_will_grow_into() {
        // Guards against overshooting the budget: a worker sampled early in its boot
        // looks small, and without a reservation the headroom it is about to use would be
        // handed to another new worker.
        let t0 = Instant::now();
        let mut early = booting(2);
        early.memory = Some(50 * MB);
        let workers = [busy(1, 1), early];
        let view = PoolView {
            usable_memory: 1050 * MB,
            pool_memory: 300 * MB,
            worker_footprint: Some(250 * MB),
            ..roomy(&workers, 5)
        };
        // 750 MB free, minus the 200 MB worker 2 will still grow by, fits two; counting
        // only its sample would fit three.
        assert_eq!(
            decide(&view, &settings(1, 10, 1), at(t0, 1)),
            Decision::Start(2)
        );
    }

    #[test]
    fn unknown_footprint_starts_one_at_a_time() {
        let t0 = Instant::now();
        let s = settings(0, 10, 1);
        let unmeasured = |id| WorkerView {
            memory: None,
            ..booting(id)
        };
        let cases = [
            (vec![], Decision::Start(1)),
            (vec![unmeasured(1)], Decision::Hold),
        ];
        for (workers, expected) in cases {
            let view = PoolView {
                pool_memory: 0,
                worker_footprint: None,
                ..roomy(&workers, 5)
            };
            let plan = plan(&view, &s, at(t0, 1));
            assert_eq!(plan.decision, expected, "{} booting", workers.len());
            assert_eq!(plan.limited_by, Some(Limit::FootprintUnknown));
        }
        // The floor's own workers are booting too, so the queue waits for them.
        let view = PoolView {
            worker_footprint: None,
            ..roomy(&[], 5)
        };
        assert_eq!(decide(&view, &settings(1, 10, 1), t0), Decision::Start(1));
    }

    #[test]
    fn unknown_footprint_falls_back_to_the_largest_sample() {
        let t0 = Instant::now();
        let mut big = busy(2, 1);
        big.memory = Some(300 * MB);
        let workers = [busy(1, 1), big];
        let view = PoolView {
            usable_memory: 1000 * MB,
            pool_memory: 400 * MB,
            worker_footprint: None,
            ..roomy(&workers, 5)
        };
        // 600 MB free at 300 MB each.
        assert_eq!(decide(&view, &settings(1, 10, 1), t0), Decision::Start(2));
    }

    #[test]
    fn memory_pressure_holds_even_with_a_queue() {
        let t0 = Instant::now();
        let workers = [busy(1, 1), busy(2, 1), busy(3, 1)];
        for pool_memory in [950 * MB, 1000 * MB, 1200 * MB] {
            let view = PoolView {
                usable_memory: 1000 * MB,
                pool_memory,
                worker_footprint: Some(250 * MB),
                ..roomy(&workers, 20)
            };
            let plan = plan(&view, &settings(1, 10, 1), t0);
            assert_eq!(plan.decision, Decision::Hold, "pool at {pool_memory}");
            assert_eq!(plan.limited_by, Some(Limit::Memory));
        }
    }

    #[test]
    fn boot_backoff_holds_scale_up() {
        let t0 = Instant::now();
        let workers = [busy(1, 1)];
        let view = PoolView {
            boot_blocked: true,
            ..roomy(&workers, 10)
        };
        let plan = plan(&view, &settings(1, 10, 1), t0);
        assert_eq!(plan.decision, Decision::Hold);
        assert_eq!(plan.limited_by, Some(Limit::BootBackoff));
    }

    #[test]
    fn idle_worker_is_kept_at_4m59s_and_retired_at_5m() {
        let t0 = Instant::now();
        let workers = [busy(1, 1), idle(2, t0)];
        let view = roomy(&workers, 0);
        let s = settings(1, 4, 1);
        assert_eq!(decide(&view, &s, at(t0, 299)), Decision::Hold);
        assert_eq!(decide(&view, &s, at(t0, 300)), Decision::Retire(vec![2]));
    }

    #[test]
    fn never_retires_below_min() {
        let t0 = Instant::now();
        let workers = [idle(1, t0), idle(2, t0)];
        let view = roomy(&workers, 0);
        assert_eq!(
            decide(&view, &settings(2, 4, 1), at(t0, 3600)),
            Decision::Hold
        );
        // Leaving workers do not hold the floor up: with 2 of them retiring already,
        // the two Ready ones are the floor.
        let workers = [idle(1, t0), idle(2, t0), leaving(3), leaving(4)];
        let view = roomy(&workers, 0);
        assert_eq!(
            decide(&view, &settings(2, 4, 1), at(t0, 3600)),
            Decision::Hold
        );
    }

    #[test]
    fn retires_idle_workers_newest_first_down_to_min() {
        let t0 = Instant::now();
        let s = settings(2, 6, 1);
        let now = at(t0, 600);
        // All idle: everything above the floor goes at once, highest ids first.
        let workers: Vec<_> = (1..=5).map(|id| idle(id, t0)).collect();
        assert_eq!(
            decide(&roomy(&workers, 0), &s, now),
            Decision::Retire(vec![5, 4, 3])
        );
        // Worker 5 is busy and worker 4 idle too briefly, so 1, 2 and 3 are eligible; a
        // floor of 3 lets two go. The newest eligible go, not the longest idle: worker 1
        // stays although it has been idle as long as the others.
        let s = settings(3, 6, 1);
        let workers = [
            idle(1, t0),
            idle(2, t0),
            idle(3, t0),
            idle(4, at(t0, 500)),
            busy(5, 1),
        ];
        assert_eq!(
            decide(&roomy(&workers, 0), &s, now),
            Decision::Retire(vec![3, 2])
        );
        // A booting worker counts toward the floor, so it lets one more idle worker go.
        let s = settings(2, 6, 1);
        let workers = [idle(1, t0), idle(2, t0), booting(3)];
        assert_eq!(
            decide(&roomy(&workers, 0), &s, now),
            Decision::Retire(vec![2])
        );
    }

    #[test]
    fn the_coldest_idle_worker_is_retired_first() {
        let t0 = Instant::now();
        let now = at(t0, 600);
        let served = |id, served| WorkerView {
            served,
            ..idle(id, t0)
        };
        // Worker 2 is the fresh replacement of a recycle: it goes first, though 4 is
        // newer; then 3, which has served less than 4.
        let workers = [served(1, 900), served(2, 4), served(3, 700), served(4, 800)];
        let s = settings(2, 6, 1);
        assert_eq!(
            decide(&roomy(&workers, 0), &s, now),
            Decision::Retire(vec![2, 3])
        );
        // As warm as each other: the newest first.
        let workers = [served(1, 50), served(2, 50), served(3, 50)];
        assert_eq!(
            decide(&roomy(&workers, 0), &s, now),
            Decision::Retire(vec![3])
        );
    }

    #[test]
    fn no_retirement_while_requests_queue() {
        let t0 = Instant::now();
        // Worker 2 went idle long ago but the queue is waiting on a full worker 1 (e.g. a
        // sample taken just before the dispatcher hands worker 2 the request).
        let workers = [busy(1, 1), idle(2, t0), booting(3)];
        let view = roomy(&workers, 1);
        assert_eq!(
            decide(&view, &settings(1, 4, 1), at(t0, 600)),
            Decision::Hold
        );
    }

    #[test]
    fn no_retirement_while_boot_blocked() {
        // A worker retired while boots are failing could not be replaced if a burst came.
        let t0 = Instant::now();
        let workers = [idle(1, t0), idle(2, t0)];
        let view = PoolView {
            boot_blocked: true,
            ..roomy(&workers, 0)
        };
        assert_eq!(
            decide(&view, &settings(1, 4, 1), at(t0, 600)),
            Decision::Hold
        );
    }

    #[test]
    fn burst_within_idle_capacity_starts_nothing() {
        // The dispatcher hands requests to free Ready workers before queuing any, so a
        // burst the idle workers can absorb shows as busy workers and an empty queue.
        let t0 = Instant::now();
        let workers = [busy(1, 1), busy(2, 1), busy(3, 1), idle(4, at(t0, 10))];
        let view = roomy(&workers, 0);
        assert_eq!(
            decide(&view, &settings(1, 8, 1), at(t0, 20)),
            Decision::Hold
        );
    }

    #[test]
    fn stuck_booting_worker_is_not_piled_on() {
        // Guards against a pile-up of booting workers behind one that hangs in its boot:
        // the boot timeout kills it, and only then is a replacement started.
        let t0 = Instant::now();
        let workers = [busy(1, 1), booting(2)];
        let view = roomy(&workers, 1);
        let plan = plan(&view, &settings(1, 8, 1), at(t0, 600));
        assert_eq!(plan.decision, Decision::Hold);
        assert_eq!(plan.limited_by, None);
    }

    /// A worker in the pool model of the simulation below.
    struct Sim {
        id: u64,
        phase: WorkerPhase,
        booted_at: Instant,
        busy_until: Option<Instant>,
    }

    #[test]
    fn bursts_every_30s_keep_the_pool_up_then_it_shrinks_once() {
        // Guards against flapping: a pool that retires workers between bursts and boots
        // them again at the next one.
        const BOOT: u64 = 3;
        const REQUEST: u64 = 2;
        const BURST: usize = 4;
        const BURSTS_END: u64 = 600;
        let t0 = Instant::now();
        let s = settings(1, 8, 1);
        let mut pool = vec![Sim {
            id: 1,
            phase: ready_phase(0, Some(t0)),
            booted_at: t0,
            busy_until: None,
        }];
        let mut next_id = 2;
        let mut queued = 0;
        let mut starts = Vec::new();
        let mut retires = Vec::new();
        let mut sizes = Vec::new();

        for sec in 0..1000 {
            let now = at(t0, sec);
            pool.retain(|w| !matches!(w.phase, WorkerPhase::Leaving));
            if sec < BURSTS_END && sec % 30 == 0 {
                queued += BURST;
            }
            for w in &mut pool {
                if matches!(w.phase, WorkerPhase::Booting) && now >= w.booted_at {
                    w.phase = ready_phase(0, Some(now));
                }
                if w.busy_until.is_some_and(|until| now >= until) {
                    w.busy_until = None;
                    w.phase = ready_phase(0, Some(now));
                }
            }
            // Dispatch: the earliest free worker first, as the dispatcher breaks ties.
            for w in &mut pool {
                if queued > 0 && matches!(w.phase, WorkerPhase::Ready { in_flight: 0, .. }) {
                    queued -= 1;
                    w.busy_until = Some(now + Duration::from_secs(REQUEST));
                    w.phase = ready_phase(1, None);
                }
            }

            let workers: Vec<_> = pool
                .iter()
                .map(|w| WorkerView {
                    id: w.id,
                    phase: w.phase,
                    memory: Some(100 * MB),
                    served: 0,
                })
                .collect();
            match decide(&roomy(&workers, queued), &s, now) {
                Decision::Start(n) => {
                    starts.push((sec, n));
                    for _ in 0..n {
                        pool.push(Sim {
                            id: next_id,
                            phase: WorkerPhase::Booting,
                            booted_at: now + Duration::from_secs(BOOT),
                            busy_until: None,
                        });
                        next_id += 1;
                    }
                }
                Decision::Retire(ids) => {
                    for w in &mut pool {
                        if ids.contains(&w.id) {
                            w.phase = WorkerPhase::Leaving;
                        }
                    }
                    retires.push((sec, ids));
                }
                Decision::Hold => {}
            }
            let live = pool
                .iter()
                .filter(|w| !matches!(w.phase, WorkerPhase::Leaving))
                .count();
            sizes.push((sec, live));
        }

        // The first burst grows the pool once, by exactly the three requests worker 1
        // could not take.
        assert_eq!(starts, vec![(0, 3)]);
        // It never shrinks while the bursts go on.
        assert!(sizes
            .iter()
            .filter(|&&(sec, _)| (BOOT..BURSTS_END).contains(&sec))
            .all(|&(_, live)| live == 4));
        // The last burst's requests end at 572; five minutes later the pool shrinks once,
        // down to the floor, newest first.
        assert_eq!(retires, vec![(872, vec![4, 3, 2])]);
        assert!(sizes.contains(&(871, 4)));
        assert!(sizes.contains(&(872, 1)));
        assert_eq!(pool.iter().map(|w| w.id).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn limits_have_log_names() {
        let names: Vec<_> = [
            Limit::BootBackoff,
            Limit::MaxWorkers,
            Limit::Memory,
            Limit::FootprintUnknown,
            Limit::Learning,
        ]
        .into_iter()
        .map(Limit::as_str)
        .collect();
        assert_eq!(
            names,
            [
                "boot_backoff",
                "max_workers",
                "memory",
                "footprint_unknown",
                "learning"
            ]
        );
    }
}
