//! HTTP/1.1 on accepted connections: the hyper connection with its timers, our header
//! deadline (slowloris), routes, limits, CORS, turning a request into a record, and the one
//! mapping from rejection to status code and metric label.
//!
//! Timers. hyper (>= 1.6) starts `header_read_timeout` when it begins waiting for a request
//! head, so that timer *is* the keep-alive idle timeout: we set it to
//! `http.idle_timeout_seconds`. The slowloris deadline must instead start at the first byte
//! of a request, which hyper cannot express; [`Watched`] notices that byte and the connection
//! task closes the connection if the head is not complete `header_timeout_seconds` later.
//! Body reads get their own deadline in the handler.

use crate::config::Config;
use crate::forwarded::Verdict;
use crate::metrics as m;
use crate::proxy;
use crate::ratelimit::{Decision, Limits, RateLimiter};
use crate::record::{self, ClientIpSource, Kind, ParamError, ParamLimits, RecordRef};
use crate::spool::{AppendError, Spool};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit};

/// A transparent 1x1 GIF (43 bytes).
pub const GIF: &[u8; 43] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

/// Server lifecycle as seen by connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Normal service.
    Running,
    /// SIGTERM received: health check fails, every response says `Connection: close`.
    Deregistering,
    /// Accepting stopped; connections finish their request and close.
    Draining,
    /// Drain deadline passed: connections are dropped.
    Abort,
}

/// State shared by all connections.
pub struct App {
    http: crate::config::HttpConfig,
    proxy: proxy::Mode,
    trusted_proxies: Vec<crate::forwarded::Cidr>,
    limiter: Option<RateLimiter>,
    limits: ParamLimits,
    spool: Spool,
    retry_after: HeaderValue,
    any_origin: bool,
    /// Beacons answered 2xx: each one is in the spool.
    pub accepted: AtomicU64,
    draining: AtomicBool,
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
            retry_after: HeaderValue::from(config.queue.retry_after_seconds),
            any_origin: h.allowed_origins.iter().any(|o| o == "*"),
            http: h.clone(),
            proxy: config.server.proxy_protocol,
            trusted_proxies: h.trusted_proxies.clone(),
            limiter: config.rate_limit.enabled.then(|| {
                RateLimiter::new(Limits {
                    per_second: config.rate_limit.per_client_per_second,
                    burst: f64::from(config.rate_limit.burst),
                    slots: config.rate_limit.table_slots,
                })
            }),
            accepted: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// Turns the health check to 503 and adds `Connection: close` to every response.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        metrics::gauge!(m::DRAINING).set(1.0);
    }

    fn is_draining(&self) -> bool {
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
}

/// The hyper connection builder with our limits and timers.
pub fn builder(config: &Config) -> hyper::server::conn::http1::Builder {
    let h = &config.http;
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .keep_alive(true)
        // Idle timer, see the module docs.
        .header_read_timeout(Duration::from_secs(h.idle_timeout_seconds))
        // hyper answers 431 itself beyond these; the handler applies the exact byte limit.
        .max_headers(h.max_headers)
        .max_buf_size((h.max_uri_bytes + h.max_header_bytes + 1024).max(8192))
        .max_header_size(h.max_uri_bytes + h.max_header_bytes + 1024);
    b
}

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// Per-connection state shared by the I/O wrapper, the service and the connection task.
struct ConnState {
    phase: AtomicU8,
    /// Incremented each time a request's first byte arrives.
    generation: AtomicU64,
    notify: Notify,
}

impl ConnState {
    fn on_bytes(&self) {
        if self
            .phase
            .compare_exchange(IDLE, HEAD, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.notify.notify_one();
        }
    }
}

