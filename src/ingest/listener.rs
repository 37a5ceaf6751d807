//! The public TCP listener: building `SO_REUSEPORT` sockets with socket2 (every option an
//! explicit, labelled step), the somaxconn check, per-connection socket options, and the accept
//! loop with its connection permits and error classification.

use crate::config::ServerConfig;
use crate::logging::Throttle;
use crate::metrics as m;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where the kernel publishes the cap it applies to every `listen(2)` backlog.
pub(crate) const SOMAXCONN_PATH: &str = "/proc/sys/net/core/somaxconn";

/// A failed listener set-up step.
#[derive(Debug, thiserror::Error)]
#[error("listener {addr}: {step}")]
pub struct ListenError {
    /// The address being bound.
    pub(crate) addr: SocketAddr,
    /// Which step failed (`"socket"`, `"SO_REUSEPORT"`, `"bind"`, ...).
    pub(crate) step: &'static str,
    /// The OS error.
    #[source]
    pub(crate) source: io::Error,
}

/// The backlog the kernel will really use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backlog {
    /// What the config asked for.
    pub(crate) requested: u32,
    /// `net.core.somaxconn`, if readable.
    pub(crate) somaxconn: Option<u32>,
}

impl Backlog {
    /// Reads somaxconn from `path` (normally [`SOMAXCONN_PATH`]).
    pub(crate) fn probe(requested: u32, path: &str) -> Self {
        let somaxconn = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Self {
            requested,
            somaxconn,
        }
    }

    /// The backlog after the kernel's silent cap.
    pub(crate) fn effective(&self) -> u32 {
        self.somaxconn
            .map_or(self.requested, |s| self.requested.min(s))
    }

    /// True when the kernel will silently shorten the configured backlog.
    pub(crate) fn truncated(&self) -> bool {
        self.effective() < self.requested
    }

    /// Logs the effective backlog, and a warning with the fix when it is truncated.
    pub(crate) fn log(&self) {
        if self.truncated() {
            tracing::warn!(
                requested = self.requested,
                somaxconn = self.somaxconn,
                effective = self.effective(),
                fix = %format!(
                    "sysctl -w net.core.somaxconn={0}; persist with 'net.core.somaxconn = {0}' in /etc/sysctl.d/60-beacon-collector.conf",
                    self.requested
                ),
                "listen backlog is silently truncated by the kernel to net.core.somaxconn: bursts of new \
                 connections beyond it are dropped (ListenOverflows)"
            );
        } else {
            tracing::info!(
                requested = self.requested,
                somaxconn = self.somaxconn,
                effective = self.effective(),
                "listen backlog"
            );
        }
    }
}

/// Binds `count` `SO_REUSEPORT` sockets on `cfg.listen`. With port 0, the first socket picks
/// the port and the others join it. Sockets are non-blocking, ready for tokio.
pub(crate) fn bind(
    cfg: &ServerConfig,
    count: usize,
) -> Result<Vec<std::net::TcpListener>, ListenError> {
    bind_addr(cfg.listen, cfg.backlog, count)
}

/// `count` `SO_REUSEPORT` sockets listening on `addr` (port 0: one free port for all).
pub(crate) fn bind_addr(
    mut addr: SocketAddr,
    backlog: u32,
    count: usize,
) -> Result<Vec<std::net::TcpListener>, ListenError> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let l = bind_one(addr, backlog)?;
        if addr.port() == 0 {
            addr = l.local_addr().map_err(|source| ListenError {
                addr,
                step: "getsockname",
                source,
            })?;
        }
        out.push(l);
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr, backlog: u32) -> Result<std::net::TcpListener, ListenError> {
    let step = |step: &'static str| move |source| ListenError { addr, step, source };
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(step("socket"))?;
    // Restart without waiting for TIME_WAIT sockets of the previous process to expire.
    s.set_reuse_address(true).map_err(step("SO_REUSEADDR"))?;
    // One socket per worker: the kernel spreads new connections across them.
    s.set_reuse_port(true).map_err(step("SO_REUSEPORT"))?;
    if addr.is_ipv6() {
        s.set_only_v6(false).map_err(step("IPV6_V6ONLY"))?;
    }
    // Inherited by accepted sockets on Linux; set again per connection to be explicit.
    s.set_tcp_nodelay(true).map_err(step("TCP_NODELAY"))?;
    s.set_nonblocking(true).map_err(step("O_NONBLOCK"))?;
    s.bind(&addr.into()).map_err(step("bind"))?;
    // std and tokio would use 128 here; the kernel caps whatever we pass at somaxconn.
    s.listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(step("listen"))?;
    Ok(s.into())
}

