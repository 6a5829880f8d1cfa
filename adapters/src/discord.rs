//! Discord (serenity): a gateway connection for mentions and thread replies, and the
//! Ed25519-signed interactions endpoint `POST /discord/interactions` for `/airlock`.
//!
//! A mention of the bot in a channel starts a session in a new thread from that message;
//! messages in the thread are follow-ups. `/airlock prompt:…` answers at once (only the
//! person sees it) and starts the session in a new thread. Each thread gets a status message
//! edited in place and a final message, split at Discord's 2,000 characters, through the
//! outbox; serenity's rate limiter waits out Discord's limits. Interactions with a bad
//! signature get 401 before their body is read.

use std::sync::Arc;
use std::time::Duration;

use airlock_core::config::DiscordConfig;
use airlock_core::domain::thread::DiscordThread;
use airlock_core::domain::{Provider, Surface, ThreadRef};
use airlock_core::render;
use airlock_core::store::Session;
use airlock_core::Store;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use serenity::all::{
    ChannelId, ChannelType, Context, CreateAllowedMentions, CreateMessage, CreateThread,
    EditMessage, EventHandler, GatewayIntents, Http, HttpBuilder, Message, MessageId, Ready,
};

use crate::chat::{self, ChatRequest, Reply};
use crate::identity::Account;
use crate::notify::{Sent, StatusSink};
use crate::status::StatusView;

/// Discord's limit on a message.
const MESSAGE_MAX: usize = render::DISCORD_MAX;

/// The serenity HTTP client for `discord.api_url` with the bot token.
pub fn http(cfg: &DiscordConfig, token: &str) -> anyhow::Result<Http> {
    let base = cfg
        .api_url
        .split_once("://")
        .map(|(scheme, rest)| format!("{scheme}://{}", rest.split('/').next().unwrap_or("")))
        .ok_or_else(|| anyhow::anyhow!("discord.api_url is not a URL"))?;
    let app: u64 = cfg.application_id.parse()?;
    let mut b = HttpBuilder::new(token)
        .application_id(app.into())
        .default_allowed_mentions(CreateAllowedMentions::new());
    if base != "https://discord.com" {
        // serenity's rate limiter bypasses a proxy base, so it is off there; the outbox
        // then waits out a 429 itself.
        b = b.proxy(base).ratelimiter_disabled(true);
    }
    Ok(b.build())
}

pub struct DiscordAdapter {
    store: Store,
    http: Arc<Http>,
    /// The bot's own user id, from the gateway's Ready.
    me: std::sync::OnceLock<u64>,
    key: ed25519_dalek::VerifyingKey,
    default_profile: Option<String>,
}

fn account(guild: &str, user: &str, name: &str) -> Account {
    Account {
        provider: Provider::Discord,
        workspace: guild.to_string(),
        external_id: user.to_string(),
        handle: name.to_string(),
    }
}

fn thread_key(thread: u64) -> String {
    format!("discord:{thread}")
}

/// Who asked, and in which channel.
struct Asker<'a> {
    guild: &'a str,
    user: &'a str,
    name: &'a str,
    channel: u64,
}

impl Asker<'_> {
    /// The request, for a session that lives in `thread`.
    fn request(&self, thread: u64, text: String, prefix: &str) -> ChatRequest {
        ChatRequest {
            surface: Surface::Discord,
            account: account(self.guild, self.user, self.name),
            channel: self.channel.to_string(),
            thread_key: thread_key(thread),
            thread_ref: ThreadRef::Discord(DiscordThread {
                guild: self.guild.to_string(),
                channel: thread.to_string(),
                ..Default::default()
            }),
            text,
            prefix: prefix.into(),
        }
    }
}

