//! Metric names (all of them, in one place) and the Prometheus recorder; [`crate::admin`]
//! serves them.
//!
//! Names carry their unit (`_seconds`, `_bytes`, `_total`); label values are bounded sets.
//!
//! Every counter and gauge is exported from the start, at 0, by the module that owns it (each
//! has a `declare_metrics` called when it starts), with every label value it can take where
//! that set is listed: a series that appears only with its first event hides that event from
//! `rate()` and `increase()` (they need two samples), so an alert on "any error" would miss the
//! first one. Prometheus' instrumentation guide asks for the same.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// HTTP requests answered, by `route` and `status`.
pub(crate) const HTTP_REQUESTS_TOTAL: &str = "beacon_http_requests_total";
/// Request handling time, by `route`.
pub(crate) const HTTP_REQUEST_DURATION_SECONDS: &str = "beacon_http_request_duration_seconds";
/// Request body bytes received on beacon routes.
pub(crate) const HTTP_REQUEST_BODY_BYTES_TOTAL: &str = "beacon_http_request_body_bytes_total";
/// Beacons accepted (answered 2xx, queued for the processing stage), by `kind`.
pub(crate) const BEACONS_ACCEPTED_TOTAL: &str = "beacon_accepted_total";
/// Beacons refused, by `reason`.
pub(crate) const BEACONS_REJECTED_TOTAL: &str = "beacon_rejected_total";
/// Connections accepted.
pub(crate) const CONNECTIONS_ACCEPTED_TOTAL: &str = "beacon_connections_accepted_total";
/// Connections open now.
pub(crate) const CONNECTIONS_OPEN: &str = "beacon_connections_open";
/// Connections closed because their headers did not arrive within `http.header_timeout_seconds`.
pub(crate) const HEADER_TIMEOUTS_TOTAL: &str = "beacon_http_header_timeouts_total";
/// Valid PROXY protocol headers read, by `version`.
pub(crate) const PROXY_HEADERS_TOTAL: &str = "beacon_proxy_headers_total";
/// Connections closed for a missing or bad PROXY header, by `reason` (`invalid`, `truncated`,
/// `too_long`, `timeout`).
pub(crate) const PROXY_HEADER_ERRORS_TOTAL: &str = "beacon_proxy_header_errors_total";
/// Requests from a trusted proxy whose `X-Forwarded-For` did not parse (the header was ignored).
pub(crate) const FORWARDED_FOR_INVALID_TOTAL: &str = "beacon_forwarded_for_invalid_total";
/// Times a worker found its share of `server.max_connections` taken and left new connections
/// in the kernel's accept queue.
pub(crate) const CONNECTION_LIMIT_REACHED_TOTAL: &str = "beacon_connection_limit_reached_total";
/// `accept(2)` errors, by `kind`.
pub(crate) const ACCEPT_ERRORS_TOTAL: &str = "beacon_accept_errors_total";
/// Bytes held in the spool.
pub(crate) const SPOOL_BYTES: &str = "beacon_spool_bytes";
/// Segment files in the spool.
pub(crate) const SPOOL_SEGMENTS: &str = "beacon_spool_segments";
/// Age of the oldest unacknowledged record (1 s resolution; 0 when all are acknowledged).
pub(crate) const SPOOL_OLDEST_UNACKED_SECONDS: &str = "beacon_spool_oldest_unacked_seconds";
/// Spool records found corrupt (bad checksum or length) at recovery or when read.
pub(crate) const SPOOL_CORRUPT_RECORDS_TOTAL: &str = "beacon_spool_corrupt_records_total";
/// Spool write or fsync failures (each answered 503).
pub(crate) const SPOOL_WRITE_ERRORS_TOTAL: &str = "beacon_spool_write_errors_total";
/// Records per group commit.
pub(crate) const SPOOL_GROUP_RECORDS: &str = "beacon_spool_group_records";
/// Seconds per group `write(2)` to the spool, on the worker's own thread: every connection of
/// that worker waits for it (a write that waits for a journal commit shows here).
pub(crate) const SPOOL_WRITE_SECONDS: &str = "beacon_spool_write_seconds";
/// `ack_after = "fsync"`: seconds per `fdatasync` of a group (a group's requests wait for it,
/// and the worker's next group waits behind it).
pub(crate) const SPOOL_SYNC_SECONDS: &str = "beacon_spool_sync_seconds";
/// Records sent to the processing stage and not yet acknowledged.
pub(crate) const FORWARD_UNACKED_RECORDS: &str = "beacon_forward_unacked_records";
/// Records written to the processing stage (resends included).
pub(crate) const FORWARD_SENT_RECORDS_TOTAL: &str = "beacon_forward_sent_records_total";
/// Records the processing stage acknowledged.
pub(crate) const FORWARD_ACKED_RECORDS_TOTAL: &str = "beacon_forward_acked_records_total";
/// Records sent again (replays) after a reconnect.
pub(crate) const FORWARD_RESENT_RECORDS_TOTAL: &str = "beacon_forward_resent_records_total";
/// Connections (re-)established to the processing stage.
pub(crate) const FORWARD_CONNECTS_TOTAL: &str = "beacon_forward_connects_total";
/// Connections to the processing stage lost or abandoned, by `reason`.
pub(crate) const FORWARD_DISCONNECTS_TOTAL: &str = "beacon_forward_disconnects_total";
/// Background tasks (forwarder, sampler, admin) that died and were restarted, by `task`.
pub(crate) const TASK_RESTARTS_TOTAL: &str = "beacon_task_restarts_total";
/// Keep-alive connections closed because they reached `http.max_connection_age_seconds`.
pub(crate) const CONNECTIONS_AGED_OUT_TOTAL: &str = "beacon_connections_aged_out_total";
/// Restarts of the embedded processing stage.
pub(crate) const PROCESSOR_RESTARTS_TOTAL: &str = "beacon_processor_restarts_total";
/// TLS handshakes, by `result` (`ok`, `resumed`, `no_shared_cipher`, `bad_certificate`,
/// `protocol_error`, `timeout`, `plain_http`).
pub(crate) const TLS_HANDSHAKES_TOTAL: &str = "beacon_tls_handshakes_total";
/// TLS connections established, by negotiated `version` (`1.2`, `1.3`).
pub(crate) const TLS_CONNECTIONS_TOTAL: &str = "beacon_tls_connections_total";
/// notAfter of each certificate served, Unix seconds, by `name`.
pub(crate) const TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS: &str =
    "beacon_tls_certificate_expiry_timestamp_seconds";
