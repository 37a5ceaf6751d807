//! What a request means, whichever engine framed it: routes, limits, CORS, X-Forwarded-For,
//! the rate limit, request → record, the answers (status and headers, one description for
//! both engines) and the one mapping from rejection to status code and metric label.
//!
//! An engine hands over a [`Head`] (borrowed from its own buffers), asks [`before_body`]
//! whether to read the body, then [`build_record`] encodes the record straight into the
//! worker's commit group; the answer after the commit comes from [`after_commit`].

use super::commit::Frames;
use super::forwarded_for::{self, Verdict};
use super::proxy;
use super::ratelimit::{Decision, Limits, RateLimiter};
use crate::config::Config;
use crate::record::{self, ClientIpSource, Kind, Param, ParamError, ParamLimits, RecordRef};
use crate::spool::{AppendError, Spool};
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
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

/// A transparent 1x1 GIF (43 bytes).
pub const GIF: &[u8; 43] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

/// State shared by every worker (read-mostly; the rate limiter has its own locks). One value
/// per configuration: SIGHUP builds the next with [`App::reload`], sharing the spool, the
/// counters, the flags and (when its section did not change) the rate limiter's table, and
/// every worker takes it between requests.
pub struct App {
    /// The `[http]` section.
    pub http: crate::config::HttpConfig,
    /// PROXY protocol mode of the listener.
    pub proxy: proxy::Mode,
    trusted_proxies: Vec<forwarded_for::Cidr>,
    limiter: Option<Arc<RateLimiter>>,
    rate_limit: crate::config::RateLimitConfig,
    limits: ParamLimits,
    /// Where accepted beacons go.
    pub spool: Spool,
    retry_after: u64,
    any_origin: bool,
    /// Beacons answered 2xx (each one is in the spool); workers add theirs every second and
    /// when they stop.
    pub accepted: Arc<AtomicU64>,
    draining: Arc<AtomicBool>,
    /// False while the forwarder is down (died, not yet restarted and settled): the health
    /// check fails so the load balancer moves traffic while the spool holds what arrives.
    pub forwarder_up: Arc<AtomicBool>,
}

impl App {
    /// Builds the shared state from a validated config.
    pub fn new(config: &Config, spool: Spool) -> Self {
        let h = &config.http;
        Self {
            limits: ParamLimits {
                max_params: h.max_params,
                max_name_bytes: h.max_param_name_bytes,
                max_value_bytes: h.max_param_value_bytes,
            },
            spool,
            retry_after: config.queue.retry_after_seconds,
            any_origin: h.allowed_origins.iter().any(|o| o == "*"),
            http: h.clone(),
            proxy: config.server.proxy_protocol,
            trusted_proxies: h.trusted_proxies.clone(),
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
    pub fn reload(&self, config: &Config) -> Self {
        let mut next = Self::new(config, self.spool.clone());
        next.proxy = self.proxy;
        next.retry_after = self.retry_after;
        next.accepted = self.accepted.clone();
        next.draining = self.draining.clone();
        next.forwarder_up = self.forwarder_up.clone();
        if config.rate_limit == self.rate_limit {
            next.limiter = self.limiter.clone();
        }
        next
    }

    /// Turns the health check to 503 and adds `Connection: close` to every response.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::DRAINING).set(1.0);
    }

    /// True once SIGTERM (or shutdown) began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn origin_allowed(&self, origin: &[u8]) -> bool {
        self.any_origin
            || self
                .http
                .allowed_origins
                .iter()
                .any(|o| o.as_bytes() == origin)
    }

    /// The largest request head an engine buffers before answering 431 (the same bound for
    /// both engines, so they refuse the same heads).
    pub fn max_head_bytes(&self) -> usize {
        max_head_bytes(&self.http)
    }
}

/// The largest request head either engine buffers before answering 431: target and header
/// limits plus room for the request line and field syntax.
pub fn max_head_bytes(h: &crate::config::HttpConfig) -> usize {
    (h.max_uri_bytes + h.max_header_bytes + 1024).max(8192)
}

/// Text that fits inline: an `ip:port` or an IP address, formatted once per connection so a
/// connection owns no heap memory for it.
#[derive(Clone, Copy)]
pub struct Inline {
    buf: [u8; 64],
    len: u8,
}

impl Inline {
    fn new(v: impl std::fmt::Display) -> Self {
        use std::io::Write;
        let mut buf = [0u8; 64];
        let mut w = &mut buf[..];
        // The longest IPv6 socket address with a scope id is 58 bytes.
        let _ = write!(w, "{v}");
        let len = 64 - w.len();
        Self {
            buf,
            len: len as u8,
        }
    }

