//! External coding CLIs: Codex (`codex exec --json`), Claude Code (`claude -p
//! --output-format stream-json`), OpenCode and Aider, run in the repository with stdin closed.
//! Their output is normalised into [`AgentEvent`]s: the JSON streams of Codex and Claude Code
//! event by event, the plain output of the others as command output with its end as summary.

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::Emit;
use airlock_sandboxd::proto::{AgentEvent, AgentRun};

/// How much of plain output becomes the summary.
const SUMMARY_TAIL: usize = 4000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Codex,
    Claude,
    Plain,
}

/// The command line of each CLI. They run inside the sandbox, which is the isolation, so their
/// own approval prompts and sandboxes are turned off.
fn command(run: &AgentRun, prompt: &str) -> (Vec<String>, Format) {
    let s = |v: &str| v.to_string();
    let (mut argv, model_flag, model, args, format) = match run {
        AgentRun::Codex { model, args } => (
            vec![
                s("codex"),
                s("exec"),
                s("--json"),
                s("--skip-git-repo-check"),
                s("--dangerously-bypass-approvals-and-sandbox"),
            ],
            "--model",
            model,
            args,
            Format::Codex,
        ),
        AgentRun::ClaudeCode { model, args } => (
            vec![
                s("claude"),
                s("-p"),
                s("--output-format"),
                s("stream-json"),
                s("--verbose"),
                s("--dangerously-skip-permissions"),
            ],
            "--model",
            model,
            args,
            Format::Claude,
        ),
        AgentRun::Opencode { model, args } => (
            vec![s("opencode"), s("run")],
            "--model",
            model,
            args,
            Format::Plain,
        ),
        AgentRun::Aider { model, args } => (
            vec![
                s("aider"),
                s("--yes-always"),
                s("--no-auto-commits"),
                // Aider would add `.aider*` to the repository's .gitignore, a change the
                // session would commit; the sandbox's .git/info/exclude keeps its files out.
                s("--no-gitignore"),
                s("--no-check-update"),
                s("--no-pretty"),
                s("--no-stream"),
            ],
            "--model",
            model,
            args,
            Format::Plain,
        ),
        AgentRun::Builtin { .. } => unreachable!("the built-in agent is not a CLI"),
    };
    if let Some(m) = model {
        argv.push(model_flag.into());
        argv.push(m.clone());
    }
    argv.extend(args.iter().cloned());
    if matches!(run, AgentRun::Aider { .. }) {
        argv.push("--message".into());
    }
    argv.push(prompt.to_string());
    (argv, format)
}

/// What one line of a CLI's JSON stream means, plus the final answer if it is one.
fn codex_line(
    v: &Value,
    out: &mut Vec<AgentEvent>,
    last: &mut Option<String>,
    failed: &mut Option<String>,
) {
    let kind = v["type"].as_str().unwrap_or("");
    match kind {
        "item.completed" | "item.started" => {
            let item = &v["item"];
            let done = kind == "item.completed";
            match item["type"].as_str().unwrap_or("") {
                "agent_message" if done => {
                    let text = item["text"].as_str().unwrap_or("").to_string();
                    if !text.is_empty() {
                        out.push(AgentEvent::Message { text: text.clone() });
                        *last = Some(text);
                    }
                }
                "command_execution" if !done => out.push(AgentEvent::ToolCall {
                    tool: "shell".into(),
                    input: serde_json::json!({"command": item["command"]}),
                }),
                "command_execution" => {
                    let text = item["aggregated_output"].as_str().unwrap_or("");
                    if !text.is_empty() {
                        out.push(AgentEvent::CommandOutput {
                            text: text.to_string(),
                        });
                    }
                }
                "file_change" if done => {
                    for c in item["changes"].as_array().into_iter().flatten() {
                        let change = match c["kind"].as_str().unwrap_or("update") {
                            "add" => "created",
                            "delete" => "deleted",
                            _ => "edited",
                        };
                        out.push(AgentEvent::FileChange {
                            path: c["path"].as_str().unwrap_or("").to_string(),
                            change: change.into(),
                        });
                    }
                }
                "mcp_tool_call" | "web_search" if !done => out.push(AgentEvent::ToolCall {
                    tool: item["type"].as_str().unwrap_or("").into(),
                    input: item.clone(),
                }),
                // Codex reports notices (fallbacks, missing model metadata) as error items;
                // they do not end the run.
                "error" if done => out.push(AgentEvent::CommandOutput {
                    text: format!("codex: {}\n", item["message"].as_str().unwrap_or("")),
                }),
                _ => {}
            }
        }
        "turn.failed" => {
            *failed = Some(
                v["error"]["message"]
                    .as_str()
                    .unwrap_or("the turn failed")
                    .to_string(),
            )
        }
        // Retries ("Reconnecting... 2/5") are announced as errors too; the turn's end decides.
        "error" => out.push(AgentEvent::CommandOutput {
            text: format!("codex: {}\n", v["message"].as_str().unwrap_or("")),
        }),
        _ => {}
    }
}

