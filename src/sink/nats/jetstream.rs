//! The JetStream client side of the NATS sink (behind the `nats` cargo feature).

use super::{NatsConfig, Retention, Storage};
use crate::lifecycle::CancellationToken;
use crate::metrics as m;
use crate::sink::template::Template;
use crate::sink::{Batch, Job, OnMismatch, SinkError};
use async_nats::jetstream::context::{
    GetStreamErrorKind, PublishAckFuture, PublishError, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream, ErrorCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest wait between two attempts (publishing, reaching JetStream).
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The `reason` labels of `NATS_PUBLISH_ERRORS_TOTAL`.
const PUBLISH_ERROR_REASONS: [&str; 4] = ["timeout", "disconnected", "no_stream", "rejected"];

/// Exports the sink's series at 0 (see [`crate::metrics`]).
fn declare_metrics() {
    metrics::counter!(m::NATS_PUBLISHED_TOTAL).increment(0);
    metrics::counter!(m::NATS_DUPLICATES_TOTAL).increment(0);
    for reason in PUBLISH_ERROR_REASONS {
        metrics::counter!(m::NATS_PUBLISH_ERRORS_TOTAL, "reason" => reason).increment(0);
    }
    metrics::gauge!(m::NATS_PENDING_RECORDS).increment(0.0);
    metrics::gauge!(m::NATS_CONNECTED).set(0.0);
}

/// Publishes jobs until every sender is gone, then waits for what is still unconfirmed.
/// Returns an error only for what retrying cannot fix (a stream with other settings, no
/// stream and `create_stream = false`, an unreadable credentials file).
pub(crate) async fn run(
    cfg: NatsConfig,
    mut jobs: mpsc::Receiver<Job>,
    abandon: CancellationToken,
) -> Result<(), SinkError> {
    declare_metrics();
    let client = connect(&cfg).await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(cfg.publish_timeout_ms))
        .max_ack_inflight(cfg.max_inflight)
        .backpressure_on_inflight(true)
        .build(client);
    let template = Template::parse(&cfg.subject)
        .map_err(|problem| SinkError::Config(format!("processor.nats.subject: {problem}")))?;
    let shared = Arc::new(Shared {
        js,
        cfg,
        template,
        errors: crate::logging::Throttle::default(),
        recheck: tokio::sync::Notify::new(),
        given_up: std::sync::atomic::AtomicU64::new(0),
    });
    tokio::select! {
        res = shared.ensure_stream() => res?,
        _ = abandon.cancelled() => return Ok(()),
    }
    let rechecker = tokio::spawn(recheck(shared.clone()));

    let mut confirms = tokio::task::JoinSet::new();
    while let Some(job) = jobs.recv().await {
        if abandon.is_cancelled() {
            shared.given_up.fetch_add(
                job.batch.records.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            let _ = job.done.send(false);
            continue;
        }
        let n = job.batch.records.len();
        metrics::gauge!(m::NATS_PENDING_RECORDS).increment(n as f64);
        let subjects: Arc<[String]> = shared.subjects(&job.batch).into();
        let sent = tokio::select! {
            sent = shared.publish(&job.batch, &subjects, 0..n) => sent,
            _ = abandon.cancelled() => {
                metrics::gauge!(m::NATS_PENDING_RECORDS).decrement(n as f64);
                let _ = job.done.send(false);
                continue;
            }
        };
        confirms.spawn(confirm(
            shared.clone(),
            job,
            subjects,
            sent,
            abandon.clone(),
        ));
        while confirms.try_join_next().is_some() {}
    }
    while confirms.join_next().await.is_some() {}
    rechecker.abort();
    let given_up = shared.given_up.load(std::sync::atomic::Ordering::Relaxed);
    if given_up > 0 {
        tracing::warn!(
            records = given_up,
            "stopped with records JetStream has not acknowledged; the collector keeps them spooled and sends them again"
        );
    }
    Ok(())
}

async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client, SinkError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(&cfg.connection_name)
        // Start even while the brokers are down: records wait (in the collector's spool) and
        // flow once a server answers. A stage that exited instead would just be restarted.
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => {
                    metrics::gauge!(m::NATS_CONNECTED).set(1.0);
                    tracing::info!("connected to NATS");
                }
                async_nats::Event::Disconnected => {
                    metrics::gauge!(m::NATS_CONNECTED).set(0.0);
                    tracing::warn!("disconnected from NATS; reconnecting (records stay in the collector's spool)");
                }
                // async_nats logs these itself.
                other => tracing::debug!(event = %other, "NATS client event"),
            }
        });
    if let Some(path) = &cfg.credentials_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(crate::sink::setup(
                "read processor.nats.credentials_file",
                path,
            ))?;
    }
    let servers = cfg
        .servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SinkError::Config(format!("processor.nats.servers: {e}")))?;
    metrics::gauge!(m::NATS_CONNECTED).set(0.0);
    opts.connect(servers)
        .await
        .map_err(|e| SinkError::Config(format!("connecting to NATS: {e}")))
}

