//! The broker on the in-memory fake runtime (`sandbox::fake`): the real store (SQLite), the
//! real sandbox endpoint and hub, the real session service, and sandboxes that are tasks
//! speaking sandboxd's protocol over loopback. No Docker: each test takes seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::broker::{Broker, BrokerSettings};
use airlock_core::domain::{EventKind, Human, ProfileSpec, Role, SessionState, Surface};
use airlock_core::ids::SessionId;
use airlock_core::secrets::MasterKey;
use airlock_core::service::{Actor, Request, Requested, Sessions};
use airlock_core::store::Session;
use airlock_core::Store;
use airlock_sandbox::fake::{FakeExec, FakeProcess, FakeRuntime};
use airlock_sandbox::{Hub, Runtime, SandboxSettings, Sandboxes};

struct Stack {
    store: Store,
    runtime: FakeRuntime,
    sessions: Sessions,
    broker: Arc<Broker>,
    ada: Human,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// The profile every test uses: a `command` agent, so the fake decides what it prints.
const PROFILE: &str = "name = \"fake\"\n[agent]\nkind = \"command\"\ncommand = \"run-the-agent\"\n";

async fn stack(
    script: impl Fn(&FakeExec) -> FakeProcess + Send + Sync + 'static,
    settings: BrokerSettings,
) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = MasterKey::load_or_create(&dir.path().join("key")).unwrap();
    let url = format!("sqlite://{}", dir.path().join("airlock.db").display());
    let store = Store::connect(&url, 8, key).await.unwrap();
    store.migrate().await.unwrap();
    store
        .apply_profile(&ProfileSpec::from_toml(PROFILE).unwrap(), None)
        .await
        .unwrap();
    let ada = store
        .add_human("Ada", "ada@example.com", Role::Member)
        .await
        .unwrap();

    let hub = Hub::new(store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(hub.clone().serve_endpoint(
        listener,
        airlock_sandbox::fake::ENDPOINT_LIMITS,
        std::future::pending(),
    ));
    let runtime = FakeRuntime::new(script);
    let dyn_runtime: Arc<dyn Runtime> = Arc::new(runtime.clone());
    let sandboxes = Arc::new(Sandboxes {
        store: store.clone(),
        runtime: dyn_runtime,
        hub,
        settings: SandboxSettings {
            endpoint: format!("ws://127.0.0.1:{port}"),
            gateway: None,
            sandboxd: "/nonexistent/sandboxd".into(),
            ca_cert: None,
            base_image: "airlock/base:fake".into(),
            connect_timeout: Duration::from_secs(10),
            owner: "srv_test".into(),
        },
    });
    let broker = Broker::new(store.clone(), sandboxes, "srv_test".into(), settings);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(broker.clone().run(async {
        let _ = rx.await;
    }));
    Stack {
        sessions: Sessions::new(store.clone(), None),
        store,
        runtime,
        broker,
        ada,
        stop: Some(tx),
        _dir: dir,
    }
}

impl Stack {
    fn actor(&self) -> Actor {
        Actor::human(self.ada.clone(), Surface::Cli, "Ada")
    }

    async fn request(&self, prompt: &str) -> Session {
        let req = Request {
            repo: "acme/web".into(),
            profile: None,
            prompt: prompt.into(),
            thread: None,
            reference: Default::default(),
        };
        let s = match self.sessions.request(&self.actor(), req).await.unwrap() {
            Requested::Started(s) => s,
            other => panic!("expected a new session, got {other:?}"),
        };
        self.broker.wake();
        s
    }

