//! `X-Forwarded-For` from trusted proxies: CIDR ranges (`client_ip.trusted_proxies`) and the walk
//! from the right-most hop to the first address that is not a trusted proxy: the client.
//!
//! Only hops added by proxies we trust can be believed; everything to the left of the first
//! untrusted hop was written by that untrusted party (often the client itself) and may be
//! forged. So the header is read at all only when the connection comes from a trusted proxy,
//! and then from the right.

use ipnet::IpNet;
use std::net::IpAddr;

/// An address range, `192.0.2.0/24`, `2001:db8::/32` or a single address: an [`IpNet`] that
/// refuses host bits (a typo, not a range) and matches IPv4-mapped IPv6 peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(IpNet);

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not an IP address or CIDR range (e.g. \"10.0.0.0/8\", \"2001:db8::/32\")"
            )
        };
        let t = s.trim();
        let net = if t.contains('/') {
            t.parse::<IpNet>().map_err(|_| bad())?
        } else {
            IpNet::from(t.parse::<IpAddr>().map_err(|_| bad())?)
        };
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has host bits set; write the network address, e.g. \"{}\"",
                net.trunc()
            ));
        }
        Ok(Cidr(net))
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.0.to_string()
    }
}

impl Cidr {
    /// Whether `ip` is in the range. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a
    /// dual-stack listener reports for IPv4 peers) match IPv4 ranges.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One hop of the header: an IP, optionally with a port (`1.2.3.4:5678`, `[2001:db8::1]:80`).
fn hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (ip, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// What `X-Forwarded-For` says about the client of a connection from `immediate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not applicable: no trusted proxies configured, the connection is not from one, or
    /// there is no header. The immediate address is the client.
    NotUsed,
    /// The right-most hop that is not a trusted proxy.
    Client(IpAddr),
    /// The header is present but a hop does not parse: it is ignored as a whole (the immediate
    /// address is the client) and counted.
    Malformed,
}

/// Finds the client: every `X-Forwarded-For` value in order (several header lines are one
/// list), walked from the right past trusted proxies.
pub(crate) fn client<'a>(
    immediate: IpAddr,
    trusted: &[Cidr],
    values: impl Iterator<Item = &'a [u8]>,
) -> Verdict {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(immediate) {
        return Verdict::NotUsed;
    }
    let mut hops = Vec::new();
    for v in values {
        let Ok(v) = std::str::from_utf8(v) else {
            return Verdict::Malformed;
        };
        for h in v.split(',') {
            if h.trim().is_empty() {
                continue;
            }
            match hop(h) {
                Some(ip) => hops.push(canonical(ip)),
                None => return Verdict::Malformed,
            }
        }
    }
    let Some(&leftmost) = hops.first() else {
        return Verdict::NotUsed;
    };
    // All hops trusted: the request started inside our own proxies; the left-most is as close
    // to the origin as the header goes.
    Verdict::Client(
        hops.iter()
            .rev()
            .copied()
            .find(|&ip| !is_trusted(ip))
            .unwrap_or(leftmost),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter()
            .map(|s| Cidr::try_from(s.to_string()).unwrap())
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c = cidrs(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7", "0.0.0.0/0"]);
        assert!(c[0].contains(ip("10.255.1.2")) && !c[0].contains(ip("11.0.0.1")));
        assert!(c[0].contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(c[1].contains(ip("2001:db8:ffff::1")) && !c[1].contains(ip("2001:db9::1")));
        assert!(c[2].contains(ip("192.0.2.7")) && !c[2].contains(ip("192.0.2.8")));
        assert!(c[3].contains(ip("8.8.8.8")) && !c[3].contains(ip("::1")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "2001:db8::/129",
            "example.com",
            "10.0.0.0/",
            "/8",
            "",
        ] {
            assert!(Cidr::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert_eq!(String::from(c[2]), "192.0.2.7/32");
    }

    #[test]
    fn right_most_untrusted_hop_is_the_client() {
        let t = cidrs(&["10.0.0.0/8"]);
        let lb = ip("10.0.0.5");
        let one = |v: &'static str| client(lb, &t, std::iter::once(v.as_bytes()));
        assert_eq!(one("203.0.113.9"), Verdict::Client(ip("203.0.113.9")));
        // The client wrote a fake first hop; the ELB appended the real address.
        assert_eq!(
            one("1.1.1.1, 203.0.113.9"),
            Verdict::Client(ip("203.0.113.9"))
        );
        // Two of our proxies appended after the client.
        assert_eq!(
            one("1.1.1.1, 203.0.113.9, 10.1.1.1,10.2.2.2"),
            Verdict::Client(ip("203.0.113.9"))
        );
        // Only our proxies: the left-most.
        assert_eq!(one("10.9.9.9, 10.1.1.1"), Verdict::Client(ip("10.9.9.9")));
        // Ports and brackets.
        assert_eq!(one("203.0.113.9:5555"), Verdict::Client(ip("203.0.113.9")));
        assert_eq!(one("[2001:db8::9]:443"), Verdict::Client(ip("2001:db8::9")));
        assert_eq!(one("2001:db8::9"), Verdict::Client(ip("2001:db8::9")));
        // Several header lines are one list, in order.
        let lines = [b"1.1.1.1".as_slice(), b"203.0.113.9, 10.1.1.1".as_slice()];
        assert_eq!(
            client(lb, &t, lines.into_iter()),
            Verdict::Client(ip("203.0.113.9"))
        );
        // Garbage anywhere: the header is not used at all.
        assert_eq!(one("unknown, 203.0.113.9"), Verdict::Malformed);
        assert_eq!(one("203.0.113.9, _hidden"), Verdict::Malformed);
        assert_eq!(
            client(lb, &t, std::iter::once(&b"\xff"[..])),
            Verdict::Malformed
        );
        assert_eq!(one(""), Verdict::NotUsed);
    }

    #[test]
    fn untrusted_connections_and_no_trust_ignore_the_header() {
        let t = cidrs(&["10.0.0.0/8"]);
        let v = std::iter::once(&b"203.0.113.9"[..]);
        assert_eq!(client(ip("198.51.100.1"), &t, v.clone()), Verdict::NotUsed);
        assert_eq!(client(ip("10.0.0.5"), &[], v), Verdict::NotUsed);
    }
}
