//! Profiles, their versions and snapshots.

use super::*;

pub(super) struct ProfileRow {
    name: String,
    version: i64,
    description: String,
    agent: String,
    routes: usize,
    versions: String,
    spec: String,
    snapshots: Vec<String>,
}

#[derive(Template)]
#[template(path = "profiles.html")]
pub(super) struct ProfilesPage {
    me: Option<Me>,
    notice: Option<String>,
    profiles: Vec<ProfileRow>,
}

pub(super) async fn profiles(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    let ws = match admin(&st, &headers).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let (list, snaps) = match (
        st.store.list_profiles().await,
        st.store.list_snapshots().await,
    ) {
        (Ok(l), Ok(s)) => (l, s),
        (Err(e), _) | (_, Err(e)) => return internal(e),
    };
    let mut rows = Vec::new();
    for p in list {
        let versions = st
            .store
            .list_profile_versions(&p.id)
            .await
            .unwrap_or_default();
        let Some(current) = versions.iter().find(|v| v.version == p.current_version) else {
            continue;
        };
        let spec = &current.spec;
        rows.push(ProfileRow {
            name: p.name.clone(),
            version: p.current_version,
            description: spec.description.clone(),
            agent: serde_json::to_value(&spec.agent)
                .ok()
                .and_then(|v| v["kind"].as_str().map(str::to_string))
                .unwrap_or_default(),
            routes: spec.egress.len(),
            versions: versions
                .iter()
                .map(|v| format!("v{} ({})", v.version, rfc3339(v.created_at)))
                .collect::<Vec<_>>()
                .join(", "),
            spec: toml::to_string_pretty(spec).unwrap_or_default(),
            snapshots: snaps
                .iter()
                .filter(|s| s.profile_id == p.id)
                .map(|s| {
                    format!(
                        "{} ({}, v{}, {})",
                        s.image,
                        s.kind,
                        s.profile_version,
                        rfc3339(s.created_at)
                    )
                })
                .collect(),
        });
    }
    page(ProfilesPage {
        me: me(&ws),
        notice: None,
        profiles: rows,
    })
}
