//! A strict, scripted fake of an OpenAI-compatible model API, over HTTPS with its own test CA.
//!
//! Chat completions (`POST /v1/chat/completions`, JSON) answer the script's steps in order:
//! tool calls, then a final answer. The Responses API, which Codex CLI speaks, answers from
//! the same script, over HTTP (`POST /v1/responses`, server-sent events) or over a WebSocket
//! (`GET /v1/responses`, one `response.create` message per request, the same events back as
//! messages); which transport each request came by, and the WebSocket extensions offered,
//! are recorded. Every request needs the
//! right `Authorization: Bearer <key>`; a tool result the agent failed to send back, a body
//! that is not the API's shape, or a request past the end of the script is recorded as a
//! problem (and answered with an error), and tests assert there were none.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// One answer of the script.
#[derive(Debug, Clone)]
pub enum Step {
    /// Ask the agent to call these tools: `(name, arguments)`.
    Tools(Vec<(&'static str, Value)>),
    /// The final answer.
    Answer(&'static str),
}

pub struct FakeModel {
    /// `https://localhost:<port>`: the upstream a route names.
    pub url: String,
    pub ca_pem: String,
    pub ca_file: PathBuf,
    shared: Shared,
    _dir: tempfile::TempDir,
}

#[derive(Clone)]
struct Shared {
    /// The API key every request needs; `None` for a local server that takes any (Ollama,
    /// llama.cpp server and vLLM without `--api-key`).
    key: Option<String>,
    script: Arc<Vec<Step>>,
    /// Request bodies, in order.
    requests: Arc<Mutex<Vec<Value>>>,
    problems: Arc<Mutex<Vec<String>>>,
    /// Which step each API (chat or responses) is at.
    position: Arc<Mutex<(usize, usize)>>,
    /// For each Responses request: "http" or "websocket".
    transports: Arc<Mutex<Vec<&'static str>>>,
    /// The `Sec-WebSocket-Extensions` of each WebSocket upgrade.
    ws_offers: Arc<Mutex<Vec<Option<String>>>>,
}

impl FakeModel {
    pub async fn start(key: &str, script: Vec<Step>) -> FakeModel {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::tls::TestCa::new("Fake model test CA", dir.path());
        let shared = Shared::new(Some(key), script);
        let port = crate::tls::serve_https(
            router(shared.clone()),
            ca.server_config(&["localhost", "127.0.0.1"]),
        )
        .await;
        FakeModel {
            url: format!("https://localhost:{port}"),
            ca_pem: ca.pem.clone(),
            ca_file: ca.file.clone(),
            shared,
            _dir: dir,
        }
    }

    /// A model server on this machine as Ollama or llama.cpp's server run it: plain HTTP on
    /// `listener`, no API key.
    pub async fn start_local(listener: tokio::net::TcpListener, script: Vec<Step>) -> FakeModel {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Shared::new(None, script);
        let port = listener.local_addr().unwrap().port();
        let app = router(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeModel {
            url: format!("http://127.0.0.1:{port}"),
            ca_pem: String::new(),
            ca_file: PathBuf::new(),
            shared,
            _dir: dir,
        }
    }

    pub fn requests(&self) -> Vec<Value> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn problems(&self) -> Vec<String> {
        self.shared.problems.lock().unwrap().clone()
    }

    /// How each Responses request came: "http" or "websocket".
    pub fn transports(&self) -> Vec<&'static str> {
        self.shared.transports.lock().unwrap().clone()
    }

    /// The extensions each WebSocket upgrade offered.
    pub fn ws_offers(&self) -> Vec<Option<String>> {
        self.shared.ws_offers.lock().unwrap().clone()
    }
}

impl Shared {
    fn new(key: Option<&str>, script: Vec<Step>) -> Shared {
        Shared {
            key: key.map(str::to_string),
            script: Arc::new(script),
            requests: Arc::default(),
            problems: Arc::default(),
            position: Arc::default(),
            transports: Arc::default(),
            ws_offers: Arc::default(),
        }
    }
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/responses", post(responses).get(ws_responses))
        .route("/v1/models", get(models))
        .fallback(unknown)
        .with_state(shared)
}

fn problem(s: &Shared, what: String) -> Response {
    s.problems.lock().unwrap().push(what.clone());
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"message": what, "type": "invalid_request_error"}})),
    )
        .into_response()
}

