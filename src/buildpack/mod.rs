//! The buildpack phases. The `bin/*` scripts find or obtain the molt binary (see
//! `bin/support/provision.sh`) and run `molt buildpack <phase>` with the platform's
//! arguments; everything after that is here.
//!
//! - Heroku classic: `detect BUILD_DIR`, `compile BUILD_DIR CACHE_DIR ENV_DIR`,
//!   `release BUILD_DIR` ([`classic`]).
//! - Cloud Native Buildpacks: `detect PLATFORM PLAN` and `build LAYERS PLATFORM PLAN`, run
//!   in the app directory ([`cnb`]). One `bin/detect` serves both platforms; only a CNB
//!   lifecycle sets `CNB_BUILDPACK_DIR`, which is how the two are told apart.
//!
//! Both platforms share what is decided about the app: its Procfile's web process (or,
//! with no Procfile, the language buildpack's default one), and its settings, validated
//! exactly as `molt run` will validate them.

/// Finding the running binary and installing it into the app or a layer.
mod binary;
/// Heroku classic: detect, compile, release.
mod classic;
/// Cloud Native Buildpacks: detect, build.
mod cnb;
/// The language buildpack's default web process, for an app with no Procfile.
mod default_web;
/// Every message the buildpack shows a user, each in four parts.
mod messages;
/// Procfile parsing and the web line rewrite.
pub(crate) mod procfile;

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, Loaded, Source, Strictness};
use messages::{Message, Platform};
use procfile::{Ignored, Rewrite};

pub(crate) use classic::{compile, release};
pub(crate) use cnb::build;

/// Exit status of a failed build phase; the message on stderr says why.
const EXIT_BUILD_FAILED: u8 = 1;

/// The variable that only a CNB lifecycle sets for `bin/detect` and `bin/build`.
const CNB_BUILDPACK_DIR: &str = "CNB_BUILDPACK_DIR";

/// The file the web process comes from, at the root of the app.
const PROCFILE: &str = "Procfile";

/// The settings shown after every build, whatever their source: the ones that shape the
/// pool. Any other setting is shown only when the app sets it.
const POOL_SETTINGS: &[&str] = &[
    "min_workers",
    "max_workers",
    "worker_concurrency",
    "worker_processes",
    "memory_limit",
    "memory_target",
    "worker_memory",
    "worker_memory_hard",
];

/// `bin/detect`: Heroku's `detect BUILD_DIR`, or, with `CNB_BUILDPACK_DIR` set, the
/// CNB's `detect PLATFORM PLAN` in the app directory.
pub(crate) fn detect(args: &[PathBuf]) -> ExitCode {
    if std::env::var_os(CNB_BUILDPACK_DIR).is_some() {
        cnb::detect()
    } else {
        classic::detect(args.first().map_or(Path::new("."), PathBuf::as_path))
    }
}

/// Prints a failure to stderr and gives the exit status of a failed phase.
fn fail(message: &Message) -> ExitCode {
    eprint!("{message}");
    ExitCode::from(EXIT_BUILD_FAILED)
}

/// Prints a detail line under the phase's headline, indented 7 spaces as Heroku's are.
fn detail(line: &str) {
    for line in line.lines() {
        println!("       {line}");
    }
}

/// The app's web process, as the Procfile gives it, or the language buildpack's default
/// when there is no Procfile.
struct Web {
    /// What molt does with it.
    line: WebLine,
    /// The Procfile's text as it was.
    text: String,
    /// Lines that define nothing, for a warning.
    ignored: Vec<Ignored>,
}

