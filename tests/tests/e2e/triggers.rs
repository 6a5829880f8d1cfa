//! Triggers: a signed webhook starts exactly one session with the rendered prompt, a bad
//! signature gets 401; a schedule fires in its minute under a controlled clock and not twice
//! after a restart (on both databases); GitHub events (an issue labeled, a pull request
//! opened) start sessions that report on the issue or pull request.

use std::time::Duration;

use airlock_adapters::triggers::Triggers;
use airlock_core::domain::{Role, TriggerKind};
use airlock_core::store::NewTrigger;
use airlock_tests::github::{event_fixture, fixture, sign_webhook};
use airlock_tests::model::Step;
use airlock_tests::stack::Stack;
use airlock_tests::{stdout, Engine};
use serde_json::json;

fn templates() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/prompts")
}

#[test]
fn the_shipped_prompt_templates_fill_from_real_github_payloads() {
    let read = |n: &str| std::fs::read_to_string(templates().join(n)).unwrap();
    let issue =
        airlock_adapters::triggers::render(&read("issue-labeled.md"), &fixture("issues.labeled"))
            .unwrap();
    assert!(
        issue.starts_with("Issue #1: Spelling error in the README file"),
        "{issue}"
    );
    assert!(issue.contains("labeled `bug` for Airlock"), "{issue}");
    let review = airlock_adapters::triggers::render(
        &read("review-pull-request.md"),
        &fixture("pull_request.opened"),
    )
    .unwrap();
    assert!(
        review.starts_with("Review pull request #2, \"Update the README with new information.\""),
        "{review}"
    );
    assert!(
        review.contains("(branch `changes` into\n`master`)"),
        "{review}"
    );
    let alert = airlock_adapters::triggers::render(
        &read("webhook-alert.md"),
        &json!({"alert": {"name": "disk full", "host": "db-1", "description": "95% used"}}),
    )
    .unwrap();
    assert!(
        alert.starts_with("An alert fired: **disk full** on `db-1`."),
        "{alert}"
    );
}

async fn stack(script: Vec<Step>) -> Stack {
    let mut stack = Stack::new(
        Engine::Sqlite,
        script,
        "acme/web",
        &[("calc.py", "x = 1\n")],
        |_| {},
    )
    .await;
    stack.profile("name = \"ops\"\n[agent]\nkind = \"command\"\ncommand = \"echo \\\"prompt: $AIRLOCK_PROMPT\\\"\"\n");
    let out = stack.install.run_with_stdin(
        &[
            "credential",
            "set",
            "hook-secret",
            "--kind",
            "webhook-secret",
        ],
        b"s3cret-hook-key",
    );
    assert!(out.status.success());
    stack.start();
    stack
}

