//! The few fields of an X.509 certificate the collector reports on (issuer, subject, expiry,
//! DNS names), read off its DER with a bounded reader: rustls checks signatures and keys;
//! this only answers `check`'s and the metrics' questions, so no ASN.1 crate is pulled in.

/// What `check` and the expiry metric need of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertInfo {
    /// The issuer Name, as DER (compared with the next certificate's subject).
    pub(crate) issuer: Vec<u8>,
    /// The subject Name, as DER.
    pub(crate) subject: Vec<u8>,
    /// notAfter, Unix seconds.
    pub(crate) not_after: i64,
    /// subjectAltName dNSName entries, lower case.
    pub(crate) dns_names: Vec<String>,
}

/// One DER element: its tag, its content and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The whole element (tag and length included) at the start of `der`, and what follows.
fn raw_element(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, _, rest) = element(der)?;
    Some((&der[..der.len() - rest.len()], rest))
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// subjectAltName, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// Reads `der` (one certificate). `None`: not a certificate this reader understands.
pub(crate) fn parse(der: &[u8]) -> Option<CertInfo> {
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    // version [0] EXPLICIT, optional.
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    let rest = element(rest)?.2; // serialNumber
    let rest = element(rest)?.2; // signature AlgorithmIdentifier
    let (issuer, rest) = raw_element(rest)?;
    let (tag, validity, rest) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, _, v) = element(validity)?; // notBefore
    let (tag, not_after, _) = element(v)?;
    let not_after = time(tag, not_after)?;
    let (subject, rest) = raw_element(rest)?;
    let mut rest = element(rest)?.2; // subjectPublicKeyInfo
    let mut dns_names = Vec::new();
    while let Some((tag, body, next)) = element(rest) {
        if tag == 0xa3 {
            dns_names = san_names(body).unwrap_or_default();
        }
        rest = next;
    }
    Some(CertInfo {
        issuer: issuer.to_vec(),
        subject: subject.to_vec(),
        not_after,
        dns_names,
    })
}

/// The dNSNames of the subjectAltName extension in `exts` (the `[3]` wrapper's content).
fn san_names(exts: &[u8]) -> Option<Vec<String>> {
    let (_, mut list, _) = element(exts)?;
    while let Some((_, ext, next)) = element(list) {
        list = next;
        let (_, oid, mut rest) = element(ext)?;
        if oid != SAN_OID {
            continue;
        }
        // critical BOOLEAN, optional.
        if rest.first() == Some(&0x01) {
            rest = element(rest)?.2;
        }
        let (_, value, _) = element(rest)?; // OCTET STRING
        let (_, mut names, _) = element(value)?; // GeneralNames
        let mut out = Vec::new();
        while let Some((tag, name, next)) = element(names) {
            if tag == 0x82 {
                out.push(String::from_utf8_lossy(name).to_ascii_lowercase());
            }
            names = next;
        }
        return Some(out);
    }
    Some(Vec::new())
}

/// A UTCTime or GeneralizedTime ending in `Z`, as Unix seconds.
fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        UTC_TIME if s.len() == 12 => {
            let yy: i64 = s[..2].parse().ok()?;
            // RFC 5280: 50..99 are 19xx, 00..49 are 20xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        GENERALIZED_TIME if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day, h, m, sec) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Whether certificate name `pattern` (exact, or `*.` for one left-most label) covers `host`.
/// (Called per handshake for SNI: no allocation.)
pub(crate) fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_unix_seconds() {
        assert_eq!(time(UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(time(UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(
            time(GENERALIZED_TIME, b"20261205012000Z"),
            Some(1_796_433_600)
        );
        assert_eq!(time(UTC_TIME, b"700101000000"), None, "no Z: refused");
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.example.com", "b.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("Beacon.Example.com", "beacon.example.COM"));
    }

    #[test]
    fn truncated_input_is_refused_not_a_panic() {
        let der = [0x30, 0x82, 0x01, 0x00, 0x30];
        for n in 0..der.len() {
            assert_eq!(parse(&der[..n]), None);
        }
    }
}