    /// Polls the stored session until `done` holds (20 s at most).
    async fn wait(&self, id: &SessionId, what: &str, done: impl Fn(&Session) -> bool) -> Session {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.store.session(id).await.unwrap();
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < until,
                "session {id} never {what}: it is {} ({:?})",
                s.state,
                s.reason
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn ended(&self, id: &SessionId) -> Session {
        self.wait(id, "ended", |s| s.state.is_terminal()).await
    }

    /// Everything the session's command printed, in stored order.
    async fn output(&self, id: &SessionId) -> String {
        let mut text = String::new();
        let mut after = 0;
        loop {
            let page = self.store.events(id, after, 1000).await.unwrap();
            let Some(last) = page.last() else {
                return text;
            };
            after = last.seq;
            for e in page.iter().filter(|e| e.kind == EventKind::CommandOutput) {
                text.push_str(e.payload["text"].as_str().unwrap_or_default());
            }
        }
    }

    async fn notes(&self, id: &SessionId) -> String {
        let events = self.store.events(id, 0, 1000).await.unwrap();
        events
            .iter()
            .filter(|e| e.kind == EventKind::Note)
            .map(|e| e.payload["text"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits (up to 10 s) until the session's notes say `text`.
    async fn wait_note(&self, id: &SessionId, text: &str) {
        let until = Instant::now() + Duration::from_secs(10);
        while !self.notes(id).await.contains(text) {
            assert!(
                Instant::now() < until,
                "no note {text:?}: {}",
                self.notes(id).await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (up to 10 s) until the runtime was asked `n` times to do `what` (`create`, ...).
    async fn wait_calls(&self, what: &str, n: usize) {
        let prefix = format!("{what} ");
        let until = Instant::now() + Duration::from_secs(10);
        while self
            .runtime
            .calls()
            .iter()
            .filter(|c| c.starts_with(&prefix))
            .count()
            < n
        {
            assert!(Instant::now() < until, "{:?}", self.runtime.calls());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.broker.abort_all();
    }
}

fn is_agent(e: &FakeExec) -> bool {
    e.argv.last().map(String::as_str) == Some("run-the-agent")
}

/// A script whose agent prints `line` and then works for `secs`; every other command passes.
fn busy_agent(line: &'static str, secs: u64) -> impl Fn(&FakeExec) -> FakeProcess {
    move |e| {
        if is_agent(e) {
            FakeProcess::default()
                .stdout(line)
                .sleep(Duration::from_secs(secs))
        } else {
            FakeProcess::exits(0)
        }
    }
}

#[tokio::test]
async fn a_session_runs_its_agent_in_a_bound_sandbox_stores_its_output_and_removes_the_sandbox() {
    let stack = stack(
        |e| match e.env.get("AIRLOCK_PROMPT").map(String::as_str) {
            Some("pass") => FakeProcess::default()
                .stdout("building…\n")
                .stderr("a warning\n")
                .stdout("all 12 tests passed\n")
                .exit(0),
            _ => FakeProcess::default().stdout("2 tests failed\n").exit(3),
        },
        BrokerSettings::local(),
    )
    .await;
    let good = stack.request("pass").await;
    let bad = stack.request("fail").await;

    let good = stack.ended(&good.id).await;
    assert_eq!(good.state, SessionState::Succeeded, "{:?}", good.reason);
    let out = stack.output(&good.id).await;
    assert!(
        out.contains("building…")
            && out.contains("all 12 tests passed")
            && out.contains("a warning"),
        "{out}"
    );
    let bad = stack.ended(&bad.id).await;
    assert_eq!(bad.state, SessionState::Failed);
    assert_eq!(
        bad.reason.as_deref(),
        Some("the agent's command exited with status 3")
    );

    // Each agent ran once, durable, in the workspace, with the prompt, in a sandbox that
    // was bound to its session first; and both sandboxes are gone.
    let agents: Vec<FakeExec> = stack.runtime.execs().into_iter().filter(is_agent).collect();
    assert_eq!(agents.len(), 2, "{agents:?}");
    for a in &agents {
        assert!(a.durable);
        assert_eq!(a.cwd.as_deref(), Some("/workspace"));
        assert!(
            a.bound_env.is_some(),
            "the agent ran before its sandbox was bound"
        );
    }
    let sandbox = stack
        .runtime
        .sandbox_of(&good.id)
        .expect("a sandbox for the session");
    let calls = stack.runtime.calls();
    let created = calls.iter().position(|c| *c == format!("create {sandbox}"));
    let removed = calls.iter().position(|c| *c == format!("remove {sandbox}"));
    assert!(
        matches!((created, removed), (Some(c), Some(r)) if c < r),
        "{calls:?}"
    );
    assert_eq!(stack.runtime.running(), 0, "{calls:?}");
    // No credential or token is in what the runtime was given to create a sandbox, except
    // the one-time bootstrap token, which is in `boot` (a file only sandboxd reads).
    for spec in stack.runtime.specs() {
        let labels = format!("{:?}", spec.labels);
        assert!(!labels.contains("alk_"), "{labels}");
        assert!(spec
            .boot
            .as_ref()
            .is_some_and(|b| b.token.starts_with("alk_boot_")));
    }
}

#[tokio::test]
async fn stopping_a_running_session_cancels_its_agent_removes_its_sandbox_and_is_audited() {
    let stack = stack(busy_agent("working\n", 600), BrokerSettings::local()).await;
    let s = stack.request("take your time").await;
    stack
        .wait(&s.id, "printed", |s| s.state == SessionState::Running)
        .await;
    let until = Instant::now() + Duration::from_secs(10);
    while !stack.output(&s.id).await.contains("working") {
        assert!(Instant::now() < until, "the agent's output never arrived");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stack
        .sessions
        .stop(&stack.actor(), &s.id, None)
        .await
        .unwrap();
    let ended = stack.ended(&s.id).await;
    assert_eq!(ended.state, SessionState::Cancelled);
    let until = Instant::now() + Duration::from_secs(10);
    while stack.runtime.running() > 0 {
        assert!(
            Instant::now() < until,
            "the sandbox still runs: {:?}",
            stack.runtime.calls()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let audit = stack.store.audit_for_session(&s.id, 100).await.unwrap();
    let stops: Vec<_> = audit
        .iter()
        .filter(|a| a.action == "session.cancel")
        .collect();
    assert_eq!(stops.len(), 1, "{audit:?}");
    assert_eq!(stops[0].actor, format!("human:{}", stack.ada.id));
}

#[tokio::test]
async fn no_more_sandboxes_run_at_once_than_max_sessions_and_every_queued_session_runs() {
    let settings = BrokerSettings {
        max_sessions: 2,
        max_sessions_per_human: 2,
        ..BrokerSettings::local()
    };
    let stack = stack(
        |_| {
            FakeProcess::default()
                .sleep(Duration::from_millis(300))
                .stdout("done\n")
                .exit(0)
        },
        settings,
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(stack.request(&format!("job {n}")).await.id);
    }
    for id in &ids {
        let s = stack.ended(id).await;
        assert_eq!(s.state, SessionState::Succeeded, "{id}: {:?}", s.reason);
    }
    let peak = stack.runtime.peak_running();
    assert!((1..=2).contains(&peak), "{peak} sandboxes ran at once");
}

#[tokio::test]
async fn a_session_waits_for_a_sandbox_address_and_starts_when_one_is_free() {
    let stack = stack(
        |_| FakeProcess::default().stdout("ran\n").exit(0),
        BrokerSettings::local(),
    )
    .await;
    stack.runtime.set_addresses(Some(0));
    let s = stack.request("wait for room").await;
    // It says why it waits, and keeps waiting (no failure) while the network is full.
    stack
        .wait_note(&s.id, "Waiting for a sandbox address")
        .await;
    stack.wait_calls("start", 2).await;
    assert_eq!(
        stack.store.session(&s.id).await.unwrap().state,
        SessionState::Starting
    );
    stack.runtime.set_addresses(None);
    let s = stack.ended(&s.id).await;
    assert_eq!(s.state, SessionState::Succeeded, "{:?}", s.reason);
    assert!(stack.output(&s.id).await.contains("ran"));
}

#[tokio::test]
async fn a_session_waits_while_the_engine_does_not_answer_and_starts_when_it_does() {
    let stack = stack(
        |_| FakeProcess::default().stdout("ran\n").exit(0),
        BrokerSettings::local(),
    )
    .await;
    stack.runtime.set_engine_down(true);
    let s = stack.request("wait for the engine").await;
    // It says why it waits, asks again, and does not fail while the engine is away.
    stack
        .wait_note(
            &s.id,
            "Waiting for the Docker engine: the fake engine does not answer",
        )
        .await;
    stack.wait_calls("create", 2).await;
    assert_eq!(
        stack.store.session(&s.id).await.unwrap().state,
        SessionState::Starting
    );
    assert_eq!(stack.runtime.running(), 0);
    stack.runtime.set_engine_down(false);
    let s = stack.ended(&s.id).await;
    assert_eq!(s.state, SessionState::Succeeded, "{:?}", s.reason);
    assert!(stack.output(&s.id).await.contains("ran"));
    // The note is given once, not at every try.
    assert_eq!(
        stack
            .notes(&s.id)
            .await
            .matches("Waiting for the Docker engine")
            .count(),
        1
    );
}

#[tokio::test]
async fn an_engine_that_goes_away_under_a_running_session_ends_it_with_the_reason() {
    let stack = stack(busy_agent("started\n", 60), BrokerSettings::local()).await;
    let s = stack.request("run while dockerd restarts").await;
    let s = stack
        .wait(&s.id, "ran", |s| s.state == SessionState::Running)
        .await;
    // dockerd stops: its containers die with it and it does not answer for a while.
    let sandbox = stack.runtime.sandbox_of(&s.id).unwrap();
    stack.runtime.kill(&sandbox, 137);
    stack.runtime.set_engine_down(true);
    let s = stack.ended(&s.id).await;
    assert_eq!(s.state, SessionState::Failed);
    let reason = s.reason.unwrap_or_default();
    assert!(
        reason.contains("the fake engine does not answer"),
        "{reason}"
    );
    // The next session waits for the engine rather than failing, and runs once it is back;
    // the dead sandbox is removed then.
    let next = stack.request("after the restart").await;
    stack
        .wait_note(&next.id, "Waiting for the Docker engine")
        .await;
    stack.runtime.set_engine_down(false);
    let next = stack
        .wait(&next.id, "runs", |s| s.state == SessionState::Running)
        .await;
    assert_eq!(next.state, SessionState::Running);
    let until = Instant::now() + Duration::from_secs(20);
    while stack
        .runtime
        .calls()
        .iter()
        .all(|c| c != &format!("remove {sandbox}"))
    {
        assert!(Instant::now() < until, "{:?}", stack.runtime.calls());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_sandbox_that_dies_ends_its_session_with_the_reason() {
    let stack = stack(
        |e| {
            if is_agent(e) {
                FakeProcess::default().stdout("started\n")
            } else {
                FakeProcess::exits(0)
            }
        },
        BrokerSettings::local(),
    )
    .await;
    let s = stack.request("die").await;
    let s = stack
        .wait(&s.id, "ran", |s| s.state == SessionState::Running)
        .await;
    stack
        .runtime
        .kill(&stack.runtime.sandbox_of(&s.id).unwrap(), 137);
    let s = stack.ended(&s.id).await;
    assert_eq!(s.state, SessionState::Failed);
    assert_eq!(
        s.reason.as_deref(),
        Some("its sandbox stopped unexpectedly (exit code 137)")
    );
}

#[tokio::test]
async fn output_arrives_once_and_in_order_however_often_the_sandbox_connection_drops() {
    const LINES: usize = 400;
    let stack = stack(
        |_| {
            let mut p = FakeProcess::default();
            for n in 0..LINES {
                p = p.stdout(format!("line {n}\n"));
                if n % 20 == 0 {
                    p = p.sleep(Duration::from_millis(15));
                }
            }
            p.exit(0)
        },
        BrokerSettings::local(),
    )
    .await;
    let s = stack.request("talk a lot").await;
    let s = stack
        .wait(&s.id, "ran", |s| s.state == SessionState::Running)
        .await;
    let sandbox = stack.runtime.sandbox_of(&s.id).unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        stack.runtime.drop_connection(&sandbox);
    }
    let s = stack.ended(&s.id).await;
    assert_eq!(s.state, SessionState::Succeeded, "{:?}", s.reason);
    let want: String = (0..LINES).map(|n| format!("line {n}\n")).collect();
    let got = stack.output(&s.id).await;
    assert!(
        got == want,
        "output differs: {} bytes, want {}",
        got.len(),
        want.len()
    );
}
