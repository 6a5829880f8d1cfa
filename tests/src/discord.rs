//! A strict, stateful fake of Discord: the HTTP API (`/api/v10`, plain HTTP on loopback) and
//! the gateway WebSocket on the same port, holding channels, threads and messages as a person
//! would see them. It speaks the gateway's real handshake (Hello, Identify with the bot token
//! and intents, Ready, heartbeats) and dispatches `MESSAGE_CREATE` for messages people write.
//!
//! Strict as Discord is: the bot token is checked on every call, messages are at most 2,000
//! characters, a bot may only edit its own messages, and every message must say which
//! mentions it allows (Airlock allows none). It can answer one edit with `429` and its rate-limit
//! headers to check that the client waits. Whatever it refuses is recorded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub const GUILD: u64 = 81384788765712384;
pub const BOT: u64 = 1000000000000000001;
pub const APP: u64 = 1000000000000000002;

#[derive(Debug, Clone)]
pub struct Msg {
    pub id: u64,
    pub author: u64,
    pub content: String,
    pub history: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub id: u64,
    pub name: String,
    /// For a thread: the channel it is in, and the message it started from.
    pub parent: Option<u64>,
    pub from_message: Option<u64>,
}

#[derive(Default)]
struct World {
    next_id: u64,
    channels: BTreeMap<u64, Channel>,
    messages: BTreeMap<u64, Vec<Msg>>,
    gateways: Vec<mpsc::UnboundedSender<Value>>,
    ready: bool,
    seq: u64,
    problems: Vec<String>,
    /// Answer the next edit with 429 for this many seconds.
    limit_next_edit: Option<u64>,
    limited_until: Option<Instant>,
    rate_limited: usize,
    /// Application commands registered.
    commands: Vec<Value>,
}

impl World {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        1_100_000_000_000_000_000 + self.next_id
    }
}

#[derive(Clone)]
struct Shared {
    token: String,
    world: Arc<Mutex<World>>,
    port: Arc<Mutex<u16>>,
}

