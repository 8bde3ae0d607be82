//! Faults injected by the tests on real processes: workers SIGKILLed under load, a worker
//! stopped with SIGSTOP, an app that resets its connections, a spool that cannot be
//! written, too few file descriptors, and children left behind by a worker that exits.

use std::io::{self, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::proxy::pool;
use crate::support::{
    get, is_alive, parent_of, process_group_of, process_state, request, signal_pid, stat_fields,
    status_json, temp_path, tools_present, wait_until, Conn, Molt, SIGKILL, SIGSTOP, SIGTERM,
};

/// Reset requests of each kind in the reset test.
const RESET_ROUNDS: usize = 5;

/// `RLIMIT_FSIZE` for molt in the spool test: a spooled body larger than this cannot be
/// written.
const SPOOL_FSIZE: usize = 1024 * 1024;

/// `RLIMIT_NOFILE`, soft and hard, for molt in the descriptor test.
const FD_LIMIT: usize = 64;

/// A small seeded generator (xorshift64*), so that every run injects the same faults at
/// the same points of its schedule.
struct Rng(u64);

impl Rng {
    /// A number in `range`.
    fn between(&mut self, range: std::ops::Range<u64>) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        range.start + (x >> 32) % (range.end - range.start)
    }
}

/// The pid a fixture endpoint wrote into a marker file, once the file holds one.
fn pid_in(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Lines of the log that hold `needle`.
fn lines_with(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// How many descriptors `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// CPU time `pid` has used so far, user plus system, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let fields = stat_fields(pid).expect("the process is alive");
    // utime and stime are fields 14 and 15 of /proc/<pid>/stat; `stat_fields` starts at
    // field 3 (the state).
    let ticks = |i: usize| fields[i].parse::<u64>().expect("a tick count");
    ticks(11) + ticks(12)
}

/// Runs `clients` threads that each send `/sleep` requests of a seeded length, one after
/// the other, until `stop` is set; returns every status seen (0 for no response at all).
fn steady_load(
    port: u16,
    clients: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Vec<u16>>> {
    (0..clients)
        .map(|client| {
            let stop = Arc::clone(stop);
            thread::spawn(move || {
                let mut rng = Rng(0x5EED_0000 + client);
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let path = format!("/sleep?ms={}", rng.between(10..60));
                    statuses.push(get(port, &path).map_or(0, |r| r.status));
                }
                statuses
            })
        })
        .collect()
}

/// One request held by the app (`/hold`) until the test releases it or kills its worker.
struct Held {
    mark: std::path::PathBuf,
    release: std::path::PathBuf,
    client: thread::JoinHandle<u16>,
}

impl Held {
    /// Sends the request and returns once the app has it, with the pid of its worker.
    fn start(molt: &Molt) -> (Held, u32) {
        let port = molt.port();
        let mark = temp_path("held");
        let release = temp_path("release");
        let path = format!("/hold?mark={}&until={}", mark.display(), release.display());
        let client = thread::spawn(move || get(port, &path).map_or(0, |r| r.status));
        let mut pid = None;
        assert!(
            wait_until(Duration::from_secs(30), || {
                pid = pid_in(&mark);
                pid.is_some()
            }),
            "a held request never reached a worker:\n{}",
            molt.log()
        );
        let held = Held {
            mark,
            release,
            client,
        };
        (held, pid.expect("found above"))
    }

    /// Lets the app answer, and returns the status the client got.
    fn finish(self) -> u16 {
        std::fs::write(&self.release, b"").expect("the temp dir is writable");
        self.outcome()
    }

    /// The status the client got, once something other than a release ended the request
    /// (its worker was killed).
    fn outcome(self) -> u16 {
        let status = self.client.join().expect("client thread");
        let _ = std::fs::remove_file(&self.mark);
        let _ = std::fs::remove_file(&self.release);
        status
    }
}

/// Workers in the pool of the SIGKILL test.
const WORKERS: usize = 3;

/// Steps of the SIGKILL test: each ends one held request, by releasing it or by killing
/// its worker.
const STEPS: usize = 30;

#[test]
fn workers_sigkilled_under_load_fail_only_their_own_requests() {
    if !tools_present(&["python3"]) {
        return;
    }
    let socket = temp_path("control.sock");
    // A pinned pool of single-request workers, each holding one request at every moment:
    // the test decides when each request ends, so it knows what every worker holds when
    // it kills one. The load turns over at seeded moments, and seeded steps are kills.
    let molt = pool(WORKERS, |b| {
        b.env("MOLT_MAX_WORKERS", WORKERS.to_string())
            .env("MOLT_WORKER_CONCURRENCY", "1")
            .env("MOLT_CONTROL_SOCKET", &socket)
    });
    let mut rng = Rng(0xFA17_5EED);
    let mut held: Vec<(Held, u32)> = (0..WORKERS).map(|_| Held::start(&molt)).collect();
    let mut pids: Vec<u32> = held.iter().map(|(_, pid)| *pid).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), WORKERS, "one request per worker: {pids:?}");

    let (mut served, mut failed, mut killed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..STEPS {
        thread::sleep(Duration::from_millis(rng.between(0..100)));
        let slot = usize::try_from(rng.between(0..WORKERS as u64)).expect("a small index");
        let kill = rng.between(0..5) == 0;
        let (request, pid) = held.swap_remove(slot);
        if kill {
            // molt agrees: a ready worker of its pool, holding exactly this request.
            let status = status_json(&socket);
            let row = status["workers"]
                .as_array()
                .expect("a workers array")
                .iter()
                .find(|w| w["pid"].as_u64() == Some(u64::from(pid)))
                .cloned()
                .unwrap_or_else(|| panic!("pid {pid} is not a worker of molt: {status}"));
            assert_eq!(
                (&row["state"], &row["in_flight"]),
                (&"ready".into(), &1.into())
            );
            signal_pid(pid, SIGKILL);
            killed.push(pid);
            let status = request.client.join().expect("client thread");
            let _ = std::fs::remove_file(&request.mark);
            failed.push(status);
            // Wait until the supervisor has taken the dead worker out of the pool, so that
            // the next request cannot be sent to it (see the ignored test below).
            assert!(
                wait_until(Duration::from_secs(10), || !status_json(&socket)["workers"]
                    .as_array()
                    .expect("a workers array")
                    .iter()
                    .any(|w| w["pid"].as_u64() == Some(u64::from(pid)))),
                "{}",
                molt.log()
            );
        } else {
            served.push(request.finish());
        }
        held.push(Held::start(&molt));
    }
    for (request, _) in held {
        served.push(request.finish());
    }

    assert!(!killed.is_empty(), "the seed chose no kill");
    assert!(
        failed.iter().all(|&s| s == 502),
        "killed requests got {failed:?}\n{}",
        molt.log()
    );
    assert!(
        served.iter().all(|&s| s == 200),
        "other requests got {served:?}\n{}",
        molt.log()
    );
    let log = molt.log();
    let exits = lines_with(&log, "at=exit");
    assert_eq!(exits.len(), killed.len(), "one exit per kill:\n{log}");
    for pid in &killed {
        let exit = exits
            .iter()
            .find(|l| l.contains(&format!(" pid={pid} ")))
            .unwrap_or_else(|| panic!("no exit logged for {pid}:\n{log}"));
        assert!(exit.contains("signal=SIGKILL state=ready"), "{exit}");
    }
    assert_eq!(molt.count_log("at=upstream_error"), killed.len(), "{log}");
    assert!(
        wait_until(Duration::from_secs(30), || {
            let rows = status_json(&socket)["workers"].clone();
            let rows = rows.as_array().expect("a workers array").clone();
            rows.len() == WORKERS && rows.iter().all(|w| w["state"] == "ready")
        }),
        "{log}"
    );
    eprintln!(
        "sigkill under load: {} workers killed, {} requests, {} failed (all 502), {} served (all 200)",
        killed.len(),
        served.len() + failed.len(),
        failed.len(),
        served.len()
    );
}

