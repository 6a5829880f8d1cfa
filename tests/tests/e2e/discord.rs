//! Discord end to end: the server's serenity client connects to the fake Discord's gateway and
//! HTTP API; people mention the bot or use `/airlock` (signed interactions posted to the
//! server), and the tests read the threads and messages a person would see.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use airlock_tests::chats::{DiscordSide, DISCORD_CHANNEL};
use airlock_tests::discord::{APP, BOT, GUILD};
use airlock_tests::model::Step;
use airlock_tests::stack::Stack;
use airlock_tests::Engine;
use serde_json::json;

const CHANNEL: u64 = DISCORD_CHANNEL;
const USER: u64 = 53908232506183680;
const REPO: &str = "acme/web";
const CALC: &str = "def add(a, b):\n    return a - b\n";

struct Chat {
    stack: Stack,
    side: DiscordSide,
}

impl Chat {
    async fn new(script: Vec<Step>) -> Chat {
        let side = DiscordSide::start().await;
        let mut stack = Stack::new(
            Engine::Sqlite,
            script,
            REPO,
            &[("calc.py", CALC)],
            |install| side.configure(install),
        )
        .await;
        DiscordSide::credentials(&stack.install);
        DiscordSide::link(&stack.install, "ada@example.com", USER, "ada");
        stack.builtin_profile();
        stack.start();
        side.connected().await;
        Chat { stack, side }
    }

    async fn wait<T>(&self, what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
        airlock_tests::poll(what, secs, f, || {
            format!(
                "problems {:?}\n{}",
                self.side.discord.problems(),
                self.stack.server.as_ref().unwrap().log()
            )
        })
        .await
    }

