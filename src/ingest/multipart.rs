//! `multipart/form-data` bodies (RFC 7578), what `navigator.sendBeacon(url, formData)` and
//! `curl -F` send: every field becomes a parameter, like a form body.
//!
//! Our own parser over the complete body (at most `http.max_body_bytes`, already in memory)
//! rather than `multer`: multer is built for streams (a future per field, a copy of every
//! field into its own `Bytes`), where this is one pass that borrows names and values from the
//! body. A test compares it field for field with multer on generated forms, and a mutation test
//! feeds it broken bodies. File parts are not kept: the parameter's value says the file's name,
//! type and size (`{"filename":"a.png","content_type":"image/png","bytes":1234}`).

use crate::record::{Param, ParamError, ParamLimits};
use std::borrow::Cow;

/// Why a multipart body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MultipartError {
    /// Not multipart/form-data as RFC 7578 frames it (no boundary, no closing delimiter, a
    /// part without `Content-Disposition: form-data; name=...`).
    Malformed,
    /// A parameter limit.
    Param(ParamError),
}

/// The `boundary` parameter of a `multipart/form-data` content type (RFC 2046: 1 to 70
/// characters, quoted or not).
pub(crate) fn boundary(content_type: &[u8]) -> Option<&[u8]> {
    let (_, params) = split_once(content_type, b';')?;
    for p in params.split(|&b| b == b';') {
        let Some((k, v)) = split_once(p, b'=') else {
            continue;
        };
        if k.trim_ascii().eq_ignore_ascii_case(b"boundary") {
            let v = v.trim_ascii();
            let v = v
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v);
            return (1..=70).contains(&v.len()).then_some(v);
        }
    }
    None
}

/// Parses `body` into `params` (name, value), within `limits`.
pub(crate) fn parse<'a>(
    body: &'a [u8],
    boundary: &[u8],
    limits: &ParamLimits,
    params: &mut Vec<Param<'a>>,
) -> Result<(), MultipartError> {
    use MultipartError::Malformed;
    let mut delim = Vec::with_capacity(boundary.len() + 4);
    delim.extend_from_slice(b"\r\n--");
    delim.extend_from_slice(boundary);
    // The first delimiter may open the body (no CRLF before it) or follow a preamble.
    let mut pos = if body.starts_with(&delim[2..]) {
        delim.len() - 2
    } else {
        find(body, &delim, 0).ok_or(Malformed)? + delim.len()
    };
    loop {
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            return Ok(()); // the close delimiter; the epilogue is ignored
        }
        // Transport padding, then the line break that ends the delimiter line.
        let pad = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if !rest[pad..].starts_with(b"\r\n") {
            return Err(Malformed);
        }
        pos += pad + 2;
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let (used, headers) = match httparse::parse_headers(&body[pos..], &mut slots) {
            Ok(httparse::Status::Complete(c)) => c,
            _ => return Err(Malformed),
        };
        let start = pos + used;
        let end = find(body, &delim, start).ok_or(Malformed)?;
        let content = &body[start..end];
        pos = end + delim.len();

        let mut disposition = None;
        let mut content_type: &[u8] = b"";
        for h in headers.iter() {
            if h.name.eq_ignore_ascii_case("content-disposition") {
                disposition = Some(h.value);
            } else if h.name.eq_ignore_ascii_case("content-type") {
                content_type = h.value;
            }
        }
        let d = Disposition::parse(disposition.ok_or(Malformed)?).ok_or(Malformed)?;
        if params.len() >= limits.max_params {
            return Err(MultipartError::Param(ParamError::TooMany));
        }
        if d.name.len() > limits.max_name_bytes {
            return Err(MultipartError::Param(ParamError::NameTooLong));
        }
        let value: Cow<'a, [u8]> = match d.filename {
            None => Cow::Borrowed(content),
            Some(f) => Cow::Owned(file_summary(&f, content_type, content.len())),
        };
        if value.len() > limits.max_value_bytes {
            return Err(MultipartError::Param(ParamError::ValueTooLong));
        }
        params.push((d.name, value));
    }
}

/// What a file part leaves in the record instead of its bytes.
fn file_summary(filename: &[u8], content_type: &[u8], bytes: usize) -> Vec<u8> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut out = Vec::with_capacity(64 + filename.len());
    out.extend_from_slice(b"{\"filename\":");
    serde_json::to_writer(&mut out, &text(filename)).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"content_type\":");
    serde_json::to_writer(&mut out, &text(content_type.trim_ascii()))
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(format!(",\"bytes\":{bytes}}}").as_bytes());
    out
}

