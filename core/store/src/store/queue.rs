//! Waking the broker when the queue changes: a new or follow-up session is claimed at once
//! instead of at the next poll.
//!
//! In this process, every store method that queues a session signals [`QueueSignal`]. From
//! other processes (`airlock run` writes the database directly; other servers share a
//! PostgreSQL): on PostgreSQL, `NOTIFY airlock_queue` and a `LISTEN`ing connection; on
//! SQLite, a connection that watches `PRAGMA data_version` (it changes whenever another
//! connection commits), which costs one pragma per interval and reads no table. The broker
//! still polls, slowly, as the fallback.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use tokio::sync::Notify;

use super::{DatabaseKind, Store};

/// How often the SQLite watcher looks at `data_version` (a request from another process, such
/// as `airlock run`, waits half of it on average). An idle release `airlock up` used 1.9% of a
/// core at 5 ms, 0.8% at 10 ms (docs/notes/session-6.md).
const SQLITE_WATCH: Duration = Duration::from_millis(10);
const CHANNEL: &str = "airlock_queue";

#[derive(Default)]
pub(crate) struct QueueSignal {
    notify: Notify,
}

impl Store {
    /// Resolves once the queue may have changed since the last call (one permit is kept, so
    /// a change while nobody waited is not lost).
    pub async fn queue_changed(&self) {
        self.queue.notify.notified().await;
    }

    /// Says the queue changed: here, and to other processes on PostgreSQL.
    pub(crate) async fn signal_queue(&self) {
        self.queue.notify.notify_one();
        if self.kind == DatabaseKind::Postgres {
            let sql = format!("SELECT pg_notify('{CHANNEL}', '')");
            if let Err(e) = sqlx::query(&sql).execute(self.pool()).await {
                tracing::debug!("cannot notify other servers of the queue: {e}");
            }
        }
    }

    /// Watches for queue changes made by other processes until the store is dropped;
    /// reconnects after errors. Run it once per process, beside the broker.
    pub async fn watch_queue(self) {
        loop {
            let result = match self.kind {
                DatabaseKind::Postgres => self.listen_postgres().await,
                DatabaseKind::Sqlite => self.watch_sqlite().await,
            };
            if let Err(e) = result {
                tracing::debug!("queue watcher: {e}; retrying");
            }
            if Arc::strong_count(&self.queue) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn listen_postgres(&self) -> Result<(), sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(CHANNEL).await?;
        loop {
            listener.recv().await?;
            self.queue.notify.notify_one();
        }
    }

    async fn watch_sqlite(&self) -> Result<(), sqlx::Error> {
        let mut conn = sqlx::SqliteConnection::connect(&self.url).await?;
        let mut last: Option<i64> = None;
        loop {
            let (v,): (i64,) = sqlx::query_as("PRAGMA data_version")
                .fetch_one(&mut conn)
                .await?;
            if last.is_some_and(|l| l != v) {
                self.queue.notify.notify_one();
            }
            last = Some(v);
            if Arc::strong_count(&self.queue) == 1 {
                return Ok(());
            }
            tokio::time::sleep(SQLITE_WATCH).await;
        }
    }
}
