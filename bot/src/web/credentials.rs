//! Credentials: set, rotate, delete; never shown.

use super::*;

pub(super) struct CredentialRow {
    name: String,
    kind: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "credentials.html")]
pub(super) struct CredentialsPage {
    me: Option<Me>,
    notice: Option<String>,
    me_csrf: String,
    credentials: Vec<CredentialRow>,
    kinds: Vec<CredentialKind>,
}

pub(super) async fn credentials_page(
    st: &AdminState,
    ws: &WebSession,
    notice: Option<String>,
    status: StatusCode,
) -> Response {
    let list = match st.store.list_credentials().await {
        Ok(l) => l,
        Err(e) => return internal(e),
    };
    let mut r = page(CredentialsPage {
        me: me(ws),
        notice,
        me_csrf: ws.csrf.clone(),
        credentials: list
            .into_iter()
            .map(|c| CredentialRow {
                name: c.name,
                kind: c.kind.to_string(),
                updated: rfc3339(c.updated_at),
            })
            .collect(),
        kinds: CredentialKind::ALL.to_vec(),
    });
    *r.status_mut() = status;
    r
}

pub(super) async fn credentials(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    match admin(&st, &headers).await {
        Ok(ws) => credentials_page(&st, &ws, None, StatusCode::OK).await,
        Err(d) => d.into_response(),
    }
}

pub(super) async fn set_credential(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Form(mut f): Form<HashMap<String, String>>,
) -> Response {
    let ws = match admin_post(&st, &headers, &f).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let name = f.get("name").cloned().unwrap_or_default();
    let value = SecretValue::new(f.remove("value").unwrap_or_default().into_bytes());
    let kind: Result<CredentialKind, String> = f
        .get("kind")
        .map(String::as_str)
        .unwrap_or("generic")
        .parse();
    let problem = match &kind {
        Err(_) => Some("Choose a kind from the list.".to_string()),
        Ok(_) if !airlock_core::domain::is_credential_name(&name) => {
            Some("Credential names use letters, digits, `-`, `_` and `.`.".into())
        }
        Ok(_) if value.is_empty() => Some("The value is empty.".into()),
        Ok(CredentialKind::GithubApp) => airlock_core::github::check_app_key(value.expose())
            .err()
            .map(|e| format!("{e}.")),
        Ok(_) => None,
    };
    if let Some(why) = problem {
        return credentials_page(&st, &ws, Some(why), StatusCode::BAD_REQUEST).await;
    }
    let kind = kind.expect("checked above");
    match st
        .store
        .set_credential(&name, kind, &value, Some(&format!("human:{}", ws.human.id)))
        .await
    {
        Ok(rotated) => {
            drop(value);
            let action = if rotated {
                "credential.rotate"
            } else {
                "credential.set"
            };
            audit_by(
                &st,
                &ws.human,
                action,
                &name,
                json!({"kind": kind, "from": "web"}),
            )
            .await;
            let what = if rotated { "Rotated" } else { "Stored" };
            credentials_page(
                &st,
                &ws,
                Some(format!(
                    "{what} credential {name}. Its value is never shown again."
                )),
                StatusCode::OK,
            )
            .await
        }
        Err(e) => credentials_page(&st, &ws, Some(e.to_string()), StatusCode::BAD_REQUEST).await,
    }
}

pub(super) async fn delete_credential(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let ws = match admin_post(&st, &headers, &f).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let notice = match st.store.delete_credential(&name).await {
        Ok(()) => {
            audit_by(
                &st,
                &ws.human,
                "credential.delete",
                &name,
                json!({"from": "web"}),
            )
            .await;
            format!("Deleted credential {name}.")
        }
        Err(e) => e.to_string(),
    };
    credentials_page(&st, &ws, Some(notice), StatusCode::OK).await
}
