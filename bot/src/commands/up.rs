//! `airlock up` and `airlock gateway`: the HTTP server. It migrates the database, checks
//! Docker, starts the broker, the gateway, the adapters, the notifier and the admin page
//! (`crate::web`), and serves until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock_adapters::github::GithubAdapter;
use airlock_adapters::notify::{GithubSink, Notifier};
use airlock_core::domain::Surface;
use airlock_core::Store;
use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Ctx;

#[derive(Clone)]
struct AppState {
    store: Store,
    /// Whether the Docker engine answered the last check (made every 10 s in the background,
    /// so a health probe never waits on Docker).
    docker_ok: Arc<AtomicBool>,
    /// Whether sandboxes can start, and why not.
    sandboxes: Arc<crate::sandbox_side::Status>,
}

pub async fn up(ctx: &Ctx) -> anyhow::Result<()> {
    let cfg = &ctx.config;
    let store = ctx.store(true).await?;
    // What the gateway injects towards the local git endpoint (`airlock repo add`), made
    // before the gateway loads the credentials.
    crate::git::ensure_credential(&store)
        .await
        .context("cannot make the local git endpoint's credential")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = {
        let stop_rx = stop_rx.clone();
        move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };
    let listener = tokio::net::TcpListener::bind(cfg.server.listen).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen on {}: the address is in use; stop the other program or set server.listen (AIRLOCK_SERVER_LISTEN)",
                cfg.server.listen
            )
        } else {
            anyhow::anyhow!("cannot listen on {}: {e}", cfg.server.listen)
        }
    })?;
    let mut background = Vec::new();
    let owner = server_id(&cfg.data_dir)?;
    let github = cfg
        .github
        .clone()
        .map(|gh| Arc::new(airlock_core::github::GithubSource::new(store.clone(), gh)));
    let sandbox_status = crate::sandbox_side::Status::new();
    background.extend(
        crate::sandbox_side::start(
            crate::sandbox_side::Setup {
                config: cfg.clone(),
                store: store.clone(),
                owner: owner.clone(),
                github: github.clone(),
                served_at: listener.local_addr()?,
                stop: stop_rx.clone(),
            },
            sandbox_status.clone(),
        )
        .await?,
    );
    let local = listener.local_addr()?;
    let docker_ok = Arc::new(AtomicBool::new(false));
    {
        let docker_ok = docker_ok.clone();
        let host = cfg.docker.host.clone();
        let stop = stopped();
        background.push(tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                let ok = airlock_sandbox::engine::connect(&host).await.is_ok();
                docker_ok.store(ok, Ordering::Relaxed);
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        }));
    }
    let mut app = router(AppState {
        store: store.clone(),
        docker_ok: docker_ok.clone(),
        sandboxes: sandbox_status.clone(),
    });
    // The admin page.
    app = app.merge(crate::web::router(crate::web::AdminState {
        store: store.clone(),
        logs_dir: cfg.data_dir.join("logs"),
        secure: cfg.public_url().starts_with("https://"),
        throttle: Default::default(),
        default_profile: cfg.broker.default_profile.clone(),
        status: Arc::new(crate::web::ServerStatus {
            docker_ok: docker_ok.clone(),
            docker_host: cfg.docker.host.clone(),
            sandboxes: sandbox_status.clone(),
            github: cfg.github.is_some(),
            slack: cfg.slack.is_some(),
            discord: cfg.discord.is_some(),
            github_host: cfg
                .github
                .as_ref()
                .map(|g| airlock_core::github::web_host(&g.web_url))
                .unwrap_or_else(|| "github.com".into()),
            prices: cfg.prices.clone(),
        }),
    }));
    app = app.merge(crate::git::router(store.clone()));
    // Triggers, the outbox sender and the adapters.
    let triggers = airlock_adapters::triggers::Triggers::new(store.clone());
    app = app.merge(triggers.router());
    background.push(tokio::spawn(triggers.clone().run(stopped())));
    let mut notifier = Notifier::new(store.clone(), owner.clone(), cfg.public_url());
    if let (Some(gh_cfg), Some(source)) = (&cfg.github, &github) {
        let adapter = GithubAdapter::new(
            store.clone(),
            gh_cfg.clone(),
            source.clone(),
            cfg.broker.default_profile.clone(),
            cfg.public_url(),
            Some(triggers.clone() as Arc<dyn airlock_adapters::github::EventHook>),
            &cfg.retention,
        );
        app = app.merge(adapter.router());
        notifier = notifier.with(
            Surface::Github,
            Arc::new(GithubSink {
                source: source.clone(),
            }),
        );
        background.push(tokio::spawn(adapter.resume(stopped())));
    }
    background.push(tokio::spawn(airlock_adapters::inbound::prune(
        store.clone(),
        cfg.retention.clone(),
        stopped(),
    )));
    if let Some(slack_cfg) = &cfg.slack {
        let api = Arc::new(
            airlock_adapters::slack::SlackApi::new(store.clone(), slack_cfg)
                .context("cannot set up the Slack client")?,
        );
        let adapter = airlock_adapters::slack::SlackAdapter::new(
            store.clone(),
            slack_cfg.clone(),
            api.clone(),
            cfg.broker.default_profile.clone(),
        );
        app = app.merge(adapter.router());
        notifier = notifier.with(
            Surface::Slack,
            Arc::new(airlock_adapters::slack::SlackSink { api }),
        );
        background.push(tokio::spawn(adapter.clone().resume(stopped())));
    }
    if let Some(discord_cfg) = &cfg.discord {
        let token = store
            .reveal_credential(&discord_cfg.bot_token_credential)
            .await
            .with_context(|| {
                format!(
                    "the Discord bot token `{}` cannot be read; set it with `airlock credential set {}`",
                    discord_cfg.bot_token_credential, discord_cfg.bot_token_credential
                )
            })?;
        let token = String::from_utf8_lossy(token.expose()).trim().to_string();
        let http = Arc::new(airlock_adapters::discord::http(discord_cfg, &token)?);
        let adapter = airlock_adapters::discord::DiscordAdapter::new(
            store.clone(),
            discord_cfg,
            http.clone(),
            cfg.broker.default_profile.clone(),
        )?;
        app = app.merge(adapter.router());
        notifier = notifier.with(
            Surface::Discord,
            Arc::new(airlock_adapters::discord::DiscordSink { http }),
        );
        let gateway_http = airlock_adapters::discord::http(discord_cfg, &token)?;
        background.push(tokio::spawn(adapter.run_gateway(gateway_http, stopped())));
    }
    background.push(tokio::spawn(Arc::new(notifier).run(stopped())));
    tracing::info!(address = %local, public_url = %cfg.public_url(), database = %airlock_core::store::redact_url(&cfg.database_url()), "Airlock is up");
    // The address actually bound (a port of 0 in the configuration is chosen now), for a
    // person; JSON logs keep to JSON lines (the line above carries the address).
    if std::env::var("AIRLOCK_LOG_FORMAT").as_deref() != Ok("json") {
        eprintln!(
            "Airlock is up at http://{local} (the admin page; health: http://{local}/healthz){}",
            match &ctx.config_file {
                Some(f) => format!("; configuration {}", f.display()),
                None => String::new(),
            }
        );
    }
    let limits = airlock_serve::Limits {
        max_connections: cfg.server.max_connections as usize,
        per_peer: cfg.server.max_connections as usize,
        ..airlock_serve::Limits::PUBLIC
    };
    airlock_serve::serve(listener, app, limits, shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    // Sandboxes keep running: the next start re-attaches to them.
    let _ = stop_tx.send(true);
    for task in background {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    store.close().await;
    tracing::info!("Airlock stopped");
    Ok(())
}

/// `airlock gateway`: the gateway alone (with gateway.mode = "separate"), on the sandbox
/// network's bridge address, until SIGINT or SIGTERM.
pub async fn gateway(ctx: &Ctx) -> anyhow::Result<()> {
    let cfg = &ctx.config;
    let store = ctx.store(true).await?;
    let host = airlock_sandbox::docker::host_address(&cfg.sandbox.subnet)
        .context("sandbox.subnet has no host address")?;
    airlock_gateway::ensure_ca(&store, &crate::app::gateway_ca_path(cfg)).await?;
    let (gateway, listener) = crate::app::start_gateway(cfg, &store, host.into()).await?;
    tracing::info!(address = %listener.local_addr()?, "gateway ready");
    gateway.serve(listener, shutdown_signal()).await;
    store.close().await;
    Ok(())
}

/// This installation's server id, kept in the data directory so a restarted server takes back
/// its own sessions at once.
fn server_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("server-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            std::fs::create_dir_all(data_dir)?;
            let id = airlock_core::ids::new_id("srv");
            std::fs::write(&path, &id)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// Liveness and readiness in one: 200 when the database answers, 503 when it does not.
/// `status` is `degraded` (with the reason in `sandboxes`) while sandboxes cannot start: the
/// server still takes requests and queues their sessions, which run once the engine answers.
async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let database = tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await;
    let database_ok = matches!(database, Ok(Ok(())));
    let docker_ok = state.docker_ok.load(Ordering::Relaxed);
    let waiting = state.sandboxes.waiting();
    let status = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "service": "airlock",
            "version": env!("CARGO_PKG_VERSION"),
            "status": if database_ok && waiting.is_none() { "ok" } else { "degraded" },
            "database": if database_ok { "ok" } else { "unreachable" },
            "docker": if docker_ok { "ok" } else { "unreachable" },
            "sandboxes": match &waiting {
                None => "ready".to_string(),
                Some(why) => format!("waiting: {why}"),
            },
        })),
    )
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

