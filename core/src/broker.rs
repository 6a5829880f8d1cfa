//! The broker: takes queued sessions, runs each in a sandbox, records what happens as session
//! events, and ends each with a state and a reason a person can act on.
//!
//! Sessions are claimed through the state machine (`queued -> starting` succeeds for exactly
//! one server) and leased; a restarted server takes back its own live sessions at once and
//! re-attaches to their sandboxes, whose sandboxd replays output the server had not stored.
//!
//! Runner today: the profile's `command` agent. The tool-calling and external-CLI runners
//! plug in at [`agent_argv`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_sandboxd::proto::{describe_exit, Stream};
use serde_json::json;
use tokio::sync::Notify;

use crate::domain::{AgentSpec, EventKind, SessionState};
use crate::ids::now_ms;
use crate::sandbox::{ExecEvent, ExecRequest, ExecStream, Origin, Sandboxes};
use crate::store::{Profile, ProfileVersion, Sandbox, Session, Store};

/// How long a lease lasts without renewal.
const LEASE_MS: i64 = 30_000;
/// Output is gathered into one event per this interval (or per [`EVENT_BYTES`]).
const COALESCE: Duration = Duration::from_millis(200);
const EVENT_BYTES: usize = 16 * 1024;
/// The end of a command's output kept for its summary.
const SUMMARY_TAIL: usize = 4000;

pub struct Broker {
    pub store: Store,
    pub sandboxes: Arc<Sandboxes>,
    /// This server's id (stable across restarts of the same installation).
    pub owner: String,
    wake: Notify,
    running: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

/// How a run ended.
struct Outcome {
    state: SessionState,
    reason: String,
    keep_snapshot: bool,
}

impl Broker {
    pub fn new(store: Store, sandboxes: Arc<Sandboxes>, owner: String) -> Arc<Broker> {
        Arc::new(Broker {
            store,
            sandboxes,
            owner,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Tells the broker a session was queued (it also polls).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::task::JoinHandle<()>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes back live sessions after a restart: re-attaches to sandboxes that still run and
    /// ends the others with the reason. Removes containers nothing needs.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let orphaned = self.store.orphaned_sessions(&self.owner).await?;
        let mut mine = Vec::new();
        for (session, sandbox) in orphaned {
            if self
                .store
                .lease_session(&session, &self.owner, now_ms() + LEASE_MS)
                .await?
            {
                mine.push((session, sandbox));
            }
        }
        let found = self.sandboxes.reconcile(&mine).await?;
        for (session, why) in found.vanished {
            tracing::warn!(%session, "{why}");
            let _ = self
                .store
                .transition(&session, SessionState::Failed, Some(&why))
                .await;
        }
        for (session, sandbox) in found.alive {
            let sb = self.store.sandbox(&sandbox).await?;
            let s = self.store.session(&session).await?;
            match (s.state, sb.agent_exec) {
                (SessionState::Running, Some(exec)) => {
                    tracing::info!(%session, %sandbox, "re-attaching to a running session");
                    self.store
                        .append_event(
                            &session,
                            EventKind::Note,
                            &json!({"text": "the server restarted; re-attached to the running sandbox"}),
                        )
                        .await?;
                    let stream = self.sandboxes.hub.attach(&sandbox, exec as u64);
                    self.spawn(session, Some((sb, stream)));
                }
                _ => {
                    let why = "the server stopped while the session was starting; ask again";
                    self.sandboxes.release(&sb, why).await;
                    let _ = self
                        .store
                        .transition(&session, SessionState::Failed, Some(why))
                        .await;
                }
            }
        }
        if !found.removed.is_empty() {
            tracing::info!(
                count = found.removed.len(),
                "removed sandboxes nothing needed"
            );
        }
        Ok(())
    }

    /// Claims and runs queued sessions until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut warm = tokio::time::interval(Duration::from_secs(5));
        let hour = Duration::from_secs(3600);
        let mut prune = tokio::time::interval_at(tokio::time::Instant::now() + hour, hour);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = prune.tick() => {
                    // Outdated profile snapshots, and session snapshots older than a week.
                    match self.sandboxes.prune(2, 7 * 24 * 3600 * 1000).await {
                        Ok(gone) if !gone.is_empty() => tracing::info!(count = gone.len(), "pruned snapshots"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("cannot prune snapshots: {e}"),
                    }
                    continue;
                }
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = warm.tick() => {
                    if let Err(e) = self.sandboxes.fill_warm_pools().await {
                        tracing::warn!("warm pools: {e}");
                    }
                    continue;
                }
            }
            self.tasks().retain(|_, t| !t.is_finished());
            match self.store.queued_sessions(32).await {
                Ok(ids) => {
                    for id in ids {
                        if self.tasks().contains_key(&id) {
                            continue;
                        }
                        match self
                            .store
                            .transition(&id, SessionState::Starting, None)
                            .await
                        {
                            Ok(_) => {
                                let _ = self
                                    .store
                                    .lease_session(&id, &self.owner, now_ms() + LEASE_MS)
                                    .await;
                                self.spawn(id, None);
                            }
                            Err(crate::StoreError::Conflict(_)) => {} // another server has it
                            Err(e) => tracing::warn!(session = %id, "cannot start: {e}"),
                        }
                    }
                }
                Err(e) => tracing::warn!("cannot read the queue: {e}"),
            }
        }
    }

