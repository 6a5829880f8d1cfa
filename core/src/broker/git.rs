//! The session's repository: cloned through the gateway and checked out on the session's
//! branch before a turn; after it, what the agent changed is committed, pushed and offered as
//! a pull request naming the requester. The shell run in the sandbox is `templates/scripts/`.

use std::collections::BTreeMap;
use std::time::Duration;

use airlock_sandboxd::proto::Stream;
use serde_json::json;

use super::*;
use crate::domain::thread::GithubThread;
use crate::domain::{EventKind, Surface, ThreadRef};
use crate::plan::{GitPlan, Hosting, Plan};
use crate::store::{settle, NewAudit, Sandbox, Session};
use airlock_sandbox::{ExecEvent, ExecRequest};

/// Longest a git step (clone, push) may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Clones (unless the files are there from an earlier turn), checks out the branch, and
/// installs the commit hook that adds the trailers.
const PREPARE_SCRIPT: &str = include_str!("../../../templates/scripts/prepare-repo.sh");
/// Commits what is uncommitted and pushes the branch if the remote lacks its commits.
const FINISH_SCRIPT: &str = include_str!("../../../templates/scripts/finish-repo.sh");
/// What the branch changed since it began: numstat and a bounded patch.
const DIFF_SCRIPT: &str = include_str!("../../../templates/scripts/diff-repo.sh");
/// Files listed in a git event, at most.
const MAX_FILES: usize = 500;

