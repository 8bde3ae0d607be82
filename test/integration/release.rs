//! The release path end to end, as a user of the git URL meets it: `make release
//! VERSION=x.y.z` in a copy of the repository writes the version and `checksums.txt` and
//! builds the static archive; that is committed and tagged; a clean clone of the tag, with
//! no `bin/molt` and no cargo on PATH, is the buildpack Heroku fetches from the git URL,
//! and its `bin/compile` downloads the archive from a loopback server standing in for the
//! GitHub release, checks it against the committed `checksums.txt` and installs it.
//!
//! One release build, for this machine's target only (the other one costs a second build
//! and adds nothing to the path tested here).

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use crate::buildpack::{app, path_without_cargo, repo, target, ReleaseServer, Script, TempDir};
use crate::support::tools_present;

/// The version the test releases: not the crate's, so that writing it is seen.
const RELEASED: &str = "9.8.7";

/// Runs `program args` in `dir` with only what a developer's shell needs, and none of the
/// variables that `cargo test` and `make test` set for their own children.
fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    run_with(dir, program, args, &[])
}

/// The same with `vars` set.
fn run_with(dir: &Path, program: &str, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(program);
    command.args(args).current_dir(dir).env_clear();
    command.envs(vars.iter().copied());
    for name in [
        "PATH",
        "HOME",
        "TMPDIR",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_AUTO_INSTALL",
    ] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} in {} failed with {}:\n{}{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn git(dir: &Path, args: &[&str]) -> Output {
    let mut full = vec!["-c", "user.name=molt", "-c", "user.email=molt@localhost"];
    full.extend_from_slice(args);
    run(dir, "git", &full)
}

/// A git repository holding the repository's tracked files as they are in the work tree.
fn copy_of_the_repository(into: &Path) {
    let listed = run(repo(), "git", &["ls-files", "-z"]);
    for name in listed.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let from = repo().join(&name);
        if !from.is_file() {
            continue;
        }
        let to = into.join(&name);
        fs::create_dir_all(to.parent().expect("a file has a directory")).expect("writable");
        fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying {name}: {e}"));
    }
    git(into, &["init", "-q"]);
    git(into, &["add", "-A"]);
    git(into, &["commit", "-q", "-m", "before the release"]);
}