/// The same faults under free-running load (two clients looping on short `/sleep`s, three
/// workers). When a worker dies, the proxy sees the victim's connection close and gives
/// its lease back before the supervisor has reaped the worker. Requests must not follow
/// the victim there: molt drops the worker's idle connections, takes a worker that is
/// exiting out of routing, and retries a refused connection on another worker only.
#[test]
fn workers_sigkilled_under_free_running_load_fail_only_their_own_requests() {
    if !tools_present(&["python3"]) {
        return;
    }
    kill_workers_under_load(3, 2);
}

/// Pins a pool of `workers` single-request workers, runs `load_clients` clients against
/// it, and SIGKILLs one worker at a time, each while it holds a victim request, at seeded
/// moments. Exactly the victims must fail, each with 502, and the pool must recover.
fn kill_workers_under_load(workers: usize, load_clients: u64) {
    const KILLS: usize = 6;
    let socket = temp_path("control.sock");
    // Worker concurrency 1 and at most `workers` requests at once (the load clients and
    // one victim): every worker holds at most one request, so a kill can only fail the
    // request it interrupts.
    assert!(load_clients < workers as u64);
    let molt = pool(workers, |b| {
        b.env("MOLT_MAX_WORKERS", workers.to_string())
            .env("MOLT_WORKER_CONCURRENCY", "1")
            .env("MOLT_CONTROL_SOCKET", &socket)
    });
    let port = molt.port();
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(port, load_clients, &stop);

    let mut rng = Rng(0xFA17_5EED);
    let mut killed = Vec::new();
    for _ in 0..KILLS {
        thread::sleep(Duration::from_millis(rng.between(50..300)));
        // The victim is held by the app until the test kills its worker (or 30 s pass), so
        // the kill always lands mid-request, never between two requests.
        let (victim, pid) = Held::start(&molt);
        // molt agrees that this is one of its ready workers, holding exactly this request.
        let status = status_json(&socket);
        let row = status["workers"]
            .as_array()
            .expect("a workers array")
            .iter()
            .find(|w| w["pid"].as_u64() == Some(u64::from(pid)))
            .cloned()
            .unwrap_or_else(|| panic!("pid {pid} is not a worker of molt: {status}"));
        assert_eq!(row["state"], "ready", "{row}");
        assert_eq!(row["in_flight"], 1, "{row}");
        thread::sleep(Duration::from_millis(rng.between(0..200)));
        signal_pid(pid, SIGKILL);
        killed.push(pid);
        assert_eq!(
            victim.outcome(),
            502,
            "the request on killed worker {pid}:\n{}",
            molt.log()
        );
        assert!(
            molt.wait_for_log(
                &format!("pid={pid} status=- signal=SIGKILL"),
                Duration::from_secs(10)
            ),
            "{}",
            molt.log()
        );
    }
    // The pool comes back to full strength while the load goes on.
    assert!(
        wait_until(Duration::from_secs(30), || molt.count_log("at=ready")
            == workers + KILLS),
        "{}",
        molt.log()
    );
    stop.store(true, Ordering::Relaxed);
    let statuses: Vec<u16> = load
        .into_iter()
        .flat_map(|h| h.join().expect("load thread"))
        .collect();
    let failed: Vec<u16> = statuses.iter().copied().filter(|&s| s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} load requests failed: {failed:?}\n{}",
        failed.len(),
        statuses.len(),
        molt.log()
    );

    let log = molt.log();
    let exits = lines_with(&log, "at=exit");
    assert_eq!(exits.len(), KILLS, "one exit per kill:\n{log}");
    for pid in &killed {
        assert_eq!(
            exits
                .iter()
                .filter(|l| l.contains(&format!(" pid={pid} ")))
                .count(),
            1,
            "{log}"
        );
    }
    let rows = status_json(&socket)["workers"].clone();
    let rows = rows.as_array().expect("a workers array");
    assert_eq!(rows.len(), workers, "{rows:?}");
    assert!(rows.iter().all(|w| w["state"] == "ready"), "{rows:?}");
    assert_eq!(get(port, "/").expect("served").status, 200);
    eprintln!(
        "sigkill under load, {workers} workers: {KILLS} workers killed, {} requests ({} load + {KILLS} victims), {KILLS} failed with 502",
        statuses.len() + KILLS,
        statuses.len()
    );
}

