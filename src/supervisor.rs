//! Runs the embedded processing stage as a child process and restarts it when it dies.
//!
//! The child gets a pipe as stdin and exits when it reads EOF, so it never outlives the
//! collector, even after `kill -9`. It runs in its own process group so a terminal's Ctrl-C
//! reaches only the collector, which then stops the child itself, *after* the last beacon has
//! been acknowledged.

use crate::metrics as m;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

/// A running supervisor.
pub(crate) struct Supervisor {
    stop: Option<oneshot::Sender<()>>,
    restart: mpsc::UnboundedSender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Asks a supervisor to restart its child (a config reload with processing-stage keys).
#[derive(Clone)]
pub(crate) struct Restarter(mpsc::UnboundedSender<()>);

impl Restarter {
    /// Writes `config` for the child, then stops it as at shutdown (SIGTERM, it finishes what
    /// it holds) and starts it again at once; what it had not acknowledged, the collector sends
    /// again.
    pub(crate) fn restart(&self, config: &crate::config::Config) -> std::io::Result<()> {
        write_stage_config(config)?;
        let _ = self.0.send(());
        Ok(())
    }
}

/// How to start the child.
#[derive(Debug, Clone)]
pub(crate) struct ChildSpec {
    /// The executable (normally the collector's own).
    pub(crate) program: PathBuf,
    /// Its arguments.
    pub(crate) args: Vec<OsString>,
    /// First restart delay; doubles while the child keeps dying quickly, up to 10 s.
    pub(crate) restart_delay: Duration,
}

impl ChildSpec {
    /// The embedded processing stage: this executable's `process --watch-stdin`, reading the
    /// same config file as the collector.
    ///
    /// The child does not read the operator's file: it gets the configuration the collector
    /// validated and runs with, written to [`stage_config_path`] (and rewritten by a reload
    /// before the stage restarts). A file edited later, or broken, never reaches a stage the
    /// supervisor restarts after a crash.
    pub(crate) fn stage(config: &crate::config::Config) -> std::io::Result<Self> {
        let path = stage_config_path(config);
        write_stage_config(config)?;
        Ok(Self {
            program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("beacon-collector")),
            args: vec![
                "process".into(),
                "--watch-stdin".into(),
                "-c".into(),
                path.into(),
            ],
            restart_delay: Duration::from_millis(config.forward.restart_delay_ms),
        })
    }
}

/// Where the embedded stage's configuration is written: beside the spool, private like it.
pub(crate) fn stage_config_path(config: &crate::config::Config) -> PathBuf {
    config.spool.dir.join("processing-stage.toml")
}

/// Writes `config` for the embedded stage (atomically: a stage starting meanwhile reads the old
/// file or the new one, never half of one).
pub(crate) fn write_stage_config(config: &crate::config::Config) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = stage_config_path(config);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(crate::config::dir_mode(config.spool.file_mode))
        .create(&config.spool.dir)?;
    let text = toml::to_string(config).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("toml.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(config.spool.file_mode)
        .open(&tmp)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    std::fs::rename(&tmp, &path)
}

impl Supervisor {
    /// Starts the child and watches it.
    pub(crate) fn start(spec: ChildSpec) -> Self {
        metrics::counter!(m::PROCESSOR_RESTARTS_TOTAL).increment(0);
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let (restart, mut restart_rx) = mpsc::unbounded_channel::<()>();
        let task = tokio::spawn(async move {
            let mut delay = spec.restart_delay;
            loop {
                let started = Instant::now();
                let mut child = match spawn(&spec) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(program = %spec.program.display(), error = %e, "cannot start processing stage");
                        tokio::select! {
                            _ = &mut stop_rx => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                tracing::info!(pid = child.id(), "processing stage started");
                // Child::wait() closes stdin first; hold our end so the child's EOF means
                // "the collector is gone", not "the collector is waiting for you".
                let _stdin = child.stdin.take();
                tokio::select! {
                    status = child.wait() => {
                        metrics::counter!(m::PROCESSOR_RESTARTS_TOTAL).increment(1);
                        tracing::error!(status = ?status.ok(), "processing stage exited; restarting");
                    }
                    _ = &mut stop_rx => {
                        stop_child(&mut child).await;
                        return;
                    }
                    Some(()) = restart_rx.recv() => {
                        tracing::info!("restarting the processing stage for the reloaded config");
                        stop_child(&mut child).await;
                        delay = spec.restart_delay;
                        continue;
                    }
                }
                // A child that ran a while gets a fast restart; one that keeps crashing backs off.
                if started.elapsed() > Duration::from_secs(10) {
                    delay = spec.restart_delay;
                }
                tokio::select! {
                    _ = &mut stop_rx => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        });
        Self {
            stop: Some(stop_tx),
            restart,
            task,
        }
    }

    /// A handle that restarts the child.
    pub(crate) fn restarter(&self) -> Restarter {
        Restarter(self.restart.clone())
    }

    /// Stops the child (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn spawn(spec: &ChildSpec) -> std::io::Result<Child> {
    Command::new(&spec.program)
        .args(&spec.args)
        // The stage is not the service: only the collector talks to systemd.
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
}

async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(status) => tracing::info!(status = ?status.ok(), "processing stage stopped"),
        Err(_) => {
            tracing::warn!("processing stage did not stop within 10 s; killing it");
            let _ = child.kill().await;
        }
    }
}