fn claude_line(
    v: &Value,
    out: &mut Vec<AgentEvent>,
    last: &mut Option<String>,
    failed: &mut Option<String>,
) {
    match v["type"].as_str().unwrap_or("") {
        "assistant" => {
            for part in v["message"]["content"].as_array().into_iter().flatten() {
                match part["type"].as_str().unwrap_or("") {
                    "text" => {
                        let text = part["text"].as_str().unwrap_or("").to_string();
                        if !text.trim().is_empty() {
                            out.push(AgentEvent::Message { text });
                        }
                    }
                    "tool_use" => {
                        let tool = part["name"].as_str().unwrap_or("tool").to_string();
                        let input = part["input"].clone();
                        if matches!(tool.as_str(), "Write" | "Edit" | "MultiEdit") {
                            if let Some(p) = input["file_path"].as_str() {
                                out.push(AgentEvent::FileChange {
                                    path: p.to_string(),
                                    change: if tool == "Write" { "written" } else { "edited" }
                                        .into(),
                                });
                            }
                        }
                        out.push(AgentEvent::ToolCall { tool, input });
                    }
                    _ => {}
                }
            }
        }
        "user" => {
            for part in v["message"]["content"].as_array().into_iter().flatten() {
                if part["type"] == "tool_result" {
                    let text = match &part["content"] {
                        Value::String(s) => s.clone(),
                        Value::Array(a) => a
                            .iter()
                            .filter_map(|p| p["text"].as_str())
                            .collect::<Vec<_>>()
                            .join("\n"),
                        _ => String::new(),
                    };
                    if !text.is_empty() {
                        out.push(AgentEvent::CommandOutput { text });
                    }
                }
            }
        }
        "result" => {
            let text = v["result"].as_str().unwrap_or("").to_string();
            if v["is_error"].as_bool().unwrap_or(false) {
                *failed = Some(if text.is_empty() {
                    "Claude Code reported an error".into()
                } else {
                    text
                });
            } else {
                *last = Some(text);
            }
        }
        _ => {}
    }
}

