//! Answers, described once for both engines ([`Answer`]), and why a request was refused
//! ([`Reject`]): the one mapping from rejection to status code, metric label and body, the
//! status labels and reason phrases, and the CORS headers an answer carries.

use super::state::SharedState;
use crate::record::{self, ParamError};
use crate::spool::AppendError;

/// A transparent 1x1 GIF (43 bytes).
pub(crate) const GIF: &[u8; 43] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

/// Why a request was refused: the one place that picks status and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
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
    /// More records waiting for the spool than `spool.max_pending_records`.
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
    pub(crate) const ALL: [Reject; 26] = [
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
    pub(crate) fn status(self) -> u16 {
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
    pub(crate) fn label(self) -> &'static str {
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

    pub(super) fn index(self) -> usize {
        Reject::ALL
            .iter()
            .position(|r| r.label() == self.label())
            .expect("every rejection is listed")
    }

    /// Whether the connection must close after the answer: the request body may be left
    /// unread, or the framing cannot be trusted.
    pub(crate) fn closes(self) -> bool {
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

impl From<record::JsonError> for Reject {
    fn from(e: record::JsonError) -> Self {
        match e {
            record::JsonError::Invalid => Reject::InvalidJson,
            record::JsonError::TooDeep => Reject::JsonTooDeep,
        }
    }
}

/// Status codes as static label values (a bounded set; every status we send has its own).
pub(crate) const STATUSES: [u16; 16] = [
    200, 204, 400, 403, 404, 405, 408, 413, 414, 415, 429, 431, 500, 501, 503, 0,
];

pub(super) fn status_index(s: u16) -> usize {
    STATUSES
        .iter()
        .position(|&x| x == s)
        .unwrap_or(STATUSES.len() - 1)
}

/// The label of a status (`"other"` only for a status we never send).
pub(crate) fn status_label(s: u16) -> &'static str {
    const LABELS: [&str; 16] = [
        "200", "204", "400", "403", "404", "405", "408", "413", "414", "415", "429", "431", "500",
        "501", "503", "other",
    ];
    LABELS[status_index(s)]
}

/// The reason phrase of a status we send.
pub(crate) fn reason(s: u16) -> &'static str {
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
pub(crate) enum Cors {
    /// `Access-Control-Allow-Origin: *`.
    Any,
    /// The origin echoed, with `Vary: Origin`.
    Origin(Vec<u8>),
    /// The origin echoed, with `Vary: Origin` and `Access-Control-Allow-Credentials: true`.
    Credentialed(Vec<u8>),
}

/// Request headers a preflight allows: a JSON or compressed body (`fetch` with a
/// `CompressionStream` body and `Content-Encoding`), and Snowplow's anonymous-tracking header.
pub(crate) const ALLOW_HEADERS: &str = "content-type, content-encoding, sp-anonymous";

/// Preflight extras.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Preflight {
    /// The request asked for headers: allow [`ALLOW_HEADERS`].
    pub(crate) allow_headers: bool,
    /// `Access-Control-Max-Age`.
    pub(crate) max_age: u64,
}

/// A response, described once for both engines: status, the few headers we ever send, and a
/// static body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// Status code.
    pub(crate) status: u16,
    /// Body (omitted for HEAD, never sent for 204).
    pub(crate) body: &'static [u8],
    /// `Content-Type`.
    pub(crate) content_type: Option<&'static str>,
    /// `Cache-Control: no-store`.
    pub(crate) no_store: bool,
    /// `Retry-After` seconds.
    pub(crate) retry_after: Option<u64>,
    /// `Allow`.
    pub(crate) allow: Option<&'static str>,
    /// CORS headers for an allowed origin.
    pub(crate) cors: Option<Cors>,
    /// Preflight headers (only with `cors`).
    pub(crate) preflight: Option<Preflight>,
    /// `Connection: close` and close after writing.
    pub(crate) close: bool,
    /// The rejection behind it, if any (for metrics).
    pub(crate) reject: Option<Reject>,
}

impl Answer {
    pub(super) fn new(status: u16) -> Self {
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

    pub(super) fn plain(status: u16, body: &'static str) -> Self {
        Self {
            body: body.as_bytes(),
            content_type: Some("text/plain; charset=utf-8"),
            ..Self::new(status)
        }
    }

    pub(super) fn not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::plain(405, "method not allowed\n")
        }
    }

    /// The answer to a rejection.
    pub(crate) fn reject(app: &SharedState, r: Reject) -> Self {
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
    pub(crate) fn has_body(&self) -> bool {
        self.status >= 200 && self.status != 204
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
}
