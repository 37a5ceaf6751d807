//! Keys that moved to where an operator looks for them: still read under their old names, each
//! with a warning naming its new key, so no config file written for an older release breaks.
//! `config validate` prints how to migrate.

use super::error::ConfigError;

/// A key that moved: its old dotted path, its new one, and the factor its value is multiplied
/// by on the way (a unit change; 1 when only the name changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    /// The old dotted key.
    pub(crate) old: &'static str,
    /// The new dotted key.
    pub(crate) new: &'static str,
    /// Old value × `scale` = new value.
    pub(crate) scale: i64,
}

const fn moved(old: &'static str, new: &'static str) -> Moved {
    Moved { old, new, scale: 1 }
}

/// Every key that moved, oldest first.
pub(crate) const MOVED: [Moved; 16] = [
    // The files sink's keys were loose in [processor], beside the stage's socket and admin.
    moved("processor.data_dir", "processor.files.data_dir"),
    moved("processor.file_prefix", "processor.files.prefix"),
    moved("processor.rotate_bytes", "processor.files.rotate_bytes"),
    moved("processor.rotate_seconds", "processor.files.rotate_seconds"),
    moved("processor.file_mode", "processor.files.mode"),
    moved("processor.fsync", "processor.files.fsync"),
    // One socket, one section: its path was in [forward], its mode in [processor].
    moved("processor.socket_mode", "forward.socket_mode"),
    // The stage's metrics listener, shaped like the collector's [admin].
    moved("processor.admin_enabled", "processor.admin.enabled"),
    moved("processor.admin_listen", "processor.admin.listen"),
    // The collector restarts the embedded stage: a [forward] (mode = "embedded") setting.
    moved("processor.restart_delay_ms", "forward.restart_delay_ms"),
    // [queue] was the limit on records waiting for a spool commit, and every 503's
    // Retry-After; both now sit with what they limit.
    moved("queue.capacity", "spool.max_pending_records"),
    moved("queue.retry_after_seconds", "http.retry_after_seconds"),
    // Who the client is: the PROXY header and trusted X-Forwarded-For decide it together.
    moved("server.proxy_protocol", "client_ip.proxy_protocol"),
    moved("http.trusted_proxies", "client_ip.trusted_proxies"),
    // One retention unit across sinks: seconds.
    moved(
        "processor.nats.max_age_seconds",
        "processor.nats.retention_seconds",
    ),
    Moved {
        old: "processor.kafka.retention_hours",
        new: "processor.kafka.retention_seconds",
        scale: 3600,
    },
];

/// A key a config file wrote under its old name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecation {
    /// The old key, as written.
    pub old: &'static str,
    /// Where it lives now.
    pub new: &'static str,
    /// Old value × `scale` = new value.
    pub scale: i64,
}

impl std::fmt::Display for Deprecation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` is deprecated: write it as `{}`",
            self.old, self.new
        )?;
        if self.scale != 1 {
            write!(f, " (in its new unit: the old value × {})", self.scale)?;
        }
        Ok(())
    }
}

/// Moves every old key in `root` to its new place (scaling its value if the unit changed) and
/// drops tables left empty. Both names at once is an error: which one was meant is a guess.
pub(crate) fn apply(root: &mut toml::Table) -> Result<Vec<Deprecation>, ConfigError> {
    let mut found = Vec::new();
    for m in MOVED.iter() {
        let Some(mut value) = take(root, m.old) else {
            continue;
        };
        if get(root, m.new).is_some() {
            return Err(ConfigError::new(
                m.old,
                format!("set together with its new name `{}`", m.new),
                format!("keep only `{}`", m.new),
            ));
        }
        if m.scale != 1 {
            if let toml::Value::Integer(n) = value {
                value = toml::Value::Integer(n.saturating_mul(m.scale));
            }
        }
        put(root, m.new, value).map_err(|at| {
            ConfigError::new(
                m.old,
                format!("cannot move it to `{}`: `{at}` is not a table", m.new),
                format!("write `{}` in its own section", m.new),
            )
        })?;
        found.push(Deprecation {
            old: m.old,
            new: m.new,
            scale: m.scale,
        });
    }
    Ok(found)
}

/// `e` with its key as the file wrote it: an error in a moved key named by its old name.
pub(crate) fn as_written(mut e: ConfigError, found: &[Deprecation]) -> ConfigError {
    if let Some(d) = found.iter().find(|d| {
        e.key == d.new
            || e.key
                .strip_prefix(d.new)
                .is_some_and(|r| r.starts_with(['.', '[']))
    }) {
        e.key = format!("{}{}", d.old, &e.key[d.new.len()..]);
        if d.scale != 1 {
            e.problem = format!("{} (after × {} into `{}`)", e.problem, d.scale, d.new);
        }
    }
    e
}

/// Removes and returns the value at a dotted path; removes tables it leaves empty.
fn take(t: &mut toml::Table, path: &str) -> Option<toml::Value> {
    match path.split_once('.') {
        None => t.remove(path),
        Some((head, rest)) => {
            let inner = t.get_mut(head)?.as_table_mut()?;
            let v = take(inner, rest)?;
            if inner.is_empty() {
                t.remove(head);
            }
            Some(v)
        }
    }
}

fn get<'a>(t: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    match path.split_once('.') {
        None => t.get(path),
        Some((head, rest)) => get(t.get(head)?.as_table()?, rest),
    }
}

/// Inserts at a dotted path, creating tables; `Err(prefix)` where a non-table is in the way.
fn put(t: &mut toml::Table, path: &str, v: toml::Value) -> Result<(), String> {
    match path.split_once('.') {
        None => {
            t.insert(path.to_string(), v);
            Ok(())
        }
        Some((head, rest)) => {
            let inner = t
                .entry(head)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match inner.as_table_mut() {
                Some(inner) => put(inner, rest, v).map_err(|at| format!("{head}.{at}")),
                None => Err(head.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn old_keys_move_and_empty_sections_go() {
        let mut t = table(
            "[queue]\ncapacity = 10\nretry_after_seconds = 3\n[processor.kafka]\nretention_hours = 2\n",
        );
        let d = apply(&mut t).unwrap();
        assert_eq!(d.len(), 3);
        assert!(!t.contains_key("queue"), "the emptied [queue] is gone");
        assert_eq!(
            get(&t, "spool.max_pending_records"),
            Some(&toml::Value::Integer(10))
        );
        assert_eq!(
            get(&t, "http.retry_after_seconds"),
            Some(&toml::Value::Integer(3))
        );
        assert_eq!(
            get(&t, "processor.kafka.retention_seconds"),
            Some(&toml::Value::Integer(7200))
        );
        assert!(d[2].to_string().contains("× 3600"), "{}", d[2]);
    }

    #[test]
    fn both_names_at_once_is_an_error_naming_the_old_key() {
        let mut t = table("[queue]\ncapacity = 10\n[spool]\nmax_pending_records = 5\n");
        let e = apply(&mut t).unwrap_err();
        assert_eq!(e.key, "queue.capacity");
        assert!(e.fix.contains("spool.max_pending_records"), "{e}");
    }

    #[test]
    fn every_new_key_is_unique_and_differs_from_every_old_one() {
        let all = &MOVED;
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.new, b.new);
                assert_ne!(a.old, b.old);
            }
            assert!(
                all.iter().all(|b| b.old != a.new),
                "{} is a new and an old key",
                a.new
            );
        }
    }
}
