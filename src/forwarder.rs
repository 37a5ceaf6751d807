//! The forwarder: streams spooled records in BATCH frames over one persistent unix-socket
//! connection to the processing stage, and turns the stage's ACKs into [`Spool::ack`], which
//! deletes fully acknowledged segments.
//!
//! It reads the spool's segment files (normally still in the page cache) rather than keeping
//! records in memory, so sending, replay after a reconnect and replay after a crash are the
//! same code path: start at `acked + 1` and read forward. Memory stays bounded however long
//! the stage is away; the spool's size limit is the only buffer.

use crate::config::ForwardConfig;
use crate::lifecycle::CancellationToken;
use crate::metrics as m;
use crate::protocol::{self, Frame};
use crate::spool::Spool;
use crate::tasks::AbortOnDrop;
use bytes::{Bytes, BytesMut};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::watch;

/// The forwarder task's state.
pub(crate) struct Forwarder {
    spool: Spool,
    cfg: ForwardConfig,
    socket_path: PathBuf,
    linger: Duration,
    /// Highest sequence number sent on any connection of this process (for counting resends).
    last_sent: u64,
}

enum ConnEnd {
    /// Closing, and everything in the spool is acknowledged.
    Done,
    /// Connection failed; reconnect.
    Lost(Disconnect),
}

/// Why a connection to the stage was lost: the `reason` of `FORWARD_DISCONNECTS_TOTAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disconnect {
    /// The stage closed it.
    Closed,
    /// Reading the spool failed.
    SpoolRead,
    /// No acknowledgement within `forward.ack_timeout_seconds`.
    AckTimeout,
    /// Writing failed.
    WriteError,
    /// A write did not finish within `forward.ack_timeout_seconds`.
    WriteTimeout,
}

impl Disconnect {
    const ALL: [Disconnect; 5] = [
        Disconnect::Closed,
        Disconnect::SpoolRead,
        Disconnect::AckTimeout,
        Disconnect::WriteError,
        Disconnect::WriteTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Disconnect::Closed => "closed",
            Disconnect::SpoolRead => "spool_read",
            Disconnect::AckTimeout => "ack_timeout",
            Disconnect::WriteError => "write_error",
            Disconnect::WriteTimeout => "write_timeout",
        }
    }
}

