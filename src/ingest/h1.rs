//! HTTP/1.1 framing for the native engine, on `httparse`: the request head and the strict
//! checks of RFC 9112 around it (what decides where a request ends must be unambiguous, or the
//! request is refused and the connection closed), chunked bodies, and writing answers.
//!
//! Everything here works on bytes already in memory and never allocates for a request that
//! is complete in one read, but for a chunked body (copied out of its chunks).

use super::answer::{reason, Answer, Cors, Reject, ALLOW_HEADERS};
use httparse::{Header, Status};
use std::mem::MaybeUninit;

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A complete, checked request head.
#[derive(Debug)]
pub(crate) struct ParsedHead<'b> {
    /// Method token.
    pub(crate) method: &'b str,
    /// Request target as sent.
    pub(crate) target: &'b [u8],
    /// True for HTTP/1.0.
    pub(crate) http10: bool,
    /// Bytes of the head, final CRLF included.
    pub(crate) len: usize,
    /// How the body is delimited.
    pub(crate) framing: Framing,
    /// The connection may carry another request after this one.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue`.
    pub(crate) expect_continue: bool,
}

/// Parses the head at the start of `buf` into `headers`. `Ok(None)`: incomplete (and not yet
/// over `max_head`). Errors are the answer to send before closing.
pub(crate) fn parse_head<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<Header<'b>>],
    max_head: usize,
) -> Result<Option<(ParsedHead<'b>, &'h [Header<'b>])>, Reject> {
    // Uninitialised header slots: no memset of the whole array for every request.
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => {
            return if buf.len() > max_head {
                Err(Reject::HeadersTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadersTooLarge),
        Err(_) => return Err(Reject::BadRequest),
    };
    if len > max_head {
        return Err(Reject::HeadersTooLarge);
    }
    let method = req.method.expect("complete");
    let target = check_target(req.path.expect("complete").as_bytes())?;
    let http10 = req.version.expect("complete") == 0;
    let taken: &'h mut [Header<'b>] = std::mem::take(&mut req.headers);
    let hs: &'h [Header<'b>] = taken;
    let facts = check_headers(hs, http10)?;
    Ok(Some((
        ParsedHead {
            method,
            target,
            http10,
            len,
            framing: facts.framing,
            keep_alive: facts.keep_alive,
            expect_continue: facts.expect_continue,
        },
        hs,
    )))
}

/// What the headers of a request say about its framing and its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadFacts {
    /// How the body is delimited.
    pub(crate) framing: Framing,
    /// The connection may carry another request after this one.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue` (HTTP/1.1 only).
    pub(crate) expect_continue: bool,
}

