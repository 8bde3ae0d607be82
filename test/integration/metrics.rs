//! The metrics listener (`MOLT_METRICS_LISTEN`) against real tools: `promtool check
//! metrics` on a scrape, a real Prometheus server that scrapes molt while load runs and
//! answers queries on the pool's figures, only `/metrics` served and never on the public
//! port, molt's memory across 10,000 scrapes, and the Kubernetes manifests of
//! docs/scaling.md (test/k8s/) asking only for metrics a scrape has.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::memory::load;
use crate::proxy::pool;
use crate::support::{
    e2e_required, free_port, get, python3_available, status_json, temp_path, tools_present,
    wait_until, Molt, ProcessTree,
};

/// A pool of `workers` with the metrics listener on a free loopback port, and that port.
fn pool_with_metrics(
    workers: usize,
    configure: impl FnOnce(crate::support::MoltBuilder) -> crate::support::MoltBuilder,
) -> (Molt, u16) {
    let metrics = free_port();
    let molt = pool(workers, |b| {
        configure(b.env("MOLT_METRICS_LISTEN", format!("127.0.0.1:{metrics}")))
    });
    assert!(
        molt.wait_for_log("at=metrics_listen", Duration::from_secs(5)),
        "{}",
        molt.log()
    );
    (molt, metrics)
}

/// One scrape's text, which must be a 200.
fn scrape(port: u16) -> String {
    let response = get(port, "/metrics").expect("the metrics listener answers");
    assert_eq!(response.status, 200, "{}", response.text());
    response.text()
}

/// The metric names a scrape has samples of.
fn names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn promtool_accepts_a_scrape() {
    if !python3_available() || !tools_present(&["promtool"]) {
        return;
    }
    let (molt, metrics) = pool_with_metrics(1, |b| b);
    for _ in 0..3 {
        let response =
            crate::support::request(molt.port(), "GET", "/", &[("X-Request-Start", "t=1")], b"");
        assert_eq!(response.expect("served").status, 200);
    }
    let text = scrape(metrics);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    promtool
        .stdin
        .take()
        .expect("stdin was set to piped")
        .write_all(text.as_bytes())
        .expect("promtool reads the scrape");
    let out = promtool.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every figure the listener promises is there.
    let have = names(&text);
    for name in [
        "molt_workers",
        "molt_workers_desired",
        "molt_worker_concurrency_limit",
        "molt_requests_in_flight",
        "molt_requests_queued",
        "molt_queue_wait_seconds_bucket",
        "molt_router_queue_seconds_count",
        "molt_response_seconds_sum",
        "molt_utilization_ratio",
        "molt_saturated",
        "molt_worker_memory_bytes",
        "molt_memory_pool_bytes",
        "molt_memory_usable_bytes",
        "molt_memory_budget_bytes",
        "molt_recycles_total",
        "molt_kills_total",
        "molt_requests_total",
        "molt_boot_failures_total",
    ] {
        assert!(have.contains(name), "{name} missing from:\n{text}");
    }
    assert!(
        text.contains("molt_requests_total{class=\"2xx\"} 3\n"),
        "{text}"
    );
    // A stamp of 1970 is no router's: not counted as queue time.
    assert!(
        text.contains("molt_router_queue_seconds_count 0\n"),
        "{text}"
    );
}

#[test]
fn only_metrics_is_served_and_never_on_the_public_port() {
    if !python3_available() {
        assert!(!e2e_required(), "python3 is required");
        return;
    }
    let (molt, metrics) = pool_with_metrics(1, |b| b);
    for path in ["/", "/metrics/", "/metricsx", "/status", "/favicon.ico"] {
        let response = get(metrics, path).expect("answered");
        assert_eq!(response.status, 404, "{path}");
        assert!(!response.text().contains("molt_"), "{path}");
    }
    let post = crate::support::request(metrics, "POST", "/metrics", &[], b"x").expect("answered");
    assert_eq!(post.status, 405);
    // A query string is still the metrics.
    assert_eq!(get(metrics, "/metrics?x=1").expect("answered").status, 200);
    // On the public port /metrics is the app's own path: the fixture app's 404.
    let public = get(molt.port(), "/metrics").expect("answered");
    assert_eq!(public.status, 404);
    assert_eq!(public.text(), "not found\n");
}

