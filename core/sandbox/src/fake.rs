//! An in-memory sandbox runtime, so the broker can be tested without Docker (feature
//! `fake-runtime`).
//!
//! A "container" is a task that speaks sandboxd's protocol ([`airlock_sandboxd::proto`]) to
//! the real sandbox endpoint over a real WebSocket on loopback: it presents the bootstrap
//! token, takes the sandbox token, keeps durable output until acknowledged and replays it
//! after a reconnect. A "process" does what the test's [`Script`] says for its command line
//! (print, wait, exit), or runs until it is cancelled. The test can stop a container, drop
//! its connection, or make the network run out of addresses, and read back what the runtime
//! was asked to do.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The endpoint's limits with fake sandboxes: all of them connect from loopback, so the
/// per-sandbox bound of [`airlock_serve::Limits::SANDBOX_ENDPOINT`] is one for them all.
pub const ENDPOINT_LIMITS: airlock_serve::Limits = airlock_serve::Limits {
    per_peer: 16_384,
    ..airlock_serve::Limits::SANDBOX_ENDPOINT
};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use airlock_sandboxd::outbox::Outbox;
use airlock_sandboxd::proto::{
    Boot, FromSandbox, Stream, ToSandbox, CONNECT_PATH, PROTOCOL_VERSION, SANDBOX_HEADER,
};

use super::runtime::{
    ContainerSpec, ExecOutput, ImageInfo, Instance, Network, Result, Runtime, RuntimeError,
};

/// One command a fake sandbox was asked to run.
#[derive(Debug, Clone)]
pub struct FakeExec {
    pub sandbox: String,
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    /// The request's own environment.
    pub env: BTreeMap<String, String>,
    /// The environment the sandbox was bound with (the plan's), when it was bound.
    pub bound_env: Option<BTreeMap<String, String>>,
    pub durable: bool,
}

/// What a fake process does, step by step. Without [`Step::Exit`] it runs until cancelled.
#[derive(Debug, Clone, Default)]
pub struct FakeProcess(pub Vec<Step>);

#[derive(Debug, Clone)]
pub enum Step {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Sleep(Duration),
    Exit(i32),
}

impl FakeProcess {
    /// Prints nothing and exits with `code`.
    pub fn exits(code: i32) -> FakeProcess {
        FakeProcess(vec![Step::Exit(code)])
    }
    /// Runs until it is cancelled.
    pub fn hangs() -> FakeProcess {
        FakeProcess(Vec::new())
    }
    pub fn stdout(mut self, text: impl Into<Vec<u8>>) -> FakeProcess {
        self.0.push(Step::Stdout(text.into()));
        self
    }
    pub fn stderr(mut self, text: impl Into<Vec<u8>>) -> FakeProcess {
        self.0.push(Step::Stderr(text.into()));
        self
    }
    pub fn sleep(mut self, d: Duration) -> FakeProcess {
        self.0.push(Step::Sleep(d));
        self
    }
    pub fn exit(mut self, code: i32) -> FakeProcess {
        self.0.push(Step::Exit(code));
        self
    }
}

/// What each command does, decided from the command.
pub type Script = Arc<dyn Fn(&FakeExec) -> FakeProcess + Send + Sync>;

/// The runtime; cheap to clone (clones share the containers).
#[derive(Clone)]
pub struct FakeRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    script: Script,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: u64,
    containers: HashMap<String, Container>,
    images: BTreeMap<String, ImageInfo>,
    /// How many sandboxes the network has addresses for (`None`: enough).
    addresses: Option<usize>,
    /// Whether the "engine" refuses every creation as unreachable.
    engine_down: bool,
    /// The most that ran at once.
    peak_running: usize,
    /// What the runtime was asked to do, in order: `create <sandbox>`, `remove <sandbox>`, ...
    calls: Vec<String>,
    execs: Vec<FakeExec>,
}

impl State {
    /// Fails as an engine that does not answer, while it is "down".
    fn answering(&self) -> Result<()> {
        if self.engine_down {
            return Err(RuntimeError::EngineDown(
                "the fake engine does not answer".into(),
            ));
        }
        Ok(())
    }
}

