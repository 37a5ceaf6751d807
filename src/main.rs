//! The `beacon-collector` binary: parses arguments, loads config, sets up logging, binds, and
//! calls the library. Exit codes: 0 ok, 1 runtime failure, 64 bad config or usage.

use anyhow::Context as _;
use beacon_collector::config::{Config, ForwardMode, LogFormat};
use beacon_collector::ingest::listener;
use beacon_collector::{processor, supervisor, Listeners, Shutdown};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Config { cmd } => match cmd {
            ConfigCmd::PrintDefault => {
                print!("{}", beacon_collector::config::DEFAULT_TOML);
                ExitCode::SUCCESS
            }
            ConfigCmd::Validate { config } => match Config::load(&config) {
                Ok(_) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => config_error(&config, &e),
            },
        },
        Cmd::Check {
            config,
            json,
            proc_root,
            emit,
        } => check(config.as_deref(), json, &proc_root, emit),
        Cmd::Serve(common) => start(&common, serve),
        Cmd::Process {
            common,
            watch_stdin,
        } => start(&common, |c, p| process(c, p, watch_stdin)),
    }
}

fn check(path: Option<&Path>, json: bool, proc_root: &Path, emit: Option<Emit>) -> ExitCode {
    use beacon_collector::check;
    let config = match path {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => return config_error(p, &e),
        },
        None => Config::default(),
    };
    if let Some(e) = emit {
        print!(
            "{}",
            match e {
                Emit::Sysctl => check::emit_sysctl(&config),
                Emit::Limits => check::emit_limits(&config),
                Emit::Systemd => check::emit_systemd(&config),
            }
        );
        return ExitCode::SUCCESS;
    }
    let report = match check::run(&config, &beacon_collector::kernel::ProcRoot::new(proc_root)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print!("{}", report.render_table(use_color(&std::io::stdout())));
    }
    ExitCode::from(report.exit_code as u8)
}

/// Colour only on a terminal, and not with NO_COLOR or TERM=dumb.
fn use_color(stream: &impl IsTerminal) -> bool {
    stream.is_terminal()
        && std::env::var_os("NO_COLOR").is_none()
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

fn config_error(path: &Path, e: &beacon_collector::config::ConfigError) -> ExitCode {
    eprintln!(
        "error: invalid configuration {}\n  key:     {}\n  problem: {}\n  fix:     {}",
        path.display(),
        e.key,
        e.problem,
        e.fix
    );
    ExitCode::from(EX_USAGE)
}

fn start(
    common: &Common,
    body: impl FnOnce(Config, Option<PathBuf>) -> anyhow::Result<()>,
) -> ExitCode {
    let config = match &common.config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => return config_error(p, &e),
        },
        None => Config::default(),
    };
    let format = match common.log_format {
        Some(LogFormatArg::Auto) => LogFormat::Auto,
        Some(LogFormatArg::Pretty) => LogFormat::Pretty,
        Some(LogFormatArg::Json) => LogFormat::Json,
        None => config.log.format,
    };
    init_logging(format, &config.log.level);
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

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().flatten_event(true).init();
    } else {
        b.with_ansi(use_color(&std::io::stderr())).init();
    }
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // The ingest workers run on threads of their own; this runtime hosts the forwarder, the
    // admin listener, the sampler and the supervisor.
    let rt = runtime(1)?;
    rt.block_on(async move {
        let shutdown = signals();
        self_check(&config)?;
        let backlog = listener::Backlog::probe(config.server.backlog, listener::SOMAXCONN_PATH);
        backlog.log();
        let listeners = Listeners::bind(&config)?;
        let sup = (config.forward.mode == ForwardMode::Embedded).then(|| {
            let mut args: Vec<std::ffi::OsString> = vec!["process".into(), "--watch-stdin".into()];
            if let Some(p) = &config_path {
                args.push("-c".into());
                args.push(p.into());
            }
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("beacon-collector"));
            supervisor::Supervisor::start(supervisor::ChildSpec {
                program: exe,
                args,
                restart_delay: std::time::Duration::from_millis(config.processor.restart_delay_ms),
            })
        });
        let res = beacon_collector::run(config, listeners, shutdown).await;
        if let Some(s) = sup {
            s.stop().await;
        }
        res.map(|_| ()).context("serve")
    })
}