/// Runs the CLI to its end; returns whether it succeeded.
pub async fn run(agent: AgentRun, dir: &Path, prompt: &str, emit: &mut Emit) -> bool {
    let (argv, format) = command(&agent, prompt);
    let mut child = match tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "`{}` is not installed in this sandbox; install it in the profile's image or setup steps",
                    argv[0]
                )
            } else {
                format!("cannot start `{}`: {e}", argv[0])
            };
            emit.event(&AgentEvent::Summary {
                text: why,
                ok: false,
            });
            return false;
        }
    };
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut last: Option<String> = None;
    let mut failed: Option<String> = None;
    let mut plain_tail = String::new();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                let mut out = Vec::new();
                match (format, serde_json::from_str::<Value>(&line)) {
                    (Format::Codex, Ok(v)) => codex_line(&v, &mut out, &mut last, &mut failed),
                    (Format::Claude, Ok(v)) => claude_line(&v, &mut out, &mut last, &mut failed),
                    _ => {
                        plain_tail.push_str(&line);
                        plain_tail.push('\n');
                        if plain_tail.len() > 2 * SUMMARY_TAIL {
                            plain_tail = super::tools::tail(&plain_tail, SUMMARY_TAIL);
                        }
                        out.push(AgentEvent::CommandOutput { text: format!("{line}\n") });
                    }
                }
                for ev in out {
                    emit.event(&ev);
                }
            }
            Some(text) = rx.recv() => emit.event(&AgentEvent::CommandOutput { text }),
        }
    }
    while let Ok(text) = rx.try_recv() {
        emit.event(&AgentEvent::CommandOutput { text });
    }
    let status = child.wait().await;
    let code = status.as_ref().ok().and_then(|s| s.code());
    let ok = code == Some(0) && failed.is_none();
    let text = if let Some(f) = failed {
        format!("{} failed: {f}", argv[0])
    } else if ok {
        last.unwrap_or_else(|| super::tools::tail(plain_tail.trim(), SUMMARY_TAIL))
    } else {
        format!(
            "{} exited with {}",
            argv[0],
            code.map(|c| format!("status {c}"))
                .unwrap_or_else(|| "a signal".into())
        )
    };
    emit.event(&AgentEvent::Summary { text, ok });
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codex_events_become_session_events() {
        let lines = [
            r#"{"type":"thread.started","thread_id":"t"}"#,
            r#"{"type":"item.completed","item":{"id":"0","type":"error","message":"Model metadata for `m` not found."}}"#,
            r#"{"type":"item.started","item":{"id":"1","type":"command_execution","command":"bash -lc 'cargo test'","status":"in_progress"}}"#,
            r#"{"type":"item.completed","item":{"id":"1","type":"command_execution","command":"bash -lc 'cargo test'","aggregated_output":"ok\n","exit_code":0}}"#,
            r#"{"type":"item.completed","item":{"id":"2","type":"file_change","changes":[{"path":"src/a.rs","kind":"update"}],"status":"completed"}}"#,
            r#"{"type":"item.completed","item":{"id":"3","type":"agent_message","text":"Fixed it."}}"#,
            r#"{"type":"turn.completed","usage":{"input_tokens":10,"output_tokens":5}}"#,
        ];
        let (mut out, mut last, mut failed) = (Vec::new(), None, None);
        for l in lines {
            codex_line(
                &serde_json::from_str(l).unwrap(),
                &mut out,
                &mut last,
                &mut failed,
            );
        }
        assert_eq!(out.len(), 5);
        assert_eq!(
            out[0],
            AgentEvent::CommandOutput {
                text: "codex: Model metadata for `m` not found.\n".into()
            }
        );
        out.remove(0);
        assert!(matches!(&out[0], AgentEvent::ToolCall { tool, .. } if tool == "shell"));
        assert_eq!(
            out[1],
            AgentEvent::CommandOutput {
                text: "ok\n".into()
            }
        );
        assert_eq!(
            out[2],
            AgentEvent::FileChange {
                path: "src/a.rs".into(),
                change: "edited".into()
            }
        );
        assert_eq!(last.as_deref(), Some("Fixed it."));
        assert!(failed.is_none(), "notices do not fail the run");
        let failure = serde_json::json!({"type":"turn.failed","error":{"message":"quota"}});
        codex_line(&failure, &mut out, &mut last, &mut failed);
        assert_eq!(failed.as_deref(), Some("quota"));
    }

    #[test]
    fn claude_results_and_errors_are_read() {
        let (mut out, mut last, mut failed) = (Vec::new(), None, None);
        let v = serde_json::json!({"type":"assistant","message":{"content":[{"type":"text","text":"Looking"},{"type":"tool_use","name":"Edit","input":{"file_path":"a.py"}}]}});
        claude_line(&v, &mut out, &mut last, &mut failed);
        assert_eq!(out.len(), 3);
        claude_line(
            &serde_json::json!({"type":"result","is_error":false,"result":"Done."}),
            &mut out,
            &mut last,
            &mut failed,
        );
        assert_eq!(last.as_deref(), Some("Done."));
        claude_line(
            &serde_json::json!({"type":"result","is_error":true,"result":"out of credit"}),
            &mut out,
            &mut last,
            &mut failed,
        );
        assert_eq!(failed.as_deref(), Some("out of credit"));
    }

    #[test]
    fn each_cli_gets_its_non_interactive_command_line() {
        let (argv, _) = command(
            &AgentRun::Codex {
                model: Some("gpt-5".into()),
                args: vec![],
            },
            "fix it",
        );
        assert_eq!(
            argv,
            [
                "codex",
                "exec",
                "--json",
                "--skip-git-repo-check",
                "--dangerously-bypass-approvals-and-sandbox",
                "--model",
                "gpt-5",
                "fix it"
            ]
        );
        let (argv, _) = command(
            &AgentRun::Aider {
                model: None,
                args: vec!["--no-git".into()],
            },
            "fix it",
        );
        assert_eq!(argv.last().unwrap(), "fix it");
        assert_eq!(argv[argv.len() - 2], "--message");
        assert!(argv.iter().any(|a| a == "--no-gitignore"), "{argv:?}");
    }
}
