//! The audit log: search in bounded ranges, and the streamed JSONL export.

use super::*;

pub(super) struct AuditRow {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
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
                actor: a.actor,
                action: a.action,
                target: a.target,
                detail: render::one_line(&a.detail.to_string(), 400),
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