#[test]
fn stopped_worker_is_timed_out_killed_and_replaced() {
    if !tools_present(&["python3"]) {
        return;
    }
    let molt = pool(1, |b| b.env("MOLT_REQUEST_TIMEOUT", "1s"));
    let pid: u32 = get(molt.port(), "/pid")
        .expect("served")
        .text()
        .parse()
        .expect("a pid");
    signal_pid(pid, SIGSTOP);
    assert!(wait_until(Duration::from_secs(5), || process_state(pid) == Some('T')));
    let stuck = get(molt.port(), "/").expect("answered");
    assert_eq!(stuck.status, 504, "{}", molt.log());
    assert!(
        molt.wait_for_log("reason=request_timeout", Duration::from_secs(10)),
        "{}",
        molt.log()
    );
    // SIGKILL ends a stopped process too; molt reaps it.
    assert!(
        wait_until(Duration::from_secs(10), || process_state(pid).is_none()),
        "the stopped worker is left in state {:?}",
        process_state(pid)
    );
    assert!(molt.wait_for_log(
        &format!("pid={pid} status=- signal=SIGKILL"),
        Duration::from_secs(10)
    ));
    assert!(
        wait_until(Duration::from_secs(20), || molt.count_log("at=ready") == 2),
        "{}",
        molt.log()
    );
    let replacement = get(molt.port(), "/pid").expect("served");
    assert_eq!(replacement.status, 200);
    assert_ne!(replacement.text(), pid.to_string());
}