    /// The text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// Who is on the other end of a connection, as recorded in each beacon.
pub struct Conn {
    /// `ip:port` of the TCP peer.
    pub peer: Inline,
    /// The connection's client: the peer, or the PROXY header's source.
    pub client: IpAddr,
    /// `client`, formatted.
    pub client_ip: Inline,
    /// Where `client` came from.
    pub client_ip_source: ClientIpSource,
}

impl Conn {
    /// A connection whose client is `client` (from `source`), reached through `peer`.
    pub fn new(peer: SocketAddr, client: IpAddr, source: ClientIpSource) -> Self {
        Self {
            peer: Inline::new(peer),
            client,
            client_ip: Inline::new(client),
            client_ip_source: source,
        }
    }
}

/// A request head as an engine framed it. Header names may be in any case.
pub struct Head<'a> {
    /// The method token.
    pub method: &'a str,
    /// Path of the request target (without the query).
    pub path: &'a [u8],
    /// The query, without `?`, if the target had one.
    pub query: Option<&'a [u8]>,
    /// Bytes of the target as [`App::http`]'s `max_uri_bytes` counts them (path and query).
    pub target_len: usize,
    /// Header fields in order.
    pub headers: &'a [httparse::Header<'a>],
}

impl<'a> Head<'a> {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Every value of header `name` (lower case), in order.
    pub fn all(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let hs = self.headers;
        hs.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    fn header_bytes(&self) -> usize {
        self.headers
            .iter()
            .map(|h| h.name.len() + h.value.len())
            .sum()
    }
}

/// Splits an origin-form (or absolute-form) request target into path and query.
pub fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    let mut t = target;
    // Absolute form (`http://host/path?q`): the path starts at the first `/` after the
    // authority, or is `/`.
    for scheme in [&b"http://"[..], b"https://"] {
        if t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &t[scheme.len()..];
            t = match rest.iter().position(|&b| b == b'/' || b == b'?') {
                Some(i) => &rest[i..],
                None => b"/",
            };
            break;
        }
    }
    match t.iter().position(|&b| b == b'?') {
        Some(i) => {
            let path = if i == 0 { &b"/"[..] } else { &t[..i] };
            (path, Some(&t[i + 1..]))
        }
        None => (t, None),
    }
}

/// Which endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The beacon endpoint.
    Beacon,
    /// The GIF endpoint.
    Gif,
    /// The batch endpoint (`http.batch_path`).
    Batch,
    /// The health check and readiness (`/healthz`, `/readyz`).
    Health,
    /// Liveness (`/livez`).
    Live,
    /// Anything else (404).
    Other,
}

impl Route {
    /// Every route, in the order of their counters.
    pub const ALL: [Route; 6] = [
        Route::Beacon,
        Route::Gif,
        Route::Batch,
        Route::Health,
        Route::Live,
        Route::Other,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Beacon => "beacon",
            Route::Gif => "gif",
            Route::Batch => "batch",
            Route::Health => "health",
            Route::Live => "live",
            Route::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The route of `path`.
    pub fn of(app: &App, path: &[u8]) -> Route {
        let h = &app.http;
        if path == h.beacon_path.as_bytes() {
            Route::Beacon
        } else if path == h.health_path.as_bytes()
            || (!h.ready_path.is_empty() && path == h.ready_path.as_bytes())
        {
            Route::Health
        } else if !h.live_path.is_empty() && path == h.live_path.as_bytes() {
            Route::Live
        } else if !h.gif_path.is_empty() && path == h.gif_path.as_bytes() {
            Route::Gif
        } else if !h.batch_path.is_empty() && path == h.batch_path.as_bytes() {
            Route::Batch
        } else {
            Route::Other
        }
    }
}

/// Why a request was refused: the one place that picks status and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Malformed request or framing (RFC 9112); the connection closes.
    BadRequest,
    /// A transfer coding other than `chunked`; the connection closes.
    UnsupportedTransferCoding,
    /// Target longer than `max_uri_bytes`.
    UriTooLong,
    /// Headers over `max_header_bytes`/`max_headers`.
    HeadersTooLarge,
    /// Body over `max_body_bytes`.
    BodyTooLarge,
    /// A parameter limit.
    Param(ParamError),
    /// A JSON body that is not JSON (or not UTF-8).
    InvalidJson,
    /// A JSON body nested deeper than `http.max_json_depth`.
    JsonTooDeep,
    /// A `multipart/form-data` body that is not framed as RFC 7578 says.
    InvalidMultipart,
    /// A batch without events.
    EmptyBatch,
    /// A batch with more events than `http.max_batch_events`.
    TooManyEvents,
    /// A batch whose records (each with the request's query and headers) would take more
    /// than `http.max_batch_stored_bytes` in the spool.
    BatchTooLarge,
    /// A `Content-Encoding` we do not decode (br, stacked codings).
    UnsupportedContentEncoding,
    /// A body that is not what its `Content-Encoding` says.
    BadContentEncoding,
    /// A body larger than `http.max_decoded_body_bytes` once decoded.
    DecodedBodyTooLarge,
    /// A body media type we do not take.
    UnsupportedMediaType,
    /// The body did not arrive within `body_timeout_seconds`.
    BodyTimeout,
    /// The body could not be read (connection error mid-body, bad chunk).
    BodyError,
    /// `Origin` not in `allowed_origins`.
    OriginNotAllowed,
    /// Over the per-client rate limit; retry after this many seconds.
    RateLimited(u64),
    /// More records waiting for the spool than `queue.capacity`.
    QueueFull,
    /// Spool above its high-water mark.
    SpoolFull,
    /// Spool write or fsync failed.
    SpoolFailed,
    /// Shutting down.
    ShuttingDown,
}

