//! What a request is for and whether to take it, whichever engine framed it: the route of its
//! path, then everything decided from the head alone ([`before_body`]: method, CORS origin,
//! limits, X-Forwarded-For, the rate limit, query parameters, media type), and the answer once
//! its records are committed ([`after_commit`]).
//!
//! An engine hands over a [`Head`] (borrowed from its own buffers), asks [`before_body`]
//! whether to read the body, then [`super::record_build::build_record`] encodes the record
//! straight into the worker's commit group; the answer after the commit comes from
//! [`after_commit`].

use super::answer::{Answer, Cors, Preflight, Reject, GIF};
use super::conn::Conn;
use super::forwarded_for::{self, Verdict};
use super::ratelimit::Decision;
use super::record_build::{Built, Plan};
use super::request::{media_type, Head, Route};
use super::state::SharedState;
use super::stats::Counter;
use super::stats::Stats;
use super::trackers;
use crate::record::{self, Kind};
use crate::spool::AppendError;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

/// What to do after the head.
pub(crate) enum Next<'a> {
    /// Answer now (no record); the body, if any, is not needed.
    Answer(Answer),
    /// Read the body (if any), then [`build_record`].
    Accept(Plan<'a>),
}

/// Everything decided from the head alone, in the order the hyper engine always applied it:
/// route, method, origin, target and header limits, X-Forwarded-For, rate limit (before the
/// body is read: an abusive client costs as little as possible), query parameters, media
/// type, declared body length. `charge` is false when the same head is checked again after
/// its body arrived (the rate limit was already taken).
pub(crate) fn before_body<'a>(
    app: &SharedState,
    stats: &Stats,
    conn: &Conn,
    head: &Head<'a>,
    content_length: Option<u64>,
    charge: bool,
) -> Next<'a> {
    let (route, credentials) = app.route(head.path);
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
        _ => {}
    }
    if route == Route::Other {
        // With the CORS headers of an allowed origin, so a page sees the 404, not a CORS error.
        let mut a = Answer::plain(404, "not found\n");
        a.cors = cors(app, head, credentials).ok().flatten();
        return Next::Answer(a);
    }
    let cors = match cors(app, head, credentials) {
        Ok(c) => c,
        Err(r) => return Next::Answer(Answer::reject(app, r)),
    };
    let with_cors = |mut a: Answer| {
        a.cors = cors.clone();
        Next::Answer(a)
    };
    let allow = allowed_methods(route);
    if method == "OPTIONS" && allow.contains("OPTIONS") {
        return Next::Answer(preflight(app, head, cors));
    }
    if !allow.split(", ").any(|m| m == method) {
        return with_cors(Answer::not_allowed(allow));
    }
    match route {
        // Answered from the head: nothing to record.
        Route::PosthogFlags => return with_cors(trackers::posthog_flags()),
        Route::PosthogConfig => return with_cors(trackers::posthog_config(head.path)),
        _ => {}
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
    let forwarded = forwarded_client(app, stats, conn, head, charge);
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
        media = match body_media(app, head, route, content_length) {
            Ok(m) => Some(m),
            Err(r) => return refuse(r),
        };
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

/// The methods a route takes (its `Allow`); with `OPTIONS`, it answers preflights.
fn allowed_methods(route: Route) -> &'static str {
    match route {
        Route::Beacon => "GET, HEAD, POST, OPTIONS",
        Route::Batch | Route::Snowplow | Route::Posthog => "POST, OPTIONS",
        Route::PosthogFlags => "GET, POST, OPTIONS",
        Route::PosthogConfig => "GET, HEAD, OPTIONS",
        _ => "GET, HEAD",
    }
}

/// The CORS headers for the request's `Origin` (credentialed where the route says); a foreign
/// origin is refused, its preflight and a beacon it sent anyway alike (text/plain needs no
/// preflight).
fn cors(app: &SharedState, head: &Head<'_>, credentials: bool) -> Result<Option<Cors>, Reject> {
    Ok(match head.header("origin") {
        Some(o) if !app.origin_allowed(o) => return Err(Reject::OriginNotAllowed),
        // Credentials need the exact origin: never `*` with them.
        Some(o) if credentials => Some(Cors::Credentialed(o.to_vec())),
        Some(_) if app.any_origin => Some(Cors::Any),
        Some(o) => Some(Cors::Origin(o.to_vec())),
        None => None,
    })
}

/// The client a trusted proxy's `X-Forwarded-For` names, if any (a malformed one is counted
/// once per request, when `charge`).
fn forwarded_client(
    app: &SharedState,
    stats: &Stats,
    conn: &Conn,
    head: &Head<'_>,
    charge: bool,
) -> Option<IpAddr> {
    let verdict = if app.trusted_proxies.is_empty() {
        Verdict::NotUsed
    } else {
        forwarded_for::client(
            conn.client,
            &app.trusted_proxies,
            head.all("x-forwarded-for"),
        )
    };
    match verdict {
        Verdict::Client(ip) => Some(ip),
        Verdict::NotUsed => None,
        Verdict::Malformed => {
            if charge {
                stats.add(Counter::ForwardedInvalid, 1);
            }
            None
        }
    }
}

/// The media kind of a POST body from its head: refused before a byte of it is read when its
/// type, its content coding or its declared length cannot be taken.
fn body_media(
    app: &SharedState,
    head: &Head<'_>,
    route: Route,
    content_length: Option<u64>,
) -> Result<Kind, Reject> {
    let media = match head.header("content-type").map(media_type).as_deref() {
        None | Some(b"text/plain") => Kind::Text,
        // PostHog's sendBeacon flush: `data=<base64>`.
        Some(b"application/x-www-form-urlencoded")
            if !route.is_batch() || route == Route::Posthog =>
        {
            Kind::Form
        }
        Some(b"application/json") => Kind::Json,
        Some(b"application/x-ndjson") if route.is_batch() => Kind::Json,
        Some(b"multipart/form-data") if !route.is_batch() => Kind::Multipart,
        Some(_) => return Err(Reject::UnsupportedMediaType),
    };
    if let Some(v) = head.header("content-encoding") {
        if super::encoding::coding(v).is_err() {
            return Err(Reject::UnsupportedContentEncoding);
        }
    }
    if content_length.is_some_and(|n| n > app.http.max_body_bytes as u64) {
        return Err(Reject::BodyTooLarge);
    }
    Ok(media)
}

/// The answer once the commit of an accepted record finished.
pub(crate) fn after_commit(
    app: &SharedState,
    stats: &Stats,
    route: Route,
    built: Built,
    cors: Option<Cors>,
    res: Result<(), AppendError>,
) -> Answer {
    let mut a = match res {
        Ok(()) => {
            stats.accepted(built.kind, u64::from(built.records));
            success(route)
        }
        Err(e) => Answer::reject(app, e.into()),
    };
    a.cors = cors;
    a
}

fn health(app: &SharedState, method: &str) -> Answer {
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

fn preflight(app: &SharedState, head: &Head<'_>, cors: Option<Cors>) -> Answer {
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

/// The answer to an accepted beacon: what its tracker expects.
fn success(route: Route) -> Answer {
    let mut a = match route {
        r if r.is_pixel() => Answer {
            body: GIF,
            content_type: Some("image/gif"),
            ..Answer::new(200)
        },
        Route::Posthog => trackers::posthog_captured(),
        Route::Snowplow => trackers::snowplow_captured(),
        _ => Answer::new(204),
    };
    // A cached beacon is a beacon never sent.
    a.no_store = true;
    a
}