pub struct FakeDiscord {
    /// `http://127.0.0.1:<port>/api/v10`: `discord.api_url`.
    pub api_url: String,
    pub token: String,
    /// The application's public key (hex): `discord.public_key`.
    pub public_key: String,
    key: ed25519_dalek::SigningKey,
    shared: Shared,
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn user(id: u64, name: &str, bot: bool) -> Value {
    json!({"id": id.to_string(), "username": name, "discriminator": "0", "global_name": if bot { Value::Null } else { json!(name) },
           "avatar": null, "bot": bot, "public_flags": 0})
}

fn message_json(channel: u64, m: &Msg, name: &str) -> Value {
    let bot = m.author == BOT;
    json!({
        "id": m.id.to_string(), "channel_id": channel.to_string(), "guild_id": GUILD.to_string(),
        "author": user(m.author, name, bot), "content": m.content, "timestamp": now(), "edited_timestamp": null,
        "tts": false, "mention_everyone": false,
        "mentions": if m.content.contains(&format!("<@{BOT}>")) { json!([user(BOT, "Airlock", true)]) } else { json!([]) },
        "mention_roles": [], "attachments": [], "embeds": [], "pinned": false, "type": 0, "flags": 0, "components": [],
        "member": {"roles": [], "joined_at": "2024-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0},
    })
}

fn thread_json(t: &Channel) -> Value {
    json!({
        "id": t.id.to_string(), "type": 11, "guild_id": GUILD.to_string(), "parent_id": t.parent.map(|p| p.to_string()),
        "owner_id": BOT.to_string(), "name": t.name, "last_message_id": null, "rate_limit_per_user": 0,
        "message_count": 0, "member_count": 1, "total_message_sent": 0, "flags": 0,
        "thread_metadata": {"archived": false, "auto_archive_duration": 1440, "archive_timestamp": now(), "locked": false, "create_timestamp": now()},
        "member": {"id": t.id.to_string(), "user_id": BOT.to_string(), "join_timestamp": now(), "flags": 1},
    })
}

impl FakeDiscord {
    pub async fn start(token: &str) -> FakeDiscord {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let shared = Shared {
            token: token.to_string(),
            world: Arc::default(),
            port: Arc::default(),
        };
        let app = Router::new()
            .route("/gateway", get(gateway))
            .route("/api/v10/{*path}", any(api))
            .with_state(shared.clone());
        let port = crate::tls::serve_http(app).await;
        *shared.port.lock().unwrap() = port;
        FakeDiscord {
            api_url: format!("http://127.0.0.1:{port}/api/v10"),
            token: token.to_string(),
            public_key: hex::encode(key.verifying_key().to_bytes()),
            key,
            shared,
        }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.shared.world.lock().unwrap()
    }

    pub fn add_channel(&self, id: u64, name: &str) {
        self.world().channels.insert(
            id,
            Channel {
                id,
                name: name.into(),
                parent: None,
                from_message: None,
            },
        );
    }

    /// Whether the bot has connected and identified.
    pub fn is_ready(&self) -> bool {
        self.world().ready
    }

    /// A person writes in a channel; the bot hears it over the gateway. Returns its id.
    pub fn say(&self, channel: u64, author: u64, name: &str, content: &str) -> u64 {
        let mut w = self.world();
        let m = Msg {
            id: w.id(),
            author,
            content: content.into(),
            history: Vec::new(),
        };
        let payload = message_json(channel, &m, name);
        w.messages.entry(channel).or_default().push(m.clone());
        w.seq += 1;
        let ev = json!({"op": 0, "t": "MESSAGE_CREATE", "s": w.seq, "d": payload});
        w.gateways.retain(|g| g.send(ev.clone()).is_ok());
        m.id
    }

    pub fn messages(&self, channel: u64) -> Vec<Msg> {
        self.world()
            .messages
            .get(&channel)
            .cloned()
            .unwrap_or_default()
    }

    pub fn threads(&self, parent: u64) -> Vec<Channel> {
        self.world()
            .channels
            .values()
            .filter(|c| c.parent == Some(parent))
            .cloned()
            .collect()
    }

    pub fn problems(&self) -> Vec<String> {
        self.world().problems.clone()
    }

    /// Names of the registered application commands.
    pub fn commands(&self) -> Vec<String> {
        self.world()
            .commands
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    }

    pub fn limit_next_edit(&self, secs: u64) {
        self.world().limit_next_edit = Some(secs);
    }

    pub fn rate_limited(&self) -> usize {
        self.world().rate_limited
    }

    /// Signs an interaction as Discord does: Ed25519 over timestamp + body.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        use ed25519_dalek::Signer;
        let mut msg = timestamp.as_bytes().to_vec();
        msg.extend_from_slice(body);
        hex::encode(self.key.sign(&msg).to_bytes())
    }
}

fn problem(w: &mut World, status: StatusCode, what: String) -> Response {
    w.problems.push(what.clone());
    (status, Json(json!({"code": 50035, "message": what}))).into_response()
}

fn rate_limit_headers(remaining: u32) -> [(&'static str, String); 5] {
    [
        ("x-ratelimit-limit", "5".into()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-reset-after", "1.000".into()),
        ("x-ratelimit-bucket", "airlock-fake".into()),
        (
            "x-ratelimit-reset",
            format!(
                "{:.3}",
                time::OffsetDateTime::now_utc().unix_timestamp() as f64 + 1.0
            ),
        ),
    ]
}

async fn api(
    State(s): State<Shared>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut w = s.world.lock().unwrap();
    let now_i = Instant::now();
    if let Some(until) = w.limited_until {
        if now_i < until {
            w.problems
                .push(format!("called during a rate limit: {method} {path}"));
        }
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bot {}", s.token) {
        return problem(
            &mut w,
            StatusCode::UNAUTHORIZED,
            format!("bad token on {method} {path}"),
        );
    }
    let port = *s.port.lock().unwrap();
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let parts: Vec<&str> = path.split('/').collect();
    // Discord's rules for a message: `Err` is what was wrong.
    let check_message = |req: &Value| -> Result<String, String> {
        let content = req["content"].as_str().unwrap_or("").to_string();
        if content.is_empty() || content.chars().count() > 2000 {
            return Err(format!("content of {} characters", content.chars().count()));
        }
        if req["allowed_mentions"]["parse"] != json!([]) {
            return Err(format!("a message that may ping people: {req}"));
        }
        Ok(content)
    };
    let answer = match (method.as_str(), parts.as_slice()) {
        ("GET", ["gateway"]) => Json(json!({"url": format!("ws://127.0.0.1:{port}/gateway")})).into_response(),
        ("GET", ["gateway", "bot"]) => Json(json!({"url": format!("ws://127.0.0.1:{port}/gateway"), "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}})).into_response(),
        ("POST", ["channels", c, "messages", _, "threads"]) | ("POST", ["channels", c, "threads"]) => {
            let c: u64 = c.parse().unwrap_or(0);
            if !w.channels.contains_key(&c) {
                return problem(&mut w, StatusCode::NOT_FOUND, format!("no channel {c}"));
            }
            let from = (parts.len() == 5).then(|| parts[3].parse::<u64>().ok()).flatten();
            let name = req["name"].as_str().unwrap_or("").to_string();
            if name.is_empty() || name.chars().count() > 100 {
                return problem(&mut w, StatusCode::BAD_REQUEST, format!("thread name {name:?}"));
            }
            let id = w.id();
            let t = Channel {
                id,
                name,
                parent: Some(c),
                from_message: from,
            };
            w.channels.insert(id, t.clone());
            (StatusCode::CREATED, Json(thread_json(&t))).into_response()
        }
        ("POST", ["applications", app, "commands"]) => {
            if *app != APP.to_string() {
                return problem(&mut w, StatusCode::FORBIDDEN, format!("commands of application {app}"));
            }
            let name = req["name"].as_str().unwrap_or("");
            let description = req["description"].as_str().unwrap_or("");
            if name.is_empty() || description.is_empty() || !req["options"].is_array() {
                return problem(&mut w, StatusCode::BAD_REQUEST, format!("command {req}"));
            }
            w.commands.push(req.clone());
            let id = w.id();
            let mut j = req.clone();
            j["id"] = json!(id.to_string());
            j["application_id"] = json!(APP.to_string());
            j["version"] = json!(id.to_string());
            j["default_member_permissions"] = Value::Null;
            j["nsfw"] = json!(false);
            (StatusCode::CREATED, Json(j)).into_response()
        }
        ("POST", ["channels", c, "messages"]) => {
            let c: u64 = c.parse().unwrap_or(0);
            if !w.channels.contains_key(&c) {
                return problem(&mut w, StatusCode::NOT_FOUND, format!("no channel {c}"));
            }
            let content = match check_message(&req) {
                Ok(c) => c,
                Err(what) => return problem(&mut w, StatusCode::BAD_REQUEST, what),
            };
            let m = Msg { id: w.id(), author: BOT, content, history: Vec::new() };
            let j = message_json(c, &m, "Airlock");
            w.messages.entry(c).or_default().push(m);
            (rate_limit_headers(4), Json(j)).into_response()
        }
        ("PATCH", ["channels", c, "messages", m]) => {
            let c: u64 = c.parse().unwrap_or(0);
            let m: u64 = m.parse().unwrap_or(0);
            if let Some(secs) = w.limit_next_edit.take() {
                w.rate_limited += 1;
                w.limited_until = Some(now_i + std::time::Duration::from_secs(secs));
                let mut h = rate_limit_headers(0).to_vec();
                h.push(("retry-after", secs.to_string()));
                h.push(("x-ratelimit-scope", "user".into()));
                let mut r = (StatusCode::TOO_MANY_REQUESTS, Json(json!({"message": "You are being rate limited.", "retry_after": secs as f64, "global": false}))).into_response();
                for (k, v) in h {
                    r.headers_mut().insert(k, v.parse().unwrap());
                }
                return r;
            }
            let content = match check_message(&req) {
                Ok(c) => c,
                Err(what) => return problem(&mut w, StatusCode::BAD_REQUEST, what),
            };
            let Some(msg) = w.messages.get_mut(&c).and_then(|ms| ms.iter_mut().find(|x| x.id == m)) else {
                return problem(&mut w, StatusCode::NOT_FOUND, format!("no message {m} in {c}"));
            };
            if msg.author != BOT {
                return problem(&mut w, StatusCode::FORBIDDEN, "editing someone else's message".into());
            }
            let old = std::mem::replace(&mut msg.content, content);
            msg.history.push(old);
            let j = message_json(c, &msg.clone(), "Airlock");
            (rate_limit_headers(4), Json(j)).into_response()
        }
        _ => problem(&mut w, StatusCode::NOT_FOUND, format!("unknown endpoint {method} /api/v10/{path}")),
    };
    answer
}

async fn gateway(State(s): State<Shared>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| session(s, socket))
}

/// One gateway connection: Hello, Identify, Ready, then heartbeats and dispatches.
async fn session(s: Shared, mut socket: WebSocket) {
    let hello = json!({"op": 10, "d": {"heartbeat_interval": 41250}, "s": null, "t": null});
    if socket
        .send(WsMessage::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let identify = loop {
        match socket.recv().await {
            Some(Ok(WsMessage::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if v["op"] == 2 {
                    break v;
                }
            }
            Some(Ok(_)) => continue,
            _ => return,
        }
    };
    let intents = identify["d"]["intents"].as_u64().unwrap_or(0);
    // Discord takes the token with or without the `Bot ` prefix (serenity sends it).
    let token_ok = identify["d"]["token"]
        .as_str()
        .map(|t| t.trim_start_matches("Bot "))
        == Some(s.token.as_str());
    let needed = (1 << 9) | (1 << 15); // GUILD_MESSAGES, MESSAGE_CONTENT
    if !token_ok || intents & needed != needed {
        s.world.lock().unwrap().problems.push(format!(
            "bad identify: token ok {token_ok}, intents {intents}"
        ));
        let _ = socket
            .send(WsMessage::Close(Some(axum::extract::ws::CloseFrame {
                code: 4004,
                reason: "Authentication failed.".into(),
            })))
            .await;
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let port = *s.port.lock().unwrap();
    {
        let mut w = s.world.lock().unwrap();
        w.seq += 1;
        let ready = json!({"op": 0, "t": "READY", "s": w.seq, "d": {
            "v": 10, "user": {"id": BOT.to_string(), "username": "Airlock", "discriminator": "0", "global_name": null,
                              "avatar": null, "bot": true, "verified": true, "mfa_enabled": false, "flags": 0},
            "guilds": [{"id": GUILD.to_string(), "unavailable": true}], "session_id": "fake-session",
            "resume_gateway_url": format!("ws://127.0.0.1:{port}/gateway"), "shard": [0, 1],
            "application": {"id": APP.to_string(), "flags": 0}, "private_channels": [], "relationships": [],
        }});
        if tx.send(ready).is_err() {
            return;
        }
        w.gateways.push(tx);
        w.ready = true;
    }
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(v) = out else { return };
                if socket.send(WsMessage::Text(v.to_string().into())).await.is_err() {
                    return;
                }
            }
            inc = socket.recv() => match inc {
                Some(Ok(WsMessage::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if v["op"] == 1 {
                        let ack = json!({"op": 11, "d": null, "s": null, "t": null});
                        if socket.send(WsMessage::Text(ack.to_string().into())).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    }
}

/// Strict by default (see [`crate::fail_on_unexpected`]).
impl Drop for FakeDiscord {
    fn drop(&mut self) {
        let seen = self
            .shared
            .world
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .clone();
        crate::fail_on_unexpected("the fake Discord", seen);
    }
}
