//! Sessions and their events. Events are append-only and numbered per session without gaps:
//! each append takes the next number from the session row inside the same transaction, which
//! serialises concurrent writers of one session on both engines. Events are the one source
//! for thread updates, the admin page and the audit of a session.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::audit::append_audit;
use super::{id_col, opt_id_col, parse_col, NewAudit, Result, Store, StoreError};
use crate::domain::{is_repo_ref, EventKind, SessionState, Surface, ThreadRef};
use crate::ids::{now_ms, HumanId, ProfileId, SessionId, TriggerId};

/// The largest prompt accepted, in bytes.
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;
/// The largest event payload accepted, in bytes (agent output is bounded before storage).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    pub id: SessionId,
    pub requester_id: HumanId,
    pub surface: Surface,
    /// Where updates go: a Slack thread, a GitHub issue comment, a Discord thread…
    pub thread_ref: ThreadRef,
    pub repo: String,
    pub profile_id: ProfileId,
    pub profile_version: i64,
    pub prompt: String,
    pub state: SessionState,
    /// Why the session ended (or was cancelled), in words a person can act on.
    pub reason: Option<String>,
    pub trigger_id: Option<TriggerId>,
    pub last_event_seq: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The plan of its latest turn (see [`crate::plan::Plan`]), once it has started.
    pub plan: Option<serde_json::Value>,
    /// The branch it pushes to, once known.
    pub branch: Option<String>,
    pub pull_request_url: Option<String>,
    /// The conversation it belongs to; later requests there continue it.
    pub thread_key: Option<String>,
    /// The surface whose thread is kept up to date with the session's status.
    pub notify: Option<Surface>,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub requester_id: HumanId,
    pub surface: Surface,
    pub thread_ref: ThreadRef,
    pub repo: String,
    pub profile_id: ProfileId,
    pub profile_version: i64,
    pub prompt: String,
    pub trigger_id: Option<TriggerId>,
    pub thread_key: Option<String>,
    pub notify: Option<Surface>,
}

/// The audit row of a change to a session, written in the change's own transaction (its
/// target and session are the session).
#[derive(Debug, Clone)]
pub struct SessionAudit {
    /// Who did it: `human:hum_…`, `cli:root`.
    pub actor: String,
    /// `session.create`, `session.follow_up`, `session.cancel`, `session.retry`.
    pub action: String,
    pub detail: serde_json::Value,
    /// The stored inbound delivery (`inbound.id`) the change answers: marked handled in the
    /// same transaction, so a server killed after the change never handles it again.
    pub delivery: Option<String>,
}

