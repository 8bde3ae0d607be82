//! molt: runs a web app as a supervised pool of workers behind a reverse proxy, and keeps
//! the pool inside the container's memory budget.

/// The memory budget, worker caps and max workers, derived from settings and facts.
mod budget;
/// The buildpack: classic Heroku and Cloud Native phases.
mod buildpack;
/// Settings: flags, environment, `molt.toml`, defaults; validation.
mod config;
/// Event lines on stdout.
mod observe;
/// The runtime: listener, proxy, dispatch, supervisor, workers.
mod run;
/// Linux facts: memory of process trees, cgroup limits; pure parsers over text.
mod sys;
/// Sizes, durations and percentages: parsed as users write them, formatted for people.
mod units;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// With `--features mimalloc`, mimalloc replaces the C library's allocator. Off by default:
/// on the proxy benchmark (test/bench/alloc.py) it did not beat musl's beyond the noise,
/// and it costs about 1 MB of RSS and a C dependency.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for an invalid configuration or command line (clap uses it too).
const EXIT_CONFIG: u8 = 2;
/// Exit status when molt fails: the app never booted, or molt itself could not run.
const EXIT_FAILURE: u8 = 1;
/// Exit status after a second SIGINT, as shells report death by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser)]
#[command(name = "molt", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run COMMAND as a pool of workers behind a proxy on $PORT.
    ///
    /// One argument is a command line run with bash (as Heroku runs Procfile lines);
    /// several are exec'd directly with every literal $PORT replaced by the worker's port.
    Run(RunArgs),
    /// Print every effective setting and where it came from, and the memory budget,
    /// caps and worker counts derived from them; exit 2 if any setting is invalid.
    Plan(SettingFlags),
    /// Show the running molt's pool: budget, caps, and a row per worker.
    Status(StatusArgs),
    /// Replace every worker of the running molt, one at a time (as SIGHUP does).
    Restart(SettingFlags),
    /// The buildpack's phases, run by the scripts in the buildpack's bin/ with the
    /// platform's arguments.
    #[command(subcommand)]
    Buildpack(BuildpackPhase),
}

// The doc comments below are the phases' help text, where backticks would show.
#[allow(clippy::doc_markdown)]
#[derive(Subcommand)]
enum BuildpackPhase {
    /// Heroku: detect BUILD_DIR. Cloud Native (CNB_BUILDPACK_DIR set): detect PLATFORM
    /// PLAN, in the app directory. Passes when the Procfile has a web process.
    Detect {
        #[arg(required = true, num_args = 1..=2, value_name = "ARG")]
        args: Vec<PathBuf>,
    },
    /// Heroku: install molt into BUILD_DIR and run the Procfile's web process under it.
    Compile {
        build_dir: PathBuf,
        cache_dir: PathBuf,
        env_dir: Option<PathBuf>,
    },
    /// Heroku: print the release YAML.
    Release { build_dir: PathBuf },
    /// Cloud Native, in the app directory: write the molt launch layer and the web process.
    Build {
        layers_dir: PathBuf,
        platform_dir: PathBuf,
        plan_path: PathBuf,
    },
}

#[derive(Args)]
struct StatusArgs {
    /// Print JSON for machines instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    settings: SettingFlags,
}

/// Flags that override `MOLT_*` variables and `molt.toml`.
// The doc comments below are the flags' help text, where backticks would show.
#[allow(clippy::doc_markdown)]
#[derive(Args)]
struct SettingFlags {
    /// Public port [default: $PORT, else 5000].
    #[arg(long, value_name = "PORT")]
    port: Option<String>,
    /// Workers to run (MOLT_MIN_WORKERS).
    #[arg(long, value_name = "N")]
    workers: Option<String>,
    /// Requests one worker takes at once, 0 for unlimited (MOLT_WORKER_CONCURRENCY).
    #[arg(long, value_name = "N")]
    concurrency: Option<String>,
    /// Readiness check: GET this path until it answers below 500 (MOLT_HEALTH_PATH).
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    settings: SettingFlags,
    /// The app's web command.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

impl SettingFlags {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("port", &self.port),
            ("min_workers", &self.workers),
            ("worker_concurrency", &self.concurrency),
            ("health_path", &self.health_path),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.clone().map(|v| (key, v)))
        .collect()
    }

    fn load(&self) -> Result<config::Loaded, ExitCode> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let app_dir = std::env::current_dir().unwrap_or_else(|_| ".".into());
        match config::load(&self.pairs(), &env, &app_dir) {
            Ok(loaded) => Ok(loaded),
            Err(err) => {
                eprintln!("molt: {err}");
                Err(ExitCode::from(EXIT_CONFIG))
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(&args),
        Command::Plan(flags) => plan(&flags),
        Command::Status(args) => control(
            &args.settings,
            if args.json { "status json" } else { "status" },
        ),
        Command::Restart(flags) => control(&flags, "restart"),
        Command::Buildpack(phase) => match phase {
            BuildpackPhase::Detect { args } => buildpack::detect(&args),
            BuildpackPhase::Compile {
                build_dir, env_dir, ..
            } => buildpack::compile(&build_dir, env_dir.as_deref()),
            BuildpackPhase::Release { .. } => buildpack::release(),
            BuildpackPhase::Build {
                layers_dir,
                platform_dir,
                ..
            } => buildpack::build(&layers_dir, &platform_dir),
        },
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let loaded = match args.settings.load() {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    observe::set_level(loaded.config.log_level);
    for warning in &loaded.warnings {
        observe::event!(Warn, "config", warning = warning);
    }
    let command = match run::AppCommand::from_words(args.command.clone()) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("molt: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run::run(loaded.config, &command) {
        Ok(run::Outcome::Stopped) => ExitCode::SUCCESS,
        Ok(run::Outcome::Interrupted) => ExitCode::from(EXIT_INTERRUPTED),
        Err(fatal) => {
            if matches!(fatal, run::Fatal::CannotBoot { .. }) {
                observe::event!(Warn, "gave_up", reason = fatal);
            }
            eprintln!("molt: {fatal}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn plan(flags: &SettingFlags) -> ExitCode {
    match flags.load() {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("molt: warning: {warning}");
            }
            print!("{}", config::plan_text(&loaded));
            let (facts, cgroup_warning) = sys::facts();
            if let Some(warning) = cgroup_warning {
                eprintln!("molt: warning: {warning}");
            }
            println!();
            print!(
                "{}",
                budget::plan_text(&budget::derive(&loaded.config, &facts))
            );
            println!();
            print!("{}", config::mode_text(&loaded.config));
            print!("{}", run::arena_text(loaded.config.malloc_arena_max));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Sends one command over the control socket of the molt this configuration describes;
/// with no port or socket given anywhere, to the one molt of this user that is running.
fn control(flags: &SettingFlags, command: &str) -> ExitCode {
    let loaded = match flags.load() {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let given = loaded.sources.iter().any(|effective| {
        matches!(effective.key, "port" | "control_socket")
            && effective.source != config::Source::Default
    });
    let socket = if given {
        loaded.config.control_socket
    } else {
        let default = config::default_control_socket(config::DEFAULT_PORT);
        let dir = default.parent().unwrap_or(std::path::Path::new("/"));
        let user = nix::unistd::geteuid().as_raw();
        let shown = command.split(' ').next().unwrap_or(command);
        match observe::control::find(dir, user, shown) {
            Ok(socket) => socket,
            Err(err) => {
                eprintln!("molt: {err}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    };
    match observe::control::request(&socket, command) {
        Ok(reply) => {
            print!("{reply}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("molt: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
