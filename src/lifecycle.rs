//! Lifecycle: what tells a process to stop (signals, a parent that went away), the kinds of
//! shutdown, the phases connections go through, and the cancellation token every background
//! task stops on.
//!
//! One token per owner: `run` cancels the forwarder's, the sampler's and the admin
//! listener's when their turn in the shutdown comes; a child token per accept loop. A task
//! that takes a token stops when it is cancelled *or* when every clone of it is gone, so a
//! forgotten sender can never leave a task running forever.

use std::future::Future;
pub(crate) use tokio_util::sync::CancellationToken;

/// How to shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGTERM: deregistration delay with failing health check, drain, flush.
    Graceful,
    /// SIGINT: no deregistration delay, a short drain, then flush.
    Fast,
}

/// The collector's lifecycle as connections see it; the phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Normal service.
    Running,
    /// SIGTERM received: health check fails, every response says `Connection: close`.
    Deregistering,
    /// Accepting stopped; connections finish their request and close.
    Draining,
    /// Drain deadline passed: connections are dropped.
    Abort,
}

/// The collector's signals: SIGTERM → graceful, SIGINT → fast. A second SIGINT (an impatient
/// operator) exits at once; a repeated SIGTERM (orchestrators resend it) does not cut the
/// drain short.
///
/// The handlers are installed when this is called, not when the future is first polled, so a
/// signal that arrives during start-up is not lost to the default action (instant death).
/// Must be called inside a Tokio runtime.
pub(crate) fn collector_signals() -> std::io::Result<impl Future<Output = Shutdown>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
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
    })
}

/// SIGHUP, as a stream: `serve` reloads its config on each (installed at once, so a HUP during
/// start-up is not the default action, which would end the process).
pub(crate) fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// The processing stage's stop: SIGTERM, SIGINT, or (with `watch_stdin`) end of file on
/// stdin, which is how a stage started by `serve` learns that its collector is gone, even
/// after a `kill -9`. Installed at once, like [`collector_signals`].
pub(crate) fn stage_stop(watch_stdin: bool) -> std::io::Result<impl Future<Output = ()>> {
    use tokio::io::AsyncReadExt;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // The stage reads its config at start; a HUP meant for the collector must not end it.
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        let hup_logged = async {
            while hup.recv().await.is_some() {
                tracing::info!(
                    "SIGHUP ignored: the collector reloads the config and restarts this stage \
                     when its settings changed"
                );
            }
            std::future::pending::<()>().await
        };
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
            _ = hup_logged => {}
        }
    })
}

/// Tells the service manager (systemd with `Type=notify`) what state the process is in, over
/// the datagram socket named by `NOTIFY_SOCKET`; nothing at all without one (a terminal, the
/// tests' in-process servers). A failure to notify is logged, never fatal: the collector
/// serves either way, and systemd's start timeout reports a missing READY.
pub(crate) fn notify(state: Notify, status: &str) {
    use sd_notify::NotifyState;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let s = match state {
        Notify::Ready => NotifyState::Ready,
        Notify::Stopping => NotifyState::Stopping,
    };
    if let Err(e) = sd_notify::notify(false, &[s, NotifyState::Status(status)]) {
        tracing::warn!(error = %e, "could not notify the service manager (NOTIFY_SOCKET)");
    }
}

/// What [`notify`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notify {
    /// Listening and serving (`READY=1`).
    Ready,
    /// Shutting down (`STOPPING=1`).
    Stopping,
}

/// Builds a multi-thread runtime with `threads` workers and every driver, its threads (workers
/// and blocking pool) at `nice` (see `server.background_nice`). Only the runtime's own threads:
/// the thread that builds it keeps its priority, and so do the threads it starts (the ingest
/// workers are started from it).
pub(crate) fn runtime(threads: usize, nice: u8) -> std::io::Result<tokio::runtime::Runtime> {
    // Absolute, from the builder's own: a blocking thread started from a worker thread
    // inherits the worker's value and must not get the increment twice.
    let to = thread_nice() + i32::from(nice);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .on_thread_start(move || lower_priority_to(to))
        .enable_all()
        .build()
}

/// The calling thread's nice value (on Linux `getpriority(PRIO_PROCESS, tid)` is per thread).
pub(crate) fn thread_nice() -> i32 {
    // SAFETY: a plain syscall about the calling thread.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// Lowers the calling thread's priority to nice `to` (at most 19) if it is higher; never raises
/// it (that would need privilege). A failure leaves the thread as it was.
pub(crate) fn lower_priority_to(to: i32) {
    let to = to.min(19);
    if thread_nice() < to {
        // SAFETY: a plain syscall about the calling thread; no memory is passed.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, to) };
    }
}
