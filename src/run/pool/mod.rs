//! The one task that owns all worker state.
//!
//! Signals, child exits, readiness, drains and timers arrive as [`Event`]s on one channel
//! or as deadlines; after each, [`Supervisor::reconcile`] starts and stops processes to
//! match the target, and the routable workers are published to the dispatcher as one
//! immutable snapshot. Memory governance and recycling live in [`govern`]; the status
//! report and metrics in [`report`].

/// An adopted preforking master and its children, governed as the workers.
mod brood;
/// Memory samples, caps, the pool guard, recycling and the kill-loop guard.
mod govern;
/// One worker's memory over its life: now, peak, growth after warm-up.
mod memstats;
/// The status report for `molt status` and the periodic l2met metrics line.
mod report;
/// Pure autoscaling decision: how many workers to add or retire.
mod scaler;
/// A new worker's warm-up GETs before it takes traffic.
mod warmup;
/// Starting, probing and signalling worker processes.
pub(crate) mod worker;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::budget::{self, Budget, Facts};
use crate::config::Config;
use crate::observe::control::Command;
use crate::observe::event;
use crate::run::error::{BootFailure, Fatal};
use crate::run::event::Event;
use crate::run::proxy::dispatch::{Dispatcher, Slot};
use crate::run::proxy::limiter::LimiterSettings;
use crate::sys::Exit;
use memstats::MemStats;
use worker::{AppCommand, Processes, Spawn};

pub(crate) use govern::Reason;
pub(crate) use warmup::WarmupFailure;

/// First pause after a failed boot; it doubles with each consecutive failure.
const BACKOFF_START: Duration = Duration::from_secs(1);

/// Longest pause between boot attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How the supervisor's loop ends: an [`Outcome`], or what stopped molt.
type Done = Result<Outcome, Fatal>;

/// How the supervisor finished when nothing went wrong; what stops molt otherwise is a
/// [`Fatal`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Shut down on request; every worker has exited.
    Stopped,
    /// A second SIGINT: every worker was killed at once.
    Interrupted,
}

/// A worker's lifecycle, with the data each stage needs.
#[derive(Debug)]
enum State {
    /// Started; waiting for it to accept connections.
    Booting { probe: AbortHandle },
    /// Serving requests.
    Ready,
    /// Taking no new requests; finishing the ones it holds.
    Draining {
        deadline: Instant,
        waiter: AbortHandle,
    },
    /// Sent the stop signal; SIGKILL at the deadline (none once SIGKILL was sent).
    Stopping { deadline: Option<Instant> },
}

struct Worker {
    id: u64,
    pid: Pid,
    slot: Arc<Slot>,
    started: Instant,
    ready_since: Option<Instant>,
    /// When `MOLT_MAX_LIFETIME` (with jitter) recycles it.
    lifetime_end: Option<Instant>,
    mem: MemStats,
    state: State,
    /// Set when this instance is an adopted preforking master: its children.
    brood: Option<brood::Brood>,
    /// The `WEB_CONCURRENCY` it was started with.
    web_concurrency: usize,
    /// Ready, and its tree is being looked at for a preforking master.
    inspecting: bool,
    /// Booting, accepting connections, and answering molt's warm-up requests.
    warming: bool,
}

impl Worker {
    fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready)
    }

    fn is_live(&self) -> bool {
        matches!(self.state, State::Booting { .. } | State::Ready)
    }

    /// When a booting worker has taken too long: `MOLT_BOOT_TIMEOUT` after its start, and
    /// a moment more while it is warming up, so that the warm-up's own timeout, which
    /// says how far it got, is the one reported.
    fn boot_deadline(&self, boot_timeout: Duration) -> Instant {
        let grace = if self.warming {
            warmup::DEADLINE_GRACE
        } else {
            Duration::ZERO
        };
        self.started + boot_timeout + grace
    }

    /// Cancels the helper task of the current state, if any.
    fn abort_task(&self) {
        match &self.state {
            State::Booting { probe } => probe.abort(),
            State::Draining { waiter, .. } => waiter.abort(),
            State::Ready | State::Stopping { .. } => {}
        }
    }
}

/// What is left of a worker's process group after its leader exited: a wrapper shell
/// (`bash -c 'unicorn ... && echo'`, `npm start`) dies on the stop signal at once while the
/// app it started is still shutting down. The group gets until `deadline`, the worker's
/// `MOLT_STOP_TIMEOUT`, to exit by itself; then SIGKILL.
#[derive(Debug)]
struct Lingering {
    worker: u64,
    /// The group's id: its leader's pid.
    group: Pid,
    deadline: Instant,
}

/// How the command is run, once known (`MOLT_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One instance runs until its process tree tells whether it is a preforking master.
    Deciding,
    /// An instance per worker.
    Pool,
    /// One instance, a preforking master whose children are the workers.
    Prefork,
}

/// Where molt is in its own life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Not accepting; in-flight requests finish until the deadline.
    Draining {
        deadline: Instant,
    },
    /// Every worker has been told to stop.
    Stopping,
}

/// Owns the pool.
pub(crate) struct Supervisor {
    config: Arc<Config>,
    command: AppCommand,
    dispatcher: Arc<Dispatcher>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    /// Set once shutdown begins: the proxy stops accepting and closes idle connections.
    shutdown: watch::Sender<bool>,
    /// Set once any worker has been ready (for `MOLT_BIND=ready`).
    first_ready: watch::Sender<bool>,
    workers: Vec<Worker>,
    /// Groups of workers whose leader exited while the rest still runs.
    lingering: Vec<Lingering>,
    next_id: u64,
    phase: Phase,
    mode: Mode,
    /// Boots that failed since the last success.
    boot_failures: u32,
    ever_ready: bool,
    /// No new worker starts before this (boot failure backoff).
    spawn_after: Instant,
    /// Workers wanted now: `min_workers`, raised by the scaler under load. In prefork mode,
    /// the children wanted of the one master.
    desired: usize,
    /// The worker being replaced now; at most one at a time so capacity never collapses.
    recycling: Option<govern::Recycle>,
    /// Workers waiting for their turn to be replaced, with why.
    pending: VecDeque<(u64, Reason)>,
    /// Facts about the machine and the budget derived from them and the settings.
    facts: Facts,
    budget: Budget,
    molt_rss: u64,
    /// The worker footprint the budget uses, held steady (see `govern::refresh_budget`);
    /// kept when the worker it came from goes.
    footprint: memstats::Footprint,
    /// molt's own RSS as the budget uses it, held steady the same way.
    molt_rss_steady: memstats::Steady,
    next_sample: Instant,
    sampling: bool,
    guard: govern::KillLoopGuard,
    /// The request rate and its recent peak, for recycling in lulls.
    lull: govern::LullMeter,
    next_metrics: Option<Instant>,
    /// The metrics line and status replies waiting for a ready worker's first sample.
    held: report::Held,
    /// Every metrics line written, for the tests to read.
    #[cfg(test)]
    metrics_lines: Vec<String>,
    counters: report::Counters,
    /// Randomness for jitter: recycles of different workers must not line up.
    rng: u64,
    /// Ids of the workers last published to the dispatcher.
    published: Vec<u64>,
    procs: Box<dyn Processes>,
    interrupted: bool,
}

/// The channels the supervisor shares with the rest of the runtime.
pub(crate) struct Links {
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) first_ready: watch::Receiver<bool>,
}

impl Supervisor {
    pub(crate) fn new(
        config: &Arc<Config>,
        command: AppCommand,
        dispatcher: Arc<Dispatcher>,
        procs: Box<dyn Processes>,
        facts: Facts,
    ) -> (Self, Links) {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (first_ready, first_ready_rx) = watch::channel(false);
        let links = Links {
            events: events_tx.clone(),
            shutdown: shutdown_rx,
            first_ready: first_ready_rx,
        };
        let supervisor = Supervisor {
            config: Arc::clone(config),
            command,
            dispatcher,
            events,
            events_tx,
            shutdown,
            first_ready,
            workers: Vec::new(),
            lingering: Vec::new(),
            next_id: 1,
            phase: Phase::Running,
            mode: match config.mode {
                crate::config::Mode::Pool => Mode::Pool,
                crate::config::Mode::Auto | crate::config::Mode::Prefork => Mode::Deciding,
            },
            boot_failures: 0,
            ever_ready: false,
            spawn_after: Instant::now(),
            desired: config.min_workers,
            recycling: None,
            pending: VecDeque::new(),
            budget: budget::derive(config, &facts),
            molt_rss: facts.molt_rss,
            footprint: memstats::Footprint::default(),
            molt_rss_steady: memstats::Steady::default(),
            facts,
            next_sample: Instant::now(),
            sampling: false,
            guard: govern::KillLoopGuard::default(),
            lull: govern::LullMeter::default(),
            next_metrics: config.metrics_interval.map(|every| Instant::now() + every),
            held: report::Held::default(),
            #[cfg(test)]
            metrics_lines: Vec::new(),
            counters: report::Counters::default(),
            rng: govern::seed(),
            published: Vec::new(),
            procs,
            interrupted: false,
        };
        (supervisor, links)
    }

