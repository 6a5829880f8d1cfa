//! A strict, stateful fake of the Slack Web API (`chat.postMessage`, `chat.update`,
//! `chat.postEphemeral`) on loopback, holding the channels' messages as a person would see
//! them: each message with its edits, threads, and ephemeral messages per user.
//!
//! Strict as Slack is: the bot token must be right, the channel must exist, a thread must
//! have its root in the channel, an edit must be of the bot's own message, blocks and texts
//! must be within Slack's limits. It can answer `429 ratelimited` with `Retry-After` to check
//! that the sender waits. Whatever it refuses is recorded, and tests assert nothing was.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

pub const BOT_USER: &str = "UAIRLOCK";

#[derive(Debug, Clone)]
pub struct Message {
    pub ts: String,
    pub thread_ts: Option<String>,
    pub user: String,
    pub text: String,
    pub blocks: Value,
    /// Earlier versions (text, blocks), oldest first.
    pub history: Vec<(String, Value)>,
}

impl Message {
    /// All the text a person sees: the fallback text and every block's text.
    pub fn shown(&self) -> String {
        let mut out = self.text.clone();
        collect_text(&self.blocks, &mut out);
        out
    }

    pub fn buttons(&self) -> Vec<String> {
        let mut out = Vec::new();
        for b in self.blocks.as_array().into_iter().flatten() {
            for e in b["elements"].as_array().into_iter().flatten() {
                if e["type"] == "button" {
                    out.push(e["text"]["text"].as_str().unwrap_or("").to_string());
                }
            }
        }
        out
    }
}

fn collect_text(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(t)) = m.get("text") {
                out.push('\n');
                out.push_str(t);
            }
            for (k, x) in m {
                if k != "text" || !x.is_string() {
                    collect_text(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_text(x, out)),
        _ => {}
    }
}

#[derive(Debug, Clone)]
pub struct Ephemeral {
    pub channel: String,
    pub user: String,
    pub text: String,
}

#[derive(Default)]
struct World {
    next_ts: u64,
    channels: BTreeMap<String, Vec<Message>>,
    ephemerals: Vec<Ephemeral>,
    problems: Vec<String>,
    /// Every call: method and when.
    calls: Vec<(String, Instant)>,
    /// Answer every n-th `chat.update` with 429 and this many seconds of Retry-After.
    limit_updates: Option<(usize, u64)>,
    updates: usize,
    /// When the last 429 asked the sender to wait until.
    wait_until: Option<Instant>,
}

#[derive(Clone)]
struct Shared {
    token: String,
    world: Arc<Mutex<World>>,
}

pub struct FakeSlack {
    /// `http://127.0.0.1:<port>/api`: `slack.api_url`.
    pub api_url: String,
    pub token: String,
    shared: Shared,
}

impl FakeSlack {
    pub async fn start(token: &str) -> FakeSlack {
        let shared = Shared {
            token: token.to_string(),
            world: Arc::default(),
        };
        let app = Router::new()
            .route("/api/{method}", post(api))
            .with_state(shared.clone());
        let port = crate::tls::serve_http(app).await;
        FakeSlack {
            api_url: format!("http://127.0.0.1:{port}/api"),
            token: token.to_string(),
            shared,
        }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.shared.world.lock().unwrap()
    }

    pub fn add_channel(&self, id: &str) {
        self.world().channels.entry(id.to_string()).or_default();
    }

    /// A person's message in a channel (what a mention event refers to); returns its ts.
    pub fn say(&self, channel: &str, user: &str, text: &str, thread_ts: Option<&str>) -> String {
        let mut w = self.world();
        w.next_ts += 1;
        let ts = format!("1700000000.{:06}", w.next_ts);
        w.channels.entry(channel.into()).or_default().push(Message {
            ts: ts.clone(),
            thread_ts: thread_ts.map(str::to_string),
            user: user.into(),
            text: text.into(),
            blocks: Value::Null,
            history: Vec::new(),
        });
        ts
    }

