//! What the admin overview shows: sessions per day, model usage per human, profile and
//! model, and for each integration when it last received or sent something and its last
//! error. Aggregates over bounded time windows, on indexed columns.

use serde::Serialize;
use sqlx::Row;

use super::{Result, Store};

/// Sessions created on one UTC day in one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayCount {
    /// Days since the Unix epoch (UTC).
    pub day: i64,
    pub state: String,
    pub count: i64,
}

/// Model tokens used by one human with one profile and model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub human: String,
    pub profile: String,
    pub model: String,
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// One integration's traffic: what came in (webhooks, events) and what went out (the
/// outbox's messages), with the last error of each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub last_received_at: Option<i64>,
    pub last_inbound_error: Option<(i64, String)>,
    pub last_sent_at: Option<i64>,
    pub last_send_error: Option<(i64, String)>,
    pub pending_sends: i64,
}

const DAY_MS: i64 = 86_400_000;

impl Store {
    /// Sessions per UTC day and state since `since_ms`.
    pub async fn sessions_per_day(&self, since_ms: i64) -> Result<Vec<DayCount>> {
        let rows = sqlx::query(
            "SELECT CAST(created_at / $2 AS BIGINT) AS day, state, COUNT(*) AS n FROM sessions \
             WHERE created_at >= $1 GROUP BY CAST(created_at / $2 AS BIGINT), state ORDER BY day",
        )
        .bind(since_ms)
        .bind(DAY_MS)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DayCount {
                    day: r.try_get("day")?,
                    state: r.try_get("state")?,
                    count: r.try_get("n")?,
                })
            })
            .collect()
    }

    /// Model usage since `since_ms`, by human, profile and model (largest first).
    pub async fn usage_breakdown(&self, since_ms: i64) -> Result<Vec<UsageRow>> {
        let rows = sqlx::query(
            "SELECT COALESCE(h.display_name, '(no human)') AS human, \
             COALESCE(p.name, '(no session)') AS profile, COALESCE(u.model, '(unknown)') AS model, \
             COUNT(*) AS calls, CAST(COALESCE(SUM(u.input_tokens), 0) AS BIGINT) AS i, \
             CAST(COALESCE(SUM(u.output_tokens), 0) AS BIGINT) AS o \
             FROM model_usage u LEFT JOIN humans h ON h.id = u.human_id \
             LEFT JOIN sessions s ON s.id = u.session_id LEFT JOIN profiles p ON p.id = s.profile_id \
             WHERE u.at >= $1 GROUP BY h.display_name, p.name, u.model \
             ORDER BY CAST(COALESCE(SUM(u.input_tokens), 0) AS BIGINT) + CAST(COALESCE(SUM(u.output_tokens), 0) AS BIGINT) DESC \
             LIMIT 500",
        )
        .bind(since_ms)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageRow {
                    human: r.try_get("human")?,
                    profile: r.try_get("profile")?,
                    model: r.try_get("model")?,
                    calls: r.try_get("calls")?,
                    input_tokens: r.try_get("i")?,
                    output_tokens: r.try_get("o")?,
                })
            })
            .collect()
    }

    /// The traffic of `provider` (`github`, `slack`, `discord`): inbound deliveries and the
    /// outbox's messages to that surface.
    pub async fn traffic(&self, provider: &str) -> Result<Traffic> {
        let received: Option<i64> =
            sqlx::query("SELECT MAX(received_at) AS at FROM inbound WHERE provider = $1")
                .bind(provider)
                .fetch_one(self.pool())
                .await?
                .try_get("at")?;
        let inbound_error = sqlx::query(
            "SELECT received_at, error FROM inbound WHERE provider = $1 AND error IS NOT NULL \
             ORDER BY received_at DESC LIMIT 1",
        )
        .bind(provider)
        .fetch_optional(self.pool())
        .await?
        .map(|r| Ok::<_, sqlx::Error>((r.try_get("received_at")?, r.try_get("error")?)))
        .transpose()?;
        let sent: Option<i64> = sqlx::query(
            "SELECT MAX(updated_at) AS at FROM deliveries WHERE surface = $1 AND state = 'done'",
        )
        .bind(provider)
        .fetch_one(self.pool())
        .await?
        .try_get("at")?;
        let send_error = sqlx::query(
            "SELECT updated_at, last_error FROM deliveries WHERE surface = $1 \
             AND last_error IS NOT NULL ORDER BY updated_at DESC LIMIT 1",
        )
        .bind(provider)
        .fetch_optional(self.pool())
        .await?
        .map(|r| Ok::<_, sqlx::Error>((r.try_get("updated_at")?, r.try_get("last_error")?)))
        .transpose()?;
        let pending: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM deliveries WHERE surface = $1 AND state = 'pending'",
        )
        .bind(provider)
        .fetch_one(self.pool())
        .await?
        .try_get("n")?;
        Ok(Traffic {
            last_received_at: received,
            last_inbound_error: inbound_error,
            last_sent_at: sent,
            last_send_error: send_error,
            pending_sends: pending,
        })
    }
}