/// Whether an Airlock server answers `/healthz` at `addr` (used by `doctor` when the port is
/// taken). A plain HTTP/1.0 request, so it works without a client library.
/// `airlock down`: what `up` set up on the Docker engine, removed; the data kept.
pub async fn down(ctx: &Ctx) -> anyhow::Result<std::process::ExitCode> {
    let cfg = &ctx.config;
    if is_airlock_at(cfg.server.listen).await {
        anyhow::bail!(
            "Airlock is serving at {}: stop `airlock up` first (Ctrl-C or SIGTERM), then run `airlock down`",
            cfg.server.listen
        );
    }
    let store = ctx.store(false).await?;
    let active = store.active_sessions().await?;
    if active > 0 {
        anyhow::bail!(
            "{active} session(s) are not finished; let them finish or cancel them (`airlock session list`, `airlock session cancel ID`), then run `airlock down`"
        );
    }
    let docker = airlock_sandbox::engine::connect(&cfg.docker.host).await?;
    let runtime = airlock_sandbox::docker::DockerRuntime::new(
        docker,
        airlock_sandbox::docker::DockerRuntimeConfig {
            deployment: store.deployment_id().await?,
            network: cfg.sandbox.network.clone(),
            subnet: cfg.sandbox.subnet.clone(),
            allowed_ports: vec![cfg.sandbox.endpoint_port, cfg.sandbox.gateway_port],
        },
    );
    let done = runtime.teardown().await?;
    // The database no longer names sandboxes that are gone.
    store.forget_sandboxes("removed by airlock down").await?;
    crate::commands::admin::audit(
        &store,
        ctx,
        "deployment.down",
        "docker",
        serde_json::json!({ "containers": done.containers, "network": done.network, "firewall": done.firewall }),
    )
    .await?;
    if ctx.json {
        crate::output::json(&serde_json::json!({
            "containers": done.containers, "network": done.network, "firewall": done.firewall
        }))?;
    } else {
        println!(
            "Removed {} sandbox container(s){}{}. Kept the database, the master key, logs and images; `airlock up` sets the rest up again.",
            done.containers,
            if done.network { format!(", the network {}", cfg.sandbox.network) } else { String::new() },
            if done.firewall { " and its firewall chain" } else { "" },
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn is_airlock_at(addr: SocketAddr) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.take(64 * 1024).read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).contains("\"service\":\"airlock\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), probe).await,
        Ok(Some(true))
    )
}
