//! Heroku classic buildpack phases.
//!
//! The build directory becomes the slug, which runs at `/app` with `HOME=/app`: nothing
//! written here may hold a build-time path.

use std::path::Path;
use std::process::ExitCode;

use super::messages::{Message, Platform};
use super::procfile;
use super::{
    binary, default_web_line, detail, fail, load_settings, molt_vars_in, settings_lines,
    write_file, Web, WebLine,
};

/// Classic `bin/detect`: the buildpack does not apply.
const EXIT_DETECT_FAIL: u8 = 1;

/// Where the binary goes, relative to the app (and so to `$HOME` on a dyno).
const INSTALL_PATH: &str = ".molt/bin/molt";

/// Where the Procfile as the app had it is kept.
const ORIGINAL_PROCFILE: &str = ".molt/Procfile.orig";

/// The script that puts molt on PATH. Dynos source `.profile.d/*.sh` after the config vars
/// are set, for the web process and for `heroku run` and `heroku ps:exec` shells alike
/// (a `ps:exec` shell runs them but does not load the config vars).
const PROFILE_SCRIPT: &str = ".profile.d/molt.sh";

/// Its contents: `$HOME` is `/app` on a dyno, where the build directory ends up.
const PROFILE_SCRIPT_TEXT: &str = "\
# Written by the molt buildpack: puts molt on PATH for the web process, which the Procfile
# runs as `molt run -- '<command>'`, and for a shell in the running dyno: there,
# `heroku ps:exec -d web.1`, then `molt status` (or `molt restart`, `molt plan`).
export PATH=\"$HOME/.molt/bin:$PATH\"
";

/// The release YAML: no add-ons and no default process types, since the Procfile names
/// the web process.
const RELEASE_YAML: &str = "--- {}\n";

/// `bin/detect BUILD_DIR`: passes, printing `molt`, when the Procfile has a web process,
/// or when there is no Procfile and the language buildpack gives the app a default one.
pub(crate) fn detect(build_dir: &Path) -> ExitCode {
    match Web::read(build_dir, Platform::Heroku) {
        Ok(_) => {
            println!("molt");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprint!("{message}");
            ExitCode::from(EXIT_DETECT_FAIL)
        }
    }
}

/// `bin/compile BUILD_DIR CACHE_DIR ENV_DIR`. The binary has been obtained (and cached)
/// by the script; this installs it, rewrites the Procfile and says what will happen.
pub(crate) fn compile(build_dir: &Path, env_dir: Option<&Path>) -> ExitCode {
    match compile_app(build_dir, env_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

/// `bin/release BUILD_DIR`.
pub(crate) fn release() -> ExitCode {
    print!("{RELEASE_YAML}");
    ExitCode::SUCCESS
}

fn compile_app(build_dir: &Path, env_dir: Option<&Path>) -> Result<(), Message> {
    // Everything is checked before anything is written, so a failed build leaves the
    // app as it was.
    let env = match env_dir {
        Some(dir) => molt_vars_in(dir)?,
        None => Vec::new(),
    };
    let loaded = load_settings(&env, build_dir, Platform::Heroku)?;
    let web = Web::read(build_dir, Platform::Heroku)?;
    web.warn_ignored();

    binary::install(&build_dir.join(INSTALL_PATH))?;
    write_file(&build_dir.join(PROFILE_SCRIPT), PROFILE_SCRIPT_TEXT)?;
    detail(&format!(
        "Installed {INSTALL_PATH}; {PROFILE_SCRIPT} puts it on PATH when a dyno starts"
    ));

    if let WebLine::Default(default) = &web.line {
        detail(&default_web_line(default));
    }
    if loaded.config.disable {
        // The runtime's MOLT_DISABLE would run the command without molt anyway; leaving
        // the Procfile alone makes that visible in the slug too.
        if let WebLine::Default(_) = &web.line {
            // With no Procfile the language buildpack's own default web process runs.
            detail("Procfile: none written, because MOLT_DISABLE is set: the web process runs without molt");
            detail("To run it under molt: heroku config:unset MOLT_DISABLE, then deploy again");
            return Ok(());
        }
        detail("Procfile: left as it is, because MOLT_DISABLE is set: the web process runs without molt");
        detail(&format!("web: {}", web.command()));
        detail("To run it under molt: heroku config:unset MOLT_DISABLE, then deploy again");
        return Ok(());
    }

    match &web.line {
        WebLine::Wrap { text, original } => {
            write_file(&build_dir.join(ORIGINAL_PROCFILE), &web.text)?;
            write_file(&build_dir.join(super::PROCFILE), text)?;
            detail(&format!(
                "Procfile: the web process now runs under molt; the original is kept as {ORIGINAL_PROCFILE}"
            ));
            detail(&format!("web: {}", procfile::molt_command(original)));
        }
        WebLine::UnderMolt { command } => {
            detail("Procfile: the web process already runs under molt; left as it is");
            detail(&format!("web: {command}"));
        }
        WebLine::Default(default) => {
            // The Procfile in the slug names the process types, and its web entry
            // replaces the language buildpack's default_process_types one.
            write_file(
                &build_dir.join(super::PROCFILE),
                &format!("web: {}\n", procfile::molt_command(&default.command)),
            )?;
            detail("Procfile: written with that web process under molt; add a Procfile to the app to run another");
            detail(&format!(
                "web: {}",
                procfile::molt_command(&default.command)
            ));
        }
    }
    detail(&settings_lines(&loaded, Platform::Heroku));
    detail("To run the web process without molt, with no deploy: heroku config:set MOLT_DISABLE=1");
    Ok(())
}
