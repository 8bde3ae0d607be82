//! The Cloud Native Buildpack, run as the lifecycle runs it, without Docker (platforms.md,
//! "Running a CNB without Docker"): `bin/detect` and `bin/build` in the app directory with
//! the `CNB_*` variables and a platform directory; `buildpack.toml`, `package.toml`,
//! `launch.toml` and the layer's TOML parsed with `libcnb-data`, the ecosystem's own types;
//! then the web process started as the CNB launcher starts it: launch layers' `bin/` on
//! PATH, the command array exec'd directly, no shell.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use libcnb_data::buildpack::{BuildpackTarget, ComponentBuildpackDescriptor};
use libcnb_data::launch::{Launch, WorkingDirectory};
use libcnb_data::layer_content_metadata::LayerContentMetadata;
use libcnb_data::package_descriptor::PackageDescriptor;
use libcnb_data::sbom::SbomFormat;

use crate::buildpack::{
    app, buildpack, bundle, molt_binary, rails_app, repo, sha256_hex, Packaged, Phase, Script,
    TempDir, BOOT_TIMEOUT, VERSION,
};
use crate::support::{get, tools_present, wait_until, ProcessTree};

/// The buildpack's id, as `buildpack.toml` gives it.
const ID: &str = "molt/molt";

/// This machine's architecture as CNB names it (Go's `GOARCH`).
fn cnb_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A field of `/etc/os-release`, as the lifecycle reads the target distribution.
fn os_release(field: &str) -> String {
    let text = fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}=")))
        .map(|value| value.trim_matches('"').to_owned())
        .unwrap_or_default()
}

/// One run of the lifecycle's detect and build phases for molt alone.
struct Lifecycle {
    buildpack: TempDir,
    app: TempDir,
    platform: TempDir,
    /// The lifecycle's layers root; molt's own layers dir is `<root>/molt_molt`.
    layers: TempDir,
    /// Holds the plan files.
    plans: TempDir,
}

impl Lifecycle {
    fn new(fixture: &str) -> Lifecycle {
        let lifecycle = Lifecycle {
            buildpack: buildpack(Packaged::Yes),
            app: app(fixture),
            platform: TempDir::new("platform"),
            layers: TempDir::new("layers"),
            plans: TempDir::new("plans"),
        };
        fs::create_dir_all(lifecycle.platform.join("env")).expect("writable");
        fs::create_dir_all(lifecycle.bp_layers()).expect("writable");
        lifecycle
    }

    /// A user-provided variable, as `pack build --env` writes it into `<platform>/env`.
    fn platform_env(&self, name: &str, value: &str) {
        fs::write(self.platform.join("env").join(name), value).expect("writable");
    }

    /// molt's layers directory: the id with `/` escaped as `_`.
    fn bp_layers(&self) -> PathBuf {
        self.layers.join(ID.replace('/', "_"))
    }

    /// A script with only what the lifecycle keeps of the environment, plus the detect
    /// variables (build gets them too).
    fn script(&self, name: &str, plan: &Path) -> Script {
        Script::clean(self.buildpack.path(), name)
            .cwd(self.app.path())
            .env("CNB_BUILDPACK_DIR", self.buildpack.path())
            .env("CNB_PLATFORM_DIR", self.platform.path())
            .env("CNB_BUILD_PLAN_PATH", plan)
            .env("CNB_TARGET_OS", "linux")
            .env("CNB_TARGET_ARCH", cnb_arch())
            .env("CNB_TARGET_ARCH_VARIANT", "")
            .env("CNB_TARGET_DISTRO_NAME", os_release("ID"))
            .env("CNB_TARGET_DISTRO_VERSION", os_release("VERSION_ID"))
    }

    /// `bin/detect <platform> <plan>` with an empty plan.
    fn detect(&self) -> Phase {
        let plan = self.plans.join("plan.toml");
        fs::write(&plan, "").expect("writable");
        self.script("detect", &plan)
            .arg(self.platform.path())
            .arg(&plan)
            .run()
    }

