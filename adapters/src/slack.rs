//! Slack (slack-morphism): `POST /slack/commands`, `/slack/events`, `/slack/interactions`.
//!
//! Every request's v0 signature and its timestamp (within 5 minutes, either way) are checked
//! before the body is parsed. Slack hears back at once: commands are answered in the
//! response, events and buttons are acknowledged and handled after. An event is stored by
//! its `event_id`, so Slack's retries (`X-Slack-Retry-Num`) never start a second session.
//! Each session has one thread: a status message edited in place, and a final message with
//! the summary, the pull request and the model usage, sent through the outbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::config::SlackConfig;
use airlock_core::domain::thread::SlackThread;
use airlock_core::domain::{Provider, SessionState, Surface, ThreadRef};
use airlock_core::ids::SessionId;
use airlock_core::render;
use airlock_core::store::{settle, Session};
use airlock_core::Store;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use slack_morphism::errors::{SlackClientError, SlackClientSystemError};
use slack_morphism::prelude::*;

use crate::chat::{self, ChatRequest, Reply};
use crate::identity::{self, Account};
use crate::notify::{Sent, StatusSink};
use crate::status::StatusView;
use airlock_core::service::{self, Actor, Refusal, Sessions};

/// Slack sends at most a few KB; anything bigger is not Slack.
const MAX_BODY: usize = 1024 * 1024;
/// A section block's text limit.
const SECTION_MAX: usize = 2900;

type Connector = SlackClientHyperConnector<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
>;

/// The Web API client, pointed at `slack.api_url`, with the bot token from the store.
pub struct SlackApi {
    client: SlackClient<Connector>,
    store: Store,
    token_credential: String,
    /// Until when Slack told us to wait (its last `429` and `Retry-After`): no call goes out
    /// before then, whichever session or thread it is for.
    paused_until: std::sync::Mutex<Option<Instant>>,
}

/// The longest a caller waits for a `Retry-After` before giving up on its call.
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// What a `429` without `Retry-After` makes us wait.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

impl SlackApi {
    pub fn new(store: Store, cfg: &SlackConfig) -> anyhow::Result<SlackApi> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        let connector = SlackClientHyperConnector::with_connector(https)
            .with_slack_api_url(cfg.api_url.trim_end_matches('/'));
        Ok(SlackApi {
            client: SlackClient::new(connector),
            store,
            token_credential: cfg.bot_token_credential.clone(),
            paused_until: std::sync::Mutex::new(None),
        })
    }

    /// How long Slack's last `Retry-After` still runs.
    pub fn pause_left(&self) -> Duration {
        let until = *self.paused_until.lock().expect("pause");
        until.map_or(Duration::ZERO, |u| {
            u.saturating_duration_since(Instant::now())
        })
    }

    /// Waits out a running `Retry-After` (a caller that cannot defer its call).
    async fn honour_pause(&self) -> Result<(), SlackClientError> {
        let left = self.pause_left();
        if left > MAX_PAUSE {
            return Err(api_err(format!(
                "Slack asked to wait {} s more before any call",
                left.as_secs()
            )));
        }
        if !left.is_zero() {
            tokio::time::sleep(left).await;
        }
        Ok(())
    }

    /// Remembers a `429`: every later call waits until its `Retry-After` has run.
    fn noted<T>(&self, r: Result<T, SlackClientError>) -> Result<T, SlackClientError> {
        if let Err(SlackClientError::RateLimitError(e)) = &r {
            let until = Instant::now() + e.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
            let mut p = self.paused_until.lock().expect("pause");
            if p.is_none_or(|old| old < until) {
                *p = Some(until);
            }
        }
        r
    }

    async fn token(&self) -> Result<SlackApiToken, String> {
        let v = self
            .store
            .reveal_credential(&self.token_credential)
            .await
            .map_err(|e| {
                format!(
                    "the Slack bot token `{}` cannot be read: {e}",
                    self.token_credential
                )
            })?;
        Ok(SlackApiToken::new(SlackApiTokenValue(
            String::from_utf8_lossy(v.expose()).trim().to_string(),
        )))
    }

    pub async fn post(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        content: SlackMessageContent,
    ) -> Result<String, SlackClientError> {
        let token = self.token().await.map_err(api_err)?;
        let session = self.client.open_session(&token);
        let mut req = SlackApiChatPostMessageRequest::new(channel.into(), content);
        if let Some(t) = thread_ts {
            req = req.with_thread_ts(t.into());
        }
        self.honour_pause().await?;
        Ok(self.noted(session.chat_post_message(&req).await)?.ts.0)
    }

    pub async fn update(
        &self,
        channel: &str,
        ts: &str,
        content: SlackMessageContent,
    ) -> Result<(), SlackClientError> {
        let token = self.token().await.map_err(api_err)?;
        let session = self.client.open_session(&token);
        let req = SlackApiChatUpdateRequest::new(channel.into(), content, ts.into());
        self.honour_pause().await?;
        self.noted(session.chat_update(&req).await)?;
        Ok(())
    }

    pub async fn ephemeral(
        &self,
        channel: &str,
        user: &str,
        thread_ts: Option<&str>,
        text: &str,
    ) -> Result<(), SlackClientError> {
        let token = self.token().await.map_err(api_err)?;
        let session = self.client.open_session(&token);
        let mut req = SlackApiChatPostEphemeralRequest::new(
            channel.into(),
            user.into(),
            SlackMessageContent::new().with_text(text.to_string()),
        );
        if let Some(t) = thread_ts {
            req = req.with_thread_ts(t.into());
        }
        self.honour_pause().await?;
        self.noted(session.chat_post_ephemeral(&req).await)?;
        Ok(())
    }
}

