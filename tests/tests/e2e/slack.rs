//! Slack end to end: signed slash commands, events and button clicks posted to the running
//! server, and on the strict fake Slack Web API the exact thread a person would see: the
//! status message edited in place, the final message with the summary, the pull request and
//! the model usage, ephemeral answers, and refusals.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::time::{Duration, Instant};

use airlock_tests::model::Step;
use airlock_tests::slack::{sign, FakeSlack, Message};
use airlock_tests::stack::Stack;
use airlock_tests::Engine;
use serde_json::json;

const TEAM: &str = "T1DC2JH3J";
const CHANNEL: &str = "C0DEV";
const USER: &str = "U2CERLKJA";
const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const REPO: &str = "acme/web";

const CALC: &str = "def add(a, b):\n    return a - b\n";
const TEST: &str = "import unittest\nfrom calc import add\n\n\
class T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n";

struct Chat {
    stack: Stack,
    slack: FakeSlack,
    http: reqwest::Client,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Chat {
    async fn new(script: Vec<Step>, link: bool) -> Chat {
        let slack = FakeSlack::start("xoxb-test-token").await;
        slack.add_channel(CHANNEL);
        let api = slack.api_url.clone();
        let mut stack = Stack::new(
            Engine::Sqlite,
            script,
            REPO,
            &[("calc.py", CALC), ("test_calc.py", TEST)],
            move |install| {
                install
                    .env("AIRLOCK_SLACK_API_URL", &api)
                    .env("AIRLOCK_SLACK_BOT_TOKEN_CREDENTIAL", "slack-bot")
                    .env("AIRLOCK_SLACK_SIGNING_SECRET_CREDENTIAL", "slack-signing");
            },
        )
        .await;
        for (name, value) in [("slack-bot", "xoxb-test-token"), ("slack-signing", SECRET)] {
            let out = stack.install.run_with_stdin(
                &["credential", "set", name, "--kind", "generic"],
                value.as_bytes(),
            );
            assert!(out.status.success());
        }
        if link {
            stack.install.ok(&[
                "identity",
                "link",
                "--human",
                "ada@example.com",
                "--provider",
                "slack",
                "--workspace",
                TEAM,
                "--external-id",
                USER,
                "--handle",
                "ada",
            ]);
        }
        stack.builtin_profile();
        stack.start();
        Chat {
            stack,
            slack,
            http: reqwest::Client::new(),
        }
    }

    async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
        ts: i64,
        sig: Option<&str>,
        retry: Option<u32>,
    ) -> (u16, String) {
        let ts = ts.to_string();
        let sig = sig
            .map(str::to_string)
            .unwrap_or_else(|| sign(SECRET, &ts, body));
        let mut r = self
            .http
            .post(format!("{}{path}", self.stack.url()))
            .header("Content-Type", content_type)
            .header("X-Slack-Request-Timestamp", &ts)
            .header("X-Slack-Signature", sig)
            .header("User-Agent", "Slackbot 1.0 (+https://api.slack.com/robots)");
        if let Some(n) = retry {
            r = r
                .header("X-Slack-Retry-Num", n.to_string())
                .header("X-Slack-Retry-Reason", "http_timeout");
        }
        let r = r.body(body.to_vec()).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A button click (a `block_actions` payload), signed now; returns the status.
    async fn click(&self, payload: &str) -> u16 {
        let body = serde_urlencoded::to_string([("payload", payload)]).unwrap();
        let (status, _) = self
            .post(
                "/slack/interactions",
                "application/x-www-form-urlencoded",
                body.as_bytes(),
                now(),
                None,
                None,
            )
            .await;
        status
    }

    /// A slash command as Slack sends it (the fields of its documented example).
    fn command(user: &str, text: &str) -> Vec<u8> {
        serde_urlencoded::to_string([
            ("token", "xyzz0WbapA4vBCDEFasx0q6G"),
            ("team_id", TEAM),
            ("team_domain", "testteamnow"),
            ("channel_id", CHANNEL),
            ("channel_name", "dev"),
            ("user_id", user),
            ("user_name", "roadrunner"),
            ("command", "/airlock"),
            ("text", text),
            (
                "response_url",
                "https://hooks.slack.com/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN",
            ),
            (
                "trigger_id",
                &format!(
                    "{}.47445629121.803a0bc887a14d10d2c447fce8b6703c",
                    ulid::Ulid::new().random() % 1_000_000_000
                ),
            ),
        ])
        .unwrap()
        .into_bytes()
    }

    async fn slash(&self, user: &str, text: &str) -> serde_json::Value {
        let (status, body) = self
            .post(
                "/slack/commands",
                "application/x-www-form-urlencoded",
                &Self::command(user, text),
                now(),
                None,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn event(event_id: &str, event: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "token": "XXYYZZ", "team_id": TEAM, "api_app_id": "AAIRLOCK", "event": event,
            "type": "event_callback", "event_id": event_id, "event_time": now(),
            "authorizations": [{"team_id": TEAM, "user_id": airlock_tests::slack::BOT_USER, "is_bot": true}],
        }))
        .unwrap()
    }

