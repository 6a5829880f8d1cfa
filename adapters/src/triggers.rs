//! Triggers: sessions that start without a person typing. Generic webhooks
//! (`POST /hooks/<id>`, HMAC-SHA256 signed with the trigger's secret), schedules (cron with a
//! time zone) and GitHub events (an issue labeled, a pull request opened). A trigger names its
//! profile, repository, reply destination and owner, the human its sessions are attributed
//! to; its prompt is a template rendered with the event's JSON fields.
//!
//! A schedule's slot is claimed in the database before it fires, so it fires once per slot,
//! across restarts and servers.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::github::payload::{Delivery, Event};
use airlock_core::domain::thread::{GithubThread, PullRequestRef};
use airlock_core::domain::{Surface, ThreadRef, TriggerKind};
use airlock_core::service::{Actor, Firing, Sessions};
use airlock_core::store::{settle, Session, Trigger};
use airlock_core::Store;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Webhook bodies are small JSON documents.
const MAX_BODY: usize = 1024 * 1024;
/// A schedule slot missed by more than this (the server was down) is skipped, not run late.
const CATCH_UP_MS: i64 = 10 * 60 * 1000;

/// Renders a trigger's prompt template with `context` (the event's JSON). Strict: a field the
/// template names that the event lacks is an error, not an empty string.
pub fn render(template: &str, context: &Value) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_template("prompt", template)
        .map_err(|e| format!("the prompt template is not valid: {e}"))?;
    let t = env.get_template("prompt").expect("just added");
    let out = t
        .render(minijinja::Value::from_serialize(context))
        .map_err(|e| format!("the prompt template cannot be filled from this event: {e}"))?;
    if out.trim().is_empty() {
        return Err("the prompt template gave an empty prompt".into());
    }
    Ok(out)
}

/// Checks a cron expression (5 fields, or 6 with seconds) and an IANA time zone.
pub fn check_schedule(cron: &str, timezone: &str) -> Result<(), String> {
    croner::Cron::from_str(cron).map_err(|e| format!("`{cron}` is not a cron expression: {e}"))?;
    chrono_tz::Tz::from_str(timezone).map_err(|_| {
        format!("`{timezone}` is not a time zone; use a name like Europe/Berlin or UTC")
    })?;
    Ok(())
}

/// The latest time the schedule names that is at or before `now_ms` and after `after_ms`.
pub fn latest_slot(cron: &str, timezone: &str, after_ms: i64, now_ms: i64) -> Option<i64> {
    use chrono::TimeZone;
    let cron = croner::Cron::from_str(cron).ok()?;
    let tz = chrono_tz::Tz::from_str(timezone).ok()?;
    let now = tz.timestamp_millis_opt(now_ms).single()?;
    let slot = cron.find_previous_occurrence(&now, true).ok()?;
    let ms = slot.timestamp_millis();
    (ms > after_ms).then_some(ms)
}

pub struct Triggers {
    store: Store,
}

/// What a webhook sender must send, said when it did not.
pub const HOOK_HOW: &str = "sign the request: X-Airlock-Timestamp: <unix seconds, within 5 minutes>, \
X-Airlock-Signature-256: sha256=<hex HMAC-SHA256 of \"<timestamp>.<body>\" with the trigger's secret>, \
X-Airlock-Delivery: <an id of this delivery>";

