//! Settings for people: the `molt plan` table of effective values and their sources, and
//! the Markdown table of every setting that README.md carries.

use std::fmt::Write as _;
use std::time::Duration;

use super::settings::{Kind, SETTINGS};
use super::{default_control_socket, Config, Loaded, Mode};
use crate::units::format_duration;

/// How `molt run` will run the command, and why, for `molt plan`.
pub(crate) fn mode_text(config: &Config) -> String {
    let why = match config.mode {
        Mode::Auto => {
            "auto: prefork if the first instance is a Unicorn, gunicorn or Puma master whose \
             children share its listening socket (seen once it is ready), else pool"
        }
        Mode::Pool => "pool: an instance of the command per worker, as MOLT_MODE says",
        Mode::Prefork => {
            "prefork: one instance with WEB_CONCURRENCY=min_workers, its master's children the \
             workers, as MOLT_MODE says (pool if it turns out not to be a preforking master)"
        }
    };
    format!("mode  {why}\n")
}

/// The `molt plan` table: every setting, its effective value and its source, aligned.
pub(crate) fn plan_text(loaded: &Loaded) -> String {
    let rows: Vec<(&str, &str, String)> =
        std::iter::once(("setting", "value", "source".to_owned()))
            .chain(
                loaded
                    .sources
                    .iter()
                    .map(|e| (e.key, e.value.as_str(), e.source.to_string())),
            )
            .collect();
    let key_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value, source) in &rows {
        writeln!(out, "{key:<key_width$}  {value:<value_width$}  {source}")
            .expect("writing to a String cannot fail");
    }
    out
}

/// The settings as a Markdown table for the README.
#[allow(
    dead_code,
    reason = "only the README test calls it: its output is README.md's settings table"
)]
pub(crate) fn settings_markdown() -> String {
    let mut out = String::from(
        "| Variable | molt.toml | Flag | Default | Meaning |\n|---|---|---|---|---|\n",
    );
    let defaults = Config::default();
    for setting in SETTINGS {
        let flag = setting.flag.map_or_else(String::new, |f| format!("`{f}`"));
        writeln!(
            out,
            "| `{}` | `{}` | {flag} | {} | {} |",
            setting.env,
            setting.toml_key(),
            readme_default(setting.kind, &defaults),
            setting.doc.replace('|', "\\|"),
        )
        .expect("writing to a String cannot fail");
    }
    out
}

/// A setting's default as the README shows it: its value in `defaults` as `molt plan` shows
/// it, in backticks, but for three rules of the README's own.
fn readme_default(kind: Kind, defaults: &Config) -> String {
    match kind {
        // Derived from the port at run time, and the README has no port.
        Kind::Socket { .. } => format!("`{}`", default_control_socket("$PORT").display()),
        // No path is the absence of a value, not a word to write.
        Kind::Path { get, .. } if get(defaults).is_none() => "none".to_owned(),
        Kind::Duration { get, .. } => format!("`{}`", readme_duration(get(defaults))),
        Kind::DurationOrOff { get, .. } => {
            let shown = get(defaults).map_or_else(|| kind.show(defaults), readme_duration);
            format!("`{shown}`")
        }
        _ => format!("`{}`", kind.show(defaults)),
    }
}