/// Exports the forwarder's series at 0 (see [`crate::metrics`]).
fn declare_metrics() {
    for name in [
        m::FORWARD_CONNECTS_TOTAL,
        m::FORWARD_SENT_RECORDS_TOTAL,
        m::FORWARD_ACKED_RECORDS_TOTAL,
        m::FORWARD_RESENT_RECORDS_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for d in Disconnect::ALL {
        metrics::counter!(m::FORWARD_DISCONNECTS_TOTAL, "reason" => d.label()).increment(0);
    }
    metrics::gauge!(m::FORWARD_UNACKED_RECORDS).increment(0.0);
}

impl Forwarder {
    /// A forwarder for `spool`.
    pub(crate) fn new(spool: Spool, cfg: &ForwardConfig) -> Self {
        let acked = spool.acked();
        Self {
            spool,
            socket_path: cfg.socket_path.clone(),
            linger: Duration::from_millis(cfg.linger_ms),
            cfg: cfg.clone(),
            last_sent: acked,
        }
    }

    /// Runs until `close` is cancelled and everything in the spool is acknowledged. The caller
    /// bounds that with the shutdown flush deadline; what is left stays in the spool for the
    /// next start.
    pub(crate) async fn run(mut self, close: CancellationToken) {
        declare_metrics();
        let mut backoff = Duration::from_millis(self.cfg.reconnect_initial_ms);
        let max_backoff = Duration::from_millis(self.cfg.reconnect_max_ms);
        let unreachable_log = crate::logging::Throttle::default();
        loop {
            if close.is_cancelled() && self.spool.unacked() == 0 {
                break;
            }
            match UnixStream::connect(&self.socket_path).await {
                Ok(stream) => {
                    metrics::counter!(m::FORWARD_CONNECTS_TOTAL).increment(1);
                    tracing::info!(socket = %self.socket_path.display(), unacked = self.spool.unacked(), "connected to processing stage");
                    let connected = Instant::now();
                    let end = self.connection(stream, &close).await;
                    self.spool.checkpoint();
                    // A stage that accepts and drops us at once must not get a reconnect storm.
                    if connected.elapsed() > Duration::from_secs(1) {
                        backoff = Duration::from_millis(self.cfg.reconnect_initial_ms);
                    }
                    match end {
                        ConnEnd::Done => break,
                        ConnEnd::Lost(reason) => {
                            metrics::counter!(m::FORWARD_DISCONNECTS_TOTAL, "reason" => reason.label())
                                .increment(1);
                            tracing::warn!(
                                reason = reason.label(),
                                unacked = self.spool.unacked(),
                                "lost processing stage; reconnecting"
                            );
                        }
                    }
                }
                Err(e) => {
                    if let Some(suppressed) = unreachable_log.allow() {
                        tracing::warn!(socket = %self.socket_path.display(), error = %e, unacked = self.spool.unacked(), suppressed, "cannot reach processing stage; retrying");
                    }
                }
            }
            // Full jitter (0.5x..1.5x) so a fleet of collectors does not reconnect in step.
            let delay = backoff.mul_f64(0.5 + fastrand::f64());
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // Notice a shutdown at once (it may be able to finish now).
                _ = close.cancelled(), if !close.is_cancelled() => {}
            }
            backoff = (backoff * 2).min(max_backoff);
        }
        self.spool.checkpoint();
        tracing::info!(
            acked_up_to = self.spool.acked(),
            "forwarder finished: the spool is empty"
        );
    }

    /// One connection to the stage: HELLO, then batches out and ACKs in until it ends.
    ///
    /// Over the house limit of ~100 lines on purpose: one `select!` over reading ACKs, sending
    /// batches, the ack deadline and shutdown; its arms share the in-flight window, and split
    /// into functions each would need all of it borrowed.
    async fn connection(&mut self, stream: UnixStream, close: &CancellationToken) -> ConnEnd {
        let (rd, mut wr) = stream.into_split();
        let (mut ack_rx, _reader_guard) = ack_reader(rd);
        let io_timeout = Duration::from_secs(self.cfg.ack_timeout_seconds);

        let mut buf = BytesMut::with_capacity(64 * 1024);
        Frame::Hello {
            version: protocol::VERSION,
            instance: self.spool.instance(),
        }
        .encode(&mut buf);
        if let Err(reason) = write(&mut wr, &mut buf, io_timeout).await {
            return ConnEnd::Lost(reason);
        }

        // Everything after the last ACK is (re)sent, oldest first.
        let mut acked = self.spool.acked();
        let mut reader = Some(self.spool.reader(acked + 1));
        let mut sent = acked;
        let mut written_rx = self.spool.written();
        let mut batch: Vec<(u64, Bytes)> = Vec::with_capacity(self.cfg.batch_max_records);
        let mut last_progress = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut closing = close.is_cancelled();
        // Set when a read found nothing readable below `written` (a corrupt tail being
        // skipped): wait for new records or the next tick instead of spinning.
        let mut stalled = false;
        let mut last_send = Instant::now()
            .checked_sub(self.linger)
            .unwrap_or_else(Instant::now);
        loop {
            let written = *written_rx.borrow_and_update();
            let position = reader.as_ref().expect("present between reads").position();
            let inflight = sent.saturating_sub(acked);
            metrics::gauge!(m::FORWARD_UNACKED_RECORDS).set(inflight as f64);
            if closing && inflight == 0 && position > written {
                let _ = wr.shutdown().await;
                return ConnEnd::Done;
            }
            let room = (self.cfg.max_unacked_records as u64).saturating_sub(inflight);
            // A batch goes out when it is full, or `linger` after the previous one: the
            // workers commit a small group every event-loop turn, and sending each on its own
            // cost a wake-up of this thread and of the stage per group.
            let pending = (written + 1).saturating_sub(position);
            let lingering = !closing
                && pending < self.cfg.batch_max_records as u64
                && last_send.elapsed() < self.linger;
            let can_send = position <= written && room > 0 && !stalled && !lingering;
            tokio::select! {
                biased;
                changed = ack_rx.changed() => {
                    if changed.is_err() {
                        return ConnEnd::Lost(Disconnect::Closed);
                    }
                    let seq = *ack_rx.borrow_and_update();
                    // New or repeated (a heartbeat): the stage is alive and working.
                    last_progress = Instant::now();
                    if seq > acked {
                        metrics::counter!(m::FORWARD_ACKED_RECORDS_TOTAL).increment(seq.min(sent) - acked);
                        acked = seq.min(sent);
                        self.spool.ack(acked);
                    }
                }
                () = tokio::time::sleep_until((last_send + self.linger).into()), if lingering && position <= written && !stalled => {}
                _ = std::future::ready(()), if can_send => {
                    if crate::fault::fires(crate::fault::Point::ForwarderPanic, self.spool.dir()) {
                        panic!("fault point ForwarderPanic");
                    }
                    last_send = Instant::now();
                    if inflight == 0 {
                        last_progress = Instant::now();
                    }
                    let max = (self.cfg.batch_max_records as u64).min(room) as usize;
                    // Read in place: the records were written moments ago and are in the page
                    // cache. (A cold replay after a restart waits on the disk here, on this
                    // runtime, never on an ingest worker.) A hand-off to the blocking pool
                    // cost two thread switches per batch.
                    let res = reader
                        .as_mut()
                        .expect("present between reads")
                        .read(written, max, &mut batch);
                    if let Err(e) = res {
                        tracing::error!(error = %e, "reading the spool");
                        return ConnEnd::Lost(Disconnect::SpoolRead);
                    }
                    if batch.is_empty() {
                        stalled = true;
                        continue;
                    }
                    sent = self.frame(&mut batch, &mut buf);
                    if let Err(reason) = write_heard(&mut wr, &mut buf, io_timeout, &ack_rx).await {
                        return ConnEnd::Lost(reason);
                    }
                }
                changed = written_rx.changed(), if !can_send && (position > written || stalled) => {
                    stalled = false;
                    if changed.is_err() {
                        // Spool writer gone (shutdown); what is written is all there will be.
                        closing = true;
                        continue;
                    }
                    // New records after an idle moment: the linger above gives the batch a
                    // moment to fill. They are already answered: no client latency.
                }
                _ = close.cancelled(), if !closing => closing = true,
                _ = tick.tick() => {
                    stalled = false;
                    self.spool.checkpoint();
                    if inflight > 0 && last_progress.elapsed() > io_timeout {
                        return ConnEnd::Lost(Disconnect::AckTimeout);
                    }
                }
            }
        }
    }

    /// Encodes `batch` (emptied) into `buf` as BATCH frames, one per run of consecutive
    /// sequence numbers (a corrupt, skipped record leaves a gap), counts sends and resends, and
    /// returns the last sequence number sent.
    fn frame(&mut self, batch: &mut Vec<(u64, Bytes)>, buf: &mut BytesMut) -> u64 {
        let mut start = 0;
        for i in 1..=batch.len() {
            if i == batch.len() || batch[i].0 != batch[i - 1].0 + 1 {
                protocol::encode_batch(batch[start].0, batch[start..i].iter().map(|(_, b)| b), buf);
                start = i;
            }
        }
        let first = batch[0].0;
        let last = batch[batch.len() - 1].0;
        if first <= self.last_sent {
            let resent = self.last_sent.min(last) - first + 1;
            metrics::counter!(m::FORWARD_RESENT_RECORDS_TOTAL).increment(resent);
        }
        metrics::counter!(m::FORWARD_SENT_RECORDS_TOTAL).increment(batch.len() as u64);
        batch.clear();
        self.last_sent = self.last_sent.max(last);
        last
    }
}

