//! Test TLS: a certificate authority of the tests' own (never Airlock's), leaf certificates
//! from it, and serving an axum router over HTTPS (HTTP/1.1 and HTTP/2 by ALPN) on loopback.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;

/// A test CA and the PEM file it was written to.
pub struct TestCa {
    pub pem: String,
    pub file: PathBuf,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(name: &str, dir: &Path) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let file = dir.join(format!("{}.pem", name.replace(' ', "-").to_lowercase()));
        std::fs::write(&file, cert.pem()).unwrap();
        TestCa {
            pem: cert.pem(),
            file,
            cert,
            key,
        }
    }

    /// A rustls server configuration with a leaf for `names`, offering h2 and http/1.1.
    pub fn server_config(&self, names: &[&str]) -> rustls::ServerConfig {
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&leaf_key, &self.cert, &self.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), self.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tls
    }
}

/// Serves `app` over HTTPS on a new loopback port (with upgrades); returns the port.
pub async fn serve_https(app: Router, tls: rustls::ServerConfig) -> u16 {
    serve_https_on("127.0.0.1:0".parse().unwrap(), app, tls).await
}

/// Serves `app` over HTTPS on `addr` (port 0 for any); returns the port.
pub async fn serve_https_on(
    addr: std::net::SocketAddr,
    app: Router,
    tls: rustls::ServerConfig,
) -> u16 {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    port
}

/// Serves `app` over plain HTTP on a new loopback port; returns the port.
pub async fn serve_http(app: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}
