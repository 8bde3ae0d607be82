//! Kept-alive connections to the workers across the app servers' own idle timeouts:
//! Node's `keepAliveTimeout` (5 s by default), gunicorn's `--keep-alive` (2 s) and Puma's
//! `persistent_timeout` (20 s), each set short here. Bursts of requests are sent after
//! idling a little under and over molt's own reuse limit (1 s) and the server's timeout;
//! no request may fail (a request sent on a connection the server is closing would).

use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use crate::support::{get, shell_quote, tools_present, wait_until, Molt};

/// The servers' idle timeout in this test.
const SERVER_TIMEOUT_MS: u64 = 2000;

/// Requests sent at once after each pause: several kept-alive connections each time.
const BURST: usize = 8;

fn fixture(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("test/fixtures/apps")
        .join(path);
    shell_quote(&path.to_string_lossy())
}

/// Runs `command` under molt, one worker taking `BURST` requests at once, and sends bursts
/// after each pause; returns the requests that failed, with what they got.
fn idle_and_send(command: &str, env: &[(&str, &str)]) -> (Vec<String>, String) {
    let mut builder = Molt::builder()
        .env("MOLT_MODE", "pool")
        .env("MOLT_WORKER_CONCURRENCY", BURST.to_string())
        .args(["run", "--", command]);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let molt = builder.spawn();
    assert!(
        wait_until(Duration::from_secs(60), || molt.count_log("at=ready") >= 1),
        "{}",
        molt.log()
    );
    let port = molt.port();
    let t = SERVER_TIMEOUT_MS;
    // Around molt's reuse limit, then around the server's timeout.
    let pauses = [990, 1010, t - 20, t + 20, t + 300];
    let mut failed = Vec::new();
    let burst = |failed: &mut Vec<String>, label: &str| {
        let sent: Vec<_> = (0..BURST)
            .map(|_| thread::spawn(move || get(port, "/")))
            .collect();
        for request in sent {
            match request.join().expect("request thread") {
                Ok(response) if response.status == 200 => {}
                Ok(response) => failed.push(format!("{label}: status {}", response.status)),
                Err(err) => failed.push(format!("{label}: {err}")),
            }
        }
    };
    burst(&mut failed, "first");
    for pause in pauses {
        thread::sleep(Duration::from_millis(pause));
        burst(&mut failed, &format!("after {pause} ms idle"));
    }
    (failed, molt.log())
}

fn assert_none_failed((failed, log): (Vec<String>, String)) {
    assert!(failed.is_empty(), "{failed:?}\n{log}");
    assert!(!log.contains("at=upstream_error"), "{log}");
}

#[test]
fn node_keep_alive_timeout() {
    if !tools_present(&["node"]) {
        return;
    }
    let command = format!("exec node {}", fixture("keepalive/server.js"));
    let timeout = SERVER_TIMEOUT_MS.to_string();
    assert_none_failed(idle_and_send(&command, &[("KEEPALIVE_MS", &timeout)]));
}

#[test]
fn gunicorn_gthread_keep_alive() {
    if !tools_present(&["gunicorn"]) {
        return;
    }
    // Sync workers close every connection after its response; gthread keeps them alive.
    let command = format!(
        "exec gunicorn --worker-class gthread --threads {BURST} --keep-alive {} \
         --bind 127.0.0.1:$PORT --chdir {} app:app",
        SERVER_TIMEOUT_MS / 1000,
        fixture("python-gunicorn")
    );
    assert_none_failed(idle_and_send(&command, &[]));
}

#[test]
fn puma_persistent_timeout() {
    if !tools_present(&["puma"]) {
        return;
    }
    let command = format!(
        "exec puma -C {} {}",
        fixture("keepalive/puma.rb"),
        fixture("prefork/config.ru")
    );
    let timeout = (SERVER_TIMEOUT_MS / 1000).to_string();
    assert_none_failed(idle_and_send(&command, &[("PERSISTENT_TIMEOUT", &timeout)]));
}