/// `make release` for `target` in `source`, into `dist`: checks what it wrote and gives
/// the archive.
fn make_release(source: &Path, dist: &Path, target: &str) -> Vec<u8> {
    // The build takes minutes of CPU while the other tests run beside it: at the lowest
    // priority and on one core, it only takes what they leave.
    let release = run_with(
        source,
        "nice",
        &[
            "-n",
            "19",
            "make",
            "release",
            &format!("VERSION={RELEASED}"),
            &format!("RELEASE_TARGETS={target}"),
            &format!("DIST={}", dist.display()),
        ],
        &[("CARGO_BUILD_JOBS", "1")],
    );
    eprintln!(
        "[make release]\n{}{}",
        String::from_utf8_lossy(&release.stdout),
        String::from_utf8_lossy(&release.stderr)
    );

    // The version is written where the buildpack and the binary read it.
    let read = |path: &Path| {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let line = format!("version = \"{RELEASED}\"");
    assert!(read(&source.join("Cargo.toml")).contains(&line));
    assert!(read(&source.join("buildpack.toml")).contains(&line));
    // checksums.txt lists the archive built, here and beside it.
    let archive_name = format!("molt-{RELEASED}-{target}.tar.gz");
    let archive = fs::read(dist.join(&archive_name)).expect("make release wrote the archive");
    let sha256 = crate::buildpack::sha256_hex(&archive);
    let checksums = read(&source.join("checksums.txt"));
    assert_eq!(checksums, read(&dist.join("checksums.txt")));
    assert!(
        checksums.contains(&format!("{sha256}  {archive_name}\n")),
        "{checksums}"
    );
    for buildpack in [
        format!("molt-buildpack-{RELEASED}-{target}.tgz"),
        format!("molt-buildpack-{RELEASED}-{target}/bin/molt"),
    ] {
        assert!(dist.join(&buildpack).is_file(), "no {buildpack}");
    }
    archive
}

#[test]
fn a_release_made_here_installs_from_a_clean_clone_with_no_cargo() {
    if !tools_present(&["git", "make", "nice", "curl", "python3", "rustup"]) {
        return;
    }
    let work = TempDir::new("release");
    let source = work.join("source");
    let dist = work.join("dist");
    copy_of_the_repository(&source);

    let target = target();
    let archive_name = format!("molt-{RELEASED}-{target}.tar.gz");
    let archive = make_release(&source, &dist, &target);
    let sha256 = crate::buildpack::sha256_hex(&archive);

    // The release commit and its tag, then the buildpack as a git URL gives it.
    git(
        &source,
        &["commit", "-q", "-am", &format!("Release {RELEASED}")],
    );
    git(&source, &["tag", &format!("v{RELEASED}")]);
    // A path of another length than the source's: nothing of it may reach the binary.
    let clone = work.join("a-clean-clone-of-the-tag");
    git(
        work.path(),
        &[
            "clone",
            "-q",
            "--branch",
            &format!("v{RELEASED}"),
            &source.to_string_lossy(),
            &clone.to_string_lossy(),
        ],
    );
    assert!(!clone.join("bin/molt").exists());
    assert!(!clone.join("target").exists());

    let server = ReleaseServer::start(HashMap::from([(
        format!("/v{RELEASED}/{archive_name}"),
        archive.clone(),
    )]));
    let app = app("pyapp");
    let cache = TempDir::new("cache");
    let env = TempDir::new("env");
    fs::write(
        env.join("MOLT_BINARY_URL"),
        server.url(&format!("v{RELEASED}")),
    )
    .expect("writable");
    let compile = Script::new(&clone, "compile")
        .env("PATH", path_without_cargo())
        .arg(app.path())
        .arg(cache.path())
        .arg(env.path())
        .run();
    compile.assert_success();
    eprintln!(
        "[bin/compile from the clone]\n{}{}",
        compile.stdout, compile.stderr
    );
    assert!(
        compile.stdout.starts_with(&format!(
            "-----> molt {RELEASED}\n       Downloading {}/{archive_name}\n       Binary: {archive_name} downloaded (sha256 verified)\n",
            server.url(&format!("v{RELEASED}"))
        )),
        "{}",
        compile.stdout
    );
    assert_eq!(server.requests(), 1);

    // What is installed is the binary make release built, and it is the released version.
    let installed = app.join(".molt/bin/molt");
    assert_eq!(
        fs::read(&installed).expect("compile installed molt"),
        fs::read(source.join(format!("target/{target}/release/molt"))).expect("built")
    );
    let version = Command::new(&installed)
        .arg("--version")
        .output()
        .expect("the installed molt runs");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("molt {RELEASED}\n")
    );
    eprintln!("[released] {sha256}  {archive_name}; installed {RELEASED} from the clean clone");

    // What the release workflow runs on the tag: a second clean build, in the clone's own
    // directory, must give the sha256 the release commit carries (the builds are bit for
    // bit reproducible).
    let verify = run_with(
        &clone,
        "nice",
        &[
            "-n",
            "19",
            "make",
            "verify-release",
            &format!("DIST={}", work.join("verified").display()),
        ],
        &[
            ("CARGO_BUILD_JOBS", "1"),
            ("GITHUB_REF_NAME", &format!("v{RELEASED}")),
        ],
    );
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(
        said.contains("every archive in checksums.txt rebuilt with the same sha256"),
        "{said}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let rebuilt = fs::read(work.join("verified").join(&archive_name)).expect("rebuilt");
    assert_eq!(crate::buildpack::sha256_hex(&rebuilt), sha256);
    eprintln!("[rebuilt in {}] {sha256}  {archive_name}", clone.display());
}
