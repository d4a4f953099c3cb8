//! The HTTPS listener's TLS (rustls): the certificate chain and key from PEM files, and
//! ALPN offering HTTP/2 first (Safari plays Low-Latency HLS only over HTTP/2), then
//! HTTP/1.1. rustls rather than OpenSSL: memory-safe, no system library to match, and
//! the `ring` provider builds with the C compiler the setup already installs.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ServerConfig, crypto};

/// A TLS acceptor for `cert` (PEM chain, leaf first) and `key` (PEM, PKCS#8, PKCS#1 or
/// SEC1). Errors name the file and what is wrong with it.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| anyhow!("tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "tls_cert {}: no PEM certificate in the file",
            cert.display()
        ));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow!("tls_key {}: {e}", key.display()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .with_context(|| {
                format!(
                    "tls_cert {} and tls_key {} do not make a usable pair",
                    cert.display(),
                    key.display()
                )
            })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