impl Reject {
    /// Every rejection (one of each kind), for tests and metric tables.
    pub const ALL: [Reject; 26] = [
        Reject::BadRequest,
        Reject::UnsupportedTransferCoding,
        Reject::UriTooLong,
        Reject::HeadersTooLarge,
        Reject::BodyTooLarge,
        Reject::Param(ParamError::TooMany),
        Reject::Param(ParamError::NameTooLong),
        Reject::Param(ParamError::ValueTooLong),
        Reject::InvalidJson,
        Reject::JsonTooDeep,
        Reject::InvalidMultipart,
        Reject::EmptyBatch,
        Reject::TooManyEvents,
        Reject::BatchTooLarge,
        Reject::UnsupportedContentEncoding,
        Reject::BadContentEncoding,
        Reject::DecodedBodyTooLarge,
        Reject::UnsupportedMediaType,
        Reject::BodyTimeout,
        Reject::BodyError,
        Reject::OriginNotAllowed,
        Reject::RateLimited(1),
        Reject::QueueFull,
        Reject::SpoolFull,
        Reject::SpoolFailed,
        Reject::ShuttingDown,
    ];

    /// The status code.
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest => 400,
            Reject::UnsupportedTransferCoding => 501,
            Reject::UriTooLong => 414,
            Reject::HeadersTooLarge => 431,
            Reject::BodyTooLarge
            | Reject::DecodedBodyTooLarge
            | Reject::TooManyEvents
            | Reject::BatchTooLarge => 413,
            Reject::Param(_)
            | Reject::InvalidJson
            | Reject::JsonTooDeep
            | Reject::InvalidMultipart
            | Reject::BadContentEncoding
            | Reject::EmptyBatch
            | Reject::BodyError => 400,
            Reject::UnsupportedMediaType | Reject::UnsupportedContentEncoding => 415,
            Reject::BodyTimeout => 408,
            Reject::OriginNotAllowed => 403,
            Reject::RateLimited(_) => 429,
            Reject::QueueFull | Reject::SpoolFull | Reject::SpoolFailed | Reject::ShuttingDown => {
                503
            }
        }
    }

    /// The metric label (`beacon_rejected_total{reason}`) and response body.
    pub fn label(self) -> &'static str {
        match self {
            Reject::BadRequest => "bad_request",
            Reject::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Reject::UriTooLong => "uri_too_long",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::BodyTooLarge => "body_too_large",
            Reject::Param(ParamError::TooMany) => "too_many_params",
            Reject::Param(ParamError::NameTooLong) => "param_name_too_long",
            Reject::Param(ParamError::ValueTooLong) => "param_value_too_long",
            Reject::InvalidJson => "invalid_json",
            Reject::JsonTooDeep => "json_too_deep",
            Reject::InvalidMultipart => "invalid_multipart",
            Reject::EmptyBatch => "empty_batch",
            Reject::TooManyEvents => "too_many_events",
            Reject::BatchTooLarge => "batch_too_large",
            Reject::UnsupportedContentEncoding => "unsupported_content_encoding",
            Reject::BadContentEncoding => "bad_content_encoding",
            Reject::DecodedBodyTooLarge => "decoded_body_too_large",
            Reject::UnsupportedMediaType => "unsupported_media_type",
            Reject::BodyTimeout => "body_timeout",
            Reject::BodyError => "body_error",
            Reject::OriginNotAllowed => "origin_not_allowed",
            Reject::RateLimited(_) => "rate_limited",
            Reject::QueueFull => "queue_full",
            Reject::SpoolFull => "spool_full",
            Reject::SpoolFailed => "spool_write_failed",
            Reject::ShuttingDown => "shutting_down",
        }
    }

    fn index(self) -> usize {
        Reject::ALL
            .iter()
            .position(|r| r.label() == self.label())
            .expect("every rejection is listed")
    }

    /// Whether the connection must close after the answer: the request body may be left
    /// unread, or the framing cannot be trusted.
    pub fn closes(self) -> bool {
        matches!(
            self,
            Reject::BodyTooLarge
                | Reject::BodyTimeout
                | Reject::BodyError
                | Reject::BadRequest
                | Reject::UnsupportedTransferCoding
        )
    }
}

impl From<AppendError> for Reject {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Busy => Reject::QueueFull,
            AppendError::Full => Reject::SpoolFull,
            AppendError::Failed => Reject::SpoolFailed,
            AppendError::Closed => Reject::ShuttingDown,
        }
    }
}

