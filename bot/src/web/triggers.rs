//! Triggers: enable and disable.

use super::*;

pub(super) struct TriggerRow {
    name: String,
    kind: String,
    when: String,
    repo: String,
    owner: String,
    last: String,
    enabled: bool,
}

#[derive(Template)]
#[template(path = "triggers.html")]
pub(super) struct TriggersPage {
    me: Option<Me>,
    notice: Option<String>,
    me_csrf: String,
    triggers: Vec<TriggerRow>,
}

pub(super) async fn triggers_page(
    st: &AdminState,
    ws: &WebSession,
    notice: Option<String>,
) -> Response {
    let (list, humans) = match (st.store.list_triggers().await, st.store.list_humans().await) {
        (Ok(l), Ok(h)) => (l, h),
        (Err(e), _) | (_, Err(e)) => return internal(e),
    };
    let rows = list
        .into_iter()
        .map(|t| TriggerRow {
            when: match t.kind {
                airlock_core::domain::TriggerKind::Schedule => format!(
                    "{} ({})",
                    t.config["cron"].as_str().unwrap_or(""),
                    t.config["timezone"].as_str().unwrap_or("UTC")
                ),
                airlock_core::domain::TriggerKind::Github => {
                    t.config["event"].as_str().unwrap_or("").to_string()
                }
                airlock_core::domain::TriggerKind::Webhook => format!("POST /hooks/{}", t.id),
            },
            owner: humans
                .iter()
                .find(|h| h.id == t.owner_id)
                .map(|h| h.email.clone())
                .unwrap_or_default(),
            last: opt_rfc3339(t.last_fired_at),
            kind: t.kind.to_string(),
            name: t.name,
            repo: t.repo,
            enabled: t.enabled,
        })
        .collect();
    page(TriggersPage {
        me: me(ws),
        notice,
        me_csrf: ws.csrf.clone(),
        triggers: rows,
    })
}

pub(super) async fn triggers(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    match admin(&st, &headers).await {
        Ok(ws) => triggers_page(&st, &ws, None).await,
        Err(d) => d.into_response(),
    }
}

pub(super) async fn trigger_action(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let ws = match admin_post(&st, &headers, &f).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let enable = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => {
            return message(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such action.",
                me(&ws),
            )
        }
    };
    let notice = match st.store.trigger(&name).await {
        Ok(t) => match st.store.set_trigger_enabled(&t.id, enable).await {
            Ok(()) => {
                let what = format!("trigger.{action}");
                audit_by(&st, &ws.human, &what, &t.id, json!({"name": t.name})).await;
                format!(
                    "Trigger {} {}.",
                    t.name,
                    if enable { "enabled" } else { "disabled" }
                )
            }
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    };
    triggers_page(&st, &ws, Some(notice)).await
}
