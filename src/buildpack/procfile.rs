//! Procfile parsing and the rewrite of its `web` line to run under molt.
//!
//! # Grammar
//!
//! The Procfile has no formal specification on classic Heroku. Heroku's slug compiler
//! (codon, private) reads it with one regex per line. Heroku's own port of that behaviour
//! is the regex version of heroku/buildpacks-procfile (named heroku/procfile-cnb until
//! 3.0.1), used from 1.0.0 (CHANGELOG: "Re-write logic of Procfile parsing to match
//! Heroku's behavior") until PR #255 (2025); its `src/procfile.rs`, `FromStr::from_str`
//! (lines 36-52):
//!
//! - line 39: `\r\n?` is replaced by `\n` first, so CRLF and a lone CR both end a line;
//! - line 43: entries match `^[[:space:]]*([a-zA-Z0-9_-]+):?\s+(.*)[[:space:]]*`, citing
//!   codon's `lib/slug_compiler/slug.rb#L538-L545`;
//! - line 52: `filter_map(|line| re_procfile_entry.captures(line))`: a line that does not
//!   match is dropped silently; its tests parse `&&&&&`, `web:` and `: rails -s` to an
//!   empty Procfile without an error. Entries are collected into a map, so a later
//!   duplicate name replaces an earlier one.
//!
//! The current version (commit 00336165, a `winnow` parser from PR #255, specified in its
//! `SPEC.md`) is stricter and is what runs on Cloud Native Buildpacks: a colon is required
//! and may be followed by no space (`parse_value` is `preceded(space0, ..)`), a comment is
//! a line whose first non-space character is `#` (`parse_comment`; its test `comment_test`
//! shows that `I am not a comment # <--` is not one), a value must not be empty, any other
//! line is a parse error, and a duplicate key warns "Duplicate key ... The value ... will be
//! used" and keeps the later value.
//!
//! What this module accepts, and why:
//!
//! - Lines end with `\n`, `\r\n` or a lone `\r` (codon's normalisation). The ending is never
//!   part of the command, so a CRLF file does not put a `\r` inside the quoted command.
//! - A blank line holds only spaces, tabs, vertical tabs and form feeds (`[[:space:]]`
//!   without the line breaks). A comment line's first non-space character is `#`.
//! - An entry is `spaces NAME ':' spaces COMMAND`: `NAME` is `[A-Za-z0-9_-]+`, kept as
//!   written (`Web` is not `web`); `COMMAND` is the rest of the line, trailing whitespace
//!   included, as both reference versions keep it (trimming could change a command ending
//!   in `\ `). A `#` inside a command is part of it: bash decides what it means.
//! - Any other line is ignored, as the classic platform ignores it, and reported by
//!   [`Procfile::ignored`] so a buildpack phase can warn. Erroring, as the CNB parser does,
//!   would fail the build of an app that runs on Heroku today; on CNB, heroku/procfile
//!   rejects such a file itself.
//! - Duplicate names: the last one is the effective one ([`Procfile::get`]).
//! - The effective `web` entry with an empty command is an error
//!   ([`ProcfileError::EmptyWebCommand`]): molt would have nothing to run, and Heroku would
//!   crash the dyno. Empty commands of other process types are kept: not molt's business.
//!
//! Where this differs from codon's regex, molt accepts the forms that the Dev Center
//! (`<process type>: <command>`), foreman and the CNB parser accept: `web:cmd` with no space
//! after the colon (codon's `:?\s+` needs one). It does not accept codon's colon-less
//! `web cmd`, which only codon reads as an entry (heroku/buildpacks-procfile issue #73 calls
//! the lax form a source of confusing runtime failures). Either way the rewrite changes only
//! the bytes of the command, never the name, colon or spacing before it, so every parser
//! sees the same process types on the same lines after the rewrite as before it.
//!
//! # The rewrite
//!
//! Heroku runs a Procfile command as `bash -c '<command>'` with config vars set, so a
//! `$PORT` in it is expanded by that shell. molt must instead hand the command to each
//! worker unexpanded, where the worker's own `bash -c` expands its own private `$PORT`.
//! The command is therefore wrapped in single quotes, inside which bash and POSIX sh take
//! every byte literally; a `'` in it is written `'\''` (close, escaped quote, reopen).
//! `molt run -- 'one string'` is then one argument, which molt runs with `bash -c`.