/// Exports the request counters at 0 (see [`crate::metrics`]): every rejection reason, every
/// kind of beacon, every status of the beacon route (the alerts' ratios read them), the
/// label-less counters, and "not draining".
pub fn declare_metrics() {
    use crate::metrics as m;
    for r in Reject::ALL {
        metrics::counter!(m::BEACONS_REJECTED_TOTAL, "reason" => r.label()).increment(0);
    }
    for kind in Kind::ALL {
        metrics::counter!(m::BEACONS_ACCEPTED_TOTAL, "kind" => kind.as_str()).increment(0);
    }
    for &s in STATUSES.iter().filter(|&&s| s != 0) {
        metrics::counter!(m::HTTP_REQUESTS_TOTAL, "route" => Route::Beacon.label(), "status" => status_label(s))
            .increment(0);
    }
    for name in [
        m::HTTP_REQUEST_BODY_BYTES_TOTAL,
        m::FORWARDED_FOR_INVALID_TOTAL,
        m::HEADER_TIMEOUTS_TOTAL,
        m::CONNECTIONS_AGED_OUT_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!(m::CONNECTIONS_OPEN).increment(0.0);
    metrics::gauge!(m::DRAINING).set(0.0);
}

/// Status codes as static label values (a bounded set; every status we send has its own).
pub const STATUSES: [u16; 16] = [
    200, 204, 400, 403, 404, 405, 408, 413, 414, 415, 429, 431, 500, 501, 503, 0,
];

fn status_index(s: u16) -> usize {
    STATUSES
        .iter()
        .position(|&x| x == s)
        .unwrap_or(STATUSES.len() - 1)
}

/// The label of a status (`"other"` only for a status we never send).
pub fn status_label(s: u16) -> &'static str {
    const LABELS: [&str; 16] = [
        "200", "204", "400", "403", "404", "405", "408", "413", "414", "415", "429", "431", "500",
        "501", "503", "other",
    ];
    LABELS[status_index(s)]
}

/// The reason phrase of a status we send.
pub fn reason(s: u16) -> &'static str {
    match s {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// CORS answer headers for an allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// `Access-Control-Allow-Origin: *`.
    Any,
    /// The origin echoed, with `Vary: Origin`.
    Origin(Vec<u8>),
    /// The origin echoed, with `Vary: Origin` and `Access-Control-Allow-Credentials: true`.
    Credentialed(Vec<u8>),
}

/// Preflight extras.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preflight {
    /// The request asked for headers: allow `content-type`.
    pub allow_headers: bool,
    /// `Access-Control-Max-Age`.
    pub max_age: u64,
}

/// A response, described once for both engines: status, the few headers we ever send, and a
/// static body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body (omitted for HEAD, never sent for 204).
    pub body: &'static [u8],
    /// `Content-Type`.
    pub content_type: Option<&'static str>,
    /// `Cache-Control: no-store`.
    pub no_store: bool,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
    /// `Allow`.
    pub allow: Option<&'static str>,
    /// CORS headers for an allowed origin.
    pub cors: Option<Cors>,
    /// Preflight headers (only with `cors`).
    pub preflight: Option<Preflight>,
    /// `Connection: close` and close after writing.
    pub close: bool,
    /// The rejection behind it, if any (for metrics).
    pub reject: Option<Reject>,
}

impl Answer {
    fn new(status: u16) -> Self {
        Self {
            status,
            body: b"",
            content_type: None,
            no_store: false,
            retry_after: None,
            allow: None,
            cors: None,
            preflight: None,
            close: false,
            reject: None,
        }
    }

    fn plain(status: u16, body: &'static str) -> Self {
        Self {
            body: body.as_bytes(),
            content_type: Some("text/plain; charset=utf-8"),
            ..Self::new(status)
        }
    }

    fn not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::plain(405, "method not allowed\n")
        }
    }

    /// The answer to an accepted beacon.
    pub fn success(route: Route) -> Self {
        let mut a = match route {
            Route::Gif => Self {
                body: GIF,
                content_type: Some("image/gif"),
                ..Self::new(200)
            },
            _ => Self::new(204),
        };
        // A cached beacon is a beacon never sent.
        a.no_store = true;
        a
    }

    /// The answer to a rejection.
    pub fn reject(app: &App, r: Reject) -> Self {
        let mut a = Self::plain(r.status(), r.label());
        a.no_store = true;
        a.reject = Some(r);
        if r.status() == 503 {
            a.retry_after = Some(app.retry_after);
        }
        if let Reject::RateLimited(secs) = r {
            a.retry_after = Some(secs);
        }
        a.close = r.closes();
        a
    }

    /// Whether a body is sent for this status (never for 1xx, 204).
    pub fn has_body(&self) -> bool {
        self.status >= 200 && self.status != 204
    }
}

/// What to do after the head.
pub enum Next<'a> {
    /// Answer now (no record); the body, if any, is not needed.
    Answer(Answer),
    /// Read the body (if any), then [`build_record`].
    Accept(Plan<'a>),
}

/// What the head decided, for [`build_record`].
pub struct Plan<'a> {
    /// The route (`Beacon` or `Gif`).
    pub route: Route,
    /// The POST body's media kind, if POST.
    pub media: Option<Kind>,
    forwarded: Option<IpAddr>,
    params: Vec<Param<'a>>,
    /// CORS headers to add to the answer.
    pub cors: Option<Cors>,
    received_us: u64,
}

