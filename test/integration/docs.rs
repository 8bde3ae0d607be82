//! The documentation's links and its set-up commands.
//!
//! Every relative Markdown link in README.md, ARCHITECTURE.md (when it exists) and each
//! `docs/*.md` page, `[text](path)` or `[text](path#anchor)`, must name a file or directory of
//! the repository, relative to the file that links, and an anchor into a Markdown file must
//! be one of that file's headings as GitHub makes heading anchors: the heading's text in
//! lower case, each space a `-`, every punctuation character but `-` and `_` dropped, and
//! `-1`, `-2`, ... after a repeated one. External links (`https:`, `http:`, `mailto:`, any
//! scheme) are not followed. Links inside code (fenced blocks, `code spans`) are not links.
//!
//! README's "Set up on a fresh machine" must also still give the two commands a newcomer
//! runs first, `make demo` and `make test`.

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::support::temp_path;

/// Root files that may not exist yet. When one exists it is checked like every other page;
/// until then a link to it without an anchor is accepted.
const MAY_BE_ABSENT: &[&str] = &["ARCHITECTURE.md"];

/// The heading of README's set-up section, and the commands it must give.
const SET_UP_HEADING: &str = "Set up on a fresh machine";
const SET_UP_COMMANDS: &[&str] = &["make demo", "make test"];

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// The Markdown files whose links are checked: README.md, the root files of
/// [`MAY_BE_ABSENT`] that exist, and every `docs/*.md`.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    files.extend(
        MAY_BE_ABSENT
            .iter()
            .map(|name| root.join(name))
            .filter(|path| path.is_file()),
    );
    let docs = root.join("docs");
    let mut pages: Vec<PathBuf> = fs::read_dir(&docs)
        .unwrap_or_else(|err| panic!("reading {}: {err}", docs.display()))
        .map(|entry| entry.expect("a docs/ entry can be read").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    assert!(!pages.is_empty(), "docs/ has no Markdown page");
    files.extend(pages);
    files
}

// ---------------------------------------------------------------------------------------
// Reading Markdown
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Text that Markdown renders: headings, paragraphs, lists, tables.
    Prose,
    /// A line inside a fenced code block.
    Code,
    /// A fence that opens or closes a code block.
    Fence,
}

struct Line<'a> {
    /// From 1, as an editor counts.
    number: usize,
    text: &'a str,
    kind: Kind,
}

/// The lines of `text`, each marked as prose, fenced code or a fence (three or more
/// backticks or tildes, indented at most three spaces; a block closes at a fence of the
/// same character at least as long, with nothing after it).
fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut open: Option<(char, usize)> = None;
    for (index, text) in text.lines().enumerate() {
        let trimmed = text.trim_start_matches(' ');
        let indent = text.len() - trimmed.len();
        let fence = trimmed
            .chars()
            .next()
            .filter(|c| indent <= 3 && (*c == '`' || *c == '~'))
            .map(|c| (c, trimmed.chars().take_while(|x| *x == c).count()))
            .filter(|(_, run)| *run >= 3);
        let kind = match (open, fence) {
            (None, Some(fence)) => {
                open = Some(fence);
                Kind::Fence
            }
            (Some((c, len)), Some((fc, run)))
                if c == fc && run >= len && trimmed[run..].trim().is_empty() =>
            {
                open = None;
                Kind::Fence
            }
            (Some(_), _) => Kind::Code,
            (None, None) => Kind::Prose,
        };
        out.push(Line {
            number: index + 1,
            text,
            kind,
        });
    }
    out
}

