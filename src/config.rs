//! Configuration: the TOML schema, its defaults, parsing with key paths, and `validate()`.
//!
//! Every field carries a doc comment (it is the reference) and its unit in its name. Parsing
//! never panics; every failure is a [`ConfigError`] naming the key, the problem and the fix,
//! which the binary turns into exit code 64 (`EX_USAGE`).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shipped, annotated default configuration. A test parses it, so it cannot rot.
pub const DEFAULT_TOML: &str = include_str!("../config/collector.toml");

/// A configuration problem: which key, what is wrong with it, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {problem}; fix: {fix}")]
pub struct ConfigError {
    /// Dotted key path, e.g. `http.idle_timeout_seconds`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl ConfigError {
    fn new(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The public TCP listener and its per-socket options.
    pub server: ServerConfig,
    /// HTTP limits, timeouts and routes.
    pub http: HttpConfig,
    /// Requests waiting for the spool writer.
    pub queue: QueueConfig,
    /// Per-client rate limit (off by default).
    pub rate_limit: RateLimitConfig,
    /// The durable local spool every accepted beacon is written to before it is answered.
    pub spool: SpoolConfig,
    /// How the collector reaches the processing stage.
    pub forward: ForwardConfig,
    /// The bundled processing stage (`beacon-collector process`).
    pub processor: ProcessorConfig,
    /// SIGTERM behaviour: deregistration delay, drain and flush deadlines.
    pub shutdown: ShutdownConfig,
    /// The admin listener (Prometheus `/metrics`).
    pub admin: AdminConfig,
    /// The kernel/limits self-check at start and the kernel counter sampler while serving.
    pub check: CheckConfig,
    /// Logging.
    pub log: LogConfig,
}

/// Self-check and kernel sampler.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckConfig {
    /// Refuse to start when `beacon-collector check` finds a `fail` (warnings are logged either
    /// way).
    pub strict: bool,
    /// Seconds between reads of the kernel counters (listen overflows, SYN cookies, conntrack
    /// fill, TIME_WAIT, open fds) exported as metrics; a rising trouble counter is logged.
    /// 0 disables the sampler.
    pub sample_interval_seconds: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            strict: false,
            sample_interval_seconds: 5,
        }
    }
}

/// The public listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the beacon listener binds, `IP:PORT`. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Ingest workers: threads that each own a `SO_REUSEPORT` listener, their connections,
    /// timers, a share of `max_connections` and their own group commit. 0 means one per CPU.
    #[serde(alias = "worker_threads")]
    pub workers: usize,
    /// The HTTP/1.1 engine: `native` (httparse; idle connections hold no buffers) or `hyper`
    /// (the reference engine, same routes, limits and records).
    pub engine: crate::ingest::Engine,
    /// Number of `SO_REUSEPORT` listening sockets. 0 means one per worker.
    pub listeners: usize,
    /// `listen(2)` backlog per socket. The kernel silently caps it at `net.core.somaxconn`;
    /// the collector reads that at start and warns.
    pub backlog: u32,
    /// Most connections open at once. A permit is taken before `accept`, so above this the
    /// kernel's accept queue holds new connections instead of the collector running out of fds.
    pub max_connections: usize,
    /// Seconds a connection is idle before the first TCP keepalive probe.
    pub tcp_keepalive_idle_seconds: u64,
    /// Seconds between TCP keepalive probes.
    pub tcp_keepalive_interval_seconds: u64,
    /// Unanswered keepalive probes before the kernel drops the connection.
    pub tcp_keepalive_probes: u32,
    /// Random spread, in percent, applied per connection to the keepalive idle time so that
    /// probes of connections accepted together do not fire in lockstep.
    pub tcp_keepalive_jitter_percent: u32,
    /// `TCP_USER_TIMEOUT`: seconds sent data may stay unacknowledged before the kernel drops
    /// the connection (otherwise `tcp_retries2` keeps a dead peer for up to ~15 minutes).
    /// 0 leaves the kernel default.
    pub tcp_user_timeout_seconds: u64,
    /// PROXY protocol on this listener: `off`, `v1`, `v2` or `any`. When on, a connection
    /// without a valid header is closed (never guessed); the header's source is the client.
    pub proxy_protocol: crate::ingest::proxy::Mode,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("static address"),
            workers: 0,
            engine: crate::ingest::Engine::Native,
            listeners: 0,
            backlog: 4096,
            max_connections: 50_000,
            tcp_keepalive_idle_seconds: 120,
            tcp_keepalive_interval_seconds: 15,
            tcp_keepalive_probes: 4,
            tcp_keepalive_jitter_percent: 10,
            tcp_user_timeout_seconds: 30,
            proxy_protocol: crate::ingest::proxy::Mode::Off,
        }
    }
}

