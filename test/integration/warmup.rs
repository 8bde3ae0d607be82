//! Warm-up (`MOLT_WARMUP_PATH`) and warm-first routing on real processes: the cold-start
//! fixture (each process slow on its first requests) under steady load, recycled by
//! `MOLT_MAX_REQUESTS`, with warm-up off (molt before it) and on, side by side; and what a
//! failing warm-up does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{wait_until, Conn, Molt, MoltBuilder};

/// The fixture's first requests per process take this long ...
const SLOW_MS: u64 = 200;
/// ... this many of them ...
const SLOW_REQUESTS: u32 = 5;
/// ... and the rest this long. Long enough that a loaded machine's scheduling noise is
/// small beside it, so the ratio of two p99s measures molt, not the machine.
const FAST_MS: u64 = 40;

/// How long each side is loaded.
const LOAD: Duration = Duration::from_secs(36);

/// Requests within this long before a process's first answer, or this long after it,
/// are in its recycle window: the old worker stops taking requests at its limit shortly
/// before its replacement answers, and the replacement's slow requests come after.
const BEFORE_FIRST: Duration = Duration::from_millis(500);
const AFTER_FIRST: Duration = Duration::from_millis(1500);

fn coldstart_app() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test/fixtures/apps/coldstart/app.py")
}

/// Four workers taking one request at a time, each recycled after about 150 requests,
/// for two clients: room for two workers at their request limit at once. (Two workers
/// loaded alike reach their limits within one recycle of each other more often than not,
/// and recycles go one at a time, so with no room to spare the second one's requests
/// would queue behind the first one's replacement, warm or not.)
fn cold_pool(configure: impl FnOnce(MoltBuilder) -> MoltBuilder) -> Molt {
    let app = coldstart_app();
    let builder = Molt::builder()
        .env("MOLT_MODE", "pool")
        .env("MOLT_MIN_WORKERS", "4")
        .env("MOLT_MAX_WORKERS", "4")
        .env("MOLT_WORKER_CONCURRENCY", "1")
        .env("MOLT_MAX_REQUESTS", "150")
        .env("COLD_SLOW_REQUESTS", SLOW_REQUESTS.to_string())
        .env("COLD_SLOW_MS", SLOW_MS.to_string())
        .env("COLD_FAST_MS", FAST_MS.to_string())
        .args(["run", "--", "python3", &app.to_string_lossy()]);
    configure(builder).spawn()
}

/// One answered request: when it was sent, how long it took, which process served it.
struct Sample {
    sent: Instant,
    latency: Duration,
    pid: u32,
}

/// What one side saw.
struct Seen {
    samples: Vec<Sample>,
    failed: Vec<String>,
}

/// `clients` threads, each on a kept-alive connection, sending GETs one after the other
/// until `stop`.
fn steady_load(port: u16, clients: usize, stop: &Arc<AtomicBool>) -> thread::JoinHandle<Seen> {
    let stop = Arc::clone(stop);
    thread::spawn(move || {
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut seen = Seen {
                        samples: Vec::new(),
                        failed: Vec::new(),
                    };
                    let mut conn = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.take() {
                            Some(c) => c,
                            None => match Conn::open(port) {
                                Ok(c) => c,
                                Err(e) => {
                                    seen.failed.push(format!("connect: {e}"));
                                    continue;
                                }
                            },
                        };
                        let mut c = c;
                        let sent = Instant::now();
                        match c.send("GET", "/", &[], b"") {
                            Ok(r) if r.status == 200 => {
                                let latency = sent.elapsed();
                                let text = r.text();
                                let pid = text
                                    .split_whitespace()
                                    .find_map(|f| f.strip_prefix("pid="))
                                    .and_then(|p| p.parse().ok())
                                    .unwrap_or(0);
                                seen.samples.push(Sample { sent, latency, pid });
                                conn = Some(c);
                            }
                            Ok(r) => seen.failed.push(format!("{} {}", r.status, r.text())),
                            Err(e) => seen.failed.push(format!("GET /: {e}")),
                        }
                    }
                    seen
                })
            })
            .collect();
        let mut all = Seen {
            samples: Vec::new(),
            failed: Vec::new(),
        };
        for t in threads {
            let seen = t.join().expect("load thread");
            all.samples.extend(seen.samples);
            all.failed.extend(seen.failed);
        }
        all
    })
}

/// The 99th percentile (nearest rank) of `latencies`.
fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort_unstable();
    let rank = (latencies.len() * 99).div_ceil(100).max(1);
    latencies[rank - 1]
}

/// Latencies split into the recycle windows (around each process's first answer) and
/// the rest, the steady state.
struct Split {
    windows: Vec<Duration>,
    steady: Vec<Duration>,
    processes: usize,
}

