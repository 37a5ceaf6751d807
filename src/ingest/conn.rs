//! Who is on the other end of a connection ([`Conn`]): the TCP peer, and the client the
//! PROXY header names when the listener expects one (the first step of every connection on
//! either engine), formatted once per connection.

use super::proxy;
use crate::metrics as m;
use crate::record::ClientIpSource;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpStream;

/// Text that fits inline: an `ip:port` or an IP address, formatted once per connection so a
/// connection owns no heap memory for it.
#[derive(Clone, Copy)]
pub(crate) struct Inline {
    buf: [u8; 64],
    len: u8,
}

impl Inline {
    pub(super) fn new(v: impl std::fmt::Display) -> Self {
        use std::io::Write;
        let mut buf = [0u8; 64];
        let mut w = &mut buf[..];
        // The longest IPv6 socket address with a scope id is 58 bytes.
        let _ = write!(w, "{v}");
        let len = 64 - w.len();
        Self {
            buf,
            len: len as u8,
        }
    }

    /// The text.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// Who is on the other end of a connection, as recorded in each beacon.
pub(crate) struct Conn {
    /// `ip:port` of the TCP peer.
    pub(crate) peer: Inline,
    /// The connection's client: the peer, or the PROXY header's source.
    pub(crate) client: IpAddr,
    /// `client`, formatted.
    pub(crate) client_ip: Inline,
    /// Where `client` came from.
    pub(crate) client_ip_source: ClientIpSource,
}

impl Conn {
    /// A connection whose client is `client` (from `source`), reached through `peer`.
    pub(crate) fn new(peer: SocketAddr, client: IpAddr, source: ClientIpSource) -> Self {
        Self {
            peer: Inline::new(peer),
            client,
            client_ip: Inline::new(client),
            client_ip_source: source,
        }
    }
}

/// The client of a fresh connection: its peer, or the source its PROXY header names when the
/// listener expects one. `None`: no valid header in time (counted and logged); close it
/// without an answer. Both engines start every connection here.
pub(crate) async fn identify(
    mode: proxy::Mode,
    stream: &mut TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<Conn> {
    if mode == proxy::Mode::Off {
        return Some(Conn::new(peer, peer.ip(), ClientIpSource::Peer));
    }
    // Boxed: a connection's task holds the state of this await for its whole life otherwise,
    // and that size is the memory of every idle connection.
    Box::pin(read_proxy_header(mode, stream, peer, timeout)).await
}

/// Reads the PROXY header off a fresh connection.
async fn read_proxy_header(
    mode: proxy::Mode,
    stream: &mut TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<Conn> {
    let h = match proxy::read_header(stream, mode, timeout).await {
        Ok(h) => h,
        Err(e) => {
            metrics::counter!(m::PROXY_HEADER_ERRORS_TOTAL, "reason" => e.reason()).increment(1);
            tracing::debug!(%peer, error = %e, "closing connection without a valid PROXY header");
            return None;
        }
    };
    let (source, version) = if h.version == 1 {
        (ClientIpSource::ProxyV1, "1")
    } else {
        (ClientIpSource::ProxyV2, "2")
    };
    metrics::counter!(m::PROXY_HEADERS_TOTAL, "version" => version).increment(1);
    // LOCAL / UNKNOWN: the proxy's own connection (health checks).
    let (client, source) = h
        .source
        .map_or((peer.ip(), ClientIpSource::Peer), |a| (a.ip(), source));
    Some(Conn::new(peer, client, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_text_holds_the_longest_socket_address() {
        let a: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .unwrap();
        assert_eq!(Inline::new(a).as_bytes(), a.to_string().as_bytes());
    }
}
