//! `[http]`: limits, timeouts, routes and CORS.

use super::error::{positive, ConfigError};
use serde::{Deserialize, Serialize};

/// What a route speaks: how its requests become records and what they are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// A generic beacon: GET/HEAD query, POST body; 204.
    Beacon,
    /// An `<img>` beacon: GET/HEAD query; a 1x1 GIF.
    Pixel,
    /// POST of several events (JSON array, NDJSON, Snowplow or PostHog shapes); 204.
    Batch,
    /// Snowplow's tp2 POST (`payload_data`): one record per event, its `eid` kept; 200.
    Snowplow,
    /// Snowplow's GET pixel (`/i?e=pv&eid=…`): one record, its `eid` kept; a 1x1 GIF.
    SnowplowPixel,
    /// PostHog capture (`/e/`, `/i/v0/e/`, `/batch/`): gzip-js and base64 bodies, one record
    /// per event, its `uuid` kept; 200 `{"status":1}` (posthog-js retries anything else).
    Posthog,
    /// PostHog feature flags (`/flags/`, `/decide/`): "nothing enabled", no record.
    PosthogFlags,
    /// PostHog remote config (`/array/<token>/config`): "nothing enabled", no record.
    PosthogConfig,
}

/// A tracker whose standard paths the collector serves beside its own routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tracker {
    /// `@snowplow/browser-tracker` and the other Snowplow trackers.
    Snowplow,
    /// `posthog-js`.
    Posthog,
}

impl Tracker {
    /// Its standard paths (a trailing `*` matches any rest) and what each speaks.
    pub(crate) fn routes(self) -> &'static [(&'static str, Protocol)] {
        match self {
            Tracker::Snowplow => &[
                ("/com.snowplowanalytics.snowplow/tp2", Protocol::Snowplow),
                ("/i", Protocol::SnowplowPixel),
            ],
            Tracker::Posthog => &[
                ("/e/", Protocol::Posthog),
                ("/i/v0/e/", Protocol::Posthog),
                ("/batch/", Protocol::Posthog),
                ("/capture/", Protocol::Posthog),
                ("/track/", Protocol::Posthog),
                ("/engage/", Protocol::Posthog),
                ("/flags/", Protocol::PosthogFlags),
                ("/decide/", Protocol::PosthogFlags),
                ("/array/*", Protocol::PosthogConfig),
            ],
        }
    }
}