    fn spawn(self: &Arc<Self>, session: String, attach: Option<(Sandbox, ExecStream)>) {
        let me = self.clone();
        let id = session.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = me.drive(&id, attach).await {
                tracing::warn!(session = %id, "session failed: {e}");
                let why = format!("Airlock could not run the session: {e}");
                let _ = me
                    .store
                    .transition(&id, SessionState::Failed, Some(&why))
                    .await;
            }
        });
        self.tasks().insert(session, task);
    }

    async fn note(&self, session: &str, text: impl Into<String>) {
        let _ = self
            .store
            .append_event(session, EventKind::Note, &json!({ "text": text.into() }))
            .await;
    }

    /// Runs one session from `starting` (or re-attached while `running`) to its end.
    async fn drive(&self, id: &str, attach: Option<(Sandbox, ExecStream)>) -> anyhow::Result<()> {
        let session = self.store.session(id).await?;
        let pv = self
            .store
            .profile_version(&session.profile_id, Some(session.profile_version))
            .await?;
        let profile = self.store.find_profile(&session.profile_id).await?;
        let (sb, stream) = match attach {
            Some(a) => a,
            None => match self.start(&session, &profile, &pv).await? {
                Some(a) => a,
                None => return Ok(()),
            },
        };
        let session = self.store.session(id).await?;
        let outcome = self.watch(&session, &profile, &pv, &sb, stream).await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => Outcome {
                state: SessionState::Failed,
                reason: format!("Airlock lost the session: {e}"),
                keep_snapshot: false,
            },
        };
        // The session may have been cancelled meanwhile; only a live session changes state.
        let current = self.store.session(id).await?.state;
        if !current.is_terminal() {
            if outcome.state == SessionState::Succeeded {
                self.store
                    .transition(id, SessionState::Finishing, None)
                    .await?;
            }
            self.store
                .transition(id, outcome.state, Some(&outcome.reason))
                .await?;
        }
        if outcome.keep_snapshot && current != SessionState::Cancelled {
            match self
                .sandboxes
                .keep_session_snapshot(&sb, &session, &profile, &pv)
                .await
            {
                Ok(s) => {
                    self.note(id, format!("kept the session's files as {}", s.image))
                        .await
                }
                Err(e) => tracing::warn!(session = %id, "cannot keep a session snapshot: {e}"),
            }
        }
        self.sandboxes.release(&sb, &outcome.reason).await;
        Ok(())
    }

    /// Gets a sandbox, binds it and starts the agent. `None` when the session ended instead.
    async fn start(
        &self,
        session: &Session,
        profile: &Profile,
        pv: &ProfileVersion,
    ) -> anyhow::Result<Option<(Sandbox, ExecStream)>> {
        let argv = match agent_argv(&pv.spec.agent) {
            Ok(a) => a,
            Err(why) => {
                self.store
                    .transition(&session.id, SessionState::Failed, Some(&why))
                    .await?;
                return Ok(None);
            }
        };
        let store = self.store.clone();
        let sid = session.id.clone();
        let mut log = move |line: &str| {
            let store = store.clone();
            let sid = sid.clone();
            let line = line.to_string();
            tokio::spawn(async move {
                let _ = store
                    .append_event(&sid, EventKind::Note, &json!({ "text": line }))
                    .await;
            });
        };
        let (sb, origin) = self
            .sandboxes
            .acquire(session, profile, pv, &mut log)
            .await?;
        let started = self.store.session(&session.id).await?;
        if started.state != SessionState::Starting {
            self.sandboxes
                .release(&sb, "the session ended while starting")
                .await;
            return Ok(None);
        }
        let deadline = started.started_at.unwrap_or_else(now_ms)
            + (pv.spec.limits.wall_clock_secs as i64) * 1000;
        self.sandboxes
            .bind(&sb, session, &pv.spec, deadline)
            .await?;
        let how = match &origin {
            Origin::Warm => "claimed a warm sandbox".to_string(),
            Origin::Cold { image } => format!("started a sandbox from {image}"),
        };
        self.note(&session.id, format!("{how} ({})", sb.id)).await;
        self.store
            .transition(&session.id, SessionState::Running, None)
            .await?;
        let mut env = std::collections::BTreeMap::new();
        env.insert(
            "AIRLOCK_PROMPT".to_string(),
            turn_prompt(&self.store, session).await,
        );
        let stream = self.sandboxes.hub.exec(
            &sb.id,
            ExecRequest {
                argv,
                env,
                durable: true,
                ..Default::default()
            },
        )?;
        self.store
            .set_sandbox_agent_exec(&sb.id, Some(stream.id))
            .await?;
        Ok(Some((sb, stream)))
    }

    /// Follows the agent's process to its end, enforcing the limits.
    async fn watch(
        &self,
        session: &Session,
        profile: &Profile,
        pv: &ProfileVersion,
        sb: &Sandbox,
        mut stream: ExecStream,
    ) -> anyhow::Result<Outcome> {
        let hub = &self.sandboxes.hub;
        let exec = stream.id;
        let limits = &pv.spec.limits;
        let started_at = session.started_at.unwrap_or_else(now_ms);
        let deadline_ms = started_at + (limits.wall_clock_secs as i64) * 1000;
        let wall =
            tokio::time::sleep(Duration::from_millis((deadline_ms - now_ms()).max(0) as u64));
        tokio::pin!(wall);
        let idle_limit = Duration::from_secs(limits.idle_secs);
        let mut last_output = Instant::now();
        let mut check = tokio::time::interval(Duration::from_millis(500));
        let mut flush = tokio::time::interval(COALESCE);
        let mut out = Output::new(self.store.clone(), session.id.clone(), sb.id.clone());
        let mut disconnected_since: Option<Instant> = None;
        let store = &self.store;
        let sid = &session.id;
        let stop = |reason: &str| {
            let _ = hub.cancel(&sb.id, exec);
            reason.to_string()
        };
        loop {
            tokio::select! {
                ev = stream.next() => {
                    let Some(ev) = ev else {
                        anyhow::bail!("the sandbox connection was dropped");
                    };
                    match ev {
                        ExecEvent::Output { seq, stream: which, data } => {
                            last_output = Instant::now();
                            if out.push(seq, which, data) >= EVENT_BYTES {
                                out.flush(hub).await?;
                            }
                        }
                        ExecEvent::Exit { seq, code, signal, oom_killed, duration_ms } => {
                            out.flush(hub).await?;
                            let what = describe_exit(code, signal, oom_killed);
                            let ok = code == Some(0);
                            store.append_event(sid, EventKind::Summary, &json!({
                                "exit_code": code, "signal": signal, "oom_killed": oom_killed,
                                "duration_ms": duration_ms, "text": out.tail,
                            })).await?;
                            hub.done(&sb.id, seq);
                            let _ = store.set_sandbox_agent_exec(&sb.id, None).await;
                            return Ok(Outcome {
                                state: if ok { SessionState::Succeeded } else { SessionState::Failed },
                                reason: format!("the agent's command {what}"),
                                keep_snapshot: true,
                            });
                        }
                        ExecEvent::Failed { seq, message } => {
                            out.flush(hub).await?;
                            hub.done(&sb.id, seq);
                            return Ok(Outcome { state: SessionState::Failed, reason: message, keep_snapshot: false });
                        }
                    }
                }
                _ = flush.tick() => {
                    out.flush(hub).await?;
                }
                _ = &mut wall => {
                    out.flush(hub).await?;
                    let reason = stop(&format!(
                        "ran longer than the wall-clock limit of {} s and was stopped; raise limits.wall_clock_secs in profile `{}` if it needs longer",
                        limits.wall_clock_secs, profile.name
                    ));
                    return Ok(Outcome { state: SessionState::TimedOut, reason, keep_snapshot: true });
                }
                _ = check.tick() => {
                    let _ = store.lease_session(sid, &self.owner, now_ms() + LEASE_MS).await;
                    let now = store.session(sid).await?;
                    if now.state.is_terminal() {
                        let _ = hub.cancel(&sb.id, exec);
                        return Ok(Outcome {
                            state: now.state,
                            reason: now.reason.unwrap_or_else(|| "cancelled".into()),
                            keep_snapshot: false,
                        });
                    }
                    if last_output.elapsed() > idle_limit {
                        out.flush(hub).await?;
                        let reason = stop(&format!(
                            "produced no output for {} s (the idle limit) and was stopped; raise limits.idle_secs in profile `{}` if it needs longer",
                            limits.idle_secs, profile.name
                        ));
                        return Ok(Outcome { state: SessionState::TimedOut, reason, keep_snapshot: true });
                    }
                    if hub.is_connected(&sb.id) {
                        disconnected_since = None;
                    } else {
                        let since = *disconnected_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(3) {
                            let cid = sb.container_id.clone().unwrap_or_default();
                            let inst = self.sandboxes.runtime.inspect(&cid).await?;
                            let gone = match inst {
                                None => Some("its sandbox vanished (the container was removed)".to_string()),
                                Some(i) if !i.running && i.oom_killed => Some("its sandbox ran out of memory and stopped (raise limits.memory_mb in the profile)".to_string()),
                                Some(i) if !i.running => Some(format!("its sandbox stopped unexpectedly (exit code {})", i.exit_code.unwrap_or(-1))),
                                Some(_) if since.elapsed() > Duration::from_secs(30) => Some("sandboxd in its sandbox stopped answering".to_string()),
                                Some(_) => None,
                            };
                            if let Some(reason) = gone {
                                return Ok(Outcome { state: SessionState::Failed, reason, keep_snapshot: false });
                            }
                        }
                    }
                }
            }
        }
    }

    /// Asks every running session's task to stop (used in tests and on shutdown).
    pub fn abort_all(&self) {
        for (_, t) in self.tasks().drain() {
            t.abort();
        }
    }
}

