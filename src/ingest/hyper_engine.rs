//! The hyper engine (`server.engine = "hyper"`), the reference the native engine is tested
//! against: hyper 1.x frames HTTP/1.1, and everything below the connection (routes, limits,
//! request → record, the commit group) is the same code as the native engine's.
//!
//! Timers. hyper (>= 1.6) starts `header_read_timeout` when it begins waiting for a request
//! head, so that timer *is* the keep-alive idle timeout: we set it to
//! `http.idle_timeout_seconds`. The slowloris deadline must instead start at the first byte
//! of a request, which hyper cannot express; `Watched` notices that byte and the connection
//! task closes the connection if the head is not complete `header_timeout_seconds` later.
//! Body reads get their own deadline in the handler.

use super::answer::{Answer, Cors, Reject};
use super::conn::{identify, Conn};
use super::record_build;
use super::request::{split_target, Head};
use super::routes::{self, Next};
use super::stats::Counter;
use super::worker_state::Worker;
use super::Phase;
use crate::config::Config;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The hyper connection builder with our limits and timers.
pub(crate) fn builder(config: &Config) -> hyper::server::conn::http1::Builder {
    let h = &config.http;
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .keep_alive(true)
        // A client that shuts its side after sending still gets every answer (the native
        // engine answers what it read before the EOF too).
        .half_close(true)
        // Idle timer, see the module docs.
        .header_read_timeout(Duration::from_secs(h.idle_timeout_seconds))
        // hyper answers 431 itself beyond these; the handler applies the exact byte limit.
        .max_headers(h.max_headers)
        .max_buf_size(super::state::max_head_bytes(h))
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

/// A stream (TCP, or TLS over it) that reports when the first byte of a new request arrives.
struct Watched<S> {
    stream: S,
    state: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
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

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
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

/// Serves one connection until it closes, the header deadline passes, or the phase says so.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    stream: S,
    conn: Conn,
    w: Rc<Worker>,
    builder: Arc<hyper::server::conn::http1::Builder>,
) {
    let header_timeout = w.header_timeout;
    let mut phase = w.phase.clone();
    let state = Arc::new(ConnState {
        phase: AtomicU8::new(IDLE),
        generation: AtomicU64::new(0),
        notify: Notify::new(),
    });
    let conn = Rc::new(conn);
    let svc_state = state.clone();
    let worker = w.clone();
    // Past its age the next answer says `Connection: close` (hyper then closes); an idle
    // connection is left to its idle timeout, as nginx's `keepalive_time`: closing it idle
    // races the browser's next request on it.
    let expires = w.expiry_instant(w.connection_expiry());
    let svc = hyper::service::service_fn(move |req| {
        let w = worker.clone();
        let st = svc_state.clone();
        let conn = conn.clone();
        async move {
            st.phase.store(BUSY, Ordering::Release);
            let mut resp = handle(&w, &conn, req).await;
            if expires.is_some_and(|e| tokio::time::Instant::now() >= e)
                && !resp.headers().contains_key(header::CONNECTION)
            {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                w.aged_out();
            }
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
                    tracing::debug!(error = %e, "connection ended with error");
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
                    w.stats.add(Counter::HeaderTimeouts, 1);
                    tracing::debug!("request headers not complete within header_timeout_seconds; closing");
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
}

type Resp = Response<Full<Bytes>>;

async fn handle(w: &Worker, conn: &Conn, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    // Cloned, not borrowed: the request awaits its body and commit, and a reload may replace
    // the worker's state meanwhile.
    let app = w.app().clone();
    let app = &*app;
    let (parts, body) = req.into_parts();
    let headers: Vec<httparse::Header<'_>> = parts
        .headers
        .iter()
        .map(|(k, v)| httparse::Header {
            name: k.as_str(),
            value: v.as_bytes(),
        })
        .collect();
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let (path, query) = split_target(target.as_bytes());
    let head = Head {
        method: parts.method.as_str(),
        path,
        query,
        target_len: target.len(),
        headers: &headers,
    };
    let route = app.route(path).0;
    // RFC 9112's framing and Host checks, the native engine's own (hyper takes a coding before
    // `chunked`, both TE and CL, and any Host): the engines refuse the same heads. A refused
    // framing closes the connection, since where this request ends is in doubt.
    if let Err(r) = super::h1::check_headers(&headers, parts.version == hyper::Version::HTTP_10) {
        let a = Answer::reject(app, r);
        w.stats.answered(route, &a, started);
        return to_response(&a, true);
    }
    let content_length = head
        .header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let a = match routes::before_body(app, &w.stats, conn, &head, content_length, true) {
        Next::Answer(a) => a,
        Next::Accept(mut plan) => {
            let cors = plan.cors.take();
            let body_bytes = if plan.media.is_some() {
                read_body(body, &app.http).await
            } else {
                Ok(Bytes::new())
            };
            match body_bytes {
                Err(r) => with_cors(Answer::reject(app, r), cors),
                Ok(b) => {
                    let pushed = w.committer.push(|group| {
                        record_build::build_record(app, &w.stats, conn, &head, plan, &b, group)
                    });
                    match pushed {
                        Ok((built, ticket)) => {
                            let res = w.committer.wait(ticket).await;
                            routes::after_commit(app, &w.stats, route, built, cors, res)
                        }
                        Err(r) => with_cors(Answer::reject(app, r), cors),
                    }
                }
            }
        }
    };
    w.stats.answered(route, &a, started);
    to_response(&a, app.is_draining())
}

fn with_cors(mut a: Answer, cors: Option<Cors>) -> Answer {
    a.cors = cors;
    a
}

async fn read_body(body: Incoming, h: &crate::config::HttpConfig) -> Result<Bytes, Reject> {
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

/// The hyper form of an [`Answer`]: the same headers the native engine writes.
fn to_response(a: &Answer, draining: bool) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(a.body)));
    *r.status_mut() = StatusCode::from_u16(a.status).expect("a valid status");
    let hs = r.headers_mut();
    if let Some(ct) = a.content_type {
        hs.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    if a.no_store {
        hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Some(s) = a.retry_after {
        hs.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if let Some(allow) = a.allow {
        hs.insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    match &a.cors {
        Some(Cors::Any) => {
            hs.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
        Some(Cors::Origin(o)) => {
            if let Ok(v) = HeaderValue::from_bytes(o) {
                hs.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            }
            hs.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        Some(Cors::Credentialed(o)) => {
            if let Ok(v) = HeaderValue::from_bytes(o) {
                hs.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
                hs.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            hs.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        None => {}
    }
    if let (Some(p), Some(_)) = (a.preflight, &a.cors) {
        hs.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST"),
        );
        if p.allow_headers {
            hs.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(super::answer::ALLOW_HEADERS),
            );
        }
        hs.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(p.max_age));
        hs.append(
            header::VARY,
            HeaderValue::from_static(
                "Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
    }
    if a.close || draining {
        hs.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// A connection on the hyper engine: the PROXY header first (when expected), then the TLS
/// handshake (tokio-rustls, on a TLS listener), then hyper.
pub(crate) fn spawn(
    stream: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    w: Rc<Worker>,
    hyper: Option<Arc<hyper::server::conn::http1::Builder>>,
    tls: Option<super::tls_conn::Tls>,
) {
    let fut = async move {
        // Held for the connection's life: returned when the task ends.
        let _permit = permit;
        let mut stream = stream;
        let mode = w.app().proxy;
        let Some(conn) = identify(mode, &mut stream, peer, w.header_timeout).await else {
            return;
        };
        let b = hyper.expect("hyper builder for the hyper engine");
        match tls {
            None => {
                w.open.increment(1.0);
                serve(stream, conn, w.clone(), b).await;
            }
            Some(t) => {
                let Some(stream) = Box::pin(handshake(stream, t, w.header_timeout)).await else {
                    return;
                };
                w.open.increment(1.0);
                serve(stream, conn, w.clone(), b).await;
            }
        }
        w.open.decrement(1.0);
    };
    tokio::task::spawn_local(fut);
}

/// The TLS handshake of a hyper-engine connection, counted as the native engine counts it;
/// `None` when it failed (plain HTTP is answered 400 first, as nginx does).
async fn handshake(
    stream: TcpStream,
    t: super::tls_conn::Tls,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    use crate::tls::Handshake;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if crate::tls::looks_like_plain_http(&first) => {
            Handshake::PlainHttp.count();
            let _ = stream.try_write(super::tls_conn::PLAIN_HTTP_ANSWER);
            return None;
        }
        Ok(Ok(1)) => {}
        Ok(_) => return None,
        Err(_) => {
            Handshake::Timeout.count();
            return None;
        }
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(t.config);
    let res = tokio::time::timeout_at(deadline, acceptor.accept(stream)).await;
    drop(t.gate);
    match res {
        Ok(Ok(s)) => {
            crate::tls::count_established(s.get_ref().1);
            Some(s)
        }
        Ok(Err(e)) => {
            let r = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .map_or(Handshake::ProtocolError, Handshake::of_error);
            r.count();
            None
        }
        Err(_) => {
            Handshake::Timeout.count();
            None
        }
    }
}
