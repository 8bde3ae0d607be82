//! A worker's in-flight limit, learned from the latency of the requests it answers.
//!
//! The right number of requests to give one worker at once depends on the app, and no
//! setting says it reliably: a Unicorn child serves one at a time, Puma about its thread
//! count, an I/O-bound Node process a hundred or more, a CPU-bound one about its cores. What
//! molt can see is how long the worker takes. While the worker has spare parallelism, more
//! requests at once do not make each one slower; past that point every extra request only
//! waits inside the worker, and latency grows in proportion. [`Limiter`] raises the limit
//! while latency stays flat and lowers it as soon as latency grows, so that excess requests
//! wait in molt's queue, where any worker that frees up can take them and where the scaler
//! sees them, instead of in one worker's accept backlog.
//!
//! # The algorithm
//!
//! It is a latency-gradient limiter of the family of Envoy's adaptive-concurrency filter
//! (its gradient controller) and Netflix's concurrency-limits (`VegasLimit`,
//! `Gradient2Limit`): it compares recent latency with the latency the worker shows without
//! queueing, the *baseline*, and moves the limit by their ratio. Where it differs, it is
//! because molt must find exact small limits (1, 2, 5) as well as large ones, on one
//! worker's traffic alone, and without randomness.
//!
//! 1. **Windows.** Latencies are gathered in windows of [`WINDOW`] samples. A window is
//!    summarised by its interquartile mean (the mean of its middle half), which ignores the
//!    occasional slow report or fast health check that a plain average (Netflix's default)
//!    would let swing the ratio, and needs no histogram (Envoy takes a percentile of one).
//!    Only requests sent after the limit last changed count, as Envoy discards samples
//!    from before its minimum-latency epoch: a request sent under the old limit says
//!    nothing about the new one.
//! 2. **Too slow: shrink to what the worker really serves in parallel.** When a window's
//!    latency is more than [`SHRINK_TOLERANCE`] times the baseline, the worker is queueing.
//!    By Little's law it serves about `in_flight / ratio` requests in parallel, so the limit
//!    goes there (Vegas's queue estimate, `limit * (1 - baseline / latency)`, says the
//!    same), at least one lower, but never below half in one step, so that one bad window
//!    cannot collapse it. Envoy adds a headroom of `sqrt(limit)` and Gradient2 a queue of 4
//!    on top; for a Unicorn child such headroom would keep 2 or 3 where 1 is right, so
//!    there is none.
//! 3. **Flat while full: probe upward.** When a window's latency is within
//!    [`GROW_TOLERANCE`] of the baseline *and* at least half of its requests were sent with
//!    the worker at its limit, the limit grows: by `sqrt(limit)` while probes succeed (fast
//!    from a low start, in modest steps near a large limit), by 1 next to a limit where a
//!    probe failed. Windows taken while the worker was below its limit never raise it:
//!    latency at low concurrency says nothing about a higher one, and a lightly loaded
//!    worker would otherwise drift to the maximum. Netflix's limiters guard the same way
//!    from half the limit; here the limit itself must be reached. Between the two
//!    tolerances the limit holds. The first window, which becomes the baseline (rule 5), is
//!    clean by definition, so a worker kept full probes after its first window: from a
//!    start of 1 that saves 32 answers taken one at a time.
//! 4. **Probes back off.** A probe after which the worker queued failed: the next one
//!    waits for twice as many clean windows, up to [`MAX_PROBE_WAIT`]. One after which
//!    latency stayed within [`PROBE_SUCCESS`] succeeded and resets the wait. A worker at
//!    its true limit therefore tries the next step rarely instead of every other window,
//!    yet notices within a bounded number of answers when it can take more. Vegas and
//!    Envoy space their periodic re-measurements with random jitter; the back-off here is
//!    deterministic.
//! 5. **The baseline follows latency down, and up when the app got slower.** It starts as
//!    the first window's latency. It moves down to windows clearly below it (beyond
//!    [`GROW_TOLERANCE`]), but only after two in a row: the luckiest of a few hundred
//!    windows is 8 % below the typical one under ±20 % noise, and a baseline that low
//!    would read ordinary windows as queueing from then on. It is re-learnt upward when
//!    cutting concurrency did not help: if a run of shrinks cut concurrency by a quarter or
//!    more and latency stayed high, falling by less than half of what queueing would
//!    explain, the app itself got slower (a slower database, heavier requests), and the
//!    latency at the lower concurrency becomes the baseline. At a limit of 1 every window
//!    is the baseline, since a request alone on the worker waits for none of molt's.
//!    Envoy instead re-measures its minimum latency periodically at a fixed low
//!    concurrency, and Gradient2 lets its baseline follow a long average; the first stalls
//!    a wide worker, the second lets queueing creep into the baseline.
//! 6. **Checking the baseline.** A baseline learnt at a high concurrency may already
//!    include queueing: a Puma worker started at its 5 threads whose app holds the GVL
//!    would look flat at 5 forever. While the baseline has not been seen at two thirds of
//!    the limit or below, every [`CHECK_EVERY`] windows one window runs at half the limit;
//!    if latency is lower there, the baseline takes it, and rule 2 brings the limit down.
//!    Being seen at a clearly lower concurrency suffices: if latency is the same at half
//!    the concurrency, doubling the concurrency doubled the throughput, so the worker was
//!    not queueing. Each check either confirms the baseline, which ends the checks, or
//!    lowers it, so a worker makes only a few, unlike Envoy's periodic drop to a fixed
//!    floor, which for a Node worker at 100 means a stall every time.
//! 7. **Queueing that few requests pay for.** Some servers do not share out their
//!    threads fairly: Puma serves up to ten requests of one kept-alive connection in a
//!    row, so with more requests than threads most answers are as fast as ever and a few
//!    wait for seconds. The interquartile mean leaves those few out, which is what it is
//!    for, so it would see no queueing at any concurrency; and the few are answered so
//!    late that most fall outside the window, or are left out as sent under an older
//!    limit. The mean latency by Little's law, the window's mean in-flight count over its
//!    rate of answers, does not miss them: with the worker's throughput at its ceiling,
//!    it grows with concurrency as on a fair server. So it is compared too, with a
//!    baseline of its own: the average over windows that showed no queueing (the first
//!    [`MEAN_WINDOWS`] clean ones, then those at their concurrency or below), used once it
//!    rests on that many. More than [`MEAN_GROW_TOLERANCE`] times that baseline
//!    makes a window not clean, so the limit stops rising one step past the threads;
//!    more than [`MEAN_QUEUE_TOLERANCE`] times it in two windows in a row at one limit,
//!    or more than [`MEAN_SHRINK_TOLERANCE`] times it in one, is queueing, shrinking the
//!    limit by that ratio. These bounds are wide because a rate over 32 answers varies a
//!    lot when a few requests are slow anyway (a report among page views, slow whatever
//!    the concurrency): tighter ones made such a worker shrink on noise, while a gate
//!    that only holds the limit back costs such a worker little. A window that
//!    spans less than two latencies has no such mean (a rate needs a longer time), which
//!    leaves rule 7 to workers whose windows are long, the ones with few threads.
//! 8. **Waiting too short to matter.** Every comparison above leaves out the first
//!    [`QUEUE_SLACK`] by which a latency exceeds its baseline: a window is slower than the
//!    baseline by `(latency - QUEUE_SLACK) / baseline`, and never less than 1. A worker
//!    that answers in tens of microseconds (a Node process returning a small page) spends
//!    most of each request at limit 1 idle, waiting for molt to read the answer and hand
//!    it the next request, so a few more requests in flight raise its throughput several
//!    times over while each waits inside it for microseconds more. Measured as a ratio,
//!    those microseconds read as queueing, and such a worker was held at 1 or 2, at 0.4
//!    of the throughput it gives with no limit. Left out, its limit rises until requests
//!    wait about [`QUEUE_SLACK`] inside it, which no client can tell from waiting in
//!    molt's queue; differences that small are also mostly the machine's scheduling,
//!    not the worker. A shrink then goes to where latency would be back within the
//!    slack: `in_flight * (baseline + QUEUE_SLACK) / latency`. For a worker whose
//!    requests take milliseconds the slack changes nothing that matters (a Unicorn child
//!    at 1 ms is twice as slow at 2 either way); a saturated worker still queues in
//!    molt, where scale-up sees it, once it holds that much waiting.
//!
//! # Use
//!
//! The limiter is pure: no clock, no randomness, no I/O. The caller passes each answered
//! request's latency, the in-flight count at the moment that request was sent to the
//! worker (counting itself, as Netflix's limiters record it at acquire), and the time of
//! the answer; see [`Limiter::on_sample`]. A sample costs a few comparisons and a copy into
//! a fixed array; every [`WINDOW`] samples one in-place sort of that array and a few
//! floating-point operations decide. Nothing allocates after [`Limiter::new`].
//!
//! In molt each worker's [`Slot`](super::dispatch::Slot) holds one, behind a lock of its
//! own, and copies its limit into the capacity the dispatcher reads;
//! [`LimiterSettings::from_config`] gives its bounds.

