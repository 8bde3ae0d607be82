//! Stopping an app that runs under a wrapper: a shell (`bash -c 'app && echo'`, `npm
//! start`) dies on the stop signal at once, and what it started still gets
//! `MOLT_STOP_TIMEOUT` to finish its shutdown (docs/operations.md, "Stopping").

use std::path::Path;
use std::time::Duration;

use crate::support::{get, shell_quote, tools_present, wait_until, Molt, SIGHUP, SIGTERM};

/// The command line of the slow-stopping fixture under a wrapper shell that stays its
/// parent: `&&` keeps bash from exec'ing the app.
fn wrapped_slow_stop() -> String {
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("test/fixtures/apps/slow-stop/app.py");
    format!(
        "python3 {} && echo 'the app exited'",
        shell_quote(&app.to_string_lossy())
    )
}

fn start(stop_timeout: &str) -> Molt {
    let molt = Molt::builder()
        .env("MOLT_STOP_TIMEOUT", stop_timeout)
        .env("STOP_MS", "2000")
        .args(["run", "--", &wrapped_slow_stop()])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(30), || molt.count_log("at=ready") >= 1),
        "{}",
        molt.log()
    );
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
    molt
}

#[test]
fn an_app_under_a_wrapper_shell_finishes_its_shutdown() {
    if !tools_present(&["python3", "bash"]) {
        return;
    }
    let mut molt = start("10s");
    molt.signal(SIGTERM);
    let status = molt.wait_exit(Duration::from_secs(30)).expect("molt exits");
    let log = molt.log();
    assert_eq!(status.code(), Some(0), "{log}");
    // The shell died on the signal; the app, left in the group, was given the time.
    assert!(log.contains("at=linger worker=1"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        log.contains("shutdown finished"),
        "the app was cut short:\n{log}"
    );
    assert!(log.contains("at=group_exited worker=1"), "{log}");
    assert!(!log.contains("at=kill"), "nothing was SIGKILLed:\n{log}");
    assert!(!log.contains("kill_leftovers"), "{log}");
    assert!(
        wait_until(Duration::from_secs(5), || molt.tagged_pids().is_empty()),
        "processes outlived molt"
    );
}

#[test]
fn a_recycled_worker_under_a_wrapper_shell_finishes_its_shutdown() {
    if !tools_present(&["python3", "bash"]) {
        return;
    }
    let molt = start("10s");
    molt.signal(SIGHUP);
    assert!(
        molt.wait_for_log("at=group_exited worker=1", Duration::from_secs(30)),
        "{}",
        molt.log()
    );
    let log = molt.log();
    assert!(log.contains("shutdown finished"), "{log}");
    assert!(!log.contains("at=kill"), "{log}");
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
}

#[test]
fn the_stop_timeout_still_bounds_what_a_wrapper_left() {
    if !tools_present(&["python3", "bash"]) {
        return;
    }
    let mut molt = start("500ms");
    molt.signal(SIGTERM);
    let status = molt.wait_exit(Duration::from_secs(30)).expect("molt exits");
    let log = molt.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("at=kill worker=1") && log.contains("reason=stop_timeout leader=exited"),
        "{log}"
    );
    assert!(!log.contains("shutdown finished"), "{log}");
    assert!(
        wait_until(Duration::from_secs(5), || molt.tagged_pids().is_empty()),
        "processes outlived molt"
    );
}
