//! The session service: the one way a surface (Slack, Discord, GitHub, `airlock run`, the
//! admin page, chat buttons, the CLI) starts, continues, stops or retries a session.
//!
//! Each call takes an [`Actor`] (who, on which surface, how to name them) and decides with
//! the same policy for every surface: the profile (named, the default, or the only one), the
//! profile's `repos` and `access`, and who may act on an existing session. The state change
//! and its audit row are written in one transaction (`Store::*_audited`): a refusal writes
//! nothing, and a change is never left without its row. Refusals are [`Refusal`]s, whose
//! texts for people live in [`crate::messages`].

use crate::domain::{Human, Role, SessionState, Surface, ThreadRef};
use crate::ids::{ProfileId, SessionId, TriggerId};
use crate::messages;
use crate::store::{NewSession, Profile, ProfileVersion, Session, SessionAudit};
use crate::{Store, StoreError};

/// Who is acting.
#[derive(Debug, Clone)]
pub enum Who {
    /// A person Airlock knows (a linked chat or GitHub account, a signed-in admin, the
    /// requester named on the command line).
    Human(Human),
    /// The operator at the server's shell (`cli:USER`): trusted like the database it opens.
    Operator(String),
    /// A trigger (a webhook, a schedule, a GitHub event): its sessions are the owner's and
    /// held to the owner's access; the audit log names the trigger.
    Trigger { id: TriggerId, owner: Human },
}

/// Who acts, where, and how the session's log names them ("@octocat on GitHub").
#[derive(Debug, Clone)]
pub struct Actor {
    pub who: Who,
    pub surface: Surface,
    pub named: String,
}

impl Actor {
    pub fn human(human: Human, surface: Surface, named: impl Into<String>) -> Actor {
        Actor {
            who: Who::Human(human),
            surface,
            named: named.into(),
        }
    }

    pub fn operator(user: impl Into<String>) -> Actor {
        let user = user.into();
        Actor {
            named: user.clone(),
            who: Who::Operator(user),
            surface: Surface::Cli,
        }
    }

    /// A trigger acting for its owner; `name` is how the session's log names it.
    pub fn trigger(id: TriggerId, name: &str, owner: Human) -> Actor {
        Actor {
            who: Who::Trigger { id, owner },
            surface: Surface::Trigger,
            named: format!("trigger {name}"),
        }
    }

    /// The audit log's actor: `human:hum_…`, `cli:USER` or `trigger:trg_…`.
    pub fn audit_actor(&self) -> String {
        match &self.who {
            Who::Human(h) => format!("human:{}", h.id),
            Who::Operator(u) => u.clone(),
            Who::Trigger { id, .. } => format!("trigger:{id}"),
        }
    }

    /// The person whose access decides: the one acting, or a trigger's owner.
    fn human_ref(&self) -> Option<&Human> {
        match &self.who {
            Who::Human(h) => Some(h),
            Who::Trigger { owner, .. } => Some(owner),
            Who::Operator(_) => None,
        }
    }

    fn audit(&self, action: &str, mut detail: serde_json::Value) -> SessionAudit {
        detail["surface"] = serde_json::json!(self.surface);
        SessionAudit {
            actor: self.audit_actor(),
            action: action.into(),
            detail,
            delivery: None,
        }
    }
}

/// Where a conversation lives: a later request there continues its session.
#[derive(Debug, Clone)]
pub struct Thread {
    /// `github:acme/web#12`, `slack:T1:C1:1700000000.000100`.
    pub key: String,
    /// What the surface needs to find the thread again (where updates go).
    pub reference: ThreadRef,
    /// Whether the surface keeps a status message in the thread up to date.
    pub notify: bool,
    /// The stored delivery (`inbound.id`) that carried the request: marked handled in the
    /// transaction that starts or continues the session, so it is never acted on twice.
    pub delivery: Option<String>,
}

/// A request for work.
#[derive(Debug, Clone)]
pub struct Request {
    pub repo: String,
    /// The profile asked for; `None` takes the default, or the only one.
    pub profile: Option<String>,
    pub prompt: String,
    /// The conversation, for surfaces that have one (not `airlock run`).
    pub thread: Option<Thread>,
    /// What `thread_ref` records when there is no thread.
    pub reference: ThreadRef,
}