/// Everything decided from the head alone, in the order the hyper engine always applied it:
/// route, method, origin, target and header limits, X-Forwarded-For, rate limit (before the
/// body is read: an abusive client costs as little as possible), query parameters, media
/// type, declared body length. `charge` is false when the same head is checked again after
/// its body arrived (the rate limit was already taken).
pub fn before_body<'a>(
    app: &App,
    stats: &Stats,
    conn: &Conn,
    head: &Head<'a>,
    content_length: Option<u64>,
    charge: bool,
) -> Next<'a> {
    let route = Route::of(app, head.path);
    let method = head.method;
    match route {
        Route::Health => return Next::Answer(health(app, method)),
        Route::Live => {
            return Next::Answer(if method == "GET" || method == "HEAD" {
                Answer::plain(200, "alive\n")
            } else {
                Answer::not_allowed("GET, HEAD")
            })
        }
        Route::Other => return Next::Answer(Answer::plain(404, "not found\n")),
        Route::Beacon | Route::Gif | Route::Batch => {}
    }
    let cors = match head.header("origin") {
        Some(o) if !app.origin_allowed(o) => {
            // A preflight from a foreign origin, or a beacon it sent anyway (text/plain
            // needs no preflight): refuse both.
            return Next::Answer(Answer::reject(app, Reject::OriginNotAllowed));
        }
        Some(_) if app.any_origin => Some(Cors::Any),
        Some(o) if app.http.cors_allow_credentials => Some(Cors::Credentialed(o.to_vec())),
        Some(o) => Some(Cors::Origin(o.to_vec())),
        None => None,
    };
    let with_cors = |mut a: Answer| {
        a.cors = cors.clone();
        Next::Answer(a)
    };
    match (route, method) {
        (Route::Beacon | Route::Batch, "OPTIONS") => {
            return Next::Answer(preflight(app, head, cors))
        }
        (Route::Batch, "POST") => {}
        (Route::Batch, _) => return with_cors(Answer::not_allowed("POST, OPTIONS")),
        (_, "GET") | (_, "HEAD") | (Route::Beacon, "POST") => {}
        (Route::Beacon, _) => return with_cors(Answer::not_allowed("GET, HEAD, POST, OPTIONS")),
        _ => return with_cors(Answer::not_allowed("GET, HEAD")),
    }
    let refuse = |r| with_cors(Answer::reject(app, r));
    let h = &app.http;
    let received_us = record::now_us();
    if head.target_len > h.max_uri_bytes {
        return refuse(Reject::UriTooLong);
    }
    if head.header_bytes() > h.max_header_bytes || head.headers.len() > h.max_headers {
        return refuse(Reject::HeadersTooLarge);
    }
    // A trusted proxy's X-Forwarded-For names the client of this request.
    let verdict = if app.trusted_proxies.is_empty() {
        Verdict::NotUsed
    } else {
        forwarded_for::client(
            conn.client,
            &app.trusted_proxies,
            head.all("x-forwarded-for"),
        )
    };
    let forwarded = match verdict {
        Verdict::Client(ip) => Some(ip),
        Verdict::NotUsed => None,
        Verdict::Malformed => {
            if charge {
                stats
                    .forwarded_invalid
                    .set(stats.forwarded_invalid.get() + 1);
            }
            None
        }
    };
    if let (Some(limiter), true) = (&app.limiter, charge) {
        if let Decision::Deny(wait) = limiter.check(forwarded.unwrap_or(conn.client)) {
            return refuse(Reject::RateLimited(wait.as_secs()));
        }
    }
    let mut params = Vec::new();
    if let Some(q) = head.query {
        if let Err(e) = record::parse_urlencoded(q, &app.limits, &mut params) {
            return refuse(Reject::Param(e));
        }
    }
    let mut media = None;
    if method == "POST" {
        media = Some(
            match head.header("content-type").map(media_type).as_deref() {
                None | Some(b"text/plain") => Kind::Text,
                Some(b"application/x-www-form-urlencoded") if route != Route::Batch => Kind::Form,
                Some(b"application/json") => Kind::Json,
                Some(b"application/x-ndjson") if route == Route::Batch => Kind::Json,
                Some(b"multipart/form-data") if route != Route::Batch => Kind::Multipart,
                Some(_) => return refuse(Reject::UnsupportedMediaType),
            },
        );
        // An encoding we cannot undo is refused before a byte of the body is read.
        if let Some(v) = head.header("content-encoding") {
            if super::encoding::coding(v).is_err() {
                return refuse(Reject::UnsupportedContentEncoding);
            }
        }
        // Refuse a declared oversize body before reading a byte of it.
        if content_length.is_some_and(|n| n > h.max_body_bytes as u64) {
            return refuse(Reject::BodyTooLarge);
        }
    }
    Next::Accept(Plan {
        route,
        media,
        forwarded,
        params,
        cors,
        received_us,
    })
}

/// What an accepted request added to its commit group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Built {
    /// The kind of its records.
    pub kind: Kind,
    /// How many (one, or the events of a batch).
    pub records: u32,
}

/// Builds the record(s) of an accepted request from its head and (complete) body and frames
/// them into `out`: one record, or one per event of a batch, all or none.
pub fn build_record<'a>(
    app: &App,
    stats: &Stats,
    conn: &'a Conn,
    head: &Head<'a>,
    plan: Plan<'a>,
    body: &'a [u8],
    out: &mut Frames<'_>,
) -> Result<Built, Reject> {
    let client = plan.forwarded.unwrap_or(conn.client);
    let built = build_decoded(app, stats, conn, head, plan, body, out)?;
    // The limit counts beacons, and a request stores more than one when it is a batch or
    // large: it costs a token per record or per STORED_BYTES_PER_TOKEN stored, whichever is
    // more. One was taken before the body; the rest is owed (see RateLimiter::charge).
    if let Some(limiter) = &app.limiter {
        let cost = (built.records as usize).max(out.bytes().div_ceil(STORED_BYTES_PER_TOKEN));
        limiter.charge(client, cost.saturating_sub(1) as f64);
    }
    Ok(built)
}