impl SessionAudit {
    /// The audit row, and the delivery it answers marked handled, in the change's
    /// transaction.
    async fn write(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        session_id: &str,
        now: i64,
    ) -> Result<()> {
        append_audit(tx, &[self.entry(session_id)]).await?;
        if let Some(d) = &self.delivery {
            sqlx::query(
                "UPDATE inbound SET processed_at = $2 WHERE id = $1 AND processed_at IS NULL",
            )
            .bind(d)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    fn entry(&self, session_id: &str) -> NewAudit {
        NewAudit {
            actor: self.actor.clone(),
            action: self.action.clone(),
            target: session_id.to_string(),
            session_id: Some(session_id.to_string()),
            detail: self.detail.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionEvent {
    pub session_id: SessionId,
    pub seq: i64,
    pub at: i64,
    pub kind: EventKind,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub state: Option<SessionState>,
    pub requester_id: Option<HumanId>,
    pub surface: Option<Surface>,
    pub limit: Option<i64>,
    /// Only sessions listed after this one (its `created_at` and id): the next page.
    pub before: Option<(i64, String)>,
}

const INSERT_COLS: &str = "id, requester_id, surface, thread_ref, repo, profile_id, \
    profile_version, prompt, state, reason, trigger_id, last_event_seq, created_at, updated_at, \
    started_at, finished_at, thread_key, notify";
const SESSION_COLS: &str = "id, requester_id, surface, thread_ref, repo, profile_id, \
    profile_version, prompt, state, reason, trigger_id, last_event_seq, created_at, updated_at, \
    started_at, finished_at, plan, branch, pull_request_url, thread_key, notify";

fn json_col(row: &AnyRow, col: &str) -> Result<serde_json::Value> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Invalid(format!("stored {col} is not valid JSON: {e}")))
}

/// A stored thread reference, read by the surface whose thread it is (rows written before
/// references were tagged carry only that surface's fields). One that cannot be read is
/// logged and read as no thread: the session stays readable, its thread is not updated.
fn thread_col(row: &AnyRow, surface: Surface, notify: Option<Surface>) -> Result<ThreadRef> {
    let id: String = row.try_get("id")?;
    let value = json_col(row, "thread_ref")?;
    Ok(
        ThreadRef::from_stored(&value, notify.unwrap_or(surface)).unwrap_or_else(|e| {
            tracing::warn!(session = %id, "{e}; its thread is not updated");
            ThreadRef::default()
        }),
    )
}

fn session(row: &AnyRow) -> Result<Session> {
    let surface: Surface = parse_col(row.try_get("surface")?)?;
    let notify: Option<Surface> = row
        .try_get::<Option<String>, _>("notify")?
        .map(parse_col)
        .transpose()?;
    Ok(Session {
        id: id_col(row, "id")?,
        requester_id: id_col(row, "requester_id")?,
        surface,
        thread_ref: thread_col(row, surface, notify)?,
        repo: row.try_get("repo")?,
        profile_id: id_col(row, "profile_id")?,
        profile_version: row.try_get("profile_version")?,
        prompt: row.try_get("prompt")?,
        state: parse_col(row.try_get("state")?)?,
        reason: row.try_get("reason")?,
        trigger_id: opt_id_col(row, "trigger_id")?,
        last_event_seq: row.try_get("last_event_seq")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        plan: match row.try_get::<Option<String>, _>("plan")? {
            Some(text) => {
                Some(serde_json::from_str(&text).map_err(|e| {
                    StoreError::Invalid(format!("stored plan is not valid JSON: {e}"))
                })?)
            }
            None => None,
        },
        branch: row.try_get("branch")?,
        pull_request_url: row.try_get("pull_request_url")?,
        thread_key: row.try_get("thread_key")?,
        notify,
    })
}

pub(super) fn event(row: &AnyRow) -> Result<SessionEvent> {
    Ok(SessionEvent {
        session_id: row.try_get("session_id")?,
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        kind: parse_col(row.try_get("kind")?)?,
        payload: json_col(row, "payload")?,
    })
}

fn no_session(id: &str) -> StoreError {
    StoreError::NotFound(format!(
        "no session `{}`; see `airlock session list`",
        id.chars().take(80).collect::<String>()
    ))
}

impl Store {
    /// Records a new session in state `queued`, with its first event.
    pub async fn create_session(&self, new: NewSession) -> Result<Session> {
        self.create_session_audited(new, None).await
    }

    /// [`Store::create_session`] with its audit row in the same transaction.
    pub async fn create_session_audited(
        &self,
        new: NewSession,
        audit: Option<&SessionAudit>,
    ) -> Result<Session> {
        if !is_repo_ref(&new.repo) {
            return Err(StoreError::Invalid(format!(
                "`{}` is not a repository; expected OWNER/NAME or a name registered with `airlock repo add`",
                new.repo.chars().take(120).collect::<String>()
            )));
        }
        if new.prompt.trim().is_empty() {
            return Err(StoreError::Invalid(
                "the prompt is empty: say what the agent should do".into(),
            ));
        }
        if new.prompt.len() > MAX_PROMPT_BYTES {
            return Err(StoreError::Invalid(format!(
                "the prompt is {} bytes; at most {MAX_PROMPT_BYTES} are accepted",
                new.prompt.len()
            )));
        }
        let id = SessionId::new();
        let now = now_ms();
        let thread_ref = new.thread_ref.to_json().to_string();
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!(
            "INSERT INTO sessions ({INSERT_COLS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', NULL, $9, 1, $10, $10, NULL, NULL, $11, $12)"
        ))
        .bind(&id)
        .bind(&new.requester_id)
        .bind(new.surface.as_str())
        .bind(&thread_ref)
        .bind(&new.repo)
        .bind(&new.profile_id)
        .bind(new.profile_version)
        .bind(&new.prompt)
        .bind(&new.trigger_id)
        .bind(now)
        .bind(&new.thread_key)
        .bind(new.notify.map(|n| n.as_str()))
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::Invalid(
                "the requester, profile version or trigger of the session does not exist".into(),
            ),
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::ThreadTaken(
                new.thread_key.clone().unwrap_or_default(),
            ),
            _ => StoreError::Db(e),
        })?;
        let payload = serde_json::json!({ "from": null, "to": "queued" }).to_string();
        insert_event(&mut tx, &id, 1, now, EventKind::State, &payload).await?;
        if let Some(a) = audit {
            a.write(&mut tx, &id, now).await?;
        }
        tx.commit().await?;
        self.signal_queue().await;
        self.session(&id).await
    }