use std::time::{Duration, Instant};

use crate::config::{Concurrency, Config};

/// Default most requests one worker is given at once: `MOLT_MAX_CONCURRENCY`'s default,
/// where its reason is given.
pub(crate) const DEFAULT_MAX_LIMIT: usize = crate::config::DEFAULT_MAX_CONCURRENCY;

/// Samples per decision. With 32, a window's interquartile mean varies by about 3 % (one
/// standard deviation) under ±20 % noise, so that one request too many for a five-thread
/// worker, 1.2 times slower, stands out from the noise.
const WINDOW: usize = 32;

/// A window this close to the baseline shows no queueing, and may grow the limit.
const GROW_TOLERANCE: f64 = 1.1;

/// A probe counts as a success, and the next ones take big steps again, only when latency
/// stayed this flat: a probe that made latency grow a little (one request more than a
/// ten-thread worker has threads) neither failed nor succeeded.
const PROBE_SUCCESS: f64 = 1.05;

/// A window slower than the baseline by more than this shows queueing and shrinks the
/// limit. A five-thread worker at six requests is 1.2 times slower; above ten threads one
/// request too many falls inside the tolerance, which costs little at that size.
const SHRINK_TOLERANCE: f64 = 1.15;

/// A window whose mean latency by Little's law is more than this times the mean baseline
/// is queueing, even when its interquartile mean is flat (rule 7). Wide, because such
/// a mean varies a lot under a slow tail.
const MEAN_SHRINK_TOLERANCE: f64 = 3.0;

/// A window whose mean latency by Little's law is more than this times the mean baseline
/// is not clean, and does not grow the limit (rule 7): one request more than five threads
/// makes it 1.2 times the baseline, and the first window after a rise may show less.
const MEAN_GROW_TOLERANCE: f64 = 1.1;

/// Two windows in a row at one limit whose mean latency by Little's law is more than this
/// times the mean baseline are queueing (rule 7). Two, because such a mean varies a lot
/// under a slow tail: one window this high is common, two in a row rare.
const MEAN_QUEUE_TOLERANCE: f64 = 1.25;

/// Weight of a new window in the mean baseline's moving average, once it rests on more
/// windows than its inverse; before, every window counts alike.
const MEAN_WEIGHT: f64 = 0.125;

/// Windows the mean baseline must rest on before rule 7 applies.
const MEAN_WINDOWS: u32 = 3;

/// Most clean windows a probe waits for after probes failed in a row: a worker at its
/// true limit probes once in about 300 answers, and one that can take more again finds
/// out within about as many.
const MAX_PROBE_WAIT: u32 = 8;

/// Windows between checks of a baseline not yet seen at two thirds of the limit or below
/// (rule 6). Checks are few (each confirms or lowers the baseline), so they may come soon.
const CHECK_EVERY: u32 = 4;

/// Latencies are taken as at least this, so that a ratio never divides by zero.
const MIN_LATENCY: Duration = Duration::from_micros(1);

/// Waiting inside a worker that is not counted as queueing (rule 8), in seconds. Half a
/// millisecond: in front of one Node process answering a small page to 50 clients
/// (`wrk -t1 -c50`), the limit then moved within 5-39 and throughput came to about 0.8
/// of no limit's; with no slack the limit was held at 1-2 (0.3-0.4), with a quarter of a
/// millisecond it moved within 6-23 (0.65). See docs/benchmarks.md.
const QUEUE_SLACK: f64 = 0.000_5;

/// A window's latency set against a baseline's, in seconds (rule 8).
#[derive(Debug, Clone, Copy)]
struct Against {
    now: f64,
    base: f64,
}

impl Against {
    /// How many times slower than the baseline, leaving out the first [`QUEUE_SLACK`]:
    /// 1 while within it.
    fn ratio(self) -> f64 {
        (self.now - QUEUE_SLACK).max(self.base) / self.base
    }

    /// The share of the current concurrency at which latency, were it to fall in
    /// proportion as queueing does, would be back within the slack: what a shrink keeps.
    fn keeps(self) -> f64 {
        ((self.base + QUEUE_SLACK) / self.now).min(1.0)
    }
}

/// The bounds of one worker's limit, from the configuration and the worker's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LimiterSettings {
    /// The limit to start with: what the worker's environment implies (its processes or
    /// threads), else 1. Clamped to `1..=max`.
    pub(crate) initial: usize,
    /// The limit never grows above this; at least 1.
    pub(crate) max: usize,
}

impl LimiterSettings {
    /// Each worker's bounds under `MOLT_WORKER_CONCURRENCY=auto`, or `None` when the
    /// concurrency is fixed. A worker told to run `MOLT_WORKER_PROCESSES` processes (its
    /// `WEB_CONCURRENCY`) serves at least one request per process, so it starts there;
    /// `MOLT_MAX_CONCURRENCY` bounds it.
    pub(crate) fn from_config(config: &Config) -> Option<Self> {
        match config.worker_concurrency {
            Concurrency::Auto => Some(LimiterSettings {
                initial: config
                    .worker_processes
                    .clamp(1, config.max_concurrency.max(1)),
                max: config.max_concurrency.max(1),
            }),
            Concurrency::Fixed(_) => None,
        }
    }
}