    async fn wait<T>(&self, what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
        airlock_tests::poll(what, secs, f, || {
            format!(
                "Slack has {:#?}\n{}",
                self.slack.messages(CHANNEL),
                self.stack.server.as_ref().unwrap().log()
            )
        })
        .await
    }

    /// The thread of the bot's first top-level message in the channel.
    fn first_thread(&self) -> Option<(Message, Vec<Message>)> {
        let root = self
            .slack
            .messages(CHANNEL)
            .into_iter()
            .find(|m| m.user == airlock_tests::slack::BOT_USER && m.thread_ts.is_none())?;
        let replies = self
            .slack
            .messages(CHANNEL)
            .into_iter()
            .filter(|m| m.thread_ts.as_deref() == Some(root.ts.as_str()))
            .collect();
        Some((root, replies))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slash_command_runs_a_session_that_streams_into_its_thread() {
    let script = vec![
        Step::Tools(vec![(
            "edit_file",
            json!({"path": "calc.py", "old_string": "a - b", "new_string": "a + b"}),
        )]),
        Step::Tools(vec![(
            "shell",
            // Output all along: status updates are due while a 429's Retry-After runs.
            json!({"command": "for i in $(seq 40); do echo step $i; sleep 0.1; done; python3 -m unittest -q test_calc"}),
        )]),
        Step::Answer("Fixed **add**: it subtracted. <!channel> the tests pass."),
    ];
    let chat = Chat::new(script, true).await;
    // Slack rate-limits every third edit: the status waits as told and still ends right.
    chat.slack.rate_limit_updates(3, 1);
    let started = Instant::now();
    let answer = chat
        .slash(USER, &format!("fix the add function repo={REPO}"))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "Slack is answered within 3 s"
    );
    assert_eq!(answer["response_type"], "ephemeral");
    let text = answer["text"].as_str().unwrap();
    assert!(
        text.starts_with("Starting session `ses_")
            && text.ends_with("follow it in the thread I'm starting here."),
        "{text}"
    );

    let (root, replies) = chat
        .wait("the final message", 120, || {
            let (root, replies) = chat.first_thread()?;
            (replies.len() == 1).then_some((root, replies))
        })
        .await;
    // The status message, edited in place: it showed the work, then the end.
    assert!(!root.history.is_empty(), "the status message was edited");
    let versions: Vec<String> = root
        .history
        .iter()
        .map(|(t, _)| t.clone())
        .chain([root.text.clone()])
        .collect();
    assert!(root.shown().contains("✅ *Done*"), "{}", root.shown());
    assert!(
        root.shown().contains("• edited `calc.py`"),
        "{}",
        root.shown()
    );
    assert!(root.buttons() == ["Open PR"], "{:?}", root.buttons());
    assert!(
        root.history
            .iter()
            .any(|(_, b)| b.to_string().contains("🔧 *Working*")
                && b.to_string().contains("\"Stop\"")),
        "a version while it worked, with a Stop button: {versions:#?}"
    );
    // The final message in the thread: the summary (made safe), the pull request, the usage.
    let last = replies[0].shown();
    assert!(last.contains("Fixed *add*: it subtracted."), "{last}");
    assert!(!last.contains("<!channel>"), "no channel-wide ping: {last}");
    assert!(
        last.contains("https://github.test/acme/web/pull/1"),
        "{last}"
    );
    assert!(last.contains("360 model tokens (300 in, 60 out)"), "{last}");
    // The 429 was honoured.
    assert!(
        chat.slack.rate_limited() >= 1,
        "the fake rate-limited at least once"
    );
    assert_eq!(
        chat.slack.impatient_calls(),
        0,
        "no call came during Retry-After"
    );
    assert!(
        chat.slack.problems().is_empty(),
        "{:?}",
        chat.slack.problems()
    );

    // A reply in the thread is a follow-up of the same session.
    let session = &chat.stack.json(&["session", "list"]).await[0];
    assert_eq!(session["surface"], "slack");
    let root_ts = root.ts.clone();
    chat.slack
        .say(CHANNEL, USER, "also add a docstring", Some(&root_ts));
    let ev = Chat::event(
        "Ev0FOLLOW",
        json!({
            "type": "message", "user": USER, "text": "also add a docstring", "ts": "1700000001.000100",
            "thread_ts": root_ts, "channel": CHANNEL, "channel_type": "channel", "event_ts": "1700000001.000100",
        }),
    );
    let (status, _) = chat
        .post("/slack/events", "application/json", &ev, now(), None, None)
        .await;
    assert_eq!(status, 200);
    chat.wait("the follow-up's turn", 60, || {
        let (_, replies) = chat.first_thread()?;
        // A second status message, in the same thread.
        replies
            .iter()
            .find(|m| m.shown().contains("also add a docstring"))
            .cloned()
    })
    .await;
    let sessions = chat.stack.json(&["session", "list"]).await;
    assert_eq!(sessions.as_array().unwrap().len(), 1, "the same session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_stale_requests_and_retries_start_nothing_twice() {
    let chat = Chat::new(vec![Step::Answer("Looked; nothing to change.")], true).await;
    let body = Chat::command(USER, "fix it repo=acme/web");
    let (status, _) = chat
        .post(
            "/slack/commands",
            "application/x-www-form-urlencoded",
            &body,
            now(),
            Some("v0=deadbeef"),
            None,
        )
        .await;
    assert_eq!(status, 401, "bad signature");
    let stale = now() - 6 * 60;
    let (status, _) = chat
        .post(
            "/slack/commands",
            "application/x-www-form-urlencoded",
            &body,
            stale,
            None,
            None,
        )
        .await;
    assert_eq!(status, 401, "signed, but outside the 5-minute window");
    let future = now() + 6 * 60;
    let (status, _) = chat
        .post(
            "/slack/commands",
            "application/x-www-form-urlencoded",
            &body,
            future,
            None,
            None,
        )
        .await;
    assert_eq!(status, 401, "from the future");
    assert_eq!(
        chat.stack
            .json(&["session", "list"])
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // URL verification.
    let challenge = serde_json::to_vec(&json!({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"})).unwrap();
    let (status, text) = chat
        .post(
            "/slack/events",
            "application/json",
            &challenge,
            now(),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );

    // A mention, then Slack's retries of the same event: one session.
    let mention_ts = chat.slack.say(
        CHANNEL,
        USER,
        "<@UAIRLOCK> check the build repo=acme/web",
        None,
    );
    let ev = Chat::event(
        "Ev0MENTION",
        json!({
            "type": "app_mention", "user": USER, "text": "<@UAIRLOCK> check the build repo=acme/web",
            "ts": mention_ts, "channel": CHANNEL, "event_ts": mention_ts,
        }),
    );
    let (status, _) = chat
        .post("/slack/events", "application/json", &ev, now(), None, None)
        .await;
    assert_eq!(status, 200);
    for n in 1..=2 {
        let (status, _) = chat
            .post(
                "/slack/events",
                "application/json",
                &ev,
                now(),
                None,
                Some(n),
            )
            .await;
        assert_eq!(status, 200);
    }
    chat.wait("the session to end", 60, || {
        let thread = chat.slack.thread(CHANNEL, &mention_ts);
        thread
            .iter()
            .any(|m| m.shown().contains("Looked; nothing to change."))
            .then_some(())
    })
    .await;
    assert_eq!(
        chat.stack
            .json(&["session", "list"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The status went into the mention's thread.
    assert!(chat
        .slack
        .thread(CHANNEL, &mention_ts)
        .iter()
        .all(|m| m.thread_ts.as_deref() == Some(mention_ts.as_str())));
    assert!(
        chat.slack.problems().is_empty(),
        "{:?}",
        chat.slack.problems()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlinked_user_is_told_how_to_link_and_then_acts_as_their_github_self() {
    let chat = Chat::new(vec![Step::Answer("All good.")], false).await;
    // Ada's GitHub account is known; her Slack account is not.
    chat.stack.install.ok(&[
        "identity",
        "link",
        "--human",
        "ada@example.com",
        "--provider",
        "github",
        "--external-id",
        "21031067",
        "--handle",
        "Codertocat",
    ]);
    let answer = chat.slash(USER, "fix it repo=acme/web").await;
    assert_eq!(answer["response_type"], "ephemeral");
    let text = answer["text"].as_str().unwrap();
    assert!(
        text.starts_with("Airlock doesn't know who you are on slack yet")
            && text.contains("`/airlock link`"),
        "{text}"
    );
    assert_eq!(
        chat.stack
            .json(&["session", "list"])
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );

    let answer = chat.slash(USER, "link").await;
    let text = answer["text"].as_str().unwrap();
    let code = text.split('`').nth(1).unwrap().to_string();
    assert_eq!(code.len(), 11, "{text}");

    // She proves her GitHub account by commenting the code.
    chat.stack.github.grant(REPO, "Codertocat", "write");
    chat.stack.github.open_issue(REPO, 5, "anything", None);
    let mut p = airlock_tests::github::fixture("issue_comment.created");
    p["repository"]["full_name"] = json!(REPO);
    p["issue"]["number"] = json!(5);
    p["comment"]["body"] = json!(format!("@airlock link {code}"));
    let id = chat.stack.github.add_comment(REPO, 5, "Codertocat", "link");
    p["comment"]["id"] = json!(id);
    let (status, _) = chat
        .stack
        .github_webhook(
            "issue_comment",
            "d-link-1",
            &serde_json::to_vec(&p).unwrap(),
            None,
        )
        .await;
    assert_eq!(status, 202);
    chat.wait("the link confirmation", 20, || {
        chat.stack
            .github
            .comments(REPO, 5)
            .into_iter()
            .find(|c| c.body.contains("is now linked to Ada Lovelace"))
    })
    .await;
    // The code works once.
    let answer = chat.slash(USER, &format!("link {code}")).await;
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .contains("unknown, used or expired"),
        "{answer}"
    );

    // Now her Slack request is hers: the same human as her GitHub account.
    let answer = chat.slash(USER, "fix it repo=acme/web").await;
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .starts_with("Starting session"),
        "{answer}"
    );
    let sessions = chat.stack.json(&["session", "list"]).await;
    let humans = chat.stack.json(&["human", "list"]).await;
    assert_eq!(humans.as_array().unwrap().len(), 1);
    assert_eq!(sessions[0]["requester_id"], humans[0]["id"]);
    let identities = chat.stack.json(&["identity", "list"]).await;
    let providers: Vec<&str> = identities
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["provider"].as_str().unwrap())
        .collect();
    assert_eq!(providers.len(), 2, "{identities}");
    assert!(providers.contains(&"slack") && providers.contains(&"github"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_bind_a_channel_and_the_stop_button_stops() {
    let script = vec![
        Step::Tools(vec![("shell", json!({"command": "sleep 300"}))]),
        Step::Answer("never"),
    ];
    let chat = Chat::new(script, true).await;
    let answer = chat
        .slash(USER, "config repo=acme/web profile=builtin")
        .await;
    assert_eq!(answer["response_type"], "in_channel");
    assert_eq!(
        answer["text"],
        "This channel now works on acme/web with profile builtin."
    );
    // No repo= needed now.
    let answer = chat.slash(USER, "wait a long time").await;
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .starts_with("Starting session"),
        "{answer}"
    );
    let (root, _) = chat
        .wait("the running status with its Stop button", 60, || {
            let (root, r) = chat.first_thread()?;
            root.buttons()
                .contains(&"Stop".to_string())
                .then_some((root, r))
        })
        .await;
    let session = chat.stack.json(&["session", "list"]).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let payload = json!({
        "type": "block_actions", "team": {"id": TEAM, "domain": "testteamnow"},
        "user": {"id": USER, "username": "ada", "team_id": TEAM}, "api_app_id": "AAIRLOCK", "token": "x",
        "container": {"type": "message", "message_ts": root.ts, "channel_id": CHANNEL, "is_ephemeral": false},
        "trigger_id": "12466734323.1395872398", "channel": {"id": CHANNEL, "name": "dev"},
        "response_url": "https://hooks.slack.com/actions/T1/1/x",
        "actions": [{"type": "button", "action_id": "airlock_stop", "block_id": "b1",
                     "text": {"type": "plain_text", "text": "Stop"}, "value": session, "action_ts": "1700000002.000001"}],
    });
    assert_eq!(chat.click(&payload.to_string()).await, 200);
    let (root, _) = chat
        .wait("the stopped status", 30, || {
            let (root, r) = chat.first_thread()?;
            root.shown()
                .contains("Stopped: stopped by Ada Lovelace in Slack")
                .then_some((root, r))
        })
        .await;
    assert_eq!(root.buttons(), ["Retry"]);
    let shown = chat.stack.json(&["session", "show", &session]).await;
    assert_eq!(shown["session"]["state"], "cancelled");
    // The button's stop is audited to Ada, once (it used to write no row).
    let audit = chat.stack.json(&["audit", "tail", "-n", "1000"]).await;
    let rows: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["session_id"] == session.as_str())
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["detail"]["surface"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("session.create".to_string(), json!("slack")),
            ("session.cancel".to_string(), json!("slack"))
        ],
        "{audit:#}"
    );
    // Retry queues the same prompt again, audited too.
    let retry = payload
        .to_string()
        .replace("airlock_stop", "airlock_retry")
        .replace("\"Stop\"", "\"Retry\"");
    assert_eq!(chat.click(&retry).await, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let audit = chat.stack.json(&["audit", "tail", "-n", "1000"]).await;
        let retried = audit.as_array().unwrap().iter().any(|r| {
            r["session_id"] == session.as_str()
                && r["action"] == "session.retry"
                && r["detail"]["surface"] == "slack"
        });
        if retried {
            break;
        }
        assert!(Instant::now() < deadline, "no session.retry row: {audit:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        chat.slack.problems().is_empty(),
        "{:?}",
        chat.slack.problems()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_session_still_finishes_the_thread() {
    let script = vec![
        Step::Tools(vec![("shell", json!({"command": "sleep 8; echo slept"}))]),
        Step::Answer("Finished despite the restart."),
    ];
    let mut chat = Chat::new(script, true).await;
    let answer = chat.slash(USER, &format!("wait a bit repo={REPO}")).await;
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .starts_with("Starting session"),
        "{answer}"
    );
    chat.wait("the working status", 60, || {
        let (root, _) = chat.first_thread()?;
        root.shown().contains("🔧 *Working*").then_some(())
    })
    .await;
    chat.stack.restart();
    let (root, replies) = chat
        .wait("the final message after the restart", 90, || {
            let (root, replies) = chat.first_thread()?;
            (replies.len() == 1).then_some((root, replies))
        })
        .await;
    assert!(root.shown().contains("✅ *Done*"), "{}", root.shown());
    assert!(replies[0].shown().contains("Finished despite the restart."));
    assert_eq!(
        chat.slack.thread(CHANNEL, &root.ts).len(),
        2,
        "one status message and one final message"
    );
    assert!(
        chat.slack.problems().is_empty(),
        "{:?}",
        chat.slack.problems()
    );
}
