//! The audit log: search in bounded ranges, and the streamed JSONL export.

use super::*;

pub(super) struct AuditRow {
    seq: i64,
    at: String,
    actor: String,
    /// The actor as a person reads it: a human's name, the CLI account, a trigger.
    actor_name: String,
    action: String,
    target: String,
    session: Option<String>,
    /// The detail as `key: value` lines, each bounded.
    detail: Vec<(String, String)>,
}

/// An audit row's detail as readable `key: value` pairs: text as it is, numbers and
/// booleans as written, anything nested as compact JSON; each value cut to one line.
pub(super) fn detail_pairs(detail: &serde_json::Value) -> Vec<(String, String)> {
    let one = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => render::one_line(s, 300),
        other => render::one_line(&other.to_string(), 300),
    };
    match detail {
        serde_json::Value::Object(map) => map
            .iter()
            .take(40)
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (render::one_line(k, 60), one(v)))
            .collect(),
        serde_json::Value::Null => Vec::new(),
        other => vec![(String::new(), one(other))],
    }
}

#[derive(Template)]
#[template(path = "audit.html")]
pub(super) struct AuditPage {
    me: Option<Me>,
    notice: Option<String>,
    q: String,
    entries: Vec<AuditRow>,
    /// Which part of the log this page searched, and the link to the older part.
    searched: String,
    older: Option<String>,
}

pub(super) async fn audit(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ws = match admin(&st, &headers).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let query = q.get("q").cloned().unwrap_or_default();
    let before = q.get("before").and_then(|b| b.parse().ok());
    let found = match st.store.search_audit(&query, before, 300).await {
        Ok(f) => f,
        Err(e) => return internal(e),
    };
    let names: HashMap<String, String> = st
        .store
        .list_humans()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|h| (format!("human:{}", h.id), h.display_name))
        .collect();
    let older = found.next_before.map(|b| {
        let pairs = [("q", query.clone()), ("before", b.to_string())];
        format!("/audit?{}", query_string(&pairs))
    });
    page(AuditPage {
        me: me(&ws),
        notice: None,
        searched: format!(
            "entries {} to {} searched ({} at a time; text search reads no index)",
            found.searched.0,
            found.searched.1.max(0),
            airlock_core::store::AUDIT_SEARCH_WINDOW
        ),
        older,
        entries: found
            .entries
            .into_iter()
            .map(|a| AuditRow {
                seq: a.seq,
                at: rfc3339(a.at),
                actor_name: match a.actor.split_once(" as ") {
                    // `cli:alice as human:hum_…`
                    Some((os, human)) => format!(
                        "{} (as {})",
                        os,
                        names
                            .get(human)
                            .cloned()
                            .unwrap_or_else(|| human.to_string())
                    ),
                    None => names
                        .get(&a.actor)
                        .cloned()
                        .unwrap_or_else(|| a.actor.clone()),
                },
                actor: a.actor,
                action: a.action,
                target: a.target,
                session: a.session_id,
                detail: detail_pairs(&a.detail),
            })
            .collect(),
        q: query,
    })
}

pub(super) async fn audit_export(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(d) = admin(&st, &headers).await {
        return d.into_response();
    }
    let query = q.get("q").cloned().unwrap_or_default();
    // Every matching entry, oldest first, a page at a time: memory stays flat however long
    // the log is (a failure mid-way ends the download short, and the log says why).
    let store = st.store.clone();
    let pages = futures_util::stream::unfold(Some(0i64), move |after| {
        let (store, query) = (store.clone(), query.clone());
        async move {
            let after = after?;
            match store.search_audit_page(&query, after, 1000).await {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let next = page.last().map(|e| e.seq);
                    let mut chunk = Vec::with_capacity(page.len() * 256);
                    for e in &page {
                        let _ = serde_json::to_writer(&mut chunk, e);
                        chunk.push(b'\n');
                    }
                    Some((Ok::<_, std::io::Error>(chunk), next))
                }
                Err(e) => {
                    tracing::error!("the audit export stopped early: {e}");
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"airlock-audit.jsonl\"",
            ),
        ],
        axum::body::Body::from_stream(pages),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_read_as_key_value_lines_bounded_and_without_nulls() {
        let d = json!({"email": "ada@example.com", "role": "admin", "n": 3, "none": null,
            "nested": {"a": [1, 2]}, "long": "x\n".repeat(500)});
        let pairs = detail_pairs(&d);
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("email").as_deref(), Some("ada@example.com"));
        assert_eq!(get("n").as_deref(), Some("3"));
        assert_eq!(get("nested").as_deref(), Some(r#"{"a":[1,2]}"#));
        assert_eq!(get("none"), None);
        let long = get("long").unwrap();
        assert!(
            !long.contains('\n') && long.chars().count() <= 301,
            "{long}"
        );
        assert_eq!(detail_pairs(&json!(null)), Vec::<(String, String)>::new());
    }
}
