//! A session's status as people see it in their thread: its state, the steps so far, and at
//! the end the summary, the pull request and the model usage. Built from the session's
//! events (the one record), then rendered for each surface. Agent text is made safe by
//! `airlock_core::render`.

use airlock_core::domain::{EventKind, SessionState};
use airlock_core::ids::SessionId;
use airlock_core::render;
use airlock_core::store::{Session, SessionEvent};
use airlock_core::Store;

/// How many of the latest steps a status shows.
const STEPS: usize = 12;

#[derive(Debug, Clone, PartialEq)]
pub struct StatusView {
    pub session: SessionId,
    pub state: SessionState,
    pub reason: Option<String>,
    pub prompt: String,
    /// Short descriptions of the latest steps (markdown), oldest first.
    pub steps: Vec<String>,
    pub more_steps: usize,
    /// The agent's final answer (markdown), once it has one.
    pub summary: Option<String>,
    pub branch: Option<String>,
    pub pull_request: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub duration_ms: Option<i64>,
    /// The session on the admin page.
    pub link: String,
}

fn code(text: &str, max: usize) -> String {
    let t = render::one_line(text, max).replace('`', "'");
    format!("`{t}`")
}

fn step(e: &SessionEvent) -> Option<String> {
    let s = |k: &str| e.payload.get(k).and_then(|v| v.as_str()).unwrap_or("");
    match e.kind {
        EventKind::ToolCall => {
            let input = &e.payload["input"];
            let field = |k: &str| input.get(k).and_then(|v| v.as_str());
            Some(match (s("tool"), field("command"), field("path")) {
                (_, Some(cmd), _) => format!("ran {}", code(cmd, 100)),
                ("read_file", _, Some(p)) => format!("read {}", code(p, 100)),
                ("write_file", _, Some(p)) | ("edit_file", _, Some(p)) => {
                    format!("edited {}", code(p, 100))
                }
                (tool, _, _) => format!("used {}", code(tool, 40)),
            })
        }
        EventKind::FileChange => Some(format!("{} {}", s("change"), code(s("path"), 100))),
        EventKind::Git if e.payload["pushed"] == true => {
            Some(format!("pushed {}", code(s("branch"), 100)))
        }
        _ => None,
    }
}

impl StatusView {
    pub async fn load(
        store: &Store,
        session: &Session,
        public_url: &str,
    ) -> anyhow::Result<StatusView> {
        // Only the current turn (from its `turn` event, a follow-up, on), without its output.
        let turn = store
            .turn_events(&session.id, airlock_core::store::EVENT_PAGE)
            .await?;
        let prompt = turn
            .first()
            .filter(|e| e.kind == EventKind::Turn)
            .and_then(|e| e.payload["prompt"].as_str())
            .unwrap_or(&session.prompt)
            .to_string();
        let steps: Vec<String> = turn.iter().filter_map(step).collect();
        let more_steps = steps.len().saturating_sub(STEPS);
        let summary = turn
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::Summary)
            .and_then(|e| {
                let text = e.payload["text"].as_str().unwrap_or("");
                (!text.trim().is_empty()).then(|| {
                    if e.payload["runner"] == "agent" {
                        text.to_string()
                    } else {
                        // A command's output: shown as it is, in a block.
                        format!("```\n{}\n```", text.trim_end().replace("```", "'''"))
                    }
                })
            });
        let duration_ms = turn
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::Summary)
            .and_then(|e| e.payload["duration_ms"].as_i64());
        let usage = store.session_usage(&session.id).await?;
        Ok(StatusView {
            session: session.id.clone(),
            state: session.state,
            reason: session.reason.clone(),
            prompt,
            steps: steps[more_steps..].to_vec(),
            more_steps,
            summary,
            branch: session.branch.clone(),
            pull_request: session.pull_request_url.clone(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            duration_ms,
            link: format!(
                "{}/sessions/{}",
                public_url.trim_end_matches('/'),
                session.id
            ),
        })
    }

    /// One line for the state: `Working…`, `Done`, `Failed: …`.
    pub fn headline(&self) -> String {
        let reason = || {
            self.reason
                .as_deref()
                .map(|r| format!(": {}", render::one_line(r, 300)))
                .unwrap_or_default()
        };
        match self.state {
            SessionState::Queued => "Queued".into(),
            SessionState::Starting => "Starting a sandbox".into(),
            SessionState::Running => "Working".into(),
            SessionState::Finishing => "Pushing the changes".into(),
            SessionState::Succeeded => "Done".into(),
            SessionState::Failed => format!("Failed{}", reason()),
            SessionState::Cancelled => format!("Stopped{}", reason()),
            SessionState::TimedOut => format!("Timed out{}", reason()),
        }
    }

    pub fn emoji(&self) -> &'static str {
        match self.state {
            SessionState::Queued | SessionState::Starting => "⏳",
            SessionState::Running | SessionState::Finishing => "🔧",
            SessionState::Succeeded => "✅",
            SessionState::Failed | SessionState::TimedOut => "❌",
            SessionState::Cancelled => "⏹️",
        }
    }

    /// "1,234 model tokens (1,000 in, 234 out)", or nothing.
    pub fn usage(&self) -> Option<String> {
        let total = self.input_tokens + self.output_tokens;
        (total > 0).then(|| {
            format!(
                "{} model tokens ({} in, {} out)",
                thousands(total),
                thousands(self.input_tokens),
                thousands(self.output_tokens)
            )
        })
    }

    /// The status comment on GitHub.
    pub fn github(&self) -> String {
        let mut out = format!(
            "{} **{}** · [session `{}`]({})\n\n",
            self.emoji(),
            render::github(&self.headline(), 400, None),
            self.session,
            self.link
        );
        out.push_str(&format!(
            "> {}\n\n",
            render::github(&render::one_line(&self.prompt, 200), 300, None)
        ));
        if !self.steps.is_empty() {
            if self.more_steps > 0 {
                out.push_str(&format!("- … {} earlier steps\n", self.more_steps));
            }
            for s in &self.steps {
                out.push_str(&format!("- {s}\n"));
            }
            out.push('\n');
        }
        if self.state.is_terminal() {
            if let Some(summary) = &self.summary {
                out.push_str(&render::github(summary, 30_000, Some(&self.link)));
                out.push_str("\n\n");
            }
            if let Some(pr) = &self.pull_request {
                out.push_str(&format!("**Pull request:** {pr}\n\n"));
            } else if let Some(b) = &self.branch {
                if self.steps.iter().any(|s| s.starts_with("pushed")) {
                    out.push_str(&format!("**Branch:** `{b}`\n\n"));
                }
            }
            let mut foot = Vec::new();
            if let Some(u) = self.usage() {
                foot.push(u);
            }
            if let Some(ms) = self.duration_ms {
                foot.push(format!("{:.0} s", ms as f64 / 1000.0));
            }
            if !foot.is_empty() {
                out.push_str(&format!("<sub>{}</sub>\n", foot.join(" · ")));
            }
        }
        render::github(&out, render::GITHUB_MAX, Some(&self.link))
    }
}