fn split(samples: &[Sample]) -> Split {
    let mut first: BTreeMap<u32, Instant> = BTreeMap::new();
    for s in samples {
        let at = first.entry(s.pid).or_insert(s.sent);
        *at = (*at).min(s.sent);
    }
    let in_window = |t: Instant| {
        first
            .values()
            .any(|&f| t + BEFORE_FIRST >= f && t <= f + AFTER_FIRST)
    };
    let (windows, steady): (Vec<&Sample>, Vec<&Sample>) =
        samples.iter().partition(|s| in_window(s.sent));
    Split {
        windows: windows.iter().map(|s| s.latency).collect(),
        steady: steady.iter().map(|s| s.latency).collect(),
        processes: first.len(),
    }
}

/// A regression test for the cold replacement: every recycle used to put a fresh process
/// in the pool that took user requests at once, and the app's slow first requests were
/// the users' (a p99 many times the steady one). With warm-up and warm-first routing a
/// recycle must not be felt: the p99 of requests around each recycle stays within 1.5x of
/// the steady-state p99, against molt without warm-up loaded at the same time.
#[test]
fn warm_up_and_warm_routing_keep_recycles_from_being_felt() {
    let before = cold_pool(|b| b);
    let after = cold_pool(|b| {
        b.env("MOLT_WARMUP_PATH", "/warm")
            .env("MOLT_WARMUP_REQUESTS", SLOW_REQUESTS.to_string())
    });
    for molt in [&before, &after] {
        assert!(
            wait_until(Duration::from_secs(30), || molt.count_log("at=ready") >= 4),
            "4 workers did not become ready:\n{}",
            molt.log()
        );
    }
    assert_eq!(after.count_log("at=warmed"), 4, "{}", after.log());
    // Both sides at once, so that the machine's load weighs on both alike.
    let stop = Arc::new(AtomicBool::new(false));
    let loads = [
        steady_load(before.port(), 2, &stop),
        steady_load(after.port(), 2, &stop),
    ];
    thread::sleep(LOAD);
    stop.store(true, Ordering::Relaxed);
    let [before_seen, after_seen] = loads.map(|l| l.join().expect("load"));

    let mut ratios = Vec::new();
    for (name, molt, seen) in [
        ("warm-up off", &before, &before_seen),
        ("warm-up on", &after, &after_seen),
    ] {
        assert!(
            seen.failed.is_empty(),
            "{name}: failed requests: {:?}\n{}",
            seen.failed,
            molt.log()
        );
        let recycles = molt.count_log("reason=requests");
        let split = split(&seen.samples);
        assert!(
            recycles >= 4 && split.processes >= 6,
            "{name}: too few recycles to judge: {recycles} recycles, {} processes",
            split.processes
        );
        assert!(
            split.windows.len() >= 250 && split.steady.len() >= 250,
            "{name}: {} requests in recycle windows, {} outside",
            split.windows.len(),
            split.steady.len()
        );
        let (windows, steady) = (p99(split.windows), p99(split.steady));
        eprintln!(
            "{name}: p99 {windows:?} in recycle windows, {steady:?} steady; {recycles} \
             recycles, {} requests",
            seen.samples.len()
        );
        ratios.push((
            windows.as_secs_f64() / steady.as_secs_f64(),
            windows,
            steady,
        ));
    }
    let (off, on) = (ratios[0], ratios[1]);
    assert!(
        on.0 <= 1.5,
        "with warm-up, the p99 around recycles is {:?}, {:.2}x the steady {:?} (without: \
         {:.2}x)",
        on.1,
        on.0,
        on.2,
        off.0
    );
    // The test can tell: without warm-up the cold requests are felt, in the p99 itself.
    assert!(
        off.1 >= Duration::from_millis(SLOW_MS) && off.0 > on.0,
        "without warm-up the p99 around recycles should be a cold request's: {off:?} \
         against {on:?} with warm-up"
    );
}

#[test]
fn a_failing_warm_up_is_a_failed_boot_with_its_reason() {
    // The fixture answers every path with 200; a path the app cannot serve is a port that
    // closes at once: a worker that accepts, then fails the warm-up's request.
    let mut molt = Molt::builder()
        .env("MOLT_MODE", "pool")
        .env("MOLT_MAX_BOOT_FAILURES", "2")
        .env("MOLT_WARMUP_PATH", "/warm")
        .args([
            "run",
            "--",
            "python3",
            "-c",
            "import os, socket\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen(16)\n\
             while True:\n\
             \x20   c, _ = s.accept()\n\
             \x20   c.recv(4096)\n\
             \x20   c.sendall(b'HTTP/1.1 503 Busy\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n')\n\
             \x20   c.close()\n",
        ])
        .spawn();
    let status = molt
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("molt should give up:\n{}", molt.log()));
    assert!(!status.success());
    let log = molt.log();
    assert!(
        log.contains("at=warmup_failed")
            && log.contains("the warm-up request GET /warm (MOLT_WARMUP_PATH) answered 503"),
        "{log}"
    );
    assert!(
        log.contains(
            "the app failed to boot 2 time(s) in a row (MOLT_MAX_BOOT_FAILURES=2): the warm-up \
             request GET /warm (MOLT_WARMUP_PATH) answered 503"
        ),
        "{log}"
    );
    assert!(!log.contains("at=ready"), "never routed: {log}");
}
