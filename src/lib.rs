//! beacon-collector: a beacon ingest server.
//!
//! # Layout
//! - [`config`]: the TOML schema, defaults and `validate()`.
//! - [`ingest`]: thread-per-core workers, each owning a `SO_REUSEPORT` listener, its
//!   connections and a group commit to the spool; the native HTTP/1.1 engine (httparse) and
//!   the hyper reference engine over shared routes, limits and request → record.
//! - [`record`]: the beacon record, its binary encoding and its NDJSON form.
//! - [`spool`]: durable segmented log (frame, writer, reader); a beacon is answered once it
//!   is here.
//! - [`forwarder`]: spool → batches on a unix socket → ACKs → spool segments deleted.
//! - [`protocol`]: the frame format between collector and processing stage.
//! - [`processor`], [`sink`], [`subject`]: the bundled processing stage and its sinks
//!   (rotated NDJSON files, NATS JetStream) and the NATS subject template.
//! - [`time`]: RFC 3339 timestamps without a date-time dependency.
//! - [`supervisor`]: runs the embedded processing stage as a child and restarts it.
//! - [`metrics`]: metric names, the Prometheus recorder, the admin listener.
//! - [`kernel`], [`check`], [`sampler`]: reading `/proc`, the self-check against the config
//!   with its generated sysctl/limits/systemd files, and kernel counters as metrics.
//!
//! Data path: a worker accepts → frames the request → builds the record into its commit
//! group → [`spool::Spool::write_group`] once per event-loop turn (503 when it cannot) → 204
//! → the forwarder streams it to the processing stage → ACK → the segment is deleted once all
//! its records are acknowledged. Shutdown: health check 503, drain, flush what the stage will
//! take; anything left stays in the spool for the next start.

pub mod check;
pub mod config;
pub mod forwarder;
pub mod ingest;
pub mod kernel;
pub mod metrics;
pub mod processor;
pub mod protocol;
pub mod record;
pub mod sampler;
pub mod sink;
pub mod spool;
pub mod subject;
pub mod supervisor;
pub mod time;

use config::Config;
use ingest::listener;
use ingest::{App, Phase};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The sockets `run` serves, bound before it starts (so bind errors surface first and tests
/// can bind port 0 and read the address).
pub struct Listeners {
    /// `SO_REUSEPORT` beacon listeners, all on the same address.
    pub beacon: Vec<std::net::TcpListener>,
    /// The admin listener, if enabled.
    pub admin: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds everything the config asks for.
    pub fn bind(config: &Config) -> Result<Self, listener::ListenError> {
        let beacon = match listener::inherited()? {
            Some(socks) => {
                tracing::info!(
                    sockets = socks.len(),
                    "using the listening sockets passed by the service manager (server.listen, backlog and listeners are its)"
                );
                socks
            }
            None => listener::bind(&config.server, config.listeners())?,
        };
        let admin = if config.admin.enabled {
            let addr = config.admin.listen;
            let l = std::net::TcpListener::bind(addr).map_err(|source| listener::ListenError {
                addr,
                step: "bind admin",
                source,
            })?;
            l.set_nonblocking(true)
                .map_err(|source| listener::ListenError {
                    addr,
                    step: "O_NONBLOCK",
                    source,
                })?;
            Some(l)
        } else {
            None
        };
        Ok(Self { beacon, admin })
    }

    /// Address of the beacon listener.
    pub fn beacon_addr(&self) -> Option<std::net::SocketAddr> {
        self.beacon.first().and_then(|l| l.local_addr().ok())
    }
}

/// How to shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGTERM: deregistration delay with failing health check, drain, flush.
    Graceful,
    /// SIGINT: no deregistration delay, a short drain, then flush.
    Fast,
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
}

/// Serves beacons on `listeners` until `shutdown` resolves (or a listener fails), then drains
/// and flushes as the config says. Requires a Tokio runtime with the time and I/O drivers.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = Shutdown>,
) -> Result<RunReport, RunError> {
    let handle = metrics::install();
    let (spool, recovery) = spool::Spool::open(
        &config.spool,
        // After a write failure, stay unhealthy for one Retry-After period.
        Duration::from_secs(config.queue.retry_after_seconds),
    )?;
    tracing::info!(
        dir = %config.spool.dir.display(),
        records = recovery.records,
        unacked = recovery.unacked,
        corrupt = recovery.corrupt,
        truncated_bytes = recovery.truncated_bytes,
        "spool recovered"
    );
    let forwarder = forwarder::Forwarder::new(spool.clone(), &config.forward);
    let beacon_addr = listeners.beacon_addr();
    let app = Arc::new(App::new(&config, spool.clone()));
    let (close_tx, close_rx) = watch::channel(false);
    let (report_tx, report_rx) = watch::channel(forwarder::ForwardReport::default());
    let mut fwd_task = tokio::spawn(forwarder.run(close_rx, report_tx));

    let (stop_admin_tx, stop_admin_rx) = watch::channel(false);
    if config.check.sample_interval_seconds > 0 {
        tokio::spawn(sampler::run(
            kernel::ProcRoot::system(),
            Duration::from_secs(config.check.sample_interval_seconds),
            stop_admin_rx.clone(),
        ));
    }
    if let Some(l) = listeners.admin {
        let l = tokio::net::TcpListener::from_std(l).map_err(RunError::Listener)?;
        tracing::info!(addr = %l.local_addr().map_err(RunError::Listener)?, "admin listening (/metrics)");
        tokio::spawn(metrics::serve_admin(l, handle, stop_admin_rx));
    }

    let mut ingest = ingest::Ingest::start(&config, app.clone(), listeners.beacon)
        .map_err(RunError::Listener)?;
    tracing::info!(
        addr = %beacon_addr.map_or_else(String::new, |a| a.to_string()),
        workers = config.workers(),
        engine = ?config.server.engine,
        "listening"
    );

    let mut failure = None;
    let kind = tokio::select! {
        k = shutdown => k,
        e = ingest.failed() => {
            failure = Some(RunError::Accept(e));
            Shutdown::Fast
        }
    };

    let s = &config.shutdown;
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

    // Every connection is gone: nothing more is appended. Hand over what the stage will take.
    let _ = close_tx.send(true);
    let flush = Duration::from_secs(s.flush_timeout_seconds);
    if tokio::time::timeout(flush, &mut fwd_task).await.is_err() {
        fwd_task.abort();
    }
    spool.sync_active();
    spool.checkpoint();
    let _ = stop_admin_tx.send(true);
    let report = RunReport {
        accepted: app.accepted.load(Ordering::SeqCst),
        acknowledged: report_rx.borrow().acked,
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

/// Resolves when the flag turns true, or when its sender is gone (which also means "stop").
/// Returns `()` so no watch guard is held across an await in a `select!`.
pub(crate) async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