/// Stored bytes that cost one rate-limit token (a beacon with its metadata is ~1 KB).
pub const STORED_BYTES_PER_TOKEN: usize = 16 * 1024;

/// [`build_record`] after undoing the body's content coding.
fn build_decoded<'a>(
    app: &App,
    stats: &Stats,
    conn: &'a Conn,
    head: &Head<'a>,
    plan: Plan<'a>,
    body: &'a [u8],
    out: &mut Frames<'_>,
) -> Result<Built, Reject> {
    use super::encoding::{self, DecodeError};
    let coding = match (&plan.media, head.header("content-encoding")) {
        (Some(_), Some(v)) => {
            encoding::coding(v).map_err(|_| Reject::UnsupportedContentEncoding)?
        }
        _ => None,
    };
    match coding {
        None => build(app, stats, conn, head, plan, body, out),
        Some(c) => {
            if body.len() > app.http.max_body_bytes {
                return Err(Reject::BodyTooLarge);
            }
            let decoded = encoding::decode(c, body, app.http.max_decoded_body_bytes).map_err(
                |e| match e {
                    DecodeError::Unsupported => Reject::UnsupportedContentEncoding,
                    DecodeError::Corrupt => Reject::BadContentEncoding,
                    DecodeError::TooLarge => Reject::DecodedBodyTooLarge,
                },
            )?;
            // The record is encoded into `out` before `decoded` goes: borrowing it is enough.
            build(app, stats, conn, head, plan, &decoded, out)
        }
    }
}

/// [`build_record`] on a body without (or after undoing) its content coding.
fn build<'a>(
    app: &App,
    stats: &Stats,
    conn: &'a Conn,
    head: &Head<'a>,
    mut plan: Plan<'a>,
    body: &'a [u8],
    out: &mut Frames<'_>,
) -> Result<Built, Reject> {
    if plan.route == Route::Batch {
        return build_batch(app, stats, conn, head, plan, body, out);
    }
    let limit = if head.header("content-encoding").is_some() {
        app.http.max_decoded_body_bytes
    } else {
        app.http.max_body_bytes
    };
    let mut kind = Kind::Query;
    let mut payload: Cow<'a, [u8]> = Cow::Borrowed(&[]);
    if let Some(media) = plan.media {
        if body.len() > limit {
            return Err(Reject::BodyTooLarge);
        }
        stats
            .body_bytes
            .set(stats.body_bytes.get() + body.len() as u64);
        match media {
            Kind::Form => {
                kind = Kind::Form;
                record::parse_urlencoded(body, &app.limits, &mut plan.params)
                    .map_err(Reject::Param)?;
            }
            Kind::Multipart => {
                kind = Kind::Multipart;
                let b = head
                    .header("content-type")
                    .and_then(super::multipart::boundary)
                    .ok_or(Reject::InvalidMultipart)?;
                super::multipart::parse(body, b, &app.limits, &mut plan.params).map_err(
                    |e| match e {
                        super::multipart::MultipartError::Malformed => Reject::InvalidMultipart,
                        super::multipart::MultipartError::Param(p) => Reject::Param(p),
                    },
                )?;
            }
            Kind::Json => {
                kind = Kind::Json;
                payload = Cow::Owned(record::compact_json(body, app.http.max_json_depth)?);
            }
            _ => {
                // sendBeacon(url, string) sends text/plain; many tags put JSON in it to avoid a
                // CORS preflight. Keep it as JSON when it is JSON, else as the exact text.
                let first = body.iter().find(|b| !b.is_ascii_whitespace());
                match first
                    .filter(|b| matches!(b, b'{' | b'['))
                    .and_then(|_| record::compact_json(body, app.http.max_json_depth).ok())
                {
                    Some(json) => {
                        kind = Kind::Json;
                        payload = Cow::Owned(json);
                    }
                    None => {
                        kind = Kind::Text;
                        payload = Cow::Borrowed(body);
                    }
                }
            }
        }
    }
    let forwarded = plan.forwarded.map(Inline::new);
    let received_us = plan.received_us;
    frame_record(
        out,
        conn,
        head,
        received_us,
        forwarded.as_ref(),
        kind,
        plan.params,
        payload,
    )?;
    Ok(Built { kind, records: 1 })
}