use std::fmt;

/// The process type molt runs.
const WEB: &str = "web";

/// One `name: command` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The process type, as written.
    pub(crate) name: String,
    /// The command: the rest of the line after the colon and the spaces that follow it.
    pub(crate) command: String,
    /// The 0-based index of its line.
    pub(crate) line: usize,
}

/// A line that is neither blank, a comment, nor an entry; Heroku ignores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ignored {
    /// The 0-based index of the line.
    pub(crate) line: usize,
    /// The line without its ending.
    pub(crate) text: String,
}

/// How one line ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Lf,
    CrLf,
    /// A lone `\r`, which codon also reads as a line break.
    Cr,
    /// The last line of a file without a final newline.
    None,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Lf => "\n",
            Ending::CrLf => "\r\n",
            Ending::Cr => "\r",
            Ending::None => "",
        }
    }
}

/// One line of the original text: its content and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    content: String,
    ending: Ending,
}

/// A parsed Procfile that can give back its text byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Procfile {
    lines: Vec<Line>,
    entries: Vec<Entry>,
    ignored: Vec<Ignored>,
}

impl Procfile {
    /// Every entry in file order, duplicates included.
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The effective entry named `name`: the last one, as on Heroku.
    pub(crate) fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|entry| entry.name == name)
    }

    /// Lines that Heroku ignores because they are not `name: command`.
    pub(crate) fn ignored(&self) -> &[Ignored] {
        &self.ignored
    }
}

/// Gives back the original text, byte for byte.
impl fmt::Display for Procfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            f.write_str(&line.content)?;
            f.write_str(line.ending.as_str())?;
        }
        Ok(())
    }
}

/// What [`rewrite_web`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rewrite {
    /// The web line now runs molt; `original` is the web command it wraps.
    Rewritten { text: String, original: String },
    /// The web command already runs molt; the text is unchanged.
    AlreadyUnderMolt { command: String },
    /// There is no `web` entry; the text is unchanged.
    NoWeb,
}

/// What is wrong with a Procfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProcfileError {
    /// The effective `web` entry has nothing after its colon.
    EmptyWebCommand {
        /// The 0-based index of its line.
        line: usize,
        /// The line without its ending.
        text: String,
    },
}

/// A one-line description, for logs and error chains. The message a user sees, in its
/// four parts, is written in `buildpack::messages`, with every other buildpack message.
impl fmt::Display for ProcfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcfileError::EmptyWebCommand { line, text } => write!(
                f,
                "the web process on line {} of the Procfile has no command: `{text}`",
                line + 1
            ),
        }
    }
}

impl std::error::Error for ProcfileError {}

/// Whitespace skipped before a name and after the colon: codon's `[[:space:]]` and `\s`
/// without the line breaks, which end the line before this is asked.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0b' | '\x0c')
}

/// A character of a process type name: `[A-Za-z0-9_-]`.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Splits `text` into lines at `\n`, `\r\n` and a lone `\r`, keeping each ending.
fn split_lines(text: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let Some(at) = rest.find(['\n', '\r']) else {
            lines.push(Line {
                content: rest.to_owned(),
                ending: Ending::None,
            });
            break;
        };
        let (ending, len) = if rest[at..].starts_with("\r\n") {
            (Ending::CrLf, 2)
        } else if rest[at..].starts_with('\r') {
            (Ending::Cr, 1)
        } else {
            (Ending::Lf, 1)
        };
        lines.push(Line {
            content: rest[..at].to_owned(),
            ending,
        });
        rest = &rest[at + len..];
    }
    lines
}

