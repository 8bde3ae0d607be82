//! `molt status` and `molt restart` with no PORT (a `heroku ps:exec` shell on a dyno has
//! none) find the one running molt of the user by its control socket; with several they
//! list them, with none they say where to run. Each run gets a /tmp of its own (a mount
//! namespace), so the molts of other tests are not in the way.

use std::process::Command;
use std::time::Duration;

use crate::support::{e2e_required, free_port, python_cmd, tools_present, ProcessTree};

/// Runs molt twice in a private /tmp and asks `molt status` and `molt restart` with no
/// PORT after each; prints what each printed after a `== <step>` line.
const SCRIPT: &str = r#"
set -u
mount -t tmpfs molt-test /tmp || { echo "== cannot mount"; exit 77; }
started() {
  for _ in $(seq 300); do
    "$MOLT" status --port "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "molt on $1 did not start; its output:"; cat "$2"; exit 1
}
PORT=$P1 "$MOLT" run -- "$APP" >/tmp/one.log 2>&1 &
one=$!
started "$P1" /tmp/one.log
echo "== one status"
env -u PORT "$MOLT" status 2>&1; echo "exit=$?"
echo "== one restart"
env -u PORT "$MOLT" restart 2>&1; echo "exit=$?"
PORT=$P2 "$MOLT" run -- "$APP" >/tmp/two.log 2>&1 &
two=$!
started "$P2" /tmp/two.log
echo "== two status"
env -u PORT "$MOLT" status 2>&1; echo "exit=$?"
echo "== two pinned"
PORT=$P2 "$MOLT" status --json >/dev/null 2>&1; echo "exit=$?"
kill -TERM "$one" "$two"
wait "$one" "$two"
echo "== none status"
env -u PORT "$MOLT" status 2>&1; echo "exit=$?"
echo "== end"
"#;

/// What the script printed between `== <step>` and the next `==` line.
fn step<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("== {name}\n"))
        .unwrap_or_else(|| panic!("no step {name} in:\n{out}"));
    let rest = &out[start + name.len() + 4..];
    &rest[..rest.find("\n== ").map_or(rest.len(), |end| end + 1)]
}

#[test]
fn status_with_no_port_finds_the_running_molt() {
    if !tools_present(&["unshare", "mount", "python3", "bash"]) {
        return;
    }
    let (p1, p2) = (free_port(), free_port());
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "bash", "-c", SCRIPT])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MOLT", env!("CARGO_BIN_EXE_molt"))
        .env("APP", python_cmd())
        .env("P1", p1.to_string())
        .env("P2", p2.to_string());
    let mut run = ProcessTree::start(command);
    let status = run
        .wait_exit(Duration::from_secs(120))
        .expect("the script ends");
    let out = run.log();
    if status.code() == Some(77) || (status.code() == Some(1) && out.contains("unshare: ")) {
        assert!(
            !e2e_required(),
            "MOLT_E2E_REQUIRED=1 but no mount namespace could be made:\n{out}"
        );
        eprintln!("skipped: no mount namespace here (run as root):\n{out}");
        return;
    }
    assert_eq!(status.code(), Some(0), "{out}");
    let one = step(&out, "one status");
    assert!(one.contains("exit=0") && one.contains("worker"), "{one}");
    let restart = step(&out, "one restart");
    assert!(
        restart.contains("rolling restart started") && restart.contains("exit=0"),
        "{restart}"
    );
    let two = step(&out, "two status");
    let (low, high) = (p1.min(p2), p1.max(p2));
    assert!(
        two.contains(&format!(
            "molt: 2 molts are running here; say which one with its PORT:\n  \
             PORT={low} molt status\n  PORT={high} molt status"
        )) && two.contains("exit=1"),
        "{two}"
    );
    assert!(step(&out, "two pinned").contains("exit=0"), "{out}");
    let none = step(&out, "none status");
    assert!(
        none.contains("no running molt found") && none.contains("heroku ps:exec -d web.1"),
        "{none}"
    );
    assert!(none.contains("exit=1"), "{none}");
}