impl Broker {
    /// Runs a short process in the sandbox and collects its output: `Ok((exit 0?, stdout,
    /// stderr))`, or why it could not run.
    async fn capture(
        &self,
        sb: &Sandbox,
        script: &str,
        env: BTreeMap<String, String>,
        stdin: Option<Vec<u8>>,
    ) -> Result<(bool, String, String), String> {
        let mut stream = self
            .sandboxes
            .hub
            .exec(
                &sb.id,
                ExecRequest {
                    argv: vec!["bash".into(), "-c".into(), script.into()],
                    env,
                    stdin,
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let run = async {
            while let Some(ev) = stream.next().await {
                match ev {
                    ExecEvent::Output { stream, data, .. } => match stream {
                        Stream::Stderr => err.extend_from_slice(&data),
                        _ => out.extend_from_slice(&data),
                    },
                    ExecEvent::Exit { code, .. } => return Ok(code == Some(0)),
                    ExecEvent::Failed { message, .. } => return Err(message),
                }
            }
            Err("the sandbox connection was dropped".to_string())
        };
        let ok = tokio::time::timeout(GIT_TIMEOUT, run)
            .await
            .map_err(|_| format!("took longer than {} s", GIT_TIMEOUT.as_secs()))??;
        Ok((
            ok,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        ))
    }

    /// Clones the repository through the gateway (unless a follow-up's snapshot has it) and
    /// checks out the session's branch, with a commit hook that adds the trailers.
    pub(super) async fn prepare_repo(
        &self,
        sb: &Sandbox,
        session: &Session,
        git: &GitPlan,
    ) -> Result<(), String> {
        let env = BTreeMap::from([
            ("AIRLOCK_CLONE_URL".to_string(), git.clone_url.clone()),
            ("AIRLOCK_BRANCH".to_string(), git.branch.clone()),
            (
                "AIRLOCK_BASE".to_string(),
                git.base.clone().unwrap_or_default(),
            ),
            (
                "AIRLOCK_EXISTING".to_string(),
                if git.existing_branch { "1" } else { "0" }.to_string(),
            ),
            ("AIRLOCK_GIT_NAME".to_string(), git.author_name.clone()),
            ("AIRLOCK_GIT_EMAIL".to_string(), git.author_email.clone()),
            (
                "AIRLOCK_TRAILERS".to_string(),
                format!(
                    "Co-authored-by: {}\nAirlock-Session: {}",
                    git.co_author, session.id
                ),
            ),
        ]);
        match self.capture(sb, PREPARE_SCRIPT, env, None).await {
            Ok((true, out, _)) => {
                let line = out
                    .lines()
                    .find(|l| l.starts_with("airlock:"))
                    .unwrap_or("");
                self.note(
                    &session.id,
                    format!(
                        "working on branch {} ({})",
                        git.branch,
                        line.trim_start_matches("airlock:").trim()
                    ),
                )
                .await;
                Ok(())
            }
            Ok((false, _, err)) => Err(format!(
                "could not check out {} (branch {}): {}",
                session.repo,
                git.branch,
                last_lines(&err, 3)
            )),
            Err(e) => Err(format!("could not check out {}: {e}", session.repo)),
        }
    }

    /// Commits what the agent changed, pushes the branch and opens (or names) the pull
    /// request. Returns the session's reason.
    pub(super) async fn finish(
        &self,
        session: &Session,
        plan: &Plan,
        git: &GitPlan,
        sb: &Sandbox,
        outcome: &Outcome,
    ) -> Result<String, String> {
        let prompt = self
            .store
            .latest_prompt(session)
            .await
            .map_err(|e| format!("cannot read the session's prompt: {e}"))?;
        let title = crate::render::one_line(&prompt, 72);
        let message = format!(
            "{title}\n\nAsked by {} in Airlock session {}.\n",
            plan.requester.name, session.id
        );
        let env = BTreeMap::from([
            ("AIRLOCK_BRANCH".to_string(), git.branch.clone()),
            ("AIRLOCK_GIT_NAME".to_string(), git.author_name.clone()),
            ("AIRLOCK_GIT_EMAIL".to_string(), git.author_email.clone()),
        ]);
        let (ok, out, err) = self
            .capture(sb, FINISH_SCRIPT, env, Some(message.into_bytes()))
            .await
            .map_err(|e| format!("could not push branch {}: {e}", git.branch))?;
        if !ok {
            return Err(format!(
                "the agent finished, but its changes could not be pushed to {} (branch {}): {}; \
                 the files are kept for a follow-up",
                session.repo,
                git.branch,
                last_lines(&err, 3)
            ));
        }
        let status = out
            .lines()
            .find_map(|l| l.strip_prefix("airlock:"))
            .unwrap_or("unchanged")
            .to_string();
        let mut words = status.split_whitespace();
        if words.next() != Some("pushed") {
            let event = json!({"branch": git.branch, "pushed": false, "pull_request": null});
            settle("the session's git event", || {
                self.store.append_event(&session.id, EventKind::Git, &event)
            })
            .await;
            return Ok("the agent finished without changing any file".into());
        }
        let commit = words.next().unwrap_or("").to_string();
        let base = git
            .base
            .clone()
            .or_else(|| words.next().map(str::to_string))
            .unwrap_or_else(|| "main".into());
        let short = commit.get(..12).unwrap_or(&commit).to_string();
        let (files, patch) = self.changes(sb).await;
        // A registered repository is push-only: the branch is the result.
        let pushed_to = match &git.hosting {
            Hosting::Github => None,
            Hosting::Local { path } => Some(format!(
                "branch `{}` is in {path}; `git diff {base}...{}`",
                git.branch, git.branch
            )),
            Hosting::Remote { url } => Some(format!(
                "pushed branch `{}` ({short}) to {url}; no pull request is opened there \
                 (push-only)",
                git.branch
            )),
        };
        let mut pull = self
            .store
            .session(&session.id)
            .await
            .ok()
            .and_then(|s| s.pull_request_url)
            .or_else(|| {
                session
                    .thread_ref
                    .pull_request()
                    .and_then(|p| p.url.clone())
            });
        let mut opened = None;
        if let (Some(url), None) = (&pull, &session.pull_request_url) {
            settle("the session's pull request", || {
                self.store.set_session_pull_request(&session.id, url)
            })
            .await;
        }
        if pull.is_none() && !git.existing_branch && git.hosting == Hosting::Github {
            if let Some(source) = &self.settings.github {
                let body = self
                    .pull_request_body(session, plan, &prompt, outcome)
                    .await;
                let made = match source.get().await {
                    Ok(gh) => gh
                        .create_pull(&session.repo, &git.branch, &base, &title, &body)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match made {
                    Ok(pr) => {
                        settle("the session's pull request", || {
                            self.store
                                .set_session_pull_request(&session.id, &pr.html_url)
                        })
                        .await;
                        let entry = NewAudit {
                            actor: format!("human:{}", plan.requester.id),
                            action: "session.pull_request".into(),
                            target: session.repo.clone(),
                            session_id: Some(session.id.to_string()),
                            detail: json!({"number": pr.number, "url": pr.html_url, "branch": git.branch}),
                        };
                        settle("the pull request's audit row", || {
                            self.store.audit(entry.clone())
                        })
                        .await;
                        opened = Some(pr.number);
                        pull = Some(pr.html_url);
                    }
                    Err(e) => {
                        let event = json!({"branch": git.branch, "commit": commit, "pushed": true, "pull_request": null});
                        settle("the session's git event", || {
                            self.store.append_event(&session.id, EventKind::Git, &event)
                        })
                        .await;
                        return Err(format!(
                            "pushed branch {} ({short}), but could not open a pull request: {e}",
                            git.branch
                        ));
                    }
                }
            }
        }
        let event = json!({"branch": git.branch, "commit": commit, "base": base, "pushed": true,
                "pull_request": pull.as_ref().map(|u| json!({"url": u, "number": opened})),
                "files": files, "patch": patch});
        settle("the session's git event", || {
            self.store.append_event(&session.id, EventKind::Git, &event)
        })
        .await;
        if let Some(reason) = pushed_to {
            return Ok(reason);
        }
        Ok(match (opened, pull) {
            (Some(n), Some(url)) => {
                format!(
                    "pushed branch {} and opened pull request #{n}: {url}",
                    git.branch
                )
            }
            (None, Some(url)) => format!("pushed {short} to {} ({url})", git.branch),
            _ => format!("pushed branch {} ({short})", git.branch),
        })
    }

    /// What the session's branch changed since it began: the files (path, lines added and
    /// removed; `null` for binary files) and the patch, cut at 256 KiB. Empty if it cannot be
    /// had: the push happened either way.
    async fn changes(&self, sb: &Sandbox) -> (serde_json::Value, String) {
        let Ok((true, out, _)) = self.capture(sb, DIFF_SCRIPT, BTreeMap::new(), None).await else {
            return (json!([]), String::new());
        };
        let (stat, patch) = out.split_once("airlock:patch\n").unwrap_or((&out, ""));
        let files: Vec<serde_json::Value> = stat
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, '\t');
                let (added, removed, path) = (f.next()?, f.next()?, f.next()?);
                Some(json!({"path": crate::render::one_line(path, 500),
                    "added": added.parse::<u64>().ok(), "removed": removed.parse::<u64>().ok()}))
            })
            .take(MAX_FILES)
            .collect();
        (json!(files), patch.to_string())
    }