/// One more route (`[[http.routes]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path; a trailing `*` matches any rest (`"/array/*"`).
    pub(crate) path: String,
    /// What it speaks.
    pub(crate) protocol: Protocol,
    /// CORS credentials for this route (default: `cors_allow_credentials`). Snowplow's
    /// trackers send credentials; only with explicit `allowed_origins`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) credentials: Option<bool>,
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
    /// Deepest nesting of a JSON body (arrays and objects). Deeper: 400 `json_too_deep`.
    /// At most 100, so every stored line stays readable by serde_json (limit 128), jq and
    /// Python.
    pub(crate) max_json_depth: usize,
    /// Largest body after undoing its `Content-Encoding` (gzip, deflate, zstd). Larger: 413
    /// (a zip bomb costs at most this much memory). At least `max_body_bytes`.
    pub max_decoded_body_bytes: usize,
    /// Seconds a keep-alive connection may live (0: no limit). Past it (each connection's
    /// limit spread ±10 %), the next answer says `Connection: close`; an idle connection is
    /// left to the idle timeout (closing it races the client's next request). Behind an L4 load balancer (NLB, HAProxy in TCP mode) a browser pinging every
    /// 15 s otherwise stays on one collector for as long as the page is open, so a collector
    /// added to the fleet gets no existing client.
    pub max_connection_age_seconds: u64,
    /// Path of the beacon endpoint (GET, HEAD, POST, OPTIONS). Answered with 204.
    pub(crate) beacon_path: String,
    /// Path answered with a 43-byte transparent 1x1 GIF (for `<img>` beacons). Empty disables.
    pub(crate) gif_path: String,
    /// Path of the batch endpoint: `POST` a JSON array, NDJSON, Snowplow's `payload_data`
    /// (`{"schema":…,"data":[…]}`) or PostHog's `{"batch":[…]}`; one record per event, all
    /// spooled or none. Empty disables.
    pub(crate) batch_path: String,
    /// Trackers served as they are on their standard paths, beside the routes above:
    /// `"snowplow"` (`/com.snowplowanalytics.snowplow/tp2`, `/i`) and `"posthog"` (`/e/`,
    /// `/i/v0/e/`, `/batch/`, `/capture/`, `/track/`, `/engage/`, `/flags/`, `/decide/`,
    /// `/array/*`). `[]` serves none.
    pub trackers: Vec<Tracker>,
    /// More routes, each a path and what it speaks (`beacon`, `pixel`, `batch`, `snowplow`,
    /// `snowplow_pixel`, `posthog`, `posthog_flags`, `posthog_config`), optionally with
    /// `credentials`.
    pub routes: Vec<RouteConfig>,
    /// Query or form parameter that holds a generic beacon's own event id, kept as the
    /// record's `event_id` (the brokers drop a tracker's retries by it). Empty: none.
    pub event_id_param: String,
    /// Most events in one batch. More: 413 `too_many_events`.
    pub max_batch_events: usize,
    /// Most bytes one batch's records may take in the spool. Every record repeats the
    /// request's query string and headers, so a small request of many tiny events under large
    /// headers stores far more than it sent. More: 413 `batch_too_large`.
    pub(crate) max_batch_stored_bytes: usize,
    /// Path of the load balancer health check. 200 while serving, 503 while draining.
    pub(crate) health_path: String,
    /// Readiness (`/readyz`): the same answer as `health_path`, by the name orchestrators use:
    /// 503 while draining, above the spool's high-water mark, or while the forwarder restarts.
    pub(crate) ready_path: String,
    /// Liveness (`/livez`): 200 while an event loop answers, draining or not: restart the
    /// process only when this fails, send traffic elsewhere when readiness fails.
    pub(crate) live_path: String,
    /// Origins allowed by CORS. `["*"]` allows any.
    pub allowed_origins: Vec<String>,
    /// Answer CORS with `Access-Control-Allow-Credentials: true` (and the exact origin) for the
    /// listed origins. `sendBeacon` sends a Blob of a non-safelisted type (`application/json`)
    /// with credentials, so its preflight fails without this. Only with explicit origins,
    /// never with `*`. The collector never reads cookies either way.
    pub cors_allow_credentials: bool,
    /// Seconds browsers may cache a CORS preflight answer.
    pub(crate) cors_max_age_seconds: u64,
    /// `Retry-After` seconds on every 503 (spool full or failing, commit queue full, shutting
    /// down).
    pub retry_after_seconds: u64,
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
            max_json_depth: 64,
            max_decoded_body_bytes: 256 * 1024,
            max_connection_age_seconds: 0,
            beacon_path: "/beacon".into(),
            gif_path: "/beacon.gif".into(),
            batch_path: "/beacon/batch".into(),
            trackers: vec![Tracker::Snowplow, Tracker::Posthog],
            routes: Vec::new(),
            event_id_param: String::new(),
            max_batch_events: 100,
            max_batch_stored_bytes: 1024 * 1024,
            health_path: "/healthz".into(),
            ready_path: "/readyz".into(),
            live_path: "/livez".into(),
            allowed_origins: vec!["*".into()],
            cors_allow_credentials: false,
            cors_max_age_seconds: 86_400,
            retry_after_seconds: 5,
        }
    }
}

impl HttpConfig {
    /// Every beacon route: the built-in paths, the trackers' standard paths, then
    /// `[[http.routes]]`, each with what it speaks and its CORS credentials override.
    pub(crate) fn route_table(&self) -> Vec<(&str, Protocol, Option<bool>)> {
        let mut t = vec![(self.beacon_path.as_str(), Protocol::Beacon, None)];
        if !self.gif_path.is_empty() {
            t.push((self.gif_path.as_str(), Protocol::Pixel, None));
        }
        if !self.batch_path.is_empty() {
            t.push((self.batch_path.as_str(), Protocol::Batch, None));
        }
        for tr in &self.trackers {
            t.extend(tr.routes().iter().map(|&(p, proto)| (p, proto, None)));
        }
        t.extend(
            self.routes
                .iter()
                .map(|r| (r.path.as_str(), r.protocol, r.credentials)),
        );
        t
    }

