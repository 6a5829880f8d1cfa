//! GitHub: `POST /github/webhook`. A delivery is verified (`X-Hub-Signature-256`, constant
//! time, before the body is parsed), refused above 25 MB, stored (a replayed
//! `X-GitHub-Delivery` is recognised and does nothing), answered at once, and handled after:
//! `@airlock` comments on issues and pull requests become attributed sessions, answered with
//! an "eyes" reaction at once and a status comment kept up to date by the outbox
//! ([`crate::notify`]). The commenter needs the configured permission on the repository and
//! an Airlock identity.

pub mod payload;

use std::sync::Arc;

use airlock_core::config::GithubConfig;
use airlock_core::domain::thread::{GithubThread, PullRequestRef};
use airlock_core::domain::{Human, Provider, Surface, ThreadRef};
use airlock_core::github::{Github, GithubSource};
use airlock_core::store::{settle, Inbound, NewAudit};
use airlock_core::{messages, Store};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::command::{self, Command};
use crate::identity::{self, Account};
use crate::requests::{self, Ask, Asked};
use crate::status::StatusView;
use payload::{CommentEvent, Delivery, Event, InstallationEvent};

/// GitHub refuses to send larger payloads; Airlock refuses to read them.
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// What handling a delivery came to.
enum Handled {
    Acted,
    /// Nothing for Airlock (an event it does not act on, a comment without a request): the
    /// payload is dropped at once.
    Ignored(&'static str),
}

/// Something a GitHub event can start besides a comment: the trigger adapter (issue and pull
/// request events) plugs in here, with the delivery (its typed event, and its JSON for a
/// trigger's prompt template).
#[async_trait::async_trait]
pub trait EventHook: Send + Sync {
    async fn github_event(&self, delivery: &Delivery);
}

pub struct GithubAdapter {
    store: Store,
    cfg: GithubConfig,
    source: Arc<GithubSource>,
    default_profile: Option<String>,
    public_url: String,
    /// The identity workspace of GitHub accounts: the host of `github.web_url`.
    workspace: String,
    hook: Option<Arc<dyn EventHook>>,
    /// Who this process is when it claims a delivery ([`Store::claim_inbound`]).
    claimant: String,
    /// Whether a delivery that needed nothing keeps its payload for a while
    /// (`retention.ignored_payload_hours`) instead of dropping it at once.
    keep_ignored: bool,
    /// The webhook secret, read from the store at most every [`SECRET_TTL`] (one database
    /// read less per delivery; a rotated secret is in use within that time).
    secret: std::sync::Mutex<Option<(std::time::Instant, Arc<airlock_core::secrets::SecretValue>)>>,
}

/// How long the webhook secret is kept in memory before it is read again.
const SECRET_TTL: std::time::Duration = std::time::Duration::from_secs(10);

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, body.into()).into_response()
}

fn permission_rank(p: &str) -> u8 {
    match p {
        "admin" => 4,
        "maintain" | "write" => 3,
        "triage" | "read" => 2,
        _ => 0,
    }
}

impl GithubAdapter {
    pub fn new(
        store: Store,
        cfg: GithubConfig,
        source: Arc<GithubSource>,
        default_profile: Option<String>,
        public_url: String,
        hook: Option<Arc<dyn EventHook>>,
        retention: &airlock_core::config::RetentionConfig,
    ) -> Arc<GithubAdapter> {
        Arc::new(GithubAdapter {
            workspace: airlock_core::github::web_host(&cfg.web_url),
            store,
            cfg,
            source,
            default_profile,
            public_url,
            hook,
            claimant: crate::inbound::claimant("github"),
            keep_ignored: retention.ignored_payload_hours > 0,
            secret: std::sync::Mutex::new(None),
        })
    }

    /// The webhook secret (see [`GithubAdapter::secret`]).
    async fn webhook_secret(
        &self,
    ) -> Result<Arc<airlock_core::secrets::SecretValue>, airlock_core::StoreError> {
        if let Some((at, s)) = self.secret.lock().expect("secret").as_ref() {
            if at.elapsed() < SECRET_TTL {
                return Ok(s.clone());
            }
        }
        let Some(name) = &self.cfg.webhook_secret_credential else {
            return Err(airlock_core::StoreError::NotFound(
                "github.webhook_secret_credential is not set".into(),
            ));
        };
        let s = Arc::new(self.store.reveal_credential(name).await?);
        *self.secret.lock().expect("secret") = Some((std::time::Instant::now(), s.clone()));
        Ok(s)
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/github/webhook", post(webhook))
            .with_state(self.clone())
    }

