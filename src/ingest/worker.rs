//! Thread-per-core workers: each is an OS thread with a current-thread tokio runtime that owns
//! its `SO_REUSEPORT` listener, its connections and their timers, its share of the
//! connection cap, its commit group, its scratch buffers and its counters. Nothing on the
//! per-request path touches another worker or wakes another thread.

use super::commit::Committer;
use super::listener::{self, SocketOptions};
use super::state::SharedState;
use super::stats::Counter;
use super::tls_conn::{Tls, TlsIo};
use super::worker_state::{Deadlines, Worker};
use super::{native, Engine, Phase};
use crate::lifecycle::CancellationToken;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// What a worker thread needs, handed over by [`super::Ingest::start`].
pub(crate) struct Spec {
    /// Worker number (thread name, logs).
    pub(crate) id: usize,
    /// The listening sockets this worker accepts from (its own `SO_REUSEPORT` socket).
    pub(crate) listeners: Vec<std::net::TcpListener>,
    /// Shared request state.
    pub(crate) app: watch::Receiver<Arc<SharedState>>,
    /// Which HTTP engine serves connections.
    pub(crate) engine: Engine,
    /// `server.max_connections`, shared by every worker: a slot freed on one worker is taken
    /// by whichever worker has a connection waiting. (Split per worker, clients queued on a
    /// full worker waited while another had free slots.)
    pub(crate) connections: Arc<Semaphore>,
    /// `server.max_connections` (the permits `connections` started with).
    pub(crate) max_connections: usize,
    /// This worker's share of `spool.max_pending_records`.
    pub(crate) queue_capacity: usize,
    /// Per-connection socket options.
    pub(crate) socket_options: SocketOptions,
    /// Lifecycle, from `run`.
    pub(crate) phase: watch::Receiver<Phase>,
    /// Cancelled when accepting must stop.
    pub(crate) stop_accept: CancellationToken,
    /// `http.idle_timeout_seconds` and the other deadlines.
    pub(crate) idle_timeout: Duration,
    /// `http.max_connection_age_seconds`, when set.
    pub(crate) max_age: Option<Duration>,
    /// `http.header_timeout_seconds`.
    pub(crate) header_timeout: Duration,
    /// `http.body_timeout_seconds`.
    pub(crate) body_timeout: Duration,
    /// The hyper builder, for `engine = "hyper"`.
    pub(crate) hyper: Option<Arc<hyper::server::conn::http1::Builder>>,
    /// This worker's HTTPS listening sockets (`tls.listen`), when TLS is on.
    pub(crate) tls_listeners: Vec<std::net::TcpListener>,
    /// The rustls config of every TLS connection (its certificates reload under it).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// `tls.max_handshakes_per_worker`.
    pub(crate) max_handshakes: usize,
}

/// Why a worker stopped early.
pub(crate) type WorkerResult = Result<(), std::io::Error>;

/// Starts a worker thread. It returns when accepting stopped and its connections are gone
/// (or were dropped at `Phase::Abort`), after writing its last group and counters.
pub(crate) fn spawn(spec: Spec) -> std::io::Result<std::thread::JoinHandle<WorkerResult>> {
    std::thread::Builder::new()
        .name(format!("ingest-{}", spec.id))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(spec))
        })
}

/// The worker's own tasks: counters flushed to the registry once a second, and the lifecycle
/// phase passed on to the connections waiting for it.
fn housekeeping(
    w: &Rc<Worker>,
    phase: watch::Receiver<Phase>,
    app: watch::Receiver<Arc<SharedState>>,
) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let stats_task = {
        let w = w.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                w.stats.flush(&w.app());
            }
        })
    };
    let phase_task = {
        let w = w.clone();
        let (mut rx, mut app) = (phase, app);
        // Runs only between the connections' turns, so no connection holds a borrow of the
        // state it replaces (they borrow it for synchronous work only).
        tokio::task::spawn_local(async move {
            loop {
                tokio::select! {
                    r = rx.changed() => {
                        if r.is_err() {
                            break;
                        }
                        w.set_phase(*rx.borrow_and_update());
                    }
                    r = app.changed() => {
                        if r.is_err() {
                            break;
                        }
                        *w.app.borrow_mut() = app.borrow_and_update().clone();
                    }
                }
            }
        })
    };
    (stats_task, phase_task)
}

