//! The PROXY protocol, versions 1 and 2 (HAProxy's `proxy-protocol.txt`): parsing the header a
//! load balancer sends at the start of a connection to say who the client is, and reading
//! exactly that header off a socket, so every byte after it is left for HTTP.
//!
//! Strict by design: on a listener that expects the header, a connection without a valid one
//! is closed. Guessing (falling back to the TCP peer) would let any client that reaches the
//! port directly pass its own address off as a proxied one, or silently record the load
//! balancer's address for every beacon.
//!
//! Hand-written rather than the `ppp` or `proxy-header` crates: those parse a buffer they are
//! given, and the hard part here is reading exactly the header's bytes off the socket (v1 up to
//! its CRLF, v2 its 16 bytes then the length they announce) under a deadline, so not one byte
//! of the HTTP request behind it is consumed; the parse itself is short and fuzzed in the tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Which versions a listener accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No PROXY header: the client is the TCP peer.
    #[default]
    Off,
    /// Text header only (`send-proxy`, classic ELB).
    V1,
    /// Binary header only (`send-proxy-v2`, AWS NLB).
    V2,
    /// Either version, told apart by the first bytes.
    Any,
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// 1 or 2.
    pub(crate) version: u8,
    /// The client as the proxy saw it. `None` for v1 `UNKNOWN`, v2 `LOCAL` (the proxy's own
    /// health checks) and address families other than IPv4/IPv6: the TCP peer is then the
    /// client, as the spec says.
    pub(crate) source: Option<SocketAddr>,
    /// Bytes the header takes at the start of the stream.
    pub(crate) len: usize,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Error {
    /// More bytes are needed to decide.
    #[error("incomplete PROXY header")]
    Incomplete,
    /// Not a PROXY header of an accepted version, or a malformed one.
    #[error("invalid PROXY header: {0}")]
    Invalid(&'static str),
    /// Longer than this server accepts.
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    /// The connection closed before the header was complete.
    #[error("connection closed inside the PROXY header")]
    Closed,
    /// The header did not arrive within the header timeout.
    #[error("no complete PROXY header within the header timeout")]
    Timeout,
}

impl Error {
    /// Label for the `reason` of the error counter.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Error::Incomplete | Error::Closed => "truncated",
            Error::Invalid(_) => "invalid",
            Error::TooLong => "too_long",
            Error::Timeout => "timeout",
        }
    }
}

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, `\r\n` included (spec: 107 bytes).
const V1_MAX: usize = 107;
/// The longest v2 header accepted: 16 bytes of fixed part and up to 2 KiB of addresses and
/// TLVs (load balancers add a few TLVs: AWS's VPC endpoint id, HAProxy's SSL and unique id).
pub(crate) const MAX_HEADER: usize = 16 + 2048;

