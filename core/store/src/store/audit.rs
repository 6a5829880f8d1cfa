//! The audit log: append-only, each row hash-chained to the one before it.
//!
//! `hash = SHA-256(JSON [seq, at, actor, action, target, session_id, detail, prev_hash])`.
//! The chain's head (last seq and hash) is kept in `audit_head`; appends lock it, so
//! concurrent writers extend the chain one at a time. [`Store::verify_audit`] recomputes the
//! chain: an edited row, a removed row and a removed tail are each reported. Callers must never
//! put a credential value into `detail`.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Result, Store, StoreError};
use crate::ids::{now_ms, SessionId};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub session_id: Option<String>,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct NewAudit {
    /// Who did it: `human:hum_…`, `cli:root`, `system`, `trigger:trg_…`.
    pub actor: String,
    /// What was done, dotted: `credential.set`, `session.cancel`, `egress.request`.
    pub action: String,
    /// What it was done to: a name or id.
    pub target: String,
    pub session_id: Option<String>,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditVerdict {
    pub rows_checked: i64,
    /// Problems found, in log order; empty when the chain is intact.
    pub problems: Vec<String>,
}

impl AuditVerdict {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

const COLS: &str = "seq, at, actor, action, target, session_id, detail, prev_hash, hash";

/// A row as stored: `detail` kept as its exact text, since the hash covers those bytes.
struct RawRow {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    target: String,
    session_id: Option<String>,
    detail: String,
    prev_hash: String,
    hash: String,
}

fn raw(row: &AnyRow) -> Result<RawRow> {
    Ok(RawRow {
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        session_id: row.try_get("session_id")?,
        detail: row.try_get("detail")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

impl RawRow {
    /// The hash this row must carry: over every other column, in a fixed JSON layout.
    fn computed_hash(&self) -> String {
        let canonical = serde_json::json!([
            self.seq,
            self.at,
            self.actor,
            self.action,
            self.target,
            self.session_id,
            self.detail,
            self.prev_hash
        ]);
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }

    fn into_entry(self) -> AuditEntry {
        AuditEntry {
            detail: serde_json::from_str(&self.detail)
                .unwrap_or(serde_json::Value::String(self.detail)),
            seq: self.seq,
            at: self.at,
            actor: self.actor,
            action: self.action,
            target: self.target,
            session_id: self.session_id,
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

impl Store {
    /// Appends one entry.
    pub async fn audit(&self, entry: NewAudit) -> Result<AuditEntry> {
        let mut out = self.audit_batch(std::slice::from_ref(&entry)).await?;
        out.pop()
            .ok_or_else(|| StoreError::Invalid("audit append returned nothing".into()))
    }

    /// Appends entries in one transaction, in order.
    pub async fn audit_batch(&self, entries: &[NewAudit]) -> Result<Vec<AuditEntry>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool().begin().await?;
        let out = append_audit(&mut tx, entries).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// The last `n` entries, oldest first.
    pub async fn audit_tail(&self, n: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM audit_log ORDER BY seq DESC LIMIT $1"
        ))
        .bind(n.clamp(1, 100_000))
        .fetch_all(self.pool())
        .await?;
        let mut out = rows
            .iter()
            .map(|r| raw(r).map(RawRow::into_entry))
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    /// Entries with `seq > after`, oldest first, at most `limit`.
    pub async fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        self.search_audit_page("", after, limit).await
    }

    /// A session's entries (its egress among them), oldest first, at most `limit`.
    pub async fn audit_for_session(
        &self,
        session_id: &SessionId,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM audit_log WHERE session_id = $1 ORDER BY seq LIMIT $2"
        ))
        .bind(session_id)
        .bind(limit.clamp(1, 100_000))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| raw(r).map(RawRow::into_entry))
            .collect()
    }

    /// Entries whose actor, action, target, session or detail contain `text` (any case; all
    /// when empty), newest first, at most `limit`, among the [`AUDIT_SEARCH_WINDOW`] entries
    /// before `before` (the newest when `None`). Text search cannot use an index, so each
    /// search reads a bounded range; [`AuditSearch::next_before`] goes on from where it
    /// stopped.
    pub async fn search_audit(
        &self,
        text: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<AuditSearch> {
        let limit = limit.clamp(1, 10_000);
        let before = match before {
            Some(b) => b,
            None => {
                let row = sqlx::query("SELECT MAX(seq) AS seq FROM audit_log")
                    .fetch_one(self.pool())
                    .await?;
                row.try_get::<Option<i64>, _>("seq")?.unwrap_or(0) + 1
            }
        };
        // `before` comes from a link a person can edit: any number is a range, never a panic.
        let before = before.max(1);
        let from = before.saturating_sub(AUDIT_SEARCH_WINDOW).max(1);
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM audit_log WHERE seq < $2 AND seq >= $3 AND ({MATCHES}) \
             ORDER BY seq DESC LIMIT $4"
        ))
        .bind(like_pattern(text))
        .bind(before)
        .bind(from)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let entries = rows
            .iter()
            .map(|r| raw(r).map(RawRow::into_entry))
            .collect::<Result<Vec<_>>>()?;
        // A full page stops at its last entry; otherwise the whole range was searched.
        let next = match entries.last() {
            Some(last) if entries.len() as i64 == limit => last.seq,
            _ => from,
        };
        Ok(AuditSearch {
            entries,
            searched: (from, before - 1),
            next_before: (next > 1).then_some(next),
        })
    }

    /// Entries that hold `text` (anywhere, any case; empty: all) with `seq > after`, oldest
    /// first, at most `limit`: pages of a complete export.
    pub async fn search_audit_page(
        &self,
        text: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM audit_log WHERE seq > $2 AND ({MATCHES}) ORDER BY seq LIMIT $3"
        ))
        .bind(like_pattern(text))
        .bind(after)
        .bind(limit.clamp(1, 100_000))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| raw(r).map(RawRow::into_entry))
            .collect()
    }

    /// The sequence number just before the first entry written at or after `at_ms` (where
    /// an export `--since` a time starts).
    pub async fn audit_seq_before(&self, at_ms: i64) -> Result<i64> {
        let row = sqlx::query("SELECT MIN(seq) AS seq FROM audit_log WHERE at >= $1")
            .bind(at_ms)
            .fetch_one(self.pool())
            .await?;
        let first: Option<i64> = row.try_get("seq")?;
        match first {
            Some(s) => Ok(s - 1),
            None => Ok(i64::MAX),
        }
    }

    /// Recomputes the whole chain and compares it with the stored head.
    pub async fn verify_audit(&self) -> Result<AuditVerdict> {
        const PAGE: i64 = 1000;
        const MAX_PROBLEMS: usize = 50;
        let mut problems = Vec::new();
        let mut checked = 0i64;
        let mut expected_seq = 1i64;
        let mut prev_hash = GENESIS_HASH.to_string();
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(&format!(
                "SELECT {COLS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
            ))
            .bind(after)
            .bind(PAGE)
            .fetch_all(self.pool())
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let r = raw(row)?;
                checked += 1;
                after = r.seq;
                if r.seq != expected_seq {
                    let missing = if r.seq == expected_seq + 1 {
                        format!("row {expected_seq} is missing")
                    } else if r.seq > expected_seq {
                        format!("rows {expected_seq} to {} are missing", r.seq - 1)
                    } else {
                        format!("row {} is out of order", r.seq)
                    };
                    problems.push(missing);
                }
                if r.prev_hash != prev_hash && r.seq == expected_seq {
                    problems.push(format!(
                        "row {} does not follow row {}: the earlier row was changed or replaced",
                        r.seq,
                        r.seq - 1
                    ));
                }
                if r.computed_hash() != r.hash {
                    problems.push(format!(
                        "row {} was edited: its content does not match its hash",
                        r.seq
                    ));
                }
                prev_hash = r.hash;
                expected_seq = r.seq + 1;
                if problems.len() >= MAX_PROBLEMS {
                    break;
                }
            }
            if problems.len() >= MAX_PROBLEMS {
                break;
            }
        }
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(self.pool())
            .await?;
        let head_seq: i64 = head.try_get("seq")?;
        let head_hash: String = head.try_get("hash")?;
        if problems.len() < MAX_PROBLEMS {
            let last = expected_seq - 1;
            if head_seq > last {
                problems.push(if head_seq == last + 1 {
                    format!("the last row ({head_seq}) is missing")
                } else {
                    format!("the last rows ({} to {head_seq}) are missing", last + 1)
                });
            } else if head_seq < last {
                problems.push(format!(
                    "rows after {head_seq} were added outside Airlock (the chain head says {head_seq}, the log ends at {last})"
                ));
            } else if head_hash != prev_hash {
                problems.push(format!(
                    "row {last} was replaced: it does not match the chain head"
                ));
            }
        }
        Ok(AuditVerdict {
            rows_checked: checked,
            problems,
        })
    }
}

