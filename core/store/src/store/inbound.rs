//! What arrives from outside: verified webhook deliveries (kept until processed, unique per
//! provider so replays are recognised), one-time link codes (hashes only), and where the
//! GitHub App is installed.

use serde::Serialize;
use sqlx::Row;

use super::{parse_col, sandboxes::token_hash, Result, Store, StoreError};
use crate::config::{DatabaseKind, RetentionConfig};
use crate::domain::Provider;
use crate::ids::{new_id, now_ms};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inbound {
    pub id: String,
    pub provider: String,
    pub delivery_id: String,
    pub event: String,
    pub payload: String,
    pub received_at: i64,
}

/// What [`Store::prune_inbound`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Payloads dropped (their records kept).
    pub payloads: u64,
    /// Whole records deleted.
    pub deleted: u64,
}

impl Inbound {
    /// A record of a delivery arriving now, under a new id.
    fn new(provider: &str, key: &str, event: &str, payload: &str) -> Inbound {
        Inbound {
            id: new_id("inb"),
            provider: provider.into(),
            delivery_id: key.into(),
            event: event.into(),
            payload: payload.into(),
            received_at: now_ms(),
        }
    }
}

/// A chat account waiting to be linked, as a code names it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingLink {
    pub provider: Provider,
    pub workspace: String,
    pub external_id: String,
    pub handle: String,
}

/// How a delivery is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kept {
    /// To be handled (claimed, then marked); already claimed by this owner until then (ms)
    /// when given: the request that stored it handles it without a second write.
    Pending(Option<(String, i64)>),
    /// Handled as it is recorded.
    Handled,
    /// Needing nothing, for this reason: handled as it is recorded.
    Ignored(String),
}

/// Inserts one delivery unless its key was seen; whether it was stored.
async fn insert_inbound(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    i: &Inbound,
    kept: &Kept,
) -> std::result::Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO inbound (id, provider, delivery_id, event, payload, received_at, processed_at, \
           verdict, claimed_by, claim_until) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (provider, delivery_id) DO NOTHING",
    )
    .bind(&i.id)
    .bind(&i.provider)
    .bind(&i.delivery_id)
    .bind(&i.event)
    .bind(&i.payload)
    .bind(i.received_at)
    .bind((!matches!(kept, Kept::Pending(_))).then_some(i.received_at))
    .bind(match kept {
        Kept::Ignored(why) => Some(why.as_str()),
        _ => None,
    })
    .bind(match kept {
        Kept::Pending(Some((owner, _))) => Some(owner.as_str()),
        _ => None,
    })
    .bind(match kept {
        Kept::Pending(Some((_, until))) => Some(*until),
        _ => None,
    })
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A write the SQLite inbound writer makes.
enum Op {
    /// A new record: whether it was stored (its key not seen before).
    Insert(Inbound, Kept),
    /// A delivery marked handled (with the error, if handling failed).
    Finish { id: String, error: Option<String> },
}

async fn apply(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    op: &Op,
) -> std::result::Result<bool, sqlx::Error> {
    match op {
        Op::Insert(i, kept) => insert_inbound(tx, i, kept).await,
        Op::Finish { id, error } => finish(tx, id, error.as_deref()).await,
    }
}

async fn finish(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    error: Option<&str>,
) -> std::result::Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE inbound SET processed_at = $2, error = $3 WHERE id = $1")
        .bind(id)
        .bind(now_ms())
        .bind(error.map(|e| e.chars().take(2000).collect::<String>()))
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

type Waiting = (
    Op,
    tokio::sync::oneshot::Sender<std::result::Result<bool, String>>,
);

/// One writer task for inbound records on SQLite, new ones and handled ones: whatever is
/// waiting when it is free goes into one transaction (SQLite's writers otherwise wait on
/// each other in sleeps of up to 100 ms: 200 deliveries at once were acknowledged with a
/// p99 of 116 ms, and up to 130 ms while the first ones' handlers marked them handled).
pub(crate) struct InboundBatch {
    tx: tokio::sync::mpsc::Sender<Waiting>,
}

/// Records written in one transaction, at most.
const BATCH_MAX: usize = 256;

