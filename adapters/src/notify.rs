//! The sender of the outbox: keeps each session's status message in its thread up to date.
//!
//! A session's events enqueue a `status` delivery in the same transaction (see the store);
//! this loop claims due deliveries with a lease, renders the session's status as it is now,
//! and creates or edits the one status message of the current turn. Updates to one thread
//! are spaced out (coalesced: one delivery covers every event before it), a surface's
//! `Retry-After` is honoured, and failures are retried with backoff. A server that dies
//! mid-send leaves its lease to expire; the next sender sends the update.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_core::domain::{Surface, ThreadRef};
use airlock_core::github::GithubSource;
use airlock_core::store::Delivery;
use airlock_core::Store;

use crate::status::StatusView;

/// How long a claimed delivery is ours.
const LEASE_MS: i64 = 60_000;
/// Failed sends are retried this many times before the delivery is given up.
const MAX_ATTEMPTS: i64 = 12;

/// What became of one send.
pub enum Sent {
    Done,
    /// Try again after this long (rate limited, or too soon after the last update).
    Later(Duration),
    Retry(String),
    GiveUp(String),
}

/// A surface that shows a session's status in its thread.
#[async_trait::async_trait]
pub trait StatusSink: Send + Sync {
    /// Least time between two updates of one thread.
    fn spacing(&self) -> Duration;
    /// Creates or edits the status message for `view`; records the message it created in
    /// the session's thread reference.
    async fn send(
        &self,
        store: &Store,
        session: &airlock_core::store::Session,
        view: &StatusView,
    ) -> Sent;
}

pub struct Notifier {
    store: Store,
    owner: String,
    public_url: String,
    sinks: HashMap<Surface, Arc<dyn StatusSink>>,
    /// Per session: when its thread was last updated, and with what.
    last: Mutex<HashMap<String, (Instant, String)>>,
}

impl Notifier {
    pub fn new(store: Store, owner: String, public_url: String) -> Notifier {
        Notifier {
            store,
            owner,
            public_url,
            sinks: HashMap::new(),
            last: Mutex::new(HashMap::new()),
        }
    }

    pub fn with(mut self, surface: Surface, sink: Arc<dyn StatusSink>) -> Notifier {
        self.sinks.insert(surface, sink);
        self
    }

    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            let due = match self.store.claim_deliveries(&self.owner, 16, LEASE_MS).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("cannot read the outbox: {e}");
                    continue;
                }
            };
            let mut sends = Vec::new();
            for d in due {
                let me = self.clone();
                sends.push(tokio::spawn(async move { me.deliver(d).await }));
            }
            for s in sends {
                let _ = s.await;
            }
        }
    }

    #[tracing::instrument(name = "delivery", skip_all, fields(delivery = d.id, session = d.session_id.as_deref().unwrap_or("-"), surface = %d.surface))]
    async fn deliver(&self, d: Delivery) {
        let outcome = self.attempt(&d).await;
        let store = &self.store;
        let r = match outcome {
            Sent::Done => store.complete_delivery(d.id, &self.owner).await,
            Sent::Later(after) => {
                let until = airlock_core::ids::now_ms() + after.as_millis() as i64;
                store.defer_delivery(d.id, &self.owner, until).await
            }
            Sent::Retry(e) if d.attempts < MAX_ATTEMPTS => {
                let backoff = (1000i64 << d.attempts.clamp(0, 8)).min(120_000);
                tracing::warn!(delivery = d.id, session = ?d.session_id, "update failed, retrying: {e}");
                store
                    .fail_delivery(d.id, &self.owner, &e, Some(backoff))
                    .await
            }
            Sent::Retry(e) | Sent::GiveUp(e) => {
                tracing::warn!(delivery = d.id, session = ?d.session_id, "update given up: {e}");
                store.fail_delivery(d.id, &self.owner, &e, None).await
            }
        };
        if let Err(e) = r {
            tracing::warn!(delivery = d.id, "cannot record the delivery's outcome: {e}");
        }
    }

    async fn attempt(&self, d: &Delivery) -> Sent {
        let Some(sink) = self.sinks.get(&d.surface) else {
            return Sent::GiveUp(format!("{} is not configured", d.surface));
        };
        let Some(id) = &d.session_id else {
            return Sent::GiveUp("the delivery names no session".into());
        };
        let session = match self.store.session(id).await {
            Ok(s) => s,
            Err(e) => return Sent::Retry(e.to_string()),
        };
        let view = match StatusView::load(&self.store, &session, &self.public_url).await {
            Ok(v) => v,
            Err(e) => return Sent::Retry(e.to_string()),
        };
        let key = format!("{}:{}", session.id, session.thread_ref.to_json());
        let fingerprint = format!("{view:?}");
        if let Some((at, last)) = self.last.lock().expect("last").get(&key) {
            if *last == fingerprint {
                return Sent::Done;
            }
            let wait = sink.spacing().saturating_sub(at.elapsed());
            // The final update goes out at once; progress waits its turn.
            if !wait.is_zero() && !session.state.is_terminal() {
                return Sent::Later(wait);
            }
        }
        let sent = sink.send(&self.store, &session, &view).await;
        if matches!(sent, Sent::Done) {
            // The thread reference may have gained the status message's id.
            let key = match self.store.session(id).await {
                Ok(s) => format!("{}:{}", s.id, s.thread_ref.to_json()),
                Err(_) => key,
            };
            let mut last = self.last.lock().expect("last");
            if last.len() > 10_000 {
                last.clear();
            }
            last.insert(key, (Instant::now(), fingerprint));
        }
        sent
    }
}

/// GitHub: one status comment per turn, on the issue or pull request, edited in place.
pub struct GithubSink {
    pub source: Arc<GithubSource>,
}

#[async_trait::async_trait]
impl StatusSink for GithubSink {
    fn spacing(&self) -> Duration {
        Duration::from_millis(1500)
    }

    async fn send(
        &self,
        store: &Store,
        session: &airlock_core::store::Session,
        view: &StatusView,
    ) -> Sent {
        let ThreadRef::Github(t) = &session.thread_ref else {
            return Sent::GiveUp("the session's thread is not on GitHub".into());
        };
        let (repo, issue) = (t.repo.as_str(), t.issue);
        let gh = match self.source.get().await {
            Ok(g) => g,
            Err(e) => return Sent::Retry(e),
        };
        let body = view.github();
        let result = match t.status_comment {
            Some(id) => gh.edit_comment(repo, id, &body).await.map(|_| None),
            None => gh.comment(repo, issue, &body).await.map(|c| Some(c.id)),
        };
        match result {
            Ok(Some(id)) => {
                let mut t = t.clone();
                t.status_comment = Some(id);
                match store
                    .set_thread_ref(&session.id, &ThreadRef::Github(t))
                    .await
                {
                    Ok(()) => Sent::Done,
                    Err(e) => Sent::Retry(e.to_string()),
                }
            }
            Ok(None) => Sent::Done,
            Err(e) => match e.status() {
                Some(403) | Some(429) => Sent::Later(Duration::from_secs(60)),
                Some(404) | Some(410) | Some(422) => Sent::GiveUp(e.to_string()),
                _ => Sent::Retry(e.to_string()),
            },
        }
    }
}
