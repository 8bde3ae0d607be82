//! Routing requests to workers: least-busy choice, a bounded FIFO queue, and leases.
//!
//! The supervisor publishes the routable workers as one immutable snapshot; the request
//! path takes a [`Lease`] on one of them. A lease counts as one in-flight request on its
//! worker until it is dropped, and dropping it hands the freed capacity to the oldest
//! waiting request. The lock here guards only the snapshot pointer and the queue, and is
//! held for a few instructions at a time; the supervisor never holds it across an await.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::run::proxy::upstream::IdleUpstreams;

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
        }
    }

    /// Gives this worker a capacity of its own: `None` is unlimited, `Some(0)` takes no
    /// request (a preforking master with no child yet).
    pub(crate) fn set_capacity(&self, capacity: Option<usize>) {
        let stored = capacity.map_or(UNLIMITED, |n| n.min(UNLIMITED - 1));
        self.capacity.store(stored, Ordering::Release);
    }

    /// Whether the worker takes one more request while it holds `busy`; `default` is the
    /// dispatcher's capacity, 0 unlimited.
    /// Gives the worker the dispatcher's capacity again.
    pub(crate) fn inherit_capacity(&self) {
        self.capacity.store(INHERIT, Ordering::Release);
    }

    fn admits(&self, busy: usize, default: usize) -> bool {
        match self.capacity.load(Ordering::Acquire) {
            INHERIT => default == 0 || busy < default,
            UNLIMITED => true,
            own => busy < own,
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
}

struct Waiter {
    tx: oneshot::Sender<Lease>,
}

struct State {
    pool: Arc<[Arc<Slot>]>,
    queue: VecDeque<Waiter>,
}

/// Upper bounds, in milliseconds, of the queue-wait histogram's buckets.
const WAIT_BUCKETS_MS: [u64; 14] = [
    0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000,
];

/// Hands out workers to requests.
pub(crate) struct Dispatcher {
    state: Mutex<State>,
    /// Wakes the supervisor when the pool may need it: a request had to queue, or a
    /// worker reached its request limit.
    pub(crate) attention: Notify,
    /// Requests handed to workers since the last [`Dispatcher::take_stats`].
    handed: AtomicU64,
    /// Queue waits since the last [`Dispatcher::take_stats`], by [`WAIT_BUCKETS_MS`],
    /// with one more bucket for longer waits.
    waits: [AtomicU64; WAIT_BUCKETS_MS.len() + 1],
    /// Requests one worker takes at once; 0 is unlimited.
    capacity: usize,
    max_queue: usize,
    queue_timeout: Duration,
}

/// One request's claim on one worker, released on drop.
pub(crate) struct Lease {
    slot: Arc<Slot>,
    dispatcher: Arc<Dispatcher>,
    armed: bool,
}

impl Lease {
    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.slot
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
            self.dispatcher.pump();
        }
    }
}

fn release(slot: &Slot) {
    if slot.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
        let ms = u64::try_from(slot.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        slot.idle_since_ms.store(ms, Ordering::Relaxed);
        slot.idle.notify_waiters();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code holding these locks can panic part-way through an update, so a poisoned
    // lock still guards consistent data.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The least-busy worker under capacity that has not refused a connection. Ties go to
/// the earliest worker in the pool, which leaves later ones idle so that they can be
/// scaled down.
pub(crate) fn choose(pool: &[Arc<Slot>], capacity: usize) -> Option<&Arc<Slot>> {
    let mut best: Option<&Arc<Slot>> = None;
    for slot in pool {
        let busy = slot.in_flight();
        if !slot.admits(busy, capacity) || slot.at_request_limit() || slot.is_refused() {
            continue;
        }
        if best.is_none_or(|b| busy < b.in_flight()) {
            best = Some(slot);
        }
    }
    best
}

impl Dispatcher {
    pub(crate) fn new(capacity: usize, max_queue: usize, queue_timeout: Duration) -> Arc<Self> {
        Arc::new(Dispatcher {
            state: Mutex::new(State {
                pool: Arc::from(Vec::new()),
                queue: VecDeque::new(),
            }),
            attention: Notify::new(),
            handed: AtomicU64::new(0),
            waits: std::array::from_fn(|_| AtomicU64::new(0)),
            capacity,
            max_queue,
            queue_timeout,
        })
    }

    /// Replaces the routable workers and serves waiting requests from any new capacity.
    pub(crate) fn publish(self: &Arc<Self>, pool: Vec<Arc<Slot>>) {
        lock(&self.state).pool = Arc::from(pool);
        self.pump();
    }

    /// Ids of the workers that take new requests, as last published.
    #[cfg(test)]
    pub(crate) fn routable(&self) -> Vec<u64> {
        lock(&self.state).pool.iter().map(|s| s.id).collect()
    }

    /// Requests waiting for a worker now.
    pub(crate) fn queued(&self) -> usize {
        lock(&self.state)
            .queue
            .iter()
            .filter(|w| !w.tx.is_closed())
            .count()
    }

    /// Claims a worker, waiting in the queue if none is free.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Lease, Overload> {
        let rx = {
            let mut state = lock(&self.state);
            // Earlier arrivals go first: a new request takes a free worker directly only
            // when nobody is waiting.
            if state.queue.is_empty() {
                if let Some(slot) = choose(&state.pool, self.capacity) {
                    return Ok(self.lease(slot));
                }
            }
            if state.queue.len() >= self.max_queue {
                // Waiters that gave up leave their entries behind; only count live ones.
                state.queue.retain(|w| !w.tx.is_closed());
                if state.queue.len() >= self.max_queue {
                    return Err(Overload::QueueFull {
                        queued: state.queue.len(),
                    });
                }
            }
            let (tx, rx) = oneshot::channel();
            state.queue.push_back(Waiter { tx });
            rx
        };
        // The pool may need another worker.
        self.attention.notify_one();
        let queued_at = tokio::time::Instant::now();
        match tokio::time::timeout(self.queue_timeout, rx).await {
            Ok(Ok(lease)) => {
                self.record_wait(queued_at.elapsed());
                Ok(lease)
            }
            // The sender is only dropped unsent when the dispatcher itself goes away.
            Ok(Err(_)) | Err(_) => Err(Overload::QueueTimeout),
        }
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
            armed: true,
        }
    }

    /// Serves waiting requests after a worker's capacity grew.
    pub(crate) fn capacity_grew(self: &Arc<Self>) {
        self.pump();
    }

    /// Hands free capacity to waiting requests, oldest first.
    fn pump(self: &Arc<Self>) {
        let mut state = lock(&self.state);
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
            let waiter = state.queue.pop_front().expect("front() just returned Some");
            if let Err(lease) = waiter.tx.send(lease) {
                // The waiter timed out in between; the worker is still free.
                lease.disarm();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: u64, busy: usize) -> Arc<Slot> {
        let s = Slot::new(id, SocketAddr::from(([127, 0, 0, 1], 1)), 0, None);
        s.in_flight.store(busy, Ordering::Relaxed);
        Arc::new(s)
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
