//! The admin page (one file per page in this folder): server-rendered HTML (askama templates in `templates/pages/`) for the
//! people who run Airlock. Sessions with their live log (server-sent events), plan and egress
//! audit; humans and their accounts; profiles, versions and snapshots; credentials (set,
//! rotate, delete; never shown); triggers; the audit log (search, JSONL export).
//!
//! Sign-in with local accounts (argon2id); the cookie is HttpOnly, SameSite=Strict, and Secure
//! when the page is served over TLS; every form carries a CSRF token; every page is sent with
//! a Content-Security-Policy that runs no inline script. All text is escaped by the
//! templates; agent markdown is rendered to sanitised HTML by `airlock_core::render`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use airlock_core::domain::{CredentialKind, EventKind, Role, SessionState, Surface};
use airlock_core::plan::Plan;
use airlock_core::render;
use airlock_core::secrets::SecretValue;
use airlock_core::service::{Actor, Sessions};
use airlock_core::store::{settle, NewAudit, Session, SessionEvent, SessionFilter, WebSession};
use airlock_core::timefmt::{opt_rfc3339, rfc3339};
use airlock_core::Store;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde_json::json;

mod audit;
mod credentials;
mod humans;
mod login;
mod new_session;
mod overview;
mod profiles;
mod session;
mod sessions;
pub mod throttle;
mod triggers;

use audit::*;
use credentials::*;
use humans::*;
use login::*;
use profiles::*;
use session::*;
use sessions::*;
use triggers::*;

#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    /// Where full output logs are (`<data_dir>/logs`).
    pub logs_dir: std::path::PathBuf,
    /// Cookies get `Secure` when people reach the page over https.
    pub secure: bool,
    /// Failed sign-ins, by account and address.
    pub throttle: std::sync::Arc<throttle::Throttle>,
    /// The profile a request that names none gets (`broker.default_profile`).
    pub default_profile: Option<String>,
    /// What the overview shows of this server and its integrations.
    pub status: std::sync::Arc<ServerStatus>,
}

/// This server's parts and integrations, as the overview shows them.
pub struct ServerStatus {
    /// Whether the Docker engine answered the last check (made every 10 s).
    pub docker_ok: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub docker_host: String,
    /// Whether sandboxes can start (and why not), and the embedded gateway's state.
    pub sandboxes: std::sync::Arc<crate::sandbox_side::Status>,
    pub github: bool,
    pub slack: bool,
    pub discord: bool,
    /// The GitHub host accounts are linked on (`github.web_url`'s host).
    pub github_host: String,
    /// Model prices for cost estimates (`[prices]`).
    pub prices: std::collections::BTreeMap<String, airlock_core::config::Price>,
}

const COOKIE: &str = "airlock_session";
const LOGIN_COOKIE: &str = "airlock_login";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/overview") }))
        .route("/overview", get(overview::overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/sessions", get(sessions))
        .route("/sessions/new", post(new_session::start))
        .route("/sessions/{id}", get(session))
        .route("/sessions/{id}/events", get(session_events))
        .route("/sessions/{id}/output.log.gz", get(output_log))
        .route("/sessions/{id}/stop", post(stop))
        .route("/humans", get(humans).post(add_human))
        .route("/humans/{id}/{action}", post(human_action))
        .route("/link", post(link))
        .route("/profiles", get(profiles))
        .route("/credentials", get(credentials).post(set_credential))
        .route("/credentials/{name}/delete", post(delete_credential))
        .route("/triggers", get(triggers))
        .route("/triggers/{name}/{action}", post(trigger_action))
        .route("/audit", get(audit))
        .route("/audit.jsonl", get(audit_export))
        .route(
            "/static/app.css",
            get(|| async {
                asset(
                    "text/css",
                    include_str!("../../../templates/pages/static/app.css"),
                )
            }),
        )
        .route(
            "/static/app.js",
            get(|| async {
                asset(
                    "text/javascript",
                    include_str!("../../../templates/pages/static/app.js"),
                )
            }),
        )
        .layer(axum::middleware::map_response(headers))
        .with_state(state)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Security headers on every admin response.
async fn headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// Who is signed in, as the pages show them.
pub struct Me {
    name: String,
    csrf: String,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A page or an answer that stops the request.
enum Denied {
    SignIn,
    NotAdmin,
    Csrf,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::SignIn => Redirect::to("/login").into_response(),
            Denied::NotAdmin => message(
                StatusCode::FORBIDDEN,
                "Admins only",
                "The admin page is for Airlock's admins; ask one to give you the admin role.",
                None,
            ),
            Denied::Csrf => message(
                StatusCode::FORBIDDEN,
                "Refused",
                "The form's CSRF token was missing or wrong; reload the page and try again.",
                None,
            ),
        }
    }
}

async fn admin(st: &AdminState, headers: &HeaderMap) -> Result<WebSession, Denied> {
    let token = cookie(headers, COOKIE).ok_or(Denied::SignIn)?;
    let session = st
        .store
        .web_session(token)
        .await
        .ok()
        .flatten()
        .ok_or(Denied::SignIn)?;
    if session.human.role != Role::Admin {
        return Err(Denied::NotAdmin);
    }
    Ok(session)
}

/// A signed-in admin's form post, with its CSRF token checked.
async fn admin_post(
    st: &AdminState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<WebSession, Denied> {
    let s = admin(st, headers).await?;
    let given = form.get("csrf").map(String::as_bytes).unwrap_or(b"");
    if !constant_eq(given, s.csrf.as_bytes()) {
        tracing::warn!(human = %s.human.id, "refused an admin form without a valid CSRF token");
        return Err(Denied::Csrf);
    }
    Ok(s)
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An audit row of what `human` did on the admin page.
fn audit_entry(
    human: &airlock_core::domain::Human,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> NewAudit {
    NewAudit {
        actor: format!("human:{}", human.id),
        action: action.into(),
        target: target.into(),
        session_id: None,
        detail,
    }
}

/// Writes [`audit_entry`]; a row that cannot be written is retried and logged by `settle`.
async fn audit_by(
    st: &AdminState,
    human: &airlock_core::domain::Human,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) {
    let entry = audit_entry(human, action, target, detail);
    settle("an audit row", || st.store.audit(entry.clone())).await;
}

fn me(s: &WebSession) -> Option<Me> {
    Some(Me {
        name: s.human.display_name.clone(),
        csrf: s.csrf.clone(),
    })
}

fn page(t: impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::warn!("cannot render a page: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    me: Option<Me>,
    notice: Option<String>,
    heading: String,
    text: String,
}

fn message(status: StatusCode, heading: &str, text: &str, me: Option<Me>) -> Response {
    let mut r = page(MessagePage {
        me,
        notice: None,
        heading: heading.into(),
        text: text.into(),
    });
    *r.status_mut() = status;
    r
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::warn!("admin page: {e}");
    message(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "Airlock could not show this page; the server log says why.",
        None,
    )
}