    /// Runs until molt should exit.
    pub(crate) async fn run(mut self) -> Result<Outcome, Fatal> {
        loop {
            if let Some(outcome) = self.reconcile(Instant::now()) {
                return outcome;
            }
            let deadline = self.next_deadline(Instant::now());
            let dispatcher = Arc::clone(&self.dispatcher);
            let outcome = tokio::select! {
                event = self.events.recv() => {
                    // The supervisor holds a sender itself, so the channel never closes.
                    let event = event.expect("the supervisor keeps a sender open");
                    self.handle(event, Instant::now())
                }
                () = sleep_until(deadline) => self.on_deadlines(Instant::now()),
                // A request queued or a worker reached its request limit: reconcile.
                () = dispatcher.attention.notified() => None,
            };
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }

    fn handle(&mut self, event: Event, now: Instant) -> Option<Done> {
        match event {
            Event::Exited { pid, how } => return self.on_exit(pid, how, now),
            Event::Ready { id } => self.on_accepting(id, now),
            Event::Warmed { id, result } => return self.on_warmed(id, result, now),
            Event::Drained { id } => {
                if let Some(w) = self.worker_mut(id) {
                    if matches!(w.state, State::Draining { .. }) {
                        self.stop(id, now);
                    }
                }
            }
            Event::Shutdown { signal } => return self.on_shutdown(signal, now),
            Event::Command(Command::Restart) => {
                if self.phase == Phase::Running {
                    let ready: Vec<u64> = self
                        .workers
                        .iter()
                        .filter(|w| w.is_ready())
                        .map(|w| w.id)
                        .collect();
                    event!(Info, "restart", workers = ready.len());
                    for id in ready {
                        self.request_recycle(id, Reason::Restart, now);
                    }
                }
            }
            Event::Stuck { id } => self.kill(id, "request_timeout"),
            Event::Refused { id } => {
                // A dead worker's exit comes from the reaper; a live one that stopped
                // listening is replaced like any other, its requests in flight finishing.
                if self.worker_mut(id).is_some_and(|w| w.is_ready()) {
                    self.request_recycle(id, Reason::Refused, now);
                }
            }
            Event::Sampled {
                samples,
                children,
                molt_rss,
            } => {
                self.on_children(children, now);
                self.on_sampled(samples, molt_rss, now);
                self.release_held(now);
                // Each sample, so that connections nothing takes again do not keep their
                // buffers (see `IdleUpstreams::drop_stale`).
                for w in &self.workers {
                    w.slot.upstreams.drop_stale();
                }
            }
            Event::Inspected { id, found } => self.on_inspected(id, found, now),
            Event::Command(Command::Status(reply)) => self.report_status(reply, now),
            Event::Fatal(fatal) => {
                self.kill_every_group();
                return Some(Err(fatal));
            }
            Event::ProxyIdle => {
                if matches!(self.phase, Phase::Draining { .. }) {
                    self.stop_all(now);
                }
            }
        }
        None
    }

    fn on_ready(&mut self, id: u64, now: Instant) {
        let inspect = self.mode != Mode::Pool;
        let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
            return;
        };
        if !matches!(w.state, State::Booting { .. }) {
            return;
        }
        w.state = State::Ready;
        w.ready_since = Some(now);
        // Measured at once, so that the pool's memory counts it from the start (see
        // `report::Held`).
        self.next_sample = self.next_sample.min(now);
        let boot_ms = now.duration_since(w.started).as_millis();
        event!(Info, "ready", worker = id, pid = w.pid, boot_ms = boot_ms);
        if inspect {
            w.inspecting = true;
            let (pid, port) = (w.pid, w.slot.addr.port());
            self.procs.inspect(id, pid, port, self.events_tx.clone());
        }
        self.ever_ready = true;
        self.boot_failures = 0;
        self.first_ready.send_replace(true);
    }

