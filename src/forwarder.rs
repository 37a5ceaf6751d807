//! The forwarder: takes encoded records from the bounded queue, sends them in BATCH frames
//! over one persistent unix-socket connection to the processing stage, keeps every record until
//! the stage ACKs it, and resends the unacknowledged ones after a reconnect.
//!
//! Ownership: request handlers hold [`QueueSender`]s; the forwarder task owns the receiving
//! end and the unacked window. The queue is the only buffer in front of the socket, so a
//! durable spool can replace it without touching the handlers (they only see `push`).

use crate::config::ForwardConfig;
use crate::metrics as m;
use crate::protocol::{self, Frame};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

/// Why a record was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The queue is at capacity: the processing stage is not keeping up.
    #[error("queue full")]
    Full,
    /// The forwarder has stopped taking records (shutdown).
    #[error("queue closed")]
    Closed,
}

/// The handlers' end of the queue. Cloning is cheap.
#[derive(Clone)]
pub struct QueueSender {
    tx: mpsc::Sender<Bytes>,
}

impl QueueSender {
    /// Queues one encoded record without waiting. On `Ok` the forwarder owns it: it will be
    /// delivered or counted in `beacon_forward_lost_records_total` at shutdown.
    pub fn push(&self, record: Bytes) -> Result<(), PushError> {
        self.tx.try_send(record).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PushError::Full,
            mpsc::error::TrySendError::Closed(_) => PushError::Closed,
        })
    }
}

/// What the forwarder reports when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardReport {
    /// Records acknowledged by the processing stage.
    pub acked: u64,
    /// Records accepted but not acknowledged when the forwarder gave up (flush deadline).
    pub lost: u64,
}

/// The forwarder task's state.
pub struct Forwarder {
    rx: mpsc::Receiver<Bytes>,
    cfg: ForwardConfig,
    socket_path: PathBuf,
    linger: Duration,
    instance: u64,
    next_seq: u64,
    /// Sent (or about to be sent) and not yet acknowledged, in sequence order.
    unacked: VecDeque<(u64, Bytes)>,
    acked: u64,
}

/// Creates the queue and the forwarder that drains it.
pub fn channel(capacity: usize, cfg: &ForwardConfig) -> (QueueSender, Forwarder) {
    let (tx, rx) = mpsc::channel(capacity);
    (
        QueueSender { tx },
        Forwarder {
            rx,
            socket_path: cfg.socket_path.clone(),
            linger: Duration::from_millis(cfg.linger_ms),
            cfg: cfg.clone(),
            instance: fastrand::u64(..),
            next_seq: 1,
            unacked: VecDeque::new(),
            acked: 0,
        },
    )
}

