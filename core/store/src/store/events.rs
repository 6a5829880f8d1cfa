//! Reading a session's events. A session can hold many megabytes of output, so nothing here
//! returns all of its events at once: readers page forwards (`events`) or backwards
//! (`events_before`), or ask for the one thing they need (the latest prompt, the current
//! turn without its output), each an indexed range read.

use super::sessions::{event, SessionEvent};
use super::{Result, Store};
use crate::domain::EventKind;
use crate::ids::SessionId;

/// The most events one read returns. Output events hold at most 32 KiB of text, so a page
/// is at most a few megabytes.
pub const EVENT_PAGE: i64 = 1000;

const COLS: &str = "session_id, seq, at, kind, payload";

impl Store {
    /// Events after `after_seq`, oldest first, at most `limit` (and [`EVENT_PAGE`]).
    pub async fn events(
        &self,
        session_id: &SessionId,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<SessionEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM session_events \
             WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(session_id)
        .bind(after_seq)
        .bind(limit.clamp(1, EVENT_PAGE))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(event).collect()
    }

    /// Events before `before_seq`, newest first, at most `limit` (and [`EVENT_PAGE`]): the
    /// latest output first, then "load more".
    pub async fn events_before(
        &self,
        session_id: &SessionId,
        before_seq: i64,
        limit: i64,
    ) -> Result<Vec<SessionEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM session_events \
             WHERE session_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
        ))
        .bind(session_id)
        .bind(before_seq)
        .bind(limit.clamp(1, EVENT_PAGE))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(event).collect()
    }

    /// The number of the session's latest event (0 when it has none).
    pub async fn last_event_seq(&self, session_id: &SessionId) -> Result<i64> {
        let row = sqlx::query(
            "SELECT seq FROM session_events WHERE session_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(session_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            Some(r) => sqlx::Row::try_get(&r, "seq")?,
            None => 0,
        })
    }

    /// The sequence number just before the session's `n` latest events (0 when it has no
    /// more than `n`): reading after it gives those `n` and what follows.
    pub async fn event_seq_before_last(&self, session_id: &SessionId, n: i64) -> Result<i64> {
        if n == 0 {
            return self.last_event_seq(session_id).await;
        }
        let row = sqlx::query(
            "SELECT seq FROM session_events WHERE session_id = $1 ORDER BY seq DESC \
             LIMIT 1 OFFSET $2",
        )
        .bind(session_id)
        .bind(n)
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            Some(r) => sqlx::Row::try_get(&r, "seq")?,
            None => 0,
        })
    }

    /// The session's latest event of `kind`, if any.
    pub async fn last_event_of(
        &self,
        session_id: &SessionId,
        kind: EventKind,
    ) -> Result<Option<SessionEvent>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM session_events WHERE session_id = $1 AND kind = $2 \
             ORDER BY seq DESC LIMIT 1"
        ))
        .bind(session_id)
        .bind(kind.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(event).transpose()
    }

    /// The prompt of the session's latest turn: its last follow-up (a `turn` event), or the
    /// prompt it was opened with.
    pub async fn latest_prompt(&self, session: &super::Session) -> Result<String> {
        Ok(self
            .last_event_of(&session.id, EventKind::Turn)
            .await?
            .and_then(|e| e.payload["prompt"].as_str().map(str::to_string))
            .unwrap_or_else(|| session.prompt.clone()))
    }

    /// The current turn's events from its `turn` event (or the session's start) on, without
    /// command output (the bulk of a session): what a status update is made of. At most
    /// `limit` of them, the latest.
    pub async fn turn_events(
        &self,
        session_id: &SessionId,
        limit: i64,
    ) -> Result<Vec<SessionEvent>> {
        let from = self
            .last_event_of(session_id, EventKind::Turn)
            .await?
            .map(|e| e.seq)
            .unwrap_or(0);
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM session_events WHERE session_id = $1 AND seq >= $2 \
             AND kind <> $3 ORDER BY seq DESC LIMIT $4"
        ))
        .bind(session_id)
        .bind(from)
        .bind(EventKind::CommandOutput.as_str())
        .bind(limit.clamp(1, EVENT_PAGE))
        .fetch_all(self.pool())
        .await?;
        let mut events = rows.iter().map(event).collect::<Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }

    /// How many bytes of output the session's turns have stored.
    pub async fn session_output_bytes(&self, session_id: &SessionId) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT output_bytes FROM sessions WHERE id = $1")
            .bind(session_id)
            .fetch_optional(self.pool())
            .await?
            .unwrap_or(0);
        Ok(n.max(0) as u64)
    }

    /// Counts `bytes` more output stored for the session (once per turn, at its end).
    pub async fn add_session_output(&self, session_id: &SessionId, bytes: u64) -> Result<()> {
        sqlx::query("UPDATE sessions SET output_bytes = output_bytes + $2 WHERE id = $1")
            .bind(session_id)
            .bind(bytes.min(i64::MAX as u64) as i64)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