/// Parses a header at the start of `buf`.
pub(crate) fn parse(buf: &[u8], mode: Mode) -> Result<Header, Error> {
    let v1 = matches!(mode, Mode::V1 | Mode::Any);
    let v2 = matches!(mode, Mode::V2 | Mode::Any);
    if v2 && starts_like(buf, &V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if v1 && starts_like(buf, b"PROXY ") {
        return parse_v1(buf);
    }
    // Wait for enough bytes to tell a short prefix of a valid header from garbage.
    let could_be = (v2 && V2_SIGNATURE.starts_with(buf)) || (v1 && b"PROXY ".starts_with(buf));
    if could_be {
        Err(Error::Incomplete)
    } else {
        Err(Error::Invalid("no PROXY signature"))
    }
}

/// `buf` starts with the whole of `sig`.
fn starts_like(buf: &[u8], sig: &[u8]) -> bool {
    buf.len() >= sig.len() && &buf[..sig.len()] == sig
}

fn parse_v1(buf: &[u8]) -> Result<Header, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    if let Some(lf) = window.iter().position(|&b| b == b'\n') {
        if lf == 0 || window[lf - 1] != b'\r' {
            return Err(Error::Invalid("v1 header: LF without CR"));
        }
    }
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if buf.len() >= V1_MAX {
            Err(Error::Invalid("v1 header without CRLF within 107 bytes"))
        } else {
            Err(Error::Incomplete)
        };
    };
    match window.get(cr + 1) {
        None => return Err(Error::Incomplete),
        Some(b'\n') => {}
        Some(_) => return Err(Error::Invalid("v1 header: CR not followed by LF")),
    }
    let line =
        std::str::from_utf8(&window[6..cr]).map_err(|_| Error::Invalid("v1 header not ASCII"))?;
    let len = cr + 2;
    let mut parts = line.split(' ');
    let proto = parts.next().unwrap_or("");
    if proto == "UNKNOWN" {
        // The rest of the line is to be ignored (spec 2.1).
        return Ok(Header {
            version: 1,
            source: None,
            len,
        });
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(Error::Invalid(
            "v1 header needs protocol, two addresses and two ports",
        ));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            src.parse::<Ipv4Addr>()
                .map_err(|_| Error::Invalid("v1 source is not IPv4"))?
                .into(),
            dst.parse::<Ipv4Addr>()
                .map_err(|_| Error::Invalid("v1 destination is not IPv4"))?
                .into(),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>()
                .map_err(|_| Error::Invalid("v1 source is not IPv6"))?
                .into(),
            dst.parse::<Ipv6Addr>()
                .map_err(|_| Error::Invalid("v1 destination is not IPv6"))?
                .into(),
        ),
        _ => return Err(Error::Invalid("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let _ = dst;
    let sport = port(sport)?;
    port(dport)?;
    Ok(Header {
        version: 1,
        source: Some(SocketAddr::new(src, sport)),
        len,
    })
}

/// A decimal port, 0-65535, no sign, no leading zeros (spec 2.1).
fn port(s: &str) -> Result<u16, Error> {
    let bad = Error::Invalid("v1 port is not a decimal 0-65535");
    if s.is_empty()
        || s.len() > 5
        || !s.bytes().all(|b| b.is_ascii_digit())
        || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

fn parse_v2(buf: &[u8]) -> Result<Header, Error> {
    if buf.len() < 16 {
        return Err(Error::Incomplete);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(Error::Invalid("v2 version nibble is not 2"));
    }
    let command = ver_cmd & 0x0f;
    let fam = buf[13];
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body_len;
    if len > MAX_HEADER {
        return Err(Error::TooLong);
    }
    if buf.len() < len {
        return Err(Error::Incomplete);
    }
    let body = &buf[16..len];
    match command {
        // LOCAL: the proxy's own connection (health checks); addresses are to be ignored.
        0 => {
            return Ok(Header {
                version: 2,
                source: None,
                len,
            })
        }
        1 => {}
        _ => return Err(Error::Invalid("v2 command is neither LOCAL nor PROXY")),
    }
    let source = match fam {
        // TCP over IPv4: src addr, dst addr, src port, dst port.
        0x11 => {
            if body.len() < 12 {
                return Err(Error::Invalid(
                    "v2 IPv4 address block shorter than 12 bytes",
                ));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        // TCP over IPv6.
        0x21 => {
            if body.len() < 36 {
                return Err(Error::Invalid(
                    "v2 IPv6 address block shorter than 36 bytes",
                ));
            }
            let octets: [u8; 16] = body[..16].try_into().expect("16 bytes");
            Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        // UNSPEC, UDP, unix sockets: no usable client address; the spec says to accept the
        // connection and use the real one.
        0x00 | 0x01 | 0x02 | 0x12 | 0x22 | 0x31 | 0x32 => None,
        _ => return Err(Error::Invalid("v2 unknown address family or protocol")),
    };
    Ok(Header {
        version: 2,
        source,
        len,
    })
}

/// Reads a PROXY header off a fresh connection without reading past it: peeks until a header
/// parses, then consumes exactly its bytes, so the HTTP request behind it stays in the socket.
pub(crate) async fn read_header(
    stream: &mut TcpStream,
    mode: Mode,
    timeout: Duration,
) -> Result<Header, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_HEADER];
    let mut last_seen = 0;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(|_| Error::Closed)?;
        if n == 0 {
            return Err(Error::Closed);
        }
        match parse(&buf[..n], mode) {
            Ok(h) => {
                stream
                    .read_exact(&mut buf[..h.len])
                    .await
                    .map_err(|_| Error::Closed)?;
                return Ok(h);
            }
            Err(Error::Incomplete) if n < buf.len() => {
                // Peeking is level-triggered: the same bytes would be returned at once. The
                // rest of a split header is rarely more than a round trip away.
                if n == last_seen {
                    tokio::time::sleep_until(
                        deadline.min(tokio::time::Instant::now() + Duration::from_millis(1)),
                    )
                    .await;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::Timeout);
                    }
                }
                last_seen = n;
            }
            Err(Error::Incomplete) => return Err(Error::TooLong),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_inet(src: [u8; 4], sport: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut body = src.to_vec();
        body.extend_from_slice(&[10, 0, 0, 1]);
        body.extend_from_slice(&sport.to_be_bytes());
        body.extend_from_slice(&8080u16.to_be_bytes());
        body.extend_from_slice(tlvs);
        v2(1, 0x11, &body)
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = parse(
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\nGET / HTTP/1.1\r\n",
            Mode::Any,
        )
        .unwrap();
        assert_eq!(h.source, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!((h.version, h.len), (1, 44));
        let h = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 443 8080\r\n", Mode::V1).unwrap();
        assert_eq!(h.source, Some("[2001:db8::7]:443".parse().unwrap()));
        let h = parse(b"PROXY UNKNOWN ffff:f...f:ffff 65535\r\nGET", Mode::V1).unwrap();
        assert_eq!((h.source, h.len), (None, 37));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n", Mode::V1).unwrap().len, 15);
    }

    #[test]
    fn v1_malformed_is_refused() {
        for bad in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080 9\r\n",
            b"PROXY TCP4 203.0.113.7  10.0.0.1 51234 8080\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 203.0.113.7 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 203.0.113.07 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad, Mode::Any), Err(Error::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // No CRLF within 107 bytes.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(200, b'x');
        assert!(matches!(parse(&long, Mode::V1), Err(Error::Invalid(_))));
    }

    #[test]
    fn v2_inet_inet6_local_and_tlvs() {
        let h = parse(&v2_inet([198, 51, 100, 9], 40000, &[]), Mode::Any).unwrap();
        assert_eq!(h.source, Some("198.51.100.9:40000".parse().unwrap()));
        assert_eq!((h.version, h.len), (2, 28));
        // TLVs (AWS's type 0xEA VPC endpoint id) are skipped but count in the length.
        let tlv = [0xEA, 0x00, 0x05, 0x01, b'v', b'p', b'c', b'e'];
        let h = parse(&v2_inet([198, 51, 100, 9], 1, &tlv), Mode::V2).unwrap();
        assert_eq!(h.len, 28 + tlv.len());
        let mut body = [0u8; 36];
        body[15] = 7;
        body[32..34].copy_from_slice(&443u16.to_be_bytes());
        let h = parse(&v2(1, 0x21, &body), Mode::V2).unwrap();
        assert_eq!(h.source, Some("[::7]:443".parse().unwrap()));
        // LOCAL (health check): addresses ignored, even garbage ones.
        let h = parse(&v2(0, 0x11, &[1, 2, 3]), Mode::V2).unwrap();
        assert_eq!((h.source, h.len), (None, 19));
        // UNSPEC and unix sockets: accepted, no address.
        assert_eq!(parse(&v2(1, 0x00, &[]), Mode::V2).unwrap().source, None);
        assert_eq!(
            parse(&v2(1, 0x31, &[0; 216]), Mode::V2).unwrap().source,
            None
        );
    }

    #[test]
    fn v2_malformed_is_refused() {
        let good = v2_inet([1, 2, 3, 4], 5, &[]);
        let mut bad_version = good.clone();
        bad_version[12] = 0x11;
        let mut bad_command = good.clone();
        bad_command[12] = 0x22;
        let mut bad_family = good.clone();
        bad_family[13] = 0x41;
        let short_inet = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        let short_inet6 = v2(1, 0x21, &[0; 35]);
        for bad in [
            bad_version,
            bad_command,
            bad_family,
            short_inet,
            short_inet6,
        ] {
            assert!(
                matches!(parse(&bad, Mode::Any), Err(Error::Invalid(_))),
                "{bad:?}"
            );
        }
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(parse(&huge, Mode::V2), Err(Error::TooLong));
    }

    #[test]
    fn mode_decides_which_versions_pass() {
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec();
        let v2 = v2_inet([1, 2, 3, 4], 5, &[]);
        assert!(parse(&v1, Mode::V1).is_ok() && parse(&v2, Mode::V2).is_ok());
        assert!(matches!(parse(&v1, Mode::V2), Err(Error::Invalid(_))));
        assert!(matches!(parse(&v2, Mode::V1), Err(Error::Invalid(_))));
    }

    /// Every proper prefix of a valid header is `Incomplete`, never a wrong answer; the whole
    /// header parses with its exact length whatever follows it.
    #[test]
    fn truncated_headers_are_incomplete() {
        let mut rng = fastrand::Rng::with_seed(7);
        let headers = [
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 443 8080\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_inet([1, 2, 3, 4], 5, &[0xEA, 0, 1, 9]),
            v2(0, 0x00, &[]),
        ];
        for h in &headers {
            for cut in 0..h.len() {
                assert_eq!(
                    parse(&h[..cut], Mode::Any),
                    Err(Error::Incomplete),
                    "{h:?} cut at {cut}"
                );
            }
            for _ in 0..50 {
                let mut with_tail = h.clone();
                with_tail.extend((0..rng.usize(0..64)).map(|_| rng.u8(..)));
                assert_eq!(parse(&with_tail, Mode::Any).unwrap().len, h.len());
            }
        }
    }

    /// Random bytes, random mutations of valid headers and random lengths: the parser never
    /// panics, never claims more bytes than it was given, and never accepts a header longer
    /// than the limit.
    #[test]
    fn garbage_never_panics_or_overreads() {
        let mut rng = fastrand::Rng::with_seed(42);
        let seeds = [
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\n".to_vec(),
            v2_inet([1, 2, 3, 4], 5, &[1, 2, 3]),
            v2(1, 0x21, &[0; 36]),
        ];
        for i in 0..200_000 {
            let buf: Vec<u8> = if i % 2 == 0 {
                let mut b = seeds[rng.usize(..seeds.len())].clone();
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..b.len());
                    b[at] = rng.u8(..);
                }
                b.truncate(rng.usize(..=b.len()));
                b
            } else {
                let mut b: Vec<u8> = (0..rng.usize(0..128)).map(|_| rng.u8(..)).collect();
                if rng.bool() && b.len() >= 6 {
                    b[..6].copy_from_slice(b"PROXY ");
                } else if b.len() >= 16 {
                    b[..12].copy_from_slice(&V2_SIGNATURE);
                }
                b
            };
            for mode in [Mode::V1, Mode::V2, Mode::Any] {
                if let Ok(h) = parse(&buf, mode) {
                    assert!(h.len <= buf.len() && h.len <= MAX_HEADER, "{buf:?}");
                }
            }
        }
    }
}