    fn on_exit(&mut self, pid: Pid, how: Exit, now: Instant) -> Option<Done> {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            // An orphan that was reparented to molt (the subreaper) and has now been reaped:
            // perhaps the last of a lingering group.
            event!(Debug, "reaped", pid = pid, how = how);
            self.forget_exited_groups();
            return None;
        };
        let w = self.workers.remove(index);
        w.abort_task();
        w.slot.upstreams.clear();
        if self.recycling.as_ref().is_some_and(|r| r.id == w.id) {
            self.recycling = None;
        }
        let state = match w.state {
            State::Booting { .. } => "booting",
            State::Ready => "ready",
            State::Draining { .. } => "draining",
            State::Stopping { .. } => "stopping",
        };
        let (status, signal) = match how {
            Exit::Code(code) => (Some(code), None),
            Exit::Signal(sig) => (None, Some(sig.as_str())),
        };
        let in_flight = w.slot.in_flight();
        event!(
            Info,
            "exit",
            worker = w.id,
            pid = w.pid,
            status = status.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            signal = signal.unwrap_or("-"),
            state = state,
            in_flight = in_flight,
        );
        // The leader is gone; what it left in its group is stopped too, so no orphan of a
        // dead worker lingers holding memory, but gets the stop timeout to finish.
        self.linger(&w, now);
        if matches!(w.state, State::Booting { .. }) && self.phase == Phase::Running {
            return self.boot_failed(BootFailure::Exited(how), now);
        }
        None
    }

    fn on_shutdown(&mut self, signal: Signal, now: Instant) -> Option<Done> {
        if signal == Signal::SIGINT && self.interrupted {
            event!(Warn, "interrupt", action = "kill");
            self.kill_every_group();
            return Some(Ok(Outcome::Interrupted));
        }
        self.interrupted |= signal == Signal::SIGINT;
        if self.phase == Phase::Running {
            // Heroku sends SIGTERM to every process of the dyno, often more than once;
            // only the first one starts the shutdown.
            let timeout = self.config.shutdown_timeout;
            event!(
                Info,
                "shutdown",
                signal = signal.as_str(),
                timeout_ms = timeout.as_millis()
            );
            self.phase = Phase::Draining {
                deadline: now + timeout,
            };
            self.pending.clear();
            self.shutdown.send_replace(true);
        }
        None
    }

    fn on_deadlines(&mut self, now: Instant) -> Option<Done> {
        let mut outcome = None;
        let boot_timeout = self.config.boot_timeout;
        let mut timed_out = Vec::new();
        let mut drained = Vec::new();
        for w in &mut self.workers {
            match w.state {
                State::Booting { .. } if now >= w.boot_deadline(boot_timeout) => {
                    timed_out.push((w.id, w.warming));
                }
                State::Draining { deadline, .. } if now >= deadline => drained.push(w.id),
                State::Stopping {
                    deadline: Some(deadline),
                } if now >= deadline => {
                    event!(
                        Warn,
                        "kill",
                        worker = w.id,
                        pid = w.pid,
                        reason = "stop_timeout"
                    );
                    self.procs.signal_group(w.pid, Signal::SIGKILL);
                    w.state = State::Stopping { deadline: None };
                }
                _ => {}
            }
        }
        for (id, warming) in timed_out {
            self.kill(id, "boot_timeout");
            if self.phase == Phase::Running {
                let reason = if warming {
                    self.warmup_timed_out(boot_timeout)
                } else {
                    BootFailure::NotReady(boot_timeout)
                };
                let failed = self.boot_failed(reason, now);
                outcome = outcome.or(failed);
            }
        }
        for id in drained {
            event!(Warn, "drain_timeout", worker = id);
            self.stop(id, now);
        }
        self.forget_exited_groups();
        let procs = &self.procs;
        self.lingering.retain(|group| {
            if now < group.deadline {
                return true;
            }
            event!(
                Warn,
                "kill",
                worker = group.worker,
                pid = group.group,
                reason = "stop_timeout",
                leader = "exited"
            );
            procs.signal_group(group.group, Signal::SIGKILL);
            false
        });
        if now >= self.next_sample {
            self.start_sample(now);
        }
        if self.next_metrics.is_some_and(|at| now >= at) {
            self.emit_metrics(now);
        }
        if let Phase::Draining { deadline } = self.phase {
            if now >= deadline {
                let queued = self.dispatcher.queued();
                event!(
                    Warn,
                    "shutdown_timeout",
                    in_flight = self.in_flight(),
                    queued = queued
                );
                self.stop_all(now);
            }
        }
        outcome
    }

    /// Counts a failed boot, backs off, and gives up when the app has never booted.
    fn boot_failed(&mut self, reason: BootFailure, now: Instant) -> Option<Done> {
        self.boot_failures += 1;
        self.counters.count_boot_failure();
        let failures = self.boot_failures;
        if !self.ever_ready && failures >= self.config.max_boot_failures {
            self.kill_every_group();
            self.dispatcher.close();
            return Some(Err(Fatal::CannotBoot {
                failures,
                max: self.config.max_boot_failures,
                last: reason,
            }));
        }
        let backoff = BACKOFF_START
            .saturating_mul(1 << (failures - 1).min(16))
            .min(BACKOFF_MAX);
        event!(
            Warn,
            "boot_failed",
            failures = failures,
            backoff_ms = backoff.as_millis(),
            reason = &reason
        );
        self.spawn_after = self.spawn_after.max(now + backoff);
        None
    }

    /// Moves the pool toward its target: spawns missing workers, advances a recycle,
    /// and publishes the routable workers. Returns an outcome when molt is done.
    fn reconcile(&mut self, now: Instant) -> Option<Done> {
        self.dispatcher.attend();
        if self.phase == Phase::Running {
            self.scale(now);
            for id in self.workers_at_request_limit() {
                self.request_recycle(id, Reason::Requests, now);
            }
            // Choosing the worker to recycle first lets its replacement start at once.
            self.advance_recycle(now);
            if let Some(outcome) = self.spawn_missing(now) {
                return Some(outcome);
            }
        }
        self.publish();
        self.close_when_no_worker_can_serve();
        if self.phase == Phase::Stopping && self.workers.is_empty() && self.lingering.is_empty() {
            event!(Info, "stopped");
            return Some(Ok(Outcome::Stopped));
        }
        None
    }

    /// Once molt is shutting down, no worker is started again: with none left booting or
    /// ready (all told to stop, or gone by themselves, as a platform that signals every
    /// process of the container has them), queued and later requests get their 503 now
    /// rather than at the queue timeout.
    fn close_when_no_worker_can_serve(&self) {
        let stopping = self.phase != Phase::Running;
        if stopping && !self.workers.iter().any(Worker::is_live) {
            self.dispatcher.close();
        }
    }

    /// Instances of the command wanted now: in prefork mode (and while deciding) one, whose
    /// master forks the workers.
    fn instances_wanted(&self) -> usize {
        match self.mode {
            Mode::Pool => self.desired,
            Mode::Deciding | Mode::Prefork => 1,
        }
    }

    fn spawn_missing(&mut self, now: Instant) -> Option<Done> {
        let target = self.instances_wanted();
        // A worker being recycled is replaced before it drains when memory allows;
        // otherwise it still counts until it leaves.
        let replaced = self
            .recycling
            .as_ref()
            .filter(|r| r.replace_first)
            .map(|r| r.id);
        // Draining first, the worker keeps its place until it has exited.
        let draining_first = self
            .recycling
            .as_ref()
            .filter(|r| !r.replace_first)
            .map(|r| r.id);
        let live = self
            .workers
            .iter()
            .filter(|w| (w.is_live() && Some(w.id) != replaced) || Some(w.id) == draining_first)
            .count();
        for _ in live..target {
            if now < self.spawn_after {
                break;
            }
            if let Err(reason) = self.spawn(now) {
                if let Some(outcome) = self.boot_failed(reason, now) {
                    return Some(outcome);
                }
            }
        }
        None
    }

    fn spawn(&mut self, now: Instant) -> Result<(), BootFailure> {
        let taken: Vec<u16> = self.workers.iter().map(|w| w.slot.addr.port()).collect();
        let port = self
            .procs
            .free_port(&taken)
            .ok_or(BootFailure::NoFreePort {
                range: worker::PORT_RANGE,
            })?;
        let id = self.next_id;
        self.next_id += 1;
        // A preforking master forks WEB_CONCURRENCY children (gunicorn and Puma read it,
        // Unicorn configs commonly do): as many as molt wants once it is adopted; in auto
        // mode the first instance starts as a pool worker would, and is grown by signals.
        let web_concurrency = match self.mode {
            Mode::Prefork => self.desired,
            Mode::Deciding if self.config.mode == crate::config::Mode::Prefork => {
                self.config.min_workers
            }
            Mode::Deciding | Mode::Pool => self.config.worker_processes,
        };
        let spec = Spawn {
            id,
            port,
            web_concurrency,
            command: &self.command,
            malloc_arena_max: self.config.malloc_arena_max,
        };
        let pid = self.procs.spawn(&spec).map_err(BootFailure::CannotStart)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        event!(Info, "spawn", worker = id, pid = pid, port = port);
        let events = self.events_tx.clone();
        let health_path = self.config.health_path.clone();
        let probe = self.procs.watch_ready(id, addr, health_path, events);
        let request_limit = (self.config.max_requests > 0).then(|| {
            govern::with_jitter(self.config.max_requests, self.config.jitter, &mut self.rng)
        });
        let lifetime_end = self.config.max_lifetime.map(|life| {
            let ms = u64::try_from(life.as_millis()).unwrap_or(u64::MAX);
            now + Duration::from_millis(govern::with_jitter(ms, self.config.jitter, &mut self.rng))
        });
        let mut slot = Slot::new(id, addr, pid.as_raw(), request_limit);
        // MOLT_WORKER_CONCURRENCY=auto: the worker learns its capacity from its latency.
        if let Some(settings) = LimiterSettings::from_config(&self.config) {
            slot = slot.learning(settings);
        }
        self.workers.push(Worker {
            id,
            pid,
            slot: Arc::new(slot),
            started: now,
            ready_since: None,
            lifetime_end,
            mem: MemStats::default(),
            state: State::Booting { probe },
            brood: None,
            web_concurrency,
            inspecting: false,
            warming: false,
        });
        Ok(())
    }

    /// Takes a worker out of routing and stops it once its in-flight requests finish.
    fn drain(&mut self, id: u64, now: Instant) {
        let deadline = now + self.config.drain_timeout;
        let events = self.events_tx.clone();
        let Some(w) = self.worker_mut(id) else { return };
        w.abort_task();
        let slot = Arc::clone(&w.slot);
        let waiter = tokio::spawn(async move {
            slot.wait_idle().await;
            let _ = events.send(Event::Drained { id });
        })
        .abort_handle();
        w.state = State::Draining { deadline, waiter };
    }

    /// Sends the stop signal to a worker's group; SIGKILL follows after the stop timeout.
    fn stop(&mut self, id: u64, now: Instant) {
        let signal = self.config.stop_signal;
        let deadline = now + self.config.stop_timeout;
        let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
            return;
        };
        if matches!(w.state, State::Stopping { .. }) {
            return;
        }
        w.abort_task();
        send_stop(w, signal, self.procs.as_ref());
        w.slot.upstreams.clear();
        w.state = State::Stopping {
            deadline: Some(deadline),
        };
    }

    fn stop_all(&mut self, now: Instant) {
        self.phase = Phase::Stopping;
        let ids: Vec<u64> = self.workers.iter().map(|w| w.id).collect();
        for id in ids {
            self.stop(id, now);
        }
    }

    /// Publishes the workers that may take new requests, when that set changed.
    fn publish(&mut self) {
        let routable: Vec<&Worker> = self.workers.iter().filter(|w| w.is_ready()).collect();
        let ids: Vec<u64> = routable.iter().map(|w| w.id).collect();
        if ids != self.published {
            let slots = routable.iter().map(|w| Arc::clone(&w.slot)).collect();
            self.dispatcher.publish(slots);
            self.published = ids;
        }
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let boot_timeout = self.config.boot_timeout;
        let workers = self.workers.iter().filter_map(|w| match w.state {
            State::Booting { .. } => Some(w.boot_deadline(boot_timeout)),
            State::Draining { deadline, .. } => Some(deadline),
            State::Stopping { deadline } => deadline,
            State::Ready => None,
        });
        let lingering = self.lingering.iter().map(|group| group.deadline);
        let phase = match self.phase {
            Phase::Draining { deadline } => Some(deadline),
            Phase::Running | Phase::Stopping => None,
        };
        // A backoff deadline matters only while it is ahead and a worker is missing;
        // a past one would wake the loop at once, forever.
        let missing = self.workers.iter().filter(|w| w.is_live()).count() < self.instances_wanted();
        let spawn = (self.phase == Phase::Running && missing && self.spawn_after > now)
            .then_some(self.spawn_after);
        let sample = (self.phase != Phase::Stopping && !self.sampling).then_some(self.next_sample);
        workers
            .chain(lingering)
            .chain(phase)
            .chain(spawn)
            .chain(sample)
            .chain(self.next_metrics)
            .min()
    }

    /// Keeps what is left of an exited worker's process group until it exits or its stop
    /// timeout passes. A worker already told to stop keeps the deadline it was given; one
    /// whose leader exited by itself has the rest of its group told to stop now.
    fn linger(&mut self, w: &Worker, now: Instant) {
        if !self.procs.group_alive(w.pid) {
            return;
        }
        let deadline = match w.state {
            State::Stopping {
                deadline: Some(deadline),
            } => deadline,
            // Killed: what is left goes the same way.
            State::Stopping { deadline: None } => {
                self.procs.signal_group(w.pid, Signal::SIGKILL);
                return;
            }
            State::Booting { .. } | State::Ready | State::Draining { .. } => {
                send_stop(w, self.config.stop_signal, self.procs.as_ref());
                now + self.config.stop_timeout
            }
        };
        event!(
            Info,
            "linger",
            worker = w.id,
            pid = w.pid,
            timeout_ms = deadline.saturating_duration_since(now).as_millis()
        );
        self.lingering.push(Lingering {
            worker: w.id,
            group: w.pid,
            deadline,
        });
    }

    /// Drops the lingering groups that have no process left.
    fn forget_exited_groups(&mut self) {
        let procs = &self.procs;
        self.lingering.retain(|group| {
            let alive = procs.group_alive(group.group);
            if !alive {
                event!(
                    Info,
                    "group_exited",
                    worker = group.worker,
                    pid = group.group
                );
            }
            alive
        });
    }

    /// SIGKILL to every worker's group and every lingering one: molt is going at once.
    fn kill_every_group(&self) {
        let groups = self.workers.iter().map(|w| w.pid);
        for group in groups.chain(self.lingering.iter().map(|l| l.group)) {
            self.procs.signal_group(group, Signal::SIGKILL);
        }
    }

    fn in_flight(&self) -> usize {
        self.workers.iter().map(|w| w.slot.in_flight()).sum()
    }

    fn worker_mut(&mut self, id: u64) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.id == id)
    }
}

