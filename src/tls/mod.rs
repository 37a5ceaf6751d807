//! HTTPS: the certificates (loaded, checked, chosen by SNI, reloaded on SIGHUP), the rustls
//! server config both engines share (aws-lc-rs, chosen by measurement: docs/BENCHMARKS.md),
//! session tickets, and the handshake outcomes as metrics. The byte-level work of a TLS
//! connection is the engines' ([`crate::ingest`]'s `tls_conn` for the native engine).
//!
//! - [`x509`]: the few certificate fields `check` and the expiry metric read.
//! - [`ticket`]: session tickets sealed with a key file shared across a fleet.

pub(crate) mod ticket;
pub(crate) mod x509;

use crate::config::{ConfigError, MinVersion, TlsConfig};
use crate::metrics as m;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// The crypto provider of every TLS connection (never the process default: the NATS client in
/// the same binary brings ring).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// One certificate with its key, where it came from and what `check` reports of it.
pub(crate) struct Loaded {
    /// The chain and signing key rustls serves.
    pub(crate) key: Arc<CertifiedKey>,
    /// SNI names it answers (empty: the default certificate).
    pub(crate) server_names: Vec<String>,
    /// Each certificate of the chain, read (end entity first); `None` where unreadable.
    pub(crate) chain: Vec<Option<x509::CertInfo>>,
    /// The config key of its `cert_file`.
    pub(crate) key_path: String,
}

impl Loaded {
    /// The label it is reported under: its first SNI name, or its certificate's first DNS
    /// name, or `default`.
    pub(crate) fn label(&self) -> String {
        self.server_names
            .first()
            .cloned()
            .or_else(|| {
                self.chain
                    .first()
                    .and_then(|c| c.as_ref()?.dns_names.first().cloned())
            })
            .unwrap_or_else(|| "default".to_string())
    }

    fn load(
        cert_key: &str,
        key_key: &str,
        cert_file: &Path,
        key_file: &Path,
        server_names: Vec<String>,
    ) -> Result<Self, ConfigError> {
        let read = |key: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                ConfigError::new(
                    key,
                    format!("cannot read {}: {e}", path.display()),
                    "give the path of a readable PEM file",
                )
            })
        };
        let cert_pem = read(cert_key, cert_file)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                ConfigError::new(
                    cert_key,
                    format!("{} is not PEM certificates: {e}", cert_file.display()),
                    "give the certificate, then its intermediates, each as -----BEGIN CERTIFICATE-----",
                )
            })?;
        if chain.is_empty() {
            return Err(ConfigError::new(
                cert_key,
                format!("{} holds no certificate", cert_file.display()),
                "give the certificate, then its intermediates, each as -----BEGIN CERTIFICATE-----",
            ));
        }
        let key_pem = read(key_key, key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            ConfigError::new(
                key_key,
                format!("{} holds no private key: {e}", key_file.display()),
                "give the PEM private key (PKCS#8, SEC1 EC or PKCS#1 RSA) of the certificate",
            )
        })?;
        let certified = CertifiedKey::from_der(chain.clone(), key, &provider()).map_err(|e| {
            let problem = match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "the key in {} does not match the certificate in {}",
                    key_file.display(),
                    cert_file.display()
                ),
                e => format!("{} cannot be used: {e}", key_file.display()),
            };
            ConfigError::new(
                key_key,
                problem,
                "give the private key the certificate was issued for (ECDSA P-256/P-384, RSA or Ed25519)",
            )
        })?;
        Ok(Self {
            key: Arc::new(certified),
            server_names,
            chain: chain.iter().map(|c| x509::parse(c)).collect(),
            key_path: cert_key.to_string(),
        })
    }
}

/// Every certificate of a `[tls]` section.
pub(crate) struct Certificates {
    /// `tls.cert_file`: answers every name no other certificate claims.
    pub(crate) default: Loaded,
    /// `[[tls.certificates]]`, in file order (the first whose name matches answers).
    pub(crate) sni: Vec<Loaded>,
}

impl Certificates {
    /// Reads and checks every pair (a key that does not match its certificate is refused).
    pub(crate) fn load(cfg: &TlsConfig) -> Result<Self, ConfigError> {
        let default = Loaded::load(
            "tls.cert_file",
            "tls.key_file",
            &cfg.cert_file,
            &cfg.key_file,
            Vec::new(),
        )?;
        let sni = cfg
            .certificates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Loaded::load(
                    &format!("tls.certificates[{i}].cert_file"),
                    &format!("tls.certificates[{i}].key_file"),
                    &c.cert_file,
                    &c.key_file,
                    c.server_names.clone(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { default, sni })
    }

    /// The certificate for the name the client asked for.
    fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        sni.and_then(|name| {
            self.sni
                .iter()
                .find(|l| l.server_names.iter().any(|p| x509::name_matches(p, name)))
        })
        .map_or(&self.default.key, |l| &l.key)
    }

    /// Every certificate, the default first.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Loaded> {
        std::iter::once(&self.default).chain(self.sni.iter())
    }
}

/// Chooses a certificate per handshake from the current set (swapped whole on reload).
struct Resolver {
    current: RwLock<Arc<Certificates>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Some(set.pick(hello.server_name()).clone())
    }
}

/// The HTTPS side of a running collector: the rustls config every TLS connection starts
/// from, and what SIGHUP reloads under it.
pub(crate) struct TlsServer {
    /// Shared by every connection of both engines.
    pub(crate) config: Arc<rustls::ServerConfig>,
    resolver: Arc<Resolver>,
    tickets: Option<Arc<ticket::FileTicketer>>,
}

