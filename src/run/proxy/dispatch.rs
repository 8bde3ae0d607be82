//! Routing requests to workers: least-busy choice, a bounded FIFO queue, and leases.
//!
//! The supervisor publishes the routable workers as one immutable snapshot; the request
//! path takes a [`Lease`] on one of them. A lease counts as one in-flight request on its
//! worker until it is dropped, and dropping it hands the freed capacity to the oldest
//! waiting request. The lock here guards only the snapshot pointer and the queue, and is
//! held for a few instructions at a time; the supervisor never holds it across an await.
//!
//! # A worker's capacity
//!
//! A slot takes the dispatcher's capacity (`MOLT_WORKER_CONCURRENCY=N`) unless it has one
//! of its own, and the three ways to give it one compose:
//!
//! - [`Slot::learning`], at creation (`MOLT_WORKER_CONCURRENCY=auto`): a [`Limiter`] learns
//!   the capacity from the worker's latency, starting at [`LimiterSettings::initial`] and
//!   never above [`LimiterSettings::max`]. Each answered request is a sample
//!   ([`Lease::answered`]), taken under the slot's own lock before the lease is released,
//!   and the limit is copied into the capacity that [`choose`] reads, so the next dispatch
//!   already uses it; when it rose, the queue is served at once.
//! - [`Slot::fix_capacity`], by the supervisor for an adopted preforking master: one
//!   request per ready child (or the fixed concurrency per child), no longer learned: the
//!   latency of a master is its children's queue, which a limiter would read as its own.
//!   A ceiling over a learned limit ([`Slot::set_capacity`]) is kept for tests of the
//!   limiter's composition only.
//! - Neither: the dispatcher's capacity, 0 unlimited.
//!
//! A limit is always at least 1 and at most its maximum; only a ceiling of 0 (a master
//! with no child ready) takes no request.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::run::proxy::limiter::{Limiter, LimiterSettings};
use crate::run::proxy::upstream::{proxy_thread, IdleUpstreams};

/// One worker as the request path sees it.
pub(crate) struct Slot {
    pub(crate) id: u64,
    pub(crate) addr: SocketAddr,
    /// The worker's process (its group leader).
    pid: i32,
    in_flight: AtomicUsize,
    served: AtomicU64,
    /// Requests after which the worker takes no more (`MOLT_MAX_REQUESTS` with jitter).
    request_limit: AtomicU64,
    created: Instant,
    /// When `in_flight` last dropped to zero, in milliseconds after `created`.
    idle_since_ms: AtomicU64,
    /// Notified whenever `in_flight` drops to zero, so a drain can finish at once.
    idle: Notify,
    /// Kept-alive connections to this worker, for reuse.
    pub(crate) upstreams: IdleUpstreams,
    /// The worker refused a connection: it is dead or no longer listening, and takes no
    /// more requests while the supervisor replaces it.
    refused: AtomicBool,
    /// Requests this worker takes at once when that is its own (a preforking master: its
    /// children's; a learned limit), else [`INHERIT`]: the dispatcher's; [`UNLIMITED`].
    capacity: AtomicUsize,
    /// The most requests it held at once since the supervisor last asked.
    peak: AtomicUsize,
    /// The learned limit, when the capacity is learned; see the module documentation.
    learning: Option<Mutex<Learning>>,
    /// Set by [`Slot::fix_capacity`]: the capacity is no longer learned.
    fixed: AtomicBool,
    /// Each of its processes takes one request at a time, whatever its capacity: an
    /// adopted master whose children do ([`Slot::set_serial`]). Such a master is also
    /// given [`master_backlog`] more requests than it serves at once.
    serial: AtomicBool,
    /// On a slot that learns: since when it has been full (held its capacity), in
    /// milliseconds after `created`, or [`NOT_FULL`]. A lease that fills it sets it, one
    /// that leaves it below its capacity clears it, and releases leave it as it is: with
    /// requests waiting, a freed place is taken again at once.
    full_since_ms: AtomicU64,
    /// When `in_flight` last rose from zero, in microseconds after `created`.
    busy_since_us: AtomicU64,
    /// How long the worker held at least one request, in microseconds, until
    /// `in_flight` last dropped to zero (see [`Slot::busy_time`]).
    busy_us: AtomicU64,
    /// Set once molt's warm-up requests (`MOLT_WARMUP_PATH`) were answered: the worker is
    /// warm before it has served a request ([`Slot::warmth`]).
    warmed: AtomicBool,
}

/// Requests a worker serves before it counts as warm for routing (see [`choose`]): as
/// many as its memory statistics take to warm up (lazy code loaded, caches filled).
pub(crate) const WARM_AFTER: u64 = 20;

/// Requests per child that an adopted master of one-request children is given beyond
/// the one each child serves: they wait in the master's own listen backlog, which all of
/// its children accept from, so a child that finished takes the next request at once
/// instead of sleeping until molt has read its response and sent it another. No request
/// waits there behind one slow child, as it would in one worker's own backlog: any free
/// child takes it, in the order they came, as from molt's queue. They count as queued
/// ([`Dispatcher::queued`]); molt's queue timeout does not reach them.
///
/// In front of 2 Unicorn children answering a tiny page under `wrk -t2 -c32`,
/// alternating with nginx and Passenger (`BENCH_ROUNDS=3 BENCH_SECONDS=3
/// test/bench/unicorn_front.py`; docs/benchmarks.md, "A deeper backlog"): 0.67 of
/// nginx's throughput with 2 per child, 0.85 with 8, 1.08 with 16. A refill from molt's
/// queue waits for molt's threads to run, which on a busy machine takes longer than such a
/// child takes for a request, and a short backlog runs dry while the children sleep.
const BACKLOG_PER_CHILD: usize = 16;

/// Beyond [`BACKLOG_FLOOR`] per child, a master's backlog holds at most this many in all:
/// half the listen backlog of 64 the prefork fixture's Unicorn sets (Unicorn's default is
/// 1024, gunicorn's 2048), so that no connection finds it full. More children refill it
/// more often, and need less each.
const BACKLOG_MOST: usize = 32;

/// Requests per child a master's backlog holds however many children it has.
const BACKLOG_FLOOR: usize = 2;

/// The backlog of an adopted master of `children` one-request children.
pub(crate) fn master_backlog(children: usize) -> usize {
    children
        .saturating_mul(BACKLOG_PER_CHILD)
        .min(BACKLOG_MOST)
        .max(children.saturating_mul(BACKLOG_FLOOR))
}

/// `full_since_ms` of a slot that is not full.
const NOT_FULL: u64 = u64::MAX;

/// A slot's learned limit and what bounds it, behind the slot's own lock.
struct Learning {
    limiter: Limiter,
    /// The supervisor's ceiling on the capacity ([`Slot::set_capacity`]); `None`: none.
    ceiling: Option<usize>,
    /// When the limit last rose.
    rose_at: Option<Instant>,
}

impl Learning {
    /// The capacity the worker has now: the learned limit under the ceiling.
    fn capacity(&self) -> usize {
        let limit = self.limiter.limit();
        self.ceiling.map_or(limit, |ceiling| limit.min(ceiling))
    }
}

