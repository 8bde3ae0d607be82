//! Worker and molt lifecycle: boot failures, signals, shutdown, restarts, orphans, PID 1.

use std::thread;
use std::time::Duration;

use crate::proxy::pool;
use crate::support::{
    descendants_of, get, is_alive, parent_of, process_state, python_cmd, signal_pid, temp_path,
    wait_until, Molt, SIGHUP, SIGKILL, SIGTERM,
};

fn worker_pids(molt: &Molt) -> Vec<u32> {
    molt.tagged_pids()
        .into_iter()
        .filter(|&pid| pid != molt.pid())
        .collect()
}

#[test]
fn app_that_exits_at_once_makes_molt_exit_non_zero() {
    let mut molt = Molt::builder()
        .env("MOLT_MAX_BOOT_FAILURES", "2")
        .args([
            "run",
            "--",
            "echo 'cannot connect to the database' >&2; exit 3",
        ])
        .spawn();
    let status = molt
        .wait_exit(Duration::from_secs(30))
        .expect("molt gave up");
    assert_eq!(status.code(), Some(1), "{}", molt.log());
    let log = molt.log();
    assert_eq!(molt.count_log("at=spawn"), 2, "{log}");
    assert!(
        log.contains("cannot connect to the database"),
        "the app's stderr passes through"
    );
    assert!(
        log.contains("at=boot_failed failures=1 backoff_ms=1000"),
        "{log}"
    );
    assert!(
        log.contains(
            "molt: the app failed to boot 2 time(s) in a row (MOLT_MAX_BOOT_FAILURES=2): \
             the command exited with status 3 before accepting connections on its PORT"
        ),
        "{log}"
    );
}

#[test]
fn app_that_never_listens_hits_the_boot_timeout() {
    let mut molt = Molt::builder()
        .env("MOLT_MAX_BOOT_FAILURES", "1")
        .env("MOLT_BOOT_TIMEOUT", "500ms")
        .args(["run", "--", "sleep 60"])
        .spawn();
    let status = molt
        .wait_exit(Duration::from_secs(30))
        .expect("molt gave up");
    assert_eq!(status.code(), Some(1));
    assert!(molt.log().contains("at=kill worker=1"), "{}", molt.log());
    assert!(molt
        .log()
        .contains("did not accept connections on its PORT within 500ms (MOLT_BOOT_TIMEOUT)"));
    assert!(
        wait_until(Duration::from_secs(10), || molt.tagged_pids().is_empty()),
        "the stuck worker survived molt"
    );
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_then_exits_zero() {
    let mut molt = pool(2, |b| b);
    let port = molt.port();
    let mark = temp_path("slow");
    let slow_path = format!("/sleep?ms=1500&mark={}", mark.display());
    let slow = thread::spawn(move || get(port, &slow_path).expect("slow request completes"));
    assert!(wait_until(Duration::from_secs(20), || mark.exists()));
    molt.signal(SIGTERM);
    // New connections are refused at once, while the request is still in flight.
    assert!(wait_until(Duration::from_secs(5), || {
        !crate::support::port_open(port)
    }));
    let response = slow.join().expect("slow request thread");
    assert_eq!(response.status, 200, "the in-flight request failed");
    let status = molt.wait_exit(Duration::from_secs(30)).expect("molt exits");
    assert_eq!(status.code(), Some(0), "{}", molt.log());
    assert!(molt.log().contains("at=stopped"));
    assert!(
        wait_until(Duration::from_secs(5), || molt.tagged_pids().is_empty()),
        "processes left: {:?}",
        molt.tagged_pids()
    );
}

#[test]
fn workers_that_exit_during_shutdown_are_not_respawned() {
    let mut molt = pool(2, |b| b);
    // Heroku sends SIGTERM to every process of the dyno at once.
    for pid in molt.tagged_pids() {
        signal_pid(pid, SIGTERM);
    }
    let status = molt.wait_exit(Duration::from_secs(30)).expect("molt exits");
    assert_eq!(status.code(), Some(0), "{}", molt.log());
    assert_eq!(molt.count_log("at=spawn"), 2, "{}", molt.log());
}

#[test]
fn sigkill_of_molt_leaves_no_worker_behind() {
    let molt = pool(2, |b| b);
    let workers = worker_pids(&molt);
    assert_eq!(workers.len(), 2, "{workers:?}");
    signal_pid(molt.pid(), SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || workers
            .iter()
            .all(|&pid| !is_alive(pid))),
        "workers outlived molt: {:?}",
        molt.tagged_pids()
    );
}

