//! A request head as either engine hands it over ([`Head`]): method, path, query and header
//! fields borrowed from the engine's buffers, the target and media-type parsing both use, and
//! which endpoint ([`Route`]) a path is for.

use super::state::SharedState;

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

/// Which endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
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
    pub(crate) const ALL: [Route; 6] = [
        Route::Beacon,
        Route::Gif,
        Route::Batch,
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
            Route::Health => "health",
            Route::Live => "live",
            Route::Other => "other",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }

    /// The route of `path`.
    pub(crate) fn of(app: &SharedState, path: &[u8]) -> Route {
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
    fn media_type_normalised() {
        assert_eq!(media_type(b"Text/Plain;charset=UTF-8"), b"text/plain");
        assert_eq!(media_type(b" application/json "), b"application/json");
    }
}
