//! The dyno's memory limit for real: a 512 MB memory cgroup, as Heroku's Cedar gives a
//! dyno (cgroup v1 `memory.limit_in_bytes`; v2 `memory.max` where the machine has that).
//! A leaking app under molt, with no `MOLT_MEMORY_LIMIT`, stays inside it: molt derives the
//! budget from the group, recycles the workers, the kernel never has to refuse a charge or
//! kill, and no request fails. The same app without molt, in a group of its own, is killed
//! by the kernel's OOM killer under the same load.
//!
//! It needs root and a writable memory hierarchy; where a group cannot be created it skips
//! with a note. Once a group could be created the test runs, so under
//! `MOLT_E2E_REQUIRED=1` a machine that allows cgroups never skips it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::support::{
    fixture_app, get, status_json, temp_path, tools_present, unique_tag, wait_until, Molt,
    ProcessTree,
};

/// The dyno's quota: a Standard-1X.
const LIMIT: u64 = 512 << 20;

/// Each request keeps this much for good, and then takes `LEAK_MS` more: with `CLIENTS`
/// clients the app leaks up to 50 MB a second, filling the group in about ten.
const LEAK_KB: u64 = 512;
const LEAK_MS: u64 = 20;

/// Clients sending leaking requests at once, and the requests each sends: 600 MB leaked in
/// all, more than the group holds.
const CLIENTS: usize = 2;
const REQUESTS_PER_CLIENT: usize = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A memory cgroup of this test's own, removed (its processes killed) when dropped, even
/// when the test fails.
struct Group {
    path: PathBuf,
    version: Version,
}

impl Group {
    /// A group limited to `limit` bytes with no swap, or why this machine gives none.
    fn create(limit: u64) -> Result<Group, String> {
        let name = format!("molt-test-{}", unique_tag());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let v2 = Path::new("/sys/fs/cgroup");
        let (parent, version) = if v1.join("memory.limit_in_bytes").exists() {
            (v1, Version::V1)
        } else if fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|enabled| enabled.split_whitespace().any(|c| c == "memory"))
        {
            (v2, Version::V2)
        } else {
            return Err(
                "no cgroup v1 memory hierarchy, nor a v2 one with the memory \
                        controller enabled, at /sys/fs/cgroup"
                    .to_owned(),
            );
        };
        let path = parent.join(name);
        fs::create_dir(&path).map_err(|err| format!("cannot create {}: {err}", path.display()))?;
        // From here the machine allows cgroups: every failure is the test's.
        let group = Group { path, version };
        match version {
            Version::V1 => {
                group.write("memory.limit_in_bytes", &limit.to_string());
                // Without swap, as a dyno that swaps is already failing (R14).
                if group.path.join("memory.memsw.limit_in_bytes").exists() {
                    group.write("memory.memsw.limit_in_bytes", &limit.to_string());
                }
            }
            Version::V2 => {
                group.write("memory.max", &limit.to_string());
                if group.path.join("memory.swap.max").exists() {
                    group.write("memory.swap.max", "0");
                }
            }
        }
        Ok(group)
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.path.join(file);
        fs::write(&path, value).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    }

    /// The wrapper that moves itself into the group, then execs what follows: whatever it
    /// runs, molt included, is in the group from its first instruction.
    fn enter(&self) -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            r#"echo $$ > "$0" && exec "$@""#.into(),
            self.path
                .join("cgroup.procs")
                .to_string_lossy()
                .into_owned(),
        ]
    }

    /// A counter the kernel keeps in `file` (`key value` lines).
    fn counter(&self, file: &str, key: &str) -> u64 {
        fs::read_to_string(self.path.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|line| {
                let (k, v) = line.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0)
    }

    /// Times a charge hit the limit: v1 `memory.failcnt`, v2 `memory.events` max.
    fn limit_hits(&self) -> u64 {
        match self.version {
            Version::V1 => fs::read_to_string(self.path.join("memory.failcnt"))
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(0),
            Version::V2 => self.counter("memory.events", "max"),
        }
    }

    /// The most the group ever held, when the kernel says (v1 `memory.max_usage_in_bytes`,
    /// v2 `memory.peak`).
    fn peak(&self) -> Option<u64> {
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        fs::read_to_string(self.path.join(file))
            .ok()
            .and_then(|text| text.trim().parse().ok())
    }

    /// Processes the kernel's OOM killer killed in the group.
    fn oom_kills(&self) -> u64 {
        match self.version {
            Version::V1 => self.counter("memory.oom_control", "oom_kill"),
            Version::V2 => self.counter("memory.events", "oom_kill"),
        }
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Kill what is left, then remove the group: the kernel frees it a moment after
        // its last process has gone.
        let _ = wait_until(Duration::from_secs(10), || {
            let pids = self.pids();
            for &pid in &pids {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            pids.is_empty()
        });
        let removed = wait_until(Duration::from_secs(10), || {
            matches!(fs::remove_dir(&self.path), Ok(()))
                || fs::metadata(&self.path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        });
        if !removed {
            eprintln!("could not remove the cgroup {}", self.path.display());
        }
    }
}

/// A group, or None after a note when this machine gives none.
fn group_or_skip() -> Option<Group> {
    match Group::create(LIMIT) {
        Ok(group) => Some(group),
        Err(why) => {
            eprintln!("skipped: no memory cgroup can be created here ({why})");
            None
        }
    }
}

/// What the leaking load saw: requests answered 200, and the others.
struct Load {
    ok: usize,
    failed: Vec<String>,
}

/// `CLIENTS` clients, each sending `REQUESTS_PER_CLIENT` leaking requests one after the
/// other; a client stops at its first failure once `stop_on_failure`.
fn leak(port: u16, stop_on_failure: bool) -> Load {
    let ok = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (ok, stopped) = (Arc::clone(&ok), Arc::clone(&stopped));
            thread::spawn(move || {
                let mut failed = Vec::new();
                for _ in 0..REQUESTS_PER_CLIENT {
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    match get(port, &format!("/leak?kb={LEAK_KB}&ms={LEAK_MS}")) {
                        Ok(response) if response.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Ok(response) => failed.push(format!("status {}", response.status)),
                        Err(err) => failed.push(err.to_string()),
                    }
                    if stop_on_failure {
                        stopped.store(true, Ordering::Relaxed);
                    }
                }
                failed
            })
        })
        .collect();
    let failed = clients
        .into_iter()
        .flat_map(|client| client.join().expect("client thread"))
        .collect();
    Load {
        ok: ok.load(Ordering::Relaxed),
        failed,
    }
}

