//! The broker: takes queued sessions, runs each in a sandbox, records what happens as session
//! events, and ends each with a state and a reason a person can act on.
//!
//! Sessions are claimed from the database queue within the concurrency limits (per
//! deployment and per human) and leased; a restarted server takes back its own live sessions
//! at once and re-attaches to their sandboxes, whose sandboxd replays output the server had
//! not stored. Each turn runs under a [`Plan`]: the repository is cloned through the gateway,
//! the agent works on the session's branch, and on success the broker commits (the
//! `Co-authored-by` and `Airlock-Session` trailers are added by a commit hook, also to the
//! agent's own commits), pushes, and opens a pull request naming the requester.
//!
//! No credential passes through here: git and model requests go through the gateway.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_sandboxd::proto::{
    describe_exit, AgentEvent, AgentRun, Stream, ENV_AGENT, ENV_PROMPT, REPO_DIR, SANDBOXD_MOUNT,
    WORKSPACE,
};
use serde_json::json;
use tokio::sync::Notify;

use crate::domain::thread::GithubThread;
use crate::domain::{AgentSpec, EventKind, SessionState, Surface, ThreadRef};
use crate::github::GithubSource;
use crate::ids::now_ms;
use crate::plan::{GitPlan, Plan, PlanSettings};
use crate::store::{settle, NewAudit, Profile, ProfileVersion, Sandbox, Session, Store};
use airlock_sandbox::{
    ExecEvent, ExecRequest, ExecStream, Origin, RuntimeError, SandboxError, Sandboxes,
};

/// How often a session waiting for a sandbox address tries again.
const ADDRESS_RETRY: Duration = Duration::from_secs(2);
/// How long a lease lasts without renewal.
const LEASE_MS: i64 = 30_000;
/// Output is gathered into one event per this interval (or per [`EVENT_BYTES`]).
const COALESCE: Duration = Duration::from_millis(200);
const EVENT_BYTES: usize = 16 * 1024;
/// The end of a command's output kept for its summary.
const SUMMARY_TAIL: usize = 4000;
/// Longest a git step (clone, push) may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);
/// The built-in agent's system prompt.
const BUILTIN_SYSTEM: &str = include_str!("../../templates/prompts/builtin-system.md");
/// Sent where a CLI insists on an API key; the gateway replaces it with the real one.
const PLACEHOLDER_KEY: &str = "airlock-placeholder";

/// What the broker needs besides the store and the sandboxes.
pub struct BrokerSettings {
    pub max_sessions: u32,
    pub max_sessions_per_human: u32,
    pub plan: PlanSettings,
    /// GitHub, when configured: pull requests are opened there.
    pub github: Option<Arc<GithubSource>>,
    /// Where people see a session (`<public_url>/sessions/<id>`).
    pub public_url: String,
    /// Where full output logs go (`<data_dir>/logs`), for profiles with `limits.output_log`.
    pub logs_dir: Option<std::path::PathBuf>,
}

impl BrokerSettings {
    /// No GitHub, default limits: sessions run without git (tests and `command` profiles).
    pub fn local() -> BrokerSettings {
        BrokerSettings {
            max_sessions: 4,
            max_sessions_per_human: 4,
            plan: PlanSettings {
                github: None,
                author_name: "Airlock".into(),
                author_email: "airlock@localhost".into(),
            },
            github: None,
            public_url: "http://127.0.0.1:8080".into(),
            logs_dir: None,
        }
    }
}

pub struct Broker {
    pub store: Store,
    pub sandboxes: Arc<Sandboxes>,
    /// This server's id (stable across restarts of the same installation).
    pub owner: String,
    settings: BrokerSettings,
    wake: Notify,
    running: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

/// How a run ended.
struct Outcome {
    state: SessionState,
    reason: String,
    keep_snapshot: bool,
    /// The agent's final answer (markdown), for the pull request and the thread.
    summary: Option<String>,
}

impl Outcome {
    fn failed(reason: impl Into<String>) -> Outcome {
        Outcome {
            state: SessionState::Failed,
            reason: reason.into(),
            keep_snapshot: false,
            summary: None,
        }
    }
}

/// How the agent's stdout is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// A `command` agent: its output is the record.
    Raw,
    /// `sandboxd agent`: one JSON event per line.
    Events,
}

