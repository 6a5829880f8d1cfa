//! Requests typed in a chat (Slack, Discord), after the adapter has verified and parsed them:
//! find the human, apply the channel's defaults, and start, continue, stop or explain. What
//! the person is told comes back as a [`Reply`]; session status goes to the thread through
//! the outbox.

use airlock_core::domain::{Human, Role, Surface, ThreadRef};
use airlock_core::ids::SessionId;
use airlock_core::store::ChannelSettings;
use airlock_core::Store;

use crate::command::{self, Command};
use crate::identity::{self, Account};
use crate::requests::{self, Ask, Asked};

/// One chat request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub surface: Surface,
    pub account: Account,
    pub channel: String,
    /// The conversation: a thread that may already belong to a session.
    pub thread_key: String,
    /// Where the session's updates go.
    pub thread_ref: ThreadRef,
    /// What the person typed, without the command word or the mention.
    pub text: String,
    /// `/airlock` or `@Airlock`: how help text names the command.
    pub prefix: String,
}

/// What the person is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Only they see it.
    Private(String),
    /// Everyone in the conversation sees it.
    Public(String),
    /// Nothing now: the session's status message will appear.
    Started { session: SessionId, continued: bool },
}

pub fn not_linked(surface: Surface, prefix: &str) -> String {
    format!(
        "Airlock doesn't know who you are on {surface} yet, so it can't act for you. Run \
         `{prefix} link` to get a one-time code, then comment `@airlock link CODE` on GitHub from \
         your linked account or enter the code on Airlock's admin page (or ask an admin to run \
         `airlock identity link`)."
    )
}

#[tracing::instrument(name = "chat", skip_all, fields(surface = %req.surface, thread = %req.thread_key))]
pub async fn handle(store: &Store, default_profile: Option<&str>, req: ChatRequest) -> Reply {
    let cmd = match command::parse(&req.text) {
        Ok(c) => c,
        Err(e) => return Reply::Private(format!("{e}.\n\n{}", command::help(&req.prefix))),
    };
    if cmd == Command::Help {
        return Reply::Private(command::help(&req.prefix));
    }
    let human = match identity::human_of(store, &req.account, None).await {
        Ok(h) => h,
        Err(e) => return Reply::Private(requests::UserError::from(e).0),
    };
    if let Command::Link { code: None } = &cmd {
        if let Some(h) = &human {
            return Reply::Private(format!(
                "This {} account is linked to {} already.",
                req.surface, h.display_name
            ));
        }
        return match store.create_link_code(&req.account.pending()).await {
            Ok(code) => Reply::Private(format!(
                "Your link code is `{code}` (it works once, for 15 minutes). Prove who you are \
                 with it: comment `@airlock link {code}` on a GitHub issue or pull request from \
                 your GitHub account that Airlock knows, or enter it on Airlock's admin page while \
                 signed in."
            )),
            Err(e) => Reply::Private(requests::UserError::from(e).0),
        };
    }
    let Some(human) = human else {
        return Reply::Private(not_linked(req.surface, &req.prefix));
    };
    let workspace = req.account.workspace.clone();
    match cmd {
        Command::Help => unreachable!("answered above"),
        Command::Link { code: None } => unreachable!("answered above"),
        Command::Link { code: Some(code) } => match identity::redeem(store, &code, &human).await {
            Ok(l) => Reply::Private(format!(
                "Linked your {} account {} to {}.",
                l.provider, l.handle, human.display_name
            )),
            Err(e) => Reply::Private(requests::UserError::from(e).0),
        },
        Command::Config { options } => {
            if human.role != Role::Admin {
                return Reply::Private("Only Airlock admins can set a channel's defaults.".into());
            }
            let set = ChannelSettings {
                repo: options.repo,
                profile: options.profile,
            };
            match store
                .set_channel_settings(req.surface.as_str(), &workspace, &req.channel, &set, &human.id)
                .await
            {
                Ok(now) => Reply::Public(format!(
                    "This channel now works on {} with profile {}.",
                    now.repo.as_deref().unwrap_or("(no repository)"),
                    now.profile.as_deref().unwrap_or("(the default)")
                )),
                Err(e) => Reply::Private(requests::UserError::from(e).0),
            }
        }
        Command::Stop => match requests::stop(store, &req.thread_key, &human, req.surface, &human.display_name).await {
            Ok(Some(s)) => Reply::Public(format!("Stopping session `{}`.", s.id)),
            Ok(None) => Reply::Private(
                "Nothing is running in this thread. To stop a session, use its Stop button or say stop in its thread.".into(),
            ),
            Err(e) => Reply::Private(e.0),
        },
        Command::Status => match store.session_in_thread(&req.thread_key).await {
            Ok(Some(s)) => Reply::Private(format!(
                "Session `{}` is {}{}.",
                s.id,
                s.state,
                s.reason.map(|r| format!(": {r}")).unwrap_or_default()
            )),
            _ => Reply::Private("There is no session in this thread.".into()),
        },
        Command::Run { prompt, options } => {
            run(store, default_profile, &req, &human, &workspace, prompt, options).await
        }
    }
}

async fn run(
    store: &Store,
    default_profile: Option<&str>,
    req: &ChatRequest,
    human: &Human,
    workspace: &str,
    prompt: String,
    options: command::RunOptions,
) -> Reply {
    let defaults = store
        .channel_settings(req.surface.as_str(), workspace, &req.channel)
        .await
        .unwrap_or_default();
    // A follow-up in a session's thread keeps the session's repository.
    let existing = store
        .session_in_thread(&req.thread_key)
        .await
        .ok()
        .flatten();
    let repo = match options
        .repo
        .or_else(|| existing.as_ref().map(|s| s.repo.clone()))
        .or(defaults.repo)
    {
        Some(r) => r,
        None => {
            return Reply::Private(format!(
                "Say which repository to work on: `{} {prompt} repo=OWNER/NAME`, or have an admin set this channel's default with `{} config repo=OWNER/NAME`.",
                req.prefix, req.prefix
            ))
        }
    };
    let profile = options.profile.or(defaults.profile);
    let asked = requests::ask(
        store,
        default_profile,
        Ask {
            human: human.clone(),
            surface: req.surface,
            thread_key: req.thread_key.clone(),
            thread_ref: req.thread_ref.clone(),
            repo,
            profile,
            prompt,
            delivery: None,
        },
    )
    .await;
    match asked {
        Ok(Asked::Started(s)) => Reply::Started {
            session: s.id,
            continued: false,
        },
        Ok(Asked::Continued(s)) => Reply::Started {
            session: s.id,
            continued: true,
        },
        Ok(Asked::Busy(s)) => Reply::Private(airlock_core::messages::busy(&s.id, "stop")),
        Err(e) => Reply::Private(e.0),
    }
}