/// The name and command of a line, if it is an entry.
fn entry_of(content: &str) -> Option<(&str, &str)> {
    let rest = content.trim_start_matches(is_space);
    let name_len = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
    if name_len == 0 {
        return None;
    }
    let (name, after) = rest.split_at(name_len);
    let command = after.strip_prefix(':')?.trim_start_matches(is_space);
    Some((name, command))
}

/// Parses a Procfile; see the module documentation for the grammar.
pub(crate) fn parse(text: &str) -> Result<Procfile, ProcfileError> {
    let lines = split_lines(text);
    let mut entries = Vec::new();
    let mut ignored = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.content.trim_start_matches(is_space);
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match entry_of(&line.content) {
            Some((name, command)) => entries.push(Entry {
                name: name.to_owned(),
                command: command.to_owned(),
                line: index,
            }),
            None => ignored.push(Ignored {
                line: index,
                text: line.content.clone(),
            }),
        }
    }
    let procfile = Procfile {
        lines,
        entries,
        ignored,
    };
    if let Some(web) = procfile.get(WEB) {
        if web.command.is_empty() {
            return Err(ProcfileError::EmptyWebCommand {
                line: web.line,
                text: procfile.lines[web.line].content.clone(),
            });
        }
    }
    Ok(procfile)
}

/// Whether `command` already starts molt: optional `NAME=value` assignments, an optional
/// `exec`, then a program whose file name is `molt` (`molt`, `$HOME/.molt/bin/molt`,
/// `/app/.molt/bin/molt`, quoted or not), then `run`.
fn is_under_molt(command: &str) -> bool {
    let mut words = command.split(is_space).filter(|word| !word.is_empty());
    let mut word = words.next();
    while word.is_some_and(is_assignment) {
        word = words.next();
    }
    if word == Some("exec") {
        word = words.next();
    }
    let Some(program) = word else {
        return false;
    };
    let program = program.trim_matches(['"', '\'']);
    let file_name = program.rsplit('/').next().unwrap_or(program);
    file_name == "molt" && words.next() == Some("run")
}

/// Whether `word` is a shell variable assignment such as `RAILS_ENV=production`.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Rewrites the `web` entry so that, run by Heroku as `bash -c "<command>"` with config
/// vars set, molt receives the original command text unexpanded as one argument (so each
/// worker's own bash expands its own `$PORT`): `molt run -- '<original, with each ' written
/// as '\''>'`. Only the command of the effective web line changes: other lines, comments,
/// line endings, the spacing before the command and a missing final newline stay as they
/// were. Idempotent: a web command that already runs molt (see [`is_under_molt`]) is
/// [`Rewrite::AlreadyUnderMolt`] and the text is not changed.
pub(crate) fn rewrite_web(text: &str) -> Result<Rewrite, ProcfileError> {
    let procfile = parse(text)?;
    let Some(web) = procfile.get(WEB) else {
        return Ok(Rewrite::NoWeb);
    };
    if is_under_molt(&web.command) {
        return Ok(Rewrite::AlreadyUnderMolt {
            command: web.command.clone(),
        });
    }
    let wrapped = molt_command(&web.command);
    let mut out = String::with_capacity(text.len() + wrapped.len());
    for (index, line) in procfile.lines.iter().enumerate() {
        if index == web.line {
            // The command runs to the end of the line, so it is the content's suffix.
            let prefix_len = line.content.len() - web.command.len();
            out.push_str(&line.content[..prefix_len]);
            out.push_str(&wrapped);
        } else {
            out.push_str(&line.content);
        }
        out.push_str(line.ending.as_str());
    }
    Ok(Rewrite::Rewritten {
        text: out,
        original: web.command.clone(),
    })
}

