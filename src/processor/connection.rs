//! One collector's connection to the stage: HELLO, then BATCH frames rendered once and handed
//! to every sink, and ACKs written in order once every sink has a batch.

use super::Sinks;
use crate::lifecycle::CancellationToken;
use crate::metrics as m;
use crate::protocol::{self, Frame};
use crate::record::RecordRef;
use crate::sink::{Batch, Entry, Job};
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// What this stage has done for each collector instance, shared by its connections, so that a
/// record sent again after a reconnect is written once whatever the timing: `handled` (every
/// record up to it is in every sink) and `dispatched` (records up to it were handed to the
/// sinks by some connection, maybe still in flight). A batch that overlaps records in flight
/// waits for their outcome before it is rendered; a connection whose collector went away keeps
/// collecting its sinks' answers (it no longer writes ACKs), so that outcome is known.
#[derive(Default)]
pub(super) struct Seen {
    instances: Mutex<HashMap<u64, Progress>>,
    changed: tokio::sync::Notify,
}

#[derive(Default, Clone, Copy)]
struct Progress {
    handled: u64,
    dispatched: u64,
}

impl Seen {
    /// Waits until no record of `first..=last` is in flight for `instance` by any connection,
    /// marks them dispatched, and returns up to where they were handled (skip those).
    async fn claim(&self, instance: u64, first: u64, last: u64) -> u64 {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read: a change after the read wakes it.
            changed.as_mut().enable();
            {
                let mut all = self.instances.lock().expect("not poisoned");
                let p = all.entry(instance).or_default();
                if first > p.dispatched || p.handled >= last.min(p.dispatched) {
                    p.dispatched = p.dispatched.max(last);
                    return p.handled;
                }
            }
            changed.await;
        }
    }

    /// Every record of `instance` up to `seq` is in every sink.
    fn handled(&self, instance: u64, seq: u64) {
        let mut all = self.instances.lock().expect("not poisoned");
        let p = all.entry(instance).or_default();
        p.handled = p.handled.max(seq);
        p.dispatched = p.dispatched.max(p.handled);
        drop(all);
        self.changed.notify_waiters();
    }

    /// A sink gave up a batch: what was in flight beyond `handled` will not be confirmed, and
    /// is sent again by the collector.
    fn failed(&self, instance: u64) {
        let mut all = self.instances.lock().expect("not poisoned");
        let p = all.entry(instance).or_default();
        p.dispatched = p.handled;
        drop(all);
        self.changed.notify_waiters();
    }

    /// Up to where `instance`'s records were handled.
    #[cfg(test)]
    fn handled_up_to(&self, instance: u64) -> u64 {
        self.instances
            .lock()
            .expect("not poisoned")
            .get(&instance)
            .map_or(0, |p| p.handled)
    }
}

/// Undecodable records are logged at most every few seconds (a corrupt batch holds many).
static UNDECODABLE_LOG: crate::logging::Throttle =
    crate::logging::Throttle::new(crate::logging::THROTTLE_EVERY);

/// Renders a collector batch once for every sink: NDJSON lines and record ids. Records at or below `skip_up_to` were already handled for this instance.
fn render(first_seq: u64, records: &[bytes::Bytes], skip_up_to: u64) -> Batch {
    let mut lines = Vec::with_capacity(records.iter().map(|r| r.len() * 2).sum());
    let mut entries = Vec::with_capacity(records.len());
    let mut dups = 0u64;
    for (i, rec) in records.iter().enumerate() {
        let seq = first_seq + i as u64;
        if seq <= skip_up_to {
            dups += 1;
            continue;
        }
        match RecordRef::decode(rec) {
            Ok(r) => {
                r.write_ndjson(&mut lines);
                entries.push(Entry {
                    end: lines.len(),
                    id: r.id,
                    record: rec.clone(),
                    event_id: r
                        .event_id
                        .as_deref()
                        .map(|e| String::from_utf8_lossy(e).into_owned()),
                });
            }
            Err(e) => {
                // Acknowledged anyway: resending the same bytes cannot fix them.
                metrics::counter!(m::SINK_CORRUPT_RECORDS_TOTAL).increment(1);
                if let Some(suppressed) = UNDECODABLE_LOG.allow() {
                    tracing::error!(seq, error = %e, suppressed, "skipping undecodable record");
                }
            }
        }
    }
    if dups > 0 {
        metrics::counter!(m::SINK_DUPLICATES_TOTAL).increment(dups);
    }
    Batch {
        lines: lines.into(),
        records: entries,
    }
}