/// A batch (`http.batch_path`): one JSON record per event, each with the request's metadata
/// and query parameters and an id of its own.
fn build_batch<'a>(
    app: &App,
    stats: &Stats,
    conn: &'a Conn,
    head: &Head<'a>,
    plan: Plan<'a>,
    body: &'a [u8],
    out: &mut Frames<'_>,
) -> Result<Built, Reject> {
    if body.len() > app.http.max_decoded_body_bytes {
        return Err(Reject::BodyTooLarge);
    }
    stats
        .body_bytes
        .set(stats.body_bytes.get() + body.len() as u64);
    let events = super::batch::events(body, app.http.max_batch_events).map_err(|e| match e {
        super::batch::BatchError::Invalid => Reject::InvalidJson,
        super::batch::BatchError::Empty => Reject::EmptyBatch,
        super::batch::BatchError::TooMany => Reject::TooManyEvents,
    })?;
    let forwarded = plan.forwarded.map(Inline::new);
    // Each record repeats the request's query string and headers: 100 tiny events under an
    // 8 KB query and a 12 KB User-Agent stored 2 MB from a 20 KB request. Bounded here.
    let cap = app.http.max_batch_stored_bytes;
    for event in &events {
        let json = record::compact_json(event, app.http.max_json_depth)?;
        let params = plan.params.clone();
        let body = Cow::Owned(json);
        frame_record(
            out,
            conn,
            head,
            plan.received_us,
            forwarded.as_ref(),
            Kind::Json,
            params,
            body,
        )?;
        if out.bytes() > cap {
            return Err(Reject::BatchTooLarge);
        }
    }
    Ok(Built {
        kind: Kind::Json,
        records: events.len() as u32,
    })
}

/// Frames one record of this request (its metadata, `params` and `body`) into `out`, with an id
/// of its own.
#[allow(clippy::too_many_arguments)]
fn frame_record<'a>(
    out: &mut Frames<'_>,
    conn: &'a Conn,
    head: &Head<'a>,
    received_us: u64,
    forwarded: Option<&Inline>,
    kind: Kind,
    params: Vec<Param<'a>>,
    body: Cow<'a, [u8]>,
) -> Result<(), Reject> {
    let (client_ip, client_ip_source) = match forwarded {
        Some(ip) => (ip.as_bytes(), ClientIpSource::ForwardedFor),
        None => (conn.client_ip.as_bytes(), conn.client_ip_source),
    };
    let rec = RecordRef {
        id: record::new_id(received_us),
        received_us,
        peer: conn.peer.as_bytes(),
        client_ip,
        client_ip_source,
        method: head.method.as_bytes(),
        path: head.path,
        kind,
        user_agent: head.header("user-agent"),
        referer: head.header("referer"),
        origin: head.header("origin"),
        params,
        body,
    };
    out.record(|buf| {
        rec.encode(buf);
        Ok(())
    })
}

impl From<record::JsonError> for Reject {
    fn from(e: record::JsonError) -> Self {
        match e {
            record::JsonError::Invalid => Reject::InvalidJson,
            record::JsonError::TooDeep => Reject::JsonTooDeep,
        }
    }
}

/// The answer once the commit of an accepted record finished.
pub fn after_commit(
    app: &App,
    stats: &Stats,
    route: Route,
    built: Built,
    cors: Option<Cors>,
    res: Result<(), AppendError>,
) -> Answer {
    let mut a = match res {
        Ok(()) => {
            let n = &stats.accepted[built.kind as usize];
            n.set(n.get() + u64::from(built.records));
            Answer::success(route)
        }
        Err(e) => Answer::reject(app, e.into()),
    };
    a.cors = cors;
    a
}

fn health(app: &App, method: &str) -> Answer {
    if method != "GET" && method != "HEAD" {
        return Answer::not_allowed("GET, HEAD");
    }
    if app.is_draining() {
        Answer::plain(503, "draining\n")
    } else if !app.spool.healthy() {
        // Spool above its high-water mark or failing writes: send traffic elsewhere.
        Answer::plain(503, "spool full or failing\n")
    } else if !app.forwarder_up.load(Ordering::Relaxed) {
        Answer::plain(503, "forwarder restarting\n")
    } else {
        Answer::plain(200, "ok\n")
    }
}

fn preflight(app: &App, head: &Head<'_>, cors: Option<Cors>) -> Answer {
    let mut a = Answer::new(204);
    a.allow = Some("GET, HEAD, POST, OPTIONS");
    if cors.is_some() {
        a.preflight = Some(Preflight {
            allow_headers: head.header("access-control-request-headers").is_some(),
            max_age: app.http.cors_max_age_seconds,
        });
    }
    a.cors = cors;
    a
}

/// `Text/Plain; charset=UTF-8` → `text/plain`.
pub fn media_type(v: &[u8]) -> Vec<u8> {
    let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
    v[..end].trim_ascii().to_ascii_lowercase()
}

/// Per-worker counters: plain cells bumped on the request path, added to the shared
/// Prometheus registry once a second ([`Stats::flush`]), so a request does no registry
/// lookup and touches no cache line another core writes.
#[derive(Default)]
pub struct Stats {
    requests: [[std::cell::Cell<u64>; STATUSES.len()]; Route::ALL.len()],
    rejected: [std::cell::Cell<u64>; Reject::ALL.len()],
    accepted: [std::cell::Cell<u64>; Kind::ALL.len()],
    body_bytes: std::cell::Cell<u64>,
    forwarded_invalid: std::cell::Cell<u64>,
    /// Header deadlines that closed a connection.
    pub header_timeouts: std::cell::Cell<u64>,
    /// Connections closed because they reached `http.max_connection_age_seconds`.
    pub aged_out: std::cell::Cell<u64>,
    /// Connections accepted.
    pub connections: std::cell::Cell<u64>,
    /// Request durations (seconds) by route since the last flush, capped per flush.
    durations: std::cell::RefCell<[Vec<f64>; Route::ALL.len()]>,
}