    pub async fn session(&self, id: &SessionId) -> Result<Session> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLS} FROM sessions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref()
            .map(session)
            .transpose()?
            .ok_or_else(|| no_session(id))
    }

    /// Sessions, newest first.
    pub async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<Session>> {
        let mut conds = Vec::new();
        let mut args: Vec<String> = Vec::new();
        if let Some(s) = filter.state {
            args.push(s.as_str().to_string());
            conds.push(format!("state = ${}", args.len()));
        }
        if let Some(h) = &filter.requester_id {
            args.push(h.to_string());
            conds.push(format!("requester_id = ${}", args.len()));
        }
        if let Some(s) = filter.surface {
            args.push(s.as_str().to_string());
            conds.push(format!("surface = ${}", args.len()));
        }
        if let Some((at, id)) = &filter.before {
            args.push(at.to_string());
            let at_n = args.len();
            args.push(id.clone());
            conds.push(format!(
                "(created_at < CAST(${at_n} AS BIGINT) OR (created_at = CAST(${at_n} AS BIGINT) AND id < ${}))",
                args.len()
            ));
        }
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT {SESSION_COLS} FROM sessions {where_} ORDER BY created_at DESC, id DESC LIMIT ${}",
            args.len() + 1
        );
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a);
        }
        let rows = q
            .bind(filter.limit.unwrap_or(100).clamp(1, 10_000))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(session).collect()
    }

    /// Appends an event and returns it with its number.
    pub async fn append_event(
        &self,
        session_id: &SessionId,
        kind: EventKind,
        payload: &serde_json::Value,
    ) -> Result<SessionEvent> {
        let text = payload.to_string();
        if text.len() > MAX_EVENT_BYTES {
            return Err(StoreError::Invalid(format!(
                "event payload is {} bytes; at most {MAX_EVENT_BYTES} are stored (bound agent output first)",
                text.len()
            )));
        }
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let (_, seq) = next_event_seq(&mut tx, session_id, now).await?;
        insert_event(&mut tx, session_id, seq, now, kind, &text).await?;
        tx.commit().await?;
        Ok(SessionEvent {
            session_id: session_id.clone(),
            seq,
            at: now,
            kind,
            payload: payload.clone(),
        })
    }

    /// Moves a session to `to` if the state machine allows it, recording a `state` event.
    pub async fn transition(
        &self,
        session_id: &SessionId,
        to: SessionState,
        reason: Option<&str>,
    ) -> Result<Session> {
        self.transition_audited(session_id, to, reason, None).await
    }

    /// [`Store::transition`] with its audit row in the same transaction: a refused change
    /// writes no row, and a row is never lost for a change that happened.
    pub async fn transition_audited(
        &self,
        session_id: &SessionId,
        to: SessionState,
        reason: Option<&str>,
        audit: Option<&SessionAudit>,
    ) -> Result<Session> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let (from, seq) = next_event_seq(&mut tx, session_id, now).await?;
        if !from.can_become(to) {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "session {session_id} is {from}; it cannot become {to}"
            )));
        }
        let started = (to == SessionState::Starting).then_some(now);
        let finished = to.is_terminal().then_some(now);
        sqlx::query(
            "UPDATE sessions SET state = $2, reason = $3, \
               started_at = COALESCE($4, started_at), \
               finished_at = $5 \
             WHERE id = $1",
        )
        .bind(session_id)
        .bind(to.as_str())
        .bind(reason)
        .bind(started)
        .bind(finished)
        .execute(&mut *tx)
        .await?;
        let payload = serde_json::json!({ "from": from, "to": to, "reason": reason }).to_string();
        insert_event(&mut tx, session_id, seq, now, EventKind::State, &payload).await?;
        if let Some(a) = audit {
            a.write(&mut tx, session_id, now).await?;
        }
        tx.commit().await?;
        if to == SessionState::Queued || to.is_terminal() {
            // Queued again, or a slot freed: the broker looks at once.
            self.signal_queue().await;
        }
        self.session(session_id).await
    }
}

