//! Why loading fails, and unknown names: [`ConfigError`] and its one-line messages, and
//! the suggestion of the nearest known setting for a misspelt `MOLT_*` variable or
//! `molt.toml` key.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::PathBuf;

use super::file::CONFIG_ENV;
use super::settings::SETTINGS;
use super::{Effective, Source};

/// Why the configuration could not be loaded. Each message is one line naming the
/// setting, the bad value and the accepted form.
#[derive(Debug)]
pub(crate) enum ConfigError {
    /// A value does not have the setting's form.
    InvalidValue {
        /// Where the value was written; never [`Source::Default`].
        origin: Source,
        /// The setting's key, e.g. `min_workers`.
        key: &'static str,
        /// The value as written: the raw text of a flag or variable, or the TOML text.
        value: String,
        /// The accepted form, e.g. `a whole number of at least 1`.
        expected: String,
    },
    /// `MOLT_CONFIG` names a file that does not exist.
    MissingConfigFile { path: PathBuf },
    /// The TOML file exists but could not be read; the message includes the cause.
    CannotReadFile { path: PathBuf, source: io::Error },
    /// The TOML file is not valid TOML.
    BadToml {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// Two values, each valid alone, contradict each other: `setting` must be `expected`
    /// relative to `other`, e.g. `max_workers` at least `min_workers`.
    Conflict {
        setting: Box<Effective>,
        /// The relation, e.g. `at least`; followed by the other setting in the message.
        expected: &'static str,
        other: Box<Effective>,
    },
    /// The TOML file has a key that is not a setting (only with [`Strictness::Build`]).
    UnknownFileKey {
        path: PathBuf,
        line: usize,
        key: String,
        suggestion: Option<&'static str>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::InvalidValue {
                origin,
                key,
                value,
                expected,
            } => {
                f.write_str("invalid ")?;
                match origin {
                    Source::Flag(name) | Source::Env(name) => write!(f, "{name}={value:?}")?,
                    Source::File { path, line } => {
                        write!(f, "{}:{line} {key} = {value}", path.display())?;
                    }
                    Source::Default => write!(f, "default {key}={value:?}")?,
                }
                write!(f, ": expected {expected}")
            }
            ConfigError::Conflict {
                setting,
                expected,
                other,
            } => write!(
                f,
                "invalid {} {} ({}): expected {expected} {} {} ({})",
                setting.key, setting.value, setting.source, other.key, other.value, other.source
            ),
            ConfigError::MissingConfigFile { path } => write!(
                f,
                "{CONFIG_ENV} names {}, which does not exist",
                path.display()
            ),
            ConfigError::CannotReadFile { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::BadToml {
                path,
                line,
                message,
            } => write!(f, "{}:{line}: {message}", path.display()),
            ConfigError::UnknownFileKey {
                path,
                line,
                key,
                suggestion,
            } => write!(
                f,
                "{}:{line}: {}",
                path.display(),
                unknown_message(key, *suggestion)
            ),
        }
    }
}

// `source()` stays `None`: the one cause, an I/O error, is already in the one-line
// message, which callers print with `{}`; returning it too would print it twice with `{:#}`.
impl std::error::Error for ConfigError {}

/// `unknown setting NAME; did you mean X?`, or a pointer to `molt plan` when nothing is close.
fn unknown_message(name: &str, suggestion: Option<&str>) -> String {
    match suggestion {
        Some(known) => format!("unknown setting {name}; did you mean {known}?"),
        None => format!("unknown setting {name}; see molt plan for the known settings"),
    }
}

/// The known name closest to `unknown`, if close enough. Names are compared without
/// `prefix`, which every candidate shares and which would make everything look close.
pub(super) fn suggest<'a>(
    unknown: &str,
    known: impl Iterator<Item = &'a str>,
    prefix: &str,
) -> Option<&'a str> {
    let unknown = unknown
        .strip_prefix(prefix)
        .unwrap_or(unknown)
        .to_ascii_lowercase();
    known
        .map(|name| {
            let bare = name
                .strip_prefix(prefix)
                .unwrap_or(name)
                .to_ascii_lowercase();
            (
                strsim::normalized_damerau_levenshtein(&unknown, &bare),
                name,
            )
        })
        .filter(|&(score, _)| score >= SUGGESTION_THRESHOLD)
        // The first of equally close names wins, so a tie goes to the earlier row of
        // SETTINGS: `MOLT_WORKERS` suggests `MOLT_MIN_WORKERS` (what `--workers` sets),
        // not `MOLT_MAX_WORKERS`. `min_by` keeps the first of equals; `max_by` the last.
        .min_by(|a, b| b.0.total_cmp(&a.0))
        .map(|(_, name)| name)
}

/// How close (normalised Damerau-Levenshtein, 0 to 1) an unknown name must be to a known
/// one to be suggested. 0.6 catches a missing, extra or swapped letter and
/// `MOLT_WORKERS` for `MOLT_MIN_WORKERS`; a name further from every setting (`MOLT_FOO`)
/// gets a pointer to `molt plan` rather than a misleading guess.
const SUGGESTION_THRESHOLD: f64 = 0.6;

/// Names the environment uses that are not settings, so they are never called unknown.
const OTHER_ENV_NAMES: &[&str] = &[
    // The path of the TOML file, read before the settings.
    CONFIG_ENV,
    // Set by molt itself in each worker's environment; a molt started inside a worker
    // must not take it for a setting.
    "MOLT_WORKER",
    // Read by the buildpack at build time; Heroku config vars are also set at run time.
    "MOLT_BINARY_URL",
];