/// Runs `check` against the live system: logs each warn and fail with its fix; with
/// `check.strict` a fail stops the start.
fn self_check(config: &Config) -> anyhow::Result<()> {
    use beacon_collector::check::{self, Severity};
    let report = match check::run(config, &beacon_collector::kernel::ProcRoot::system()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("self-check skipped: {e}");
            return Ok(());
        }
    };
    for f in &report.findings {
        match f.severity {
            Severity::Ok => {}
            Severity::Warn => {
                tracing::warn!(key = %f.key, current = %f.current, recommended = %f.recommended, fix = %f.fix, "check: {}", f.why)
            }
            Severity::Fail => {
                tracing::error!(key = %f.key, current = %f.current, recommended = %f.recommended, fix = %f.fix, "check: {}", f.why)
            }
        }
    }
    tracing::info!(
        ok = report.summary.ok,
        warn = report.summary.warn,
        fail = report.summary.fail,
        "self-check done (beacon-collector check for the table)"
    );
    if config.check.strict && report.summary.fail > 0 {
        anyhow::bail!(
            "check.strict = true and the self-check found {} fail(s); fix them (see the log, or run \
             `beacon-collector check`) or set check.strict = false",
            report.summary.fail
        );
    }
    Ok(())
}

/// SIGTERM → graceful, SIGINT → fast. A second SIGINT (an impatient operator) exits at once;
/// a repeated SIGTERM (orchestrators resend it) does not cut the drain short.
///
/// The handlers are installed when this is called, not when the future is first polled, so a
/// signal that arrives during start-up is not lost to the default action (instant death).
fn signals() -> impl std::future::Future<Output = Shutdown> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
    async move {
        let kind = tokio::select! {
            _ = term.recv() => Shutdown::Graceful,
            _ = int.recv() => Shutdown::Fast,
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM again: already shutting down"),
                    _ = int.recv() => {
                        eprintln!("second SIGINT: exiting without draining");
                        std::process::exit(130);
                    }
                }
            }
        });
        kind
    }
}

fn process(config: Config, _path: Option<PathBuf>, watch_stdin: bool) -> anyhow::Result<()> {
    // One thread: the stage's work per batch is short (decode, render, append, ACK), and a
    // second worker only added wake-ups between the two.
    let rt = runtime(1)?;
    let res = rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        // Installed before anything else can take time (see `signals`).
        let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
        let l = processor::bind(&config.forward.socket_path, config.processor.socket_mode)?;
        let admin = if config.processor.admin_enabled {
            let addr = config.processor.admin_listen;
            let a = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding processor.admin_listen {addr}"))?;
            a.set_nonblocking(true)?;
            Some(a)
        } else {
            None
        };
        tracing::info!(
            socket = %config.forward.socket_path.display(),
            data_dir = %config.processor.data_dir.display(),
            "processing stage listening"
        );
        let stop = async move {
            use tokio::io::AsyncReadExt;
            let stdin_eof = async {
                if !watch_stdin {
                    return std::future::pending().await;
                }
                let mut stdin = tokio::io::stdin();
                let mut buf = [0u8; 64];
                let why = loop {
                    match stdin.read(&mut buf).await {
                        Ok(0) => break "end of file".to_string(),
                        Ok(_) => continue,
                        Err(e) => break e.to_string(),
                    }
                };
                tracing::info!(why, "parent went away (stdin closed)");
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = stdin_eof => {}
            }
        };
        let socket = config.forward.socket_path.clone();
        let res = processor::run(config, l, admin, stop).await;
        let _ = std::fs::remove_file(&socket);
        res.context("processing stage")
    });
    // Tokio reads stdin on a blocking thread that a runtime drop would wait for, and that read
    // only returns when the parent closes the pipe: the stage would hang after its work was
    // done until the supervisor killed it 10 s later. Everything is written; do not wait.
    rt.shutdown_background();
    res
}