    /// `bin/build <layers> <platform> <plan>` with an empty buildpack plan.
    fn build(&self) -> Phase {
        let plan = self.plans.join("bp-plan.toml");
        fs::write(&plan, "").expect("writable");
        self.script("build", &plan)
            .env("CNB_LAYERS_DIR", self.bp_layers())
            .env("CNB_BP_PLAN_PATH", &plan)
            .arg(self.bp_layers())
            .arg(self.platform.path())
            .arg(&plan)
            .run()
    }

    fn launch_toml(&self) -> Launch {
        let path = self.bp_layers().join("launch.toml");
        let text = fs::read_to_string(&path).expect("build wrote launch.toml");
        toml::from_str(&text).unwrap_or_else(|e| panic!("launch.toml does not parse: {e}\n{text}"))
    }

    fn layer(&self, name: &str) -> LayerContentMetadata {
        let text = fs::read_to_string(self.bp_layers().join(format!("{name}.toml")))
            .expect("build wrote the layer's TOML");
        toml::from_str(&text).unwrap_or_else(|e| panic!("{name}.toml does not parse: {e}\n{text}"))
    }

    /// Starts the default process as the launcher does: every launch layer's `bin/` on
    /// PATH, then `command` + `args` exec'd directly in the app directory.
    fn launch(&self) -> ProcessTree {
        self.launch_with(&[])
    }

    /// The same with the container's environment holding `vars`.
    fn launch_with(&self, vars: &[(&str, &str)]) -> ProcessTree {
        let launch = self.launch_toml();
        let defaults: Vec<_> = launch.processes.iter().filter(|p| p.default).collect();
        assert_eq!(
            defaults.len(),
            1,
            "the lifecycle allows one default process"
        );
        let process = defaults[0];

        let mut path: Vec<PathBuf> = Vec::new();
        for entry in fs::read_dir(self.bp_layers()).expect("the layers dir exists") {
            let file = entry.expect("readable").path();
            let Some(name) = file.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let is_layer_toml = file.extension().is_some_and(|e| e == "toml")
                && !["launch", "build", "store"].contains(&name);
            if is_layer_toml && self.layer(name).types.is_some_and(|t| t.launch) {
                let layer = self.bp_layers().join(name);
                // Env files would be applied here; molt's layer has none.
                for env in ["env", "env.launch", "exec.d"] {
                    assert!(
                        !layer.join(env).exists(),
                        "unexpected {env} in layer {name}"
                    );
                }
                path.push(layer.join("bin"));
            }
        }
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path = std::env::join_paths(&path).expect("paths join");

        // No shell: command[0] is looked up on PATH and exec'd.
        let program = std::env::split_paths(&path)
            .map(|dir| dir.join(&process.command[0]))
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| panic!("{} is not on the launch PATH", process.command[0]));
        let mut command = Command::new(program);
        command
            .args(&process.command[1..])
            .args(&process.args)
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.app.path())
            .env("CNB_PROCESS_TYPE", process.r#type.as_str())
            .envs(vars.iter().copied())
            .current_dir(self.app.path());
        ProcessTree::start(command)
    }
}