fn api_err(e: String) -> SlackClientError {
    SlackClientError::SystemError(SlackClientSystemError::new().with_message(e))
}

/// A message a person wrote: a mention of the bot, or a reply in a thread.
struct Said<'a> {
    team: &'a str,
    user: &'a str,
    channel: &'a str,
    ts: &'a str,
    thread_ts: Option<&'a str>,
    body: &'a str,
    mention: bool,
}

pub struct SlackAdapter {
    store: Store,
    cfg: SlackConfig,
    api: Arc<SlackApi>,
    default_profile: Option<String>,
    /// Who this process is when it claims a stored event ([`crate::inbound::claim`]).
    claimant: String,
}

fn text(status: StatusCode, body: &str) -> Response {
    (status, body.to_string()).into_response()
}

/// Strips a leading `<@U…>` mention (what an `app_mention` starts with).
fn without_mention(text: &str) -> &str {
    let t = text.trim_start();
    match t.strip_prefix("<@").and_then(|r| r.split_once('>')) {
        Some((_, rest)) => rest.trim_start(),
        None => t,
    }
}

impl SlackAdapter {
    pub fn new(
        store: Store,
        cfg: SlackConfig,
        api: Arc<SlackApi>,
        default_profile: Option<String>,
    ) -> Arc<SlackAdapter> {
        Arc::new(SlackAdapter {
            claimant: crate::inbound::claimant("slack"),
            store,
            cfg,
            api,
            default_profile,
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/slack/commands", post(commands))
            .route("/slack/events", post(events))
            .route("/slack/interactions", post(interactions))
            .with_state(self.clone())
    }

    /// Handles events stored but not handled: at start (those of before a restart), then
    /// every [`crate::inbound::SWEEP`] (those whose handler died with another server), until `shutdown`.
    /// Each is claimed first, so each is handled once.
    pub async fn resume(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let store = self.store.clone();
        crate::inbound::sweep(&store, "slack", |i| self.handle_stored(i), shutdown).await
    }

    /// A stored event left by another handler (the sweep): claimed, handled and marked.
    async fn handle_stored(&self, inbound: airlock_core::store::Inbound) {
        let work = self.handle_event(&inbound);
        crate::inbound::claimed(&self.store, &inbound, &self.claimant, work).await;
    }

    /// An event this process stored claimed: handled under that claim.
    async fn handle_held(&self, inbound: airlock_core::store::Inbound) {
        let work = self.handle_event(&inbound);
        crate::inbound::held(&self.store, &inbound, &self.claimant, work).await;
    }

    async fn handle_event(&self, inbound: &airlock_core::store::Inbound) {
        let error = match serde_json::from_str::<SlackPushEvent>(&inbound.payload) {
            Ok(SlackPushEvent::EventCallback(cb)) => {
                self.event(cb).await;
                None
            }
            Ok(_) => None,
            Err(e) => Some(format!("the stored Slack event cannot be read: {e}")),
        };
        settle("a Slack event handled", || {
            self.store.finish_inbound(&inbound.id, error.as_deref())
        })
        .await;
    }

    /// A verified command or button click, once: Slack signs its timestamp with the body,
    /// so the same signed request replayed within the window has the same digest, and is
    /// answered `duplicate` (`Err`) instead of acted on again.
    async fn once(&self, kind: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
        use sha2::Digest as _;
        let ts = headers
            .get("x-slack-request-timestamp")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut h = sha2::Sha256::new();
        h.update(ts.as_bytes());
        h.update(b":");
        h.update(body);
        let key = format!("{kind}:{}", hex::encode(h.finalize()));
        match self.store.record_answered("slack", &key, kind).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!(kind, "a Slack request seen before (a replay); ignored");
                Err(Json(json!({"response_type": "ephemeral", "text": "Airlock has this request already."})).into_response())
            }
            Err(e) => {
                tracing::warn!("cannot record a Slack request: {e}");
                Err(text(StatusCode::SERVICE_UNAVAILABLE, "try again\n"))
            }
        }
    }

