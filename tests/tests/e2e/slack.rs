//! Slack end to end: signed slash commands, events and button clicks posted to the running
//! server, and on the strict fake Slack Web API the exact thread a person would see: the
//! status message edited in place, the final message with the summary, the pull request and
//! the model usage, ephemeral answers, and refusals.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::time::{Duration, Instant};

use airlock_tests::chats::{self, now, SlackSide, SLACK_CHANNEL, SLACK_TEAM};
use airlock_tests::model::Step;
use airlock_tests::slack::Message;
use airlock_tests::stack::Stack;
use airlock_tests::Engine;
use serde_json::json;

const TEAM: &str = SLACK_TEAM;
const CHANNEL: &str = SLACK_CHANNEL;
const USER: &str = "U2CERLKJA";
const REPO: &str = "acme/web";

const CALC: &str = "def add(a, b):\n    return a - b\n";
const TEST: &str = "import unittest\nfrom calc import add\n\n\
class T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n";

struct Chat {
    stack: Stack,
    side: SlackSide,
}

impl Chat {
    async fn new(script: Vec<Step>, link: bool) -> Chat {
        let side = SlackSide::start().await;
        let mut stack = Stack::new(
            Engine::Sqlite,
            script,
            REPO,
            &[("calc.py", CALC), ("test_calc.py", TEST)],
            |install| side.configure(install),
        )
        .await;
        SlackSide::credentials(&stack.install);
        if link {
            chats::link(
                &stack.install,
                "ada@example.com",
                "slack",
                TEAM,
                USER,
                "ada",
            );
        }
        stack.builtin_profile();
        stack.start();
        Chat { stack, side }
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
        self.side
            .post(&self.stack.url(), path, content_type, body, ts, sig, retry)
            .await
    }

    /// A button click (a `block_actions` payload), signed now; returns the status.
    async fn click(&self, payload: &str) -> u16 {
        self.side.click(&self.stack.url(), payload).await
    }

    fn command(user: &str, text: &str) -> Vec<u8> {
        SlackSide::command(user, text)
    }

    async fn slash(&self, user: &str, text: &str) -> serde_json::Value {
        self.side.slash(&self.stack.url(), user, text).await
    }

    fn event(event_id: &str, event: serde_json::Value) -> Vec<u8> {
        SlackSide::event(event_id, event)
    }

    async fn wait<T>(&self, what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
        airlock_tests::poll(what, secs, f, || {
            format!(
                "Slack has {:#?}\n{}",
                self.side.slack.messages(CHANNEL),
                self.stack.server.as_ref().unwrap().log()
            )
        })
        .await
    }

    /// The thread of the bot's first top-level message in the channel.
    fn first_thread(&self) -> Option<(Message, Vec<Message>)> {
        let root = self
            .side
            .slack
            .messages(CHANNEL)
            .into_iter()
            .find(|m| m.user == airlock_tests::slack::BOT_USER && m.thread_ts.is_none())?;
        let replies = self
            .side
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
    chat.side.slack.rate_limit_updates(3, 1);
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
        chat.side.slack.rate_limited() >= 1,
        "the fake rate-limited at least once"
    );
    assert_eq!(
        chat.side.slack.impatient_calls(),
        0,
        "no call came during Retry-After"
    );
    assert!(
        chat.side.slack.problems().is_empty(),
        "{:?}",
        chat.side.slack.problems()
    );

    // A reply in the thread is a follow-up of the same session.
    let session = &chat.stack.json(&["session", "list"]).await[0];
    assert_eq!(session["surface"], "slack");
    let root_ts = root.ts.clone();
    chat.side
        .slack
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
    let chat = Chat::new(
        vec![
            Step::Answer("Nothing to fix."),
            Step::Answer("Looked; nothing to change."),
        ],
        true,
    )
    .await;
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
    // A signed command, then the very same request again within the window (a replay):
    // one session; the replay is told so. (The session is re-keyed to its thread once the
    // status message is posted, so finding it by the command's key was not enough.)
    let ts = now();
    let (status, first) = chat
        .post(
            "/slack/commands",
            "application/x-www-form-urlencoded",
            &body,
            ts,
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{first}");
    assert!(first.contains("Starting session"), "{first}");
    chat.wait("the thread", 30, || chat.first_thread()).await;
    let (status, replay) = chat
        .post(
            "/slack/commands",
            "application/x-www-form-urlencoded",
            &body,
            ts,
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{replay}");
    assert!(
        replay.contains("Airlock has this request already."),
        "{replay}"
    );
    let sessions = chat
        .stack
        .wait_sessions(60, "the command's session to end", |l| {
            l.iter().all(|s| s["state"] == "succeeded")
        })
        .await;
    assert_eq!(sessions.len(), 1, "{sessions:#?}");

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
    let mention_ts = chat.side.slack.say(
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
        let thread = chat.side.slack.thread(CHANNEL, &mention_ts);
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
        2,
        "the command's session and the mention's"
    );
    // The status went into the mention's thread.
    assert!(chat
        .side
        .slack
        .thread(CHANNEL, &mention_ts)
        .iter()
        .all(|m| m.thread_ts.as_deref() == Some(mention_ts.as_str())));
    assert!(
        chat.side.slack.problems().is_empty(),
        "{:?}",
        chat.side.slack.problems()
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
    let mut p = airlock_tests::github::comment_fixture("issue_comment.created");
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
    let payload = SlackSide::button(USER, &root.ts, "airlock_stop", &session);
    assert_eq!(chat.click(&payload).await, 200);
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
    let retry = SlackSide::button(USER, &root.ts, "airlock_retry", &session);
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
        chat.side.slack.problems().is_empty(),
        "{:?}",
        chat.side.slack.problems()
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
        chat.side.slack.thread(CHANNEL, &root.ts).len(),
        2,
        "one status message and one final message"
    );
    assert!(
        chat.side.slack.problems().is_empty(),
        "{:?}",
        chat.side.slack.problems()
    );
}

/// An event stored but not handled (its server died first) is handled once the server is
/// back: Slack's events are resumed like GitHub's deliveries (decision 0009).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_event_is_handled_after_a_restart() {
    let mut chat = Chat::new(vec![Step::Answer("Picked up after the restart.")], true).await;
    // The server is gone; the event it had stored is still there.
    chat.stack.server.take().unwrap().kill_hard();
    let ts = chat.side.slack.say(
        CHANNEL,
        USER,
        "<@UAIRLOCK> check the build repo=acme/web",
        None,
    );
    let ev = Chat::event(
        "Ev0STORED",
        json!({
            "type": "app_mention", "user": USER, "text": "<@UAIRLOCK> check the build repo=acme/web",
            "ts": ts, "channel": CHANNEL, "event_ts": ts,
        }),
    );
    let store = chat.stack.install.store().await;
    store
        .record_inbound(
            "slack",
            "Ev0STORED",
            "event_callback",
            std::str::from_utf8(&ev).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    chat.stack.start();
    chat.wait("the stored event's session to answer", 60, || {
        chat.side
            .slack
            .thread(CHANNEL, &ts)
            .iter()
            .any(|m| m.shown().contains("Picked up after the restart."))
            .then_some(())
    })
    .await;
    let sessions = chat.stack.json(&["session", "list"]).await;
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions:#}");
    assert!(
        chat.side.slack.problems().is_empty(),
        "{:?}",
        chat.side.slack.problems()
    );
}
