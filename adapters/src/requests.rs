//! A person's request from a chat or GitHub thread, handed to the session service
//! (`airlock_core::service`), which decides and audits the same way for every surface.
//! Errors here are for the person and say what to do.

use airlock_core::domain::{Human, Surface, ThreadRef};
use airlock_core::service::{Actor, Refusal, Request, Requested, Sessions, Thread};
use airlock_core::store::Session;
use airlock_core::{Store, StoreError};

/// What an adapter asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    pub human: Human,
    pub surface: Surface,
    /// The conversation (`github:acme/web#12`): a later request there continues the session.
    pub thread_key: String,
    /// Where updates go, and what the surface needs to find its thread again.
    pub thread_ref: ThreadRef,
    pub repo: String,
    pub profile: Option<String>,
    pub prompt: String,
    /// The stored delivery that carried the request, marked handled with the session's
    /// change (GitHub's; chat requests are answered while Slack or Discord waits).
    pub delivery: Option<String>,
}

pub type Asked = Requested;

/// A problem the person can fix; shown to them as it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

impl From<StoreError> for UserError {
    fn from(e: StoreError) -> Self {
        UserError::from(Refusal::from(e))
    }
}

impl From<Refusal> for UserError {
    fn from(r: Refusal) -> Self {
        UserError(r.to_string())
    }
}

pub async fn ask(
    store: &Store,
    default_profile: Option<&str>,
    ask: Ask,
) -> Result<Asked, UserError> {
    let service = Sessions::new(store.clone(), default_profile.map(str::to_string));
    let actor = Actor::human(
        ask.human.clone(),
        ask.surface,
        ask.human.display_name.clone(),
    );
    let request = Request {
        repo: ask.repo,
        profile: ask.profile,
        prompt: ask.prompt,
        thread: Some(Thread {
            key: ask.thread_key,
            reference: ask.thread_ref,
            notify: true,
            delivery: ask.delivery,
        }),
        reference: ThreadRef::default(),
    };
    Ok(service.request(&actor, request).await?)
}

/// Stops the conversation's live session. `Ok(None)` when nothing runs there.
pub async fn stop(
    store: &Store,
    thread_key: &str,
    human: &Human,
    surface: Surface,
    by: &str,
) -> Result<Option<Session>, UserError> {
    let service = Sessions::new(store.clone(), None);
    let actor = Actor::human(human.clone(), surface, by);
    Ok(service.stop_in_thread(&actor, thread_key).await?)
}
