//! Humans, their accounts, and link codes.

use super::*;

pub(super) struct HumanRow {
    name: String,
    email: String,
    role: Role,
    identities: Vec<String>,
}

#[derive(Template)]
#[template(path = "humans.html")]
pub(super) struct HumansPage {
    me: Option<Me>,
    notice: Option<String>,
    me_csrf: String,
    humans: Vec<HumanRow>,
}

pub(super) async fn humans_page(
    st: &AdminState,
    ws: &WebSession,
    notice: Option<String>,
) -> Response {
    let (humans, ids) = match (
        st.store.list_humans().await,
        st.store.list_identities(None).await,
    ) {
        (Ok(h), Ok(i)) => (h, i),
        (Err(e), _) | (_, Err(e)) => return internal(e),
    };
    let rows = humans
        .into_iter()
        .map(|h| HumanRow {
            identities: ids
                .iter()
                .filter(|i| i.human_id == h.id)
                .map(|i| format!("{} {} ({})", i.provider, i.handle, i.workspace))
                .collect(),
            name: h.display_name,
            email: h.email,
            role: h.role,
        })
        .collect();
    page(HumansPage {
        me: me(ws),
        notice,
        me_csrf: ws.csrf.clone(),
        humans: rows,
    })
}

pub(super) async fn humans(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    match admin(&st, &headers).await {
        Ok(ws) => humans_page(&st, &ws, None).await,
        Err(d) => d.into_response(),
    }
}

/// A signed-in person confirms a link code from `/airlock link`.
pub(super) async fn link(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let ws = match admin_post(&st, &headers, &f).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let code = f.get("code").map(String::as_str).unwrap_or("");
    let notice = match airlock_adapters::identity::redeem(&st.store, code, &ws.human).await {
        Ok(l) => format!("Linked {} account {} to you.", l.provider, l.handle),
        Err(e) => e.to_string(),
    };
    humans_page(&st, &ws, Some(notice)).await
}
