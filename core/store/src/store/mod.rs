//! Storage: every table Airlock keeps, on SQLite (the default) or PostgreSQL, with the same
//! behaviour on both.
//!
//! Queries go through sqlx's `Any` driver with `$N` placeholders, which both engines accept;
//! the few statements that must differ (queue claims) branch on [`DatabaseKind`]. Each
//! aggregate keeps all of its SQL in one module. Integers are stored as BIGINT, times as
//! milliseconds since the epoch, structured values as JSON text.
//!
//! Credential values only enter and leave through `credentials.rs`, sealed under the master
//! key; no error or log line built here contains one.

mod audit;
mod credentials;
mod deliveries;
mod events;
mod gateway;
mod humans;
mod inbound;
mod overview;
mod profiles;
mod queue;
mod repos;
mod sandboxes;
mod sessions;
mod settle;
mod triggers;
mod web;

use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::{AnyPool, Executor};

pub use audit::{
    AuditEntry, AuditSearch, AuditVerdict, NewAudit, AUDIT_SEARCH_WINDOW, GENESIS_HASH,
};
pub use credentials::CredentialInfo;
pub use deliveries::{Delivery, NewDelivery};
pub use events::EVENT_PAGE;
pub use gateway::{GatewayCa, NewUsage, RevealedCredential, UsageTotal};
pub use humans::AccountRef;
pub use inbound::{ChannelSettings, Inbound, PendingLink, Pruned, LINK_CODE_TTL_MS};
pub use overview::{DayCount, Traffic, UsageRow};
pub use profiles::{ApplyOutcome, Profile, ProfileVersion};
pub use repos::{check_remote_url, Repo, RepoLocation};
pub use sandboxes::{
    token_hash, NewSandbox, NewSnapshot, Sandbox, Snapshot, TokenBinding, TokenKind,
    BOOTSTRAP_TTL_MS,
};
pub use sessions::{NewSession, Session, SessionAudit, SessionEvent, SessionFilter};
pub use settle::settle;
pub use triggers::{NewTrigger, Trigger};
pub use web::{WebSession, WEB_SESSION_MS};

pub use crate::config::DatabaseKind;
use crate::secrets::{MasterKey, SecretError};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database has no Airlock tables yet; run `airlock migrate` (or `airlock up`, which migrates)")]
    NotMigrated,
    #[error(
        "the master key ({configured}) is not the one this database was set up with ({stored}); configure the original key (secrets.master_key or the key file)"
    )]
    WrongMasterKey { configured: String, stored: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A person's session exists in this thread already (another request made it first).
    #[error("the conversation `{0}` has a session already")]
    ThreadTaken(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// Maps a unique-constraint violation to a [`StoreError::Conflict`] with `message`.
    pub(crate) fn conflict_or(e: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(message()),
            _ => StoreError::Db(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle on the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    kind: DatabaseKind,
    key: Arc<MasterKey>,
    /// The URL as connected (for connections of their own: the queue watcher).
    url: Arc<str>,
    queue: Arc<queue::QueueSignal>,
    /// SQLite's writer of inbound records, started on first use ([`inbound::InboundBatch`]).
    inbound_batch: Arc<std::sync::OnceLock<inbound::InboundBatch>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("kind", &self.kind)
            .field("key", &self.key)
            .finish()
    }
}

/// SQLite's write-ahead log is copied back into the database by this task, every
/// [`CHECKPOINT_EVERY`], in passive mode (it never blocks a writer or a reader), instead of
/// by the commit that happens to fill the log. Ends when the store's pool is closed (or its
/// runtime ends). When the last connection to a database closes, SQLite checkpoints it
/// anyway.
async fn checkpoints(pool: AnyPool) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::debug!(
                "a checkpoint of the SQLite log failed (the next one tries again): {e}"
            );
        }
    }
}

/// How often [`checkpoints`] runs.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// How many migrations the schema has on this engine.
pub fn migration_count(kind: DatabaseKind) -> usize {
    match kind {
        DatabaseKind::Sqlite => SQLITE_MIGRATIONS.iter().count(),
        DatabaseKind::Postgres => POSTGRES_MIGRATIONS.iter().count(),
    }
}

/// A database URL with any password replaced by `***`, safe to show.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