impl Web {
    /// Reads `app_dir/Procfile`; it must have a web process with a command. With no
    /// Procfile, the language buildpack's default web process, if there is one.
    fn read(app_dir: &Path, platform: Platform) -> Result<Web, Message> {
        let text = match fs::read_to_string(app_dir.join(PROCFILE)) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let files = default_web::AppFiles::read(app_dir);
                return match default_web::choose(&files, platform) {
                    Some(default) => Ok(Web {
                        line: WebLine::Default(default),
                        text: String::new(),
                        ignored: Vec::new(),
                    }),
                    None => Err(messages::no_procfile(platform, &error)),
                };
            }
            Err(error) => return Err(messages::unreadable_procfile(&error)),
        };
        let parsed =
            procfile::parse(&text).map_err(|error| messages::bad_procfile(platform, &error))?;
        let rewrite = procfile::rewrite_web(&text)
            .map_err(|error| messages::bad_procfile(platform, &error))?;
        let line = match rewrite {
            Rewrite::Rewritten { text, original } => WebLine::Wrap { text, original },
            Rewrite::AlreadyUnderMolt { command } => WebLine::UnderMolt { command },
            Rewrite::NoWeb => {
                let mut names: Vec<&str> = Vec::new();
                for entry in parsed.entries() {
                    if !names.contains(&entry.name.as_str()) {
                        names.push(&entry.name);
                    }
                }
                return Err(messages::no_web_process(platform, &names));
            }
        };
        Ok(Web {
            line,
            ignored: parsed.ignored().to_vec(),
            text,
        })
    }

    /// The web command as the Procfile has it now.
    fn command(&self) -> &str {
        match &self.line {
            WebLine::Wrap { original, .. } => original,
            WebLine::UnderMolt { command } => command,
            WebLine::Default(default) => &default.command,
        }
    }

    /// Warns about lines that define nothing: a typo there may be a lost process.
    fn warn_ignored(&self) {
        for line in &self.ignored {
            detail(&messages::ignored_procfile_line(line));
        }
    }
}

/// What molt does with the web line.
enum WebLine {
    /// Wraps `original` in `molt run`; `text` is the Procfile with that done.
    Wrap { text: String, original: String },
    /// Leaves it alone: `command` already runs molt (the app's own doing, or an earlier build).
    UnderMolt { command: String },
    /// There is no Procfile: runs the language buildpack's default web command under molt.
    Default(default_web::DefaultWeb),
}

/// The `MOLT_*` variables of a directory holding one file per variable (Heroku's
/// `ENV_DIR`, a CNB platform's `env/`). Only molt's own are read: the others are the
/// app's, and may be secrets. A missing directory holds none.
fn molt_vars_in(dir: &Path) -> Result<Vec<(String, String)>, Message> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(messages::unreadable_env_dir(dir, &error)),
    };
    let mut vars = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| messages::unreadable_env_dir(dir, &error))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !name.starts_with("MOLT_") {
            continue;
        }
        let bytes =
            fs::read(entry.path()).map_err(|error| messages::unreadable_env_dir(dir, &error))?;
        vars.push((name, String::from_utf8_lossy(&bytes).into_owned()));
    }
    // Sorted, so warnings come out in the same order on every build.
    vars.sort();
    Ok(vars)
}

/// Loads the settings as `molt run` will at boot, except that an unknown `molt.toml` key
/// is an error here (a typo must fail the build, not a running dyno): `env` holds the
/// `MOLT_*` variables, `app_dir` the `molt.toml`. Warnings are printed as detail lines.
fn load_settings(
    env: &[(String, String)],
    app_dir: &Path,
    platform: Platform,
) -> Result<Loaded, Message> {
    let loaded = config::load_with(&[], env, app_dir, Strictness::Build)
        .map_err(|error| messages::invalid_settings(platform, &error))?;
    for warning in &loaded.warnings {
        detail(&messages::settings_warning(warning));
    }
    Ok(loaded)
}

/// The settings in force, as lines for the build log: the pool's shape always, any other
/// setting when the app sets it.
fn settings_lines(loaded: &Loaded, platform: Platform) -> String {
    let rows: Vec<(&str, &str, String)> = loaded
        .sources
        .iter()
        .filter(|e| POOL_SETTINGS.contains(&e.key) || e.source != Source::Default)
        .map(|e| {
            let source = match (&e.source, platform) {
                (Source::Env(name), Platform::Heroku) => format!("config var {name}"),
                (Source::Env(name), Platform::Cnb) => format!("env {name}"),
                (source, _) => source.to_string(),
            };
            (e.key, e.value.as_str(), source)
        })
        .collect();
    let key_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = String::from(
        "Settings in force (molt plan, run where the app runs, adds the memory budget and \
         caps derived from them):\n",
    );
    for (key, value, source) in rows {
        writeln!(out, "  {key:<key_width$}  {value:<value_width$}  {source}")
            .expect("writing to a String cannot fail");
    }
    out
}

/// The build log's line saying which default web process an app with no Procfile gets.
fn default_web_line(default: &default_web::DefaultWeb) -> String {
    format!(
        "Procfile: none in the app, so the web process is {}'s default, because {}",
        default.buildpack, default.because
    )
}

/// Writes `contents` to `path`, creating its directory.
fn write_file(path: &Path, contents: &str) -> Result<(), Message> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|error| messages::cannot_write(dir, &error))?;
    }
    fs::write(path, contents).map_err(|error| messages::cannot_write(path, &error))
}