/// Refuses a port another socket is already listening on. With `SO_REUSEPORT` a second
/// collector (or any process of the same user that set it) would bind the same port without an
/// error and the kernel would split new connections between the two, each with its own spool
/// and data directory. A probe socket without `SO_REUSEPORT` finds out: its bind fails while
/// anyone listens there. Skipped for port 0, and by the caller for sockets from the service
/// manager or with `server.share_port` (a deliberate hand-over).
pub(crate) fn refuse_shared_port(addr: SocketAddr) -> Result<(), ListenError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let Ok(probe) = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
    else {
        return Ok(()); // the real bind reports it
    };
    // TIME_WAIT sockets of an earlier run must not count as "listening".
    let _ = probe.set_reuse_address(true);
    if addr.is_ipv6() {
        let _ = probe.set_only_v6(false);
    }
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let who = crate::host::kernel::ProcRoot::system()
                .listener_of(addr.port())
                .map_or_else(
                    || {
                        format!(
                            "another process (as root: ss -ltnp 'sport = :{}')",
                            addr.port()
                        )
                    },
                    |(pid, comm)| format!("{comm} (pid {pid})"),
                );
            Err(ListenError {
                addr,
                step: "refusing to share the port",
                source: io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{who} is already listening on port {}; with SO_REUSEPORT both would \
                         take connections, each into its own spool. Stop it, choose another \
                         server.listen, or set server.share_port = true for a deliberate \
                         hand-over (start the new collector, then SIGTERM the old one)",
                        addr.port()
                    ),
                ),
            })
        }
        _ => Ok(()),
    }
}

/// Per-connection TCP options from the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketOptions {
    /// Keepalive idle time before jitter.
    pub(crate) keepalive_idle: Duration,
    /// Keepalive probe interval.
    pub(crate) keepalive_interval: Duration,
    /// Keepalive probes.
    pub(crate) keepalive_probes: u32,
    /// Jitter on the idle time, percent.
    pub(crate) jitter_percent: u32,
    /// `TCP_USER_TIMEOUT`, if set.
    pub(crate) user_timeout: Option<Duration>,
}

impl SocketOptions {
    /// From the `[server]` section.
    pub(crate) fn from_config(cfg: &ServerConfig) -> Self {
        Self {
            keepalive_idle: Duration::from_secs(cfg.tcp_keepalive_idle_seconds),
            keepalive_interval: Duration::from_secs(cfg.tcp_keepalive_interval_seconds),
            keepalive_probes: cfg.tcp_keepalive_probes,
            jitter_percent: cfg.tcp_keepalive_jitter_percent,
            user_timeout: (cfg.tcp_user_timeout_seconds > 0)
                .then(|| Duration::from_secs(cfg.tcp_user_timeout_seconds)),
        }
    }

    /// The keepalive idle time for one connection: base ± jitter, whole seconds (the kernel's
    /// unit), at least 1 s.
    pub(crate) fn jittered_idle(&self) -> Duration {
        let base = self.keepalive_idle.as_secs();
        let spread = base * u64::from(self.jitter_percent) / 100;
        let secs = if spread == 0 {
            base
        } else {
            base - spread + fastrand::u64(0..=2 * spread)
        };
        Duration::from_secs(secs.max(1))
    }