impl InboundBatch {
    fn start(pool: sqlx::AnyPool) -> InboundBatch {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Waiting>(4 * BATCH_MAX);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX {
                    match rx.try_recv() {
                        Ok(w) => batch.push(w),
                        Err(_) => break,
                    }
                }
                let written = async {
                    let mut tx = pool.begin().await?;
                    let mut stored = Vec::with_capacity(batch.len());
                    for (op, _) in &batch {
                        stored.push(apply(&mut tx, op).await?);
                    }
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(stored)
                }
                .await;
                match written {
                    Ok(stored) => {
                        for ((_, reply), s) in batch.into_iter().zip(stored) {
                            let _ = reply.send(Ok(s));
                        }
                    }
                    Err(e) => {
                        tracing::warn!("cannot record {} inbound deliveries: {e}", batch.len());
                        for (_, reply) in batch {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        InboundBatch { tx }
    }

    async fn write(&self, op: Op) -> Result<bool> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send((op, reply))
            .await
            .map_err(|_| StoreError::Conflict("the inbound writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Conflict("the inbound writer has stopped".into()))?
            .map_err(StoreError::Conflict)
    }
}

/// How long a link code works.
pub const LINK_CODE_TTL_MS: i64 = 15 * 60 * 1000;

impl Store {
    /// Records a verified delivery, to be handled. `Ok(None)` when this delivery was seen
    /// before (a replay or a retry): the caller does nothing more.
    pub async fn record_inbound(
        &self,
        provider: &str,
        delivery_id: &str,
        event: &str,
        payload: &str,
    ) -> Result<Option<Inbound>> {
        let inbound = Inbound::new(provider, delivery_id, event, payload);
        Ok(self
            .insert_inbound(&inbound, Kept::Pending(None))
            .await?
            .then_some(inbound))
    }

    /// As [`Store::record_inbound`], claimed by `owner` for `lease_ms` as it is stored: the
    /// request that stored it goes on to handle it (renewing the claim) without claiming it
    /// first; if that request's server dies, the claim lapses and the sweep takes it.
    pub async fn record_inbound_claimed(
        &self,
        (provider, delivery_id, event, payload): (&str, &str, &str, &str),
        owner: &str,
        lease_ms: i64,
    ) -> Result<Option<Inbound>> {
        let inbound = Inbound::new(provider, delivery_id, event, payload);
        let until = inbound.received_at + lease_ms;
        Ok(self
            .insert_inbound(&inbound, Kept::Pending(Some((owner.into(), until))))
            .await?
            .then_some(inbound))
    }

    /// Records a verified delivery that needs nothing (decided from the payload alone), as
    /// handled, with `why`: its key recognises a replay, and nothing claims or marks it
    /// later. `payload` is kept only when `retention.ignored_payload_hours` asks for it
    /// (pass `""` otherwise). `false` when the key was seen before.
    pub async fn record_ignored(
        &self,
        provider: &str,
        key: &str,
        event: &str,
        payload: &str,
        why: &str,
    ) -> Result<bool> {
        let inbound = Inbound::new(provider, key, event, payload);
        self.insert_inbound(&inbound, Kept::Ignored(why.chars().take(200).collect()))
            .await
    }

    /// Records a request answered while its sender waits (a Slack command, a Discord
    /// interaction, a webhook post): handled as it is recorded, with no payload; the record
    /// is what recognises a replay. `false` when the key was seen before.
    pub async fn record_answered(&self, provider: &str, key: &str, kind: &str) -> Result<bool> {
        let inbound = Inbound::new(provider, key, kind, "");
        self.insert_inbound(&inbound, Kept::Handled).await
    }

    async fn insert_inbound(&self, inbound: &Inbound, kept: Kept) -> Result<bool> {
        match self.kind {
            // SQLite has one writer: deliveries arriving together are written together.
            DatabaseKind::Sqlite => {
                self.inbound_batch()
                    .write(Op::Insert(inbound.clone(), kept))
                    .await
            }
            DatabaseKind::Postgres => {
                let mut tx = self.pool().begin().await?;
                let stored = insert_inbound(&mut tx, inbound, &kept).await?;
                tx.commit().await?;
                Ok(stored)
            }
        }
    }

    fn inbound_batch(&self) -> &InboundBatch {
        self.inbound_batch
            .get_or_init(|| InboundBatch::start(self.pool().clone()))
    }

    /// Deliveries not processed yet that nobody holds a live claim on (after a restart, or
    /// left by a server that died), oldest first.
    pub async fn unprocessed_inbound(&self, provider: &str, limit: i64) -> Result<Vec<Inbound>> {
        let rows = sqlx::query(
            "SELECT id, provider, delivery_id, event, payload, received_at FROM inbound \
             WHERE provider = $1 AND processed_at IS NULL \
               AND (claim_until IS NULL OR claim_until < $3) \
             ORDER BY received_at LIMIT $2",
        )
        .bind(provider)
        .bind(limit)
        .bind(now_ms())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Inbound {
                    id: r.try_get("id")?,
                    provider: r.try_get("provider")?,
                    delivery_id: r.try_get("delivery_id")?,
                    event: r.try_get("event")?,
                    payload: r.try_get("payload")?,
                    received_at: r.try_get("received_at")?,
                })
            })
            .collect()
    }

    /// Takes a stored delivery to handle it: `true` for exactly one caller while the delivery
    /// is unprocessed and nobody holds an unexpired claim on it. The request that stored a
    /// delivery and the sweep of unhandled ones both claim first, so a delivery is handled
    /// once even when they meet; one whose handler died (a crash) is claimable again when
    /// the lease ends. `owner` names the claimant (a server process) for the record.
    pub async fn claim_inbound(&self, id: &str, owner: &str, lease_ms: i64) -> Result<bool> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE inbound SET claimed_by = $2, claim_until = $3 \
             WHERE id = $1 AND processed_at IS NULL AND (claim_until IS NULL OR claim_until < $4)",
        )
        .bind(id)
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Extends `owner`'s claim on an unprocessed delivery by `lease_ms` from now: `false`
    /// when the claim is no longer theirs (it lapsed and another took it) or it is done.
    pub async fn renew_inbound_claim(&self, id: &str, owner: &str, lease_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE inbound SET claim_until = $3 \
             WHERE id = $1 AND claimed_by = $2 AND processed_at IS NULL",
        )
        .bind(id)
        .bind(owner)
        .bind(now_ms() + lease_ms)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks a delivery processed (with the error, if handling it failed).
    pub async fn finish_inbound(&self, id: &str, error: Option<&str>) -> Result<()> {
        match self.kind {
            DatabaseKind::Sqlite => {
                let op = Op::Finish {
                    id: id.into(),
                    error: error.map(str::to_string),
                };
                self.inbound_batch().write(op).await?;
            }
            DatabaseKind::Postgres => {
                let mut tx = self.pool().begin().await?;
                finish(&mut tx, id, error).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Marks a delivery processed as needing nothing, with `why`. Unless `keep_payload`
    /// (`retention.ignored_payload_hours` is set), its payload is dropped now: only its key
    /// (which recognises a replay) and the verdict are kept.
    pub async fn finish_inbound_ignored(
        &self,
        id: &str,
        why: &str,
        keep_payload: bool,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE inbound SET processed_at = $2, verdict = $3, \
               payload = CASE WHEN $4 THEN payload ELSE '' END WHERE id = $1",
        )
        .bind(id)
        .bind(now_ms())
        .bind(why.chars().take(200).collect::<String>())
        .bind(keep_payload)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Applies `retention` to handled deliveries: payloads of ignored ones older than
    /// `ignored_payload_hours` and of the others older than `delivery_payload_days` are
    /// dropped, and whole records (keys, verdicts) older than `delivery_days` are deleted.
    /// Unhandled deliveries are never touched. Run by one background task, not per delivery.
    pub async fn prune_inbound(&self, retention: &RetentionConfig) -> Result<Pruned> {
        const HOUR: i64 = 3600 * 1000;
        let now = now_ms();
        let ignored = sqlx::query(
            "UPDATE inbound SET payload = '' \
             WHERE processed_at < $1 AND verdict IS NOT NULL AND payload <> ''",
        )
        .bind(now - i64::from(retention.ignored_payload_hours) * HOUR)
        .execute(self.pool())
        .await?
        .rows_affected();
        let handled = sqlx::query(
            "UPDATE inbound SET payload = '' WHERE processed_at < $1 AND payload <> ''",
        )
        .bind(now - i64::from(retention.delivery_payload_days) * 24 * HOUR)
        .execute(self.pool())
        .await?
        .rows_affected();
        let deleted = sqlx::query("DELETE FROM inbound WHERE processed_at < $1")
            .bind(now - i64::from(retention.delivery_days) * 24 * HOUR)
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(Pruned {
            payloads: ignored + handled,
            deleted,
        })
    }

    /// A one-time code that links this chat account once its owner proves who they are.
    /// Returns the code (shown once; only its hash is kept).
    pub async fn create_link_code(&self, account: &PendingLink) -> Result<String> {
        use rand::Rng;
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let code: String = {
            let mut rng = rand::thread_rng();
            (0..11)
                .map(|i| {
                    if i == 5 {
                        '-'
                    } else {
                        ALPHABET[rng.gen_range(0..ALPHABET.len())] as char
                    }
                })
                .collect()
        };
        let now = now_ms();
        sqlx::query(
            "INSERT INTO link_codes (code_hash, provider, workspace, external_id, handle, \
               expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(token_hash(&code))
        .bind(account.provider.as_str())
        .bind(&account.workspace)
        .bind(&account.external_id)
        .bind(&account.handle)
        .bind(now + LINK_CODE_TTL_MS)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(code)
    }

    /// Spends a link code: the account it names, if the code is valid, unexpired and unused.
    pub async fn redeem_link_code(&self, code: &str) -> Result<PendingLink> {
        let code = code.trim().to_ascii_uppercase();
        let row = sqlx::query(
            "UPDATE link_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL \
               AND expires_at > $2 RETURNING provider, workspace, external_id, handle",
        )
        .bind(token_hash(&code))
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| {
            StoreError::NotFound(
                "that link code is unknown, used or expired; ask for a new one with `/airlock link`"
                    .into(),
            )
        })?;
        Ok(PendingLink {
            provider: parse_col(row.try_get("provider")?)?,
            workspace: row.try_get("workspace")?,
            external_id: row.try_get("external_id")?,
            handle: row.try_get("handle")?,
        })
    }

    /// Records (or replaces) a GitHub App installation and the repositories it reaches.
    pub async fn set_github_installation(
        &self,
        id: u64,
        account: &str,
        repos: &[String],
    ) -> Result<()> {
        let repos = serde_json::to_string(repos).expect("strings serialise");
        sqlx::query(
            "INSERT INTO github_installations (id, account, repos, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET account = $2, repos = $3, updated_at = $4",
        )
        .bind(id as i64)
        .bind(account)
        .bind(repos)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn delete_github_installation(&self, id: u64) -> Result<()> {
        sqlx::query("DELETE FROM github_installations WHERE id = $1")
            .bind(id as i64)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Installations: id, account, repositories.
    pub async fn github_installations(&self) -> Result<Vec<(u64, String, Vec<String>)>> {
        let rows = sqlx::query("SELECT id, account, repos FROM github_installations ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get("id")?;
                let repos: String = r.try_get("repos")?;
                Ok((
                    id as u64,
                    r.try_get("account")?,
                    serde_json::from_str(&repos).unwrap_or_default(),
                ))
            })
            .collect()
    }
}

/// A channel's defaults for requests that name no repository or profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChannelSettings {
    pub repo: Option<String>,
    pub profile: Option<String>,
}

impl Store {
    pub async fn channel_settings(
        &self,
        surface: &str,
        workspace: &str,
        channel: &str,
    ) -> Result<ChannelSettings> {
        let row = sqlx::query(
            "SELECT repo, profile FROM channel_settings \
             WHERE surface = $1 AND workspace = $2 AND channel = $3",
        )
        .bind(surface)
        .bind(workspace)
        .bind(channel)
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            Some(r) => ChannelSettings {
                repo: r.try_get("repo")?,
                profile: r.try_get("profile")?,
            },
            None => ChannelSettings::default(),
        })
    }

    /// Sets a channel's defaults; a value left out keeps the one set before.
    pub async fn set_channel_settings(
        &self,
        surface: &str,
        workspace: &str,
        channel: &str,
        settings: &ChannelSettings,
        by: &str,
    ) -> Result<ChannelSettings> {
        let old = self.channel_settings(surface, workspace, channel).await?;
        let new = ChannelSettings {
            repo: settings.repo.clone().or(old.repo),
            profile: settings.profile.clone().or(old.profile),
        };
        sqlx::query(
            "INSERT INTO channel_settings (surface, workspace, channel, repo, profile, updated_by, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (surface, workspace, channel) DO UPDATE SET repo = $4, profile = $5, \
               updated_by = $6, updated_at = $7",
        )
        .bind(surface)
        .bind(workspace)
        .bind(channel)
        .bind(&new.repo)
        .bind(&new.profile)
        .bind(by)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(new)
    }
}
