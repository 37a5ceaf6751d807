//! The state every worker reads to answer requests under the current config ([`SharedState`]):
//! the `[http]` settings, the rate limiter, the spool, the accepted counter and the
//! draining/forwarder flags. SIGHUP builds the next one; workers take it between requests.

use super::forwarded_for;
use super::proxy;
use super::ratelimit::{Limits, RateLimiter};
use super::request::{Route, RouteEntry};
use crate::config::Config;
use crate::record::ParamLimits;
use crate::spool::Spool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The rate limiter a `[rate_limit]` section asks for.
fn limiter(r: &crate::config::RateLimitConfig) -> Option<Arc<RateLimiter>> {
    r.enabled.then(|| {
        Arc::new(RateLimiter::new(Limits {
            per_second: r.per_client_per_second,
            burst: f64::from(r.burst),
            slots: r.table_slots,
        }))
    })
}

/// State shared by every worker (read-mostly; the rate limiter has its own locks). One value
/// per configuration: SIGHUP builds the next with [`SharedState::reload`], sharing the spool, the
/// counters, the flags and (when its section did not change) the rate limiter's table, and
/// every worker takes it between requests.
pub(crate) struct SharedState {
    /// The `[http]` section.
    pub(crate) http: crate::config::HttpConfig,
    /// PROXY protocol mode of the listener.
    pub(crate) proxy: proxy::Mode,
    pub(super) trusted_proxies: Vec<forwarded_for::Cidr>,
    pub(super) limiter: Option<Arc<RateLimiter>>,
    pub(super) rate_limit: crate::config::RateLimitConfig,
    pub(super) limits: ParamLimits,
    /// Where accepted beacons go.
    pub(crate) spool: Spool,
    pub(super) retry_after: u64,
    pub(super) any_origin: bool,
    /// Every beacon route but the beacon path (checked first).
    routes: Vec<RouteEntry>,
    /// Beacons answered 2xx (each one is in the spool); workers add theirs every second and
    /// when they stop.
    pub(crate) accepted: Arc<AtomicU64>,
    draining: Arc<AtomicBool>,
    /// False while the forwarder is down (died, not yet restarted and settled): the health
    /// check fails so the load balancer moves traffic while the spool holds what arrives.
    pub(crate) forwarder_up: Arc<AtomicBool>,
}

impl SharedState {
    /// The route of a request path, and whether CORS answers on it carry credentials.
    pub(crate) fn route(&self, path: &[u8]) -> (Route, bool) {
        let h = &self.http;
        let cred = h.cors_allow_credentials;
        // The common case first: one comparison.
        if path == h.beacon_path.as_bytes() {
            return (Route::Beacon, cred);
        }
        if path == h.health_path.as_bytes()
            || (!h.ready_path.is_empty() && path == h.ready_path.as_bytes())
        {
            return (Route::Health, cred);
        }
        if !h.live_path.is_empty() && path == h.live_path.as_bytes() {
            return (Route::Live, cred);
        }
        match self.routes.iter().find(|r| r.matches(path)) {
            Some(r) => (r.route, r.credentials),
            None => (Route::Other, cred),
        }
    }

    /// Builds the shared state from a validated config.
    pub(crate) fn new(config: &Config, spool: Spool) -> Self {
        let h = &config.http;
        Self {
            limits: ParamLimits {
                max_params: h.max_params,
                max_name_bytes: h.max_param_name_bytes,
                max_value_bytes: h.max_param_value_bytes,
            },
            spool,
            retry_after: h.retry_after_seconds,
            any_origin: h.allowed_origins.iter().any(|o| o == "*"),
            routes: h
                .route_table()
                .into_iter()
                .skip(1)
                .map(|(path, proto, cred)| {
                    RouteEntry::new(
                        path,
                        Route::of_protocol(proto),
                        cred.unwrap_or(h.cors_allow_credentials),
                    )
                })
                .collect(),
            http: h.clone(),
            proxy: config.client_ip.proxy_protocol,
            trusted_proxies: config.client_ip.trusted_proxies.clone(),
            limiter: limiter(&config.rate_limit),
            rate_limit: config.rate_limit.clone(),
            accepted: Arc::new(AtomicU64::new(0)),
            draining: Arc::new(AtomicBool::new(false)),
            forwarder_up: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The state for a reloaded config: its `[http]` and `[rate_limit]` sections, sharing the
    /// spool, the counters and flags, and the rate limiter's buckets when that section is the
    /// same. (What else the config says is only read at start.)
    pub(crate) fn reload(&self, config: &Config) -> Self {
        let mut next = Self::new(config, self.spool.clone());
        next.proxy = self.proxy;
        next.accepted = self.accepted.clone();
        next.draining = self.draining.clone();
        next.forwarder_up = self.forwarder_up.clone();
        if config.rate_limit == self.rate_limit {
            next.limiter = self.limiter.clone();
        }
        next
    }

    /// Turns the health check to 503 and adds `Connection: close` to every response.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::DRAINING).set(1.0);
    }

    /// True once SIGTERM (or shutdown) began.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(super) fn origin_allowed(&self, origin: &[u8]) -> bool {
        self.any_origin
            || self
                .http
                .allowed_origins
                .iter()
                .any(|o| o.as_bytes() == origin)
    }

    /// The largest request head an engine buffers before answering 431 (the same bound for
    /// both engines, so they refuse the same heads).
    pub(crate) fn max_head_bytes(&self) -> usize {
        max_head_bytes(&self.http)
    }
}

/// The largest request head either engine buffers before answering 431: target and header
/// limits plus room for the request line and field syntax.
pub(crate) fn max_head_bytes(h: &crate::config::HttpConfig) -> usize {
    (h.max_uri_bytes + h.max_header_bytes + 1024).max(8192)
}