/// A default duration as the README writes it: in whole seconds under two minutes (`60s`,
/// `75s`), as timeouts are usually quoted, where `molt plan` shows `1m` and `1m15s`; longer
/// ones as `molt plan` shows them (`5m`). Both forms read back as the same duration.
fn readme_duration(duration: Duration) -> String {
    const IN_SECONDS_BELOW: Duration = Duration::from_secs(120);
    if duration < IN_SECONDS_BELOW && duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format_duration(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn molt_plan_says_how_the_mode_is_chosen() {
        let shown = |mode| {
            mode_text(&Config {
                mode,
                ..Config::default()
            })
        };
        assert!(shown(Mode::Auto).starts_with("mode  auto: prefork if the first instance"));
        assert!(shown(Mode::Pool).starts_with("mode  pool: "));
        assert!(shown(Mode::Prefork).starts_with("mode  prefork: one instance"));
    }
    use crate::config::load;
    use crate::config::settings::Raw;
    use crate::config::testing::{env, flags, TempDir};

    #[test]
    fn plan_text_aligns_every_setting() {
        let dir = TempDir::with_toml("\n\nboot_timeout = \"90s\"\n");
        let loaded = load(
            &flags(&[("worker_concurrency", "4")]),
            &env(&[("MOLT_MIN_WORKERS", "2")]),
            &dir.0,
        )
        .unwrap();
        let text = plan_text(&loaded);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), SETTINGS.len() + 1);
        let value_column = lines[0].find("value").unwrap();
        let source_column = lines[0].find("source").unwrap();
        for line in &lines {
            assert_eq!(line.as_bytes()[value_column - 1], b' ', "{line}");
            assert_ne!(line.as_bytes()[value_column], b' ', "{line}");
            assert_ne!(line.as_bytes()[source_column], b' ', "{line}");
        }
        let row = |key: &str| {
            let line = lines
                .iter()
                .find(|l| l.starts_with(&format!("{key} ")))
                .unwrap();
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        assert_eq!(row("min_workers"), "min_workers 2 env MOLT_MIN_WORKERS");
        assert_eq!(
            row("worker_concurrency"),
            "worker_concurrency 4 flag --concurrency"
        );
        assert_eq!(row("boot_timeout"), "boot_timeout 1m30s molt.toml:3");
        assert_eq!(row("queue_timeout"), "queue_timeout 25s default");
        assert_eq!(row("health_path"), "health_path none default");
        // The widest value is the default control socket, /tmp/molt-5000.sock.
        assert_eq!(
            lines[2],
            format!("{:<18}  {:<19}  env MOLT_MIN_WORKERS", "min_workers", "2")
        );
    }

    #[test]
    fn readme_defaults_read_back_as_the_defaults() {
        // The README writes some defaults in a form of its own (`60s` where `molt plan` shows
        // `1m`); each must still be the default, as `molt plan` shows it once read back.
        let defaults = Config::default();
        for setting in SETTINGS {
            let cell = readme_default(setting.kind, &defaults);
            let Some(text) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
                assert!(
                    ["health_path", "warmup_path"].contains(&setting.key) && cell == "none",
                    "{}: {cell}",
                    setting.key
                );
                continue;
            };
            if let Kind::Socket { .. } = setting.kind {
                assert_eq!(text, "/tmp/molt-$PORT.sock");
                continue;
            }
            let mut config = Config::default();
            let shown = setting.kind.apply(Raw::Text(text), &mut config);
            assert_eq!(shown, Ok(setting.kind.show(&defaults)), "{}", setting.key);
        }
    }

    #[test]
    fn settings_markdown_lists_every_setting() {
        let markdown = settings_markdown();
        let lines: Vec<&str> = markdown.lines().collect();
        assert_eq!(lines.len(), SETTINGS.len() + 2);
        assert_eq!(
            lines[0],
            "| Variable | molt.toml | Flag | Default | Meaning |"
        );
        assert_eq!(
            lines[3],
            "| `MOLT_MIN_WORKERS` | `min_workers` | `--workers` | `1` | Workers kept running. |"
        );
        assert!(
            markdown.contains("| `MOLT_HEALTH_PATH` | `health_path` | `--health-path` | none |")
        );
        assert!(markdown.contains("| `MOLT_QUEUE_TIMEOUT` | `queue_timeout` |  | `25s` |"));
    }

    #[test]
    fn settings_markdown_shows_derived_defaults() {
        let markdown = settings_markdown();
        assert!(markdown
            .contains("| `MOLT_CONTROL_SOCKET` | `control_socket` |  | `/tmp/molt-$PORT.sock` |"));
        assert!(markdown.contains("| `MOLT_MAX_WORKERS` | `max_workers` |  | `auto` |"));
        assert!(markdown.contains("| `MOLT_MEMORY_TARGET` | `memory_target` |  | `85%` |"));
        assert!(markdown.contains("| `MOLT_REQUEST_TIMEOUT` | `request_timeout` |  | `off` |"));
    }
}

#[cfg(test)]
mod readme {
    /// The README's settings table is generated from the settings table; this keeps it
    /// from drifting. To refresh it, paste the output of
    /// `cargo test readme -- --nocapture` into README.md.
    #[test]
    fn readme_settings_table_is_current() {
        let table = super::settings_markdown();
        println!("{table}");
        assert!(
            include_str!("../../README.md").contains(&table),
            "README.md's settings table is stale"
        );
    }
}
