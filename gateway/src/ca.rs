//! The deployment's certificate authority: made on the gateway's first start (its private key
//! sealed under the master key in the database), trusted inside every sandbox, and used to mint
//! a leaf certificate for each intercepted host, cached.
//!
//! Never writes the CA's private key anywhere but the sealed database row.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_store::secrets::SecretValue;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::GatewayError;

/// Leaf certificates live 30 days and are re-minted after 7.
const LEAF_LIFETIME: time::Duration = time::Duration::days(30);
const LEAF_REFRESH: Duration = Duration::from_secs(7 * 24 * 3600);
/// Cached leaf configurations; past this the cache starts again (one per intercepted host).
const CACHE_MAX: usize = 10_000;

pub struct Authority {
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    /// One key for every leaf (as mitmproxy does): minting is then a signature, not a keygen.
    leaf_key: KeyPair,
    provider: Arc<rustls::crypto::CryptoProvider>,
    cache: Mutex<HashMap<String, (Instant, Arc<ServerConfig>)>>,
    /// Whether sandboxed clients are offered HTTP/2 (ALPN `h2`); see [`Authority::offering_http2`].
    http2: bool,
}

/// The CA's name is derived from its key, so the same key always gives the same issuer name
/// (leaves minted after a restart chain to the certificate sandboxes already trust).
fn ca_params(key: &KeyPair) -> CertificateParams {
    let id = hex::encode(Sha256::digest(key.public_key_der()));
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Airlock");
    dn.push(
        DnType::CommonName,
        format!("Airlock gateway CA {}", &id[..12]),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    params
}

impl Authority {
    /// A new CA: its certificate (PEM) and private key (PKCS#8 PEM).
    pub fn generate() -> Result<(String, SecretValue), GatewayError> {
        let key = KeyPair::generate().map_err(GatewayError::ca)?;
        let cert = ca_params(&key)
            .self_signed(&key)
            .map_err(GatewayError::ca)?;
        Ok((
            cert.pem(),
            SecretValue::new(key.serialize_pem().into_bytes()),
        ))
    }

    pub fn load(cert_pem: &str, key_pem: &SecretValue) -> Result<Authority, GatewayError> {
        let key_text = std::str::from_utf8(key_pem.expose())
            .map_err(|_| GatewayError::Ca("the stored CA key is not PEM".into()))?;
        let ca_key = KeyPair::from_pem(key_text).map_err(GatewayError::ca)?;
        let ca_cert = ca_params(&ca_key)
            .self_signed(&ca_key)
            .map_err(GatewayError::ca)?;
        let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| GatewayError::Ca(format!("the stored CA certificate: {e}")))?;
        Ok(Authority {
            ca_cert,
            ca_key,
            ca_der,
            ca_pem: cert_pem.to_string(),
            leaf_key: KeyPair::generate().map_err(GatewayError::ca)?,
            provider: Arc::new(crypto()),
            cache: Mutex::new(HashMap::new()),
            http2: false,
        })
    }

    /// Offers sandboxed clients HTTP/2 as well as HTTP/1.1 (off by default: decision 0014).
    /// libcurl before 8.2 (Debian 12's 7.88, so git and curl in most images of these years)
    /// sends a 64 KiB piece of an upload twice when an HTTP/2 write would block, which
    /// corrupts pushes and uploads whenever the gateway reads slower than the client writes.
    pub fn offering_http2(mut self, yes: bool) -> Self {
        self.http2 = yes;
        self
    }

    /// The CA certificate sandboxes trust.
    pub fn cert_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The TLS configuration that presents `host`'s leaf certificate (minted once, cached).
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, GatewayError> {
        if let Some((at, cfg)) = self.cache.lock().expect("cache lock").get(host) {
            if at.elapsed() < LEAF_REFRESH {
                return Ok(cfg.clone());
            }
        }
        let cfg = Arc::new(self.mint(host)?);
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(host.to_string(), (Instant::now(), cfg.clone()));
        Ok(cfg)
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, GatewayError> {
        let mut params =
            CertificateParams::new(vec![host.to_string()]).map_err(GatewayError::ca)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + LEAF_LIFETIME;
        let leaf = params
            .signed_by(&self.leaf_key, &self.ca_cert, &self.ca_key)
            .map_err(GatewayError::ca)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(GatewayError::ca)?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.ca_der.clone()], key)
            .map_err(GatewayError::ca)?;
        cfg.alpn_protocols = if self.http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        // The gateway's order of cipher suites, not the sandbox's (see [`crypto`]).
        cfg.ignore_client_order = true;
        Ok(cfg)
    }
}

/// The TLS provider of both sides of the gateway: ring's, with AES-128-GCM first. Every
/// byte a sandbox exchanges is encrypted twice more here (once each way of the gateway), so
/// the cheaper of the two AES-GCM suites of TLS 1.3 (ten rounds instead of fourteen, the
/// same 128-bit security level as the rest of the handshake) is worth choosing.
pub(crate) fn crypto() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    provider
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS handshake over an in-memory pipe, the client trusting only `ca_pem`.
    async fn handshake(auth: &Authority, ca_pem: &str, sni: &str) -> Result<(), String> {
        let mut roots = rustls::RootCertStore::empty();
        let der: CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).unwrap();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(auth.provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = auth.server_config("api.example.test").unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let accept = tokio_rustls::TlsAcceptor::from(server).accept(a);
        let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let connect = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, b);
        let (s, c) = tokio::join!(accept, connect);
        c.map_err(|e| e.to_string())?;
        s.map_err(|e| e.to_string())?;
        Ok(())
    }

    #[tokio::test]
    async fn a_reloaded_authority_mints_leaves_that_chain_to_the_stored_certificate() {
        let (pem, key) = Authority::generate().unwrap();
        let first = Authority::load(&pem, &key).unwrap();
        let again = Authority::load(&pem, &key).unwrap();
        assert_eq!(first.cert_pem(), again.cert_pem());
        handshake(&again, &pem, "api.example.test")
            .await
            .expect("a client trusting the stored CA accepts a leaf minted after a reload");
        let wrong_name = handshake(&again, &pem, "evil.example.test").await;
        assert!(wrong_name.is_err(), "{wrong_name:?}");
        let (other_pem, _) = Authority::generate().unwrap();
        let other_ca = handshake(&again, &other_pem, "api.example.test").await;
        assert!(other_ca.is_err(), "{other_ca:?}");
        let cfg = again.server_config("api.example.test").unwrap();
        assert!(Arc::ptr_eq(
            &cfg,
            &again.server_config("api.example.test").unwrap()
        ));
    }
}
