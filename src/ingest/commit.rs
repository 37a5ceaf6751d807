//! Group commit per worker: the records accepted during one turn of a worker's event loop are
//! framed into one buffer and written to the spool with one `write(2)` on the worker's own
//! thread, after the ready connections of that turn have run; their requests are answered
//! when it is done (with `ack_after = "fsync"`, after an `fdatasync` run on tokio's blocking
//! pool, so the event loop keeps serving while the disk works).
//!
//! Everything here is `!Send` and lives on one worker thread: no lock, channel or atomic on the
//! per-request path, and waking a waiting connection never wakes another thread.

use crate::spool::{self, AppendError, Spool, Written};
use bytes::BytesMut;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use tokio::sync::Notify;

/// A group a record went into; [`Committer::wait`] resolves when that group is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

struct State {
    /// The group being filled.
    buf: BytesMut,
    count: usize,
    /// Number of the group being filled.
    filling: u64,
    /// Number of the last group whose result is known.
    completed: u64,
    /// Results of the last completed groups (oldest first).
    done: VecDeque<(u64, Result<(), AppendError>)>,
    /// Connections waiting for a group to complete.
    waiters: Vec<Waker>,
    /// Records in the group being filled plus the one being written.
    in_flight: usize,
    closed: bool,
}

/// The records one request adds to a group (see [`Committer::push`]).
pub(crate) struct RequestRecords<'a> {
    buf: &'a mut BytesMut,
    count: usize,
    /// Where this request's records start in `buf`.
    start: usize,
}

impl RequestRecords<'_> {
    /// Adds one record in its spool frame: `encode` appends the payload (or refuses it, and
    /// nothing is added).
    pub(crate) fn add<E>(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), E> {
        let at = spool::frame_start(self.buf);
        match encode(self.buf) {
            Ok(()) => {
                spool::frame_end(self.buf, at);
                self.count += 1;
                Ok(())
            }
            Err(e) => {
                spool::frame_abort(self.buf, at);
                Err(e)
            }
        }
    }

    /// Bytes this request's records take in the spool so far (frame headers included).
    pub(crate) fn bytes(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// One worker's group committer.
pub(crate) struct Committer {
    spool: Spool,
    /// Most records waiting at once (`spool.max_pending_records` divided among the workers); beyond it,
    /// 503 `queue_full`.
    capacity: usize,
    st: RefCell<State>,
    /// Wakes the flusher when a group gets its first record (same thread).
    work: Notify,
}

/// How many completed group results are kept for late waiters. A waiter is woken when its
/// group completes and runs before the next group can complete, so a handful is plenty.
const KEEP_RESULTS: usize = 16;

impl Committer {
    /// A committer for one worker.
    pub(crate) fn new(spool: Spool, capacity: usize) -> Rc<Self> {
        Rc::new(Self {
            spool,
            capacity: capacity.max(1),
            st: RefCell::new(State {
                buf: BytesMut::with_capacity(64 * 1024),
                count: 0,
                filling: 1,
                completed: 0,
                done: VecDeque::with_capacity(KEEP_RESULTS + 1),
                waiters: Vec::new(),
                in_flight: 0,
                closed: false,
            }),
            work: Notify::new(),
        })
    }

    /// Adds the records of one request to the group being filled, all or none: `encode`
    /// adds each with [`RequestRecords::add`]; if it fails, or adds none, nothing is kept. Refused
    /// with `Busy` when too many records wait, `Full` above the spool's high-water mark,
    /// `Closed` after [`Committer::close`]. The records share a group, so one write makes
    /// them all durable or none.
    pub(crate) fn push<T, E: From<AppendError>>(
        &self,
        encode: impl FnOnce(&mut RequestRecords<'_>) -> Result<T, E>,
    ) -> Result<(T, Ticket), E> {
        let mut st = self.st.borrow_mut();
        if st.closed {
            return Err(AppendError::Closed.into());
        }
        if !self.spool.accepting() {
            return Err(AppendError::Full.into());
        }
        if st.in_flight >= self.capacity {
            return Err(AppendError::Busy.into());
        }
        let start = st.buf.len();
        let mut records = RequestRecords {
            buf: &mut st.buf,
            count: 0,
            start,
        };
        let res = encode(&mut records);
        let added = records.count;
        match res {
            Ok(v) if added > 0 => {
                st.count += added;
                st.in_flight += added;
                if st.count == added {
                    self.work.notify_one();
                }
                Ok((v, Ticket(st.filling)))
            }
            Ok(_) => {
                st.buf.truncate(start);
                Err(AppendError::Closed.into())
            }
            Err(e) => {
                st.buf.truncate(start);
                Err(e)
            }
        }
    }

    /// Resolves with the result of `ticket`'s group.
    pub(crate) async fn wait(&self, ticket: Ticket) -> Result<(), AppendError> {
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            if ticket.0 > st.completed {
                // Not written yet (being filled, or being written right now).
                st.waiters.push(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(
                st.done
                    .iter()
                    .find(|(g, _)| *g == ticket.0)
                    .map_or(Err(AppendError::Closed), |(_, r)| *r),
            )
        })
        .await
    }

    /// Stops taking records; [`Committer::run`] writes what it has and returns.
    pub(crate) fn close(&self) {
        self.st.borrow_mut().closed = true;
        self.work.notify_one();
    }

    /// The flusher: writes each group once the ready connections of the turn have added to
    /// it. Runs on the worker's `LocalSet` until [`Committer::close`] and the last group.
    pub(crate) async fn run(self: Rc<Self>) {
        let mut spare = BytesMut::with_capacity(64 * 1024);
        loop {
            let (empty, closed) = {
                let st = self.st.borrow();
                (st.count == 0, st.closed)
            };
            if empty {
                if closed {
                    return;
                }
                self.work.notified().await;
                continue;
            }
            // Deferred until the runtime has polled every task that was ready in this turn:
            // they add their records to this group first.
            tokio::task::yield_now().await;
            let (mut group, count, gen) = {
                let mut st = self.st.borrow_mut();
                let group = std::mem::replace(&mut st.buf, std::mem::take(&mut spare));
                let count = std::mem::take(&mut st.count);
                let gen = st.filling;
                st.filling += 1;
                (group, count, gen)
            };
            let res = match self.spool.write_group(&mut group, count) {
                Ok(Written::Done) => Ok(()),
                Ok(Written::NeedsSync(file)) => {
                    let spool = self.spool.clone();
                    tokio::task::spawn_blocking(move || spool.sync(&file))
                        .await
                        .unwrap_or(Err(AppendError::Failed))
                }
                Err(e) => Err(e),
            };
            metrics::histogram!(crate::metrics::SPOOL_GROUP_RECORDS).record(count as f64);
            group.clear();
            spare = group;
            let mut st = self.st.borrow_mut();
            st.in_flight -= count;
            st.done.push_back((gen, res));
            st.completed = gen;
            while st.done.len() > KEEP_RESULTS {
                st.done.pop_front();
            }
            for w in st.waiters.drain(..) {
                w.wake();
            }
        }
    }
}
