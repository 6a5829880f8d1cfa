//! GitHub end to end: the real webhook payloads in `../shared/fixtures/github/`, signed, sent
//! to the running server, with the strict fake GitHub (API and git) behind it. The tests look
//! at what a person on GitHub would see: the reaction, the status comment and its edits, the
//! pushed branch, the pull request, and the refusals.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::time::Duration;

use airlock_tests::github::{comment_fixture, fixture, Comment};
use airlock_tests::model::Step;
use airlock_tests::stack::Stack;
use airlock_tests::{stdout, Engine};
use serde_json::json;

const REPO: &str = "Codertocat/Hello-World";
/// The commenter in the fixtures.
const LOGIN: &str = "Codertocat";
const USER_ID: &str = "21031067";
const ISSUE: u64 = 1;
const COMMENT: u64 = 492700400;

const CALC: &str = "def add(a, b):\n    return a - b\n";
const TEST: &str = "import unittest\nfrom calc import add\n\n\
class T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n";

fn delivery() -> String {
    ulid::Ulid::new().to_string().to_lowercase()
}

/// The fixture comment with another body (and id), as GitHub would send it.
fn comment_payload(body: &str, id: u64) -> Vec<u8> {
    let mut p = comment_fixture("issue_comment.created");
    p["comment"]["body"] = json!(body);
    p["comment"]["id"] = json!(id);
    serde_json::to_vec_pretty(&p).unwrap()
}

async fn wait<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    airlock_tests::poll(what, secs, f, String::new).await
}

/// The bot's comments on the issue.
/// Waits until every stored delivery has been handled (instead of sleeping and hoping):
/// what a delivery does is done by then.
async fn all_handled(db: &sqlx::AnyPool) {
    all_handled_within(db, 30).await
}

async fn all_handled_within(db: &sqlx::AnyPool, secs: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM inbound WHERE processed_at IS NULL")
                .fetch_one(db)
                .await
                .unwrap();
        if pending == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pending} deliveries still unhandled after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bot_comments(stack: &Stack, number: u64) -> Vec<Comment> {
    stack
        .github
        .comments(REPO, number)
        .into_iter()
        .filter(|c| c.author == stack.github.bot)
        .collect()
}

async fn stack(script: Vec<Step>, permission: &str, link: bool) -> Stack {
    stack_on(Engine::Sqlite, script, permission, link, |_| {}).await
}

