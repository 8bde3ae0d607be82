//! The web process of an app with no Procfile: the default its language buildpack gives
//! it, which molt then runs under `molt run` instead. Heroku runs an app without a
//! Procfile with the `web` process of the last buildpack's `default_process_types`
//! (classic) or the language CNB's default `web` process in `launch.toml`; molt takes the
//! same command and says which one and why (docs/buildpack.md, "Apps with no Procfile").
//!
//! The rules are those of Heroku's own buildpacks:
//!
//! - Ruby (heroku-buildpack-ruby's `LanguagePack::Rails4`..`Rails8` and `Rack`; the CNB's
//!   `get_default_process`): `railties` 4 or later in `Gemfile.lock` is Rails,
//!   `bin/rails server`, with a pid file per worker port added (the Rails branch
//!   below says why); else the `rack` gem with a `config.ru` is Rack, `rackup` (or
//!   `thin`, when the classic buildpack sees the thin gem). The CNB binds `[::]` and fails
//!   when `PORT` is unset; the classic commands default it to 5000.
//! - Node.js (heroku-buildpack-nodejs's `bin/release`; the CNB's
//!   `configure_default_processes`): a `start` script in `package.json` is `npm start`
//!   (the CNB runs it with the package manager its lockfile names: `yarn start`,
//!   `pnpm start`); else `server.js` is `node server.js`, which is what `npm start` runs
//!   then; the CNB also takes `index.js`.
//!
//! Ruby is looked at first: a Rails app keeps a `package.json` for its assets, and on Heroku
//! the Ruby buildpack runs after the Node one, so its default wins. Older Rails (before 4)
//! and anything else get no default, and the build asks for a Procfile as before.

use std::fs;
use std::path::Path;

use super::messages::Platform;

/// The default web process molt takes for an app with no Procfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DefaultWeb {
    /// The command, as a Procfile line would have it.
    pub(crate) command: String,
    /// The language buildpack whose default it is.
    pub(crate) buildpack: &'static str,
    /// What in the app chose it, as a clause: "Gemfile.lock has railties 7.1.3 (a Rails app)".
    pub(crate) because: String,
}

/// What of the app's files the choice depends on. Each bool is whether one file exists,
/// which is what the language buildpacks look at.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Default)]
pub(crate) struct AppFiles {
    pub(crate) gemfile_lock: Option<String>,
    pub(crate) config_ru: bool,
    pub(crate) package_json: Option<String>,
    pub(crate) server_js: bool,
    pub(crate) index_js: bool,
    pub(crate) yarn_lock: bool,
    pub(crate) pnpm_lock: bool,
}

impl AppFiles {
    /// Reads them from the app directory; a file that cannot be read counts as absent
    /// (the language buildpack, which ran before molt, has already failed on it).
    pub(crate) fn read(app_dir: &Path) -> AppFiles {
        let text = |name: &str| fs::read_to_string(app_dir.join(name)).ok();
        let exists = |name: &str| app_dir.join(name).is_file();
        AppFiles {
            gemfile_lock: text("Gemfile.lock"),
            config_ru: exists("config.ru"),
            package_json: text("package.json"),
            server_js: exists("server.js"),
            index_js: exists("index.js"),
            yarn_lock: exists("yarn.lock"),
            pnpm_lock: exists("pnpm-lock.yaml"),
        }
    }
}

/// The language buildpacks, as Heroku names them on both platforms.
const RUBY: &str = "heroku/ruby";
const NODEJS: &str = "heroku/nodejs";

/// The default web process for an app with these files on this platform, if its language
/// buildpack would give it one.
pub(crate) fn choose(files: &AppFiles, platform: Platform) -> Option<DefaultWeb> {
    ruby(files, platform).or_else(|| node(files, platform))
}

fn ruby(files: &AppFiles, platform: Platform) -> Option<DefaultWeb> {
    let gems = Gems::parse(files.gemfile_lock.as_deref()?);
    if let Some(version) = gems.version("railties") {
        if major(version)? < 4 {
            return None;
        }
        // One thing is added to the buildpacks' command: a pid file per worker port.
        // `rails server` writes tmp/pids/server.pid and exits ("A server is already
        // running") when it finds a live process's, and molt runs several instances in
        // one directory (a pool, or a replacement beside the instance it replaces).
        let command = match platform {
            Platform::Heroku => {
                "bin/rails server -p ${PORT:-5000} -e $RAILS_ENV -P tmp/pids/server.${PORT:-5000}.pid"
            }
            Platform::Cnb => {
                "bin/rails server --binding \"[::]\" --port \"${PORT:?Error: PORT env var is not set!}\" --environment \"$RAILS_ENV\" --pid \"tmp/pids/server.${PORT}.pid\""
            }
        };
        return Some(DefaultWeb {
            command: command.to_owned(),
            buildpack: RUBY,
            because: format!(
                "Gemfile.lock has railties {version} (a Rails app); with a pid file per worker, \
                 as several run side by side"
            ),
        });
    }
    if gems.version("rack").is_none() || !files.config_ru {
        return None;
    }
    let (command, because) = match platform {
        Platform::Heroku if gems.version("thin").is_some() => (
            "bundle exec thin start -R config.ru -e $RACK_ENV -p ${PORT:-5000}",
            "Gemfile.lock has rack and thin, and the app has a config.ru (a Rack app on Thin)",
        ),
        Platform::Heroku => (
            "bundle exec rackup config.ru -p ${PORT:-5000}",
            "Gemfile.lock has rack and the app has a config.ru (a Rack app)",
        ),
        Platform::Cnb => (
            "bundle exec rackup --host \"[::]\" --port \"${PORT:?Error: PORT env var is not set!}\"",
            "Gemfile.lock has rack and the app has a config.ru (a Rack app)",
        ),
    };
    Some(DefaultWeb {
        command: command.to_owned(),
        buildpack: RUBY,
        because: because.to_owned(),
    })
}

