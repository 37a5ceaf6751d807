//! `[client_ip]`: who the client of a request is. The PROXY header (from an L4 balancer) names
//! the client of a connection; a trusted proxy's `X-Forwarded-For` names the client of a
//! request. Both decide one field of every record, so they are set together.

use serde::{Deserialize, Serialize};

/// Where the client's address comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientIpConfig {
    /// PROXY protocol on the listener: `off`, `v1`, `v2` or `any`. When on, a connection
    /// without a valid header is closed (never guessed); the header's source is the client.
    pub proxy_protocol: crate::ingest::proxy::Mode,
    /// Proxies whose `X-Forwarded-For` is believed (CIDR ranges). Empty: the header is ignored.
    /// When a connection comes from one of them, the client is the right-most hop that is not.
    pub trusted_proxies: Vec<crate::ingest::forwarded_for::Cidr>,
}
