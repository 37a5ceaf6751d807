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

pub(super) async fn run(
    stream: UnixStream,
    sinks: Arc<Sinks>,
    stop: CancellationToken,
    seen: Arc<Mutex<HashMap<u64, u64>>>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let instance = match protocol::read_frame(&mut rd).await {
        Ok(Some(Frame::Hello { version, instance })) if version == protocol::VERSION => instance,
        Ok(Some(Frame::Hello { version, .. })) => {
            tracing::error!(
                version,
                supported = protocol::VERSION,
                "collector speaks an unsupported protocol version"
            );
            return;
        }
        other => {
            tracing::error!(frame = ?other.map(|f| f.map(|_| ())), "expected HELLO");
            return;
        }
    };
    tracing::info!(
        instance = format_args!("{instance:016x}"),
        "collector connected"
    );
    // ACKs go out in order: the ACK task awaits every sink's answer for a batch before the
    // next batch, so an ACK never runs ahead of any sink.
    let (ack_tx, mut ack_rx) =
        mpsc::unbounded_channel::<(u64, u64, Vec<oneshot::Receiver<bool>>)>();
    let ack_seen = seen.clone();
    let mut acker = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        // The last ACK this connection sent (or the position the collector started from).
        let mut last_ack: Option<u64> = None;
        while let Some((first, seq, answers)) = ack_rx.recv().await {
            let said = *last_ack.get_or_insert(first.saturating_sub(1));
            for mut done in answers {
                // While a sink holds a batch (a broker away, retrying), the last ACK is
                // repeated: the collector counts it as a sign of life, so its ack and write
                // timeouts do not drop a connection whose batches are still being worked on
                // (which resent everything in flight).
                let ok = loop {
                    tokio::select! {
                        r = &mut done => break r == Ok(true),
                        () = tokio::time::sleep(protocol::HEARTBEAT) => {
                            Frame::Ack { seq: said }.encode(&mut buf);
                            if wr.write_all(&buf).await.is_err() {
                                return;
                            }
                            buf.clear();
                        }
                    }
                };
                if !ok {
                    return;
                }
            }
            {
                let mut s = ack_seen.lock().expect("not poisoned");
                let hw = s.entry(instance).or_insert(0);
                *hw = (*hw).max(seq);
            }
            Frame::Ack { seq }.encode(&mut buf);
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
            last_ack = Some(seq);
        }
        let _ = wr.shutdown().await;
    });

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
        // Resends after a reconnect: skip what this stage already handled for this instance.
        let handled_up_to = seen
            .lock()
            .expect("not poisoned")
            .get(&instance)
            .copied()
            .unwrap_or(0);
        let batch = render(first_seq, &records, handled_up_to);
        let mut answers = Vec::with_capacity(sinks.inboxes.len());
        if batch.records.is_empty() {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(true);
            answers.push(rx);
        } else {
            let batch = Arc::new(batch);
            for inbox in &sinks.inboxes {
                let (done, rx) = oneshot::channel();
                let job = Job {
                    batch: batch.clone(),
                    done,
                };
                if inbox.send(job).await.is_err() {
                    collector_gone = true;
                    break;
                }
                answers.push(rx);
            }
        }
        if ack_tx.send((first_seq, last, answers)).is_err() {
            break;
        }
    }
    drop(ack_tx);
    if collector_gone {
        // Nobody will read the ACKs, and the collector resends everything unacknowledged
        // when it reconnects: dropping the answers tells sinks still retrying to let go.
        acker.abort();
    }
    let _ = (&mut acker).await;
}
