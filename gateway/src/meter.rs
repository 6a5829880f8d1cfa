//! Model usage metering: the token counts OpenAI- and Anthropic-style APIs report, read from
//! JSON responses and from server-sent event streams as they pass.
//!
//! Shapes understood: `usage.{prompt_tokens,completion_tokens}` (OpenAI chat and completions,
//! also in the last chunk of a stream), `usage.{input_tokens,output_tokens}` (OpenAI
//! Responses, Anthropic), nested under `response` (Responses API stream events) or `message`
//! (Anthropic `message_start`). Anthropic streams report output tokens cumulatively, so the
//! largest count seen per field is the response's.

use serde_json::Value;

/// Paths that are model calls: the ones budgets refuse once spent.
const MODEL_PATHS: &[&str] = &[
    "/chat/completions",
    "/completions",
    "/responses",
    "/messages",
    "/embeddings",
];

pub fn is_model_call(method: &str, path: &str) -> bool {
    method == "POST" && MODEL_PATHS.iter().any(|p| path.ends_with(p))
}

/// A WebSocket upgrade on a model path (the Responses API over WebSocket, as Codex uses it).
pub fn is_model_upgrade(path: &str) -> bool {
    MODEL_PATHS.iter().any(|p| path.ends_with(p))
}

/// The largest JSON body (or SSE line) read for usage; larger ones are passed on unread.
const MAX_JSON: usize = 8 * 1024 * 1024;
const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub model: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

impl Usage {
    pub fn is_empty(&self) -> bool {
        self.input_tokens == 0 && self.output_tokens == 0
    }

    /// Takes in the usage one JSON value (a response, or a stream event) reports.
    pub fn merge(&mut self, v: &Value) {
        for obj in [Some(v), v.get("response"), v.get("message")]
            .into_iter()
            .flatten()
        {
            if self.model.is_none() {
                if let Some(m) = obj.get("model").and_then(Value::as_str) {
                    self.model = Some(m.chars().take(128).collect());
                }
            }
            let Some(u) = obj.get("usage") else { continue };
            let n = |keys: &[&str]| {
                keys.iter()
                    .find_map(|k| u.get(*k).and_then(Value::as_i64))
                    .unwrap_or(0)
                    .max(0)
            };
            self.input_tokens = self.input_tokens.max(n(&["prompt_tokens", "input_tokens"]));
            self.output_tokens = self
                .output_tokens
                .max(n(&["completion_tokens", "output_tokens"]));
        }
    }
}

/// Reads one response body as it streams past.
pub enum Meter {
    Json { buf: Vec<u8>, overflow: bool },
    Sse { line: Vec<u8>, usage: Usage },
}

impl Meter {
    /// A meter for a response of this content type, if it is one that carries usage.
    pub fn for_content_type(content_type: &str) -> Option<Meter> {
        let ct = content_type.to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            Some(Meter::Sse {
                line: Vec::new(),
                usage: Usage::default(),
            })
        } else if ct.starts_with("application/json") {
            Some(Meter::Json {
                buf: Vec::new(),
                overflow: false,
            })
        } else {
            None
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            Meter::Json { buf, overflow } => {
                if !*overflow {
                    if buf.len() + chunk.len() > MAX_JSON {
                        *overflow = true;
                        buf.clear();
                    } else {
                        buf.extend_from_slice(chunk);
                    }
                }
            }
            Meter::Sse { line, usage } => {
                for &b in chunk {
                    if b == b'\n' {
                        sse_line(line, usage);
                        line.clear();
                    } else if line.len() < MAX_LINE {
                        line.push(b);
                    }
                }
            }
        }
    }

    /// The usage the whole response reported.
    pub fn finish(self) -> Usage {
        match self {
            Meter::Json { buf, overflow } => {
                let mut usage = Usage::default();
                if !overflow {
                    if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                        usage.merge(&v);
                    }
                }
                usage
            }
            Meter::Sse {
                mut line,
                mut usage,
            } => {
                sse_line(&mut line, &mut usage);
                usage
            }
        }
    }
}

fn sse_line(line: &mut Vec<u8>, usage: &mut Usage) {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if let Some(data) = line.strip_prefix(b"data:") {
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            usage.merge(&v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn metered(ct: &str, chunks: &[&str]) -> Usage {
        let mut m = Meter::for_content_type(ct).unwrap();
        for c in chunks {
            m.feed(c.as_bytes());
        }
        m.finish()
    }

    #[test]
    fn usage_is_read_from_each_api_shape() {
        let openai = metered(
            "application/json",
            &[
                r#"{"model":"gpt-5","choices":[],"usage":{"prompt_tokens":12,"#,
                r#""completion_tokens":30,"total_tokens":42}}"#,
            ],
        );
        assert_eq!(
            openai,
            Usage {
                model: Some("gpt-5".into()),
                input_tokens: 12,
                output_tokens: 30
            }
        );
        let stream = metered(
            "text/event-stream; charset=utf-8",
            &[
                "data: {\"model\":\"gpt-5\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion",
                "_tokens\":7}}\n\ndata: [DONE]\n\n",
            ],
        );
        assert_eq!((stream.input_tokens, stream.output_tokens), (5, 7));
        let responses = metered(
            "text/event-stream",
            &["event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"o4\",\"usage\":{\"input_tokens\":9,\"output_tokens\":4}}}\n\n"],
        );
        assert_eq!(
            (
                responses.model.as_deref(),
                responses.input_tokens,
                responses.output_tokens
            ),
            (Some("o4"), 9, 4)
        );
        let anthropic = metered(
            "text/event-stream",
            &[
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
            ],
        );
        assert_eq!((anthropic.input_tokens, anthropic.output_tokens), (25, 15));
        assert!(metered("application/json", &["not json"]).is_empty());
        assert!(Meter::for_content_type("text/html").is_none());
    }

    #[test]
    fn model_calls_are_recognised_by_path() {
        assert!(is_model_call("POST", "/v1/chat/completions"));
        assert!(is_model_call("POST", "/v1/messages"));
        assert!(!is_model_call("GET", "/v1/models"));
        assert!(!is_model_call("POST", "/repos/a/b/issues"));
    }

    proptest! {
        #[test]
        fn any_bytes_meter_without_panicking(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            for ct in ["application/json", "text/event-stream"] {
                let mut m = Meter::for_content_type(ct).unwrap();
                for c in &chunks { m.feed(c); }
                let u = m.finish();
                prop_assert!(u.input_tokens >= 0 && u.output_tokens >= 0);
            }
        }
    }
}