    /// The pull request's description: who asked, where, what they asked, what the agent
    /// says it did, and the session.
    async fn pull_request_body(
        &self,
        session: &Session,
        plan: &Plan,
        prompt: &str,
        outcome: &Outcome,
    ) -> String {
        let where_ = match session.surface {
            Surface::Cli => "from the terminal (`airlock run`)".to_string(),
            Surface::Slack => "in Slack".to_string(),
            Surface::Discord => "in Discord".to_string(),
            Surface::Web => "on the admin page".to_string(),
            Surface::Trigger => "through a trigger".to_string(),
            Surface::Github => match &session.thread_ref {
                ThreadRef::Github(GithubThread {
                    comment_url: Some(u),
                    ..
                }) => format!("in [a GitHub comment]({u})"),
                _ => "on GitHub".to_string(),
            },
        };
        let quoted: String = crate::render::github(prompt, 4000, None)
            .lines()
            .map(|l| format!("> {l}\n"))
            .collect();
        let link = format!("{}/sessions/{}", self.settings.public_url, session.id);
        let summary = outcome
            .summary
            .as_deref()
            .map(|s| crate::render::github(s, 40_000, Some(&link)))
            .unwrap_or_default();
        let usage = self
            .store
            .session_usage(&session.id)
            .await
            .map(|u| u.tokens())
            .unwrap_or(0);
        let mut body = format!(
            "Requested by **{}** {where_}:\n\n{quoted}\n",
            crate::render::github(&plan.requester.name, 200, None)
        );
        if !summary.trim().is_empty() {
            body.push_str(&format!("### What the agent did\n\n{summary}\n\n"));
        }
        body.push_str(&format!(
            "---\nAirlock session [`{}`]({link}) · profile `{}` v{}",
            session.id, plan.profile, plan.profile_version
        ));
        if usage > 0 {
            body.push_str(&format!(" · {usage} model tokens"));
        }
        body.push('\n');
        crate::render::github(&body, crate::render::GITHUB_MAX, None)
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let joined = lines[start..].join(" / ");
    crate::render::one_line(&joined, 500)
}