/// Warnings for `MOLT_*` names that are neither settings nor [`OTHER_ENV_NAMES`], sorted
/// so the log is the same on every boot.
pub(super) fn unknown_env_warnings(env: &HashMap<&str, &str>) -> Vec<String> {
    let known = || {
        SETTINGS
            .iter()
            .map(|s| s.env)
            .chain(std::iter::once(CONFIG_ENV))
            .filter(|name| name.starts_with("MOLT_"))
    };
    let mut unknown: Vec<&str> = env
        .keys()
        .copied()
        .filter(|name| name.starts_with("MOLT_"))
        .filter(|name| !known().any(|k| k == *name) && !OTHER_ENV_NAMES.contains(name))
        .collect();
    unknown.sort_unstable();
    unknown
        .into_iter()
        .map(|name| unknown_message(name, suggest(name, known(), "MOLT_")))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{env, env_error, flags, load_env, toml_error, TempDir};
    use crate::config::{load, load_with, Strictness};

    #[test]
    fn exact_messages_for_flag_env_and_file() {
        assert_eq!(
            env_error(&[("MOLT_QUEUE_TIMEOUT", "soon")]),
            "invalid MOLT_QUEUE_TIMEOUT=\"soon\": expected a duration such as 250ms, 30s or 5m"
        );
        let dir = TempDir::new();
        let flag = load(&flags(&[("min_workers", "many")]), &[], &dir.0).unwrap_err();
        assert_eq!(
            flag.to_string(),
            "invalid --workers=\"many\": expected a whole number from 1 to 1024"
        );
        assert_eq!(
            toml_error("# molt settings\nlog = \"info\"\n\nmin_workers = 0\n"),
            "invalid molt.toml:4 min_workers = 0: expected a whole number of at least 1"
        );
        assert_eq!(
            env_error(&[("MOLT_BIND", "later")]),
            "invalid MOLT_BIND=\"later\": expected now or ready"
        );
        assert_eq!(
            env_error(&[("MOLT_STOP_SIGNAL", "STOP")]),
            "invalid MOLT_STOP_SIGNAL=\"STOP\": expected a signal name: \
             TERM, QUIT, INT, USR1, USR2, HUP, KILL or WINCH"
        );
    }

    #[test]
    fn unknown_env_name_with_suggestion() {
        let loaded = load_env(&[
            ("MOLT_MIN_WORKER", "2"),
            ("MOLT_WORKERS", "2"),
            ("MOLT_queue_timeout", "5s"),
        ])
        .unwrap();
        assert_eq!(
            loaded.warnings,
            [
                "unknown setting MOLT_MIN_WORKER; did you mean MOLT_MIN_WORKERS?",
                "unknown setting MOLT_WORKERS; did you mean MOLT_MIN_WORKERS?",
                "unknown setting MOLT_queue_timeout; did you mean MOLT_QUEUE_TIMEOUT?",
            ]
        );
        // An unknown name is not a setting: the default stays.
        assert_eq!(loaded.config.min_workers, 1);
    }

    #[test]
    fn unknown_env_name_without_suggestion() {
        let loaded = load_env(&[("MOLT_FOO", "1"), ("MOLT_PRELOAD_APP", "1")]).unwrap();
        assert_eq!(
            loaded.warnings,
            [
                "unknown setting MOLT_FOO; see molt plan for the known settings",
                "unknown setting MOLT_PRELOAD_APP; see molt plan for the known settings",
            ]
        );
    }

    #[test]
    fn suggestion_ties_go_to_the_earlier_setting() {
        // MOLT_WORKERS is as close to MOLT_MAX_WORKERS as to MOLT_MIN_WORKERS; --workers
        // sets the minimum, so that is the better guess.
        let loaded = load_env(&[("MOLT_WORKERS", "2"), ("MOLT_MAX_WORKER", "2")]).unwrap();
        assert_eq!(
            loaded.warnings,
            [
                "unknown setting MOLT_MAX_WORKER; did you mean MOLT_MAX_WORKERS?",
                "unknown setting MOLT_WORKERS; did you mean MOLT_MIN_WORKERS?",
            ]
        );
    }

    #[test]
    fn names_molt_uses_itself_are_not_unknown() {
        // Regression guard: molt sets MOLT_WORKER in every worker, and a molt started
        // inside one must neither warn about it nor read it as a setting.
        let dir = TempDir::with_toml("min_workers = 2\n");
        let env = env(&[
            ("MOLT_WORKER", "3"),
            ("MOLT_CONFIG", "molt.toml"),
            ("MOLT_BINARY_URL", "https://example.com/molt"),
            ("PORT", "8000"),
            ("WEB_CONCURRENCY", "4"),
            ("MOLTEN", "1"),
        ]);
        let loaded = load(&[], &env, &dir.0).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.config.min_workers, 2);
    }

    #[test]
    fn unknown_file_key_warns_at_run_and_fails_at_build() {
        let text = "min_workers = 2\nmin_worker = 3\n\n[memory]\nlimit = \"1GB\"\n";
        let dir = TempDir::with_toml(text);
        let loaded = load(&[], &[], &dir.0).unwrap();
        assert_eq!(
            loaded.warnings,
            [
                "molt.toml:2: unknown setting min_worker; did you mean min_workers?",
                "molt.toml:4: unknown setting memory; see molt plan for the known settings",
            ]
        );
        assert_eq!(loaded.config.min_workers, 2);
        let err = load_with(&[], &[], &dir.0, Strictness::Build).unwrap_err();
        assert_eq!(
            err.to_string(),
            "molt.toml:2: unknown setting min_worker; did you mean min_workers?"
        );
    }
}
