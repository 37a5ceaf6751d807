//! The `beacon-collector` binary: parses arguments, loads the config, sets up logging and
//! calls the library. Exit codes: 0 ok, 1 runtime failure, 64 bad config or usage.

use anyhow::Context as _;
use beacon_collector::config::{Config, ConfigError, LogFormat};
use beacon_collector::host::{check, kernel::ProcRoot};
use beacon_collector::probe::{self, Probe};
use beacon_collector::{logging, processor, server};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(version, about = "High-throughput beacon ingest server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve beacons (starts the embedded processing stage unless forward.mode = "external").
    Serve(Common),
    /// Run the bundled processing stage: unix socket in, NDJSON files out.
    Process {
        #[command(flatten)]
        common: Common,
        /// Exit when stdin reaches end-of-file (used by `serve` so the child dies with it).
        #[arg(long, hide = true)]
        watch_stdin: bool,
    },
    /// Check kernel and process limits against the config (exit 0 all ok, 1 findings, 2 could
    /// not run), or emit files that fix them.
    Check {
        /// Config file (TOML). Without it the built-in defaults are checked.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Read this recorded /proc tree instead of the live one.
        #[arg(long, default_value = "/proc")]
        proc_root: PathBuf,
        /// Print a file tuned to the config instead of checking.
        #[arg(long, value_enum)]
        emit: Option<Emit>,
    },
    /// GET the collector's own /livez (or /readyz) on its configured listener: exit 0 on 200,
    /// 1 otherwise. For a container HEALTHCHECK or exec probe where there is no curl.
    Health {
        /// Config file (TOML) the collector runs with. Without it the built-in defaults.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Ask the readiness path (http.ready_path) instead of liveness (http.live_path).
        #[arg(long)]
        ready: bool,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout_seconds: u64,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Parse and validate a config file; exit 64 with the key, the problem and the fix.
    Validate {
        /// The file.
        #[arg(short, long)]
        config: PathBuf,
        /// The file the collector runs with: list the keys that differ and how each takes
        /// effect on SIGHUP (live, restarts the processing stage, needs a restart).
        #[arg(long)]
        against: Option<PathBuf>,
    },
    /// Print the annotated default configuration.
    PrintDefault,
}

#[derive(clap::Args)]
struct Common {
    /// Config file (TOML). Without it the built-in defaults are used.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Log format; overrides log.format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// /etc/sysctl.d/60-beacon-collector.conf
    Sysctl,
    /// /etc/security/limits.d/60-beacon-collector.conf
    Limits,
    /// /etc/systemd/system/beacon-collector.service
    Systemd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Auto,
    Pretty,
    Json,
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Config {
            cmd: ConfigCmd::PrintDefault,
        } => {
            print!("{}", beacon_collector::config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Cmd::Config {
            cmd: ConfigCmd::Validate { config, against },
        } => {
            let new = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return config_error(&config, &e),
            };
            println!("{}: ok", config.display());
            if !new.deprecations.is_empty() {
                println!(
                    "{} key(s) use an old name (read as before; rename them to migrate):",
                    new.deprecations.len()
                );
                for d in &new.deprecations {
                    println!("  {d}");
                }
            }
            if let Some(old_path) = against {
                let old = match Config::load(&old_path) {
                    Ok(c) => c,
                    Err(e) => return config_error(&old_path, &e),
                };
                let changes = old.changes(&new);
                if changes.is_empty() {
                    println!("no key differs from {}", old_path.display());
                }
                for c in changes {
                    println!("  {:<40} {}", c.key, c.effect.as_str());
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Check {
            config,
            json,
            proc_root,
            emit,
        } => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Some(e) = emit {
                let which = match e {
                    Emit::Sysctl => check::Emit::Sysctl,
                    Emit::Limits => check::Emit::Limits,
                    Emit::Systemd => check::Emit::Systemd,
                };
                print!("{}", check::emit(&config, which));
                return ExitCode::SUCCESS;
            }
            let color = logging::use_color(&std::io::stdout());
            ExitCode::from(check::command(
                &config,
                &ProcRoot::new(proc_root),
                json,
                color,
            ))
        }
        Cmd::Health {
            config,
            ready,
            timeout_seconds,
        } => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let probe = if ready { Probe::Ready } else { Probe::Live };
            match probe::run(&config, probe, Duration::from_secs(timeout_seconds.max(1))) {
                Ok(200) => ExitCode::SUCCESS,
                Ok(status) => {
                    eprintln!("unhealthy: {status}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Serve(common) => start(&common, |c, path| {
            server::main(c, path).map_err(anyhow::Error::from)
        }),
        Cmd::Process {
            common,
            watch_stdin,
        } => start(&common, |c, _| {
            processor::main(c, watch_stdin).context("processing stage")
        }),
    }
}

/// The config at `path`, or the built-in defaults; a bad file is reported (exit 64).
fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    match path {
        Some(p) => Config::load(p).map_err(|e| config_error(p, &e)),
        None => Ok(Config::default()),
    }
}

fn config_error(path: &Path, e: &ConfigError) -> ExitCode {
    eprintln!(
        "error: invalid configuration {}\n  key:     {}\n  problem: {}\n  fix:     {}",
        path.display(),
        e.key,
        e.problem,
        e.fix
    );
    ExitCode::from(EX_USAGE)
}

/// Loads the config, starts logging, runs `body` with the config and its absolute path.
fn start(
    common: &Common,
    body: impl FnOnce(Config, Option<PathBuf>) -> anyhow::Result<()>,
) -> ExitCode {
    let config = match load(common.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let format = match common.log_format {
        Some(LogFormatArg::Auto) => LogFormat::Auto,
        Some(LogFormatArg::Pretty) => LogFormat::Pretty,
        Some(LogFormatArg::Json) => LogFormat::Json,
        None => config.log.format,
    };
    logging::init(format, &config.log.level);
    for d in &config.deprecations {
        tracing::warn!(old = d.old, new = d.new, "config: {d}");
    }
    let path = common
        .config
        .as_ref()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    match body(config, path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
