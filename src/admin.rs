//! The admin listener (`GET /metrics`), for the collector (`admin.listen`) and the processing
//! stage (`processor.admin.listen`): bound in one place, served until cancelled.

use crate::lifecycle::CancellationToken;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::time::Duration;

/// The admin port could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding {key} {addr}: {source}")]
pub struct BindError {
    /// The config key that names the address.
    pub(crate) key: &'static str,
    /// The address.
    pub(crate) addr: SocketAddr,
    /// The OS error.
    #[source]
    pub(crate) source: std::io::Error,
}

/// Binds the admin listener at `addr` (`key` names it in the error), non-blocking so a
/// runtime can take it.
pub(crate) fn bind(
    key: &'static str,
    addr: SocketAddr,
) -> Result<std::net::TcpListener, BindError> {
    let err = |source| BindError { key, addr, source };
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// What `/readyz` says on an admin port that has one: `Err` with the reason for a 503.
pub(crate) type Readiness = fn() -> Result<(), String>;

/// Serves `GET /metrics` (and `GET /readyz` when `ready` is given) on `listener` until `stop`
/// is cancelled.
pub(crate) async fn serve(
    listener: std::sync::Arc<tokio::net::TcpListener>,
    handle: PrometheusHandle,
    stop: CancellationToken,
    ready: Option<Readiness>,
) {
    let upkeep = handle.clone();
    let upkeep_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let accept_log = crate::logging::Throttle::default();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    if let Some(suppressed) = accept_log.allow() {
                        tracing::warn!(error = %e, suppressed, "admin accept failed");
                    }
                    tokio::time::sleep(crate::ingest::listener::ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let handle = handle.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(crate::metrics::render(&handle))))
                    } else if let (Some(ready), "/readyz") = (ready, req.uri().path()) {
                        match ready() {
                            Ok(()) => {
                                Response::builder().body(Full::new(Bytes::from_static(b"ready\n")))
                            }
                            Err(why) => Response::builder()
                                .status(StatusCode::SERVICE_UNAVAILABLE)
                                .body(Full::new(Bytes::from(format!("not ready\n{why}\n")))),
                        }
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                    };
                    Ok::<_, std::convert::Infallible>(resp.expect("static response parts"))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
    upkeep_task.abort();
}