#[test]
fn connection_reset_by_the_app_fails_only_that_request() {
    if !tools_present(&["python3"]) {
        return;
    }
    let mut molt = pool(2, |b| b.env("MOLT_MAX_WORKERS", "2"));
    let port = molt.port();
    let workers = |molt: &Molt| {
        let mut pids: Vec<u32> = molt
            .tagged_pids()
            .into_iter()
            .filter(|&p| p != molt.pid())
            .collect();
        pids.sort_unstable();
        pids
    };
    let before = workers(&molt);
    assert_eq!(before.len(), 2);
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(port, 2, &stop);
    // Warm up first, so that the upstream connection pools are as large as they get.
    for _ in 0..10 {
        assert_eq!(get(port, "/sleep?ms=5").expect("served").status, 200);
    }
    let molt_fds = open_fds(molt.pid());
    let worker_fds: usize = before.iter().map(|&p| open_fds(p)).sum();

    for _ in 0..RESET_ROUNDS {
        // Before any byte of the response, and in the middle of its head: 502.
        for at in ["before", "head"] {
            let reset = get(port, &format!("/reset?at={at}")).expect("answered");
            assert_eq!(reset.status, 502, "reset {at}:\n{}", molt.log());
        }
        // After the head went out, the status cannot change: the client must see the
        // response cut short, never a complete one.
        let cut = get(port, "/reset?at=body");
        assert!(
            cut.as_ref().is_err() || cut.as_ref().is_ok_and(|r| r.status != 200),
            "a truncated body passed as a whole response: {cut:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let statuses: Vec<u16> = load
        .into_iter()
        .flat_map(|h| h.join().expect("load thread"))
        .collect();
    assert!(
        statuses.iter().all(|&s| s == 200),
        "other requests failed: {statuses:?}"
    );
    assert!(molt.is_running());
    assert_eq!(get(port, "/").expect("served").status, 200);
    assert_eq!(
        molt.count_log("at=upstream_error"),
        2 * RESET_ROUNDS,
        "{}",
        molt.log()
    );
    // A reset is a failed request, not a failed worker: the same workers serve on, and
    // neither they nor molt hold on to the dead connections.
    assert_eq!(molt.count_log("at=exit"), 0, "{}", molt.log());
    assert_eq!(workers(&molt), before);
    assert!(
        wait_until(Duration::from_secs(10), || open_fds(molt.pid())
            <= molt_fds + 2
            && before.iter().map(|&p| open_fds(p)).sum::<usize>()
                <= worker_fds + 2),
        "descriptors: molt {molt_fds} -> {}, workers {worker_fds} -> {}",
        open_fds(molt.pid()),
        before.iter().map(|&p| open_fds(p)).sum::<usize>()
    );
    eprintln!(
        "resets: {} injected, {} other requests all 200",
        3 * RESET_ROUNDS,
        statuses.len()
    );
}

/// Sends a POST /echo of `len` bytes and reads the response, the body written from
/// another thread: molt may answer (and close) before it has read the whole body, and a
/// write that fails then must not hide the response.
fn post_echo(port: u16, len: usize) -> io::Result<crate::support::Response> {
    let mut conn = Conn::open(port)?;
    let length = len.to_string();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    conn.stream().write_all(head.as_bytes())?;
    let mut writer: TcpStream = conn.stream().try_clone()?;
    let body: Vec<u8> = (0..len)
        .map(|i| u8::try_from(i % 241).expect("below 241"))
        .collect();
    let sender = thread::spawn(move || writer.write_all(&body).is_ok());
    let response = conn.read_response("POST");
    let _ = sender.join();
    response
}

#[test]
fn full_spool_gets_503_and_molt_survives() {
    if !tools_present(&["python3", "prlimit"]) {
        return;
    }
    // A file size limit makes writes to the spool fail with EFBIG, as a full disk fails
    // them with ENOSPC, without root or a small filesystem. The kernel also sends
    // SIGXFSZ, whose default action would kill molt.
    let mut molt = pool(1, |b| {
        b.wrap(["prlimit", &format!("--fsize={SPOOL_FSIZE}"), "--"])
            .env("MOLT_BUFFER_REQUESTS", "on")
    });
    let port = molt.port();
    // 256 KiB stay in memory and the rest goes to the spool: 600 KiB fits under the limit.
    let fits = post_echo(port, 600 * 1024).expect("answered");
    assert_eq!(fits.status, 200, "{}", molt.log());
    assert_eq!(fits.body.len(), 600 * 1024);

    let full = post_echo(port, 2 * SPOOL_FSIZE).expect("answered");
    assert_eq!(full.status, 503, "{}", molt.log());
    assert_eq!(full.header("retry-after"), Some("1"));
    assert!(
        molt.wait_for_log("at=spool_error", Duration::from_secs(5)),
        "{}",
        molt.log()
    );
    assert!(molt.is_running(), "{}", molt.log());
    // Small bodies, which stay in memory, and later requests are served.
    let small = request(port, "POST", "/echo", &[], &[7u8; 1000]).expect("answered");
    assert_eq!(small.status, 200);
    assert_eq!(small.body, vec![7u8; 1000]);
    assert_eq!(post_echo(port, 600 * 1024).expect("answered").status, 200);
    drop(molt);

    // molt ignores SIGXFSZ, but its workers get the default action back, as they would
    // have without molt. The fixture cannot show it (Python ignores SIGXFSZ itself), so a
    // plain command is the worker here; it never listens, which does not matter.
    let molt = Molt::builder().args(["run", "--", "sleep 30"]).spawn();
    let mut worker = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            worker = lines_with(&molt.log(), "at=spawn")
                .first()
                .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("pid=")))
                .and_then(|p| p.parse::<u32>().ok());
            // bash execs a lone command: wait until the worker is `sleep` itself.
            worker.is_some_and(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "sleep")
            })
        }),
        "{}",
        molt.log()
    );
    assert!(ignores_sigxfsz(molt.pid()));
    assert!(
        !ignores_sigxfsz(worker.expect("found above")),
        "the worker inherited molt's ignored SIGXFSZ"
    );
}

