//! Names from beacons: the template of a NATS subject (`processor.nats.subject`) or a Kafka
//! topic (`processor.kafka.topic`) — which beacon field goes into which dot-separated token —
//! and the site of a beacon (also the Kafka message key).

use crate::record::RecordRef;

/// Longest value a placeholder renders to, so one odd beacon cannot make a huge subject.
const MAX_TOKEN: usize = 64;

/// A parsed subject template, e.g. `beacons.{site}.{kind}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// Host of the page: the `u` parameter (boomerang's page URL), else Origin, else Referer.
    Site,
    Path,
    Kind,
    Method,
    Param(String),
}

impl Template {
    /// Parses a template; the error says what is wrong.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty".into());
        }
        let mut tokens = Vec::new();
        for t in split_tokens(s) {
            let token = if let Some(inner) = t.strip_prefix('{') {
                let name = inner
                    .strip_suffix('}')
                    .ok_or_else(|| format!("token {t:?} opens '{{' without closing it"))?;
                match name {
                    "site" => Token::Site,
                    "path" => Token::Path,
                    "kind" => Token::Kind,
                    "method" => Token::Method,
                    _ => match name.strip_prefix("param.") {
                        Some(p) if !p.is_empty() => Token::Param(p.to_string()),
                        _ => return Err(format!("unknown placeholder {t:?}")),
                    },
                }
            } else {
                literal_token(t)?;
                Token::Literal(t.to_string())
            };
            tokens.push(token);
        }
        Ok(Self { tokens })
    }

    /// The subject for one record, into `out` (cleared first).
    pub(crate) fn render(&self, r: &RecordRef<'_>, out: &mut String) {
        out.clear();
        for (i, t) in self.tokens.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            match t {
                Token::Literal(l) => out.push_str(l),
                Token::Site => push_value(out, site(r).unwrap_or(b"")),
                Token::Path => push_value(out, r.path.strip_prefix(b"/").unwrap_or(r.path)),
                Token::Kind => push_value(out, r.kind.as_str().as_bytes()),
                Token::Method => push_value(out, r.method),
                Token::Param(name) => {
                    let v = r.params.iter().find(|p| p.0.as_ref() == name.as_bytes());
                    push_value(out, v.map_or(&b""[..], |p| p.1.as_ref()));
                }
            }
        }
    }

    /// The longest name this template can render (each placeholder at most `MAX_TOKEN`).
    pub(crate) fn max_len(&self) -> usize {
        let tokens: usize = self
            .tokens
            .iter()
            .map(|t| match t {
                Token::Literal(l) => l.len(),
                _ => MAX_TOKEN,
            })
            .sum();
        tokens + self.tokens.len().saturating_sub(1)
    }

    /// Whether every token is a literal: the template is one fixed name.
    pub(crate) fn is_fixed(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// The subject with every placeholder rendered as `x`: any rendered subject matches the
    /// same wildcard patterns as this one (a placeholder is always exactly one token).
    pub(crate) fn sample(&self) -> String {
        let parts: Vec<&str> = self
            .tokens
            .iter()
            .map(|t| match t {
                Token::Literal(l) => l.as_str(),
                _ => "x",
            })
            .collect();
        parts.join(".")
    }
}

/// Splits on dots outside braces (`{param.app}` is one token).
fn split_tokens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut depth) = (0, 0u32);
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            b'.' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

pub(crate) fn literal_token(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("has an empty token (two dots, or a dot at an end)".into());
    }
    if t == "*" || t == ">" {
        return Err("wildcards cannot be published to".into());
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"*>{}".contains(&b))
    {
        return Err(format!("token {t:?} has a space, wildcard or brace"));
    }
    Ok(())
}

/// The site of a beacon: the host of its page (the `u` parameter, boomerang's page URL), else
/// of its Origin, else of its Referer.
pub(crate) fn site<'b>(r: &'b RecordRef<'_>) -> Option<&'b [u8]> {
    r.params
        .iter()
        .find(|p| p.0.as_ref() == b"u")
        .and_then(|p| host(&p.1))
        .or_else(|| r.origin.and_then(host))
        .or_else(|| r.referer.and_then(host))
}

