//! The gateway: the egress proxy that is a sandbox's only way out.
//!
//! It authenticates each request with the session's egress token (bound to the sandbox's
//! address), matches it against the session's routes, injects the route's credential at
//! request time, scrubs that credential from responses, meters model usage, and audits every
//! request. Hosts without a route are refused unless listed for passthrough. It never logs or
//! returns a credential value, and never lets a request carrying a stored credential value
//! leave.
//!
//! `airlock up` runs it on the sandbox network's bridge address; `airlock gateway` runs it
//! alone. See decision 0007.

mod addr;
mod answer;
mod body;
mod ca;
mod conn;
mod context;
mod decode;
mod forward;
mod meter;
mod proxy;
mod upstream_proxy;
mod websocket;

// The checks without I/O live in their own crate (`gateway/checks`), so the fuzz targets build
// only them; under their old paths here.
pub use airlock_egress_checks::{canon, git, path, routes, scan};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_store::store::{NewAudit, NewUsage};
use airlock_store::Store;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use ca::Authority;
pub use meter::{is_model_call, Meter, Usage};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the gateway's certificate authority: {0}")]
    Ca(String),
    #[error("the extra CA bundle {path}: {reason}")]
    ExtraCa { path: String, reason: String },
    #[error("gateway.upstream_proxy: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] airlock_store::StoreError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl GatewayError {
    fn ca(e: impl std::fmt::Display) -> Self {
        GatewayError::Ca(e.to_string())
    }
}

/// What the gateway needs beyond the store.
#[derive(Debug, Clone, Default)]
pub struct GatewaySettings {
    /// PEM certificates trusted for upstreams besides the system roots (a private CA).
    pub extra_ca_file: Option<PathBuf>,
    /// Model tokens one session may use; 0 for no limit.
    pub session_token_budget: u64,
    /// Model tokens one human's sessions may use per UTC day; 0 for no limit.
    pub human_daily_token_budget: u64,
    /// The GitHub API that `github-app` credentials mint installation tokens from.
    pub github_api_url: Option<String>,
    /// The GitHub App whose private key `github-app` credentials hold.
    pub github_app_id: Option<u64>,
    /// Audit records that may wait to be written before new requests are refused with 503
    /// (back-pressure instead of unbounded memory when the database is slow or away);
    /// 0 for the default, [`AUDIT_BACKLOG`].
    pub audit_backlog: usize,
    /// Offer HTTP/2 to sandboxed clients (ALPN); HTTP/1.1 only by default (decision 0014).
    pub client_http2: bool,
    /// Timeouts and connection bounds towards sandboxes; `None` for
    /// [`airlock_serve::Limits::GATEWAY`].
    pub limits: Option<airlock_serve::Limits>,
    /// An HTTP proxy the gateway's own connections go through (`http://HOST:PORT`), and the
    /// hosts reached without it (`upstream_proxy`).
    pub upstream_proxy: Option<String>,
    pub no_proxy: Vec<String>,
}

/// Audit records that may wait to be written, by default (a few hundred bytes each).
pub const AUDIT_BACKLOG: usize = 50_000;

type UpstreamClient = Client<
    hyper_rustls::HttpsConnector<conn::ReadAhead<upstream_proxy::ViaProxy<HttpConnector>>>,
    body::BoxBody,
>;

type PublicClient = Client<
    hyper_rustls::HttpsConnector<
        conn::ReadAhead<upstream_proxy::ViaProxy<HttpConnector<addr::PublicResolver>>>,
    >,
    body::BoxBody,
>;

/// The upstream clients: for routes with an admin-written `upstream` (which may point
/// anywhere) and for hosts the sandbox named (public addresses only), each with HTTP/2 by
/// ALPN or, for WebSocket upgrades, HTTP/1.1 only.
pub(crate) struct Clients {
    pub any: UpstreamClient,
    pub public: PublicClient,
    pub any_h1: UpstreamClient,
    pub public_h1: PublicClient,
}

pub(crate) struct Shared {
    /// How long a sandbox's request head (or TLS handshake) may take.
    header_timeout: Duration,
    authority: Authority,
    clients: Clients,
    /// Where passthrough tunnels go out, if not directly (`gateway.upstream_proxy`).
    upstream_proxy: Option<Arc<upstream_proxy::UpstreamProxy>>,
    sessions: context::Sessions,
    secrets: context::Secrets,
    budgets: context::Budgets,
    audit_tx: mpsc::UnboundedSender<NewAudit>,
    /// Records sent to the audit writer and not yet written, and how many may wait.
    audit_waiting: Arc<AtomicUsize>,
    audit_limit: usize,
    usage_tx: mpsc::UnboundedSender<NewUsage>,
}