struct Shared {
    js: jetstream::Context,
    cfg: NatsConfig,
    /// `cfg.subject`, parsed.
    template: Template,
    /// Publish errors logged at most every few seconds.
    errors: crate::logging::Throttle,
    /// Wakes the task that looks the stream up again after "no stream" publish errors.
    recheck: tokio::sync::Notify,
    /// Records still unacknowledged by JetStream when the stage stopped.
    given_up: std::sync::atomic::AtomicU64,
}

/// Publishes sent (awaiting JetStream's answer) and records not sent at all.
struct Sent {
    acks: Vec<(usize, PublishAckFuture)>,
    unsent: Vec<usize>,
}

impl Shared {
    /// The subject of every record of `batch`. An undecodable record cannot reach a sink (the
    /// stage skips it when rendering), so the fallback subject is never used in practice.
    fn subjects(&self, batch: &Batch) -> Vec<String> {
        batch
            .records
            .iter()
            .map(|e| {
                let mut subj = String::new();
                match crate::record::RecordRef::decode(&e.record) {
                    Ok(r) => self.template.render(&r, &mut subj),
                    Err(_) => subj.push_str(&self.cfg.subject),
                }
                subj
            })
            .collect()
    }

    /// Sends the records `idx` of `batch` in order. After the first failure to hand a message
    /// to the client (its buffer full while disconnected) the rest are not tried: each try
    /// would wait out the same timeout.
    async fn publish(
        &self,
        batch: &Batch,
        subjects: &[String],
        idx: impl Iterator<Item = usize>,
    ) -> Sent {
        let mut sent = Sent {
            acks: Vec::new(),
            unsent: Vec::new(),
        };
        for i in idx {
            if !sent.unsent.is_empty() {
                sent.unsent.push(i);
                continue;
            }
            let e = &batch.records[i];
            let msg = PublishMessage::build()
                .message_id(e.dedup_id())
                .payload(batch.line(i));
            match self.js.send_publish(subjects[i].clone(), msg).await {
                Ok(ack) => sent.acks.push((i, ack)),
                Err(err) => {
                    self.note_error(&err);
                    sent.unsent.push(i);
                }
            }
        }
        sent
    }

    fn note_error(&self, err: &PublishError) {
        let reason = PUBLISH_ERROR_REASONS[match err.kind() {
            PublishErrorKind::TimedOut => 0,
            PublishErrorKind::BrokenPipe => 1,
            PublishErrorKind::StreamNotFound => 2,
            _ => 3,
        }];
        metrics::counter!(m::NATS_PUBLISH_ERRORS_TOTAL, "reason" => reason).increment(1);
        if let Some(suppressed) = self.errors.allow() {
            tracing::warn!(
                error = %err,
                reason,
                suppressed,
                "JetStream did not acknowledge publishes; sending them again (the collector keeps them spooled)"
            );
        }
    }

