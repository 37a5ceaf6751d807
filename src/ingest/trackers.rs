//! What the trackers' own protocols need beyond a generic beacon, so their requests land as
//! they are: PostHog's body codings (`compression=gzip-js` without `Content-Encoding`, gzip
//! recognised by its magic bytes, `data=<base64>` forms), the answers each tracker expects
//! (PostHog retries anything but 200; its flags and remote config answered "nothing enabled"
//! so a page stays quiet), and where each keeps its own event id.

use super::answer::{Answer, Reject};
use super::encoding::{self, Coding, DecodeError};
use super::request::{Head, Route};
use crate::record::{self, Param};
use std::borrow::Cow;

/// Longest tracker event id kept (a UUID is 36 bytes); a longer one is not an id we trust.
const MAX_EVENT_ID_BYTES: usize = 128;

/// The body of a PostHog capture request as JSON text: gzip undone when the query says
/// `compression=gzip-js` (posthog-js sends no `Content-Encoding`) or the body starts with
/// gzip's magic bytes, a `data=` form field taken out, base64 undone when the query says
/// `compression=base64` or the field is not JSON. `max` caps the decoded size.
pub(crate) fn posthog_body<'b>(
    head: &Head<'_>,
    body: &'b [u8],
    max: usize,
) -> Result<Cow<'b, [u8]>, Reject> {
    let compression = query_param(head, b"compression");
    let gzip = body.starts_with(&[0x1f, 0x8b])
        || compression
            .as_deref()
            .is_some_and(|c| c == b"gzip-js" || c == b"gzip");
    let mut text: Cow<'b, [u8]> = if gzip {
        Cow::Owned(
            encoding::decode(Coding::Gzip, body, max).map_err(|e| match e {
                DecodeError::TooLarge => Reject::DecodedBodyTooLarge,
                DecodeError::Corrupt | DecodeError::Unsupported => Reject::BadContentEncoding,
            })?,
        )
    } else {
        Cow::Borrowed(body)
    };
    if text.starts_with(b"data=") {
        let field = form_field(&text, b"data")?.ok_or(Reject::InvalidJson)?;
        text = Cow::Owned(field);
    }
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if compression.as_deref() == Some(b"base64") || !matches!(first, Some(b'{' | b'[')) {
        let decoded = base64_decode(&text).ok_or(Reject::BadContentEncoding)?;
        if decoded.len() > max {
            return Err(Reject::DecodedBodyTooLarge);
        }
        text = Cow::Owned(decoded);
    }
    Ok(text)
}

/// The decoded value of query parameter `name`, if present.
fn query_param(head: &Head<'_>, name: &[u8]) -> Option<Vec<u8>> {
    let q = head.query?;
    q.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        (k == name).then(|| record::percent_decode(v).into_owned())
    })
}

/// The decoded value of form field `name` in an urlencoded body.
fn form_field(body: &[u8], name: &[u8]) -> Result<Option<Vec<u8>>, Reject> {
    let limits = record::ParamLimits {
        max_params: 64,
        max_name_bytes: 256,
        max_value_bytes: body.len(),
    };
    let mut params: Vec<Param<'_>> = Vec::new();
    record::parse_urlencoded(body, &limits, &mut params).map_err(Reject::Param)?;
    Ok(params
        .into_iter()
        .find(|(k, _)| k.as_ref() == name)
        .map(|(_, v)| v.into_owned()))
}

/// Standard or URL-safe base64, padding optional; a space (a `+` a form decoder turned into
/// one) counts as `+`. `None` for anything else.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' | b' ' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let text = text.trim_ascii();
    let text = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// The tracker's own id of one event of a batch (compact JSON): Snowplow's `eid`, PostHog's
/// `uuid`.
pub(crate) fn event_id_in<'e>(route: Route, event: &'e [u8]) -> Option<Cow<'e, [u8]>> {
    #[derive(serde::Deserialize)]
    struct Ids<'a> {
        #[serde(borrow, default)]
        eid: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        uuid: Option<Cow<'a, str>>,
    }
    let ids: Ids<'e> = serde_json::from_slice(event).ok()?;
    let id = match route {
        Route::Snowplow => ids.eid,
        Route::Posthog => ids.uuid,
        _ => None,
    }?;
    kept(match id {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    })
}

/// The event id among a request's parameters: `eid` on Snowplow's pixel, `param` (when set)
/// on the generic routes.
pub(crate) fn event_id_param<'p>(
    route: Route,
    param: &str,
    params: &'p [Param<'p>],
) -> Option<Cow<'p, [u8]>> {
    let name: &[u8] = match route {
        Route::SnowplowPixel => b"eid",
        Route::Beacon | Route::Gif if !param.is_empty() => param.as_bytes(),
        _ => return None,
    };
    let v = params.iter().find(|(k, _)| k.as_ref() == name)?;
    kept(Cow::Borrowed(v.1.as_ref()))
}