    /// The signature and the 5-minute window; `Err` is the answer to give.
    async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let ts = header("x-slack-request-timestamp");
        match crate::verify::within_window(ts) {
            Some(true) => {}
            None => {
                return Err(text(
                    StatusCode::UNAUTHORIZED,
                    "missing or bad X-Slack-Request-Timestamp\n",
                ))
            }
            Some(false) => {
                tracing::warn!("refused a Slack request outside the 5-minute window");
                return Err(text(StatusCode::UNAUTHORIZED, "stale request\n"));
            }
        }
        let secret = self
            .store
            .reveal_credential(&self.cfg.signing_secret_credential)
            .await
            .map_err(|e| {
                tracing::warn!(
                    "cannot check a Slack request: the signing secret cannot be read ({e})"
                );
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the signing secret is not set up\n",
                )
            })?;
        if !crate::verify::slack_v0(secret.expose(), ts, body, header("x-slack-signature")) {
            tracing::warn!("refused a Slack request with a bad signature");
            return Err(text(StatusCode::UNAUTHORIZED, "bad signature\n"));
        }
        Ok(())
    }

    fn account(team: &str, user: &str) -> Account {
        Account {
            provider: Provider::Slack,
            workspace: team.to_string(),
            external_id: user.to_string(),
            handle: user.to_string(),
        }
    }

    fn thread_key(team: &str, channel: &str, root: &str) -> String {
        format!("slack:{team}:{channel}:{root}")
    }

    /// A mention, or a message in a session's thread.
    async fn message(&self, m: Said<'_>) {
        let Said {
            team,
            user,
            channel,
            ts,
            thread_ts,
            body,
            mention,
        } = m;
        let root = thread_ts.unwrap_or(ts).to_string();
        let key = Self::thread_key(team, channel, &root);
        if !mention {
            // Plain messages count only in a session's thread.
            match self.store.session_in_thread(&key).await {
                Ok(Some(_)) => {}
                _ => return,
            }
        }
        let req = ChatRequest {
            surface: Surface::Slack,
            account: Self::account(team, user),
            channel: channel.to_string(),
            thread_key: key,
            thread_ref: ThreadRef::Slack(SlackThread {
                team: team.to_string(),
                channel: channel.to_string(),
                thread_ts: Some(root.clone()),
                ..Default::default()
            }),
            text: without_mention(body).to_string(),
            prefix: "@Airlock".into(),
        };
        let reply = chat::handle(&self.store, self.default_profile.as_deref(), req).await;
        let sent = match reply {
            Reply::Private(t) => self.api.ephemeral(channel, user, Some(&root), &t).await,
            Reply::Public(t) => self
                .api
                .post(
                    channel,
                    Some(&root),
                    SlackMessageContent::new().with_text(t),
                )
                .await
                .map(|_| ()),
            Reply::Started { .. } => Ok(()),
        };
        if let Err(e) = sent {
            tracing::warn!(%channel, "cannot answer in Slack: {e}");
        }
    }

    async fn event(&self, p: SlackPushEventCallback) {
        let team = p.team_id.0.clone();
        match p.event {
            SlackEventCallbackBody::AppMention(m) => {
                let body = m.content.text.clone().unwrap_or_default();
                self.message(Said {
                    team: &team,
                    user: &m.user.0,
                    channel: &m.channel.0,
                    ts: &m.origin.ts.0,
                    thread_ts: m.origin.thread_ts.as_ref().map(|t| t.0.as_str()),
                    body: &body,
                    mention: true,
                })
                .await
            }
            SlackEventCallbackBody::Message(m) => {
                // Bots (Airlock itself among them) and edits never count.
                if m.sender.bot_id.is_some() || m.subtype.is_some() {
                    return;
                }
                let (Some(user), Some(channel), Some(thread_ts)) = (
                    m.sender.user.as_ref(),
                    m.origin.channel.as_ref(),
                    m.origin.thread_ts.as_ref(),
                ) else {
                    return;
                };
                let body = m
                    .content
                    .as_ref()
                    .and_then(|c| c.text.clone())
                    .unwrap_or_default();
                // A mention is handled by its `app_mention` event.
                if body.contains("<@") {
                    return;
                }
                self.message(Said {
                    team: &team,
                    user: &user.0,
                    channel: &channel.0,
                    ts: &m.origin.ts.0,
                    thread_ts: Some(&thread_ts.0),
                    body: &body,
                    mention: false,
                })
                .await
            }
            _ => {}
        }
    }

    async fn action(&self, ev: SlackInteractionBlockActionsEvent) {
        let Some(user) = ev.user.as_ref() else { return };
        let team = ev.team.id.0.clone();
        let channel = ev
            .channel
            .as_ref()
            .map(|c| c.id.0.clone())
            .unwrap_or_default();
        for a in ev.actions.unwrap_or_default() {
            // The button's value is the session it was posted for (Airlock's own, signed by
            // Slack on the way back); anything else is ignored.
            let Some(session_id) = a.value.as_deref().and_then(|v| v.parse::<SessionId>().ok())
            else {
                tracing::debug!("a Slack button without a session id");
                continue;
            };
            let say = |t: String| {
                let (channel, user) = (channel.clone(), user.id.0.clone());
                async move {
                    if let Err(e) = self.api.ephemeral(&channel, &user, None, &t).await {
                        tracing::warn!("cannot answer in Slack: {e}");
                    }
                }
            };
            if a.action_id.0 == "airlock_open_pr" {
                continue;
            }
            let human = match identity::human_of(
                &self.store,
                &Self::account(&team, &user.id.0),
                None,
            )
            .await
            {
                Ok(Some(h)) => h,
                _ => {
                    say(chat::not_linked(Surface::Slack, "/airlock")).await;
                    continue;
                }
            };
            let Ok(session) = self.store.session(&session_id).await else {
                continue;
            };
            // The buttons are the requester's (and admins'): others in the channel see them too.
            if !service::may_act_on(&human, &session) {
                say(format!("{}.", capitalised(&Refusal::NotTheirs.to_string()))).await;
                continue;
            }
            let service = Sessions::new(self.store.clone(), self.default_profile.clone());
            let actor = Actor::human(
                human.clone(),
                Surface::Slack,
                format!("{} in Slack", human.display_name),
            );
            let done = match a.action_id.0.as_str() {
                "airlock_stop" if !session.state.is_terminal() => {
                    service.stop(&actor, &session.id, None).await.map(|_| ())
                }
                "airlock_retry" if session.state.is_terminal() => {
                    service.retry(&actor, &session.id).await.map(|_| ())
                }
                _ => Ok(()),
            };
            if let Err(e) = done {
                say(format!("Cannot do that: {e}.")).await;
            }
        }
    }
}

