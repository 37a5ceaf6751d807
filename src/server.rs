//! The collector process: binding its sockets, `run` (workers, forwarder, admin, sampler,
//! driven through the shutdown phases), and [`main`], the `serve` command around it (self-check,
//! signals, the embedded processing stage).

use crate::config::{Config, ForwardMode};
use crate::host::{check, kernel, sampler};
use crate::ingest::{self, listener, SharedState};
use crate::lifecycle::{CancellationToken, Phase, Shutdown};
use crate::{admin, forwarder, metrics, spool, supervisor, tasks};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A socket of the collector could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A beacon listener.
    #[error(transparent)]
    Beacon(#[from] listener::ListenError),
    /// The admin listener.
    #[error(transparent)]
    Admin(#[from] admin::BindError),
}

/// The sockets `run` serves, bound before it starts (so bind errors surface first and tests
/// can bind port 0 and read the address).
pub struct Listeners {
    /// `SO_REUSEPORT` beacon listeners, all on the same address.
    pub(crate) beacon: Vec<std::net::TcpListener>,
    /// The admin listener, if enabled.
    pub(crate) admin: Option<std::net::TcpListener>,
    /// `SO_REUSEPORT` HTTPS listeners on `tls.listen` (empty unless `tls.enabled`).
    pub(crate) tls: Vec<std::net::TcpListener>,
}

impl Listeners {
    /// Binds everything the config asks for.
    pub fn bind(config: &Config) -> Result<Self, BindError> {
        let beacon = match listener::inherited()? {
            Some(socks) => {
                tracing::info!(
                    sockets = socks.len(),
                    "using the listening sockets passed by the service manager (server.listen, backlog and listeners are its)"
                );
                socks
            }
            None => {
                if !config.server.share_port {
                    listener::refuse_shared_port(config.server.listen)?;
                }
                listener::bind(&config.server, config.listeners())?
            }
        };
        let admin = if config.admin.enabled {
            Some(admin::bind("admin.listen", config.admin.listen)?)
        } else {
            None
        };
        // Bound here even when the service manager passed the plain sockets (its unit
        // names the plain port only).
        let tls = if config.tls.enabled {
            if !config.server.share_port {
                listener::refuse_shared_port(config.tls.listen)?;
            }
            listener::bind_addr(config.tls.listen, config.server.backlog, config.listeners())?
        } else {
            Vec::new()
        };
        Ok(Self { beacon, admin, tls })
    }

    /// Address of the beacon listener.
    pub fn beacon_addr(&self) -> Option<std::net::SocketAddr> {
        self.beacon.first().and_then(|l| l.local_addr().ok())
    }

    /// Address of the HTTPS listener, when TLS is on.
    pub fn tls_addr(&self) -> Option<std::net::SocketAddr> {
        self.tls.first().and_then(|l| l.local_addr().ok())
    }
}

/// What `run` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    /// Beacons answered 2xx.
    pub accepted: u64,
    /// Records the processing stage acknowledged during this run (replays from an earlier
    /// run included).
    pub acknowledged: u64,
    /// Records left in the spool at exit (delivered at the next start).
    pub remaining: u64,
}

/// Why `run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be registered with the runtime.
    #[error("listener: {0}")]
    Listener(std::io::Error),
    /// `accept` failed in a way that makes the listener unusable.
    #[error("accept: {0}")]
    Accept(std::io::Error),
    /// The spool could not be opened or recovered.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// The TLS certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::config::ConfigError),
}

/// Serves beacons on `listeners` until `shutdown` resolves (or a listener fails), then drains
/// and flushes as the config says. Requires a Tokio runtime with the time and I/O drivers.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = Shutdown>,
) -> Result<RunReport, RunError> {
    run_reloadable(config, listeners, shutdown, None).await
}