impl Broker {
    pub fn new(
        store: Store,
        sandboxes: Arc<Sandboxes>,
        owner: String,
        settings: BrokerSettings,
    ) -> Arc<Broker> {
        Arc::new(Broker {
            store,
            sandboxes,
            owner,
            settings,
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
        // A session whose agent had not started yet lost nothing: it goes back to the queue.
        let requeue = "the server restarted before the session's agent started; queued again";
        for (session, why) in found.vanished {
            let state = self.store.session(&session).await?.state;
            if state == SessionState::Starting {
                tracing::info!(%session, "{requeue}");
                settle("a session queued again after a restart", || {
                    self.store
                        .transition(&session, SessionState::Queued, Some(requeue))
                })
                .await;
                continue;
            }
            tracing::warn!(%session, "{why}");
            settle("a session whose sandbox vanished, failed", || {
                self.store
                    .transition(&session, SessionState::Failed, Some(&why))
            })
            .await;
        }
        for (session, sandbox) in found.alive {
            let sb = self.store.sandbox(&sandbox).await?;
            let s = self.store.session(&session).await?;
            match (s.state, sb.agent_exec) {
                (SessionState::Running, Some(exec)) => {
                    tracing::info!(%session, %sandbox, "re-attaching to a running session");
                    self.note(
                        &session,
                        "the server restarted; re-attached to the running sandbox",
                    )
                    .await;
                    let stream = self.sandboxes.hub.attach(&sandbox, exec as u64);
                    self.spawn(session, Some((sb, stream)));
                }
                (SessionState::Starting, _) => {
                    self.sandboxes.release(&sb, requeue).await;
                    settle("a session queued again after a restart", || {
                        self.store
                            .transition(&session, SessionState::Queued, Some(requeue))
                    })
                    .await;
                }
                (state, _) => {
                    let why = format!(
                        "the server stopped while the session was {}; ask again to retry",
                        match state {
                            SessionState::Finishing => "pushing its changes",
                            _ => "between steps",
                        }
                    );
                    self.sandboxes.release(&sb, &why).await;
                    settle("a session stopped by a restart, failed", || {
                        self.store
                            .transition(&session, SessionState::Failed, Some(&why))
                    })
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
        // The queue wakes the broker when it changes (core/store/src/store/queue.rs); the poll is
        // only the fallback.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let watcher = tokio::spawn(self.store.clone().watch_queue());
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
                _ = self.store.queue_changed() => {}
                _ = warm.tick() => {
                    if let Err(e) = self.sandboxes.fill_warm_pools().await {
                        tracing::warn!("warm pools: {e}");
                    }
                    continue;
                }
            }
            self.tasks().retain(|_, t| !t.is_finished());
            loop {
                match self
                    .store
                    .claim_next_session(
                        &self.owner,
                        now_ms() + LEASE_MS,
                        self.settings.max_sessions,
                        self.settings.max_sessions_per_human,
                    )
                    .await
                {
                    Ok(Some(s)) => self.spawn(s.id, None),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("cannot read the queue: {e}");
                        break;
                    }
                }
            }
        }
        watcher.abort();
    }

    fn spawn(self: &Arc<Self>, session: String, attach: Option<(Sandbox, ExecStream)>) {
        let me = self.clone();
        let id = session.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = me.drive(&id, attach).await {
                tracing::warn!(session = %id, "session failed: {e}");
                let why = format!("Airlock could not run the session: {e}");
                settle("a session that could not run, failed", || {
                    me.store.transition(&id, SessionState::Failed, Some(&why))
                })
                .await;
            }
        });
        self.tasks().insert(session, task);
    }

    async fn note(&self, session: &str, text: impl Into<String>) {
        note(&self.store, session, text.into()).await
    }

    /// The plan of the session's current turn: stored when the turn started (a re-attached
    /// session keeps it), made now otherwise.
    async fn plan(
        &self,
        session: &Session,
        pv: &ProfileVersion,
        fresh: bool,
    ) -> anyhow::Result<Plan> {
        if !fresh {
            if let Some(p) = session.plan.as_ref().and_then(Plan::from_json) {
                return Ok(p);
            }
        }
        let requester = self.store.find_human(&session.requester_id).await?;
        let plan = Plan::build(
            &pv.spec,
            pv.version,
            session,
            &requester,
            &self.settings.plan,
        );
        self.store
            .set_session_plan(
                &session.id,
                &plan.to_json(),
                plan.git.as_ref().map(|g| g.branch.as_str()),
            )
            .await?;
        Ok(plan)
    }