fn node(files: &AppFiles, platform: Platform) -> Option<DefaultWeb> {
    let package: serde_json::Value = serde_json::from_str(files.package_json.as_deref()?).ok()?;
    let has_start = package
        .get("scripts")
        .and_then(|scripts| scripts.get("start"))
        .and_then(serde_json::Value::as_str)
        .is_some_and(|start| !start.trim().is_empty());
    if has_start {
        let manager = match platform {
            Platform::Cnb if files.pnpm_lock => "pnpm",
            Platform::Cnb if files.yarn_lock => "yarn",
            _ => "npm",
        };
        return Some(DefaultWeb {
            command: format!("{manager} start"),
            buildpack: NODEJS,
            because: "package.json has a start script".to_owned(),
        });
    }
    let (file, because) = if files.server_js {
        let because = match platform {
            Platform::Heroku => {
                "package.json has no start script and the app has a server.js, which npm start runs"
            }
            Platform::Cnb => "package.json has no start script and the app has a server.js",
        };
        ("server.js", because)
    } else if files.index_js && platform == Platform::Cnb {
        (
            "index.js",
            "package.json has no start script and the app has an index.js",
        )
    } else {
        return None;
    };
    Some(DefaultWeb {
        command: format!("node {file}"),
        buildpack: NODEJS,
        because: because.to_owned(),
    })
}

/// The major version of a gem version such as `7.1.3` or `8.0.0.beta1`.
fn major(version: &str) -> Option<u64> {
    version.split('.').next()?.parse().ok()
}

/// The gems a `Gemfile.lock` resolves: the `specs:` entries of its `GEM`, `GIT` and
/// `PATH` sections, four spaces in (`    railties (7.1.3)`); deeper lines are their
/// dependencies' requirements.
struct Gems(Vec<(String, String)>);

