//! `[server]`: the public listener and its per-socket options.

use super::error::{positive, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The public listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the beacon listener binds, `IP:PORT`. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Ingest workers: threads that each own a `SO_REUSEPORT` listener, their connections,
    /// timers and their own group commit (`max_connections` is one pool for all: a slot freed
    /// on one worker serves a client waiting on another). 0 means one per CPU.
    #[serde(alias = "worker_threads")]
    pub workers: usize,
    /// The HTTP/1.1 engine: `native` (httparse; idle connections hold no buffers) or `hyper`
    /// (the reference engine, same routes, limits and records).
    pub engine: crate::ingest::Engine,
    /// Number of `SO_REUSEPORT` listening sockets. 0 means one per worker.
    pub(crate) listeners: usize,
    /// `listen(2)` backlog per socket. The kernel silently caps it at `net.core.somaxconn`;
    /// the collector reads that at start and warns.
    pub backlog: u32,
    /// Most connections open at once. A permit is taken before `accept`, so above this the
    /// kernel's accept queue holds new connections instead of the collector running out of fds.
    pub max_connections: usize,
    /// Seconds a connection is idle before the first TCP keepalive probe.
    pub(crate) tcp_keepalive_idle_seconds: u64,
    /// Seconds between TCP keepalive probes.
    pub(crate) tcp_keepalive_interval_seconds: u64,
    /// Unanswered keepalive probes before the kernel drops the connection.
    pub(crate) tcp_keepalive_probes: u32,
    /// Random spread, in percent, applied per connection to the keepalive idle time so that
    /// probes of connections accepted together do not fire in lockstep.
    pub(crate) tcp_keepalive_jitter_percent: u32,
    /// `TCP_USER_TIMEOUT`: seconds sent data may stay unacknowledged before the kernel drops
    /// the connection (otherwise `tcp_retries2` keeps a dead peer for up to ~15 minutes).
    /// 0 leaves the kernel default.
    pub(crate) tcp_user_timeout_seconds: u64,
    /// Bind even when another socket already listens on `listen` (`SO_REUSEPORT` lets it,
    /// and the kernel then splits connections between the two). Off: the collector refuses
    /// to start and says who holds the port. On for a deliberate hand-over: start the new
    /// collector, then SIGTERM the old one. Sockets from the service manager are never checked.
    pub share_port: bool,
    /// Nice increment (0–19) of everything that is not an ingest worker: the collector's
    /// forwarder/admin runtime and the processing stage it starts (a stage run with `process`
    /// applies it to itself too). When they compete with the workers for a core, the workers
    /// answering browsers go first and the spool absorbs the difference. 0: same priority.
    pub background_nice: u8,
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
            share_port: false,
            background_nice: 10,
        }
    }
}

impl ServerConfig {
    /// Checks what serde cannot: ranges and the relations between this section's keys.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let s = self;
        positive("server.backlog", s.backlog as u64)?;
        if s.background_nice > 19 {
            return Err(ConfigError::new(
                "server.background_nice",
                format!("{} is above 19, the lowest priority", s.background_nice),
                "use 0 (same priority as the ingest workers) to 19; default 10",
            ));
        }
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
        Ok(())
    }
}
