//! Preforking servers under molt: real Unicorn, gunicorn and Puma masters found through
//! their wrappers and adopted, their children governed one by one with the servers' own
//! signals, and the memory they share copy-on-write kept.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::support::{
    descendants_of, free_port, get, port_open, status_json, temp_path, tools_present, wait_until,
    Molt, SIGHUP,
};

/// Longest a server takes to boot and be adopted here.
const ADOPTED: Duration = Duration::from_secs(20);

fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test/fixtures/apps/prefork")
}

/// The children `molt status --json` shows.
fn children(socket: &Path) -> Vec<u64> {
    status_json(socket)["workers"]
        .as_array()
        .expect("workers is an array")
        .iter()
        .filter(|w| w["role"] == "child")
        .map(|w| w["pid"].as_u64().expect("a pid"))
        .collect()
}

/// Starts molt in the prefork fixture's directory on `command`, with `envs`.
fn molt(command: &str, envs: &[(&str, &str)]) -> (Molt, PathBuf) {
    let socket = temp_path("prefork.sock");
    let mut builder = Molt::builder()
        .cwd(app_dir())
        .env("MOLT_CONTROL_SOCKET", &socket)
        .env("MOLT_SAMPLE_INTERVAL", "100ms")
        .env("MOLT_MEMORY_LIMIT", "1GB");
    for (key, value) in envs {
        builder = builder.env(key, value);
    }
    (builder.args(["run", "--", command]).spawn(), socket)
}

/// Waits for molt to adopt the master and show `count` children.
fn wait_adopted(molt: &Molt, socket: &Path, server: &str, count: usize) {
    assert!(
        molt.wait_for_log(
            &format!("at=mode mode=prefork worker=1 server={server}"),
            ADOPTED
        ),
        "{server} was not adopted:\n{}",
        molt.log()
    );
    assert!(
        wait_until(ADOPTED, || children(socket).len() == count),
        "expected {count} children, status shows {:?}:\n{}",
        children(socket),
        molt.log()
    );
}

/// Runs `clients` threads on `path` until `stop` is set; returns (ok, failed).
fn load(port: u16, clients: usize, path: &str, stop: &Arc<AtomicBool>) -> (usize, usize) {
    let stop = Arc::clone(stop);
    crate::memory::load(port, clients, path, move || stop.load(Ordering::Relaxed))
}

#[test]
fn unicorn_behind_a_start_script_is_adopted_and_grown_by_signals() {
    if !tools_present(&["unicorn"]) {
        return;
    }
    let (mut molt, socket) = molt("./start", &[("MOLT_MIN_WORKERS", "2")]);
    wait_adopted(&molt, &socket, "unicorn", 2);
    assert_eq!(
        molt.count_log("at=spawn "),
        1,
        "one instance: its master forks"
    );
    assert!(molt.log().contains("signal=SIGTTIN"), "{}", molt.log());
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
    let status = status_json(&socket);
    assert_eq!(status["mode"], "prefork");
    assert_eq!(status["server"], "unicorn");
    // SIGTERM to every process of the dyno, as Heroku stops one: everything stops.
    assert!(molt.stop(true).success());
    assert!(
        molt.log().contains("signal=SIGQUIT"),
        "the master is stopped gracefully:\n{}",
        molt.log()
    );
}

#[test]
fn gunicorn_preloaded_under_bash_is_adopted() {
    if !tools_present(&["gunicorn"]) {
        return;
    }
    let (mut molt, socket) = molt(
        "cd . && gunicorn --preload -b 127.0.0.1:$PORT wsgi:app; echo gunicorn exited",
        &[("MOLT_MIN_WORKERS", "2")],
    );
    wait_adopted(&molt, &socket, "gunicorn", 2);
    assert_eq!(molt.count_log("at=spawn "), 1);
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
    assert!(molt.stop(true).success());
}