impl Gems {
    fn parse(text: &str) -> Gems {
        let mut gems = Vec::new();
        let mut in_sources = false;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if !line.starts_with(' ') {
                in_sources = matches!(line.trim(), "GEM" | "GIT" | "PATH");
                continue;
            }
            let Some(entry) = line.strip_prefix("    ") else {
                continue;
            };
            if !in_sources || entry.starts_with(' ') {
                continue;
            }
            if let Some((name, rest)) = entry.split_once(" (") {
                let version = rest.trim_end_matches(')');
                // A platform suffix (`1.16.0-x86_64-linux`) is not part of the version.
                let version = version.split('-').next().unwrap_or(version);
                gems.push((name.to_owned(), version.to_owned()));
            }
        }
        Gems(gems)
    }

    fn version(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(gem, _)| gem == name)
            .map(|(_, version)| version.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAILS_LOCK: &str = "GEM
  remote: https://rubygems.org/
  specs:
    actionpack (7.1.3)
      rack (>= 2.2.4)
      railties (= 7.1.3)
    nokogiri (1.16.0-x86_64-linux)
    rack (3.0.9)
    railties (7.1.3)
      actionpack (= 7.1.3)

PLATFORMS
  x86_64-linux

DEPENDENCIES
  rails (~> 7.1)
  thin

BUNDLED WITH
   2.5.3
";

    fn rack_lock(extra: &str) -> String {
        format!("GEM\n  remote: https://rubygems.org/\n  specs:\n    rack (2.2.8)\n{extra}\nDEPENDENCIES\n  rack\n")
    }

    #[test]
    fn gemfile_lock_gems_are_the_specs_of_the_sources() {
        let gems = Gems::parse(RAILS_LOCK);
        assert_eq!(gems.version("railties"), Some("7.1.3"));
        assert_eq!(gems.version("nokogiri"), Some("1.16.0"));
        // A dependency's requirement and a DEPENDENCIES entry are not resolved gems.
        assert_eq!(gems.version("thin"), None);
        assert_eq!(gems.version("rails"), None);
        assert_eq!(
            Gems::parse(&RAILS_LOCK.replace('\n', "\r\n")).version("rack"),
            Some("3.0.9")
        );
    }

    #[test]
    fn rails_4_and_later_run_rails_server() {
        let files = AppFiles {
            gemfile_lock: Some(RAILS_LOCK.to_owned()),
            config_ru: true,
            package_json: Some(r#"{"scripts": {"start": "node x.js"}}"#.to_owned()),
            ..AppFiles::default()
        };
        assert_eq!(
            choose(&files, Platform::Heroku),
            Some(DefaultWeb {
                command:
                    "bin/rails server -p ${PORT:-5000} -e $RAILS_ENV -P tmp/pids/server.${PORT:-5000}.pid"
                        .to_owned(),
                buildpack: "heroku/ruby",
                because: "Gemfile.lock has railties 7.1.3 (a Rails app); with a pid file per \
                          worker, as several run side by side"
                    .to_owned(),
            })
        );
        assert_eq!(
            choose(&files, Platform::Cnb).unwrap().command,
            "bin/rails server --binding \"[::]\" --port \"${PORT:?Error: PORT env var is not set!}\" --environment \"$RAILS_ENV\" --pid \"tmp/pids/server.${PORT}.pid\""
        );
        let old = AppFiles {
            gemfile_lock: Some(RAILS_LOCK.replace("railties (7.1.3)", "railties (3.2.22)")),
            ..AppFiles::default()
        };
        assert_eq!(choose(&old, Platform::Heroku), None);
    }

    #[test]
    fn rack_needs_a_config_ru_and_runs_rackup_or_thin() {
        let mut files = AppFiles {
            gemfile_lock: Some(rack_lock("")),
            ..AppFiles::default()
        };
        assert_eq!(choose(&files, Platform::Heroku), None);
        files.config_ru = true;
        assert_eq!(
            choose(&files, Platform::Heroku).unwrap().command,
            "bundle exec rackup config.ru -p ${PORT:-5000}"
        );
        assert_eq!(
            choose(&files, Platform::Cnb).unwrap().command,
            "bundle exec rackup --host \"[::]\" --port \"${PORT:?Error: PORT env var is not set!}\""
        );
        files.gemfile_lock = Some(rack_lock("    thin (1.8.2)\n"));
        assert_eq!(
            choose(&files, Platform::Heroku).unwrap().command,
            "bundle exec thin start -R config.ru -e $RACK_ENV -p ${PORT:-5000}"
        );
    }

    #[test]
    fn node_start_script_then_server_js_then_index_js_on_cnb() {
        let start = AppFiles {
            package_json: Some(r#"{"scripts": {"start": "node app.js"}}"#.to_owned()),
            server_js: true,
            ..AppFiles::default()
        };
        assert_eq!(
            choose(&start, Platform::Heroku),
            Some(DefaultWeb {
                command: "npm start".to_owned(),
                buildpack: "heroku/nodejs",
                because: "package.json has a start script".to_owned(),
            })
        );
        let yarn = AppFiles {
            yarn_lock: true,
            ..start
        };
        assert_eq!(choose(&yarn, Platform::Cnb).unwrap().command, "yarn start");
        assert_eq!(
            choose(&yarn, Platform::Heroku).unwrap().command,
            "npm start"
        );

        let server = AppFiles {
            package_json: Some(r#"{"name": "x", "scripts": {"test": "t"}}"#.to_owned()),
            server_js: true,
            index_js: true,
            ..AppFiles::default()
        };
        assert_eq!(
            choose(&server, Platform::Heroku).unwrap().command,
            "node server.js"
        );
        assert_eq!(
            choose(&server, Platform::Cnb).unwrap().command,
            "node server.js"
        );

        let index = AppFiles {
            package_json: Some("{}".to_owned()),
            index_js: true,
            ..AppFiles::default()
        };
        assert_eq!(choose(&index, Platform::Heroku), None);
        assert_eq!(
            choose(&index, Platform::Cnb).unwrap().command,
            "node index.js"
        );
    }

    #[test]
    fn no_default_without_a_language_buildpacks_rule() {
        for files in [
            AppFiles::default(),
            // Invalid JSON, an empty start script, a server.js with no package.json.
            AppFiles {
                package_json: Some("{".to_owned()),
                server_js: true,
                ..AppFiles::default()
            },
            AppFiles {
                package_json: Some(r#"{"scripts": {"start": " "}}"#.to_owned()),
                ..AppFiles::default()
            },
            AppFiles {
                server_js: true,
                ..AppFiles::default()
            },
            AppFiles {
                gemfile_lock: Some("GEM\n  specs:\n    sinatra (4.0.0)\n".to_owned()),
                config_ru: true,
                ..AppFiles::default()
            },
        ] {
            assert_eq!(choose(&files, Platform::Heroku), None, "{files:?}");
            assert_eq!(choose(&files, Platform::Cnb), None, "{files:?}");
        }
    }
}
