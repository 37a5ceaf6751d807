//! The ingest tier: HTTP in, records into the spool, an answer out.
//!
//! - [`listener`]: socket2 listeners (`SO_REUSEPORT`, backlog vs somaxconn), per-socket TCP
//!   options, the accept loop with connection permits and error classification.
//! - [`worker`]: thread-per-core workers, each a current-thread runtime owning its listener,
//!   connections, timers, scratch buffers, counters and commit group; [`worker_state`]: what
//!   its connections share.
//! - [`native`] (default) and [`hyper_engine`]: the two HTTP/1.1 connection engines; [`h1`] is
//!   the native engine's framing on httparse, [`tls_conn`] its TLS layer (rustls unbuffered),
//!   [`sock`] its non-waiting socket writes; [`conn`]: who a connection's client is (the
//!   PROXY header).
//! - Shared by both engines: [`request`] (the head, the route), [`routes`] (the decisions
//!   from the head), [`record_build`] (request → records), [`answer`] (answers, rejection →
//!   status), [`stats`] (counters), [`state`] (what every worker reads under the current
//!   config).
//! - [`commit`]: group commit of one worker's records to the spool per event-loop turn.
//! - [`proxy`] (PROXY protocol v1/v2), [`forwarded_for`] (trusted `X-Forwarded-For`),
//!   [`ratelimit`] (per-client token buckets), [`encoding`], [`multipart`], [`batch`]
//!   (bodies), [`trackers`] (Snowplow's and PostHog's own protocols).

mod answer;
mod batch;
mod commit;
mod conn;
mod encoding;
pub(crate) mod forwarded_for;
mod h1;
mod hyper_engine;
pub(crate) mod listener;
mod multipart;
mod native;
pub mod proxy;
mod ratelimit;
mod record_build;
mod request;
mod routes;
mod sock;
mod state;
mod stats;
mod tls_conn;
mod trackers;
mod worker;
mod worker_state;

pub(crate) use crate::lifecycle::Phase;
pub(crate) use state::SharedState;

use crate::config::Config;
use crate::lifecycle::CancellationToken;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Which HTTP/1.1 engine serves connections (`server.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Our own framing on httparse: no buffers held by idle connections.
    #[default]
    Native,
    /// hyper 1.x, the reference engine.
    Hyper,
}

/// `listeners` dealt to `n` workers: each its own socket when there are enough, otherwise
/// duplicates of them shared.
fn spread(
    listeners: Vec<std::net::TcpListener>,
    n: usize,
) -> std::io::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut per_worker: Vec<Vec<std::net::TcpListener>> = (0..n).map(|_| Vec::new()).collect();
    let count = listeners.len();
    if count >= n {
        for (i, l) in listeners.into_iter().enumerate() {
            per_worker[i % n].push(l);
        }
    } else if count > 0 {
        for (i, slot) in per_worker.iter_mut().enumerate() {
            slot.push(listeners[i % count].try_clone()?);
        }
    }
    Ok(per_worker)
}

/// The running workers, as `run` drives them through shutdown.
pub(crate) struct Ingest {
    phase: watch::Sender<Phase>,
    app: watch::Sender<Arc<SharedState>>,
    stop_accept: CancellationToken,
    exited: mpsc::UnboundedReceiver<worker::WorkerResult>,
    running: usize,
}

impl Ingest {
    /// Starts `config.workers()` workers on `listeners` (each worker its own socket when
    /// there are enough; otherwise workers share duplicates of them).
    pub(crate) fn start(
        config: &Config,
        app: Arc<SharedState>,
        listeners: Vec<std::net::TcpListener>,
        tls_listeners: Vec<std::net::TcpListener>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        stats::declare_metrics();
        listener::declare_metrics();
        if tls.is_some() {
            crate::tls::declare_metrics();
        }
        let n = config.workers().max(1);
        let per_worker = spread(listeners, n)?;
        let mut tls_per_worker = spread(tls_listeners, n)?.into_iter();
        let (phase, phase_rx) = watch::channel(Phase::Running);
        let (app_tx, app_rx) = watch::channel(app);
        let stop_accept = CancellationToken::new();
        let (exit_tx, exited) = mpsc::unbounded_channel();
        let hyper = (config.server.engine == Engine::Hyper)
            .then(|| Arc::new(hyper_engine::builder(config)));
        let h = &config.http;
        let max_connections = config.server.max_connections.max(1);
        let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
        for (id, listeners) in per_worker.into_iter().enumerate() {
            let spec = worker::Spec {
                id,
                listeners,
                app: app_rx.clone(),
                engine: config.server.engine,
                connections: connections.clone(),
                max_connections,
                queue_capacity: config.spool.max_pending_records.div_ceil(n),
                socket_options: listener::SocketOptions::from_config(&config.server),
                phase: phase_rx.clone(),
                stop_accept: stop_accept.child_token(),
                idle_timeout: Duration::from_secs(h.idle_timeout_seconds),
                max_age: (h.max_connection_age_seconds > 0)
                    .then(|| Duration::from_secs(h.max_connection_age_seconds)),
                header_timeout: Duration::from_secs(h.header_timeout_seconds),
                body_timeout: Duration::from_secs(h.body_timeout_seconds),
                hyper: hyper.clone(),
                tls_listeners: tls_per_worker.next().unwrap_or_default(),
                tls: tls.clone(),
                max_handshakes: config.tls.max_handshakes_per_worker,
            };
            let tx = exit_tx.clone();
            let handle = worker::spawn(spec)?;
            // Reports the worker's end to `run` without blocking a runtime thread on join.
            std::thread::Builder::new()
                .name(format!("ingest-{id}-join"))
                .spawn(move || {
                    let res = handle
                        .join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("ingest worker panicked")));
                    let _ = tx.send(res);
                })?;
        }
        Ok(Self {
            phase,
            app: app_tx,
            stop_accept,
            exited,
            running: n,
        })
    }

    /// Resolves when a worker stops on its own (a fatal accept error or a panic).
    pub(crate) async fn failed(&mut self) -> std::io::Error {
        loop {
            match self.exited.recv().await {
                Some(res) => {
                    self.running -= 1;
                    if let Err(e) = res {
                        return e;
                    }
                }
                None => return std::io::Error::other("ingest workers gone"),
            }
        }
    }

    /// Tells every connection the lifecycle phase.
    pub(crate) fn set_phase(&self, p: Phase) {
        let _ = self.phase.send(p);
    }

    /// Hands every worker the state of a reloaded config; each takes it between requests.
    pub(crate) fn set_app(&self, app: Arc<SharedState>) {
        let _ = self.app.send(app);
    }

    /// Stops accepting on every worker.
    pub(crate) fn stop_accepting(&self) {
        self.stop_accept.cancel();
    }

    /// Waits up to `timeout` for every worker to finish (connections drained, last group
    /// written). True when all did.
    pub(crate) async fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.running > 0 {
            match tokio::time::timeout_at(deadline, self.exited.recv()).await {
                Ok(Some(_)) => self.running -= 1,
                Ok(None) => self.running = 0,
                Err(_) => return false,
            }
        }
        true
    }
}