impl Store {
    /// Opens a connection pool. SQLite files (and their directory) are created when missing.
    /// Does not migrate; see [`Store::migrate`].
    pub async fn connect(url: &str, max_connections: u32, key: MasterKey) -> Result<Store> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let shown = redact_url(url);
        let connect_err = |reason: String| StoreError::Connect {
            url: shown.clone(),
            reason,
        };
        let kind = DatabaseKind::of_url(url)
            .ok_or_else(|| connect_err("expected sqlite://PATH or postgres://...".into()))?;
        let mut url = url.to_string();
        if kind == DatabaseKind::Sqlite {
            let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
            let path = path.split('?').next().unwrap_or(path);
            if path != ":memory:" {
                if let Some(dir) = std::path::Path::new(path).parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            connect_err(format!("cannot create {}: {e}", dir.display()))
                        })?;
                    }
                }
            }
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
        }
        let options: AnyConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| connect_err(first_line(&e.to_string())))?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if kind == DatabaseKind::Sqlite {
                        // WAL lets readers run beside the one writer; the busy timeout makes
                        // concurrent writers wait their turn instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        // Checkpoints run beside the writers ([`checkpoints`]), not inside
                        // whichever commit fills the log: that commit used to wait for it.
                        conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| connect_err(first_line(&e.to_string())))?;
        if kind == DatabaseKind::Sqlite {
            tokio::spawn(checkpoints(pool.clone()));
        }
        Ok(Store {
            pool,
            kind,
            key: Arc::new(key),
            url: url.into(),
            queue: Arc::default(),
            inbound_batch: Arc::default(),
        })
    }

    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) fn key(&self) -> &MasterKey {
        &self.key
    }

    fn migrator(&self) -> &'static Migrator {
        match self.kind {
            DatabaseKind::Sqlite => &SQLITE_MIGRATIONS,
            DatabaseKind::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies pending migrations, then records or checks the master key's id.
    pub async fn migrate(&self) -> Result<()> {
        self.migrator().run(&self.pool).await?;
        self.check_master_key().await
    }

    /// Descriptions of migrations not yet applied.
    pub async fn pending_migrations(&self) -> Result<Vec<String>> {
        let mut conn = self.pool.acquire().await?;
        conn.ensure_migrations_table().await?;
        let applied = conn.list_applied_migrations().await?;
        Ok(self
            .migrator()
            .iter()
            .filter(|m| !applied.iter().any(|a| a.version == m.version))
            .map(|m| format!("{} {}", m.version, m.description))
            .collect())
    }

    /// The database remembers the id of the master key it was set up with, so a changed or
    /// lost key is reported at start-up rather than on first use of a credential.
    /// The id of the master key this database was set up with (`None` before its first use,
    /// or before it is migrated).
    pub async fn master_key_id(&self) -> Result<Option<String>> {
        match sqlx::query_scalar("SELECT value FROM meta WHERE key = 'master_key_id'")
            .fetch_optional(&self.pool)
            .await
        {
            Ok(id) => Ok(id),
            Err(sqlx::Error::Database(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn check_master_key(&self) -> Result<()> {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'master_key_id'")
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(_) => StoreError::NotMigrated,
                    _ => StoreError::Db(e),
                })?;
        match stored {
            Some(id) if id == self.key.id() => Ok(()),
            Some(id) => Err(StoreError::WrongMasterKey {
                configured: self.key.id().to_string(),
                stored: id,
            }),
            None => {
                sqlx::query("INSERT INTO meta (key, value) VALUES ('master_key_id', $1)")
                    .bind(self.key.id())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    }

    /// A trivial round trip, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Reads an enum stored as text; a bad value is reported, never defaulted.
/// A typed id read from a column.
pub(crate) fn id_col<T: crate::ids::TypedId>(row: &sqlx::any::AnyRow, col: &str) -> Result<T> {
    use sqlx::Row;
    Ok(T::from_stored_text(row.try_get::<String, _>(col)?))
}

/// A typed id read from a column that may be null.
pub(crate) fn opt_id_col<T: crate::ids::TypedId>(
    row: &sqlx::any::AnyRow,
    col: &str,
) -> Result<Option<T>> {
    use sqlx::Row;
    Ok(row
        .try_get::<Option<String>, _>(col)?
        .map(T::from_stored_text))
}

pub(crate) fn parse_col<T: std::str::FromStr<Err = String>>(value: String) -> Result<T> {
    value
        .parse()
        .map_err(|e| StoreError::Invalid(format!("stored value is invalid: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted_from_database_urls() {
        assert_eq!(
            super::redact_url("postgres://airlock:s3cret@db:5432/airlock"),
            "postgres://airlock:***@db:5432/airlock"
        );
        assert_eq!(
            super::redact_url("sqlite://./var/airlock.db"),
            "sqlite://./var/airlock.db"
        );
    }
}
