//! What Airlock says to people when the session service refuses, in one place, so every
//! surface says the same thing. Each text says what to do next.

use crate::service::Refusal;

/// `airlock run` needs a person to act for.
pub const NO_REQUESTER: &str =
    "say who is asking with --as EMAIL: a session is always requested by a person";

/// Triggers start sessions with `Sessions::fire`, people with `Sessions::request`.
pub const TRIGGERS_FIRE: &str =
    "a trigger starts sessions by firing, and only a trigger fires: this is a bug in Airlock";

/// The answer to a request in a conversation whose session is still working; `stop` is what
/// to say there to stop it (`stop`, `@airlock stop`). The same words on every surface.
pub fn busy(session: &str, stop: &str) -> String {
    format!(
        "Session `{}` is still working on the previous request here; ask again when it's done, \
         or say `{stop}`.",
        clip(session)
    )
}

/// The sentence for a refusal (no trailing full stop: surfaces add their own framing).
pub fn refusal(r: &Refusal) -> String {
    match r {
        Refusal::UnknownProfile(name) => format!(
            "there is no profile `{}`; an admin can list them with `airlock profile list`",
            clip(name)
        ),
        Refusal::NoProfiles => {
            "Airlock has no profiles yet; an admin adds one with `airlock profile apply -f FILE`"
                .into()
        }
        Refusal::ChooseProfile(names) => {
            let names: Vec<String> = names.iter().map(|n| format!("`{}`", clip(n))).collect();
            format!(
                "say which profile to use with profile=NAME (or --profile NAME on the command \
                 line): {}",
                names.join(", ")
            )
        }
        Refusal::RepoNotAllowed { profile, repo } => format!(
            "profile `{}` may not work on {}; an admin can add it to the profile's `repos`",
            clip(profile),
            clip(repo)
        ),
        Refusal::Disabled(who) => format!(
            "{} is disabled in Airlock and can start nothing; an admin can enable them on the \
             admin page or with `airlock human enable`",
            clip(who)
        ),
        Refusal::HumanNotAllowed { profile } => format!(
            "you may not use profile `{}`; an admin can add you to its `access`",
            clip(profile)
        ),
        Refusal::OwnerNotAllowed { profile, owner } => format!(
            "the trigger's owner {} may not use profile `{}`; an admin can add them to its \
             `access` or give the trigger another owner",
            clip(owner),
            clip(profile)
        ),
        Refusal::NotTheirs => "only the person who asked, or an admin, can do that".into(),
        Refusal::NotRunning { id, state } => format!(
            "session {} is {state} already; there is nothing to stop",
            clip(id)
        ),
        Refusal::StillRunning(id) => format!(
            "session `{}` is still working on the previous request; ask again when it's done, \
             or stop it",
            clip(id)
        ),
        Refusal::Invalid(m) | Refusal::NotFound(m) => m.clone(),
        Refusal::Internal => "Airlock could not take the request because of an internal error; \
                              an admin can see it in the server log"
            .into(),
    }
}

/// Names come from people and configuration: at most 120 characters of them.
fn clip(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_says_what_to_do_and_bounds_what_it_repeats() {
        let long = "x".repeat(10_000);
        let all = [
            Refusal::UnknownProfile(long.clone()),
            Refusal::NoProfiles,
            Refusal::ChooseProfile(vec!["a".into(), long.clone()]),
            Refusal::RepoNotAllowed {
                profile: long.clone(),
                repo: long.clone(),
            },
            Refusal::HumanNotAllowed {
                profile: "p".into(),
            },
            Refusal::OwnerNotAllowed {
                profile: long.clone(),
                owner: long.clone(),
            },
            Refusal::NotTheirs,
            Refusal::NotRunning {
                id: "ses_1".into(),
                state: crate::domain::SessionState::Cancelled,
            },
            Refusal::StillRunning("ses_1".into()),
            Refusal::Internal,
        ];
        for r in &all {
            let text = refusal(r);
            assert!(text.len() < 400, "{r:?} says {} bytes", text.len());
            assert!(!text.ends_with('.'), "{text}");
        }
        assert_eq!(
            refusal(&Refusal::HumanNotAllowed {
                profile: "ops".into()
            }),
            "you may not use profile `ops`; an admin can add you to its `access`"
        );
    }
}
