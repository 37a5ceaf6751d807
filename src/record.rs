//! The beacon record: its id, its binary encoding (the payload of a BATCH frame, see
//! `docs/PROTOCOL.md`), decoding of query strings and form bodies, and its NDJSON form.
//!
//! Values are kept exactly. On the wire every value is raw bytes with a length. In NDJSON a
//! value that is valid UTF-8 is a JSON string (newlines and control bytes escaped by JSON, so a
//! record is always one line); a value that is not valid UTF-8 becomes `{"b64": "<base64>"}`,
//! so no byte is lost or replaced.

use bytes::{BufMut, BytesMut};
use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

/// One decoded parameter: name and value, raw bytes, borrowed when nothing was decoded.
pub(crate) type Param<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// What a beacon carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// `GET`/`HEAD` with a query string.
    Query = 0,
    /// `POST` with `application/x-www-form-urlencoded`.
    Form = 1,
    /// `POST` with a JSON body (`application/json`, or `text/plain` that is valid JSON).
    Json = 2,
    /// `POST` with a `text/plain` body that is not JSON, kept as it came.
    Text = 3,
    /// `POST` with `multipart/form-data` (`sendBeacon` with `FormData`): fields as parameters.
    Multipart = 4,
}

impl Kind {
    /// Every kind, in code order.
    pub(crate) const ALL: [Kind; 5] = [
        Kind::Query,
        Kind::Form,
        Kind::Json,
        Kind::Text,
        Kind::Multipart,
    ];
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Kind::Query,
            1 => Kind::Form,
            2 => Kind::Json,
            3 => Kind::Text,
            4 => Kind::Multipart,
            _ => return None,
        })
    }

    /// The name used in NDJSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Query => "query",
            Kind::Form => "form",
            Kind::Json => "json",
            Kind::Text => "text",
            Kind::Multipart => "multipart",
        }
    }
}

/// Where a record's `client_ip` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientIpSource {
    /// The TCP peer: no proxy information was configured or sent.
    Peer = 0,
    /// A PROXY protocol v1 header.
    ProxyV1 = 1,
    /// A PROXY protocol v2 header.
    ProxyV2 = 2,
    /// `X-Forwarded-For`, right-most hop not in `client_ip.trusted_proxies`.
    ForwardedFor = 3,
}

impl ClientIpSource {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Peer,
            1 => Self::ProxyV1,
            2 => Self::ProxyV2,
            3 => Self::ForwardedFor,
            _ => return None,
        })
    }

    /// The name used in NDJSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::ProxyV1 => "proxy_v1",
            Self::ProxyV2 => "proxy_v2",
            Self::ForwardedFor => "x_forwarded_for",
        }
    }
}

/// The IP part of an `ip:port` peer string (`[v6]:port` included).
pub(crate) fn peer_ip(peer: &[u8]) -> &[u8] {
    let host = match peer.iter().rposition(|&b| b == b':') {
        Some(i) => &peer[..i],
        None => peer,
    };
    match host {
        [b'[', inner @ .., b']'] => inner,
        _ => host,
    }
}

/// A record, borrowed from a request (to encode) or from a frame (after decoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// UUIDv7, unique per beacon: downstream deduplicates replays by it.
    pub id: [u8; 16],
    /// Receive time, microseconds since the Unix epoch.
    pub received_us: u64,
    /// `ip:port` of the TCP peer.
    pub peer: &'a [u8],
    /// The client's IP address (ASCII, no port): the TCP peer's, or what a trusted proxy said.
    pub client_ip: &'a [u8],
    /// Where `client_ip` came from.
    pub client_ip_source: ClientIpSource,
    /// HTTP method.
    pub method: &'a [u8],
    /// Request path without the query.
    pub path: &'a [u8],
    /// What the beacon carried.
    pub kind: Kind,
    /// `User-Agent` header, if sent.
    pub user_agent: Option<&'a [u8]>,
    /// `Referer` header, if sent.
    pub referer: Option<&'a [u8]>,
    /// `Origin` header, if sent.
    pub origin: Option<&'a [u8]>,
    /// Decoded query parameters, then form parameters, in order, duplicates kept.
    pub params: Vec<Param<'a>>,
    /// For `Json`: compact JSON text; for `Text`: the body as sent; otherwise empty.
    pub body: Cow<'a, [u8]>,
    /// The tracker's own id of the event (Snowplow's `eid`, PostHog's `uuid`, a configured
    /// parameter), when it sent one: the brokers drop the tracker's retries by it.
    pub event_id: Option<Cow<'a, [u8]>>,
}

