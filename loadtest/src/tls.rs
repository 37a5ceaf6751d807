//! HTTPS for the load generator: the rustls client (`--cacert`, `--insecure`, `--tls-resume`)
//! offering what browsers offer (X25519 first: rustls's own default order would make the
//! server pay for a costlier group than any browser asks for), and the stream a connection
//! reads and writes, plain or TLS.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Where TLS connections go and how they are made.
pub struct Target {
    pub connector: tokio_rustls::TlsConnector,
    pub name: rustls::pki_types::ServerName<'static>,
}

/// Why the TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("--cacert {0}: {1}")]
    CaFile(String, String),
    #[error(
        "https:// needs --cacert FILE (the CA that signed the server's certificate) or --insecure"
    )]
    NoTrust,
    #[error("{0}")]
    Rustls(String),
}

/// The client for `host` (the URL's host, sent as SNI when it is a name).
pub fn target(
    host: &str,
    cacert: Option<&std::path::Path>,
    insecure: bool,
    resume: bool,
) -> Result<Target, TlsSetupError> {
    use rustls::crypto::aws_lc_rs as provider;
    let mut p = provider::default_provider();
    p.kx_groups = vec![provider::kx_group::X25519, provider::kx_group::SECP256R1];
    let p = Arc::new(p);
    let builder = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let mut cfg = match (cacert, insecure) {
        (Some(path), _) => {
            use rustls::pki_types::pem::PemObject;
            let shown = path.display().to_string();
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| TlsSetupError::CaFile(shown.clone(), e.to_string()))?;
            for c in certs {
                let c = c.map_err(|e| TlsSetupError::CaFile(shown.clone(), e.to_string()))?;
                roots
                    .add(c)
                    .map_err(|e| TlsSetupError::CaFile(shown.clone(), e.to_string()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (None, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(p)))
            .with_no_client_auth(),
        (None, false) => return Err(TlsSetupError::NoTrust),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        // Every connection a full handshake (what `--close` over TLS measures by default).
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    let bare = host
        .rsplit_once(':')
        .map_or(host, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(bare.to_string())
        .map_err(|e| TlsSetupError::Rustls(format!("{bare}: {e}")))?;
    Ok(Target {
        connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        name,
    })
}

/// `--insecure`: any certificate is taken (signatures are still checked, so the handshake
/// costs the server what it costs with a real client).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection's stream: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
