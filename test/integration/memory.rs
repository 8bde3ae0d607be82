//! Memory governance, recycling and autoscaling on real processes: the leaking fixture
//! under load, hard caps, the kill-loop guard, request limits and timeouts, scaling, and
//! what `molt status` and the metrics line report.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::proxy::pool;
use std::os::unix::fs::PermissionsExt as _;

use crate::support::{get, molt_status, temp_path, wait_until};

/// Numbers after `key=` in every log line that holds `needle`.
fn values(log: &str, needle: &str, key: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

/// Runs `clients` threads looping on `path` until `stop` holds; returns (ok, failed).
pub(crate) fn load(
    port: u16,
    clients: usize,
    path: &str,
    stop: impl Fn() -> bool + Send + Sync + 'static,
) -> (usize, usize) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(stop);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (ok, failed, stop, path) = (
                Arc::clone(&ok),
                Arc::clone(&failed),
                Arc::clone(&stop),
                path.to_owned(),
            );
            thread::spawn(move || {
                while !stop() {
                    match get(port, &path) {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("load thread");
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

#[test]
fn leaking_app_is_recycled_under_load_and_no_request_fails() {
    let molt = pool(2, |b| {
        b.env("MOLT_MEMORY_LIMIT", "192MB")
            .env("MOLT_WORKER_MEMORY", "40MB")
            .env("MOLT_WORKER_MEMORY_HARD", "120MB")
            .env("MOLT_MAX_WORKERS", "2")
            .env("MOLT_SAMPLE_INTERVAL", "100ms")
            .env("MOLT_LOG", "debug")
    });
    let port = molt.port();
    let log = Arc::new(molt.log_handle());
    let done = {
        let log = Arc::clone(&log);
        move || log.count("at=recycle") >= 20 || log.elapsed() > Duration::from_secs(90)
    };
    // Each request retains 256 KiB and takes 20 ms: about 12 MB/s per worker, a worker
    // over its cap every few seconds.
    let (ok, failed) = load(port, 4, "/leak?kb=256&ms=20", done);
    let log = molt.log();
    let recycles = values(&log, "at=recycle", "requests");
    assert!(recycles.len() >= 20, "{} recycles:\n{log}", recycles.len());
    assert_eq!(failed, 0, "{ok} requests succeeded, {failed} failed");
    assert!(log
        .lines()
        .filter(|l| l.contains("at=recycle"))
        .all(|l| l.contains("reason=memory")));
    let usable = values(&log, "at=sample", "usable_bytes");
    let pool_samples = values(&log, "at=sample", "pool_bytes");
    let max = pool_samples.iter().max().copied().unwrap_or(0);
    assert!(!pool_samples.is_empty());
    assert!(
        max <= usable[0],
        "pool memory peaked at {max} bytes, above the usable {} bytes",
        usable[0]
    );
    eprintln!(
        "leak under load: {ok} requests, {failed} failed, {} recycles, {} samples, pool max {} MB of {} MB usable",
        recycles.len(),
        pool_samples.len(),
        max >> 20,
        usable[0] >> 20
    );
}

#[test]
fn runaway_request_is_killed_at_the_hard_cap() {
    let molt = pool(2, |b| {
        b.env("MOLT_WORKER_MEMORY", "80MB")
            .env("MOLT_WORKER_MEMORY_HARD", "120MB")
            .env("MOLT_SAMPLE_INTERVAL", "100ms")
    });
    let port = molt.port();
    let stop = Arc::new(AtomicBool::new(false));
    let steady = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || load(port, 1, "/sleep?ms=5", move || stop.load(Ordering::Relaxed)))
    };
    // One request retains 400 MB, far past the hard cap.
    let _ = get(port, "/leak?kb=409600");
    assert!(
        molt.wait_for_log("reason=memory_hard", Duration::from_secs(20)),
        "{}",
        molt.log()
    );
    assert!(wait_until(Duration::from_secs(20), || molt
        .count_log("at=ready")
        >= 3));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = steady.join().expect("steady load");
    assert!(ok > 0);
    assert_eq!(failed, 0, "the other worker's requests failed");
    assert_eq!(get(port, "/").expect("served").status, 200);
}

#[test]
fn cap_below_the_boot_footprint_trips_the_guard_instead_of_churning() {
    let molt = pool(1, |b| {
        b.env("MOLT_WORKER_MEMORY", "1MB")
            .env("MOLT_WORKER_MEMORY_HARD", "500MB")
            .env("MOLT_SAMPLE_INTERVAL", "100ms")
    });
    assert!(
        molt.wait_for_log("at=memory_guard", Duration::from_secs(30)),
        "{}",
        molt.log()
    );
    let line = molt
        .log()
        .lines()
        .find(|l| l.contains("at=memory_guard"))
        .expect("found above")
        .to_owned();
    assert!(
        line.contains("soft_cap=1MB") && line.contains("pause_s=60"),
        "{line}"
    );
    assert!(line.contains("Raise MOLT_WORKER_MEMORY"), "{line}");
    // Paused: no more memory recycles for a while, and requests are served.
    let recycles = molt.count_log("at=recycle");
    assert!(recycles <= 3, "{}", molt.log());
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        assert_eq!(get(molt.port(), "/").expect("served").status, 200);
    }
    assert_eq!(molt.count_log("at=recycle"), recycles, "{}", molt.log());
}

#[test]
fn max_requests_with_jitter_recycles_at_different_counts() {
    let molt = pool(2, |b| {
        b.env("MOLT_MAX_REQUESTS", "20").env("MOLT_JITTER", "50")
    });
    let port = molt.port();
    let served = Arc::new(AtomicUsize::new(0));
    let (ok, failed) = {
        let served = Arc::clone(&served);
        load(port, 2, "/", move || {
            served.fetch_add(1, Ordering::Relaxed) >= 300
        })
    };
    assert_eq!(failed, 0, "{ok} ok");
    let counts = values(&molt.log(), "reason=requests", "requests");
    assert!(counts.len() >= 5, "{}", molt.log());
    assert!(counts.iter().all(|n| (20..=30).contains(n)), "{counts:?}");
    let distinct: std::collections::BTreeSet<_> = counts.iter().collect();
    assert!(
        distinct.len() >= 2,
        "jitter should vary the limits: {counts:?}"
    );
}

#[test]
fn request_timeout_gives_504_and_replaces_the_stuck_worker() {
    let molt = pool(1, |b| b.env("MOLT_REQUEST_TIMEOUT", "500ms"));
    let stuck = get(molt.port(), "/sleep?ms=10000").expect("answered");
    assert_eq!(stuck.status, 504);
    assert_eq!(stuck.text(), "Gateway Timeout\n");
    assert!(molt.wait_for_log("reason=request_timeout", Duration::from_secs(5)));
    assert!(wait_until(Duration::from_secs(20), || molt
        .count_log("at=ready")
        >= 2));
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
}

#[test]
fn pool_scales_up_under_a_burst_and_back_down_when_idle() {
    // One request per worker: a learned limit would first hold the burst back while it
    // rises (`concurrency::*` covers scaling with learned limits).
    let molt = pool(1, |b| {
        b.env("MOLT_MAX_WORKERS", "3")
            .env("MOLT_IDLE_TIMEOUT", "1s")
            .env("MOLT_WORKER_CONCURRENCY", "1")
    });
    let port = molt.port();
    let burst: Vec<_> = (0..6)
        .map(|_| thread::spawn(move || get(port, "/sleep?ms=1500").expect("answered")))
        .collect();
    let pids: std::collections::BTreeSet<String> = burst
        .into_iter()
        .map(|h| {
            let r = h.join().expect("burst thread");
            assert_eq!(r.status, 200);
            r.text()
        })
        .collect();
    assert_eq!(
        pids.len(),
        3,
        "the burst should have used 3 workers: {pids:?}\n{}",
        molt.log()
    );
    assert!(molt.log().contains("at=scale direction=up"));
    assert!(
        molt.count_log("at=spawn") <= 3,
        "never more than max: {}",
        molt.log()
    );
    // Idle for a second, the two extra workers are retired, down to the minimum.
    assert!(
        wait_until(Duration::from_secs(20), || molt
            .count_log("at=scale direction=down")
            == 2),
        "{}",
        molt.log()
    );
    assert!(wait_until(Duration::from_secs(20), || molt
        .count_log("at=exit")
        == 2));
    assert_eq!(get(port, "/").expect("served").status, 200);
}

#[test]
fn status_reports_the_pool_as_json_over_a_private_socket() {
    let socket = temp_path("control.sock");
    let molt = pool(2, |b| {
        b.env("MOLT_CONTROL_SOCKET", &socket)
            .env("MOLT_SAMPLE_INTERVAL", "100ms")
            .env("MOLT_MEMORY_LIMIT", "1GB")
    });
    let mode = std::fs::metadata(&socket)
        .expect("socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let _ = get(molt.port(), "/").expect("served");
    let status = |extra: &[&str]| molt_status(&socket, extra);
    let mut json = serde_json::Value::Null;
    assert!(wait_until(Duration::from_secs(10), || {
        json = serde_json::from_str(&status(&["--json"])).expect("valid JSON");
        json["workers"]
            .as_array()
            .is_some_and(|w| w.iter().all(|w| w["memory"].is_u64()))
    }));
    assert_eq!(json["budget"], 1024 * 1024 * 1024);
    assert_eq!(json["min_workers"], 2);
    let workers = json["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2);
    assert!(workers
        .iter()
        .all(|w| w["state"] == "ready" && w["pid"].as_u64().is_some()));
    assert_eq!(
        workers
            .iter()
            .map(|w| w["requests"].as_u64().expect("count"))
            .sum::<u64>(),
        1
    );
    assert!(json["usable"].as_u64().expect("usable") < 1024 * 1024 * 1024);
    let table = status(&[]);
    assert!(table.contains("2 workers (min 2"), "{table}");
    assert!(
        table.lines().any(|l| l.trim_start().starts_with("1 ")),
        "{table}"
    );
    // The rolling restart command goes over the same socket.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_molt"))
        .arg("restart")
        .env("MOLT_CONTROL_SOCKET", &socket)
        .output()
        .expect("molt restart runs");
    assert!(out.status.success());
    assert!(molt.wait_for_log("at=restart workers=2", Duration::from_secs(5)));
    // Nothing about the pool on the public port.
    assert_eq!(
        get(molt.port(), "/molt/status").expect("answered").status,
        404
    );
}

#[test]
fn metrics_line_is_l2met() {
    let molt = pool(1, |b| b.env("MOLT_METRICS_INTERVAL", "300ms"));
    for _ in 0..3 {
        assert_eq!(get(molt.port(), "/").expect("served").status, 200);
    }
    // Lines written while the worker was still booting show no ready worker and no limit.
    // Regression: waiting for any metrics line and then looking for one with the worker
    // ready raced the next line on a slow machine (the boot's line matched at once).
    let ready_line = || {
        molt.log()
            .lines()
            .find(|l| l.contains("at=metrics") && l.contains("sample#molt.workers.ready=1"))
            .map(str::to_owned)
    };
    assert!(
        wait_until(Duration::from_secs(10), || ready_line().is_some()),
        "a metrics line with the worker ready:\n{}",
        molt.log()
    );
    let line = ready_line().expect("found above");
    for field in [
        "sample#molt.workers=1",
        "sample#molt.memory.pool=",
        "sample#molt.memory.limit=",
        "sample#molt.queue=0",
        "sample#molt.concurrency.limit=1",
        "measure#molt.queue_wait.p95=",
        "count#molt.recycles.memory=0",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    assert!(
        line.split_whitespace()
            .skip(2)
            .all(|f| f.contains('#') && f.contains('=')),
        "{line}"
    );
    let total: u64 = values(&molt.log(), "at=metrics", "count#molt.requests")
        .iter()
        .sum();
    assert!(
        wait_until(Duration::from_secs(5), || {
            values(&molt.log(), "at=metrics", "count#molt.requests")
                .iter()
                .sum::<u64>()
                >= 3
        }),
        "requests counted: {total}"
    );
}
