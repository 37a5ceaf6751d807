//! NATS subject patterns: checking a stream's subject patterns and matching subjects against
//! them, so the config is refused when a subject the template (`crate::sink::template`) can
//! produce would not land in the stream.

use crate::sink::template::literal_token;

/// Checks a stream subject pattern (`beacons.>`, `beacons.*.get`).
pub(crate) fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty".into());
    }
    let tokens: Vec<&str> = p.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        match *t {
            "*" => {}
            ">" if i + 1 == tokens.len() => {}
            ">" => return Err("`>` must be the last token".into()),
            _ => literal_token(t)?,
        }
    }
    Ok(())
}

/// NATS subject matching: `*` matches one token, a final `>` one or more.
pub(crate) fn matches(pattern: &str, subject: &str) -> bool {
    let mut s = subject.split('.');
    for p in pattern.split('.') {
        match (p, s.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (lit, Some(t)) if lit == t => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matching() {
        assert!(matches("beacons.>", "beacons.x"));
        assert!(matches("beacons.>", "beacons.x.y"));
        assert!(!matches("beacons.>", "beacons"));
        assert!(matches("beacons.*", "beacons.x"));
        assert!(!matches("beacons.*", "beacons.x.y"));
        assert!(matches("*.x", "beacons.x"));
        assert!(matches("beacons", "beacons"));
        assert!(!matches("beacons", "beacons.x"));
        assert!(!matches("beacons.get", "beacons.x"));
        assert!(check_pattern("beacons.>").is_ok());
        assert!(check_pattern("a.>.b").is_err());
        assert!(check_pattern("a..b").is_err());
    }
}
