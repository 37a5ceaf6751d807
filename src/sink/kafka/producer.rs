//! The librdkafka side of the Kafka sink (behind the `kafka` cargo feature): the idempotent
//! producer, the topic check, the delivery reports that confirm a batch.

use super::config::{KafkaConfig, KeyBy};
use crate::lifecycle::CancellationToken;
use crate::metrics as m;
use crate::sink::template::{site, Template};
use crate::sink::{Batch, Job, OnMismatch, SinkError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// The header each message carries its record id in, so a consumer can drop a replay.
pub(crate) const ID_HEADER: &str = "beacon-id";
/// Header holding the tracker's own event id, when it sent one (a consumer drops a
/// tracker's retries by it: they are new beacons with ids of their own).
pub(crate) const EVENT_ID_HEADER: &str = "event-id";

/// Longest wait between two attempts to reach the cluster.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long the sink retries a topic it cannot create, or records Kafka does not take, before
/// it reports itself stalled (`beacon_sink_stalled`, the stage's `/readyz`).
const STALLED_AFTER: Duration = Duration::from_secs(60);

/// The `reason` labels of `KAFKA_ERRORS_TOTAL`.
const ERROR_REASONS: [&str; 4] = ["timeout", "not_enough_replicas", "queue_full", "rejected"];

fn reason(e: &KafkaError) -> &'static str {
    ERROR_REASONS[match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => 0,
        Some(
            RDKafkaErrorCode::NotEnoughReplicas | RDKafkaErrorCode::NotEnoughReplicasAfterAppend,
        ) => 1,
        Some(RDKafkaErrorCode::QueueFull) => 2,
        _ => 3,
    }]
}

/// Exports the sink's series at 0 (see [`crate::metrics`]).
fn declare_metrics() {
    metrics::counter!(m::KAFKA_DELIVERED_TOTAL).increment(0);
    metrics::counter!(m::KAFKA_TOPIC_OVERFLOW_TOTAL).increment(0);
    for r in ERROR_REASONS {
        metrics::counter!(m::KAFKA_ERRORS_TOTAL, "reason" => r).increment(0);
    }
    metrics::gauge!(m::KAFKA_INFLIGHT_RECORDS).increment(0.0);
    metrics::gauge!(m::KAFKA_BROKERS_UP).set(0.0);
    metrics::gauge!(m::SINK_STALLED, "sink" => "kafka").set(0.0);
}

/// librdkafka's callbacks: its log and errors into ours, its statistics into the brokers-up
/// gauge.
struct Context {
    errors: crate::logging::Throttle,
    /// Brokers up at the last statistics (`usize::MAX` before the first), to log a recovery.
    up: std::sync::atomic::AtomicUsize,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // "All brokers down" repeats every retry while the cluster is away, and its text
        // counts brokers in ways that read as a contradiction ("0/2 brokers are down"): ours
        // says what it means, librdkafka's is kept as a field.
        if let Some(suppressed) = self.errors.allow() {
            if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
                tracing::warn!(librdkafka = reason, suppressed, "no Kafka broker is reachable; retrying (records stay in the collector's spool)");
            } else {
                tracing::warn!(%error, reason, suppressed, "Kafka client error; retrying (records stay in the collector's spool)");
            }
        }
    }

    fn stats(&self, s: Statistics) {
        // Bootstrap entries (nodeid -1) are addresses, not brokers.
        let up = s
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0 && b.state == "UP")
            .count();
        metrics::gauge!(m::KAFKA_BROKERS_UP).set(up as f64);
        let before = self.up.swap(up, Ordering::Relaxed);
        if before == 0 && up > 0 {
            tracing::info!(brokers_up = up, "Kafka brokers reachable again");
        }
    }
}