/// A Slack request's body, read into the shared room for unverified bodies.
type Body = crate::room::Unverified<MAX_BODY>;

async fn commands(State(a): State<Arc<SlackAdapter>>, headers: HeaderMap, body: Body) -> Response {
    let Body { bytes: body, room } = body;
    if let Err(r) = a.verify(&headers, &body).await {
        return r;
    }
    drop(room);
    if let Err(r) = a.once("command", &headers, &body).await {
        return r;
    }
    let cmd: SlackCommandEvent = match serde_urlencoded::from_bytes(&body) {
        Ok(c) => c,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("not a slash command: {e}\n"),
            )
        }
    };
    let team = cmd.team_id.0.clone();
    let channel = cmd.channel_id.0.clone();
    // A command starts a new thread, whose root is the status message once it is posted.
    let req = ChatRequest {
        surface: Surface::Slack,
        account: SlackAdapter::account(&team, &cmd.user_id.0),
        channel: channel.clone(),
        thread_key: format!("slack:{team}:{channel}:command:{}", cmd.trigger_id.0),
        thread_ref: ThreadRef::Slack(SlackThread {
            team: team.clone(),
            channel: channel.clone(),
            user: Some(cmd.user_id.0.clone()),
            ..Default::default()
        }),
        text: cmd.text.clone().unwrap_or_default(),
        prefix: cmd.command.0.clone(),
    };
    let reply = chat::handle(&a.store, a.default_profile.as_deref(), req).await;
    let (kind, t) = match reply {
        Reply::Private(t) => ("ephemeral", t),
        Reply::Public(t) => ("in_channel", t),
        Reply::Started { session, continued } => (
            "ephemeral",
            format!(
                "{} session `{session}`: follow it in the thread I'm starting here.",
                if continued { "Continuing" } else { "Starting" }
            ),
        ),
    };
    Json(json!({"response_type": kind, "text": t})).into_response()
}

