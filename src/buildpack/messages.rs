//! Every message the buildpack shows a user, in one place. Each has four parts: what went
//! wrong, why, what to do, and the underlying cause, so a build log answers the questions
//! a user has in the order they have them. Tests compare whole messages.
//!
//! The messages about obtaining the binary are in `bin/support/provision.sh`: they are
//! shown before any molt binary exists. They use the same parts and the same layout.

use std::fmt;
use std::io;
use std::path::Path;

use crate::buildpack::procfile::{Ignored, ProcfileError};
use crate::config::ConfigError;

/// The prefix of every line of a message, as Heroku's own buildpacks mark errors.
const PREFIX: &str = " !     ";

/// The platform a message is for, where what to do differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Platform {
    /// Heroku classic: config vars, `git push`.
    Heroku,
    /// Cloud Native Buildpacks: build environment, `pack build`.
    Cnb,
}

impl Platform {
    /// How a user sets a variable for the build on this platform.
    fn set_variable(self, example: &str) -> String {
        match self {
            Platform::Heroku => format!("heroku config:set {example}"),
            Platform::Cnb => format!("pack build --env {example}"),
        }
    }

    /// What the user does after fixing the app.
    fn again(self) -> &'static str {
        match self {
            Platform::Heroku => "then deploy again",
            Platform::Cnb => "then build again",
        }
    }
}

/// A message in four parts; `Display` renders it for the build log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// What went wrong, in one sentence.
    pub(crate) what: String,
    /// Why that stops the build (or why it matters).
    pub(crate) why: String,
    /// What to do about it.
    pub(crate) todo: String,
    /// The underlying cause: an OS error, a parser's message, the offending line.
    pub(crate) cause: Option<String>,
}

/// ` !     ` before every line, ` !` alone for a blank one; parts separated by a blank line.
impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = format!("{}\n\n{}\n\n{}", self.what, self.why, self.todo);
        if let Some(cause) = &self.cause {
            text.push_str("\n\nCause: ");
            text.push_str(cause);
        }
        for line in text.lines() {
            if line.is_empty() {
                writeln!(f, "{}", PREFIX.trim_end())?;
            } else {
                writeln!(f, "{PREFIX}{line}")?;
            }
        }
        Ok(())
    }
}

fn message(what: &str, why: &str, todo: &str, cause: Option<String>) -> Message {
    Message {
        what: what.to_owned(),
        why: why.to_owned(),
        todo: todo.to_owned(),
        cause,
    }
}

/// Why molt needs the Procfile's web line; shared by the Procfile messages.
const WHY_WEB: &str = "molt runs the app's web process as a pool of workers, and it takes \
    that process from the web line of the Procfile at the root of the app.";

/// An example web line, for the messages that ask for one.
const WEB_EXAMPLE: &str = "    web: bundle exec unicorn -p $PORT -c config/unicorn.rb";

/// There is no Procfile at the root of the app.
pub(crate) fn no_procfile(platform: Platform, error: &io::Error) -> Message {
    message(
        "molt found no Procfile in the app.",
        WHY_WEB,
        &format!(
            "Add a file named Procfile at the root of the app with the command that starts \
             its web server on $PORT, for example\n{WEB_EXAMPLE}\n{}. To build without molt, \
             remove the molt buildpack.",
            platform.again()
        ),
        Some(format!("reading Procfile: {error}")),
    )
}

/// The Procfile exists but cannot be read.
pub(crate) fn unreadable_procfile(error: &io::Error) -> Message {
    message(
        "molt could not read the app's Procfile.",
        WHY_WEB,
        "Make the Procfile a readable text file (UTF-8) at the root of the app, then build again.",
        Some(format!("reading Procfile: {error}")),
    )
}

/// The Procfile has no `web` process.
pub(crate) fn no_web_process(platform: Platform, names: &[&str]) -> Message {
    let defined = if names.is_empty() {
        "The Procfile defines no process.".to_owned()
    } else {
        format!("The Procfile defines {} and no web.", names.join(", "))
    };
    message(
        "The app's Procfile has no web process.",
        &format!(
            "{WHY_WEB} Only the web process receives HTTP requests, so there is nothing for \
             molt to run."
        ),
        &format!(
            "Add a line that starts the app's web server on $PORT, for example\n{WEB_EXAMPLE}\n\
             {}. To build without molt, remove the molt buildpack.",
            platform.again()
        ),
        Some(defined),
    )
}

/// The Procfile cannot be used as it is.
pub(crate) fn bad_procfile(platform: Platform, error: &ProcfileError) -> Message {
    match error {
        ProcfileError::EmptyWebCommand { line, text } => message(
            "The Procfile's web process has no command.",
            "molt runs the web command as a pool of workers, so it needs a command to run; \
             without molt the app would crash at boot too.",
            &format!(
                "Write the command that starts the web server after `web:`, for example\n\
                 {WEB_EXAMPLE}\n{}.",
                platform.again()
            ),
            Some(format!("line {} of the Procfile is `{text}`.", line + 1)),
        ),
    }
}

/// A Procfile line that is not `name: command`, which Heroku ignores: a warning.
pub(crate) fn ignored_procfile_line(line: &Ignored) -> String {
    format!(
        "Warning: line {} of the Procfile, `{}`, is not `name: command`; it defines no process.",
        line.line + 1,
        line.text
    )
}

/// `molt.toml` or a `MOLT_*` variable is invalid.
pub(crate) fn invalid_settings(platform: Platform, error: &ConfigError) -> Message {
    let source = match platform {
        Platform::Heroku => "molt.toml and the MOLT_* config vars",
        Platform::Cnb => "molt.toml and the MOLT_* build environment variables",
    };
    message(
        "molt's settings are invalid.",
        &format!(
            "The build checks {source} as molt checks them when the app starts, so that a \
             mistake fails this build rather than the app's boot."
        ),
        &format!(
            "Correct the setting named below in molt.toml, or with {} (unset it to get the \
             default), {}. The README's Settings table gives every setting's accepted form.",
            platform.set_variable("MOLT_NAME=value"),
            platform.again()
        ),
        Some(error.to_string()),
    )
}

/// A warning about the settings (an unknown `MOLT_*` name), for a detail line.
pub(crate) fn settings_warning(warning: &str) -> String {
    format!("Warning: {warning}")
}

/// The build could not read the variables the platform passed.
pub(crate) fn unreadable_env_dir(path: &Path, error: &io::Error) -> Message {
    message(
        "molt could not read the build's environment variables.",
        "molt reads the MOLT_* variables to check its settings before the app is released.",
        "Retry the build. If it fails again, report it with this output.",
        Some(format!("reading {}: {error}", path.display())),
    )
}

/// The binary running the build cannot find itself to install it.
pub(crate) fn cannot_find_binary(error: &io::Error) -> Message {
    message(
        "molt could not find its own binary to install it.",
        "The build installs the molt binary that is running it, so it must know its path.",
        "Retry the build. If it fails again, report it with this output.",
        Some(format!("reading /proc/self/exe: {error}")),
    )
}

/// A file or directory of the build could not be written.
pub(crate) fn cannot_write(path: &Path, error: &io::Error) -> Message {
    message(
        &format!("molt could not write {}.", path.display()),
        "The build installs molt and its launch settings into the app, so these files must \
         be writable.",
        "Check that the app's files and directories are writable by the build user (a \
         read-only Procfile or a file named .molt are the usual causes), then build again.",
        Some(error.to_string()),
    )
}
