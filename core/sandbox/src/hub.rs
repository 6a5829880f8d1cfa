//! The sandbox endpoint and the hub of live sandboxd connections.
//!
//! sandboxd dials `GET /sandbox/v1/connect` on the bridge address. A connection is accepted
//! only when the presented token is valid, was issued for the sandbox named in the request,
//! and the request comes from that sandbox's own address; a bootstrap token is spent there
//! and exchanged for a sandbox token. Everything else gets 401 and is logged.
//!
//! Durable output (the agent's process) is acknowledged to sandboxd only after its consumer
//! has stored it ([`Hub::done`]); the acknowledged number is kept in the database, so after a
//! server restart sandboxd replays exactly what was not stored.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_sandboxd::proto::{
    FromSandbox, PtySize, Stream, ToSandbox, CONNECT_PATH, PROTOCOL_VERSION, SANDBOX_HEADER,
};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, Notify};

use airlock_store::ids::{SandboxId, SessionId};
use airlock_store::store::{Store, TokenKind};

/// A sandbox token lives this long unless bound to a session (then: the session's limit).
const SANDBOX_TOKEN_TTL_MS: i64 = 24 * 3600 * 1000;
/// A connection that sends nothing for this long is dropped (sandboxd beats every 5 s).
const SILENCE_LIMIT: Duration = Duration::from_secs(20);
/// Durable output held for an exec nobody listens to yet (e.g. just after a restart).
const ORPHAN_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the sandbox {0} is not connected")]
    NotConnected(String),
    #[error("sandboxd in {0} did not connect within {1} s (see `docker logs` of its container)")]
    ConnectTimeout(String, u64),
    #[error("the sandbox did not answer within {0} s")]
    NoAnswer(u64),
    #[error("{0}")]
    Refused(String),
}

/// What a process produced, in order; `seq` is 0 for processes that are not durable.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    Output {
        seq: u64,
        stream: Stream,
        data: Vec<u8>,
    },
    Exit {
        seq: u64,
        code: Option<i32>,
        signal: Option<i32>,
        oom_killed: bool,
        duration_ms: u64,
    },
    Failed {
        seq: u64,
        message: String,
    },
}

impl ExecEvent {
    pub fn seq(&self) -> u64 {
        match self {
            ExecEvent::Output { seq, .. }
            | ExecEvent::Exit { seq, .. }
            | ExecEvent::Failed { seq, .. } => *seq,
        }
    }
}

/// A request to start a process in a sandbox.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub pty: Option<PtySize>,
    pub stdin: Option<Vec<u8>>,
    pub keep_stdin: bool,
    pub durable: bool,
}

/// The events of one process.
pub struct ExecStream {
    pub sandbox: String,
    pub id: u64,
    rx: mpsc::UnboundedReceiver<ExecEvent>,
}

impl ExecStream {
    /// The next event; `None` if the hub forgot the sandbox.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        self.rx.recv().await
    }
}

/// The last heartbeat of a sandbox.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub at: Instant,
    pub idle_ms: u64,
    pub running: Vec<u64>,
}

struct Conn {
    generation: u64,
    tx: mpsc::UnboundedSender<ToSandbox>,
    heartbeat: Option<Heartbeat>,
    opened: Instant,
}

/// A connection that beat (or opened) this recently is live: no other may replace it.
const LIVE_WITHIN: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Acks {
    /// Highest durable number received (later copies of lower numbers are duplicates).
    highest: u64,
    /// Received but not yet stored by their consumer: number → the exec it belongs to.
    pending: BTreeMap<u64, u64>,
    /// The last number acknowledged to sandboxd.
    sent: u64,
}

impl Acks {
    /// Durable message `seq` of exec `exec` arrived; `false` for a replayed copy of one
    /// that arrived before.
    fn receive(&mut self, seq: u64, exec: u64) -> bool {
        if seq <= self.highest {
            return false;
        }
        self.highest = seq;
        self.pending.insert(seq, exec);
        true
    }

