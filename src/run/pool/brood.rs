//! A preforking master molt has adopted, and its children, which are then the workers
//! (ARCHITECTURE.md, "A preforking server").
//!
//! Unicorn, gunicorn and Puma in cluster mode load the app once and fork children that
//! share its pages copy-on-write; one instance per molt worker would throw that sharing
//! away and boot the app again on every recycle. So in prefork mode molt runs one
//! instance, and governs the children of its master one by one. molt does not fork them:
//! the master does, and molt steers it with the server's own signals (the table in
//! `sys::prefork`): one more child, one fewer, and "finish your request, then exit" to one
//! child, which the master replaces with a fresh fork. molt sees the children only by
//! sampling `/proc`, so every change it asks for is confirmed by a later sample, and it
//! asks for one change at a time (the servers merge a burst of one signal into one).
//!
//! Requests go to the master's port, one upstream whose capacity is its children times
//! the per-child concurrency; the kernel hands each connection to a child that accepts.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::time::Instant;

use super::govern::{self, Reason};
use super::memstats::MemStats;
use super::{Mode, Supervisor};
use crate::config;
use crate::observe::event;
use crate::run::event::ChildSamples;
use crate::sys::prefork::{NotPrefork, Prefork, Server};
use crate::units::format_size;

/// Longest molt waits for a master to answer one more or one fewer child. A preloaded
/// app's master forks in milliseconds; one that loads the app in each child still names
/// the child at once.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The children of one adopted master, and what molt has asked of it.
#[derive(Debug)]
pub(super) struct Brood {
    pub(super) server: Server,
    /// The master: the process that holds the listening socket, below any wrapper.
    pub(super) master: Pid,
    /// The children that hold the master's socket, as last sampled.
    pub(super) children: Vec<Child>,
    /// The master's own memory and its wrappers', at the last sample.
    pub(super) own: Option<u64>,
    /// The children the master itself keeps: it forks a replacement for any that exits,
    /// so fewer than this are there only for a moment.
    pub(super) target: usize,
    /// A change asked of the master and not yet seen in a sample.
    pub(super) asked: Option<Asked>,
    /// Whether the master has ever answered "one more child" with one.
    pub(super) grows: bool,
    /// Since when the master has held fewer requests than one child fewer could take.
    pub(super) spare_since: Option<Instant>,
    /// The child being recycled: told to stop after its request, SIGKILL at the deadline.
    pub(super) retiring: Option<Retiring>,
}

/// One child of an adopted master.
#[derive(Debug)]
pub(super) struct Child {
    pub(super) pid: i32,
    /// When a sample first found it.
    pub(super) seen: Instant,
    pub(super) mem: MemStats,
    /// Its private (unshared) memory at the last sample: what a fresh fork costs, about.
    pub(super) private: u64,
    /// When `MOLT_MAX_LIFETIME` (with jitter) recycles it.
    pub(super) lifetime_end: Option<Instant>,
}

/// A change asked of the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Asked {
    pub(super) change: Change,
    /// The children there were when it was asked.
    pub(super) from: usize,
    pub(super) at: Instant,
}

/// One more child, or one fewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Add,
    Remove,
}

/// A child told to stop after its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retiring {
    pub(super) pid: i32,
    pub(super) reason: Reason,
    pub(super) deadline: Instant,
}

/// What the child-count decision looks at.
#[derive(Debug, Clone, Copy)]
pub(super) struct BroodView {
    /// The children the master keeps ([`Brood::target`]).
    pub(super) target: usize,
    /// The children there are now; fewer than `target` while the master replaces one.
    pub(super) children: usize,
    /// A change is asked and not yet seen.
    pub(super) asked: bool,
    pub(super) queued: usize,
    /// Since when one child fewer could have taken every request (see [`Brood`]).
    pub(super) spare_since: Option<Instant>,
    /// Memory the pool may still take.
    pub(super) headroom: u64,
    /// What one more child would cost, about: the private memory of a child.
    pub(super) child_cost: u64,
}

/// The bounds of the child count.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChildLimits {
    pub(super) min: usize,
    pub(super) max: usize,
    pub(super) idle_timeout: Duration,
}