#[test]
fn puma_in_cluster_mode_is_adopted() {
    if !tools_present(&["puma"]) {
        return;
    }
    let (mut molt, socket) = molt("puma -C puma.rb config.ru", &[("MOLT_MIN_WORKERS", "2")]);
    wait_adopted(&molt, &socket, "puma", 2);
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
    assert!(molt.stop(true).success());
}

#[test]
fn a_child_over_its_soft_cap_is_replaced_by_a_fork_and_no_request_fails() {
    if !tools_present(&["unicorn"]) {
        return;
    }
    let (mut molt, socket) = molt(
        "unicorn -c unicorn.rb config.ru",
        &[
            ("MOLT_MIN_WORKERS", "2"),
            ("MOLT_MAX_WORKERS", "2"),
            ("MOLT_WORKER_MEMORY", "30MB"),
            ("MOLT_WORKER_MEMORY_HARD", "200MB"),
        ],
    );
    wait_adopted(&molt, &socket, "unicorn", 2);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (stop, port) = (Arc::clone(&stop), molt.port());
        // About 100 requests a second, 25 MB a second across the children: each reaches
        // its cap over many samples, as a leak does, rather than at its first.
        thread::spawn(move || load(port, 2, "/leak?kb=256&ms=20", &stop))
    };
    let recycled = wait_until(Duration::from_secs(90), || {
        molt.count_log("at=recycle worker=1 child=") >= 10
    });
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = loader.join().expect("load");
    let log = molt.log();
    eprintln!(
        "{ok} requests, {failed} failed, {} child recycles, {} children adopted",
        molt.count_log("at=recycle worker=1 child="),
        molt.count_log("action=adopted")
    );
    assert!(recycled, "fewer than 10 child recycles:\n{log}");
    assert_eq!(failed, 0, "{log}");
    // Each child recycled was replaced by a fork its master made, which molt adopted (the
    // first child, found with the master, and the one added by TTIN come on top).
    assert!(
        wait_until(ADOPTED, || molt.count_log("action=adopted") >= 10),
        "{log}"
    );
    assert_eq!(
        molt.count_log("at=spawn "),
        1,
        "no instance was booted again"
    );
    assert_eq!(molt.count_log("at=kill"), 0, "{log}");
    assert!(molt.stop(true).success());
}

#[test]
fn a_burst_adds_children_and_idle_removes_them() {
    if !tools_present(&["gunicorn"]) {
        return;
    }
    let (mut molt, socket) = molt(
        "gunicorn --preload -b 127.0.0.1:$PORT wsgi:app",
        &[
            ("MOLT_MIN_WORKERS", "1"),
            ("MOLT_MAX_WORKERS", "3"),
            ("MOLT_WORKER_CONCURRENCY", "1"),
            ("MOLT_IDLE_TIMEOUT", "1s"),
        ],
    );
    wait_adopted(&molt, &socket, "gunicorn", 1);
    let port = molt.port();
    let burst: Vec<_> = (0..6)
        .map(|_| thread::spawn(move || get(port, "/sleep?ms=1500").ok().map(|r| r.status)))
        .collect();
    let grown = wait_until(Duration::from_secs(10), || children(&socket).len() == 3);
    for request in burst {
        assert_eq!(request.join().expect("request").expect("answered"), 200);
    }
    assert!(
        grown,
        "the burst did not grow the children to 3:\n{}",
        molt.log()
    );
    assert!(
        wait_until(Duration::from_secs(15), || children(&socket).len() == 1),
        "idle children were not removed:\n{}",
        molt.log()
    );
    assert!(molt.count_log("signal=SIGTTIN") >= 2, "{}", molt.log());
    assert!(molt.count_log("signal=SIGTTOU") >= 2, "{}", molt.log());
    assert!(molt.stop(true).success());
}