/// The condition of an audit search: `$1` is a [`like_pattern`].
/// How many entries one audit search reads at most.
pub const AUDIT_SEARCH_WINDOW: i64 = 100_000;

/// One page of an audit search.
#[derive(Debug)]
pub struct AuditSearch {
    /// Matches, newest first.
    pub entries: Vec<AuditEntry>,
    /// The entries searched (first and last sequence number).
    pub searched: (i64, i64),
    /// Where the next (older) page starts, if anything older is left.
    pub next_before: Option<i64>,
}

const MATCHES: &str = "$1 = '%%' OR lower(actor) LIKE $1 ESCAPE '\\' \
    OR lower(action) LIKE $1 ESCAPE '\\' OR lower(target) LIKE $1 ESCAPE '\\' \
    OR lower(COALESCE(session_id, '')) LIKE $1 ESCAPE '\\' OR lower(detail) LIKE $1 ESCAPE '\\'";

/// `%text%`, lower case, with LIKE's own characters escaped.
fn like_pattern(text: &str) -> String {
    format!(
        "%{}%",
        text.to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

/// Appends entries inside `tx`, in order: an audit row written with the change it records
/// commits or rolls back with it. The audit head is the last lock the transaction takes
/// (callers lock their own rows first), so audited writes never deadlock one another.
pub(crate) async fn append_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    entries: &[NewAudit],
) -> Result<Vec<AuditEntry>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let n = entries.len() as i64;
    // Reserve n sequence numbers; the row lock (or SQLite's write lock) is held to commit.
    let head = sqlx::query("UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash")
        .bind(n)
        .fetch_one(&mut **tx)
        .await?;
    let last: i64 = head.try_get("seq")?;
    let mut prev: String = head.try_get("hash")?;
    let now = now_ms();
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let seq = last - n + 1 + i as i64;
        let mut row = RawRow {
            seq,
            at: now,
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            session_id: e.session_id.clone(),
            detail: e.detail.to_string(),
            prev_hash: prev,
            hash: String::new(),
        };
        row.hash = row.computed_hash();
        sqlx::query(&format!(
            "INSERT INTO audit_log ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(row.seq)
        .bind(row.at)
        .bind(&row.actor)
        .bind(&row.action)
        .bind(&row.target)
        .bind(&row.session_id)
        .bind(&row.detail)
        .bind(&row.prev_hash)
        .bind(&row.hash)
        .execute(&mut **tx)
        .await?;
        prev = row.hash.clone();
        out.push(row.into_entry());
    }
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&prev)
        .execute(&mut **tx)
        .await?;
    Ok(out)
}