/// HTTP behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Seconds an idle keep-alive connection is kept open. Must be above
    /// `lb_idle_timeout_seconds`, or the load balancer reuses a connection the collector is
    /// closing and the client gets a 502.
    pub idle_timeout_seconds: u64,
    /// The idle timeout of the load balancer in front (ELB/ALB default 60). Only used to check
    /// `idle_timeout_seconds`.
    pub lb_idle_timeout_seconds: u64,
    /// Seconds from the first byte of a request to the end of its headers (slowloris guard).
    pub header_timeout_seconds: u64,
    /// Seconds allowed to receive a request body once the headers are in.
    pub body_timeout_seconds: u64,
    /// Largest request body accepted (64 KiB is the browsers' sendBeacon quota). Larger: 413.
    pub max_body_bytes: usize,
    /// Longest request target (path and query). Longer: 414.
    pub max_uri_bytes: usize,
    /// Largest total size of the request headers (names and values). Larger: 431.
    pub max_header_bytes: usize,
    /// Most request headers. More: 431.
    pub max_headers: usize,
    /// Most query or form parameters in one beacon. More: 400.
    pub max_params: usize,
    /// Longest decoded parameter name. Longer: 400.
    pub max_param_name_bytes: usize,
    /// Longest decoded parameter value. Longer: 400.
    pub max_param_value_bytes: usize,
    /// Path of the beacon endpoint (GET, HEAD, POST, OPTIONS). Answered with 204.
    pub beacon_path: String,
    /// Path answered with a 43-byte transparent 1x1 GIF (for `<img>` beacons). Empty disables.
    pub gif_path: String,
    /// Path of the load balancer health check. 200 while serving, 503 while draining.
    pub health_path: String,
    /// Origins allowed by CORS. `["*"]` allows any. Credentials are never allowed.
    pub allowed_origins: Vec<String>,
    /// Seconds browsers may cache a CORS preflight answer.
    pub cors_max_age_seconds: u64,
    /// Proxies whose `X-Forwarded-For` is believed (CIDR ranges). Empty: the header is ignored.
    /// When a connection comes from one of them, the client is the right-most hop that is not.
    pub trusted_proxies: Vec<crate::ingest::forwarded_for::Cidr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            idle_timeout_seconds: 75,
            lb_idle_timeout_seconds: 60,
            header_timeout_seconds: 10,
            body_timeout_seconds: 10,
            max_body_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_params: 256,
            max_param_name_bytes: 256,
            max_param_value_bytes: 8 * 1024,
            beacon_path: "/beacon".into(),
            gif_path: "/beacon.gif".into(),
            health_path: "/healthz".into(),
            allowed_origins: vec!["*".into()],
            cors_max_age_seconds: 86_400,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Per-client rate limit: a token bucket per client IP in a fixed-size table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Answer 429 to a client over the limit. Off by default: behind NAT many browsers share
    /// one address, so size the limit for your busiest office before turning it on.
    pub enabled: bool,
    /// Sustained beacons per second per client IP.
    pub per_client_per_second: f64,
    /// Beacons a client may send at once after being idle.
    pub burst: u32,
    /// Buckets in the table: memory is fixed at about 32 bytes each, however many clients.
    pub table_slots: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            per_client_per_second: 20.0,
            burst: 100,
            table_slots: 65_536,
        }
    }
}

/// The bounded queue between handlers and the spool writer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Beacons waiting to be written to the spool (one group commit takes all of them).
    /// When full, requests get 503.
    pub capacity: usize,
    /// Value of `Retry-After` on a 503.
    pub retry_after_seconds: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            retry_after_seconds: 5,
        }
    }
}

/// When a beacon counts as accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckAfter {
    /// After `write(2)` to the spool: survives a crash or `kill -9` of the collector.
    Write,
    /// After `fdatasync(2)` of the spool (group commit): survives power loss.
    Fsync,
}

/// The durable spool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool segments and checkpoint (created if missing).
    pub dir: PathBuf,
    /// `write` (default) or `fsync`: what must happen before a beacon is answered 204.
    pub ack_after: AckAfter,
    /// A new segment file is started when the current one reaches this size. Segments are
    /// deleted whole once every record in them is acknowledged.
    pub segment_bytes: u64,
    /// Most bytes the spool may hold. At the high-water mark requests get 503 and the health
    /// check fails until the processing stage drains it below the low-water mark.
    pub max_bytes: u64,
    /// High-water mark, percent of `max_bytes`.
    pub high_water_percent: u8,
    /// Low-water mark, percent of `max_bytes`, where accepting resumes.
    pub low_water_percent: u8,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("spool"),
            ack_after: AckAfter::Write,
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 4 * 1024 * 1024 * 1024,
            high_water_percent: 90,
            low_water_percent: 80,
        }
    }
}

/// Where the processing stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// `serve` starts `beacon-collector process` as a supervised child on `forward.socket_path`.
    Embedded,
    /// Connect to a processing stage somebody else runs on `forward.socket_path`.
    External,
}