/// Reads ACKs in a task of its own, so that reading a frame is never cancelled half-way by
/// the connection's select; publishes the latest cumulative ACK. The sender dropped (EOF,
/// error, protocol violation) means the connection is gone. The task ends with the guard.
///
/// Every ACK frame wakes the receiver, a repeated one too: a stage whose sink holds a batch
/// repeats its last ACK every [`protocol::HEARTBEAT`], which says it is alive and working.
fn ack_reader(mut rd: tokio::net::unix::OwnedReadHalf) -> (watch::Receiver<u64>, AbortOnDrop<()>) {
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let reader_task = tokio::spawn(async move {
        loop {
            match protocol::read_frame(&mut rd).await {
                Ok(Some(Frame::Ack { seq })) => {
                    ack_tx.send_modify(|cur| *cur = (*cur).max(seq));
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
    (ack_rx, AbortOnDrop(reader_task))
}

/// [`write`], with `limit` counted from the last ACK frame heard rather than from the start:
/// a stage whose sink holds batches stops reading (its sink inbox is full) but keeps sending
/// heartbeats, and dropping that connection only resends what it is working on.
async fn write_heard(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    buf: &mut BytesMut,
    limit: Duration,
    acks: &watch::Receiver<u64>,
) -> Result<(), Disconnect> {
    // A clone: what it marks seen is its own, the connection loop still sees every ACK.
    let mut heard = acks.clone();
    let mut deadline = tokio::time::Instant::now() + limit;
    let res = {
        let mut writing = std::pin::pin!(wr.write_all(buf));
        loop {
            tokio::select! {
                r = &mut writing => break Ok(r),
                changed = heard.changed() => match changed {
                    Ok(()) => deadline = tokio::time::Instant::now() + limit,
                    // The ACK reader is gone (the stage closed, or broke the protocol): no
                    // more heartbeats, so the deadline as it stands.
                    Err(_) => {
                        break tokio::time::timeout_at(deadline, &mut writing)
                            .await
                            .map_err(|_| ())
                    }
                },
                () = tokio::time::sleep_until(deadline) => break Err(()),
            }
        }
    };
    buf.clear();
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Disconnect::WriteError),
        Err(()) => Err(Disconnect::WriteTimeout),
    }
}

async fn write(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    buf: &mut BytesMut,
    limit: Duration,
) -> Result<(), Disconnect> {
    let res = tokio::time::timeout(limit, wr.write_all(buf)).await;
    buf.clear();
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Disconnect::WriteError),
        Err(_) => Err(Disconnect::WriteTimeout),
    }
}
