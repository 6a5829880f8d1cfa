//! One turn of a session: a sandbox (waiting for an address if need be), the agent started
//! in it, and its process followed to the end under the profile's limits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use airlock_sandboxd::proto::{
    describe_exit, AgentRun, ENV_AGENT, ENV_PROMPT, REPO_DIR, SANDBOXD_MOUNT, WORKSPACE,
};
use serde_json::json;

use super::output::{turn_budget, Output};
use super::*;
use crate::domain::{AgentSpec, EventKind, SessionState};
use crate::ids::{now_ms, SessionId};
use crate::plan::Plan;
use crate::store::{settle, Profile, ProfileVersion, Sandbox, Session};
use airlock_sandbox::{ExecEvent, ExecRequest, ExecStream, Origin, RuntimeError, SandboxError};

/// How often a session waiting for a sandbox address tries again.
const ADDRESS_RETRY: Duration = Duration::from_secs(2);
/// Output is gathered into one event per this interval (or per [`EVENT_BYTES`]).
const COALESCE: Duration = Duration::from_millis(200);
const EVENT_BYTES: usize = 16 * 1024;
/// The built-in agent's system prompt.
const BUILTIN_SYSTEM: &str = include_str!("../../../templates/prompts/builtin-system.md");
/// Sent where a CLI insists on an API key; the gateway replaces it with the real one.
const PLACEHOLDER_KEY: &str = "airlock-placeholder";

impl Broker {
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
        let registered = self.store.repo(&session.repo).await?;
        let plan = Plan::build(
            &pv.spec,
            pv.version,
            session,
            &requester,
            &self.settings.plan,
            registered.as_ref(),
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
    pub(super) async fn drive(
        &self,
        id: &SessionId,
        attach: Option<(Sandbox, ExecStream)>,
    ) -> anyhow::Result<()> {
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

    /// A sandbox for the session. While the sandbox network has no free address (other
    /// sandboxes hold them all) or the Docker engine does not answer, the session waits, says
    /// why in its log, keeps its lease and tries again every [`ADDRESS_RETRY`], until an address frees up, the session is
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
        // What it waits for, once it has said so.
        let mut waiting: Option<&str> = None;
        loop {
            match self.sandboxes.acquire(session, profile, pv, log).await {
                Ok(got) => return Ok(Some(got)),
                Err(SandboxError::Runtime(
                    e @ (RuntimeError::NoAddress(_) | RuntimeError::EngineDown(_)),
                )) => {
                    let (waits_for, gave_up, note) = if matches!(e, RuntimeError::EngineDown(_)) {
                        (
                            "the Docker engine",
                            "the Docker engine did not answer",
                            format!(
                                "Waiting for the Docker engine: {e}. The session starts as soon \
                                 as it answers."
                            ),
                        )
                    } else {
                        (
                            "a sandbox address",
                            "no sandbox address became free",
                            "Waiting for a sandbox address: every address of the sandbox network \
                             (`sandbox.subnet`) is taken. The session starts as soon as one is \
                             released; `airlock doctor` compares the subnet with the sessions \
                             and warm pools it must hold."
                                .to_string(),
                        )
                    };
                    if now_ms() > deadline {
                        anyhow::bail!(
                            "{gave_up} within the session's wall clock ({} s): {e}",
                            plan.limits.wall_clock_secs
                        );
                    }
                    if waiting != Some(waits_for) {
                        waiting = Some(waits_for);
                        tracing::warn!(session = %session.id, "waiting for {waits_for}: {e}");
                        self.note(&session.id, &note).await;
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

    /// Gets a sandbox, binds it, prepares the repository and starts the agent. `None` when
    /// the session ended instead.
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