struct Container {
    spec: ContainerSpec,
    /// Removed containers are kept (invisible to the runtime's callers) for the test to read.
    removed: bool,
    running: bool,
    exit_code: Option<i64>,
    daemon: Option<tokio::task::JoinHandle<()>>,
    control: Option<mpsc::UnboundedSender<Control>>,
}

enum Control {
    /// Drop the connection; connect again after a moment.
    Reconnect,
}

impl FakeRuntime {
    pub fn new(script: impl Fn(&FakeExec) -> FakeProcess + Send + Sync + 'static) -> FakeRuntime {
        FakeRuntime {
            inner: Arc::new(Inner {
                script: Arc::new(script),
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets the network hold only `n` running sandboxes (`None`: any number).
    pub fn set_addresses(&self, n: Option<usize>) {
        self.state().addresses = n;
    }

    /// Makes the engine unreachable (creating, inspecting and removing fail as with an engine
    /// that does not answer) or reachable again.
    pub fn set_engine_down(&self, down: bool) {
        self.state().engine_down = down;
    }

    /// Every call to the runtime so far (`create sbx_…`, `start sbx_…`, `remove sbx_…`).
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// Every command run in a sandbox so far.
    pub fn execs(&self) -> Vec<FakeExec> {
        self.state().execs.clone()
    }

    /// The specs of every container created so far, removed or not, in no order.
    pub fn specs(&self) -> Vec<ContainerSpec> {
        self.state()
            .containers
            .values()
            .map(|c| c.spec.clone())
            .collect()
    }

    /// The sandboxes running now.
    pub fn running(&self) -> usize {
        self.state()
            .containers
            .values()
            .filter(|c| c.running)
            .count()
    }

    /// The most sandboxes that ran at once.
    pub fn peak_running(&self) -> usize {
        self.state().peak_running
    }

    /// The newest sandbox created for a session (Airlock's sandbox id).
    pub fn sandbox_of(&self, session: &str) -> Option<String> {
        let st = self.state();
        let mut of: Vec<(u64, String)> = st
            .containers
            .iter()
            .filter(|(_, c)| {
                c.spec.labels.get(super::LABEL_SESSION).map(String::as_str) == Some(session)
            })
            .filter_map(|(id, c)| {
                let n = id.strip_prefix("fake-")?.parse().ok()?;
                Some((n, c.spec.sandbox_id.clone()))
            })
            .collect();
        of.sort();
        of.pop().map(|(_, s)| s)
    }

    /// The container of a sandbox (by Airlock's sandbox id).
    fn container_of(&self, sandbox: &str) -> Option<String> {
        self.state()
            .containers
            .iter()
            .find(|(_, c)| c.spec.sandbox_id == sandbox)
            .map(|(id, _)| id.clone())
    }

    /// The sandbox's container stops as if its main process died (`exit_code`).
    pub fn kill(&self, sandbox: &str, exit_code: i64) {
        let Some(cid) = self.container_of(sandbox) else {
            return;
        };
        let mut st = self.state();
        if let Some(c) = st.containers.get_mut(&cid) {
            c.running = false;
            c.exit_code = Some(exit_code);
            c.control = None;
            if let Some(d) = c.daemon.take() {
                d.abort();
            }
        }
    }

    /// The sandbox's connection drops; its processes keep running and it reconnects.
    pub fn drop_connection(&self, sandbox: &str) {
        let Some(cid) = self.container_of(sandbox) else {
            return;
        };
        if let Some(tx) = self
            .state()
            .containers
            .get(&cid)
            .and_then(|c| c.control.clone())
        {
            let _ = tx.send(Control::Reconnect);
        }
    }

    fn instance(id: &str, c: &Container) -> Instance {
        Instance {
            id: id.to_string(),
            labels: c.spec.labels.clone(),
            running: c.running,
            address: c.running.then_some(Ipv4Addr::LOCALHOST),
            exit_code: c.exit_code,
            oom_killed: false,
        }
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn prepare(&self) -> Result<Network> {
        Ok(Network {
            name: "fake".into(),
            host_address: Ipv4Addr::LOCALHOST,
        })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let mut st = self.state();
        st.calls.push(format!("create {}", spec.sandbox_id));
        st.answering()?;
        st.next += 1;
        let id = format!("fake-{}", st.next);
        st.containers.insert(
            id.clone(),
            Container {
                spec: spec.clone(),
                removed: false,
                running: false,
                exit_code: None,
                daemon: None,
                control: None,
            },
        );
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<Instance> {
        let mut st = self.state();
        let running = st.containers.values().filter(|c| c.running).count();
        let full = st.addresses.is_some_and(|n| running >= n);
        let Some(sandbox) = st
            .containers
            .get(id)
            .filter(|c| !c.removed)
            .map(|c| c.spec.sandbox_id.clone())
        else {
            return Err(RuntimeError::Failed(format!("no container {id}")));
        };
        st.calls.push(format!("start {sandbox}"));
        if full {
            return Err(RuntimeError::NoAddress(
                "the fake network has no free address".into(),
            ));
        }
        let c = st.containers.get_mut(id).expect("looked up above");
        c.running = true;
        if let Some(boot) = c.spec.boot.clone() {
            let (tx, rx) = mpsc::unbounded_channel();
            let daemon = Daemon::new(boot, self.inner.clone());
            c.daemon = Some(tokio::spawn(daemon.run(rx)));
            c.control = Some(tx);
        }
        let inst = FakeRuntime::instance(id, c);
        st.peak_running = st.peak_running.max(running + 1);
        Ok(inst)
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<()> {
        let mut st = self.state();
        if let Some(c) = st.containers.get_mut(id) {
            c.running = false;
            c.exit_code.get_or_insert(143);
            c.control = None;
            if let Some(d) = c.daemon.take() {
                d.abort();
            }
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let mut st = self.state();
        st.answering()?;
        let Some(c) = st.containers.get_mut(id).filter(|c| !c.removed) else {
            return Ok(());
        };
        c.removed = true;
        c.running = false;
        c.control = None;
        if let Some(d) = c.daemon.take() {
            d.abort();
        }
        let sandbox = c.spec.sandbox_id.clone();
        st.calls.push(format!("remove {sandbox}"));
        Ok(())
    }

    async fn commit(
        &self,
        id: &str,
        repo: &str,
        tag: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<ImageInfo> {
        let mut st = self.state();
        if st.containers.get(id).is_none_or(|c| c.removed) {
            return Err(RuntimeError::Failed(format!("no container {id}")));
        }
        let reference = format!("{repo}:{tag}");
        st.calls.push(format!("commit {reference}"));
        let info = ImageInfo {
            id: format!("sha256:{}", st.images.len() + 1),
            tags: vec![reference.clone()],
            labels: labels.clone(),
            size: 1,
        };
        st.images.insert(reference, info.clone());
        Ok(info)
    }

    async fn list(&self) -> Result<Vec<Instance>> {
        let st = self.state();
        Ok(st
            .containers
            .iter()
            .filter(|(_, c)| !c.removed)
            .map(|(id, c)| FakeRuntime::instance(id, c))
            .collect())
    }

    async fn inspect(&self, id: &str) -> Result<Option<Instance>> {
        let st = self.state();
        st.answering()?;
        Ok(st
            .containers
            .get(id)
            .filter(|c| !c.removed)
            .map(|c| FakeRuntime::instance(id, c)))
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        env: &BTreeMap<String, String>,
        on_output: &mut (dyn for<'a> FnMut(ExecOutput<'a>) + Send),
    ) -> Result<i64> {
        let exec = {
            let st = self.state();
            let c = st
                .containers
                .get(id)
                .filter(|c| c.running && !c.removed)
                .ok_or_else(|| RuntimeError::Failed(format!("container {id} is not running")))?;
            FakeExec {
                sandbox: c.spec.sandbox_id.clone(),
                argv: argv.to_vec(),
                cwd: None,
                env: env.clone(),
                bound_env: None,
                durable: false,
            }
        };
        self.state().execs.push(exec.clone());
        for step in (self.inner.script)(&exec).0 {
            match step {
                Step::Stdout(b) => on_output(ExecOutput::Stdout(&b)),
                Step::Stderr(b) => on_output(ExecOutput::Stderr(&b)),
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Exit(code) => return Ok(code as i64),
            }
        }
        Err(RuntimeError::Failed(
            "a runtime exec ran until cancelled".into(),
        ))
    }

    async fn image_exists(&self, reference: &str) -> Result<bool> {
        Ok(self.state().images.contains_key(reference))
    }

    async fn images(&self) -> Result<Vec<ImageInfo>> {
        Ok(self.state().images.values().cloned().collect())
    }

    async fn remove_image(&self, reference: &str) -> Result<()> {
        let mut st = self.state();
        st.calls.push(format!("remove-image {reference}"));
        st.images.remove(reference);
        Ok(())
    }
}

/// What a fake process reports to its daemon.
enum ProcEvent {
    Output {
        id: u64,
        stream: Stream,
        data: Vec<u8>,
    },
    Exit {
        id: u64,
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// A fake sandboxd: the protocol side of sandboxd, with scripted processes.
struct Daemon {
    boot: Boot,
    token: String,
    runtime: Arc<Inner>,
    outbox: Outbox,
    durable: std::collections::HashSet<u64>,
    procs: HashMap<u64, tokio::task::JoinHandle<()>>,
    bound_env: Option<BTreeMap<String, String>>,
    files: HashMap<String, Vec<u8>>,
    events_tx: mpsc::UnboundedSender<ProcEvent>,
    events_rx: mpsc::UnboundedReceiver<ProcEvent>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Daemon {
    fn new(boot: Boot, runtime: Arc<Inner>) -> Daemon {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Daemon {
            token: boot.token.clone(),
            boot,
            runtime,
            outbox: Outbox::default(),
            durable: Default::default(),
            procs: HashMap::new(),
            bound_env: None,
            files: HashMap::new(),
            events_tx,
            events_rx,
        }
    }

    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        loop {
            if let Ok(ws) = self.connect().await {
                // Returns when the connection ends or the test drops it.
                let _ = self.serve(ws, &mut control).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn connect(&self) -> std::result::Result<Ws, String> {
        let url = format!("{}{CONNECT_PATH}", self.boot.endpoint.trim_end_matches('/'));
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        let h = req.headers_mut();
        h.insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .map_err(|_| "token".to_string())?,
        );
        h.insert(
            SANDBOX_HEADER,
            self.boot
                .sandbox
                .parse()
                .map_err(|_| "sandbox id".to_string())?,
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ws)
    }

    async fn send(ws: &mut Ws, msg: &FromSandbox) -> std::result::Result<(), String> {
        let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
        ws.send(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    async fn serve(
        &mut self,
        mut ws: Ws,
        control: &mut mpsc::UnboundedReceiver<Control>,
    ) -> std::result::Result<(), String> {
        let mut running: Vec<u64> = self.procs.keys().copied().collect();
        running.sort_unstable();
        Self::send(
            &mut ws,
            &FromSandbox::Hello {
                version: PROTOCOL_VERSION,
                sandbox: self.boot.sandbox.clone(),
                running: running.clone(),
            },
        )
        .await?;
        let mut resumed = false;
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                msg = ws.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None => return Err("closed".into()),
                        Some(Err(e)) => return Err(e.to_string()),
                        Some(Ok(_)) => continue,
                    };
                    let Ok(req) = serde_json::from_str::<ToSandbox>(text.as_str()) else {
                        continue;
                    };
                    if let ToSandbox::Resume { acked } = req {
                        self.outbox.acknowledge(acked);
                        for text in self.outbox.pending() {
                            ws.send(Message::text(text)).await.map_err(|e| e.to_string())?;
                        }
                        resumed = true;
                        continue;
                    }
                    if let Some(reply) = self.handle(req) {
                        Self::send(&mut ws, &reply).await?;
                    }
                }
                ev = self.events_rx.recv() => {
                    let Some(ev) = ev else { continue };
                    let (text, kept) = self.record(ev);
                    if resumed || !kept {
                        ws.send(Message::text(text)).await.map_err(|e| e.to_string())?;
                    }
                }
                c = control.recv() => match c {
                    Some(Control::Reconnect) => return Ok(()),
                    None => std::future::pending::<()>().await,
                },
                _ = beat.tick() => {
                    let mut running: Vec<u64> = self.procs.keys().copied().collect();
                    running.sort_unstable();
                    Self::send(&mut ws, &FromSandbox::Heartbeat { running, idle_ms: 0 }).await?;
                }
            }
        }
    }

    /// Numbers a durable process's event and keeps it until acknowledged.
    fn record(&mut self, ev: ProcEvent) -> (String, bool) {
        let id = match &ev {
            ProcEvent::Output { id, .. } | ProcEvent::Exit { id, .. } => *id,
        };
        let durable = self.durable.contains(&id);
        let seq = if durable {
            self.outbox.next_number()
        } else {
            0
        };
        let msg = match ev {
            ProcEvent::Output { id, stream, data } => FromSandbox::Output {
                seq,
                id,
                stream,
                data: B64.encode(data),
            },
            ProcEvent::Exit { id, code, signal } => {
                self.procs.remove(&id);
                self.durable.remove(&id);
                FromSandbox::Exit {
                    seq,
                    id,
                    code,
                    signal,
                    oom_killed: false,
                    duration_ms: 1,
                }
            }
        };
        let text = serde_json::to_string(&msg).expect("a message serializes");
        if durable {
            self.outbox.keep(text.clone());
        }
        (text, durable)
    }

    fn handle(&mut self, req: ToSandbox) -> Option<FromSandbox> {
        match req {
            ToSandbox::Token { token } => {
                self.token = token;
                None
            }
            ToSandbox::Resume { .. } => None,
            ToSandbox::Ack { seq } => {
                self.outbox.acknowledge(seq);
                None
            }
            ToSandbox::Bind { env, .. } => {
                self.bound_env = Some(env);
                None
            }
            ToSandbox::Exec {
                id,
                argv,
                cwd,
                env,
                durable,
                ..
            } => {
                let exec = FakeExec {
                    sandbox: self.boot.sandbox.clone(),
                    argv,
                    cwd,
                    env,
                    bound_env: self.bound_env.clone(),
                    durable,
                };
                self.runtime
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .execs
                    .push(exec.clone());
                let steps = (self.runtime.script)(&exec).0;
                if durable {
                    self.durable.insert(id);
                }
                let tx = self.events_tx.clone();
                self.procs.insert(
                    id,
                    tokio::spawn(async move {
                        for step in steps {
                            let ev = match step {
                                Step::Stdout(data) => ProcEvent::Output {
                                    id,
                                    stream: Stream::Stdout,
                                    data,
                                },
                                Step::Stderr(data) => ProcEvent::Output {
                                    id,
                                    stream: Stream::Stderr,
                                    data,
                                },
                                Step::Sleep(d) => {
                                    tokio::time::sleep(d).await;
                                    continue;
                                }
                                Step::Exit(code) => {
                                    let _ = tx.send(ProcEvent::Exit {
                                        id,
                                        code: Some(code),
                                        signal: None,
                                    });
                                    return;
                                }
                            };
                            if tx.send(ev).is_err() {
                                return;
                            }
                        }
                        std::future::pending::<()>().await
                    }),
                );
                None
            }
            ToSandbox::Cancel { id } => match self.procs.get(&id) {
                Some(p) => {
                    p.abort();
                    let _ = self.events_tx.send(ProcEvent::Exit {
                        id,
                        code: None,
                        signal: Some(15),
                    });
                    Some(FromSandbox::Done { id })
                }
                None => Some(FromSandbox::Error {
                    id,
                    message: format!("no process {id}"),
                }),
            },
            ToSandbox::Stdin { id, .. } | ToSandbox::Resize { id, .. } => {
                Some(FromSandbox::Done { id })
            }
            ToSandbox::ReadFile { id, path, .. } => Some(match self.files.get(&path) {
                Some(data) => FromSandbox::File {
                    id,
                    data: B64.encode(data),
                    size: data.len() as u64,
                    truncated: false,
                },
                None => FromSandbox::Error {
                    id,
                    message: format!("{path}: no such file"),
                },
            }),
            ToSandbox::WriteFile { id, path, data, .. } => Some(match B64.decode(data) {
                Ok(data) => {
                    self.files.insert(path, data);
                    FromSandbox::Done { id }
                }
                Err(_) => FromSandbox::Error {
                    id,
                    message: "not base64".into(),
                },
            }),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for p in self.procs.values() {
            p.abort();
        }
    }
}