/// `Content-Disposition: form-data; name="..."[; filename="..."]`.
struct Disposition<'a> {
    name: Cow<'a, [u8]>,
    filename: Option<Cow<'a, [u8]>>,
}

impl<'a> Disposition<'a> {
    fn parse(v: &'a [u8]) -> Option<Self> {
        let (kind, mut rest) = split_once(v, b';').unwrap_or((v, b""));
        if !kind.trim_ascii().eq_ignore_ascii_case(b"form-data") {
            return None;
        }
        let (mut name, mut filename) = (None, None);
        while !rest.is_empty() {
            let (key, after) = split_once(rest, b'=')?;
            let after = after.trim_ascii_start();
            let (value, next) = if let Some(q) = after.strip_prefix(b"\"") {
                quoted(q)?
            } else {
                let end = after.iter().position(|&b| b == b';').unwrap_or(after.len());
                (Cow::Borrowed(after[..end].trim_ascii()), &after[end..])
            };
            match key.trim_ascii().to_ascii_lowercase().as_slice() {
                b"name" => name = Some(value),
                b"filename" => filename = Some(value),
                _ => {}
            }
            rest = next.strip_prefix(b";").unwrap_or(next).trim_ascii_start();
            if !next.is_empty() && !next.starts_with(b";") {
                return None;
            }
        }
        Some(Self {
            name: name?,
            filename,
        })
    }
}

/// A quoted string after its opening quote: the unescaped value and what follows the closing
/// quote. Browsers percent-encode `"` and line breaks in names; a backslash escapes the next
/// byte (RFC 2616 quoted-pair), which older agents send.
fn quoted(s: &[u8]) -> Option<(Cow<'_, [u8]>, &[u8])> {
    let mut i = 0;
    let mut owned: Option<Vec<u8>> = None;
    while i < s.len() {
        match s[i] {
            b'"' => {
                let v = owned.map_or(Cow::Borrowed(&s[..i]), Cow::Owned);
                return Some((v, s[i + 1..].trim_ascii_start()));
            }
            b'\\' if i + 1 < s.len() => {
                let o = owned.get_or_insert_with(|| s[..i].to_vec());
                o.push(s[i + 1]);
                i += 2;
                continue;
            }
            b => {
                if let Some(o) = owned.as_mut() {
                    o.push(b);
                }
            }
        }
        i += 1;
    }
    None
}

fn split_once(s: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == at)?;
    Some((&s[..i], &s[i + 1..]))
}

