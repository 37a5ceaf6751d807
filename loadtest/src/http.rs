//! Beacon-shaped HTTP/1.1 requests and a minimal response reader (status, Content-Length,
//! Connection: close). Written for speed: requests are formatted into a reused buffer and
//! responses parsed in place.

use std::io::Write as _;

/// What request bodies look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyKind {
    /// `text/plain` (navigator.sendBeacon with a string; JSON inside, as many tags send).
    Text,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/json`.
    Json,
}

/// HTTP method.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// Query-string beacons.
    Get,
    /// Body beacons.
    Post,
}

impl Method {
    /// `GET` or `POST`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// Everything needed to format requests.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// `host[:port]` for the Host header.
    pub host: String,
    /// Path from the URL.
    pub path: String,
    /// Query from the URL (without `?`), appended after the generated beacon fields.
    pub query: Option<String>,
    /// Send exactly the URL (no generated fields): the wrk-comparable mode.
    pub fixed: bool,
    /// Method.
    pub method: Method,
    /// Body kind for POST.
    pub body: BodyKind,
    /// Approximate body size for POST.
    pub body_bytes: usize,
    /// Extra header lines, each `Name: value`.
    pub headers: Vec<String>,
    /// Ask for `Connection: close`.
    pub close: bool,
}

const PAGES: [&str; 8] = [
    "https%3A%2F%2Fwww.example.com%2F",
    "https%3A%2F%2Fwww.example.com%2Fproducts%2F42%3Fref%3Dhome",
    "https%3A%2F%2Fwww.example.com%2Fcart",
    "https%3A%2F%2Fwww.example.com%2Fsearch%3Fq%3Drunning%2Bshoes",
    "https%3A%2F%2Fblog.example.com%2F2026%2F11%2Fbeacons",
    "https%3A%2F%2Fwww.example.com%2Fcheckout%2Fpayment",
    "https%3A%2F%2Fm.example.com%2Faccount%2Forders",
    "https%3A%2F%2Fwww.example.com%2Fhelp%2Fshipping",
];

impl RequestSpec {
    /// Formats request number `n` of session `sid` into `out` (cleared first).
    pub fn write(&self, out: &mut Vec<u8>, sid: u64, n: u64, rng: &mut fastrand::Rng) {
        out.clear();
        let m = match self.method {
            Method::Get => "GET",
            Method::Post => "POST",
        };
        let _ = write!(out, "{m} {}", self.path);
        if self.fixed {
            if let Some(q) = &self.query {
                let _ = write!(out, "?{q}");
            }
        } else if self.method == Method::Get {
            // A boomerang-like page-load beacon: page, timers, session and sequence.
            let _ = write!(
                out,
                "?u={}&t_done={}&t_resp={}&t_page={}&nt_dns={}&sid={sid:016x}&n={n}&v=1.7",
                PAGES[rng.usize(..PAGES.len())],
                rng.u32(200..9000),
                rng.u32(20..900),
                rng.u32(100..8000),
                rng.u32(0..120),
            );
            if let Some(q) = &self.query {
                let _ = write!(out, "&{q}");
            }
        } else if let Some(q) = &self.query {
            let _ = write!(out, "?{q}");
        }
        let _ = write!(
            out,
            " HTTP/1.1\r\nHost: {}\r\nUser-Agent: beacon-loadgen/0.1\r\n",
            self.host
        );
        for h in &self.headers {
            let _ = write!(out, "{h}\r\n");
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        if self.method == Method::Post {
            let body = self.body(sid, n, rng);
            let ctype = match self.body {
                BodyKind::Text => "text/plain;charset=UTF-8",
                BodyKind::Form => "application/x-www-form-urlencoded",
                BodyKind::Json => "application/json",
            };
            let _ = write!(
                out,
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            out.extend_from_slice(&body);
        } else {
            out.extend_from_slice(b"\r\n");
        }
    }

    fn body(&self, sid: u64, n: u64, rng: &mut fastrand::Rng) -> Vec<u8> {
        let page = PAGES[rng.usize(..PAGES.len())];
        let t = rng.u32(200..9000);
        let mut b = match self.body {
            BodyKind::Form => format!("u={page}&t_done={t}&sid={sid:016x}&n={n}&pad="),
            BodyKind::Text | BodyKind::Json => {
                format!(
                    "{{\"u\":\"{page}\",\"t_done\":{t},\"sid\":\"{sid:016x}\",\"n\":{n},\"pad\":\""
                )
            }
        }
        .into_bytes();
        let close: &[u8] = if self.body == BodyKind::Form {
            b""
        } else {
            b"\"}"
        };
        let pad = self.body_bytes.saturating_sub(b.len() + close.len());
        b.extend(std::iter::repeat_n(b'x', pad));
        b.extend_from_slice(close);
        b
    }
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Bytes of the head including the blank line.
    pub head_len: usize,
    /// Content-Length (0 if absent).
    pub content_length: usize,
    /// The server will close the connection.
    pub close: bool,
}

/// Why a response could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not an HTTP/1.x response.
    Malformed,
    /// Chunked bodies are not supported (beacon servers answer 204 or a fixed body).
    Chunked,
}

/// Parses a response head from the start of `buf`; `Ok(None)` if incomplete.
pub fn parse_head(buf: &[u8], request_was_head: bool) -> Result<Option<Head>, ParseError> {
    let Some(end) = find_head_end(buf) else {
        if buf.len() > 64 * 1024 {
            return Err(ParseError::Malformed);
        }
        return Ok(None);
    };
    let head = &buf[..end];
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = lines.next().ok_or(ParseError::Malformed)?;
    if !status_line.starts_with(b"HTTP/1.") || status_line.len() < 12 {
        return Err(ParseError::Malformed);
    }
    let status: u16 = std::str::from_utf8(&status_line[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or(ParseError::Malformed)?;
    let mut content_length = 0;
    let mut close = status_line.starts_with(b"HTTP/1.0");
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or(ParseError::Malformed)?;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case(b"close");
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(ParseError::Chunked);
        }
    }
    if request_was_head || status == 204 || status == 304 || (100..200).contains(&status) {
        content_length = 0;
    }
    Ok(Some(Head {
        status,
        head_len: end + 4,
        content_length,
        close,
    }))
}

/// The end of the head: index of the `\r\n\r\n`. Jumps from `\n` to `\n` instead of comparing
/// a window at every byte (this was the generator's hottest function).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let nl = from + i;
        if nl >= 3 && &buf[nl - 3..=nl] == b"\r\n\r\n" {
            return Some(nl - 3);
        }
        from = nl + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let h = parse_head(
            b"HTTP/1.1 204 No Content\r\ncache-control: no-store\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.status, h.content_length, h.close), (204, 0, false));
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 43\r\nConnection: close\r\n\r\nGIF",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.status, h.content_length, h.close), (200, 43, true));
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(None)
        );
        assert_eq!(
            parse_head(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Err(ParseError::Chunked)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 999 Nine\r\n\r\n", false),
            Err(ParseError::Malformed)
        );
        assert_eq!(
            parse_head(b"SSH-2.0\r\n\r\n", false),
            Err(ParseError::Malformed)
        );
    }

    #[test]
    fn head_end_is_the_first_blank_line() {
        assert_eq!(find_head_end(b"\r\n\r\n"), Some(0));
        assert_eq!(
            find_head_end(b"HTTP/1.1 204 X\r\nA: b\r\n\r\nbody\r\n\r\n"),
            Some(20)
        );
        assert_eq!(find_head_end(b"HTTP/1.1 204 X\n\nA: b\r\n\r"), None);
        assert_eq!(find_head_end(b"\n\r\n"), None);
        assert_eq!(find_head_end(b""), None);
    }

    #[test]
    fn requests_vary_and_bodies_have_their_size() {
        let mut rng = fastrand::Rng::with_seed(1);
        let spec = RequestSpec {
            host: "127.0.0.1:8080".into(),
            path: "/beacon".into(),
            query: None,
            fixed: false,
            method: Method::Get,
            body: BodyKind::Text,
            body_bytes: 0,
            headers: vec!["X-A: b".into()],
            close: false,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        spec.write(&mut a, 1, 1, &mut rng);
        spec.write(&mut b, 1, 2, &mut rng);
        assert_ne!(a, b);
        assert!(a.starts_with(b"GET /beacon?u=https%3A%2F%2F"));
        assert!(a.ends_with(b"X-A: b\r\n\r\n"));
        for kind in [BodyKind::Text, BodyKind::Form, BodyKind::Json] {
            let spec = RequestSpec {
                method: Method::Post,
                body: kind,
                body_bytes: 300,
                ..spec.clone()
            };
            spec.write(&mut a, 7, 9, &mut rng);
            let text = String::from_utf8(a.clone()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.contains("Content-Length: 300"), "{head}");
            assert_eq!(body.len(), 300);
            if kind != BodyKind::Form {
                serde_json::from_str::<serde_json::Value>(body).unwrap();
            }
        }
    }
}