fn kept(id: Cow<'_, [u8]>) -> Option<Cow<'_, [u8]>> {
    (!id.is_empty() && id.len() <= MAX_EVENT_ID_BYTES && !id.iter().any(u8::is_ascii_control))
        .then_some(id)
}

/// What PostHog's capture answers: posthog-js treats anything but 200 as a failure and sends
/// the batch again (a 204 stored it four times).
pub(crate) fn posthog_captured() -> Answer {
    Answer {
        body: br#"{"status":1}"#,
        content_type: Some("application/json"),
        no_store: true,
        ..Answer::new(200)
    }
}

/// Feature flags (`/flags/`, `/decide/`): none. Valid for posthog-js's v2 flags parsing and
/// its older decide parsing, so a page using flags falls back to their defaults quietly.
pub(crate) fn posthog_flags() -> Answer {
    Answer {
        body: br#"{"flags":{},"featureFlags":{},"featureFlagPayloads":{},"errorsWhileComputingFlags":false,"quotaLimited":[],"sessionRecording":false,"supportedCompression":["gzip-js"],"siteApps":[]}"#,
        content_type: Some("application/json"),
        no_store: true,
        ..Answer::new(200)
    }
}

/// Remote config (`/array/<token>/config` and `…/config.js`): nothing enabled. The script
/// form sets no config, and posthog-js then asks the JSON form, which answers.
pub(crate) fn posthog_config(path: &[u8]) -> Answer {
    if path.ends_with(b".js") {
        return Answer {
            body: b"/* beacon-collector: no PostHog remote config; the JSON form answers */\n",
            content_type: Some("application/javascript"),
            no_store: true,
            ..Answer::new(200)
        };
    }
    Answer {
        body: br#"{"supportedCompression":["gzip-js"],"hasFeatureFlags":false,"sessionRecording":false,"heatmaps":false,"surveys":false,"siteApps":[],"captureDeadClicks":false,"capturePerformance":false,"autocaptureExceptions":false,"defaultIdentifiedOnly":true}"#,
        content_type: Some("application/json"),
        no_store: true,
        ..Answer::new(200)
    }
}

/// What Snowplow's collector answers a tp2 POST.
pub(crate) fn snowplow_captured() -> Answer {
    Answer {
        body: b"ok",
        content_type: Some("text/plain; charset=utf-8"),
        no_store: true,
        ..Answer::new(200)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn head<'a>(query: Option<&'a [u8]>) -> Head<'a> {
        Head {
            method: "POST",
            path: b"/e/",
            query,
            target_len: 0,
            headers: &[],
        }
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    const JSON: &[u8] = br#"{"api_key":"phc_x","batch":[{"event":"$pageview","uuid":"0190-a"}]}"#;

    #[test]
    fn posthog_bodies_in_every_coding_posthog_js_sends() {
        let plain = posthog_body(&head(None), JSON, 1 << 20).unwrap();
        assert_eq!(&*plain, JSON);
        let gz = gzip(JSON);
        for q in [Some(&b"compression=gzip-js&ver=1.449.2"[..]), None] {
            assert_eq!(
                &*posthog_body(&head(q), &gz, 1 << 20).unwrap(),
                JSON,
                "{q:?}"
            );
        }
        let b64 = "eyJldmVudCI6IngiLCJ1dWlkIjoidSJ9"; // {"event":"x","uuid":"u"}
        let form = format!("data={}", b64);
        let got = posthog_body(&head(Some(b"compression=base64")), form.as_bytes(), 1 << 20);
        assert_eq!(&*got.unwrap(), br#"{"event":"x","uuid":"u"}"#);
        // A form without compression: the field is JSON, percent-encoded.
        let got = posthog_body(&head(None), b"data=%7B%22event%22%3A1%7D", 1 << 20);
        assert_eq!(&*got.unwrap(), br#"{"event":1}"#);
    }

    #[test]
    fn bad_or_oversize_codings_are_refused() {
        let q = Some(&b"compression=gzip-js"[..]);
        assert_eq!(
            posthog_body(&head(q), b"not gzip", 1 << 20).unwrap_err(),
            Reject::BadContentEncoding
        );
        let big = gzip(&vec![b'x'; 100_000]);
        assert_eq!(
            posthog_body(&head(q), &big, 1000).unwrap_err(),
            Reject::DecodedBodyTooLarge
        );
        assert_eq!(
            posthog_body(&head(None), b"data=%%%", 1 << 20).unwrap_err(),
            Reject::BadContentEncoding
        );
    }

    #[test]
    fn base64_round_trips_with_and_without_padding() {
        for (text, want) in [
            ("", ""),
            ("YQ", "a"),
            ("YQ==", "a"),
            ("YWI=", "ab"),
            ("YWJj", "abc"),
            ("PD8-Pz8_", "<?>???"),
            ("PD8+Pz8/", "<?>???"),
        ] {
            assert_eq!(
                base64_decode(text.as_bytes()).unwrap(),
                want.as_bytes(),
                "{text}"
            );
        }
        assert!(base64_decode(b"Y").is_none());
        assert!(base64_decode(b"Y!==").is_none());
    }

    #[test]
    fn event_ids_where_each_tracker_keeps_them() {
        let sp = br#"{"e":"pv","eid":"6c1f0e7a-2a45-4a8e-9b0f-2f5e1e0c9d11","tv":"js-4.10.1"}"#;
        assert_eq!(
            event_id_in(Route::Snowplow, sp).as_deref(),
            Some(&b"6c1f0e7a-2a45-4a8e-9b0f-2f5e1e0c9d11"[..])
        );
        assert_eq!(event_id_in(Route::Posthog, sp), None);
        let ph = br#"{"event":"$pageview","uuid":"01939c5e-\u0030"}"#;
        assert_eq!(
            event_id_in(Route::Posthog, ph).as_deref(),
            Some(&b"01939c5e-0"[..])
        );
        let long = format!(r#"{{"uuid":"{}"}}"#, "u".repeat(200));
        assert_eq!(event_id_in(Route::Posthog, long.as_bytes()), None);
        let params: Vec<Param<'_>> = vec![(Cow::Borrowed(b"eid"), Cow::Borrowed(b"e-1"))];
        assert_eq!(
            event_id_param(Route::SnowplowPixel, "", &params).as_deref(),
            Some(&b"e-1"[..])
        );
        assert_eq!(event_id_param(Route::Beacon, "", &params), None);
        assert_eq!(
            event_id_param(Route::Beacon, "eid", &params).as_deref(),
            Some(&b"e-1"[..])
        );
    }
}
