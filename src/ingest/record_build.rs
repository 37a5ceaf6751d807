//! Request → record: the accepted request's head and body (its content coding undone, its
//! form, multipart, JSON or text parsed, a batch split into its events) encoded as records
//! into the worker's commit group, all or none, and charged to the rate limit by what it stored.

use super::answer::{Cors, Reject};
use super::commit::RequestRecords;
use super::conn::{Conn, Inline};
use super::request::Head;
use super::request::Route;
use super::state::SharedState;
use super::stats::Counter;
use super::stats::Stats;
use crate::record::{self, ClientIpSource, Kind, Param, RecordRef};
use std::borrow::Cow;
use std::net::IpAddr;

/// What the head decided ([`super::routes::before_body`]), for [`build_record`].
pub(crate) struct Plan<'a> {
    /// The route (`Beacon` or `Gif`).
    pub(crate) route: Route,
    /// The POST body's media kind, if POST.
    pub(crate) media: Option<Kind>,
    pub(super) forwarded: Option<IpAddr>,
    pub(super) params: Vec<Param<'a>>,
    /// CORS headers to add to the answer.
    pub(crate) cors: Option<Cors>,
    pub(super) received_us: u64,
}

/// What an accepted request added to its commit group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Built {
    /// The kind of its records.
    pub(crate) kind: Kind,
    /// How many (one, or the events of a batch).
    pub(crate) records: u32,
}

/// Builds the record(s) of an accepted request from its head and (complete) body and frames
/// them into `out`: one record, or one per event of a batch, all or none.
pub(crate) fn build_record<'a>(
    app: &SharedState,
    stats: &Stats,
    conn: &'a Conn,
    head: &Head<'a>,
    plan: Plan<'a>,
    body: &'a [u8],
    out: &mut RequestRecords<'_>,
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
pub(crate) const STORED_BYTES_PER_TOKEN: usize = 16 * 1024;

/// [`build_record`] after undoing the body's content coding.
fn build_decoded<'a>(
    app: &SharedState,
    stats: &Stats,
    conn: &'a Conn,
    head: &Head<'a>,
    plan: Plan<'a>,
    body: &'a [u8],
    out: &mut RequestRecords<'_>,
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
    app: &SharedState,
    stats: &Stats,
    conn: &'a Conn,
    head: &Head<'a>,
    mut plan: Plan<'a>,
    body: &'a [u8],
    out: &mut RequestRecords<'_>,
) -> Result<Built, Reject> {
    if plan.route == Route::Posthog {
        // posthog-js codes its body its own way (gzip named in the query, base64 forms).
        let max = app.http.max_decoded_body_bytes;
        if body.len() > max {
            return Err(Reject::BodyTooLarge);
        }
        let text = super::trackers::posthog_body(head, body, max)?;
        return build_batch(app, stats, conn, head, plan, &text, out);
    }
    if plan.route.is_batch() {
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
        stats.add(Counter::BodyBytes, body.len() as u64);
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
    let event_id =
        super::trackers::event_id_param(plan.route, &app.http.event_id_param, &plan.params)
            .map(|id| Cow::Owned(id.into_owned()));
    let meta = Meta::of(conn, head, &plan);
    meta.add(out, kind, plan.params, payload, event_id)?;
    Ok(Built { kind, records: 1 })
}

/// A batch (`http.batch_path`): one JSON record per event, each with the request's metadata
/// and query parameters and an id of its own.
fn build_batch<'a>(
    app: &SharedState,
    stats: &Stats,
    conn: &'a Conn,
    head: &Head<'a>,
    plan: Plan<'a>,
    body: &'a [u8],
    out: &mut RequestRecords<'_>,
) -> Result<Built, Reject> {
    if body.len() > app.http.max_decoded_body_bytes {
        return Err(Reject::BodyTooLarge);
    }
    stats.add(Counter::BodyBytes, body.len() as u64);
    let events = super::batch::events(body, app.http.max_batch_events).map_err(|e| match e {
        super::batch::BatchError::Invalid => Reject::InvalidJson,
        super::batch::BatchError::Empty => Reject::EmptyBatch,
        super::batch::BatchError::TooMany => Reject::TooManyEvents,
    })?;
    let meta = Meta::of(conn, head, &plan);
    // Each record repeats the request's query string and headers: 100 tiny events under an
    // 8 KB query and a 12 KB User-Agent stored 2 MB from a 20 KB request. Bounded here.
    let cap = app.http.max_batch_stored_bytes;
    for event in &events {
        let json = record::compact_json(event, app.http.max_json_depth)?;
        let event_id =
            super::trackers::event_id_in(plan.route, &json).map(|id| Cow::Owned(id.into_owned()));
        meta.add(
            out,
            Kind::Json,
            plan.params.clone(),
            Cow::Owned(json),
            event_id,
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

/// What every record of one request repeats: who sent it, its head, when it arrived.
struct Meta<'h, 'a> {
    conn: &'a Conn,
    head: &'h Head<'a>,
    received_us: u64,
    forwarded: Option<Inline>,
}

impl<'h, 'a> Meta<'h, 'a> {
    fn of(conn: &'a Conn, head: &'h Head<'a>, plan: &Plan<'a>) -> Self {
        Meta {
            conn,
            head,
            received_us: plan.received_us,
            forwarded: plan.forwarded.map(Inline::new),
        }
    }

    /// Adds one record of this request (its `params`, `body` and tracker `event_id`) to
    /// `out`, with a record id of its own.
    fn add(
        &self,
        out: &mut RequestRecords<'_>,
        kind: Kind,
        params: Vec<Param<'a>>,
        body: Cow<'a, [u8]>,
        event_id: Option<Cow<'a, [u8]>>,
    ) -> Result<(), Reject> {
        let (conn, head) = (self.conn, self.head);
        let (client_ip, client_ip_source) = match &self.forwarded {
            Some(ip) => (ip.as_bytes(), ClientIpSource::ForwardedFor),
            None => (conn.client_ip.as_bytes(), conn.client_ip_source),
        };
        let rec = RecordRef {
            id: record::new_id(self.received_us),
            received_us: self.received_us,
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
            event_id,
        };
        out.add(|buf| {
            rec.encode(buf);
            Ok(())
        })
    }
}