impl TlsServer {
    /// Builds the server config of a validated `[tls]` section.
    pub(crate) fn new(cfg: &TlsConfig) -> Result<Self, ConfigError> {
        let certs = Certificates::load(cfg)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(certs)),
        });
        let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| ConfigError::new("tls.min_version", e.to_string(), "use \"1.2\""))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let mut tickets = None;
        if cfg.session_tickets {
            config.ticketer = if cfg.ticket_key_file.as_os_str().is_empty() {
                rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| {
                    ConfigError::new("tls.session_tickets", e.to_string(), "set it to false")
                })?
            } else {
                let t = Arc::new(ticket::FileTicketer::load(&cfg.ticket_key_file)?);
                tickets = Some(t.clone());
                t
            };
            // One ticket per full handshake: a beacon page resumes one connection at a time,
            // and each ticket is an encryption and ~200 bytes on the wire.
            config.send_tls13_tickets = 1;
            // TLS 1.2 clients that resume by session id (tickets cover the rest).
            config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
        } else {
            config.send_tls13_tickets = 0;
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        }
        let s = Self {
            config: Arc::new(config),
            resolver,
            tickets,
        };
        s.export_expiry();
        Ok(s)
    }

    /// Takes the certificate files (and the ticket key file) again: new handshakes get the new
    /// certificates, open connections are untouched. On any error the running set stays.
    pub(crate) fn reload(&self, cfg: &TlsConfig) -> Result<(), ConfigError> {
        let certs = Certificates::load(cfg)?;
        if let Some(t) = &self.tickets {
            if !cfg.ticket_key_file.as_os_str().is_empty() {
                t.rotate(&cfg.ticket_key_file)?;
            }
        }
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(certs);
        self.export_expiry();
        Ok(())
    }

    /// The certificates served now.
    pub(crate) fn certificates(&self) -> Arc<Certificates> {
        self.resolver
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the expiry gauge of every certificate served.
    fn export_expiry(&self) {
        for l in self.certificates().all() {
            if let Some(Some(info)) = l.chain.first() {
                metrics::gauge!(m::TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, "name" => l.label())
                    .set(info.not_after as f64);
            }
        }
    }
}

/// How a TLS handshake ended, as `beacon_tls_handshakes_total{result}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// A full handshake.
    Ok,
    /// Resumed from a ticket or a session id.
    Resumed,
    /// No cipher suite, version or key share in common (old clients: SSLv3, TLS 1.0/1.1).
    NoSharedCipher,
    /// The client refused our certificate (an alert saying so).
    BadCertificate,
    /// Anything else the peer got wrong (garbage, a malformed or oversized ClientHello).
    ProtocolError,
    /// Not complete within `http.header_timeout_seconds`.
    Timeout,
    /// Plain HTTP sent to the TLS port (answered 400, as nginx does).
    PlainHttp,
}

impl Handshake {
    /// Every result, for declaring the counters at 0.
    pub(crate) const ALL: [Handshake; 7] = [
        Handshake::Ok,
        Handshake::Resumed,
        Handshake::NoSharedCipher,
        Handshake::BadCertificate,
        Handshake::ProtocolError,
        Handshake::Timeout,
        Handshake::PlainHttp,
    ];

    /// The label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Resumed => "resumed",
            Handshake::NoSharedCipher => "no_shared_cipher",
            Handshake::BadCertificate => "bad_certificate",
            Handshake::ProtocolError => "protocol_error",
            Handshake::Timeout => "timeout",
            Handshake::PlainHttp => "plain_http",
        }
    }

    /// The result of a handshake that failed with `e`.
    pub(crate) fn of_error(e: &rustls::Error) -> Self {
        use rustls::{AlertDescription as A, Error as E};
        match e {
            // No version, suite, group or signature scheme in common: an SSLv3/TLS 1.0/1.1
            // client, or one whose offer this build does not have.
            E::PeerIncompatible(_) => Handshake::NoSharedCipher,
            E::AlertReceived(
                A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::UnsupportedCertificate
                | A::CertificateRevoked,
            ) => Handshake::BadCertificate,
            E::InvalidMessage(rustls::InvalidMessage::UnknownProtocolVersion) => {
                Handshake::NoSharedCipher
            }
            _ => Handshake::ProtocolError,
        }
    }

    /// Counts one.
    pub(crate) fn count(self) {
        metrics::counter!(m::TLS_HANDSHAKES_TOTAL, "result" => self.label()).increment(1);
    }
}

/// Counts a completed handshake: full or resumed, and the version it negotiated.
pub(crate) fn count_established(common: &rustls::CommonState) {
    let resumed = common.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    if resumed {
        Handshake::Resumed.count();
    } else {
        Handshake::Ok.count();
    }
    let version = match common.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
        _ => "1.2",
    };
    metrics::counter!(m::TLS_CONNECTIONS_TOTAL, "version" => version).increment(1);
}

/// Exports the TLS counters at 0 (see [`crate::metrics`]).
pub(crate) fn declare_metrics() {
    for h in Handshake::ALL {
        metrics::counter!(m::TLS_HANDSHAKES_TOTAL, "result" => h.label()).increment(0);
    }
    for v in ["1.2", "1.3"] {
        metrics::counter!(m::TLS_CONNECTIONS_TOTAL, "version" => v).increment(0);
    }
}

/// Whether the first bytes of a connection are a plain HTTP request rather than a TLS record
/// (which starts 0x16, a handshake, or 0x80 for an SSLv2-style hello): nginx's test.
pub(crate) fn looks_like_plain_http(first: &[u8]) -> bool {
    first.first().is_some_and(|b| b.is_ascii_uppercase())
}