/// A TCP stream that reports when the first byte of a new request arrives.
struct Watched {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_bytes();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Who is on the other end of a connection, as recorded in each beacon.
struct Conn {
    /// `ip:port` of the TCP peer.
    peer: Vec<u8>,
    /// The connection's client: the peer, or the PROXY header's source.
    client: std::net::IpAddr,
    /// `client`, formatted.
    client_ip: Vec<u8>,
    client_ip_source: ClientIpSource,
}

/// Serves one connection until it closes, the header deadline passes, or the phase says so.
/// The permit is held for the connection's whole life and returned when this returns.
pub async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    app: Arc<App>,
    builder: Arc<hyper::server::conn::http1::Builder>,
    header_timeout: Duration,
    mut phase: watch::Receiver<Phase>,
) {
    // Behind a proxy that sends a PROXY header, the header is the first thing on the
    // connection and says who the client is; without a valid one the connection is closed.
    let client = match app.proxy {
        proxy::Mode::Off => (peer.ip(), ClientIpSource::Peer),
        mode => match proxy::read_header(&mut stream, mode, header_timeout).await {
            Ok(h) => {
                let source = if h.version == 1 {
                    ClientIpSource::ProxyV1
                } else {
                    ClientIpSource::ProxyV2
                };
                metrics::counter!(m::PROXY_HEADERS_TOTAL, "version" => if h.version == 1 { "1" } else { "2" }).increment(1);
                // LOCAL / UNKNOWN: the proxy's own connection (health checks).
                h.source
                    .map_or((peer.ip(), ClientIpSource::Peer), |a| (a.ip(), source))
            }
            Err(e) => {
                metrics::counter!(m::PROXY_HEADER_ERRORS_TOTAL, "reason" => e.reason())
                    .increment(1);
                tracing::debug!(%peer, error = %e, "closing connection without a valid PROXY header");
                return;
            }
        },
    };
    metrics::gauge!(m::CONNECTIONS_OPEN).increment(1.0);
    let state = Arc::new(ConnState {
        phase: AtomicU8::new(IDLE),
        generation: AtomicU64::new(0),
        notify: Notify::new(),
    });
    let conn = Arc::new(Conn {
        peer: peer.to_string().into_bytes(),
        client: client.0,
        client_ip: client.0.to_string().into_bytes(),
        client_ip_source: client.1,
    });
    let svc_state = state.clone();
    let svc = hyper::service::service_fn(move |req| {
        let app = app.clone();
        let st = svc_state.clone();
        let conn = conn.clone();
        async move {
            st.phase.store(BUSY, Ordering::Release);
            let resp = handle(&app, &conn, req).await;
            // The next byte read belongs to the next request.
            st.phase.store(IDLE, Ordering::Release);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = builder.serve_connection(
        TokioIo::new(Watched {
            stream,
            state: state.clone(),
        }),
        svc,
    );
    tokio::pin!(conn);
    let mut deadline: Option<(tokio::time::Instant, u64)> = None;
    let mut graceful = false;
    loop {
        let cur = *phase.borrow();
        if cur >= Phase::Draining && !graceful {
            // Finishes an in-flight request, closes an idle connection now.
            conn.as_mut().graceful_shutdown();
            graceful = true;
        }
        if cur == Phase::Abort {
            break;
        }
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
                break;
            }
            _ = state.notify.notified() => {
                if state.phase.load(Ordering::Acquire) == HEAD {
                    let g = state.generation.load(Ordering::Acquire);
                    deadline = Some((tokio::time::Instant::now() + header_timeout, g));
                }
            }
            _ = async { tokio::time::sleep_until(deadline.expect("guarded").0).await }, if deadline.is_some() => {
                let (_, g) = deadline.take().expect("guarded");
                if state.phase.load(Ordering::Acquire) == HEAD
                    && state.generation.load(Ordering::Acquire) == g
                {
                    metrics::counter!(m::HEADER_TIMEOUTS_TOTAL).increment(1);
                    tracing::debug!(%peer, "request headers not complete within header_timeout_seconds; closing");
                    break;
                }
            }
            r = phase.changed() => {
                if r.is_err() {
                    break;
                }
            }
        }
    }
    metrics::gauge!(m::CONNECTIONS_OPEN).decrement(1.0);
}

/// Why a request was refused: the one place that picks status and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    UriTooLong,
    HeadersTooLarge,
    BodyTooLarge,
    Param(ParamError),
    InvalidJson,
    UnsupportedMediaType,
    BodyTimeout,
    BodyError,
    OriginNotAllowed,
    /// Over the per-client rate limit; retry after this many seconds.
    RateLimited(u64),
    QueueFull,
    SpoolFull,
    SpoolFailed,
    ShuttingDown,
}

