//! The sessions list: filters, and pages of 100 by `(created_at, id)`.

use super::*;

pub(super) struct SessionRow {
    id: String,
    state: SessionState,
    repo: String,
    requester: String,
    surface: Surface,
    created: String,
    prompt: String,
}

#[derive(Template)]
#[template(path = "sessions.html")]
pub(super) struct SessionsPage {
    me: Option<Me>,
    notice: Option<String>,
    sessions: Vec<SessionRow>,
    older: Option<String>,
    states: Vec<SessionState>,
    surfaces: Vec<Surface>,
    humans: Vec<airlock_core::domain::Human>,
    filter_state: String,
    filter_surface: String,
    filter_human: String,
    /// For the "New session" form.
    profiles: Vec<String>,
    me_csrf: String,
}

/// `k=v&…`, each part form-encoded.
pub(super) fn query_string(pairs: &[(&str, String)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// Sessions per page of the list; "Older sessions" goes on from the last one shown.
pub(super) const SESSIONS_PAGE: i64 = 100;

pub(super) async fn sessions(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match admin(&st, &headers).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let filter = SessionFilter {
        state: get("state").parse().ok(),
        requester_id: get("human").parse().ok(),
        surface: get("surface").parse().ok(),
        limit: Some(SESSIONS_PAGE),
        before: get("before")
            .split_once('.')
            .and_then(|(at, id)| Some((at.parse().ok()?, id.to_string()))),
    };
    let (list, humans, profiles) = match (
        st.store.list_sessions(&filter).await,
        st.store.list_humans().await,
        st.store.list_profiles().await,
    ) {
        (Ok(l), Ok(h), Ok(p)) => (l, h, p),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return internal(e),
    };
    let names: HashMap<&str, &str> = humans
        .iter()
        .map(|h| (h.id.as_str(), h.display_name.as_str()))
        .collect();
    let older = (list.len() as i64 == SESSIONS_PAGE)
        .then(|| list.last())
        .flatten()
        .map(|last| {
            let mut pairs: Vec<(&str, String)> = ["state", "surface", "human"]
                .into_iter()
                .map(|k| (k, get(k)))
                .filter(|(_, v)| !v.is_empty())
                .collect();
            pairs.push(("before", format!("{}.{}", last.created_at, last.id)));
            format!("/sessions?{}", query_string(&pairs))
        });
    let rows = list
        .iter()
        .map(|x| SessionRow {
            id: x.id.to_string(),
            state: x.state,
            repo: x.repo.clone(),
            requester: names
                .get(x.requester_id.as_str())
                .unwrap_or(&"?")
                .to_string(),
            surface: x.surface,
            created: rfc3339(x.created_at),
            prompt: render::one_line(&x.prompt, 140),
        })
        .collect();
    page(SessionsPage {
        me: me(&s),
        notice: None,
        sessions: rows,
        older,
        states: SessionState::ALL.to_vec(),
        surfaces: Surface::ALL.to_vec(),
        filter_state: get("state"),
        filter_surface: get("surface"),
        filter_human: get("human"),
        humans,
        profiles: profiles.into_iter().map(|p| p.name).collect(),
        me_csrf: s.csrf.clone(),
    })
}
