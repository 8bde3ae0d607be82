//! The `molt.toml` reader: finds the file (`MOLT_CONFIG`, else `molt.toml` in the app
//! root), parses it, and says on which line each key and value stands, for the sources
//! `molt plan` shows and for error messages.

use std::io;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item};

use super::settings::SETTINGS;
use super::{ConfigError, Source};

/// The variable naming the TOML file to read instead of `molt.toml` in the app root.
pub(super) const CONFIG_ENV: &str = "MOLT_CONFIG";

/// The file read from the app root when `MOLT_CONFIG` is not set.
const DEFAULT_FILE: &str = "molt.toml";

/// The parsed TOML file, with the path as the user names it.
pub(super) struct TomlFile {
    pub(super) path: PathBuf,
    pub(super) doc: ImDocument<String>,
}

impl TomlFile {
    /// The line of `key`, from its span (present because the document was parsed).
    pub(super) fn key_line(&self, key: &str) -> usize {
        let span = self.doc.as_table().key(key).and_then(toml_edit::Key::span);
        span.map_or(1, |span| line_of(self.doc.raw(), span.start))
    }

    /// The text of a value as written in the file (its first line), for error messages.
    pub(super) fn written(&self, item: &Item) -> String {
        // A `[table]` header where a value belongs would read as an array after `key =`.
        if !item.is_value() {
            return format!("(a {})", item.type_name());
        }
        item.span()
            .and_then(|span| self.doc.raw().get(span))
            .and_then(|text| text.lines().next())
            .map_or_else(
                || item.type_name().to_owned(),
                |text| text.trim().to_owned(),
            )
    }
}

/// The 1-based line of a byte offset into `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.matches('\n').count() + 1
}

/// Reads the TOML file: `MOLT_CONFIG` (relative to `app_dir`) or `molt.toml` in `app_dir`.
/// A missing default file is no file; a missing named file is an error.
pub(super) fn read_file(
    config_env: Option<&str>,
    app_dir: &Path,
) -> Result<Option<TomlFile>, ConfigError> {
    let (path, named) = match config_env {
        Some("") => {
            return Err(ConfigError::InvalidValue {
                origin: Source::Env(CONFIG_ENV.to_owned()),
                key: "config",
                value: String::new(),
                expected: "the path of a TOML file".to_owned(),
            })
        }
        Some(named) => (PathBuf::from(named), true),
        None => (PathBuf::from(DEFAULT_FILE), false),
    };
    // `join` keeps an absolute path as it is.
    let text = match std::fs::read_to_string(app_dir.join(&path)) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound && named => {
            return Err(ConfigError::MissingConfigFile { path })
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigError::CannotReadFile { path, source }),
    };
    // The parser takes ownership; the copy keeps the text to find the line of an error.
    match ImDocument::parse(text.clone()) {
        Ok(doc) => Ok(Some(TomlFile { path, doc })),
        Err(err) => {
            // The line comes from the error's offset rather than from toml_edit's
            // multi-line Display, whose layout is not part of its API.
            let line = line_of(&text, err.span().map_or(0, |span| span.start));
            let message = err.message().trim().lines().collect::<Vec<_>>().join("; ");
            Err(ConfigError::BadToml {
                path,
                line,
                message,
            })
        }
    }
}