impl Store {
    /// Queues an ended session again with a follow-up prompt (a `turn` event), in one
    /// transaction, so the broker always sees the new prompt with the new state.
    pub async fn follow_up(&self, session_id: &SessionId, prompt: &str) -> Result<Session> {
        self.follow_up_audited(session_id, prompt, None, None).await
    }

    /// [`Store::follow_up`] that also points the session's updates at `thread_ref` (the
    /// place the follow-up was asked), with its audit row, all in one transaction.
    pub async fn follow_up_audited(
        &self,
        session_id: &SessionId,
        prompt: &str,
        thread_ref: Option<&ThreadRef>,
        audit: Option<&SessionAudit>,
    ) -> Result<Session> {
        if prompt.trim().is_empty() {
            return Err(StoreError::Invalid(
                "the prompt is empty: say what the agent should do".into(),
            ));
        }
        if prompt.len() > MAX_PROMPT_BYTES {
            return Err(StoreError::Invalid(format!(
                "the prompt is {} bytes; at most {MAX_PROMPT_BYTES} are accepted",
                prompt.len()
            )));
        }
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let (from, seq) = next_event_seq(&mut tx, session_id, now).await?;
        if !from.can_become(SessionState::Queued) {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "session {session_id} is {from}; send a follow-up once it has ended"
            )));
        }
        let turn = serde_json::json!({ "prompt": prompt }).to_string();
        insert_event(&mut tx, session_id, seq, now, EventKind::Turn, &turn).await?;
        let (_, seq) = next_event_seq(&mut tx, session_id, now).await?;
        sqlx::query(
            "UPDATE sessions SET state = $2, reason = NULL, finished_at = NULL, \
               lease_owner = NULL, lease_until = NULL, \
               thread_ref = COALESCE($3, thread_ref) WHERE id = $1",
        )
        .bind(session_id)
        .bind(SessionState::Queued.as_str())
        .bind(thread_ref.map(|t| t.to_json().to_string()))
        .execute(&mut *tx)
        .await?;
        let state =
            serde_json::json!({ "from": from, "to": SessionState::Queued, "reason": "follow-up" })
                .to_string();
        insert_event(&mut tx, session_id, seq, now, EventKind::State, &state).await?;
        if let Some(a) = audit {
            a.write(&mut tx, session_id, now).await?;
        }
        tx.commit().await?;
        self.signal_queue().await;
        self.session(session_id).await
    }
}