/// The rewritten command alone, for CNB's `launch.toml` and for messages:
/// `molt run -- '<original>'`, with each `'` in it written as `'\''`.
pub(crate) fn molt_command(original: &str) -> String {
    format!("molt run -- '{}'", original.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// `(name, command, line)` of every entry, for compact expectations.
    fn triples(procfile: &Procfile) -> Vec<(&str, &str, usize)> {
        procfile
            .entries()
            .iter()
            .map(|e| (e.name.as_str(), e.command.as_str(), e.line))
            .collect()
    }

    fn rewritten(text: &str) -> String {
        match rewrite_web(text).unwrap() {
            Rewrite::Rewritten { text, .. } => text,
            other => panic!("expected a rewrite of {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn parse_table() {
        type Expected = &'static [(&'static str, &'static str, usize)];
        let cases: &[(&str, &str, Expected)] = &[
            ("empty file", "", &[]),
            ("one entry", "web: rails s", &[("web", "rails s", 0)]),
            (
                "names keep case, digits, _ and -",
                "Web: a\nworker_2: b\nclock-1: c\n",
                &[("Web", "a", 0), ("worker_2", "b", 1), ("clock-1", "c", 2)],
            ),
            (
                "no space after the colon",
                "web:rails s",
                &[("web", "rails s", 0)],
            ),
            (
                "spaces and tabs before the name and after the colon",
                "  \tweb:\t  rails s",
                &[("web", "rails s", 0)],
            ),
            (
                "trailing whitespace stays in the command",
                "web: rails s \t\n",
                &[("web", "rails s \t", 0)],
            ),
            (
                "comments and blank lines are skipped but counted",
                "# top\n\n   \n  # indented\nweb: a\n",
                &[("web", "a", 4)],
            ),
            (
                "a # inside a command is kept",
                "web: a # not a comment\n",
                &[("web", "a # not a comment", 0)],
            ),
            (
                "colons inside the command are kept",
                "web: echo foo: bar\n",
                &[("web", "echo foo: bar", 0)],
            ),
            (
                "CRLF endings are not in the command",
                "release: x\r\nweb: y\r\n",
                &[("release", "x", 0), ("web", "y", 1)],
            ),
            (
                "a lone CR ends a line, as codon reads it",
                "web: a\rworker: b",
                &[("web", "a", 0), ("worker", "b", 1)],
            ),
            (
                "duplicates are all listed",
                "web: a\nweb: b\n",
                &[("web", "a", 0), ("web", "b", 1)],
            ),
            (
                "an empty non-web command is kept",
                "worker:\nweb: a\n",
                &[("worker", "", 0), ("web", "a", 1)],
            ),
            (
                "invalid lines are ignored",
                "web rails s\n: rails -s\n&&&&&\nweb : x\nwe.b: x\n",
                &[],
            ),
        ];
        for (what, text, expected) in cases {
            let procfile = parse(text).unwrap();
            assert_eq!(triples(&procfile), expected.to_vec(), "{what}: {text:?}");
            assert_eq!(
                procfile.to_string(),
                *text,
                "{what}: the text comes back whole"
            );
        }
    }

    #[test]
    fn ignored_lines_are_reported_with_their_index() {
        let procfile = parse("# c\nweb rails s\nweb: a\n&&&\n").unwrap();
        let ignored: Vec<_> = procfile
            .ignored()
            .iter()
            .map(|i| (i.line, i.text.as_str()))
            .collect();
        assert_eq!(ignored, vec![(1, "web rails s"), (3, "&&&")]);
    }

    #[test]
    fn the_last_duplicate_wins() {
        // Heroku collects entries into a map, so a later `web` replaces an earlier one.
        let procfile = parse("web: first\nworker: w\nweb: second\n").unwrap();
        assert_eq!(procfile.get("web").unwrap().command, "second");
        assert_eq!(procfile.get("web").unwrap().line, 2);
        assert_eq!(procfile.get("worker").unwrap().command, "w");
        assert_eq!(procfile.get("clock"), None);
        assert_eq!(procfile.get("Web"), None, "names are case-sensitive");
    }

    #[test]
    fn an_empty_web_command_is_an_error() {
        for (text, line, line_text) in [
            ("web:", 0, "web:"),
            ("# c\nweb:   \r\n", 1, "web:   "),
            ("web: a\nweb:\n", 1, "web:"),
        ] {
            let error = parse(text).unwrap_err();
            assert_eq!(
                error,
                ProcfileError::EmptyWebCommand {
                    line,
                    text: line_text.to_owned()
                }
            );
            assert_eq!(error, rewrite_web(text).unwrap_err());
            assert_eq!(
                error.to_string(),
                format!(
                    "the web process on line {} of the Procfile has no command: `{line_text}`",
                    line + 1
                )
            );
        }
        // An empty web line that a later one replaces is not the effective one.
        assert_eq!(
            parse("web:\nweb: a\n").unwrap().get("web").unwrap().command,
            "a"
        );
    }

    #[test]
    fn molt_command_quotes_the_original() {
        assert_eq!(
            molt_command("bundle exec puma -p $PORT"),
            "molt run -- 'bundle exec puma -p $PORT'"
        );
        assert_eq!(
            molt_command(r#"echo "it's""#),
            r#"molt run -- 'echo "it'\''s"'"#
        );
        assert_eq!(molt_command("'"), r"molt run -- ''\'''");
    }

    #[test]
    fn rewrite_table() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "only web changes; release, worker and comments stay",
                "release: rake db:migrate\nweb: bundle exec puma -p $PORT\n# note\nworker: sidekiq\n",
                "release: rake db:migrate\nweb: molt run -- 'bundle exec puma -p $PORT'\n# note\nworker: sidekiq\n",
            ),
            (
                "no final newline stays missing",
                "worker: w\nweb: node server.js",
                "worker: w\nweb: molt run -- 'node server.js'",
            ),
            (
                // Regression guard: a `\r` left in the command would be quoted into it.
                "CRLF stays CRLF and the CR stays outside the quotes",
                "web: a\r\nworker: b\r\n",
                "web: molt run -- 'a'\r\nworker: b\r\n",
            ),
            (
                "mixed endings and a lone CR stay as they were",
                "# x\r\rweb: a\rworker: b\n\r\n",
                "# x\r\rweb: molt run -- 'a'\rworker: b\n\r\n",
            ),
            (
                "the spacing before the command stays",
                "  web:\t\tpython app.py\n",
                "  web:\t\tmolt run -- 'python app.py'\n",
            ),
            (
                "no space after the colon stays that way",
                "web:python app.py\n",
                "web:molt run -- 'python app.py'\n",
            ),
            (
                "trailing whitespace goes inside the quotes",
                "web: a  \n",
                "web: molt run -- 'a  '\n",
            ),
            (
                "only the effective (last) web line changes",
                "web: old\nweb: new\n",
                "web: old\nweb: molt run -- 'new'\n",
            ),
            (
                "single quotes are closed, escaped and reopened",
                "web: sh -c 'exec python app.py'\n",
                "web: molt run -- 'sh -c '\\''exec python app.py'\\'''\n",
            ),
            (
                "a # in the command is quoted with it",
                "web: a # b\n",
                "web: molt run -- 'a # b'\n",
            ),
            (
                "ignored lines stay byte for byte",
                "web rails s\nweb: a\n&&&\n",
                "web rails s\nweb: molt run -- 'a'\n&&&\n",
            ),
        ];
        for (what, input, expected) in cases {
            assert_eq!(rewritten(input), *expected, "{what}");
        }
    }

    #[test]
    fn rewrite_reports_the_original_command() {
        assert_eq!(
            rewrite_web("web: a 'b'\n").unwrap(),
            Rewrite::Rewritten {
                text: "web: molt run -- 'a '\\''b'\\'''\n".to_owned(),
                original: "a 'b'".to_owned(),
            }
        );
    }

    #[test]
    fn no_web_leaves_the_text_alone() {
        for text in [
            "",
            "worker: w\n",
            "# web: commented out\n",
            "Web: a\n",
            "web rails s\n",
        ] {
            assert_eq!(rewrite_web(text).unwrap(), Rewrite::NoWeb, "{text:?}");
        }
    }

    #[test]
    fn commands_already_under_molt_are_left_alone() {
        for command in [
            "molt run -- 'rails s'",
            "molt run --max-workers 4 -- rails s",
            "$HOME/.molt/bin/molt run -- 'a'",
            "\"$HOME/.molt/bin/molt\" run -- 'a'",
            "/app/.molt/bin/molt run -- a",
            "exec molt run -- 'a'",
            "MOLT_MAX_WORKERS=3 molt run -- 'a'",
            "A=1 B=2 exec ./.molt/bin/molt run",
        ] {
            let text = format!("web: {command}\n");
            assert_eq!(
                rewrite_web(&text).unwrap(),
                Rewrite::AlreadyUnderMolt {
                    command: command.to_owned()
                },
                "{command}"
            );
        }
        for command in [
            "molt status",
            "moltx run",
            "molt running",
            "echo molt run",
            "x=1",
        ] {
            assert!(!is_under_molt(command), "{command}");
        }
    }

    #[test]
    fn rewriting_twice_gives_the_text_of_once() {
        for text in [
            "web: bundle exec puma -p $PORT\r\nworker: w\r\n",
            "web: sh -c 'exec python app.py'",
            "web: old\nweb: a'b\"c\n",
        ] {
            let once = rewritten(text);
            let command = parse(&once).unwrap().get("web").unwrap().command.clone();
            assert_eq!(
                rewrite_web(&once).unwrap(),
                Rewrite::AlreadyUnderMolt { command }
            );
        }
    }

    // Running the rewritten line as Heroku does.

    static UNIQUE: AtomicUsize = AtomicUsize::new(0);

    /// A fresh directory for one shell run, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("molt-procfile-test-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn canary(&self) -> PathBuf {
            self.0.join("canary")
        }

        fn victim(&self) -> PathBuf {
            self.0.join("victim")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The arguments a `molt` shell function received when `shell -c` ran the web command
    /// of `procfile` (as Heroku runs it, with `PORT=5000`), plus whether anything else ran:
    /// commands in the tests touch `$CANARY` or remove `$VICTIM` if they escape the quotes.
    fn run_web_line(shell: &str, procfile: &str, scratch: &Scratch) -> Vec<String> {
        let command = parse(procfile).unwrap().get("web").unwrap().command.clone();
        std::fs::write(scratch.victim(), "").unwrap();
        // The function prints its arguments separated by NUL, which no argument can hold.
        let script = format!("molt() {{ printf '%s\\0' \"$@\"; }}\n{command}");
        let output = Command::new(shell)
            .arg("-c")
            .arg(&script)
            .env("PORT", "5000")
            .env("CANARY", scratch.canary())
            .env("VICTIM", scratch.victim())
            .current_dir(&scratch.0)
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell} -c {script:?}: {output:?}");
        assert!(
            !scratch.canary().exists(),
            "{shell} ran more than molt: {script:?}"
        );
        assert!(
            scratch.victim().exists(),
            "{shell} ran more than molt: {script:?}"
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let mut args: Vec<String> = stdout.split('\0').map(str::to_owned).collect();
        assert_eq!(
            args.pop().as_deref(),
            Some(""),
            "output ends with a separator"
        );
        args
    }

    /// Checks that `shell` hands molt exactly `command` from the rewritten `web: command`.
    fn assert_molt_receives(shell: &str, command: &str) {
        let scratch = Scratch::new();
        let procfile = format!("release: rake db:migrate\r\nweb: {command}\r\n# end\n");
        let Rewrite::Rewritten { text, original } = rewrite_web(&procfile).unwrap() else {
            panic!("no rewrite of {procfile:?}");
        };
        assert_eq!(original, command);
        let args = run_web_line(shell, &text, &scratch);
        assert_eq!(args, ["run", "--", command], "{shell}: {text:?}");
    }

    /// Whether `/bin/sh` is dash, the `sh` that `heroku local` (foreman) uses on Debian.
    fn sh_is_dash() -> bool {
        std::fs::canonicalize("/bin/sh")
            .is_ok_and(|path| path.file_name().is_some_and(|name| name == "dash"))
    }

    const ADVERSARIAL: &[&str] = &[
        "bundle exec puma -p $PORT -C config/puma.rb",
        "node server.js --port=${PORT:-5000}",
        "sh -c 'exec python app.py'",
        "echo \"it's\"; rm -f \"$VICTIM\" #",
        "x'; touch \"$CANARY\"; '",
        "x'\\''; touch $CANARY; '\\''",
        "a\\'; touch $CANARY; #",
        "$(touch \"$CANARY\") `touch $CANARY`",
        "cd web && exec gunicorn app:app -b 0.0.0.0:$PORT",
        "FOO=bar ./bin/web | tee log; true && false || echo !! !$",
        "echo '' \"\" '\"' \"'\" \\\\ \\",
        "printf '%s\\n' *.py 日本 é\ttab",
        "echo ${X:-y} ${PORT} $((1+1)) $$ $? $@ $* $# $0 ~",
    ];

    #[test]
    fn bash_hands_molt_the_original_text_for_adversarial_commands() {
        for command in ADVERSARIAL {
            assert_molt_receives("bash", command);
        }
    }

    #[test]
    fn sh_hands_molt_the_original_text_for_adversarial_commands() {
        // `heroku local` runs Procfile lines with foreman's `sh -c`; on Debian that is dash.
        // Single quoting is POSIX, so dash must agree with bash.
        assert!(
            sh_is_dash(),
            "/bin/sh is expected to be dash on these machines"
        );
        for command in ADVERSARIAL {
            assert_molt_receives("sh", command);
        }
    }

    #[test]
    fn each_worker_expands_its_own_port() {
        // Heroku's bash expands nothing inside the quotes; molt later runs the text with
        // `bash -c` and the worker's private PORT, which is where `$PORT` takes its value.
        let scratch = Scratch::new();
        let text = rewritten("web: echo port=$PORT other=${MISSING:-default}\n");
        let args = run_web_line("bash", &text, &scratch);
        assert_eq!(args[2], "echo port=$PORT other=${MISSING:-default}");
        let worker = Command::new("bash")
            .arg("-c")
            .arg(&args[2])
            .env("PORT", "6001")
            .env_remove("MISSING")
            .output()
            .unwrap();
        assert_eq!(worker.stdout, b"port=6001 other=default\n");
    }

    /// Command text as people write it and as attackers would: quotes, expansions,
    /// operators, backslashes, globs, tabs, unicode; never a line break or NUL.
    fn command_text() -> impl Strategy<Value = String> {
        let fragment = prop_oneof![
            Just("'".to_owned()),
            Just("\"".to_owned()),
            Just("'\\''".to_owned()),
            Just("\\".to_owned()),
            Just("\\'".to_owned()),
            Just(" ".to_owned()),
            Just("\t".to_owned()),
            Just("$PORT".to_owned()),
            Just("${PORT}".to_owned()),
            Just("${X:-y}".to_owned()),
            Just("$(touch $CANARY)".to_owned()),
            Just("`touch $CANARY`".to_owned()),
            Just("; touch \"$CANARY\";".to_owned()),
            Just("&& rm -f $VICTIM".to_owned()),
            Just("&&".to_owned()),
            Just("||".to_owned()),
            Just(";".to_owned()),
            Just("|".to_owned()),
            Just("*".to_owned()),
            Just("!".to_owned()),
            Just("#".to_owned()),
            Just("é".to_owned()),
            Just("日本".to_owned()),
            Just("~".to_owned()),
            Just("{a,b}".to_owned()),
            Just(">".to_owned()),
            "[a-z]{1,6}",
            any::<char>()
                .prop_filter("no line break or NUL", |c| !matches!(c, '\n' | '\r' | '\0'))
                .prop_map(String::from),
        ];
        // A word first, so the command is not empty and does not start with spaces (the
        // parser skips those) or with `molt run` (left alone, tested above).
        ("[a-z]{1,6}", prop::collection::vec(fragment, 0..16))
            .prop_map(|(first, rest)| format!("{first}{}", rest.concat()))
            .prop_filter("not already under molt", |c| !is_under_molt(c))
    }

    /// A Procfile line other than `web`, with one of the endings.
    fn other_line() -> impl Strategy<Value = String> {
        let content = prop_oneof![
            Just("release: rake db:migrate".to_owned()),
            Just("worker: bundle exec sidekiq -c ${N:-5}".to_owned()),
            Just("# web: commented out".to_owned()),
            Just("  \t".to_owned()),
            Just(String::new()),
            Just("web rails s".to_owned()),
            "[a-z_-]{1,8}:[ \t]{0,2}[ -~]{0,20}".prop_filter("not web", |l| {
                entry_of(l).is_none_or(|(name, _)| name != WEB)
            }),
        ];
        let ending = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
        (content, ending).prop_map(|(content, ending)| content + ending)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn bash_hands_molt_the_original_text(command in command_text()) {
            assert_molt_receives("bash", &command);
        }

        #[test]
        fn sh_hands_molt_the_original_text(command in command_text()) {
            assert_molt_receives("sh", &command);
        }

        #[test]
        fn rewrite_changes_only_the_web_command_and_is_idempotent(
            before in prop::collection::vec(other_line(), 0..5),
            command in command_text(),
            web_ending in prop_oneof![Just("\n"), Just("\r\n"), Just("\r"), Just("")],
            after in prop::collection::vec(other_line(), 0..5),
        ) {
            // Lines after a web line without an ending would join it.
            let after = if web_ending.is_empty() { Vec::new() } else { after };
            let head = before.concat();
            let tail = after.concat();
            let text = format!("{head}web: {command}{web_ending}{tail}");
            let input = parse(&text).unwrap();
            let Rewrite::Rewritten { text: out, original } = rewrite_web(&text).unwrap() else {
                panic!("no rewrite of {text:?}");
            };
            prop_assert_eq!(&original, &command);
            prop_assert_eq!(
                &out,
                &format!("{head}web: {}{web_ending}{tail}", molt_command(&command))
            );
            let output = parse(&out).unwrap();
            let names = |p: &Procfile| -> Vec<(String, usize)> {
                p.entries().iter().map(|e| (e.name.clone(), e.line)).collect()
            };
            prop_assert_eq!(names(&input), names(&output));
            prop_assert_eq!(input.ignored(), output.ignored());
            prop_assert_eq!(&output.get(WEB).unwrap().command, &molt_command(&command));
            prop_assert_eq!(
                rewrite_web(&out).unwrap(),
                Rewrite::AlreadyUnderMolt { command: molt_command(&command) }
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any text as a Procfile, arbitrary or made of the characters Procfiles use:
        /// parsing and rewriting never panic.
        #[test]
        fn parse_never_panics_on_arbitrary_text(
            text in prop_oneof![any::<String>(), "[a-z_:# \t\r\n'\"$-]{0,200}"],
        ) {
            let _ = parse(&text);
            let _ = rewrite_web(&text);
        }
    }
}