enum ConnEnd {
    /// Everything delivered and the queue is closed.
    Done,
    /// Connection failed; reconnect.
    Lost(&'static str),
}

impl Forwarder {
    /// Runs until `close` turns true *and* every queued record is acknowledged, publishing the
    /// acknowledged count on `report`. The caller bounds the shutdown flush with a deadline;
    /// accepted minus acknowledged is then what was lost (see `lib.rs`).
    pub async fn run(
        mut self,
        mut close: watch::Receiver<bool>,
        report: watch::Sender<ForwardReport>,
    ) {
        let mut backoff = Duration::from_millis(self.cfg.reconnect_initial_ms);
        let max_backoff = Duration::from_millis(self.cfg.reconnect_max_ms);
        let mut last_warn: Option<Instant> = None;
        loop {
            if *close.borrow() {
                self.rx.close();
            }
            if self.rx.is_closed() && self.rx.is_empty() && self.unacked.is_empty() {
                break;
            }
            match UnixStream::connect(&self.socket_path).await {
                Ok(stream) => {
                    metrics::counter!(m::FORWARD_CONNECTS_TOTAL).increment(1);
                    tracing::info!(socket = %self.socket_path.display(), unacked = self.unacked.len(), "connected to processing stage");
                    let connected = Instant::now();
                    let end = self.connection(stream, &mut close, &report).await;
                    // A stage that accepts and drops us at once must not get a reconnect storm.
                    if connected.elapsed() > Duration::from_secs(1) {
                        backoff = Duration::from_millis(self.cfg.reconnect_initial_ms);
                    }
                    match end {
                        ConnEnd::Done => break,
                        ConnEnd::Lost(reason) => {
                            metrics::counter!(m::FORWARD_DISCONNECTS_TOTAL, "reason" => reason)
                                .increment(1);
                            tracing::warn!(
                                reason,
                                unacked = self.unacked.len(),
                                "lost processing stage; reconnecting"
                            );
                        }
                    }
                }
                Err(e) => {
                    if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!(socket = %self.socket_path.display(), error = %e, queued = self.rx.len(), "cannot reach processing stage; retrying");
                        last_warn = Some(Instant::now());
                    }
                }
            }
            // Full jitter (0.5x..1.5x) so a fleet of collectors does not reconnect in step.
            let delay = backoff.mul_f64(0.5 + fastrand::f64());
            metrics::gauge!(m::QUEUE_DEPTH).set(self.rx.len() as f64);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // On shutdown, retry at the current pace but notice the close at once.
                _ = crate::wait_true(&mut close), if !*close.borrow() => {}
            }
            backoff = (backoff * 2).min(max_backoff);
        }
        report.send_modify(|r| r.acked = self.acked);
        tracing::info!(
            acked = self.acked,
            "forwarder finished: every accepted beacon acknowledged"
        );
    }

    async fn connection(
        &mut self,
        stream: UnixStream,
        close: &mut watch::Receiver<bool>,
        report: &watch::Sender<ForwardReport>,
    ) -> ConnEnd {
        let (mut rd, mut wr) = stream.into_split();
        // The reader runs in its own task so that reading a frame is never cancelled half-way
        // by the select below; it publishes the latest cumulative ACK. Dropping its sender
        // (EOF, error, protocol violation) tells us the connection is gone.
        let (ack_tx, mut ack_rx) = watch::channel(0u64);
        let reader = tokio::spawn(async move {
            loop {
                match protocol::read_frame(&mut rd).await {
                    Ok(Some(Frame::Ack { seq })) => {
                        ack_tx.send_if_modified(|cur| {
                            let newer = seq > *cur;
                            if newer {
                                *cur = seq;
                            }
                            newer
                        });
                    }
                    Ok(Some(other)) => {
                        tracing::error!(frame = ?other, "processing stage sent an unexpected frame");
                        return;
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading from processing stage");
                        return;
                    }
                }
            }
        });
        let _reader_guard = AbortOnDrop(reader);
        let write_timeout = Duration::from_secs(self.cfg.ack_timeout_seconds);

        let mut buf = BytesMut::with_capacity(64 * 1024);
        Frame::Hello {
            version: protocol::VERSION,
            instance: self.instance,
        }
        .encode(&mut buf);
        // Resend what the previous connection left unacknowledged, oldest first, in batches.
        let resend = self.unacked.len();
        if resend > 0 {
            metrics::counter!(m::FORWARD_RESENT_RECORDS_TOTAL).increment(resend as u64);
            let mut i = 0;
            while i < self.unacked.len() {
                let end = (i + self.cfg.batch_max_records).min(self.unacked.len());
                let first = self.unacked[i].0;
                protocol::encode_batch(first, self.unacked.range(i..end).map(|(_, b)| b), &mut buf);
                i = end;
            }
            metrics::counter!(m::FORWARD_SENT_RECORDS_TOTAL).increment(resend as u64);
        }
        if let Err(reason) = write(&mut wr, &mut buf, write_timeout).await {
            return ConnEnd::Lost(reason);
        }

        let mut batch: Vec<Bytes> = Vec::with_capacity(self.cfg.batch_max_records);
        let mut last_progress = Instant::now();
        let mut stall_check = tokio::time::interval(Duration::from_secs(1));
        loop {
            metrics::gauge!(m::FORWARD_UNACKED_RECORDS).set(self.unacked.len() as f64);
            metrics::gauge!(m::QUEUE_DEPTH).set(self.rx.len() as f64);
            if self.rx.is_closed() && self.rx.is_empty() && self.unacked.is_empty() {
                let _ = wr.shutdown().await;
                return ConnEnd::Done;
            }
            let room = self
                .cfg
                .max_unacked_records
                .saturating_sub(self.unacked.len());
            let can_take = room > 0 && !(self.rx.is_closed() && self.rx.is_empty());
            tokio::select! {
                biased;
                changed = ack_rx.changed() => {
                    if changed.is_err() {
                        return ConnEnd::Lost("closed");
                    }
                    let seq = *ack_rx.borrow_and_update();
                    let mut n = 0u64;
                    while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
                        self.unacked.pop_front();
                        n += 1;
                    }
                    if n > 0 {
                        self.acked += n;
                        last_progress = Instant::now();
                        metrics::counter!(m::FORWARD_ACKED_RECORDS_TOTAL).increment(n);
                        report.send_modify(|r| r.acked = self.acked);
                    }
                }
                got = self.rx.recv_many(&mut batch, self.cfg.batch_max_records.min(room.max(1))), if can_take => {
                    if got == 0 {
                        // Closed and drained: wait for the last ACKs.
                        continue;
                    }
                    let limit = self.cfg.batch_max_records.min(room);
                    if batch.len() < limit && !self.linger.is_zero() && !self.rx.is_closed() {
                        tokio::time::sleep(self.linger).await;
                        while batch.len() < limit {
                            match self.rx.try_recv() {
                                Ok(r) => batch.push(r),
                                Err(_) => break,
                            }
                        }
                    }
                    let got = batch.len();
                    if self.unacked.is_empty() {
                        last_progress = Instant::now();
                    }
                    let first = self.next_seq;
                    for r in batch.drain(..) {
                        self.unacked.push_back((self.next_seq, r));
                        self.next_seq += 1;
                    }
                    let start = self.unacked.len() - got;
                    protocol::encode_batch(first, self.unacked.range(start..).map(|(_, b)| b), &mut buf);
                    metrics::counter!(m::FORWARD_SENT_RECORDS_TOTAL).increment(got as u64);
                    if let Err(reason) = write(&mut wr, &mut buf, write_timeout).await {
                        return ConnEnd::Lost(reason);
                    }
                }
                _ = crate::wait_true(close), if !self.rx.is_closed() => {
                    // Refuse new records; what is queued is still delivered.
                    self.rx.close();
                }
                _ = stall_check.tick() => {
                    if !self.unacked.is_empty() && last_progress.elapsed() > write_timeout {
                        return ConnEnd::Lost("ack_timeout");
                    }
                }
            }
        }
    }
}

async fn write(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    buf: &mut BytesMut,
    limit: Duration,
) -> Result<(), &'static str> {
    let res = tokio::time::timeout(limit, wr.write_all(buf)).await;
    buf.clear();
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("write_error"),
        Err(_) => Err("write_timeout"),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