/// The pids the fixture's `/warm` wrote to `log`, one per warm-up GET it served.
fn warmed(log: &Path) -> Vec<u32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn unicorn_children_forked_later_are_warmed_through_the_masters_port() {
    if !tools_present(&["unicorn"]) {
        return;
    }
    let warm_log = temp_path("warm.log");
    let warm_log_env = warm_log.display().to_string();
    let (mut molt, socket) = molt(
        "unicorn -c unicorn.rb config.ru",
        &[
            ("MOLT_MIN_WORKERS", "2"),
            ("MOLT_MAX_WORKERS", "2"),
            ("MOLT_WARMUP_PATH", "/warm"),
            ("MOLT_WARMUP_REQUESTS", "2"),
            ("WARM_LOG", &warm_log_env),
        ],
    );
    wait_adopted(&molt, &socket, "unicorn", 2);
    // The first instance gets its 2 GETs before it is routed, and each child a sample
    // finds new afterwards (`action=adopted`) 2 more, through the master's port.
    let all_warmed = |molt: &Molt| {
        let mut answered = None;
        wait_until(Duration::from_secs(10), || {
            let expected = 2 + 2 * molt.count_log("action=adopted");
            let done = warmed(&warm_log).len() == expected;
            answered = done.then_some(expected);
            done
        });
        answered
    };
    let before = all_warmed(&molt).unwrap_or_else(|| {
        panic!(
            "warm-ups {:?} for {} adopted children:\n{}",
            warmed(&warm_log),
            molt.count_log("action=adopted"),
            molt.log()
        )
    });
    // A child that dies is forked again by the master; molt finds the new child at a
    // sample and sends its 2 warm-up GETs through the master's port.
    let victim = children(&socket)[0];
    crate::support::signal_pid(
        u32::try_from(victim).expect("a pid"),
        crate::support::SIGKILL,
    );
    assert!(
        wait_until(ADOPTED, || {
            let now = children(&socket);
            now.len() == 2 && !now.contains(&victim)
        }),
        "the master forks a replacement:\n{}",
        molt.log()
    );
    let after = all_warmed(&molt);
    assert!(
        after.is_some_and(|after| after >= before + 2),
        "the new child's warm-up GETs did not come: {before} then {:?}\n{}",
        warmed(&warm_log),
        molt.log()
    );
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
    assert!(molt.stop(true).success());
}

#[test]
fn a_child_over_its_hard_cap_is_killed_and_only_its_request_fails() {
    if !tools_present(&["unicorn"]) {
        return;
    }
    let (mut molt, socket) = molt(
        "unicorn -c unicorn.rb config.ru",
        &[
            ("MOLT_MIN_WORKERS", "2"),
            ("MOLT_MAX_WORKERS", "2"),
            ("MOLT_WORKER_MEMORY", "60MB"),
            ("MOLT_WORKER_MEMORY_HARD", "90MB"),
        ],
    );
    wait_adopted(&molt, &socket, "unicorn", 2);
    let port = molt.port();
    let stop = Arc::new(AtomicBool::new(false));
    let steady = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || load(port, 1, "/sleep?ms=20", &stop))
    };
    let runaway = get(port, "/grab?mb=400").map(|r| r.status);
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = steady.join().expect("load");
    let log = molt.log();
    assert!(
        matches!(runaway, Ok(502) | Err(_)),
        "the runaway request: {runaway:?}\n{log}"
    );
    assert!(log.contains("reason=memory_hard"), "{log}");
    assert!(ok > 0, "{log}");
    assert_eq!(failed, 0, "the other child's requests: {log}");
    assert!(
        wait_until(ADOPTED, || children(&socket).len() == 2),
        "the master forks a replacement:\n{log}"
    );
    assert!(molt.stop(true).success());
}

