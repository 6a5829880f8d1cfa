//! The chat platforms' side of a test deployment: the fake Slack and Discord wired into an
//! installation (settings and credentials), people linked on them, and requests signed and
//! shaped as each platform sends them to Airlock. Used by the Slack, Discord and surface tests.

use serde_json::{json, Value};

use crate::discord::{FakeDiscord, APP, GUILD};
use crate::slack::FakeSlack;
use crate::Install;

/// The Slack workspace, channel and signing secret of the tests (Slack's documented examples).
pub const SLACK_TEAM: &str = "T1DC2JH3J";
pub const SLACK_CHANNEL: &str = "C0DEV";
pub const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_BOT_TOKEN: &str = "xoxb-test-token";

/// The Discord channel of the tests.
pub const DISCORD_CHANNEL: u64 = 41771983423143937;
const DISCORD_BOT_TOKEN: &str = "discord-bot-token";

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Links `email`'s human to an account on `provider`.
pub fn link(
    install: &Install,
    email: &str,
    provider: &str,
    workspace: &str,
    id: &str,
    handle: &str,
) {
    let mut args = vec![
        "identity",
        "link",
        "--human",
        email,
        "--provider",
        provider,
        "--external-id",
        id,
        "--handle",
        handle,
    ];
    if !workspace.is_empty() {
        args.extend(["--workspace", workspace]);
    }
    install.ok(&args);
}

fn set_credential(install: &Install, name: &str, value: &str) {
    let out = install.run_with_stdin(
        &["credential", "set", name, "--kind", "generic"],
        value.as_bytes(),
    );
    assert!(out.status.success(), "{}", crate::stderr(&out));
}

/// Slack as Airlock sees it: the fake Web API, and the signed requests Slack posts.
pub struct SlackSide {
    pub slack: FakeSlack,
    http: reqwest::Client,
}

impl SlackSide {
    pub async fn start() -> SlackSide {
        let slack = FakeSlack::start(SLACK_BOT_TOKEN).await;
        slack.add_channel(SLACK_CHANNEL);
        SlackSide {
            slack,
            http: reqwest::Client::new(),
        }
    }

    /// The settings that point the installation at the fake (before `migrate`).
    pub fn configure(&self, install: &mut Install) {
        install
            .env("AIRLOCK_SLACK_API_URL", &self.slack.api_url)
            .env("AIRLOCK_SLACK_BOT_TOKEN_CREDENTIAL", "slack-bot")
            .env("AIRLOCK_SLACK_SIGNING_SECRET_CREDENTIAL", "slack-signing");
    }

    /// The bot token and the signing secret (after `migrate`).
    pub fn credentials(install: &Install) {
        set_credential(install, "slack-bot", SLACK_BOT_TOKEN);
        set_credential(install, "slack-signing", SLACK_SECRET);
    }