/// A learning slot's limit as `molt status` and the scaler see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Learned {
    /// The learned limit, before any ceiling.
    pub(crate) limit: usize,
    /// The latency the worker shows without queueing, once measured.
    pub(crate) baseline: Option<Duration>,
    /// The latency of the last window of samples.
    pub(crate) last_window: Option<Duration>,
    /// While the limit is still finding its level from below ([`Limiter::is_rising`]), no
    /// ceiling holds it and the worker is full: since when it has been full or, if later,
    /// when the limit last rose. Each rise comes one window of answers at the limit after
    /// the last (or after the worker became full).
    pub(crate) rising_since: Option<Instant>,
}

/// A slot's capacity that is the dispatcher's.
const INHERIT: usize = usize::MAX;
/// A slot's own capacity without a bound.
const UNLIMITED: usize = usize::MAX - 1;

impl Slot {
    pub(crate) fn new(id: u64, addr: SocketAddr, pid: i32, request_limit: Option<u64>) -> Self {
        Slot {
            id,
            addr,
            pid,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            request_limit: AtomicU64::new(request_limit.unwrap_or(u64::MAX)),
            created: Instant::now(),
            idle_since_ms: AtomicU64::new(0),
            idle: Notify::new(),
            upstreams: IdleUpstreams::default(),
            refused: AtomicBool::new(false),
            capacity: AtomicUsize::new(INHERIT),
            peak: AtomicUsize::new(0),
            learning: None,
            fixed: AtomicBool::new(false),
            serial: AtomicBool::new(false),
            full_since_ms: AtomicU64::new(NOT_FULL),
            busy_since_us: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            warmed: AtomicBool::new(false),
        }
    }

    /// How long, since it was created, the worker has held at least one request: what
    /// the utilization the pool reports is made of (see `pool::report`).
    pub(crate) fn busy_time(&self) -> Duration {
        let mut us = self.busy_us.load(Ordering::Relaxed);
        if self.in_flight() > 0 {
            let now = micros(self.created.elapsed());
            us += now.saturating_sub(self.busy_since_us.load(Ordering::Relaxed));
        }
        Duration::from_micros(us)
    }

    /// Marks the worker warm: molt's warm-up requests were answered.
    pub(crate) fn mark_warmed(&self) {
        self.warmed.store(true, Ordering::Release);
    }

    /// How warm the worker is: the requests it has served, and [`WARM_AFTER`] more once
    /// molt's warm-up requests were answered.
    pub(crate) fn warmth(&self) -> u64 {
        let warmed = if self.warmed.load(Ordering::Acquire) {
            WARM_AFTER
        } else {
            0
        };
        self.served().saturating_add(warmed)
    }

    /// Has this worker learn its capacity from its latency, within `settings`.
    #[must_use]
    pub(crate) fn learning(mut self, settings: LimiterSettings) -> Self {
        let learning = Learning {
            limiter: Limiter::new(settings),
            ceiling: None,
            rose_at: None,
        };
        self.capacity = AtomicUsize::new(learning.capacity());
        self.learning = Some(Mutex::new(learning));
        self
    }

    /// Gives this worker a capacity of its own: `None` is unlimited, `Some(0)` takes no
    /// request (a preforking master with no child yet). On a worker that learns its
    /// capacity this is a ceiling over the learned limit instead, `None` none.
    // Only tests bound a learned limit from outside: an adopted master's capacity is
    // fixed instead (see `fix_capacity`).
    #[cfg(test)]
    pub(crate) fn set_capacity(&self, capacity: Option<usize>) {
        if let Some(learning) = self.limiter() {
            let mut learning = lock(learning);
            learning.ceiling = capacity;
            self.store_capacity(Some(learning.capacity()));
            return;
        }
        self.store_capacity(capacity);
    }

    /// Gives this worker a capacity of its own that is no longer learned, whatever it was
    /// created with: an adopted preforking master takes one request per child, each
    /// child's own server deciding the rest (a worker whose latency is its children's
    /// queue would learn the wrong thing).
    pub(crate) fn fix_capacity(&self, capacity: Option<usize>) {
        self.fixed.store(true, Ordering::Release);
        self.store_capacity(capacity);
    }

    /// Says whether each of the worker's processes takes one request at a time: an
    /// adopted master's children with one request each, its capacity one per child.
    /// Request buffering's `auto` then reads its bodies first, as for any worker with a
    /// capacity of 1 ([`Dispatcher::one_at_a_time`]): a slow upload would hold a child.
    /// It is given [`master_backlog`] more, which only whole requests reach.
    pub(crate) fn set_serial(&self, serial: bool) {
        self.serial.store(serial, Ordering::Release);
    }

    /// The limiter, unless the capacity is not learned.
    fn limiter(&self) -> Option<&Mutex<Learning>> {
        if self.fixed.load(Ordering::Acquire) {
            return None;
        }
        self.learning.as_ref()
    }

    /// Stores a capacity of the slot's own; `None` is unlimited.
    fn store_capacity(&self, capacity: Option<usize>) {
        let stored = capacity.map_or(UNLIMITED, |n| n.min(UNLIMITED - 1));
        self.capacity.store(stored, Ordering::Release);
    }

    /// Records one answered request on a worker that learns its capacity: `latency` from
    /// sending it until the response head, `in_flight` the worker's count right after
    /// this request's lease was taken, `now` the time of the answer. Returns whether the
    /// capacity grew, so that the caller serves the queue. Call it before the lease is
    /// released, so that the next dispatch uses the new limit.
    fn answered(&self, latency: Duration, in_flight: usize, now: Instant) -> bool {
        let Some(learning) = self.limiter() else {
            return false;
        };
        let mut learning = lock(learning);
        let (limit, capacity) = (learning.limiter.limit(), learning.capacity());
        learning.limiter.on_sample(latency, in_flight, now);
        if learning.limiter.limit() == limit {
            return false;
        }
        if learning.limiter.limit() > limit {
            learning.rose_at = Some(now);
        }
        let grown = learning.capacity();
        self.store_capacity(Some(grown));
        grown > capacity
    }

    /// The learned limit, or `None` when this worker's capacity is not learned.
    pub(crate) fn learned(&self) -> Option<Learned> {
        let learning = lock(self.limiter()?);
        let limiter = &learning.limiter;
        let held = learning
            .ceiling
            .is_some_and(|ceiling| ceiling <= limiter.limit());
        let full_since = match self.full_since_ms.load(Ordering::Relaxed) {
            NOT_FULL => None,
            ms => Some(self.created + Duration::from_millis(ms)),
        };
        Some(Learned {
            limit: limiter.limit(),
            baseline: limiter.baseline(),
            last_window: limiter.last_window(),
            rising_since: full_since
                .filter(|_| limiter.is_rising() && !held)
                .map(|full| learning.rose_at.map_or(full, |rose| rose.max(full))),
        })
    }