    /// Handles deliveries stored but not handled: at start (those of before a restart), then
    /// every [`crate::inbound::SWEEP`] (those whose handler died with another server), until `shutdown`.
    /// Each is claimed first, so one the request that stored it is handling is left alone.
    pub async fn resume(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let store = self.store.clone();
        crate::inbound::sweep(&store, "github", |i| self.handle(i), shutdown).await
    }

    #[tracing::instrument(name = "github", skip_all, fields(delivery = %inbound.delivery_id, event = %inbound.event))]
    async fn handle(&self, inbound: Inbound) {
        // Another handler has it (or it is done): the one delivery is handled once.
        crate::inbound::claimed(
            &self.store,
            &inbound,
            &self.claimant,
            self.handle_claimed(&inbound),
        )
        .await;
    }

    /// A delivery this process stored claimed: handled under that claim.
    #[tracing::instrument(name = "github", skip_all, fields(delivery = %inbound.delivery_id, event = %inbound.event))]
    async fn handle_held(&self, inbound: Inbound) {
        crate::inbound::held(
            &self.store,
            &inbound,
            &self.claimant,
            self.handle_claimed(&inbound),
        )
        .await;
    }

    async fn handle_claimed(&self, inbound: &Inbound) {
        let result = match Delivery::parse(&inbound.event, &inbound.payload) {
            Ok(delivery) => self.dispatch(&inbound.id, &delivery).await,
            Err(e) => Err(e),
        };
        // Of a delivery that needed nothing, only its key (which recognises a replay) and
        // why are kept, unless retention.ignored_payload_hours keeps the payload a while.
        if let Ok(Handled::Ignored(why)) = result {
            settle("an ignored GitHub delivery", || {
                self.store
                    .finish_inbound_ignored(&inbound.id, why, self.keep_ignored)
            })
            .await;
            return;
        }
        let error = result.err();
        if let Some(e) = &error {
            tracing::warn!(delivery = %inbound.delivery_id, event = %inbound.event, "GitHub delivery: {e}");
        }
        settle("a GitHub delivery handled", || {
            self.store.finish_inbound(&inbound.id, error.as_deref())
        })
        .await;
    }

    /// Acts on a parsed delivery.
    async fn dispatch(&self, inbound: &str, delivery: &Delivery) -> Result<Handled, String> {
        match &delivery.event {
            Event::Comment { event, review } => {
                let (number, is_pr) = event.thread().ok_or("no issue or pull request number")?;
                self.comment(inbound, event, number, is_pr, *review).await
            }
            Event::InstallationDeleted(i) => self
                .store
                .delete_github_installation(i.id)
                .await
                .map(|_| Handled::Acted)
                .map_err(|e| e.to_string()),
            Event::Installation(i) => self.installation(i).await.map(|_| Handled::Acted),
            Event::Issues(_) | Event::PullRequest(_) => {
                if let Some(h) = &self.hook {
                    h.github_event(delivery).await;
                }
                Ok(Handled::Acted)
            }
            Event::Other => Ok(Handled::Ignored("an event Airlock does not act on")),
        }
    }

