//! The events of a batch body (`http.batch_path`): a JSON array, NDJSON (one JSON value per
//! line), Snowplow's `payload_data` (`{"schema": "...payload_data...", "data": [...]}`) or
//! PostHog's `{"batch": [...]}`. Each event is returned as its own bytes, borrowed from the
//! body, to be checked and compacted like any JSON body.

use serde_json::value::RawValue;

/// Why a batch body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchError {
    /// Not one of the shapes above.
    Invalid,
    /// No event at all.
    Empty,
    /// More than the limit.
    TooMany,
}

#[derive(serde::Deserialize)]
struct Wrapped<'a> {
    #[serde(borrow, default)]
    data: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    batch: Option<Vec<&'a RawValue>>,
}

/// The events of `body`, at most `max`.
pub(crate) fn events(body: &[u8], max: usize) -> Result<Vec<&[u8]>, BatchError> {
    let first = body.iter().position(|b| !b.is_ascii_whitespace());
    let raw: Vec<&RawValue> = match first.map(|i| body[i]) {
        None => return Err(BatchError::Empty),
        Some(b'[') => serde_json::from_slice(body).map_err(|_| BatchError::Invalid)?,
        Some(b'{') => match serde_json::from_slice::<Wrapped<'_>>(body) {
            Ok(Wrapped { data: Some(d), .. }) | Ok(Wrapped { batch: Some(d), .. }) => d,
            // One object, or several lines of them: NDJSON.
            _ => ndjson(body, max)?,
        },
        Some(_) => return Err(BatchError::Invalid),
    };
    if raw.is_empty() {
        return Err(BatchError::Empty);
    }
    if raw.len() > max {
        return Err(BatchError::TooMany);
    }
    Ok(raw.into_iter().map(|r| r.get().as_bytes()).collect())
}

fn ndjson(body: &[u8], max: usize) -> Result<Vec<&RawValue>, BatchError> {
    let mut out = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        if line.trim_ascii().is_empty() {
            continue;
        }
        if out.len() == max {
            return Err(BatchError::TooMany);
        }
        out.push(serde_json::from_slice(line).map_err(|_| BatchError::Invalid)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(body: &str) -> Result<Vec<String>, BatchError> {
        events(body.as_bytes(), 10).map(|v| {
            v.into_iter()
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .collect()
        })
    }

    #[test]
    fn shapes() {
        assert_eq!(
            ev(r#"[{"a":1}, {"b":[2]}]"#).unwrap(),
            [r#"{"a":1}"#, r#"{"b":[2]}"#]
        );
        assert_eq!(
            ev("{\"a\":1}\n\n{\"b\":2}\n").unwrap(),
            [r#"{"a":1}"#, r#"{"b":2}"#]
        );
        assert_eq!(
            ev(r#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{"e":"pv"},{"e":"pp"}]}"#)
                .unwrap(),
            [r#"{"e":"pv"}"#, r#"{"e":"pp"}"#]
        );
        assert_eq!(
            ev(r#"{"api_key":"k","batch":[{"event":"$pageview"}]}"#).unwrap(),
            [r#"{"event":"$pageview"}"#]
        );
        assert_eq!(ev(r#"{"one":"event"}"#).unwrap(), [r#"{"one":"event"}"#]);
        assert_eq!(ev("[]"), Err(BatchError::Empty));
        assert_eq!(ev("  "), Err(BatchError::Empty));
        assert_eq!(ev("[1,"), Err(BatchError::Invalid));
        assert_eq!(ev("{\"a\":1}\nnope"), Err(BatchError::Invalid));
        assert_eq!(ev("x"), Err(BatchError::Invalid));
        assert_eq!(
            ev(&format!("[{}1]", "1,".repeat(10))),
            Err(BatchError::TooMany)
        );
        assert_eq!(ev(&"{}\n".repeat(11)), Err(BatchError::TooMany));
    }
}