/// Posts `body` to the trigger `id`, signed with `secret` for the time `ts`.
async fn post_hook(
    stack: &Stack,
    id: &str,
    body: &[u8],
    secret: &str,
    ts: i64,
    delivery: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut r = reqwest::Client::new()
        .post(format!("{}/hooks/{id}", stack.url()))
        .header("Content-Type", "application/json");
    for (k, v) in airlock_tests::sign_hook(secret, ts, body) {
        r = r.header(k, v);
    }
    if let Some(d) = delivery {
        r = r.header("X-Airlock-Delivery", d);
    }
    let r = r.body(body.to_vec()).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(json!(null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_starts_exactly_one_session_with_the_rendered_prompt() {
    let stack = stack(vec![]).await;
    let out = stack
        .airlock(&[
            "--json",
            "trigger",
            "add",
            "alert",
            "--kind",
            "webhook",
            "--profile",
            "ops",
            "--repo",
            "acme/web",
            "--secret-credential",
            "hook-secret",
            "--prompt",
            "Investigate {{ alert.name }} on {{ alert.host }}",
        ])
        .await;
    assert!(out.status.success(), "{}", airlock_tests::stderr(&out));
    let t: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = t["id"].as_str().unwrap();

    let body =
        serde_json::to_vec(&json!({"alert": {"name": "disk full", "host": "db-1"}})).unwrap();
    // A bad signature: 401 and nothing.
    let now = airlock_tests::unix_now();
    let d = Some("delivery-0");
    let (status, answer) = post_hook(&stack, id, &body, "wrong", now, d).await;
    assert_eq!(status, 401, "{answer}");
    // Signed as before (the body alone), with no timestamp: refused, saying how to sign.
    let r = reqwest::Client::new()
        .post(format!("{}/hooks/{id}", stack.url()))
        .header(
            "X-Airlock-Signature-256",
            sign_webhook("s3cret-hook-key", &body),
        )
        .header("X-Airlock-Delivery", "delivery-0")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let how = r.text().await.unwrap();
    assert!(how.contains("X-Airlock-Timestamp"), "{how}");
    // Rightly signed, but ten minutes ago (a captured request replayed): refused.
    let (status, _) = post_hook(&stack, id, &body, "s3cret-hook-key", now - 600, d).await;
    assert_eq!(status, 401);
    assert_eq!(
        stack
            .json(&["session", "list"])
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Signed: one session, with the prompt filled in, attributed to the trigger's owner.
    // Signed, but naming no delivery: refused (three such posts used to start three
    // sessions).
    let (status, answer) = post_hook(&stack, id, &body, "s3cret-hook-key", now, None).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("X-Airlock-Delivery"));
    let (status, answer) = post_hook(
        &stack,
        id,
        &body,
        "s3cret-hook-key",
        now,
        Some("delivery-1"),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let session = answer["session"].as_str().unwrap().to_string();
    // The same delivery again: recognised.
    let (status, answer) = post_hook(
        &stack,
        id,
        &body,
        "s3cret-hook-key",
        now,
        Some("delivery-1"),
    )
    .await;
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)));
    let list = stack
        .wait_sessions(60, "the session to end", |l| {
            l.iter().all(|s| s["state"] == "succeeded")
        })
        .await;
    assert_eq!(list.len(), 1);
    let shown = stack.json(&["session", "show", &session]).await;
    assert_eq!(shown["session"]["prompt"], "Investigate disk full on db-1");
    assert_eq!(shown["session"]["surface"], "trigger");
    assert_eq!(shown["session"]["trigger_id"], id);
    let humans = stack.json(&["human", "list"]).await;
    assert_eq!(shown["session"]["requester_id"], humans[0]["id"]);
    let output: String = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "command_output")
        .map(|e| e["payload"]["text"].as_str().unwrap())
        .collect();
    assert!(
        output.contains("prompt: Investigate disk full on db-1"),
        "{output}"
    );

    // A payload the template cannot fill: a clear error, no session.
    let other = serde_json::to_vec(&json!({"something": "else"})).unwrap();
    let (status, answer) = post_hook(
        &stack,
        id,
        &other,
        "s3cret-hook-key",
        airlock_tests::unix_now(),
        Some("delivery-2"),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("the prompt template cannot be filled from this event"),
        "{answer}"
    );
    assert_eq!(
        stack
            .json(&["session", "list"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let audit = stdout(&stack.airlock(&["audit", "export"]).await);
    assert!(audit.contains("trigger.fire"));
    assert!(!audit.contains("s3cret-hook-key"));
}

/// A schedule against a real database with the clock in the test's hands.
async fn schedule(engine: Engine) {
    let install = airlock_tests::Install::new(engine).await;
    let (key, _) =
        airlock_core::secrets::MasterKey::load_or_create(&install.path().join("key")).unwrap();
    let store = airlock_core::Store::connect(&install.database_url, 5, key)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let owner = store
        .add_human("Ada Lovelace", "ada@example.com", Role::Admin)
        .await
        .unwrap();
    let spec = airlock_core::domain::ProfileSpec::from_toml(
        "name = \"deps\"\n[agent]\nkind = \"command\"\ncommand = \"true\"\n",
    )
    .unwrap();
    store.apply_profile(&spec, None).await.unwrap();
    let profile = store.find_profile("deps").await.unwrap();
    let t = store
        .create_trigger(&NewTrigger {
            name: "weekly-deps".into(),
            kind: TriggerKind::Schedule,
            config: json!({"cron": "0 9 * * MON", "timezone": "Europe/Berlin", "prompt": "update the dependencies (slot {{ scheduled_at }})"}),
            profile_id: profile.id.clone(),
            repo: "acme/web".into(),
            reply: json!({}),
            owner_id: owner.id.clone(),
            secret_credential: None,
        })
        .await
        .unwrap();
    // Created on a Sunday; Monday 09:00 in Berlin is 08:00 UTC.
    use chrono::TimeZone;
    let at = |d, h, m, s| {
        chrono::Utc
            .with_ymd_and_hms(2026, 11, d, h, m, s)
            .unwrap()
            .timestamp_millis()
    };
    sqlx::query("UPDATE triggers SET created_at = $1 WHERE id = $2")
        .bind(at(29, 12, 0, 0))
        .bind(&t.id)
        .execute(&install.raw_db().await)
        .await
        .unwrap();
    let triggers = Triggers::new(store.clone());
    assert!(
        triggers.tick(at(30, 7, 59, 59)).await.is_empty(),
        "not before its minute"
    );
    let fired = triggers.tick(at(30, 8, 0, 20)).await;
    assert_eq!(fired.len(), 1, "in its minute");
    assert_eq!(
        fired[0].prompt,
        format!("update the dependencies (slot {})", at(30, 8, 0, 0))
    );
    assert_eq!(fired[0].requester_id, owner.id);
    assert!(
        triggers.tick(at(30, 8, 0, 50)).await.is_empty(),
        "once per slot"
    );
    // A restart: a new scheduler on the same database does not fire the slot again.
    drop(triggers);
    let restarted = Triggers::new(store.clone());
    assert!(
        restarted.tick(at(30, 8, 1, 10)).await.is_empty(),
        "not twice after a restart"
    );
    // Two schedulers at once (two servers): one session for the next slot.
    let other = Triggers::new(store.clone());
    let next = at(30, 8, 0, 0) + 7 * 24 * 3600 * 1000 + 5_000;
    let (a, b) = tokio::join!(restarted.tick(next), other.tick(next));
    assert_eq!(a.len() + b.len(), 1, "one of two servers fires the slot");
    let sessions = store.list_sessions(&Default::default()).await.unwrap();
    assert_eq!(sessions.len(), 2);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_in_its_minute_and_not_twice_after_a_restart() {
    schedule(Engine::Sqlite).await
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_schedule_fires_in_its_minute_and_not_twice_after_a_restart() {
        schedule(Engine::Postgres).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_events_start_sessions_that_answer_on_the_issue_and_the_pull_request() {
    let mut stack = Stack::new(
        Engine::Sqlite,
        vec![],
        "Codertocat/Hello-World",
        &[("calc.py", "x = 1\n")],
        |_| {},
    )
    .await;
    stack.profile("name = \"ops\"\n[agent]\nkind = \"command\"\ncommand = \"echo \\\"$AIRLOCK_PROMPT\\\" | head -1\"\n");
    stack.github.open_issue(
        "Codertocat/Hello-World",
        1,
        "Spelling error in the README file",
        None,
    );
    stack.github.create_branch(
        "Codertocat/Hello-World",
        "changes",
        &[("README.md", "new\n")],
    );
    stack.github.open_issue(
        "Codertocat/Hello-World",
        2,
        "Update the README with new information.",
        Some(("changes", "main")),
    );
    stack.start();
    for args in [
        vec![
            "trigger",
            "add",
            "labeled",
            "--kind",
            "github",
            "--event",
            "issues.labeled",
            "--label",
            "bug",
            "--profile",
            "ops",
            "--repo",
            "Codertocat/Hello-World",
            "--reply",
            "origin",
            "--template",
            "issue-labeled",
        ],
        vec![
            "trigger",
            "add",
            "review",
            "--kind",
            "github",
            "--event",
            "pull_request.opened",
            "--profile",
            "ops",
            "--repo",
            "Codertocat/Hello-World",
            "--reply",
            "origin",
            "--template",
            "review-pull-request",
        ],
    ] {
        let mut cmd = std::process::Command::new(airlock_tests::airlock_bin());
        // --template reads templates/prompts/ from the working directory: Airlock's own.
        cmd.args(&args)
            .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .env_clear();
        for (k, v) in std::env::vars().filter(|(k, _)| k == "PATH" || k == "HOME") {
            cmd.env(k, v);
        }
        for (k, v) in stack.install.env_pairs() {
            cmd.env(k, v);
        }
        cmd.env("AIRLOCK_DATA_DIR", stack.install.path().join("var"));
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", airlock_tests::stderr(&out));
    }
    let labeled = serde_json::to_vec(&event_fixture("issues.labeled")).unwrap();
    let (status, _) = stack
        .github_webhook("issues", "d-label", &labeled, None)
        .await;
    assert_eq!(status, 202);
    let mut pr = event_fixture("pull_request.opened");
    pr["pull_request"]["base"]["ref"] = json!("main");
    let pr = serde_json::to_vec(&pr).unwrap();
    let (status, _) = stack
        .github_webhook("pull_request", "d-pr", &pr, None)
        .await;
    assert_eq!(status, 202);
    // An unlabeled event, or another label, starts nothing.
    let mut other = event_fixture("issues.labeled");
    other["label"]["name"] = json!("question");
    let (status, _) = stack
        .github_webhook(
            "issues",
            "d-other",
            &serde_json::to_vec(&other).unwrap(),
            None,
        )
        .await;
    assert_eq!(status, 202);
    // The same label event as GitHub sent it in 2019 (its issue last updated then): a
    // replay, ignored before it is stored.
    let (status, text) = stack
        .github_webhook(
            "issues",
            "d-old",
            &serde_json::to_vec(&fixture("issues.labeled")).unwrap(),
            None,
        )
        .await;
    assert_eq!(
        (status, text.contains("more than a week old")),
        (200, true),
        "{text}"
    );

    let list = stack
        .wait_sessions(90, "both sessions to end", |l| {
            l.len() == 2 && l.iter().all(|s| s["state"] == "succeeded")
        })
        .await;
    let prompts: Vec<&str> = list.iter().map(|s| s["prompt"].as_str().unwrap()).collect();
    assert!(
        prompts
            .iter()
            .any(|p| p.starts_with("Issue #1: Spelling error in the README file")),
        "{prompts:?}"
    );
    assert!(
        prompts
            .iter()
            .any(|p| p.starts_with("Review pull request #2")),
        "{prompts:?}"
    );
    // Each reports on its issue or pull request.
    for n in [1, 2] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !stack
            .github
            .comments("Codertocat/Hello-World", n)
            .iter()
            .any(|c| c.author == stack.github.bot && c.body.starts_with("✅ **Done**"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no done status on #{n}: {:?}",
                stack.github.comments("Codertocat/Hello-World", n)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        stack.github.unexpected().is_empty(),
        "{:?}",
        stack.github.unexpected()
    );
}