/// The forwarder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// `embedded` (default: one command runs everything) or `external`.
    pub mode: ForwardMode,
    /// Unix socket of the processing stage.
    pub socket_path: PathBuf,
    /// Most records in one BATCH frame.
    pub batch_max_records: usize,
    /// Milliseconds the forwarder waits for a batch to fill after its first record arrives.
    /// Beacons are answered before this, so it costs no client latency; it turns one write
    /// and one wake-up per beacon on both sides of the socket into one per batch. 0 disables.
    pub linger_ms: u64,
    /// Most records sent but not yet acknowledged. When reached the forwarder waits, the queue
    /// fills, and requests get 503: back-pressure instead of unbounded memory.
    pub max_unacked_records: usize,
    /// First reconnect delay in milliseconds; doubles per failure, with jitter.
    pub reconnect_initial_ms: u64,
    /// Longest reconnect delay in milliseconds.
    pub reconnect_max_ms: u64,
    /// Seconds without an acknowledgement while records are outstanding before the connection
    /// is considered stuck, dropped and re-established (records are then resent).
    pub ack_timeout_seconds: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            mode: ForwardMode::Embedded,
            socket_path: PathBuf::from("run/processor.sock"),
            batch_max_records: 512,
            linger_ms: 2,
            max_unacked_records: 50_000,
            reconnect_initial_ms: 50,
            reconnect_max_ms: 5_000,
            ack_timeout_seconds: 30,
        }
    }
}

/// The bundled processing stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Where records go: `"files"` (NDJSON in `data_dir`) and/or `"nats"` (a JetStream stream,
    /// `[processor.nats]`). A batch is acknowledged to the collector only once every sink has
    /// it, so the collector's spool keeps whatever any sink has not confirmed.
    pub sinks: Vec<SinkKind>,
    /// Directory the NDJSON files are written to (created if missing).
    pub data_dir: PathBuf,
    /// File name prefix: `<prefix>-<UTC time>-<n>.ndjson`.
    pub file_prefix: String,
    /// Rotate the current file when it reaches this size.
    pub rotate_bytes: u64,
    /// Rotate the current file when it is this old, even if idle.
    pub rotate_seconds: u64,
    /// Permission bits of the listening socket file (`0o660`: owner and group may connect).
    pub socket_mode: u32,
    /// Call `fdatasync` before acknowledging a batch (survives power loss, costs latency).
    pub fsync: bool,
    /// Serve the processing stage's own Prometheus `/metrics` (records written, duplicates
    /// dropped, corrupt records, rotations).
    pub admin_enabled: bool,
    /// Address of the processing stage's metrics listener.
    pub admin_listen: SocketAddr,
    /// Milliseconds the supervisor waits before restarting a processing stage that exited;
    /// doubles per quick failure up to 10 s.
    pub restart_delay_ms: u64,
    /// The NATS JetStream sink (used when `sinks` lists `"nats"`).
    pub nats: NatsConfig,
}

/// A processing-stage sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// NDJSON files in `processor.data_dir`.
    Files,
    /// A NATS JetStream stream.
    Nats,
}

/// JetStream retention policy of the stream the stage creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Kept until `max_age_seconds` / `max_bytes` (any number of consumers, replayable).
    Limits,
    /// Kept until every consumer that exists has acknowledged it.
    Interest,
    /// Removed once one consumer acknowledges it (a work queue).
    Workqueue,
}

/// JetStream storage of the stream the stage creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk (survives a broker restart).
    File,
    /// In memory (lost when the broker restarts).
    Memory,
}

/// What to do when the stream exists with settings other than the configured ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMismatch {
    /// Log every difference and exit: nothing is published (the collector keeps spooling).
    Fail,
    /// Log every difference and publish anyway.
    Warn,
}