    async fn installation(&self, p: &InstallationEvent) -> Result<(), String> {
        let id = p.installation.id;
        let account = p
            .installation
            .account
            .as_ref()
            .map(|a| a.login.clone())
            .unwrap_or_default();
        let names = |v: &[payload::Repository]| -> Vec<String> {
            v.iter().map(|r| r.full_name.clone()).collect()
        };
        let mut repos: Vec<String> = self
            .store
            .github_installations()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, _, r)| r)
            .unwrap_or_default();
        repos.extend(names(&p.repositories));
        repos.extend(names(&p.repositories_added));
        let removed = names(&p.repositories_removed);
        repos.retain(|r| !removed.contains(r));
        repos.sort();
        repos.dedup();
        self.store
            .set_github_installation(id, &account, &repos)
            .await
            .map_err(|e| e.to_string())?;
        let entry = NewAudit {
            actor: "github".into(),
            action: "github.installation".into(),
            target: account,
            session_id: None,
            detail: json!({"installation": id, "repositories": repos}),
        };
        settle("the installation's audit row", || {
            self.store.audit(entry.clone())
        })
        .await;
        Ok(())
    }

    fn is_bot(&self, user: &payload::User) -> bool {
        let login = user.login.as_str();
        let bot = self.cfg.bot_login.trim_end_matches("[bot]");
        user.kind == "Bot"
            || login.eq_ignore_ascii_case(&self.cfg.bot_login)
            || login.trim_end_matches("[bot]").eq_ignore_ascii_case(bot)
    }

    /// Why a delivery needs nothing, when its payload alone says so (most of what GitHub
    /// sends an installation): such a delivery is recorded as handled at once, and never
    /// claimed, handled or marked later.
    fn needs_nothing(&self, delivery: &Delivery) -> Option<&'static str> {
        match &delivery.event {
            Event::Other => Some("an event Airlock does not act on"),
            Event::Comment { event, .. } => self.comment_needs_nothing(event),
            _ => None,
        }
    }

    fn comment_needs_nothing(&self, p: &CommentEvent) -> Option<&'static str> {
        if self.is_bot(&p.sender) || self.is_bot(&p.comment.user) {
            return Some("the bot's own comment");
        }
        let body = p.comment.body.as_deref().unwrap_or("");
        command::from_comment(body, &self.cfg.bot_login)
            .is_none()
            .then_some("no request for Airlock in it")
    }

    /// An issue or pull-request comment.
    async fn comment(
        &self,
        inbound: &str,
        p: &CommentEvent,
        number: u64,
        is_pr: bool,
        review: bool,
    ) -> Result<Handled, String> {
        let comment = &p.comment;
        let sender = &p.sender;
        if let Some(why) = self.comment_needs_nothing(p) {
            return Ok(Handled::Ignored(why));
        }
        let body = comment.body.as_deref().unwrap_or("");
        let Some(parsed) = command::from_comment(body, &self.cfg.bot_login) else {
            return Ok(Handled::Ignored("no request for Airlock in it"));
        };
        let repo = p.repository.full_name.clone();
        let login = sender.login.clone();
        let comment_id = comment.id;
        let gh = self.source.get().await?;
        // At once: a person sees they were heard.
        if let Err(e) = gh.react(&repo, comment_id, review, "eyes").await {
            tracing::warn!(%repo, "cannot react to a comment: {e}");
        }
        let reply = |text: String| {
            let gh = gh.clone();
            let repo = repo.clone();
            async move {
                if let Err(e) = gh.comment(&repo, number, &text).await {
                    tracing::warn!(%repo, "cannot comment: {e}");
                }
            }
        };
        let cmd = match parsed {
            Ok(c) => c,
            Err(e) => {
                reply(format!(
                    "@{login} {e}.\n\n{}",
                    command::help(&format!("@{}", self.mention()))
                ))
                .await;
                return Ok(Handled::Acted);
            }
        };
        if cmd == Command::Help {
            reply(command::help(&format!("@{}", self.mention()))).await;
            return Ok(Handled::Acted);
        }
        // Only people who may change the repository may ask.
        let permission = gh
            .permission(&repo, &login)
            .await
            .map_err(|e| format!("cannot check {login}'s permission on {repo}: {e}"))?;
        if permission_rank(&permission) < permission_rank(&self.cfg.min_permission) {
            reply(format!(
                "Sorry @{login}, only people with {} access to {repo} can ask Airlock for changes here.",
                self.cfg.min_permission
            ))
            .await;
            let entry = NewAudit {
                actor: format!("github:{login}"),
                action: "github.refused".into(),
                target: repo.clone(),
                session_id: None,
                detail: json!({"reason": "permission", "permission": permission, "issue": number}),
            };
            settle("the refusal's audit row", || {
                self.store.audit(entry.clone())
            })
            .await;
            return Ok(Handled::Acted);
        }
        let account = Account {
            provider: Provider::Github,
            workspace: self.workspace.clone(),
            external_id: sender.id.to_string(),
            handle: login.clone(),
        };
        let email = format!(
            "{}+{login}@users.noreply.{}",
            account.external_id, self.workspace
        );
        let human = identity::human_of(
            &self.store,
            &account,
            self.cfg.create_humans.then_some(email.as_str()),
        )
        .await
        .map_err(|e| e.to_string())?;
        let Some(human) = human else {
            reply(format!(
                "Hi @{login}, I don't know you in Airlock yet, so I can't act for you. \
                 Link your accounts: run `/airlock link` in Slack or Discord and then comment \
                 `@{} link CODE` here, or ask an admin to run \
                 `airlock identity link --human YOUR-EMAIL --provider github --external-id {} --handle {login}`.",
                self.mention(),
                account.external_id
            ))
            .await;
            return Ok(Handled::Acted);
        };
        let thread_key = format!("github:{repo}#{number}");
        match cmd {
            Command::Help | Command::Config { .. } => {
                reply(command::help(&format!("@{}", self.mention()))).await;
            }
            Command::Link { code: Some(code) } => match identity::redeem(&self.store, &code, &human).await {
                Ok(linked) => {
                    reply(format!(
                        "@{login}, your {} account {} is now linked to {} in Airlock.",
                        linked.provider, linked.handle, human.display_name
                    ))
                    .await
                }
                Err(e) => reply(format!("@{login}, {e}.")).await,
            },
            Command::Link { code: None } => {
                reply(format!(
                    "@{login}, your GitHub account is linked to {} already. To link a Slack or \
                     Discord account too, run `/airlock link` there and comment `@{} link CODE` here.",
                    human.display_name,
                    self.mention()
                ))
                .await
            }
            Command::Stop => match requests::stop(&self.store, &thread_key, &human, Surface::Github, &format!("@{login} on GitHub")).await {
                Ok(Some(_)) => {}
                Ok(None) => reply(format!("@{login}, nothing is running here.")).await,
                Err(e) => reply(format!("@{login}, {e}.")).await,
            },
            Command::Status => match self.store.session_in_thread(&thread_key).await {
                Ok(Some(s)) => match StatusView::load(&self.store, &s, &self.public_url).await {
                    Ok(v) => reply(v.github()).await,
                    Err(e) => return Err(e.to_string()),
                },
                _ => reply(format!("@{login}, there is no Airlock session here yet.")).await,
            },
            Command::Run { prompt, options } => {
                self.run(&gh, p, &repo, number, is_pr, review, comment_id, &human, &login, thread_key, prompt, options, inbound)
                    .await?
            }
        }
        Ok(Handled::Acted)
    }

    fn mention(&self) -> &str {
        self.cfg.bot_login.trim_end_matches("[bot]")
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        gh: &Github,
        p: &CommentEvent,
        repo: &str,
        number: u64,
        is_pr: bool,
        review: bool,
        comment_id: u64,
        human: &Human,
        login: &str,
        thread_key: String,
        prompt: String,
        options: command::RunOptions,
        inbound: &str,
    ) -> Result<(), String> {
        let reply = |text: String| async move {
            if let Err(e) = gh.comment(repo, number, &text).await {
                tracing::warn!(%repo, "cannot comment: {e}");
            }
        };
        if options
            .repo
            .as_deref()
            .is_some_and(|r| !r.eq_ignore_ascii_case(repo))
        {
            reply(format!(
                "@{login}, here I work on {repo}; ask in the other repository to work there."
            ))
            .await;
            return Ok(());
        }
        let mut thread = GithubThread {
            repo: repo.to_string(),
            issue: number,
            comment_id: Some(comment_id),
            review,
            comment_url: p.comment.html_url.clone(),
            login: Some(login.to_string()),
            ..Default::default()
        };
        if is_pr {
            let pr = gh
                .pull(repo, number)
                .await
                .map_err(|e| format!("cannot read pull request #{number}: {e}"))?;
            let head = pr.head.clone().ok_or("the pull request has no head")?;
            let head_repo = head
                .repo
                .as_ref()
                .map(|r| r.full_name.clone())
                .unwrap_or_default();
            if !head_repo.eq_ignore_ascii_case(repo) {
                reply(format!(
                    "@{login}, this pull request's branch is in {head_repo}, a fork; Airlock can only push to branches of {repo}."
                ))
                .await;
                return Ok(());
            }
            thread.pull_request = Some(PullRequestRef {
                number,
                head: head.name,
                base: pr.base.map(|b| b.name).unwrap_or_else(|| "main".into()),
                url: Some(pr.html_url),
            });
        }
        let asked = requests::ask(
            &self.store,
            self.default_profile.as_deref(),
            Ask {
                human: human.clone(),
                surface: Surface::Github,
                thread_key,
                thread_ref: ThreadRef::Github(thread),
                repo: repo.to_string(),
                profile: options.profile,
                prompt,
                delivery: Some(inbound.to_string()),
            },
        )
        .await;
        match asked {
            Ok(Asked::Started(_)) | Ok(Asked::Continued(_)) => {}
            Ok(Asked::Busy(s)) => {
                let stop = format!("@{} stop", self.mention());
                reply(format!("@{login}, {}", messages::busy(&s.id, &stop))).await
            }
            Err(e) => reply(format!("@{login}, {e}.")).await,
        }
        Ok(())
    }
}

