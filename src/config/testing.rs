//! Helpers for the config tests: a temporary app directory, and loading or applying one
//! setting with the whole message of what went wrong.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::settings::{Raw, Setting, SETTINGS};
use super::{load, Config, ConfigError, Effective, Loaded};

/// Case counts of the property tests: the pure parsers take ~1000 cases in well under a
/// second; the ones that write a `molt.toml` per case take fewer.
pub(super) const PURE_CASES: u32 = 1000;
pub(super) const FILE_CASES: u32 = 256;

/// A directory under the system temp dir, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "molt-config-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// A directory whose `molt.toml` holds `text`.
    pub(super) fn with_toml(text: &str) -> Self {
        let dir = TempDir::new();
        dir.write("molt.toml", text);
        dir
    }

    pub(super) fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub(super) fn flags<'a>(pairs: &[(&'a str, &str)]) -> Vec<(&'a str, String)> {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Loads with no TOML file.
pub(super) fn load_env(pairs: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let dir = TempDir::new();
    load(&[], &env(pairs), &dir.0)
}

/// The whole message of the error that loading with `pairs` gives.
pub(super) fn env_error(pairs: &[(&str, &str)]) -> String {
    load_env(pairs).unwrap_err().to_string()
}

pub(super) fn toml_error(text: &str) -> String {
    let dir = TempDir::with_toml(text);
    load(&[], &[], &dir.0).unwrap_err().to_string()
}

pub(super) fn setting(key: &str) -> &'static Setting {
    SETTINGS.iter().find(|s| s.key == key).unwrap()
}

/// Applies text to one setting: the config and display form, or the accepted form.
pub(super) fn apply(key: &str, text: &str) -> Result<(Config, String), String> {
    let mut config = Config::default();
    let shown = setting(key).kind.apply(Raw::Text(text), &mut config)?;
    Ok((config, shown))
}

pub(super) fn source_of<'a>(loaded: &'a Loaded, key: &str) -> &'a Effective {
    loaded.sources.iter().find(|e| e.key == key).unwrap()
}