    /// Applies the options to an accepted socket.
    pub(crate) fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        let s = SockRef::from(stream);
        s.set_tcp_nodelay(true)?;
        let ka = TcpKeepalive::new()
            .with_time(self.jittered_idle())
            .with_interval(self.keepalive_interval)
            .with_retries(self.keepalive_probes);
        s.set_tcp_keepalive(&ka)?;
        if let Some(t) = self.user_timeout {
            s.set_tcp_user_timeout(Some(t))?;
        }
        Ok(())
    }
}

/// What to do about an `accept(2)` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptErrorClass {
    /// The failure belonged to one connection (or a signal): accept again at once.
    Retry,
    /// Out of a resource (fds, buffers, memory): pause before accepting again so a full
    /// process does not spin a core, and let connections close meanwhile.
    Pause,
    /// The listener itself is broken.
    Fatal,
}

/// Every `kind` label of `ACCEPT_ERRORS_TOTAL` ([`classify_accept_error`]'s second half).
const ACCEPT_ERROR_KINDS: [&str; 10] = [
    "econnaborted",
    "eintr",
    "eagain",
    "network",
    "eperm",
    "emfile",
    "enfile",
    "enobufs",
    "enomem",
    "fatal",
];

/// Exports the listener's series at 0 (see [`crate::metrics`]).
pub(crate) fn declare_metrics() {
    metrics::counter!(m::CONNECTIONS_ACCEPTED_TOTAL).increment(0);
    metrics::counter!(m::CONNECTION_LIMIT_REACHED_TOTAL).increment(0);
    for kind in ACCEPT_ERROR_KINDS {
        metrics::counter!(m::ACCEPT_ERRORS_TOTAL, "kind" => kind).increment(0);
    }
}

/// Classifies an accept error, with a bounded metric label.
pub(crate) fn classify_accept_error(e: &io::Error) -> (AcceptErrorClass, &'static str) {
    use AcceptErrorClass::*;
    match e.raw_os_error() {
        Some(libc::ECONNABORTED) => (Retry, "econnaborted"),
        Some(libc::EINTR) => (Retry, "eintr"),
        Some(libc::EAGAIN) => (Retry, "eagain"),
        // accept(2): "Linux accept() passes already-pending network errors on the new socket as
        // an error code from accept()"; for TCP these must be treated like EAGAIN.
        Some(
            libc::ENETDOWN
            | libc::EPROTO
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::ETIMEDOUT
            | libc::ECONNRESET,
        ) => (Retry, "network"),
        // Firewall (e.g. a netfilter rule) refused this connection.
        Some(libc::EPERM) => (Retry, "eperm"),
        Some(libc::EMFILE) => (Pause, "emfile"),
        Some(libc::ENFILE) => (Pause, "enfile"),
        Some(libc::ENOBUFS) => (Pause, "enobufs"),
        Some(libc::ENOMEM) => (Pause, "enomem"),
        _ => (Fatal, "fatal"),
    }
}