#[test]
fn buildpack_toml_is_a_component_buildpack_for_api_0_10() {
    let text = fs::read_to_string(repo().join("buildpack.toml")).expect("buildpack.toml exists");
    let descriptor: ComponentBuildpackDescriptor = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("buildpack.toml does not parse with libcnb-data: {e}"));
    assert_eq!(descriptor.api.to_string(), "0.10");
    let buildpack = &descriptor.buildpack;
    assert_eq!(buildpack.id.as_str(), ID);
    // bin/compile's headline and the release archive's name come from here.
    assert_eq!(buildpack.version.to_string(), VERSION);
    assert_eq!(buildpack.name.as_deref(), Some("molt"));
    assert!(buildpack
        .homepage
        .as_deref()
        .is_some_and(|h| h.starts_with("https://")));
    assert!(buildpack.description.is_some());
    assert!(!buildpack.keywords.is_empty());
    assert_eq!(buildpack.licenses.len(), 1);
    assert_eq!(
        buildpack.licenses[0].r#type.as_deref(),
        Some(env!("CARGO_PKG_LICENSE"))
    );
    assert!(buildpack.sbom_formats.contains(&SbomFormat::CycloneDxJson));
    assert!(
        descriptor.stacks.is_empty(),
        "[[stacks]] is deprecated since API 0.10"
    );
    let linux = |arch: &str| BuildpackTarget {
        os: Some("linux".to_owned()),
        arch: Some(arch.to_owned()),
        variant: None,
        distros: Vec::new(),
    };
    assert_eq!(descriptor.targets, [linux("amd64"), linux("arm64")]);
    let base_url = descriptor
        .metadata
        .as_ref()
        .and_then(|m| m.get("release"))
        .and_then(|r| r.get("base-url"))
        .and_then(|u| u.as_str())
        .expect("[metadata.release] base-url is set");
    assert!(base_url.contains("{version}"), "{base_url}");
}

/// The README's `project.toml` for Fir is `test/fixtures/fir/project.toml`, word for word:
/// a project descriptor whose group runs the language CNB, then `heroku/procfile`, then
/// molt from the image that the release workflow publishes.
#[test]
fn the_readmes_fir_project_toml_lists_molt_last_from_the_published_image() {
    let sample = fs::read_to_string(repo().join("test/fixtures/fir/project.toml"))
        .expect("the sample exists");
    let readme = fs::read_to_string(repo().join("README.md")).expect("README.md exists");
    assert!(
        readme.contains(&format!("```toml\n{sample}```\n")),
        "README.md must show test/fixtures/fir/project.toml as it is"
    );
    let project: toml::Table = toml::from_str(&sample).expect("project.toml parses");
    assert_eq!(project["_"]["schema-version"].as_str(), Some("0.2"));
    let group = project["io"]["buildpacks"]["group"]
        .as_array()
        .expect("[[io.buildpacks.group]]");
    let ids: Vec<Option<&str>> = group
        .iter()
        .map(|bp| bp.get("id").and_then(|id| id.as_str()))
        .collect();
    assert_eq!(ids, [Some("heroku/ruby"), Some("heroku/procfile"), None]);

    // The image: ghcr.io/<the homepage's GitHub owner>/molt-buildpack, as release.yml names it.
    let descriptor: ComponentBuildpackDescriptor = toml::from_str(
        &fs::read_to_string(repo().join("buildpack.toml")).expect("buildpack.toml exists"),
    )
    .expect("buildpack.toml parses");
    let homepage = descriptor.buildpack.homepage.expect("a homepage");
    let owner = homepage
        .strip_prefix("https://github.com/")
        .and_then(|rest| rest.split('/').next())
        .expect("the homepage is a GitHub repository");
    assert_eq!(
        group[2].get("uri").and_then(|uri| uri.as_str()),
        Some(format!("docker://ghcr.io/{owner}/molt-buildpack").as_str())
    );
    let workflow = fs::read_to_string(repo().join(".github/workflows/release.yml"))
        .expect("release.yml exists");
    assert!(workflow.contains("image=ghcr.io/$(printf '%s' \"$GITHUB_REPOSITORY_OWNER\" | tr '[:upper:]' '[:lower:]')/molt-buildpack"));
    assert!(workflow.contains("--publish"));
}

#[test]
fn package_toml_packages_the_buildpack_directory() {
    let text = fs::read_to_string(repo().join("package.toml")).expect("package.toml exists");
    let package: PackageDescriptor = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("package.toml does not parse with libcnb-data: {e}"));
    assert_eq!(package.buildpack.uri.to_string(), ".");
    assert!(package.dependencies.is_empty());
}