#[test]
fn the_public_port_or_a_taken_address_is_refused_at_start() {
    let port = free_port();
    let mut molt = Molt::builder()
        .env("PORT", port.to_string())
        .env("MOLT_METRICS_LISTEN", format!("[::]:{port}"))
        .args(["run", "--", "true"])
        .spawn();
    let status = molt.wait_exit(Duration::from_secs(10)).expect("molt exits");
    assert_eq!(status.code(), Some(2), "{}", molt.log());
    assert!(
        molt.log().contains(&format!(
            "invalid MOLT_METRICS_LISTEN=\"[::]:{port}\": expected an IP address and a port \
             other than the public port {port}"
        )),
        "{}",
        molt.log()
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = taken.local_addr().expect("bound");
    let mut molt = Molt::builder()
        .env("MOLT_METRICS_LISTEN", addr.to_string())
        .args(["run", "--", "true"])
        .spawn();
    let status = molt.wait_exit(Duration::from_secs(10)).expect("molt exits");
    assert!(!status.success());
    assert!(
        molt.log()
            .contains(&format!("cannot listen on MOLT_METRICS_LISTEN={addr}")),
        "{}",
        molt.log()
    );
}

#[test]
fn utilization_and_saturation_are_in_the_metrics_line_and_status() {
    if !python3_available() {
        assert!(!e2e_required(), "python3 is required");
        return;
    }
    let molt = pool(1, |b| {
        b.env("MOLT_METRICS_INTERVAL", "300ms")
            .env("MOLT_SAMPLE_INTERVAL", "300ms")
    });
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
    // The first line is the first reading; utilization is measured from the second on.
    assert!(
        molt.wait_for_log("sample#molt.utilization=", Duration::from_secs(10)),
        "{}",
        molt.log()
    );
    let line = molt
        .log()
        .lines()
        .find(|l| l.contains("sample#molt.utilization="))
        .expect("a metrics line with utilization")
        .to_owned();
    let utilization: f64 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("sample#molt.utilization="))
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!((0.0..=1.0).contains(&utilization), "{line}");
    assert!(line.contains(" sample#molt.saturated=0"), "{line}");
    let socket = std::path::PathBuf::from(format!("/tmp/molt-{}.sock", molt.port()));
    // Read again once MOLT_SAMPLE_INTERVAL has passed since the first status.
    let mut status = status_json(&socket);
    assert!(
        wait_until(Duration::from_secs(10), || {
            status = status_json(&socket);
            status["utilization"].is_f64()
        }),
        "{status}"
    );
    let utilization = status["utilization"]
        .as_f64()
        .expect("utilization measured");
    assert!((0.0..=1.0).contains(&utilization), "{status}");
    assert_eq!(status["saturated"], false, "{status}");
    assert_eq!(status["boot_failures"], 0, "{status}");
    assert_eq!(status["recycles"]["memory"], 0, "{status}");
    assert_eq!(status["kills"]["memory_hard"], 0, "{status}");
}

/// The resident set of a process, from `/proc/<pid>/status`, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("molt runs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[test]
fn memory_stays_bounded_across_ten_thousand_scrapes() {
    if !python3_available() {
        assert!(!e2e_required(), "python3 is required");
        return;
    }
    let (molt, metrics) = pool_with_metrics(2, |b| b);
    for _ in 0..1_000 {
        scrape(metrics);
    }
    let early = rss_kb(molt.pid());
    for _ in 0..9_000 {
        scrape(metrics);
    }
    let late = rss_kb(molt.pid());
    eprintln!("molt RSS: {early} kB after 1,000 scrapes, {late} kB after 10,000");
    // Nothing is kept per scrape: nine thousand more must not add even 1 kB each.
    assert!(
        late < early + 8 * 1024,
        "molt grew from {early} kB to {late} kB over 9,000 scrapes"
    );
}

