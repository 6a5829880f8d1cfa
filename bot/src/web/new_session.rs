//! "New session" on the sessions page: a repository, a profile and a prompt, started for the
//! signed-in person through the session service (the same policy, limits and audit row as
//! every other surface).

use super::*;
use airlock_core::domain::thread::NoThread;
use airlock_core::domain::ThreadRef;
use airlock_core::service::{Request, Requested};

/// The longest prompt the form takes (a chat message is far shorter).
const MAX_PROMPT: usize = 20_000;

pub(super) async fn start(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let ws = match admin_post(&st, &headers, &f).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let field = |k: &str| f.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let prompt = field("prompt");
    if prompt.is_empty() || prompt.chars().count() > MAX_PROMPT {
        return message(
            StatusCode::BAD_REQUEST,
            "Cannot start",
            &format!("say what the agent should do: a prompt of 1 to {MAX_PROMPT} characters"),
            me(&ws),
        );
    }
    let profile = Some(field("profile")).filter(|p| !p.is_empty());
    let actor = Actor::human(
        ws.human.clone(),
        Surface::Web,
        format!("{} on the admin page", ws.human.display_name),
    );
    let request = Request {
        repo: field("repo"),
        profile,
        prompt,
        thread: None,
        reference: ThreadRef::None(NoThread::default()),
    };
    match Sessions::new(st.store.clone(), st.default_profile.clone())
        .request(&actor, request)
        .await
    {
        Ok(Requested::Started(s) | Requested::Continued(s) | Requested::Busy(s)) => {
            Redirect::to(&format!("/sessions/{}", s.id)).into_response()
        }
        Err(e) => message(
            StatusCode::BAD_REQUEST,
            "Cannot start",
            &e.to_string(),
            me(&ws),
        ),
    }
}
