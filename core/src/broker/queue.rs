//! The queue: claiming sessions within the concurrency limits, and taking back this server's
//! live sessions after a restart.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::domain::SessionState;
use crate::ids::now_ms;
use crate::store::settle;

impl Broker {
    /// Takes back live sessions after a restart: re-attaches to sandboxes that still run and
    /// ends the others with the reason. Removes containers nothing needs.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let orphaned = self.store.orphaned_sessions(&self.owner).await?;
        let mut mine = Vec::new();
        for (session, sandbox) in orphaned {
            if self
                .store
                .lease_session(&session, &self.owner, now_ms() + LEASE_MS)
                .await?
            {
                mine.push((session, sandbox));
            }
        }
        let found = self.sandboxes.reconcile(&mine).await?;
        // A session whose agent had not started yet lost nothing: it goes back to the queue.
        let requeue = "the server restarted before the session's agent started; queued again";
        for (session, why) in found.vanished {
            let state = self.store.session(&session).await?.state;
            if state == SessionState::Starting {
                tracing::info!(%session, "{requeue}");
                settle("a session queued again after a restart", || {
                    self.store
                        .transition(&session, SessionState::Queued, Some(requeue))
                })
                .await;
                continue;
            }
            tracing::warn!(%session, "{why}");
            settle("a session whose sandbox vanished, failed", || {
                self.store
                    .transition(&session, SessionState::Failed, Some(&why))
            })
            .await;
        }
        for (session, sandbox) in found.alive {
            let sb = self.store.sandbox(&sandbox).await?;
            let s = self.store.session(&session).await?;
            match (s.state, sb.agent_exec) {
                (SessionState::Running, Some(exec)) => {
                    tracing::info!(%session, %sandbox, "re-attaching to a running session");
                    self.note(
                        &session,
                        "the server restarted; re-attached to the running sandbox",
                    )
                    .await;
                    let stream = self.sandboxes.hub.attach(&sandbox, exec as u64);
                    self.spawn(session, Some((sb, stream)));
                }
                (SessionState::Starting, _) => {
                    self.sandboxes.release(&sb, requeue).await;
                    settle("a session queued again after a restart", || {
                        self.store
                            .transition(&session, SessionState::Queued, Some(requeue))
                    })
                    .await;
                }
                (state, _) => {
                    let why = format!(
                        "the server stopped while the session was {}; ask again to retry",
                        match state {
                            SessionState::Finishing => "pushing its changes",
                            _ => "between steps",
                        }
                    );
                    self.sandboxes.release(&sb, &why).await;
                    settle("a session stopped by a restart, failed", || {
                        self.store
                            .transition(&session, SessionState::Failed, Some(&why))
                    })
                    .await;
                }
            }
        }
        if !found.removed.is_empty() {
            tracing::info!(
                count = found.removed.len(),
                "removed sandboxes nothing needed"
            );
        }
        Ok(())
    }

    /// Claims and runs queued sessions until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // The queue wakes the broker when it changes (core/store/src/store/queue.rs); the poll is
        // only the fallback.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let watcher = tokio::spawn(self.store.clone().watch_queue());
        let mut warm = tokio::time::interval(Duration::from_secs(5));
        let hour = Duration::from_secs(3600);
        let mut prune = tokio::time::interval_at(tokio::time::Instant::now() + hour, hour);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = prune.tick() => {
                    // Outdated profile snapshots, and session snapshots older than a week.
                    match self.sandboxes.prune(2, 7 * 24 * 3600 * 1000).await {
                        Ok(gone) if !gone.is_empty() => tracing::info!(count = gone.len(), "pruned snapshots"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("cannot prune snapshots: {e}"),
                    }
                    continue;
                }
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = self.store.queue_changed() => {}
                _ = warm.tick() => {
                    if let Err(e) = self.sandboxes.fill_warm_pools().await {
                        tracing::warn!("warm pools: {e}");
                    }
                    continue;
                }
            }
            self.tasks().retain(|_, t| !t.is_finished());
            loop {
                match self
                    .store
                    .claim_next_session(
                        &self.owner,
                        now_ms() + LEASE_MS,
                        self.settings.max_sessions,
                        self.settings.max_sessions_per_human,
                    )
                    .await
                {
                    Ok(Some(s)) => self.spawn(s.id, None),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("cannot read the queue: {e}");
                        break;
                    }
                }
            }
        }
        watcher.abort();
    }
}
