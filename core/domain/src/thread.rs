//! Where a session's conversation lives and where its updates go: a typed thread reference.
//!
//! Stored as JSON tagged by `surface` (`{"surface": "slack", "team": …, "channel": …}`), the
//! shape trigger replies have always had. Rows written before the tag existed carry only the
//! surface's fields; they are read by the session's own surface ([`ThreadRef::from_stored`]).

use serde::{Deserialize, Serialize};

use crate::Surface;

/// A session's thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "surface", rename_all = "snake_case")]
pub enum ThreadRef {
    /// No thread: `airlock run`, the admin page, a trigger that replies nowhere.
    None(NoThread),
    Slack(SlackThread),
    Discord(DiscordThread),
    Github(GithubThread),
}

impl Default for ThreadRef {
    fn default() -> ThreadRef {
        ThreadRef::None(NoThread::default())
    }
}

/// Nothing to post to; who or what asked, for the record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoThread {
    /// `airlock run`: the operator (`cli:USER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cli: Option<String>,
    /// The trigger that started the session (its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// A Slack thread: a channel, and the message the thread hangs from once there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackThread {
    #[serde(default)]
    pub team: String,
    pub channel: String,
    /// The thread's root message; `None` until the first status message (a slash command's
    /// session starts its own thread).
    #[serde(default)]
    pub thread_ts: Option<String>,
    /// Who ran the slash command (Slack user id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The status message kept up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_ts: Option<String>,
    /// The final message of the turn, once posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_ts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// A Discord thread (a channel id, as text: Discord ids are 64-bit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscordThread {
    #[serde(default)]
    pub guild: String,
    pub channel: String,
    /// The status message kept up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// Whether the turn's final message went out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub final_sent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// A GitHub issue or pull request conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GithubThread {
    /// `OWNER/NAME`.
    pub repo: String,
    /// The issue or pull request number.
    pub issue: u64,
    /// The comment that asked (`None` for a trigger's session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_id: Option<u64>,
    /// The comment was a pull-request review comment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_url: Option<String>,
    /// Who asked (GitHub login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// The pull request the session works on, when it was asked on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestRef>,
    /// The status comment kept up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_comment: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// A pull request's branches: the session pushes to `head`, and diffs against `base`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestRef {
    pub number: u64,
    pub head: String,
    pub base: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl ThreadRef {
    /// Reads a stored reference. Rows without the `surface` tag are read as a thread of
    /// `surface` (the session's surface, or the one it notifies); a tagged row must parse
    /// as what its tag says.
    pub fn from_stored(value: &serde_json::Value, surface: Surface) -> Result<ThreadRef, String> {
        let parsed = if value.get("surface").is_some() {
            serde_json::from_value(value.clone())
        } else {
            let mut tagged = match value {
                serde_json::Value::Object(m) => m.clone(),
                serde_json::Value::Null => Default::default(),
                other => return Err(format!("a thread reference is an object, not {other}")),
            };
            let tag = match surface {
                Surface::Slack => "slack",
                Surface::Discord => "discord",
                Surface::Github => "github",
                _ => "none",
            };
            tagged.insert("surface".into(), tag.into());
            serde_json::from_value(serde_json::Value::Object(tagged))
        };
        parsed.map_err(|e| format!("the stored thread reference is not valid: {e}"))
    }

    /// The surface whose thread this is (`None` for no thread).
    pub fn surface(&self) -> Option<Surface> {
        match self {
            ThreadRef::None(_) => None,
            ThreadRef::Slack(_) => Some(Surface::Slack),
            ThreadRef::Discord(_) => Some(Surface::Discord),
            ThreadRef::Github(_) => Some(Surface::Github),
        }
    }

    /// Records the trigger that started the session.
    pub fn set_trigger(&mut self, name: &str) {
        let t = Some(name.to_string());
        match self {
            ThreadRef::None(x) => x.trigger = t,
            ThreadRef::Slack(x) => x.trigger = t,
            ThreadRef::Discord(x) => x.trigger = t,
            ThreadRef::Github(x) => x.trigger = t,
        }
    }

    /// The pull request the session works on, if it was asked on one.
    pub fn pull_request(&self) -> Option<&PullRequestRef> {
        match self {
            ThreadRef::Github(g) => g.pull_request.as_ref(),
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a thread reference serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_written_before_the_tag_are_read_by_the_sessions_surface() {
        let slack = json!({"team": "T1", "channel": "C1", "thread_ts": null, "user": "U1"});
        let t = ThreadRef::from_stored(&slack, Surface::Slack).unwrap();
        assert_eq!(
            t,
            ThreadRef::Slack(SlackThread {
                team: "T1".into(),
                channel: "C1".into(),
                user: Some("U1".into()),
                ..Default::default()
            })
        );
        // The same fields on a Discord session are a Discord thread; an empty reference of
        // the command line is no thread.
        let discord = json!({"guild": "G1", "channel": "42", "status_message": "7"});
        assert!(matches!(
            ThreadRef::from_stored(&discord, Surface::Discord).unwrap(),
            ThreadRef::Discord(DiscordThread { ref status_message, .. }) if status_message.as_deref() == Some("7")
        ));
        assert_eq!(
            ThreadRef::from_stored(&json!({}), Surface::Cli).unwrap(),
            ThreadRef::default()
        );
        let gh = json!({"repo": "acme/web", "issue": 12, "comment_id": 99, "review": false,
            "comment_url": "https://github.com/acme/web/issues/12#c", "login": "octocat",
            "pull_request": {"number": 12, "head": "feature", "base": "main", "url": "u"}});
        let t = ThreadRef::from_stored(&gh, Surface::Github).unwrap();
        assert_eq!(t.pull_request().map(|p| p.head.as_str()), Some("feature"));
        // Written back, it carries its tag and reads the same whatever the session is.
        let again = ThreadRef::from_stored(&t.to_json(), Surface::Cli).unwrap();
        assert_eq!(again, t);
        assert_eq!(t.to_json()["surface"], "github");
    }

    #[test]
    fn a_trigger_reply_reads_as_the_thread_it_names_and_bad_ones_are_errors() {
        // `airlock trigger add --reply slack:T1/C9` stores this shape.
        let reply = json!({"surface": "slack", "team": "T1", "channel": "C9", "thread_ts": null});
        let mut t = ThreadRef::from_stored(&reply, Surface::Trigger).unwrap();
        t.set_trigger("nightly");
        assert_eq!(t.surface(), Some(Surface::Slack));
        assert_eq!(t.to_json()["trigger"], "nightly");
        for bad in [
            json!({"surface": "slack"}),
            json!({"surface": "telegram", "chat": 1}),
            json!({"repo": "acme/web"}),
            json!("slack"),
        ] {
            let e = ThreadRef::from_stored(&bad, Surface::Github).unwrap_err();
            assert!(e.contains("thread reference"), "{bad}: {e}");
        }
    }
}