    async fn interaction(&self, body: &serde_json::Value, good_signature: bool) -> (u16, String) {
        self.side
            .interaction(&self.stack.url(), body, good_signature)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_starts_a_session_in_a_thread_with_a_live_status_and_a_final_message() {
    let long_answer = format!(
        "Fixed `add`.\n\n{}",
        "Details of the change, line by line.\n".repeat(80)
    );
    let script = vec![
        Step::Tools(vec![(
            "edit_file",
            json!({"path": "calc.py", "old_string": "a - b", "new_string": "a + b"}),
        )]),
        Step::Tools(vec![(
            "shell",
            json!({"command": "sleep 10; python3 -c 'from calc import add; assert add(2, 3) == 5'"}),
        )]),
        Step::Answer(Box::leak(long_answer.into_boxed_str())),
        // The follow-up's turn.
        Step::Answer("Glad it helps."),
    ];
    let chat = Chat::new(script).await;
    chat.side.discord.limit_next_edit(1);
    let asked = chat.side.discord.say(
        CHANNEL,
        USER,
        "ada",
        &format!("<@{BOT}> fix the add function repo={REPO} @everyone"),
    );
    // A thread from the message.
    let thread = chat
        .wait("a thread", 30, || {
            chat.side.discord.threads(CHANNEL).into_iter().next()
        })
        .await;
    assert_eq!(thread.from_message, Some(asked));
    assert_eq!(thread.name, "fix the add function repo=acme/web @everyone");
    // The status message edited in place, then the final message split under 2,000.
    let messages = chat
        .wait("the final message", 120, || {
            let m = chat.side.discord.messages(thread.id);
            (m.len() >= 3 && m[0].content.starts_with("✅ **Done**")).then_some(m)
        })
        .await;
    let status = &messages[0];
    assert!(
        status
            .history
            .iter()
            .any(|h| h.starts_with("🔧 **Working**") && h.contains("- edited `calc.py`")),
        "{:#?}",
        status.history
    );
    let finals: Vec<&str> = messages[1..].iter().map(|m| m.content.as_str()).collect();
    assert!(finals.iter().all(|m| m.chars().count() <= 2000));
    assert!(finals[0].starts_with("Fixed `add`."), "{}", finals[0]);
    let last = finals.last().unwrap();
    assert!(
        last.contains("**Pull request:** https://github.test/acme/web/pull/1"),
        "{last}"
    );
    assert!(last.contains("360 model tokens (300 in, 60 out)"), "{last}");
    assert_eq!(
        chat.side.discord.rate_limited(),
        1,
        "one edit was rate-limited"
    );
    assert!(
        chat.side.discord.problems().is_empty(),
        "{:?}",
        chat.side.discord.problems()
    );

    // A reply in the thread is a follow-up of the same session (no new thread).
    let session = &chat.stack.json(&["session", "list"]).await[0];
    assert_eq!(session["surface"], "discord");
    chat.side
        .discord
        .say(thread.id, USER, "ada", "thanks, that's all");
    chat.wait("the follow-up's status", 60, || {
        let m = chat.side.discord.messages(thread.id);
        m.iter()
            .skip(3)
            .find(|x| x.author == BOT && x.content.contains("thanks, that's all"))
            .cloned()
    })
    .await;
    chat.wait("the follow-up's answer", 60, || {
        let m = chat.side.discord.messages(thread.id);
        m.iter()
            .find(|x| x.author == BOT && x.content.contains("Glad it helps."))
            .cloned()
    })
    .await;
    assert_eq!(chat.side.discord.threads(CHANNEL).len(), 1);
    assert_eq!(
        chat.stack
            .json(&["session", "list"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_command_interactions_are_verified_and_start_a_thread() {
    let chat = Chat::new(vec![Step::Answer("Checked; all fine.")]).await;
    assert_eq!(
        chat.side.discord.commands(),
        ["airlock"],
        "/airlock was registered"
    );
    let ping = json!({"id": "1", "application_id": APP.to_string(), "type": 1, "token": "t", "version": 1});
    let (status, _) = chat.interaction(&ping, false).await;
    assert_eq!(status, 401, "a bad signature");
    let (status, body) = chat.interaction(&ping, true).await;
    assert_eq!((status, body.as_str()), (200, r#"{"type":1}"#));

    let command = json!({
        "id": "1180000000000000001", "application_id": APP.to_string(), "type": 2, "token": "interaction-token", "version": 1,
        "guild_id": GUILD.to_string(), "channel_id": CHANNEL.to_string(), "locale": "en-US", "guild_locale": "en-US",
        "member": {"user": {"id": USER.to_string(), "username": "ada", "discriminator": "0", "global_name": "Ada", "avatar": null},
                   "roles": [], "joined_at": "2024-01-01T00:00:00.000000+00:00", "permissions": "2147483647", "deaf": false, "mute": false},
        "data": {"id": "1180000000000000002", "name": "airlock", "type": 1,
                 "options": [{"name": "prompt", "type": 3, "value": "check the build"}, {"name": "repo", "type": 3, "value": REPO}]},
    });
    let (status, body) = chat.interaction(&command, true).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["type"], 4);
    assert_eq!(answer["data"]["flags"], 64, "only the person sees it");
    assert_eq!(
        answer["data"]["content"],
        "On it: follow the session in the thread I'm starting here."
    );
    let thread = chat
        .wait("the thread", 30, || {
            chat.side.discord.threads(CHANNEL).into_iter().next()
        })
        .await;
    assert_eq!(thread.name, "check the build repo=acme/web");
    chat.wait("the final message", 60, || {
        chat.side
            .discord
            .messages(thread.id)
            .iter()
            .find(|m| m.content.contains("Checked; all fine."))
            .cloned()
    })
    .await;
    let session = &chat.stack.json(&["session", "list"]).await[0];
    let humans = chat.stack.json(&["human", "list"]).await;
    assert_eq!(session["requester_id"], humans[0]["id"]);

    // The same interaction again, freshly signed (a replay): recognised, nothing starts.
    let (status, body) = chat.interaction(&command, true).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Airlock has this request already."), "{body}");
    // Signed an hour ago, an hour ahead, or years ago: refused whatever the signature.
    let mut other = command.clone();
    other["id"] = json!("1180000000000000009");
    let now = airlock_tests::chats::now();
    for ts in [now - 3600, now + 3600, now - 10 * 365 * 86400] {
        let (status, body) = chat
            .side
            .interaction_at(&chat.stack.url(), &other, ts, true)
            .await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("five minutes"), "{body}");
    }
    assert_eq!(
        chat.side.discord.threads(CHANNEL).len(),
        1,
        "no second thread"
    );

    // Someone Airlock doesn't know is told how to link, and nothing starts.
    let mut stranger = command.clone();
    stranger["id"] = json!("1180000000000000003");
    stranger["member"]["user"]["id"] = json!("999");
    let (_, body) = chat.interaction(&stranger, true).await;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["data"]["content"]
            .as_str()
            .unwrap()
            .contains("`/airlock link`"),
        "{answer}"
    );
    assert_eq!(
        chat.stack
            .json(&["session", "list"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        chat.side.discord.problems().is_empty(),
        "{:?}",
        chat.side.discord.problems()
    );
}

/// A configured Discord API that cannot say where the gateway is: Airlock does not connect,
/// and says so, instead of serenity's fallback to Discord's public gateway host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discord_api_that_fails_is_an_error_not_a_fallback_to_the_public_gateway() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}/api/v10", closed.local_addr().unwrap());
    drop(closed);
    let side = DiscordSide::start().await;
    let mut stack = Stack::new(
        Engine::Sqlite,
        vec![],
        REPO,
        &[("calc.py", CALC)],
        |install| {
            side.configure(install);
            install.env("AIRLOCK_DISCORD_API_URL", &api);
        },
    )
    .await;
    DiscordSide::credentials(&stack.install);
    stack.start();
    let log = airlock_tests::poll(
        "the server to give up on Discord",
        30,
        || {
            let log = stack.server.as_ref().unwrap().log();
            log.contains("not connecting to Discord").then_some(log)
        },
        String::new,
    )
    .await;
    assert!(
        log.contains("the configured API cannot tell the gateway's address"),
        "{log}"
    );
    assert!(!log.contains("gateway.discord.gg"), "{log}");
    assert!(!side.discord.is_ready(), "nothing connected anywhere");
}