/// The RFC 9112 checks on a request's headers that decide where it ends and whom it is for:
/// one `Content-Length` value, `Transfer-Encoding` only as a final `chunked` (other codings
/// 501), never both (§6.1: a smuggling attempt), exactly one valid `Host` on HTTP/1.1 (§3.2).
/// Both engines call this, so they refuse the same heads.
pub(crate) fn check_headers(hs: &[Header<'_>], http10: bool) -> Result<HeadFacts, Reject> {
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut hosts = 0;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in hs {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value).ok_or(Reject::BadRequest)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(Reject::BadRequest);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te_seen = true;
            for coding in tokens(h.value) {
                if chunked {
                    // Anything after `chunked`: the body's end cannot be found reliably.
                    return Err(Reject::BadRequest);
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    return Err(Reject::UnsupportedTransferCoding);
                }
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if !valid_host(h.value) {
                return Err(Reject::BadRequest);
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive_token |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    // RFC 9112 §6.1: both is a request smuggling attempt; §3.2: exactly one valid Host.
    if te_seen && (content_length.is_some() || !chunked || http10) {
        return Err(Reject::BadRequest);
    }
    if hosts > 1 || (!http10 && hosts == 0) {
        return Err(Reject::BadRequest);
    }
    let framing = match (chunked, content_length) {
        (true, _) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    let keep_alive = !close && (!http10 || keep_alive_token);
    Ok(HeadFacts {
        framing,
        keep_alive,
        expect_continue: expect_continue && !http10,
    })
}

/// The request target without its fragment, if it is one we can route: origin form
/// (`/path?query`), absolute form with an `http`/`https` scheme and a plain authority, or `*`.
/// The characters allowed are those of the `http` crate's URI parser (so both engines refuse
/// the same targets), and the target must be UTF-8.
pub(crate) fn check_target(t: &[u8]) -> Result<&[u8], Reject> {
    if t == b"*" {
        return Ok(t);
    }
    let path_start = if t.first() == Some(&b'/') {
        0
    } else {
        let rest = [&b"http://"[..], b"https://"]
            .iter()
            .find(|s| t.len() >= s.len() && t[..s.len()].eq_ignore_ascii_case(s))
            .map(|s| s.len())
            .ok_or(Reject::BadRequest)?;
        let end = t[rest..]
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
            .map_or(t.len(), |i| rest + i);
        let authority = &t[rest..end];
        let ok = !authority.is_empty()
            && authority
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
        if !ok {
            return Err(Reject::BadRequest);
        }
        end
    };
    // Fast path, branch-free so it vectorises: a target of printable ASCII without a byte the
    // path and query maps below treat differently (or refuse) is valid as it is.
    let special = t[path_start..].iter().fold(false, |acc, &b| {
        acc | !(0x21..0x7f).contains(&b)
            | (b == b'<')
            | (b == b'>')
            | (b == b'`')
            | (b == b'"')
            | (b == b'#')
    });
    if !special {
        return Ok(t);
    }
    let mut in_query = false;
    let mut end = t.len();
    let mut high = false;
    for (i, &b) in t.iter().enumerate().skip(path_start) {
        let class = if in_query {
            QUERY[b as usize]
        } else {
            PATH[b as usize]
        };
        match class {
            OK => {}
            HIGH => high = true,
            QUERY_START => in_query = true,
            FRAGMENT => {
                end = i;
                break;
            }
            _ => return Err(Reject::BadRequest),
        }
    }
    let t = &t[..end];
    if high && std::str::from_utf8(t).is_err() {
        return Err(Reject::BadRequest);
    }
    Ok(t)
}

const BAD: u8 = 0;
const OK: u8 = 1;
const HIGH: u8 = 2;
const QUERY_START: u8 = 3;
const FRAGMENT: u8 = 4;

/// Byte classes of a path, as the `http` crate's URI parser has them.
const PATH: [u8; 256] = byte_classes(false);
/// Byte classes of a query.
const QUERY: [u8; 256] = byte_classes(true);

const fn byte_classes(query: bool) -> [u8; 256] {
    let mut t = [BAD; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = match b {
            b'#' => FRAGMENT,
            b'?' if !query => QUERY_START,
            0x80..=0xFF => HIGH,
            0x21 | 0x24..=0x3B | 0x3D => OK,
            0x3F..=0x7E if query => OK,
            0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E | b'"' | b'{' | b'}' if !query => OK,
            _ => BAD,
        };
        i += 1;
    }
    t
}

fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Comma-separated tokens, trimmed, empty ones skipped.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// `uri-host [ ":" port ]`: reg-name, IPv4 or `[IPv6]` characters only (no spaces, no `/`).
pub(crate) fn valid_host(v: &[u8]) -> bool {
    v.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

/// A chunked body decoded from the bytes after the head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// More bytes are needed.
    Incomplete,
    /// The body, how many bytes (last chunk and trailers included) it took, and how many
    /// chunks with data it came in.
    Done(Vec<u8>, usize, usize),
}

/// Longest chunk-size line (with extensions) or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Decodes a chunked body at the start of `buf`. Over `max_body` decoded bytes (counted from
/// the declared sizes, before the data arrives): 413.
pub(crate) fn decode_chunked(buf: &[u8], max_body: usize) -> Result<Chunked, Reject> {
    let mut pos = 0;
    let mut declared = 0usize;
    let mut body_len = 0usize;
    // Two passes: the first finds the end (and checks the sizes) without copying, so an
    // incomplete body costs no allocation; the second copies the data out.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    loop {
        let Some(eol) = find_crlf(&buf[pos..], MAX_CHUNK_LINE)? else {
            return Ok(Chunked::Incomplete);
        };
        let line = &buf[pos..pos + eol];
        let size_part = match line.iter().position(|&b| b == b';') {
            Some(i) => &line[..i],
            None => line,
        };
        let size_part = size_part.trim_ascii_end();
        if size_part.is_empty() || size_part.len() > 16 {
            return Err(Reject::BadRequest);
        }
        let mut size = 0usize;
        for &d in size_part {
            let v = (d as char).to_digit(16).ok_or(Reject::BadRequest)? as usize;
            size = size.checked_mul(16).ok_or(Reject::BodyTooLarge)? + v;
        }
        declared = declared.saturating_add(size);
        if declared > max_body {
            return Err(Reject::BodyTooLarge);
        }
        pos += eol + 2;
        if size == 0 {
            // Trailer fields (ignored), then the empty line.
            let start = pos;
            loop {
                let Some(eol) = find_crlf(&buf[pos..], MAX_CHUNK_LINE)? else {
                    return Ok(Chunked::Incomplete);
                };
                let line = &buf[pos..pos + eol];
                pos += eol + 2;
                if eol == 0 {
                    break;
                }
                if !is_field_line(line) {
                    return Err(Reject::BadRequest);
                }
                if pos - start > MAX_CHUNK_LINE {
                    return Err(Reject::BadRequest);
                }
            }
            let mut body = Vec::with_capacity(body_len);
            for &(a, b) in &spans {
                body.extend_from_slice(&buf[a..b]);
            }
            return Ok(Chunked::Done(body, pos, spans.len()));
        }
        if buf.len() < pos + size + 2 {
            return Ok(Chunked::Incomplete);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(Reject::BadRequest);
        }
        spans.push((pos, pos + size));
        body_len += size;
        pos += size + 2;
    }
}

/// `name: value` with a token name (trailer fields are checked like header fields).
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0
        && line[..colon]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && line[colon + 1..]
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

/// Position of the next CRLF within `limit` bytes; a bare CR or LF is an error.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, Reject> {
    for (i, &b) in buf.iter().enumerate().take(limit + 1) {
        match b {
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err(Reject::BadRequest),
                    None => Ok(None),
                };
            }
            b'\n' => return Err(Reject::BadRequest),
            _ => {}
        }
    }
    if buf.len() > limit {
        Err(Reject::BadRequest)
    } else {
        Ok(None)
    }
}

