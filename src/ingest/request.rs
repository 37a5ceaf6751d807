//! A request head as either engine hands it over ([`Head`]): method, path, query and header
//! fields borrowed from the engine's buffers, the target and media-type parsing both use, and
//! which endpoint ([`Route`]) a path is for.

use crate::config::Protocol;

/// A request head as an engine framed it. Header names may be in any case.
pub(crate) struct Head<'a> {
    /// The method token.
    pub(crate) method: &'a str,
    /// Path of the request target (without the query).
    pub(crate) path: &'a [u8],
    /// The query, without `?`, if the target had one.
    pub(crate) query: Option<&'a [u8]>,
    /// Bytes of the target as [`SharedState::http`]'s `max_uri_bytes` counts them (path and query).
    pub(crate) target_len: usize,
    /// Header fields in order.
    pub(crate) headers: &'a [httparse::Header<'a>],
}

impl<'a> Head<'a> {
    /// The first value of header `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Every value of header `name` (lower case), in order.
    pub(crate) fn all(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let hs = self.headers;
        hs.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    pub(super) fn header_bytes(&self) -> usize {
        self.headers
            .iter()
            .map(|h| h.name.len() + h.value.len())
            .sum()
    }
}

/// Splits an origin-form (or absolute-form) request target into path and query.
pub(crate) fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
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

/// `Text/Plain; charset=UTF-8` → `text/plain`.
pub(crate) fn media_type(v: &[u8]) -> Vec<u8> {
    let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
    v[..end].trim_ascii().to_ascii_lowercase()
}

/// Which endpoint a request is for (the metric label of its counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// A generic beacon route.
    Beacon,
    /// A 1x1 GIF route (`<img>` beacons).
    Gif,
    /// A batch route.
    Batch,
    /// Snowplow's tp2 POST.
    Snowplow,
    /// Snowplow's GET pixel.
    SnowplowPixel,
    /// PostHog capture.
    Posthog,
    /// PostHog feature flags (no record).
    PosthogFlags,
    /// PostHog remote config (no record).
    PosthogConfig,
    /// The health check and readiness (`/healthz`, `/readyz`).
    Health,
    /// Liveness (`/livez`).
    Live,
    /// Anything else (404).
    Other,
}

impl Route {
    /// Every route, in the order of their counters.
    pub(crate) const ALL: [Route; 11] = [
        Route::Beacon,
        Route::Gif,
        Route::Batch,
        Route::Snowplow,
        Route::SnowplowPixel,
        Route::Posthog,
        Route::PosthogFlags,
        Route::PosthogConfig,
        Route::Health,
        Route::Live,
        Route::Other,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Route::Beacon => "beacon",
            Route::Gif => "gif",
            Route::Batch => "batch",
            Route::Snowplow => "snowplow",
            Route::SnowplowPixel => "snowplow_pixel",
            Route::Posthog => "posthog",
            Route::PosthogFlags => "posthog_flags",
            Route::PosthogConfig => "posthog_config",
            Route::Health => "health",
            Route::Live => "live",
            Route::Other => "other",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }

    /// The route of a configured protocol.
    pub(crate) fn of_protocol(p: Protocol) -> Route {
        match p {
            Protocol::Beacon => Route::Beacon,
            Protocol::Pixel => Route::Gif,
            Protocol::Batch => Route::Batch,
            Protocol::Snowplow => Route::Snowplow,
            Protocol::SnowplowPixel => Route::SnowplowPixel,
            Protocol::Posthog => Route::Posthog,
            Protocol::PosthogFlags => Route::PosthogFlags,
            Protocol::PosthogConfig => Route::PosthogConfig,
        }
    }

    /// Its body holds several events, one record each.
    pub(crate) fn is_batch(self) -> bool {
        matches!(self, Route::Batch | Route::Snowplow | Route::Posthog)
    }

    /// Answered with a 1x1 GIF.
    pub(crate) fn is_pixel(self) -> bool {
        matches!(self, Route::Gif | Route::SnowplowPixel)
    }
}

/// One beacon route of the current config: a path (or a path prefix) and its route.
#[derive(Debug, Clone)]
pub(crate) struct RouteEntry {
    path: Box<[u8]>,
    prefix: bool,
    /// The route.
    pub(crate) route: Route,
    /// CORS credentials on it.
    pub(crate) credentials: bool,
}

impl RouteEntry {
    /// `path` (a trailing `*` matches any rest) for `route`.
    pub(crate) fn new(path: &str, route: Route, credentials: bool) -> Self {
        let (p, prefix) = match path.strip_suffix('*') {
            Some(p) => (p, true),
            None => (path, false),
        };
        Self {
            path: p.as_bytes().into(),
            prefix,
            route,
            credentials,
        }
    }

    /// Whether a request path is this route's.
    pub(crate) fn matches(&self, path: &[u8]) -> bool {
        if self.prefix {
            path.starts_with(&self.path)
        } else {
            *path == *self.path
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn route_entries_match_exactly_or_by_prefix() {
        let e = RouteEntry::new("/e/", Route::Posthog, false);
        assert!(e.matches(b"/e/") && !e.matches(b"/e") && !e.matches(b"/e/x"));
        let p = RouteEntry::new("/array/*", Route::PosthogConfig, false);
        assert!(p.matches(b"/array/phc_x/config") && p.matches(b"/array/"));
        assert!(!p.matches(b"/arra"));
    }

    #[test]
    fn media_type_normalised() {
        assert_eq!(media_type(b"Text/Plain;charset=UTF-8"), b"text/plain");
        assert_eq!(media_type(b" application/json "), b"application/json");
    }
}
