//! The wiring the server and the commands share: the sandbox stack (runtime, network, hub,
//! manager), the gateway, and the broker's settings, each made from the configuration. It
//! knows nothing of the command line (`commands/` uses it; it does not use `commands/`).

use std::sync::Arc;
use std::time::Duration;

use airlock_core::broker::BrokerSettings;
use airlock_core::plan::{GitHosting, PlanSettings};
use airlock_core::{Config, Store};
use airlock_sandbox::docker::{DockerRuntime, DockerRuntimeConfig};
use airlock_sandbox::{Hub, Network, Runtime, SandboxSettings, Sandboxes};
use anyhow::bail;

/// Connects to Docker, prepares the sandbox network and firewall, and builds the manager.
pub async fn stack(
    cfg: &Config,
    store: &Store,
    owner: &str,
) -> anyhow::Result<(Arc<Sandboxes>, Network)> {
    let docker = airlock_sandbox::engine::connect(&cfg.docker.host).await?;
    let deployment = store.deployment_id().await?;
    let runtime = Arc::new(DockerRuntime::new(
        docker,
        DockerRuntimeConfig {
            deployment,
            network: cfg.sandbox.network.clone(),
            subnet: cfg.sandbox.subnet.clone(),
            allowed_ports: vec![cfg.sandbox.endpoint_port, cfg.sandbox.gateway_port],
        },
    ));
    let network = runtime.prepare().await?;
    let sandboxd = cfg.sandbox.sandboxd_path();
    if !sandboxd.is_file() {
        bail!(
            "the sandboxd binary is not at {}; build it (`cargo build -p airlock-sandboxd`) or set sandbox.sandboxd",
            sandboxd.display()
        );
    }
    let sandboxd = sandboxd.canonicalize()?;
    // Every sandbox trusts the gateway's CA and goes out through the gateway (run by
    // `airlock up`, or by `airlock gateway` with gateway.mode = "separate").
    let ca = gateway_ca_path(cfg);
    airlock_gateway::ensure_ca(store, &ca).await?;
    let ca = sandbox_ca_bundle(cfg, &ca)?;
    let settings = SandboxSettings {
        endpoint: format!(
            "ws://{}:{}",
            network.host_address, cfg.sandbox.endpoint_port
        ),
        gateway: Some(format!(
            "{}:{}",
            network.host_address, cfg.sandbox.gateway_port
        )),
        sandboxd,
        ca_cert: Some(ca.canonicalize()?),
        base_image: airlock_sandbox::image::base_image_ref(&cfg.docker.base_image),
        connect_timeout: Duration::from_secs(30),
        owner: owner.to_string(),
    };
    let runtime: Arc<dyn Runtime> = runtime;
    let sandboxes = Arc::new(Sandboxes {
        hub: Hub::new(store.clone()),
        store: store.clone(),
        runtime,
        settings,
    });
    Ok((sandboxes, network))
}

/// What sandboxes trust besides the system's CAs: the gateway's CA, and with
/// `sandbox.extra_ca_files` (a company's TLS-inspecting proxy, seen through passthrough
/// tunnels) those too, as one bundle in the data directory.
fn sandbox_ca_bundle(
    cfg: &Config,
    gateway_ca: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    if cfg.sandbox.extra_ca_files.is_empty() {
        return Ok(gateway_ca.to_path_buf());
    }
    let mut bundle = std::fs::read_to_string(gateway_ca)?;
    for path in &cfg.sandbox.extra_ca_files {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "sandbox.extra_ca_files: cannot read {}: {e}",
                path.display()
            )
        })?;
        bundle.push_str(&format!("\n# {}\n{}\n", path.display(), pem.trim()));
    }
    let out = cfg.data_dir.join("sandbox-ca.pem");
    std::fs::write(&out, bundle)?;
    Ok(out)
}

/// Where the gateway's CA certificate is kept for sandboxes to mount.
pub fn gateway_ca_path(cfg: &Config) -> std::path::PathBuf {
    cfg.data_dir.join("gateway-ca.pem")
}

/// The gateway's settings from the configuration.
pub fn gateway_settings(cfg: &Config) -> airlock_gateway::GatewaySettings {
    airlock_gateway::GatewaySettings {
        extra_ca_file: cfg.gateway.extra_ca_file.clone(),
        session_token_budget: cfg.gateway.session_token_budget,
        human_daily_token_budget: cfg.gateway.human_daily_token_budget,
        github_api_url: cfg.github.as_ref().map(|g| g.api_url.clone()),
        github_app_id: cfg.github.as_ref().and_then(|g| g.app_id),
        audit_backlog: cfg.gateway.audit_backlog as usize,
        client_http2: cfg.gateway.client_http2,
        limits: None,
        upstream_proxy: cfg.gateway.upstream_proxy.clone(),
        no_proxy: cfg.gateway.no_proxy.clone(),
    }
}

/// The broker's limits, plan settings and GitHub client, from the configuration.
pub fn broker_settings(
    cfg: &Config,
    github: Option<Arc<airlock_core::github::GithubSource>>,
    served_at: std::net::SocketAddr,
) -> BrokerSettings {
    BrokerSettings {
        max_sessions: cfg.broker.max_sessions,
        max_sessions_per_human: cfg.broker.max_sessions_per_human,
        plan: PlanSettings {
            github: github.as_ref().and_then(|g| {
                Some(GitHosting {
                    web_url: g.config().web_url.clone(),
                    git_upstream: g.config().git_upstream.clone(),
                    credential: g.credential()?.to_string(),
                })
            }),
            author_name: cfg.git.author_name.clone(),
            author_email: cfg.git.author_email.clone(),
            local_git: Some(crate::git::upstream(served_at)),
        },
        github,
        public_url: cfg.public_url(),
        logs_dir: Some(cfg.data_dir.join("logs")),
    }
}

/// Starts the gateway on the sandbox network's bridge address.
pub async fn start_gateway(
    cfg: &Config,
    store: &Store,
    host_address: std::net::IpAddr,
) -> anyhow::Result<(airlock_gateway::Gateway, tokio::net::TcpListener)> {
    let addr = std::net::SocketAddr::from((host_address, cfg.sandbox.gateway_port));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen for the gateway on {addr}: {e}; set sandbox.gateway_port")
    })?;
    let gateway = airlock_gateway::Gateway::start(store.clone(), gateway_settings(cfg)).await?;
    Ok((gateway, listener))
}