    /// Gives the worker the dispatcher's capacity again.
    pub(crate) fn inherit_capacity(&self) {
        self.serial.store(false, Ordering::Release);
        self.capacity.store(INHERIT, Ordering::Release);
    }

    /// Whether the worker takes one more request while it holds `busy`; `default` is the
    /// dispatcher's capacity, 0 unlimited.
    fn admits(&self, busy: usize, default: usize) -> bool {
        match self.capacity.load(Ordering::Acquire) {
            INHERIT => default == 0 || busy < default,
            UNLIMITED => true,
            own => busy < own + self.backlog(own),
        }
    }

    /// Requests it is given beyond its own capacity `own`, to wait in its backlog: on a
    /// serial master, [`master_backlog`].
    fn backlog(&self, own: usize) -> usize {
        if self.serial.load(Ordering::Acquire) {
            master_backlog(own)
        } else {
            0
        }
    }

    /// Of its requests, those waiting in its backlog for a child to free.
    fn waiting_in_backlog(&self) -> usize {
        match self.capacity.load(Ordering::Acquire) {
            INHERIT | UNLIMITED => 0,
            own if self.backlog(own) > 0 => self.in_flight().saturating_sub(own),
            _ => 0,
        }
    }

    /// The most requests the worker held at once since the last call.
    pub(crate) fn take_peak(&self) -> usize {
        self.peak.swap(self.in_flight(), Ordering::AcqRel)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Since when the worker has held no request, or None while it holds one.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        (self.in_flight() == 0).then(|| {
            self.created + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed))
        })
    }

    /// Whether the worker has been handed all the requests it may serve.
    pub(crate) fn at_request_limit(&self) -> bool {
        self.served() >= self.request_limit.load(Ordering::Relaxed)
    }

    /// Lifts the request limit: an adopted preforking master's requests are its children's.
    pub(crate) fn clear_request_limit(&self) {
        self.request_limit.store(u64::MAX, Ordering::Relaxed);
    }

    /// Requests this worker has been handed so far.
    pub(crate) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Resolves once no request holds this worker.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a release between the check and the await is
            // not missed.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Takes the worker out of routing after it refused a connection; true the first time.
    pub(crate) fn mark_refused(&self) -> bool {
        self.upstreams.clear();
        !self.refused.swap(true, Ordering::AcqRel)
    }

    /// After a connection broke: when the worker itself is exiting (killed, crashed), it
    /// takes no more requests. Until it is reaped it would still look routable, and a
    /// request sent to it then would fail though the worker never held it.
    pub(crate) fn check_exiting(&self) {
        let exiting = crate::sys::memory::read_stat(std::path::Path::new("/proc"), self.pid)
            .is_none_or(|stat| stat.is_exiting());
        if exiting {
            self.refused.store(true, Ordering::Release);
        }
    }

    fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Acquire)
    }
}

/// Why a request could not be given a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overload {
    /// The queue already held `MOLT_MAX_QUEUE` requests.
    QueueFull { queued: usize },
    /// The request waited `MOLT_QUEUE_TIMEOUT` without a worker coming free.
    QueueTimeout,
    /// No worker will ever take it: molt gave up booting the app, or is stopping with no
    /// worker left to serve ([`Dispatcher::close`]).
    Closed,
}

struct Waiter {
    tx: oneshot::Sender<Lease>,
    /// The proxy thread whose task waits: a lease sent from another thread wakes that
    /// one through the kernel, where one sent on its own thread is a push onto its run
    /// queue.
    thread: usize,
    /// How many leases went to waiters behind this one, of the thread that gave each
    /// back (see [`next_waiter`]).
    passed: usize,
}

/// How far behind the front a waiter of the thread giving a lease back may be to take
/// it first, and how many times the front may be passed over so: a lease handed across
/// threads costs both a wake through the kernel, and under learned concurrency nearly
/// every request waits for one.
const PASS_OVER: usize = 4;

/// The place in `queue` of the waiter the next lease goes to, when thread `here` gives it:
/// the first waiter of `here` among the first [`PASS_OVER`] behind the front, unless the
/// front was passed over that many times; else the front. The front thus waits at most
/// [`PASS_OVER`] leases longer than it would in order.
fn next_waiter(queue: &VecDeque<Waiter>, here: usize) -> usize {
    match queue.front() {
        Some(front) if front.thread != here && front.passed < PASS_OVER => queue
            .iter()
            .take(PASS_OVER + 1)
            .position(|w| w.thread == here && !w.tx.is_closed())
            .unwrap_or(0),
        _ => 0,
    }
}

struct State {
    pool: Arc<[Arc<Slot>]>,
    queue: VecDeque<Waiter>,
}

/// While requests keep queueing without the queue growing past what the supervisor last
/// saw, they wake it at most this often (in milliseconds). Waking it for every queued
/// request cost a saturated pool about a sixth of molt's CPU (ARCHITECTURE.md,
/// "Threads"): the supervisor plans from the queue's length, which one more request of a
/// steady queue does not change.
const ATTENTION_EVERY_MS: u64 = 100;

/// Upper bounds, in milliseconds, of the queue-wait histogram's buckets.
const WAIT_BUCKETS_MS: [u64; 14] = [
    0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000,
];

/// Hands out workers to requests.
pub(crate) struct Dispatcher {
    state: Mutex<State>,
    /// Wakes the supervisor when the pool may need it: the queue grew past what the
    /// supervisor last saw ([`Dispatcher::attend`]), a request queued
    /// [`ATTENTION_EVERY_MS`] or more after the last wake, or a worker reached its
    /// request limit.
    pub(crate) attention: Notify,
    /// The queue's length when the supervisor last looked at it.
    attended: AtomicUsize,
    /// When a queued request last woke the supervisor, in milliseconds since `born`.
    attention_at_ms: AtomicU64,
    /// tokio's clock, which tests can pause.
    born: tokio::time::Instant,
    /// Requests handed to workers since the last [`Dispatcher::take_stats`].
    handed: AtomicU64,
    /// Queue waits since the last [`Dispatcher::take_stats`], by [`WAIT_BUCKETS_MS`],
    /// with one more bucket for longer waits.
    waits: [AtomicU64; WAIT_BUCKETS_MS.len() + 1],
    /// Requests one worker takes at once; 0 is unlimited.
    capacity: usize,
    max_queue: usize,
    queue_timeout: Duration,
    /// Set by [`Dispatcher::close`], under the state's lock.
    closed: AtomicBool,
    /// The queue's length, written under the state's lock whenever it changes, so that a
    /// lease given back with nobody waiting takes no lock (see [`Lease`]'s `drop`).
    waiting: AtomicUsize,
}

/// One request's claim on one worker, released on drop.
pub(crate) struct Lease {
    slot: Arc<Slot>,
    dispatcher: Arc<Dispatcher>,
    /// The worker's in-flight count right after this lease was taken, itself included.
    in_flight: usize,
    armed: bool,
}

impl Lease {
    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// The worker answered this request's head, sent at `sent`: a sample of its learned
    /// limit, if it learns one. Waiting requests get any capacity it gained.
    pub(crate) fn answered(&self, sent: Instant) {
        // One reading of the clock for both.
        let now = Instant::now();
        self.answered_after(now.saturating_duration_since(sent), now);
    }