/// `line` with every code span (a run of backticks up to the next run of the same length)
/// replaced by a space; a run with no closing run is literal text.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        let run = rest[start..].bytes().take_while(|b| *b == b'`').count();
        let after = &rest[start + run..];
        if let Some(end) = backtick_run(after, run) {
            out.push_str(&rest[..start]);
            out.push(' ');
            rest = &after[end + run..];
        } else {
            out.push_str(&rest[..start + run]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Where in `text` the first run of exactly `len` backticks starts.
fn backtick_run(text: &str, len: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'`' {
            let run = bytes[i..].iter().take_while(|b| **b == b'`').count();
            if run == len {
                return Some(i);
            }
            i += run;
        } else {
            i += 1;
        }
    }
    None
}

/// An ATX heading's level and text: `## Title`, optionally closed by `#`s.
fn atx_heading(line: &str) -> Option<(usize, &str)> {
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let level = trimmed.bytes().take_while(|b| *b == b'#').count();
    let rest = &trimmed[level..];
    if !(1..=6).contains(&level) || !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let title = rest.trim();
    let unclosed = title.trim_end_matches('#');
    if unclosed.is_empty() || unclosed.ends_with([' ', '\t']) {
        Some((level, unclosed.trim_end()))
    } else {
        Some((level, title))
    }
}

/// Every heading of `text`, in order, as its level and its text: ATX headings, and setext
/// headings (a paragraph line underlined with `=` for level 1 or `-` for level 2).
fn headings(text: &str) -> Vec<(usize, String)> {
    let lines = lines(text);
    let mut out = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if line.kind != Kind::Prose {
            continue;
        }
        if let Some((level, title)) = atx_heading(line.text) {
            out.push((level, title.to_owned()));
            continue;
        }
        let underline = line.text.trim();
        let level = if !underline.is_empty() && underline.bytes().all(|b| b == b'=') {
            1
        } else if !underline.is_empty() && underline.bytes().all(|b| b == b'-') {
            2
        } else {
            continue;
        };
        let Some(previous) = index.checked_sub(1).map(|i| &lines[i]) else {
            continue;
        };
        let title = previous.text.trim();
        let paragraph = previous.kind == Kind::Prose
            && !title.is_empty()
            && atx_heading(previous.text).is_none()
            && !title.starts_with(['|', '>', '-', '*', '+'])
            && title
                .split_once(". ")
                .is_none_or(|(n, _)| n.parse::<u32>().is_err());
        if line.text.len() - line.text.trim_start().len() <= 3 && paragraph {
            out.push((level, title.to_owned()));
        }
    }
    out
}

/// A heading's text as it reads once rendered: links and images are their text, code spans
/// lose their backticks. (Emphasis markers are punctuation, which [`slug`] drops anyway.)
fn rendered(heading: &str) -> String {
    let mut out = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some((text, after)) = bracketed(&rest[open + 1..]) else {
            break;
        };
        let Some(end) = after.strip_prefix('(').and_then(|dest| dest.find(')')) else {
            out.push_str(&rest[..=open]);
            rest = &rest[open + 1..];
            continue;
        };
        out.push_str(rest[..open].trim_end_matches('!'));
        out.push_str(&rendered(text));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out.replace('`', "")
}

/// The text up to the `]` that closes an already opened `[`, and what follows that `]`.
fn bracketed(text: &str) -> Option<(&str, &str)> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' if depth == 0 => return Some((&text[..i], &text[i + 1..])),
            ']' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// GitHub's anchor for a heading: lower case, each space a `-`, and of the rest only