async fn events(State(a): State<Arc<SlackAdapter>>, headers: HeaderMap, body: Body) -> Response {
    let Body { bytes: body, room } = body;
    if let Err(r) = a.verify(&headers, &body).await {
        return r;
    }
    drop(room);
    let event: SlackPushEvent = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("not a Slack event: {e}\n"),
            )
        }
    };
    match event {
        SlackPushEvent::UrlVerification(v) => {
            Json(json!({"challenge": v.challenge})).into_response()
        }
        SlackPushEvent::EventCallback(cb) => {
            let payload = String::from_utf8_lossy(&body).into_owned();
            match a
                .store
                .record_inbound_claimed(
                    ("slack", &cb.event_id.0, "event_callback", &payload),
                    &a.claimant,
                    crate::inbound::CLAIM_LEASE_MS,
                )
                .await
            {
                Ok(Some(inbound)) => {
                    let a = a.clone();
                    tokio::spawn(async move { a.handle_held(inbound).await });
                }
                Ok(None) => {
                    let retry = headers
                        .get("x-slack-retry-num")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info!(retry, "a Slack event seen before; ignored");
                }
                Err(e) => {
                    tracing::warn!("cannot store a Slack event: {e}");
                    return text(StatusCode::SERVICE_UNAVAILABLE, "try again\n");
                }
            }
            StatusCode::OK.into_response()
        }
        SlackPushEvent::AppRateLimited(_) => StatusCode::OK.into_response(),
    }
}

async fn interactions(
    State(a): State<Arc<SlackAdapter>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Body { bytes: body, room } = body;
    if let Err(r) = a.verify(&headers, &body).await {
        return r;
    }
    drop(room);
    if let Err(r) = a.once("interaction", &headers, &body).await {
        return r;
    }
    #[derive(serde::Deserialize)]
    struct Form {
        payload: String,
    }
    let Ok(form) = serde_urlencoded::from_bytes::<Form>(&body) else {
        return text(StatusCode::BAD_REQUEST, "no payload\n");
    };
    match serde_json::from_str::<SlackInteractionEvent>(&form.payload) {
        Ok(SlackInteractionEvent::BlockActions(ev)) => {
            let a = a.clone();
            tokio::spawn(async move { a.action(ev).await });
            StatusCode::OK.into_response()
        }
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            &format!("not a Slack interaction: {e}\n"),
        ),
    }
}

fn section(md: &str) -> SlackBlock {
    SlackSectionBlock::new()
        .with_text(SlackBlockText::MarkDown(SlackBlockMarkDownText::new(
            md.to_string(),
        )))
        .into()
}

fn button(action: &str, label: &str, value: &str) -> SlackBlockButtonElement {
    SlackBlockButtonElement::new(SlackBlockPlainTextOnly::from(label))
        .with_action_id(action.into())
        .with_value(value.to_string())
}

/// The status message: state, steps, and the buttons that apply now.
fn status_content(view: &StatusView) -> SlackMessageContent {
    let mut md = format!(
        "{} *{}* · <{}|session {}>\n> {}",
        view.emoji(),
        render::slack(&view.headline(), 500).join(" "),
        view.link,
        view.session,
        render::slack(&render::one_line(&view.prompt, 200), 300).join(" ")
    );
    if !view.steps.is_empty() {
        md.push('\n');
        if view.more_steps > 0 {
            md.push_str(&format!("\n• … {} earlier steps", view.more_steps));
        }
        for s in &view.steps {
            md.push_str(&format!("\n• {}", render::slack(s, 300).join(" ")));
        }
    }
    let md: String = md.chars().take(SECTION_MAX).collect();
    let mut buttons = Vec::new();
    if !view.state.is_terminal() {
        buttons.push(SlackActionBlockElement::Button(
            button("airlock_stop", "Stop", &view.session).with_style(SlackBlockButtonStyle::Danger),
        ));
    } else if view.state != SessionState::Succeeded {
        buttons.push(SlackActionBlockElement::Button(button(
            "airlock_retry",
            "Retry",
            &view.session,
        )));
    }
    if let Some(pr) = view.pull_request.as_ref().and_then(|u| u.parse().ok()) {
        buttons.push(SlackActionBlockElement::Button(
            button("airlock_open_pr", "Open PR", &view.session).with_url(pr),
        ));
    }
    let mut blocks = vec![section(&md)];
    if !buttons.is_empty() {
        blocks.push(SlackActionsBlock::new(buttons).into());
    }
    SlackMessageContent::new()
        .with_text(format!("{} {}", view.headline(), view.session))
        .with_blocks(blocks)
}

