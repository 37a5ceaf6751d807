//! What the connections of one worker share: the [`Worker`] state (scratch buffers, counters,
//! commit group, deadlines, the worker-local phase broadcast) and the first step of every
//! connection, reading the PROXY header. Both engines and the worker loop read it; it reads
//! neither of them.

use super::commit::Committer;
use super::state::SharedState;
use super::stats::Counter;
use super::stats::Stats;
use super::Phase;
use crate::time::DateCache;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A worker's own state, shared by its connection tasks (one thread: `Rc`, `RefCell`).
pub(crate) struct Worker {
    /// Shared request state.
    /// The current config's shared state (replaced on SIGHUP; see [`Worker::app`]).
    pub(crate) app: RefCell<Arc<SharedState>>,
    /// This worker's group commit.
    pub(crate) committer: Rc<Committer>,
    /// This worker's counters.
    pub(crate) stats: Stats,
    /// Where reads land first (borrowed only between awaits).
    pub(crate) scratch: RefCell<Vec<u8>>,
    /// Where answers are formatted (borrowed only between awaits).
    pub(crate) out: RefCell<Vec<u8>>,
    /// TLS connections: ciphertext read (the scratch of [`super::tls_conn`]), allocated at
    /// the first TLS connection.
    pub(crate) tls_in: RefCell<Vec<u8>>,
    /// TLS connections: plaintext decrypted from one read.
    pub(crate) tls_plain: RefCell<Vec<u8>>,
    /// TLS connections: records to write (handshake messages, encrypted answers).
    pub(crate) tls_out: RefCell<Vec<u8>>,
    /// The `Date` header, formatted once a second.
    pub(crate) date: RefCell<DateCache>,
    /// Lifecycle, from `run` (for the hyper engine's connections).
    pub(crate) phase: watch::Receiver<Phase>,
    /// Lifecycle as this worker last saw it, with the connections waiting for it to change:
    /// a worker-local broadcast, so a connection's wait costs no lock or atomic.
    pub(crate) phase_now: std::cell::Cell<Phase>,
    pub(super) phase_waiters: RefCell<Waiters>,
    /// Idle keep-alive timeout.
    pub(crate) idle_timeout: Duration,
    /// `http.max_connection_age_seconds`, when set.
    pub(crate) max_age: Option<Duration>,
    /// When the worker started: connection expiries are kept as milliseconds since then.
    pub(crate) epoch: tokio::time::Instant,
    /// Slowloris deadline from a request's first byte.
    pub(crate) header_timeout: Duration,
    /// Deadline for a body once its head is in.
    pub(crate) body_timeout: Duration,
    /// `beacon_connections_open`, held so a connection does no registry lookup.
    pub(crate) open: metrics::Gauge,
    /// Ended connections waiting to be closed by [`close_ended`], a few per turn.
    pub(crate) ended: RefCell<Vec<(TcpStream, tokio::sync::OwnedSemaphorePermit)>>,
    /// Wakes [`close_ended`].
    pub(crate) ended_wake: tokio::sync::Notify,
}

/// Scratch read buffer per worker: a read takes whatever the socket has up to this.
pub(super) const SCRATCH_BYTES: usize = 64 * 1024;

/// How many ended connections [`close_ended`] closes before letting every other ready task of
/// the worker run.
const CLOSES_PER_TURN: usize = 64;

/// Closes ended connections in rounds of [`CLOSES_PER_TURN`], yielding between rounds. A close
/// is a syscall that sends the FIN and, on loopback, processes it in the caller's softirq: tens
/// of microseconds. Thousands of clients going at once (a NAT box, a balancer dropping its
/// pool) would otherwise close in one run of the event loop, ahead of every live request.
pub(crate) async fn close_ended(w: Rc<Worker>) {
    loop {
        w.ended_wake.notified().await;
        loop {
            let round: Vec<_> = {
                let mut ended = w.ended.borrow_mut();
                let n = ended.len().min(CLOSES_PER_TURN);
                ended.drain(..n).collect()
            };
            if round.is_empty() {
                break;
            }
            drop(round);
            tokio::task::yield_now().await;
        }
    }
}

/// Connections waiting for the phase to change: a slot each, reused.
#[derive(Default)]
pub(crate) struct Waiters {
    slots: Vec<Option<std::task::Waker>>,
    free: Vec<usize>,
}

impl Waiters {
    pub(super) fn take_all(&mut self) -> Vec<std::task::Waker> {
        self.slots.iter_mut().filter_map(Option::take).collect()
    }
}

/// A connection's place in its worker's phase broadcast; released when dropped.
pub(crate) struct PhaseSlot {
    w: Rc<Worker>,
    slot: usize,
}