/// The NATS JetStream sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:port`); list several members of a cluster so the stage can
    /// connect while one is down. The client also learns the others from the cluster.
    pub servers: Vec<String>,
    /// A `.creds` file (user JWT + NKey seed) to authenticate with; unset for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// The connection name the servers show (`nats server report connections`).
    pub connection_name: String,
    /// The stream's name.
    pub stream: String,
    /// The subjects the stream captures (NATS wildcards allowed).
    pub stream_subjects: Vec<String>,
    /// The subject each beacon is published to: dot-separated tokens, each a literal or one
    /// of `{site}` (host of the page: the `u` parameter, else Origin, else Referer), `{path}`,
    /// `{kind}`, `{method}`, `{param.NAME}`. Values are reduced to `[A-Za-z0-9_-]` (anything
    /// else becomes `_`, at most 64 bytes; empty is `_`). Must fall inside `stream_subjects`.
    pub subject: String,
    /// Create the stream when it does not exist (with the settings below).
    pub create_stream: bool,
    /// An existing stream whose settings differ from these: `"fail"` (exit, reporting each
    /// difference) or `"warn"` (report and publish anyway).
    pub stream_mismatch: OnMismatch,
    /// `"limits"`, `"interest"` or `"workqueue"`.
    pub retention: Retention,
    /// `"file"` or `"memory"`.
    pub storage: Storage,
    /// Copies of each message (1..=5, at most the number of servers; 3 in a cluster survives
    /// one server down, 5 survives two, 2 survives none).
    pub replicas: usize,
    /// Seconds a message is kept (limits retention); 0 means no age limit.
    pub max_age_seconds: u64,
    /// Bytes the stream may hold before the oldest messages go; 0 means no limit.
    pub max_bytes: u64,
    /// Seconds JetStream remembers message ids (`Nats-Msg-Id` = the record id) to drop a
    /// republished beacon: replays after a stage or collector restart within this window are
    /// stored once.
    pub duplicate_window_seconds: u64,
    /// Publishes awaiting JetStream's acknowledgement at once; at the limit the stage stops
    /// reading from the collector (whose spool then holds the rest).
    pub max_inflight: usize,
    /// Milliseconds to wait for JetStream to acknowledge a publish before sending it again
    /// (with the same message id, so a late first copy is not stored twice).
    pub publish_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".into()],
            credentials_file: None,
            connection_name: "beacon-collector".into(),
            stream: "BEACONS".into(),
            stream_subjects: vec!["beacons.>".into()],
            subject: "beacons.{site}".into(),
            create_stream: true,
            stream_mismatch: OnMismatch::Fail,
            retention: Retention::Limits,
            storage: Storage::File,
            replicas: 1,
            max_age_seconds: 7 * 24 * 3600,
            max_bytes: 0,
            duplicate_window_seconds: 120,
            max_inflight: 4096,
            publish_timeout_ms: 5000,
        }
    }
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            sinks: vec![SinkKind::Files],
            data_dir: PathBuf::from("data"),
            file_prefix: "beacons".into(),
            rotate_bytes: 128 * 1024 * 1024,
            rotate_seconds: 3600,
            socket_mode: 0o660,
            fsync: false,
            admin_enabled: true,
            admin_listen: "127.0.0.1:9103".parse().expect("static address"),
            restart_delay_ms: 200,
            nats: NatsConfig::default(),
        }
    }
}