#[test]
fn worker_killed_outside_a_shutdown_is_replaced() {
    let molt = pool(1, |b| b);
    let pid: u32 = get(molt.port(), "/pid")
        .expect("served")
        .text()
        .parse()
        .expect("pid");
    signal_pid(pid, SIGKILL);
    assert!(
        molt.wait_for_log("signal=SIGKILL state=ready", Duration::from_secs(10)),
        "{}",
        molt.log()
    );
    assert!(wait_until(Duration::from_secs(20), || molt
        .count_log("at=ready")
        == 2));
    let new: u32 = get(molt.port(), "/pid")
        .expect("served")
        .text()
        .parse()
        .expect("pid");
    assert_ne!(new, pid);
}

#[test]
fn sighup_replaces_every_worker_without_failing_a_request() {
    let molt = pool(2, |b| b);
    let port = molt.port();
    let before = worker_pids(&molt);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let done = std::sync::Arc::clone(&done);
        thread::spawn(move || {
            let mut statuses = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(get(port, "/sleep?ms=20").expect("answered").status);
            }
            statuses
        })
    };
    molt.signal(SIGHUP);
    assert!(
        wait_until(Duration::from_secs(30), || molt.count_log("at=recycle")
            == 2
            && molt.count_log("at=exit") == 2
            && molt.count_log("at=ready") == 4),
        "{}",
        molt.log()
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = load.join().expect("load thread");
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|&s| s == 200),
        "failed during the restart: {statuses:?}"
    );
    assert!(molt.log().contains("reason=restart"));
    let after = worker_pids(&molt);
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|pid| !before.contains(pid)),
        "{before:?} -> {after:?}"
    );
}

/// Asks the fixture for an orphaned grandchild and checks that it is reaped, not left a
/// zombie, by the process that adopted it. Returns the adopter's pid.
fn orphan_is_reaped(molt: &Molt) -> u32 {
    let before = descendants_of(molt.pid());
    assert_eq!(
        get(molt.port(), "/orphan?ms=1000").expect("served").status,
        200
    );
    // The grandchild's pid is in the app's pid namespace; find it from outside instead:
    // the one new descendant that is not a worker.
    let mut orphan = None;
    assert!(wait_until(Duration::from_secs(5), || {
        orphan = descendants_of(molt.pid())
            .into_iter()
            .find(|pid| !before.contains(pid));
        orphan.is_some()
    }));
    let orphan = orphan.expect("found above");
    let adopter = parent_of(orphan).expect("the orphan is alive");
    assert!(
        wait_until(Duration::from_secs(10), || process_state(orphan).is_none()),
        "the orphan was left as state {:?}",
        process_state(orphan)
    );
    adopter
}

#[test]
fn orphans_are_adopted_and_reaped_by_the_subreaper() {
    let molt = pool(1, |b| b);
    assert_eq!(orphan_is_reaped(&molt), molt.pid());
}

#[test]
fn as_pid_1_molt_reaps_orphans_and_stops_on_sigterm() {
    let mut molt = Molt::builder()
        .wrap(["unshare", "--pid", "--fork", "--mount-proc"])
        .args(["run", "--", &python_cmd()])
        .spawn();
    assert!(
        molt.wait_for_log("at=ready", Duration::from_secs(30)),
        "{}",
        molt.log()
    );
    let adopter = orphan_is_reaped(&molt);
    // unshare forks molt as PID 1 of the new namespace; the orphan was adopted by it.
    assert_eq!(parent_of(adopter), Some(molt.pid()));
    assert!(descendants_of(molt.pid())
        .iter()
        .all(|&pid| process_state(pid) != Some('Z')));
    // A PID 1 gets no default signal actions: molt must handle SIGTERM itself.
    signal_pid(adopter, SIGTERM);
    let status = molt.wait_exit(Duration::from_secs(30)).expect("molt exits");
    assert_eq!(status.code(), Some(0), "{}", molt.log());
    assert!(molt.log().contains("at=stopped"));
}