    /// Runs one session from `starting` (or re-attached while `running`) to its end.
    #[tracing::instrument(name = "turn", skip_all, fields(session = %id, attached = attach.is_some()))]
    async fn drive(&self, id: &str, attach: Option<(Sandbox, ExecStream)>) -> anyhow::Result<()> {
        let session = self.store.session(id).await?;
        let pv = self
            .store
            .profile_version(&session.profile_id, Some(session.profile_version))
            .await?;
        let profile = self.store.find_profile(&session.profile_id).await?;
        let plan = self.plan(&session, &pv, attach.is_none()).await?;
        let mode = agent_exec(&plan).2;
        let (sb, stream) = match attach {
            Some(a) => a,
            None => match self.start(&session, &profile, &pv, &plan).await? {
                Some(a) => a,
                None => return Ok(()),
            },
        };
        tracing::info!(sandbox = %sb.id, profile = %profile.name, repo = %session.repo, "the agent runs");
        let session = self.store.session(id).await?;
        let mut outcome = match self.watch(&session, &profile, &pv, &sb, stream, mode).await {
            Ok(o) => o,
            Err(e) => Outcome::failed(format!("Airlock lost the session: {e}")),
        };
        // The session may have been cancelled meanwhile; only a live session changes state.
        let mut current = self.store.session(id).await?.state;
        if !current.is_terminal() && outcome.state == SessionState::Succeeded {
            self.store
                .transition(id, SessionState::Finishing, None)
                .await?;
            if let Some(git) = &plan.git {
                match self.finish(&session, &plan, git, &sb, &outcome).await {
                    Ok(reason) => outcome.reason = reason,
                    Err(why) => {
                        outcome.state = SessionState::Failed;
                        outcome.reason = why;
                    }
                }
            }
            current = self.store.session(id).await?.state;
        }
        // The files are kept before the session ends, so a follow-up sent the moment it ends
        // starts from them.
        if outcome.keep_snapshot && !current.is_terminal() {
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
        // The sandbox goes before the session ends: ending frees its slot, and the queue
        // wakes at once, so the next session must not start beside a sandbox still going.
        self.sandboxes.release(&sb, &outcome.reason).await;
        if !self.store.session(id).await?.state.is_terminal() {
            self.store
                .transition(id, outcome.state, Some(&outcome.reason))
                .await?;
        }
        tracing::info!(state = %outcome.state, reason = %outcome.reason, "the turn ended");
        Ok(())
    }

    /// Gets a sandbox, binds it, prepares the repository and starts the agent. `None` when
    /// the session ended instead.
    /// A sandbox for the session. While the sandbox network has no free address (other
    /// sandboxes hold them all), the session waits, says why in its log, keeps its lease and
    /// tries again every [`ADDRESS_RETRY`], until an address frees up, the session is
    /// stopped (`None`) or its wall clock runs out.
    async fn acquire_waiting(
        &self,
        session: &Session,
        profile: &Profile,
        pv: &ProfileVersion,
        plan: &Plan,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> anyhow::Result<Option<(Sandbox, Origin)>> {
        let deadline =
            session.started_at.unwrap_or_else(now_ms) + (plan.limits.wall_clock_secs as i64) * 1000;
        let mut waiting = false;
        loop {
            match self.sandboxes.acquire(session, profile, pv, log).await {
                Ok(got) => return Ok(Some(got)),
                Err(SandboxError::Runtime(RuntimeError::NoAddress(why))) => {
                    if now_ms() > deadline {
                        anyhow::bail!(
                            "no sandbox address became free within the session's wall clock \
                             ({} s): {why}",
                            plan.limits.wall_clock_secs
                        );
                    }
                    if !waiting {
                        waiting = true;
                        tracing::warn!(session = %session.id, "waiting for a sandbox address: {why}");
                        self.note(
                            &session.id,
                            "Waiting for a sandbox address: every address of the sandbox network \
                             (`sandbox.subnet`) is taken. The session starts as soon as one is \
                             released; `airlock doctor` compares the subnet with the sessions \
                             and warm pools it must hold.",
                        )
                        .await;
                    }
                    tokio::time::sleep(ADDRESS_RETRY).await;
                    let now = self.store.session(&session.id).await?;
                    if now.state != SessionState::Starting {
                        return Ok(None);
                    }
                    self.store
                        .lease_session(&session.id, &self.owner, now_ms() + LEASE_MS)
                        .await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn start(
        &self,
        session: &Session,
        profile: &Profile,
        pv: &ProfileVersion,
        plan: &Plan,
    ) -> anyhow::Result<Option<(Sandbox, ExecStream)>> {
        let (argv, mut env, _) = agent_exec(plan);
        let store = self.store.clone();
        let sid = session.id.clone();
        let mut log = move |line: &str| {
            let store = store.clone();
            let sid = sid.clone();
            let line = line.to_string();
            tokio::spawn(async move { note(&store, &sid, line).await });
        };
        let (sb, origin) = match self
            .acquire_waiting(session, profile, pv, plan, &mut log)
            .await?
        {
            Some(got) => got,
            None => return Ok(None),
        };
        let started = self.store.session(&session.id).await?;
        if started.state != SessionState::Starting {
            self.sandboxes
                .release(&sb, "the session ended while starting")
                .await;
            return Ok(None);
        }
        let deadline =
            started.started_at.unwrap_or_else(now_ms) + (plan.limits.wall_clock_secs as i64) * 1000;
        self.sandboxes
            .bind(&sb, session, &plan.env, deadline)
            .await?;
        let how = match &origin {
            Origin::Warm => "claimed a warm sandbox".to_string(),
            Origin::Cold { image } => format!("started a sandbox from {image}"),
        };
        self.note(&session.id, format!("{how} ({})", sb.id)).await;
        let cwd = match &plan.git {
            Some(git) => {
                if let Err(why) = self.prepare_repo(&sb, session, git).await {
                    self.sandboxes.release(&sb, &why).await;
                    self.store
                        .transition(&session.id, SessionState::Failed, Some(&why))
                        .await?;
                    return Ok(None);
                }
                REPO_DIR
            }
            None => WORKSPACE,
        };
        self.store
            .transition(&session.id, SessionState::Running, None)
            .await?;
        env.insert(
            ENV_PROMPT.to_string(),
            self.store.latest_prompt(session).await?,
        );
        let stream = self.sandboxes.hub.exec(
            &sb.id,
            ExecRequest {
                argv,
                env,
                cwd: Some(cwd.to_string()),
                durable: true,
                ..Default::default()
            },
        )?;
        self.store
            .set_sandbox_agent_exec(&sb.id, Some(stream.id))
            .await?;
        Ok(Some((sb, stream)))
    }

    /// Runs a short process in the sandbox and collects its output: `Ok((exit 0?, stdout,
    /// stderr))`, or why it could not run.
    async fn capture(
        &self,
        sb: &Sandbox,
        script: &str,
        env: BTreeMap<String, String>,
        stdin: Option<Vec<u8>>,
    ) -> Result<(bool, String, String), String> {
        let mut stream = self
            .sandboxes
            .hub
            .exec(
                &sb.id,
                ExecRequest {
                    argv: vec!["bash".into(), "-c".into(), script.into()],
                    env,
                    stdin,
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let run = async {
            while let Some(ev) = stream.next().await {
                match ev {
                    ExecEvent::Output { stream, data, .. } => match stream {
                        Stream::Stderr => err.extend_from_slice(&data),
                        _ => out.extend_from_slice(&data),
                    },
                    ExecEvent::Exit { code, .. } => return Ok(code == Some(0)),
                    ExecEvent::Failed { message, .. } => return Err(message),
                }
            }
            Err("the sandbox connection was dropped".to_string())
        };
        let ok = tokio::time::timeout(GIT_TIMEOUT, run)
            .await
            .map_err(|_| format!("took longer than {} s", GIT_TIMEOUT.as_secs()))??;
        Ok((
            ok,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        ))
    }

    /// Clones the repository through the gateway (unless a follow-up's snapshot has it) and
    /// checks out the session's branch, with a commit hook that adds the trailers.
    async fn prepare_repo(
        &self,
        sb: &Sandbox,
        session: &Session,
        git: &GitPlan,
    ) -> Result<(), String> {
        let env = BTreeMap::from([
            ("AIRLOCK_CLONE_URL".to_string(), git.clone_url.clone()),
            ("AIRLOCK_BRANCH".to_string(), git.branch.clone()),
            (
                "AIRLOCK_BASE".to_string(),
                git.base.clone().unwrap_or_default(),
            ),
            (
                "AIRLOCK_EXISTING".to_string(),
                if git.existing_branch { "1" } else { "0" }.to_string(),
            ),
            ("AIRLOCK_GIT_NAME".to_string(), git.author_name.clone()),
            ("AIRLOCK_GIT_EMAIL".to_string(), git.author_email.clone()),
            (
                "AIRLOCK_TRAILERS".to_string(),
                format!(
                    "Co-authored-by: {}\nAirlock-Session: {}",
                    git.co_author, session.id
                ),
            ),
        ]);
        match self.capture(sb, PREPARE_SCRIPT, env, None).await {
            Ok((true, out, _)) => {
                let line = out
                    .lines()
                    .find(|l| l.starts_with("airlock:"))
                    .unwrap_or("");
                self.note(
                    &session.id,
                    format!(
                        "working on branch {} ({})",
                        git.branch,
                        line.trim_start_matches("airlock:").trim()
                    ),
                )
                .await;
                Ok(())
            }
            Ok((false, _, err)) => Err(format!(
                "could not check out {} (branch {}): {}",
                session.repo,
                git.branch,
                last_lines(&err, 3)
            )),
            Err(e) => Err(format!("could not check out {}: {e}", session.repo)),
        }
    }

    /// Commits what the agent changed, pushes the branch and opens (or names) the pull
    /// request. Returns the session's reason.
    async fn finish(
        &self,
        session: &Session,
        plan: &Plan,
        git: &GitPlan,
        sb: &Sandbox,
        outcome: &Outcome,
    ) -> Result<String, String> {
        let prompt = self
            .store
            .latest_prompt(session)
            .await
            .map_err(|e| format!("cannot read the session's prompt: {e}"))?;
        let title = crate::render::one_line(&prompt, 72);
        let message = format!(
            "{title}\n\nAsked by {} in Airlock session {}.\n",
            plan.requester.name, session.id
        );
        let env = BTreeMap::from([
            ("AIRLOCK_BRANCH".to_string(), git.branch.clone()),
            ("AIRLOCK_GIT_NAME".to_string(), git.author_name.clone()),
            ("AIRLOCK_GIT_EMAIL".to_string(), git.author_email.clone()),
        ]);
        let (ok, out, err) = self
            .capture(sb, FINISH_SCRIPT, env, Some(message.into_bytes()))
            .await
            .map_err(|e| format!("could not push branch {}: {e}", git.branch))?;
        if !ok {
            return Err(format!(
                "the agent finished, but its changes could not be pushed to {} (branch {}): {}; \
                 the files are kept for a follow-up",
                session.repo,
                git.branch,
                last_lines(&err, 3)
            ));
        }
        let status = out
            .lines()
            .find_map(|l| l.strip_prefix("airlock:"))
            .unwrap_or("unchanged")
            .to_string();
        let mut words = status.split_whitespace();
        if words.next() != Some("pushed") {
            let event = json!({"branch": git.branch, "pushed": false, "pull_request": null});
            settle("the session's git event", || {
                self.store.append_event(&session.id, EventKind::Git, &event)
            })
            .await;
            return Ok("the agent finished without changing any file".into());
        }
        let commit = words.next().unwrap_or("").to_string();
        let base = git
            .base
            .clone()
            .or_else(|| words.next().map(str::to_string))
            .unwrap_or_else(|| "main".into());
        let short = commit.get(..12).unwrap_or(&commit).to_string();
        let mut pull = self
            .store
            .session(&session.id)
            .await
            .ok()
            .and_then(|s| s.pull_request_url)
            .or_else(|| {
                session
                    .thread_ref
                    .pull_request()
                    .and_then(|p| p.url.clone())
            });
        let mut opened = None;
        if let (Some(url), None) = (&pull, &session.pull_request_url) {
            settle("the session's pull request", || {
                self.store.set_session_pull_request(&session.id, url)
            })
            .await;
        }
        if pull.is_none() && !git.existing_branch {
            if let Some(source) = &self.settings.github {
                let body = self
                    .pull_request_body(session, plan, &prompt, outcome)
                    .await;
                let made = match source.get().await {
                    Ok(gh) => gh
                        .create_pull(&session.repo, &git.branch, &base, &title, &body)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match made {
                    Ok(pr) => {
                        settle("the session's pull request", || {
                            self.store
                                .set_session_pull_request(&session.id, &pr.html_url)
                        })
                        .await;
                        let entry = NewAudit {
                            actor: format!("human:{}", plan.requester.id),
                            action: "session.pull_request".into(),
                            target: session.repo.clone(),
                            session_id: Some(session.id.clone()),
                            detail: json!({"number": pr.number, "url": pr.html_url, "branch": git.branch}),
                        };
                        settle("the pull request's audit row", || {
                            self.store.audit(entry.clone())
                        })
                        .await;
                        opened = Some(pr.number);
                        pull = Some(pr.html_url);
                    }
                    Err(e) => {
                        let event = json!({"branch": git.branch, "commit": commit, "pushed": true, "pull_request": null});
                        settle("the session's git event", || {
                            self.store.append_event(&session.id, EventKind::Git, &event)
                        })
                        .await;
                        return Err(format!(
                            "pushed branch {} ({short}), but could not open a pull request: {e}",
                            git.branch
                        ));
                    }
                }
            }
        }
        let event = json!({"branch": git.branch, "commit": commit, "base": base, "pushed": true,
                "pull_request": pull.as_ref().map(|u| json!({"url": u, "number": opened}))});
        settle("the session's git event", || {
            self.store.append_event(&session.id, EventKind::Git, &event)
        })
        .await;
        Ok(match (opened, pull) {
            (Some(n), Some(url)) => {
                format!(
                    "pushed branch {} and opened pull request #{n}: {url}",
                    git.branch
                )
            }
            (None, Some(url)) => format!("pushed {short} to {} ({url})", git.branch),
            _ => format!("pushed branch {} ({short})", git.branch),
        })
    }

    /// The pull request's description: who asked, where, what they asked, what the agent
    /// says it did, and the session.
    async fn pull_request_body(
        &self,
        session: &Session,
        plan: &Plan,
        prompt: &str,
        outcome: &Outcome,
    ) -> String {
        let where_ = match session.surface {
            Surface::Cli => "from the terminal (`airlock run`)".to_string(),
            Surface::Slack => "in Slack".to_string(),
            Surface::Discord => "in Discord".to_string(),
            Surface::Web => "on the admin page".to_string(),
            Surface::Trigger => "through a trigger".to_string(),
            Surface::Github => match &session.thread_ref {
                ThreadRef::Github(GithubThread {
                    comment_url: Some(u),
                    ..
                }) => format!("in [a GitHub comment]({u})"),
                _ => "on GitHub".to_string(),
            },
        };
        let quoted: String = crate::render::github(prompt, 4000, None)
            .lines()
            .map(|l| format!("> {l}\n"))
            .collect();
        let link = format!("{}/sessions/{}", self.settings.public_url, session.id);
        let summary = outcome
            .summary
            .as_deref()
            .map(|s| crate::render::github(s, 40_000, Some(&link)))
            .unwrap_or_default();
        let usage = self
            .store
            .session_usage(&session.id)
            .await
            .map(|u| u.tokens())
            .unwrap_or(0);
        let mut body = format!(
            "Requested by **{}** {where_}:\n\n{quoted}\n",
            crate::render::github(&plan.requester.name, 200, None)
        );
        if !summary.trim().is_empty() {
            body.push_str(&format!("### What the agent did\n\n{summary}\n\n"));
        }
        body.push_str(&format!(
            "---\nAirlock session [`{}`]({link}) · profile `{}` v{}",
            session.id, plan.profile, plan.profile_version
        ));
        if usage > 0 {
            body.push_str(&format!(" · {usage} model tokens"));
        }
        body.push('\n');
        crate::render::github(&body, crate::render::GITHUB_MAX, None)
    }

    /// Follows the agent's process to its end, enforcing the limits.
    async fn watch(
        &self,
        session: &Session,
        profile: &Profile,
        pv: &ProfileVersion,
        sb: &Sandbox,
        mut stream: ExecStream,
        mode: Mode,
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
        let stored = self.store.session_output_bytes(&session.id).await?;
        let log = match (&self.settings.logs_dir, limits.output_log) {
            (Some(dir), true) => match crate::output_log::OutputLog::open(dir, &session.id) {
                Ok(log) => Some(log),
                Err(e) => {
                    tracing::warn!(session = %session.id, "cannot keep the full output log: {e}");
                    self.note(
                        &session.id,
                        format!("The full output log cannot be kept: {e}"),
                    )
                    .await;
                    None
                }
            },
            _ => None,
        };
        let mut out = Output::new(
            self.store.clone(),
            session.id.clone(),
            sb.id.clone(),
            exec,
            mode,
            turn_budget(limits, stored),
        );
        out.log = log;
        let mut disconnected_since: Option<Instant> = None;
        let store = &self.store;
        let sid = &session.id;
        let stop = |reason: &str| {
            let _ = hub.cancel(&sb.id, exec);
            reason.to_string()
        };
        let timed_out = |reason: String, out: &Output| Outcome {
            state: SessionState::TimedOut,
            reason,
            keep_snapshot: true,
            summary: out.summary.clone().map(|(t, _)| t),
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
                            out.finish_lines();
                            out.flush(hub).await?;
                            out.write_tail().await?;
                            let what = describe_exit(code, signal, oom_killed);
                            let exited_ok = code == Some(0);
                            let (text, said_ok) = match (&out.summary, mode) {
                                (Some((t, ok)), _) => (t.clone(), *ok),
                                (None, _) => (out.tail.clone(), exited_ok),
                            };
                            let ok = exited_ok && said_ok;
                            store.append_event(sid, EventKind::Summary, &json!({
                                "exit_code": code, "signal": signal, "oom_killed": oom_killed,
                                "duration_ms": duration_ms, "text": text, "ok": ok,
                                "runner": if mode == Mode::Events { "agent" } else { "command" },
                            })).await?;
                            hub.done(&sb.id, exec, seq);
                            settle("the sandbox's finished agent", || store.set_sandbox_agent_exec(&sb.id, None)).await;
                            let reason = match (mode, ok) {
                                (Mode::Raw, _) => format!("the agent's command {what}"),
                                (Mode::Events, true) => "the agent finished".to_string(),
                                (Mode::Events, false) if oom_killed || signal.is_some() => format!("the agent {what}"),
                                (Mode::Events, false) => {
                                    let first = crate::render::one_line(&text, 300);
                                    if first.is_empty() { format!("the agent {what}") } else { first }
                                }
                            };
                            return Ok(Outcome {
                                state: if ok { SessionState::Succeeded } else { SessionState::Failed },
                                reason,
                                keep_snapshot: true,
                                summary: (mode == Mode::Events).then_some(text),
                            });
                        }
                        ExecEvent::Failed { seq, message } => {
                            out.flush(hub).await?;
                            out.write_tail().await?;
                            hub.done(&sb.id, exec, seq);
                            return Ok(Outcome::failed(message));
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
                    out.write_tail().await?;
                    return Ok(timed_out(reason, &out));
                }
                _ = check.tick() => {
                    settle("the session's lease", || store.lease_session(sid, &self.owner, now_ms() + LEASE_MS)).await;
                    let now = store.session(sid).await?;
                    if now.state.is_terminal() {
                        let _ = hub.cancel(&sb.id, exec);
                        out.flush(hub).await?;
                        out.write_tail().await?;
                        return Ok(Outcome {
                            state: now.state,
                            reason: now.reason.unwrap_or_else(|| "cancelled".into()),
                            keep_snapshot: false,
                            summary: None,
                        });
                    }
                    if last_output.elapsed() > idle_limit {
                        out.flush(hub).await?;
                        let reason = stop(&format!(
                            "produced no output for {} s (the idle limit) and was stopped; raise limits.idle_secs in profile `{}` if it needs longer",
                            limits.idle_secs, profile.name
                        ));
                        out.write_tail().await?;
                        return Ok(timed_out(reason, &out));
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
                                out.flush(hub).await?;
                                out.write_tail().await?;
                                return Ok(Outcome::failed(reason));
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

/// Clones (unless the files are there from an earlier turn), checks out the branch, and
/// installs the commit hook that adds the trailers. Prints `airlock:branch … base …`.
const PREPARE_SCRIPT: &str = r#"set -eu
if [ ! -d /workspace/repo/.git ]; then
  git clone --quiet --no-tags "$AIRLOCK_CLONE_URL" /workspace/repo
  cd /workspace/repo
  base="$AIRLOCK_BASE"
  if [ -z "$base" ]; then
    base=$(git symbolic-ref --short refs/remotes/origin/HEAD 2>/dev/null | sed 's#^origin/##')
    base=${base:-main}
  fi
  # The branch may exist already: a pull request's, or an earlier turn's whose files are gone.
  if [ "$AIRLOCK_EXISTING" = 1 ] || git rev-parse -q --verify "refs/remotes/origin/$AIRLOCK_BRANCH" >/dev/null; then
    git checkout --quiet -B "$AIRLOCK_BRANCH" "origin/$AIRLOCK_BRANCH"
  else
    git checkout --quiet -b "$AIRLOCK_BRANCH" "origin/$base"
  fi
  git config airlock.base "$base"
  git config airlock.start "$(git rev-parse HEAD)"
fi
cd /workspace/repo
# Byproducts of running tests are never part of the change (the repository's own
# .gitignore still applies on top).
printf '%s\n' '__pycache__/' '*.pyc' '.pytest_cache/' 'node_modules/' '.DS_Store' >> .git/info/exclude
sort -u -o .git/info/exclude .git/info/exclude
git config user.name "$AIRLOCK_GIT_NAME"
git config user.email "$AIRLOCK_GIT_EMAIL"
printf '%s\n' "$AIRLOCK_TRAILERS" > .git/airlock-trailers
cat > .git/hooks/commit-msg <<'HOOK'
#!/bin/sh
# Airlock: every commit of this session names the requester and the session.
while IFS= read -r t; do
  [ -n "$t" ] && git interpret-trailers --in-place --if-exists addIfDifferent --trailer "$t" "$1"
done < "$(git rev-parse --git-dir)/airlock-trailers"
HOOK
chmod +x .git/hooks/commit-msg
echo "airlock:branch $(git rev-parse --abbrev-ref HEAD) from $(git config airlock.base)"
"#;

/// Commits what is uncommitted (the message on stdin), then pushes the branch if it has
/// commits the remote does not. Prints `airlock:pushed <commit> <base>` or
/// `airlock:unchanged`.
const FINISH_SCRIPT: &str = r#"set -eu
cd /workspace/repo
msg=$(cat)
git add -A
if ! git diff --cached --quiet; then
  git commit --quiet -m "$msg"
fi
if git rev-parse -q --verify "refs/remotes/origin/$AIRLOCK_BRANCH" >/dev/null; then
  since="refs/remotes/origin/$AIRLOCK_BRANCH"
else
  since=$(git config airlock.start)
fi
if [ "$(git rev-list --count "$since..HEAD")" = 0 ]; then
  echo "airlock:unchanged"
  exit 0
fi
git push --quiet origin "HEAD:refs/heads/$AIRLOCK_BRANCH"
echo "airlock:pushed $(git rev-parse HEAD) $(git config airlock.base)"
"#;

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let joined = lines[start..].join(" / ");
    crate::render::one_line(&joined, 500)
}

/// The agent's output not yet stored: gathered into events, and acknowledged to sandboxd once
/// stored. Keeps the end of everything for the session's summary. In [`Mode::Events`],
/// stdout is read as one JSON event per line.
struct Output {
    store: Store,
    session: String,
    sandbox: String,
    exec: u64,
    mode: Mode,
    chunks: Vec<(Stream, Vec<u8>)>,
    bytes: usize,
    last_seq: u64,
    tail: String,
    /// An unfinished stdout line (events mode), and the number of the last message stored
    /// before it began: only that much may be acknowledged.
    partial: Vec<u8>,
    partial_after: u64,
    stored_seq: u64,
    /// The runner's final `summary` event: its text and whether it succeeded.
    summary: Option<(String, bool)>,
    /// Bounded output: what may still be stored as it comes, then the latest events held
    /// back (up to `tail_cap` bytes) and how much fell out between the two.
    head_left: usize,
    held: std::collections::VecDeque<(EventKind, serde_json::Value, usize)>,
    tail_bytes: usize,
    tail_cap: usize,
    dropped: u64,
    /// Why the turn's output is bounded where it is (for the note).
    why: String,
    /// Bytes stored this turn and not yet counted on the session.
    counted: u64,
    /// The full output, when the profile keeps it (finished when the turn's output is).
    log: Option<crate::output_log::OutputLog>,
}

/// How much output this turn may store, and why that much: `limits.output_mb`, or what is
/// left of `limits.session_output_mb` after the session's earlier turns (at least 1 MB, so
/// every turn shows how it began and ended).
fn turn_budget(limits: &crate::domain::Limits, stored: u64) -> (u64, String) {
    const MB: u64 = 1 << 20;
    // Profiles stored before the limits were validated may hold 0: at least 1 MB each.
    let per_turn = limits.output_mb.max(1).saturating_mul(MB);
    let left = limits
        .session_output_mb
        .max(1)
        .saturating_mul(MB)
        .saturating_sub(stored);
    if left < per_turn {
        (
            left.max(MB),
            format!(
                "this session had already stored {} of its limits.session_output_mb = {} MB",
                crate::render::human_bytes(stored),
                limits.session_output_mb
            ),
        )
    } else {
        (
            per_turn,
            format!(
                "this turn printed more than limits.output_mb = {} MB",
                limits.output_mb
            ),
        )
    }
}

impl Output {
    fn new(
        store: Store,
        session: String,
        sandbox: String,
        exec: u64,
        mode: Mode,
        (budget, why): (u64, String),
    ) -> Output {
        let half = (budget / 2).max(1) as usize;
        Output {
            head_left: half,
            held: std::collections::VecDeque::new(),
            tail_bytes: 0,
            tail_cap: half,
            dropped: 0,
            why,
            counted: 0,
            log: None,
            store,
            session,
            sandbox,
            exec,
            mode,
            chunks: Vec::new(),
            bytes: 0,
            last_seq: 0,
            tail: String::new(),
            partial: Vec::new(),
            partial_after: 0,
            stored_seq: 0,
            summary: None,
        }
    }

    /// Adds a chunk; returns how many bytes wait to be stored.
    fn push(&mut self, seq: u64, stream: Stream, data: Vec<u8>) -> usize {
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.write(&data) {
                tracing::warn!(session = %self.session, "the full output log stopped: {e}");
                self.log = None;
            }
        }
        self.bytes += data.len();
        self.chunks.push((stream, data));
        self.last_seq = seq;
        self.bytes
    }

    /// At the end, an unfinished last line counts as a line.
    fn finish_lines(&mut self) {
        if !self.partial.is_empty() {
            self.chunks.push((Stream::Stdout, b"\n".to_vec()));
        }
    }

    fn keep_tail(&mut self, text: &str) {
        let tail = &mut self.tail;
        tail.push_str(text);
        if tail.len() > SUMMARY_TAIL {
            let cut = tail.len() - SUMMARY_TAIL;
            let cut = (cut..tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(tail.len());
            tail.drain(..cut);
        }
    }

    async fn output_event(&mut self, stream: &str, text: &str) -> anyhow::Result<()> {
        self.keep_tail(text);
        // Pieces small enough that even fully escaped JSON stays within an event's bound.
        let mut rest = text;
        while !rest.is_empty() {
            let mut end = rest.len().min(32 * 1024);
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            let (piece, more) = rest.split_at(end);
            self.record(
                EventKind::CommandOutput,
                json!({ "stream": stream, "text": piece }),
                piece.len(),
            )
            .await?;
            rest = more;
        }
        Ok(())
    }

    /// One line of `sandboxd agent`: an event, or (not JSON) plain output.
    async fn agent_line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        let text = String::from_utf8_lossy(line);
        let (kind, payload) = match serde_json::from_str::<AgentEvent>(&text) {
            Ok(AgentEvent::Summary { text, ok }) => {
                self.summary = Some((text, ok));
                return Ok(());
            }
            Ok(AgentEvent::CommandOutput { text }) => {
                return self.output_event("stdout", &text).await;
            }
            Ok(AgentEvent::Message { text }) => (EventKind::Message, json!({ "text": text })),
            Ok(AgentEvent::ToolCall { tool, input }) => {
                (EventKind::ToolCall, json!({ "tool": tool, "input": input }))
            }
            Ok(AgentEvent::FileChange { path, change }) => (
                EventKind::FileChange,
                json!({ "path": path, "change": change }),
            ),
            Err(_) => return self.output_event("stdout", &format!("{text}\n")).await,
        };
        self.record(kind, payload, line.len()).await
    }

    /// Stores an event while the turn's head budget lasts; after that, holds it among the
    /// latest (older ones fall out), for [`Output::write_tail`] at the end of the turn.
    async fn record(
        &mut self,
        kind: EventKind,
        payload: serde_json::Value,
        size: usize,
    ) -> anyhow::Result<()> {
        if self.held.is_empty() && size <= self.head_left {
            self.head_left -= size;
            self.counted += size as u64;
            self.store
                .append_event(&self.session, kind, &payload)
                .await?;
            return Ok(());
        }
        self.head_left = 0;
        self.held.push_back((kind, payload, size));
        self.tail_bytes += size;
        while self.tail_bytes > self.tail_cap {
            let Some((_, _, s)) = self.held.pop_front() else {
                break;
            };
            self.tail_bytes -= s;
            self.dropped += s as u64;
        }
        Ok(())
    }

    /// At the end of a turn: a note of what was left out (if anything), then the latest
    /// events held back.
    async fn write_tail(&mut self) -> anyhow::Result<()> {
        if self.dropped > 0 {
            let text = format!(
                "{} of output truncated here: {}, so this turn's first and last {} are kept",
                crate::render::human_bytes(self.dropped),
                self.why,
                crate::render::human_bytes(self.tail_cap as u64),
            );
            self.store
                .append_event(
                    &self.session,
                    EventKind::Note,
                    &json!({ "text": text, "truncated_bytes": self.dropped }),
                )
                .await?;
            self.dropped = 0;
        }
        while let Some((kind, payload, size)) = self.held.pop_front() {
            self.store
                .append_event(&self.session, kind, &payload)
                .await?;
            self.counted += size as u64;
        }
        self.tail_bytes = 0;
        if let Some(log) = self.log.take() {
            if let Err(e) = log.finish() {
                tracing::warn!(session = %self.session, "cannot finish the full output log: {e}");
            }
        }
        if self.counted > 0 {
            self.store
                .add_session_output(&self.session, self.counted)
                .await?;
            self.counted = 0;
        }
        Ok(())
    }

    /// Stores what waits as events, then lets sandboxd forget what is stored.
    async fn flush(&mut self, hub: &airlock_sandbox::Hub) -> anyhow::Result<()> {
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
            let name = match s {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
                Stream::Pty => "pty",
            };
            if self.mode == Mode::Events && s == Stream::Stdout {
                let mut data = std::mem::take(&mut self.partial);
                data.extend_from_slice(&d);
                let mut start = 0;
                while let Some(i) = data[start..].iter().position(|b| *b == b'\n') {
                    let line = data[start..start + i].to_vec();
                    start += i + 1;
                    if !line.is_empty() {
                        self.agent_line(&line).await?;
                    }
                }
                self.partial = data[start..].to_vec();
            } else {
                let text = String::from_utf8_lossy(&d).into_owned();
                self.output_event(name, &text).await?;
            }
        }
        if self.partial.is_empty() {
            self.stored_seq = self.last_seq;
            self.partial_after = self.last_seq;
        } else {
            self.stored_seq = self.partial_after;
        }
        hub.done(&self.sandbox, self.exec, self.stored_seq);
        Ok(())
    }
}

/// A note in the session's log (a failure to store it is reported, see `store::settle`).
async fn note(store: &Store, session: &str, text: String) {
    let note = json!({ "text": text });
    settle("a note in the session's log", || {
        store.append_event(session, EventKind::Note, &note)
    })
    .await;
}

/// What runs a plan's agent: its command line, its environment and how its output is read.
fn agent_exec(plan: &Plan) -> (Vec<String>, BTreeMap<String, String>, Mode) {
    let mut env = BTreeMap::new();
    let run = match &plan.agent {
        AgentSpec::Command { command } => {
            return (
                vec!["bash".into(), "-lc".into(), command.clone()],
                env,
                Mode::Raw,
            )
        }
        AgentSpec::Builtin {
            model,
            base_url,
            max_steps,
            max_tokens,
        } => AgentRun::Builtin {
            model: model.clone(),
            base_url: base_url
                .clone()
                .unwrap_or_else(|| "https://api.openai.com/v1".into()),
            max_steps: max_steps.unwrap_or(50),
            max_tokens: max_tokens.unwrap_or(0),
            system: BUILTIN_SYSTEM.to_string(),
        },
        AgentSpec::Codex { model, args } => AgentRun::Codex {
            model: model.clone(),
            args: args.clone(),
        },
        AgentSpec::ClaudeCode { model, args } => AgentRun::ClaudeCode {
            model: model.clone(),
            args: args.clone(),
        },
        AgentSpec::Opencode { model, args } => AgentRun::Opencode {
            model: model.clone(),
            args: args.clone(),
        },
        AgentSpec::Aider { model, args } => AgentRun::Aider {
            model: model.clone(),
            args: args.clone(),
        },
    };
    // CLIs that refuse to start without a key get a placeholder; the gateway injects the
    // real one (the profile's env may name its own placeholder).
    for k in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"] {
        if !plan.env.contains_key(k) {
            env.insert(k.to_string(), PLACEHOLDER_KEY.to_string());
        }
    }
    env.insert(
        ENV_AGENT.to_string(),
        serde_json::to_string(&run).expect("an agent run serialises"),
    );
    (
        vec![SANDBOXD_MOUNT.into(), "agent".into()],
        env,
        Mode::Events,
    )
}

#[cfg(test)]
mod tests {
    use super::turn_budget;
    use crate::domain::Limits;

    const MB: u64 = 1 << 20;

    #[test]
    fn a_turn_keeps_its_own_limit_then_what_is_left_of_the_session_and_never_nothing() {
        let limits = Limits {
            output_mb: 16,
            session_output_mb: 64,
            ..Limits::default()
        };
        let (bytes, why) = turn_budget(&limits, 0);
        assert_eq!(bytes, 16 * MB);
        assert!(why.contains("limits.output_mb = 16 MB"), "{why}");
        let (bytes, why) = turn_budget(&limits, 60 * MB);
        assert_eq!(bytes, 4 * MB);
        assert!(why.contains("already stored 60.0 MB of its limits.session_output_mb = 64 MB"));
        assert_eq!(
            turn_budget(&limits, 200 * MB).0,
            MB,
            "a full session still keeps 1 MB"
        );
        // Stored before validation: zero limits are read as 1 MB.
        let zero = Limits {
            output_mb: 0,
            session_output_mb: 0,
            ..Limits::default()
        };
        assert_eq!(turn_budget(&zero, 0).0, MB);
    }
}