impl DiscordAdapter {
    pub fn new(
        store: Store,
        cfg: &DiscordConfig,
        http: Arc<Http>,
        default_profile: Option<String>,
    ) -> anyhow::Result<Arc<DiscordAdapter>> {
        let raw: [u8; 32] = hex::decode(&cfg.public_key)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("discord.public_key is not 32 bytes"))?;
        Ok(Arc::new(DiscordAdapter {
            store,
            http,
            me: std::sync::OnceLock::new(),
            key: ed25519_dalek::VerifyingKey::from_bytes(&raw)?,
            default_profile,
        }))
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/discord/interactions", post(interactions))
            .with_state(self.clone())
    }

    /// Connects to the gateway and handles messages until `shutdown` (serenity reconnects by
    /// itself).
    pub async fn run_gateway(
        self: Arc<Self>,
        http: Http,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        // `/airlock` exists once it is registered (an upsert: the same name replaces it).
        let command = json!({
            "name": "airlock", "type": 1,
            "description": "Ask Airlock to work on a repository",
            "options": [
                {"type": 3, "name": "prompt", "description": "What to do (or: help, link, status, stop)", "required": true},
                {"type": 3, "name": "repo", "description": "The repository, OWNER/NAME", "required": false},
                {"type": 3, "name": "profile", "description": "The profile to use", "required": false},
            ],
        });
        if let Err(e) = self.http.create_global_command(&command).await {
            tracing::warn!("cannot register the /airlock command with Discord: {e}");
        }
        // The gateway's address comes from the configured API, or Airlock does not connect:
        // serenity, when `GET /gateway` fails, falls back to Discord's public gateway, which
        // is not where a deployment pointed at another API wants its bot token to go.
        let ws_url = match http.get_gateway().await {
            Ok(g) => g.url,
            Err(e) => {
                tracing::error!(
                    "not connecting to Discord: the configured API cannot tell the gateway's address (GET /gateway: {e})"
                );
                return;
            }
        };
        let intents = GatewayIntents::GUILD_MESSAGES | GatewayIntents::MESSAGE_CONTENT;
        let mut client = match serenity::client::ClientBuilder::new_with_http(http, intents)
            .event_handler_arc(self.clone())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot start the Discord client: {e}");
                return;
            }
        };
        // Whatever serenity found (or fell back to), the shards use the address checked above.
        *client.ws_url.lock().await = ws_url;
        let shards = client.shard_manager.clone();
        tokio::select! {
            r = client.start() => if let Err(e) = r { tracing::warn!("the Discord gateway stopped: {e}") },
            _ = shutdown => shards.shutdown_all().await,
        }
    }

    async fn say(&self, channel: u64, text: &str) {
        for part in render::discord(text, MESSAGE_MAX) {
            if let Err(e) = ChannelId::new(channel)
                .send_message(&self.http, CreateMessage::new().content(part))
                .await
            {
                tracing::warn!(channel, "cannot answer in Discord: {e}");
                return;
            }
        }
    }

    async fn on_message(&self, msg: &Message) {
        if msg.author.bot {
            return;
        }
        let Some(guild) = msg.guild_id else { return };
        let Some(me) = self.me.get().copied() else {
            return;
        };
        let mentioned = msg.mentions.iter().any(|u| u.id.get() == me);
        let in_session = self
            .store
            .session_in_thread(&thread_key(msg.channel_id.get()))
            .await
            .ok()
            .flatten()
            .is_some();
        if !mentioned && !in_session {
            return;
        }
        // A message the gateway delivers again (after a resume) is the same request.
        let key = format!("message:{}", msg.id.get());
        match self.store.record_answered("discord", &key, "message").await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!("cannot record a Discord message: {e}");
                return;
            }
        }
        let text = msg
            .content
            .replace(&format!("<@{me}>"), "")
            .replace(&format!("<@!{me}>"), "")
            .trim()
            .to_string();
        // A mention outside a session's thread gets a thread of its own.
        let thread = if in_session {
            msg.channel_id.get()
        } else {
            let name = render::one_line(if text.is_empty() { "Airlock" } else { &text }, 90);
            match msg
                .channel_id
                .create_thread_from_message(
                    &self.http,
                    msg.id,
                    CreateThread::new(name).kind(ChannelType::PublicThread),
                )
                .await
            {
                Ok(t) => t.id.get(),
                Err(e) => {
                    tracing::warn!("cannot start a Discord thread: {e}");
                    return;
                }
            }
        };
        let (guild, user) = (guild.get().to_string(), msg.author.id.get().to_string());
        let asker = Asker {
            guild: &guild,
            user: &user,
            name: &msg.author.name,
            channel: msg.channel_id.get(),
        };
        self.answer_in(thread, asker.request(thread, text, "@Airlock"))
            .await;
    }

    /// Handles a request whose session lives in `thread`; what the person is told goes there.
    async fn answer_in(&self, thread: u64, req: ChatRequest) {
        match chat::handle(&self.store, self.default_profile.as_deref(), req).await {
            Reply::Private(t) | Reply::Public(t) => self.say(thread, &t).await,
            Reply::Started { .. } => {}
        }
    }

    /// `/airlock prompt:…`: the answer to give now; the session's thread comes after.
    async fn command(self: &Arc<Self>, i: &Interaction) -> Value {
        let guild = i.guild_id.clone().unwrap_or_default();
        let channel: u64 = i
            .channel_id
            .as_deref()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (user_id, name) = match &i.member {
            Some(m) => (m.user.id.clone(), m.user.username.clone()),
            None => (String::new(), String::new()),
        };
        let text = i.data.as_ref().map(CommandData::text).unwrap_or_default();
        if guild.is_empty() || channel == 0 {
            return ephemeral("Use /airlock in a server channel.");
        }
        let private = |t: String| ephemeral(&t);
        // Everything but a request to work is answered right here.
        let cmd = crate::command::parse(&text);
        let is_run = matches!(cmd, Ok(crate::command::Command::Run { .. }));
        if !is_run {
            let asker = Asker {
                guild: &guild,
                user: &user_id,
                name: &name,
                channel,
            };
            let req = asker.request(channel, text, "/airlock");
            return match chat::handle(&self.store, self.default_profile.as_deref(), req).await {
                Reply::Private(t) => private(t),
                Reply::Public(t) => {
                    json!({"type": 4, "data": {"content": t, "allowed_mentions": {"parse": []}}})
                }
                Reply::Started { session, .. } => {
                    private(format!("Session `{session}` continues."))
                }
            };
        }
        // Known people only, before a thread is made for them.
        let known =
            crate::identity::human_of(&self.store, &account(&guild, &user_id, &name), None).await;
        if !matches!(known, Ok(Some(_))) {
            return private(chat::not_linked(Surface::Discord, "/airlock"));
        }
        let me = self.clone();
        tokio::spawn(async move {
            let title = render::one_line(&text, 90);
            let thread = match ChannelId::new(channel)
                .create_thread(
                    &me.http,
                    CreateThread::new(title).kind(ChannelType::PublicThread),
                )
                .await
            {
                Ok(t) => t.id.get(),
                Err(e) => {
                    tracing::warn!("cannot start a Discord thread: {e}");
                    return;
                }
            };
            let asker = Asker {
                guild: &guild,
                user: &user_id,
                name: &name,
                channel,
            };
            me.answer_in(thread, asker.request(thread, text, "/airlock"))
                .await;
        });
        private("On it: follow the session in the thread I'm starting here.".into())
    }
}