impl Default for LimiterSettings {
    fn default() -> Self {
        LimiterSettings {
            initial: 1,
            max: DEFAULT_MAX_LIMIT,
        }
    }
}

/// One closed window, as the decision sees it.
#[derive(Debug, Clone, Copy)]
struct Observed {
    /// Interquartile mean of the window's latencies, in seconds.
    latency: f64,
    /// The mean latency by Little's law, in seconds: the mean in-flight count over the
    /// rate of answers. Unlike a mean of the samples it counts the requests that take so
    /// long that their answers fall outside the window (rule 7). `None` when the window
    /// spans less than two latencies (a rate needs a longer time than one request takes,
    /// or it only measures how the answers happened to bunch), or when two of its answers
    /// came more than two latencies apart (the worker sat idle in between).
    mean: Option<f64>,
    /// Mean in-flight count at which the window's requests were sent.
    in_flight: f64,
    /// Whether at least half of them were sent with the worker at its limit.
    saturated: bool,
}

/// The samples of the window being filled.
#[derive(Debug, Clone)]
struct Window {
    latencies: [Duration; WINDOW],
    len: usize,
    in_flight_sum: usize,
    at_limit: usize,
    /// When its first answer came.
    first_at: Option<Instant>,
    /// When its last answer came, and the longest time between two of its answers.
    last_at: Option<Instant>,
    longest_gap: Duration,
}

impl Window {
    fn new() -> Self {
        Window {
            latencies: [Duration::ZERO; WINDOW],
            len: 0,
            in_flight_sum: 0,
            at_limit: 0,
            first_at: None,
            last_at: None,
            longest_gap: Duration::ZERO,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.in_flight_sum = 0;
        self.at_limit = 0;
        self.first_at = None;
        self.last_at = None;
        self.longest_gap = Duration::ZERO;
    }

    /// Adds one sample; returns the window's summary when this one filled it.
    fn push(
        &mut self,
        latency: Duration,
        in_flight: usize,
        at_limit: bool,
        now: Instant,
    ) -> Option<Observed> {
        let first_at = *self.first_at.get_or_insert(now);
        if let Some(last) = self.last_at.replace(now) {
            self.longest_gap = self.longest_gap.max(now.saturating_duration_since(last));
        }
        self.latencies[self.len] = latency;
        self.len += 1;
        self.in_flight_sum = self.in_flight_sum.saturating_add(in_flight);
        self.at_limit += usize::from(at_limit);
        if self.len < WINDOW {
            return None;
        }
        // In place and without allocating: the array lives in the limiter.
        self.latencies.sort_unstable();
        let middle = &self.latencies[WINDOW / 4..WINDOW - WINDOW / 4];
        let latency = middle.iter().map(Duration::as_secs_f64).sum::<f64>() / to_f64(middle.len());
        let in_flight = to_f64(self.in_flight_sum) / to_f64(WINDOW);
        // WINDOW - 1 answers came after the first, in this time.
        let span = now.saturating_duration_since(first_at).as_secs_f64();
        // A gap of two latencies without an answer means the worker sat idle for a
        // while (the clients paused), and a rate over idle time is no mean latency.
        let busy = self.longest_gap.as_secs_f64() <= 2.0 * latency;
        let mean = (span >= 2.0 * latency && busy)
            .then(|| (in_flight * span / to_f64(WINDOW - 1)).max(MIN_LATENCY.as_secs_f64()));
        let observed = Observed {
            latency,
            mean,
            in_flight,
            saturated: self.at_limit * 2 >= WINDOW,
        };
        self.clear();
        Some(observed)
    }
}

/// The latency the worker shows without queueing.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    /// In seconds.
    latency: f64,
    /// The lowest concurrency at which a window agreed with `latency`: at two thirds of
    /// the limit or below, the baseline is known not to contain queueing (rule 6).
    seen_at: usize,
    /// The previous window's latency, when it was clearly below `latency`.
    lower: Option<f64>,
}

impl Baseline {
    fn of(window: Observed) -> Self {
        Baseline {
            latency: window.latency,
            seen_at: ceil_to_usize(window.in_flight),
            lower: None,
        }
    }

    /// Follows lower latency down. One window far below could be luck (the fastest of a
    /// few hundred windows is 8 % below the typical one under ±20 % noise), and a baseline
    /// that low would read ordinary windows as queueing from then on, so it takes two in
    /// a row, and goes to the higher of them. A `decisive` window (a check at a lower
    /// limit, rule 6) is believed alone: it was taken to find exactly that.
    fn learn(&mut self, window: Observed, decisive: bool) {
        if window.latency * GROW_TOLERANCE < self.latency {
            match self.lower.take() {
                _ if decisive => self.latency = window.latency,
                Some(previous) => self.latency = previous.max(window.latency),
                None => self.lower = Some(window.latency),
            }
        } else {
            self.lower = None;
        }
        if window.latency <= self.latency * GROW_TOLERANCE {
            self.seen_at = self.seen_at.min(ceil_to_usize(window.in_flight));
        }
    }
}

/// The mean latency (by Little's law) the worker shows without queueing (rule 7).
#[derive(Debug, Clone, Copy)]
struct MeanBaseline {
    /// In seconds: the average of the windows learnt, moving once there are many;
    /// `None` until a window had a mean.
    mean: Option<f64>,
    /// The concurrency it stands for: the highest of the windows it formed from.
    at: f64,
    /// Windows averaged in so far.
    windows: u32,
}

impl MeanBaseline {
    fn of(window: Observed) -> Self {
        MeanBaseline {
            mean: window.mean,
            at: window.in_flight,
            windows: u32::from(window.mean.is_some()),
        }
    }

    /// The window's mean against the baseline's; `None` while either is not known, or
    /// the baseline rests on fewer than [`MEAN_WINDOWS`] windows: one window's mean can
    /// be far from the typical one, and a baseline that low would read every ordinary
    /// window as queueing.
    fn against(&self, window: Observed) -> Option<Against> {
        match (window.mean, self.mean) {
            (Some(now), Some(base)) if self.windows >= MEAN_WINDOWS => Some(Against { now, base }),
            _ => None,
        }
    }

    /// Averages in a window that shows no queueing: one taken at the baseline's
    /// concurrency or below, or, while the baseline forms, one that is clean (`clean`: its
    /// interquartile mean agrees with the baseline, and its mean is within
    /// [`MEAN_GROW_TOLERANCE`]). A window at a higher concurrency whose mean is higher may
    /// hold queueing, which would carry the baseline up with the limit.
    fn learn(&mut self, window: Observed, clean: bool) {
        let Some(mean) = window.mean else { return };
        let Some(base) = self.mean else {
            *self = MeanBaseline::of(window);
            return;
        };
        let ratio = mean / base;
        let low = window.in_flight <= self.at + 0.5 && ratio <= MEAN_SHRINK_TOLERANCE;
        // Until the baseline is established, clean windows at a higher concurrency count
        // too, and raise the concurrency it stands for: a limit rising from 1 takes one
        // window at each step. After, they would let it creep: a window at one request
        // more than the threads is clean now and then by chance, and each one would carry
        // the baseline, and with it the limit, a little higher.
        let forming = self.windows < MEAN_WINDOWS && clean && ratio <= MEAN_GROW_TOLERANCE;
        if forming {
            self.at = self.at.max(window.in_flight);
        }
        if low || forming {
            self.windows = self.windows.saturating_add(1);
            let weight = (1.0 / f64::from(self.windows)).max(MEAN_WEIGHT);
            self.mean = Some(base + weight * (mean - base));
        }
    }
}