/// Certificate reloads on SIGHUP, by `result` (`ok`, `error`: the running set stayed).
pub(crate) const TLS_RELOADS_TOTAL: &str = "beacon_tls_reloads_total";
/// 1 while draining on SIGTERM (health check failing), else 0.
pub(crate) const DRAINING: &str = "beacon_draining";

/// Kernel (host-wide, since boot): accept queue overflows (`TcpExt.ListenOverflows`).
pub(crate) const KERNEL_LISTEN_OVERFLOWS_TOTAL: &str = "beacon_kernel_listen_overflows_total";
/// Kernel: SYNs to listening sockets dropped (`TcpExt.ListenDrops`).
pub(crate) const KERNEL_LISTEN_DROPS_TOTAL: &str = "beacon_kernel_listen_drops_total";
/// Kernel: SYN cookies sent (`TcpExt.SyncookiesSent`).
pub(crate) const KERNEL_SYNCOOKIES_SENT_TOTAL: &str = "beacon_kernel_syncookies_sent_total";
/// Kernel: invalid SYN cookies received (`TcpExt.SyncookiesFailed`).
pub(crate) const KERNEL_SYNCOOKIES_FAILED_TOTAL: &str = "beacon_kernel_syncookies_failed_total";
/// Kernel: packets dropped on a busy socket backlog (`TcpExt.TCPBacklogDrop`).
pub(crate) const KERNEL_TCP_BACKLOG_DROPS_TOTAL: &str = "beacon_kernel_tcp_backlog_drops_total";
/// Kernel: conntrack table fill, 0..1 (absent without conntrack).
pub(crate) const KERNEL_CONNTRACK_FILL_RATIO: &str = "beacon_kernel_conntrack_fill_ratio";
/// Kernel: TCP sockets in TIME_WAIT.
pub(crate) const KERNEL_TCP_TIME_WAIT: &str = "beacon_kernel_tcp_time_wait";
/// Kernel: orphaned TCP sockets.
pub(crate) const KERNEL_TCP_ORPHANS: &str = "beacon_kernel_tcp_orphans";
/// Process: open file descriptors.
pub(crate) const PROCESS_OPEN_FDS: &str = "beacon_process_open_fds";
/// Process: `RLIMIT_NOFILE` soft limit.
pub(crate) const PROCESS_MAX_FDS: &str = "beacon_process_max_fds";