/// The host of an absolute URL (`https://www.example.com:8443/x` → `www.example.com`).
fn host(url: &[u8]) -> Option<&[u8]> {
    let at = url.windows(3).position(|w| w == b"://")?;
    let rest = &url[at + 3..];
    let end = rest
        .iter()
        .position(|b| b"/?#".contains(b))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    // Userinfo (`user:pass@host`) is not the site.
    let hostport = authority.rsplit(|&b| b == b'@').next().unwrap_or(authority);
    let h = if hostport.first() == Some(&b'[') {
        // An IPv6 literal keeps its colons.
        let close = hostport.iter().position(|&b| b == b']')?;
        &hostport[..=close]
    } else {
        let colon = hostport
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(hostport.len());
        &hostport[..colon]
    };
    (!h.is_empty()).then_some(h)
}

fn push_value(out: &mut String, v: &[u8]) {
    if v.is_empty() {
        out.push('_');
        return;
    }
    for &b in v.iter().take(MAX_TOKEN) {
        let c = if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            b.to_ascii_lowercase() as char
        } else {
            '_'
        };
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_or_say_why() {
        let t = Template::parse("beacons.{site}.{param.app}.{kind}").unwrap();
        assert_eq!(t.sample(), "beacons.x.x.x");
        for (bad, why) in [
            ("", "empty"),
            ("beacons..x", "empty token"),
            ("beacons.", "empty token"),
            ("beacons.{host}", "unknown placeholder"),
            ("beacons.{param.}", "unknown placeholder"),
            ("beacons.{site", "without closing"),
            ("beacons.*", "wildcards"),
            ("beacons.a b", "space"),
            ("beacons.x{site}", "brace"),
        ] {
            let e = Template::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    fn record<'a>(params: Vec<(&'a str, &'a str)>, origin: Option<&'a str>) -> RecordRef<'a> {
        use std::borrow::Cow;
        RecordRef {
            id: [0; 16],
            received_us: 0,
            peer: b"127.0.0.1:1",
            client_ip: b"127.0.0.1",
            client_ip_source: crate::record::ClientIpSource::Peer,
            method: b"GET",
            path: b"/rum/beacon",
            kind: crate::record::Kind::Query,
            user_agent: None,
            referer: Some(b"https://referer.example/page"),
            origin: origin.map(str::as_bytes),
            params: params
                .into_iter()
                .map(|(n, v)| (Cow::Borrowed(n.as_bytes()), Cow::Borrowed(v.as_bytes())))
                .collect(),
            body: Cow::Borrowed(b""),
            event_id: None,
        }
    }

    #[test]
    fn renders_fields_into_tokens() {
        let t = Template::parse("beacons.{site}.{path}.{kind}.{method}.{param.app}").unwrap();
        let mut s = String::new();
        let r = record(
            vec![
                ("u", "https://Shop.Example.com/cart?x=1"),
                ("app", "web v2"),
            ],
            Some("https://origin.example"),
        );
        t.render(&r, &mut s);
        assert_eq!(s, "beacons.shop_example_com.rum_beacon.query.get.web_v2");
        // No page URL: the Origin, then the Referer; a missing param is `_`.
        t.render(&record(vec![], Some("https://origin.example")), &mut s);
        assert_eq!(s, "beacons.origin_example.rum_beacon.query.get._");
        t.render(&record(vec![("u", "/relative")], None), &mut s);
        assert!(s.starts_with("beacons.referer_example."), "{s}");
        assert!(crate::sink::nats::subject::matches("beacons.>", &s));
    }

    #[test]
    fn host_of_urls() {
        assert_eq!(
            host(b"https://www.example.com:8443/x?y"),
            Some(&b"www.example.com"[..])
        );
        assert_eq!(
            host(b"http://u:p@shop.example/"),
            Some(&b"shop.example"[..])
        );
        assert_eq!(host(b"http://[::1]:8080/"), Some(&b"[::1]"[..]));
        assert_eq!(host(b"/relative"), None);
        assert_eq!(host(b"https:///x"), None);
    }

    #[test]
    fn values_become_one_safe_token() {
        let mut s = String::new();
        push_value(&mut s, b"www.Example.com/a b*>");
        assert_eq!(s, "www_example_com_a_b__");
        s.clear();
        push_value(&mut s, b"");
        assert_eq!(s, "_");
        s.clear();
        push_value(&mut s, &[b'a'; 200]);
        assert_eq!(s.len(), MAX_TOKEN);
    }
}