/// The last change of the limit whose outcome is still to be judged.
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// No change awaits its outcome.
    Nothing,
    /// A probe upward: the next clean window means it succeeded, a queueing one that it
    /// failed.
    Grew,
    /// One window at a lower limit to check the baseline; then back to `restore`.
    Checking { restore: usize },
}

/// One worker's in-flight limit. See the module documentation for how it moves.
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    /// Always within `1..=max`.
    limit: usize,
    max: usize,
    /// When the limit last changed: requests sent before then are not samples of it.
    changed_at: Option<Instant>,
    window: Window,
    baseline: Option<Baseline>,
    /// Set with `baseline`, whenever that is set anew.
    mean_baseline: Option<MeanBaseline>,
    pending: Pending,
    /// The window that started the current run of shrinks, while latency has stayed
    /// high since: if cutting concurrency does not bring latency down, the app itself got
    /// slower (rule 5).
    shrunk_from: Option<Observed>,
    /// Clean, saturated windows needed before the next probe upward.
    probe_wait: u32,
    /// The limit of the last probe that failed, until the baseline is re-learnt: the
    /// limit approaches it one step at a time.
    failed_at: Option<usize>,
    /// Clean, saturated windows since the last change.
    clean: u32,
    /// Windows since the baseline was last checked.
    since_check: u32,
    /// The last closed window's latency, in seconds, for `molt status`.
    last_window: Option<f64>,
    /// The last window's mean (rule 7) was beyond [`MEAN_QUEUE_TOLERANCE`], at this limit.
    mean_high: bool,
    /// A window has shown queueing: the limit has met a value the worker cannot pass.
    /// Until then it has only risen, or held, from where it started.
    queued_once: bool,
}

impl Limiter {
    pub(crate) fn new(settings: LimiterSettings) -> Self {
        let max = settings.max.max(1);
        Limiter {
            limit: settings.initial.clamp(1, max),
            max,
            changed_at: None,
            window: Window::new(),
            baseline: None,
            mean_baseline: None,
            pending: Pending::Nothing,
            shrunk_from: None,
            probe_wait: 1,
            failed_at: None,
            clean: 0,
            since_check: 0,
            last_window: None,
            mean_high: false,
            queued_once: false,
        }
    }

    /// Requests the worker may hold at once now; always within `1..=max`.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The latency the worker shows without queueing, once one window has closed.
    pub(crate) fn baseline(&self) -> Option<Duration> {
        self.baseline.map(|b| Duration::from_secs_f64(b.latency))
    }

    /// The latency of the last closed window (its interquartile mean).
    pub(crate) fn last_window(&self) -> Option<Duration> {
        self.last_window.map(Duration::from_secs_f64)
    }

    /// Whether the limit is still finding its level from below: no window has shown
    /// queueing yet and the limit is under its maximum, so while the worker is kept full
    /// the limit goes on rising. Requests queued for such a worker wait for its growth,
    /// not for another worker (see the scaler).
    pub(crate) fn is_rising(&self) -> bool {
        !self.queued_once && self.limit < self.max
    }

    /// Records one answered request.
    ///
    /// `latency` is the time from sending the request to the worker until its answer;
    /// `in_flight` is the worker's in-flight count right after this request was sent,
    /// counting itself, because that is the concurrency its latency was measured under;
    /// `now` is when the answer came, on the same clock as `latency`, so that `now -
    /// latency` is when it was sent. Call this before the freed slot is given to another
    /// request, so that a request sent in the same instant is sent under the new limit.
    /// Requests that got no answer (a broken connection, a killed worker, a client that
    /// left first) are not samples: leave them out.
    pub(crate) fn on_sample(&mut self, latency: Duration, in_flight: usize, now: Instant) {
        if let Some(changed) = self.changed_at {
            // A request sent before the last change ran under another limit.
            if now.checked_sub(latency).is_none_or(|sent| sent < changed) {
                return;
            }
        }
        let at_limit = in_flight >= self.limit;
        if let Some(window) = self
            .window
            .push(latency.max(MIN_LATENCY), in_flight, at_limit, now)
        {
            self.decide(window, now);
        }
    }

    fn set_limit(&mut self, limit: usize, now: Instant) {
        let limit = limit.clamp(1, self.max);
        if limit != self.limit {
            self.limit = limit;
            self.changed_at = Some(now);
            self.clean = 0;
            self.mean_high = false;
            // Samples already gathered were taken under the old limit.
            self.window.clear();
        }
    }

    /// The comparison that says how much slower the window is: its interquartile mean
    /// against the baseline, or its mean by Little's law against the mean baseline where
    /// that shows queueing the other misses (rule 7): far beyond the baseline in one
    /// window, or clearly beyond it in two in a row at the same limit.
    fn slower(&mut self, window: Observed, baseline: Baseline, mean: Option<Against>) -> Against {
        let latency = Against {
            now: window.latency,
            base: baseline.latency,
        };
        let mean_ratio = mean.map_or(1.0, Against::ratio);
        let high = mean_ratio > MEAN_QUEUE_TOLERANCE;
        let queueing = mean_ratio > MEAN_SHRINK_TOLERANCE || (high && self.mean_high);
        self.mean_high = high;
        match mean {
            Some(mean) if queueing && mean_ratio > latency.ratio() => mean,
            _ => latency,
        }
    }