/// Why a record could not be decoded from a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The payload ended before the record did.
    #[error("record truncated")]
    Truncated,
    /// Bytes left after the last field.
    #[error("{0} trailing bytes after record")]
    Trailing(usize),
    /// Unknown `kind` byte.
    #[error("unknown record kind {0}")]
    BadKind(u8),
    /// Unknown `client_ip_source` byte.
    #[error("unknown client_ip_source {0}")]
    BadSource(u8),
}

const ABSENT: u32 = u32::MAX;

impl<'a> RecordRef<'a> {
    /// Appends the binary encoding (PROTOCOL.md, "Record") to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let params_len: usize = self.params.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        out.reserve(
            16 + 8
                + 1
                + 4 * 8
                + self.peer.len()
                + 5
                + self.client_ip.len()
                + self.method.len()
                + self.path.len()
                + params_len
                + self.body.len()
                + self.user_agent.map_or(0, <[u8]>::len)
                + self.referer.map_or(0, <[u8]>::len)
                + self.origin.map_or(0, <[u8]>::len)
                + self.event_id.as_ref().map_or(4, |e| 4 + e.len()),
        );
        out.put_slice(&self.id);
        out.put_u64(self.received_us);
        out.put_u8(self.kind as u8);
        put_bytes(out, self.peer);
        put_bytes(out, self.method);
        put_bytes(out, self.path);
        put_opt(out, self.user_agent);
        put_opt(out, self.referer);
        put_opt(out, self.origin);
        out.put_u32(self.params.len() as u32);
        for (k, v) in &self.params {
            put_bytes(out, k);
            put_bytes(out, v);
        }
        put_bytes(out, &self.body);
        // Appended fields (added after version 1 of the layout): a decoder that finds the
        // record ending before them uses their documented defaults, so records spooled by an
        // older collector still decode after an upgrade.
        put_bytes(out, self.client_ip);
        out.put_u8(self.client_ip_source as u8);
        put_opt(out, self.event_id.as_deref());
    }

    /// Decodes one record; the whole slice must be the record.
    pub(crate) fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let id: [u8; 16] = r.take(16)?.try_into().expect("16 bytes");
        let received_us = u64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let kind_byte = r.take(1)?[0];
        let kind = Kind::from_u8(kind_byte).ok_or(DecodeError::BadKind(kind_byte))?;
        let peer = r.bytes()?;
        let method = r.bytes()?;
        let path = r.bytes()?;
        let user_agent = r.opt()?;
        let referer = r.opt()?;
        let origin = r.opt()?;
        let n = r.u32()? as usize;
        // Each pair needs at least 8 bytes: never trust a count to size an allocation.
        let mut params = Vec::with_capacity(n.min((buf.len() - r.pos) / 8));
        for _ in 0..n {
            let k = r.bytes()?;
            let v = r.bytes()?;
            params.push((Cow::Borrowed(k), Cow::Borrowed(v)));
        }
        let body = Cow::Borrowed(r.bytes()?);
        let (client_ip, client_ip_source) = if r.pos == buf.len() {
            (peer_ip(peer), ClientIpSource::Peer)
        } else {
            let ip = r.bytes()?;
            let b = r.take(1)?[0];
            (
                ip,
                ClientIpSource::from_u8(b).ok_or(DecodeError::BadSource(b))?,
            )
        };
        // Appended after client_ip: absent in records of collectors before event ids.
        let event_id = if r.pos == buf.len() {
            None
        } else {
            r.opt()?.map(Cow::Borrowed)
        };
        if r.pos != buf.len() {
            return Err(DecodeError::Trailing(buf.len() - r.pos));
        }
        Ok(RecordRef {
            id,
            received_us,
            peer,
            client_ip,
            client_ip_source,
            method,
            path,
            kind,
            user_agent,
            referer,
            origin,
            params,
            body,
            event_id,
        })
    }

    /// Appends the record as one NDJSON line (with the trailing `\n`).
    pub(crate) fn write_ndjson(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":\"");
        write_uuid(&self.id, out);
        out.extend_from_slice(b"\",\"received_at\":\"");
        crate::time::write_rfc3339_micros(self.received_us, out);
        out.extend_from_slice(b"\",\"peer\":");
        json_value(out, self.peer);
        out.extend_from_slice(b",\"client_ip\":");
        json_value(out, self.client_ip);
        out.extend_from_slice(b",\"client_ip_source\":\"");
        out.extend_from_slice(self.client_ip_source.as_str().as_bytes());
        out.push(b'"');
        out.extend_from_slice(b",\"method\":");
        json_value(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json_value(out, self.path);
        if let Some(e) = &self.event_id {
            out.extend_from_slice(b",\"event_id\":");
            json_value(out, e);
        }
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"params\":[");
        for (i, (k, v)) in self.params.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            json_value(out, k);
            out.push(b',');
            json_value(out, v);
            out.push(b']');
        }
        out.push(b']');
        for (name, v) in [
            ("user_agent", self.user_agent),
            ("referer", self.referer),
            ("origin", self.origin),
        ] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            match v {
                Some(v) => json_value(out, v),
                None => out.extend_from_slice(b"null"),
            }
        }
        match self.kind {
            Kind::Json => {
                out.extend_from_slice(b",\"json\":");
                // The collector validated and compacted it; re-check so a foreign or corrupt
                // producer cannot break the line or the file's JSON.
                if is_compact_json(&self.body) {
                    out.extend_from_slice(&self.body);
                } else {
                    json_value(out, &self.body);
                }
            }
            Kind::Text => {
                out.extend_from_slice(b",\"body\":");
                json_value(out, &self.body);
            }
            Kind::Query | Kind::Form | Kind::Multipart => {}
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Whether a stored JSON body can go into the line as it is: what [`compact_json`] would
/// return for it unchanged (a record from an older or foreign producer may not be).
fn is_compact_json(b: &[u8]) -> bool {
    compact_json(b, MAX_JSON_DEPTH).is_ok_and(|c| c == b)
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn put_opt(out: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        Some(b) => put_bytes(out, b),
        None => out.put_u32(ABSENT),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()?;
        if n == ABSENT {
            return Err(DecodeError::Truncated);
        }
        self.take(n as usize)
    }
    fn opt(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        let n = self.u32()?;
        if n == ABSENT {
            return Ok(None);
        }
        self.take(n as usize).map(Some)
    }
}

/// Writes `b` as a JSON string if it is UTF-8, else as `{"b64":"..."}`.
fn json_value(out: &mut Vec<u8>, b: &[u8]) {
    // Printable ASCII without `"` or `\` is its own JSON string (most values): copied as is,
    // byte for byte what serde_json would write.
    if is_plain_ascii(b) {
        out.reserve(b.len() + 2);
        out.push(b'"');
        out.extend_from_slice(b);
        out.push(b'"');
        return;
    }
    match std::str::from_utf8(b) {
        Ok(s) => serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail"),
        Err(_) => {
            out.extend_from_slice(b"{\"b64\":\"");
            base64(out, b);
            out.extend_from_slice(b"\"}");
        }
    }
}

/// Whether every byte is printable ASCII other than `"` and `\\` (0x20..0x7f): the values
/// JSON takes as they are. Eight bytes per step (the stage scans every value of every beacon:
/// a quarter of its time went to the byte-at-a-time scan).
fn is_plain_ascii(b: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `x` is zero: the classic test, exact as "any byte" (a borrow only follows a
    // byte that is itself zero).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let x = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        // Below 0x20 (for bytes under 0x80: x - 0x20 borrows into the high bit), 0x80 and
        // above, 0x7f, '"', '\\'.
        let bad = (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
            | (x & HIGH)
            | zero(x ^ (ONES * 0x7f))
            | zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')));
        if bad != 0 {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
}

/// Appends standard base64 (RFC 4648, padded) of `b` to `out`, in place.
fn base64(out: &mut Vec<u8>, b: &[u8]) {
    use base64::Engine as _;
    let start = out.len();
    out.resize(
        start + base64::encoded_len(b.len(), true).expect("a beacon value is small"),
        0,
    );
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(b, &mut out[start..])
        .expect("sized by encoded_len");
    out.truncate(start + n);
}

/// A new UUIDv7: 48 bits of Unix milliseconds, then 74 random bits.
///
/// Not the `uuid` crate: nothing here allocates (the id is 16 bytes in the record and written
/// as hex straight into the NDJSON line), the request's receive time is already at hand where
/// `Uuid::now_v7` would read the clock again, and its random bits would pull in a second RNG.
pub fn new_id(now_us: u64) -> [u8; 16] {
    let ms = now_us / 1000;
    let hi = fastrand::u64(..);
    let lo = fastrand::u64(..);
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    id[6..8].copy_from_slice(&((hi as u16 & 0x0fff) | 0x7000).to_be_bytes());
    id[8..].copy_from_slice(&((lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000).to_be_bytes());
    id
}

/// Canonical 8-4-4-4-12 hex form.
pub(crate) fn format_uuid(id: &[u8; 16]) -> String {
    let mut v = Vec::with_capacity(36);
    write_uuid(id, &mut v);
    String::from_utf8(v).expect("hex digits and dashes")
}

/// Appends the id in the canonical 8-4-4-4-12 form (no allocation: once per NDJSON line).
pub(crate) fn write_uuid(id: &[u8; 16], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Limits applied while decoding parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParamLimits {
    /// Most parameters (query and form together).
    pub(crate) max_params: usize,
    /// Longest decoded name.
    pub(crate) max_name_bytes: usize,
    /// Longest decoded value.
    pub(crate) max_value_bytes: usize,
}

/// Which parameter limit was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParamError {
    /// More parameters than `max_params`.
    #[error("too many parameters")]
    TooMany,
    /// A name longer than `max_param_name_bytes`.
    #[error("parameter name too long")]
    NameTooLong,
    /// A value longer than `max_param_value_bytes`.
    #[error("parameter value too long")]
    ValueTooLong,
}

/// Parses `application/x-www-form-urlencoded` bytes (also used for query strings) the way the
/// WHATWG URL standard does: `&`-separated, first `=` splits, `+` is a space, `%XX` decoded,
/// a `%` not followed by two hex digits kept literally. Appends to `params`.
pub(crate) fn parse_urlencoded<'a>(
    input: &'a [u8],
    limits: &ParamLimits,
    params: &mut Vec<Param<'a>>,
) -> Result<(), ParamError> {
    for seq in input.split(|&b| b == b'&') {
        if seq.is_empty() {
            continue;
        }
        if params.len() >= limits.max_params {
            return Err(ParamError::TooMany);
        }
        let (name, value) = match seq.iter().position(|&b| b == b'=') {
            Some(i) => (&seq[..i], &seq[i + 1..]),
            None => (seq, &seq[seq.len()..]),
        };
        let name = percent_decode(name);
        if name.len() > limits.max_name_bytes {
            return Err(ParamError::NameTooLong);
        }
        let value = percent_decode(value);
        if value.len() > limits.max_value_bytes {
            return Err(ParamError::ValueTooLong);
        }
        params.push((name, value));
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `+` and `%XX`; borrows when there is nothing to decode (the common case for names).
pub(crate) fn percent_decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                s.get(i + 1).and_then(|&b| hex(b)),
                s.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// Why a JSON body cannot be stored as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonError {
    /// Not JSON (grammar), or not UTF-8 (RFC 8259 §8.1: JSON text is UTF-8).
    Invalid,
    /// Nested deeper than the limit: readers stop at their recursion limits (serde_json 128,
    /// jq 10000 with a warning, Python's `json` at its stack).
    TooDeep,
}

/// The deepest nesting any stored JSON body may have, whatever `http.max_json_depth` says:
/// with the record object around it a line stays under serde_json's limit of 128.
pub(crate) const MAX_JSON_DEPTH: usize = 100;

/// Validates JSON and returns it with insignificant whitespace removed (so it fits on one
/// NDJSON line), for every reader: the input must be UTF-8 and nested at most `max_depth`
/// deep; an escaped lone surrogate (`\ud800` without its pair, which serde_json refuses and
/// other readers turn into garbage) becomes `\ufffd`, the replacement character, in place;
/// a number no reader can hold (see [`readable_number`]) becomes the string of its text.
/// Other numbers, other strings and key order are kept byte for byte.
pub(crate) fn compact_json(input: &[u8], max_depth: usize) -> Result<Vec<u8>, JsonError> {
    std::str::from_utf8(input).map_err(|_| JsonError::Invalid)?;
    let max_depth = max_depth.min(MAX_JSON_DEPTH);
    let mut out = Vec::with_capacity(input.len());
    let (mut in_string, mut depth, mut i) = (false, 0usize, 0usize);
    while i < input.len() {
        let b = input[i];
        if in_string {
            match b {
                b'\\' if input.get(i + 1) == Some(&b'u') => {
                    i += surrogate_safe_escape(&input[i..], &mut out);
                    continue;
                }
                b'\\' => {
                    out.extend_from_slice(&input[i..(i + 2).min(input.len())]);
                    i += 2;
                    continue;
                }
                b'"' => in_string = false,
                _ => {}
            }
            out.push(b);
        } else {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    in_string = true;
                    out.push(b);
                }
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max_depth {
                        return Err(JsonError::TooDeep);
                    }
                    out.push(b);
                }
                b']' | b'}' => {
                    depth = depth.saturating_sub(1);
                    out.push(b);
                }
                b'-' | b'0'..=b'9' => {
                    i += readable_number(&input[i..], &mut out);
                    continue;
                }
                _ => out.push(b),
            }
        }
        i += 1;
    }
    // The grammar, on the compacted text (shorter; the same JSON). Nesting is bounded above,
    // so serde_json's own recursion limit is never what refuses it.
    serde_json::from_slice::<serde::de::IgnoredAny>(&out).map_err(|_| JsonError::Invalid)?;
    Ok(out)
}

/// The longest number text kept as a number. Longer ones are never a measurement (an f64 has
/// 17 significant digits); an integer of 4,301 digits or more makes Python's `json.loads`
/// raise, and every digit costs its reader time.
pub(crate) const MAX_JSON_NUMBER_LEN: usize = 40;

/// Copies the number at the start of `s` (up to the first byte that cannot be part of one)
/// into `out` and returns its length. A well-formed number (RFC 8259 §6) that is longer than
/// [`MAX_JSON_NUMBER_LEN`] or outside an f64's range (`1e400`: serde_json refuses the line,
/// "number out of range") is written as a JSON string of its exact text instead, so nothing
/// is lost and every reader reads the line. A malformed one is copied as it is for the
/// grammar check to refuse.
fn readable_number(s: &[u8], out: &mut Vec<u8>) -> usize {
    let len = s
        .iter()
        .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .unwrap_or(s.len());
    let text = &s[..len];
    let readable = text.len() <= MAX_JSON_NUMBER_LEN
        && std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .is_some_and(f64::is_finite);
    if readable || !well_formed_number(text) {
        out.extend_from_slice(text);
    } else {
        out.push(b'"');
        out.extend_from_slice(text);
        out.push(b'"');
    }
    len
}

/// RFC 8259 §6: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn well_formed_number(t: &[u8]) -> bool {
    let digits = |t: &[u8], at: &mut usize| {
        let start = *at;
        while t.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        *at > start
    };
    let mut at = usize::from(t.first() == Some(&b'-'));
    match t.get(at) {
        Some(b'0') => at += 1,
        Some(b'1'..=b'9') => {
            digits(t, &mut at);
        }
        _ => return false,
    }
    if t.get(at) == Some(&b'.') {
        at += 1;
        if !digits(t, &mut at) {
            return false;
        }
    }
    if matches!(t.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(t.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        if !digits(t, &mut at) {
            return false;
        }
    }
    at == t.len()
}

/// Copies one `\uXXXX` escape (or a surrogate pair of them) from the start of `s`, writing
/// `\ufffd` for a lone surrogate; returns the bytes consumed. Malformed escapes are copied
/// as they are (the grammar check refuses them afterwards).
fn surrogate_safe_escape(s: &[u8], out: &mut Vec<u8>) -> usize {
    let unit = |at: usize| -> Option<u16> {
        let h = s.get(at..at + 6)?;
        if h[0] != b'\\' || h[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&h[2..]).ok()?, 16).ok()
    };
    match unit(0) {
        Some(0xD800..=0xDBFF) if matches!(unit(6), Some(0xDC00..=0xDFFF)) => {
            out.extend_from_slice(&s[..12]);
            12
        }
        Some(0xD800..=0xDFFF) => {
            out.extend_from_slice(b"\\ufffd");
            6
        }
        Some(_) => {
            out.extend_from_slice(&s[..6]);
            6
        }
        None => {
            out.extend_from_slice(&s[..2]);
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ascii_scan_agrees_with_the_byte_rule_at_every_position() {
        let rule = |b: &[u8]| {
            b.iter()
                .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
        };
        // Every byte value at every offset of values of 1..=24 bytes, and next to its
        // neighbours (a borrow across bytes must not hide or invent a bad byte).
        for len in 1..=24usize {
            for at in 0..len {
                for v in 0..=255u8 {
                    let mut b = vec![b'a'; len];
                    b[at] = v;
                    assert_eq!(is_plain_ascii(&b), rule(&b), "{b:?}");
                    if at + 1 < len {
                        b[at + 1] = 0x20;
                        assert_eq!(is_plain_ascii(&b), rule(&b), "{b:?}");
                        b[at + 1] = 0x00;
                        assert_eq!(is_plain_ascii(&b), rule(&b), "{b:?}");
                    }
                }
            }
        }
        for _ in 0..20_000 {
            let b: Vec<u8> = (0..fastrand::usize(0..40))
                .map(|_| fastrand::u8(..))
                .collect();
            assert_eq!(is_plain_ascii(&b), rule(&b), "{b:?}");
        }
    }

    #[test]
    fn json_value_fast_path_writes_what_serde_json_writes() {
        let mut cases: Vec<Vec<u8>> = (0u8..=127).map(|b| vec![b'a', b, b'z']).collect();
        cases.push(b"https://www.example.com/products/42?ref=home".to_vec());
        cases.push("caf\u{e9} \u{1F600}".as_bytes().to_vec());
        cases.push(Vec::new());
        for c in cases {
            let mut out = Vec::new();
            json_value(&mut out, &c);
            let want = serde_json::to_string(std::str::from_utf8(&c).unwrap()).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), want, "{c:?}");
        }
    }

    const LIMITS: ParamLimits = ParamLimits {
        max_params: 4,
        max_name_bytes: 8,
        max_value_bytes: 16,
    };

    type Owned = Vec<(Vec<u8>, Vec<u8>)>;

    fn parse(s: &str) -> Result<Owned, ParamError> {
        let mut p = Vec::new();
        parse_urlencoded(s.as_bytes(), &LIMITS, &mut p)?;
        Ok(p.into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect())
    }

    #[test]
    fn urlencoded_like_whatwg() {
        let p = parse("a=1&&b=x+y%20z&c&a=%zz%4").unwrap();
        assert_eq!(
            p,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"x y z".to_vec()),
                (b"c".to_vec(), b"".to_vec()),
                (b"a".to_vec(), b"%zz%4".to_vec()),
            ]
        );
        assert_eq!(parse("k=%0Aline%0D%00").unwrap()[0].1, b"\nline\r\0");
        assert_eq!(parse("k=%FF").unwrap()[0].1, vec![0xff]);
    }

    #[test]
    fn urlencoded_limits() {
        assert_eq!(parse("a&b&c&d&e"), Err(ParamError::TooMany));
        assert_eq!(parse("abcdefghi=1"), Err(ParamError::NameTooLong));
        assert_eq!(parse("a=12345678901234567"), Err(ParamError::ValueTooLong));
        // Limits apply to decoded lengths: 16 escaped bytes decode to 16 bytes.
        assert!(parse(
            &"a="
                .chars()
                .chain("%41".repeat(16).chars())
                .collect::<String>()
        )
        .is_ok());
    }

    #[test]
    fn record_roundtrip_and_ndjson() {
        let rec = RecordRef {
            id: new_id(1_700_000_000_000_000),
            received_us: 1_700_000_000_123_456,
            peer: b"127.0.0.1:5000",
            client_ip: b"203.0.113.9",
            client_ip_source: ClientIpSource::ProxyV2,
            method: b"GET",
            path: b"/beacon",
            kind: Kind::Query,
            user_agent: Some(b"UA \"quoted\""),
            referer: None,
            origin: Some(b"https://a.example"),
            params: vec![
                (Cow::Borrowed(b"t"), Cow::Borrowed(b"line1\nline2")),
                (Cow::Borrowed(b"bin"), Cow::Owned(vec![0xff, 0x00, b'a'])),
            ],
            body: Cow::Borrowed(b""),
            event_id: None,
        };
        let mut buf = BytesMut::new();
        rec.encode(&mut buf);
        let back = RecordRef::decode(&buf).unwrap();
        assert_eq!(back, rec);
        let mut line = Vec::new();
        back.write_ndjson(&mut line);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["params"][0][1], "line1\nline2");
        assert_eq!(v["params"][1][1]["b64"], "/wBh");
        assert_eq!(v["user_agent"], "UA \"quoted\"");
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(v["received_at"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(v["id"].as_str().unwrap().len(), 36);
        assert_eq!(&v["id"].as_str().unwrap()[14..15], "7");
    }

    #[test]
    fn decode_rejects_truncation_and_trailing() {
        let rec = RecordRef {
            id: [1; 16],
            received_us: 1,
            peer: b"p",
            client_ip: b"p",
            client_ip_source: ClientIpSource::Peer,
            method: b"POST",
            path: b"/b",
            kind: Kind::Text,
            user_agent: None,
            referer: None,
            origin: None,
            params: vec![],
            body: Cow::Borrowed(b"hello"),
            event_id: None,
        };
        let mut buf = BytesMut::new();
        rec.encode(&mut buf);
        // Where the older layouts ended (before client_ip, before event_id): records spooled
        // by older collectors.
        let old_layouts = [buf.len() - (4 + 1 + 1 + 4), buf.len() - 4];
        for cut in 0..buf.len() {
            if !old_layouts.contains(&cut) {
                assert!(RecordRef::decode(&buf[..cut]).is_err(), "cut at {cut}");
            }
        }
        let mut longer = buf.to_vec();
        longer.push(0);
        assert_eq!(RecordRef::decode(&longer), Err(DecodeError::Trailing(1)));
        let mut bad_source = buf.to_vec();
        let at = bad_source.len() - 5;
        bad_source[at] = 9;
        assert_eq!(
            RecordRef::decode(&bad_source),
            Err(DecodeError::BadSource(9))
        );
    }

    /// A tracker's event id round-trips and is in the line; a record of the layout before
    /// event ids decodes without one.
    #[test]
    fn event_ids_round_trip_and_older_records_have_none() {
        let rec = RecordRef {
            id: [3; 16],
            received_us: 7,
            peer: b"192.0.2.1:443",
            client_ip: b"192.0.2.1",
            client_ip_source: ClientIpSource::Peer,
            method: b"POST",
            path: b"/e/",
            kind: Kind::Json,
            user_agent: None,
            referer: None,
            origin: None,
            params: vec![],
            body: Cow::Borrowed(br#"{"event":"x"}"#),
            event_id: Some(Cow::Borrowed(b"0193-uuid")),
        };
        let mut buf = BytesMut::new();
        rec.encode(&mut buf);
        let back = RecordRef::decode(&buf).unwrap();
        assert_eq!(back, rec);
        let mut line = Vec::new();
        back.write_ndjson(&mut line);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["event_id"], "0193-uuid");
        let without = RecordRef {
            event_id: None,
            ..rec.clone()
        };
        let mut buf = BytesMut::new();
        without.encode(&mut buf);
        let older = &buf[..buf.len() - 4];
        assert_eq!(RecordRef::decode(older).unwrap(), without);
        let mut line = Vec::new();
        without.write_ndjson(&mut line);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert!(v.get("event_id").is_none(), "no event_id key without one");
    }

    /// Records written before `client_ip` existed decode with the peer's IP, source `peer`.
    #[test]
    fn first_layout_records_still_decode() {
        for (peer, ip) in [
            (&b"192.0.2.1:443"[..], &b"192.0.2.1"[..]),
            (b"[2001:db8::1]:80", b"2001:db8::1"),
        ] {
            let rec = RecordRef {
                id: [2; 16],
                received_us: 5,
                peer,
                client_ip: b"203.0.113.50",
                client_ip_source: ClientIpSource::ForwardedFor,
                method: b"GET",
                path: b"/beacon",
                kind: Kind::Query,
                user_agent: None,
                referer: None,
                origin: None,
                params: vec![(Cow::Borrowed(b"a"), Cow::Borrowed(b"1"))],
                body: Cow::Borrowed(b""),
                event_id: None,
            };
            let mut buf = BytesMut::new();
            rec.encode(&mut buf);
            assert_eq!(RecordRef::decode(&buf).unwrap(), rec);
            let first_layout = &buf[..buf.len() - (4 + rec.client_ip.len() + 1 + 4)];
            let old = RecordRef::decode(first_layout).unwrap();
            assert_eq!(
                (old.client_ip, old.client_ip_source),
                (ip, ClientIpSource::Peer)
            );
            assert_eq!(old.params, rec.params);
        }
    }

    #[test]
    fn json_compaction_keeps_values() {
        let c = compact_json(b" { \"a b\" : [1, 2.50e3 ,\n\"x\\\" y\"] }\n", 64).unwrap();
        assert_eq!(c, br#"{"a b":[1,2.50e3,"x\" y"]}"#);
        assert_eq!(compact_json(b"{\"a\":", 64), Err(JsonError::Invalid));
        assert_eq!(compact_json(b"", 64), Err(JsonError::Invalid));
    }

    #[test]
    fn compact_json_bounds_depth_and_keeps_every_line_readable() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
        assert!(compact_json(&deep(64), 64).is_ok());
        assert_eq!(compact_json(&deep(65), 64), Err(JsonError::TooDeep));
        assert_eq!(compact_json(&deep(30_000), 64), Err(JsonError::TooDeep));
        assert_eq!(
            compact_json(&deep(MAX_JSON_DEPTH + 1), 10_000),
            Err(JsonError::TooDeep),
            "capped whatever the config says"
        );
        // Brackets inside strings are not nesting.
        assert!(compact_json(format!("[\"{}\"]", "[".repeat(500)).as_bytes(), 2).is_ok());
        // Not UTF-8: not JSON.
        assert_eq!(
            compact_json(b"{\"a\":\"\xff\"}", 64),
            Err(JsonError::Invalid)
        );
        // Lone surrogates become U+FFFD; a real pair stays.
        let c = compact_json(br#"["\ud800","\udc00x","\ud83d\ude00","\uD800\u0041"]"#, 64).unwrap();
        assert_eq!(c, br#"["\ufffd","\ufffdx","\ud83d\ude00","\ufffd\u0041"]"#);
        let v: Vec<String> = serde_json::from_slice(&c).unwrap();
        assert_eq!(v[2], "\u{1F600}");
    }

    /// Numbers no reader can hold (serde_json's "number out of range", Python's 4,300-digit
    /// limit) become the string of their text; ordinary ones stay numbers byte for byte;
    /// malformed ones are still refused.
    #[test]
    fn compact_json_keeps_numbers_readable() {
        let long = "7".repeat(5000);
        let body = format!(
            r#"{{"a":1e400,"b":-1E+999,"c":{long},"d":[1,-0.5,2.50e3,1e-400,12345678901234567890]}}"#
        );
        let c = compact_json(body.as_bytes(), 64).unwrap();
        let want = format!(
            r#"{{"a":"1e400","b":"-1E+999","c":"{long}","d":[1,-0.5,2.50e3,1e-400,12345678901234567890]}}"#
        );
        assert_eq!(String::from_utf8(c.clone()).unwrap(), want);
        let v: serde_json::Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(v["a"], "1e400");
        for bad in [
            "[01]", "[1.]", "[-]", "[1e]", "[.5]", "[+1]", "[1e400.]", "[--1]",
        ] {
            assert_eq!(
                compact_json(bad.as_bytes(), 64),
                Err(JsonError::Invalid),
                "{bad}"
            );
        }
        let huge_bad = format!("[0{long}]");
        assert_eq!(
            compact_json(huge_bad.as_bytes(), 64),
            Err(JsonError::Invalid)
        );
    }

    #[test]
    fn ids_are_uuid_v7_with_the_receive_time() {
        let us = 1_700_000_000_123_456;
        let a = new_id(us);
        let b = new_id(us);
        assert_ne!(a, b, "random bits differ");
        let ms = u64::from_be_bytes([0, 0, a[0], a[1], a[2], a[3], a[4], a[5]]);
        assert_eq!(ms, us / 1000);
        assert_eq!(a[6] >> 4, 7, "version 7");
        assert_eq!(a[8] >> 6, 0b10, "RFC 9562 variant");
        let text = format_uuid(&a);
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "7");
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            let mut out = Vec::new();
            base64(&mut out, i.as_bytes());
            assert_eq!(out, o.as_bytes());
        }
    }
}