/// Asks a worker to stop: its group gets `signal`; an adopted master is told to stop its
/// children gracefully and exit by its own signal instead (Unicorn's TERM would drop its
/// children's requests). Anything left of the group is killed at the deadline as usual.
fn send_stop(w: &Worker, signal: Signal, procs: &dyn Processes) {
    let (target, signal) = match &w.brood {
        Some(brood) => (brood.master, brood.server.control().stop_master),
        None => (w.pid, signal),
    };
    event!(
        Info,
        "stop",
        worker = w.id,
        pid = target,
        signal = signal.as_str()
    );
    if w.brood.is_some() {
        procs.signal(target, signal);
    } else {
        procs.signal_group(target, signal);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! The state machine on simulated processes and time: no fork, no sleep.

    use std::sync::atomic::{AtomicI32, AtomicU16, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::sys::memory::TreeMemory;
    use crate::sys::prefork::{Prefork, Server};

    #[derive(Default)]
    struct Record {
        spawned: Vec<(u64, Pid)>,
        /// `WEB_CONCURRENCY` of each spawn.
        concurrency: Vec<usize>,
        /// Signals to process groups.
        signals: Vec<(Pid, Signal)>,
        /// Signals to one process.
        direct: Vec<(Pid, Signal)>,
        /// Workers whose trees were inspected.
        inspected: Vec<u64>,
        /// Warm-ups started: the worker, the GETs, how many at once.
        warmed: Vec<(u64, u32, u32)>,
        /// Groups with a process left in them, their leader's exit aside.
        groups_alive: Vec<Pid>,
    }

    struct Fake {
        record: Arc<Mutex<Record>>,
        next_pid: AtomicI32,
        next_port: AtomicU16,
    }

    impl Processes for Fake {
        fn spawn(&self, spec: &Spawn<'_>) -> std::io::Result<Pid> {
            let pid = Pid::from_raw(self.next_pid.fetch_add(1, Ordering::Relaxed));
            let mut record = self.record.lock().expect("test lock");
            record.spawned.push((spec.id, pid));
            record.concurrency.push(spec.web_concurrency);
            Ok(pid)
        }

        fn group_alive(&self, pid: Pid) -> bool {
            let record = self.record.lock().expect("test lock");
            record.groups_alive.contains(&pid)
        }

        fn signal(&self, pid: Pid, signal: Signal) {
            self.record
                .lock()
                .expect("test lock")
                .direct
                .push((pid, signal));
        }

        fn inspect(&self, id: u64, _pid: Pid, _port: u16, _events: mpsc::UnboundedSender<Event>) {
            // Tests deliver what was found themselves.
            self.record.lock().expect("test lock").inspected.push(id);
        }

        fn signal_group(&self, pid: Pid, signal: Signal) {
            self.record
                .lock()
                .expect("test lock")
                .signals
                .push((pid, signal));
        }

        fn free_port(&self, _taken: &[u16]) -> Option<u16> {
            Some(self.next_port.fetch_add(1, Ordering::Relaxed))
        }

        fn measure(&self, _targets: Vec<worker::Target>, _events: mpsc::UnboundedSender<Event>) {
            // Tests deliver samples themselves.
        }

        fn warm_up(
            &self,
            id: u64,
            _addr: SocketAddr,
            warmup: warmup::Warmup,
            _events: mpsc::UnboundedSender<Event>,
        ) -> AbortHandle {
            // Tests deliver the warm-up's result themselves.
            let mut record = self.record.lock().expect("test lock");
            record.warmed.push((id, warmup.requests, warmup.at_once));
            tokio::spawn(std::future::pending::<()>()).abort_handle()
        }

        fn watch_ready(
            &self,
            _id: u64,
            _addr: SocketAddr,
            _health_path: Option<String>,
            _events: mpsc::UnboundedSender<Event>,
        ) -> AbortHandle {
            // Tests deliver readiness themselves.
            tokio::spawn(std::future::pending::<()>()).abort_handle()
        }
    }

    struct Harness {
        sup: Supervisor,
        record: Arc<Mutex<Record>>,
        dispatcher: Arc<Dispatcher>,
        links: Links,
        t0: Instant,
    }

    impl Harness {
        fn new(config: Config) -> Self {
            let record = Arc::new(Mutex::new(Record::default()));
            let fake = Fake {
                record: Arc::clone(&record),
                next_pid: AtomicI32::new(1000),
                next_port: AtomicU16::new(20000),
            };
            let dispatcher = Dispatcher::new(1, 10, Duration::from_secs(1));
            let (sup, links) = Supervisor::new(
                &Arc::new(config),
                AppCommand::Argv(vec!["app".into()]),
                Arc::clone(&dispatcher),
                Box::new(fake),
                Facts {
                    physical: Some(8 << 30),
                    cpus: 4,
                    ..Facts::default()
                },
            );
            Harness {
                sup,
                record,
                dispatcher,
                links,
                t0: Instant::now(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        fn spawned(&self) -> Vec<(u64, Pid)> {
            self.record.lock().expect("test lock").spawned.clone()
        }

        fn signals(&self) -> Vec<(Pid, Signal)> {
            self.record.lock().expect("test lock").signals.clone()
        }

        fn direct(&self) -> Vec<(Pid, Signal)> {
            self.record.lock().expect("test lock").direct.clone()
        }

        fn pid(&self, id: u64) -> Pid {
            self.spawned()
                .into_iter()
                .find(|(i, _)| *i == id)
                .map(|(_, pid)| pid)
                .expect("worker was spawned")
        }

        /// Delivers an event at `ms` and reconciles, as the run loop does.
        fn step(&mut self, event: Event, ms: u64) -> Option<Done> {
            let now = self.at(ms);
            self.sup
                .handle(event, now)
                .or_else(|| self.sup.reconcile(now))
        }

        fn exit(&mut self, id: u64, ms: u64) -> Option<Done> {
            let pid = self.pid(id);
            self.step(
                Event::Exited {
                    pid,
                    how: Exit::Code(1),
                },
                ms,
            )
        }

        fn tick(&mut self, ms: u64) -> Option<Done> {
            let now = self.at(ms);
            self.sup
                .on_deadlines(now)
                .or_else(|| self.sup.reconcile(now))
        }
    }

    /// Pool mode: most tests are about instances of the command; the prefork tests below
    /// ask for auto.
    fn config(workers: usize) -> Config {
        Config {
            min_workers: workers,
            max_boot_failures: 3,
            boot_timeout: Duration::from_secs(5),
            mode: crate::config::Mode::Pool,
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn starts_the_pool_and_routes_only_to_ready_workers() {
        let mut h = Harness::new(config(2));
        assert_eq!(h.sup.reconcile(h.t0), None);
        assert_eq!(h.spawned().len(), 2);
        assert!(h.dispatcher.routable().is_empty());
        h.step(Event::Ready { id: 2 }, 10);
        assert_eq!(h.dispatcher.routable(), [2]);
        assert!(h.links.first_ready.has_changed().unwrap_or(false));
        h.step(Event::Ready { id: 1 }, 20);
        assert_eq!(h.dispatcher.routable(), [1, 2]);
        assert_eq!(
            h.spawned().len(),
            2,
            "no extra worker once the pool is full"
        );
    }

    #[tokio::test]
    async fn failed_boots_back_off_exponentially_then_give_up() {
        let mut h = Harness::new(config(1));
        h.sup.reconcile(h.t0);
        assert_eq!(h.exit(1, 0), None);
        // 1s of backoff: nothing at 999ms, a new worker at 1000ms.
        assert_eq!(h.tick(999), None);
        assert_eq!(h.spawned().len(), 1);
        assert_eq!(h.sup.next_deadline(h.at(999)), Some(h.at(1000)));
        h.tick(1000);
        assert_eq!(h.spawned().len(), 2);
        assert_eq!(h.exit(2, 1000), None);
        // Then 2s.
        h.tick(2999);
        assert_eq!(h.spawned().len(), 2);
        h.tick(3000);
        assert_eq!(h.spawned().len(), 3);
        let outcome = h.exit(3, 3000);
        let Some(Err(fatal @ Fatal::CannotBoot { .. })) = outcome else {
            panic!("expected molt to give up, got {outcome:?}");
        };
        assert_eq!(
            fatal.to_string(),
            "the app failed to boot 3 time(s) in a row (MOLT_MAX_BOOT_FAILURES=3): \
             the command exited with status 1 before accepting connections on its PORT"
        );
    }

    #[tokio::test]
    async fn a_worker_that_was_ready_is_replaced_at_once_and_never_gives_up() {
        let mut h = Harness::new(config(1));
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 10);
        assert_eq!(h.exit(1, 20), None);
        assert_eq!(h.spawned().len(), 2, "a crash is replaced without backoff");
        assert!(h.dispatcher.routable().is_empty());
        // Boot failures after the app once booted back off but never end molt.
        for (n, ms) in [(2, 30), (3, 1030), (4, 3030), (5, 7030)] {
            assert_eq!(h.exit(n, ms), None);
            h.tick(ms + 60_000);
        }
        assert_eq!(h.spawned().len(), 6);
    }

    #[tokio::test]
    async fn boot_timeout_kills_the_group_and_counts_a_failure() {
        let mut h = Harness::new(config(1));
        h.sup.reconcile(h.t0);
        // The first memory sample is due at once; once it is under way, the boot
        // timeout is the next deadline.
        h.tick(0);
        assert_eq!(h.sup.next_deadline(h.t0), Some(h.at(5000)));
        assert_eq!(h.tick(4999), None);
        assert!(h.signals().is_empty());
        assert_eq!(h.tick(5000), None);
        assert_eq!(h.signals(), [(h.pid(1), Signal::SIGKILL)]);
        // The killed worker's exit is not a second failure; the replacement waits 1s.
        let pid = h.pid(1);
        h.step(
            Event::Exited {
                pid,
                how: Exit::Signal(Signal::SIGKILL),
            },
            5001,
        );
        assert_eq!(h.sup.boot_failures, 1);
        h.tick(6000);
        assert_eq!(h.spawned().len(), 2);
    }

    #[tokio::test]
    async fn rolling_restart_keeps_capacity_and_goes_one_at_a_time() {
        let mut h = Harness::new(config(2));
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 0);
        h.step(Event::Ready { id: 2 }, 0);
        h.step(Event::Command(Command::Restart), 100);
        // The replacement starts first; the old worker keeps serving meanwhile.
        assert_eq!(h.spawned().len(), 3);
        assert_eq!(h.dispatcher.routable(), [1, 2]);
        h.step(Event::Ready { id: 3 }, 200);
        // Now worker 1 drains: no new requests; it has none in flight, so it stops.
        assert_eq!(h.dispatcher.routable(), [2, 3]);
        h.step(Event::Drained { id: 1 }, 210);
        assert_eq!(h.signals(), [(h.pid(1), Signal::SIGTERM)]);
        assert_eq!(h.spawned().len(), 3, "one recycle at a time");
        h.exit(1, 300);
        // Only now does worker 2's turn come.
        assert_eq!(h.spawned().len(), 4);
        h.step(Event::Ready { id: 4 }, 400);
        h.step(Event::Drained { id: 2 }, 410);
        h.exit(2, 500);
        assert_eq!(h.dispatcher.routable(), [3, 4]);
        assert_eq!(h.spawned().len(), 4);
    }

    #[tokio::test]
    async fn shutdown_drains_stops_and_never_respawns() {
        let mut h = Harness::new(config(2));
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 0);
        h.step(Event::Ready { id: 2 }, 0);
        h.step(
            Event::Shutdown {
                signal: Signal::SIGTERM,
            },
            100,
        );
        assert!(*h.links.shutdown.borrow());
        // Heroku signalled the worker too; it exits and is not replaced.
        assert_eq!(h.exit(1, 150), None);
        assert_eq!(h.spawned().len(), 2);
        // A second SIGTERM changes nothing.
        h.step(
            Event::Shutdown {
                signal: Signal::SIGTERM,
            },
            160,
        );
        h.step(Event::ProxyIdle, 200);
        // Worker 1 left nothing in its group, so nothing is signalled there.
        assert_eq!(h.signals(), [(h.pid(2), Signal::SIGTERM)]);
        assert_eq!(h.exit(2, 300), Some(Ok(Outcome::Stopped)));
    }

    #[tokio::test]
    async fn stop_timeout_escalates_to_sigkill_and_shutdown_timeout_stops_waiting() {
        let mut h = Harness::new(Config {
            shutdown_timeout: Duration::from_secs(2),
            stop_timeout: Duration::from_secs(3),
            ..config(1)
        });
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 0);
        h.step(
            Event::Shutdown {
                signal: Signal::SIGTERM,
            },
            0,
        );
        // In-flight requests never finish: the shutdown deadline stops the worker.
        assert_eq!(h.tick(2000), None);
        assert_eq!(h.signals(), [(h.pid(1), Signal::SIGTERM)]);
        assert_eq!(h.tick(5000), None);
        assert_eq!(
            h.signals(),
            [(h.pid(1), Signal::SIGTERM), (h.pid(1), Signal::SIGKILL)]
        );
        let pid = h.pid(1);
        let outcome = h.step(
            Event::Exited {
                pid,
                how: Exit::Signal(Signal::SIGKILL),
            },
            5001,
        );
        assert_eq!(outcome, Some(Ok(Outcome::Stopped)));
    }

    #[tokio::test]
    async fn a_group_whose_leader_exited_gets_the_stop_timeout_before_sigkill() {
        // `bash -c 'app && echo'`: the shell dies on SIGTERM at once, the app takes its time.
        let mut h = Harness::new(Config {
            stop_timeout: Duration::from_secs(10),
            ..config(1)
        });
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 10);
        let leader = h.pid(1);
        h.step(
            Event::Shutdown {
                signal: Signal::SIGTERM,
            },
            20,
        );
        h.step(Event::ProxyIdle, 30);
        assert_eq!(h.signals(), [(leader, Signal::SIGTERM)]);
        h.record
            .lock()
            .expect("test lock")
            .groups_alive
            .push(leader);
        let exited = Event::Exited {
            pid: leader,
            how: Exit::Signal(Signal::SIGTERM),
        };
        assert_eq!(h.step(exited, 40), None, "the app is still shutting down");
        assert_eq!(h.signals(), [(leader, Signal::SIGTERM)], "no SIGKILL yet");
        assert_eq!(h.sup.next_deadline(h.at(40)), Some(h.at(10_030)));
        assert_eq!(h.tick(5_000), None);
        assert_eq!(h.signals(), [(leader, Signal::SIGTERM)]);
        // The app finishes, is reaped as an orphan of molt's, and molt is done.
        h.record.lock().expect("test lock").groups_alive.clear();
        let app = Event::Exited {
            pid: Pid::from_raw(4242),
            how: Exit::Code(0),
        };
        assert_eq!(h.step(app, 6_000), Some(Ok(Outcome::Stopped)));
        assert_eq!(h.signals(), [(leader, Signal::SIGTERM)], "never SIGKILL");
    }

    #[tokio::test]
    async fn a_lingering_group_is_killed_at_its_stop_timeout() {
        let mut h = Harness::new(Config {
            stop_timeout: Duration::from_secs(10),
            ..config(1)
        });
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 10);
        let leader = h.pid(1);
        // The leader crashes by itself and leaves a child in its group: the child is told
        // to stop as a worker would be, and killed only at the stop timeout.
        h.record
            .lock()
            .expect("test lock")
            .groups_alive
            .push(leader);
        h.exit(1, 100);
        h.step(Event::Ready { id: 2 }, 200);
        assert_eq!(h.signals(), [(leader, Signal::SIGTERM)]);
        h.tick(10_099);
        assert_eq!(h.signals(), [(leader, Signal::SIGTERM)]);
        h.tick(10_100);
        assert_eq!(
            h.signals(),
            [(leader, Signal::SIGTERM), (leader, Signal::SIGKILL)]
        );
        assert!(h.sup.lingering.is_empty());
    }

    #[tokio::test]
    async fn requests_get_their_answer_once_no_worker_can_take_them() {
        use crate::run::proxy::dispatch::Overload;
        // Shutting down, and the platform's SIGTERM took every worker: nothing will serve.
        let mut h = Harness::new(config(2));
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 0);
        h.step(Event::Ready { id: 2 }, 0);
        h.step(
            Event::Shutdown {
                signal: Signal::SIGTERM,
            },
            100,
        );
        h.exit(1, 150);
        assert!(
            h.dispatcher.acquire().await.is_ok(),
            "worker 2 still serves"
        );
        h.exit(2, 160);
        assert_eq!(h.dispatcher.acquire().await.err(), Some(Overload::Closed));

        // Or the app never booted and molt gave up.
        let mut h = Harness::new(config(1));
        h.sup.reconcile(h.t0);
        h.exit(1, 0);
        h.tick(1000);
        h.exit(2, 1000);
        h.tick(3000);
        let queued = {
            let d = Arc::clone(&h.dispatcher);
            tokio::spawn(async move { d.acquire().await.err() })
        };
        while h.dispatcher.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            h.exit(3, 3000),
            Some(Err(Fatal::CannotBoot { .. }))
        ));
        assert_eq!(queued.await.expect("task ran"), Some(Overload::Closed));
    }

    #[tokio::test]
    async fn right_after_a_recycle_the_pool_never_reads_as_empty() {
        // Regression: `sample#molt.workers.ready=1 sample#molt.memory.pool=0.0MB` once the
        // old worker had gone and its replacement was not measured yet.
        let mut h = Harness::new(Config {
            metrics_interval: Some(Duration::from_secs(60)),
            ..config(1)
        });
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 0);
        h.step(sampled(&[(1, 80 * MB)]), 10);
        h.step(Event::Command(Command::Restart), 100);
        h.step(Event::Ready { id: 2 }, 200);
        // Becoming ready asks for a sample at once.
        assert!(h.sup.next_sample <= h.at(200));
        h.step(Event::Drained { id: 1 }, 210);
        h.exit(1, 300);
        assert_eq!(h.dispatcher.routable(), [2]);

        // The metrics line and `molt status` due now wait for worker 2's first sample.
        h.sup.emit_metrics(h.at(310));
        let (tx, mut status) = tokio::sync::oneshot::channel();
        h.step(Event::Command(Command::Status(tx)), 320);
        assert!(h.sup.metrics_lines.is_empty());
        assert!(status.try_recv().is_err(), "held");

        h.step(sampled(&[(2, 60 * MB)]), 400);
        let line = h.sup.metrics_lines.concat();
        assert!(
            line.contains("sample#molt.workers.ready=1 sample#molt.memory.pool=60.0MB"),
            "{line}"
        );
        let report = status.try_recv().expect("answered after the sample");
        assert_eq!(report.pool_memory, 60 * MB);

        // With every ready worker measured, nothing waits.
        h.sup.emit_metrics(h.at(60_400));
        assert_eq!(h.sup.metrics_lines.len(), 2);
    }

    #[tokio::test]
    async fn a_held_report_waits_two_samples_at_most() {
        let mut h = Harness::new(config(1));
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 0);
        let (tx, mut status) = tokio::sync::oneshot::channel();
        h.step(Event::Command(Command::Status(tx)), 10);
        // Samples that could not read the worker (its /proc unreadable).
        h.step(sampled(&[]), 100);
        assert!(status.try_recv().is_err());
        h.step(sampled(&[]), 2100);
        assert_eq!(status.try_recv().expect("answered").pool_memory, 0);
    }

    #[tokio::test]
    async fn second_sigint_kills_every_group() {
        let mut h = Harness::new(config(2));
        h.sup.reconcile(h.t0);
        let int = || Event::Shutdown {
            signal: Signal::SIGINT,
        };
        assert_eq!(h.step(int(), 10), None);
        assert_eq!(h.step(int(), 20), Some(Ok(Outcome::Interrupted)));
        assert_eq!(
            h.signals(),
            [(h.pid(1), Signal::SIGKILL), (h.pid(2), Signal::SIGKILL)]
        );
    }

    #[tokio::test]
    async fn reaped_orphans_change_nothing() {
        let mut h = Harness::new(config(1));
        h.sup.reconcile(h.t0);
        let orphan = Event::Exited {
            pid: Pid::from_raw(77),
            how: Exit::Code(0),
        };
        assert_eq!(h.step(orphan, 10), None);
        assert_eq!(h.spawned().len(), 1);
        assert_eq!(h.sup.boot_failures, 0);
    }

    const MB: u64 = 1024 * 1024;

    fn sampled(memory: &[(u64, u64)]) -> Event {
        Event::Sampled {
            samples: memory
                .iter()
                .map(|&(id, bytes)| {
                    let tree = TreeMemory {
                        bytes,
                        private: bytes,
                        processes: 1,
                        cpu_ticks: 0,
                        exact: true,
                    };
                    (id, Some(tree))
                })
                .collect(),
            children: Vec::new(),
            molt_rss: Some(5 * MB),
        }
    }

    fn capped(workers: usize, limit: u64) -> Config {
        use crate::config::MemoryAmount;
        Config {
            memory_limit: Some(limit),
            worker_memory: Some(MemoryAmount::Bytes(100 * MB)),
            worker_memory_hard: Some(MemoryAmount::Bytes(150 * MB)),
            max_workers: Some(workers),
            ..config(workers)
        }
    }

    /// A harness with `workers` ready workers.
    fn ready(config: Config, workers: u64) -> Harness {
        let mut h = Harness::new(config);
        h.sup.reconcile(h.t0);
        for id in 1..=workers {
            h.step(Event::Ready { id }, 0);
        }
        h
    }

    #[tokio::test]
    async fn worker_over_its_hard_cap_is_killed_at_once() {
        let mut h = ready(capped(2, 1024 * MB), 2);
        h.step(sampled(&[(1, 200 * MB), (2, 40 * MB)]), 100);
        assert_eq!(h.signals(), [(h.pid(1), Signal::SIGKILL)]);
        assert_eq!(h.dispatcher.routable(), [2]);
        h.exit(1, 110);
        assert_eq!(h.spawned().len(), 3, "the killed worker is replaced");
    }

    #[tokio::test]
    async fn a_worker_that_refuses_connections_is_replaced() {
        let mut h = ready(capped(2, 1024 * MB), 2);
        h.step(Event::Refused { id: 1 }, 100);
        assert_eq!(h.spawned().len(), 3, "the replacement starts first");
        h.step(Event::Ready { id: 3 }, 200);
        assert_eq!(h.dispatcher.routable(), [2, 3]);
        h.step(Event::Drained { id: 1 }, 210);
        assert_eq!(h.signals(), [(h.pid(1), Signal::SIGTERM)]);
        // A worker that already left is not recycled again.
        h.exit(1, 220);
        h.step(Event::Refused { id: 1 }, 230);
        assert_eq!(h.spawned().len(), 3);
    }

    #[tokio::test]
    async fn a_hard_kill_does_not_count_toward_the_pool_guard() {
        // 1024MB: the pool guard kills at about 947MB; worker 1 alone puts the pool there.
        let mut h = ready(capped(2, 1024 * MB), 2);
        h.step(sampled(&[(1, 960 * MB), (2, 40 * MB)]), 100);
        assert_eq!(
            h.signals(),
            [(h.pid(1), Signal::SIGKILL)],
            "worker 2 is spared"
        );
        assert_eq!(h.dispatcher.routable(), [2]);
    }

    #[tokio::test]
    async fn worker_over_its_soft_cap_is_replaced_first_then_drained() {
        let mut h = ready(capped(2, 1024 * MB), 2);
        h.step(sampled(&[(1, 120 * MB), (2, 40 * MB)]), 100);
        // Memory allows an extra worker: the replacement starts while 1 still serves.
        assert_eq!(h.spawned().len(), 3);
        assert_eq!(h.dispatcher.routable(), [1, 2]);
        assert!(h.signals().is_empty(), "no signal before the drain");
        h.step(Event::Ready { id: 3 }, 200);
        assert_eq!(h.dispatcher.routable(), [2, 3]);
        h.step(Event::Drained { id: 1 }, 210);
        assert_eq!(h.signals(), [(h.pid(1), Signal::SIGTERM)]);
    }

    #[tokio::test]
    async fn without_room_for_an_extra_worker_the_old_one_drains_first() {
        // 300MB x 85% - 5MB = 250MB usable; 120 + 90 + a 90MB replacement do not fit.
        let mut h = ready(capped(2, 300 * MB), 0);
        let pid = h.pid(1);
        // Samples once ready, before any request, set the boot footprint at 90MB.
        h.step(Event::Ready { id: 1 }, 60);
        h.step(Event::Ready { id: 2 }, 60);
        h.step(sampled(&[(1, 90 * MB), (2, 90 * MB)]), 70);
        h.step(sampled(&[(1, 120 * MB), (2, 90 * MB)]), 100);
        assert_eq!(h.dispatcher.routable(), [2], "drains at once");
        assert_eq!(h.spawned().len(), 2, "no replacement until it is gone");
        h.step(Event::Drained { id: 1 }, 110);
        assert_eq!(h.signals(), [(pid, Signal::SIGTERM)]);
        h.exit(1, 120);
        assert_eq!(h.spawned().len(), 3);
    }

    #[tokio::test]
    async fn cap_below_the_boot_footprint_pauses_memory_recycling() {
        let mut config = capped(1, 1024 * MB);
        config.worker_memory = Some(crate::config::MemoryAmount::Bytes(10 * MB));
        let mut h = Harness::new(config);
        h.sup.reconcile(h.t0);
        let mut ms = 0;
        for id in 1..=2 {
            // Over the cap already while booting, before any request.
            h.step(sampled(&[(id, 50 * MB)]), ms);
            h.step(Event::Ready { id }, ms + 1);
            h.step(sampled(&[(id, 50 * MB)]), ms + 2);
            // Replacement first: the next worker boots, then this one drains and exits.
            assert_eq!(h.spawned().len(), usize::try_from(id).expect("small") + 1);
            h.step(Event::Ready { id: id + 1 }, ms + 3);
            h.step(Event::Drained { id }, ms + 4);
            h.exit(id, ms + 5);
            ms += 10;
        }
        assert!(h.sup.guard.paused_until.is_none());
        // The third worker over its cap at boot trips the guard instead of a recycle.
        h.step(sampled(&[(3, 50 * MB)]), ms);
        assert!(h.sup.guard.paused_until.is_some());
        assert_eq!(h.spawned().len(), 3, "no replacement started");
        assert_eq!(h.dispatcher.routable(), [3]);
        h.step(sampled(&[(3, 60 * MB)]), ms + 100);
        assert_eq!(h.spawned().len(), 3, "still paused");
    }

    #[tokio::test]
    async fn the_measured_footprint_outlives_the_worker_it_came_from() {
        let mut h = ready(capped(1, 1024 * MB), 0);
        h.step(sampled(&[(1, 60 * MB)]), 10);
        h.step(Event::Ready { id: 1 }, 20);
        h.step(sampled(&[(1, 60 * MB)]), 30);
        assert_eq!(h.sup.facts.worker_footprint, Some(60 * MB));
        h.exit(1, 40);
        h.step(Event::Ready { id: 2 }, 50);
        // Under load from its first moment: never sampled idle.
        let _lease = h.dispatcher.acquire().await.expect("worker 2 is free");
        h.step(sampled(&[(2, 80 * MB)]), 60);
        assert_eq!(h.sup.facts.worker_footprint, Some(60 * MB));
    }

    #[tokio::test]
    async fn caps_hold_through_a_replacement_measured_a_little_smaller() {
        // The run this answers: footprint 75.39 MB, then a replacement measured at
        // 66.82 MB while traffic was quiet, and the soft cap fell from 143.62 MB to 107.68 MB.
        let mut h = ready(
            Config {
                memory_limit: Some(512 * MB),
                ..config(1)
            },
            1,
        );
        h.step(sampled(&[(1, 75 * MB)]), 10);
        let before = h.sup.budget.clone();
        assert_eq!(h.sup.facts.worker_footprint, Some(75 * MB));
        h.step(Event::Command(Command::Restart), 100);
        h.step(Event::Ready { id: 2 }, 200);
        h.step(Event::Drained { id: 1 }, 210);
        h.exit(1, 300);
        for ms in [400, 2400, 4400, 6400, 8400] {
            h.step(sampled(&[(2, 67 * MB)]), ms);
        }
        assert_eq!(h.sup.facts.worker_footprint, Some(75 * MB));
        assert_eq!(
            (h.sup.budget.soft_cap, h.sup.budget.max_workers),
            (before.soft_cap, before.max_workers)
        );
        // A real difference, sustained, moves them.
        for ms in [10_400, 12_400, 14_400] {
            h.step(sampled(&[(2, 110 * MB)]), ms);
        }
        assert_eq!(h.sup.facts.worker_footprint, Some(110 * MB));
        assert!(
            h.sup.budget.max_workers < before.max_workers,
            "{:?}",
            h.sup.budget
        );
    }

    #[tokio::test]
    async fn workers_learn_their_concurrency_unless_it_is_fixed() {
        use crate::config::Concurrency;
        // auto, the default: each worker learns, starting at its processes.
        let mut h = Harness::new(Config {
            worker_processes: 3,
            ..config(1)
        });
        h.sup.reconcile(h.t0);
        let slot = Arc::clone(&h.sup.workers[0].slot);
        assert_eq!(slot.learned().map(|l| l.limit), Some(3));
        assert_eq!(h.dispatcher.capacity_of(&slot), Some(3));
        // A fixed number: the dispatcher's capacity, nothing learnt.
        let mut h = Harness::new(Config {
            worker_concurrency: Concurrency::Fixed(2),
            ..config(1)
        });
        h.sup.reconcile(h.t0);
        assert!(h.sup.workers[0].slot.learned().is_none());
    }

    #[tokio::test]
    async fn a_worker_busy_from_its_first_moment_still_sizes_the_pool() {
        // No caps or maximum set: both follow from the footprint.
        let mut h = ready(
            Config {
                memory_limit: Some(1024 * MB),
                ..config(1)
            },
            0,
        );
        h.step(Event::Ready { id: 1 }, 10);
        assert_eq!(h.sup.budget.max_workers, 1, "min_workers until measured");
        // Under load from its first moment: never sampled idle.
        drop(h.dispatcher.acquire().await.expect("worker 1 is free"));
        h.step(sampled(&[(1, 50 * MB)]), 20);
        assert_eq!(h.sup.facts.worker_footprint, Some(50 * MB));
        assert!(h.sup.budget.max_workers > 1, "{:?}", h.sup.budget);
        // Its later, larger samples are growth, not footprint.
        h.step(sampled(&[(1, 90 * MB)]), 30);
        assert_eq!(h.sup.facts.worker_footprint, Some(50 * MB));
    }

    // -- Warm-up and recycling in lulls --

    fn warming(config: Config) -> Config {
        Config {
            warmup_path: Some("/warm".into()),
            warmup_requests: 3,
            ..config
        }
    }

    fn warmed(id: u64) -> Event {
        Event::Warmed { id, result: Ok(()) }
    }

    #[tokio::test]
    async fn a_new_worker_takes_traffic_only_once_warmed_up() {
        let mut h = Harness::new(warming(config(1)));
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 100);
        assert!(h.dispatcher.routable().is_empty(), "accepting, not warm");
        assert_eq!(h.record.lock().expect("test lock").warmed, [(1, 3, 1)]);
        // A second Ready (a late probe) starts nothing more.
        h.step(Event::Ready { id: 1 }, 110);
        assert_eq!(h.record.lock().expect("test lock").warmed.len(), 1);
        h.step(warmed(1), 200);
        assert_eq!(h.dispatcher.routable(), [1]);
        assert!(h.sup.workers[0].slot.warmth() >= crate::run::proxy::dispatch::WARM_AFTER);
        assert!(*h.links.first_ready.borrow());
    }

    #[tokio::test]
    async fn a_failed_warm_up_is_a_failed_boot_with_its_reason() {
        let mut h = Harness::new(warming(config(1)));
        h.sup.reconcile(h.t0);
        let failure = || Event::Warmed {
            id: 0,
            result: Err(WarmupFailure::Status {
                path: "/warm".into(),
                status: 500,
            }),
        };
        let mut outcome = None;
        for (id, ms) in [(1, 0), (2, 1100), (3, 3200)] {
            h.tick(ms);
            assert_eq!(h.spawned().len(), usize::try_from(id).expect("small"));
            h.step(Event::Ready { id }, ms);
            let Event::Warmed { result, .. } = failure() else {
                unreachable!()
            };
            outcome = h.step(Event::Warmed { id, result }, ms + 1);
            assert!(h.signals().contains(&(h.pid(id), Signal::SIGKILL)));
            assert!(h.dispatcher.routable().is_empty());
            if outcome.is_none() {
                h.exit(id, ms + 2);
            }
        }
        let Some(Err(fatal)) = outcome else {
            panic!("three failed warm-ups before any worker was ready: {outcome:?}");
        };
        assert_eq!(
            fatal.to_string(),
            "the app failed to boot 3 time(s) in a row (MOLT_MAX_BOOT_FAILURES=3): the warm-up \
             request GET /warm (MOLT_WARMUP_PATH) answered 500; the warm-up path must answer \
             below 500"
        );
    }

    #[tokio::test]
    async fn a_warm_up_gets_a_moment_past_the_boot_timeout_to_say_how_far_it_got() {
        let mut h = Harness::new(warming(config(1)));
        h.sup.reconcile(h.t0);
        h.tick(0);
        h.step(Event::Ready { id: 1 }, 4000);
        // Boot timeout 5s: the warm-up's own deadline; the supervisor's is a moment later.
        assert_eq!(h.tick(5000), None);
        assert!(h.signals().is_empty());
        h.tick(6000);
        assert_eq!(h.signals(), [(h.pid(1), Signal::SIGKILL)]);
        assert_eq!(h.sup.boot_failures, 1);
        assert!(h
            .sup
            .warmup_timed_out(Duration::from_secs(5))
            .to_string()
            .starts_with("the warm-up requests GET /warm (MOLT_WARMUP_PATH) were not answered"));
    }

    #[tokio::test]
    async fn a_rolling_restart_warms_each_replacement_before_the_old_worker_drains() {
        let mut h = ready(warming(config(2)), 0);
        for id in 1..=2 {
            h.step(Event::Ready { id }, 0);
            h.step(warmed(id), 0);
        }
        h.step(Event::Command(Command::Restart), 100);
        h.step(Event::Ready { id: 3 }, 200);
        assert_eq!(h.dispatcher.routable(), [1, 2], "3 is warming up");
        h.step(warmed(3), 300);
        assert_eq!(h.dispatcher.routable(), [2, 3]);
    }

    #[tokio::test]
    async fn new_children_of_an_adopted_master_are_warmed_through_its_port() {
        let mut h = Harness::new(warming(auto(3)));
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 0);
        h.step(warmed(1), 5);
        h.step(found(&[5001]), 10);
        let warmups = |h: &Harness| h.record.lock().expect("test lock").warmed.clone();
        assert_eq!(
            warmups(&h),
            [(1, 3, 1)],
            "the instance, before it was ready"
        );
        h.step(prefork_sample(20 * MB, &[(5001, 30 * MB)]), 100);
        assert_eq!(warmups(&h).len(), 1, "a known child is not warmed again");
        // Two children forked since: six GETs to the master's port, two at a time.
        h.step(
            prefork_sample(
                20 * MB,
                &[(5001, 30 * MB), (5002, 30 * MB), (5003, 30 * MB)],
            ),
            200,
        );
        assert_eq!(warmups(&h), [(1, 3, 1), (1, 6, 2)]);
        // Its result is only logged: the instance stays ready.
        h.step(
            Event::Warmed {
                id: 1,
                result: Err(WarmupFailure::Status {
                    path: "/warm".into(),
                    status: 502,
                }),
            },
            300,
        );
        assert_eq!(h.dispatcher.routable(), [1]);
        assert!(h.signals().is_empty());
    }

    /// A sample of each (worker, bytes).
    fn grow(h: &mut Harness, memory: &[(u64, u64)], ms: u64) {
        h.step(sampled(memory), ms);
    }

    #[tokio::test]
    async fn a_worker_near_its_cap_is_recycled_early_in_a_lull() {
        let run = |horizon: Option<Duration>| {
            let mut h = ready(
                Config {
                    recycle_horizon: horizon,
                    ..capped(2, 1024 * MB)
                },
                2,
            );
            grow(&mut h, &[(1, 40 * MB), (2, 40 * MB)], 1_000);
            // Warm by time after a minute: growth is measured from here.
            grow(&mut h, &[(1, 40 * MB), (2, 40 * MB)], 61_000);
            // Worker 1 grew 40 MB in a minute: 20 MB from its 100 MB cap, 30 s away.
            grow(&mut h, &[(1, 80 * MB), (2, 41 * MB)], 121_000);
            h
        };
        let h = run(None);
        assert_eq!(h.spawned().len(), 2, "without a horizon, the cap decides");
        let mut h = run(Some(Duration::from_secs(600)));
        // No traffic at all is a lull: worker 1's replacement starts first.
        assert_eq!(h.spawned().len(), 3);
        assert_eq!(
            h.sup.recycling.map(|r| (r.id, r.reason)),
            Some((1, Reason::Lull))
        );
        h.step(Event::Ready { id: 3 }, 122_000);
        assert_eq!(h.dispatcher.routable(), [2, 3]);
        // One early recycle at a time: worker 2 does not grow, and is left alone.
        h.step(Event::Drained { id: 1 }, 122_100);
        h.exit(1, 122_200);
        grow(&mut h, &[(2, 42 * MB), (3, 40 * MB)], 181_000);
        assert_eq!(h.spawned().len(), 3);
    }

    #[tokio::test]
    async fn no_early_recycle_while_requests_queue() {
        let mut h = ready(
            Config {
                recycle_horizon: Some(Duration::from_secs(600)),
                ..capped(1, 1024 * MB)
            },
            1,
        );
        grow(&mut h, &[(1, 40 * MB)], 1_000);
        grow(&mut h, &[(1, 40 * MB)], 61_000);
        let _busy = h.dispatcher.acquire().await.expect("worker 1 is free");
        let dispatcher = Arc::clone(&h.dispatcher);
        let queued = tokio::spawn(async move { dispatcher.acquire().await.map(drop) });
        for _ in 0..100 {
            if h.dispatcher.queued() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(h.dispatcher.queued(), 1, "a request waits");
        grow(&mut h, &[(1, 80 * MB)], 121_000);
        assert!(h.sup.recycling.is_none(), "{:?}", h.sup.recycling);
        queued.abort();
    }

    // -- Prefork: an adopted master, its children governed by signals --

    const MASTER: i32 = 5000;

    fn tree(bytes: u64, private: u64) -> TreeMemory {
        TreeMemory {
            bytes,
            private,
            processes: 1,
            cpu_ticks: 0,
            exact: true,
        }
    }

    fn found(children: &[i32]) -> Event {
        Event::Inspected {
            id: 1,
            found: Ok(Prefork {
                master: MASTER,
                server: Server::Unicorn,
                children: children.to_vec(),
            }),
        }
    }

    /// A sample of worker 1 as an adopted master: its tree (master and children) and
    /// each child's.
    fn prefork_sample(master_own: u64, children: &[(i32, u64)]) -> Event {
        let total = master_own + children.iter().map(|&(_, b)| b).sum::<u64>();
        Event::Sampled {
            samples: vec![(1, Some(tree(total, total)))],
            children: vec![crate::run::event::ChildSamples {
                id: 1,
                own: master_own,
                children: children
                    .iter()
                    .map(|&(pid, bytes)| (pid, tree(bytes, bytes / 4)))
                    .collect(),
            }],
            molt_rss: Some(5 * MB),
        }
    }

    fn auto(workers: usize) -> Config {
        Config {
            mode: crate::config::Mode::Auto,
            ..capped(workers, 1024 * MB)
        }
    }

    /// An auto-mode harness whose first instance became ready and was found to be a
    /// Unicorn master with `children`.
    fn adopted(config: Config, children: &[i32]) -> Harness {
        let mut h = Harness::new(config);
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 0);
        h.step(found(children), 10);
        h
    }

    #[tokio::test]
    async fn auto_mode_starts_one_instance_and_adopts_a_preforking_master() {
        let mut h = Harness::new(auto(3));
        h.sup.reconcile(h.t0);
        assert_eq!(h.spawned().len(), 1, "one instance until its tree is known");
        h.step(Event::Ready { id: 1 }, 0);
        assert_eq!(h.record.lock().expect("test lock").inspected, [1]);
        assert_eq!(h.spawned().len(), 1);
        h.step(found(&[5001]), 10);
        assert_eq!(h.sup.mode, Mode::Prefork);
        assert_eq!(h.spawned().len(), 1, "its master forks the workers");
        // Three children wanted, one there: the master is asked for one more, then,
        // once a sample shows it, for the next.
        assert_eq!(h.direct(), [(Pid::from_raw(MASTER), Signal::SIGTTIN)]);
        h.step(prefork_sample(20 * MB, &[(5001, 30 * MB)]), 100);
        assert_eq!(h.direct().len(), 1, "one change at a time");
        h.step(
            prefork_sample(20 * MB, &[(5001, 30 * MB), (5002, 30 * MB)]),
            200,
        );
        assert_eq!(h.direct().len(), 2);
        h.step(
            prefork_sample(
                20 * MB,
                &[(5001, 30 * MB), (5002, 30 * MB), (5003, 30 * MB)],
            ),
            300,
        );
        assert_eq!(h.direct().len(), 2, "three children: enough");
        assert_eq!(
            h.sup.workers[0].brood.as_ref().map(|b| b.children.len()),
            Some(3)
        );
        assert_eq!(h.dispatcher.routable(), [1]);
    }

    #[tokio::test]
    async fn auto_mode_keeps_pool_mode_for_a_single_process_app() {
        let mut h = Harness::new(auto(3));
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 0);
        h.step(
            Event::Inspected {
                id: 1,
                found: Err(crate::sys::prefork::NotPrefork::SingleProcess {
                    pid: 1000,
                    title: "python3 app.py".into(),
                }),
            },
            10,
        );
        assert_eq!(h.sup.mode, Mode::Pool);
        assert_eq!(h.spawned().len(), 3, "the rest of the pool starts");
        assert_eq!(h.record.lock().expect("test lock").concurrency, [1, 1, 1]);
    }

    #[tokio::test]
    async fn an_instance_gone_while_looked_at_decides_nothing() {
        let mut h = Harness::new(auto(3));
        h.sup.reconcile(h.t0);
        h.step(Event::Ready { id: 1 }, 0);
        h.step(
            Event::Inspected {
                id: 1,
                found: Err(crate::sys::prefork::NotPrefork::Gone { pid: 1000 }),
            },
            10,
        );
        assert_eq!(h.sup.mode, Mode::Deciding);
        assert_eq!(h.spawned().len(), 1);
    }

    #[tokio::test]
    async fn explicit_prefork_starts_the_master_with_the_children_wanted() {
        let mut h = Harness::new(Config {
            mode: crate::config::Mode::Prefork,
            ..auto(3)
        });
        h.sup.reconcile(h.t0);
        assert_eq!(h.record.lock().expect("test lock").concurrency, [3]);
    }

    #[tokio::test]
    async fn the_masters_capacity_is_its_children() {
        use crate::run::proxy::dispatch::master_backlog;
        let mut h = adopted(
            Config {
                worker_concurrency: crate::config::Concurrency::Fixed(1),
                ..auto(1)
            },
            &[5001, 5002],
        );
        let slot = Arc::clone(&h.sup.workers[0].slot);
        assert_eq!(h.dispatcher.capacity_of(&slot), Some(2));
        // One request in each child, and more waiting in the master's backlog for
        // whichever child finishes first.
        let backlog = master_backlog(2);
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(h.dispatcher.acquire().await.expect("a child free"));
        }
        assert_eq!(h.dispatcher.queued(), 0);
        for _ in 0..backlog {
            held.push(h.dispatcher.acquire().await.expect("room in the backlog"));
        }
        assert_eq!(slot.in_flight(), 2 + backlog);
        assert_eq!(h.dispatcher.queued(), backlog, "those in the backlog wait");
        let d = Arc::clone(&h.dispatcher);
        let next = tokio::spawn(async move { d.acquire().await.map(|_| ()) });
        while h.dispatcher.queued() < backlog + 1 {
            tokio::task::yield_now().await;
        }
        assert!(!next.is_finished(), "the next waits in molt's queue");
        held.pop();
        assert_eq!(
            next.await.expect("ran"),
            Ok(()),
            "and takes the freed place"
        );
        held.clear();
        h.step(prefork_sample(20 * MB, &[(5001, 30 * MB)]), 100);
        assert_eq!(h.dispatcher.capacity_of(&slot), Some(1));
        for _ in 0..=master_backlog(1) {
            held.push(
                h.dispatcher
                    .acquire()
                    .await
                    .expect("the child or its backlog"),
            );
        }
        let more = tokio::time::timeout(Duration::from_millis(50), h.dispatcher.acquire()).await;
        assert!(
            more.is_err(),
            "one child left: one request, and its share waiting"
        );
    }

    #[tokio::test]
    async fn a_child_over_the_soft_cap_is_told_to_finish_and_exit_one_at_a_time() {
        let mut h = adopted(auto(2), &[5001, 5002]);
        // Soft cap 100MB: both children are over it, the larger goes first.
        h.step(
            prefork_sample(20 * MB, &[(5001, 110 * MB), (5002, 120 * MB)]),
            100,
        );
        assert_eq!(h.direct(), [(Pid::from_raw(5002), Signal::SIGQUIT)]);
        assert!(h.signals().is_empty(), "no group is signalled");
        h.step(
            prefork_sample(20 * MB, &[(5001, 110 * MB), (5002, 120 * MB)]),
            200,
        );
        assert_eq!(h.direct().len(), 1, "one child at a time");
        // 5002 is gone and the master forked 5003: the next recycle starts.
        h.step(
            prefork_sample(20 * MB, &[(5001, 110 * MB), (5003, 30 * MB)]),
            300,
        );
        assert_eq!(
            h.direct(),
            [
                (Pid::from_raw(5002), Signal::SIGQUIT),
                (Pid::from_raw(5001), Signal::SIGQUIT)
            ]
        );
        assert_eq!(h.sup.workers.len(), 1, "the master itself stays");
    }

    #[tokio::test]
    async fn the_child_stop_signal_can_be_set() {
        let mut h = adopted(
            Config {
                child_stop_signal: Some(Signal::SIGTERM),
                ..auto(2)
            },
            &[5001, 5002],
        );
        h.step(
            prefork_sample(20 * MB, &[(5001, 110 * MB), (5002, 30 * MB)]),
            100,
        );
        assert_eq!(h.direct(), [(Pid::from_raw(5001), Signal::SIGTERM)]);
    }

    #[tokio::test]
    async fn a_child_over_the_hard_cap_is_killed_at_once() {
        let mut h = adopted(auto(2), &[5001, 5002]);
        h.step(
            prefork_sample(20 * MB, &[(5001, 200 * MB), (5002, 30 * MB)]),
            100,
        );
        assert_eq!(h.direct(), [(Pid::from_raw(5001), Signal::SIGKILL)]);
        assert!(
            h.signals().is_empty(),
            "the master and the other child live on"
        );
    }

    #[tokio::test]
    async fn the_master_is_held_to_the_caps_by_its_own_memory() {
        // 20MB of master and 3 x 90MB of children: 290MB in all, far over the 150MB hard
        // cap, but no process is.
        let mut h = adopted(auto(3), &[5001, 5002, 5003]);
        h.step(
            prefork_sample(
                20 * MB,
                &[(5001, 90 * MB), (5002, 90 * MB), (5003, 90 * MB)],
            ),
            100,
        );
        assert!(h.signals().is_empty());
        assert!(h.direct().is_empty());
        assert_eq!(h.spawned().len(), 1);
    }

    #[tokio::test]
    async fn idle_children_are_retired_one_by_one_down_to_the_floor() {
        let mut h = adopted(
            Config {
                idle_timeout: Duration::from_secs(10),
                max_workers: Some(4),
                ..auto(1)
            },
            &[5001, 5002, 5003],
        );
        let three = [(5001, 30 * MB), (5002, 30 * MB), (5003, 30 * MB)];
        h.step(prefork_sample(20 * MB, &three), 1_000);
        h.tick(10_999);
        assert!(h.direct().is_empty());
        h.step(prefork_sample(20 * MB, &three), 11_000);
        assert_eq!(h.direct(), [(Pid::from_raw(MASTER), Signal::SIGTTOU)]);
        let two = [(5001, 30 * MB), (5002, 30 * MB)];
        h.step(prefork_sample(20 * MB, &two), 12_000);
        h.step(prefork_sample(20 * MB, &two), 21_000);
        assert_eq!(h.direct().len(), 1, "another idle period first");
        h.step(prefork_sample(20 * MB, &two), 22_100);
        assert_eq!(h.direct().len(), 2);
        let one = [(5001, 30 * MB)];
        h.step(prefork_sample(20 * MB, &one), 23_000);
        h.step(prefork_sample(20 * MB, &one), 60_000);
        assert_eq!(h.direct().len(), 2, "never below one child");
    }

    #[tokio::test]
    async fn a_master_that_does_not_fork_on_request_is_run_as_a_pool_worker() {
        let mut h = adopted(auto(2), &[5001]);
        assert_eq!(h.direct(), [(Pid::from_raw(MASTER), Signal::SIGTTIN)]);
        h.step(prefork_sample(20 * MB, &[(5001, 30 * MB)]), 5_000);
        assert_eq!(h.sup.mode, Mode::Prefork, "still waiting");
        h.step(prefork_sample(20 * MB, &[(5001, 30 * MB)]), 10_010);
        assert_eq!(h.sup.mode, Mode::Pool);
        assert!(h.sup.workers[0].brood.is_none());
        assert_eq!(h.spawned().len(), 2, "a second instance adds the capacity");
    }

    #[tokio::test]
    async fn an_adopted_master_is_stopped_by_its_own_graceful_signal() {
        let mut h = adopted(auto(1), &[5001]);
        h.step(
            Event::Shutdown {
                signal: Signal::SIGTERM,
            },
            100,
        );
        h.step(Event::ProxyIdle, 110);
        assert_eq!(h.direct(), [(Pid::from_raw(MASTER), Signal::SIGQUIT)]);
    }

    #[tokio::test]
    async fn an_adopted_master_left_by_its_start_script_gets_its_own_graceful_signal() {
        // `./start` runs Unicorn and dies first on the platform's SIGTERM to every process.
        let mut h = adopted(auto(1), &[5001]);
        h.step(
            Event::Shutdown {
                signal: Signal::SIGTERM,
            },
            100,
        );
        let leader = h.pid(1);
        h.record
            .lock()
            .expect("test lock")
            .groups_alive
            .push(leader);
        h.exit(1, 110);
        assert_eq!(h.direct(), [(Pid::from_raw(MASTER), Signal::SIGQUIT)]);
        assert!(h.signals().is_empty(), "nothing to the group yet");
    }
}