#[test]
fn detect_passes_with_a_web_process() {
    let lifecycle = Lifecycle::new("pyapp");
    let detect = lifecycle.detect();
    assert_eq!(detect.status.code(), Some(0), "{}", detect.stderr);
    assert_eq!(detect.stdout, "");
    // molt neither provides nor requires anything.
    assert_eq!(
        fs::read_to_string(lifecycle.plans.join("plan.toml")).expect("plan exists"),
        ""
    );
}

#[test]
fn detect_without_a_web_process_fails_with_100_and_says_what_to_add() {
    let lifecycle = Lifecycle::new("pyapp");
    fs::write(lifecycle.app.join("Procfile"), "worker: python3 jobs.py\n").expect("writable");
    let detect = lifecycle.detect();
    assert_eq!(detect.status.code(), Some(100));
    assert_eq!(
        detect.stderr,
        " !     The app's Procfile has no web process.
 !
 !     molt runs the app's web process as a pool of workers, and it takes that process from the web line of the Procfile at the root of the app. Only the web process receives HTTP requests, so there is nothing for molt to run.
 !
 !     Add a line that starts the app's web server on $PORT, for example
 !         web: bundle exec unicorn -p $PORT -c config/unicorn.rb
 !     then build again. To build without molt, remove the molt buildpack.
 !
 !     Cause: The Procfile defines worker and no web.
"
    );
}

#[test]
fn detect_without_a_procfile_fails_with_100() {
    let lifecycle = Lifecycle::new("pyapp");
    fs::remove_file(lifecycle.app.join("Procfile")).expect("the fixture has one");
    let detect = lifecycle.detect();
    assert_eq!(detect.status.code(), Some(100));
    assert!(
        detect
            .stderr
            .starts_with(" !     molt found no Procfile in the app.\n"),
        "{}",
        detect.stderr
    );
}

#[test]
fn build_writes_a_launch_layer_and_the_web_process_which_serves_when_launched() {
    if !tools_present(&["python3"]) {
        return;
    }
    let lifecycle = Lifecycle::new("pyapp");
    assert!(lifecycle.detect().status.success());
    let build = lifecycle.build();
    build.assert_success();
    assert!(
        build.stdout.starts_with(&format!(
            "-----> molt {VERSION}\n       Binary: packaged with the buildpack\n       Layer molt: bin/molt, on PATH at launch\n       web: molt run -- 'python3 app.py'\n"
        )),
        "{}",
        build.stdout
    );

    // launch.toml: one default web process, molt with the Procfile's command as one argument.
    let launch = lifecycle.launch_toml();
    assert_eq!(launch.processes.len(), 1);
    let web = &launch.processes[0];
    assert_eq!(web.r#type.as_str(), "web");
    assert_eq!(web.command, ["molt", "run", "--", "python3 app.py"]);
    assert!(web.args.is_empty());
    assert!(web.default);
    assert_eq!(web.working_directory, WorkingDirectory::App);

    // The layer: launch only, holding the binary under test, with its SBOM.
    let layer = lifecycle.layer("molt");
    let types = layer.types.expect("the layer has types");
    assert!(types.launch && !types.build && !types.cache);
    let installed = fs::read(lifecycle.bp_layers().join("molt/bin/molt")).expect("installed");
    assert!(installed == fs::read(molt_binary()).expect("readable"));
    let sha256 = sha256_hex(&installed);
    let metadata = layer.metadata.expect("the layer has metadata");
    assert_eq!(
        metadata.get("version").and_then(|v| v.as_str()),
        Some(VERSION)
    );
    assert_eq!(
        metadata.get("sha256").and_then(|v| v.as_str()),
        Some(sha256.as_str())
    );
    let sbom: serde_json::Value = serde_json::from_slice(
        &fs::read(lifecycle.bp_layers().join("molt.sbom.cdx.json")).expect("SBOM written"),
    )
    .expect("the SBOM is JSON");
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["components"][0]["name"], "molt");
    assert_eq!(sbom["components"][0]["version"], VERSION);
    assert_eq!(sbom["components"][0]["hashes"][0]["alg"], "SHA-256");
    assert_eq!(
        sbom["components"][0]["hashes"][0]["content"],
        sha256.as_str()
    );

    // Launch: the process is molt from the layer, and requests reach the app through it.
    let mut process = lifecycle.launch();
    assert!(
        process.wait_for_log("molt at=ready", BOOT_TIMEOUT),
        "{}",
        process.log()
    );
    let exe = fs::read_link(format!("/proc/{}/exe", process.pid())).expect("running");
    assert_eq!(exe, lifecycle.bp_layers().join("molt/bin/molt"));
    let response = get(process.port(), "/env?name=WEB_CONCURRENCY").expect("answers");
    assert_eq!((response.status, response.text().as_str()), (200, "1"));
    // `docker stop`: SIGTERM to PID 1 only.
    let status = process.stop(false);
    assert!(
        status.success(),
        "molt exited with {status}:\n{}",
        process.log()
    );
}