impl Reject {
    fn status(self) -> StatusCode {
        match self {
            Reject::UriTooLong => StatusCode::URI_TOO_LONG,
            Reject::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::Param(_) | Reject::InvalidJson | Reject::BodyError => StatusCode::BAD_REQUEST,
            Reject::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reject::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::OriginNotAllowed => StatusCode::FORBIDDEN,
            Reject::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Reject::QueueFull | Reject::SpoolFull | Reject::SpoolFailed | Reject::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn label(self) -> &'static str {
        match self {
            Reject::UriTooLong => "uri_too_long",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::BodyTooLarge => "body_too_large",
            Reject::Param(ParamError::TooMany) => "too_many_params",
            Reject::Param(ParamError::NameTooLong) => "param_name_too_long",
            Reject::Param(ParamError::ValueTooLong) => "param_value_too_long",
            Reject::InvalidJson => "invalid_json",
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

    /// Whether the request body may be left unread, so the connection cannot be reused.
    fn closes(self) -> bool {
        matches!(
            self,
            Reject::BodyTooLarge | Reject::BodyTimeout | Reject::BodyError
        )
    }
}

type Resp = Response<Full<Bytes>>;

#[derive(Clone, Copy)]
enum Route {
    Beacon,
    Gif,
    Health,
    Other,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Beacon => "beacon",
            Route::Gif => "gif",
            Route::Health => "health",
            Route::Other => "other",
        }
    }
}

async fn handle(app: &App, conn: &Conn, req: Request<Incoming>) -> Resp {
    let start = Instant::now();
    let path = req.uri().path();
    let h = &app.http;
    let route = if path == h.beacon_path {
        Route::Beacon
    } else if path == h.health_path {
        Route::Health
    } else if !h.gif_path.is_empty() && path == h.gif_path {
        Route::Gif
    } else {
        Route::Other
    };
    let mut resp = match route {
        Route::Health => health(app, req.method()),
        Route::Other => plain(StatusCode::NOT_FOUND, "not found\n"),
        Route::Beacon | Route::Gif => beacon(app, conn, route, req).await,
    };
    if app.is_draining() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = resp.status().as_u16();
    metrics::counter!(m::HTTP_REQUESTS_TOTAL, "route" => route.label(), "status" => status_label(status))
        .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS, "route" => route.label())
        .record(start.elapsed().as_secs_f64());
    resp
}

