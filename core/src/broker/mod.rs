//! The broker: takes queued sessions, runs each in a sandbox, records what happens as session
//! events, and ends each with a state and a reason a person can act on.
//!
//! Sessions are claimed from the database queue within the concurrency limits (per
//! deployment and per human) and leased; a restarted server takes back its own live sessions
//! at once and re-attaches to their sandboxes, whose sandboxd replays output the server had
//! not stored. Each turn runs under a [`Plan`]: the repository is cloned through the gateway,
//! the agent works on the session's branch, and on success the broker commits (the
//! `Co-authored-by` and `Airlock-Session` trailers are added by a commit hook, also to the
//! agent's own commits), pushes, and opens a pull request naming the requester.
//!
//! No credential passes through here: git and model requests go through the gateway.
//!
//! The module is cut by job: [`queue`] claims sessions and takes them back after a restart,
//! [`turn`] runs one turn (a sandbox, the agent, the limits), [`git`] prepares the repository
//! and pushes what the agent changed (its scripts are `templates/scripts/*.sh`), and
//! [`output`] stores the agent's output within its bounds and acknowledges it to sandboxd.

mod git;
mod output;
mod queue;
mod turn;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::Notify;

use crate::domain::{EventKind, SessionState};
use crate::github::GithubSource;
use crate::ids::SessionId;
use crate::plan::PlanSettings;
use crate::store::{settle, Sandbox, Store};
use airlock_sandbox::{ExecStream, Sandboxes};

/// How long a lease lasts without renewal.
const LEASE_MS: i64 = 30_000;

/// What the broker needs besides the store and the sandboxes.
pub struct BrokerSettings {
    pub max_sessions: u32,
    pub max_sessions_per_human: u32,
    pub plan: PlanSettings,
    /// GitHub, when configured: pull requests are opened there.
    pub github: Option<Arc<GithubSource>>,
    /// Where people see a session (`<public_url>/sessions/<id>`).
    pub public_url: String,
    /// Where full output logs go (`<data_dir>/logs`), for profiles with `limits.output_log`.
    pub logs_dir: Option<std::path::PathBuf>,
}

impl BrokerSettings {
    /// No GitHub, default limits: sessions run without git (tests and `command` profiles).
    pub fn local() -> BrokerSettings {
        BrokerSettings {
            max_sessions: 4,
            max_sessions_per_human: 4,
            plan: PlanSettings {
                github: None,
                author_name: "Airlock".into(),
                author_email: "airlock@localhost".into(),
                local_git: None,
            },
            github: None,
            public_url: "http://127.0.0.1:8080".into(),
            logs_dir: None,
        }
    }
}

pub struct Broker {
    pub store: Store,
    pub sandboxes: Arc<Sandboxes>,
    /// This server's id (stable across restarts of the same installation).
    pub owner: String,
    settings: BrokerSettings,
    wake: Notify,
    running: Mutex<HashMap<SessionId, tokio::task::JoinHandle<()>>>,
}

/// How a run ended.
struct Outcome {
    state: SessionState,
    reason: String,
    keep_snapshot: bool,
    /// The agent's final answer (markdown), for the pull request and the thread.
    summary: Option<String>,
}

impl Outcome {
    fn failed(reason: impl Into<String>) -> Outcome {
        Outcome {
            state: SessionState::Failed,
            reason: reason.into(),
            keep_snapshot: false,
            summary: None,
        }
    }
}

/// How the agent's stdout is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// A `command` agent: its output is the record.
    Raw,
    /// `sandboxd agent`: one JSON event per line.
    Events,
}

impl Broker {
    pub fn new(
        store: Store,
        sandboxes: Arc<Sandboxes>,
        owner: String,
        settings: BrokerSettings,
    ) -> Arc<Broker> {
        Arc::new(Broker {
            store,
            sandboxes,
            owner,
            settings,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Tells the broker a session was queued (it also polls).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, tokio::task::JoinHandle<()>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(self: &Arc<Self>, session: SessionId, attach: Option<(Sandbox, ExecStream)>) {
        let me = self.clone();
        let id = session.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = me.drive(&id, attach).await {
                tracing::warn!(session = %id, "session failed: {e}");
                let why = format!("Airlock could not run the session: {e}");
                settle("a session that could not run, failed", || {
                    me.store.transition(&id, SessionState::Failed, Some(&why))
                })
                .await;
            }
        });
        self.tasks().insert(session, task);
    }

    async fn note(&self, session: &SessionId, text: impl Into<String>) {
        note(&self.store, session, text.into()).await
    }

    /// Asks every running session's task to stop (used in tests and on shutdown).
    pub fn abort_all(&self) {
        for (_, t) in self.tasks().drain() {
            t.abort();
        }
    }
}

async fn note(store: &Store, session: &SessionId, text: String) {
    let note = json!({ "text": text });
    settle("a note in the session's log", || {
        store.append_event(session, EventKind::Note, &note)
    })
    .await;
}