    fn answered_after(&self, latency: Duration, now: Instant) {
        if self.slot.answered(latency, self.in_flight, now) {
            self.dispatcher.capacity_grew();
        }
    }

    /// Gives the worker back without serving the queue (the caller holds the lock).
    fn disarm(mut self) {
        self.armed = false;
        release(&self.slot);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            release(&self.slot);
            // Most leases go back with nobody waiting: the queue is served only when
            // someone is, so that the threads' requests do not all take one lock twice.
            // The fence pairs with the one after a request joins the queue (`acquire`).
            fence(Ordering::SeqCst);
            if self.dispatcher.waiting.load(Ordering::SeqCst) > 0 {
                self.dispatcher.pump();
            }
        }
    }
}

fn release(slot: &Slot) {
    if slot.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
        let elapsed = slot.created.elapsed();
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        slot.idle_since_ms.store(ms, Ordering::Relaxed);
        let busy = micros(elapsed).saturating_sub(slot.busy_since_us.load(Ordering::Relaxed));
        slot.busy_us.fetch_add(busy, Ordering::Relaxed);
        slot.idle.notify_waiters();
    }
}

/// Requests waiting in masters' backlogs ([`master_backlog`]).
fn in_backlogs(state: &State) -> usize {
    state.pool.iter().map(|s| s.waiting_in_backlog()).sum()
}