/// letters, digits, `-` and `_` kept.
fn slug(heading: &str) -> String {
    rendered(heading)
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor GitHub gives the headings of `text`; a repeated slug gets `-1`, `-2`, ...
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, heading) in headings(text) {
        let base = slug(&heading);
        let count = seen.entry(base.clone()).or_insert(0);
        out.push(if *count == 0 {
            base
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    out
}

/// The destinations of the links on one line of prose (code spans already removed):
/// inline links and images, `[text](dest "title")` or `[text](<dest>)`, and reference
/// definitions, `[label]: dest`.
fn destinations(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let definition = line.trim_start_matches(' ');
    if line.len() - definition.len() <= 3 && definition.starts_with('[') {
        if let Some((label, after)) = bracketed(&definition[1..]) {
            if let Some(dest) = after.strip_prefix(':') {
                if !label.is_empty() {
                    out.extend(dest.split_whitespace().next().map(unbracket));
                    return out;
                }
            }
        }
    }
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let mut depth = 0usize;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = Some(i);
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let Some(end) = end else { break };
        let inner = after[..end].trim();
        let dest = if inner.starts_with('<') {
            unbracket(inner.split_once('>').map_or(inner, |(dest, _)| dest))
        } else {
            inner.split_whitespace().next().unwrap_or("").to_owned()
        };
        out.push(dest);
        rest = &after[end + 1..];
    }
    out
}

fn unbracket(dest: &str) -> String {
    dest.trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// Checking links
// ---------------------------------------------------------------------------------------

/// A link with a scheme (`https:`, `mailto:`, ...) leaves the repository: not checked.
fn is_external(dest: &str) -> bool {
    dest.split_once(':').is_some_and(|(scheme, _)| {
        scheme.len() > 1
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// `%20` and the like decoded, as a browser does before asking for the file.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path` with `.` and `..` resolved lexically, so that a missing target still has a name.
fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether the link `dest` in the file `from` resolves inside the repository at `root`;
/// the error says why not.
fn check_link(root: &Path, from: &Path, dest: &str) -> Result<(), String> {
    if dest.is_empty() {
        return Err("the link has no destination".to_owned());
    }
    if is_external(dest) {
        return Ok(());
    }
    let (path, anchor) = match dest.split_once('#') {
        Some((path, anchor)) => (percent_decoded(path), percent_decoded(anchor)),
        None => (percent_decoded(dest), String::new()),
    };
    let target = if path.is_empty() {
        from.to_path_buf()
    } else if let Some(from_root) = path.strip_prefix('/') {
        root.join(from_root)
    } else {
        from.parent()
            .expect("a document is in a directory")
            .join(&path)
    };
    let target = normalized(&target);
    let Ok(shown) = target.strip_prefix(root) else {
        return Err(format!("{} is outside the repository", target.display()));
    };
    if !target.exists() {
        if anchor.is_empty() && MAY_BE_ABSENT.iter().any(|name| shown == Path::new(name)) {
            return Ok(());
        }
        return Err(format!("{} does not exist", shown.display()));
    }
    let markdown = target.is_file() && target.extension().is_some_and(|ext| ext == "md");
    if anchor.is_empty() || !markdown {
        return Ok(());
    }
    let known = anchors(&read(&target));
    if known.contains(&anchor) {
        Ok(())
    } else {
        Err(format!(
            "{} has no heading with the anchor #{anchor}; its anchors: {}",
            shown.display(),
            known.join(" ")
        ))
    }
}

/// Every broken link of the Markdown file `file`, as `file:line: (dest) why`.
fn broken_links(root: &Path, file: &Path) -> Vec<String> {
    let text = read(file);
    let shown = file.strip_prefix(root).unwrap_or(file).display();
    let mut problems = Vec::new();
    for line in lines(&text) {
        if line.kind != Kind::Prose {
            continue;
        }
        for dest in destinations(&without_code_spans(line.text)) {
            if let Err(why) = check_link(root, file, &dest) {
                problems.push(format!("{shown}:{}: ({dest}) {why}", line.number));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = repository();
    let problems: Vec<String> = documents(&root)
        .iter()
        .flat_map(|file| broken_links(&root, file))
        .collect();
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_docs_page_is_linked_from_the_readme() {
    let root = repository();
    let readme = root.join("README.md");
    let text = read(&readme);
    let linked: Vec<PathBuf> = lines(&text)
        .iter()
        .filter(|line| line.kind == Kind::Prose)
        .flat_map(|line| destinations(&without_code_spans(line.text)))
        .filter(|dest| !is_external(dest))
        .map(|dest| normalized(&root.join(dest.split('#').next().unwrap_or(""))))
        .collect();
    let unlinked: Vec<String> = documents(&root)
        .into_iter()
        .filter(|page| page.starts_with(root.join("docs")) && !linked.contains(page))
        .map(|page| {
            page.strip_prefix(&root)
                .unwrap_or(&page)
                .display()
                .to_string()
        })
        .collect();
    assert!(unlinked.is_empty(), "README.md links no page {unlinked:?}");
}

#[test]
fn readme_set_up_section_gives_make_demo_and_make_test() {
    let text = read(&repository().join("README.md"));
    let lines = lines(&text);
    let start = lines
        .iter()
        .position(|line| {
            line.kind == Kind::Prose
                && atx_heading(line.text).is_some_and(|(_, title)| title == SET_UP_HEADING)
        })
        .unwrap_or_else(|| panic!("README.md has no heading \"{SET_UP_HEADING}\""));
    let (level, _) = atx_heading(lines[start].text).expect("found as a heading");
    let section = lines[start + 1..].iter().take_while(|line| {
        line.kind != Kind::Prose || atx_heading(line.text).is_none_or(|(l, _)| l > level)
    });
    let code: Vec<&str> = section
        .filter(|line| line.kind == Kind::Code)
        .map(|line| line.text.trim())
        .collect();
    for command in SET_UP_COMMANDS {
        assert!(
            code.iter().any(|line| line
                .strip_prefix(command)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))),
            "README.md's \"{SET_UP_HEADING}\" no longer gives `{command}` in a code block; \
             its code lines: {code:?}"
        );
    }
}

#[test]
fn slugs_follow_githubs_rules() {
    for (heading, anchor) in [
        ("Set up on a fresh machine", "set-up-on-a-fresh-machine"),
        (
            "`molt status`, `molt restart`, `molt plan`",
            "molt-status-molt-restart-molt-plan",
        ),
        (
            "With pack (Cloud Native Buildpack)",
            "with-pack-cloud-native-buildpack",
        ),
        ("Start-up and scale-up", "start-up-and-scale-up"),
        (
            "`MOLT_DISABLE` at 1.5 x: *now*!",
            "molt_disable-at-15-x-now",
        ),
        ("See [the README](../README.md) ", "see-the-readme"),
        ("Größe  µs", "größe--µs"),
    ] {
        assert_eq!(slug(heading), anchor, "the anchor of {heading:?}");
    }
    let text = "# Same\n\n## Same\n\nSame\n---\n\n```\n# Not a heading\n```\n";
    assert_eq!(anchors(text), ["same", "same-1", "same-2"]);
}

#[test]
fn the_checker_reports_missing_files_and_anchors() {
    let root = temp_path("docs-links");
    fs::create_dir_all(root.join("docs")).expect("create a docs directory");
    let page = root.join("docs/page.md");
    fs::write(
        &page,
        "# Page\n\n## `molt run`, again!\n\n\
         [to a heading](other.md#second-heading) [here](#molt-run-again) \
         [repeated](other.md#same-1) [up](../README.md) [a directory](../docs/)\n\
         [no file](missing.md) and [no heading](other.md#nope), \
         [outside](../../elsewhere.md) ![no image](../img.svg)\n\
         [external](https://example.com/x.md#y) `[in code](nowhere.md)` [unknown] (x)\n\
         ```md\n[fenced](nowhere.md)\n```\n\
         [ref]: missing-too.md\n",
    )
    .expect("write a page");
    fs::write(
        root.join("docs/other.md"),
        "## Second heading\n# Same\n# Same\n",
    )
    .expect("write");
    fs::write(root.join("README.md"), "# Readme\n").expect("write a README");
    let problems = broken_links(&root, &page);
    fs::remove_dir_all(&root).expect("remove the temporary repository");
    let expected = [
        "docs/page.md:6: (missing.md) docs/missing.md does not exist",
        "docs/page.md:6: (other.md#nope) docs/other.md has no heading with the anchor #nope",
        "docs/page.md:6: (../../elsewhere.md) ",
        "docs/page.md:6: (../img.svg) img.svg does not exist",
        "docs/page.md:11: (missing-too.md) docs/missing-too.md does not exist",
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for (problem, expected) in problems.iter().zip(expected) {
        assert!(
            problem.starts_with(expected),
            "{problem:?} is not {expected:?}..."
        );
    }
}