/// How long to pause after a resource error (HAProxy pauses 100 ms, nginx 500 ms).
pub(crate) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Accepts connections until `stop` is cancelled. A connection takes a permit from `permits`
/// (`server.max_connections`, shared by every worker) once accepted; at the cap the accepted
/// one waits for a permit, unserved, and the next ones wait in the kernel's accept queue
/// (bounded by the backlog), so at most one connection per listener is held past the cap. A
/// permit is not taken *before* `accept`: with shared permits, an idle worker would hold one
/// while another worker's queue had clients waiting for it. The permit travels with the
/// connection and is returned when the connection is dropped, waking whichever worker waits.
/// Returns `Err` only for a fatal accept error.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    gate: Option<Arc<Semaphore>>,
    stop: crate::lifecycle::CancellationToken,
    mut on_conn: F,
) -> io::Result<()>
where
    F: FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
{
    let (pause_log, cap_log) = (Throttle::default(), Throttle::default());
    loop {
        // A TLS listener takes a handshake slot before accepting: at the bound, new
        // connections wait in the kernel's queue while the handshakes in progress finish.
        let slot = match &gate {
            Some(g) => tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                p = g.clone().acquire_owned() => Some(p.expect("semaphore is never closed")),
            },
            None => None,
        };
        let Some((stream, peer)) = accept_one(&listener, &stop, &pause_log).await? else {
            return Ok(());
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // At the cap: this connection waits for a slot, the next ones in the kernel's
                // accept queue (and overflow it if this lasts). Counted every time, logged
                // once in a while.
                metrics::counter!(m::CONNECTION_LIMIT_REACHED_TOTAL).increment(1);
                if let Some(suppressed) = cap_log.allow() {
                    tracing::warn!(
                        suppressed,
                        "connection limit reached (server.max_connections): new connections \
                         wait in the accept queue; raise server.max_connections (and \
                         LimitNOFILE) or add collectors"
                    );
                }
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
                }
            }
        };
        on_conn(stream, peer, permit, slot);
    }
}

/// Accepts one connection, retrying and pausing on the errors that allow it; `None` once
/// `stop` is cancelled.
async fn accept_one(
    listener: &TcpListener,
    stop: &crate::lifecycle::CancellationToken,
    pause_log: &Throttle,
) -> io::Result<Option<(TcpStream, SocketAddr)>> {
    loop {
        let res = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(None),
            r = listener.accept() => r,
        };
        match res {
            // Counted by the worker (`Counter::Connections`, flushed once a second).
            Ok((stream, peer)) => return Ok(Some((stream, peer))),
            Err(e) => {
                let (class, kind) = classify_accept_error(&e);
                metrics::counter!(m::ACCEPT_ERRORS_TOTAL, "kind" => kind).increment(1);
                match class {
                    AcceptErrorClass::Retry => continue,
                    AcceptErrorClass::Fatal => {
                        tracing::error!(error = %e, "accept failed; listener is unusable");
                        return Err(e);
                    }
                    AcceptErrorClass::Pause => {
                        if let Some(suppressed) = pause_log.allow() {
                            tracing::warn!(
                                error = %e,
                                kind,
                                suppressed,
                                "accept out of resources; pausing {} ms (raise LimitNOFILE / \
                                 ulimit -n, or lower server.max_connections)",
                                ACCEPT_PAUSE.as_millis()
                            );
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return Ok(None),
                            _ = tokio::time::sleep(ACCEPT_PAUSE) => {}
                        }
                    }
                }
            }
        }
    }
}

