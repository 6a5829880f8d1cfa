//! `airlock up`: the HTTP server. It migrates the database, checks Docker, and serves until
//! SIGINT or SIGTERM. Adapters, the gateway and the admin page are mounted here as they land.

use std::net::SocketAddr;
use std::time::Duration;

use airlock_core::Store;
use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::commands::Ctx;

#[derive(Clone)]
struct AppState {
    store: Store,
    docker_host: String,
}

pub async fn up(ctx: &Ctx) -> anyhow::Result<()> {
    let cfg = &ctx.config;
    let store = ctx.store(true).await?;
    match airlock_core::docker::connect(&cfg.docker.host).await {
        Ok(docker) => {
            let image = airlock_core::image::base_image_ref(&cfg.docker.base_image);
            if !airlock_core::docker::image_exists(&docker, &image)
                .await
                .unwrap_or(false)
            {
                tracing::warn!(%image, "the sandbox base image is missing; sessions cannot start until `airlock image build` has run");
            }
        }
        Err(e) => tracing::warn!("{e}; sessions cannot start until it is reachable"),
    }
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
    let local = listener.local_addr()?;
    let app = router(AppState {
        store: store.clone(),
        docker_host: cfg.docker.host.clone(),
    });
    tracing::info!(address = %local, public_url = %cfg.public_url(), database = %airlock_core::store::redact_url(&cfg.database_url()), "Airlock is up");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    store.close().await;
    tracing::info!("Airlock stopped");
    Ok(())
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// Liveness and readiness in one: 200 when the database answers, 503 when it does not.
async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let database = tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await;
    let database_ok = matches!(database, Ok(Ok(())));
    let docker_ok = airlock_core::docker::connect(&state.docker_host)
        .await
        .is_ok();
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
            "status": if database_ok { "ok" } else { "degraded" },
            "database": if database_ok { "ok" } else { "unreachable" },
            "docker": if docker_ok { "ok" } else { "unreachable" },
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
