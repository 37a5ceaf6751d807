//! `[admin]`: the collector's metrics listener.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The admin listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `/metrics` (Prometheus text format).
    pub enabled: bool,
    /// Address of the admin listener. Keep it off the public interface.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9102".parse().expect("static address"),
        }
    }
}