#[test]
fn build_with_molt_disable_leaves_the_web_process_to_the_procfile() {
    let lifecycle = Lifecycle::new("pyapp");
    lifecycle.platform_env("MOLT_DISABLE", "true");
    let build = lifecycle.build();
    build.assert_success();
    assert_eq!(
        build.stdout,
        format!(
            "-----> molt {VERSION}\n       Binary: packaged with the buildpack\n       Layer molt: bin/molt, on PATH at launch\n       web: left to the Procfile as it is, because MOLT_DISABLE is set\n       web: python3 app.py\n"
        )
    );
    assert!(!lifecycle.bp_layers().join("launch.toml").exists());
    assert!(lifecycle.bp_layers().join("molt/bin/molt").is_file());
}

#[test]
fn build_fails_on_an_invalid_setting_from_the_platform() {
    let lifecycle = Lifecycle::new("pyapp");
    lifecycle.platform_env("MOLT_WORKER_MEMORY", "lots");
    let build = lifecycle.build();
    assert_eq!(build.status.code(), Some(1));
    assert_eq!(
        build.stderr,
        " !     molt's settings are invalid.
 !
 !     The build checks molt.toml and the MOLT_* build environment variables as molt checks them when the app starts, so that a mistake fails this build rather than the app's boot.
 !
 !     Correct the setting named below in molt.toml, or with pack build --env MOLT_NAME=value (unset it to get the default), then build again. The README's Settings table gives every setting's accepted form.
 !
 !     Cause: invalid MOLT_WORKER_MEMORY=\"lots\": expected a size of at least 1MB such as 230MB, a percentage of the budget from 1% to 100% such as 45%, or auto
"
    );
    assert!(!lifecycle.bp_layers().join("launch.toml").exists());
    assert!(!lifecycle.bp_layers().join("molt").exists());
}

// ---------------------------------------------------------------------------------------
// Apps with no Procfile: the language CNB's default web process, under molt
// ---------------------------------------------------------------------------------------

/// Builds the lifecycle's app, which has no Procfile: detect passes, build says which
/// default it took and why and makes `molt run -- <command>` the default web process,
/// and the launched process serves through molt with `greeting`.
fn default_builds_and_launches(
    lifecycle: &Lifecycle,
    because: &str,
    command: &str,
    vars: &[(&str, &str)],
    greeting: &str,
) {
    assert!(!lifecycle.app.join("Procfile").exists());
    assert_eq!(lifecycle.detect().status.code(), Some(0));
    let build = lifecycle.build();
    build.assert_success();
    let expected = format!(
        "       Layer molt: bin/molt, on PATH at launch\n\
         \x20      Procfile: none in the app, so the web process is {because}\n\
         \x20      web: molt run -- '{}'\n",
        command.replace('\'', "'\\''")
    );
    assert!(build.stdout.contains(&expected), "{}", build.stdout);
    let launch = lifecycle.launch_toml();
    assert_eq!(launch.processes.len(), 1);
    assert_eq!(launch.processes[0].command, ["molt", "run", "--", command]);
    assert!(launch.processes[0].default);

    let mut process = lifecycle.launch_with(vars);
    assert!(
        wait_until(BOOT_TIMEOUT, || process.count_log("molt at=ready") >= 1),
        "{}",
        process.log()
    );
    let response = get(process.port(), "/").expect("the app answers through molt");
    assert_eq!(response.status, 200, "{}", process.log());
    assert!(response.text().starts_with(greeting), "{}", response.text());
    assert!(process.stop(false).success(), "{}", process.log());
}