/// Request durations kept per route between flushes (a sample, not every request, under load).
const DURATION_SAMPLES: usize = 2048;

impl Stats {
    /// Counts an answered request.
    pub fn answered(&self, route: Route, a: &Answer, started: std::time::Instant) {
        let c = &self.requests[route.index()][status_index(a.status)];
        c.set(c.get() + 1);
        if let Some(r) = a.reject {
            let c = &self.rejected[r.index()];
            c.set(c.get() + 1);
        }
        let mut d = self.durations.borrow_mut();
        let v = &mut d[route.index()];
        if v.len() < DURATION_SAMPLES {
            v.push(started.elapsed().as_secs_f64());
        }
    }

    /// Counts a rejection answered without a route (framing errors).
    pub fn framing_error(&self, a: &Answer) {
        self.answered(Route::Other, a, std::time::Instant::now());
    }

    /// Adds everything counted since the last flush to the registry and to `app.accepted`.
    pub fn flush(&self, app: &App) {
        use crate::metrics as m;
        let take = |c: &std::cell::Cell<u64>| c.replace(0);
        for route in Route::ALL {
            for (i, c) in self.requests[route.index()].iter().enumerate() {
                let n = take(c);
                if n > 0 {
                    metrics::counter!(m::HTTP_REQUESTS_TOTAL, "route" => route.label(), "status" => status_label(STATUSES[i])).increment(n);
                }
            }
        }
        for (i, c) in self.rejected.iter().enumerate() {
            let n = take(c);
            if n > 0 {
                metrics::counter!(m::BEACONS_REJECTED_TOTAL, "reason" => Reject::ALL[i].label())
                    .increment(n);
            }
        }
        for kind in Kind::ALL {
            let n = take(&self.accepted[kind as usize]);
            if n > 0 {
                app.accepted.fetch_add(n, Ordering::Relaxed);
                metrics::counter!(m::BEACONS_ACCEPTED_TOTAL, "kind" => kind.as_str()).increment(n);
            }
        }
        let n = take(&self.body_bytes);
        if n > 0 {
            metrics::counter!(m::HTTP_REQUEST_BODY_BYTES_TOTAL).increment(n);
        }
        let n = take(&self.forwarded_invalid);
        if n > 0 {
            metrics::counter!(m::FORWARDED_FOR_INVALID_TOTAL).increment(n);
        }
        let n = take(&self.header_timeouts);
        if n > 0 {
            metrics::counter!(m::HEADER_TIMEOUTS_TOTAL).increment(n);
        }
        let n = take(&self.aged_out);
        if n > 0 {
            metrics::counter!(m::CONNECTIONS_AGED_OUT_TOTAL).increment(n);
        }
        let n = take(&self.connections);
        if n > 0 {
            metrics::counter!(m::CONNECTIONS_ACCEPTED_TOTAL).increment(n);
        }
        let mut d = self.durations.borrow_mut();
        for route in Route::ALL {
            let v = &mut d[route.index()];
            if !v.is_empty() {
                let h =
                    metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS, "route" => route.label());
                for s in v.drain(..) {
                    h.record(s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gif_is_a_43_byte_gif() {
        assert_eq!(GIF.len(), 43);
        assert!(GIF.starts_with(b"GIF89a"));
        assert_eq!(GIF[42], b';');
    }

    #[test]
    fn media_type_normalised() {
        assert_eq!(media_type(b"Text/Plain;charset=UTF-8"), b"text/plain");
        assert_eq!(media_type(b" application/json "), b"application/json");
    }

    #[test]
    fn every_rejection_has_its_own_status_label_and_index() {
        let mut labels = std::collections::HashSet::new();
        for (i, r) in Reject::ALL.into_iter().enumerate() {
            let s = r.status();
            assert!((400..500).contains(&s) || s == 503 || s == 501, "{r:?}");
            assert_ne!(
                status_label(s),
                "other",
                "{r:?} is counted under its status"
            );
            assert_eq!(r.index(), i);
            assert!(labels.insert(r.label()), "{r:?} has a label of its own");
            assert!(!reason(s).is_empty());
        }
        for s in STATUSES.iter().filter(|&&s| s != 0) {
            assert_eq!(status_label(*s), s.to_string());
        }
    }

    #[test]
    fn targets_split_into_path_and_query() {
        assert_eq!(
            split_target(b"/beacon?a=1"),
            (&b"/beacon"[..], Some(&b"a=1"[..]))
        );
        assert_eq!(split_target(b"/beacon"), (&b"/beacon"[..], None));
        assert_eq!(
            split_target(b"http://h.example/beacon?x"),
            (&b"/beacon"[..], Some(&b"x"[..]))
        );
        assert_eq!(split_target(b"http://h.example"), (&b"/"[..], None));
        assert_eq!(split_target(b"?q"), (&b"/"[..], Some(&b"q"[..])));
    }

    #[test]
    fn inline_text_holds_the_longest_socket_address() {
        let a: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .unwrap();
        assert_eq!(Inline::new(a).as_bytes(), a.to_string().as_bytes());
    }
}
