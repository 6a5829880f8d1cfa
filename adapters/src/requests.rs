//! A person's request, whatever the surface: continue the conversation's session or start a
//! new one, with the profile they named (or the default) if they may use it on that
//! repository. Errors here are for the person and say what to do.

use airlock_core::domain::{Human, SessionState, Surface};
use airlock_core::store::{NewAudit, NewSession, Session};
use airlock_core::{Store, StoreError};

/// What an adapter asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    pub human: Human,
    pub surface: Surface,
    /// The conversation (`github:acme/web#12`): a later request there continues the session.
    pub thread_key: String,
    /// Where updates go, and what the surface needs to find its thread again.
    pub thread_ref: serde_json::Value,
    pub repo: String,
    pub profile: Option<String>,
    pub prompt: String,
}

#[derive(Debug)]
pub enum Asked {
    Started(Session),
    /// A follow-up turn of the conversation's session.
    Continued(Session),
    /// The conversation's session is still working on an earlier request.
    Busy(Session),
}

/// A problem the person can fix; shown to them as it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

impl From<StoreError> for UserError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) | StoreError::Invalid(m) | StoreError::Conflict(m) => {
                UserError(m)
            }
            other => {
                tracing::warn!("a request failed: {other}");
                UserError("Airlock could not take the request because of an internal error; an admin can see it in the server log".into())
            }
        }
    }
}

pub async fn ask(
    store: &Store,
    default_profile: Option<&str>,
    ask: Ask,
) -> Result<Asked, UserError> {
    if let Some(s) = store.session_in_thread(&ask.thread_key).await? {
        if !s.state.is_terminal() {
            return Ok(Asked::Busy(s));
        }
        // Updates of the new turn go to the new request's place (a new status message).
        store.set_thread_ref(&s.id, &ask.thread_ref).await?;
        let s = store.follow_up(&s.id, &ask.prompt).await?;
        audit(store, &ask, &s, "session.follow_up").await;
        return Ok(Asked::Continued(s));
    }
    let profile = match ask.profile.as_deref().or(default_profile) {
        Some(name) => store.find_profile(name).await.map_err(|_| {
            UserError(format!(
                "there is no profile `{name}`; an admin can list them with `airlock profile list`"
            ))
        })?,
        None => {
            let all = store.list_profiles().await?;
            match all.len() {
                1 => all.into_iter().next().expect("one profile"),
                0 => return Err(UserError("Airlock has no profiles yet; an admin adds one with `airlock profile apply -f FILE`".into())),
                _ => {
                    let names: Vec<String> = all.iter().map(|p| format!("`{}`", p.name)).collect();
                    return Err(UserError(format!(
                        "say which profile to use with profile=NAME ({})",
                        names.join(", ")
                    )));
                }
            }
        }
    };
    let pv = store.profile_version(&profile.id, None).await?;
    if !pv.spec.allows_repo(&ask.repo) {
        return Err(UserError(format!(
            "profile `{}` may not work on {}; an admin can add it to the profile's `repos`",
            profile.name, ask.repo
        )));
    }
    if !pv.spec.allows_human(&ask.human) {
        return Err(UserError(format!(
            "you may not use profile `{}`; an admin can add you to its `access`",
            profile.name
        )));
    }
    let s = store
        .create_session(NewSession {
            requester_id: ask.human.id.clone(),
            surface: ask.surface,
            thread_ref: ask.thread_ref.clone(),
            repo: ask.repo.clone(),
            profile_id: profile.id.clone(),
            profile_version: pv.version,
            prompt: ask.prompt.clone(),
            trigger_id: None,
            thread_key: Some(ask.thread_key.clone()),
            notify: Some(ask.surface),
        })
        .await?;
    audit(store, &ask, &s, "session.create").await;
    Ok(Asked::Started(s))
}

async fn audit(store: &Store, ask: &Ask, s: &Session, action: &str) {
    let _ = store
        .audit(NewAudit {
            actor: format!("human:{}", ask.human.id),
            action: action.into(),
            target: s.id.clone(),
            session_id: Some(s.id.clone()),
            detail: serde_json::json!({"surface": ask.surface, "repo": s.repo, "thread": ask.thread_key}),
        })
        .await;
}

/// Stops the conversation's live session. `Ok(None)` when nothing runs there.
pub async fn stop(store: &Store, thread_key: &str, by: &str) -> Result<Option<Session>, UserError> {
    match store.session_in_thread(thread_key).await? {
        Some(s) if !s.state.is_terminal() => {
            let s = store
                .transition(
                    &s.id,
                    SessionState::Cancelled,
                    Some(&format!("stopped by {by}")),
                )
                .await?;
            Ok(Some(s))
        }
        _ => Ok(None),
    }
}
