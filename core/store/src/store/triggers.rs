//! Triggers: webhooks, schedules and GitHub events that start sessions without a person
//! typing. Each names its profile, repository, reply destination and owner (the human its
//! sessions are attributed to). Firing is recorded with a compare-and-set on `last_fired_at`,
//! so a schedule fires once per slot even across restarts and several servers.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{id_col, parse_col, Result, Store, StoreError};
use crate::domain::{is_credential_name, is_name, is_repo_ref, TriggerKind};
use crate::ids::{new_id, now_ms, HumanId, ProfileId, TriggerId};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trigger {
    pub id: TriggerId,
    pub name: String,
    pub kind: TriggerKind,
    /// Kind-specific settings: cron and time zone, event filters, prompt template.
    pub config: serde_json::Value,
    pub profile_id: ProfileId,
    pub repo: String,
    pub reply: serde_json::Value,
    pub owner_id: HumanId,
    /// Credential holding the webhook's HMAC secret.
    pub secret_credential: Option<String>,
    pub enabled: bool,
    pub last_fired_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewTrigger {
    pub name: String,
    pub kind: TriggerKind,
    pub config: serde_json::Value,
    pub profile_id: ProfileId,
    pub repo: String,
    pub reply: serde_json::Value,
    pub owner_id: HumanId,
    pub secret_credential: Option<String>,
}

const COLS: &str = "id, name, kind, config, profile_id, repo, reply, owner_id, \
    secret_credential, enabled, last_fired_at, created_at";

fn trigger(row: &AnyRow) -> Result<Trigger> {
    let json = |col: &str| -> Result<serde_json::Value> {
        let text: String = row.try_get(col)?;
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Invalid(format!("stored trigger {col} is invalid: {e}")))
    };
    Ok(Trigger {
        id: id_col(row, "id")?,
        name: row.try_get("name")?,
        kind: parse_col(row.try_get("kind")?)?,
        config: json("config")?,
        profile_id: id_col(row, "profile_id")?,
        repo: row.try_get("repo")?,
        reply: json("reply")?,
        owner_id: id_col(row, "owner_id")?,
        secret_credential: row.try_get("secret_credential")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        last_fired_at: row.try_get("last_fired_at")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    pub async fn create_trigger(&self, new: &NewTrigger) -> Result<Trigger> {
        if !is_name(&new.name) {
            return Err(StoreError::Invalid(
                "trigger names use 1-64 lower-case letters, digits and dashes".into(),
            ));
        }
        if !is_repo_ref(&new.repo) {
            return Err(StoreError::Invalid(
                "the trigger's repository must be OWNER/NAME or a registered repository's name"
                    .into(),
            ));
        }
        if let Some(c) = &new.secret_credential {
            if !is_credential_name(c) {
                return Err(StoreError::Invalid(
                    "the secret credential name is not valid".into(),
                ));
            }
        }
        let id = new_id("trg");
        let now = now_ms();
        sqlx::query(&format!(
            "INSERT INTO triggers ({COLS}, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, NULL, $10, $10)"
        ))
        .bind(&id)
        .bind(&new.name)
        .bind(new.kind.as_str())
        .bind(new.config.to_string())
        .bind(&new.profile_id)
        .bind(&new.repo)
        .bind(new.reply.to_string())
        .bind(&new.owner_id)
        .bind(&new.secret_credential)
        .bind(now)
        .execute(self.pool())
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                StoreError::Invalid("the trigger's profile or owner does not exist".into())
            }
            _ => StoreError::conflict_or(e, || {
                format!("a trigger named {} already exists", new.name)
            }),
        })?;
        self.trigger(&id).await
    }

    pub async fn trigger(&self, id_or_name: &str) -> Result<Trigger> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM triggers WHERE id = $1 OR name = $1"
        ))
        .bind(id_or_name)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(trigger).transpose()?.ok_or_else(|| {
            StoreError::NotFound(format!(
                "no trigger `{}`",
                id_or_name.chars().take(80).collect::<String>()
            ))
        })
    }

    pub async fn list_triggers(&self) -> Result<Vec<Trigger>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM triggers ORDER BY name"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(trigger).collect()
    }

    pub async fn set_trigger_enabled(&self, id: &TriggerId, enabled: bool) -> Result<()> {
        let n = sqlx::query("UPDATE triggers SET enabled = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(i64::from(enabled))
            .bind(now_ms())
            .execute(self.pool())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("no trigger `{id}`")));
        }
        Ok(())
    }

    /// Records that the trigger fired for the slot `slot_ms`, if it had not fired for that
    /// slot (or a later one) already. Returns whether this call won the slot.
    pub async fn claim_trigger_fire(&self, id: &TriggerId, slot_ms: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE triggers SET last_fired_at = $2, updated_at = $3 \
             WHERE id = $1 AND (last_fired_at IS NULL OR last_fired_at < $2)",
        )
        .bind(id)
        .bind(slot_ms)
        .bind(now_ms())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn delete_trigger(&self, id: &TriggerId) -> Result<()> {
        let n = sqlx::query("DELETE FROM triggers WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::Conflict(
                    "the trigger has started sessions, which keep naming it; disable it instead"
                        .into(),
                ),
                _ => StoreError::Db(e),
            })?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("no trigger `{id}`")));
        }
        Ok(())
    }
}