/// Processing stage: records written to the sink.
pub(crate) const SINK_RECORDS_TOTAL: &str = "beacon_sink_records_total";
/// Processing stage: duplicate records dropped (resends it had already written).
pub(crate) const SINK_DUPLICATES_TOTAL: &str = "beacon_sink_duplicates_total";
/// Processing stage: undecodable records skipped.
pub(crate) const SINK_CORRUPT_RECORDS_TOTAL: &str = "beacon_sink_corrupt_records_total";
/// Processing stage: files rotated.
pub(crate) const SINK_FILES_ROTATED_TOTAL: &str = "beacon_sink_files_rotated_total";
/// NATS sink: records JetStream acknowledged as stored.
pub(crate) const NATS_PUBLISHED_TOTAL: &str = "beacon_sink_nats_published_total";
/// NATS sink: publishes JetStream acknowledged as duplicates of a stored message (a replay
/// inside the duplicate window, stored once).
pub(crate) const NATS_DUPLICATES_TOTAL: &str = "beacon_sink_nats_duplicates_total";
/// NATS sink: publishes not acknowledged, to be sent again, by `reason` (`timeout`,
/// `disconnected`, `no_stream`, `rejected`).
pub(crate) const NATS_PUBLISH_ERRORS_TOTAL: &str = "beacon_sink_nats_publish_errors_total";
/// NATS sink: records waiting for JetStream's acknowledgement (the collector keeps them
/// spooled meanwhile).
pub(crate) const NATS_PENDING_RECORDS: &str = "beacon_sink_nats_pending_records";
/// NATS sink: 1 while connected to a server, else 0.
pub(crate) const NATS_CONNECTED: &str = "beacon_sink_nats_connected";
/// Kafka sink: records Kafka acknowledged (from all in-sync replicas), in confirmed batches.
pub(crate) const KAFKA_DELIVERED_TOTAL: &str = "beacon_sink_kafka_delivered_total";
/// Kafka sink: records the producer could not deliver (their batch is sent again), by `reason`
/// (`timeout`: past `delivery_timeout_ms`; `not_enough_replicas`; `queue_full`; `rejected`).
pub(crate) const KAFKA_ERRORS_TOTAL: &str = "beacon_sink_kafka_errors_total";
/// Kafka sink: records handed to the producer and not yet reported on (the collector keeps
/// them spooled meanwhile).
pub(crate) const KAFKA_INFLIGHT_RECORDS: &str = "beacon_sink_kafka_inflight_records";
/// Kafka sink: records sent to `processor.kafka.overflow_topic` because their rendered topic
/// would have been one more than `max_topics`.
pub(crate) const KAFKA_TOPIC_OVERFLOW_TOTAL: &str = "beacon_sink_kafka_topic_overflow_total";
/// Processing stage: 1 while a sink cannot do its work and has been retrying long enough that
/// it will not fix itself without a change (a topic it cannot create, records not taken for a
/// minute), by `sink`; the stage's `/readyz` answers 503 meanwhile.
pub(crate) const SINK_STALLED: &str = "beacon_sink_stalled";
/// Kafka sink: brokers the producer is connected to.
pub(crate) const KAFKA_BROKERS_UP: &str = "beacon_sink_kafka_brokers_up";

/// Buckets of the spool's disk timings: a page-cache write takes microseconds, a device flush
/// a tenth of a millisecond to milliseconds, a write or flush behind a journal commit tens.
const DISK_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle. Later calls
/// return the same handle (tests start many servers in one process).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.to_string()),
                    &[
                        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
                        0.25, 1.0, 5.0,
                    ],
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(Matcher::Full(SPOOL_SYNC_SECONDS.to_string()), DISK_BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(SPOOL_WRITE_SECONDS.to_string()),
                    DISK_BUCKETS,
                )
                .expect("bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program): then our
            // handle renders nothing, which is the embedding program's choice.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A gauge that is computed rather than counted: it runs before every scrape and says whether
/// it is still wanted (false once what it measures is gone).
type ScrapeHook = Box<dyn Fn() -> bool + Send>;

static SCRAPE_HOOKS: std::sync::Mutex<Vec<ScrapeHook>> = std::sync::Mutex::new(Vec::new());

/// Runs `hook` before every scrape of `/metrics`, until it returns false. For gauges that must
/// be right when read, not only when something happened: an age keeps growing while nothing is
/// written or acknowledged, and that is exactly when an alert needs it.
pub(crate) fn before_scrape(hook: impl Fn() -> bool + Send + 'static) {
    SCRAPE_HOOKS
        .lock()
        .expect("not poisoned")
        .push(Box::new(hook));
}

/// The `/metrics` text, after the scrape hooks have set their gauges.
pub(crate) fn render(handle: &PrometheusHandle) -> String {
    SCRAPE_HOOKS
        .lock()
        .expect("not poisoned")
        .retain(|hook| hook());
    handle.render()
}
