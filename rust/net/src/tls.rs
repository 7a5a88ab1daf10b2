//! TLS client configurations: rustls with aws-lc-rs, the system's trusted roots plus a
//! provider's own CA bundle, an optional client certificate (mTLS), and ALPN for HTTP/2.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::error::ConfigError;

/// The system's trusted roots, loaded once per process (reading the system bundle takes
/// milliseconds): every provider's configuration starts from them.
fn system_roots() -> &'static (Vec<CertificateDer<'static>>, usize) {
    static ROOTS: OnceLock<(Vec<CertificateDer<'static>>, usize)> = OnceLock::new();
    ROOTS.get_or_init(|| {
        // Unreadable entries are skipped (as every TLS client does); the count tells whether
        // anything was found at all.
        let loaded = rustls_native_certs::load_native_certs();
        let count = loaded.certs.len();
        (loaded.certs, count)
    })
}

/// How many trusted roots the system provides (0 means only a provider's `ca_file` can make a
/// TLS connection succeed: the gateway warns about it at startup).
pub fn system_root_count() -> usize {
    system_roots().1
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What a provider's TLS needs, as PEM text read from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// Certificates trusted in addition to the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate chain and its private key (both or neither).
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    /// Offer HTTP/2 by ALPN (else HTTP/1.1 only).
    pub http2: bool,
}

pub fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, ConfigError> {
    let mut roots = RootCertStore::empty();
    let (system, _) = system_roots();
    // A system root rustls cannot use is skipped, as the system's own clients do.
    roots.add_parsable_certificates(system.iter().cloned());
    if let Some(pem) = &settings.ca_pem {
        let certs = parse_certs(pem, "ca_file")?;
        for cert in certs {
            roots.add(cert).map_err(|e| {
                ConfigError(format!(
                    "`ca_file`: a certificate is not usable as a trust anchor: {e}"
                ))
            })?;
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let mut config = match (&settings.client_cert_pem, &settings.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = parse_certs(cert, "client_cert")?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
                // Never the key's text: only what kind of problem it is.
                ConfigError(
                    "`client_key`: no PEM private key (PKCS#8, PKCS#1 or SEC1) found".into(),
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ConfigError(format!("`client_cert`/`client_key`: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(ConfigError("`client_cert` needs `client_key`".into())),
        (None, Some(_)) => return Err(ConfigError("`client_key` needs `client_cert`".into())),
    };
    config.alpn_protocols = if settings.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError(format!("`{what}`: not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError(format!("`{what}`: no PEM certificate found")));
    }
    Ok(certs)
}