async fn stack_on(
    engine: Engine,
    script: Vec<Step>,
    permission: &str,
    link: bool,
    configure: impl FnOnce(&mut airlock_tests::Install),
) -> Stack {
    let mut stack = Stack::new(
        engine,
        script,
        REPO,
        &[("calc.py", CALC), ("test_calc.py", TEST)],
        configure,
    )
    .await;
    stack.github.grant(REPO, LOGIN, permission);
    stack
        .github
        .open_issue(REPO, ISSUE, "Spelling error in the README file", None);
    if link {
        stack.install.ok(&[
            "identity",
            "link",
            "--human",
            "ada@example.com",
            "--provider",
            "github",
            "--external-id",
            USER_ID,
            "--handle",
            LOGIN,
        ]);
    }
    stack.builtin_profile();
    stack.start();
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_becomes_a_session_with_a_reaction_a_live_status_and_a_pull_request() {
    let script = vec![
        Step::Tools(vec![(
            "edit_file",
            json!({"path": "calc.py", "old_string": "a - b", "new_string": "a + b"}),
        )]),
        // Long enough for the status comment to show the work in progress.
        Step::Tools(vec![(
            "shell",
            json!({"command": "sleep 4; python3 -m unittest -q test_calc"}),
        )]),
        Step::Answer("Fixed `add`; the tests pass. Thanks @Codertocat!"),
        // The follow-up turn.
        Step::Tools(vec![(
            "write_file",
            json!({"path": "NOTES.md", "content": "add() adds.\n"}),
        )]),
        Step::Answer("Added a note."),
    ];
    let stack = stack(script, "write", true).await;
    stack
        .github
        .put_comment(REPO, ISSUE, COMMENT, LOGIN, "@airlock Fix the add function");
    let first = delivery();
    let payload = comment_payload("@airlock Fix the add function", COMMENT);
    let (status, body) = stack
        .github_webhook("issue_comment", &first, &payload, None)
        .await;
    assert_eq!(status, 202, "{body}");
    // GitHub redelivers it: recognised, no second session.
    let (status, body) = stack
        .github_webhook("issue_comment", &first, &payload, None)
        .await;
    assert_eq!((status, body.contains("duplicate")), (200, true), "{body}");

    // At once: eyes on the comment.
    wait("the eyes reaction", 20, || {
        (stack.github.comment(COMMENT)?.reactions == ["eyes"]).then_some(())
    })
    .await;
    // One status comment, edited in place until it says done.
    let done = wait("the status comment to say done", 120, || {
        let c = bot_comments(&stack, ISSUE);
        c.first()
            .filter(|c| c.body.starts_with("✅ **Done**"))
            .cloned()
    })
    .await;
    assert_eq!(
        bot_comments(&stack, ISSUE).len(),
        1,
        "one status comment per turn"
    );
    let sessions = stack.json(&["session", "list"]).await;
    let session = &sessions[0];
    let id = session["id"].as_str().unwrap();
    assert!(!done.history.is_empty(), "the comment was edited in place");
    let all: Vec<&String> = done.history.iter().chain([&done.body]).collect();
    assert!(
        all.iter().any(|b| b.starts_with("⏳")),
        "a queued/starting version: {all:#?}"
    );
    assert!(
        all.iter()
            .any(|b| b.starts_with("🔧 **Working**") && b.contains("- edited `calc.py`")),
        "a running version with its steps: {all:#?}"
    );
    assert!(
        done.body.contains(&format!(
            "[session `{id}`](https://airlock.example.com/sessions/{id})"
        )),
        "{}",
        done.body
    );
    assert!(
        done.body
            .contains("Fixed `add`; the tests pass. Thanks @\u{200B}Codertocat!"),
        "mentions are defused: {}",
        done.body
    );
    let pr_url = format!("https://github.test/{REPO}/pull/2");
    assert!(
        done.body.contains(&format!("**Pull request:** {pr_url}")),
        "{}",
        done.body
    );
    assert!(
        done.body.contains("360 model tokens (300 in, 60 out)"),
        "three model calls: {}",
        done.body
    );

    // Attributed to the human behind the GitHub account.
    let ada = stack.json(&["human", "list"]).await;
    let ada_id = ada[0]["id"].as_str().unwrap();
    assert_eq!(session["requester_id"], ada_id);
    assert_eq!(session["surface"], "github");
    let branch = session["branch"].as_str().unwrap().to_string();
    let log = stack.github.log(REPO, &branch, "%B").unwrap();
    assert!(
        log.contains("Co-authored-by: Ada Lovelace <ada@example.com>"),
        "{log}"
    );
    let pulls = stack.github.pulls(REPO);
    assert_eq!(pulls.len(), 1);
    assert!(
        pulls[0].body.contains("Requested by **Ada Lovelace** in [a GitHub comment](https://github.com/Codertocat/Hello-World/issues/1#issuecomment-492700400)"),
        "{}",
        pulls[0].body
    );

    // A further comment continues the session on the same branch, with a new status comment.
    stack
        .github
        .put_comment(REPO, ISSUE, COMMENT + 1, LOGIN, "@airlock add a note too");
    let (status, _) = stack
        .github_webhook(
            "issue_comment",
            &delivery(),
            &comment_payload("@airlock add a note too", COMMENT + 1),
            None,
        )
        .await;
    assert_eq!(status, 202);
    wait("the second turn's status", 120, || {
        let c = bot_comments(&stack, ISSUE);
        (c.len() == 2 && c[1].body.starts_with("✅ **Done**")).then_some(())
    })
    .await;
    let sessions = stack.json(&["session", "list"]).await;
    assert_eq!(
        sessions.as_array().unwrap().len(),
        1,
        "the same session continued"
    );
    let log = stack.github.log(REPO, &branch, "%s").unwrap();
    assert!(
        log.starts_with("add a note too\nFix the add function\n"),
        "{log}"
    );
    assert_eq!(stack.github.pulls(REPO).len(), 1, "no second pull request");
    assert!(
        stack.github.unexpected().is_empty(),
        "{:?}",
        stack.github.unexpected()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_oversized_and_unauthorised_requests_start_nothing() {
    let stack = stack(vec![], "read", true).await;
    let count = |stack: &Stack| {
        let install = stack.install.clone();
        async move {
            tokio::task::spawn_blocking(move || install.json(&["session", "list"]))
                .await
                .unwrap()
                .as_array()
                .unwrap()
                .len()
        }
    };
    // ping
    let ping = serde_json::to_vec(&fixture("ping.event")).unwrap();
    let (status, body) = stack.github_webhook("ping", &delivery(), &ping, None).await;
    assert_eq!((status, body.contains("pong")), (200, true), "{body}");

    // A forged signature: 401, nothing stored.
    stack
        .github
        .put_comment(REPO, ISSUE, COMMENT, LOGIN, "@airlock fix");
    let body = comment_payload("@airlock fix it", COMMENT);
    let forged = airlock_tests::github::sign_webhook("not the secret", &body);
    let (status, _) = stack
        .github_webhook("issue_comment", &delivery(), &body, Some(&forged))
        .await;
    assert_eq!(status, 401);
    let (status, _) = stack
        .github_webhook("issue_comment", &delivery(), &body, Some(""))
        .await;
    assert_eq!(status, 401);
    let db = stack.install.raw_db().await;
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbound")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, 0, "a forged delivery is not stored");

    // 30 MB: refused by its declared length, before any of it is read (413, and the
    // connection closed: the sender may see only the close while it is still writing).
    let r = reqwest::Client::new()
        .post(format!("{}/github/webhook", stack.url()))
        .header("X-GitHub-Event", "issue_comment")
        .header("X-GitHub-Delivery", delivery())
        .header("X-Hub-Signature-256", "sha256=00")
        .body(vec![b' '; 30 * 1024 * 1024])
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e}"),
    }

    // Read permission only: a polite refusal, no session.
    let id = delivery();
    let (status, _) = stack
        .github_webhook("issue_comment", &id, &body, None)
        .await;
    assert_eq!(status, 202);
    let refusal = wait("the refusal", 20, || {
        bot_comments(&stack, ISSUE).first().cloned()
    })
    .await;
    assert_eq!(
        refusal.body,
        "Sorry @Codertocat, only people with write access to Codertocat/Hello-World can ask Airlock for changes here."
    );
    // The same delivery again (a replay): recognised, nothing happens twice.
    let (status, text) = stack
        .github_webhook("issue_comment", &id, &body, None)
        .await;
    assert_eq!((status, text.contains("duplicate")), (200, true), "{text}");
    // The same signed body with another X-GitHub-Delivery (which GitHub does not sign): the
    // same comment, so the same intent, recognised too.
    let (status, text) = stack
        .github_webhook("issue_comment", &delivery(), &body, None)
        .await;
    assert_eq!((status, text.contains("duplicate")), (200, true), "{text}");
    // A comment written more than a week ago is a replay of an old request: ignored.
    let mut old = comment_fixture("issue_comment.created");
    old["comment"]["id"] = json!(COMMENT + 10);
    old["comment"]["created_at"] = json!("2019-05-15T15:20:33Z");
    let (status, text) = stack
        .github_webhook(
            "issue_comment",
            &delivery(),
            &serde_json::to_vec(&old).unwrap(),
            None,
        )
        .await;
    assert_eq!(
        (status, text.contains("more than a week old")),
        (200, true),
        "{text}"
    );
    // JSON nested deeper than Airlock reads: refused now, not stored to fail later.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, text) = stack
        .github_webhook("issue_comment", &delivery(), deep.as_bytes(), None)
        .await;
    assert_eq!(status, 400, "{text}");
    all_handled(&db).await;
    assert_eq!(
        bot_comments(&stack, ISSUE).len(),
        1,
        "the replay did nothing"
    );
    assert_eq!(count(&stack).await, 0);

    // With permission but no Airlock identity: told how to link, no session.
    stack.github.grant(REPO, "mona", "write");
    stack
        .github
        .put_comment(REPO, ISSUE, COMMENT + 1, "mona", "@airlock fix it");
    let mut p = comment_fixture("issue_comment.created");
    p["comment"]["body"] = json!("@airlock fix it");
    p["comment"]["id"] = json!(COMMENT + 1);
    p["sender"]["login"] = json!("mona");
    p["sender"]["id"] = json!(777);
    let (status, _) = stack
        .github_webhook(
            "issue_comment",
            &delivery(),
            &serde_json::to_vec(&p).unwrap(),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let hint = wait("the link hint", 20, || {
        bot_comments(&stack, ISSUE).get(1).cloned()
    })
    .await;
    assert!(
        hint.body
            .starts_with("Hi @mona, I don't know you in Airlock yet"),
        "{}",
        hint.body
    );
    assert!(hint.body.contains("--external-id 777"), "{}", hint.body);
    assert_eq!(count(&stack).await, 0);

    // The bot's own comments and quoted mentions never trigger anything.
    let mut own = comment_fixture("issue_comment.created");
    own["comment"]["body"] = json!("@airlock fix it");
    own["comment"]["id"] = json!(COMMENT + 2);
    own["sender"]["login"] = json!("airlock[bot]");
    own["sender"]["type"] = json!("Bot");
    let quoted = comment_payload("> @airlock fix it\n\nlike this?", COMMENT + 3);
    // Decided from the payload alone: recorded as handled when acknowledged (200, with why).
    for (b, why) in [
        (serde_json::to_vec(&own).unwrap(), "the bot's own comment"),
        (quoted, "no request for Airlock in it"),
    ] {
        let (status, text) = stack
            .github_webhook("issue_comment", &delivery(), &b, None)
            .await;
        assert_eq!((status, text.contains(why)), (200, true), "{text}");
    }
    all_handled(&db).await;
    assert_eq!(bot_comments(&stack, ISSUE).len(), 2);
    // What needed nothing keeps only its key and why: the payload is gone at once. What
    // was acted on (the refusal above) keeps its payload for now.
    let row = |id: u64| {
        let db = &db;
        async move {
            sqlx::query_as::<_, (Option<String>, String)>(
                "SELECT verdict, payload FROM inbound WHERE delivery_id = $1",
            )
            .bind(format!("issue_comment:{id}:created"))
            .fetch_one(db)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        row(COMMENT + 2).await,
        (Some("the bot's own comment".to_string()), String::new())
    );
    assert_eq!(
        row(COMMENT + 3).await,
        (
            Some("no request for Airlock in it".to_string()),
            String::new()
        )
    );
    let (verdict, payload) = row(COMMENT).await;
    assert_eq!(verdict, None);
    assert!(payload.contains("\"comment\""), "{payload}");
    assert_eq!(count(&stack).await, 0);
    // Installation events record where the App is.
    let inst = serde_json::to_vec(&fixture("installation.created")).unwrap();
    let (status, _) = stack
        .github_webhook("installation", &delivery(), &inst, None)
        .await;
    assert_eq!(status, 202);
    let audit = wait("the installation", 20, || {
        let out = stdout(&stack.install.run(&["audit", "export"]));
        out.contains("github.installation").then_some(out)
    })
    .await;
    assert!(audit.contains("Codertocat/Hello-World"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_comment_on_a_pull_request_pushes_to_its_branch() {
    let script = vec![
        Step::Tools(vec![(
            "edit_file",
            json!({"path": "calc.py", "old_string": "a - b", "new_string": "a + b"}),
        )]),
        Step::Answer("Done on your branch."),
    ];
    let stack = stack(script, "admin", true).await;
    stack
        .github
        .create_branch(REPO, "changes", &[("README.md", "new information\n")]);
    stack.github.open_issue(
        REPO,
        2,
        "Update the README with new information.",
        Some(("changes", "main")),
    );
    let mut p = comment_fixture("pull_request_review_comment.created");
    p["comment"]["body"] = json!("@airlock fix the add function while you're here");
    let comment_id = p["comment"]["id"].as_u64().unwrap();
    stack
        .github
        .put_review_comment(comment_id, LOGIN, "@airlock fix the add function");
    let (status, body) = stack
        .github_webhook(
            "pull_request_review_comment",
            &delivery(),
            &serde_json::to_vec(&p).unwrap(),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    wait("the eyes reaction on the review comment", 20, || {
        (stack.github.comment(comment_id)?.reactions == ["eyes"]).then_some(())
    })
    .await;
    let done = wait("the status comment on the pull request", 120, || {
        bot_comments(&stack, 2)
            .first()
            .filter(|c| c.body.starts_with("✅ **Done**"))
            .cloned()
    })
    .await;
    // Pushed onto the pull request's own branch, on top of its commit; no new pull request.
    let log = stack.github.log(REPO, "changes", "%s").unwrap();
    assert!(
        log.starts_with("fix the add function while you're here\nwork in progress\n"),
        "{log}"
    );
    assert_eq!(stack.github.pulls(REPO).len(), 1);
    assert_eq!(stack.github.branches(REPO), ["changes", "main"]);
    assert!(done.body.contains("/pull/2"), "{}", done.body);
}

/// What GitHub sends for a new `@airlock` comment `comment` on issue `issue`.
fn comment_on(issue: u64, comment: u64) -> Vec<u8> {
    let mut p = comment_fixture("issue_comment.created");
    p["comment"]["body"] = json!(format!("@airlock fix issue {issue}"));
    p["comment"]["id"] = json!(comment);
    p["issue"]["number"] = json!(issue);
    serde_json::to_vec(&p).unwrap()
}

/// Posts one signed delivery; `None` when the connection failed (the server died under it).
async fn post_delivery(url: &str, delivery: &str, body: &[u8]) -> Option<u16> {
    let r = reqwest::Client::new()
        .post(format!("{url}/github/webhook"))
        .header("X-GitHub-Event", "issue_comment")
        .header("X-GitHub-Delivery", delivery)
        .header(
            "X-Hub-Signature-256",
            airlock_tests::github::sign_webhook("It's a Secret to Everybody", body),
        )
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    r.bytes().await.ok()?;
    Some(status)
}

/// A hundred comments on a hundred issues arrive at once and the server is killed (-9) while
/// they are in flight; GitHub then redelivers every one (it redelivers what failed; here the
/// acknowledged ones too, as a replay would). Every comment ends with exactly one session in
/// its thread and exactly one bot comment, never the "still working" answer, on both engines.
/// Docker is out of reach here on purpose: the sessions wait in the queue, and what is
/// measured is the inbound side alone.
async fn kill_9_with_deliveries_in_flight(engine: Engine) {
    const N: u64 = 100;
    const FIRST_COMMENT: u64 = 700_000_000;
    let mut stack = stack_on(engine, vec![], "write", true, |i| {
        i.env("AIRLOCK_DOCKER_HOST", "unix:///nonexistent/docker.sock");
    })
    .await;
    for n in 1..=N {
        stack
            .github
            .open_issue(REPO, 100 + n, &format!("issue {n}"), None);
        stack.github.put_comment(
            REPO,
            100 + n,
            FIRST_COMMENT + n,
            LOGIN,
            &format!("@airlock fix issue {}", 100 + n),
        );
    }
    let deliveries: Vec<(String, Vec<u8>)> = (1..=N)
        .map(|n| (delivery(), comment_on(100 + n, FIRST_COMMENT + n)))
        .collect();
    let url = stack.url();
    let sends: Vec<_> = deliveries
        .iter()
        .cloned()
        .map(|(id, body)| {
            let url = url.clone();
            tokio::spawn(async move { post_delivery(&url, &id, &body).await })
        })
        .collect();
    // Killed once the first sessions exist: some deliveries are handled, some acknowledged
    // and waiting, the rest being read or stored.
    let db = stack.install.raw_db().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let started: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions")
            .fetch_one(&db)
            .await
            .unwrap();
        if started >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no session started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stack.kill();
    let mut first = Vec::new();
    for s in sends {
        first.push(s.await.unwrap());
    }
    let ok = first.iter().filter(|s| **s == Some(202)).count();
    let failed = first.iter().filter(|s| s.is_none()).count();
    let started: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions")
        .fetch_one(&db)
        .await
        .unwrap();
    eprintln!(
        "at the kill: {ok} acknowledged ({started} with a session), {failed} cut off, of {N}"
    );
    assert_eq!(ok + failed, N as usize, "{first:?}");
    assert!(
        (started as usize) < N as usize,
        "the kill came after everything was handled: nothing was in flight"
    );
    stack.start();
    // GitHub redelivers (same delivery id and body), at once, while the new server resumes
    // what the old one left.
    let url = stack.url();
    let mut again = Vec::new();
    for (id, body) in deliveries.clone() {
        let url = url.clone();
        again.push(tokio::spawn(async move {
            post_delivery(&url, &id, &body).await
        }));
    }
    for a in again {
        let status = a.await.unwrap();
        assert!(
            matches!(status, Some(200) | Some(202)),
            "a redelivery is answered: {status:?}"
        );
    }
    // The dead server's claims lapse within a lease (30 s), then a sweep (15 s) takes them.
    all_handled_within(&db, 90).await;
    let sessions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT thread_key, COUNT(*) FROM sessions GROUP BY thread_key ORDER BY thread_key",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        sessions.len(),
        N as usize,
        "one thread per comment: {sessions:?}"
    );
    assert!(
        sessions.iter().all(|(_, c)| *c == 1),
        "exactly one session per thread: {sessions:?}"
    );
    // Each thread's one bot comment (its status) is posted once the outbox catches up.
    for n in 1..=N {
        let comments = wait("the status comment", 30, || {
            let c = bot_comments(&stack, 100 + n);
            (!c.is_empty()).then_some(c)
        })
        .await;
        assert_eq!(comments.len(), 1, "issue {}: {comments:?}", 100 + n);
        assert!(
            !comments[0].body.contains("still working"),
            "a spurious busy answer on issue {}: {}",
            100 + n,
            comments[0].body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_with_a_hundred_deliveries_in_flight_starts_each_once() {
    kill_9_with_deliveries_in_flight(Engine::Sqlite).await
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kill_9_with_a_hundred_deliveries_in_flight_starts_each_once() {
        kill_9_with_deliveries_in_flight(Engine::Postgres).await
    }
}
