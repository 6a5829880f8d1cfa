//! The admin page: server-rendered HTML (askama templates in `templates/pages/`) for the
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

#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    /// Where full output logs are (`<data_dir>/logs`).
    pub logs_dir: std::path::PathBuf,
    /// Cookies get `Secure` when people reach the page over https.
    pub secure: bool,
}

const COOKIE: &str = "airlock_session";
const LOGIN_COOKIE: &str = "airlock_login";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/sessions") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/sessions", get(sessions))
        .route("/sessions/{id}", get(session))
        .route("/sessions/{id}/events", get(session_events))
        .route("/sessions/{id}/output.log.gz", get(output_log))
        .route("/sessions/{id}/stop", post(stop))
        .route("/humans", get(humans))
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
                    include_str!("../../templates/pages/static/app.css"),
                )
            }),
        )
        .route(
            "/static/app.js",
            get(|| async {
                asset(
                    "text/javascript",
                    include_str!("../../templates/pages/static/app.js"),
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

// --- sign-in -------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    me: Option<Me>,
    notice: Option<String>,
    error: Option<String>,
    csrf: String,
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn login_form(st: &AdminState, error: Option<String>) -> Response {
    let csrf = random_hex();
    let mut r = page(LoginPage {
        me: None,
        notice: None,
        error,
        csrf: csrf.clone(),
    });
    if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &csrf, 1800, st.secure)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_page(State(st): State<AdminState>) -> Response {
    login_form(&st, None)
}

async fn login(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    // The login form's token must match its cookie (a login CSRF guard).
    let sent = f.get("csrf").map(String::as_str).unwrap_or("");
    match cookie(&headers, LOGIN_COOKIE) {
        Some(c) if !sent.is_empty() && constant_eq(c.as_bytes(), sent.as_bytes()) => {}
        _ => return Denied::Csrf.into_response(),
    }
    let email = f.get("email").map(String::as_str).unwrap_or("");
    let password = f.get("password").map(String::as_str).unwrap_or("");
    match st.store.sign_in(email, password).await {
        Ok(Some((token, s))) => {
            let entry = NewAudit {
                actor: format!("human:{}", s.human.id),
                action: "web.sign_in".into(),
                target: s.human.id.clone(),
                session_id: None,
                detail: json!({}),
            };
            settle("an audit row", || st.store.audit(entry.clone())).await;
            let mut r = Redirect::to("/sessions").into_response();
            let max = airlock_core::store::WEB_SESSION_MS / 1000;
            if let Ok(v) = HeaderValue::from_str(&set_cookie(COOKIE, &token, max, st.secure)) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Ok(None) => {
            let mut r = login_form(&st, Some("The email or the password is wrong.".into()));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
        Err(e) => internal(e),
    }
}

async fn logout(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    if let Err(d) = admin_post(&st, &headers, &f).await {
        return d.into_response();
    }
    if let Some(t) = cookie(&headers, COOKIE) {
        settle("a sign-out", || st.store.sign_out(t)).await;
    }
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(COOKIE, "", 0, st.secure)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

// --- sessions ------------------------------------------------------------------------------

struct SessionRow {
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
struct SessionsPage {
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
}

/// `k=v&…`, each part form-encoded.
fn query_string(pairs: &[(&str, String)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// Sessions per page of the list; "Older sessions" goes on from the last one shown.
const SESSIONS_PAGE: i64 = 100;

async fn sessions(
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
        requester_id: Some(get("human")).filter(|h| !h.is_empty()),
        surface: get("surface").parse().ok(),
        limit: Some(SESSIONS_PAGE),
        before: get("before")
            .split_once('.')
            .and_then(|(at, id)| Some((at.parse().ok()?, id.to_string()))),
    };
    let (list, humans) = match (
        st.store.list_sessions(&filter).await,
        st.store.list_humans().await,
    ) {
        (Ok(l), Ok(h)) => (l, h),
        (Err(e), _) | (_, Err(e)) => return internal(e),
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
            id: x.id.clone(),
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
    })
}

struct EventView {
    kind: EventKind,
    html: String,
}

/// One event as sanitised HTML: agent markdown through `render::html`, everything else escaped.
fn event_html(e: &SessionEvent) -> String {
    let p = &e.payload;
    let t = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let esc = render::escape;
    let body = match e.kind {
        EventKind::Message => render::html(&cut(t("text"))),
        EventKind::CommandOutput => format!("<pre>{}</pre>", esc(&cut(t("text")))),
        EventKind::ToolCall => format!(
            "→ <b>{}</b> <code>{}</code>",
            esc(t("tool")),
            esc(&render::one_line(&p["input"].to_string(), 300))
        ),
        EventKind::FileChange => format!("✎ {} <code>{}</code>", esc(t("change")), esc(t("path"))),
        EventKind::State => format!(
            "state: <b>{}</b>{}",
            esc(t("to")),
            p["reason"]
                .as_str()
                .map(|r| format!(" — {}", esc(r)))
                .unwrap_or_default()
        ),
        EventKind::Turn => format!("follow-up: {}", esc(t("prompt"))),
        EventKind::Note => format!("· {}", esc(t("text"))),
        EventKind::Summary if p["runner"] == "agent" => format!(
            "<div class=\"summary\">{}</div>",
            render::html(&cut(t("text")))
        ),
        EventKind::Summary => format!("exit: {}", esc(&p["exit_code"].to_string())),
        EventKind::Git => format!(
            "git: {} <code>{}</code>{}",
            if p["pushed"] == true {
                "pushed"
            } else {
                "nothing to push on"
            },
            esc(t("branch")),
            p["pull_request"]["url"]
                .as_str()
                .map(|u| format!(" · <a href=\"{0}\" rel=\"noreferrer\">{0}</a>", esc(u)))
                .filter(|_| p["pull_request"]["url"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("http")))
                .unwrap_or_default()
        ),
    };
    format!("<span class=\"at\">{}</span> {body}", esc(&rfc3339(e.at)))
}

/// Output shown on the page is bounded; the full log stays in the database.
fn cut(text: &str) -> String {
    if text.len() <= 64 * 1024 {
        text.to_string()
    } else {
        let mut end = 64 * 1024;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}\n[… cut]", &text[..end])
    }
}

struct RouteRow {
    host: String,
    path: String,
    methods: String,
    credential: String,
    upstream: String,
}

struct PlanView {
    profile: String,
    version: i64,
    agent: String,
    limits: String,
    routes: Vec<RouteRow>,
    passthrough: String,
    env: String,
}

struct EgressRow {
    at: String,
    action: String,
    request: String,
    status: String,
    credential: String,
}

#[derive(Template)]
#[template(path = "session.html")]
struct SessionPage {
    me: Option<Me>,
    notice: Option<String>,
    me_csrf: String,
    s: Session,
    requester: String,
    pull_request: Option<String>,
    usage: String,
    live: bool,
    last_seq: i64,
    events: Vec<EventView>,
    /// The log shows a window of the latest events; these go to the ones before and after it.
    earlier: Option<i64>,
    later: Option<i64>,
    /// Whether a full output log is kept (a download link).
    full_log: bool,
    plan: Option<PlanView>,
    egress: Vec<EgressRow>,
}

fn plan_view(p: &Plan) -> PlanView {
    let agent = serde_json::to_value(&p.agent)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_string))
        .unwrap_or_default();
    PlanView {
        profile: p.profile.clone(),
        version: p.profile_version,
        agent,
        limits: format!(
            "{} CPUs, {} MB, {} processes, {} s wall clock, {} s idle",
            p.limits.cpus,
            p.limits.memory_mb,
            p.limits.pids,
            p.limits.wall_clock_secs,
            p.limits.idle_secs
        ),
        routes: p
            .routes
            .iter()
            .map(|r| RouteRow {
                host: r.host.clone(),
                path: r.path_prefix.clone(),
                methods: if r.methods.is_empty() {
                    "any".into()
                } else {
                    r.methods.join(", ")
                },
                credential: r.credential.clone().unwrap_or_else(|| "—".into()),
                upstream: r.upstream.clone().unwrap_or_else(|| "—".into()),
            })
            .collect(),
        passthrough: p.passthrough.join(", "),
        env: p.env.keys().cloned().collect::<Vec<_>>().join(", "),
    }
}

/// How much of a session's log one page shows: at most this many events, or this many bytes
/// of their payloads, the latest first (older ones behind "Earlier events").
const LOG_WINDOW_EVENTS: usize = 300;
const LOG_WINDOW_BYTES: usize = 1 << 20;

/// Which part of a session's log a page shows.
#[derive(Clone, Copy)]
enum LogAt {
    Latest,
    Before(i64),
    After(i64),
}

/// A window of a session's events, oldest first: the latest ones, those just before an
/// event, or those just after one.
async fn log_window(
    store: &Store,
    id: &str,
    at: LogAt,
) -> airlock_core::store::Result<Vec<SessionEvent>> {
    let mut window = Vec::new();
    let mut bytes = 0;
    let (mut cursor, forward) = match at {
        LogAt::Latest => (i64::MAX, false),
        LogAt::Before(b) => (b, false),
        LogAt::After(a) => (a, true),
    };
    'read: loop {
        let page = if forward {
            store.events(id, cursor, 50).await?
        } else {
            store.events_before(id, cursor, 50).await?
        };
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        for e in page {
            bytes += e.payload.to_string().len();
            window.push(e);
            if window.len() >= LOG_WINDOW_EVENTS || bytes >= LOG_WINDOW_BYTES {
                break 'read;
            }
        }
    }
    if !forward {
        window.reverse();
    }
    Ok(window)
}

async fn session(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ws = match admin(&st, &headers).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let s = match st.store.session(&id).await {
        Ok(s) => s,
        Err(_) => {
            return message(
                StatusCode::NOT_FOUND,
                "No such session",
                "There is no session with that id.",
                me(&ws),
            )
        }
    };
    let seq = |k: &str| {
        q.get(k)
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v >= 0)
    };
    let at = match (seq("before"), seq("after")) {
        (Some(b), _) => LogAt::Before(b),
        (None, Some(a)) => LogAt::After(a),
        (None, None) => LogAt::Latest,
    };
    // Read first: events that arrive meanwhile fall in the window, not after it.
    let newest = match st.store.last_event_seq(&id).await {
        Ok(n) => n,
        Err(e) => return internal(e),
    };
    let events = match log_window(&st.store, &id, at).await {
        Ok(w) => w,
        Err(e) => return internal(e),
    };
    let earlier = events.first().map(|e| e.seq).filter(|first| *first > 1);
    // A window that is not the latest links to the next one; the latest follows the stream.
    let later = events.last().map(|e| e.seq).filter(|last| *last < newest);
    let latest = later.is_none();
    let requester = st
        .store
        .find_human(&s.requester_id)
        .await
        .map(|h| h.display_name)
        .unwrap_or_default();
    let usage = st
        .store
        .session_usage(&id)
        .await
        .map(|u| {
            format!(
                "{} calls, {} tokens in, {} out",
                u.calls, u.input_tokens, u.output_tokens
            )
        })
        .unwrap_or_default();
    let egress = st
        .store
        .audit_for_session(&id, 500)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.action.starts_with("egress."))
        .map(|a| {
            let d = &a.detail;
            EgressRow {
                at: rfc3339(a.at),
                action: a.action.trim_start_matches("egress.").to_string(),
                request: format!(
                    "{} {}{}",
                    d["method"].as_str().unwrap_or(""),
                    a.target,
                    d["path"].as_str().unwrap_or("")
                ),
                status: d["status"].to_string(),
                credential: d["credential"].as_str().unwrap_or("—").to_string(),
            }
        })
        .collect();
    page(SessionPage {
        me: me(&ws),
        notice: None,
        me_csrf: ws.csrf.clone(),
        requester,
        pull_request: s
            .pull_request_url
            .clone()
            .filter(|u| u.starts_with("https://") || u.starts_with("http://")),
        usage,
        live: !s.state.is_terminal() && latest,
        last_seq: events.last().map(|e| e.seq).unwrap_or(0),
        earlier,
        later,
        full_log: airlock_core::output_log::path(&st.logs_dir, &id).is_some_and(|p| p.exists()),
        events: events
            .iter()
            .map(|e| EventView {
                kind: e.kind,
                html: event_html(e),
            })
            .collect(),
        plan: s
            .plan
            .as_ref()
            .and_then(Plan::from_json)
            .map(|p| plan_view(&p)),
        egress,
        s,
    })
}

/// The session's full output log (gzip, every turn), streamed from the data directory.
async fn output_log(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let ws = match admin(&st, &headers).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let missing = || {
        message(
            StatusCode::NOT_FOUND,
            "No full log",
            "No full output log is kept for this session: only profiles with \
             limits.output_log = true keep one, on the server that ran the session.",
            me(&ws),
        )
    };
    let Some(path) = airlock_core::output_log::path(&st.logs_dir, &id) else {
        return missing();
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return missing(),
    };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}.log.gz\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// The session's events as they happen, for the page's log.
async fn session_events(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(d) = admin(&st, &headers).await {
        return d.into_response();
    }
    let after: i64 = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let stream = futures_util::stream::unfold(
        (st.store.clone(), id, after, false),
        |(store, id, mut after, done)| async move {
            if done {
                return None;
            }
            let mut out: Vec<Result<Event, Infallible>> = Vec::new();
            loop {
                let events = store.events(&id, after, 200).await.unwrap_or_default();
                for e in &events {
                    after = e.seq;
                    out.push(Ok(Event::default().event("event").data(
                        json!({"seq": e.seq, "kind": e.kind, "html": event_html(e)}).to_string(),
                    )));
                    if e.kind == EventKind::State {
                        out.push(Ok(Event::default()
                            .event("state")
                            .data(json!({"state": e.payload["to"]}).to_string())));
                    }
                }
                let ended = store
                    .session(&id)
                    .await
                    .map(|s| s.state.is_terminal())
                    .unwrap_or(true);
                if !out.is_empty() || ended {
                    let finished = ended && events.is_empty();
                    if finished {
                        out.push(Ok(Event::default().event("end").data("{}")));
                    }
                    return Some((
                        futures_util::stream::iter(out),
                        (store, id, after, finished),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        },
    );
    use futures_util::StreamExt;
    Sse::new(stream.flatten())
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn stop(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let ws = match admin_post(&st, &headers, &f).await {
        Ok(s) => s,
        Err(d) => return d.into_response(),
    };
    let actor = Actor::human(
        ws.human.clone(),
        Surface::Web,
        format!("{} on the admin page", ws.human.display_name),
    );
    match Sessions::new(st.store.clone(), None)
        .stop(&actor, &id, None)
        .await
    {
        Ok(_) => Redirect::to(&format!("/sessions/{id}")).into_response(),
        Err(e) => message(StatusCode::CONFLICT, "Cannot stop", &e.to_string(), me(&ws)),
    }
}

// --- humans --------------------------------------------------------------------------------

struct HumanRow {
    name: String,
    email: String,
    role: Role,
    identities: Vec<String>,
}

#[derive(Template)]
#[template(path = "humans.html")]
struct HumansPage {
    me: Option<Me>,
    notice: Option<String>,
    me_csrf: String,
    humans: Vec<HumanRow>,
}

async fn humans_page(st: &AdminState, ws: &WebSession, notice: Option<String>) -> Response {
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

async fn humans(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    match admin(&st, &headers).await {
        Ok(ws) => humans_page(&st, &ws, None).await,
        Err(d) => d.into_response(),
    }
}

/// A signed-in person confirms a link code from `/airlock link`.
async fn link(
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

// --- profiles ------------------------------------------------------------------------------

struct ProfileRow {
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
struct ProfilesPage {
    me: Option<Me>,
    notice: Option<String>,
    profiles: Vec<ProfileRow>,
}

async fn profiles(State(st): State<AdminState>, headers: HeaderMap) -> Response {
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

// --- credentials ---------------------------------------------------------------------------

struct CredentialRow {
    name: String,
    kind: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "credentials.html")]
struct CredentialsPage {
    me: Option<Me>,
    notice: Option<String>,
    me_csrf: String,
    credentials: Vec<CredentialRow>,
    kinds: Vec<CredentialKind>,
}

async fn credentials_page(
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

async fn credentials(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    match admin(&st, &headers).await {
        Ok(ws) => credentials_page(&st, &ws, None, StatusCode::OK).await,
        Err(d) => d.into_response(),
    }
}

async fn set_credential(
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
            let entry = NewAudit {
                actor: format!("human:{}", ws.human.id),
                action: if rotated {
                    "credential.rotate"
                } else {
                    "credential.set"
                }
                .into(),
                target: name.clone(),
                session_id: None,
                detail: json!({"kind": kind, "from": "web"}),
            };
            settle("an audit row", || st.store.audit(entry.clone())).await;
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

async fn delete_credential(
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
            let entry = NewAudit {
                actor: format!("human:{}", ws.human.id),
                action: "credential.delete".into(),
                target: name.clone(),
                session_id: None,
                detail: json!({"from": "web"}),
            };
            settle("an audit row", || st.store.audit(entry.clone())).await;
            format!("Deleted credential {name}.")
        }
        Err(e) => e.to_string(),
    };
    credentials_page(&st, &ws, Some(notice), StatusCode::OK).await
}

// --- triggers ------------------------------------------------------------------------------

struct TriggerRow {
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
struct TriggersPage {
    me: Option<Me>,
    notice: Option<String>,
    me_csrf: String,
    triggers: Vec<TriggerRow>,
}

async fn triggers_page(st: &AdminState, ws: &WebSession, notice: Option<String>) -> Response {
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

async fn triggers(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    match admin(&st, &headers).await {
        Ok(ws) => triggers_page(&st, &ws, None).await,
        Err(d) => d.into_response(),
    }
}

async fn trigger_action(
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
                let entry = NewAudit {
                    actor: format!("human:{}", ws.human.id),
                    action: format!("trigger.{action}"),
                    target: t.id.clone(),
                    session_id: None,
                    detail: json!({"name": t.name}),
                };
                settle("an audit row", || st.store.audit(entry.clone())).await;
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

// --- audit ---------------------------------------------------------------------------------

struct AuditRow {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    me: Option<Me>,
    notice: Option<String>,
    q: String,
    entries: Vec<AuditRow>,
    /// Which part of the log this page searched, and the link to the older part.
    searched: String,
    older: Option<String>,
}

async fn audit(
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

async fn audit_export(
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
    use airlock_core::domain::ProfileSpec;
    use airlock_core::store::{ApplyOutcome, NewSession};

    /// Following "Earlier events" from the latest window back to the first, and "Later
    /// events" forward again, shows every event exactly once, each window bounded.
    #[tokio::test]
    async fn log_windows_cover_a_long_session_once_each_way() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let store = Store::connect(&url, 2, airlock_core::secrets::MasterKey::generate())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let human = store
            .add_human("Ada", "ada@example.com", Role::Admin)
            .await
            .unwrap();
        let spec = ProfileSpec::from_toml(
            "name = \"p\"\n[agent]\nkind = \"command\"\ncommand = \"true\"\n",
        )
        .unwrap();
        let ApplyOutcome::Created {
            profile_id,
            version,
        } = store.apply_profile(&spec, None).await.unwrap()
        else {
            panic!("not created")
        };
        let s = store
            .create_session(NewSession {
                requester_id: human.id,
                surface: Surface::Cli,
                thread_ref: json!({}),
                repo: "acme/web".into(),
                profile_id,
                profile_version: version,
                prompt: "p".into(),
                trigger_id: None,
                thread_key: None,
                notify: None,
            })
            .await
            .unwrap();
        // 2,000 small events, then 40 of 30 KB: the byte bound cuts those windows short.
        for i in 0..2040 {
            let text = if i < 2000 {
                format!("{i}")
            } else {
                "z".repeat(30_000)
            };
            store
                .append_event(&s.id, EventKind::CommandOutput, &json!({ "text": text }))
                .await
                .unwrap();
        }
        let total = store.last_event_seq(&s.id).await.unwrap();
        let mut seen = Vec::new();
        let mut at = LogAt::Latest;
        loop {
            let w = log_window(&store, &s.id, at).await.unwrap();
            assert!(w.len() <= LOG_WINDOW_EVENTS);
            let bytes: usize = w.iter().map(|e| e.payload.to_string().len()).sum();
            assert!(bytes < LOG_WINDOW_BYTES + 32 * 1024, "{bytes}");
            assert!(
                w.windows(2).all(|p| p[0].seq + 1 == p[1].seq),
                "in order, no gaps"
            );
            seen.splice(0..0, w.iter().map(|e| e.seq));
            match w.first() {
                Some(first) if first.seq > 1 => at = LogAt::Before(first.seq),
                _ => break,
            }
        }
        assert_eq!(seen, (1..=total).collect::<Vec<_>>());
        let mut forward = Vec::new();
        let mut at = LogAt::After(0);
        loop {
            let w = log_window(&store, &s.id, at).await.unwrap();
            let Some(last) = w.last() else { break };
            at = LogAt::After(last.seq);
            forward.extend(w.iter().map(|e| e.seq));
        }
        assert_eq!(forward, seen);
    }
}