/// `HTTP/1.1 100 Continue`.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What a request says about how to answer it on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AnswerTo {
    /// A HEAD request: the answer's headers without its body bytes.
    pub(crate) head_only: bool,
    /// An HTTP/1.0 client asked to keep the connection: say `Connection: keep-alive`.
    pub(crate) keep_alive_10: bool,
}

impl AnswerTo {
    /// For a request whose head could not be read (framing errors, timeouts): a plain answer.
    pub(crate) const UNREAD: AnswerTo = AnswerTo {
        head_only: false,
        keep_alive_10: false,
    };

    /// For the request with head `ph`.
    pub(crate) fn of(ph: &ParsedHead<'_>) -> Self {
        Self {
            head_only: ph.method == "HEAD",
            keep_alive_10: ph.http10 && ph.keep_alive,
        }
    }
}

/// The connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Kept for the next request.
    Keep,
    /// Closed: the answer says `Connection: close`.
    Close,
}

impl After {
    /// `Close` when `close`.
    pub(crate) fn close_if(close: bool) -> Self {
        if close {
            After::Close
        } else {
            After::Keep
        }
    }
}

/// Appends `a` as an HTTP/1.1 response to a request answered as `to`, saying what happens to
/// the connection `after` it.
pub(crate) fn write_answer(
    out: &mut Vec<u8>,
    a: &Answer,
    date: &[u8; 29],
    to: AnswerTo,
    after: After,
) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(num.format(a.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(a.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut header = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    if let Some(ct) = a.content_type {
        header(b"content-type", ct.as_bytes());
    }
    if a.no_store {
        header(b"cache-control", b"no-store");
    }
    if let Some(s) = a.retry_after {
        header(b"retry-after", num.format(s).as_bytes());
    }
    if let Some(allow) = a.allow {
        header(b"allow", allow.as_bytes());
    }
    match &a.cors {
        Some(Cors::Any) => header(b"access-control-allow-origin", b"*"),
        Some(Cors::Origin(o)) => {
            header(b"access-control-allow-origin", o);
            header(b"vary", b"Origin");
        }
        Some(Cors::Credentialed(o)) => {
            header(b"access-control-allow-origin", o);
            header(b"access-control-allow-credentials", b"true");
            header(b"vary", b"Origin");
        }
        None => {}
    }
    if let (Some(p), Some(_)) = (a.preflight, &a.cors) {
        header(b"access-control-allow-methods", b"GET, HEAD, POST");
        if p.allow_headers {
            header(b"access-control-allow-headers", ALLOW_HEADERS.as_bytes());
        }
        header(b"access-control-max-age", num.format(p.max_age).as_bytes());
        header(
            b"vary",
            b"Access-Control-Request-Method, Access-Control-Request-Headers",
        );
    }
    if after == After::Close {
        header(b"connection", b"close");
    } else if to.keep_alive_10 {
        header(b"connection", b"keep-alive");
    }
    if a.has_body() {
        header(b"content-length", num.format(a.body.len()).as_bytes());
    }
    header(b"date", date);
    out.extend_from_slice(b"\r\n");
    if a.has_body() && !to.head_only {
        out.extend_from_slice(a.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<ParsedHead<'_>>, Reject> {
        let mut hs = [const { MaybeUninit::uninit() }; 32];
        // The headers borrow `raw`, not the array: copy the result out.
        parse_head(raw, &mut hs, 8192).map(|o| o.map(|(h, _)| h))
    }

    #[test]
    fn framing_rules_of_rfc_9112() {
        fn ok(raw: &[u8]) -> ParsedHead<'_> {
            parse(raw).unwrap().unwrap()
        }
        assert_eq!(
            ok(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").framing,
            Framing::None
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
                .framing,
            Framing::Length(5)
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").framing,
            Framing::Chunked
        );
        fn err(raw: &[u8]) -> Reject {
            parse(raw).unwrap_err()
        }
        let both = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(err(both), Reject::BadRequest);
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Reject::UnsupportedTransferCoding
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\n\r\n"),
            Reject::BadRequest,
            "no Host"
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n"),
            Reject::BadRequest,
            "obs-fold"
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\rX\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
            Reject::BadRequest
        );
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert!(ok(b"GET / HTTP/1.0\r\n\r\n").http10);
        assert!(!ok(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(ok(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            decode_chunked(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: v\r\n\r\nNEXT", 100),
            Ok(Chunked::Done(b"abcde".to_vec(), 30, 2))
        );
        assert_eq!(decode_chunked(b"3\r\nab", 100), Ok(Chunked::Incomplete));
        assert_eq!(decode_chunked(b"0\r\n", 100), Ok(Chunked::Incomplete));
        assert_eq!(decode_chunked(b"65\r\n", 100), Err(Reject::BodyTooLarge));
        assert_eq!(decode_chunked(b"zz\r\n", 100), Err(Reject::BadRequest));
        assert_eq!(
            decode_chunked(b"3\r\nabcX\r\n", 100),
            Err(Reject::BadRequest)
        );
        assert_eq!(
            decode_chunked(b"ffffffffffffffffff\r\n", 100),
            Err(Reject::BadRequest)
        );
    }

    const VALID: [&[u8]; 5] = [
        b"GET /beacon?a=1&b=%20 HTTP/1.1\r\nHost: t\r\nUser-Agent: x\r\n\r\n",
        b"POST /beacon HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /beacon HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;e=1\r\nde\r\n0\r\nT: 1\r\n\r\n",
        b"GET http://t/beacon.gif?x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"OPTIONS /beacon HTTP/1.1\r\nHost: t\r\nOrigin: https://a\r\n\r\n",
    ];

    /// Parses what a connection would have after `cut` bytes: head, then body as far as it is
    /// there. Checks that nothing is read past the bytes given and the body stays in its limit.
    fn parse_prefix(buf: &[u8], max_body: usize) {
        let mut hs = [const { MaybeUninit::uninit() }; 16];
        if let Ok(Some((h, headers))) = parse_head(buf, &mut hs, 8192) {
            assert!(h.len <= buf.len() && headers.len() <= 16);
            let rest = &buf[h.len..];
            if h.framing == Framing::Chunked {
                if let Ok(Chunked::Done(v, used, chunks)) = decode_chunked(rest, max_body) {
                    assert!(used <= rest.len());
                    assert!(v.len() <= max_body && v.len() <= used);
                    assert!(chunks <= used);
                }
            }
        }
    }

    #[test]
    fn a_request_split_anywhere_is_incomplete_never_wrong() {
        for raw in VALID {
            let mut hs = [const { MaybeUninit::uninit() }; 16];
            let (head, _) = parse_head(raw, &mut hs, 8192).unwrap().unwrap();
            for cut in 0..head.len {
                let mut hs = [const { MaybeUninit::uninit() }; 16];
                assert!(
                    matches!(parse_head(&raw[..cut], &mut hs, 8192), Ok(None)),
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(raw)
                );
            }
            if head.framing == Framing::Chunked {
                let body = &raw[head.len..];
                for cut in 0..body.len() {
                    assert_eq!(decode_chunked(&body[..cut], 1024), Ok(Chunked::Incomplete));
                }
                assert_eq!(
                    decode_chunked(body, 1024),
                    Ok(Chunked::Done(b"abcde".to_vec(), body.len(), 2))
                );
            }
        }
    }

    #[test]
    fn random_and_mutated_bytes_split_at_every_offset_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0xF022);
        for i in 0..3000 {
            let buf: Vec<u8> = if i % 4 == 0 {
                (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect()
            } else {
                let mut m = VALID[rng.usize(..VALID.len())].to_vec();
                for _ in 0..rng.usize(1..5) {
                    let at = rng.usize(..m.len().max(1)).min(m.len());
                    match rng.u8(..4) {
                        0 if at < m.len() => m[at] = rng.u8(..),
                        1 => m.insert(at, *rng.choice(b"\r\n:; \t0fF-".iter()).unwrap()),
                        2 if at < m.len() => {
                            m.remove(at);
                        }
                        _ => m
                            .splice(
                                at..at,
                                b"\r\nTransfer-Encoding: chunked\r\n".iter().copied(),
                            )
                            .for_each(drop),
                    }
                }
                m
            };
            for cut in 0..=buf.len() {
                parse_prefix(&buf[..cut], 64);
            }
        }
    }

    #[test]
    fn targets_are_checked_like_the_http_crate() {
        assert_eq!(check_target(b"/b?x=1#frag"), Ok(&b"/b?x=1"[..]));
        assert_eq!(check_target(b"*"), Ok(&b"*"[..]));
        assert_eq!(
            check_target(b"http://h.example:80/b"),
            Ok(&b"http://h.example:80/b"[..])
        );
        for bad in [
            &b"b?x"[..],
            b"?x",
            b"/a<b",
            b"/a?\"",
            b"ftp://h/b",
            b"http://h h/",
            b"/\xff",
        ] {
            assert_eq!(check_target(bad), Err(Reject::BadRequest), "{bad:?}");
        }
        assert_eq!(
            check_target("/caf\u{e9}".as_bytes()),
            Ok("/caf\u{e9}".as_bytes())
        );
    }
}