/// The deployment CA's certificate, made on first use and written to `pem_path` (sandboxes
/// mount it and trust it). The private key stays sealed in the database.
pub async fn ensure_ca(store: &Store, pem_path: &Path) -> Result<String, GatewayError> {
    let mut made = None;
    let ca = store
        .gateway_ca(|| {
            let (cert, key) = Authority::generate().expect("generating a CA key cannot fail");
            made = Some(());
            (cert, key)
        })
        .await?;
    if made.is_some() {
        tracing::info!(path = %pem_path.display(), "made the gateway's certificate authority");
    }
    if std::fs::read_to_string(pem_path).ok().as_deref() != Some(ca.cert_pem.as_str()) {
        if let Some(dir) = pem_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(pem_path, &ca.cert_pem).map_err(|source| GatewayError::Write {
            path: pem_path.display().to_string(),
            source,
        })?;
    }
    Ok(ca.cert_pem)
}

/// A running gateway's state; [`Gateway::serve`] accepts sandboxes' connections.
pub struct Gateway {
    shared: Arc<Shared>,
    writers: Vec<JoinHandle<()>>,
    /// Connections open, in all and per sandbox (each held by its tunnels and WebSockets).
    connections: Arc<airlock_serve::Connections>,
}

impl Gateway {
    pub async fn start(store: Store, settings: GatewaySettings) -> Result<Gateway, GatewayError> {
        let ca = store
            .gateway_ca(|| Authority::generate().expect("generating a CA key cannot fail"))
            .await?;
        let authority =
            Authority::load(&ca.cert_pem, &ca.key_pem)?.offering_http2(settings.client_http2);
        let tls = upstream_tls(settings.extra_ca_file.as_deref())?;
        let proxy = settings
            .upstream_proxy
            .as_deref()
            .map(|u| upstream_proxy::UpstreamProxy::new(u, &settings.no_proxy))
            .transpose()
            .map_err(GatewayError::Config)?
            .map(Arc::new);
        let via = |public_only| (proxy.clone(), public_only);
        let clients = Clients {
            any: upstream_client(HttpConnector::new(), via(false), tls.clone(), true),
            public: upstream_client(
                HttpConnector::new_with_resolver(addr::PublicResolver),
                via(true),
                tls.clone(),
                true,
            ),
            any_h1: upstream_client(HttpConnector::new(), via(false), tls.clone(), false),
            public_h1: upstream_client(
                HttpConnector::new_with_resolver(addr::PublicResolver),
                via(true),
                tls,
                false,
            ),
        };
        let secrets = context::Secrets::new(
            store.clone(),
            settings.github_api_url.clone(),
            settings.github_app_id,
        );
        secrets.refresh().await?;
        let (audit_tx, audit_rx) = mpsc::unbounded_channel();
        let audit_waiting = Arc::new(AtomicUsize::new(0));
        let (usage_tx, usage_rx) = mpsc::unbounded_channel();
        let limits = settings.limits.unwrap_or(airlock_serve::Limits::GATEWAY);
        let shared = Arc::new(Shared {
            header_timeout: limits.header_timeout,
            authority,
            clients,
            upstream_proxy: proxy,
            sessions: context::Sessions::new(store.clone()),
            secrets,
            budgets: context::Budgets::new(
                store.clone(),
                settings.session_token_budget,
                settings.human_daily_token_budget,
            ),
            audit_tx,
            audit_waiting: audit_waiting.clone(),
            audit_limit: if settings.audit_backlog == 0 {
                AUDIT_BACKLOG
            } else {
                settings.audit_backlog
            },
            usage_tx,
        });
        let writers = vec![
            tokio::spawn(audit_writer(store.clone(), audit_rx, audit_waiting)),
            tokio::spawn(usage_writer(store.clone(), usage_rx)),
            tokio::spawn(refresh_secrets(Arc::downgrade(&shared))),
        ];
        Ok(Gateway {
            shared,
            writers,
            connections: airlock_serve::Connections::new(limits.max_connections, limits.per_peer),
        })
    }

    pub fn ca_pem(&self) -> &str {
        self.shared.authority.cert_pem()
    }