impl StatusView {
    /// The status message on Discord: within its 2,000 characters.
    pub fn discord(&self) -> String {
        let mut out = format!(
            "{} **{}** · session `{}` · <{}>\n> {}\n",
            self.emoji(),
            render::one_line(&self.headline(), 300),
            self.session,
            self.link,
            render::one_line(&self.prompt, 200)
        );
        if self.more_steps > 0 {
            out.push_str(&format!("- … {} earlier steps\n", self.more_steps));
        }
        for s in &self.steps {
            out.push_str(&format!("- {s}\n"));
        }
        render::discord(&out, render::DISCORD_MAX)
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// The final message (markdown): the agent's answer, the pull request, the usage.
    pub fn final_markdown(&self) -> String {
        let mut md = String::new();
        if let Some(summary) = &self.summary {
            md.push_str(summary);
            md.push_str("\n\n");
        }
        if let Some(pr) = &self.pull_request {
            md.push_str(&format!("**Pull request:** {pr}\n\n"));
        }
        let mut foot = vec![format!("{} {}", self.emoji(), self.headline())];
        foot.extend(self.usage());
        md.push_str(&format!("*{}*", foot.join(" · ")));
        md
    }
}

fn thousands(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: SessionState) -> StatusView {
        StatusView {
            session: "ses_1".parse().unwrap(),
            state,
            reason: Some("the agent finished".into()),
            prompt: "fix the <b>test</b>".into(),
            steps: vec!["ran `cargo test`".into(), "edited `src/a.rs`".into()],
            more_steps: 0,
            summary: Some("Fixed it. @everyone <script>x</script>".into()),
            branch: Some("airlock/ses-1-fix".into()),
            pull_request: Some("https://github.com/a/b/pull/3".into()),
            input_tokens: 1000,
            output_tokens: 234,
            duration_ms: Some(42_000),
            link: "https://airlock.example/sessions/ses_1".into(),
        }
    }

    #[test]
    fn a_running_status_lists_steps_and_a_done_one_the_result() {
        let running = view(SessionState::Running).github();
        assert!(
            running.starts_with(
                "🔧 **Working** · [session `ses_1`](https://airlock.example/sessions/ses_1)"
            ),
            "{running}"
        );
        assert!(running.contains("- ran `cargo test`\n- edited `src/a.rs`"));
        assert!(!running.contains("Pull request"));
        let done = view(SessionState::Succeeded).github();
        assert!(
            done.contains("**Pull request:** https://github.com/a/b/pull/3"),
            "{done}"
        );
        assert!(
            done.contains("1,234 model tokens (1,000 in, 234 out) · 42 s"),
            "{done}"
        );
        assert!(
            done.contains("&lt;script&gt;") && !done.contains("<script>"),
            "{done}"
        );
        assert!(done.contains("@\u{200B}everyone"), "{done}");
        assert!(
            done.contains("&lt;b&gt;test&lt;/b&gt;"),
            "the prompt is escaped too: {done}"
        );
    }

    #[test]
    fn numbers_get_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