/// Whether `pid` ignores SIGXFSZ, from the `SigIgn` mask of `/proc/<pid>/status`.
fn ignores_sigxfsz(pid: u32) -> bool {
    let mask = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the process is alive")
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|mask| u64::from_str_radix(mask.trim(), 16).expect("a hex mask"))
        .expect("a SigIgn row");
    // SIGXFSZ is signal 25 on x86_64 and aarch64 Linux: bit 24 of the mask.
    mask & (1 << 24) != 0
}

#[test]
fn too_few_descriptors_pause_accepts_and_service_resumes() {
    if !tools_present(&["python3", "prlimit"]) {
        return;
    }
    // molt raises its soft limit to the hard one, so both are set low.
    let molt = pool(1, |b| {
        b.wrap(["prlimit", &format!("--nofile={FD_LIMIT}"), "--"])
    });
    let port = molt.port();
    assert_eq!(get(port, "/").expect("served").status, 200);

    let started = Instant::now();
    let errors_before = molt.count_log("at=accept_error");
    assert_eq!(errors_before, 0, "{}", molt.log());
    // Twice the limit: molt runs out of descriptors while these wait in the backlog.
    let extra: Vec<TcpStream> = (0..2 * FD_LIMIT)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("the kernel's backlog holds it"))
        .collect();
    assert!(
        molt.wait_for_log("at=accept_error", Duration::from_secs(10)),
        "{}",
        molt.log()
    );
    let ticks_before = cpu_ticks(molt.pid());
    let window = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || molt
            .count_log("at=accept_error")
            >= 10),
        "{}",
        molt.log()
    );
    let ticks = cpu_ticks(molt.pid()) - ticks_before;
    let overflow = started.elapsed();
    let errors = molt.count_log("at=accept_error");
    let window = window.elapsed();
    // Each error is followed by a 100 ms pause (ACCEPT_ERROR_PAUSE in src/run/proxy/mod.rs),
    // and one line is logged for all the proxy threads that meet it at once,
    // so there can be at most one per 100 ms since the overflow began; a busy loop
    // would log thousands.
    let at_most = overflow.as_millis() / 100 + 2;
    assert!(
        errors as u128 <= at_most,
        "{errors} accept errors in {overflow:?}, at most {at_most} expected"
    );
    // A busy loop would use a whole CPU, 100 ticks a second; a pausing molt almost none.
    let ticks_per_sec = 100;
    let busy = window.as_millis() * ticks_per_sec / 1000;
    assert!(
        u128::from(ticks) * 4 < busy,
        "molt used {ticks} ticks in {window:?} (a busy loop: about {busy})"
    );
    assert!(lines_with(&molt.log(), "at=accept_error")[0].contains("Too many open files"));

    drop(extra);
    assert!(
        wait_until(Duration::from_secs(20), || get(port, "/")
            .is_ok_and(|r| r.status == 200)),
        "service did not resume:\n{}",
        molt.log()
    );
    eprintln!(
        "descriptors: {} connections over a limit of {FD_LIMIT}, {errors} accept errors in {overflow:?}, {ticks} CPU ticks in {window:?}",
        2 * FD_LIMIT
    );
}