#[test]
fn disable_runs_the_command_itself_on_the_public_port() {
    let mut molt = Molt::builder()
        .env("MOLT_DISABLE", "1")
        .args(["run", "--", &python_cmd()])
        .spawn();
    assert!(
        molt.wait_for_port(Duration::from_secs(20)),
        "{}",
        molt.log()
    );
    let pid: u32 = get(molt.port(), "/pid")
        .expect("served")
        .text()
        .parse()
        .expect("pid");
    // exec, not a child: the app has molt's pid (bash execs a lone command too).
    assert_eq!(pid, molt.pid());
    assert!(molt.wait_for_log("at=disabled", Duration::from_secs(5)));
}

#[test]
fn several_words_are_exec_d_with_port_substituted() {
    let app = crate::support::fixture_app();
    let app = app.to_str().expect("utf-8 path");
    // `env -u PORT` hides the variable, so the app can only learn its port from the
    // argument molt rewrote.
    let molt = Molt::builder()
        .args([
            "run", "--", "env", "-u", "PORT", "python3", app, "--port", "${PORT}",
        ])
        .spawn();
    assert!(
        molt.wait_for_log("at=ready", Duration::from_secs(30)),
        "{}",
        molt.log()
    );
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
}

#[test]
fn health_path_decides_readiness() {
    let molt = pool(1, |b| b.env("MOLT_HEALTH_PATH", "/sleep?ms=10"));
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
}

#[test]
fn workers_get_their_port_environment_group_and_oom_score() {
    let molt = pool(1, |b| b.env("MOLT_WORKER_PROCESSES", "3"));
    let env = |name: &str| get(molt.port(), &format!("/env?name={name}")).expect("served");
    assert_eq!(env("MOLT_WORKER").text(), "1");
    // Servers that read WEB_CONCURRENCY run as many processes in each worker.
    assert_eq!(env("WEB_CONCURRENCY").text(), "3");
    let private: u16 = env("PORT").text().parse().expect("a port");
    assert_ne!(private, molt.port());
    assert!(molt.log().contains(&format!("port={private}")));

    let pid: u32 = get(molt.port(), "/pid")
        .expect("served")
        .text()
        .parse()
        .expect("pid");
    // Its own process group, so that molt can signal everything the worker starts.
    assert_eq!(crate::support::process_group_of(pid), Some(pid));
    // The kernel's OOM killer prefers a worker to molt.
    let score = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).expect("readable");
    assert_eq!(score.trim(), "500");
    // molt raised its open-files limit to the hard limit, for many connections.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", molt.pid())).expect("readable");
    let files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a files row")
        .split_whitespace()
        .collect();
    assert_eq!(files[3], files[4], "soft and hard limits: {files:?}");
}

#[test]
fn second_sigint_kills_everything_at_once() {
    let mut molt = pool(1, |b| b.env("MOLT_SHUTDOWN_TIMEOUT", "60s"));
    let port = molt.port();
    let mark = temp_path("long");
    let path = format!("/sleep?ms=30000&mark={}", mark.display());
    let long = thread::spawn(move || get(port, &path));
    assert!(wait_until(Duration::from_secs(20), || mark.exists()));
    molt.signal(crate::support::SIGINT);
    assert!(molt.wait_for_log("at=shutdown signal=SIGINT", Duration::from_secs(5)));
    molt.signal(crate::support::SIGINT);
    let status = molt.wait_exit(Duration::from_secs(20)).expect("molt exits");
    assert_eq!(status.code(), Some(130), "{}", molt.log());
    assert!(wait_until(Duration::from_secs(10), || molt
        .tagged_pids()
        .is_empty()));
    // The request that was cut short sees its connection close, not a response.
    let cut = long.join().expect("request thread");
    assert!(cut.is_err() || cut.is_ok_and(|r| r.status != 200));
}