fn ephemeral(text: &str) -> Value {
    json!({"type": 4, "data": {"content": text, "flags": 64, "allowed_mentions": {"parse": []}}})
}

#[serenity::async_trait]
impl EventHandler for DiscordAdapter {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        let _ = self.me.set(ready.user.id.get());
        tracing::info!(user = %ready.user.name, "connected to Discord");
    }

    async fn message(&self, _ctx: Context, msg: Message) {
        self.on_message(&msg).await;
    }
}

/// Discord's interactions are a few KB; anything bigger is not Discord.
const MAX_BODY: usize = 1024 * 1024;

async fn interactions(
    State(a): State<Arc<DiscordAdapter>>,
    headers: HeaderMap,
    body: crate::room::Unverified<MAX_BODY>,
) -> Response {
    let crate::room::Unverified { bytes: body, room } = body;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    // Discord signs the timestamp with the body: a request signed long ago (or ahead of
    // time) is a replay, whatever its signature.
    match crate::verify::within_window(header("x-signature-timestamp")) {
        Some(true) => {}
        _ => {
            tracing::warn!("refused a Discord interaction signed outside the five-minute window");
            return (
                StatusCode::UNAUTHORIZED,
                "the request's timestamp is not within five minutes of now\n",
            )
                .into_response();
        }
    }
    let signature = hex::decode(header("x-signature-ed25519"))
        .ok()
        .and_then(|s| ed25519_dalek::Signature::from_slice(&s).ok());
    let mut signed = header("x-signature-timestamp").as_bytes().to_vec();
    signed.extend_from_slice(&body);
    let ok = signature.is_some_and(|s| a.key.verify_strict(&signed, &s).is_ok());
    if !ok {
        tracing::warn!("refused a Discord interaction with a bad signature");
        return (StatusCode::UNAUTHORIZED, "invalid request signature\n").into_response();
    }
    drop(room);
    let i = match serde_path_to_error::deserialize::<_, Interaction>(
        &mut serde_json::Deserializer::from_slice(&body),
    ) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!("refused a Discord interaction Airlock cannot read: {e}");
            let why = format!("not an interaction Airlock can read: {}\n", e.path());
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    match i.kind {
        PING => Json(json!({"type": 1})).into_response(),
        APPLICATION_COMMAND if i.data.as_ref().is_some_and(|d| d.name == "airlock") => {
            // One interaction, one answer: a replay within the window (same id) does nothing.
            let key = format!("interaction:{}", i.id);
            match a
                .store
                .record_answered("discord", &key, "interaction")
                .await
            {
                Ok(true) => Json(a.command(&i).await).into_response(),
                Ok(false) => Json(ephemeral("Airlock has this request already.")).into_response(),
                Err(e) => {
                    tracing::warn!("cannot record a Discord interaction: {e}");
                    (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response()
                }
            }
        }
        _ => Json(ephemeral("Airlock doesn't know that command.")).into_response(),
    }
}

/// Interaction types Airlock answers (Discord's numbering).
const PING: u8 = 1;
const APPLICATION_COMMAND: u8 = 2;

/// What Airlock reads of a Discord interaction (`POST /discord/interactions`), parsed at the
/// boundary like GitHub's deliveries (decision 0013): only these fields, so a payload that
/// lacks one of them, or has it with another type, is refused naming the field.
#[derive(Debug, serde::Deserialize)]
struct Interaction {
    /// Discord's snowflake: one per interaction, the key of its de-duplication.
    id: String,
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    guild_id: Option<String>,
    #[serde(default)]
    channel_id: Option<String>,
    /// Present in a server (guild); a direct message has `user` instead, which Airlock does
    /// not serve.
    #[serde(default)]
    member: Option<Member>,
    #[serde(default)]
    data: Option<CommandData>,
}

#[derive(Debug, serde::Deserialize)]
struct Member {
    user: User,
}

#[derive(Debug, serde::Deserialize)]
struct User {
    id: String,
    username: String,
}

#[derive(Debug, serde::Deserialize)]
struct CommandData {
    name: String,
    #[serde(default)]
    options: Vec<CommandOption>,
}

#[derive(Debug, serde::Deserialize)]
struct CommandOption {
    name: String,
    /// A string, number or boolean, by the option's type; Airlock's options are strings.
    #[serde(default)]
    value: Value,
}

impl CommandData {
    /// The command's options as one line: the prompt as it is, the others as `key=value`.
    fn text(&self) -> String {
        self.options
            .iter()
            .filter_map(|o| {
                let v = o.value.as_str()?;
                Some(match o.name.as_str() {
                    "prompt" => v.to_string(),
                    key => format!("{key}={v}"),
                })
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Discord: the status message in the session's thread, edited in place, and the final
/// message (split at 2,000 characters).
pub struct DiscordSink {
    pub http: Arc<Http>,
}

fn sent_of(e: serenity::Error) -> Sent {
    if let serenity::Error::Http(serenity::http::HttpError::UnsuccessfulRequest(r)) = &e {
        let code = r.status_code.as_u16();
        if code == 429 {
            // Discord's per-route windows are a few seconds; this waits longer than any.
            return Sent::Later(Duration::from_secs(5));
        }
        if (400..500).contains(&code) {
            return Sent::GiveUp(e.to_string());
        }
    }
    Sent::Retry(e.to_string())
}

#[async_trait::async_trait]
impl StatusSink for DiscordSink {
    fn spacing(&self) -> Duration {
        Duration::from_millis(1200)
    }

    async fn send(&self, store: &Store, session: &Session, view: &StatusView) -> Sent {
        let ThreadRef::Discord(mut t) = session.thread_ref.clone() else {
            return Sent::GiveUp("the session's thread is not in Discord".into());
        };
        let Some(channel) = t.channel.parse::<u64>().ok().filter(|c| *c != 0) else {
            return Sent::GiveUp("the session's thread names no channel".into());
        };
        let channel = ChannelId::new(channel);
        let text = view.discord();
        match t
            .status_message
            .as_deref()
            .and_then(|m| m.parse::<u64>().ok())
            .filter(|m| *m != 0)
        {
            Some(id) => {
                if let Err(e) = channel
                    .edit_message(
                        &self.http,
                        MessageId::new(id),
                        EditMessage::new().content(text),
                    )
                    .await
                {
                    return sent_of(e);
                }
            }
            None => match channel
                .send_message(&self.http, CreateMessage::new().content(text))
                .await
            {
                Ok(m) => {
                    t.status_message = Some(m.id.get().to_string());
                    if let Err(e) = store
                        .set_thread_ref(&session.id, &ThreadRef::Discord(t.clone()))
                        .await
                    {
                        return Sent::Retry(e.to_string());
                    }
                }
                Err(e) => return sent_of(e),
            },
        }
        if session.state.is_terminal() && !t.final_sent {
            for part in render::discord(&view.final_markdown(), MESSAGE_MAX) {
                if let Err(e) = channel
                    .send_message(&self.http, CreateMessage::new().content(part))
                    .await
                {
                    return sent_of(e);
                }
            }
            t.final_sent = true;
            if let Err(e) = store
                .set_thread_ref(&session.id, &ThreadRef::Discord(t))
                .await
            {
                return Sent::Retry(e.to_string());
            }
        }
        Sent::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An application-command interaction as Discord documents and sends it (fields Airlock
    /// does not read included).
    const COMMAND: &str = r#"{
        "id": "1318254937254645770", "application_id": "1318254232011116545", "type": 2,
        "token": "aW50ZXJhY3Rpb24", "version": 1, "locale": "en-US", "app_permissions": "2248473465835073",
        "guild_id": "290926798626357999", "channel_id": "645027906669510667",
        "guild_locale": "en-US", "entitlements": [], "authorizing_integration_owners": {"0": "290926798626357999"},
        "context": 0,
        "member": {
            "user": {"id": "53908232506183680", "username": "ada", "avatar": null,
                     "discriminator": "0", "global_name": "Ada", "public_flags": 0},
            "roles": ["539082325061836999"], "premium_since": null, "permissions": "2248473465835073",
            "pending": false, "nick": null, "mute": false, "joined_at": "2017-03-13T19:19:14.040000+00:00",
            "deaf": false, "flags": 0
        },
        "data": {
            "id": "771825006014889984", "name": "airlock", "type": 1,
            "options": [
                {"name": "prompt", "type": 3, "value": "fix the flaky login test"},
                {"name": "repo", "type": 3, "value": "acme/web"},
                {"name": "verbose", "type": 5, "value": true}
            ]
        }
    }"#;

    fn parse(text: &str) -> Result<Interaction, String> {
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
            .map_err(|e| e.path().to_string())
    }

    #[test]
    fn a_slash_command_is_read_into_its_fields_and_its_prompt_line() {
        let i = parse(COMMAND).unwrap();
        assert_eq!(i.kind, APPLICATION_COMMAND);
        assert_eq!(i.guild_id.as_deref(), Some("290926798626357999"));
        assert_eq!(i.channel_id.as_deref(), Some("645027906669510667"));
        let m = i.member.as_ref().unwrap();
        assert_eq!(
            (m.user.id.as_str(), m.user.username.as_str()),
            ("53908232506183680", "ada")
        );
        let data = i.data.as_ref().unwrap();
        assert_eq!(data.name, "airlock");
        // A non-text option is left out; the prompt is as typed, the rest `key=value`.
        assert_eq!(data.text(), "fix the flaky login test repo=acme/web");
        assert_eq!(parse(r#"{"id": "1", "type": 1}"#).unwrap().kind, PING);
        // Every interaction has its id (the key of its de-duplication).
        assert_eq!(parse(r#"{"type": 1}"#).unwrap_err(), ".");
    }

    #[test]
    fn a_field_of_the_wrong_type_is_refused_by_its_path() {
        let wrong = COMMAND.replace(r#""username": "ada""#, r#""username": 7"#);
        assert_eq!(parse(&wrong).unwrap_err(), "member.user.username");
        let wrong = COMMAND.replace(r#""name": "airlock""#, r#""name": ["airlock"]"#);
        assert_eq!(parse(&wrong).unwrap_err(), "data.name");
        assert_eq!(parse(r#"{"id": "1"}"#).unwrap_err(), ".");
    }
}