    fn decide(&mut self, window: Observed, now: Instant) {
        self.last_window = Some(window.latency);
        let pending = std::mem::replace(&mut self.pending, Pending::Nothing);
        let first = self.baseline.is_none();
        let mut baseline = self.baseline.unwrap_or_else(|| Baseline::of(window));
        let mut mean_baseline = self
            .mean_baseline
            .unwrap_or_else(|| MeanBaseline::of(window));
        if let Pending::Checking { restore } = pending {
            baseline.learn(window, true);
            mean_baseline.learn(window, window.latency <= baseline.latency * GROW_TOLERANCE);
            self.baseline = Some(baseline);
            self.mean_baseline = Some(mean_baseline);
            self.set_limit(restore, now);
            return;
        }
        if first {
            // The first window is the baseline, and so clean by definition: taken at the
            // limit, it leads to the first probe at once rather than a window later, which
            // at a start of 1 is 32 more answers, one at a time, before the limit can move.
        } else if self.limit == 1 {
            // Alone on the worker, a request waits behind none of molt's: its latency is
            // the latency without queueing, whatever it is now. Without this, a worker
            // already at 1 whose app got slower could never re-learn its baseline, since
            // there is no lower limit left to shrink to.
            // The mean, noisier, is still averaged, as one window's mean would be a poor
            // baseline for the windows after it, unless the app itself got faster or
            // slower.
            if (window.latency / baseline.latency - 1.0).abs() > GROW_TOLERANCE - 1.0 {
                mean_baseline = MeanBaseline::of(window);
            } else {
                mean_baseline.learn(window, true);
            }
            baseline = Baseline::of(window);
        } else {
            baseline.learn(window, false);
            mean_baseline.learn(window, window.latency <= baseline.latency * GROW_TOLERANCE);
        }
        if let Some(before) = self.shrunk_from {
            let slower = Against {
                now: window.latency,
                base: baseline.latency,
            };
            if slower.ratio() > SHRINK_TOLERANCE && window.in_flight <= before.in_flight * 0.75 {
                // Queueing would have lowered latency in proportion to the concurrency
                // cut; less than half of that means the app itself is slower now. A
                // smaller cut is not judged: its effect would hide in the noise.
                let queueing = before.latency * window.in_flight / before.in_flight;
                if window.latency >= f64::midpoint(before.latency, queueing) {
                    baseline = Baseline::of(window);
                    mean_baseline = MeanBaseline::of(window);
                    self.failed_at = None;
                }
            }
        }
        self.baseline = Some(baseline);
        self.mean_baseline = Some(mean_baseline);
        let mean = mean_baseline.against(window);
        let mean_ratio = mean.map_or(1.0, Against::ratio);
        let slower = self.slower(window, baseline, mean);
        let ratio = slower.ratio();
        let probed = matches!(pending, Pending::Grew);

        if ratio > SHRINK_TOLERANCE {
            self.queued_once = true;
            self.clean = 0;
            let parallel = round_to_usize(window.in_flight * slower.keeps());
            let target = parallel.max(self.limit.div_ceil(2)).min(self.limit - 1);
            if target >= 1 {
                if probed {
                    self.probe_wait = self.probe_wait.saturating_mul(2).min(MAX_PROBE_WAIT);
                    self.failed_at = Some(self.limit);
                }
                self.shrunk_from.get_or_insert(window);
                self.set_limit(target, now);
            }
            return;
        }
        // Latency is back in range: the shrinks that led here were justified.
        self.shrunk_from = None;
        if ratio <= GROW_TOLERANCE && mean_ratio <= MEAN_GROW_TOLERANCE {
            if probed && ratio <= PROBE_SUCCESS {
                self.probe_wait = 1;
            }
            if window.saturated {
                self.clean = self.clean.saturating_add(1);
                if self.clean >= self.probe_wait && self.limit < self.max {
                    // Big steps while probes succeed, one at a time next to a limit where
                    // one failed: a step that would reach or pass the last failed probe
                    // (one lucky window can make a probe look a success) is one.
                    let big = self.limit.isqrt();
                    let clear = self
                        .failed_at
                        .is_none_or(|failed| self.limit.saturating_add(big) < failed);
                    let step = if self.probe_wait == 1 && clear {
                        big
                    } else {
                        1
                    };
                    self.pending = Pending::Grew;
                    self.set_limit(self.limit.saturating_add(step), now);
                    return;
                }
            }
        } else {
            // Neither clean nor queueing: hold. A probe that led here neither failed nor
            // succeeded, so its wait stays as it is.
            self.clean = 0;
        }

        // Saturating: a worker whose baseline is verified never resets it.
        self.since_check = self.since_check.saturating_add(1);
        let half = self.limit / 2;
        let unverified = baseline.seen_at.saturating_mul(3) > self.limit.saturating_mul(2);
        if half >= 1 && unverified && self.since_check >= CHECK_EVERY {
            self.since_check = 0;
            self.pending = Pending::Checking {
                restore: self.limit,
            };
            self.set_limit(half, now);
        }
    }
}