#[test]
fn a_leaking_app_under_molt_stays_inside_the_dynos_memory_cgroup() {
    if !tools_present(&["python3", "sh"]) {
        return;
    }
    let Some(group) = group_or_skip() else {
        return;
    };
    let socket = temp_path("control.sock");
    let molt = Molt::builder()
        .wrap(group.enter())
        // Sampled often: this leak fills a dyno in seconds, a real one takes hours.
        .env("MOLT_SAMPLE_INTERVAL", "100ms")
        .env("MOLT_CONTROL_SOCKET", &socket)
        .args(["run", "--", &crate::support::python_cmd()])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(30), || molt.count_log("at=ready") >= 1),
        "{}",
        molt.log()
    );
    let status = status_json(&socket);
    assert_eq!(status["budget"], LIMIT, "{status}");
    assert!(
        status["budget_source"]
            .as_str()
            .is_some_and(|why| why.contains("cgroup")),
        "{status}"
    );
    // The caps follow from the footprint once a ready worker has been measured, and hold
    // the worker once molt has seen it is no preforking master.
    assert!(
        molt.wait_for_log("at=footprint", Duration::from_secs(10))
            && molt.wait_for_log("at=mode mode=pool", Duration::from_secs(10)),
        "{}",
        molt.log()
    );

    let load = leak(molt.port(), false);
    let log = molt.log();
    assert!(load.failed.is_empty(), "{:?}\n{log}", load.failed);
    assert_eq!(load.ok, CLIENTS * REQUESTS_PER_CLIENT);
    assert!(
        log.contains("at=recycle"),
        "the leak was never recycled:\n{log}"
    );
    eprintln!(
        "cgroup {:?}: {} requests served, {} recycles, {} kills, peak {:?} MB of {} MB, \
         limit hits {}, OOM kills {}",
        group.version,
        load.ok,
        log.matches("at=recycle").count(),
        log.matches("at=kill").count(),
        group.peak().map(|bytes| bytes >> 20),
        LIMIT >> 20,
        group.limit_hits(),
        group.oom_kills()
    );
    assert_eq!(
        group.oom_kills(),
        0,
        "the kernel killed in the group:\n{log}"
    );
    assert_eq!(
        group.limit_hits(),
        0,
        "a charge hit the group's limit:\n{log}"
    );
}

#[test]
fn the_same_leaking_app_without_molt_is_oom_killed() {
    if !tools_present(&["python3", "sh"]) {
        return;
    }
    let Some(group) = group_or_skip() else {
        return;
    };
    let mut command = Command::new(&group.enter()[0]);
    command
        .args(&group.enter()[1..])
        .arg("python3")
        .arg(fixture_app());
    let mut app = ProcessTree::start(command);
    let port = app.port();
    assert!(
        wait_until(Duration::from_secs(30), || crate::support::port_open(port)),
        "{}",
        app.log()
    );
    let load = leak(port, true);
    let status = app
        .wait_exit(Duration::from_secs(30))
        .expect("the app died");
    assert!(!load.failed.is_empty(), "every request was served");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{}",
        app.log()
    );
    assert!(group.oom_kills() >= 1, "no OOM kill counted");
    eprintln!(
        "cgroup {:?} without molt: {} requests served before the OOM kill, limit hits {}, \
         OOM kills {}",
        group.version,
        load.ok,
        group.limit_hits(),
        group.oom_kills()
    );
}
