//! The outbox of chat and GitHub updates. An update is written here in the same breath as the
//! event that causes it, then a sender claims it with a lease, sends it, and marks it done. A
//! sender that dies leaves its lease to expire, and the update is sent by the next one: no
//! update is lost across restarts. Claims use `FOR UPDATE SKIP LOCKED` on PostgreSQL so
//! several servers can share the outbox.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{parse_col, DatabaseKind, Result, Store, StoreError};
use crate::domain::{DeliveryState, Surface};
use crate::ids::{now_ms, SessionId};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub session_id: Option<SessionId>,
    pub surface: Surface,
    pub target: serde_json::Value,
    pub payload: serde_json::Value,
    pub state: DeliveryState,
    pub attempts: i64,
    pub not_before: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub session_id: Option<String>,
    pub surface: Surface,
    pub target: serde_json::Value,
    pub payload: serde_json::Value,
}

const COLS: &str = "id, session_id, surface, target, payload, state, attempts, not_before, \
    last_error, created_at";

fn delivery(row: &AnyRow) -> Result<Delivery> {
    let json = |col: &str| -> Result<serde_json::Value> {
        let text: String = row.try_get(col)?;
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Invalid(format!("stored delivery {col} is invalid: {e}")))
    };
    Ok(Delivery {
        id: row.try_get("id")?,
        session_id: row.try_get("session_id")?,
        surface: parse_col(row.try_get("surface")?)?,
        target: json("target")?,
        payload: json("payload")?,
        state: parse_col(row.try_get("state")?)?,
        attempts: row.try_get("attempts")?,
        not_before: row.try_get("not_before")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    pub async fn enqueue_delivery(&self, new: &NewDelivery) -> Result<i64> {
        let now = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO deliveries (session_id, surface, target, payload, state, attempts, \
               not_before, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $5) RETURNING id",
        )
        .bind(&new.session_id)
        .bind(new.surface.as_str())
        .bind(new.target.to_string())
        .bind(new.payload.to_string())
        .bind(now)
        .fetch_one(self.pool())
        .await?;
        Ok(id)
    }

    /// Claims up to `max` due deliveries for `owner` for `lease_ms`, oldest first.
    pub async fn claim_deliveries(
        &self,
        owner: &str,
        max: i64,
        lease_ms: i64,
    ) -> Result<Vec<Delivery>> {
        let now = now_ms();
        let lock = match self.kind() {
            DatabaseKind::Postgres => "FOR UPDATE SKIP LOCKED",
            DatabaseKind::Sqlite => "",
        };
        // The outer conditions repeat the inner ones: on PostgreSQL they are re-checked on the
        // locked row, so two servers can never both claim one delivery.
        let sql = format!(
            "UPDATE deliveries SET lease_owner = $1, lease_until = $2, attempts = attempts + 1, \
               updated_at = $3 \
             WHERE id IN (SELECT id FROM deliveries WHERE state = 'pending' AND not_before <= $3 \
                            AND (lease_until IS NULL OR lease_until < $3) \
                          ORDER BY id LIMIT $4 {lock}) \
               AND state = 'pending' AND (lease_until IS NULL OR lease_until < $3) \
             RETURNING {COLS}"
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .bind(max.clamp(1, 1000))
            .fetch_all(self.pool())
            .await?;
        let mut out = rows.iter().map(delivery).collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    /// Marks a claimed delivery as sent. Fails if `owner` no longer holds the lease.
    pub async fn complete_delivery(&self, id: i64, owner: &str) -> Result<()> {
        let n = sqlx::query(
            "UPDATE deliveries SET state = 'done', lease_owner = NULL, lease_until = NULL, \
               updated_at = $3 WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
        )
        .bind(id)
        .bind(owner)
        .bind(now_ms())
        .execute(self.pool())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "delivery {id} is not leased to {owner}"
            )));
        }
        Ok(())
    }

    /// Records a failed attempt: retried after `retry_in_ms`, or given up (`None`).
    pub async fn fail_delivery(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        retry_in_ms: Option<i64>,
    ) -> Result<()> {
        let now = now_ms();
        let (state, not_before) = match retry_in_ms {
            Some(ms) => (DeliveryState::Pending, now + ms.max(0)),
            None => (DeliveryState::Failed, now),
        };
        let error: String = error.chars().take(2000).collect();
        let n = sqlx::query(
            "UPDATE deliveries SET state = $3, not_before = $4, last_error = $5, lease_owner = NULL, \
               lease_until = NULL, updated_at = $6 \
             WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
        )
        .bind(id)
        .bind(owner)
        .bind(state.as_str())
        .bind(not_before)
        .bind(&error)
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "delivery {id} is not leased to {owner}"
            )));
        }
        Ok(())
    }

    /// Puts a claimed delivery back until `until_ms` without counting an attempt (a sender
    /// spacing out updates to stay inside a surface's rate limits).
    pub async fn defer_delivery(&self, id: i64, owner: &str, until_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET not_before = $3, attempts = attempts - 1, lease_owner = NULL, \
               lease_until = NULL, updated_at = $4 \
             WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
        )
        .bind(id)
        .bind(owner)
        .bind(until_ms)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Deliveries of a session, oldest first (for tests and the admin page).
    pub async fn session_deliveries(&self, session_id: &SessionId) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM deliveries WHERE session_id = $1 ORDER BY id"
        ))
        .bind(session_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(delivery).collect()
    }

    pub async fn delivery(&self, id: i64) -> Result<Delivery> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM deliveries WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref()
            .map(delivery)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("no delivery {id}")))
    }
}
