//! Humans: add, change role, disable and enable, link accounts (an admin vouching for
//! them, or the signed-in person with a link code). Every change is audited with the admin.

use airlock_core::domain::Provider;
use airlock_core::store::AccountRef;

use super::*;

pub(super) struct HumanRow {
    id: String,
    name: String,
    email: String,
    role: Role,
    disabled: bool,
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
            id: h.id.to_string(),
            name: h.display_name,
            email: h.email,
            role: h.role,
            disabled: h.disabled_at.is_some(),
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

/// An admin adds a human (who signs in once someone sets their password with `airlock
/// human password`).
pub(super) async fn add_human(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let ws = match admin_post(&st, &headers, &f).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let Ok(role) = get("role").parse::<Role>() else {
        return humans_page(&st, &ws, Some("Choose a role.".into())).await;
    };
    let notice = match st.store.add_human(get("name"), get("email"), role).await {
        Ok(h) => {
            audit_by(
                &st,
                &ws.human,
                "human.add",
                &h.id,
                json!({"email": h.email, "role": role}),
            )
            .await;
            format!("Added {} <{}> as {role}.", h.display_name, h.email)
        }
        Err(e) => e.to_string(),
    };
    humans_page(&st, &ws, Some(notice)).await
}

/// Role, disable and enable, and linking an account, for one human.
pub(super) async fn human_action(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let ws = match admin_post(&st, &headers, &f).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let human = match st.store.find_human(&id).await {
        Ok(h) => h,
        Err(e) => return humans_page(&st, &ws, Some(e.to_string())).await,
    };
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("").trim();
    let result = match action.as_str() {
        "role" => match get("role").parse::<Role>() {
            Ok(role) => st
                .store
                .set_human_role(
                    &human.id,
                    role,
                    audit_entry(&ws.human, "human.role", &human.id, json!({"role": role})),
                )
                .await
                .map(|h| format!("{} is now {role}.", h.display_name)),
            Err(e) => Ok(e.to_string()),
        },
        "disable" | "enable" => {
            let disable = action == "disable";
            let entry = audit_entry(&ws.human, &format!("human.{action}"), &human.id, json!({}));
            st.store
                .set_human_disabled(&human.id, disable, entry)
                .await
                .map(|h| {
                    if disable {
                        format!(
                            "Disabled {}: they start no session and sign in nowhere.",
                            h.display_name
                        )
                    } else {
                        format!("Enabled {}.", h.display_name)
                    }
                })
        }
        "link" => {
            let provider = match get("provider").parse::<Provider>() {
                Ok(p) => p,
                Err(e) => return humans_page(&st, &ws, Some(e.to_string())).await,
            };
            let workspace =
                match (provider, get("workspace")) {
                    (_, w) if !w.is_empty() => w.to_string(),
                    (Provider::Github, _) => st.status.github_host.clone(),
                    _ => return humans_page(
                        &st,
                        &ws,
                        Some(
                            "Slack and Discord accounts need the workspace: the team or server id."
                                .into(),
                        ),
                    )
                    .await,
                };
            let external = get("external_id");
            let handle = if get("handle").is_empty() {
                external
            } else {
                get("handle")
            };
            let account = AccountRef {
                provider,
                workspace: &workspace,
                external_id: external,
            };
            match st
                .store
                .link_identity(&human.id, account, handle, true)
                .await
            {
                Ok(i) => {
                    audit_by(&st, &ws.human, "identity.link",
                        &i.id,
                        json!({"human": human.id, "provider": provider, "workspace": workspace, "external_id": external})).await;
                    Ok(format!(
                        "Linked {provider} account {handle} to {}.",
                        human.display_name
                    ))
                }
                Err(e) => Err(e),
            }
        }
        _ => Ok("Unknown action.".to_string()),
    };
    let notice = result.unwrap_or_else(|e| e.to_string());
    humans_page(&st, &ws, Some(notice)).await
}