/// Takes the session's next event number. The statement writes, so it is the transaction's
/// first lock: on SQLite the transaction takes the write lock at once (waiting its turn), and
/// on PostgreSQL the session row stays locked until commit. Returns the session's state too.
async fn next_event_seq(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    session_id: &str,
    now: i64,
) -> Result<(SessionState, i64)> {
    let row = sqlx::query(
        "UPDATE sessions SET last_event_seq = last_event_seq + 1, updated_at = $2 \
         WHERE id = $1 RETURNING state, last_event_seq",
    )
    .bind(session_id)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| no_session(session_id))?;
    Ok((
        parse_col(row.try_get("state")?)?,
        row.try_get("last_event_seq")?,
    ))
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    session_id: &str,
    seq: i64,
    now: i64,
    kind: EventKind,
    payload: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO session_events (session_id, seq, at, kind, payload) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(session_id)
    .bind(seq)
    .bind(now)
    .bind(kind.as_str())
    .bind(payload)
    .execute(&mut **tx)
    .await?;
    // The transactional outbox: a session whose thread is kept up to date gets a status
    // delivery with the event that changes it, unless one is already waiting (the sender
    // renders the status as it is when it sends, so one waiting delivery covers every event).
    sqlx::query(
        "INSERT INTO deliveries (session_id, surface, target, payload, state, attempts, \
           not_before, created_at, updated_at) \
         SELECT s.id, s.notify, s.thread_ref, '{\"kind\":\"status\"}', 'pending', 0, $2, $2, $2 \
           FROM sessions s WHERE s.id = $1 AND s.notify IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.session_id = $1 \
                           AND d.state = 'pending' AND d.lease_owner IS NULL)",
    )
    .bind(session_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// States in which a session holds a sandbox (or is about to), and counts against the limits.
const ACTIVE: &str = "('starting', 'running', 'finishing')";

impl Store {
    /// Takes the oldest queued session that the concurrency limits allow, moving it to
    /// `starting` and leasing it to `owner`, in one transaction: at most `max_total` sessions
    /// are active at once, and at most `max_per_human` of one requester's. Several servers may
    /// call this at once; each session is taken by exactly one. On PostgreSQL claims are
    /// serialised by an advisory lock (so the counts hold) and rows are taken with
    /// `FOR UPDATE SKIP LOCKED`; SQLite has one writer at a time.
    pub async fn claim_next_session(
        &self,
        owner: &str,
        lease_until: i64,
        max_total: u32,
        max_per_human: u32,
    ) -> Result<Option<Session>> {
        // A read first (indexed): the broker looks whenever the database changes, and most
        // looks find nothing, which must not take the write lock.
        let queued = sqlx::query("SELECT id FROM sessions WHERE state = 'queued' LIMIT 1")
            .fetch_optional(self.pool())
            .await?;
        if queued.is_none() {
            return Ok(None);
        }
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let lock = match self.kind() {
            crate::config::DatabaseKind::Postgres => {
                // An arbitrary constant: "the session queue" for this database.
                sqlx::query("SELECT pg_advisory_xact_lock(7480001)")
                    .execute(&mut *tx)
                    .await?;
                "FOR UPDATE OF s SKIP LOCKED"
            }
            crate::config::DatabaseKind::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "UPDATE sessions SET state = 'starting', reason = NULL, started_at = $1, \
               finished_at = NULL, lease_owner = $2, lease_until = $3, updated_at = $1, \
               last_event_seq = last_event_seq + 1 \
             WHERE id = (SELECT s.id FROM sessions s WHERE s.state = 'queued' \
                 AND (SELECT COUNT(*) FROM sessions a WHERE a.state IN {ACTIVE}) < $4 \
                 AND (SELECT COUNT(*) FROM sessions a WHERE a.requester_id = s.requester_id \
                      AND a.state IN {ACTIVE}) < $5 \
                 ORDER BY s.created_at, s.id LIMIT 1 {lock}) \
               AND state = 'queued' \
             RETURNING id, last_event_seq"
        ))
        .bind(now)
        .bind(owner)
        .bind(lease_until)
        .bind(max_total as i64)
        .bind(max_per_human as i64)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let id: SessionId = row.try_get("id")?;
        let seq: i64 = row.try_get("last_event_seq")?;
        let payload = serde_json::json!({ "from": SessionState::Queued, "to": SessionState::Starting, "reason": null })
            .to_string();
        insert_event(&mut tx, &id, seq, now, EventKind::State, &payload).await?;
        tx.commit().await?;
        Ok(Some(self.session(&id).await?))
    }

    /// How many sessions hold (or are getting) a sandbox.
    pub async fn active_sessions(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM sessions WHERE state IN {ACTIVE}"
        ))
        .fetch_one(self.pool())
        .await?)
    }

    /// Records the plan of the session's current turn and the branch it works on.
    pub async fn set_session_plan(
        &self,
        id: &SessionId,
        plan: &serde_json::Value,
        branch: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE sessions SET plan = $2, branch = COALESCE($3, branch) WHERE id = $1")
            .bind(id)
            .bind(plan.to_string())
            .bind(branch)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn set_session_pull_request(&self, id: &SessionId, url: &str) -> Result<()> {
        sqlx::query("UPDATE sessions SET pull_request_url = $2 WHERE id = $1")
            .bind(id)
            .bind(url)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

impl Store {
    /// The newest session of a conversation (`thread_key`), if any.
    pub async fn session_in_thread(&self, thread_key: &str) -> Result<Option<Session>> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLS} FROM sessions WHERE thread_key = $1 \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(thread_key)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(session).transpose()
    }

    /// Moves a session to another conversation key (a Slack thread known once its first
    /// message is posted).
    pub async fn set_thread_key(&self, id: &SessionId, thread_key: &str) -> Result<()> {
        sqlx::query("UPDATE sessions SET thread_key = $2 WHERE id = $1")
            .bind(id)
            .bind(thread_key)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Replaces where the session's updates go (an adapter records the message it posted).
    pub async fn set_thread_ref(&self, id: &SessionId, thread_ref: &ThreadRef) -> Result<()> {
        sqlx::query("UPDATE sessions SET thread_ref = $2 WHERE id = $1")
            .bind(id)
            .bind(thread_ref.to_json().to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