async fn run(spec: Spec) -> WorkerResult {
    let first = spec.app.borrow().clone();
    let committer = Committer::new(first.spool.clone(), spec.queue_capacity);
    let w = Rc::new(Worker::new(
        first,
        committer.clone(),
        spec.phase.clone(),
        Deadlines {
            idle: spec.idle_timeout,
            max_age: spec.max_age,
            header: spec.header_timeout,
            body: spec.body_timeout,
        },
    ));
    let flusher = tokio::task::spawn_local(committer.clone().run());
    let closer = tokio::task::spawn_local(super::worker_state::close_ended(w.clone()));
    let (stats_task, phase_task) = housekeeping(&w, spec.phase.clone(), spec.app.clone());
    let permits = spec.connections.clone();
    let mut accepts = tokio::task::JoinSet::new();
    // Handshakes in progress on this worker (every TLS listener of it together).
    let gate = Arc::new(Semaphore::new(spec.max_handshakes.max(1)));
    let plain = spec.listeners.into_iter().map(|l| (l, None));
    let tls = spec
        .tls_listeners
        .into_iter()
        .filter_map(|l| Some((l, Some(spec.tls.clone()?))));
    for (l, tls) in plain.chain(tls) {
        let l = tokio::net::TcpListener::from_std(l)?;
        let (w, opts, engine, hyper) = (
            w.clone(),
            spec.socket_options,
            spec.engine,
            spec.hyper.clone(),
        );
        accepts.spawn_local(listener::accept_loop(
            l,
            permits.clone(),
            tls.is_some().then(|| gate.clone()),
            spec.stop_accept.clone(),
            move |stream, peer, permit, slot| {
                if let Err(e) = opts.apply(&stream) {
                    // Usually the peer already reset the connection.
                    tracing::debug!(%peer, error = %e, "setting socket options; dropping connection");
                    return;
                }
                w.stats.add(Counter::Connections, 1);
                let (w, hyper) = (w.clone(), hyper.clone());
                let tls = tls.clone().map(|config| Tls { config, gate: slot });
                if engine == Engine::Native {
                    let tls = match tls {
                        Some(t) => match TlsIo::new(t.config, t.gate) {
                            Some(io) => Some(Box::new(io)),
                            None => return,
                        },
                        None => None,
                    };
                    // Memory per idle connection is what a browser fleet costs: the native
                    // task is one flat future (see `native::run`).
                    tokio::task::spawn_local(native::run(stream, peer, permit, w, tls));
                    return;
                }
                super::hyper_engine::spawn(stream, peer, permit, w, hyper, tls);
            },
        ));
    }
    // Accepting runs until told to stop; a fatal accept error ends the worker early.
    let mut failure = None;
    while let Some(res) = accepts.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure = Some(e);
                break;
            }
            Err(e) => {
                failure = Some(std::io::Error::other(e));
                break;
            }
        }
    }
    accepts.abort_all();
    // Drain: wait until every connection is closed (the slots are shared, so every worker's:
    // they drain together), until the phase says abort.
    let all = u32::try_from(spec.max_connections.max(1)).unwrap_or(u32::MAX);
    let mut phase = spec.phase.clone();
    tokio::select! {
        _ = permits.acquire_many(all) => {}
        _ = phase.wait_for(|p| *p == Phase::Abort) => {
            // Connections notice the abort and close; give them a moment to do so.
            let _ = tokio::time::timeout(Duration::from_secs(1), permits.acquire_many(all)).await;
        }
    }
    committer.close();
    let _ = flusher.await;
    stats_task.abort();
    closer.abort();
    phase_task.abort();
    w.stats.flush(&w.app());
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