/// How the child count should change now: pure, so its rules are tested on simulated
/// time.
///
/// All of it is about the master's own count, the target: a child that exits is
/// replaced by the master, not by molt.
///
/// 1. One change at a time: nothing while one is asked and not yet seen.
/// 2. Below the floor: one more, whatever the memory (as the scaler's floor).
/// 3. Above the most (the budget shrank): one fewer.
/// 4. Requests queue while every child is there: one more, while the pool's headroom
///    fits another child. (While the master replaces a child, the queue is that child's.)
/// 5. One child fewer could have taken every request for `idle_timeout`, nothing
///    queues, and the count is above the floor: one fewer.
pub(super) fn plan(view: &BroodView, limits: &ChildLimits, now: Instant) -> Option<Change> {
    if view.asked {
        return None;
    }
    let floor = limits.min.max(1);
    if view.target < floor {
        return Some(Change::Add);
    }
    if view.target > limits.max.max(floor) {
        return Some(Change::Remove);
    }
    if view.queued > 0 {
        let fits = view.headroom >= view.child_cost;
        let whole = view.children >= view.target;
        return (whole && view.target < limits.max && fits).then_some(Change::Add);
    }
    let idle = view
        .spare_since
        .is_some_and(|since| now.saturating_duration_since(since) >= limits.idle_timeout);
    (idle && view.target > floor).then_some(Change::Remove)
}

impl Brood {
    /// `started_with` is the `WEB_CONCURRENCY` the instance was started with: the master
    /// may not have forked all of them yet.
    fn new(found: &Prefork, started_with: usize, now: Instant) -> Self {
        Brood {
            server: found.server,
            master: Pid::from_raw(found.master),
            target: started_with.max(found.children.len()),
            children: found
                .children
                .iter()
                .map(|&pid| Child {
                    pid,
                    seen: now,
                    mem: MemStats::default(),
                    private: 0,
                    lifetime_end: None,
                })
                .collect(),
            own: None,
            asked: None,
            grows: false,
            spare_since: None,
            retiring: None,
        }
    }

    /// Takes in the children a sample found: new ones adopted, gone ones dropped. Returns
    /// how many were new.
    fn take_sample(
        &mut self,
        id: u64,
        found: Vec<(i32, crate::sys::memory::TreeMemory)>,
        lifetime_ends: Vec<Option<Instant>>,
        now: Instant,
    ) -> usize {
        let mut adopted = 0;
        let mut kept = Vec::with_capacity(found.len());
        for ((pid, memory), lifetime_end) in found.into_iter().zip(lifetime_ends) {
            let mut child = if let Some(at) = self.children.iter().position(|c| c.pid == pid) {
                self.children.swap_remove(at)
            } else {
                event!(Info, "child", worker = id, pid = pid, action = "adopted");
                adopted += 1;
                Child {
                    pid,
                    seen: now,
                    mem: MemStats::default(),
                    private: 0,
                    lifetime_end,
                }
            };
            child
                .mem
                .record(memory.bytes, memory.cpu_ticks, 0, Some(child.seen), now);
            child.private = memory.private;
            kept.push(child);
        }
        for gone in &self.children {
            event!(
                Info,
                "child",
                worker = id,
                pid = gone.pid,
                action = "exited"
            );
        }
        kept.sort_by_key(|c| c.pid);
        self.children = kept;
        adopted
    }
}