    /// Accepts connections until `shutdown`, then lets the audit and usage writers drain
    /// (at most 5 s).
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => match self.connections.take(peer.ip()) {
                        Ok(slot) => {
                            let shared = self.shared.clone();
                            tokio::spawn(proxy::serve_connection(shared, stream, peer.ip(), Arc::new(slot)));
                        }
                        Err(why) => tracing::warn!(%peer, "the gateway closed a connection: {why}"),
                    },
                    Err(e) => {
                        tracing::warn!("the gateway cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        // Flush: every record of a request already answered is written before this returns
        // (within 30 s; what is still waiting then is named in the log).
        let waiting = self.shared.audit_waiting.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        while waiting.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = waiting.load(Ordering::Acquire);
        if left > 0 {
            tracing::error!("the gateway stops with {left} audit records not written (the database did not take them within 30 s)");
        }
        drop(self.shared);
        for w in self.writers {
            let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
        }
    }
}

fn upstream_tls(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, GatewayError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        use rustls_pki_types::pem::PemObject;
        let err = |reason: String| GatewayError::ExtraCa {
            path: path.display().to_string(),
            reason,
        };
        let mut n = 0;
        for cert in
            rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?
        {
            roots
                .add(cert.map_err(|e| err(e.to_string()))?)
                .map_err(|e| err(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(err("holds no PEM certificate".into()));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(ca::crypto()))
        .with_safe_default_protocol_versions()
        .map_err(GatewayError::ca)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}

/// The proxy to go through (if any), and whether hosts must have public addresses only.
type Via = (Option<Arc<upstream_proxy::UpstreamProxy>>, bool);

#[allow(clippy::type_complexity)]
fn upstream_client<R>(
    mut http: HttpConnector<R>,
    (proxy, public_only): Via,
    tls: rustls::ClientConfig,
    h2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<conn::ReadAhead<upstream_proxy::ViaProxy<HttpConnector<R>>>>,
    body::BoxBody,
>
where
    R: Clone + Send + Sync + 'static,
    HttpConnector<R>: tower_service::Service<http::Uri>,
    hyper_rustls::HttpsConnector<conn::ReadAhead<upstream_proxy::ViaProxy<HttpConnector<R>>>>:
        hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(15)));
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    let tcp = conn::ReadAhead(upstream_proxy::ViaProxy {
        direct: http,
        proxy,
        public_only,
    });
    let https = if h2 {
        builder.enable_http2().wrap_connector(tcp)
    } else {
        builder.wrap_connector(tcp)
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        // HTTP/2 upstreams may send DATA frames of up to 256 KiB instead of 16 KiB: a large
        // answer is then a few frames, each written, read and decrypted in one go.
        .http2_max_frame_size(UPSTREAM_H2_FRAME)
        .build(https)
}

/// The largest HTTP/2 frame an upstream may send the gateway.
const UPSTREAM_H2_FRAME: u32 = 256 * 1024;

const AUDIT_BATCH: usize = 500;
const USAGE_BATCH: usize = 200;
/// How long a writer waits for more rows after the first: a burst of requests is one
/// transaction rather than one each (a transaction per request cost the request path a
/// tenth of a millisecond on a two-core machine).
const LINGER: Duration = Duration::from_millis(20);

/// Adds to `batch` what arrives within [`LINGER`], up to `max` rows.
async fn linger<T>(rx: &mut mpsc::UnboundedReceiver<T>, batch: &mut Vec<T>, max: usize) {
    let until = tokio::time::Instant::now() + LINGER;
    while batch.len() < max {
        let room = max - batch.len();
        match tokio::time::timeout_at(until, rx.recv_many(batch, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Writes audit records in batches, off the request path. A failed write is retried; nothing
/// is dropped while the process lives.
async fn audit_writer(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<NewAudit>,
    waiting: Arc<AtomicUsize>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, AUDIT_BATCH).await > 0 {
        linger(&mut rx, &mut batch, AUDIT_BATCH).await;
        let mut delay = Duration::from_millis(200);
        while let Err(e) = store.audit_batch(&batch).await {
            tracing::warn!("cannot write {} egress audit records yet: {e}", batch.len());
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        waiting.fetch_sub(batch.len(), Ordering::AcqRel);
        batch.clear();
    }
}

async fn usage_writer(store: Store, mut rx: mpsc::UnboundedReceiver<NewUsage>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, USAGE_BATCH).await > 0 {
        linger(&mut rx, &mut batch, USAGE_BATCH).await;
        let mut delay = Duration::from_millis(200);
        while let Err(e) = store.record_usage(&batch).await {
            tracing::warn!("cannot record model usage yet: {e}");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        batch.clear();
    }
}

/// Picks up credentials set, rotated or deleted while the gateway runs.
async fn refresh_secrets(shared: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = shared.secrets.refresh().await {
            tracing::warn!("cannot reload credentials: {e}");
        }
    }
}