/// The prompt of the session's latest turn (a follow-up adds a `turn` event).
async fn turn_prompt(store: &Store, session: &Session) -> String {
    if let Ok(events) = store.events(&session.id, 0, 100_000).await {
        if let Some(p) = events
            .iter()
            .rev()
            .filter(|e| e.kind == EventKind::Turn)
            .find_map(|e| e.payload.get("prompt").and_then(|p| p.as_str()))
        {
            return p.to_string();
        }
    }
    session.prompt.clone()
}

/// The agent's output not yet stored: gathered into events, and acknowledged to sandboxd once
/// stored. Keeps the end of everything for the session's summary.
struct Output {
    store: Store,
    session: String,
    sandbox: String,
    chunks: Vec<(Stream, Vec<u8>)>,
    bytes: usize,
    last_seq: u64,
    tail: String,
}

impl Output {
    fn new(store: Store, session: String, sandbox: String) -> Output {
        Output {
            store,
            session,
            sandbox,
            chunks: Vec::new(),
            bytes: 0,
            last_seq: 0,
            tail: String::new(),
        }
    }

    /// Adds a chunk; returns how many bytes wait to be stored.
    fn push(&mut self, seq: u64, stream: Stream, data: Vec<u8>) -> usize {
        self.bytes += data.len();
        self.chunks.push((stream, data));
        self.last_seq = seq;
        self.bytes
    }