/// Keys of the TOML file that are not settings, with their lines, in file order.
pub(super) fn unknown_file_keys(file: &TomlFile) -> Vec<(String, usize)> {
    file.doc
        .iter()
        .filter(|(key, _)| !SETTINGS.iter().any(|s| s.toml_key() == *key))
        .map(|(key, _)| (key.to_owned(), file.key_line(key)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use crate::config::testing::{env, env_error, load_env, source_of, toml_error, TempDir};

    #[test]
    fn toml_syntax_error_names_file_and_line() {
        let dir = TempDir::with_toml("min_workers = 2\n\nqueue_timeout = \"25s\n");
        let err = load(&[], &[], &dir.0).unwrap_err();
        let ConfigError::BadToml {
            path,
            line,
            message,
        } = &err
        else {
            panic!("expected BadToml, got {err:?}");
        };
        assert_eq!((path.as_path(), *line), (Path::new("molt.toml"), 3));
        assert!(!message.contains('\n'), "{message:?}");
        assert_eq!(err.to_string(), format!("molt.toml:3: {message}"));

        let duplicate = toml_error("min_workers = 2\nlog = \"info\"\nmin_workers = 3\n");
        assert_eq!(
            duplicate,
            "molt.toml:3: duplicate key `min_workers` in document root"
        );
    }

    #[test]
    fn toml_bad_value_names_its_line() {
        assert_eq!(
            toml_error("min_workers = 2\nqueue_timeout = \"soon\"   # comment\n"),
            "invalid molt.toml:2 queue_timeout = \"soon\": \
             expected a duration such as 250ms, 30s or 5m"
        );
        assert_eq!(
            toml_error("\n\nmax_queue = -1\n"),
            "invalid molt.toml:3 max_queue = -1: expected a whole number, 0 or more"
        );
        assert_eq!(
            toml_error("log = \"info\"\n[min_workers]\nx = 1\n"),
            "invalid molt.toml:2 min_workers = (a table): \
             expected a whole number from 1 to 1024"
        );
        // Integers may be strings in the file, as they are in the environment.
        let dir = TempDir::with_toml("min_workers = \"3\"\n");
        assert_eq!(load(&[], &[], &dir.0).unwrap().config.min_workers, 3);
    }

    #[test]
    fn molt_config_names_the_file() {
        let dir = TempDir::new();
        dir.write("molt.toml", "min_workers = 2\n");
        dir.write("other.toml", "min_workers = 5\n");
        let relative = load(&[], &env(&[("MOLT_CONFIG", "other.toml")]), &dir.0).unwrap();
        assert_eq!(relative.config.min_workers, 5);
        assert_eq!(
            source_of(&relative, "min_workers").source,
            Source::File {
                path: PathBuf::from("other.toml"),
                line: 1
            }
        );
        let absolute = dir.0.join("other.toml");
        let absolute = absolute.to_str().unwrap();
        let elsewhere = TempDir::new();
        let loaded = load(&[], &env(&[("MOLT_CONFIG", absolute)]), &elsewhere.0).unwrap();
        assert_eq!(loaded.config.min_workers, 5);
    }

    #[test]
    fn molt_config_pointing_at_a_missing_file_is_an_error() {
        let err = env_error(&[("MOLT_CONFIG", "config/missing.toml")]);
        assert_eq!(
            err,
            "MOLT_CONFIG names config/missing.toml, which does not exist"
        );
        assert_eq!(
            env_error(&[("MOLT_CONFIG", "")]),
            "invalid MOLT_CONFIG=\"\": expected the path of a TOML file"
        );
        // Without MOLT_CONFIG a missing molt.toml is simply no file.
        assert!(load_env(&[]).is_ok());
    }

    #[test]
    fn unreadable_file_is_an_error_with_its_cause() {
        let dir = TempDir::new();
        std::fs::create_dir(dir.0.join("molt.toml")).unwrap();
        let err = load(&[], &[], &dir.0).unwrap_err();
        assert!(matches!(err, ConfigError::CannotReadFile { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.starts_with("cannot read molt.toml: "), "{message}");
        assert!(!message.contains('\n'));
    }
}

/// Property tests of `molt.toml` read through [`load`](super::load): arbitrary and generated
/// files never panic, every error is one line naming the file, and valid values read back.
#[cfg(test)]
mod properties {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::config::load;
    use crate::config::testing::{TempDir, FILE_CASES};
    use crate::units::properties::{assert_one_line, number_like};

    /// A TOML value as text, of every type TOML has and of the forms settings take.
    fn toml_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|i| i.to_string()),
            any::<f64>().prop_map(|f| toml_edit::Value::from(f).to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<String>().prop_map(|s| toml_edit::Value::from(s).to_string()),
            number_like().prop_map(|s| toml_edit::Value::from(s).to_string()),
            Just("[1, 2]".to_owned()),
            Just("{ a = 1 }".to_owned()),
            Just("1979-05-27T07:32:00Z".to_owned()),
            Just("\"auto\"".to_owned()),
            Just("\"off\"".to_owned()),
        ]
    }

    /// A `molt.toml` of `key = value` lines: keys of real settings, near misses and
    /// nonsense; values of any TOML type.
    fn molt_toml() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            prop::sample::select(SETTINGS).prop_map(|s| s.toml_key().to_owned()),
            "[a-z_]{1,20}",
            Just("[table]".to_owned()),
        ];
        prop::collection::vec((key, toml_value()), 0..8).prop_map(|lines| {
            lines
                .iter()
                .map(|(key, value)| {
                    if key.starts_with('[') {
                        format!("{key}\n")
                    } else {
                        format!("{key} = {value}\n")
                    }
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(FILE_CASES))]

        /// Any text as `molt.toml`: loading never panics, and an error is one line that
        /// names the file.
        #[test]
        fn any_text_as_molt_toml_loads_or_fails_in_one_line(text in any::<String>()) {
            let dir = TempDir::with_toml(&text);
            if let Err(err) = load(&[], &[], &dir.0) {
                let message = err.to_string();
                assert_one_line(&message);
                prop_assert!(message.contains(DEFAULT_FILE), "{message}");
            }
        }

        /// TOML of settings with values of every type: never a panic; an error names the
        /// file (or, for two settings that contradict each other, both settings).
        #[test]
        fn generated_molt_toml_loads_or_fails_in_one_line(text in molt_toml()) {
            let dir = TempDir::with_toml(&text);
            match load(&[], &[], &dir.0) {
                Ok(loaded) => {
                    for effective in &loaded.sources {
                        prop_assert!(!effective.value.contains('\n'), "{effective:?}");
                    }
                }
                Err(err) => {
                    let message = err.to_string();
                    assert_one_line(&message);
                    prop_assert!(message.contains(DEFAULT_FILE), "{message}");
                }
            }
        }

        /// Valid values written to `molt.toml` come back as the values they were made from,
        /// each with the line it was on as its source.
        #[test]
        fn valid_molt_toml_reads_back(
            min_workers in 1u32..=64,
            extra_workers in 0u32..=64,
            queue_timeout_ms in 1u64..(1 << 30),
            idle_timeout_s in 1u64..(1 << 20),
            memory_limit_mb in 1u64..(1 << 20),
            max_requests in 0u32..u32::MAX,
            as_strings in any::<bool>(),
        ) {
            let max_workers = min_workers + extra_workers;
            let quote = |text: String| if as_strings { format!("\"{text}\"") } else { text };
            let text = format!(
                "min_workers = {}\nmax_workers = {}\nqueue_timeout = \"{queue_timeout_ms}ms\"\n\
                 idle_timeout = {}\nmemory_limit = \"{memory_limit_mb}MB\"\nmax_requests = {}\n",
                quote(min_workers.to_string()),
                quote(max_workers.to_string()),
                quote(idle_timeout_s.to_string()),
                quote(max_requests.to_string()),
            );
            let dir = TempDir::with_toml(&text);
            let loaded = load(&[], &[], &dir.0).unwrap();
            let config = &loaded.config;
            prop_assert_eq!(config.min_workers, min_workers as usize);
            prop_assert_eq!(config.max_workers, Some(max_workers as usize));
            prop_assert_eq!(config.queue_timeout, Duration::from_millis(queue_timeout_ms));
            prop_assert_eq!(config.idle_timeout, Duration::from_secs(idle_timeout_s));
            prop_assert_eq!(config.memory_limit, Some(memory_limit_mb << 20));
            prop_assert_eq!(config.max_requests, u64::from(max_requests));
            for (line, key) in ["min_workers", "max_workers", "queue_timeout", "idle_timeout", "memory_limit", "max_requests"]
                .into_iter()
                .enumerate()
            {
                let source = &loaded.sources.iter().find(|e| e.key == key).unwrap().source;
                prop_assert_eq!(
                    source,
                    &Source::File { path: PathBuf::from(DEFAULT_FILE), line: line + 1 }
                );
            }
        }
    }
}