/// The sinks' answers for one batch: `(first_seq, last_seq, one receiver per sink)`.
type Pending = (u64, u64, Vec<oneshot::Receiver<bool>>);

/// Serves one collector's connection: HELLO, then each BATCH claimed against what this stage
/// already handled for that collector instance, rendered once and handed to every sink; a
/// separate task writes the ACKs in order ([`ack_in_order`]).
pub(super) async fn run(
    stream: UnixStream,
    sinks: Arc<Sinks>,
    stop: CancellationToken,
    seen: Arc<Seen>,
) {
    let (mut rd, wr) = stream.into_split();
    let Some(instance) = read_hello(&mut rd).await else {
        return;
    };
    tracing::info!(
        instance = format_args!("{instance:016x}"),
        "collector connected"
    );
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Pending>();
    let acker = tokio::spawn(ack_in_order(wr, ack_rx, seen.clone(), instance));

    let mut collector_gone = false;
    loop {
        let frame = tokio::select! {
            // Stop reading at shutdown; what was read is still written and acknowledged.
            _ = stop.cancelled() => break,
            f = protocol::read_frame(&mut rd) => f,
        };
        let (first_seq, records) = match frame {
            Ok(Some(Frame::Batch { first_seq, records })) => (first_seq, records),
            Ok(None) => {
                collector_gone = true;
                break;
            }
            Ok(Some(other)) => {
                tracing::error!(frame = ?other, "unexpected frame from collector");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading from collector");
                collector_gone = true;
                break;
            }
        };
        let n = records.len() as u64;
        if n == 0 {
            continue;
        }
        let last = first_seq + n - 1;
        // Resends after a reconnect: skip what this stage already handled for this instance,
        // after waiting for any of these records still in flight from an earlier connection.
        let handled_up_to = tokio::select! {
            h = seen.claim(instance, first_seq, last) => h,
            _ = stop.cancelled() => break,
        };
        let batch = render(first_seq, &records, handled_up_to);
        let answers = dispatch(batch, &sinks).await;
        if answers
            .and_then(|a| ack_tx.send((first_seq, last, a)).ok())
            .is_none()
        {
            // Claimed above and never to be confirmed here: waiters must not wait for it.
            seen.failed(instance);
            break;
        }
    }
    drop(ack_tx);
    if collector_gone {
        // Nobody will read the ACKs; the ACK task still collects the sinks' answers (and ends
        // by itself), so a resend on the collector's next connection waits for them instead of
        // writing the same records again.
        return;
    }
    let _ = acker.await;
}

/// The collector's HELLO: its instance id, or `None` (logged) for anything else.
async fn read_hello(rd: &mut tokio::net::unix::OwnedReadHalf) -> Option<u64> {
    match protocol::read_frame(rd).await {
        Ok(Some(Frame::Hello { version, instance })) if version == protocol::VERSION => {
            Some(instance)
        }
        Ok(Some(Frame::Hello { version, .. })) => {
            tracing::error!(
                version,
                supported = protocol::VERSION,
                "collector speaks an unsupported protocol version"
            );
            None
        }
        other => {
            tracing::error!(frame = ?other.map(|f| f.map(|_| ())), "expected HELLO");
            None
        }
    }
}