    /// Stores what waits as `command_output` events, then lets sandboxd forget it.
    async fn flush(&mut self, hub: &crate::sandbox::Hub) -> anyhow::Result<()> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        // One event per run of the same stream.
        let mut groups: Vec<(Stream, Vec<u8>)> = Vec::new();
        for (s, d) in self.chunks.drain(..) {
            match groups.last_mut() {
                Some((ls, ld)) if *ls == s => ld.extend_from_slice(&d),
                _ => groups.push((s, d)),
            }
        }
        self.bytes = 0;
        for (s, d) in groups {
            let text = String::from_utf8_lossy(&d).into_owned();
            let tail = &mut self.tail;
            tail.push_str(&text);
            if tail.len() > SUMMARY_TAIL {
                let cut = tail.len() - SUMMARY_TAIL;
                let cut = (cut..tail.len())
                    .find(|i| tail.is_char_boundary(*i))
                    .unwrap_or(tail.len());
                tail.drain(..cut);
            }
            let stream = match s {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
                Stream::Pty => "pty",
            };
            // Pieces small enough that even fully escaped JSON stays within an event's bound.
            let mut rest = text.as_str();
            while !rest.is_empty() {
                let mut end = rest.len().min(32 * 1024);
                while !rest.is_char_boundary(end) {
                    end -= 1;
                }
                let (piece, more) = rest.split_at(end);
                self.store
                    .append_event(
                        &self.session,
                        EventKind::CommandOutput,
                        &json!({ "stream": stream, "text": piece }),
                    )
                    .await?;
                rest = more;
            }
        }
        hub.done(&self.sandbox, self.last_seq);
        Ok(())
    }
}

/// The process that runs a profile's agent.
pub fn agent_argv(agent: &AgentSpec) -> Result<Vec<String>, String> {
    match agent {
        AgentSpec::Command { command } => Ok(vec!["bash".into(), "-lc".into(), command.clone()]),
        other => Err(format!(
            "the `{}` agent runner is not in this version of Airlock yet; use a `command` agent",
            match other {
                AgentSpec::Builtin { .. } => "builtin",
                AgentSpec::Codex { .. } => "codex",
                AgentSpec::ClaudeCode { .. } => "claude-code",
                AgentSpec::Opencode { .. } => "opencode",
                AgentSpec::Aider { .. } => "aider",
                AgentSpec::Command { .. } => "command",
            }
        )),
    }
}