/// [`run`], taking reloaded configurations from `reloads` (validated; sent by the SIGHUP
/// handler of [`main`]): their live keys (see [`crate::config::Effect`]) reach every worker
/// between requests, without dropping a connection.
///
/// Over the house limit of ~100 lines on purpose: the collector's whole order of things (start,
/// serve, the shutdown phases) in one place to read top to bottom; each step is a call.
pub(crate) async fn run_reloadable(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = Shutdown>,
    mut reloads: Option<mpsc::UnboundedReceiver<Config>>,
) -> Result<RunReport, RunError> {
    let handle = metrics::install();
    let (spool, recovery) = spool::Spool::open(
        &config.spool,
        // After a write failure, stay unhealthy for one Retry-After period.
        Duration::from_secs(config.http.retry_after_seconds),
    )?;
    tracing::info!(
        dir = %config.spool.dir.display(),
        records = recovery.records,
        unacked = recovery.unacked,
        corrupt = recovery.corrupt,
        truncated_bytes = recovery.truncated_bytes,
        "spool recovered"
    );
    let acked_at_start = spool.acked();
    let beacon_addr = listeners.beacon_addr();
    let tls_addr = listeners.tls_addr();
    let tls = if config.tls.enabled {
        Some(crate::tls::TlsServer::new(&config.tls)?)
    } else {
        None
    };
    let app = Arc::new(SharedState::new(&config, spool.clone()));
    let close = CancellationToken::new();
    let mut fwd_task = tokio::spawn(tasks::supervise(
        "forwarder",
        close.clone(),
        Some(app.forwarder_up.clone()),
        {
            let (spool, cfg, close) = (spool.clone(), config.forward.clone(), close.clone());
            move || forwarder::Forwarder::new(spool.clone(), &cfg).run(close.clone())
        },
    ));

    // The sampler and the admin listener outlive the drain (the metrics of a shutdown are
    // worth scraping) and stop last.
    let stop_admin = CancellationToken::new();
    if config.check.sample_interval_seconds > 0 {
        let every = Duration::from_secs(config.check.sample_interval_seconds);
        let stop = stop_admin.clone();
        tokio::spawn(tasks::supervise(
            "sampler",
            stop_admin.clone(),
            None,
            move || sampler::run(kernel::ProcRoot::system(), every, stop.clone()),
        ));
    }
    if let Some(l) = listeners.admin {
        let l = tokio::net::TcpListener::from_std(l).map_err(RunError::Listener)?;
        tracing::info!(addr = %l.local_addr().map_err(RunError::Listener)?, "admin listening (/metrics)");
        let (l, stop) = (Arc::new(l), stop_admin.clone());
        tokio::spawn(tasks::supervise(
            "admin",
            stop_admin.clone(),
            None,
            move || admin::serve(l.clone(), handle.clone(), stop.clone(), None),
        ));
    }

    let mut ingest = ingest::Ingest::start(
        &config,
        app.clone(),
        listeners.beacon,
        listeners.tls,
        tls.as_ref().map(|t| t.config.clone()),
    )
    .map_err(RunError::Listener)?;
    tracing::info!(
        addr = %beacon_addr.map_or_else(String::new, |a| a.to_string()),
        https = %tls_addr.map_or_else(String::new, |a| a.to_string()),
        workers = config.workers(),
        engine = ?config.server.engine,
        "listening"
    );
    crate::lifecycle::notify(crate::lifecycle::Notify::Ready, "serving beacons");

    let mut failure = None;
    tokio::pin!(shutdown);
    let kind = loop {
        tokio::select! {
            k = &mut shutdown => break k,
            e = ingest.failed() => {
                failure = Some(RunError::Accept(e));
                break Shutdown::Fast;
            }
            Some(new) = async { reloads.as_mut()?.recv().await }, if reloads.is_some() => {
                ingest.set_app(Arc::new(app.reload(&new)));
                if let Some(t) = &tls {
                    reload_certificates(t, &new);
                }
            }
        }
    };

    stop_serving(kind, &config.shutdown, &app, &mut ingest).await;

    // Every connection is gone: nothing more is appended. Hand over what the stage will take.
    close.cancel();
    let flush = Duration::from_secs(config.shutdown.flush_timeout_seconds);
    if tokio::time::timeout(flush, &mut fwd_task).await.is_err() {
        fwd_task.abort();
    }
    spool.sync_active();
    spool.checkpoint();
    stop_admin.cancel();
    let report = RunReport {
        accepted: app.accepted.load(Ordering::SeqCst),
        acknowledged: spool.acked() - acked_at_start,
        remaining: spool.unacked(),
    };
    if report.remaining > 0 {
        tracing::warn!(
            remaining = report.remaining,
            dir = %config.spool.dir.display(),
            "processing stage did not take everything within shutdown.flush_timeout_seconds; \
             the rest stays in the spool and is sent at the next start"
        );
    } else {
        tracing::info!(
            accepted = report.accepted,
            acknowledged = report.acknowledged,
            "shutdown complete: spool empty"
        );
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// The ingest half of a shutdown: deregistration delay with a failing health check (graceful
/// only), stop accepting, drain connections, and drop what is left at the deadline.
async fn stop_serving(
    kind: Shutdown,
    s: &crate::config::ShutdownConfig,
    app: &SharedState,
    ingest: &mut ingest::Ingest,
) {
    crate::lifecycle::notify(
        crate::lifecycle::Notify::Stopping,
        "draining: health check failing, then connections, then the spool",
    );
    if kind == Shutdown::Graceful && s.deregistration_delay_seconds > 0 {
        // Flag first, then say so: whoever reads the log line (an operator, a test) finds the
        // health check already failing.
        app.set_draining();
        ingest.set_phase(Phase::Deregistering);
        tracing::info!(
            seconds = s.deregistration_delay_seconds,
            "SIGTERM: failing health checks while still serving"
        );
        tokio::time::sleep(Duration::from_secs(s.deregistration_delay_seconds)).await;
    }
    app.set_draining();
    tracing::info!("stopping accept; draining connections");
    ingest.stop_accepting();
    ingest.set_phase(Phase::Draining);
    let drain = match kind {
        Shutdown::Graceful => Duration::from_secs(s.drain_timeout_seconds),
        Shutdown::Fast => Duration::from_secs(s.drain_timeout_seconds).min(Duration::from_secs(2)),
    };
    if !ingest.wait(drain).await {
        tracing::warn!("drain deadline passed; closing remaining connections");
        ingest.set_phase(Phase::Abort);
        ingest.wait(Duration::from_secs(3)).await;
    }
}

/// SIGHUP: the certificate files again; new handshakes get them.
fn reload_certificates(t: &crate::tls::TlsServer, new: &Config) {
    let result = match t.reload(&new.tls) {
        Ok(()) => {
            let names: Vec<String> = t.certificates().all().map(|l| l.label()).collect();
            tracing::info!(certificates = ?names, "SIGHUP: TLS certificates reloaded");
            "ok"
        }
        Err(e) => {
            tracing::error!(key = %e.key, problem = %e.problem, fix = %e.fix,
                "SIGHUP: TLS certificates not reloaded; the running ones stay");
            "error"
        }
    };
    ::metrics::counter!(metrics::TLS_RELOADS_TOTAL, "result" => result).increment(1);
}

/// SIGHUP: reads the config file again. An invalid file is refused with the same key,
/// problem and fix as `config validate`, and the running configuration stays. Otherwise the
/// live keys go to `run`, `log.level` to the log filter, processing-stage keys restart the
/// embedded stage, and keys that need a restart are named.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    started: Config,
    path: Option<PathBuf>,
    to_run: mpsc::UnboundedSender<Config>,
    stage: Option<supervisor::Restarter>,
) {
    use crate::config::Effect;
    let mut last = started.clone();
    while hangups.recv().await.is_some() {
        let Some(path) = &path else {
            tracing::warn!("SIGHUP: started without -c, nothing to reload");
            continue;
        };
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    file = %path.display(), key = %e.key, problem = %e.problem, fix = %e.fix,
                    "SIGHUP: the configuration is invalid; the running one stays"
                );
                if e.key.starts_with("tls.") {
                    ::metrics::counter!(metrics::TLS_RELOADS_TOTAL, "result" => "error")
                        .increment(1);
                }
                continue;
            }
        };
        for d in &new.deprecations {
            tracing::warn!(old = d.old, new = d.new, "SIGHUP: config: {d}");
        }
        let keys = |effect: Effect, from: &Config| -> Vec<String> {
            from.changes(&new)
                .into_iter()
                .filter(|c| c.effect == effect)
                .map(|c| c.key)
                .collect()
        };
        let (live, stage_keys) = (keys(Effect::Live, &last), keys(Effect::StageRestart, &last));
        // Pending since the start, whatever earlier reloads said.
        let needs_restart = keys(Effect::Restart, &started);
        if new.log.level != last.log.level {
            if let Err(e) = crate::logging::set_level(&new.log.level) {
                tracing::warn!(error = %e, "SIGHUP: log.level not applied");
            }
        }
        let _ = to_run.send(new.clone());
        let restarted = match &stage {
            Some(s) if !stage_keys.is_empty() => match s.restart(&new) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: cannot write the processing stage's configuration; it keeps the old one");
                    false
                }
            },
            _ => false,
        };
        tracing::info!(
            live = ?live,
            processing_stage = ?stage_keys,
            stage_restarted = restarted,
            needs_restart = ?needs_restart,
            "SIGHUP: configuration reloaded"
        );
        last = new;
    }
}

