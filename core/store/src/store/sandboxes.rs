//! Sandboxes, their tokens, snapshots and session leases.
//!
//! Tokens follow decision 0002: `alk_<kind>_<32 random bytes, base64url>`, stored as SHA-256
//! only, each bound to one sandbox (and, once bound, one session). A bootstrap token is good
//! for one exchange within two minutes.

use base64::Engine as _;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{id_col, opt_id_col, Result, Store, StoreError};
use crate::domain::SessionState;
use crate::ids::{new_id, now_ms, ProfileId, SandboxId, SessionId};

/// How long a bootstrap token may wait to be exchanged.
pub const BOOTSTRAP_TTL_MS: i64 = 2 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// One-time, exchanged by sandboxd at its first connect.
    Boot,
    /// sandboxd's own token for the sandbox endpoint.
    Sbx,
    /// Proxy authentication at the gateway.
    Egr,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Boot => "boot",
            TokenKind::Sbx => "sbx",
            TokenKind::Egr => "egr",
        }
    }
}

/// The SHA-256 (hex) under which a token is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token(kind: TokenKind) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "alk_{}_{}",
        kind.as_str(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What a valid token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBinding {
    pub kind: String,
    pub sandbox_id: SandboxId,
    pub session_id: Option<SessionId>,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sandbox {
    pub id: SandboxId,
    pub container_id: Option<String>,
    pub role: String,
    pub profile_id: ProfileId,
    pub profile_version: i64,
    pub image: String,
    pub session_id: Option<SessionId>,
    pub address: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub acked: i64,
    pub agent_exec: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub ended_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewSandbox {
    pub role: &'static str,
    pub profile_id: ProfileId,
    pub profile_version: i64,
    pub image: String,
    pub session_id: Option<SessionId>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub image: String,
    pub kind: String,
    pub profile_id: ProfileId,
    pub profile_version: i64,
    pub setup_hash: String,
    pub session_id: Option<SessionId>,
    pub size_bytes: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub image: String,
    pub kind: &'static str,
    pub profile_id: String,
    pub profile_version: i64,
    pub setup_hash: String,
    pub session_id: Option<String>,
    pub size_bytes: Option<i64>,
}

const SANDBOX_COLS: &str = "id, container_id, role, profile_id, profile_version, image, \
    session_id, address, state, reason, acked, agent_exec, created_at, updated_at, ended_at";
const SNAPSHOT_COLS: &str =
    "id, image, kind, profile_id, profile_version, setup_hash, session_id, size_bytes, created_at";

fn sandbox(row: &AnyRow) -> Result<Sandbox> {
    Ok(Sandbox {
        id: id_col(row, "id")?,
        container_id: row.try_get("container_id")?,
        role: row.try_get("role")?,
        profile_id: id_col(row, "profile_id")?,
        profile_version: row.try_get("profile_version")?,
        image: row.try_get("image")?,
        session_id: opt_id_col(row, "session_id")?,
        address: row.try_get("address")?,
        state: row.try_get("state")?,
        reason: row.try_get("reason")?,
        acked: row.try_get("acked")?,
        agent_exec: row.try_get("agent_exec")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        ended_at: row.try_get("ended_at")?,
    })
}

fn snapshot(row: &AnyRow) -> Result<Snapshot> {
    Ok(Snapshot {
        id: row.try_get("id")?,
        image: row.try_get("image")?,
        kind: row.try_get("kind")?,
        profile_id: row.try_get("profile_id")?,
        profile_version: row.try_get("profile_version")?,
        setup_hash: row.try_get("setup_hash")?,
        session_id: row.try_get("session_id")?,
        size_bytes: row.try_get("size_bytes")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// This deployment's id, made on first use. It labels everything the deployment creates,
    /// so two deployments sharing a Docker engine never touch each other's containers.
    pub async fn deployment_id(&self) -> Result<String> {
        let id = new_id("dep");
        let sql = match self.kind() {
            super::DatabaseKind::Sqlite => {
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('deployment_id', $1)"
            }
            super::DatabaseKind::Postgres => {
                "INSERT INTO meta (key, value) VALUES ('deployment_id', $1) ON CONFLICT (key) DO NOTHING"
            }
        };
        sqlx::query(sql).bind(&id).execute(self.pool()).await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'deployment_id'")
                .fetch_one(self.pool())
                .await?,
        )
    }

    pub async fn insert_sandbox(&self, new: NewSandbox) -> Result<Sandbox> {
        let id = SandboxId::new();
        let now = now_ms();
        let state = if new.session_id.is_some() {
            "bound"
        } else {
            "creating"
        };
        sqlx::query(
            "INSERT INTO sandboxes (id, role, profile_id, profile_version, image, session_id, \
               state, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(&id)
        .bind(new.role)
        .bind(&new.profile_id)
        .bind(new.profile_version)
        .bind(&new.image)
        .bind(&new.session_id)
        .bind(state)
        .bind(now)
        .execute(self.pool())
        .await?;
        self.sandbox(&id).await
    }

    pub async fn sandbox(&self, id: &SandboxId) -> Result<Sandbox> {
        sqlx::query(&format!(
            "SELECT {SANDBOX_COLS} FROM sandboxes WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .map(|r| sandbox(&r))
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("no sandbox `{id}`")))
    }

    /// Sandboxes not yet gone, oldest first.
    pub async fn live_sandboxes(&self) -> Result<Vec<Sandbox>> {
        let rows = sqlx::query(&format!(
            "SELECT {SANDBOX_COLS} FROM sandboxes WHERE state IN ('creating', 'ready', 'bound') ORDER BY created_at"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(sandbox).collect()
    }

    pub async fn set_sandbox_started(
        &self,
        id: &SandboxId,
        container_id: &str,
        address: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sandboxes SET container_id = $2, address = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(container_id)
        .bind(address)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A warm sandbox whose sandboxd has connected is ready to be claimed.
    pub async fn set_sandbox_ready(&self, id: &SandboxId) -> Result<()> {
        sqlx::query(
            "UPDATE sandboxes SET state = 'ready', updated_at = $2 WHERE id = $1 AND state = 'creating'",
        )
        .bind(id)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records that every sandbox of this deployment is gone (`airlock down` removed them),
    /// and revokes their tokens; how many were recorded as existing.
    pub async fn forget_sandboxes(&self, reason: &str) -> Result<u64> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE sandboxes SET state = 'gone', reason = COALESCE(reason, $1), updated_at = $2, \
               ended_at = $2 WHERE state <> 'gone'",
        )
        .bind(reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM sandbox_tokens")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Records that a sandbox no longer exists, and revokes its tokens.
    pub async fn set_sandbox_gone(&self, id: &SandboxId, reason: &str) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE sandboxes SET state = 'gone', reason = COALESCE(reason, $2), updated_at = $3, \
               ended_at = $3 WHERE id = $1 AND state <> 'gone'",
        )
        .bind(id)
        .bind(reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM sandbox_tokens WHERE sandbox_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims a ready warm sandbox of this profile version for a session, if there is one.
    /// Safe under concurrent claims: a sandbox is claimed by exactly one session.
    pub async fn claim_warm_sandbox(
        &self,
        profile_id: &ProfileId,
        profile_version: i64,
        session_id: &SessionId,
    ) -> Result<Option<Sandbox>> {
        // One statement picks and takes the oldest ready one, so claims made at once each
        // get their own (on PostgreSQL a row another claim holds is skipped, not waited for).
        let skip_locked = match self.kind() {
            crate::config::DatabaseKind::Postgres => "FOR UPDATE SKIP LOCKED",
            crate::config::DatabaseKind::Sqlite => "",
        };
        for _ in 0..5 {
            let taken: Option<SandboxId> = sqlx::query_scalar(&format!(
                "UPDATE sandboxes SET role = 'session', state = 'bound', session_id = $3, \
                   updated_at = $4 \
                 WHERE id = (SELECT id FROM sandboxes WHERE role = 'warm' AND state = 'ready' \
                     AND profile_id = $1 AND profile_version = $2 \
                     ORDER BY created_at LIMIT 1 {skip_locked}) \
                   AND state = 'ready' \
                 RETURNING id"
            ))
            .bind(profile_id)
            .bind(profile_version)
            .bind(session_id)
            .bind(now_ms())
            .fetch_optional(self.pool())
            .await?;
            if let Some(id) = taken {
                return Ok(Some(self.sandbox(&id).await?));
            }
            // None ready, or (PostgreSQL) the one chosen was taken between choice and update.
            let any_ready: Option<String> = sqlx::query_scalar(
                "SELECT id FROM sandboxes WHERE role = 'warm' AND state = 'ready' \
                   AND profile_id = $1 AND profile_version = $2 LIMIT 1",
            )
            .bind(profile_id)
            .bind(profile_version)
            .fetch_optional(self.pool())
            .await?;
            if any_ready.is_none() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    pub async fn set_sandbox_acked(&self, id: &SandboxId, seq: u64) -> Result<()> {
        sqlx::query("UPDATE sandboxes SET acked = $2 WHERE id = $1 AND acked < $2")
            .bind(id)
            .bind(seq as i64)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn set_sandbox_agent_exec(&self, id: &SandboxId, exec: Option<u64>) -> Result<()> {
        sqlx::query("UPDATE sandboxes SET agent_exec = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(exec.map(|e| e as i64))
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Makes a token for a sandbox and returns it; only its hash is stored.
    pub async fn issue_token(
        &self,
        kind: TokenKind,
        sandbox_id: &SandboxId,
        session_id: Option<&SessionId>,
        ttl_ms: i64,
    ) -> Result<String> {
        let token = new_token(kind);
        let now = now_ms();
        sqlx::query(
            "INSERT INTO sandbox_tokens (hash, kind, sandbox_id, session_id, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token_hash(&token))
        .bind(kind.as_str())
        .bind(sandbox_id)
        .bind(session_id)
        .bind(now + ttl_ms)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(token)
    }

    /// What an unexpired token is bound to. Bootstrap tokens already used are not valid.
    pub async fn check_token(&self, token: &str) -> Result<Option<TokenBinding>> {
        let row = sqlx::query(
            "SELECT kind, sandbox_id, session_id, expires_at FROM sandbox_tokens \
             WHERE hash = $1 AND expires_at > $2 AND used_at IS NULL",
        )
        .bind(token_hash(token))
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(TokenBinding {
                kind: r.try_get("kind")?,
                sandbox_id: r.try_get("sandbox_id")?,
                session_id: r.try_get("session_id")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    /// Spends a bootstrap token presented for `sandbox_id`; true exactly once.
    pub async fn spend_bootstrap(&self, token: &str, sandbox_id: &SandboxId) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sandbox_tokens SET used_at = $3 WHERE hash = $1 AND kind = 'boot' \
               AND sandbox_id = $2 AND used_at IS NULL AND expires_at > $3",
        )
        .bind(token_hash(token))
        .bind(sandbox_id)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends every unspent token of `kind` of a sandbox except the ones given.
    pub async fn retire_tokens(
        &self,
        sandbox_id: &SandboxId,
        kind: TokenKind,
        keep: [&str; 2],
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sandbox_tokens SET used_at = $5 WHERE sandbox_id = $1 AND kind = $2 \
               AND used_at IS NULL AND hash <> $3 AND hash <> $4",
        )
        .bind(sandbox_id)
        .bind(kind.as_str())
        .bind(token_hash(keep[0]))
        .bind(token_hash(keep[1]))
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Binds a sandbox's tokens to a session and sets their expiry.
    pub async fn bind_tokens(
        &self,
        sandbox_id: &SandboxId,
        session_id: &SessionId,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sandbox_tokens SET session_id = $2, expires_at = $3 \
             WHERE sandbox_id = $1 AND kind <> 'boot'",
        )
        .bind(sandbox_id)
        .bind(session_id)
        .bind(expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Takes (or renews) the lease on a session for `owner`. False if another live owner
    /// holds it.
    pub async fn lease_session(
        &self,
        session_id: &SessionId,
        owner: &str,
        until: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sessions SET lease_owner = $2, lease_until = $3 WHERE id = $1 \
               AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < $4)",
        )
        .bind(session_id)
        .bind(owner)
        .bind(until)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn set_session_sandbox(
        &self,
        session_id: &SessionId,
        sandbox_id: &SandboxId,
    ) -> Result<()> {
        sqlx::query("UPDATE sessions SET sandbox_id = $2 WHERE id = $1")
            .bind(session_id)
            .bind(sandbox_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Live sessions (starting, running, finishing) that `owner` held, or whose lease has run
    /// out: the ones a (re)started server must take back.
    pub async fn orphaned_sessions(
        &self,
        owner: &str,
    ) -> Result<Vec<(SessionId, Option<SandboxId>)>> {
        let rows = sqlx::query(
            "SELECT id, sandbox_id FROM sessions WHERE state IN ($1, $2, $3) \
               AND (lease_owner IS NULL OR lease_owner = $4 OR lease_until < $5) ORDER BY created_at",
        )
        .bind(SessionState::Starting.as_str())
        .bind(SessionState::Running.as_str())
        .bind(SessionState::Finishing.as_str())
        .bind(owner)
        .bind(now_ms())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("sandbox_id")?)))
            .collect()
    }

    /// Queued sessions, oldest first.
    pub async fn queued_sessions(&self, limit: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sessions WHERE state = $1 ORDER BY created_at LIMIT $2",
        )
        .bind(SessionState::Queued.as_str())
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn insert_snapshot(&self, new: NewSnapshot) -> Result<Snapshot> {
        let id = new_id("snp");
        sqlx::query(
            "INSERT INTO snapshots (id, image, kind, profile_id, profile_version, setup_hash, \
               session_id, size_bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(&new.image)
        .bind(new.kind)
        .bind(&new.profile_id)
        .bind(new.profile_version)
        .bind(&new.setup_hash)
        .bind(&new.session_id)
        .bind(new.size_bytes)
        .bind(now_ms())
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::conflict_or(e, || format!("snapshot {} exists", new.image)))?;
        let row = sqlx::query(&format!(
            "SELECT {SNAPSHOT_COLS} FROM snapshots WHERE id = $1"
        ))
        .bind(&id)
        .fetch_one(self.pool())
        .await?;
        snapshot(&row)
    }

    /// The newest profile snapshot built from exactly this setup.
    pub async fn newest_snapshot(
        &self,
        profile_id: &ProfileId,
        setup_hash: &str,
    ) -> Result<Option<Snapshot>> {
        sqlx::query(&format!(
            "SELECT {SNAPSHOT_COLS} FROM snapshots WHERE profile_id = $1 AND kind = 'profile' \
               AND setup_hash = $2 ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(profile_id)
        .bind(setup_hash)
        .fetch_optional(self.pool())
        .await?
        .map(|r| snapshot(&r))
        .transpose()
    }

    /// The newest snapshot kept of a session's files.
    pub async fn session_snapshot(&self, session_id: &SessionId) -> Result<Option<Snapshot>> {
        sqlx::query(&format!(
            "SELECT {SNAPSHOT_COLS} FROM snapshots WHERE session_id = $1 AND kind = 'session' \
               ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(session_id)
        .fetch_optional(self.pool())
        .await?
        .map(|r| snapshot(&r))
        .transpose()
    }

    pub async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        let rows = sqlx::query(&format!(
            "SELECT {SNAPSHOT_COLS} FROM snapshots ORDER BY created_at DESC, id DESC"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(snapshot).collect()
    }

    /// How many profile snapshots exist for a profile (numbers the next one).
    pub async fn count_profile_snapshots(&self, profile_id: &ProfileId) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM snapshots WHERE profile_id = $1 AND kind = 'profile'",
        )
        .bind(profile_id)
        .fetch_one(self.pool())
        .await?)
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