#[test]
fn a_preforking_server_molt_does_not_know_stays_in_pool_mode() {
    if !tools_present(&["node"]) {
        return;
    }
    // A Node cluster whose workers share the listening socket (as a preforking server's
    // children do) under a title molt does not know.
    let script = temp_path("cluster.js");
    std::fs::write(
        &script,
        "const cluster = require('node:cluster'); const http = require('node:http');\n\
         cluster.schedulingPolicy = cluster.SCHED_NONE;\n\
         if (cluster.isPrimary) { for (let i = 0; i < 2; i++) cluster.fork(); }\n\
         else { http.createServer((q, s) => s.end('ok')).listen(process.env.PORT, '127.0.0.1'); }\n",
    )
    .expect("write the script");
    let (mut molt, socket) = molt(
        &format!("node {}", script.display()),
        &[("MOLT_MIN_WORKERS", "2")],
    );
    assert!(
        molt.wait_for_log("at=mode mode=pool worker=1 reason=unknown_server", ADOPTED),
        "{}",
        molt.log()
    );
    assert!(
        wait_until(ADOPTED, || molt.count_log("at=ready ") == 2),
        "pool mode starts the second instance:\n{}",
        molt.log()
    );
    assert_eq!(status_json(&socket)["mode"], "pool");
    assert!(molt.stop(true).success());
}