#[test]
fn children_left_by_a_worker_that_exits_do_not_survive() {
    if !tools_present(&["python3"]) {
        return;
    }
    // What a dead worker leaves gets the stop timeout before SIGKILL; these ignore SIGTERM.
    let mut molt = pool(1, |b| b.env("MOLT_STOP_TIMEOUT", "1s"));
    let port = molt.port();
    let worker: u32 = get(port, "/pid")
        .expect("served")
        .text()
        .parse()
        .expect("a pid");
    let spawn = |query: &str| -> u32 {
        get(port, &format!("/spawn{query}"))
            .expect("served")
            .text()
            .parse()
            .expect("a pid")
    };
    // Both ignore SIGTERM. One stays in the worker's process group; the other starts a
    // session of its own, out of reach of a signal to the worker's group.
    let in_group = spawn("");
    let own_session = spawn("?session=new");
    assert_eq!(process_group_of(in_group), Some(worker));
    assert_eq!(process_group_of(own_session), Some(own_session));

    // The worker dies under a request and leaves both behind.
    assert_eq!(get(port, "/crash").expect("answered").status, 502);
    assert!(molt.wait_for_log(&format!("pid={worker} status=3"), Duration::from_secs(10)));
    // Its group goes with it: the child in it is killed and reaped, no zombie left.
    assert!(
        wait_until(Duration::from_secs(10), || process_state(in_group)
            .is_none()),
        "the child in the worker's group is left in state {:?}",
        process_state(in_group)
    );
    // The one in its own session was adopted by molt, the subreaper.
    assert_eq!(parent_of(own_session), Some(molt.pid()));
    assert!(
        wait_until(Duration::from_secs(20), || molt.count_log("at=ready") == 2),
        "{}",
        molt.log()
    );
    assert_eq!(get(port, "/").expect("served").status, 200);

    // Stopping molt leaves nothing behind, not even the process that escaped the group.
    signal_pid(molt.pid(), SIGTERM);
    let status = molt.wait_exit(Duration::from_secs(30)).expect("molt exits");
    assert_eq!(status.code(), Some(0), "{}", molt.log());
    assert!(
        wait_until(Duration::from_secs(10), || !is_alive(own_session)),
        "the adopted orphan {own_session} outlived molt"
    );
}