/// Requests waiting, as the supervisor's wake-ups count them: in molt's queue (those
/// that gave up included, until they are swept) and in masters' backlogs.
fn waiting(state: &State) -> usize {
    state.queue.len() + in_backlogs(state)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code holding these locks can panic part-way through an update, so a poisoned
    // lock still guards consistent data.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where a worker stands for the next request, lowest first: cold or not, how far from
/// warm a cold one is, how busy it is.
type Rank = (bool, u64, usize);

/// The worker to take the next request, among those under capacity that have not
/// refused a connection: warm first, cold last (ARCHITECTURE.md, "A request").
///
/// - A warm worker goes before a cold one (its [`Slot::warmth`] is below [`WARM_AFTER`]): a fresh process is slow on
///   its first requests (code loaded lazily, caches empty), so it takes a request only
///   when no warm worker has room.
/// - Among warm workers, the least busy. Ties go to the earliest worker in the pool, which
///   leaves later ones idle so that they can be scaled down.
/// - Among cold workers, the one that has served the most, then the least busy: the cold
///   requests go to one worker, which warms up soonest, and a second cold worker (a
///   rolling restart's next replacement) takes traffic only when the first is full.
pub(crate) fn choose(pool: &[Arc<Slot>], capacity: usize) -> Option<&Arc<Slot>> {
    let mut best: Option<(&Arc<Slot>, Rank)> = None;
    for slot in pool {
        let busy = slot.in_flight();
        if !slot.admits(busy, capacity) || slot.at_request_limit() || slot.is_refused() {
            continue;
        }
        let warmth = slot.warmth();
        let cold = warmth < WARM_AFTER;
        let key = (cold, if cold { u64::MAX - warmth } else { 0 }, busy);
        if best.is_none_or(|(_, best_key)| key < best_key) {
            best = Some((slot, key));
        }
    }
    best.map(|(slot, _)| slot)
}

impl Dispatcher {
    pub(crate) fn new(capacity: usize, max_queue: usize, queue_timeout: Duration) -> Arc<Self> {
        Arc::new(Dispatcher {
            state: Mutex::new(State {
                pool: Arc::from(Vec::new()),
                queue: VecDeque::new(),
            }),
            attention: Notify::new(),
            attended: AtomicUsize::new(0),
            attention_at_ms: AtomicU64::new(0),
            born: tokio::time::Instant::now(),
            handed: AtomicU64::new(0),
            waits: std::array::from_fn(|_| AtomicU64::new(0)),
            capacity,
            max_queue,
            queue_timeout,
            closed: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Replaces the routable workers and serves waiting requests from any new capacity.
    pub(crate) fn publish(self: &Arc<Self>, pool: Vec<Arc<Slot>>) {
        lock(&self.state).pool = Arc::from(pool);
        self.pump();
    }

    /// Requests a worker takes at once now: its own capacity, learned or set, else the
    /// dispatcher's; `None` is unlimited.
    pub(crate) fn capacity_of(&self, slot: &Slot) -> Option<usize> {
        match slot.capacity.load(Ordering::Acquire) {
            INHERIT => (self.capacity > 0).then_some(self.capacity),
            UNLIMITED => None,
            own => Some(own),
        }
    }

    /// What a worker takes at once before any is ready to say: the fixed concurrency, or
    /// where a learned limit starts; `None` is unlimited.
    pub(crate) fn default_capacity(&self) -> Option<usize> {
        (self.capacity > 0).then_some(self.capacity)
    }

    /// Whether a request arriving now may go to a worker that takes one request at a
    /// time: some ready worker's capacity is 1 or its processes take one each
    /// ([`Slot::set_serial`]), or, with none ready yet, the workers start at 1. Request
    /// buffering's `auto` asks this for every request with a body.
    pub(crate) fn one_at_a_time(&self) -> bool {
        let pool = Arc::clone(&lock(&self.state).pool);
        if pool.is_empty() {
            return self.capacity == 1;
        }
        pool.iter()
            .any(|slot| slot.serial.load(Ordering::Acquire) || self.capacity_of(slot) == Some(1))
    }

    /// Ids of the workers that take new requests, as last published.
    #[cfg(test)]
    pub(crate) fn routable(&self) -> Vec<u64> {
        lock(&self.state).pool.iter().map(|s| s.id).collect()
    }

    /// Requests waiting for a worker now: in molt's queue, and in the backlog of an
    /// adopted master whose children are all busy ([`master_backlog`]).
    pub(crate) fn queued(&self) -> usize {
        let state = lock(&self.state);
        let in_queue = state.queue.iter().filter(|w| !w.tx.is_closed()).count();
        in_queue + in_backlogs(&state)
    }

    /// Claims a worker, waiting in the queue if none is free.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Lease, Overload> {
        let rx = {
            let mut state = lock(&self.state);
            if self.closed.load(Ordering::Acquire) {
                return Err(Overload::Closed);
            }
            // Earlier arrivals go first: a new request takes a free worker directly only
            // when nobody is waiting.
            if state.queue.is_empty() {
                if let Some(slot) = choose(&state.pool, self.capacity) {
                    let lease = self.lease(slot);
                    // One that waits in a master's backlog wakes the supervisor as one
                    // queued here would: the master may need another child.
                    if slot.waiting_in_backlog() > 0 && self.needs_attention(waiting(&state)) {
                        self.attention.notify_one();
                    }
                    return Ok(lease);
                }
            }
            if state.queue.len() >= self.max_queue {
                // Waiters that gave up leave their entries behind; only count live ones.
                state.queue.retain(|w| !w.tx.is_closed());
                self.queue_changed(&state);
                if state.queue.len() >= self.max_queue {
                    return Err(Overload::QueueFull {
                        queued: state.queue.len(),
                    });
                }
            }
            let (tx, rx) = oneshot::channel();
            state.queue.push_back(Waiter {
                tx,
                thread: proxy_thread(),
                passed: 0,
            });
            self.queue_changed(&state);
            // A lease given back since the worker was chosen above may have seen no one
            // waiting, and taken no lock to serve the queue: this looks at the workers
            // again. With the fence here and the one after each release, at least one of
            // the two sees the other (the queue's length, or the freed capacity).
            fence(Ordering::SeqCst);
            self.serve_queue(&mut state);
            (rx, self.needs_attention(waiting(&state)))
        };
        let (rx, wake) = rx;
        if wake {
            // The pool may need another worker.
            self.attention.notify_one();
        }
        let queued_at = tokio::time::Instant::now();
        match tokio::time::timeout(self.queue_timeout, rx).await {
            Ok(Ok(lease)) => {
                self.record_wait(queued_at.elapsed());
                Ok(lease)
            }
            // The sender is dropped unsent only by `close`, or with the dispatcher.
            Ok(Err(_)) => Err(Overload::Closed),
            Err(_) => Err(Overload::QueueTimeout),
        }
    }

    /// Whether a request that made the queue `queued` long wakes the supervisor: the
    /// queue is longer than it last saw, or the last wake is [`ATTENTION_EVERY_MS`] ago.
    fn needs_attention(&self, queued: usize) -> bool {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due =
            now.saturating_sub(self.attention_at_ms.load(Ordering::Relaxed)) >= ATTENTION_EVERY_MS;
        let wake = queued > self.attended.load(Ordering::Relaxed) || due;
        if wake {
            self.attention_at_ms.store(now, Ordering::Relaxed);
        }
        wake
    }

    /// The supervisor is about to plan from the queue as it is now: only a longer queue,
    /// or one that lasts, wakes it again.
    pub(crate) fn attend(&self) {
        let queued = waiting(&lock(&self.state));
        self.attended.store(queued, Ordering::Relaxed);
    }

    fn record_wait(&self, wait: Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let bucket = WAIT_BUCKETS_MS
            .iter()
            .position(|&bound| ms <= bound)
            .unwrap_or(WAIT_BUCKETS_MS.len());
        self.waits[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests handed out, and the 95th percentile of queue waits (an upper bound, from
    /// the histogram), since the previous call; requests that did not queue waited 0 ms.
    pub(crate) fn take_stats(&self) -> (u64, Duration) {
        let handed = self.handed.swap(0, Ordering::Relaxed);
        let counts: Vec<u64> = self
            .waits
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let queued: u64 = counts.iter().sum();
        // Requests that never queued sit in the 0 ms bucket.
        let mut below = handed.saturating_sub(queued);
        let rank = handed - handed / 20;
        let mut p95 = 0;
        for (i, count) in counts.iter().enumerate() {
            if below >= rank {
                break;
            }
            below += count;
            p95 = WAIT_BUCKETS_MS
                .get(i)
                .copied()
                .unwrap_or(2 * WAIT_BUCKETS_MS[WAIT_BUCKETS_MS.len() - 1]);
        }
        (handed, Duration::from_millis(p95))
    }

    fn lease(self: &Arc<Self>, slot: &Arc<Slot>) -> Lease {
        let busy = slot.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        slot.peak.fetch_max(busy, Ordering::AcqRel);
        if busy == 1 {
            let now = micros(slot.created.elapsed());
            slot.busy_since_us.store(now, Ordering::Relaxed);
        }
        if slot.learning.is_some() {
            let full = self
                .capacity_of(slot)
                .is_some_and(|capacity| busy >= capacity);
            let since = slot.full_since_ms.load(Ordering::Relaxed);
            if full && since == NOT_FULL {
                let ms = u64::try_from(slot.created.elapsed().as_millis()).unwrap_or(NOT_FULL - 1);
                slot.full_since_ms.store(ms, Ordering::Relaxed);
            } else if !full && since != NOT_FULL {
                slot.full_since_ms.store(NOT_FULL, Ordering::Relaxed);
            }
        }
        self.handed.fetch_add(1, Ordering::Relaxed);
        if slot.served.fetch_add(1, Ordering::Relaxed) + 1
            == slot.request_limit.load(Ordering::Relaxed)
        {
            // The worker takes no more requests; the supervisor replaces it.
            self.attention.notify_one();
        }
        Lease {
            slot: Arc::clone(slot),
            dispatcher: Arc::clone(self),
            in_flight: busy,
            armed: true,
        }
    }

    /// No worker will take a request again: every waiting request is answered now (503,
    /// with `Retry-After`, never a closed connection), and so is every later one.
    pub(crate) fn close(&self) {
        let mut state = lock(&self.state);
        self.closed.store(true, Ordering::Release);
        // Dropping a waiter's sender wakes it with `Overload::Closed`.
        state.queue.clear();
        self.queue_changed(&state);
    }

    /// Serves waiting requests after a worker's capacity grew.
    pub(crate) fn capacity_grew(self: &Arc<Self>) {
        self.pump();
    }

    /// Hands free capacity to waiting requests, oldest first.
    fn pump(self: &Arc<Self>) {
        let mut state = lock(&self.state);
        self.serve_queue(&mut state);
    }

    /// Keeps [`Dispatcher::waiting`] the queue's length; called under the state's lock
    /// after every change to the queue.
    fn queue_changed(&self, state: &State) {
        self.waiting.store(state.queue.len(), Ordering::SeqCst);
    }

    /// [`Dispatcher::pump`] with the state's lock held.
    fn serve_queue(self: &Arc<Self>, state: &mut State) {
        self.serve_queue_from(state, proxy_thread());
    }

    /// [`Dispatcher::serve_queue`] on proxy thread `here`.
    fn serve_queue_from(self: &Arc<Self>, state: &mut State, here: usize) {
        while let Some(front) = state.queue.front() {
            if front.tx.is_closed() {
                state.queue.pop_front();
                continue;
            }
            let pool = Arc::clone(&state.pool);
            let Some(slot) = choose(&pool, self.capacity) else {
                break;
            };
            let lease = self.lease(slot);
            let at = next_waiter(&state.queue, here);
            if at > 0 {
                state.queue[0].passed += 1;
            }
            let waiter = state
                .queue
                .remove(at)
                .expect("a waiter at a place found in the queue");
            if let Err(lease) = waiter.tx.send(lease) {
                // The waiter timed out in between; the worker is still free.
                lease.disarm();
            }
        }
        self.queue_changed(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn slot(id: u64, busy: usize) -> Arc<Slot> {
        let s = Slot::new(id, SocketAddr::from(([127, 0, 0, 1], 1)), 0, None);
        s.in_flight.store(busy, Ordering::Relaxed);
        Arc::new(s)
    }

    /// A lease given back on one thread just as a request joins the queue on another
    /// reaches that request: a lease given back takes no lock while nobody waits, and
    /// the request, once queued, looks at the workers again.
    #[test]
    fn a_lease_given_back_as_a_request_queues_reaches_it() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let d = Dispatcher::new(1, 16, Duration::from_secs(30));
            d.publish(vec![slot(1, 0)]);
            for round in 0..5_000 {
                let held = d.acquire().await.expect("the worker is free");
                let waiting = tokio::spawn({
                    let d = Arc::clone(&d);
                    async move { d.acquire().await.map(drop) }
                });
                let given_back = std::thread::spawn(move || drop(held));
                given_back.join().expect("given back");
                tokio::time::timeout(Duration::from_secs(5), waiting)
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: the queued request got no worker"))
                    .expect("the task")
                    .expect("a lease");
            }
        });
    }

    fn ids(pick: Option<&Arc<Slot>>) -> Option<u64> {
        pick.map(|s| s.id)
    }

    #[test]
    fn picks_least_busy_under_capacity() {
        let pool = [slot(1, 2), slot(2, 1), slot(3, 3)];
        assert_eq!(ids(choose(&pool, 0)), Some(2));
        assert_eq!(ids(choose(&pool, 2)), Some(2));
        assert_eq!(ids(choose(&pool, 1)), None);
    }

    #[test]
    fn a_worker_with_a_capacity_of_its_own_is_held_to_it() {
        let pool = [slot(1, 2), slot(2, 3)];
        pool[1].set_capacity(Some(4));
        // The dispatcher's capacity of 2 holds the first; the second takes a fourth.
        assert_eq!(ids(choose(&pool, 2)), Some(2));
        pool[1].set_capacity(Some(3));
        assert_eq!(ids(choose(&pool, 2)), None);
        pool[0].set_capacity(None);
        assert_eq!(ids(choose(&pool, 2)), Some(1), "None is unlimited");
        pool[0].set_capacity(Some(0));
        assert_eq!(ids(choose(&pool, 0)), None, "Some(0) takes nothing");
    }

    #[test]
    fn ties_go_to_the_earliest_worker() {
        let pool = [slot(4, 0), slot(5, 0)];
        assert_eq!(ids(choose(&pool, 1)), Some(4));
    }

    /// A slot that has served `served` requests and holds `busy`.
    fn served_slot(id: u64, served: u64, busy: usize) -> Arc<Slot> {
        let s = slot(id, busy);
        s.served.store(served, Ordering::Relaxed);
        s
    }

    #[test]
    fn warm_workers_go_first_and_cold_ones_last() {
        // A fresh worker (3) is idle, the warm ones are busy but have room: they go first.
        let pool = [
            served_slot(1, 500, 2),
            served_slot(2, WARM_AFTER, 1),
            served_slot(3, 0, 0),
        ];
        assert_eq!(ids(choose(&pool, 3)), Some(2), "the least busy warm one");
        assert_eq!(ids(choose(&pool, 2)), Some(2));
        // Once the warm ones are full, the cold one takes the request.
        assert_eq!(ids(choose(&pool, 1)), Some(3));
        // A worker molt warmed up counts as warm before serving anything.
        let pool = [served_slot(1, 500, 1), served_slot(2, 0, 0)];
        assert_eq!(ids(choose(&pool, 2)), Some(1));
        pool[1].mark_warmed();
        assert_eq!(ids(choose(&pool, 2)), Some(2));
    }

    #[test]
    fn among_cold_workers_the_warmest_takes_the_traffic() {
        // A rolling restart's two replacements: the one that has served more takes the
        // requests while it has room, so one cold worker at a time warms up.
        let pool = [
            served_slot(1, 500, 1),
            served_slot(2, 3, 1),
            served_slot(3, 12, 1),
        ];
        assert_eq!(ids(choose(&pool, 2)), Some(1), "warm first");
        pool[0].in_flight.store(2, Ordering::Relaxed);
        assert_eq!(ids(choose(&pool, 2)), Some(3), "then the warmest cold one");
        pool[2].in_flight.store(2, Ordering::Relaxed);
        assert_eq!(
            ids(choose(&pool, 2)),
            Some(2),
            "then the next, as the queue needs"
        );
    }

    /// Whether the supervisor was woken since it last looked; takes the wake.
    async fn woken(d: &Dispatcher) -> bool {
        tokio::time::timeout(Duration::from_millis(20), d.attention.notified())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_queue_wakes_the_supervisor_only_when_it_grows_or_lasts() {
        let d = Dispatcher::new(1, 10, Duration::from_secs(60));
        d.publish(vec![slot(1, 0)]);
        let held = d.acquire().await.expect("free");
        // Requests that queue, then hold the worker until aborted.
        let queue = |n: usize| -> Vec<tokio::task::JoinHandle<()>> {
            (0..n)
                .map(|_| {
                    let d = Arc::clone(&d);
                    tokio::spawn(async move {
                        let _lease = d.acquire().await;
                        std::future::pending::<()>().await;
                    })
                })
                .collect()
        };
        let first = queue(2);
        queued(&d, 2).await;
        assert!(woken(&d).await, "the first queued request wakes it");
        d.attend();
        // The request in front takes the worker: the queue is 1 long, then 2 again, as
        // long as the supervisor last saw it.
        drop(held);
        queued(&d, 1).await;
        let _steady = queue(1);
        queued(&d, 2).await;
        assert!(!woken(&d).await, "a steady queue does not wake it");
        let _longer = queue(1);
        queued(&d, 3).await;
        assert!(woken(&d).await, "a longer queue does");
        d.attend();
        tokio::time::sleep(Duration::from_millis(ATTENTION_EVERY_MS)).await;
        first[0].abort();
        queued(&d, 2).await;
        let _lasting = queue(1);
        queued(&d, 3).await;
        assert!(woken(&d).await, "a queue that lasts wakes it again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_a_masters_backlog_is_queued_and_wakes_the_supervisor() {
        let d = Dispatcher::new(1, 10, Duration::from_secs(60));
        let master = slot(1, 0);
        master.fix_capacity(Some(2));
        master.set_serial(true);
        d.publish(vec![Arc::clone(&master)]);
        let _in_children = [d.acquire().await, d.acquire().await];
        assert!(!woken(&d).await, "the children take these");
        assert_eq!(d.queued(), 0);
        let _in_backlog = d.acquire().await.expect("room in the backlog");
        assert_eq!(d.queued(), 1);
        assert!(woken(&d).await, "the master may need another child");
        d.attend();
        let _also = d.acquire().await.expect("room in the backlog");
        assert!(woken(&d).await, "the wait grew");
        assert_eq!(d.queued(), 2);
        let mut rest = Vec::new();
        for _ in 2..master_backlog(2) {
            rest.push(d.acquire().await.expect("room in the backlog"));
        }
        let full = tokio::time::timeout(Duration::from_millis(10), d.acquire()).await;
        assert!(
            full.is_err(),
            "the backlog holds master_backlog's count, no more"
        );
        assert_eq!(
            d.queued(),
            master_backlog(2),
            "one that gave up is not counted"
        );
        rest.clear();
        master.set_serial(false);
        assert_eq!(
            d.queued(),
            0,
            "a master of threaded children has no backlog"
        );
    }

    #[test]
    fn a_masters_backlog_is_bounded_in_all() {
        let backlogs: Vec<_> = [1, 2, 4, 16, 20].map(master_backlog).into();
        assert_eq!(
            backlogs,
            [16, 32, 32, 32, 40],
            "16 per child, 32 in all, 2 per child at least"
        );
    }

    async fn queued(d: &Dispatcher, n: usize) {
        while d.queued() != n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_worker_that_refused_a_connection_gets_no_more_requests() {
        let pool = [slot(1, 0), slot(2, 3)];
        assert!(pool[0].mark_refused());
        assert!(!pool[0].mark_refused(), "reported once");
        assert_eq!(ids(choose(&pool, 0)), Some(2));
        assert_eq!(
            ids(choose(&pool, 1)),
            None,
            "not even when no other is free"
        );
        // A request waits in the queue for a worker that can take it.
        let d = Dispatcher::new(1, 10, Duration::from_secs(5));
        d.publish(pool.to_vec());
        let d2 = Arc::clone(&d);
        let waiting = tokio::spawn(async move { d2.acquire().await.map(|l| l.slot().id) });
        while d.queued() == 0 {
            tokio::task::yield_now().await;
        }
        d.publish(vec![Arc::clone(&pool[0]), slot(3, 0)]);
        assert_eq!(waiting.await.expect("task ran"), Ok(3));
    }

    #[tokio::test]
    async fn queue_is_fifo_and_bounded() {
        let d = Dispatcher::new(1, 1, Duration::from_secs(5));
        d.publish(vec![slot(1, 0)]);
        let first = d.acquire().await.expect("a free worker");
        let d2 = Arc::clone(&d);
        let waiting = tokio::spawn(async move { d2.acquire().await.map(|l| l.slot().id) });
        while d.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            d.acquire().await.err(),
            Some(Overload::QueueFull { queued: 1 })
        );
        drop(first);
        assert_eq!(waiting.await.expect("task ran"), Ok(1));
        assert_eq!(d.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_wait_times_out_and_frees_its_place() {
        let d = Dispatcher::new(1, 1, Duration::from_millis(100));
        d.publish(vec![slot(1, 0)]);
        let held = d.acquire().await.expect("a free worker");
        assert_eq!(d.acquire().await.err(), Some(Overload::QueueTimeout));
        drop(held);
        let again = d.acquire().await.expect("the worker is free again");
        assert_eq!(again.slot().in_flight(), 1);
    }

    #[tokio::test]
    async fn a_closed_dispatcher_answers_the_queue_and_every_later_request() {
        let d = Dispatcher::new(1, 10, Duration::from_secs(60));
        let d2 = Arc::clone(&d);
        let waiting = tokio::spawn(async move { d2.acquire().await.map(|l| l.slot().id) });
        while d.queued() == 0 {
            tokio::task::yield_now().await;
        }
        d.close();
        assert_eq!(waiting.await.expect("task ran"), Err(Overload::Closed));
        d.publish(vec![slot(7, 0)]);
        assert_eq!(d.acquire().await.err(), Some(Overload::Closed));
    }

    #[tokio::test]
    async fn new_workers_serve_the_queue() {
        let d = Dispatcher::new(1, 10, Duration::from_secs(5));
        let d2 = Arc::clone(&d);
        let waiting = tokio::spawn(async move { d2.acquire().await.map(|l| l.slot().id) });
        while d.queued() == 0 {
            tokio::task::yield_now().await;
        }
        d.publish(vec![slot(7, 0)]);
        assert_eq!(waiting.await.expect("task ran"), Ok(7));
    }

    #[tokio::test]
    async fn released_lease_wakes_drain_waiters() {
        let d = Dispatcher::new(0, 10, Duration::from_secs(5));
        let s = slot(1, 0);
        d.publish(vec![Arc::clone(&s)]);
        let lease = d.acquire().await.expect("a free worker");
        let s2 = Arc::clone(&s);
        let idle = tokio::spawn(async move { s2.wait_idle().await });
        tokio::task::yield_now().await;
        assert!(!idle.is_finished());
        drop(lease);
        idle.await.expect("drain waiter finished");
        assert_eq!(s.served(), 1);
    }
}

#[cfg(test)]
mod affinity_tests {
    use super::tests::slot;
    use super::*;

    fn waiters(threads: &[usize]) -> (VecDeque<Waiter>, Vec<oneshot::Receiver<Lease>>) {
        let mut receivers = Vec::new();
        let queue = threads
            .iter()
            .map(|&thread| {
                let (tx, rx) = oneshot::channel();
                receivers.push(rx);
                Waiter {
                    tx,
                    thread,
                    passed: 0,
                }
            })
            .collect();
        (queue, receivers)
    }

    #[test]
    fn a_lease_goes_to_a_waiter_of_its_own_thread_near_the_front() {
        let (queue, _rx) = waiters(&[1, 0, 1, 0]);
        assert_eq!(next_waiter(&queue, 1), 0, "the front is the thread's own");
        assert_eq!(next_waiter(&queue, 0), 1, "one place behind");
        let (queue, _rx) = waiters(&[1, 1, 1, 1, 1, 0]);
        assert_eq!(next_waiter(&queue, 0), 0, "too far behind: the front");
        let (queue, _rx) = waiters(&[1, 1]);
        assert_eq!(next_waiter(&queue, 0), 0, "none of the thread's: the front");
    }

    #[test]
    fn a_waiter_that_gave_up_is_not_chosen_and_the_front_is_passed_over_a_bounded_number_of_times()
    {
        let (queue, mut rx) = waiters(&[1, 0, 0]);
        drop(rx.remove(1));
        assert_eq!(next_waiter(&queue, 0), 2, "the one that gave up is skipped");

        // Thread 0 gives back every lease and its requests keep coming: the front, of
        // thread 1, waits PASS_OVER leases longer, no more.
        let d = Dispatcher::new(1, 100, Duration::from_secs(5));
        d.publish(vec![slot(1, 0)]);
        let (mut front, mut receivers) = waiters(&[1]);
        let mut state = lock(&d.state);
        state.queue.append(&mut front);
        let mut served = Vec::new();
        for _ in 0..=PASS_OVER {
            let (mut more, rx) = waiters(&[0]);
            state.queue.append(&mut more);
            receivers.extend(rx);
            d.serve_queue_from(&mut state, 0);
            let at = receivers
                .iter_mut()
                .position(|rx| rx.try_recv().map(Lease::disarm).is_ok())
                .expect("a waiter got the lease");
            served.push(at);
        }
        assert_eq!(
            served.last(),
            Some(&0),
            "the front, once passed over {PASS_OVER} times"
        );
        assert!(served[..PASS_OVER].iter().all(|&at| at > 0));
    }
}

#[cfg(test)]
mod learning_tests {
    use super::*;

    fn learning(id: u64, initial: usize) -> Arc<Slot> {
        let slot = Slot::new(id, SocketAddr::from(([127, 0, 0, 1], 1)), 0, None);
        Arc::new(slot.learning(LimiterSettings { initial, max: 8 }))
    }

    #[tokio::test]
    async fn a_learned_limit_is_the_capacity_and_a_rise_serves_the_queue() {
        let d = Dispatcher::new(1, 10, Duration::from_secs(5));
        let s = learning(1, 1);
        assert_eq!(d.capacity_of(&s), Some(1));
        d.publish(vec![Arc::clone(&s)]);
        let held = d.acquire().await.expect("a free worker");
        let d2 = Arc::clone(&d);
        let waiting = tokio::spawn(async move { d2.acquire().await.map(|l| l.slot().id) });
        while d.queued() == 0 {
            tokio::task::yield_now().await;
        }
        // One window of answers, each with the worker at its limit and latency flat: the
        // limit rises to 2 and the waiting request is sent at once.
        let before = s.learned().expect("the slot learns");
        assert_eq!(before.limit, 1);
        assert!(before.rising_since.is_some(), "full, and rising");
        for _ in 0..32 {
            held.answered_after(Duration::from_millis(10), Instant::now());
        }
        assert_eq!(waiting.await.expect("task ran"), Ok(1));
        assert_eq!(d.capacity_of(&s), Some(2));
        let after = s.learned().expect("the slot learns");
        assert_eq!(after.limit, 2);
        assert_eq!(after.baseline, Some(Duration::from_millis(10)));
        assert!(after.rising_since >= before.rising_since, "since the rise");
    }

    #[test]
    fn a_ceiling_holds_a_learned_limit_below_it() {
        let d = Dispatcher::new(1, 10, Duration::from_secs(5));
        let s = learning(1, 4);
        s.set_capacity(Some(2));
        assert_eq!(d.capacity_of(&s), Some(2));
        // Held by the ceiling, the limit is not rising: the scaler need not wait for it.
        assert_eq!(
            s.learned().map(|l| (l.limit, l.rising_since)),
            Some((4, None))
        );
        s.set_capacity(Some(0));
        assert_eq!(
            ids(choose(&[Arc::clone(&s)], 1)),
            None,
            "a ceiling of 0 takes none"
        );
        s.set_capacity(None);
        assert_eq!(d.capacity_of(&s), Some(4), "no ceiling: the learned limit");
        assert!(
            s.learned().is_some_and(|l| l.rising_since.is_none()),
            "not full: nothing waits for its limit"
        );
        let leases: Vec<Lease> = (0..4).map(|_| d.lease(&s)).collect();
        assert!(
            s.learned().is_some_and(|l| l.rising_since.is_some()),
            "full"
        );
        drop(leases);
        assert!(
            s.learned().is_some_and(|l| l.rising_since.is_some()),
            "a release leaves it"
        );
        drop(d.lease(&s));
        assert!(
            s.learned().is_some_and(|l| l.rising_since.is_none()),
            "below capacity"
        );
    }

    #[test]
    fn a_slot_with_a_fixed_capacity_learns_nothing() {
        let d = Dispatcher::new(3, 10, Duration::from_secs(5));
        let s = Slot::new(1, SocketAddr::from(([127, 0, 0, 1], 1)), 0, None);
        assert_eq!(d.capacity_of(&s), Some(3));
        assert!(s.learned().is_none());
        assert!(!s.answered(Duration::from_millis(1), 1, Instant::now()));
        s.set_capacity(None);
        assert_eq!(d.capacity_of(&s), None, "unlimited");
        assert_eq!(
            Dispatcher::new(0, 1, Duration::from_secs(1)).default_capacity(),
            None
        );
    }

    #[test]
    fn buffering_follows_whether_a_ready_worker_takes_one_at_a_time() {
        let auto = Dispatcher::new(1, 10, Duration::from_secs(5));
        assert!(auto.one_at_a_time(), "none ready: they start at 1");
        auto.publish(vec![learning(1, 4), learning(2, 2)]);
        assert!(!auto.one_at_a_time());
        auto.publish(vec![learning(1, 4), learning(2, 1)]);
        assert!(auto.one_at_a_time(), "the second takes one at a time");
        let fixed = Dispatcher::new(1, 10, Duration::from_secs(5));
        fixed.publish(vec![slot_at(1)]);
        assert!(fixed.one_at_a_time(), "MOLT_WORKER_CONCURRENCY=1");
        for capacity in [0, 2] {
            let d = Dispatcher::new(capacity, 10, Duration::from_secs(5));
            assert!(!d.one_at_a_time());
            d.publish(vec![slot_at(1)]);
            assert!(!d.one_at_a_time(), "capacity {capacity}");
        }
    }

    fn slot_at(id: u64) -> Arc<Slot> {
        Arc::new(Slot::new(
            id,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            0,
            None,
        ))
    }

    fn ids(pick: Option<&Arc<Slot>>) -> Option<u64> {
        pick.map(|s| s.id)
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_at_its_request_limit_takes_no_more() {
        let d = Dispatcher::new(0, 10, Duration::from_secs(5));
        let limited = Arc::new(Slot::new(
            1,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            0,
            Some(2),
        ));
        let other = Arc::new(Slot::new(2, SocketAddr::from(([127, 0, 0, 1], 2)), 0, None));
        d.publish(vec![Arc::clone(&limited), Arc::clone(&other)]);
        for _ in 0..2 {
            let lease = d.acquire().await.expect("free");
            assert_eq!(lease.slot().id, 1);
        }
        assert!(limited.at_request_limit());
        // The limit woke the supervisor.
        tokio::time::timeout(Duration::from_secs(1), d.attention.notified())
            .await
            .expect("attention was notified");
        assert_eq!(d.acquire().await.expect("free").slot().id, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_waits_give_a_p95() {
        let d = Dispatcher::new(1, 10, Duration::from_secs(60));
        let s = Arc::new(Slot::new(1, SocketAddr::from(([127, 0, 0, 1], 1)), 0, None));
        d.publish(vec![Arc::clone(&s)]);
        // 19 requests that do not wait, then one that waits 300 ms.
        for _ in 0..19 {
            drop(d.acquire().await.expect("free"));
        }
        let held = d.acquire().await.expect("free");
        let d2 = Arc::clone(&d);
        let waiter = tokio::spawn(async move { d2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(held);
        waiter.await.expect("task").expect("served");
        let (handed, p95) = d.take_stats();
        assert_eq!(handed, 21);
        assert_eq!(
            p95,
            Duration::ZERO,
            "one wait in 21 is above the 95th percentile"
        );
        for _ in 0..3 {
            let held = d.acquire().await.expect("free");
            let d2 = Arc::clone(&d);
            let waiter = tokio::spawn(async move { d2.acquire().await.map(|_| ()) });
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(held);
            waiter.await.expect("task").expect("served");
        }
        let (handed, p95) = d.take_stats();
        assert_eq!(handed, 6);
        assert_eq!(p95, Duration::from_millis(50));
        assert_eq!(d.take_stats(), (0, Duration::ZERO));
    }
}