impl Supervisor {
    /// Acts on what the tree of a freshly ready worker showed.
    pub(super) fn on_inspected(
        &mut self,
        id: u64,
        found: Result<Prefork, NotPrefork>,
        now: Instant,
    ) {
        let explicit = self.config.mode == config::Mode::Prefork;
        if let Some(w) = self.worker_mut(id) {
            w.inspecting = false;
        }
        match found {
            Ok(found) => {
                let lifetime_ends: Vec<Option<Instant>> = found
                    .children
                    .iter()
                    .map(|_| self.child_lifetime_end(now))
                    .collect();
                let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
                    return;
                };
                if !w.is_ready() {
                    return;
                }
                event!(
                    Info,
                    "mode",
                    mode = "prefork",
                    worker = id,
                    server = found.server,
                    master = found.master,
                    children = found.children.len(),
                );
                // The children serve the requests; molt cannot see which child took
                // which, so request counts and lifetimes apply to children, not to the
                // master (whose own limits would replace the whole instance).
                w.slot.clear_request_limit();
                w.lifetime_end = None;
                w.inspecting = false;
                let mut brood = Brood::new(&found, w.web_concurrency, now);
                for (child, end) in brood.children.iter_mut().zip(lifetime_ends) {
                    child.lifetime_end = end;
                }
                let target = brood.target;
                w.brood = Some(brood);
                if self.mode != Mode::Prefork {
                    self.mode = Mode::Prefork;
                    self.desired = target;
                    if self.config.max_requests > 0 {
                        event!(
                            Warn,
                            "prefork",
                            setting = "MOLT_MAX_REQUESTS",
                            message = "does not apply to a preforking server's children: \
                                       molt cannot see which child serves a request; use the \
                                       server's own limit (gunicorn --max-requests)"
                        );
                    }
                }
                self.set_brood_capacity(id);
            }
            // The instance exited while it was looked at: its exit is handled as any
            // worker's, and its replacement is looked at in turn.
            Err(NotPrefork::Gone { .. }) => {}
            Err(why) => {
                let level_warn = explicit || self.mode == Mode::Prefork;
                let detail = why.to_string();
                if level_warn {
                    event!(
                        Warn,
                        "mode",
                        mode = "pool",
                        worker = id,
                        reason = why.code(),
                        detail = detail
                    );
                } else {
                    event!(
                        Info,
                        "mode",
                        mode = "pool",
                        worker = id,
                        reason = why.code(),
                        detail = detail
                    );
                }
                if self.mode == Mode::Deciding {
                    self.mode = Mode::Pool;
                    self.desired = self.config.min_workers;
                }
            }
        }
    }

    /// Takes in the children a sample found under each adopted master.
    pub(super) fn on_children(&mut self, samples: Vec<ChildSamples>, now: Instant) {
        for sample in samples {
            self.update_brood(sample, now);
        }
    }

    fn update_brood(&mut self, sample: ChildSamples, now: Instant) {
        let id = sample.id;
        // A jittered lifetime only for the children this sample finds first; a known child
        // keeps its own (take_sample reads the end of new children only).
        let known: Vec<i32> = self
            .workers
            .iter()
            .find(|w| w.id == id)
            .and_then(|w| w.brood.as_ref())
            .map(|b| b.children.iter().map(|c| c.pid).collect())
            .unwrap_or_default();
        let lifetime_ends: Vec<Option<Instant>> = sample
            .children
            .iter()
            .map(|(pid, _)| {
                if known.contains(pid) {
                    None
                } else {
                    self.child_lifetime_end(now)
                }
            })
            .collect();
        // A child's share of the master's requests: fixed, or under a learned limit one
        // (the limit is learned over the whole master).
        let per_child = match self.config.worker_concurrency {
            config::Concurrency::Fixed(n) => n,
            config::Concurrency::Auto => 1,
        };
        let auto = self.config.mode == config::Mode::Auto;
        let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
            return;
        };
        let Some(brood) = w.brood.as_mut() else {
            return;
        };
        brood.own = Some(sample.own);
        let new = brood.take_sample(id, sample.children, lifetime_ends, now);
        let count = brood.children.len();
        if brood
            .retiring
            .is_some_and(|r| brood.children.iter().all(|c| c.pid != r.pid))
        {
            brood.retiring = None;
        }
        // The master may fork more than it was asked to (a config that sets its own
        // count): what it keeps is what it shows, once no change is pending.
        if brood.asked.is_none() {
            brood.target = brood.target.max(count);
        }
        let mut lost_ttin = false;
        if let Some(asked) = brood.asked {
            let seen = match asked.change {
                Change::Add => count > asked.from,
                Change::Remove => count < asked.from,
            };
            if seen {
                brood.grows |= asked.change == Change::Add;
                brood.asked = None;
            } else if now.saturating_duration_since(asked.at) >= SIGNAL_TIMEOUT {
                lost_ttin = asked.change == Change::Add && !brood.grows;
                // What it keeps is what it shows.
                brood.target = count;
                event!(
                    Warn,
                    "prefork",
                    worker = id,
                    server = brood.server,
                    unanswered = match asked.change {
                        Change::Add => "add_child",
                        Change::Remove => "remove_child",
                    },
                    children = count,
                );
                brood.asked = None;
            }
        }
        // The peak since the last sample says whether one child fewer would have done.
        let peak = w.slot.take_peak();
        let spare = if per_child == 0 {
            peak == 0
        } else {
            peak <= count.saturating_sub(1) * per_child
        };
        let Some(brood) = w.brood.as_mut() else {
            return;
        };
        brood.spare_since = if spare {
            brood.spare_since.or(Some(now))
        } else {
            None
        };
        if lost_ttin && auto {
            // A master that does not fork on request cannot be scaled by molt: its
            // instance stays one pool worker, and more instances add capacity.
            event!(
                Warn,
                "mode",
                mode = "pool",
                worker = id,
                reason = "add_child_unanswered"
            );
            w.brood = None;
            w.slot.inherit_capacity();
            self.mode = Mode::Pool;
            self.desired = self.desired.max(self.config.min_workers);
            return;
        }
        self.set_brood_capacity(id);
        self.warm_children(id, new, now);
    }

    /// The master's capacity: its children times the per-child concurrency.
    /// A fixed concurrency is per child; `auto` is one request per child: the servers
    /// molt adopts take one at a time per child (Unicorn, gunicorn's sync workers, Puma
    /// with one thread), and a learned limit over the whole master would read its
    /// children's queue as its own.
    fn set_brood_capacity(&mut self, id: u64) {
        let per_child = match self.config.worker_concurrency {
            config::Concurrency::Fixed(n) => n,
            config::Concurrency::Auto => 1,
        };
        let Some(w) = self.workers.iter().find(|w| w.id == id) else {
            return;
        };
        let Some(brood) = &w.brood else { return };
        let children = brood.children.len();
        let capacity = if per_child == 0 && children > 0 {
            None
        } else {
            Some(children * per_child)
        };
        w.slot.fix_capacity(capacity);
        w.slot.set_serial(per_child == 1);
        self.dispatcher.capacity_grew();
    }

    fn child_lifetime_end(&mut self, now: Instant) -> Option<Instant> {
        self.config.max_lifetime.map(|life| {
            let ms = u64::try_from(life.as_millis()).unwrap_or(u64::MAX);
            now + Duration::from_millis(govern::with_jitter(ms, self.config.jitter, &mut self.rng))
        })
    }

    /// Moves the child count of each adopted master toward what the load and the budget
    /// want, one signal at a time.
    pub(super) fn scale_children(&mut self, now: Instant) {
        let limits = ChildLimits {
            min: self.config.min_workers,
            max: self.budget.max_workers,
            idle_timeout: self.config.idle_timeout,
        };
        let headroom = self.budget.usable.saturating_sub(self.pool_memory());
        let queued = self.dispatcher.queued();
        let footprint = self.facts.worker_footprint.unwrap_or(0);
        let mut changes = Vec::new();
        for w in self.workers.iter().filter(|w| w.is_ready()) {
            let Some(brood) = &w.brood else { continue };
            let child_cost = brood
                .children
                .iter()
                .map(|c| c.private)
                .filter(|&p| p > 0)
                .min()
                .unwrap_or(footprint);
            let view = BroodView {
                target: brood.target,
                children: brood.children.len(),
                asked: brood.asked.is_some(),
                queued,
                spare_since: brood.spare_since,
                headroom,
                child_cost,
            };
            if let Some(change) = plan(&view, &limits, now) {
                changes.push((w.id, change));
            }
        }
        for (id, change) in changes {
            self.ask(id, change, queued, now);
        }
    }

    fn ask(&mut self, id: u64, change: Change, queued: usize, now: Instant) {
        let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
            return;
        };
        let Some(brood) = w.brood.as_mut() else {
            return;
        };
        let control = brood.server.control();
        let from = brood.children.len();
        brood.target = match change {
            Change::Add => brood.target + 1,
            Change::Remove => brood.target.saturating_sub(1),
        };
        let (signal, direction) = match change {
            Change::Add => (control.add_child, "up"),
            Change::Remove => (control.remove_child, "down"),
        };
        self.procs.signal(brood.master, signal);
        brood.asked = Some(Asked {
            change,
            from,
            at: now,
        });
        // The next one fewer waits a whole idle period again.
        brood.spare_since = None;
        self.desired = brood.target;
        if change == Change::Remove {
            self.counters.count_recycle(Reason::Idle);
        }
        event!(
            Info,
            "scale",
            direction = direction,
            children = self.desired,
            queue = queued,
            master = brood.master,
            signal = signal.as_str()
        );
    }

    /// Memory governance of the children of every adopted master: the hard cap kills a
    /// child at once, the soft cap, the lifetime and a pool over its budget recycle one
    /// gracefully (the master forks its replacement), one child at a time.
    pub(super) fn govern_children(&mut self, paused: bool, now: Instant) {
        let (soft, hard) = (self.budget.soft_cap, self.budget.hard_cap);
        let over_usable = self.live_memory() > self.budget.usable;
        let stop_signal = self.config.child_stop_signal;
        let mut kills = Vec::new();
        let mut recycles = Vec::new();
        let mut overdue = Vec::new();
        for w in &self.workers {
            let Some(brood) = &w.brood else { continue };
            if let Some(r) = brood.retiring {
                if now >= r.deadline {
                    overdue.push((w.id, r.pid));
                }
            }
            for child in &brood.children {
                if !paused && child.mem.now.is_some_and(|m| m > hard) {
                    kills.push((w.id, child.pid, "memory_hard", hard));
                }
            }
            if brood.retiring.is_some() || paused {
                continue;
            }
            let over_soft = brood
                .children
                .iter()
                .filter(|c| c.mem.now.is_some_and(|m| m > soft))
                .max_by_key(|c| c.mem.now);
            let expired = brood
                .children
                .iter()
                .find(|c| c.lifetime_end.is_some_and(|end| now >= end));
            let largest = brood.children.iter().max_by_key(|c| c.mem.now);
            let pick = over_soft
                .map(|c| (c.pid, Reason::Memory))
                .or_else(|| expired.map(|c| (c.pid, Reason::Lifetime)))
                .or_else(|| {
                    over_usable
                        .then_some(largest)
                        .flatten()
                        .map(|c| (c.pid, Reason::Pool))
                });
            if let Some((pid, reason)) = pick {
                recycles.push((w.id, pid, reason));
            }
        }
        for (id, pid) in overdue {
            self.kill_child(id, pid, "stop_timeout", hard);
        }
        for (id, pid, reason, cap) in kills {
            self.note_child_churn(id, pid, cap, now);
            self.kill_child(id, pid, reason, cap);
        }
        for (id, pid, reason) in recycles {
            if reason.is_memory() {
                let cap = if reason == Reason::Memory {
                    soft
                } else {
                    self.budget.usable
                };
                self.note_child_churn(id, pid, cap, now);
                if self.guard.paused(now) {
                    continue;
                }
            }
            self.retire_child(id, pid, reason, stop_signal, now);
        }
    }

    /// The pool is near the whole budget: the largest child goes at once.
    pub(super) fn kill_largest_child(&mut self) {
        let largest = self
            .workers
            .iter()
            .filter_map(|w| w.brood.as_ref().map(|b| (w.id, b)))
            .flat_map(|(id, b)| b.children.iter().map(move |c| (id, c)))
            .filter(|(_, c)| c.mem.now.is_some())
            .max_by_key(|(_, c)| c.mem.now)
            .map(|(id, c)| (id, c.pid));
        if let Some((id, pid)) = largest {
            let usable = self.budget.usable;
            self.kill_child(id, pid, "memory_pool", usable);
        }
    }

    /// Tells one child to finish its request and exit; its master forks the replacement.
    fn retire_child(
        &mut self,
        id: u64,
        pid: i32,
        reason: Reason,
        signal: Option<Signal>,
        now: Instant,
    ) {
        let (soft, hard) = (self.budget.soft_cap, self.budget.hard_cap);
        let deadline = now + self.config.drain_timeout + self.config.stop_timeout;
        let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
            return;
        };
        let Some(brood) = w.brood.as_mut() else {
            return;
        };
        let Some(child) = brood.children.iter().find(|c| c.pid == pid) else {
            return;
        };
        let signal = signal.unwrap_or(brood.server.control().stop_child);
        let growth = child.mem.growth;
        event!(
            Info,
            "recycle",
            worker = id,
            child = pid,
            reason = reason,
            memory = child.mem.now.map_or_else(|| "-".to_owned(), format_size),
            soft_cap = format_size(soft),
            hard_cap = format_size(hard),
            age_s = now.duration_since(child.seen).as_secs(),
            growth_per_hour = growth.map_or_else(
                || "-".to_owned(),
                |g| crate::units::format_signed_size(g.per_hour)
            ),
            signal = signal.as_str(),
        );
        brood.retiring = Some(Retiring {
            pid,
            reason,
            deadline,
        });
        self.procs.signal(Pid::from_raw(pid), signal);
        // molt cannot tell which kept-alive connection is the retiring child's: none made
        // before it was told is reused, so it gets no request after the one it holds.
        w.slot.upstreams.forget();
        self.counters.count_recycle(reason);
    }

    /// Kills one child at once; only the requests it holds fail, and its master forks a
    /// replacement.
    fn kill_child(&mut self, id: u64, pid: i32, reason: &str, cap: u64) {
        let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
            return;
        };
        let Some(brood) = w.brood.as_mut() else {
            return;
        };
        let Some(at) = brood.children.iter().position(|c| c.pid == pid) else {
            return;
        };
        let child = brood.children.remove(at);
        event!(
            Warn,
            "kill",
            worker = id,
            child = pid,
            reason = reason,
            memory = child.mem.now.map_or_else(|| "-".to_owned(), format_size),
            cap = format_size(cap),
        );
        if brood.retiring.is_some_and(|r| r.pid == pid) {
            brood.retiring = None;
        }
        self.procs.signal(Pid::from_raw(pid), Signal::SIGKILL);
        w.slot.upstreams.forget();
        self.counters.count_kill(reason);
        self.set_brood_capacity(id);
    }

    /// Feeds the kill-loop guard: a child already over `cap` at its first sample says the
    /// cap is below what the app needs.
    fn note_child_churn(&mut self, id: u64, pid: i32, cap: u64, now: Instant) {
        let first = self
            .workers
            .iter()
            .find(|w| w.id == id)
            .and_then(|w| w.brood.as_ref())
            .and_then(|b| b.children.iter().find(|c| c.pid == pid))
            .and_then(|c| c.mem.first_ready);
        self.record_churn(first, cap, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn limits() -> ChildLimits {
        ChildLimits {
            min: 2,
            max: 4,
            idle_timeout: Duration::from_secs(300),
        }
    }

    fn view(children: usize) -> BroodView {
        BroodView {
            target: children,
            children,
            asked: false,
            queued: 0,
            spare_since: None,
            headroom: 100 * MB,
            child_cost: 20 * MB,
        }
    }

    #[test]
    fn the_floor_is_kept_whatever_the_memory() {
        let now = Instant::now();
        let v = BroodView {
            headroom: 0,
            ..view(1)
        };
        assert_eq!(plan(&v, &limits(), now), Some(Change::Add));
    }

    #[test]
    fn a_queue_adds_a_child_while_memory_fits_and_below_the_most() {
        let now = Instant::now();
        let queued = BroodView {
            queued: 3,
            ..view(2)
        };
        assert_eq!(plan(&queued, &limits(), now), Some(Change::Add));
        let full = BroodView {
            headroom: 10 * MB,
            ..queued
        };
        assert_eq!(plan(&full, &limits(), now), None, "no room for a child");
        let most = BroodView {
            target: 4,
            children: 4,
            ..queued
        };
        assert_eq!(plan(&most, &limits(), now), None, "at the most");
    }

    #[test]
    fn one_change_at_a_time() {
        let now = Instant::now();
        let v = BroodView {
            asked: true,
            queued: 5,
            ..view(1)
        };
        assert_eq!(plan(&v, &limits(), now), None);
    }

    #[test]
    fn spare_capacity_for_the_idle_timeout_removes_one_child_down_to_the_floor() {
        let t0 = Instant::now();
        let v = BroodView {
            spare_since: Some(t0),
            ..view(3)
        };
        let idle = limits().idle_timeout;
        assert_eq!(
            plan(&v, &limits(), t0 + idle - Duration::from_secs(1)),
            None
        );
        assert_eq!(plan(&v, &limits(), t0 + idle), Some(Change::Remove));
        let floor = BroodView {
            spare_since: Some(t0),
            ..view(2)
        };
        assert_eq!(plan(&floor, &limits(), t0 + idle * 2), None, "at the floor");
        let busy = BroodView {
            spare_since: Some(t0),
            queued: 1,
            headroom: 0,
            ..view(3)
        };
        assert_eq!(plan(&busy, &limits(), t0 + idle), None, "requests queue");
    }

    #[test]
    fn a_child_being_replaced_by_its_master_is_not_replaced_by_molt() {
        let now = Instant::now();
        let replacing = BroodView {
            children: 1,
            queued: 4,
            ..view(2)
        };
        assert_eq!(plan(&replacing, &limits(), now), None);
    }

    #[test]
    fn a_shrunk_budget_removes_children_above_the_most() {
        let now = Instant::now();
        assert_eq!(plan(&view(5), &limits(), now), Some(Change::Remove));
    }

    #[test]
    fn the_floor_is_at_least_one_child() {
        let now = Instant::now();
        let none = ChildLimits { min: 0, ..limits() };
        assert_eq!(plan(&view(0), &none, now), Some(Change::Add));
        let v = BroodView {
            spare_since: Some(now),
            ..view(1)
        };
        assert_eq!(
            plan(&v, &none, now + Duration::from_secs(3600)),
            None,
            "Unicorn goes down to 0 children on request; molt never asks it to"
        );
    }
}