fn health(app: &App, method: &Method) -> Resp {
    if method != Method::GET && method != Method::HEAD {
        return not_allowed("GET, HEAD");
    }
    if app.is_draining() {
        plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !app.spool.healthy() {
        // Spool above its high-water mark or failing writes: send traffic elsewhere.
        plain(StatusCode::SERVICE_UNAVAILABLE, "spool full or failing\n")
    } else {
        plain(StatusCode::OK, "ok\n")
    }
}

async fn beacon(app: &App, conn: &Conn, route: Route, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed_origin = match &origin {
        Some(o) if !app.origin_allowed(o.as_bytes()) => {
            // A preflight from a foreign origin, or a beacon it sent anyway (text/plain
            // needs no preflight): refuse both.
            return reject(app, Reject::OriginNotAllowed);
        }
        Some(o) => Some(o.clone()),
        None => None,
    };
    let mut resp = match (route, &method) {
        (Route::Beacon, &Method::OPTIONS) => return preflight(app, req.headers(), allowed_origin),
        (_, &Method::GET) | (_, &Method::HEAD) | (Route::Beacon, &Method::POST) => {
            match accept(app, conn, req).await {
                Ok(()) => success(route),
                Err(r) => reject(app, r),
            }
        }
        (Route::Beacon, _) => not_allowed("GET, HEAD, POST, OPTIONS"),
        _ => not_allowed("GET, HEAD"),
    };
    if let Some(o) = allowed_origin {
        cors_headers(app, resp.headers_mut(), o);
    }
    resp
}

/// Validates the request, builds the record, and appends it to the spool. `Ok` means the
/// beacon is durable (as `spool.ack_after` defines) and will be delivered.
async fn accept(app: &App, conn: &Conn, req: Request<Incoming>) -> Result<(), Reject> {
    let h = &app.http;
    let received_us = record::now_us();
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > h.max_uri_bytes {
        return Err(Reject::UriTooLong);
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > h.max_header_bytes || req.headers().len() > h.max_headers {
        return Err(Reject::HeadersTooLarge);
    }
    // A trusted proxy's X-Forwarded-For names the client of this request.
    let verdict = if app.trusted_proxies.is_empty() {
        Verdict::NotUsed
    } else {
        crate::forwarded::client(
            conn.client,
            &app.trusted_proxies,
            req.headers()
                .get_all("x-forwarded-for")
                .iter()
                .map(HeaderValue::as_bytes),
        )
    };
    let forwarded = match verdict {
        Verdict::Client(ip) => Some(ip),
        Verdict::NotUsed => None,
        Verdict::Malformed => {
            metrics::counter!(m::FORWARDED_FOR_INVALID_TOTAL).increment(1);
            None
        }
    };
    // Limited before the body is read: an abusive client costs as little as possible.
    if let Some(limiter) = &app.limiter {
        if let Decision::Deny(wait) = limiter.check(forwarded.unwrap_or(conn.client)) {
            return Err(Reject::RateLimited(wait.as_secs()));
        }
    }

    let (parts, body) = req.into_parts();
    let mut params = Vec::new();
    if let Some(q) = parts.uri.query() {
        record::parse_urlencoded(q.as_bytes(), &app.limits, &mut params).map_err(Reject::Param)?;
    }

    let mut kind = Kind::Query;
    let mut payload: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let body_bytes;
    if parts.method == Method::POST {
        let media = parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| media_type(v.as_bytes()));
        let media_kind = match media.as_deref() {
            None | Some(b"text/plain") => Kind::Text,
            Some(b"application/x-www-form-urlencoded") => Kind::Form,
            Some(b"application/json") => Kind::Json,
            Some(_) => return Err(Reject::UnsupportedMediaType),
        };
        body_bytes = read_body(&parts.headers, body, h).await?;
        metrics::counter!(m::HTTP_REQUEST_BODY_BYTES_TOTAL).increment(body_bytes.len() as u64);
        match media_kind {
            Kind::Form => {
                kind = Kind::Form;
                record::parse_urlencoded(&body_bytes, &app.limits, &mut params)
                    .map_err(Reject::Param)?;
            }
            Kind::Json => {
                kind = Kind::Json;
                payload = Cow::Owned(record::compact_json(&body_bytes).ok_or(Reject::InvalidJson)?);
            }
            _ => {
                // sendBeacon(url, string) sends text/plain; many tags put JSON in it to avoid a
                // CORS preflight. Keep it as JSON when it is JSON, else as the exact text.
                let first = body_bytes.iter().find(|b| !b.is_ascii_whitespace());
                match first
                    .and_then(|b| {
                        matches!(b, b'{' | b'[').then(|| record::compact_json(&body_bytes))
                    })
                    .flatten()
                {
                    Some(json) => {
                        kind = Kind::Json;
                        payload = Cow::Owned(json);
                    }
                    None => {
                        kind = Kind::Text;
                        payload = Cow::Borrowed(&body_bytes[..]);
                    }
                }
            }
        }
    }

    let hdr = |name| parts.headers.get(name).map(HeaderValue::as_bytes);
    let forwarded = forwarded.map(|ip| ip.to_string());
    let (client_ip, client_ip_source) = match &forwarded {
        Some(ip) => (ip.as_bytes(), ClientIpSource::ForwardedFor),
        None => (&conn.client_ip[..], conn.client_ip_source),
    };
    let rec = RecordRef {
        id: record::new_id(received_us),
        received_us,
        peer: &conn.peer,
        client_ip,
        client_ip_source,
        method: parts.method.as_str().as_bytes(),
        path: parts.uri.path().as_bytes(),
        kind,
        user_agent: hdr(header::USER_AGENT),
        referer: hdr(header::REFERER),
        origin: hdr(header::ORIGIN),
        params,
        body: payload,
    };
    let mut buf = BytesMut::new();
    rec.encode(&mut buf);
    // Answered only once the record is in the spool (written, or fsync'd).
    app.spool.append(buf.freeze()).await.map_err(|e| match e {
        AppendError::Busy => Reject::QueueFull,
        AppendError::Full => Reject::SpoolFull,
        AppendError::Failed => Reject::SpoolFailed,
        AppendError::Closed => Reject::ShuttingDown,
    })?;
    app.accepted.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(m::BEACONS_ACCEPTED_TOTAL, "kind" => kind.as_str()).increment(1);
    Ok(())
}

async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    h: &crate::config::HttpConfig,
) -> Result<Bytes, Reject> {
    // Refuse a declared oversize body before reading a byte of it.
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > h.max_body_bytes as u64 {
            return Err(Reject::BodyTooLarge);
        }
    }
    let limited = Limited::new(body, h.max_body_bytes);
    match tokio::time::timeout(
        Duration::from_secs(h.body_timeout_seconds),
        limited.collect(),
    )
    .await
    {
        Err(_) => Err(Reject::BodyTimeout),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Reject::BodyTooLarge),
        Ok(Err(_)) => Err(Reject::BodyError),
    }
}

