//! Cloud Native Buildpack phases, Buildpack API 0.10.
//!
//! `bin/build` writes a launch layer `molt` (its `bin/` joins PATH at launch) and a `web`
//! process that runs the Procfile's web command under molt. molt runs after
//! `heroku/procfile`, so its `web` replaces that one; the other process types stay
//! `heroku/procfile`'s.

use std::fs;
use std::io;
use std::path::Path;
use std::process::ExitCode;

use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};

use super::default_web::DefaultWeb;
use super::messages::{self, Message, Platform};
use super::procfile;
use super::{
    binary, default_web_line, detail, fail, load_settings, molt_vars_in, settings_lines,
    write_file, Web, WebLine,
};

/// CNB `bin/detect`: the buildpack does not apply (libcnb.rs's `DetectResult::Fail`).
const EXIT_DETECT_FAIL: u8 = 100;

/// The launch layer's name, also the name of its metadata and SBOM files.
const LAYER: &str = "molt";

/// The `CycloneDX` specification version the SBOM follows (`sbom-formats` in
/// `buildpack.toml` declares the `CycloneDX` JSON media type).
const CYCLONEDX_VERSION: &str = "1.4";

/// `bin/detect PLATFORM PLAN`, run in the app directory: passes when the Procfile has a
/// web process, or when there is no Procfile and the language buildpack gives the app a
/// default one. The build plan is left empty: molt neither provides nor requires anything.
pub(crate) fn detect() -> ExitCode {
    match Web::read(Path::new("."), Platform::Cnb) {
        Ok(_) => ExitCode::SUCCESS,
        Err(message) => {
            eprint!("{message}");
            ExitCode::from(EXIT_DETECT_FAIL)
        }
    }
}

/// `bin/build LAYERS PLATFORM PLAN`, run in the app directory.
pub(crate) fn build(layers_dir: &Path, platform_dir: &Path) -> ExitCode {
    match build_app(Path::new("."), layers_dir, platform_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn build_app(app_dir: &Path, layers_dir: &Path, platform_dir: &Path) -> Result<(), Message> {
    // The lifecycle sets the platform's variables in the build environment unless the
    // buildpack asks for a clear one (`clear-env`), and they are also files in
    // `<platform>/env`; both are read, the files winning as the lifecycle's own do.
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| name.starts_with("MOLT_"))
        .collect();
    env.extend(molt_vars_in(&platform_dir.join("env"))?);
    let loaded = load_settings(&env, app_dir, Platform::Cnb)?;
    let web = Web::read(app_dir, Platform::Cnb)?;
    web.warn_ignored();

    let molt_layer = layers_dir.join(LAYER);
    // Layer contents are never restored for a launch-only layer, but a directory left by
    // an earlier build step must not mix with this one.
    match fs::remove_dir_all(&molt_layer) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            return Err(messages::cannot_write(&molt_layer, &error));
        }
        _ => {}
    }
    let installed = molt_layer.join("bin/molt");
    binary::install(&installed)?;
    let sha256 = binary::sha256_hex(&installed)
        .map_err(|error| messages::cannot_write(&installed, &error))?;
    write_file(
        &layers_dir.join(format!("{LAYER}.toml")),
        &layer_metadata(&sha256),
    )?;
    write_file(
        &layers_dir.join(format!("{LAYER}.sbom.cdx.json")),
        &sbom(&sha256),
    )?;
    detail("Layer molt: bin/molt, on PATH at launch");

    if let WebLine::Default(default) = &web.line {
        detail(&default_web_line(default));
    }
    let launch_toml = layers_dir.join("launch.toml");
    if loaded.config.disable {
        // Without a web process of molt's, heroku/procfile's stands.
        match fs::remove_file(&launch_toml) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(messages::cannot_write(&launch_toml, &error));
            }
            _ => {}
        }
        if let WebLine::Default(_) = &web.line {
            detail("web: left to the language buildpack, because MOLT_DISABLE is set");
        } else {
            detail("web: left to the Procfile as it is, because MOLT_DISABLE is set");
        }
        detail(&format!("web: {}", web.command()));
        return Ok(());
    }
    match &web.line {
        // The language buildpack's default web process, with no Procfile, is replaced
        // the same way as heroku/procfile's: molt's build runs later.
        WebLine::Wrap { original, .. }
        | WebLine::Default(DefaultWeb {
            command: original, ..
        }) => {
            write_file(&launch_toml, &launch(original))?;
            detail(&format!("web: {}", procfile::molt_command(original)));
        }
        WebLine::UnderMolt { command } => {
            // heroku/procfile's web process already runs molt, which is now on PATH.
            detail("web: the Procfile's web process already runs under molt; left as it is");
            detail(&format!("web: {command}"));
        }
    }
    detail(&settings_lines(&loaded, Platform::Cnb));
    detail(
        "To run the web process without molt: set MOLT_DISABLE=1 in the container's environment",
    );
    Ok(())
}