/// [`Worker::connection_expiry`] of a connection without an age limit.
pub(crate) const NO_EXPIRY: u32 = u32::MAX;

/// A worker's connection deadlines (`[http]`).
pub(crate) struct Deadlines {
    /// Idle keep-alive timeout.
    pub(crate) idle: Duration,
    /// `http.max_connection_age_seconds`, when set.
    pub(crate) max_age: Option<Duration>,
    /// Slowloris deadline from a request's first byte.
    pub(crate) header: Duration,
    /// Deadline for a body once its head is in.
    pub(crate) body: Duration,
}

impl Worker {
    /// A worker's state: the current shared state, its commit group, the lifecycle from `run`.
    pub(crate) fn new(
        app: Arc<SharedState>,
        committer: Rc<Committer>,
        phase: watch::Receiver<Phase>,
        deadlines: Deadlines,
    ) -> Self {
        let now = *phase.borrow();
        Self {
            app: RefCell::new(app),
            committer,
            stats: Stats::default(),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
            out: RefCell::new(Vec::with_capacity(4096)),
            tls_in: RefCell::new(Vec::new()),
            tls_plain: RefCell::new(Vec::new()),
            tls_out: RefCell::new(Vec::new()),
            date: RefCell::new(DateCache::default()),
            phase,
            phase_now: std::cell::Cell::new(now),
            phase_waiters: RefCell::new(Waiters::default()),
            idle_timeout: deadlines.idle,
            max_age: deadlines.max_age,
            epoch: tokio::time::Instant::now(),
            header_timeout: deadlines.header,
            body_timeout: deadlines.body,
            open: metrics::gauge!(crate::metrics::CONNECTIONS_OPEN),
            ended: RefCell::new(Vec::new()),
            ended_wake: tokio::sync::Notify::new(),
        }
    }

    /// The current shared state. Borrow it for synchronous work only (a reload replaces it
    /// between tasks' turns); clone the `Arc` to keep it across an await.
    pub(crate) fn app(&self) -> std::cell::Ref<'_, Arc<SharedState>> {
        self.app.borrow()
    }

    /// When a connection accepted now must stop being kept alive, in milliseconds since
    /// [`Worker::epoch`] ([`NO_EXPIRY`] without an age limit): the configured age spread ±10 %
    /// so the connections of one burst do not all reconnect at once. Four bytes, kept in a
    /// connection's padding: an idle connection's size is the fleet's memory.
    pub(crate) fn connection_expiry(&self) -> u32 {
        match self.max_age {
            None => NO_EXPIRY,
            Some(a) => {
                let at = self.epoch.elapsed() + a.mul_f64(0.9 + 0.2 * fastrand::f64());
                at.as_millis().min(u128::from(NO_EXPIRY - 1)) as u32
            }
        }
    }

    /// The instant of an expiry from [`Worker::connection_expiry`].
    pub(crate) fn expiry_instant(&self, expiry: u32) -> Option<tokio::time::Instant> {
        (expiry != NO_EXPIRY).then(|| self.epoch + Duration::from_millis(u64::from(expiry)))
    }

    /// Counts a connection closed because it reached its age.
    pub(crate) fn aged_out(&self) {
        self.stats.add(Counter::AgedOut, 1);
    }

    /// The new lifecycle phase: stored, and every waiting connection woken to read it.
    pub(crate) fn set_phase(&self, p: Phase) {
        self.phase_now.set(p);
        for waker in self.phase_waiters.borrow_mut().take_all() {
            waker.wake();
        }
    }

    /// A slot for a connection to wait on phase changes with.
    pub(crate) fn phase_slot(self: &Rc<Self>) -> PhaseSlot {
        let mut ws = self.phase_waiters.borrow_mut();
        let slot = ws.free.pop().unwrap_or_else(|| {
            ws.slots.push(None);
            ws.slots.len() - 1
        });
        PhaseSlot {
            w: self.clone(),
            slot,
        }
    }
}

impl PhaseSlot {
    /// Wakes this task at the next phase change (call when about to return `Pending`).
    pub(crate) fn register(&self, cx: &std::task::Context<'_>) {
        let mut ws = self.w.phase_waiters.borrow_mut();
        let entry = &mut ws.slots[self.slot];
        if !entry.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *entry = Some(cx.waker().clone());
        }
    }
}

impl Drop for PhaseSlot {
    fn drop(&mut self) {
        let mut ws = self.w.phase_waiters.borrow_mut();
        ws.slots[self.slot] = None;
        ws.free.push(self.slot);
    }
}