fn err(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

impl Triggers {
    pub fn new(store: Store) -> Arc<Triggers> {
        Arc::new(Triggers { store })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/hooks/{id}", post(hook))
            .with_state(self.clone())
    }

    /// Starts the trigger's session for an event. `origin`: the GitHub issue or pull request
    /// it came from (a reply destination of `origin` answers there).
    #[tracing::instrument(name = "trigger", skip_all, fields(trigger = %t.name, human = %t.owner_id))]
    pub async fn fire(
        &self,
        t: &Trigger,
        context: &Value,
        origin: Option<ThreadRef>,
    ) -> Result<Session, String> {
        let owner = self
            .store
            .find_human(&t.owner_id)
            .await
            .map_err(|e| format!("the trigger's owner: {e}"))?;
        let template = t.config["prompt"].as_str().unwrap_or("");
        let prompt = render(template, context)?;
        let mut reply = if t.reply["surface"] == "origin" {
            origin.unwrap_or_default()
        } else {
            ThreadRef::from_stored(&t.reply, Surface::Trigger)
                .map_err(|e| format!("the trigger's reply destination: {e}"))?
        };
        let notify = reply.surface();
        let thread_key = match &reply {
            ThreadRef::Github(g) => Some(format!("github:{}#{}", g.repo, g.issue)),
            _ => None,
        };
        reply.set_trigger(&t.name);
        let actor = Actor::trigger(t.id.clone(), &t.name, owner);
        let s = Sessions::new(self.store.clone(), None)
            .fire(
                &actor,
                Firing {
                    profile_id: t.profile_id.clone(),
                    repo: t.repo.clone(),
                    prompt,
                    reply,
                    notify,
                    thread_key,
                    detail: json!({"kind": t.kind, "trigger": t.name}),
                },
            )
            .await
            .map_err(|r| r.to_string())?;
        tracing::info!(trigger = %t.name, session = %s.id, "a trigger fired");
        Ok(s)
    }

    /// Fires the schedules due at `now_ms` (each once per slot). Returns the sessions made.
    pub async fn tick(&self, now_ms: i64) -> Vec<Session> {
        let mut out = Vec::new();
        let all = match self.store.list_triggers().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("cannot read the triggers: {e}");
                return out;
            }
        };
        for t in all
            .iter()
            .filter(|t| t.enabled && t.kind == TriggerKind::Schedule)
        {
            let cron = t.config["cron"].as_str().unwrap_or("");
            let tz = t.config["timezone"].as_str().unwrap_or("UTC");
            let after = t.last_fired_at.unwrap_or(t.created_at);
            let Some(slot) = latest_slot(cron, tz, after, now_ms) else {
                continue;
            };
            if now_ms - slot > CATCH_UP_MS {
                // Missed while the server was down: remember it as passed, do not run it late.
                settle("a missed schedule slot", || {
                    self.store.claim_trigger_fire(&t.id, slot)
                })
                .await;
                tracing::warn!(trigger = %t.name, "skipped a schedule slot missed by more than 10 minutes");
                continue;
            }
            match self.store.claim_trigger_fire(&t.id, slot).await {
                Ok(true) => match self
                    .fire(t, &json!({"scheduled_at": slot, "trigger": t.name}), None)
                    .await
                {
                    Ok(s) => out.push(s),
                    Err(e) => {
                        tracing::warn!(trigger = %t.name, "the schedule could not start a session: {e}")
                    }
                },
                Ok(false) => {}
                Err(e) => tracing::warn!(trigger = %t.name, "cannot claim a schedule slot: {e}"),
            }
        }
        out
    }

    /// Checks the schedules every few seconds until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = every.tick() => {
                    self.tick(airlock_core::ids::now_ms()).await;
                }
            }
        }
    }

    /// GitHub events: issues labeled or opened, pull requests opened. `p` is the event's
    /// JSON, the context of the prompt template.
    async fn github(&self, parsed: &Event, p: &Value) {
        let (action, repo) = match &parsed {
            Event::Issues(e) => (e.action.as_str(), e.repository.full_name.as_str()),
            Event::PullRequest(e) => (e.action.as_str(), e.repository.full_name.as_str()),
            _ => return,
        };
        let Ok(all) = self.store.list_triggers().await else {
            return;
        };
        for t in all.iter().filter(|t| {
            t.enabled && t.kind == TriggerKind::Github && t.repo.eq_ignore_ascii_case(repo)
        }) {
            let want = t.config["event"].as_str().unwrap_or("");
            let matches = match (want, parsed, action) {
                ("issues.labeled", Event::Issues(e), "labeled") => t.config["label"]
                    .as_str()
                    .is_none_or(|l| e.label.as_ref().is_some_and(|x| x.name == l)),
                ("issues.opened", Event::Issues(_), "opened") => true,
                ("pull_request.opened", Event::PullRequest(e), "opened") => {
                    let pr = &e.pull_request;
                    let draft_ok = !(t.config["skip_drafts"].as_bool().unwrap_or(true) && pr.draft);
                    let base_ok = t.config["base"].as_str().is_none_or(|b| pr.base.name == b);
                    draft_ok && base_ok
                }
                _ => false,
            };
            if !matches {
                continue;
            }
            let origin = match parsed {
                Event::Issues(e) => ThreadRef::Github(GithubThread {
                    repo: repo.to_string(),
                    issue: e.issue.number,
                    ..Default::default()
                }),
                Event::PullRequest(e) => {
                    let pr = &e.pull_request;
                    let same_repo = pr
                        .head
                        .repo
                        .as_ref()
                        .is_some_and(|h| h.full_name.eq_ignore_ascii_case(repo));
                    ThreadRef::Github(GithubThread {
                        repo: repo.to_string(),
                        issue: pr.number,
                        // A fork's branch is not Airlock's to push: the session works on a
                        // branch of its own.
                        pull_request: same_repo.then(|| PullRequestRef {
                            number: pr.number,
                            head: pr.head.name.clone(),
                            base: pr.base.name.clone(),
                            url: pr.html_url.clone(),
                        }),
                        ..Default::default()
                    })
                }
                _ => continue,
            };
            if let Err(e) = self.fire(t, p, Some(origin)).await {
                tracing::warn!(trigger = %t.name, "a GitHub event could not start a session: {e}");
            }
        }
    }
}

