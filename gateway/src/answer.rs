//! The gateway's own answers to the sandbox: every refusal is plain text that says what was
//! refused and how an admin can allow it, and each one is audited. No answer carries a
//! credential value.

use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use crate::body::BoxBody;
use crate::context::Ctx;
use crate::routes::Refusal;
use crate::Shared;

pub type Answer = Response<BoxBody>;

pub fn full(body: impl Into<Bytes>) -> BoxBody {
    Full::new(body.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub fn empty_body() -> BoxBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

pub fn text(status: StatusCode, body: String) -> Answer {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-airlock-gateway", "refused")
        .body(full(body))
        .expect("a valid response")
}

pub fn empty(status: StatusCode) -> Answer {
    Response::builder()
        .status(status)
        .body(empty_body())
        .expect("a valid response")
}

pub fn proxy_auth_required() -> Answer {
    let mut answer = text(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        "Airlock's gateway needs this sandbox's proxy credentials: send requests through the \
         HTTP(S)_PROXY address the sandbox was given. The credentials were missing, unknown, \
         expired, or belong to another sandbox.\n"
            .into(),
    );
    answer.headers_mut().insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"airlock\""),
    );
    answer
}

fn ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// A host no route allows.
pub fn refuse_host(
    shared: &Shared,
    ctx: &Ctx,
    host: &str,
    port: u16,
    method: &Method,
    started: Instant,
) -> Answer {
    shared.audit(
        ctx,
        "egress.refused",
        host,
        serde_json::json!({
            "method": method.as_str(), "port": port, "decision": "no_route",
            "status": 403, "duration_ms": ms(started),
        }),
    );
    text(
        StatusCode::FORBIDDEN,
        format!(
            "Airlock's gateway refused this request: {host} is not allowed for this session \
             (profile `{profile}`). An admin can allow it by adding an [[egress]] route for \
             {host} to the profile (or listing it under `passthrough`, with \
             `passthrough_in_sessions = true`, to tunnel it untouched) and running \
             `airlock profile apply`.\n",
            profile = ctx.profile,
        ),
    )
}

/// The request an answer is about, as the audit names it.
pub struct Asked<'a> {
    pub host: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub started: Instant,
}

/// A request the session may not make, with the reason, audited as `decision`.
pub fn refuse(
    shared: &Shared,
    ctx: &Ctx,
    asked: &Asked,
    status: StatusCode,
    decision: &str,
    why: &str,
) -> Answer {
    let Asked {
        host,
        method,
        path,
        started,
    } = *asked;
    shared.audit(
        ctx,
        "egress.refused",
        host,
        serde_json::json!({
            "method": method.as_str(), "path": path, "decision": decision,
            "status": status.as_u16(), "duration_ms": ms(started),
        }),
    );
    text(
        status,
        format!("Airlock's gateway refused this request: {why}\n"),
    )
}

/// What a route refusal says.
pub fn refuse_route(
    shared: &Shared,
    ctx: &Ctx,
    asked: &Asked,
    port: u16,
    refusal: Refusal,
) -> Answer {
    let Asked {
        host,
        method,
        path,
        started,
    } = *asked;
    let (status, why, decision) = match refusal {
        Refusal::Host => return refuse_host(shared, ctx, host, port, method, started),
        Refusal::Method { allowed } => (
            StatusCode::FORBIDDEN,
            format!(
                "{method} is not allowed on {host}{path}; the route allows {}.",
                allowed.join(", ")
            ),
            "method",
        ),
        Refusal::Path { prefixes } => (
            StatusCode::FORBIDDEN,
            format!(
                "{path} on {host} is outside the allowed paths ({}).",
                prefixes.join(", ")
            ),
            "path",
        ),
        Refusal::Path400(e) => (
            StatusCode::BAD_REQUEST,
            format!("the path {path} is ambiguous: {e}."),
            "ambiguous_path",
        ),
    };
    let why = format!(
        "{why} An admin can change the routes of profile `{}` and run `airlock profile apply`.",
        ctx.profile
    );
    refuse(shared, ctx, asked, status, decision, &why)
}

/// A request that carried a stored credential's value.
pub fn blocked(
    shared: &Shared,
    ctx: &Ctx,
    host: &str,
    method: &Method,
    path: &str,
    credential: &str,
    started: Instant,
) -> Answer {
    tracing::warn!(
        sandbox = %ctx.sandbox_id,
        session = ctx.session_id.as_deref().unwrap_or("-"),
        host,
        credential,
        "blocked a request that carried a stored credential value"
    );
    shared.audit(
        ctx,
        "egress.blocked",
        host,
        serde_json::json!({
            "method": method.as_str(), "path": path, "decision": "credential_in_request",
            "credential": credential, "status": 403, "duration_ms": ms(started),
        }),
    );
    text(
        StatusCode::FORBIDDEN,
        format!(
            "Airlock's gateway blocked this request: it carries the value of the stored credential \
             `{credential}`. Credentials are added by the gateway and must never be sent from the \
             sandbox. The attempt is in the audit log.\n"
        ),
    )
}

/// A model call after the budget is spent, in the APIs' own error shape.
pub fn budget_spent(
    shared: &Shared,
    ctx: &Ctx,
    host: &str,
    method: &Method,
    path: &str,
    msg: String,
) -> Answer {
    shared.audit(
        ctx,
        "egress.refused",
        host,
        serde_json::json!({"method": method.as_str(), "path": path, "decision": "budget", "status": 429}),
    );
    let body = serde_json::json!({
        "type": "error",
        "error": {"message": msg, "type": "airlock_budget_exceeded", "code": "budget_exceeded"},
    });
    Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-airlock-gateway", "refused")
        .body(full(body.to_string()))
        .expect("a valid response")
}