fn authorized(s: &Shared, headers: &HeaderMap) -> bool {
    let Some(key) = &s.key else {
        return true;
    };
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {key}"))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})),
    )
        .into_response()
}

async fn unknown(State(s): State<Shared>, req: axum::extract::Request) -> Response {
    let what = format!("{} {}", req.method(), req.uri().path());
    s.problems
        .lock()
        .unwrap()
        .push(format!("unknown endpoint {what}"));
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": {"message": format!("Unknown request URL: {what}")}})),
    )
        .into_response()
}

async fn models(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    Json(json!({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}))
        .into_response()
}

async fn chat(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return problem(&s, "the body is not JSON".into());
    };
    s.requests.lock().unwrap().push(req.clone());
    let Some(messages) = req["messages"].as_array() else {
        return problem(&s, "no messages array".into());
    };
    if req["model"].as_str().is_none_or(str::is_empty) {
        return problem(&s, "no model".into());
    }
    // Every tool call the assistant made must be answered by a tool message.
    let mut open: Vec<String> = Vec::new();
    for m in messages {
        match m["role"].as_str().unwrap_or("") {
            "assistant" => {
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    open.push(c["id"].as_str().unwrap_or("").to_string());
                }
            }
            "tool" => {
                let id = m["tool_call_id"].as_str().unwrap_or("");
                open.retain(|o| o != id);
                if m["content"].as_str().is_none() {
                    return problem(&s, format!("tool result {id} has no content"));
                }
            }
            "system" | "user" => {}
            other => return problem(&s, format!("unknown role {other:?}")),
        }
    }
    if !open.is_empty() {
        return problem(&s, format!("tool calls without results: {open:?}"));
    }
    let step = {
        let mut p = s.position.lock().unwrap();
        p.0 += 1;
        p.0 - 1
    };
    let Some(answer) = s.script.get(step) else {
        return problem(
            &s,
            format!("request {} is past the end of the script", step + 1),
        );
    };
    let message = match answer {
        Step::Tools(calls) => json!({
            "role": "assistant", "content": null,
            "tool_calls": calls.iter().enumerate().map(|(i, (name, args))| json!({
                "id": format!("call_{step}_{i}"), "type": "function",
                "function": {"name": name, "arguments": args.to_string()},
            })).collect::<Vec<_>>(),
        }),
        Step::Answer(text) => json!({"role": "assistant", "content": text}),
    };
    let finish = if matches!(answer, Step::Tools(_)) {
        "tool_calls"
    } else {
        "stop"
    };
    Json(json!({
        "id": format!("chatcmpl-{step}"), "object": "chat.completion", "created": 1, "model": req["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }))
    .into_response()
}

fn sse(events: Vec<Value>) -> Response {
    let mut body = String::new();
    for e in events {
        body.push_str(&format!(
            "event: {}\ndata: {}\n\n",
            e["type"].as_str().unwrap_or(""),
            e
        ));
    }
    ([("content-type", "text/event-stream")], body).into_response()
}

/// The Responses API as Codex uses it over HTTP: each request answers the next step,
/// streamed as server-sent events.
async fn responses(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return problem(&s, "the body is not JSON".into());
    };
    s.transports.lock().unwrap().push("http");
    match response_events(&s, &req) {
        Ok(events) => sse(events),
        Err(what) => problem(&s, what),
    }
}

/// The Responses API over a WebSocket: each `response.create` message is one request (its
/// other fields are the request body); the events come back as text messages.
async fn ws_responses(State(s): State<Shared>, req: axum::extract::Request) -> Response {
    if !authorized(&s, req.headers()) {
        return unauthorized();
    }
    s.ws_offers
        .lock()
        .unwrap()
        .push(crate::websocket::offered_extensions(req.headers()));
    let shared = s.clone();
    crate::websocket::accept(req, HeaderMap::new(), move |mut ws| async move {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        while let Some(Ok(m)) = ws.next().await {
            let text = match m {
                Message::Text(t) => t.as_str().to_string(),
                Message::Close(_) => return,
                Message::Ping(_) | Message::Pong(_) => continue,
                other => {
                    shared
                        .problems
                        .lock()
                        .unwrap()
                        .push(format!("unexpected WebSocket message {other:?}"));
                    return;
                }
            };
            let Ok(mut req) = serde_json::from_str::<Value>(&text) else {
                shared
                    .problems
                    .lock()
                    .unwrap()
                    .push("a WebSocket message is not JSON".into());
                return;
            };
            if req["type"] != "response.create" {
                shared
                    .problems
                    .lock()
                    .unwrap()
                    .push(format!("unexpected WebSocket message type {}", req["type"]));
                return;
            }
            req.as_object_mut().map(|o| o.remove("type"));
            // A warm-up request (`generate: false`) gets an empty completed response and
            // takes no step of the script.
            let events = if req["generate"] == false {
                let id = "resp_warmup";
                Ok(vec![
                    json!({"type": "response.created", "response": {"id": id}}),
                    json!({"type": "response.completed", "response": {"id": id, "object": "response", "status": "completed", "output": [],
                        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}}),
                ])
            } else {
                shared.transports.lock().unwrap().push("websocket");
                response_events(&shared, &req)
            };
            let events = match events {
                Ok(e) => e,
                Err(what) => {
                    shared.problems.lock().unwrap().push(what.clone());
                    vec![
                        json!({"type": "error", "status": 400, "error": {"type": "invalid_request_error", "message": what}}),
                    ]
                }
            };
            for e in events {
                if ws.send(Message::text(e.to_string())).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// The events that answer one Responses request: the next step of the script.
fn response_events(s: &Shared, req: &Value) -> Result<Vec<Value>, String> {
    s.requests.lock().unwrap().push(req.clone());
    if !req["input"].is_array() {
        return Err("no input array".into());
    }
    let step = {
        let mut p = s.position.lock().unwrap();
        p.1 += 1;
        p.1 - 1
    };
    let Some(answer) = s.script.get(step) else {
        return Err(format!(
            "request {} is past the end of the script",
            step + 1
        ));
    };
    let id = format!("resp_{step}");
    let mut events = vec![json!({"type": "response.created", "response": {"id": id}})];
    let mut output = Vec::new();
    match answer {
        Step::Tools(calls) => {
            for (i, (name, args)) in calls.iter().enumerate() {
                let item = json!({"type": "function_call", "id": format!("fc_{step}_{i}"), "call_id": format!("call_{step}_{i}"),
                                  "name": name, "arguments": args.to_string(), "status": "completed"});
                events.push(
                    json!({"type": "response.output_item.done", "output_index": i, "item": item}),
                );
                output.push(item);
            }
        }
        Step::Answer(text) => {
            let item = json!({"type": "message", "id": format!("msg_{step}"), "role": "assistant", "status": "completed",
                              "content": [{"type": "output_text", "text": text, "annotations": []}]});
            events.push(json!({"type": "response.output_text.delta", "item_id": format!("msg_{step}"), "output_index": 0, "content_index": 0, "delta": text}));
            events.push(
                json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
            );
            output.push(item);
        }
    }
    events.push(json!({"type": "response.completed", "response": {"id": id, "object": "response", "status": "completed", "output": output,
        "usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 120}}}));
    Ok(events)
}

/// Strict by default (see [`crate::fail_on_unexpected`]).
impl Drop for FakeModel {
    fn drop(&mut self) {
        let seen = self
            .shared
            .problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        crate::fail_on_unexpected("the fake model API", seen);
    }
}
