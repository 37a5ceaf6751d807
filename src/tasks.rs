//! Supervised background tasks: a task that ends while it should still run (a panic, an early
//! return) is logged, counted in `beacon_task_restarts_total{task}`, marks its health flag
//! down (when it has one) and is started again with backoff. The flag comes back once the new
//! instance has stayed up for [`SETTLE`], so a task in a crash loop keeps health failing.
//!
//! Used for the forwarder (health: a collector that cannot forward should leave the load
//! balancer's rotation while beacons pile up in its spool), the kernel sampler and the admin
//! listener (no health: the collector still serves beacons without them). The ingest workers
//! are not restarted: a fatal accept error means the listening socket is unusable, and `run`
//! stops with an error so the service manager restarts the whole process.

use crate::lifecycle::CancellationToken;
use crate::metrics as m;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a restarted task must stay up before its health flag is set again.
pub(crate) const SETTLE: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs `make()` as a task until it ends on its own after `stop` is cancelled (or is aborted),
/// restarting it whenever it ends before that. `health`, when given, is true while the task is
/// known to be running.
pub(crate) async fn supervise<F, Fut>(
    name: &'static str,
    stop: CancellationToken,
    health: Option<Arc<AtomicBool>>,
    mut make: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let set = |up: bool| {
        if let Some(h) = &health {
            h.store(up, Ordering::Relaxed);
        }
    };
    metrics::counter!(m::TASK_RESTARTS_TOTAL, "task" => name).increment(0);
    let mut backoff = FIRST_BACKOFF;
    let mut restarted = false;
    loop {
        let started = Instant::now();
        // Aborting the supervisor (the shutdown's flush deadline) aborts the task with it.
        let mut task = AbortOnDrop(tokio::spawn(make()));
        let res = if restarted {
            tokio::select! {
                r = &mut task.0 => r,
                _ = tokio::time::sleep(SETTLE) => {
                    set(true);
                    tracing::info!(task = name, "restarted task is running");
                    (&mut task.0).await
                }
            }
        } else {
            (&mut task.0).await
        };
        let why = match res {
            Ok(()) if stop.is_cancelled() => return,
            Ok(()) => "returned early".to_string(),
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                format!("panicked: {msg}")
            }
            // Aborted: whoever aborted it is stopping us too.
            Err(_) => return,
        };
        set(false);
        metrics::counter!(m::TASK_RESTARTS_TOTAL, "task" => name).increment(1);
        if started.elapsed() > 10 * SETTLE {
            backoff = FIRST_BACKOFF;
        }
        tracing::error!(
            task = name,
            why,
            restart_in_ms = backoff.as_millis() as u64,
            "background task died; restarting it"
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        restarted = true;
    }
}

/// Aborts the task when dropped (a `JoinHandle` dropped alone lets it run on).
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
