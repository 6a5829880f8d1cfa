//! GitHub webhook payloads, as far as Airlock reads them. A delivery is parsed into these
//! types at the boundary ([`Event::parse`]), so no handler indexes into untyped JSON. Fields
//! GitHub adds are ignored; a field Airlock needs that is missing or of the wrong type is an
//! error naming it (the delivery is recorded as failed with that error).

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

/// A delivery, by its `X-GitHub-Event` header and `action`.
#[derive(Debug)]
pub enum Event {
    /// `issue_comment.created` (`review: false`) or `pull_request_review_comment.created`.
    Comment {
        event: Box<CommentEvent>,
        review: bool,
    },
    /// `installation.deleted`.
    InstallationDeleted(Installation),
    /// Any other `installation` or `installation_repositories` action.
    Installation(InstallationEvent),
    /// `issues.*`, for triggers.
    Issues(IssuesEvent),
    /// `pull_request.*`, for triggers.
    PullRequest(PullRequestEvent),
    /// Everything else: acknowledged and ignored.
    Other,
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub login: String,
    pub id: u64,
    /// `User`, `Bot` or `Organization`.
    #[serde(rename = "type", default)]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Repository {
    /// `OWNER/NAME`.
    pub full_name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Comment {
    pub id: u64,
    #[serde(default)]
    pub body: Option<String>,
    pub user: User,
    #[serde(default)]
    pub html_url: Option<String>,
    /// RFC 3339; a comment older than [`MAX_EVENT_AGE_S`] is not acted on.
    #[serde(default)]
    pub created_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Issue {
    pub number: u64,
    /// When it last changed (a label added changes it): part of an event's identity.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Present (not null) when the issue is a pull request.
    #[serde(default)]
    pub pull_request: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BranchRef {
    #[serde(rename = "ref")]
    pub name: String,
    #[serde(default)]
    pub sha: Option<String>,
    /// The repository the branch is in (null when a fork was deleted).
    #[serde(default)]
    pub repo: Option<Repository>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub html_url: Option<String>,
    pub head: BranchRef,
    pub base: BranchRef,
}

/// A comment on an issue, a pull request, or a line of a pull request's diff.
#[derive(Debug, Clone, Deserialize)]
pub struct CommentEvent {
    pub action: String,
    /// Issue comments (on issues and pull requests alike).
    #[serde(default)]
    pub issue: Option<Issue>,
    /// Review comments.
    #[serde(default)]
    pub pull_request: Option<PullRequest>,
    pub comment: Comment,
    pub repository: Repository,
    pub sender: User,
}

impl CommentEvent {
    /// The issue or pull request number, and whether it is a pull request.
    pub fn thread(&self) -> Option<(u64, bool)> {
        match (&self.issue, &self.pull_request) {
            (Some(i), _) => Some((i.number, i.pull_request.is_some())),
            (None, Some(pr)) => Some((pr.number, true)),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    pub login: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Installation {
    pub id: u64,
    #[serde(default)]
    pub account: Option<Account>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InstallationEvent {
    pub action: String,
    pub installation: Installation,
    #[serde(default)]
    pub repositories: Vec<Repository>,
    #[serde(default)]
    pub repositories_added: Vec<Repository>,
    #[serde(default)]
    pub repositories_removed: Vec<Repository>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Label {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IssuesEvent {
    pub action: String,
    pub issue: Issue,
    #[serde(default)]
    pub label: Option<Label>,
    pub repository: Repository,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PullRequestEvent {
    pub action: String,
    pub pull_request: PullRequest,
    pub repository: Repository,
}

#[derive(Deserialize)]
struct Action {
    #[serde(default)]
    action: Option<String>,
}

/// A delivery as handlers get it: the typed event, and its JSON as it came (the context a
/// trigger's prompt template may show; nothing else reads it).
#[derive(Debug)]
pub struct Delivery {
    pub event: Event,
    pub json: Value,
}

/// GitHub keeps a delivery for redelivery three days; a comment (or an issue or pull request
/// event) older than this (a week) is a replay, not a request. Delivery keys are kept longer
/// (`retention.delivery_days`, at least 8 days), so a replay is refused by one or the other.
pub const MAX_EVENT_AGE_S: i64 = 7 * 24 * 3600;

impl Delivery {
    /// What this delivery is about, as one key: the same intent delivered twice (GitHub's
    /// redelivery, or a captured body re-sent with another `X-GitHub-Delivery`, which GitHub
    /// does not sign) has the same key. `delivery` (the header) names deliveries of events
    /// Airlock only records.
    pub fn intent(&self, event: &str, delivery: &str) -> String {
        let or = |v: &Option<String>| v.clone().unwrap_or_default();
        match &self.event {
            Event::Comment { event: c, .. } => {
                format!("{event}:{}:{}", c.comment.id, c.action)
            }
            Event::Issues(e) => format!(
                "issues:{}#{}:{}:{}:{}",
                e.repository.full_name,
                e.issue.number,
                e.action,
                e.label.as_ref().map(|l| l.name.as_str()).unwrap_or(""),
                or(&e.issue.updated_at)
            ),
            Event::PullRequest(e) => format!(
                "pull_request:{}#{}:{}:{}:{}",
                e.repository.full_name,
                e.pull_request.number,
                e.action,
                or(&e.pull_request.head.sha),
                or(&e.pull_request.updated_at)
            ),
            Event::Installation(_) | Event::InstallationDeleted(_) | Event::Other => {
                format!("delivery:{delivery}")
            }
        }
    }

    /// Whether what this delivery is about happened more than [`MAX_EVENT_AGE_S`] before
    /// `now` (seconds since the epoch), or it says nothing of when: a comment by when it was
    /// written, an issue or pull request event by the item's `updated_at` (which the event
    /// itself sets). Events Airlock only records are never stale.
    pub fn stale(&self, now: i64) -> bool {
        let at = match &self.event {
            Event::Comment { event, .. } => event.comment.created_at.as_deref(),
            Event::Issues(e) => e.issue.updated_at.as_deref(),
            Event::PullRequest(e) => e.pull_request.updated_at.as_deref(),
            Event::Installation(_) | Event::InstallationDeleted(_) | Event::Other => return false,
        };
        let Some(at) = at else {
            return true;
        };
        match time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339) {
            Ok(t) => now - t.unix_timestamp() > MAX_EVENT_AGE_S,
            Err(_) => true,
        }
    }

    /// Parses a delivery of `event` (the `X-GitHub-Event` header) from its body.
    pub fn parse(event: &str, body: &str) -> Result<Delivery, String> {
        let json: Value =
            serde_json::from_str(body).map_err(|e| format!("the payload is not JSON: {e}"))?;
        Ok(Delivery {
            event: Event::parse(event, &json)?,
            json,
        })
    }
}

impl Event {
    /// Parses a delivery of `event` (the `X-GitHub-Event` header).
    pub fn parse(event: &str, payload: &Value) -> Result<Event, String> {
        let action = serde_json::from_value::<Action>(payload.clone())
            .map_err(|e| format!("the {event} payload is not valid: {e}"))?
            .action
            .unwrap_or_default();
        fn typed<T: serde::de::DeserializeOwned>(
            event: &str,
            action: &str,
            p: &Value,
        ) -> Result<T, String> {
            serde_path_to_error::deserialize(p).map_err(|e| {
                format!(
                    "the {event}.{action} payload is not valid at `{}`: {}",
                    e.path(),
                    e.inner()
                )
            })
        }
        Ok(match (event, action.as_str()) {
            ("issue_comment", "created") => Event::Comment {
                event: Box::new(typed(event, &action, payload)?),
                review: false,
            },
            ("pull_request_review_comment", "created") => Event::Comment {
                event: Box::new(typed(event, &action, payload)?),
                review: true,
            },
            ("installation", "deleted") => {
                #[derive(Deserialize)]
                struct Deleted {
                    installation: Installation,
                }
                let d: Deleted = typed(event, &action, payload)?;
                Event::InstallationDeleted(d.installation)
            }
            ("installation" | "installation_repositories", _) => {
                Event::Installation(typed(event, &action, payload)?)
            }
            ("issues", _) => Event::Issues(typed(event, &action, payload)?),
            ("pull_request", _) => Event::PullRequest(typed(event, &action, payload)?),
            _ => Event::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's own example payloads (`../shared/fixtures/github`, from
    /// @octokit/webhooks-examples).
    fn fixture(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/github")
            .join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn githubs_example_payloads_parse_into_what_airlock_reads() {
        let p = fixture("issue_comment.created");
        let Event::Comment { event, review } = Event::parse("issue_comment", &p).unwrap() else {
            panic!("not a comment")
        };
        assert!(!review);
        assert_eq!(event.repository.full_name, p["repository"]["full_name"]);
        assert_eq!(event.comment.id, p["comment"]["id"].as_u64().unwrap());
        assert_eq!(event.sender.login, p["sender"]["login"]);
        assert_eq!(
            event.thread(),
            Some((
                p["issue"]["number"].as_u64().unwrap(),
                !p["issue"]["pull_request"].is_null()
            ))
        );

        let p = fixture("pull_request_review_comment.created");
        let Event::Comment { event, review } =
            Event::parse("pull_request_review_comment", &p).unwrap()
        else {
            panic!("not a review comment")
        };
        assert!(review);
        assert_eq!(
            event.thread(),
            Some((p["pull_request"]["number"].as_u64().unwrap(), true))
        );

        let p = fixture("installation.created");
        let Event::Installation(i) = Event::parse("installation", &p).unwrap() else {
            panic!("not an installation")
        };
        assert_eq!(i.installation.id, p["installation"]["id"].as_u64().unwrap());
        assert_eq!(
            i.repositories.len(),
            p["repositories"].as_array().unwrap().len()
        );

        let p = fixture("issues.labeled");
        let Event::Issues(e) = Event::parse("issues", &p).unwrap() else {
            panic!("not an issues event")
        };
        assert_eq!(e.action, "labeled");
        assert_eq!(
            e.label.map(|l| l.name),
            p["label"]["name"].as_str().map(str::to_string)
        );

        let p = fixture("pull_request.opened");
        let Event::PullRequest(e) = Event::parse("pull_request", &p).unwrap() else {
            panic!("not a pull request event")
        };
        assert_eq!(e.pull_request.head.name, p["pull_request"]["head"]["ref"]);
        assert_eq!(e.pull_request.base.name, p["pull_request"]["base"]["ref"]);

        assert!(matches!(
            Event::parse("ping", &fixture("ping.event")).unwrap(),
            Event::Other
        ));
    }

    #[test]
    fn a_payload_missing_what_airlock_needs_is_an_error_naming_the_field() {
        let mut p = fixture("issue_comment.created");
        p["comment"]["id"] = Value::from("seven");
        let e = Event::parse("issue_comment", &p).unwrap_err();
        assert!(e.contains("`comment.id`"), "{e}");
        let mut p = fixture("pull_request.opened");
        p["pull_request"].as_object_mut().unwrap().remove("head");
        let e = Event::parse("pull_request", &p).unwrap_err();
        assert!(e.contains("pull_request") && e.contains("head"), "{e}");
        assert!(Event::parse("issues", &Value::from(3)).is_err());
        // An action GitHub may add later is no error for events Airlock ignores.
        let p = serde_json::json!({"action": "transferred"});
        assert!(matches!(
            Event::parse("repository", &p).unwrap(),
            Event::Other
        ));
    }

    /// A week is the line for every event that can start work; events Airlock only
    /// records are never refused by age.
    #[test]
    fn events_from_more_than_a_week_ago_are_stale() {
        let now = time::OffsetDateTime::parse(
            "2026-12-03T12:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp();
        // (event, fixture, the field that says when, its value, stale)
        type Case<'a> = (&'a str, &'a str, [&'a str; 2], Option<&'a str>, bool);
        let cases: &[Case] = &[
            (
                "issue_comment",
                "issue_comment.created",
                ["comment", "created_at"],
                Some("2026-12-03T11:59:00Z"),
                false,
            ),
            (
                "issue_comment",
                "issue_comment.created",
                ["comment", "created_at"],
                Some("2026-11-25T12:00:00Z"),
                true,
            ),
            (
                "issue_comment",
                "issue_comment.created",
                ["comment", "created_at"],
                None,
                true,
            ),
            (
                "issues",
                "issues.labeled",
                ["issue", "updated_at"],
                Some("2026-11-30T00:00:00Z"),
                false,
            ),
            (
                "issues",
                "issues.labeled",
                ["issue", "updated_at"],
                Some("2019-05-15T15:20:33Z"),
                true,
            ),
            (
                "issues",
                "issues.labeled",
                ["issue", "updated_at"],
                Some("yesterday"),
                true,
            ),
            (
                "pull_request",
                "pull_request.opened",
                ["pull_request", "updated_at"],
                Some("2026-12-03T12:00:00Z"),
                false,
            ),
            (
                "pull_request",
                "pull_request.opened",
                ["pull_request", "updated_at"],
                None,
                true,
            ),
            (
                "installation",
                "installation.created",
                ["installation", "updated_at"],
                Some("2019-05-15T15:20:33Z"),
                false,
            ),
        ];
        for (event, name, field, at, stale) in cases {
            let mut p = fixture(name);
            match at {
                Some(at) => p[field[0]][field[1]] = Value::from(*at),
                None => {
                    p[field[0]].as_object_mut().unwrap().remove(field[1]);
                }
            }
            let d = Delivery::parse(event, &p.to_string()).unwrap();
            assert_eq!(d.stale(now), *stale, "{name} with {field:?} = {at:?}");
        }
    }
}
