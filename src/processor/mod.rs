//! The bundled processing stage (`beacon-collector process`): listens on the unix socket,
//! decodes BATCH frames, hands every batch to each configured sink (NDJSON files, NATS
//! JetStream), and ACKs a batch once every sink has it.
//!
//! Ownership: each sink is one task owning its file or broker connection; connection tasks
//! decode and render records in parallel and send each sink a job with a oneshot for its
//! answer. Each connection has an ACK task that waits for those answers in order, so ACKs are
//! cumulative and never run ahead of any sink.

mod connection;

use crate::config::Config;
use crate::lifecycle::CancellationToken;
use crate::metrics as m;
use crate::sink::{self, setup, Job, SetupError, SinkError};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::mpsc;

/// A failure that stops the processing stage.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The runtime or the signal handlers could not be set up.
    #[error("starting the processing stage: {0}")]
    Start(io::Error),
    /// The admin port could not be bound.
    #[error(transparent)]
    Admin(#[from] crate::admin::BindError),
    /// Another processing stage answers on the socket.
    #[error("another processing stage is already listening on {0}")]
    InUse(PathBuf),
    /// Setting up the socket failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A sink failed for good.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Binds the unix socket, replacing a stale socket file left by a crashed stage but refusing
/// to steal the socket of a live one. Sets the configured mode.
pub(crate) fn bind(path: &Path, mode: u32) -> Result<UnixListener, ProcessError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(setup("create directory", dir))?;
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ProcessError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "removing stale socket file");
                std::fs::remove_file(path).map_err(setup("remove stale socket", path))?;
            }
            Err(e) => return Err(setup("probe existing socket", path)(e).into()),
        }
    }
    let l = UnixListener::bind(path).map_err(setup("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(setup("chmod", path))?;
    Ok(l)
}

/// The `process` command: binds the socket and the admin port, runs the stage on its own
/// runtime until a signal (or, with `watch_stdin`, the parent going away), then removes the
/// socket file.
pub fn main(config: Config, watch_stdin: bool) -> Result<(), ProcessError> {
    // One thread: the stage's work per batch is short (decode, render, append, ACK), and a
    // second worker only added wake-ups between the two.
    // The whole stage is background work (server.background_nice): this thread, and the
    // runtime's threads started from it. Started by `serve`, it already inherits the value.
    crate::lifecycle::lower_priority_to(i32::from(config.server.background_nice));
    let rt = crate::lifecycle::runtime(1, 0).map_err(ProcessError::Start)?;
    let res = rt.block_on(async move {
        // Installed before anything else can take time: a signal during start-up is not lost.
        let stop = crate::lifecycle::stage_stop(watch_stdin).map_err(ProcessError::Start)?;
        let l = bind(&config.forward.socket_path, config.forward.socket_mode)?;
        let admin = if config.processor.admin.enabled {
            Some(crate::admin::bind(
                "processor.admin.listen",
                config.processor.admin.listen,
            )?)
        } else {
            None
        };
        tracing::info!(
            socket = %config.forward.socket_path.display(),
            data_dir = %config.processor.files.data_dir.display(),
            admin = %admin
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map_or_else(String::new, |a| a.to_string()),
            "processing stage listening"
        );
        let socket = config.forward.socket_path.clone();
        let res = run(config, l, admin, stop).await;
        let _ = std::fs::remove_file(&socket);
        res
    });
    // Tokio reads stdin on a blocking thread that a runtime drop would wait for, and that read
    // only returns when the parent closes the pipe: the stage would hang after its work was
    // done until the supervisor killed it 10 s later. Everything is written; do not wait.
    rt.shutdown_background();
    res
}

/// How long sinks may keep retrying after a stop before giving up on what they hold (it stays
/// unacknowledged in the collector's spool). The supervisor kills a stage after 10 s.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The sinks' inboxes.
pub(crate) struct Sinks {
    pub(crate) inboxes: Vec<mpsc::Sender<Job>>,
}

/// Runs the processing stage until `stop` resolves, then finishes pending writes, closes the
/// current file and returns. Returns early with the error when a sink fails for good.
pub(crate) async fn run(
    config: Config,
    listener: UnixListener,
    admin: Option<std::net::TcpListener>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ProcessError> {
    let pc = config.processor.clone();
    // Before the sinks start: each declares its series (see crate::metrics), and a series
    // declared before the recorder exists is lost.
    let handle = m::install();
    for name in [m::SINK_DUPLICATES_TOTAL, m::SINK_CORRUPT_RECORDS_TOTAL] {
        metrics::counter!(name).increment(0);
    }
    let abandon = CancellationToken::new();
    let mut inboxes = Vec::new();
    let mut sink_tasks = tokio::task::JoinSet::new();
    for &kind in &pc.sinks {
        let (tx, rx) = mpsc::channel::<Job>(64);
        sink::spawn(kind, &pc, rx, abandon.clone(), &mut sink_tasks)?;
        inboxes.push(tx);
    }
    let sinks = Arc::new(Sinks { inboxes });
    let stop_conns = CancellationToken::new();
    let seen = Arc::new(connection::Seen::default());

    let stop_admin = CancellationToken::new();
    if let Some(l) = admin {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                tokio::spawn(crate::admin::serve(
                    Arc::new(l),
                    handle,
                    stop_admin.clone(),
                    Some(crate::sink::readiness),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "processing stage metrics listener unusable"),
        }
    }

    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    let early = loop {
        tokio::select! {
            _ = &mut stop => break None,
            // Sinks only end once every inbox is closed: an end now is a failure.
            Some(res) = sink_tasks.join_next() => break Some(res),
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    conns.spawn(connection::run(stream, sinks.clone(), stop_conns.clone(), seen.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept on processing socket");
                    tokio::time::sleep(crate::ingest::listener::ACCEPT_PAUSE).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    };
    stop_admin.cancel();
    stop_conns.cancel();
    drop(sinks);
    drop(listener);
    if let Some(res) = early {
        conns.shutdown().await;
        abandon.cancel();
        return match res.expect("sink tasks do not panic") {
            Err(e) => Err(e.into()),
            Ok(()) => Err(SinkError::Stopped.into()),
        };
    }
    tracing::info!("processing stage stopping: finishing pending writes");
    tokio::spawn(async move {
        tokio::time::sleep(STOP_GRACE).await;
        abandon.cancel();
    });
    while conns.join_next().await.is_some() {}
    let mut result = Ok(());
    while let Some(res) = sink_tasks.join_next().await {
        if let Err(e) = res.expect("sink tasks do not panic") {
            result = Err(e);
        }
    }
    result.map_err(ProcessError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_replaced_live_socket_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let l = bind(&p, 0o660).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(bind(&p, 0o660), Err(ProcessError::InUse(_))));
        drop(l); // leaves the file behind, like a crash
        assert!(p.exists());
        bind(&p, 0o660).unwrap();
    }
}