/// Shutdown on SIGTERM.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds `/healthz` answers 503 while still serving, so the load balancer deregisters the
    /// collector before it stops accepting (ALB default deregistration delay: 300 s, health
    /// check interval x unhealthy threshold is what actually matters).
    pub deregistration_delay_seconds: u64,
    /// Seconds open connections get to finish after accepting stops.
    pub drain_timeout_seconds: u64,
    /// Seconds the forwarder gets to hand every accepted beacon to the processing stage and
    /// see it acknowledged.
    pub flush_timeout_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            deregistration_delay_seconds: 15,
            drain_timeout_seconds: 20,
            flush_timeout_seconds: 30,
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `/metrics` (Prometheus text format).
    pub enabled: bool,
    /// Address of the admin listener. Keep it off the public interface.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9102".parse().expect("static address"),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable with colour on a terminal, JSON otherwise.
    Auto,
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `auto`, `pretty` or `json`. `--log-format` overrides.
    pub format: LogFormat,
    /// Filter in `tracing` EnvFilter syntax, e.g. `info` or `beacon_collector=debug`.
    /// `RUST_LOG` overrides.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| toml_error(text, &e))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().to_string();
            path_error(&key, &msg)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "-c",
                format!("cannot read {}: {e}", path.display()),
                "pass the path of a readable TOML file, or omit -c for the built-in defaults",
            )
        })?;
        Self::from_toml(&text)
    }

    /// Ingest workers after resolving 0 to the CPU count.
    pub fn workers(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Listening sockets after resolving 0 to the worker count.
    pub fn listeners(&self) -> usize {
        match self.server.listeners {
            0 => self.workers(),
            n => n,
        }
    }

    /// Checks values serde cannot: ranges and the relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let h = &self.http;
        let rl = &self.rate_limit;
        if !(rl.per_client_per_second.is_finite() && rl.per_client_per_second > 0.0) {
            return Err(ConfigError::new(
                "rate_limit.per_client_per_second",
                format!("{} is not a positive rate", rl.per_client_per_second),
                "set beacons per second per client, e.g. 20",
            ));
        }
        positive("rate_limit.burst", u64::from(rl.burst))?;
        if !(1024..=16 * 1024 * 1024).contains(&rl.table_slots) {
            return Err(ConfigError::new(
                "rate_limit.table_slots",
                format!("{} is outside 1024..=16777216", rl.table_slots),
                "use 65536 (about 2 MiB) or more for many distinct clients",
            ));
        }
        positive("server.backlog", s.backlog as u64)?;
        if s.backlog > i32::MAX as u32 {
            return Err(ConfigError::new(
                "server.backlog",
                "larger than listen(2) accepts",
                "use a value at most 65535 (and raise net.core.somaxconn to match)",
            ));
        }
        positive("server.max_connections", s.max_connections as u64)?;
        if s.listeners > 1024 {
            return Err(ConfigError::new(
                "server.listeners",
                format!("{} sockets is more than useful", s.listeners),
                "use 0 (one per worker thread) or a number up to the CPU count",
            ));
        }
        positive(
            "server.tcp_keepalive_idle_seconds",
            s.tcp_keepalive_idle_seconds,
        )?;
        positive(
            "server.tcp_keepalive_interval_seconds",
            s.tcp_keepalive_interval_seconds,
        )?;
        positive("server.tcp_keepalive_probes", s.tcp_keepalive_probes as u64)?;
        if s.tcp_keepalive_jitter_percent > 50 {
            return Err(ConfigError::new(
                "server.tcp_keepalive_jitter_percent",
                "above 50 percent",
                "use 0..=50 (10 spreads probes well)",
            ));
        }

        positive("http.idle_timeout_seconds", h.idle_timeout_seconds)?;
        if h.idle_timeout_seconds <= h.lb_idle_timeout_seconds {
            return Err(ConfigError::new(
                "http.idle_timeout_seconds",
                format!(
                    "{} s is not above http.lb_idle_timeout_seconds ({} s): the load balancer would \
                     reuse connections the collector is closing, and clients get 502s",
                    h.idle_timeout_seconds, h.lb_idle_timeout_seconds
                ),
                format!(
                    "set http.idle_timeout_seconds to at least {} (e.g. 75 with the 60 s ELB/ALB default), \
                     or lower the load balancer's idle timeout",
                    h.lb_idle_timeout_seconds + 5
                ),
            ));
        }
        positive("http.header_timeout_seconds", h.header_timeout_seconds)?;
        positive("http.body_timeout_seconds", h.body_timeout_seconds)?;
        positive("http.max_body_bytes", h.max_body_bytes as u64)?;
        if h.max_uri_bytes < 64 {
            return Err(ConfigError::new(
                "http.max_uri_bytes",
                format!("{} is too small for any beacon", h.max_uri_bytes),
                "use at least 64 (default 8192)",
            ));
        }
        if h.max_header_bytes < 1024 {
            return Err(ConfigError::new(
                "http.max_header_bytes",
                format!("{} is too small for browser headers", h.max_header_bytes),
                "use at least 1024 (default 16384)",
            ));
        }
        if h.max_headers < 8 {
            return Err(ConfigError::new(
                "http.max_headers",
                format!("{} is too few for browser requests", h.max_headers),
                "use at least 8 (default 64)",
            ));
        }
        positive("http.max_params", h.max_params as u64)?;
        positive("http.max_param_name_bytes", h.max_param_name_bytes as u64)?;
        positive("http.max_param_value_bytes", h.max_param_value_bytes as u64)?;
        for (key, path, may_be_empty) in [
            ("http.beacon_path", &h.beacon_path, false),
            ("http.gif_path", &h.gif_path, true),
            ("http.health_path", &h.health_path, false),
        ] {
            if path.is_empty() && may_be_empty {
                continue;
            }
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
                return Err(ConfigError::new(
                    key,
                    format!("{path:?} is not an absolute URL path"),
                    "use a path starting with '/' without query or spaces, e.g. \"/beacon\"",
                ));
            }
        }
        if h.beacon_path == h.health_path
            || h.gif_path == h.beacon_path
            || h.gif_path == h.health_path
        {
            return Err(ConfigError::new(
                "http.gif_path",
                "beacon_path, gif_path and health_path must differ",
                "give each route its own path",
            ));
        }
        if h.allowed_origins.is_empty() {
            return Err(ConfigError::new(
                "http.allowed_origins",
                "empty list: no browser could send a cross-origin beacon",
                "use [\"*\"] for any origin, or list origins like \"https://www.example.com\"",
            ));
        }
        for o in &h.allowed_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://"))
                || o.ends_with('/')
            {
                return Err(ConfigError::new(
                    "http.allowed_origins",
                    format!("{o:?} is not an origin"),
                    "write origins as scheme://host[:port] without a trailing slash, or \"*\"",
                ));
            }
        }

        positive("queue.capacity", self.queue.capacity as u64)?;
        let sp = &self.spool;
        if sp.dir.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "spool.dir",
                "empty",
                "set a directory on a local disk, e.g. \"spool\"",
            ));
        }
        if sp.segment_bytes < 4096 {
            return Err(ConfigError::new(
                "spool.segment_bytes",
                "below 4096",
                "use at least 4096 (default 67108864)",
            ));
        }
        if sp.max_bytes < 4 * sp.segment_bytes {
            return Err(ConfigError::new(
                "spool.max_bytes",
                format!(
                    "{} is less than four segments ({} bytes each)",
                    sp.max_bytes, sp.segment_bytes
                ),
                "raise spool.max_bytes or lower spool.segment_bytes",
            ));
        }
        if !(sp.low_water_percent < sp.high_water_percent && sp.high_water_percent <= 100) {
            return Err(ConfigError::new(
                "spool.high_water_percent",
                format!(
                    "high {} / low {} must satisfy low < high <= 100",
                    sp.high_water_percent, sp.low_water_percent
                ),
                "use e.g. high_water_percent = 90, low_water_percent = 80",
            ));
        }
        positive("queue.retry_after_seconds", self.queue.retry_after_seconds)?;

        let f = &self.forward;
        if f.socket_path.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "forward.socket_path",
                "empty",
                "set the path of the processing stage's unix socket, e.g. \"run/processor.sock\"",
            ));
        }
        // sun_path is 108 bytes including the NUL on Linux.
        if f.socket_path.as_os_str().len() > 107 {
            return Err(ConfigError::new(
                "forward.socket_path",
                "longer than the 107 bytes a unix socket path may have",
                "use a shorter path, e.g. under /run",
            ));
        }
        positive("forward.batch_max_records", f.batch_max_records as u64)?;
        if f.linger_ms > 1000 {
            return Err(ConfigError::new(
                "forward.linger_ms",
                "above 1000 ms",
                "use 0..=1000 (2 is plenty to batch under load)",
            ));
        }
        if f.max_unacked_records < f.batch_max_records {
            return Err(ConfigError::new(
                "forward.max_unacked_records",
                "smaller than forward.batch_max_records",
                "use at least forward.batch_max_records (default 50000)",
            ));
        }
        positive("forward.reconnect_initial_ms", f.reconnect_initial_ms)?;
        if f.reconnect_max_ms < f.reconnect_initial_ms {
            return Err(ConfigError::new(
                "forward.reconnect_max_ms",
                "smaller than forward.reconnect_initial_ms",
                "use a value at least forward.reconnect_initial_ms",
            ));
        }
        positive("forward.ack_timeout_seconds", f.ack_timeout_seconds)?;

        let p = &self.processor;
        if p.file_prefix.is_empty() || p.file_prefix.contains('/') {
            return Err(ConfigError::new(
                "processor.file_prefix",
                "empty or contains '/'",
                "use a plain name such as \"beacons\"",
            ));
        }
        if p.rotate_bytes < 4096 {
            return Err(ConfigError::new(
                "processor.rotate_bytes",
                "below 4096",
                "use at least 4096 (default 134217728)",
            ));
        }
        positive("processor.rotate_seconds", p.rotate_seconds)?;
        if p.socket_mode > 0o777 {
            return Err(ConfigError::new(
                "processor.socket_mode",
                format!("{:#o} is not a permission mode", p.socket_mode),
                "write it as a TOML octal integer, e.g. 0o660",
            ));
        }

        if p.sinks.is_empty() {
            return Err(ConfigError::new(
                "processor.sinks",
                "empty: the stage would acknowledge beacons it sends nowhere",
                "list at least one of \"files\", \"nats\"",
            ));
        }
        if (1..p.sinks.len()).any(|i| p.sinks[..i].contains(&p.sinks[i])) {
            return Err(ConfigError::new(
                "processor.sinks",
                "lists a sink twice",
                "list each sink once, e.g. [\"files\", \"nats\"]",
            ));
        }
        if p.sinks.contains(&SinkKind::Nats) {
            p.nats.validate()?;
        }

        if self.admin.enabled && p.admin_enabled && self.admin.listen == p.admin_listen {
            return Err(ConfigError::new(
                "processor.admin_listen",
                "same address as admin.listen",
                "give the processing stage its own metrics port (default 127.0.0.1:9103)",
            ));
        }
        positive(
            "shutdown.drain_timeout_seconds",
            self.shutdown.drain_timeout_seconds,
        )?;
        positive(
            "shutdown.flush_timeout_seconds",
            self.shutdown.flush_timeout_seconds,
        )?;
        Ok(())
    }

    /// Useful durations.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.http.idle_timeout_seconds)
    }
}