/// The node fixture with no Procfile and `package_json`.
fn node_lifecycle(package_json: &str) -> Lifecycle {
    let lifecycle = Lifecycle::new("node");
    fs::remove_file(lifecycle.app.join("Procfile")).expect("the fixture has one");
    fs::write(lifecycle.app.join("package.json"), package_json).expect("writable");
    lifecycle
}

#[test]
fn node_app_without_a_procfile_launches_its_server_js() {
    if !tools_present(&["node"]) {
        return;
    }
    default_builds_and_launches(
        &node_lifecycle(r#"{"name": "fixture"}"#),
        "heroku/nodejs's default, because package.json has no start script and the app has a server.js",
        "node server.js",
        &[],
        "hello from node pid=",
    );
}

#[test]
fn node_app_without_a_procfile_launches_its_start_script() {
    if !tools_present(&["node", "npm"]) {
        return;
    }
    default_builds_and_launches(
        &node_lifecycle(r#"{"name": "fixture", "scripts": {"start": "node server.js"}}"#),
        "heroku/nodejs's default, because package.json has a start script",
        "npm start",
        &[],
        "hello from node pid=",
    );
}

#[test]
fn rack_app_without_a_procfile_launches_rackup_on_every_address() {
    if !tools_present(&["ruby", "bundle", "puma"]) {
        return;
    }
    let lifecycle = Lifecycle::new("ruby-unicorn");
    fs::remove_file(lifecycle.app.join("Procfile")).expect("the fixture has one");
    bundle(
        lifecycle.app.path(),
        "source 'https://rubygems.org'\ngem 'rack'\ngem 'puma'\n",
    );
    default_builds_and_launches(
        &lifecycle,
        "heroku/ruby's default, because Gemfile.lock has rack and the app has a config.ru (a Rack app)",
        "bundle exec rackup --host \"[::]\" --port \"${PORT:?Error: PORT env var is not set!}\"",
        &[],
        "hello from unicorn pid=",
    );
}

#[test]
fn rails_app_without_a_procfile_launches_rails_server() {
    if !tools_present(&["rails", "bundle", "puma"]) {
        return;
    }
    let lifecycle = Lifecycle::new("pyapp");
    for file in ["Procfile", "app.py"] {
        fs::remove_file(lifecycle.app.join(file)).expect("the fixture has it");
    }
    rails_app(lifecycle.app.path());
    let railties = fs::read_to_string(lifecycle.app.join("Gemfile.lock"))
        .expect("bundle wrote Gemfile.lock")
        .lines()
        .find_map(|line| line.strip_prefix("    railties ("))
        .map(|version| version.trim_end_matches(')').to_owned())
        .expect("Gemfile.lock resolves railties");
    default_builds_and_launches(
        &lifecycle,
        &format!(
            "heroku/ruby's default, because Gemfile.lock has railties {railties} (a Rails app); \
             with a pid file per worker, as several run side by side"
        ),
        "bin/rails server --binding \"[::]\" --port \"${PORT:?Error: PORT env var is not set!}\" --environment \"$RAILS_ENV\" --pid \"tmp/pids/server.${PORT}.pid\"",
        &[
            ("RAILS_ENV", "production"),
            ("SECRET_KEY_BASE", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
        ],
        "hello from rails pid=",
    );
}
