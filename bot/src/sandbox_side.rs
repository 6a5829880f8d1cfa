//! The server's sandbox side: the sandbox network and firewall, the endpoint sandboxd connects
//! to, the embedded gateway and the broker. It starts when the Docker engine answers: at once
//! when it does at start-up, otherwise from a background task that asks the engine again with
//! back-off (1 s, doubling to 30 s) and starts everything as soon as it answers, so sessions
//! queued meanwhile run without a restart. Until then, and whenever setting up fails, the
//! reason is kept for `/healthz`, the overview and a queued session's page.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use airlock_core::broker::Broker;
use airlock_core::github::GithubSource;
use airlock_core::{Config, Store};
use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the sandbox side is, as people are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not started: the engine has not answered yet, or setting up failed (the reason).
    Waiting(String),
    /// Running; the embedded gateway's state if this server runs one.
    Ready { gateway: Option<String> },
}

/// The sandbox side's state, shared with the pages that report it.
pub struct Status(RwLock<State>);

impl Status {
    pub fn new() -> Arc<Status> {
        Arc::new(Status(RwLock::new(State::Waiting(
            "starting: the Docker engine has not been asked yet".into(),
        ))))
    }

    pub fn get(&self) -> State {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, state: State) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Why sessions cannot start now, if they cannot.
    pub fn waiting(&self) -> Option<String> {
        match self.get() {
            State::Waiting(why) => Some(why),
            State::Ready { .. } => None,
        }
    }
}

/// What the sandbox side needs from the server.
#[derive(Clone)]
pub struct Setup {
    pub config: Config,
    pub store: Store,
    pub owner: String,
    pub github: Option<Arc<GithubSource>>,
    /// The public server's bound address (the local git endpoint is served there).
    pub served_at: SocketAddr,
    pub stop: watch::Receiver<bool>,
}

impl Setup {
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// Starts the sandbox side now if the engine answers (an error then stops the server: the
/// wall is not optional), else in the background once it does. The tasks returned end when
/// the server stops.
pub async fn start(setup: Setup, status: Arc<Status>) -> anyhow::Result<Vec<JoinHandle<()>>> {
    match airlock_sandbox::engine::connect(&setup.config.docker.host).await {
        Ok(docker) => {
            let (gateway, tasks) = start_now(&setup, &docker).await?;
            status.set(State::Ready { gateway });
            Ok(tasks)
        }
        Err(e) => {
            tracing::warn!("{e}; sessions wait until it answers (asked again with back-off)");
            status.set(State::Waiting(e.to_string()));
            Ok(vec![tokio::spawn(supervise(setup, status))])
        }
    }
}

/// Asks the engine with back-off until it answers and the sandbox side is set up, then waits
/// for the tasks it started.
async fn supervise(setup: Setup, status: Arc<Status>) {
    let mut delay = Duration::from_secs(1);
    let stop = setup.stopped();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
        let docker = match airlock_sandbox::engine::connect(&setup.config.docker.host).await {
            Ok(docker) => docker,
            Err(e) => {
                status.set(State::Waiting(e.to_string()));
                continue;
            }
        };
        match start_now(&setup, &docker).await {
            Ok((gateway, tasks)) => {
                tracing::info!("the Docker engine answers; sandboxes can start");
                status.set(State::Ready { gateway });
                for task in tasks {
                    let _ = task.await;
                }
                return;
            }
            Err(e) => {
                let why = format!("cannot set up sandboxes: {e:#}");
                tracing::error!("{why}; trying again in {} s", delay.as_secs());
                status.set(State::Waiting(why));
            }
        }
    }
}

/// Sets up the network and firewall, the endpoint, the gateway (if embedded) and the broker,
/// and takes back the previous run's sessions, with the engine that just answered.
async fn start_now(
    setup: &Setup,
    docker: &airlock_sandbox::engine::Docker,
) -> anyhow::Result<(Option<String>, Vec<JoinHandle<()>>)> {
    let cfg = &setup.config;
    let store = &setup.store;
    let image = airlock_sandbox::image::base_image_ref(&cfg.docker.base_image);
    if !airlock_sandbox::engine::image_exists(docker, &image)
        .await
        .unwrap_or(false)
    {
        tracing::warn!(%image, "the sandbox base image is missing; sessions cannot start until `airlock image build` has run");
    }
    let (sandboxes, network) = crate::app::stack(cfg, store, &setup.owner).await?;
    let addr = SocketAddr::from((network.host_address, cfg.sandbox.endpoint_port));
    let endpoint = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen for sandboxes on {addr}: {e}; set sandbox.endpoint_port")
    })?;
    let gateway = if cfg.gateway.mode == airlock_core::config::GatewayMode::Embedded {
        Some(crate::app::start_gateway(cfg, store, network.host_address.into()).await?)
    } else {
        None
    };
    let broker = Broker::new(
        store.clone(),
        sandboxes.clone(),
        setup.owner.clone(),
        crate::app::broker_settings(cfg, setup.github.clone(), setup.served_at),
    );
    broker
        .recover()
        .await
        .context("cannot take back the sessions of the previous run")?;
    // Nothing is spawned before this point, so a failed attempt leaves no listener behind
    // and the next one can bind the same ports.
    let mut tasks = Vec::new();
    let mut gateway_state = None;
    if let Some((gateway, listener)) = gateway {
        let at = listener.local_addr()?;
        tracing::info!(address = %at, "gateway ready");
        gateway_state = Some(format!("serving sandboxes on {at}"));
        tasks.push(tokio::spawn(gateway.serve(listener, setup.stopped())));
    }
    let hub = sandboxes.hub.clone();
    let stop = setup.stopped();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = hub
            .serve_endpoint(endpoint, airlock_serve::Limits::SANDBOX_ENDPOINT, stop)
            .await
        {
            tracing::error!("the sandbox endpoint stopped: {e}");
        }
    }));
    tasks.push(tokio::spawn(broker.run(setup.stopped())));
    tracing::info!(network = %network.name, endpoint = %addr, "sandboxes ready");
    let room = airlock_sandbox::docker::subnet_capacity(&cfg.sandbox.subnet);
    if let (Some(room), Ok(warm)) = (room, store.warm_pool_total().await) {
        let need = cfg.broker.max_sessions + warm;
        if need > room {
            tracing::warn!(
                "sandbox.subnet {} has addresses for {room} sandboxes but \
                 broker.max_sessions ({}) and the warm pools ({warm}) need {need}: \
                 sessions will wait for addresses; see `airlock doctor`",
                cfg.sandbox.subnet,
                cfg.broker.max_sessions
            );
        }
    }
    Ok((gateway_state, tasks))
}
