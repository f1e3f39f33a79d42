//! TLS settings (`--tls-cert`, `--tls-key`): the certificate chain and private key,
//! loaded once at startup into a rustls [`ServerConfig`] that every connection shares.
//!
//! The per-connection side lives in `engine::wire::tls`: each accepted socket of a TLS
//! server gets a boxed `TlsSession` next to it, driven by the shard's readiness events.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A loaded certificate and key: what `wss://` needs. Build it with [`TlsSettings::load`]
/// (PEM files) or [`TlsSettings::from_pem`] (PEM bytes); either fails with a message an
/// operator can act on, so a bad file stops the server at startup, never a connection.
#[derive(Clone)]
pub struct TlsSettings {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server: Arc<ServerConfig>,
}

impl TlsSettings {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1
    /// or SEC1).
    pub fn load(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, String> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let read = |path: &Path| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let chain = certificates(&cert_pem).map_err(|e| format!("{}: {e}", cert.display()))?;
        let private_key = private_key(&key_pem).map_err(|e| format!("{}: {e}", key.display()))?;
        let server =
            server_config(chain, private_key).map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
        Ok(TlsSettings { cert: Some(cert.into()), key: Some(key.into()), server })
    }

    /// The same from PEM text already in memory (tests, embedding applications).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        let server = server_config(certificates(cert_pem)?, private_key(key_pem)?)?;
        Ok(TlsSettings { cert: None, key: None, server })
    }

    /// The certificate file, when loaded from one.
    pub fn cert_path(&self) -> Option<&Path> {
        self.cert.as_deref()
    }

    /// The key file, when loaded from one.
    pub fn key_path(&self) -> Option<&Path> {
        self.key.as_deref()
    }

    /// The rustls configuration every connection's handshake uses.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        f.debug_struct("TlsSettings").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate (-----BEGIN CERTIFICATE-----) found".into());
    }
    Ok(chain)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => "no private key (PKCS#8, PKCS#1 or SEC1 PEM) found".to_string(),
        e => format!("not a PEM private key: {e}"),
    })
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("unusable certificate or key: {e}"))?;
    // WebSocket upgrades and the plain endpoints are HTTP/1.1; a client that offers only
    // h2 is refused in the handshake rather than sent bytes it cannot parse.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_clear_errors() {
        let missing = TlsSettings::load("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
        assert!(missing.contains("cannot read /nonexistent/cert.pem"), "{missing}");
        let no_cert = TlsSettings::from_pem(b"hello", b"").unwrap_err();
        assert!(no_cert.contains("no certificate"), "{no_cert}");
    }
}