/// Listening sockets passed by a service manager (systemd socket activation: `LISTEN_PID`,
/// `LISTEN_FDS`, descriptors from 3). `None` when there are none for this process.
///
/// A socket held by the service manager outlives any one collector process: during a restart
/// connections wait in its accept queue and the new process accepts them, so none is refused.
/// (Binding a fresh `SO_REUSEPORT` socket instead would not do: the connections in the old
/// process's queue are reset when it closes its socket.)
pub(crate) fn inherited() -> Result<Option<Vec<std::net::TcpListener>>, ListenError> {
    use std::os::fd::FromRawFd;
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: i32 = match std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) if for_us && n > 0 => n,
        _ => return Ok(None),
    };
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut out = Vec::new();
    for fd in 3..3 + n {
        let err = |step, source| ListenError {
            addr: unspecified,
            step,
            source,
        };
        // SAFETY: systemd's protocol hands these descriptors to this process (LISTEN_PID
        // matched); each is wrapped exactly once.
        let sock = unsafe { Socket::from_raw_fd(fd) };
        let listening = sock
            .is_listener()
            .map_err(|e| err("inherited fd is not a socket", e))?;
        let tcp = sock
            .r#type()
            .map_err(|e| err("SO_TYPE of inherited fd", e))?
            == Type::STREAM
            && sock.local_addr().ok().and_then(|a| a.as_socket()).is_some();
        if !listening || !tcp {
            return Err(err(
                "inherited fd is not a listening TCP socket (check ListenStream= in the .socket unit)",
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        // Not passed on to the processing stage the collector starts.
        sock.set_cloexec(true).map_err(|e| err("FD_CLOEXEC", e))?;
        sock.set_nonblocking(true)
            .map_err(|e| err("O_NONBLOCK", e))?;
        out.push(std::net::TcpListener::from(sock));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind an accept error can be counted under is exported from the start.
    #[test]
    fn every_accept_error_kind_is_declared() {
        let mut seen = std::collections::BTreeSet::new();
        for errno in 0..200 {
            let (_, kind) = classify_accept_error(&io::Error::from_raw_os_error(errno));
            assert!(ACCEPT_ERROR_KINDS.contains(&kind), "{errno}: {kind}");
            seen.insert(kind);
        }
        assert_eq!(
            seen.len(),
            ACCEPT_ERROR_KINDS.len(),
            "a declared kind nothing returns"
        );
    }

    #[test]
    fn backlog_truncation() {
        let b = Backlog {
            requested: 4096,
            somaxconn: Some(128),
        };
        assert!(b.truncated());
        assert_eq!(b.effective(), 128);
        let b = Backlog {
            requested: 511,
            somaxconn: Some(4096),
        };
        assert!(!b.truncated());
        assert_eq!(Backlog::probe(10, "/nonexistent").somaxconn, None);
    }

    #[test]
    fn accept_errors_classified() {
        let c = |n| classify_accept_error(&io::Error::from_raw_os_error(n)).0;
        assert_eq!(c(libc::ECONNABORTED), AcceptErrorClass::Retry);
        assert_eq!(c(libc::EINTR), AcceptErrorClass::Retry);
        assert_eq!(c(libc::EMFILE), AcceptErrorClass::Pause);
        assert_eq!(c(libc::ENFILE), AcceptErrorClass::Pause);
        assert_eq!(c(libc::ENOBUFS), AcceptErrorClass::Pause);
        assert_eq!(c(libc::ENOMEM), AcceptErrorClass::Pause);
        assert_eq!(c(libc::EBADF), AcceptErrorClass::Fatal);
        assert_eq!(c(libc::EINVAL), AcceptErrorClass::Fatal);
    }

    #[test]
    fn keepalive_jitter_stays_in_range() {
        let o = SocketOptions {
            keepalive_idle: Duration::from_secs(100),
            keepalive_interval: Duration::from_secs(10),
            keepalive_probes: 3,
            jitter_percent: 10,
            user_timeout: None,
        };
        let seen: std::collections::HashSet<u64> =
            (0..500).map(|_| o.jittered_idle().as_secs()).collect();
        assert!(seen.iter().all(|s| (90..=110).contains(s)));
        assert!(seen.len() > 5, "jitter spreads values: {seen:?}");
    }

    #[tokio::test]
    async fn reuseport_listeners_share_a_port_and_apply_options() {
        let cfg = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            backlog: 77,
            ..ServerConfig::default()
        };
        let ls = bind(&cfg, 3).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
        drop(ls);
        let l = TcpListener::from_std(bind(&cfg, 1).unwrap().remove(0)).unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        SocketOptions::from_config(&cfg).apply(&s).unwrap();
        let r = SockRef::from(&s);
        assert!(r.tcp_nodelay().unwrap());
        assert!(r.keepalive().unwrap());
        assert_eq!(r.tcp_user_timeout().unwrap(), Some(Duration::from_secs(30)));
        let idle = r.tcp_keepalive_time().unwrap().as_secs();
        assert!((108..=132).contains(&idle), "{idle}");
        assert_eq!(r.tcp_keepalive_interval().unwrap(), Duration::from_secs(15));
        assert_eq!(r.tcp_keepalive_retries().unwrap(), 4);
    }
}