/// The client configuration: the sink's promise first (acks from every in-sync replica, the
/// idempotent producer: its own retries never store a record twice or out of order), then the
/// configured properties (validated not to touch those).
fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.bootstrap_servers.join(","))
        .set("client.id", &cfg.client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("delivery.timeout.ms", cfg.delivery_timeout_ms.to_string())
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("batch.num.messages", cfg.batch_messages.to_string())
        .set("compression.codec", cfg.compression.codec())
        // Room for every record the sink lets be in flight: it never meets a full queue.
        .set(
            "queue.buffering.max.messages",
            (cfg.max_inflight + cfg.batch_messages).to_string(),
        )
        // A producer asking for a missing topic's metadata would have the broker create it
        // with the broker's defaults (auto.create.topics.enable, on by default): one partition,
        // whatever the config says. The sink creates its topics itself.
        .set("allow.auto.create.topics", "false")
        .set("statistics.interval.ms", "1000")
        .set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// Publishes jobs until every sender is gone, then waits for what is still in flight.
/// Returns an error only for what retrying cannot fix (a topic with other settings, no topic
/// and `create_topic = false`, properties librdkafka refuses).
pub(crate) async fn run(
    cfg: KafkaConfig,
    mut jobs: mpsc::Receiver<Job>,
    abandon: CancellationToken,
) -> Result<(), SinkError> {
    declare_metrics();
    let config = client_config(&cfg);
    let producer: FutureProducer<Context> = config
        .create_with_context(Context {
            errors: crate::logging::Throttle::default(),
            up: std::sync::atomic::AtomicUsize::new(usize::MAX),
        })
        .map_err(|e| {
            SinkError::Config(format!(
                "processor.kafka: the Kafka client refused the configuration: {e}"
            ))
        })?;
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(|e| {
        SinkError::Config(format!(
            "processor.kafka: the Kafka admin client refused the configuration: {e}"
        ))
    })?;
    let template = Template::parse(&cfg.topic)
        .map_err(|problem| SinkError::Config(format!("processor.kafka.topic: {problem}")))?;
    let shared = Arc::new(Shared {
        producer,
        admin,
        cfg,
        template,
        inflight: Semaphore::new(0),
        failing: AtomicBool::new(false),
    });
    shared.inflight.add_permits(shared.cfg.max_inflight);
    let mut topics = HashSet::new();
    if shared.template.is_fixed() {
        let name = shared.cfg.topic.clone();
        tokio::select! {
            r = shared.ensure_topic(&name) => r?,
            _ = abandon.cancelled() => return Ok(()),
        }
        topics.insert(name);
    }

    let mut confirms = tokio::task::JoinSet::new();
    while let Some(job) = jobs.recv().await {
        if abandon.is_cancelled() {
            let _ = job.done.send(false);
            continue;
        }
        let routes = shared.route(&job.batch, &topics);
        for t in &routes.topics {
            if !topics.contains(t) {
                tokio::select! {
                    r = shared.ensure_topic(t) => r?,
                    _ = abandon.cancelled() => break,
                }
                topics.insert(t.clone());
            }
        }
        if abandon.is_cancelled() {
            let _ = job.done.send(false);
            continue;
        }
        let n = job.batch.records.len();
        // A batch larger than the limit takes all of it (and waits for everything before).
        let want = n.min(shared.cfg.max_inflight) as u32;
        let permits = tokio::select! {
            p = shared.inflight.acquire_many(want) => p.expect("never closed"),
            _ = abandon.cancelled() => {
                let _ = job.done.send(false);
                continue;
            }
        };
        permits.forget();
        metrics::gauge!(m::KAFKA_INFLIGHT_RECORDS).increment(n as f64);
        let deliveries = shared.send(&job.batch, &routes);
        confirms.spawn(confirm(
            shared.clone(),
            job,
            routes,
            deliveries,
            want,
            abandon.clone(),
        ));
        while confirms.try_join_next().is_some() {}
    }
    while confirms.join_next().await.is_some() {}
    Ok(())
}

struct Shared {
    producer: FutureProducer<Context>,
    admin: AdminClient<DefaultClientContext>,
    cfg: KafkaConfig,
    /// `cfg.topic`, parsed.
    template: Template,
    /// Records handed to the producer and not yet reported on.
    inflight: Semaphore,
    /// Some batch has records Kafka did not take (logged once when it starts and when it ends).
    failing: AtomicBool,
}

/// Where each record of a batch goes: an index into `topics` and its key.
struct Routes {
    topics: Vec<String>,
    per_record: Vec<(usize, Vec<u8>)>,
}

impl Shared {
    /// Where each record of `batch` goes. A topic not in `known` is new (it will be created):
    /// once `known` and the batch's new ones reach `max_topics`, further new names become the
    /// overflow topic.
    fn route(&self, batch: &Batch, known: &HashSet<String>) -> Routes {
        let mut routes = Routes {
            topics: Vec::new(),
            per_record: Vec::with_capacity(batch.records.len()),
        };
        let mut name = String::new();
        let mut new_topics = 0;
        let mut overflowed = 0u64;
        for e in &batch.records {
            // An undecodable record cannot reach a sink (the stage skips it when rendering):
            // the fallbacks are never used in practice.
            let r = crate::record::RecordRef::decode(&e.record).ok();
            match &r {
                Some(r) if !self.template.is_fixed() => self.template.render(r, &mut name),
                _ => {
                    name.clear();
                    name.push_str(&self.cfg.topic);
                }
            }
            let t = match routes.topics.iter().position(|t| *t == name) {
                Some(t) => t,
                None => {
                    if !known.contains(&name) {
                        if known.len() + new_topics >= self.cfg.max_topics {
                            overflowed += 1;
                            name.clear();
                            name.push_str(&self.cfg.overflow_topic);
                        } else {
                            new_topics += 1;
                        }
                    }
                    match routes.topics.iter().position(|t| *t == name) {
                        Some(t) => t,
                        None => {
                            routes.topics.push(name.clone());
                            routes.topics.len() - 1
                        }
                    }
                }
            };
            // Without a site, the id: an empty key would put every such beacon in one
            // partition.
            let key = match (self.cfg.key, r.as_ref().and_then(|r| site(r))) {
                (KeyBy::Site, Some(s)) if !s.is_empty() => s.to_vec(),
                _ => crate::record::format_uuid(&e.id).into_bytes(),
            };
            routes.per_record.push((t, key));
        }
        if overflowed > 0 {
            metrics::counter!(m::KAFKA_TOPIC_OVERFLOW_TOTAL).increment(overflowed);
            if let Some(suppressed) = OVERFLOW_LOG.allow() {
                tracing::warn!(
                    max_topics = self.cfg.max_topics,
                    overflow_topic = %self.cfg.overflow_topic,
                    records = overflowed,
                    suppressed,
                    "Kafka topic template rendered more topics than processor.kafka.max_topics; sending the records of new ones to the overflow topic"
                );
            }
        }
        routes
    }

    /// Hands every record of `batch` to the producer; each gets its delivery report, or the
    /// error that kept it from being queued.
    fn send(&self, batch: &Batch, routes: &Routes) -> Vec<Result<DeliveryFuture, KafkaError>> {
        (0..batch.records.len())
            .map(|i| self.send_one(batch, routes, i))
            .collect()
    }

    /// Hands record `i` of `batch` to the producer.
    fn send_one(
        &self,
        batch: &Batch,
        routes: &Routes,
        i: usize,
    ) -> Result<DeliveryFuture, KafkaError> {
        let (t, key) = &routes.per_record[i];
        let e = &batch.records[i];
        let id = crate::record::format_uuid(&e.id);
        let line = batch.line(i);
        let mut headers = OwnedHeaders::new().insert(Header {
            key: ID_HEADER,
            value: Some(id.as_bytes()),
        });
        if let Some(ev) = &e.event_id {
            headers = headers.insert(Header {
                key: EVENT_ID_HEADER,
                value: Some(ev.as_bytes()),
            });
        }
        let record = FutureRecord::to(&routes.topics[*t])
            .key(key.as_slice())
            .payload(line.as_ref())
            .headers(headers);
        self.producer.send_result(record).map_err(|(e, _)| e)
    }

    /// Looks the topic up, creating it when missing (and allowed) and comparing its settings
    /// when it exists; retries until the cluster answers. Errors only for what retrying cannot
    /// fix.
    async fn ensure_topic(&self, name: &str) -> Result<(), SinkError> {
        let mut backoff = Duration::from_millis(100);
        let log = crate::logging::Throttle::default();
        let started = std::time::Instant::now();
        loop {
            match self.ensure_once(name).await {
                Ok(()) => {
                    crate::sink::set_stalled("kafka", None);
                    return Ok(());
                }
                Err(Ensure::Fatal(msg)) => return Err(SinkError::Config(msg)),
                Err(Ensure::Retry(msg)) => {
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(topic = name, problem = %msg, suppressed, "Kafka topic not ready; retrying (the collector keeps records spooled)");
                    }
                    // A cluster that is starting fixes itself within seconds; past STALLED_AFTER
                    // it needs a person, and says so.
                    if started.elapsed() >= STALLED_AFTER {
                        crate::sink::set_stalled("kafka", Some(format!("topic {name}: {msg}")));
                    }
                }
                Err(Ensure::Stuck(msg)) => {
                    if let Some(suppressed) = log.allow() {
                        tracing::error!(topic = name, problem = %msg, suppressed, "Kafka topic cannot be created; retrying (the collector keeps records spooled)");
                    }
                    crate::sink::set_stalled("kafka", Some(format!("topic {name}: {msg}")));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn ensure_once(&self, name: &str) -> Result<(), Ensure> {
        let found = self.describe(name).await?;
        let cfg = &self.cfg;
        let Some(found) = found else {
            if !cfg.create_topic {
                return Err(Ensure::Fatal(format!(
                    "topic {name} does not exist and processor.kafka.create_topic = false; fix: \
                     create the topic, or set create_topic = true"
                )));
            }
            let (retention, min_isr) = (retention_ms(cfg), cfg.min_insync_replicas.to_string());
            let topic = NewTopic::new(
                name,
                cfg.partitions as i32,
                TopicReplication::Fixed(i32::from(cfg.replication_factor)),
            )
            .set("retention.ms", &retention)
            .set("min.insync.replicas", &min_isr);
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let res = self
                .admin
                .create_topics([&topic], &opts)
                .await
                .map_err(|e| Ensure::Retry(format!("creating the topic: {e}")))?;
            return match res.into_iter().next() {
                // Created meanwhile by someone else (another stage, an operator): its settings
                // are whatever they chose, so they are checked like any existing topic's.
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
                    match self.describe(name).await? {
                        Some(found) => self.judge(name, &found),
                        None => Err(Ensure::Retry(
                            "the topic exists but is not visible yet".into(),
                        )),
                    }
                }
                Some(Ok(_)) => {
                    tracing::info!(
                        topic = name,
                        partitions = cfg.partitions,
                        replication_factor = cfg.replication_factor,
                        "created Kafka topic"
                    );
                    Ok(())
                }
                // Fewer brokers than the replication factor: a cluster starting, or a config
                // that asks more copies than there are brokers. Retried, with the fix.
                Some(Err((_, RDKafkaErrorCode::InvalidReplicationFactor))) => {
                    Err(Ensure::Stuck(format!(
                        "creating the topic: replication_factor {} is more than the cluster's \
                         brokers; fix: lower processor.kafka.replication_factor (and \
                         min_insync_replicas) to at most the number of brokers, or add brokers",
                        cfg.replication_factor
                    )))
                }
                // No controller yet, and the like: passes. Logged with the broker's words.
                Some(Err((_, code))) => Err(Ensure::Retry(format!("creating the topic: {code}"))),
                None => Err(Ensure::Retry("creating the topic: no answer".into())),
            };
        };
        self.judge(name, &found)
    }

    /// Compares an existing topic's settings with the configured ones.
    fn judge(&self, name: &str, found: &Found) -> Result<(), Ensure> {
        let cfg = &self.cfg;
        let diffs = differences(cfg, found);
        if diffs.is_empty() {
            tracing::info!(
                topic = name,
                "Kafka topic found with the configured settings"
            );
            return Ok(());
        }
        let msg = format!(
            "topic {name} exists with settings that differ from processor.kafka: {}; fix: make \
             the config match the topic, or change the topic (kafka-topics.sh --alter, \
             kafka-configs.sh --alter), or set processor.kafka.topic_mismatch = \"warn\" to \
             publish anyway",
            diffs.join("; ")
        );
        match cfg.topic_mismatch {
            OnMismatch::Fail => Err(Ensure::Fatal(msg)),
            OnMismatch::Warn => {
                tracing::warn!("{msg}");
                Ok(())
            }
        }
    }

    /// The topic's settings, or `None` when it does not exist.
    async fn describe(&self, name: &str) -> Result<Option<Found>, Ensure> {
        let producer = self.producer.clone();
        let topic = name.to_string();
        // fetch_metadata blocks its thread until the cluster answers. What it returns borrows
        // librdkafka's memory: reduced to (partitions, replicas) on that thread.
        let shape =
            tokio::task::spawn_blocking(move || -> Result<Option<(usize, usize)>, String> {
                let md = producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                    .map_err(|e| e.to_string())?;
                let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                    return Ok(None);
                };
                match t.error().map(RDKafkaErrorCode::from) {
                    None => {}
                    Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
                    Some(code) => return Err(code.to_string()),
                }
                Ok(t.partitions()
                    .first()
                    .map(|p| (t.partitions().len(), p.replicas().len())))
            })
            .await
            .map_err(|e| Ensure::Retry(format!("looking the topic up: {e}")))?
            .map_err(|e| Ensure::Retry(format!("looking the topic up: {e}")))?;
        let Some((partitions, replication_factor)) = shape else {
            return Ok(None);
        };
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let configs = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(name)], &opts)
            .await
            .map_err(|e| Ensure::Retry(format!("reading the topic's settings: {e}")))?;
        let resource = configs
            .into_iter()
            .next()
            .ok_or_else(|| Ensure::Retry("reading the topic's settings: no answer".into()))?
            .map_err(|code| Ensure::Retry(format!("reading the topic's settings: {code}")))?;
        let value = |k: &str| resource.get(k).and_then(|e| e.value.clone());
        Ok(Some(Found {
            partitions,
            replication_factor,
            retention_ms: value("retention.ms"),
            min_insync_replicas: value("min.insync.replicas"),
        }))
    }
}