/// A count as a float, without a lossy cast: counts here are far below `u32::MAX`.
fn to_f64(n: usize) -> f64 {
    u32::try_from(n).map_or(f64::from(u32::MAX), f64::from)
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the values are in-flight counts: finite, not negative, far below usize::MAX, and `as` saturates anyway"
)]
/// The nearest count to an estimate.
fn round_to_usize(x: f64) -> usize {
    x.round() as usize
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the values are in-flight counts: finite, not negative, far below usize::MAX, and `as` saturates anyway"
)]
/// The count an average concurrency reached.
fn ceil_to_usize(x: f64) -> usize {
    x.ceil() as usize
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// How long the simulated server takes for a request sent when it holds `in_flight`
    /// requests (this one included), at simulated time `t`.
    type Curve = dyn Fn(usize, Duration) -> Duration;

    /// `threads` requests are served in parallel at `base` each; beyond that they share
    /// the threads, so latency grows in proportion (processor sharing).
    fn threads(threads: usize, base: Duration, in_flight: usize) -> Duration {
        if in_flight <= threads {
            base
        } else {
            base * u32::try_from(in_flight).unwrap() / u32::try_from(threads).unwrap()
        }
    }

    /// Draws a multiplicative latency factor.
    type Noise = fn(&mut XorShift) -> f64;

    /// Deterministic noise: xorshift64, seeded.
    struct XorShift(u64);

    impl XorShift {
        /// Uniform in [0, 1).
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            // The top 24 bits, exactly representable.
            f64::from(u32::try_from(self.0 >> 40).unwrap()) / f64::from(1u32 << 24)
        }

        /// A multiplicative factor in [0.8, 1.2).
        fn factor(&mut self) -> f64 {
            0.8 + 0.4 * self.next()
        }

        /// Like [`XorShift::factor`], but one request in ten is a slow one, ten times
        /// longer: a report among page views.
        fn tail_factor(&mut self) -> f64 {
            let slow = if self.next() < 0.1 { 10.0 } else { 1.0 };
            slow * self.factor()
        }
    }

    /// A closed loop of clients against one worker, driven through the limiter as the
    /// dispatcher would drive it: a request is sent only while the worker holds fewer than
    /// `limit()` requests, the rest wait in order; each client sends its next request as
    /// soon as its last one is answered.
    struct Sim<'a> {
        limiter: Limiter,
        curve: &'a Curve,
        noise: Option<(XorShift, Noise)>,
        origin: Instant,
        now: Duration,
        in_flight: usize,
        waiting: usize,
        /// (answered at, sequence, sent at, in flight when sent)
        running: BinaryHeap<Reverse<(Duration, u64, Duration, usize)>>,
        sent: u64,
        /// The limit after each answer.
        limits: Vec<usize>,
        /// When each answer came.
        times: Vec<Duration>,
    }

    impl<'a> Sim<'a> {
        fn new(settings: LimiterSettings, clients: usize, curve: &'a Curve) -> Self {
            let mut sim = Sim {
                limiter: Limiter::new(settings),
                curve,
                noise: None,
                origin: Instant::now(),
                now: Duration::ZERO,
                in_flight: 0,
                waiting: clients,
                running: BinaryHeap::new(),
                sent: 0,
                limits: Vec::new(),
                times: Vec::new(),
            };
            sim.admit();
            sim
        }

        fn noisy(mut self, seed: u64) -> Self {
            self.noise = Some((XorShift(seed), XorShift::factor));
            self
        }

        fn tailed(mut self, seed: u64) -> Self {
            self.noise = Some((XorShift(seed), XorShift::tail_factor));
            self
        }

        fn admit(&mut self) {
            while self.waiting > 0 && self.in_flight < self.limiter.limit() {
                self.waiting -= 1;
                self.in_flight += 1;
                let mut latency = (self.curve)(self.in_flight, self.now);
                if let Some((rng, factor)) = &mut self.noise {
                    latency = latency.mul_f64(factor(rng));
                }
                self.sent += 1;
                // No two answers come in the same nanosecond, as on a real clock.
                latency += Duration::from_nanos(self.sent % 1000);
                let answer = (self.now + latency, self.sent, self.now, self.in_flight);
                self.running.push(Reverse(answer));
            }
        }

        /// Runs until `samples` more answers came.
        fn run(&mut self, samples: usize) -> &mut Self {
            for _ in 0..samples {
                let Reverse((done, _, sent, in_flight)) = self.running.pop().unwrap();
                self.now = done;
                self.limiter
                    .on_sample(done.saturating_sub(sent), in_flight, self.origin + done);
                self.in_flight -= 1;
                self.waiting += 1;
                self.limits.push(self.limiter.limit());
                self.times.push(done);
                self.admit();
            }
            self
        }

        /// Limits over answers `from..to`: lowest, highest, and how often it changed.
        fn span(&self, from: usize, to: usize) -> (usize, usize, usize) {
            let limits = &self.limits[from..to];
            let changes = limits.windows(2).filter(|w| w[0] != w[1]).count();
            (
                *limits.iter().min().unwrap(),
                *limits.iter().max().unwrap(),
                changes,
            )
        }

        /// Answers per second over answers `from..to`.
        fn throughput(&self, from: usize, to: usize) -> f64 {
            let elapsed = self.times[to - 1].saturating_sub(self.times[from]);
            to_f64(to - from - 1) / elapsed.as_secs_f64()
        }

        /// The first answer from which the limit stays within `range` until answer `to`.
        fn settled_by(
            &self,
            from: usize,
            to: usize,
            range: &std::ops::RangeInclusive<usize>,
        ) -> usize {
            let last_out = self.limits[from..to]
                .iter()
                .rposition(|l| !range.contains(l));
            last_out.map_or(0, |i| i + 1)
        }
    }

    /// The best throughput the curve allows with `clients` clients and a limit of `max`.
    fn best_throughput(curve: &Curve, clients: usize, max: usize, t: Duration) -> f64 {
        (1..=clients.min(max))
            .map(|n| to_f64(n) / curve(n, t).as_secs_f64())
            .fold(0.0, f64::max)
    }

    /// Runs `samples` answers and reports on the second half, where the limit should
    /// have settled: (lowest, highest, changes, throughput as a share of the best).
    fn settle(
        name: &str,
        settings: LimiterSettings,
        clients: usize,
        curve: &Curve,
        seed: Option<u64>,
        samples: usize,
    ) -> (usize, usize, usize, f64) {
        let mut sim = Sim::new(settings, clients, curve);
        if let Some(seed) = seed {
            sim = sim.noisy(seed);
        }
        sim.run(samples);
        let (low, high, changes) = sim.span(samples / 2, samples);
        let share = sim.throughput(samples / 2, samples)
            / best_throughput(curve, clients, settings.max, Duration::ZERO);
        println!(
            "limiter {name}: start {} -> settled {low}..={high}, final {}, {changes} changes \
             in the last {} answers, throughput {:.2} of best",
            settings.initial,
            sim.limiter.limit(),
            samples / 2,
            share
        );
        (low, high, changes, share)
    }

    /// Limit changes a settled limiter may make in `answers` answers: a probe up and back
    /// once per [`MAX_PROBE_WAIT`] windows, and one more change in progress. A limiter that
    /// probes every other window would make about one change per window.
    fn probe_budget(answers: usize) -> usize {
        2 * answers / (MAX_PROBE_WAIT as usize * WINDOW) + 2
    }

    fn settings(initial: usize) -> LimiterSettings {
        LimiterSettings {
            initial,
            ..LimiterSettings::default()
        }
    }

    #[test]
    fn starts_at_the_initial_limit_within_bounds() {
        assert_eq!(Limiter::new(settings(5)).limit(), 5);
        assert_eq!(Limiter::new(settings(0)).limit(), 1);
        assert_eq!(Limiter::new(settings(500)).limit(), DEFAULT_MAX_LIMIT);
        let zero_max = LimiterSettings { initial: 3, max: 0 };
        assert_eq!(Limiter::new(zero_max).limit(), 1);
        assert_eq!(LimiterSettings::default().max, 128);
    }

    #[test]
    fn a_full_worker_probes_after_its_first_window() {
        // At a start of 1 each window is 32 answers one at a time (3.2 s at 100 ms); the
        // first one is the baseline and is clean by definition, so it is also the first
        // step up, not a window more.
        let curve = |n, _| threads(5, 50 * MS, n);
        let mut sim = Sim::new(settings(1), 20, &curve);
        assert!(sim.limiter.is_rising());
        assert_eq!(
            (sim.limiter.baseline(), sim.limiter.last_window()),
            (None, None)
        );
        sim.run(WINDOW);
        assert_eq!(sim.limiter.limit(), 2);
        let baseline = sim.limiter.baseline().unwrap();
        assert!(baseline.abs_diff(50 * MS) < MS, "{baseline:?}");
        assert_eq!(sim.limiter.last_window(), Some(baseline));
        assert!(sim.limiter.is_rising());
    }

    #[test]
    fn the_limit_stops_rising_once_a_window_shows_queueing() {
        let curve = |n, _| threads(1, 50 * MS, n);
        let mut sim = Sim::new(settings(1), 20, &curve);
        sim.run(WINDOW);
        assert_eq!(sim.limiter.limit(), 2, "the first probe");
        assert!(sim.limiter.is_rising());
        // The probe's window is twice as slow: back to 1, and the level is found.
        sim.run(WINDOW + 2);
        assert_eq!(sim.limiter.limit(), 1);
        assert!(!sim.limiter.is_rising());
        let last = sim.limiter.last_window().unwrap();
        assert!(last.abs_diff(100 * MS) < 2 * MS, "{last:?}");

        // A limit at its maximum does not rise either.
        let flat = |_, _| 10 * MS;
        let bounded = LimiterSettings { initial: 1, max: 2 };
        let mut sim = Sim::new(bounded, 20, &flat);
        sim.run(WINDOW);
        assert_eq!(sim.limiter.limit(), 2);
        assert!(!sim.limiter.is_rising());
    }

    #[test]
    fn settings_follow_the_configuration() {
        use crate::config::{Concurrency, Config};
        let auto = Config::default();
        assert_eq!(
            LimiterSettings::from_config(&auto),
            Some(LimiterSettings {
                initial: 1,
                max: DEFAULT_MAX_LIMIT
            })
        );
        let processes = Config {
            worker_processes: 4,
            max_concurrency: 3,
            ..Config::default()
        };
        assert_eq!(
            LimiterSettings::from_config(&processes),
            Some(LimiterSettings { initial: 3, max: 3 }),
            "MOLT_WORKER_PROCESSES implies a start, within the bound"
        );
        for fixed in [0, 1, 8] {
            let config = Config {
                worker_concurrency: Concurrency::Fixed(fixed),
                ..Config::default()
            };
            assert_eq!(LimiterSettings::from_config(&config), None);
        }
    }

    #[test]
    fn queueing_that_few_requests_pay_for_still_stops_the_limit() {
        // Puma serves up to ten requests of one kept-alive connection in a row: beyond its
        // threads, nine answers in ten are as fast as ever and the tenth waits for all the
        // extra ones, so that the mean grows as on a fair server (Little's law) while the
        // interquartile mean stays flat. Without rule 7 the limit rose to the maximum.
        let sent = std::cell::Cell::new(0u32);
        let base = 50 * MS;
        let curve = move |n: usize, _| {
            sent.set(sent.get() + 1);
            let n = u32::try_from(n).unwrap();
            if n <= 5 || sent.get() % 10 != 0 {
                base
            } else {
                // Ten times the excess, on one request in ten: a mean of base * n / 5.
                base + base * 10 * (n - 5) / 5
            }
        };
        let mut sim = Sim::new(settings(1), 50, &curve);
        sim.run(6000);
        let (low, high, _) = sim.span(3000, 6000);
        let share = sim.throughput(3000, 6000) / (5.0 / base.as_secs_f64());
        println!(
            "limiter 5 threads, unfair: settled {low}..={high}, final {}, throughput {share:.2} of best",
            sim.limiter.limit()
        );
        assert!(low >= 4 && high <= 7, "settled {low}..={high}");
        assert!(share > 0.9, "throughput {share}");
    }

    #[test]
    fn a_pause_in_the_traffic_is_not_queueing() {
        // Regression: a window whose answers straddled a pause of the clients had a rate
        // over idle time, so its mean by Little's law looked like heavy queueing, and the
        // limit fell (and stopped rising) though no request had waited.
        // At its maximum of 4, each window spans eight latencies: long enough for a rate.
        let mut limiter = Limiter::new(LimiterSettings { initial: 4, max: 4 });
        let origin = Instant::now();
        let mut now = Duration::ZERO;
        let answer = |limiter: &mut Limiter, now: &mut Duration, pause: Duration| {
            // A server flat at any concurrency: the limit's requests in flight, 10 ms each,
            // so an answer every 10 ms / limit.
            *now += pause + 10 * MS / u32::try_from(limiter.limit()).unwrap();
            limiter.on_sample(10 * MS, limiter.limit(), origin + *now);
        };
        for _ in 0..(8 * WINDOW) {
            answer(&mut limiter, &mut now, Duration::ZERO);
        }
        let before = limiter.limit();
        // The window holding the pause closes within the next two windows' answers.
        for i in 0..(2 * WINDOW) {
            let pause = if i == WINDOW / 2 {
                5000 * MS
            } else {
                Duration::ZERO
            };
            answer(&mut limiter, &mut now, pause);
        }
        assert_eq!((before, limiter.limit()), (4, 4));
    }

    #[test]
    fn is_send() {
        fn send<T: Send>() {}
        send::<Limiter>();
    }

    #[test]
    fn one_at_a_time_server_settles_at_one() {
        let curve = |n, _| threads(1, 50 * MS, n);
        for initial in [1, 4] {
            let (low, high, changes, share) =
                settle("one-at-a-time", settings(initial), 20, &curve, None, 4000);
            assert_eq!(low, 1);
            assert!(high <= 2, "probes go at most to 2, got {high}");
            assert!(changes <= probe_budget(2000), "{changes} changes");
            assert!(share > 0.9, "throughput {share}");
        }
    }

    #[test]
    fn five_thread_server_settles_near_five() {
        let curve = |n, _| threads(5, 50 * MS, n);
        for initial in [1, 5, 16] {
            let (low, high, changes, share) =
                settle("5 threads", settings(initial), 50, &curve, None, 6000);
            assert!(low >= 4 && high <= 7, "settled {low}..={high}");
            assert!(changes <= probe_budget(3000), "{changes} changes");
            assert!(share > 0.9, "throughput {share}");
        }
    }

    #[test]
    fn io_bound_server_rises_past_a_hundred_and_stays_under_max() {
        // Flat to 150 in flight, 100 ms each; 200 clients.
        let curve = |n, _| threads(150, 100 * MS, n);
        let (low, high, _, share) = settle("I/O-bound", settings(1), 200, &curve, None, 20000);
        assert!(low >= 100, "settled {low}..={high}");
        assert!(high <= DEFAULT_MAX_LIMIT);
        assert!(share > 0.9, "throughput {share}");

        // Flat to 110 only: the limit stops near there on its own, below max.
        let knee = |n, _| threads(110, 100 * MS, n);
        let (low, high, _, share) =
            settle("I/O-bound to 110", settings(1), 200, &knee, None, 20000);
        assert!(low >= 100 && high <= 127, "settled {low}..={high}");
        assert!(share > 0.9, "throughput {share}");

        let capped = LimiterSettings {
            initial: 1,
            max: 40,
        };
        let (low, high, _, _) = settle("I/O-bound, max 40", capped, 200, &curve, None, 10000);
        assert_eq!((low, high), (40, 40));
    }

    #[test]
    fn cpu_bound_server_settles_near_its_cores() {
        // Two cores: flat to 2, then every request shares them.
        let curve = |n, _| threads(2, 20 * MS, n);
        for initial in [1, 8] {
            let (low, high, changes, share) = settle(
                "CPU-bound, 2 cores",
                settings(initial),
                30,
                &curve,
                None,
                4000,
            );
            assert!(low >= 2 && high <= 3, "settled {low}..={high}");
            assert!(changes <= probe_budget(2000), "{changes} changes");
            assert!(share > 0.9, "throughput {share}");
        }
    }

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn a_fast_worker_idle_between_requests_takes_many_at_once() {
        // The shape measured in front of a Node process answering a small page: 60 us at
        // 1 in flight, most of it the hand-over through molt, and 15 us more for each
        // further request, so throughput keeps rising with concurrency (4x at 10). As a
        // ratio, 75 us against 60 reads as queueing, and the limit was held at 1 or 2.
        // With 100 clients, the limit stops where requests wait about QUEUE_SLACK inside
        // the worker: 500 us at 15 us each is some 33 requests past the baseline's.
        let curve = |n: usize, _| 60 * US + 15 * US * u32::try_from(n - 1).unwrap();
        for initial in [1, 8] {
            let (low, high, _, share) = settle(
                "fast worker",
                settings(initial),
                100,
                &curve,
                Some(3),
                40_000,
            );
            assert!(low >= 16 && high <= 48, "settled {low}..={high}");
            assert!(share > 0.85, "throughput {share}");
        }
    }

    #[test]
    fn a_fast_one_at_a_time_worker_holds_only_half_a_millisecond_of_waiting() {
        // 100 us per request, one at a time: the slack lets a few wait inside the worker,
        // about QUEUE_SLACK's worth, and no more; the rest wait in molt's queue, where
        // another worker can take them and scale-up sees them.
        let curve = |n, _| threads(1, 100 * US, n);
        let (low, high, _, _) =
            settle("fast, one at a time", settings(1), 50, &curve, None, 20_000);
        assert!(low >= 4 && high <= 7, "settled {low}..={high}");
    }

    #[test]
    fn follows_a_worker_whose_parallelism_changes() {
        // 5 threads for the first 60 s, then 1 (a lock serialises the app), then 5 again.
        let curve = |n, t: Duration| {
            let threads_now = if (60..120).contains(&t.as_secs()) {
                1
            } else {
                5
            };
            threads(threads_now, 50 * MS, n)
        };
        let mut sim = Sim::new(settings(5), 50, &curve);
        let mut phases = Vec::new();
        for (until, range) in [(60, 4..=7), (120, 1..=2), (180, 4..=7)] {
            let start = sim.limits.len();
            while sim.now < Duration::from_secs(until) {
                sim.run(1);
            }
            let end = sim.limits.len();
            let settled = sim.settled_by(start, end, &range);
            let (low, high, _) = sim.span(start + settled, end);
            println!(
                "limiter changing parallelism: phase to {until} s: within {range:?} after \
                 {settled} of {} answers, then {low}..={high}",
                end - start
            );
            phases.push((settled, end - start));
        }
        for (settled, answers) in phases {
            assert!(settled <= 600, "took {settled} answers to follow");
            assert!(settled < answers / 2);
        }
    }

    #[test]
    fn noise_does_not_make_the_limit_flap() {
        let curve = |n, _| threads(5, 50 * MS, n);
        for seed in [1, 0x9e37_79b9_7f4a_7c15, 42] {
            let (low, high, changes, share) = settle(
                "5 threads, ±20% noise",
                settings(5),
                50,
                &curve,
                Some(seed),
                8000,
            );
            assert!(low >= 4 && high <= 7, "settled {low}..={high}");
            assert!(changes <= probe_budget(4000), "{changes} changes");
            assert!(share > 0.85, "throughput {share}");
        }
    }

    #[test]
    fn a_lightly_loaded_worker_does_not_drift_up() {
        // Two clients against an I/O-bound worker allowed 10: it is never at its limit, so
        // nothing it measures can justify more.
        let curve = |n, _| threads(150, 100 * MS, n);
        let mut sim = Sim::new(settings(10), 2, &curve).noisy(7);
        sim.run(5000);
        let (low, high, changes) = sim.span(0, 5000);
        println!("limiter lightly loaded: start 10 -> {low}..={high}, {changes} changes");
        assert_eq!(high, 10);
        assert!(low >= 2, "fell to {low}");
    }

    #[test]
    fn relearns_when_the_app_gets_slower_at_every_concurrency() {
        // An I/O-bound worker whose database gets twice as slow after 30 s: latency
        // doubles whatever the concurrency, so the limit must come back up.
        let curve = |n, t: Duration| {
            let base = if t.as_secs() < 30 { 100 * MS } else { 200 * MS };
            threads(150, base, n)
        };
        let mut sim = Sim::new(settings(1), 200, &curve);
        while sim.now < Duration::from_secs(30) {
            sim.run(1);
        }
        let before = sim.limiter.limit();
        let start = sim.limits.len();
        sim.run(6000);
        let (low, _, _) = sim.span(start, start + 6000);
        let settled = sim.settled_by(start, start + 6000, &(100..=DEFAULT_MAX_LIMIT));
        println!(
            "limiter app twice as slow: {before} before, dipped to {low}, back at 100+ after \
             {settled} answers, final {}",
            sim.limiter.limit()
        );
        assert!(before >= 100);
        assert!(settled <= 1500, "took {settled} answers");
    }

    #[test]
    fn finds_the_real_limit_below_a_too_high_start() {
        // Puma's 5 threads, but the app holds the interpreter lock: it serves one request at
        // a time. Started at 5 and always full, the worker never shows its latency at 1 on
        // its own.
        let curve = |n, _| threads(1, 50 * MS, n);
        let (low, high, _, share) =
            settle("5 threads, GVL-bound", settings(5), 50, &curve, None, 6000);
        assert_eq!(low, 1);
        assert!(high <= 2, "settled {low}..={high}");
        assert!(share > 0.9);
    }

    #[test]
    fn stays_within_one_and_max() {
        // Latency that explodes with concurrency, and a server flat far beyond max.
        let steep = |n: usize, _| 10 * MS * u32::try_from(n * n).unwrap();
        let flat = |_, _| 10 * MS;
        let bounded = LimiterSettings { initial: 3, max: 6 };
        for (curve, clients) in [
            (&steep as &Curve, 100),
            (&flat, 100),
            (&steep, 1),
            (&flat, 1),
        ] {
            let mut sim = Sim::new(bounded, clients, curve).noisy(3);
            sim.run(3000);
            let (low, high, _) = sim.span(0, 3000);
            assert!(low >= 1 && high <= 6, "{low}..={high}");
        }
    }

    #[test]
    fn a_few_slow_requests_are_not_queueing() {
        // One request in ten is a report that takes ten times longer: latency varies with
        // the mix, not with concurrency, and the window's interquartile mean ignores it.
        let curve = |n, _| threads(5, 20 * MS, n);
        for seed in [5, 6, 7] {
            let mut sim = Sim::new(settings(5), 50, &curve).tailed(seed);
            sim.run(12000);
            let (low, high, changes) = sim.span(6000, 12000);
            println!("limiter 5 threads, 1 in 10 slow: {low}..={high}, {changes} changes");
            assert!(low >= 3 && high <= 7, "settled {low}..={high}");
        }
    }

    #[test]
    fn noise_does_not_wear_the_baseline_down() {
        // Regression: a baseline that followed every lower window down reached the luckiest
        // one within a few hundred windows, then read ordinary ones as queueing, and a
        // ten-thread worker fell to 6 with 0.9 of its throughput.
        let curve = |n, _| threads(10, 50 * MS, n);
        let mut sim = Sim::new(settings(10), 200, &curve).noisy(1);
        sim.run(80_000);
        let (low, high, _) = sim.span(40_000, 80_000);
        let share = sim.throughput(40_000, 80_000)
            / best_throughput(&curve, 200, DEFAULT_MAX_LIMIT, Duration::ZERO);
        println!("limiter 10 threads, ±20% noise, 80k answers: {low}..={high}, throughput {share:.2} of best");
        assert!(low >= 8 && high <= 15, "{low}..={high}");
        assert!(share > 0.95, "throughput {share}");
    }

    #[test]
    fn a_worker_at_one_whose_app_got_slower_still_probes() {
        // Regression: at a limit of 1 there is no lower limit to shrink to, so nothing
        // re-learnt a baseline from before the app got slower, every window looked like
        // queueing, and the worker never probed again, even once it could serve five.
        let curve = |n, t: Duration| match t.as_secs() {
            0..20 => threads(1, 50 * MS, n),
            20..60 => threads(1, 100 * MS, n),
            _ => threads(5, 100 * MS, n),
        };
        let mut sim = Sim::new(settings(1), 50, &curve);
        while sim.now < Duration::from_secs(60) {
            sim.run(1);
        }
        let start = sim.limits.len();
        sim.run(4000);
        let settled = sim.settled_by(start, start + 4000, &(4..=7));
        println!("limiter at 1, app slower, then 5 threads: within 4..=7 after {settled} answers");
        assert!(settled <= 600, "took {settled} answers");
    }
}
