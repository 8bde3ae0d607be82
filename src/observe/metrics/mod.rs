//! The metrics listener (`MOLT_METRICS_LISTEN`, off by default): `GET /metrics` for
//! Prometheus, KEDA and the Kubernetes HPA, on a listener of its own, never the public
//! port. Which figure to scale out on is in docs/scaling.md.
//!
//! Two kinds of figures. What the request path counts as requests pass, in [`Requests`]:
//! atomics only, so a request pays a few relaxed additions and no lock. And the pool's
//! state, read from the supervisor's status report at each scrape and written by
//! [`Pool`]: nothing is kept between scrapes, so the series of a worker that is gone
//! end with it and the listener holds no more memory after 10,000 scrapes than after one.
//!
//! The text is written by `prometheus-client`: the Prometheus text format (0.0.4), or
//! OpenMetrics when the scraper's `Accept` asks for it, as Prometheus's does.

/// The router's queue time, from `X-Request-Start`.
pub(crate) mod request_start;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::{Method, Request, Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::observe::control::Command;
use crate::observe::event;
use crate::observe::status::StatusReport;

/// Upper bounds of every histogram's buckets, in nanoseconds: 1 ms to 30 s, about
/// 2.5x apart, the range from a quick answer to Heroku's 30-second router timeout.
const BOUNDS_NS: [u64; 14] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Longest a scraper may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The status classes counted, `1xx` to `5xx`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A histogram of durations whose every observation is a few relaxed atomic additions.
/// (`prometheus-client`'s own takes a mutex per observation.)
#[derive(Debug, Clone, Default)]
pub(crate) struct Seconds(Arc<Buckets>);

#[derive(Debug, Default)]
struct Buckets {
    /// Observations per bucket of [`BOUNDS_NS`], not cumulative, and one for longer ones.
    counts: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Seconds {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(BOUNDS_NS.len());
        self.0.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl EncodeMetric for Seconds {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        #[allow(clippy::cast_precision_loss, reason = "seconds for a chart")]
        let seconds = |ns: u64| ns as f64 / 1e9;
        let mut buckets = Vec::with_capacity(BOUNDS_NS.len() + 1);
        let mut count = 0;
        for (i, n) in self.0.counts.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            count += n;
            let bound = BOUNDS_NS.get(i).map_or(f64::INFINITY, |&ns| seconds(ns));
            buckets.push((bound, n));
        }
        let sum = seconds(self.0.sum_ns.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// What the request path counts, shared by every connection.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    /// From asking for a worker to holding one; 0 for a request that did not queue.
    pub(crate) queue_wait: Seconds,
    /// From the router's `X-Request-Start` to molt receiving the request.
    pub(crate) router_queue: Seconds,
    /// From molt receiving the request to its response head.
    pub(crate) response: Seconds,
    /// Answered requests by status class; the counters are shared with `by_class`.
    classes: Family<[(&'static str, &'static str); 1], Counter>,
    by_class: [Counter; CLASSES.len()],
}

impl Requests {
    pub(crate) fn new() -> Self {
        let classes = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let by_class = CLASSES.map(|class| classes.get_or_create_owned(&[("class", class)]));
        Requests {
            classes,
            by_class,
            ..Requests::default()
        }
    }

    /// A request arrived at `now` with this `X-Request-Start`: its router's queue time, if
    /// it says.
    pub(crate) fn arrived(&self, request_start: Option<&[u8]>, now: SystemTime) {
        let waited = request_start
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| request_start::queue_time(v, now));
        if let Some(waited) = waited {
            self.router_queue.observe(waited);
        }
    }

    /// A request was answered with `status`, `elapsed` after it arrived.
    pub(crate) fn answered(&self, status: StatusCode, elapsed: Duration) {
        self.response.observe(elapsed);
        let class = usize::from(status.as_u16() / 100);
        if let Some(counter) = class.checked_sub(1).and_then(|i| self.by_class.get(i)) {
            counter.inc();
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "queue_wait",
            "Time a request waited in molt's queue for a worker; 0 when one was free",
            Unit::Seconds,
            self.queue_wait.clone(),
        );
        registry.register_with_unit(
            "router_queue",
            "Time from the router's X-Request-Start stamp to molt receiving the request",
            Unit::Seconds,
            self.router_queue.clone(),
        );
        registry.register_with_unit(
            "response",
            "Time from molt receiving a request to its response head, queue wait included",
            Unit::Seconds,
            self.response.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by status class",
            self.classes.clone(),
        );
    }
}

/// The pool's state at one scrape, from the supervisor's status report.
#[derive(Debug)]
struct Pool(StatusReport);

/// The worker states counted, so that each has a series even at 0.
const STATES: [&str; 5] = ["booting", "ready", "recycling", "draining", "stopping"];

/// Its help texts end with a full stop, as `prometheus-client` ends those of the
/// registered metrics.
impl Collector for Pool {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = &self.0;
        // In prefork mode the workers are the master's children; the master is counted
        // by its memory only.
        let workers = || r.workers.iter().filter(|w| w.role != "master");
        let mut family = encoder.encode_descriptor(
            "workers",
            "Workers by state (in prefork mode, the adopted master's children).",
            None,
            MetricType::Gauge,
        )?;
        for state in STATES {
            let n = workers().filter(|w| w.state == state).count();
            gauge(family.encode_family(&[("state", state)])?, n)?;
        }
        let mut family = encoder.encode_descriptor(
            "workers_bound",
            "The fewest and most workers the pool may run (MOLT_MIN_WORKERS, MOLT_MAX_WORKERS).",
            None,
            MetricType::Gauge,
        )?;
        gauge(family.encode_family(&[("bound", "min")])?, r.min_workers)?;
        gauge(family.encode_family(&[("bound", "max")])?, r.max_workers)?;
        one_gauge(
            &mut encoder,
            "workers_desired",
            "Workers the scaler wants now.",
            None,
            r.desired,
        )?;
        let mut family = encoder.encode_descriptor(
            "worker_concurrency_limit",
            "Requests each worker takes at once now, learned or fixed; absent when unlimited.",
            None,
            MetricType::Gauge,
        )?;
        for w in r.workers.iter().filter(|w| w.role != "child") {
            if let Some(limit) = w.limit {
                let id = w.id.to_string();
                gauge(family.encode_family(&[("worker", id.as_str())])?, limit)?;
            }
        }
        let in_flight: usize = r.workers.iter().filter_map(|w| w.in_flight).sum();
        one_gauge(
            &mut encoder,
            "requests_in_flight",
            "Requests the workers hold now.",
            None,
            in_flight,
        )?;
        one_gauge(
            &mut encoder,
            "requests_queued",
            "Requests waiting in molt's queue for a worker now.",
            None,
            r.queue,
        )?;
        let ratio = Unit::Other("ratio".to_owned());
        let metric = encoder.encode_descriptor(
            "utilization",
            "Share of time the ready workers held at least one request, over the last interval.",
            Some(&ratio),
            MetricType::Gauge,
        )?;
        ConstGauge::new(r.load.utilization.unwrap_or(0.0)).encode(metric)?;
        one_gauge(
            &mut encoder,
            "saturated",
            "1 when the pool runs its most workers and requests still queue: scale out.",
            None,
            usize::from(r.load.saturated),
        )?;
        self.memory(&mut encoder)?;
        let mut family = encoder.encode_descriptor(
            "recycles",
            "Workers recycled gracefully since molt started, by reason.",
            None,
            MetricType::Counter,
        )?;
        for &(reason, n) in &r.load.recycles {
            counter(family.encode_family(&[("reason", reason)])?, n)?;
        }
        let mut family = encoder.encode_descriptor(
            "kills",
            "Workers or children killed at once since molt started, by reason.",
            None,
            MetricType::Counter,
        )?;
        for &(reason, n) in &r.load.kills {
            counter(family.encode_family(&[("reason", reason)])?, n)?;
        }
        let metric = encoder.encode_descriptor(
            "boot_failures",
            "Worker boots that failed since molt started.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(r.load.boot_failures).encode(metric)
    }
}

impl Pool {
    fn memory(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = &self.0;
        let mut family = encoder.encode_descriptor(
            "worker_memory",
            "Memory of each worker's process tree (PSS), or of an adopted master alone.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for w in &r.workers {
            let Some(bytes) = w.memory else { continue };
            let (id, pid) = (w.id.to_string(), w.pid.to_string());
            let labels = [
                ("worker", id.as_str()),
                ("pid", pid.as_str()),
                ("role", w.role),
            ];
            gauge(family.encode_family(&labels)?, bytes)?;
        }
        let figures = [
            ("pool", "Memory of the whole pool.", r.pool_memory),
            (
                "usable",
                "Memory the pool may use (MOLT_MEMORY_TARGET of the budget, less molt's own).",
                r.usable,
            ),
            (
                "budget",
                "The memory budget: MOLT_MEMORY_LIMIT, the cgroup limit or the machine's.",
                r.budget,
            ),
            ("molt", "molt's own resident memory.", r.molt_rss),
        ];
        for (name, help, bytes) in figures {
            let name = format!("memory_{name}");
            one_gauge(encoder, &name, help, Some(&Unit::Bytes), bytes)?;
        }
        let mut family = encoder.encode_descriptor(
            "worker_memory_cap",
            "Per-worker memory caps: over soft a worker is recycled, over hard killed.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        gauge(family.encode_family(&[("cap", "soft")])?, r.soft_cap)?;
        gauge(family.encode_family(&[("cap", "hard")])?, r.hard_cap)
    }
}

fn one_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl TryInto<i64>,
) -> Result<(), std::fmt::Error> {
    gauge(
        encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?,
        value,
    )
}

fn gauge(encoder: MetricEncoder, value: impl TryInto<i64>) -> Result<(), std::fmt::Error> {
    let value: i64 = value.try_into().unwrap_or(i64::MAX);
    ConstGauge::new(value).encode(encoder)
}

fn counter(encoder: MetricEncoder, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder)
}

/// The whole scrape: what requests counted, and the pool's state when the supervisor
/// answered.
fn render(requests: &Requests, pool: Option<StatusReport>, openmetrics: bool) -> String {
    let mut registry = Registry::with_prefix("molt");
    requests.register(&mut registry);
    if let Some(report) = pool {
        registry.register_collector(Box::new(Pool(report)));
    }
    let mut text = String::new();
    let encoded = if openmetrics {
        prometheus_client::encoding::text::encode(&mut text, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
    };
    // Writing to a String fails only if a metric's own encoding does, which none of
    // these can; a partial scrape would still be read, so it is sent as it is.
    if let Err(err) = encoded {
        event!(Warn, "metrics_encode_failed", error = err);
    }
    text
}

/// The content type of the `OpenMetrics` text format, which Prometheus asks for first.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the scraper takes `OpenMetrics`. Prometheus lists it first in `Accept`; a
/// plain `curl` gets the Prometheus text format.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

/// Binds the metrics listener; called before any worker starts, so that an address in
/// use stops molt at once with a message.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Answers scrapes until the runtime ends; `send` hands a command to the supervisor and
/// is false once it is gone.
pub(crate) async fn serve<S>(listener: std::net::TcpListener, requests: Arc<Requests>, send: S)
where
    S: Fn(Command) -> bool + Clone + Send + Sync + 'static,
{
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: the public port matters more; try again later.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let requests = Arc::clone(&requests);
        let send = send.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let requests = Arc::clone(&requests);
                let send = send.clone();
                async move { Ok::<_, Infallible>(answer(&req, &requests, send).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer<B>(
    req: &Request<B>,
    requests: &Requests,
    send: impl Fn(Command) -> bool,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let (tx, rx) = oneshot::channel();
    // While molt shuts down the supervisor may no longer answer: the request figures
    // are still served.
    let pool = if send(Command::Status(tx)) {
        rx.await.ok()
    } else {
        None
    };
    let openmetrics = wants_openmetrics(req.headers());
    let body = render(requests, pool, openmetrics);
    let content_type = if openmetrics {
        OPENMETRICS
    } else {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A short answer that says its status and nothing else.
fn plain(status: StatusCode) -> Response<Full<Bytes>> {
    let reason = status.canonical_reason().unwrap_or("");
    let mut response = Response::new(Full::new(Bytes::from(format!("{reason}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::status::{Load, WorkerRow};

    fn worker(id: u64, role: &'static str, state: &'static str) -> WorkerRow {
        WorkerRow {
            id,
            pid: 4000 + i32::try_from(id).unwrap(),
            role,
            state,
            age_s: 30,
            requests: Some(12),
            in_flight: Some(2),
            memory: Some(80 << 20),
            peak: 90 << 20,
            growth_per_request: None,
            growth_per_hour: None,
            cpu_s: 1.5,
            limit: Some(4),
            learned: true,
            latency_baseline: None,
            latency_last: None,
        }
    }

    fn report() -> StatusReport {
        StatusReport {
            desired: 2,
            queue: 3,
            pool_memory: 160 << 20,
            load: Load {
                utilization: Some(0.75),
                saturated: true,
                boot_failures: 1,
                recycles: vec![("memory", 2), ("restart", 0)],
                kills: vec![("memory_hard", 1)],
            },
            ..crate::observe::status::sample_report(vec![
                worker(1, "worker", "ready"),
                worker(2, "worker", "booting"),
            ])
        }
    }

    /// The lines of `text` that are samples of `name`, exactly.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .collect()
    }

    #[test]
    fn a_scrape_shows_the_pool_and_the_requests() {
        let requests = Requests::new();
        requests.answered(StatusCode::OK, Duration::from_millis(40));
        requests.answered(StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(1));
        let text = render(&requests, Some(report()), false);
        assert_eq!(
            samples(&text, "molt_workers"),
            [
                "molt_workers{state=\"booting\"} 1",
                "molt_workers{state=\"ready\"} 1",
                "molt_workers{state=\"recycling\"} 0",
                "molt_workers{state=\"draining\"} 0",
                "molt_workers{state=\"stopping\"} 0",
            ]
        );
        let mut classes = samples(&text, "molt_requests_total");
        classes.sort_unstable();
        assert_eq!(
            classes,
            [
                "molt_requests_total{class=\"1xx\"} 0",
                "molt_requests_total{class=\"2xx\"} 1",
                "molt_requests_total{class=\"3xx\"} 0",
                "molt_requests_total{class=\"4xx\"} 0",
                "molt_requests_total{class=\"5xx\"} 1",
            ]
        );
        assert_eq!(
            samples(&text, "molt_requests_queued"),
            ["molt_requests_queued 3"]
        );
        assert_eq!(
            samples(&text, "molt_requests_in_flight"),
            ["molt_requests_in_flight 4"]
        );
        assert_eq!(
            samples(&text, "molt_utilization_ratio"),
            ["molt_utilization_ratio 0.75"]
        );
        assert_eq!(samples(&text, "molt_saturated"), ["molt_saturated 1"]);
        assert_eq!(
            samples(&text, "molt_worker_concurrency_limit"),
            [
                "molt_worker_concurrency_limit{worker=\"1\"} 4",
                "molt_worker_concurrency_limit{worker=\"2\"} 4",
            ]
        );
        assert_eq!(
            samples(&text, "molt_memory_budget_bytes"),
            [format!("molt_memory_budget_bytes {}", 512 << 20)]
        );
        assert_eq!(
            samples(&text, "molt_worker_memory_bytes")[0],
            format!(
                "molt_worker_memory_bytes{{worker=\"1\",pid=\"4001\",role=\"worker\"}} {}",
                80 << 20
            )
        );
        assert_eq!(
            samples(&text, "molt_recycles_total"),
            [
                "molt_recycles_total{reason=\"memory\"} 2",
                "molt_recycles_total{reason=\"restart\"} 0",
            ]
        );
        assert_eq!(
            samples(&text, "molt_kills_total"),
            ["molt_kills_total{reason=\"memory_hard\"} 1"]
        );
        assert_eq!(
            samples(&text, "molt_boot_failures_total"),
            ["molt_boot_failures_total 1"]
        );
        // Every family says what it is.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
    }

    #[test]
    fn histograms_count_into_their_buckets() {
        let requests = Requests::new();
        requests.queue_wait.observe(Duration::ZERO);
        requests.queue_wait.observe(Duration::from_millis(30));
        let text = render(&requests, None, false);
        assert!(
            text.contains("# TYPE molt_queue_wait_seconds histogram\n"),
            "{text}"
        );
        assert!(text.contains("# HELP molt_queue_wait_seconds Time a request waited"));
        assert_eq!(
            samples(&text, "molt_queue_wait_seconds_bucket")[..6],
            [
                "molt_queue_wait_seconds_bucket{le=\"0.001\"} 1",
                "molt_queue_wait_seconds_bucket{le=\"0.0025\"} 1",
                "molt_queue_wait_seconds_bucket{le=\"0.005\"} 1",
                "molt_queue_wait_seconds_bucket{le=\"0.01\"} 1",
                "molt_queue_wait_seconds_bucket{le=\"0.025\"} 1",
                "molt_queue_wait_seconds_bucket{le=\"0.05\"} 2",
            ]
        );
        assert_eq!(
            samples(&text, "molt_queue_wait_seconds_bucket").last(),
            Some(&"molt_queue_wait_seconds_bucket{le=\"+Inf\"} 2")
        );
        assert_eq!(
            samples(&text, "molt_queue_wait_seconds_sum"),
            ["molt_queue_wait_seconds_sum 0.03"]
        );
    }

    #[test]
    fn openmetrics_when_asked_and_without_the_pool_when_it_does_not_answer() {
        let requests = Requests::new();
        let text = render(&requests, None, true);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE molt_requests counter\n"), "{text}");
        assert!(!text.contains("molt_workers"), "{text}");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            ),
        );
        assert!(wants_openmetrics(&headers));
        assert!(!wants_openmetrics(&HeaderMap::new()));
    }

    #[test]
    fn requests_are_counted_by_class_and_router_queue_time_by_its_stamp() {
        let requests = Requests::new();
        requests.answered(StatusCode::SWITCHING_PROTOCOLS, Duration::ZERO);
        requests.answered(StatusCode::NOT_FOUND, Duration::ZERO);
        requests.answered(StatusCode::from_u16(600).unwrap(), Duration::ZERO);
        assert_eq!(
            requests
                .by_class
                .iter()
                .map(Counter::get)
                .collect::<Vec<_>>(),
            [1, 0, 0, 1, 0]
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_407_944_034_337);
        requests.arrived(None, now);
        requests.arrived(Some(b"1407944034295"), now);
        let counts: Vec<u64> = requests
            .router_queue
            .0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        // 42 ms: the 50 ms bucket, once.
        assert_eq!(counts.iter().sum::<u64>(), 1);
        assert_eq!(counts[5], 1);
    }
}