/// What an existing topic has.
struct Found {
    partitions: usize,
    replication_factor: usize,
    retention_ms: Option<String>,
    min_insync_replicas: Option<String>,
}

fn retention_ms(cfg: &KafkaConfig) -> String {
    if cfg.retention_seconds == 0 {
        "-1".into()
    } else {
        cfg.retention_seconds.saturating_mul(1000).to_string()
    }
}

/// The settings of `found` that differ from the configured ones, key by key.
fn differences(cfg: &KafkaConfig, found: &Found) -> Vec<String> {
    let mut d = Vec::new();
    if found.partitions != cfg.partitions as usize {
        d.push(format!(
            "partitions: topic has {}, config says {}",
            found.partitions, cfg.partitions
        ));
    }
    if found.replication_factor != usize::from(cfg.replication_factor) {
        d.push(format!(
            "replication_factor: topic has {}, config says {}",
            found.replication_factor, cfg.replication_factor
        ));
    }
    let want = retention_ms(cfg);
    if found.retention_ms.as_deref() != Some(want.as_str()) {
        d.push(format!(
            "retention_seconds: topic has retention.ms = {}, config says {} ({want} ms)",
            found.retention_ms.as_deref().unwrap_or("unset"),
            cfg.retention_seconds
        ));
    }
    let want = cfg.min_insync_replicas.to_string();
    if found.min_insync_replicas.as_deref() != Some(want.as_str()) {
        d.push(format!(
            "min_insync_replicas: topic has {}, config says {want}",
            found.min_insync_replicas.as_deref().unwrap_or("unset")
        ));
    }
    d
}