/// `launch.toml`: the default `web` process, `molt run -- <command>`. There is no shell
/// at launch: the launcher execs `command` as an argv, so the original command is one
/// argument, which molt runs with `bash -c` in each worker, as Heroku runs Procfile lines.
fn launch(original: &str) -> String {
    let mut command = Array::new();
    for word in ["molt", "run", "--", original] {
        command.push(word);
    }
    let mut process = Table::new();
    process["type"] = value("web");
    process["command"] = value(command);
    process["default"] = value(true);
    let mut processes = ArrayOfTables::new();
    processes.push(process);
    let mut doc = DocumentMut::new();
    doc["processes"] = Item::ArrayOfTables(processes);
    doc.to_string()
}

/// `<layers>/molt.toml`: a launch layer, neither for later build steps nor cached (the
/// binary comes with the buildpack, so there is nothing to save by caching it).
fn layer_metadata(sha256: &str) -> String {
    let mut doc = DocumentMut::new();
    let mut types = Table::new();
    types["launch"] = value(true);
    types["build"] = value(false);
    types["cache"] = value(false);
    doc["types"] = Item::Table(types);
    let mut metadata = Table::new();
    metadata["version"] = value(env!("CARGO_PKG_VERSION"));
    metadata["sha256"] = value(sha256);
    doc["metadata"] = Item::Table(metadata);
    doc.to_string()
}

/// A `CycloneDX` SBOM for the layer: one component, the molt binary.
fn sbom(sha256: &str) -> String {
    let bom = serde_json::json!({
        "bomFormat": "CycloneDX",
        "specVersion": CYCLONEDX_VERSION,
        "version": 1,
        "components": [{
            "type": "application",
            "bom-ref": "molt",
            "name": "molt",
            "version": env!("CARGO_PKG_VERSION"),
            "description": env!("CARGO_PKG_DESCRIPTION"),
            "licenses": [{ "license": { "id": env!("CARGO_PKG_LICENSE") } }],
            "hashes": [{ "alg": "SHA-256", "content": sha256 }],
        }],
    });
    let mut text = serde_json::to_string_pretty(&bom).expect("a JSON value always serialises");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_toml_holds_the_command_as_one_argument() {
        let original = r#"bundle exec unicorn -p $PORT -c "config/unicorn.rb" 'x' \ # y"#;
        let doc: DocumentMut = launch(original).parse().unwrap();
        let process = doc["processes"]
            .as_array_of_tables()
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(process["type"].as_str(), Some("web"));
        assert_eq!(process["default"].as_bool(), Some(true));
        let command: Vec<&str> = process["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|word| word.as_str().unwrap())
            .collect();
        assert_eq!(command, ["molt", "run", "--", original]);
    }

    #[test]
    fn layer_is_for_launch_only() {
        let doc: DocumentMut = layer_metadata("ab12").parse().unwrap();
        assert_eq!(doc["types"]["launch"].as_bool(), Some(true));
        assert_eq!(doc["types"]["build"].as_bool(), Some(false));
        assert_eq!(doc["types"]["cache"].as_bool(), Some(false));
        assert_eq!(doc["metadata"]["sha256"].as_str(), Some("ab12"));
    }
}
