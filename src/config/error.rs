//! [`ConfigError`] and the helpers that turn serde and TOML errors into key/problem/fix.

/// A configuration problem: which key, what is wrong with it, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {problem}; fix: {fix}")]
pub struct ConfigError {
    /// Dotted key path, e.g. `http.idle_timeout_seconds`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl ConfigError {
    /// A problem with `key`.
    pub(crate) fn new(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// `key` holds a mode for files of beacons: read and write for the owner, nothing for others
/// (they hold client IPs and page URLs), no execute bits (directories get them from
/// [`dir_mode`]).
pub(crate) fn file_mode(key: &str, v: u32) -> Result<(), ConfigError> {
    if v > 0o777 || v & 0o600 != 0o600 || v & 0o111 != 0 || v & 0o007 != 0 {
        return Err(ConfigError::new(
            key,
            format!(
                "{v:#o} is not a mode for beacon files (owner read+write, nothing for others, \
                 no execute bits)"
            ),
            "use 0o640 (group may read: a log shipper in the group) or 0o600 (owner only)",
        ));
    }
    Ok(())
}

/// The mode of a directory holding files of mode `file`: search (x) wherever read is allowed.
pub(crate) fn dir_mode(file: u32) -> u32 {
    file | ((file & 0o444) >> 2)
}

/// `key` must be above zero.
pub(crate) fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::new(
            key,
            "must be greater than 0",
            "use a positive value",
        ));
    }
    Ok(())
}

/// Turns a TOML syntax error into key/problem/fix, pointing at the line.
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
    let at = line.map_or_else(String::new, |l| format!(" (line {l})"));
    ConfigError::new(
        &format!("<syntax>{at}"),
        e.message().trim().to_string(),
        "fix the TOML syntax at that line; `beacon-collector config print-default` shows a valid file",
    )
}

/// Turns a serde error at a key path into key/problem/fix.
pub(crate) fn path_error(path: &str, msg: &str) -> ConfigError {
    if msg.starts_with("unknown field `") {
        // serde_path_to_error's path already ends with the unknown key.
        let key = path;
        let expected = msg
            .split_once("expected ")
            .map(|(_, e)| format!(" (known keys here: {e})"))
            .unwrap_or_default();
        return ConfigError::new(
            key,
            "unknown key",
            format!("remove it or correct its spelling{expected}"),
        );
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let expected = rest.split_once("expected ").map_or("", |(_, e)| e);
        return ConfigError::new(
            path,
            format!("unknown value `{}`", rest.split('`').next().unwrap_or(rest)),
            format!("use one of {expected}"),
        );
    }
    ConfigError::new(
        path,
        msg.to_string(),
        "give it a value of the type the default config shows (`beacon-collector config print-default`)",
    )
}