    /// Checks what serde cannot: ranges and the relations between this section's keys.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_timeouts()?;
        self.validate_limits()?;
        self.validate_routes()?;
        self.validate_cors()
    }

    /// Timeouts, and the idle timeout against the load balancer's.
    fn validate_timeouts(&self) -> Result<(), ConfigError> {
        let h = self;
        positive("http.idle_timeout_seconds", h.idle_timeout_seconds)?;
        positive("http.retry_after_seconds", h.retry_after_seconds)?;
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
        Ok(())
    }

    /// Size limits of targets, headers, parameters, bodies and batches.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let h = self;
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
        positive("http.max_batch_events", h.max_batch_events as u64)?;
        if h.max_batch_stored_bytes < h.max_decoded_body_bytes {
            return Err(ConfigError::new(
                "http.max_batch_stored_bytes",
                format!(
                    "{} is below http.max_decoded_body_bytes ({}): a batch as large as the body \
                     limit could never be stored",
                    h.max_batch_stored_bytes, h.max_decoded_body_bytes
                ),
                "use at least http.max_decoded_body_bytes (default 1048576, four times it)",
            ));
        }
        positive("http.max_param_name_bytes", h.max_param_name_bytes as u64)?;
        positive("http.max_param_value_bytes", h.max_param_value_bytes as u64)?;
        if h.max_decoded_body_bytes < h.max_body_bytes {
            return Err(ConfigError::new(
                "http.max_decoded_body_bytes",
                format!(
                    "{} is below http.max_body_bytes ({})",
                    h.max_decoded_body_bytes, h.max_body_bytes
                ),
                "use at least http.max_body_bytes (default 262144, four times the body limit)",
            ));
        }
        if !(1..=crate::record::MAX_JSON_DEPTH).contains(&h.max_json_depth) {
            return Err(ConfigError::new(
                "http.max_json_depth",
                format!(
                    "{} is outside 1..={}",
                    h.max_json_depth,
                    crate::record::MAX_JSON_DEPTH
                ),
                "use 64 (the default) or less: deeper JSON stops common readers",
            ));
        }
        Ok(())
    }

    /// Route paths: absolute, and one per route.
    fn validate_routes(&self) -> Result<(), ConfigError> {
        let h = self;
        for (key, path, may_be_empty) in [
            ("http.beacon_path", &h.beacon_path, false),
            ("http.gif_path", &h.gif_path, true),
            ("http.batch_path", &h.batch_path, true),
            ("http.health_path", &h.health_path, false),
            ("http.ready_path", &h.ready_path, true),
            ("http.live_path", &h.live_path, true),
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
        for (i, r) in h.routes.iter().enumerate() {
            let body = r.path.strip_suffix('*').unwrap_or(&r.path);
            if !body.starts_with('/') || body.contains(['?', '#', ' ', '*']) {
                return Err(ConfigError::new(
                    &format!("http.routes[{i}].path"),
                    format!("{:?} is not an absolute URL path", r.path),
                    "use a path starting with '/' without query or spaces; a trailing '*' \
                     matches any rest, e.g. \"/array/*\"",
                ));
            }
        }
        // Every path once: the built-in routes, the trackers' and the table's.
        let mut seen: Vec<&str> = Vec::new();
        for p in h.route_table().iter().map(|(p, _, _)| *p).chain([
            h.health_path.as_str(),
            h.ready_path.as_str(),
            h.live_path.as_str(),
        ]) {
            if p.is_empty() {
                continue;
            }
            if seen.contains(&p) {
                return Err(ConfigError::new(
                    "http.routes",
                    format!("{p:?} is served twice (routes, tracker paths and the health paths must differ)"),
                    "give each route its own path, or drop the tracker that serves it from http.trackers",
                ));
            }
            seen.push(p);
        }
        Ok(())
    }

    /// CORS origins and credentials.
    fn validate_cors(&self) -> Result<(), ConfigError> {
        let h = self;
        let any = h.allowed_origins.iter().any(|o| o == "*");
        if let Some(i) = h
            .routes
            .iter()
            .position(|r| r.credentials == Some(true) && any)
        {
            return Err(ConfigError::new(
                &format!("http.routes[{i}].credentials"),
                "true with allowed_origins = [\"*\"]: browsers refuse credentials for any origin",
                "list the origins whose pages send to it in http.allowed_origins",
            ));
        }
        if h.allowed_origins.is_empty() {
            return Err(ConfigError::new(
                "http.allowed_origins",
                "empty list: no browser could send a cross-origin beacon",
                "use [\"*\"] for any origin, or list origins like \"https://www.example.com\"",
            ));
        }
        if h.cors_allow_credentials && h.allowed_origins.iter().any(|o| o == "*") {
            return Err(ConfigError::new(
                "http.cors_allow_credentials",
                "true with allowed_origins = [\"*\"]: browsers refuse credentials for any origin, \
                 and allowing every site's credentialed requests is what CORS exists to stop",
                "list the origins that send JSON beacons, e.g. allowed_origins = \
                 [\"https://www.example.com\"], or set cors_allow_credentials = false",
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
        Ok(())
    }
}