    pub fn messages(&self, channel: &str) -> Vec<Message> {
        self.world()
            .channels
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// The bot's messages in a thread (root included), oldest first.
    pub fn thread(&self, channel: &str, root: &str) -> Vec<Message> {
        self.messages(channel)
            .into_iter()
            .filter(|m| {
                m.user == BOT_USER && (m.ts == root || m.thread_ts.as_deref() == Some(root))
            })
            .collect()
    }

    pub fn ephemerals(&self) -> Vec<Ephemeral> {
        self.world().ephemerals.clone()
    }

    pub fn problems(&self) -> Vec<String> {
        self.world().problems.clone()
    }

    /// Makes every `n`-th `chat.update` fail with 429 and `Retry-After: secs`.
    pub fn rate_limit_updates(&self, n: usize, secs: u64) {
        self.world().limit_updates = Some((n, secs));
    }

    /// Calls that came while a 429's Retry-After was still running (a sender that did not wait).
    pub fn impatient_calls(&self) -> usize {
        self.world()
            .problems
            .iter()
            .filter(|p| p.starts_with("called during Retry-After"))
            .count()
    }

    pub fn rate_limited(&self) -> usize {
        self.world()
            .calls
            .iter()
            .filter(|(m, _)| m == "429")
            .count()
    }
}

/// `v0=<hex>` over `v0:<timestamp>:<body>`: the `X-Slack-Signature` Slack sends.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

fn fail(w: &mut World, error: &str, what: String) -> Response {
    w.problems.push(format!("{error}: {what}"));
    Json(json!({"ok": false, "error": error})).into_response()
}

/// Slack's limits on a message: `Err((error code, what))`.
fn check_content(req: &Value) -> Result<(), (&'static str, String)> {
    let text = req["text"].as_str().unwrap_or("");
    let blocks = &req["blocks"];
    if text.is_empty() && !blocks.is_array() {
        return Err(("no_text", req.to_string()));
    }
    if text.chars().count() > 40_000 {
        return Err(("msg_too_long", format!("{} characters", text.len())));
    }
    if let Some(b) = blocks.as_array() {
        if b.len() > 50 {
            return Err(("invalid_blocks", format!("{} blocks", b.len())));
        }
        for block in b {
            match block["type"].as_str() {
                Some("section") => {
                    let t = block["text"]["text"].as_str().unwrap_or("");
                    if t.is_empty() || t.chars().count() > 3000 {
                        return Err((
                            "invalid_blocks",
                            format!("section text of {} characters", t.chars().count()),
                        ));
                    }
                }
                Some("actions") => {
                    let els = block["elements"].as_array().map(|e| e.len()).unwrap_or(0);
                    if els == 0 || els > 25 {
                        return Err(("invalid_blocks", "actions".into()));
                    }
                }
                Some("context") | Some("divider") | Some("header") => {}
                other => return Err(("invalid_blocks", format!("block type {other:?}"))),
            }
        }
    }
    Ok(())
}

async fn api(
    State(s): State<Shared>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut w = s.world.lock().unwrap();
    let now = Instant::now();
    if let Some(until) = w.wait_until {
        if now < until {
            w.problems
                .push(format!("called during Retry-After: {method}"));
        }
    }
    w.calls.push((method.clone(), now));
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", s.token) {
        return fail(&mut w, "invalid_auth", method);
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return fail(&mut w, "invalid_json", method);
    };
    let channel = req["channel"].as_str().unwrap_or("").to_string();
    if !w.channels.contains_key(&channel) {
        return fail(&mut w, "channel_not_found", format!("{method} {channel}"));
    }
    if let Err((error, what)) = check_content(&req) {
        return fail(&mut w, error, what);
    }
    let text = req["text"].as_str().unwrap_or("").to_string();
    let blocks = req["blocks"].clone();
    match method.as_str() {
        "chat.postMessage" => {
            let thread_ts = req["thread_ts"].as_str().map(str::to_string);
            if let Some(t) = &thread_ts {
                if !w.channels[&channel]
                    .iter()
                    .any(|m| &m.ts == t && m.thread_ts.is_none())
                {
                    return fail(&mut w, "thread_not_found", t.clone());
                }
            }
            w.next_ts += 1;
            let ts = format!("1700000000.{:06}", w.next_ts);
            w.channels.get_mut(&channel).unwrap().push(Message {
                ts: ts.clone(),
                thread_ts: thread_ts.clone(),
                user: BOT_USER.into(),
                text: text.clone(),
                blocks: blocks.clone(),
                history: Vec::new(),
            });
            Json(json!({"ok": true, "channel": channel, "ts": ts,
                        "message": {"type": "message", "ts": ts, "user": BOT_USER, "bot_id": "BAIRLOCK", "text": text, "thread_ts": thread_ts}}))
            .into_response()
        }
        "chat.update" => {
            let ts = req["ts"].as_str().unwrap_or("").to_string();
            w.updates += 1;
            if let Some((n, secs)) = w.limit_updates {
                if w.updates % n == 0 {
                    w.calls.push(("429".into(), now));
                    w.wait_until = Some(now + std::time::Duration::from_secs(secs));
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", secs.to_string())],
                        Json(json!({"ok": false, "error": "ratelimited"})),
                    )
                        .into_response();
                }
            }
            let Some(m) = w
                .channels
                .get_mut(&channel)
                .unwrap()
                .iter_mut()
                .find(|m| m.ts == ts)
            else {
                return fail(&mut w, "message_not_found", ts);
            };
            if m.user != BOT_USER {
                return fail(&mut w, "cant_update_message", ts);
            }
            let old = (
                std::mem::replace(&mut m.text, text.clone()),
                std::mem::replace(&mut m.blocks, blocks),
            );
            m.history.push(old);
            Json(
                json!({"ok": true, "channel": channel, "ts": ts, "text": text,
                        "message": {"text": text}}),
            )
            .into_response()
        }
        "chat.postEphemeral" => {
            let user = req["user"].as_str().unwrap_or("").to_string();
            if user.is_empty() {
                return fail(&mut w, "user_not_in_channel", method);
            }
            w.ephemerals.push(Ephemeral {
                channel,
                user,
                text,
            });
            Json(json!({"ok": true, "message_ts": "1700000000.999999"})).into_response()
        }
        _ => fail(&mut w, "unknown_method", method),
    }
}

/// Strict by default (see [`crate::fail_on_unexpected`]).
impl Drop for FakeSlack {
    fn drop(&mut self) {
        let seen = self
            .shared
            .world
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .clone();
        crate::fail_on_unexpected("the fake Slack", seen);
    }
}