/// The first `needle` in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let at = hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        i += at;
        if hay[i..].starts_with(needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParamLimits = ParamLimits {
        max_params: 64,
        max_name_bytes: 256,
        max_value_bytes: 8192,
    };

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn fields(body: &[u8], b: &[u8]) -> Result<Fields, MultipartError> {
        let mut p = Vec::new();
        parse(body, b, &LIMITS, &mut p)?;
        Ok(p.into_iter()
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect())
    }

    #[test]
    fn boundary_quoted_or_not() {
        assert_eq!(
            boundary(b"multipart/form-data; boundary=----WebKitFormBoundaryx7"),
            Some(&b"----WebKitFormBoundaryx7"[..])
        );
        assert_eq!(
            boundary(b"multipart/form-data;charset=utf-8; Boundary=\"a b\""),
            Some(&b"a b"[..])
        );
        assert_eq!(boundary(b"multipart/form-data"), None);
        assert_eq!(boundary(b"multipart/form-data; boundary="), None);
        assert_eq!(
            boundary(format!("m/f; boundary={}", "x".repeat(71)).as_bytes()),
            None
        );
    }

    #[test]
    fn what_chromium_sends() {
        let body = b"------WebKitFormBoundaryAbC\r\n\
            Content-Disposition: form-data; name=\"k\"\r\n\r\n\
            v1\r\n\
            ------WebKitFormBoundaryAbC\r\n\
            Content-Disposition: form-data; name=\"multi\"\r\n\r\n\
            line1\r\nline2\r\n\
            ------WebKitFormBoundaryAbC\r\n\
            Content-Disposition: form-data; name=\"f\"; filename=\"a.png\"\r\n\
            Content-Type: image/png\r\n\r\n\
            \x89PNG\r\n\x1a\n\r\n\
            ------WebKitFormBoundaryAbC--\r\n";
        let f = fields(body, b"----WebKitFormBoundaryAbC").unwrap();
        assert_eq!(f[0], (b"k".to_vec(), b"v1".to_vec()));
        assert_eq!(f[1], (b"multi".to_vec(), b"line1\r\nline2".to_vec()));
        assert_eq!(f[2].0, b"f");
        assert_eq!(
            String::from_utf8(f[2].1.clone()).unwrap(),
            r#"{"filename":"a.png","content_type":"image/png","bytes":8}"#
        );
    }

    #[test]
    fn broken_bodies_are_refused() {
        let b = b"XX";
        for body in [
            &b""[..],
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno close",
            b"--XX\r\nContent-Type: text/plain\r\n\r\nx\r\n--XX--",
            b"--XX\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\r\n\r\nx\r\n--XX--",
            b"--XXjunk\r\n",
        ] {
            assert_eq!(fields(body, b), Err(MultipartError::Malformed), "{body:?}");
        }
        assert_eq!(fields(b"--XX--", b), Ok(vec![]));
        let many: Vec<u8> = (0..65)
            .flat_map(|i| {
                format!("--XX\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nv\r\n")
                    .into_bytes()
            })
            .chain(b"--XX--".iter().copied())
            .collect();
        assert_eq!(
            fields(&many, b),
            Err(MultipartError::Param(ParamError::TooMany))
        );
    }

    /// Field for field the same as multer (a well-kept streaming parser) on generated forms.
    #[test]
    fn same_fields_as_multer() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut rng = fastrand::Rng::with_seed(0x6d75_6c74);
        for case in 0..300 {
            let b = format!("----formdata-{}", rng.u64(..));
            let n = rng.usize(0..8);
            let mut body = Vec::new();
            let mut want = Vec::new();
            for i in 0..n {
                let name = format!("f{i}-{}", rng.alphanumeric());
                let value: Vec<u8> = (0..rng.usize(0..300))
                    .map(|_| {
                        if rng.bool() {
                            rng.u8(..)
                        } else {
                            rng.alphanumeric() as u8
                        }
                    })
                    .collect();
                body.extend_from_slice(
                    format!("--{b}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n")
                        .as_bytes(),
                );
                if rng.bool() {
                    body.extend_from_slice(b"Content-Type: text/plain;charset=UTF-8\r\n");
                }
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(&value);
                body.extend_from_slice(b"\r\n");
                want.push((name.into_bytes(), value));
            }
            body.extend_from_slice(format!("--{b}--\r\n").as_bytes());
            let ours = fields(&body, b.as_bytes()).unwrap();
            let theirs = rt.block_on(async {
                let stream = futures_util::stream::once(async {
                    Ok::<_, std::io::Error>(bytes::Bytes::from(body.clone()))
                });
                let mut m = multer::Multipart::new(stream, b.clone());
                let mut out = Vec::new();
                while let Some(f) = m.next_field().await.unwrap() {
                    let name = f.name().unwrap().as_bytes().to_vec();
                    out.push((name, f.bytes().await.unwrap().to_vec()));
                }
                out
            });
            assert_eq!(ours, theirs, "case {case}");
            assert_eq!(ours, want, "case {case}");
        }
    }

    /// Mutated bodies never panic and never exceed the limits.
    #[test]
    fn mutated_bodies_are_refused_or_parsed_within_limits() {
        let base = b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n\
            --XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n\r\nbin\r\n--XX--\r\n";
        let mut rng = fastrand::Rng::with_seed(7);
        let pieces: [&[u8]; 8] = [b"\r\n", b"--XX", b"\"", b";", b"=", b"\\", b"--", b"name"];
        for _ in 0..20_000 {
            let mut v = base.to_vec();
            for _ in 0..rng.usize(1..5) {
                let at = rng.usize(..=v.len());
                if rng.bool() && !v.is_empty() {
                    v.remove(at.min(v.len() - 1));
                } else {
                    v.splice(at..at, pieces[rng.usize(..pieces.len())].iter().copied());
                }
            }
            let mut p = Vec::new();
            if parse(&v, b"XX", &LIMITS, &mut p).is_ok() {
                assert!(p.len() <= LIMITS.max_params);
                assert!(p
                    .iter()
                    .all(|(n, v)| n.len() <= LIMITS.max_name_bytes
                        && v.len() <= LIMITS.max_value_bytes));
            }
        }
    }
}