impl NatsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.servers.is_empty() {
            return Err(ConfigError::new(
                "processor.nats.servers",
                "empty",
                "list the NATS servers, e.g. [\"nats://10.0.0.1:4222\", \"nats://10.0.0.2:4222\"]",
            ));
        }
        for (i, s) in self.servers.iter().enumerate() {
            if let Err(e) = s.parse::<async_nats::ServerAddr>() {
                return Err(ConfigError::new(
                    &format!("processor.nats.servers[{i}]"),
                    format!("{s:?} is not a server URL ({e})"),
                    "write it as nats://host:port (or tls://host:port)",
                ));
            }
        }
        if let Some(f) = &self.credentials_file {
            if f.as_os_str().is_empty() {
                return Err(ConfigError::new(
                    "processor.nats.credentials_file",
                    "empty path",
                    "remove the key for no credentials, or give the .creds file's path",
                ));
            }
        }
        let name_ok = !self.stream.is_empty()
            && self
                .stream
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b".*>/\\".contains(&b));
        if !name_ok {
            return Err(ConfigError::new(
                "processor.nats.stream",
                format!("{:?} is not a stream name", self.stream),
                "use letters, digits, '-' and '_', e.g. \"BEACONS\"",
            ));
        }
        if self.stream_subjects.is_empty() {
            return Err(ConfigError::new(
                "processor.nats.stream_subjects",
                "empty",
                "list the subjects the stream captures, e.g. [\"beacons.>\"]",
            ));
        }
        for (i, s) in self.stream_subjects.iter().enumerate() {
            if let Err(problem) = crate::sink::nats::subject::check_pattern(s) {
                return Err(ConfigError::new(
                    &format!("processor.nats.stream_subjects[{i}]"),
                    format!("{s:?}: {problem}"),
                    "write dot-separated tokens; `*` matches one token, `>` the rest",
                ));
            }
        }
        let template =
            crate::sink::nats::subject::Template::parse(&self.subject).map_err(|problem| {
                ConfigError::new(
                    "processor.nats.subject",
                    format!("{:?}: {problem}", self.subject),
                    "write dot-separated tokens, each a literal or one of {site}, {path}, {kind}, \
                 {method}, {param.NAME}, e.g. \"beacons.{site}\"",
                )
            })?;
        let sample = template.sample();
        if !self
            .stream_subjects
            .iter()
            .any(|p| crate::sink::nats::subject::matches(p, &sample))
        {
            return Err(ConfigError::new(
                "processor.nats.subject",
                format!(
                    "{:?} is not captured by processor.nats.stream_subjects {:?}: JetStream would \
                     refuse every publish",
                    self.subject, self.stream_subjects
                ),
                "make a stream subject match it (e.g. \"beacons.>\" for \"beacons.{site}\")",
            ));
        }
        if !matches!(self.replicas, 1..=5) {
            return Err(ConfigError::new(
                "processor.nats.replicas",
                format!("{} is outside 1..=5", self.replicas),
                "use 1 for a single server, 3 (or 5) for a cluster",
            ));
        }
        positive(
            "processor.nats.duplicate_window_seconds",
            self.duplicate_window_seconds,
        )?;
        if self.max_age_seconds != 0 && self.max_age_seconds < self.duplicate_window_seconds {
            return Err(ConfigError::new(
                "processor.nats.max_age_seconds",
                "shorter than processor.nats.duplicate_window_seconds",
                "keep messages at least as long as the duplicate window (or 0 for no age limit)",
            ));
        }
        positive("processor.nats.max_inflight", self.max_inflight as u64)?;
        if self.publish_timeout_ms < 100 {
            return Err(ConfigError::new(
                "processor.nats.publish_timeout_ms",
                format!("{} ms is below 100 ms", self.publish_timeout_ms),
                "use at least 100 (default 5000): a cluster electing a leader takes seconds",
            ));
        }
        Ok(())
    }
}

fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::new(
            key,
            "must be greater than 0",
            "use a positive value",
        ));
    }
    Ok(())
}

/// Turns a TOML syntax error into key/problem/fix, pointing at the line.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
    let at = line.map_or_else(String::new, |l| format!(" (line {l})"));
    ConfigError::new(
        &format!("<syntax>{at}"),
        e.message().trim().to_string(),
        "fix the TOML syntax at that line; `beacon-collector config print-default` shows a valid file",
    )
}

/// Turns a serde error at a key path into key/problem/fix.
fn path_error(path: &str, msg: &str) -> ConfigError {
    if msg.starts_with("unknown field `") {
        // serde_path_to_error's path already ends with the unknown key.
        let key = path;
        let expected = msg
            .split_once("expected ")
            .map(|(_, e)| format!(" (known keys here: {e})"))
            .unwrap_or_default();
        return ConfigError::new(
            key,
            "unknown key",
            format!("remove it or correct its spelling{expected}"),
        );
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let expected = rest.split_once("expected ").map_or("", |(_, e)| e);
        return ConfigError::new(
            path,
            format!("unknown value `{}`", rest.split('`').next().unwrap_or(rest)),
            format!("use one of {expected}"),
        );
    }
    ConfigError::new(
        path,
        msg.to_string(),
        "give it a value of the type the default config shows (`beacon-collector config print-default`)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_parses_and_matches_builtin() {
        let shipped = Config::from_toml(DEFAULT_TOML).expect("config/collector.toml is valid");
        let builtin = Config::default();
        builtin.validate().expect("built-in defaults are valid");
        // The shipped file documents the built-in defaults: they must not drift apart.
        assert_eq!(
            toml::to_string(&shipped).unwrap(),
            toml::to_string(&builtin).unwrap()
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let e = Config::from_toml("[http]\nidle_timout_seconds = 80\n").unwrap_err();
        assert_eq!(e.key, "http.idle_timout_seconds");
        assert_eq!(e.problem, "unknown key");
        assert!(e.fix.contains("idle_timeout_seconds"), "{e}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let e = Config::from_toml("[server]\nbacklog = \"lots\"\n").unwrap_err();
        assert_eq!(e.key, "server.backlog");
    }

    #[test]
    fn idle_timeout_must_exceed_lb_idle_timeout() {
        let e = Config::from_toml("[http]\nidle_timeout_seconds = 60\n").unwrap_err();
        assert_eq!(e.key, "http.idle_timeout_seconds");
        assert!(e.problem.contains("502"), "{e}");
        Config::from_toml("[http]\nidle_timeout_seconds = 61\n").unwrap();
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = Config::from_toml("[http]\n\nidle_timeout_seconds = = 3\n").unwrap_err();
        assert!(e.key.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_enum_value_lists_choices() {
        let e = Config::from_toml("[forward]\nmode = \"sideways\"\n").unwrap_err();
        assert_eq!(e.key, "forward.mode");
        assert!(e.fix.contains("embedded"), "{e}");
    }

    #[test]
    fn bad_origin_rejected() {
        let e = Config::from_toml("[http]\nallowed_origins = [\"example.com\"]\n").unwrap_err();
        assert_eq!(e.key, "http.allowed_origins");
    }

    #[test]
    fn proxy_settings_are_checked() {
        let c = Config::from_toml(
            "[server]\nproxy_protocol = \"v2\"\n[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
        )
        .unwrap();
        assert_eq!(c.server.proxy_protocol, crate::ingest::proxy::Mode::V2);
        assert_eq!(c.http.trusted_proxies.len(), 2);
        let e = Config::from_toml("[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n")
            .unwrap_err();
        assert!(e.key.starts_with("http.trusted_proxies"), "{e:?}");
        assert!(e.problem.contains("host bits"), "{e:?}");
        for (toml, key) in [
            (
                "[rate_limit]\nper_client_per_second = 0.0\n",
                "rate_limit.per_client_per_second",
            ),
            ("[rate_limit]\nburst = 0\n", "rate_limit.burst"),
            ("[rate_limit]\ntable_slots = 10\n", "rate_limit.table_slots"),
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert_eq!(e.key, key, "{toml}");
        }
        let e = Config::from_toml("[server]\nproxy_protocol = \"v3\"\n").unwrap_err();
        assert_eq!(e.key, "server.proxy_protocol");
        assert!(e.problem.contains("v3"), "{e:?}");
    }

    #[test]
    fn nats_settings_are_checked_when_the_sink_is_on() {
        // Not checked while the sink is off: a half-written [processor.nats] does no harm.
        Config::from_toml("[processor.nats]\nsubject = \"x.{nope}\"\n").unwrap();
        let on = "[processor]\nsinks = [\"files\", \"nats\"]\n[processor.nats]\n";
        let c = Config::from_toml(&format!("{on}replicas = 3\n")).unwrap();
        assert_eq!(c.processor.sinks, vec![SinkKind::Files, SinkKind::Nats]);
        for (toml, key, problem) in [
            (
                "subject = \"beacons.{nope}\"\n",
                "processor.nats.subject",
                "unknown placeholder",
            ),
            (
                "subject = \"other.{site}\"\n",
                "processor.nats.subject",
                "not captured by processor.nats.stream_subjects",
            ),
            (
                "servers = [\"nats://a:4222\", \"nats://b:port\"]\n",
                "processor.nats.servers[1]",
                "not a server URL",
            ),
            ("servers = []\n", "processor.nats.servers", "empty"),
            (
                "stream = \"BEA.CONS\"\n",
                "processor.nats.stream",
                "not a stream name",
            ),
            (
                "stream_subjects = [\"beacons.>.x\"]\n",
                "processor.nats.stream_subjects[0]",
                "last token",
            ),
            ("replicas = 7\n", "processor.nats.replicas", "outside"),
            (
                "retention = \"forever\"\n",
                "processor.nats.retention",
                "forever",
            ),
            ("max_inflight = 0\n", "processor.nats.max_inflight", ""),
            (
                "publish_timeout_ms = 10\n",
                "processor.nats.publish_timeout_ms",
                "",
            ),
            (
                "max_age_seconds = 60\n",
                "processor.nats.max_age_seconds",
                "shorter than",
            ),
        ] {
            let e = Config::from_toml(&format!("{on}{toml}")).unwrap_err();
            assert_eq!(e.key, key, "{toml}: {e}");
            assert!(e.problem.contains(problem), "{toml}: {e}");
        }
        let e = Config::from_toml("[processor]\nsinks = []\n").unwrap_err();
        assert_eq!(e.key, "processor.sinks");
        let e = Config::from_toml("[processor]\nsinks = [\"nats\", \"nats\"]\n").unwrap_err();
        assert!(e.problem.contains("twice"), "{e}");
        let e = Config::from_toml("[processor]\nsinks = [\"kafka\"]\n").unwrap_err();
        assert!(e.key.starts_with("processor.sinks"), "{e}");
    }
}