async fn webhook(
    State(a): State<Arc<GithubAdapter>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // Room for the body before it is read (decision 0015): its declared length (GitHub
    // always sends one), or the most a delivery may be; kept in the pieces it arrives in.
    let (declared, _room) = match crate::room::reserve(&headers, MAX_BODY).await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let pieces = match crate::room::read_pieces(body, declared).await {
        Ok(b) => b,
        Err(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    // The signature first: nothing reads an unverified body.
    let secret = match a.webhook_secret().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "cannot check a GitHub delivery: the webhook secret `{}` cannot be read ({e})",
                a.cfg
                    .webhook_secret_credential
                    .as_deref()
                    .unwrap_or("(none configured)")
            );
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the webhook secret is not set up\n",
            );
        }
    };
    let parts: Vec<&[u8]> = pieces.iter().map(|p| p.as_ref()).collect();
    if !crate::verify::hmac_sha256_parts(secret.expose(), &parts, header("x-hub-signature-256")) {
        tracing::warn!(
            delivery = header("x-github-delivery"),
            "refused a GitHub delivery with a bad signature"
        );
        return text(StatusCode::UNAUTHORIZED, "bad signature\n");
    }
    drop(secret);
    // Verified: now it may be one buffer.
    let body = pieces.concat();
    drop(pieces);
    let event = header("x-github-event").to_string();
    let delivery = header("x-github-delivery").to_string();
    if event.is_empty() || delivery.is_empty() || delivery.len() > 200 {
        return text(
            StatusCode::BAD_REQUEST,
            "X-GitHub-Event and X-GitHub-Delivery are required\n",
        );
    }
    if event == "ping" {
        return Json(json!({"ok": true, "message": "pong"})).into_response();
    }
    let Ok(payload) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "the body is not UTF-8\n");
    };
    // Parsed before it is acknowledged: a payload Airlock cannot read (not JSON, nested
    // deeper than serde_json's 128 levels, a field of the wrong type) is refused now, not
    // stored to fail later.
    let parsed = match Delivery::parse(&event, payload) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%delivery, %event, "refused a GitHub delivery: {e}");
            return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if parsed.stale(now) {
        tracing::warn!(%delivery, %event, "ignored an event from more than a week ago (a replay)");
        return Json(json!({"ok": true, "ignored": "the event is more than a week old"}))
            .into_response();
    }
    // Stored under what it is about, so the same intent is handled once however often it
    // is delivered.
    let intent = parsed.intent(&event, &delivery);
    if let Some(why) = a.needs_nothing(&parsed) {
        let kept = if a.keep_ignored { payload } else { "" };
        return match a
            .store
            .record_ignored("github", &intent, &event, kept, why)
            .await
        {
            Ok(true) => Json(json!({"ok": true, "ignored": why})).into_response(),
            Ok(false) => Json(json!({"ok": true, "duplicate": true})).into_response(),
            Err(e) => {
                tracing::warn!("cannot store a GitHub delivery: {e}");
                text(StatusCode::SERVICE_UNAVAILABLE, "try again\n")
            }
        };
    }
    match a
        .store
        .record_inbound_claimed(
            ("github", &intent, &event, payload),
            &a.claimant,
            crate::inbound::CLAIM_LEASE_MS,
        )
        .await
    {
        Ok(Some(inbound)) => {
            let a = a.clone();
            tokio::spawn(async move { a.handle_held(inbound).await });
            (StatusCode::ACCEPTED, Json(json!({"ok": true}))).into_response()
        }
        Ok(None) => Json(json!({"ok": true, "duplicate": true})).into_response(),
        Err(e) => {
            tracing::warn!("cannot store a GitHub delivery: {e}");
            text(StatusCode::SERVICE_UNAVAILABLE, "try again\n")
        }
    }
}