/// `Text/Plain; charset=UTF-8` → `text/plain`.
fn media_type(v: &[u8]) -> Vec<u8> {
    let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
    v[..end].trim_ascii().to_ascii_lowercase()
}

fn success(route: Route) -> Resp {
    let mut r = match route {
        Route::Gif => {
            let mut r = Response::new(Full::new(Bytes::from_static(GIF)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
            r
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
    };
    // A cached beacon is a beacon never sent.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn reject(app: &App, r: Reject) -> Resp {
    metrics::counter!(m::BEACONS_REJECTED_TOTAL, "reason" => r.label()).increment(1);
    let mut resp = plain(r.status(), r.label());
    let hs = resp.headers_mut();
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if r.status() == StatusCode::SERVICE_UNAVAILABLE {
        hs.insert(header::RETRY_AFTER, app.retry_after.clone());
    }
    if let Reject::RateLimited(secs) = r {
        hs.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if r.closes() {
        hs.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn preflight(app: &App, req: &HeaderMap, origin: Option<HeaderValue>) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let hs = resp.headers_mut();
    hs.insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, OPTIONS"),
    );
    if let Some(o) = origin {
        cors_headers(app, hs, o);
        hs.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST"),
        );
        // Content-Type is the only header a beacon needs (application/json triggers a preflight).
        if req.contains_key(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            hs.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type"),
            );
        }
        hs.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(app.http.cors_max_age_seconds),
        );
        hs.append(
            header::VARY,
            HeaderValue::from_static(
                "Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
    }
    resp
}

/// CORS headers for an allowed origin. Never `Access-Control-Allow-Credentials`: beacons carry
/// no user credentials we want, and `*` with credentials is refused by browsers anyway.
fn cors_headers(app: &App, hs: &mut HeaderMap, origin: HeaderValue) {
    if app.any_origin {
        hs.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else {
        hs.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        hs.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn plain(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn not_allowed(allow: &'static str) -> Resp {
    let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Status codes as static label values (a bounded set).
fn status_label(s: u16) -> &'static str {
    match s {
        200 => "200",
        204 => "204",
        400 => "400",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        414 => "414",
        415 => "415",
        431 => "431",
        503 => "503",
        _ => "other",
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
    fn every_rejection_has_a_client_or_unavailable_status() {
        for r in [
            Reject::UriTooLong,
            Reject::HeadersTooLarge,
            Reject::BodyTooLarge,
            Reject::Param(ParamError::TooMany),
            Reject::InvalidJson,
            Reject::UnsupportedMediaType,
            Reject::BodyTimeout,
            Reject::BodyError,
            Reject::OriginNotAllowed,
            Reject::QueueFull,
            Reject::SpoolFull,
            Reject::SpoolFailed,
            Reject::ShuttingDown,
        ] {
            let s = r.status().as_u16();
            assert!((400..500).contains(&s) || s == 503, "{r:?}");
            assert_ne!(status_label(s), "other", "{r:?}");
        }
    }
}