/// A Prometheus server of its own: config and data in a temporary directory, listening
/// on a free loopback port, scraping `targets` every second.
struct Prometheus {
    server: ProcessTree,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(targets: &[u16]) -> Prometheus {
        let dir = temp_path("prometheus");
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: molt\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("the config is written");
        let port = free_port();
        let mut command = Command::new("prometheus");
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let server = ProcessTree::start(command);
        let prometheus = Prometheus { server, port, dir };
        assert!(
            wait_until(Duration::from_secs(60), || get(port, "/-/ready")
                .is_ok_and(|r| r.status == 200)),
            "Prometheus did not become ready:\n{}",
            prometheus.server.log()
        );
        prometheus
    }

    /// An instant query's samples: each series' labels and value.
    fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let Ok(response) = get(self.port, &path) else {
            return Vec::new();
        };
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&response.body) else {
            return Vec::new();
        };
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let value = s["value"][1].as_str()?.parse().ok()?;
                Some((s["metric"].clone(), value))
            })
            .collect()
    }

    /// Waits until `promql` has a sample whose value `holds`, and returns that value.
    fn wait_for(&self, promql: &str, holds: impl Fn(f64) -> bool) -> f64 {
        let mut seen = None;
        let found = wait_until(Duration::from_secs(60), || {
            seen = self
                .query(promql)
                .into_iter()
                .map(|(_, v)| v)
                .find(|v| holds(*v));
            seen.is_some()
        });
        assert!(
            found,
            "Prometheus never gave {promql} a value as expected; last: {:?}\n{}",
            self.query(promql),
            self.server.log()
        );
        let value = seen.expect("found");
        eprintln!("prometheus: {promql} = {value}");
        value
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a sample's value is `expected`, a small whole number Prometheus sends exactly.
fn is(value: f64, expected: f64) -> bool {
    (value - expected).abs() < 1e-9
}

/// `text` for a URL's query string: everything but unreserved characters percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_pool_while_load_runs() {
    if !python3_available() || !tools_present(&["prometheus"]) {
        return;
    }
    // Two workers that take one request each, and six clients: requests queue.
    let (molt, metrics) = pool_with_metrics(2, |b| {
        b.env("MOLT_MAX_WORKERS", "2")
            .env("MOLT_WORKER_CONCURRENCY", "1")
    });
    let prometheus = Prometheus::start(&[metrics]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (port, stop) = (molt.port(), Arc::clone(&stop));
        thread::spawn(move || {
            load(port, 6, "/sleep?ms=40", move || {
                stop.load(Ordering::Relaxed)
            })
        })
    };
    let up = prometheus.wait_for("up{job=\"molt\"}", |v| is(v, 1.0));
    let ready = prometheus.wait_for("molt_workers{state=\"ready\"}", |v| is(v, 2.0));
    let waited = prometheus.wait_for("molt_queue_wait_seconds_sum", |v| v > 0.0);
    let p90 = prometheus.wait_for(
        "histogram_quantile(0.9, rate(molt_queue_wait_seconds_bucket[5s]))",
        |v| v > 0.0,
    );
    let busy = prometheus.wait_for("molt_utilization_ratio", |v| v > 0.5);
    let saturated = prometheus.wait_for("max_over_time(molt_saturated[10s])", |v| is(v, 1.0));
    let answered = prometheus.wait_for("sum(molt_requests_total{class=\"2xx\"})", |v| v > 10.0);
    let limits = prometheus.query("molt_worker_concurrency_limit");
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().expect("the load ran");
    assert_eq!(failed, 0, "{ok} ok");
    assert_eq!(limits.len(), 2, "{limits:?}");
    assert!(limits.iter().all(|(_, v)| is(*v, 1.0)), "{limits:?}");
    eprintln!(
        "prometheus saw: up {up}, ready workers {ready}, queue wait sum {waited}s, p90 {p90}s, \
         utilization {busy}, saturated {saturated}, 2xx {answered}, limits {limits:?}"
    );
    // molt status --json says the same.
    let status = status_json(Path::new(&format!("/tmp/molt-{}.sock", molt.port())));
    assert!(status["utilization"].as_f64().is_some(), "{status}");
    assert!(status["saturated"].is_boolean(), "{status}");
}