#[async_trait::async_trait]
impl crate::github::EventHook for Triggers {
    async fn github_event(&self, delivery: &Delivery) {
        self.github(&delivery.event, &delivery.json).await
    }
}

async fn hook(
    State(tr): State<Arc<Triggers>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: crate::room::Unverified<MAX_BODY>,
) -> Response {
    let crate::room::Unverified { bytes: body, room } = body;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let trigger = match tr.store.trigger(&id).await {
        Ok(t) if t.kind == TriggerKind::Webhook && t.enabled => t,
        _ => return err(StatusCode::NOT_FOUND, "no such webhook trigger"),
    };
    let Some(secret_name) = &trigger.secret_credential else {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "the trigger has no secret; an admin must set one",
        );
    };
    let secret = match tr.store.reveal_credential(secret_name).await {
        Ok(s) => s,
        Err(_) => {
            return err(
                StatusCode::SERVICE_UNAVAILABLE,
                "the trigger's secret is not stored",
            )
        }
    };
    // The timestamp is signed with the body: a captured request is refused once it is more
    // than five minutes old (or early).
    let ts = header("x-airlock-timestamp");
    match crate::verify::within_window(ts) {
        Some(true) => {}
        _ => {
            tracing::warn!(trigger = %trigger.name, "refused a webhook without a current X-Airlock-Timestamp");
            return err(StatusCode::UNAUTHORIZED, HOOK_HOW);
        }
    }
    if !crate::verify::airlock_v1(
        secret.expose(),
        ts,
        &body,
        header("x-airlock-signature-256"),
    ) {
        tracing::warn!(trigger = %trigger.name, "refused a webhook with a bad signature");
        return err(StatusCode::UNAUTHORIZED, HOOK_HOW);
    }
    drop((secret, room));
    let context: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            )
        }
    };
    // Every post names its delivery, so a sender's retry of the same one starts nothing.
    let delivery = header("x-airlock-delivery");
    if delivery.is_empty() || delivery.len() > 200 {
        return err(
            StatusCode::BAD_REQUEST,
            "send X-Airlock-Delivery: an id of this delivery (at most 200 characters), the same when you retry it",
        );
    }
    match tr
        .store
        .record_answered(&format!("hook:{}", trigger.id), delivery, "webhook")
        .await
    {
        Ok(true) => {}
        Ok(false) => return Json(json!({"duplicate": true})).into_response(),
        Err(e) => return err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
    match tr.fire(&trigger, &context, None).await {
        Ok(s) => (StatusCode::ACCEPTED, Json(json!({"session": s.id}))).into_response(),
        Err(e) => err(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_rendered_strictly_from_the_event() {
        let ctx = json!({"alert": {"name": "disk full", "host": "db-1"}, "tags": ["a", "b"]});
        assert_eq!(
            render(
                "Investigate {{ alert.name }} on {{ alert.host }} ({{ tags | join(', ') }})",
                &ctx
            )
            .unwrap(),
            "Investigate disk full on db-1 (a, b)"
        );
        let e = render("{{ alert.missing }}", &ctx).unwrap_err();
        assert!(
            e.starts_with("the prompt template cannot be filled from this event"),
            "{e}"
        );
        assert!(render("{{ unclosed", &ctx)
            .unwrap_err()
            .starts_with("the prompt template is not valid"));
        // Not HTML: nothing is escaped.
        assert_eq!(render("{{ x }}", &json!({"x": "<b>"})).unwrap(), "<b>");
    }

    #[test]
    fn schedules_fire_in_their_minute_in_their_time_zone() {
        use chrono::TimeZone;
        let ms = |y, mo, d, h, mi, s| {
            chrono::Utc
                .with_ymd_and_hms(y, mo, d, h, mi, s)
                .unwrap()
                .timestamp_millis()
        };
        // Mondays 09:00 in Berlin = 08:00 UTC in winter.
        let (cron, tz) = ("0 9 * * MON", "Europe/Berlin");
        let created = ms(2026, 11, 29, 12, 0, 0); // a Sunday
        assert_eq!(
            latest_slot(cron, tz, created, ms(2026, 11, 30, 7, 59, 59)),
            None
        );
        assert_eq!(
            latest_slot(cron, tz, created, ms(2026, 11, 30, 8, 0, 30)),
            Some(ms(2026, 11, 30, 8, 0, 0))
        );
        // Once fired, the same slot is not due again.
        assert_eq!(
            latest_slot(
                cron,
                tz,
                ms(2026, 11, 30, 8, 0, 0),
                ms(2026, 11, 30, 8, 5, 0)
            ),
            None
        );
        assert!(check_schedule(cron, tz).is_ok());
        assert!(check_schedule("61 * * * *", tz).is_err());
        assert!(check_schedule(cron, "Mars/Olympus")
            .unwrap_err()
            .contains("not a time zone"));
    }
}
