//! `Content-Encoding` of POST bodies (RFC 9110 §8.4): what PostHog's, Vector's and
//! `CompressionStream`-using tags send. gzip, deflate (zlib, or raw deflate as some clients
//! send it) and zstd are decoded before the body is read as a beacon; the decoded size is capped
//! (`http.max_decoded_body_bytes`), so a small zip bomb costs at most that much memory and is
//! answered 413. Other codings (br included) are refused with 415 rather than stored compressed.

use std::io::Read;

/// A body coding we decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate`: zlib-wrapped per the RFC; raw deflate accepted too.
    Deflate,
    /// `zstd`.
    Zstd,
}

/// Why a coded body cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A coding we do not decode (or more than one): 415.
    Unsupported,
    /// The bytes are not what the coding says: 400.
    Corrupt,
    /// Decoded, it is larger than the cap: 413.
    TooLarge,
}

/// The coding named by a `Content-Encoding` value; `None` for `identity` (or empty).
pub fn coding(value: &[u8]) -> Result<Option<Coding>, DecodeError> {
    let mut found = None;
    for c in value.split(|&b| b == b',') {
        let c = c.trim_ascii().to_ascii_lowercase();
        let this = match c.as_slice() {
            b"" | b"identity" => continue,
            b"gzip" | b"x-gzip" => Coding::Gzip,
            b"deflate" => Coding::Deflate,
            b"zstd" => Coding::Zstd,
            _ => return Err(DecodeError::Unsupported),
        };
        // Stacked codings (`gzip, zstd`) are legal and never sent by a beacon tag.
        if found.replace(this).is_some() {
            return Err(DecodeError::Unsupported);
        }
    }
    Ok(found)
}

/// Decodes `body` into at most `cap` bytes.
pub fn decode(coding: Coding, body: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    match coding {
        Coding::Gzip => read_capped(flate2::read::GzDecoder::new(body), cap),
        Coding::Deflate => match read_capped(flate2::read::ZlibDecoder::new(body), cap) {
            Err(DecodeError::Corrupt) => read_capped(flate2::read::DeflateDecoder::new(body), cap),
            other => other,
        },
        Coding::Zstd => {
            let mut src = body;
            let dec = ruzstd::decoding::StreamingDecoder::new(&mut src)
                .map_err(|_| DecodeError::Corrupt)?;
            read_capped(dec, cap)
        }
    }
}

fn read_capped(r: impl Read, cap: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    r.take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Corrupt)?;
    if out.len() > cap {
        return Err(DecodeError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn codings_by_name() {
        assert_eq!(coding(b"gzip"), Ok(Some(Coding::Gzip)));
        assert_eq!(coding(b" X-GZIP "), Ok(Some(Coding::Gzip)));
        assert_eq!(coding(b"identity"), Ok(None));
        assert_eq!(coding(b"zstd"), Ok(Some(Coding::Zstd)));
        assert_eq!(coding(b"br"), Err(DecodeError::Unsupported));
        assert_eq!(coding(b"gzip, zstd"), Err(DecodeError::Unsupported));
    }

    #[test]
    fn round_trips_and_caps() {
        let text = br#"{"event":"$pageview","props":{"k":"gz"}}"#.repeat(20);
        assert_eq!(decode(Coding::Gzip, &gzip(&text), 4096).unwrap(), text);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        assert_eq!(
            decode(Coding::Deflate, &z.finish().unwrap(), 4096).unwrap(),
            text
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&text).unwrap();
        assert_eq!(
            decode(Coding::Deflate, &raw.finish().unwrap(), 4096).unwrap(),
            text
        );
        let zs = ruzstd::encoding::compress_to_vec(
            &text[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(decode(Coding::Zstd, &zs, 4096).unwrap(), text);
        // A bomb: 10 MB of zeros in ~10 KB; stops at the cap.
        let bomb = gzip(&vec![0u8; 10_000_000]);
        assert!(bomb.len() < 20_000);
        assert_eq!(
            decode(Coding::Gzip, &bomb, 65_536),
            Err(DecodeError::TooLarge)
        );
        assert_eq!(
            decode(Coding::Gzip, b"not gzip", 100),
            Err(DecodeError::Corrupt)
        );
        assert_eq!(
            decode(Coding::Zstd, b"not zstd", 100),
            Err(DecodeError::Corrupt)
        );
    }
}