/// What a trigger asks for when it fires.
#[derive(Debug, Clone)]
pub struct Firing {
    /// The trigger's profile (a trigger names exactly one).
    pub profile_id: ProfileId,
    pub repo: String,
    /// The trigger's prompt template, rendered with the event.
    pub prompt: String,
    /// Where the session's updates go (`thread_ref`).
    pub reply: ThreadRef,
    /// The surface whose thread shows the session's status, if any.
    pub notify: Option<Surface>,
    /// The conversation the reply names (a GitHub issue), so a person can continue there.
    pub thread_key: Option<String>,
    /// What the audit row records about the event (`kind`, `trigger`).
    pub detail: serde_json::Value,
}

#[derive(Debug)]
pub enum Requested {
    Started(Session),
    /// A follow-up turn of the conversation's session.
    Continued(Session),
    /// The conversation's session is still working on an earlier request.
    Busy(Session),
}

/// Why the service refused; each shows as a sentence that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownProfile(String),
    NoProfiles,
    ChooseProfile(Vec<String>),
    RepoNotAllowed {
        profile: String,
        repo: String,
    },
    HumanNotAllowed {
        profile: String,
    },
    /// The person (or a trigger's owner) is disabled.
    Disabled(String),
    /// A trigger's owner may not use its profile.
    OwnerNotAllowed {
        profile: String,
        owner: String,
    },
    /// Only the requester or an admin may do this to the session.
    NotTheirs,
    /// The session has ended (in this state): there is nothing to stop.
    NotRunning {
        id: String,
        state: SessionState,
    },
    StillRunning(String),
    /// The store refused the input (an empty prompt, a repository that is not OWNER/NAME).
    Invalid(String),
    NotFound(String),
    /// A storage failure; logged, and shown without detail.
    Internal,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&messages::refusal(self))
    }
}

impl std::error::Error for Refusal {}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Refusal::NotFound(m),
            StoreError::Invalid(m) | StoreError::Conflict(m) => Refusal::Invalid(m),
            other => {
                tracing::warn!("a session request failed: {other}");
                Refusal::Internal
            }
        }
    }
}

/// The service. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    store: Store,
    default_profile: Option<String>,
}