/// Every document of the YAML files in test/k8s/, as JSON, read with `PyYAML`.
fn k8s_documents() -> Option<Vec<(String, serde_json::Value)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test/k8s");
    let script = "import json, sys, yaml\n\
                  print(json.dumps([[f, d] for f in sys.argv[1:] \
                  for d in yaml.safe_load_all(open(f))]))";
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("test/k8s exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&files)
        .output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named 'yaml'") => {
            assert!(
                !e2e_required(),
                "MOLT_E2E_REQUIRED=1 but PyYAML is missing: install python3-yaml (.ci/run does)"
            );
            eprintln!("skipped: PyYAML missing (MOLT_E2E_REQUIRED=1 makes this a failure)");
            return None;
        }
        Ok(out) => panic!(
            "test/k8s does not parse:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => {
            assert!(!e2e_required(), "python3 is required: {err}");
            return None;
        }
    };
    let docs: Vec<(String, serde_json::Value)> =
        serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    Some(docs)
}

/// The names of molt's metrics in a `PromQL` query.
fn molt_metrics_in(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("molt_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn the_kubernetes_manifests_ask_for_metrics_molt_serves() {
    if !python3_available() {
        assert!(!e2e_required(), "python3 is required");
        return;
    }
    let Some(docs) = k8s_documents() else {
        return;
    };
    let of_kind = |kind: &str| -> &serde_json::Value {
        &docs
            .iter()
            .find(|(_, d)| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in test/k8s"))
            .1
    };
    let deployment = of_kind("Deployment");
    let service = of_kind("Service");
    let scaled = of_kind("ScaledObject");

    // The Deployment turns the listener on, on the port it declares and annotates.
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let env = |name: &str| -> String {
        container["env"]
            .as_array()
            .expect("the container has env")
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("no {name} in the container's env"))
            .to_owned()
    };
    let listen: std::net::SocketAddr = env("MOLT_METRICS_LISTEN").parse().expect("an address");
    let port_named = |name: &str| -> u64 {
        container["ports"]
            .as_array()
            .expect("the container has ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    assert_eq!(port_named("metrics"), u64::from(listen.port()));
    assert_eq!(
        port_named("http").to_string(),
        env("PORT"),
        "the app's port is the PORT molt binds"
    );
    assert_ne!(u64::from(listen.port()), port_named("http"));
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], listen.port().to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    // The Service selects the pods and exposes the metrics port.
    let labels = &pod["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().expect("a selector") {
        assert_eq!(
            &labels[key], value,
            "the Service selects the Deployment's pods"
        );
    }
    assert!(service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .any(|p| p["targetPort"] == "metrics"));
    // The ScaledObject scales the Deployment on Prometheus queries of molt's metrics.
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let triggers = scaled["spec"]["triggers"].as_array().expect("triggers");
    assert!(!triggers.is_empty());
    let mut queried = BTreeSet::new();
    for trigger in triggers {
        assert_eq!(trigger["type"], "prometheus", "{trigger}");
        let query = trigger["metadata"]["query"].as_str().expect("a query");
        let threshold = trigger["metadata"]["threshold"]
            .as_str()
            .expect("a threshold");
        assert!(
            threshold.parse::<f64>().is_ok_and(|t| t > 0.0),
            "{threshold}"
        );
        let names = molt_metrics_in(query);
        assert!(!names.is_empty(), "{query} asks nothing of molt");
        queried.extend(names);
    }

    // Each name they query is in a real scrape, and so are the docs' names.
    let (_molt, metrics) = pool_with_metrics(1, |b| b);
    let have = names(&scrape(metrics));
    let docs_text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/scaling.md"))
            .expect("docs/scaling.md exists");
    queried.extend(molt_metrics_in(&docs_text));
    for name in &queried {
        // A histogram is named by its family in the docs, queried by its `_bucket` series.
        let served = have.contains(name.as_str()) || have.contains(&format!("{name}_bucket"));
        assert!(served, "{name} is queried but not served: {have:?}");
    }
}