/// Hands a rendered batch to every sink: one answer each, or `None` when a sink has stopped
/// (the stage is going down) and the batch must never be confirmed without it. A batch whose
/// records were all handled before is confirmed at once.
async fn dispatch(batch: Batch, sinks: &Sinks) -> Option<Vec<oneshot::Receiver<bool>>> {
    let mut answers = Vec::with_capacity(sinks.inboxes.len());
    if batch.records.is_empty() {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(true);
        answers.push(rx);
        return Some(answers);
    }
    let batch = Arc::new(batch);
    for inbox in &sinks.inboxes {
        let (done, rx) = oneshot::channel();
        let job = Job {
            batch: batch.clone(),
            done,
        };
        inbox.send(job).await.ok()?;
        answers.push(rx);
    }
    Some(answers)
}

/// Writes the ACKs in order: every sink's answer for a batch is awaited before the next batch,
/// so an ACK never runs ahead of any sink. While a sink holds a batch (a broker away,
/// retrying), the last ACK is repeated every [`protocol::HEARTBEAT`]: the collector counts it
/// as a sign of life, so its ack and write timeouts do not drop a connection whose batches are
/// still being worked on (which resent everything in flight). Once the collector is gone the
/// answers are still collected, so the records they confirm count as handled when the
/// collector sends them again.
async fn ack_in_order(
    wr: tokio::net::unix::OwnedWriteHalf,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    seen: Arc<Seen>,
    instance: u64,
) {
    let mut buf = BytesMut::new();
    let mut wr = Some(wr);
    // The last ACK this connection sent (or the position the collector started from).
    let mut last_ack: Option<u64> = None;
    while let Some((first, seq, answers)) = pending.recv().await {
        let said = *last_ack.get_or_insert(first.saturating_sub(1));
        let mut ok = true;
        for mut done in answers {
            ok = loop {
                tokio::select! {
                    r = &mut done => break r == Ok(true),
                    () = tokio::time::sleep(protocol::HEARTBEAT) => {
                        send_ack(&mut wr, &mut buf, said).await;
                    }
                }
            };
            if !ok {
                break;
            }
        }
        if !ok {
            seen.failed(instance);
            return;
        }
        seen.handled(instance, seq);
        send_ack(&mut wr, &mut buf, seq).await;
        last_ack = Some(seq);
    }
    if let Some(mut w) = wr {
        let _ = w.shutdown().await;
    }
}

/// Writes `ACK seq` while the collector is there; forgets the writer once it is not.
async fn send_ack(wr: &mut Option<tokio::net::unix::OwnedWriteHalf>, buf: &mut BytesMut, seq: u64) {
    if let Some(w) = wr.as_mut() {
        Frame::Ack { seq }.encode(buf);
        if w.write_all(buf).await.is_err() {
            *wr = None;
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resend of records still in flight from an earlier connection waits for their outcome
    /// and then skips them; a batch that does not overlap goes at once; a failure releases the
    /// waiters, who then send everything again (duplicates at worst, never a loss).
    #[tokio::test]
    async fn a_resend_waits_for_what_is_in_flight_then_skips_it() {
        let seen = Arc::new(Seen::default());
        assert_eq!(seen.claim(7, 1, 100).await, 0);
        // Another instance is not held up.
        assert_eq!(seen.claim(8, 1, 10).await, 0);
        // The collector reconnected and sends 1..=100 again while the first is in flight.
        let again = tokio::spawn({
            let seen = seen.clone();
            async move { seen.claim(7, 1, 100).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !again.is_finished(),
            "waits for the first connection's sinks"
        );
        seen.handled(7, 100);
        assert_eq!(again.await.unwrap(), 100, "then skips every record");
        assert_eq!(seen.handled_up_to(7), 100);
        // New records go at once.
        assert_eq!(seen.claim(7, 101, 150).await, 100);
        let waiting = tokio::spawn({
            let seen = seen.clone();
            async move { seen.claim(7, 101, 150).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The sink gave 101..=150 up: the resend writes them.
        seen.failed(7);
        assert_eq!(waiting.await.unwrap(), 100);
    }
}
