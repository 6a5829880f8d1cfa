//! `sandboxd agent`: runs a session's agent in the repository and writes what happens to
//! stdout as one JSON [`AgentEvent`] per line (the broker turns them into session events).
//! The built-in agent is a tool-calling loop against an OpenAI-compatible API; the external
//! CLIs (Codex, Claude Code, OpenCode, Aider) are run and their output normalised.
//!
//! Like every process in the sandbox it holds no credential: model and git requests go
//! through the gateway, which adds them. Placeholder keys satisfy tools that insist on one.

mod builtin;
mod cli;
mod tools;

use std::io::Write;
use std::path::PathBuf;

use airlock_sandboxd::proto::{AgentEvent, AgentRun, ENV_AGENT, ENV_PROMPT, REPO_DIR};

/// Largest text of one event line (the broker bounds events too).
const EVENT_TEXT: usize = 64 * 1024;

/// Where events go: stdout in the sandbox, a buffer in tests.
pub struct Emit {
    buffer: Option<Vec<String>>,
}

impl Emit {
    fn stdout() -> Emit {
        Emit { buffer: None }
    }

    #[cfg(test)]
    pub fn buffer() -> Emit {
        Emit {
            buffer: Some(Vec::new()),
        }
    }

    #[cfg(test)]
    pub fn lines(&self) -> Vec<String> {
        self.buffer.clone().unwrap_or_default()
    }

    pub fn event(&mut self, ev: &AgentEvent) {
        let ev = bound(ev.clone());
        let line = serde_json::to_string(&ev).expect("events serialise");
        match &mut self.buffer {
            Some(b) => b.push(line),
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }
}

fn cut(text: String) -> String {
    if text.len() <= EVENT_TEXT {
        return text;
    }
    let mut end = EVENT_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[… cut at {EVENT_TEXT} bytes]", &text[..end])
}

fn bound(ev: AgentEvent) -> AgentEvent {
    match ev {
        AgentEvent::Message { text } => AgentEvent::Message { text: cut(text) },
        AgentEvent::CommandOutput { text } => AgentEvent::CommandOutput { text: cut(text) },
        AgentEvent::Summary { text, ok } => AgentEvent::Summary {
            text: cut(text),
            ok,
        },
        AgentEvent::ToolCall { tool, input } => {
            let shown = input.to_string();
            let input = if shown.len() > 4096 {
                serde_json::Value::String(format!(
                    "{}…",
                    &shown[..shown.floor_char_boundary_compat(4096)]
                ))
            } else {
                input
            };
            AgentEvent::ToolCall { tool, input }
        }
        other => other,
    }
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// Runs the agent described by `AIRLOCK_AGENT`; the exit status says whether it succeeded.
pub async fn main() -> std::process::ExitCode {
    let mut emit = Emit::stdout();
    let run: AgentRun = match std::env::var(ENV_AGENT)
        .map_err(|_| format!("{ENV_AGENT} is not set"))
        .and_then(|s| {
            serde_json::from_str(&s).map_err(|e| format!("{ENV_AGENT} is not valid: {e}"))
        }) {
        Ok(r) => r,
        Err(e) => {
            emit.event(&AgentEvent::Summary {
                text: format!("sandboxd cannot start the agent: {e}"),
                ok: false,
            });
            return std::process::ExitCode::from(2);
        }
    };
    let prompt = std::env::var(ENV_PROMPT).unwrap_or_default();
    let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from(REPO_DIR));
    let ok = match run {
        AgentRun::Builtin {
            model,
            base_url,
            max_steps,
            max_tokens,
            system,
        } => {
            builtin::run(
                builtin::Settings {
                    model,
                    base_url,
                    max_steps,
                    max_tokens,
                    system,
                },
                &dir,
                &prompt,
                &mut emit,
            )
            .await
        }
        other => cli::run(other, &dir, &prompt, &mut emit).await,
    };
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}