enum Ensure {
    Fatal(String),
    Retry(String),
    /// Retried (a cluster still starting can cause it), but most likely needs a change: the
    /// sink reports itself stalled at once.
    Stuck(String),
}

/// Overflow warnings, at most one per few seconds.
static OVERFLOW_LOG: crate::logging::Throttle =
    crate::logging::Throttle::new(crate::logging::THROTTLE_EVERY);

/// Warnings about records Kafka did not take, at most one per few seconds for the whole sink
/// (an outage fails every batch in flight).
static UNDELIVERED_LOG: crate::logging::Throttle =
    crate::logging::Throttle::new(crate::logging::THROTTLE_EVERY);

/// Awaits every record's delivery report: the batch is confirmed only when Kafka has every
/// record (each acknowledged by all in-sync replicas). A record the producer gave up on (past
/// `delivery_timeout_ms`: a broker away longer than that) is handed to it again, alone, with a
/// backoff, until Kafka takes it: the batch is held, not given back. Giving it back made the
/// stage drop its connection and the collector resend everything in flight, already delivered
/// records included (45,750 copies for 180,001 beacons in a 53 s outage); now a long outage
/// costs at most one more copy of a record Kafka wrote but did not confirm. The collector
/// keeps the batch spooled meanwhile and the stage's heartbeats keep the connection. Let go
/// (unconfirmed) only when the collector's connection is gone (it resends to the next one) or
/// the stage gives up at shutdown.
async fn confirm(
    shared: Arc<Shared>,
    mut job: Job,
    routes: Routes,
    deliveries: Vec<Result<DeliveryFuture, KafkaError>>,
    permits: u32,
    abandon: CancellationToken,
) {
    let n = deliveries.len();
    let mut pending: Vec<(usize, Result<DeliveryFuture, KafkaError>)> =
        deliveries.into_iter().enumerate().collect();
    let mut backoff = Duration::from_millis(100);
    let started = std::time::Instant::now();
    let delivered = loop {
        let mut failed = Vec::new();
        let mut first: Option<KafkaError> = None;
        for (i, d) in pending {
            let res = match d {
                Ok(f) => match f.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                metrics::counter!(m::KAFKA_ERRORS_TOTAL, "reason" => reason(&e)).increment(1);
                failed.push(i);
                first.get_or_insert(e);
            }
        }
        let Some(e) = first else { break true };
        if !shared.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "Kafka is not taking records; holding their batches and retrying them (the collector keeps them spooled)");
        } else if let Some(suppressed) = UNDELIVERED_LOG.allow() {
            tracing::warn!(error = %e, records = n, failed = failed.len(), suppressed, "Kafka did not take every record of a batch; retrying those records");
        }
        if started.elapsed() >= STALLED_AFTER {
            crate::sink::set_stalled(
                "kafka",
                Some(format!(
                    "records not taken for {} s: {e}; fix: see the brokers (beacon_sink_kafka_brokers_up, kafka-topics.sh --describe)",
                    started.elapsed().as_secs()
                )),
            );
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = job.done.closed() => break false,
            () = abandon.cancelled() => break false,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        pending = failed
            .into_iter()
            .map(|i| (i, shared.send_one(&job.batch, &routes, i)))
            .collect();
    };
    shared.inflight.add_permits(permits as usize);
    metrics::gauge!(m::KAFKA_INFLIGHT_RECORDS).decrement(n as f64);
    if delivered {
        metrics::counter!(m::KAFKA_DELIVERED_TOTAL).increment(n as u64);
        if shared.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("Kafka is taking records again");
            crate::sink::set_stalled("kafka", None);
        }
    }
    let _ = job.done.send(delivered);
}