    /// Exec `exec`'s messages up to `upto` are stored.
    fn stored(&mut self, exec: u64, upto: u64) {
        let done: Vec<u64> = self
            .pending
            .range(..=upto)
            .filter(|(_, e)| **e == exec)
            .map(|(s, _)| *s)
            .collect();
        for s in done {
            self.pending.remove(&s);
        }
    }

    /// The number to acknowledge now, if it moved: everything below the oldest unstored
    /// message.
    fn next_ack(&mut self) -> Option<u64> {
        let ack = match self.pending.first_key_value() {
            Some((first, _)) => first - 1,
            None => self.highest,
        };
        if ack > self.sent {
            self.sent = ack;
            Some(ack)
        } else {
            None
        }
    }

    /// sandboxd (re)connected and the database says `acked` was acknowledged: where it
    /// resumes from (it replays everything after).
    fn resume(&mut self, acked: u64) -> u64 {
        self.sent = self.sent.max(acked);
        self.highest = self.highest.max(acked);
        self.sent
    }
}

#[derive(Default)]
struct HubState {
    conns: HashMap<SandboxId, Conn>,
    listeners: HashMap<(String, u64), mpsc::UnboundedSender<ExecEvent>>,
    orphans: HashMap<(String, u64), Vec<ExecEvent>>,
    orphan_bytes: usize,
    requests: HashMap<u64, oneshot::Sender<FromSandbox>>,
    acks: HashMap<SandboxId, Acks>,
}

pub struct Hub {
    store: Store,
    state: Mutex<HubState>,
    next_id: AtomicU64,
    generation: AtomicU64,
    changed: Notify,
}