    /// Posts `body` to `base` + `path` as Slack does, signed for `ts` (or with `sig`), with
    /// Slack's retry headers when `retry` is given.
    #[allow(clippy::too_many_arguments)]
    pub async fn post(
        &self,
        base: &str,
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
            .unwrap_or_else(|| crate::slack::sign(SLACK_SECRET, &ts, body));
        let mut r = self
            .http
            .post(format!("{base}{path}"))
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

    /// A slash command as Slack sends it (the fields of its documented example).
    pub fn command(user: &str, text: &str) -> Vec<u8> {
        serde_urlencoded::to_string([
            ("token", "xyzz0WbapA4vBCDEFasx0q6G"),
            ("team_id", SLACK_TEAM),
            ("team_domain", "testteamnow"),
            ("channel_id", SLACK_CHANNEL),
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

    /// `/airlock TEXT` by `user`, signed now; the answer Slack shows (a 200 is required).
    pub async fn slash(&self, base: &str, user: &str, text: &str) -> Value {
        let (status, body) = self
            .post(
                base,
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

    /// An Events API callback carrying `event`.
    pub fn event(event_id: &str, event: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "token": "XXYYZZ", "team_id": SLACK_TEAM, "api_app_id": "AAIRLOCK", "event": event,
            "type": "event_callback", "event_id": event_id, "event_time": now(),
            "authorizations": [{"team_id": SLACK_TEAM, "user_id": crate::slack::BOT_USER, "is_bot": true}],
        }))
        .unwrap()
    }

    /// `user` writes `text` in the thread of `root_ts` (in the fake, and as the event Slack
    /// delivers); the status of the delivery.
    pub async fn reply_in_thread(&self, base: &str, user: &str, root_ts: &str, text: &str) -> u16 {
        let ts = self.slack.say(SLACK_CHANNEL, user, text, Some(root_ts));
        let ev = Self::event(
            &format!("Ev{}", ulid::Ulid::new()),
            json!({
                "type": "message", "user": user, "text": text, "ts": ts,
                "thread_ts": root_ts, "channel": SLACK_CHANNEL, "channel_type": "channel", "event_ts": ts,
            }),
        );
        self.post(
            base,
            "/slack/events",
            "application/json",
            &ev,
            now(),
            None,
            None,
        )
        .await
        .0
    }

    /// A `block_actions` payload: `user` clicks the button `action` (`airlock_stop`,
    /// `airlock_retry`) carrying `session` on the message `message_ts`.
    pub fn button(user: &str, message_ts: &str, action: &str, session: &str) -> String {
        let label = if action.ends_with("retry") {
            "Retry"
        } else {
            "Stop"
        };
        json!({
            "type": "block_actions", "team": {"id": SLACK_TEAM, "domain": "testteamnow"},
            "user": {"id": user, "username": "someone", "team_id": SLACK_TEAM}, "api_app_id": "AAIRLOCK", "token": "x",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": SLACK_CHANNEL, "is_ephemeral": false},
            "trigger_id": "12466734323.1395872398", "channel": {"id": SLACK_CHANNEL, "name": "dev"},
            "response_url": "https://hooks.slack.com/actions/T1/1/x",
            "actions": [{"type": "button", "action_id": action, "block_id": "b1",
                         "text": {"type": "plain_text", "text": label}, "value": session, "action_ts": "1700000002.000001"}],
        })
        .to_string()
    }

    /// A button click (`payload` from [`SlackSide::button`]), signed now; returns the status.
    pub async fn click(&self, base: &str, payload: &str) -> u16 {
        let body = serde_urlencoded::to_string([("payload", payload)]).unwrap();
        self.post(
            base,
            "/slack/interactions",
            "application/x-www-form-urlencoded",
            body.as_bytes(),
            now(),
            None,
            None,
        )
        .await
        .0
    }
}

/// Discord as Airlock sees it: the fake gateway and HTTP API, and signed interactions.
pub struct DiscordSide {
    pub discord: FakeDiscord,
    http: reqwest::Client,
}

impl DiscordSide {
    pub async fn start() -> DiscordSide {
        let discord = FakeDiscord::start(DISCORD_BOT_TOKEN).await;
        discord.add_channel(DISCORD_CHANNEL, "dev");
        DiscordSide {
            discord,
            http: reqwest::Client::new(),
        }
    }

    /// The settings that point the installation at the fake (before `migrate`).
    pub fn configure(&self, install: &mut Install) {
        install
            .env("AIRLOCK_DISCORD_API_URL", &self.discord.api_url)
            .env("AIRLOCK_DISCORD_BOT_TOKEN_CREDENTIAL", "discord-bot")
            .env("AIRLOCK_DISCORD_PUBLIC_KEY", &self.discord.public_key)
            .env("AIRLOCK_DISCORD_APPLICATION_ID", &APP.to_string());
    }

    /// The bot token (after `migrate`).
    pub fn credentials(install: &Install) {
        set_credential(install, "discord-bot", DISCORD_BOT_TOKEN);
    }

    /// Links `email`'s human to the Discord user `user` of the test guild.
    pub fn link(install: &Install, email: &str, user: u64, handle: &str) {
        link(
            install,
            email,
            "discord",
            &GUILD.to_string(),
            &user.to_string(),
            handle,
        );
    }

    /// Waits until the server's bot has connected to the fake gateway.
    pub async fn connected(&self) {
        crate::poll(
            "the bot to connect to Discord's gateway",
            30,
            || self.discord.is_ready().then_some(()),
            String::new,
        )
        .await;
    }

    /// Posts an interaction to `base`, signed now (or with a signature of other bytes).
    pub async fn interaction(
        &self,
        base: &str,
        body: &Value,
        good_signature: bool,
    ) -> (u16, String) {
        self.interaction_at(base, body, now(), good_signature).await
    }

    /// [`DiscordSide::interaction`] signed for the time `ts` (seconds since the epoch).
    pub async fn interaction_at(
        &self,
        base: &str,
        body: &Value,
        ts: i64,
        good_signature: bool,
    ) -> (u16, String) {
        let body = serde_json::to_vec(body).unwrap();
        let ts = ts.to_string();
        let sig = if good_signature {
            self.discord.sign(&ts, &body)
        } else {
            self.discord.sign(&ts, b"something else")
        };
        let r = self
            .http
            .post(format!("{base}/discord/interactions"))
            .header("Content-Type", "application/json")
            .header("X-Signature-Ed25519", sig)
            .header("X-Signature-Timestamp", ts)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}