impl Sessions {
    pub fn new(store: Store, default_profile: Option<String>) -> Sessions {
        Sessions {
            store,
            default_profile,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts a session, or continues the conversation's ended one, or says it is busy.
    #[tracing::instrument(skip_all, fields(actor = %actor.audit_actor(), surface = %actor.surface, repo = %req.repo))]
    pub async fn request(&self, actor: &Actor, req: Request) -> Result<Requested, Refusal> {
        if let Some(thread) = &req.thread {
            if let Some(s) = self.store.session_in_thread(&thread.key).await? {
                if !s.state.is_terminal() {
                    return Ok(Requested::Busy(s));
                }
                let continued = self
                    .follow_up_for(
                        actor,
                        &s.id,
                        &req.prompt,
                        Some(&thread.reference),
                        thread.delivery.clone(),
                    )
                    .await;
                return match continued {
                    Ok(s) => Ok(Requested::Continued(s)),
                    // Another request in the thread continued it first.
                    Err(e) => match self.store.session_in_thread(&thread.key).await? {
                        Some(now) if !now.state.is_terminal() => Ok(Requested::Busy(now)),
                        _ => Err(e),
                    },
                };
            }
        }
        let (profile, pv) = self.choose_profile(req.profile.as_deref()).await?;
        self.allowed(actor, &profile, &pv, &req.repo)?;
        let thread = req.thread.as_ref();
        let mut audit = actor.audit(
            "session.create",
            serde_json::json!({
                "repo": req.repo,
                "profile": profile.name,
                "thread": thread.map(|t| t.key.clone()),
            }),
        );
        audit.delivery = thread.and_then(|t| t.delivery.clone());
        let requester = match &actor.who {
            Who::Human(h) => h.id.clone(),
            Who::Trigger { .. } => return Err(Refusal::Invalid(messages::TRIGGERS_FIRE.into())),
            Who::Operator(_) => return Err(Refusal::Invalid(messages::NO_REQUESTER.into())),
        };
        let created = self
            .store
            .create_session_audited(
                NewSession {
                    requester_id: requester,
                    surface: actor.surface,
                    thread_ref: thread
                        .map(|t| t.reference.clone())
                        .unwrap_or_else(|| req.reference.clone()),
                    repo: req.repo.clone(),
                    profile_id: profile.id.clone(),
                    profile_version: pv.version,
                    prompt: req.prompt.clone(),
                    trigger_id: None,
                    thread_key: thread.map(|t| t.key.clone()),
                    notify: thread.filter(|t| t.notify).map(|_| actor.surface),
                },
                Some(&audit),
            )
            .await;
        let s = match created {
            Ok(s) => s,
            // Another request in the same thread made its session first: this one is that
            // session's follow-up-while-busy (one session per conversation).
            Err(StoreError::ThreadTaken(key)) => {
                return match self.store.session_in_thread(&key).await? {
                    Some(s) => Ok(Requested::Busy(s)),
                    None => Err(Refusal::Internal),
                }
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(session = %s.id, "session requested");
        Ok(Requested::Started(s))
    }

    /// Starts a trigger's session, for its owner, under the owner's access; audited to the
    /// trigger (`trigger.fire`) in the same transaction.
    #[tracing::instrument(skip_all, fields(actor = %actor.audit_actor(), repo = %f.repo))]
    pub async fn fire(&self, actor: &Actor, f: Firing) -> Result<Session, Refusal> {
        let Who::Trigger { id, owner } = &actor.who else {
            return Err(Refusal::Invalid(messages::TRIGGERS_FIRE.into()));
        };
        let profile = self.store.find_profile(&f.profile_id).await?;
        let pv = self.store.profile_version(&profile.id, None).await?;
        self.allowed(actor, &profile, &pv, &f.repo)?;
        let mut detail = f.detail;
        if !detail.is_object() {
            detail = serde_json::json!({});
        }
        detail["repo"] = serde_json::json!(f.repo);
        detail["profile"] = serde_json::json!(profile.name);
        detail["on_behalf_of"] = serde_json::json!(owner.id);
        let audit = actor.audit("trigger.fire", detail);
        let s = self
            .store
            .create_session_audited(
                NewSession {
                    requester_id: owner.id.clone(),
                    surface: Surface::Trigger,
                    thread_ref: f.reply,
                    repo: f.repo,
                    profile_id: profile.id.clone(),
                    profile_version: pv.version,
                    prompt: f.prompt,
                    trigger_id: Some(id.clone()),
                    thread_key: f.thread_key,
                    notify: f.notify,
                },
                Some(&audit),
            )
            .await?;
        tracing::info!(session = %s.id, "a trigger fired");
        Ok(s)
    }

    /// A new turn of an ended session with `prompt`; its updates go to `thread_ref` when
    /// given (where the follow-up was asked).
    #[tracing::instrument(skip_all, fields(actor = %actor.audit_actor(), session = %session_id))]
    pub async fn follow_up(
        &self,
        actor: &Actor,
        session_id: &SessionId,
        prompt: &str,
        thread_ref: Option<&ThreadRef>,
    ) -> Result<Session, Refusal> {
        self.follow_up_for(actor, session_id, prompt, thread_ref, None)
            .await
    }

    /// [`Sessions::follow_up`] answering the stored delivery `delivery`.
    async fn follow_up_for(
        &self,
        actor: &Actor,
        session_id: &SessionId,
        prompt: &str,
        thread_ref: Option<&ThreadRef>,
        delivery: Option<String>,
    ) -> Result<Session, Refusal> {
        let s = self.store.session(session_id).await?;
        self.may_continue(actor, &s).await?;
        if !s.state.is_terminal() {
            return Err(Refusal::StillRunning(s.id.to_string()));
        }
        let mut audit = actor.audit("session.follow_up", serde_json::json!({ "repo": s.repo }));
        audit.delivery = delivery;
        Ok(self
            .store
            .follow_up_audited(&s.id, prompt, thread_ref, Some(&audit))
            .await?)
    }

    /// Runs an ended session's latest prompt again.
    #[tracing::instrument(skip_all, fields(actor = %actor.audit_actor(), session = %session_id))]
    pub async fn retry(&self, actor: &Actor, session_id: &SessionId) -> Result<Session, Refusal> {
        let s = self.store.session(session_id).await?;
        self.may_continue(actor, &s).await?;
        if !s.state.is_terminal() {
            return Err(Refusal::StillRunning(s.id.to_string()));
        }
        let prompt = self.store.latest_prompt(&s).await?;
        let audit = actor.audit("session.retry", serde_json::json!({ "repo": s.repo }));
        Ok(self
            .store
            .follow_up_audited(&s.id, &prompt, None, Some(&audit))
            .await?)
    }

    /// Stops a live session (cancelled, with who stopped it as the reason).
    #[tracing::instrument(skip_all, fields(actor = %actor.audit_actor(), session = %session_id))]
    pub async fn stop(
        &self,
        actor: &Actor,
        session_id: &SessionId,
        reason: Option<String>,
    ) -> Result<Session, Refusal> {
        let s = self.store.session(session_id).await?;
        if let Some(h) = actor.human_ref() {
            if !may_act_on(h, &s) && !self.may_use_profile(h, &s).await? {
                return Err(Refusal::NotTheirs);
            }
        }
        if s.state.is_terminal() {
            return Err(Refusal::NotRunning {
                id: s.id.to_string(),
                state: s.state,
            });
        }
        let reason = reason.unwrap_or_else(|| format!("stopped by {}", actor.named));
        let audit = actor.audit("session.cancel", serde_json::json!({ "reason": reason }));
        Ok(self
            .store
            .transition_audited(&s.id, SessionState::Cancelled, Some(&reason), Some(&audit))
            .await?)
    }

    /// Stops the conversation's live session; `Ok(None)` when nothing runs there.
    pub async fn stop_in_thread(
        &self,
        actor: &Actor,
        thread_key: &str,
    ) -> Result<Option<Session>, Refusal> {
        match self.store.session_in_thread(thread_key).await? {
            Some(s) if !s.state.is_terminal() => Ok(Some(self.stop(actor, &s.id, None).await?)),
            _ => Ok(None),
        }
    }

    /// The profile asked for, the default, or the only one, with its current version.
    async fn choose_profile(
        &self,
        name: Option<&str>,
    ) -> Result<(Profile, ProfileVersion), Refusal> {
        let profile = match name.or(self.default_profile.as_deref()) {
            Some(name) => self
                .store
                .find_profile(name)
                .await
                .map_err(|_| Refusal::UnknownProfile(name.to_string()))?,
            None => {
                let mut all = self.store.list_profiles().await?;
                match all.len() {
                    1 => all.remove(0),
                    0 => return Err(Refusal::NoProfiles),
                    _ => {
                        return Err(Refusal::ChooseProfile(
                            all.into_iter().map(|p| p.name).collect(),
                        ))
                    }
                }
            }
        };
        let pv = self.store.profile_version(&profile.id, None).await?;
        Ok((profile, pv))
    }

    /// The profile's `repos` and `access` (the operator is bound by `repos` only).
    fn allowed(
        &self,
        actor: &Actor,
        profile: &Profile,
        pv: &ProfileVersion,
        repo: &str,
    ) -> Result<(), Refusal> {
        if let Some(h) = actor.human_ref().filter(|h| h.disabled_at.is_some()) {
            return Err(Refusal::Disabled(h.email.clone()));
        }
        if !pv.spec.allows_repo(repo) {
            return Err(Refusal::RepoNotAllowed {
                profile: profile.name.clone(),
                repo: repo.to_string(),
            });
        }
        match &actor.who {
            Who::Trigger { owner, .. } if !pv.spec.allows_human(owner) => {
                Err(Refusal::OwnerNotAllowed {
                    profile: profile.name.clone(),
                    owner: owner.email.clone(),
                })
            }
            Who::Human(h) if !pv.spec.allows_human(h) => Err(Refusal::HumanNotAllowed {
                profile: profile.name.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// A new turn of `s` runs on its profile as it is now: the actor must still be allowed
    /// to use it on the session's repository.
    async fn may_continue(&self, actor: &Actor, s: &Session) -> Result<(), Refusal> {
        let profile = self.store.find_profile(&s.profile_id).await?;
        let pv = self.store.profile_version(&profile.id, None).await?;
        self.allowed(actor, &profile, &pv, &s.repo)
    }

    async fn may_use_profile(&self, h: &Human, s: &Session) -> Result<bool, Refusal> {
        let pv = self.store.profile_version(&s.profile_id, None).await?;
        Ok(pv.spec.allows_human(h))
    }
}

/// The requester and admins may always act on a session.
pub fn may_act_on(h: &Human, s: &Session) -> bool {
    s.requester_id == h.id || h.role == Role::Admin
}