impl Hub {
    pub fn new(store: Store) -> Arc<Hub> {
        // Ids stay unique across server restarts, so a replayed exec is never confused
        // with a new one.
        let start = (airlock_store::ids::now_ms() as u64).saturating_mul(1000);
        Arc::new(Hub {
            store,
            state: Mutex::new(HubState::default()),
            next_id: AtomicU64::new(start),
            generation: AtomicU64::new(1),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoint's routes. Serve with `into_make_service_with_connect_info::<SocketAddr>()`
    /// (or through [`Hub::serve_endpoint`]).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(CONNECT_PATH, get(connect))
            .with_state(self.clone())
    }

    /// Serves the sandboxes' endpoint on `listener` until `shutdown` resolves. The peer's
    /// address is known to the handler (a sandbox is told apart by it), and Nagle is off: small
    /// messages (an exec request, a line of output) would otherwise wait for the peer's
    /// delayed ACK.
    ///
    /// Sandboxes are hostile: `limits` are the public server's timeouts and connection
    /// bounds, with a few connections per sandbox ([`airlock_serve::Limits::SANDBOX_ENDPOINT`];
    /// in-process fakes, all on one address, need more).
    pub async fn serve_endpoint(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        limits: airlock_serve::Limits,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        airlock_serve::serve(listener, self.router(), limits, shutdown).await
    }

    pub fn is_connected(&self, sandbox: &SandboxId) -> bool {
        self.lock().conns.contains_key(sandbox)
    }

    pub fn heartbeat(&self, sandbox: &SandboxId) -> Option<Heartbeat> {
        self.lock()
            .conns
            .get(sandbox)
            .and_then(|c| c.heartbeat.clone())
    }

    pub async fn wait_connected(
        &self,
        sandbox: &SandboxId,
        timeout: Duration,
    ) -> Result<(), HubError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if self.is_connected(sandbox) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(HubError::ConnectTimeout(
                    sandbox.to_string(),
                    timeout.as_secs(),
                ));
            }
        }
    }

    fn send(&self, sandbox: &SandboxId, msg: ToSandbox) -> Result<(), HubError> {
        let st = self.lock();
        let conn = st
            .conns
            .get(sandbox)
            .ok_or_else(|| HubError::NotConnected(sandbox.to_string()))?;
        conn.tx
            .send(msg)
            .map_err(|_| HubError::NotConnected(sandbox.to_string()))
    }

    /// Gives a sandbox its session: the proxy and environment of every later process.
    pub fn bind(
        &self,
        sandbox: &SandboxId,
        session: &str,
        proxy: Option<String>,
        env: BTreeMap<String, String>,
    ) -> Result<(), HubError> {
        self.send(
            sandbox,
            ToSandbox::Bind {
                session: session.to_string(),
                proxy,
                env,
            },
        )
    }

    /// Starts a process and returns its events.
    pub fn exec(&self, sandbox: &SandboxId, req: ExecRequest) -> Result<ExecStream, HubError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = self.attach(sandbox, id);
        let msg = ToSandbox::Exec {
            id,
            argv: req.argv,
            cwd: req.cwd,
            env: req.env,
            pty: req.pty,
            stdin: req.stdin.map(|b| B64.encode(b)),
            keep_stdin: req.keep_stdin,
            durable: req.durable,
        };
        if let Err(e) = self.send(sandbox, msg) {
            self.lock().listeners.remove(&(sandbox.to_string(), id));
            return Err(e);
        }
        Ok(stream)
    }

    /// Listens to a process started earlier (by this server before a restart, say); output
    /// that arrived meanwhile is delivered first.
    pub fn attach(&self, sandbox: &SandboxId, id: u64) -> ExecStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let key = (sandbox.to_string(), id);
        let mut st = self.lock();
        if let Some(held) = st.orphans.remove(&key) {
            for ev in held {
                if let ExecEvent::Output { data, .. } = &ev {
                    st.orphan_bytes = st.orphan_bytes.saturating_sub(data.len());
                }
                let _ = tx.send(ev);
            }
        }
        st.listeners.insert(key, tx);
        ExecStream {
            sandbox: sandbox.to_string(),
            id,
            rx,
        }
    }

    /// The consumer of exec `exec` has stored every durable message of it up to `seq`
    /// (cumulative: a batch of many messages is acknowledged by its last number); sandboxd
    /// may forget them once nothing older of any exec waits.
    pub fn done(&self, sandbox: &SandboxId, exec: u64, seq: u64) {
        if seq == 0 {
            return;
        }
        let ack = {
            let mut st = self.lock();
            let acks = st.acks.entry(sandbox.clone()).or_default();
            acks.stored(exec, seq);
            acks.next_ack()
        };
        if let Some(ack) = ack {
            self.acknowledge(sandbox, ack);
        }
    }

    /// Tells sandboxd it may forget everything up to `ack`, and records that.
    fn acknowledge(&self, sandbox: &SandboxId, ack: u64) {
        let _ = self.send(sandbox, ToSandbox::Ack { seq: ack });
        let store = self.store.clone();
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            if let Err(e) = store.set_sandbox_acked(&sandbox, ack).await {
                tracing::warn!(%sandbox, "cannot record acknowledged output: {e}");
            }
        });
    }

    pub fn cancel(&self, sandbox: &SandboxId, id: u64) -> Result<(), HubError> {
        self.send(sandbox, ToSandbox::Cancel { id })
    }

    pub fn stdin(
        &self,
        sandbox: &SandboxId,
        id: u64,
        data: &[u8],
        eof: bool,
    ) -> Result<(), HubError> {
        self.send(
            sandbox,
            ToSandbox::Stdin {
                id,
                data: B64.encode(data),
                eof,
            },
        )
    }

    async fn request(
        &self,
        sandbox: &SandboxId,
        make: impl FnOnce(u64) -> ToSandbox,
    ) -> Result<FromSandbox, HubError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().requests.insert(id, tx);
        if let Err(e) = self.send(sandbox, make(id)) {
            self.lock().requests.remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(HubError::NotConnected(sandbox.to_string())),
            Err(_) => {
                self.lock().requests.remove(&id);
                Err(HubError::NoAnswer(30))
            }
        }
    }

    /// Reads a file (relative paths are under the workspace); returns the bytes and whether
    /// the file was longer than `max_bytes`.
    pub async fn read_file(
        &self,
        sandbox: &SandboxId,
        path: &str,
        max_bytes: u64,
    ) -> Result<(Vec<u8>, bool), HubError> {
        let path = path.to_string();
        match self
            .request(sandbox, |id| ToSandbox::ReadFile {
                id,
                path,
                max_bytes: Some(max_bytes),
            })
            .await?
        {
            FromSandbox::File {
                data, truncated, ..
            } => Ok((B64.decode(data).unwrap_or_default(), truncated)),
            FromSandbox::Error { message, .. } => Err(HubError::Refused(message)),
            other => Err(HubError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    pub async fn write_file(
        &self,
        sandbox: &SandboxId,
        path: &str,
        data: &[u8],
        mode: Option<u32>,
    ) -> Result<(), HubError> {
        let path = path.to_string();
        let data = B64.encode(data);
        match self
            .request(sandbox, |id| ToSandbox::WriteFile {
                id,
                path,
                data,
                mode,
            })
            .await?
        {
            FromSandbox::Done { .. } => Ok(()),
            FromSandbox::Error { message, .. } => Err(HubError::Refused(message)),
            other => Err(HubError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// Drops a sandbox's connection and everything waiting on it.
    pub fn forget(&self, sandbox: &SandboxId) {
        let mut st = self.lock();
        st.conns.remove(sandbox);
        st.listeners.retain(|(s, _), _| s != sandbox);
        let gone: Vec<_> = st
            .orphans
            .keys()
            .filter(|(s, _)| s == sandbox)
            .cloned()
            .collect();
        for key in gone {
            st.orphans.remove(&key);
        }
        st.acks.remove(sandbox);
        drop(st);
        self.changed.notify_waiters();
    }

    /// Whether `sandbox` has a connection that is still beating.
    fn has_live_connection(&self, sandbox: &SandboxId) -> bool {
        self.lock().conns.get(sandbox).is_some_and(|c| {
            let last = c
                .heartbeat
                .as_ref()
                .map_or(c.opened, |h| h.at.max(c.opened));
            last.elapsed() < LIVE_WITHIN
        })
    }

    /// Checks a connecting sandboxd; returns the token's kind and the sandbox's session.
    async fn authorize(
        &self,
        token: &str,
        sandbox: &SandboxId,
        peer: IpAddr,
    ) -> Result<(String, Option<SessionId>), String> {
        let binding = self
            .store
            .check_token(token)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("unknown or expired token")?;
        if binding.sandbox_id != *sandbox {
            return Err(format!(
                "a token of sandbox {} was presented for sandbox {sandbox}",
                binding.sandbox_id
            ));
        }
        // sandboxd can dial before the server has recorded the address Docker gave it at
        // start; wait a moment for it rather than refusing.
        let mut row = self
            .store
            .sandbox(sandbox)
            .await
            .map_err(|e| e.to_string())?;
        for _ in 0..200 {
            if row.address.as_deref().is_some_and(|a| !a.is_empty()) || row.state == "gone" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            row = self
                .store
                .sandbox(sandbox)
                .await
                .map_err(|e| e.to_string())?;
        }
        if row.state == "gone" {
            return Err("the sandbox is gone".into());
        }
        if row.address.as_deref() != Some(peer.to_string().as_str()) {
            return Err(format!(
                "the token of sandbox {sandbox} came from {peer}, not from the sandbox's address"
            ));
        }
        match binding.kind.as_str() {
            "boot" | "sbx" => Ok((binding.kind, row.session_id)),
            other => Err(format!("a {other} token cannot open a sandbox connection")),
        }
    }

    /// The token an authorised sandboxd is to present next time: every connection gets a new
    /// one (a bootstrap token is spent for it), and older ones stop working.
    async fn exchange(
        &self,
        token: &str,
        kind: &str,
        sandbox: &SandboxId,
        session: Option<&SessionId>,
    ) -> Result<String, String> {
        match kind {
            "boot" => {
                if !self
                    .store
                    .spend_bootstrap(token, sandbox)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Err("the bootstrap token was already used".into());
                }
                self.store
                    .issue_token(TokenKind::Sbx, sandbox, session, SANDBOX_TOKEN_TTL_MS)
                    .await
                    .map_err(|e| e.to_string())
            }
            _ => {
                let next = self
                    .store
                    .issue_token(TokenKind::Sbx, sandbox, session, SANDBOX_TOKEN_TTL_MS)
                    .await
                    .map_err(|e| e.to_string())?;
                // The presented token lasts until the new one is in sandboxd's hands (the
                // connection could drop before it arrives); anything older ends now.
                self.store
                    .retire_tokens(sandbox, TokenKind::Sbx, [token, &next])
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(next)
            }
        }
    }

    async fn serve(self: Arc<Self>, sandbox: SandboxId, socket: WebSocket, token: String) {
        let (mut sink, mut source) = socket.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<ToSandbox>();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send(ToSandbox::Token { token });
        // The first message must be Hello.
        let hello = tokio::time::timeout(Duration::from_secs(10), source.next()).await;
        let ok = match &hello {
            Ok(Some(Ok(Message::Text(t)))) => matches!(
                serde_json::from_str::<FromSandbox>(t.as_str()),
                Ok(FromSandbox::Hello { version, sandbox: s, .. })
                    if version == PROTOCOL_VERSION && sandbox == s.as_str()
            ),
            _ => false,
        };
        if !ok {
            tracing::warn!(%sandbox, "sandboxd did not introduce itself; closing");
            return;
        }
        let acked = match self.store.sandbox(&sandbox).await {
            Ok(row) => row.acked as u64,
            Err(e) => {
                tracing::warn!(%sandbox, "cannot read the sandbox: {e}");
                return;
            }
        };
        {
            let mut st = self.lock();
            let resume = st.acks.entry(sandbox.clone()).or_default().resume(acked);
            let _ = tx.send(ToSandbox::Resume { acked: resume });
            st.conns.insert(
                sandbox.clone(),
                Conn {
                    generation,
                    tx: tx.clone(),
                    heartbeat: None,
                    opened: Instant::now(),
                },
            );
        }
        self.changed.notify_waiters();
        tracing::debug!(%sandbox, "sandboxd connected");
        let writer = tokio::spawn(async move {
            let mut ping = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    msg = rx.recv() => {
                        let Some(msg) = msg else { break };
                        let Ok(text) = serde_json::to_string(&msg) else { continue };
                        if sink.send(Message::Text(text.into())).await.is_err() { break; }
                    }
                    _ = ping.tick() => {
                        if sink.send(Message::Ping(Vec::new().into())).await.is_err() { break; }
                    }
                }
            }
            let _ = sink.close().await;
        });
        loop {
            let msg = match tokio::time::timeout(SILENCE_LIMIT, source.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(_) => break,
                Err(_) => {
                    tracing::warn!(%sandbox, "sandboxd went silent; dropping the connection");
                    break;
                }
            };
            let Message::Text(text) = msg else {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
                continue;
            };
            match serde_json::from_str::<FromSandbox>(text.as_str()) {
                Ok(m) => self.dispatch(&sandbox, m),
                Err(e) => tracing::warn!(%sandbox, "ignoring a message from sandboxd: {e}"),
            }
            let current = self.lock().conns.get(&sandbox).map(|c| c.generation);
            if current != Some(generation) {
                break; // forgotten or replaced
            }
        }
        writer.abort();
        {
            let mut st = self.lock();
            if st
                .conns
                .get(&sandbox)
                .is_some_and(|c| c.generation == generation)
            {
                st.conns.remove(&sandbox);
            }
        }
        self.changed.notify_waiters();
        tracing::debug!(%sandbox, "sandboxd disconnected");
    }

    fn dispatch(&self, sandbox: &SandboxId, msg: FromSandbox) {
        let (id, ev) = match msg {
            FromSandbox::Heartbeat { running, idle_ms } => {
                if let Some(c) = self.lock().conns.get_mut(sandbox) {
                    c.heartbeat = Some(Heartbeat {
                        at: Instant::now(),
                        idle_ms,
                        running,
                    });
                }
                return;
            }
            FromSandbox::Hello { .. } => return,
            FromSandbox::File { id, .. }
            | FromSandbox::Done { id }
            | FromSandbox::Error { id, .. } => {
                if let Some(tx) = self.lock().requests.remove(&id) {
                    let _ = tx.send(msg);
                }
                return;
            }
            FromSandbox::Output {
                seq,
                id,
                stream,
                data,
            } => (
                id,
                ExecEvent::Output {
                    seq,
                    stream,
                    data: B64.decode(data).unwrap_or_default(),
                },
            ),
            FromSandbox::Exit {
                seq,
                id,
                code,
                signal,
                oom_killed,
                duration_ms,
            } => (
                id,
                ExecEvent::Exit {
                    seq,
                    code,
                    signal,
                    oom_killed,
                    duration_ms,
                },
            ),
            FromSandbox::Failed { seq, id, message } => (id, ExecEvent::Failed { seq, message }),
        };
        let seq = ev.seq();
        let key = (sandbox.to_string(), id);
        let mut st = self.lock();
        if seq > 0 && !st.acks.entry(sandbox.clone()).or_default().receive(seq, id) {
            return; // a replayed copy of something already here
        }
        let last = !matches!(ev, ExecEvent::Output { .. });
        if let Some(tx) = st.listeners.get(&key) {
            if tx.send(ev).is_ok() {
                return;
            }
            // Its consumer is gone (its session ended): nobody will store this, and it must
            // not hold back the acknowledgement of what other execs send. The closed
            // listener stays until the exec's last message, so the rest goes the same way.
            if last {
                st.listeners.remove(&key);
            }
            let ack = st.acks.get_mut(sandbox).and_then(|acks| {
                acks.stored(id, seq);
                acks.next_ack()
            });
            drop(st);
            if let Some(ack) = ack {
                self.acknowledge(sandbox, ack);
            }
            return;
        }
        if seq > 0 {
            let size = match &ev {
                ExecEvent::Output { data, .. } => data.len(),
                _ => 0,
            };
            if st.orphan_bytes + size <= ORPHAN_LIMIT {
                st.orphan_bytes += size;
                st.orphans.entry(key).or_default().push(ev);
            }
        }
    }
}

async fn connect(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let sandbox = headers
        .get(SANDBOX_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if token.is_empty() || sandbox.is_empty() {
        return (StatusCode::UNAUTHORIZED, "a sandbox token is required\n").into_response();
    }
    let sandbox: SandboxId = match sandbox.parse() {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(%peer, "refused a sandbox connection: {e}");
            return (StatusCode::UNAUTHORIZED, "refused\n").into_response();
        }
    };
    let (kind, session) = match hub.authorize(token, &sandbox, peer.ip()).await {
        Ok(k) => k,
        Err(why) => {
            tracing::warn!(%sandbox, %peer, "refused a sandbox connection: {why}");
            return (StatusCode::UNAUTHORIZED, "refused\n").into_response();
        }
    };
    // One sandboxd per sandbox: a second connection while the first still beats is refused,
    // even with a valid token (409, which sandboxd retries: its own half-dead connection is
    // dropped within seconds).
    if hub.has_live_connection(&sandbox) {
        tracing::warn!(%sandbox, %peer, "refused a second connection for a sandbox that is connected");
        return (StatusCode::CONFLICT, "this sandbox is connected already\n").into_response();
    }
    match hub.exchange(token, &kind, &sandbox, session.as_ref()).await {
        Ok(new_token) => ws
            .max_message_size(64 << 20)
            .on_upgrade(move |socket| hub.serve(sandbox, socket, new_token)),
        Err(why) => {
            tracing::warn!(%sandbox, %peer, "refused a sandbox connection: {why}");
            (StatusCode::UNAUTHORIZED, "refused\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn a_batch_is_acknowledged_by_its_last_number() {
        let mut a = Acks::default();
        for s in 1..=5 {
            assert!(a.receive(s, 7));
        }
        assert!(!a.receive(3, 7), "a replayed copy");
        a.stored(7, 5);
        assert_eq!(
            a.next_ack(),
            Some(5),
            "one acknowledgement covers the batch"
        );
    }

    #[test]
    fn another_execs_unstored_message_holds_the_line() {
        let mut a = Acks::default();
        a.receive(1, 1);
        a.receive(2, 2);
        a.receive(3, 1);
        a.stored(1, 3);
        assert_eq!(a.next_ack(), Some(1), "2 (of exec 2) is not stored yet");
        a.stored(2, 2);
        assert_eq!(a.next_ack(), Some(3));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The running exec writes a message.
        Emit,
        /// The next exec starts, once everything of the last is stored (a sandbox runs its
        /// durable execs, the agent's turns, one after another).
        NextExec,
        Deliver,
        Flush(u64),
        Reconnect,
        RestartServer,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Emit),
            1 => Just(Op::NextExec),
            6 => Just(Op::Deliver),
            3 => (0u64..3).prop_map(Op::Flush),
            1 => Just(Op::Reconnect),
            1 => Just(Op::RestartServer),
        ]
    }

    /// sandboxd's outbox, the wire, the hub's bookkeeping and one consumer per exec, driven
    /// by any interleaving of output, delivery, stores (any batch), reconnects and restarts.
    struct Model {
        next: u64,
        exec: u64,
        outbox: VecDeque<(u64, u64)>,
        wire: VecDeque<(u64, u64)>,
        acks: Acks,
        db_acked: u64,
        buffered: [Vec<u64>; 3],
        stored: [Vec<u64>; 3],
        emitted: [Vec<u64>; 3],
    }

    impl Model {
        fn apply(&mut self, op: &Op) {
            match *op {
                Op::NextExec => {
                    let e = self.exec as usize;
                    if self.exec < 2 && self.stored[e] == self.emitted[e] {
                        self.exec += 1;
                    }
                }
                Op::Emit => {
                    let exec = self.exec;
                    self.next += 1;
                    self.outbox.push_back((self.next, exec));
                    self.wire.push_back((self.next, exec));
                    self.emitted[exec as usize].push(self.next);
                }
                Op::Deliver => {
                    if let Some((seq, exec)) = self.wire.pop_front() {
                        if self.acks.receive(seq, exec) {
                            self.buffered[exec as usize].push(seq);
                        }
                    }
                }
                Op::Flush(exec) => {
                    let batch = std::mem::take(&mut self.buffered[exec as usize]);
                    let Some(&last) = batch.last() else { return };
                    self.stored[exec as usize].extend(batch);
                    self.acks.stored(exec, last);
                    if let Some(ack) = self.acks.next_ack() {
                        self.outbox.retain(|(s, _)| *s > ack);
                        self.db_acked = ack;
                    }
                }
                Op::Reconnect => {
                    let resume = self.acks.resume(self.db_acked);
                    self.outbox.retain(|(s, _)| *s > resume);
                    self.wire = self.outbox.clone();
                }
                Op::RestartServer => {
                    // What the consumers had not stored is gone with the process.
                    self.acks = Acks::default();
                    self.buffered = Default::default();
                    self.apply(&Op::Reconnect);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn nothing_is_lost_or_repeated_and_the_outbox_drains(ops in prop::collection::vec(op(), 0..200)) {
            let mut m = Model {
                next: 0,
                exec: 0,
                outbox: VecDeque::new(),
                wire: VecDeque::new(),
                acks: Acks::default(),
                db_acked: 0,
                buffered: Default::default(),
                stored: Default::default(),
                emitted: Default::default(),
            };
            for op in &ops {
                m.apply(op);
            }
            while !m.wire.is_empty() {
                m.apply(&Op::Deliver);
            }
            for exec in 0..3 {
                m.apply(&Op::Flush(exec));
            }
            // A turn that outlives its consumer's restart: the replay completes it.
            m.apply(&Op::Reconnect);
            while !m.wire.is_empty() {
                m.apply(&Op::Deliver);
            }
            for exec in 0..3 {
                m.apply(&Op::Flush(exec));
            }
            prop_assert_eq!(&m.stored, &m.emitted);
            prop_assert!(m.outbox.is_empty(), "left in the outbox: {:?}", m.outbox);
        }
    }
}