/// The final message in the thread: the summary, the pull request, the usage.
fn final_content(view: &StatusView) -> SlackMessageContent {
    let md = view.final_markdown();
    // Long answers become several sections; past Slack's limits, the rest is on the page.
    let mut parts = render::slack(&md, SECTION_MAX);
    let text = parts.first().cloned().unwrap_or_default();
    if parts.len() > 40 {
        parts.truncate(40);
        parts.push(format!(
            "_(cut here; the full log is at <{}|the session page>)_",
            view.link
        ));
    }
    SlackMessageContent::new()
        .with_text(text.chars().take(3000).collect::<String>())
        .with_blocks(parts.iter().map(|p| section(p)).collect())
}

fn sent_of(e: SlackClientError) -> Sent {
    match e {
        SlackClientError::RateLimitError(r) => {
            Sent::Later(r.retry_after.unwrap_or(DEFAULT_RETRY_AFTER))
        }
        SlackClientError::ApiError(a)
            if [
                "channel_not_found",
                "message_not_found",
                "not_in_channel",
                "is_archived",
            ]
            .contains(&a.code.as_str()) =>
        {
            Sent::GiveUp(a.code)
        }
        other => Sent::Retry(other.to_string()),
    }
}

/// Slack: the status message (edited with `chat.update`) and the final message, in the
/// session's thread.
pub struct SlackSink {
    pub api: Arc<SlackApi>,
}

#[async_trait::async_trait]
impl StatusSink for SlackSink {
    fn spacing(&self) -> Duration {
        Duration::from_millis(1200)
    }

    async fn send(&self, store: &Store, session: &Session, view: &StatusView) -> Sent {
        // A `Retry-After` another thread's update got holds for this one too.
        let left = self.api.pause_left();
        if !left.is_zero() {
            return Sent::Later(left);
        }
        let ThreadRef::Slack(mut t) = session.thread_ref.clone() else {
            return Sent::GiveUp("the session's thread is not in Slack".into());
        };
        let channel = t.channel.clone();
        if channel.is_empty() {
            return Sent::GiveUp("the session's thread names no channel".into());
        }
        let content = status_content(view);
        match &t.status_ts {
            Some(ts) => {
                if let Err(e) = self.api.update(&channel, ts, content).await {
                    return sent_of(e);
                }
            }
            None => {
                let ts = match self
                    .api
                    .post(&channel, t.thread_ts.as_deref(), content)
                    .await
                {
                    Ok(ts) => ts,
                    Err(e) => return sent_of(e),
                };
                t.status_ts = Some(ts.clone());
                if t.thread_ts.is_none() {
                    // A command's thread: its root is this message.
                    t.thread_ts = Some(ts.clone());
                    let key = SlackAdapter::thread_key(&t.team, &channel, &ts);
                    settle("the session's Slack thread", || {
                        store.set_thread_key(&session.id, &key)
                    })
                    .await;
                }
                if let Err(e) = store
                    .set_thread_ref(&session.id, &ThreadRef::Slack(t.clone()))
                    .await
                {
                    return Sent::Retry(e.to_string());
                }
            }
        }
        if session.state.is_terminal() && t.final_ts.is_none() {
            match self
                .api
                .post(&channel, t.thread_ts.as_deref(), final_content(view))
                .await
            {
                Ok(ts) => {
                    t.final_ts = Some(ts);
                    if let Err(e) = store
                        .set_thread_ref(&session.id, &ThreadRef::Slack(t))
                        .await
                    {
                        return Sent::Retry(e.to_string());
                    }
                }
                Err(e) => return sent_of(e),
            }
        }
        Sent::Done
    }
}

/// `text` with its first letter upper case (a refusal said as a sentence of its own).
fn capitalised(text: &str) -> String {
    let mut c = text.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