    /// Looks the stream up, creating it when missing (and allowed); retries until JetStream
    /// answers. Errors only for what retrying cannot fix.
    async fn ensure_stream(&self) -> Result<(), SinkError> {
        let mut backoff = Duration::from_millis(100);
        let log = crate::logging::Throttle::default();
        loop {
            match self.ensure_once().await {
                Ok(()) => return Ok(()),
                Err(Ensure::Fatal(msg)) => return Err(SinkError::Config(msg)),
                Err(Ensure::Retry(msg)) => {
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(stream = %self.cfg.stream, problem = %msg, suppressed, "JetStream stream not ready; retrying (the collector keeps records spooled)");
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn ensure_once(&self) -> Result<(), Ensure> {
        let cfg = &self.cfg;
        match self.js.get_stream(&cfg.stream).await {
            Ok(s) => {
                let diffs = differences(&desired(cfg), &s.cached_info().config);
                if diffs.is_empty() {
                    tracing::info!(stream = %cfg.stream, "JetStream stream found with the configured settings");
                    return Ok(());
                }
                let msg = format!(
                    "stream {} exists with settings that differ from processor.nats: {}; fix: make \
                     the config match the stream, or change the stream (e.g. `nats stream edit {}`), \
                     or set processor.nats.stream_mismatch = \"warn\" to publish anyway",
                    cfg.stream,
                    diffs.join("; "),
                    cfg.stream
                );
                match cfg.stream_mismatch {
                    OnMismatch::Fail => Err(Ensure::Fatal(msg)),
                    OnMismatch::Warn => {
                        tracing::warn!("{msg}");
                        Ok(())
                    }
                }
            }
            Err(e) if is_not_found(&e) => {
                if !cfg.create_stream {
                    return Err(Ensure::Fatal(format!(
                        "stream {} does not exist and processor.nats.create_stream = false; fix: \
                         create the stream, or set create_stream = true",
                        cfg.stream
                    )));
                }
                match self.js.create_stream(desired(cfg)).await {
                    Ok(_) => {
                        tracing::info!(
                            stream = %cfg.stream,
                            subjects = ?cfg.stream_subjects,
                            replicas = cfg.replicas,
                            "created JetStream stream"
                        );
                        Ok(())
                    }
                    // Not enough servers for the replicas yet, no meta leader during a
                    // cluster's start: both pass. Logged with the server's words.
                    Err(e) => Err(Ensure::Retry(format!("creating the stream: {e}"))),
                }
            }
            Err(e) => Err(Ensure::Retry(format!("looking the stream up: {e}"))),
        }
    }
}

/// "No stream" publish errors mean the stream has no leader (a cluster electing one, seconds)
/// or is gone (deleted; a memory stream after a broker restart). Publishers keep retrying on
/// their own; this task, woken by their errors, looks the stream up (creating it when missing)
/// at most once a second, so a thousand failing publishes make one request, and nobody waits
/// for an API call that cannot answer during an election.
async fn recheck(shared: Arc<Shared>) {
    loop {
        shared.recheck.notified().await;
        if let Err(Ensure::Fatal(msg) | Ensure::Retry(msg)) = shared.ensure_once().await {
            tracing::error!(stream = %shared.cfg.stream, problem = %msg, "publishing finds no stream");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

enum Ensure {
    Fatal(String),
    Retry(String),
}

fn is_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(err) if err.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Waits for JetStream's answers to a job's publishes and sends the unanswered ones again
/// (with backoff) until all are stored; then confirms the job. Gives up, unconfirmed, when
/// the stage is stopping or the collector went away (it resends after reconnecting).
async fn confirm(
    shared: Arc<Shared>,
    mut job: Job,
    subjects: Arc<[String]>,
    mut sent: Sent,
    abandon: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut failed = std::mem::take(&mut sent.unsent);
        let mut no_stream = false;
        let (mut stored, mut dups) = (0u64, 0u64);
        for (i, ack) in sent.acks.drain(..) {
            let answer = tokio::select! {
                a = ack => a,
                _ = abandon.cancelled() => Err(PublishError::new(PublishErrorKind::Other)),
            };
            match answer {
                Ok(a) if a.duplicate => dups += 1,
                Ok(_) => stored += 1,
                Err(e) => {
                    if abandon.is_cancelled() {
                        failed.push(i);
                        continue;
                    }
                    no_stream |= e.kind() == PublishErrorKind::StreamNotFound;
                    shared.note_error(&e);
                    failed.push(i);
                }
            }
        }
        metrics::counter!(m::NATS_PUBLISHED_TOTAL).increment(stored);
        metrics::counter!(m::NATS_DUPLICATES_TOTAL).increment(dups);
        metrics::gauge!(m::NATS_PENDING_RECORDS).decrement((stored + dups) as f64);
        if failed.is_empty() {
            let _ = job.done.send(true);
            return;
        }
        if no_stream {
            shared.recheck.notify_one();
        }
        let give_up = tokio::select! {
            _ = tokio::time::sleep(backoff) => None,
            _ = abandon.cancelled() => Some(true),
            _ = job.done.closed() => Some(false),
        };
        if let Some(stopping) = give_up {
            metrics::gauge!(m::NATS_PENDING_RECORDS).decrement(failed.len() as f64);
            if stopping {
                shared
                    .given_up
                    .fetch_add(failed.len() as u64, std::sync::atomic::Ordering::Relaxed);
                let _ = job.done.send(false);
            }
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        failed.sort_unstable();
        sent = tokio::select! {
            s = shared.publish(&job.batch, &subjects, failed.iter().copied()) => s,
            _ = abandon.cancelled() => Sent { acks: Vec::new(), unsent: failed },
        };
    }
}

/// The stream the config asks for.
fn desired(cfg: &NatsConfig) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: cfg.stream_subjects.clone(),
        retention: match cfg.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
            Retention::Workqueue => stream::RetentionPolicy::WorkQueue,
        },
        storage: match cfg.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        num_replicas: cfg.replicas,
        max_age: Duration::from_secs(cfg.retention_seconds),
        max_bytes: if cfg.max_bytes == 0 {
            -1
        } else {
            i64::try_from(cfg.max_bytes).unwrap_or(i64::MAX)
        },
        duplicate_window: Duration::from_secs(cfg.duplicate_window_seconds),
        ..Default::default()
    }
}

/// Every setting the config cares about where the existing stream differs, in words.
fn differences(want: &stream::Config, have: &stream::Config) -> Vec<String> {
    let mut d = Vec::new();
    let mut ws = want.subjects.clone();
    let mut hs = have.subjects.clone();
    ws.sort();
    hs.sort();
    if ws != hs {
        d.push(format!(
            "subjects: stream has {hs:?}, config (stream_subjects) has {ws:?}"
        ));
    }
    if want.retention != have.retention {
        d.push(format!(
            "retention: stream has {:?}, config has {:?}",
            have.retention, want.retention
        ));
    }
    if want.storage != have.storage {
        d.push(format!(
            "storage: stream has {:?}, config has {:?}",
            have.storage, want.storage
        ));
    }
    // A stream created with replicas 0 has 1.
    if want.num_replicas != have.num_replicas.max(1) {
        d.push(format!(
            "replicas: stream has {}, config has {}",
            have.num_replicas, want.num_replicas
        ));
    }
    if want.max_age != have.max_age {
        d.push(format!(
            "retention_seconds: stream has {}, config has {}",
            have.max_age.as_secs(),
            want.max_age.as_secs()
        ));
    }
    // The server stores "no limit" as -1 (a create with 0 becomes -1).
    let limit = |v: i64| if v <= 0 { -1 } else { v };
    if limit(want.max_bytes) != limit(have.max_bytes) {
        d.push(format!(
            "max_bytes: stream has {}, config has {}",
            have.max_bytes.max(0),
            want.max_bytes.max(0)
        ));
    }
    if want.duplicate_window != have.duplicate_window {
        d.push(format!(
            "duplicate_window_seconds: stream has {}, config has {}",
            have.duplicate_window.as_secs(),
            want.duplicate_window.as_secs()
        ));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_setting() {
        let cfg = NatsConfig::default();
        let want = desired(&cfg);
        assert!(differences(&want, &want).is_empty());
        // What a server returns for the same stream: "no limit" as -1.
        let mut have = want.clone();
        have.max_bytes = -1;
        assert!(differences(&want, &have).is_empty());
        have.num_replicas = 3;
        have.retention = stream::RetentionPolicy::WorkQueue;
        have.subjects = vec!["other.>".into()];
        have.duplicate_window = Duration::from_secs(10);
        let d = differences(&want, &have).join("; ");
        for s in [
            "replicas: stream has 3, config has 1",
            "retention: stream has WorkQueue, config has Limits",
            "subjects: stream has [\"other.>\"]",
            "duplicate_window_seconds: stream has 10, config has 120",
        ] {
            assert!(d.contains(s), "{s} missing from {d}");
        }
    }
}