/// Why the `serve` command stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The runtime or the signal handlers could not be set up.
    #[error("starting: {0}")]
    Start(std::io::Error),
    /// `check.strict` and the self-check failed.
    #[error(transparent)]
    Check(#[from] check::StrictFailure),
    /// A socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// `run` failed.
    #[error("serve: {0}")]
    Run(#[from] RunError),
}

/// The `serve` command: self-check, bind, start the embedded processing stage (unless
/// `forward.mode = "external"`), serve until SIGTERM/SIGINT, stop the stage last.
/// `config_path` is handed to the stage so both read the same file.
pub fn main(config: Config, config_path: Option<PathBuf>) -> Result<(), ServeError> {
    // The ingest workers run on threads of their own; this runtime hosts the forwarder, the
    // admin listener, the sampler and the supervisor.
    let rt =
        crate::lifecycle::runtime(1, config.server.background_nice).map_err(ServeError::Start)?;
    rt.block_on(async move {
        let shutdown = crate::lifecycle::collector_signals().map_err(ServeError::Start)?;
        let hangups = crate::lifecycle::hangups().map_err(ServeError::Start)?;
        check::self_check(&config)?;
        listener::Backlog::probe(config.server.backlog, listener::SOMAXCONN_PATH).log();
        let listeners = Listeners::bind(&config)?;
        // Before the supervisor: it declares its restart counter (see crate::metrics).
        metrics::install();
        let stage = match config.forward.mode {
            ForwardMode::Embedded => Some(supervisor::Supervisor::start(
                supervisor::ChildSpec::stage(&config).map_err(ServeError::Start)?,
            )),
            ForwardMode::External => None,
        };
        let (reload_tx, reload_rx) = mpsc::unbounded_channel();
        let reloader = tokio::spawn(reload_on_hangup(
            hangups,
            config.clone(),
            config_path,
            reload_tx,
            stage.as_ref().map(supervisor::Supervisor::restarter),
        ));
        let res = run_reloadable(config, listeners, shutdown, Some(reload_rx)).await;
        reloader.abort();
        if let Some(s) = stage {
            s.stop().await;
        }
        res.map(|_| ()).map_err(ServeError::from)
    })
}
