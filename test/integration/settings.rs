//! Configuration as a user meets it: bad values stop molt with one clear line and exit 2;
//! `molt plan` shows every value and where it came from.

use std::process::{Command, Output};
use std::time::Duration;

use crate::support::{temp_path, Molt};

/// Runs the molt binary to completion with only the given `MOLT_*` variables set.
fn molt(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_molt"));
    for (key, _) in std::env::vars() {
        if key.starts_with("MOLT_") || key == "PORT" {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).envs(env.iter().copied()).current_dir(dir);
    cmd.output().expect("molt runs")
}

fn app_dir(toml: Option<&str>) -> std::path::PathBuf {
    let dir = temp_path("app");
    std::fs::create_dir_all(&dir).expect("create app dir");
    if let Some(toml) = toml {
        std::fs::write(dir.join("molt.toml"), toml).expect("write molt.toml");
    }
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn invalid_environment_value_exits_2_naming_setting_value_and_form() {
    let out = molt(
        &["run", "--", "true"],
        &[("MOLT_QUEUE_TIMEOUT", "soon")],
        &app_dir(None),
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "molt: invalid MOLT_QUEUE_TIMEOUT=\"soon\": expected a duration such as 250ms, 30s or 5m\n"
    );
}

#[test]
fn invalid_file_value_points_at_its_line() {
    let dir = app_dir(Some("# tuned for a 512 MB dyno\nmin_workers = 0\n"));
    let out = molt(&["run", "--", "true"], &[], &dir);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "molt: invalid molt.toml:2 min_workers = 0: expected a whole number of at least 1\n"
    );
}

#[test]
fn invalid_flag_value_exits_2() {
    let out = molt(
        &["run", "--workers", "many", "--", "true"],
        &[],
        &app_dir(None),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("molt: invalid --workers=\"many\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_command_is_a_usage_error() {
    let out = molt(&["run"], &[], &app_dir(None));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("COMMAND"), "{}", stderr(&out));
}

#[test]
fn plan_shows_each_value_with_its_source() {
    let dir = app_dir(Some("boot_timeout = \"90s\"\nmin_workers = 4\n"));
    let out = molt(
        &["plan", "--concurrency", "2"],
        &[("MOLT_MIN_WORKERS", "3"), ("PORT", "6000")],
        &dir,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let row = |key: &str| {
        let line = text
            .lines()
            .find(|line| line.split_whitespace().next() == Some(key));
        let line = line.unwrap_or_else(|| panic!("no row for {key} in:\n{text}"));
        line.split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("min_workers"), "3 env MOLT_MIN_WORKERS");
    assert_eq!(row("worker_concurrency"), "2 flag --concurrency");
    assert_eq!(row("boot_timeout"), "1m30s molt.toml:1");
    assert_eq!(row("port"), "6000 env PORT");
    assert_eq!(row("max_queue"), "100 default");

    // Then the derived numbers, each with how it was reached.
    let dir = app_dir(None);
    let out = molt(
        &["plan"],
        &[
            ("MOLT_MEMORY_LIMIT", "1GB"),
            ("MOLT_WORKER_MEMORY", "200MB"),
        ],
        &dir,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let derived = |key: &str| {
        text.lines()
            .rev()
            .find(|line| line.split_whitespace().next() == Some(key))
            .map(|line| {
                line.split_whitespace()
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    assert_eq!(derived("budget"), "1GB MOLT_MEMORY_LIMIT", "{text}");
    assert!(derived("usable").contains("85% of 1GB - molt"), "{text}");
    assert_eq!(derived("soft_cap"), "200MB MOLT_WORKER_MEMORY", "{text}");
    assert_eq!(derived("hard_cap"), "300MB soft_cap x 1.5", "{text}");
    assert!(
        derived("max_workers").contains("/ 200MB soft cap)"),
        "{text}"
    );
}

#[test]
fn unknown_molt_variable_is_warned_with_the_nearest_name() {
    let molt = Molt::builder()
        .env("MOLT_MIN_WORKER", "2")
        .args(["run", "--", &crate::support::python_cmd()])
        .spawn();
    assert!(
        molt.wait_for_log("did you mean MOLT_MIN_WORKERS?", Duration::from_secs(10)),
        "{}",
        molt.log()
    );
}
