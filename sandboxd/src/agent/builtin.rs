//! Airlock's built-in agent: a tool-calling loop against any OpenAI-compatible
//! chat-completions API, with step and token limits. The API key it sends is a placeholder;
//! the gateway overwrites it with the real one on the way out.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::{tools, Emit};
use airlock_sandboxd::proto::{AgentEvent, CA_MOUNT};

pub struct Settings {
    pub model: String,
    pub base_url: String,
    pub max_steps: u32,
    pub max_tokens: u64,
    pub system: String,
}

/// Placeholder sent as the API key; never a real credential.
const PLACEHOLDER_KEY: &str = "airlock-placeholder";

fn client() -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .connect_timeout(Duration::from_secs(30));
    if let Ok(pem) = std::fs::read(CA_MOUNT) {
        let ca = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("the deployment CA is unreadable: {e}"))?;
        b = b.add_root_certificate(ca);
    }
    b.build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))
}

/// One chat-completions call, retried on connection failures and 5xx answers.
async fn complete(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value, String> {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=4 {
        let sent = http
            .post(url)
            .bearer_auth(PLACEHOLDER_KEY)
            .json(body)
            .send()
            .await;
        let retry = match sent {
            Ok(r) if r.status().is_success() => {
                return r
                    .json::<Value>()
                    .await
                    .map_err(|e| format!("the model API's answer is not JSON: {e}"))
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| text.trim().chars().take(500).collect());
                let why = format!("the model API answered {status}: {message}");
                if !status.is_server_error() {
                    return Err(why);
                }
                why
            }
            Err(e) => format!("cannot reach the model API at {url}: {e}"),
        };
        if attempt == 4 {
            return Err(retry);
        }
        // On stderr, so the session's log says why the same request went twice.
        eprintln!(
            "airlock agent: {retry}; trying again in {} s (attempt {} of 4)",
            delay.as_secs(),
            attempt + 1
        );
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    unreachable!()
}

/// A short, human description of a tool call.
fn describe(name: &str, args: &Value) -> Value {
    match name {
        "shell" => json!({"command": args.get("command")}),
        "write_file" => {
            json!({"path": args.get("path"), "bytes": args.get("content").and_then(Value::as_str).map(str::len)})
        }
        "edit_file" | "read_file" => json!({"path": args.get("path")}),
        _ => args.clone(),
    }
}

/// Runs the loop until the model answers without a tool call, or a limit is reached.
/// Returns whether the agent finished.
pub async fn run(s: Settings, dir: &Path, prompt: &str, emit: &mut Emit) -> bool {
    let http = match client() {
        Ok(c) => c,
        Err(e) => {
            emit.event(&AgentEvent::Summary { text: e, ok: false });
            return false;
        }
    };
    let url = format!("{}/chat/completions", s.base_url.trim_end_matches('/'));
    let mut messages = vec![
        json!({"role": "system", "content": s.system}),
        json!({"role": "user", "content": prompt}),
    ];
    let tools = tools::definitions();
    let mut used: u64 = 0;
    for step in 1..=s.max_steps {
        let body =
            json!({"model": s.model, "messages": messages, "tools": tools, "tool_choice": "auto"});
        let answer = match complete(&http, &url, &body).await {
            Ok(a) => a,
            Err(e) => {
                emit.event(&AgentEvent::Summary {
                    text: format!("The agent stopped at step {step}: {e}"),
                    ok: false,
                });
                return false;
            }
        };
        used += answer["usage"]["total_tokens"].as_u64().unwrap_or(0);
        let message = answer["choices"][0]["message"].clone();
        if !message.is_object() {
            emit.event(&AgentEvent::Summary {
                text: format!(
                    "The agent stopped at step {step}: the model API's answer has no message"
                ),
                ok: false,
            });
            return false;
        }
        let content = message["content"].as_str().unwrap_or("").to_string();
        let calls = message["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if calls.is_empty() {
            emit.event(&AgentEvent::Summary {
                text: content,
                ok: true,
            });
            return true;
        }
        if !content.trim().is_empty() {
            emit.event(&AgentEvent::Message {
                text: content.clone(),
            });
        }
        messages
            .push(json!({"role": "assistant", "content": message["content"], "tool_calls": calls}));
        for call in &calls {
            let id = call["id"].as_str().unwrap_or("").to_string();
            let name = call["function"]["name"].as_str().unwrap_or("").to_string();
            let args: Value = call["function"]["arguments"]
                .as_str()
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or(Value::Null);
            emit.event(&AgentEvent::ToolCall {
                tool: name.clone(),
                input: describe(&name, &args),
            });
            let result = if args.is_object() {
                tools::run(dir, &name, &args, emit).await
            } else {
                "error: the arguments are not a JSON object".to_string()
            };
            messages.push(json!({"role": "tool", "tool_call_id": id, "content": result}));
        }
        if s.max_tokens > 0 && used >= s.max_tokens {
            emit.event(&AgentEvent::Summary {
                text: format!(
                    "The agent stopped after {used} model tokens (the limit is {}; raise agent.max_tokens in the profile).",
                    s.max_tokens
                ),
                ok: false,
            });
            return false;
        }
    }
    emit.event(&AgentEvent::Summary {
        text: format!(
            "The agent stopped after {} steps without finishing (raise agent.max_steps in the profile).",
            s.max_steps
        ),
        ok: false,
    });
    false
}