/// PSS plus swapped PSS of `pid` and its descendants, in bytes.
fn tree_pss(pid: u32) -> u64 {
    std::iter::once(pid)
        .chain(descendants_of(pid))
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .map(|text| {
            text.lines()
                .filter(|l| l.starts_with("Pss:") || l.starts_with("SwapPss:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
                * 1024
        })
        .sum()
}

/// Runs `program args` in `dir` as a plain server with 2 workers, and under molt (prefork
/// mode chosen by itself) as `command` with 2 children, side by side with `envs`; returns
/// the ratio of the pool's memory under molt to the plain server's, idle and after the same
/// 100 requests. molt's own process is not part of the pool.
fn memory_against_plain(
    dir: &Path,
    program: &str,
    args: &[&str],
    command: &str,
    envs: &[(&str, &str)],
) -> (f64, f64) {
    let plain_port = free_port();
    let mut plain = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(envs.iter().copied())
        .env("PORT", plain_port.to_string())
        .env("WEB_CONCURRENCY", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the plain server");
    let socket = temp_path("prefork.sock");
    let mut builder = Molt::builder()
        .cwd(dir)
        .env("MOLT_CONTROL_SOCKET", &socket)
        .env("MOLT_SAMPLE_INTERVAL", "100ms")
        .env("MOLT_MIN_WORKERS", "2")
        .env("MOLT_MAX_WORKERS", "2");
    for (key, value) in envs {
        builder = builder.env(key, value);
    }
    let mut molt = builder.args(["run", "--", command]).spawn();
    assert!(wait_until(ADOPTED, || port_open(plain_port)));
    assert!(wait_until(ADOPTED, || descendants_of(plain.id()).len() >= 2));
    wait_adopted(&molt, &socket, "unicorn", 2);
    let pool_pid = {
        let kids = crate::support::children_of(molt.pid());
        assert_eq!(kids.len(), 1, "molt has one instance");
        kids[0]
    };
    // Let both settle: the children's first pages are touched as they start.
    thread::sleep(Duration::from_secs(1));
    let ratio = |label: &str| {
        let (plain_pss, molt_pss) = (tree_pss(plain.id()), tree_pss(pool_pid));
        #[allow(clippy::cast_precision_loss)]
        let ratio = molt_pss as f64 / plain_pss as f64;
        eprintln!(
            "{label}: plain {plain_pss} bytes, under molt {molt_pss} bytes, ratio {ratio:.3}"
        );
        ratio
    };
    let idle = ratio("idle");
    // The same requests on each side, two at a time, each taking a few milliseconds, so
    // that both children of each side serve some: a child's first requests grow its heap,
    // and one side whose requests all went to one child would read smaller.
    for port in [plain_port, molt.port()] {
        let clients: Vec<_> = (0..2)
            .map(|_| {
                thread::spawn(move || {
                    for _ in 0..50 {
                        assert_eq!(get(port, "/sleep?ms=5").expect("served").status, 200);
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().expect("client");
        }
    }
    let served = ratio("after 100 requests");
    let _ = plain.kill();
    let _ = plain.wait();
    assert!(molt.stop(true).success());
    (idle, served)
}

/// A Rack app on Unicorn with 2 workers costs no more under molt than plain (within 5%).
#[test]
fn under_molt_a_preforked_pool_costs_what_the_plain_server_does() {
    if !tools_present(&["unicorn"]) {
        return;
    }
    let (idle, served) = memory_against_plain(
        &app_dir(),
        "unicorn",
        &["-c", "unicorn.rb", "config.ru"],
        "unicorn -c unicorn.rb config.ru",
        &[],
    );
    assert!(idle <= 1.05, "idle: {idle:.3}");
    assert!(served <= 1.05, "after requests: {served:.3}");
}

/// A Rails app (`rails new --minimal`, offline with Debian's gems) on Unicorn with
/// `preload_app`, run through `bundle exec`: adopted, and no more memory than plain.
#[test]
fn a_rails_app_under_bundle_exec_keeps_its_sharing() {
    if !tools_present(&["rails", "bundle", "unicorn"]) {
        return;
    }
    let dir = temp_path("rails");
    let app = dir.join("app");
    std::fs::create_dir_all(&app).expect("a directory for the app");
    crate::support::rails_new(&app);
    std::fs::write(
        app.join("Gemfile"),
        "source 'https://rubygems.org'\ngem 'rails', '~> 6.1'\ngem 'unicorn'\n",
    )
    .expect("write the Gemfile");
    std::fs::write(
        app.join("config/routes.rb"),
        "Rails.application.routes.draw do\n  get '/', to: proc { [200, { 'content-type' => \
         'text/plain' }, [\"pid=#{Process.pid}\\n\"]] }\n  get '/sleep', to: proc { sleep \
         0.005; [200, { 'content-type' => 'text/plain' }, [\"ok\\n\"]] }\nend\n",
    )
    .expect("write the routes");
    std::fs::copy(app_dir().join("unicorn.rb"), app.join("config/unicorn.rb"))
        .expect("copy the Unicorn config");
    let bundle = Command::new("bundle")
        .args(["install", "--local"])
        .current_dir(&app)
        .output()
        .expect("bundle runs");
    assert!(
        bundle.status.success(),
        "{}",
        String::from_utf8_lossy(&bundle.stdout)
    );
    let secret = "0".repeat(64);
    let envs = [
        ("RAILS_ENV", "production"),
        ("SECRET_KEY_BASE", secret.as_str()),
    ];
    let (idle, served) = memory_against_plain(
        &app,
        "bundle",
        &["exec", "unicorn", "-c", "config/unicorn.rb"],
        "bundle exec unicorn -c config/unicorn.rb",
        &envs,
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(idle <= 1.05, "idle: {idle:.3}");
    assert!(served <= 1.05, "after requests: {served:.3}");
}

/// SIGHUP (or `molt restart`) replaces the master itself: a new instance is booted and
/// adopted, the old one drains, and no request fails.
#[test]
fn a_rolling_restart_replaces_the_master_and_no_request_fails() {
    if !tools_present(&["unicorn"]) {
        return;
    }
    let (mut molt, socket) = molt(
        "unicorn -c unicorn.rb config.ru",
        &[("MOLT_MIN_WORKERS", "2")],
    );
    wait_adopted(&molt, &socket, "unicorn", 2);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (stop, port) = (Arc::clone(&stop), molt.port());
        thread::spawn(move || load(port, 2, "/sleep?ms=20", &stop))
    };
    thread::sleep(Duration::from_millis(300));
    molt.signal(SIGHUP);
    let replaced = molt.wait_for_log("at=mode mode=prefork worker=2 server=unicorn", ADOPTED)
        && molt.wait_for_log("at=exit worker=1 ", ADOPTED);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = loader.join().expect("load");
    let log = molt.log();
    assert!(replaced, "{log}");
    assert!(ok > 0, "{log}");
    assert_eq!(failed, 0, "{log}");
    assert!(
        wait_until(ADOPTED, || children(&socket).len() == 2),
        "the new master's children:\n{log}"
    );
    assert!(molt.stop(true).success());
}

/// molt adopting the fixture on Unicorn, held at two children; `None` when Unicorn is
/// missing (see `tools_present`).
fn unicorn_with_two_children() -> Option<(Molt, PathBuf)> {
    if !tools_present(&["unicorn"]) {
        return None;
    }
    let (molt, socket) = molt(
        "unicorn -c unicorn.rb config.ru",
        &[("MOLT_MIN_WORKERS", "2"), ("MOLT_MAX_WORKERS", "2")],
    );
    wait_adopted(&molt, &socket, "unicorn", 2);
    Some((molt, socket))
}

/// Unicorn's children take one request each, so molt reads a request's body whole before
/// any child gets it, as it does for any worker that takes one at a time: two slow uploads
/// hold no child, and a third request is answered while they trickle in.
#[test]
fn slow_uploads_hold_no_unicorn_child() {
    use std::io::{Read as _, Write as _};
    let Some((molt, _socket)) = unicorn_with_two_children() else {
        return;
    };
    let body = [b'x'; 100];
    let mut uploads: Vec<_> = (0..2)
        .map(|_| {
            let mut stream = crate::support::connect(molt.port()).expect("connect");
            let head = "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\nConnection: close\r\n\r\n";
            stream.write_all(head.as_bytes()).expect("head");
            stream.write_all(&body[..10]).expect("a tenth of the body");
            stream
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    // Both children would be reading those bodies were they handed over as they come;
    // this request would then wait for one of them.
    let mut quick = crate::support::connect(molt.port()).expect("connect");
    quick
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("read timeout");
    quick
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    let read = quick.read_to_string(&mut answer);
    assert!(
        read.is_ok() && answer.starts_with("HTTP/1.1 200"),
        "a request beside two slow uploads: {read:?} {answer:?}\n{}",
        molt.log()
    );
    for upload in &mut uploads {
        upload.write_all(&body[10..]).expect("the rest of the body");
        let mut answer = String::new();
        upload
            .read_to_string(&mut answer)
            .expect("the upload's answer");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("read=100\n"),
            "{answer:?}"
        );
    }
}

/// Unicorn's children take one request each; molt gives the master more, which wait in
/// its backlog for the first child to finish, and counts them as queued. 35 slow requests
/// on two children: two are served, 32 wait in Unicorn's backlog, one in molt's queue, and
/// every one is answered.
#[test]
fn requests_wait_for_a_free_child_in_the_masters_backlog() {
    // 16 per child, 32 in all (dispatch::master_backlog). Each takes 1 s: 35 on 2
    // children take some 18 s in all.
    let Some((molt, socket)) = unicorn_with_two_children() else {
        return;
    };
    let port = molt.port();
    let slow: Vec<_> = (0..35)
        .map(|_| thread::spawn(move || get(port, "/sleep?ms=1000").ok().map(|r| r.status)))
        .collect();
    let master = |status: &serde_json::Value| {
        status["workers"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["role"] == "master").cloned())
            .expect("the master is listed")
    };
    assert!(
        wait_until(Duration::from_secs(1), || {
            let status = status_json(&socket);
            master(&status)["in_flight"] == 34 && status["queue"] == 33
        }),
        "expected 34 requests at the master (2 in its children, 32 in its backlog) and 33 \
         queued (those 32 and 1 in molt's queue): {}\n{}",
        status_json(&socket),
        molt.log()
    );
    for request in slow {
        assert_eq!(request.join().expect("ran"), Some(200));
    }
    assert_eq!(status_json(&socket)["queue"], 0);
}
