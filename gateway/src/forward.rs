//! One intercepted request, in three steps: decide (route and normalised path, method
//! restated elsewhere, codings, upgrade kind, budget, the guard on the URL and headers),
//! inject the route's credential, then forward with the body streaming both ways and answer
//! with the response decoded, scrubbed in every part and metered, or, after a WebSocket
//! upgrade, with the relay. A `git-receive-pack` request's command list is read and checked
//! before any of it goes upstream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_store::domain::Inject;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::answer::{self, text, Answer};
use crate::body::{scrub_headers, BoxBody, Observed, Scan};
use crate::context::{trimmed, Ctx, METHOD_OVERRIDE};
use crate::decode::{self, Coding};
use crate::git::{self, ParseError, PushRequest};
use crate::meter::{self, Meter};
use crate::path::{method_override, NormalPath};
use crate::proxy::Target;
use crate::routes::{format_authority, split_host_port, Route};
use crate::scan::{Needles, StreamScan};
use crate::websocket;
use crate::Shared;

/// Reads what is left of a body (at most `limit` bytes, for at most `time`) before answering
/// it early, so a client still sending is not cut off and sees the answer.
async fn drain<B>(body: B, limit: usize, time: Duration)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut body = body;
    let mut read = 0usize;
    let _ = tokio::time::timeout(time, async {
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > limit {
                break;
            }
        }
    })
    .await;
}

async fn drain_small(body: Incoming) {
    drain(body, 1 << 20, Duration::from_secs(2)).await;
}

/// Hop-by-hop headers, which belong to one connection and are never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "transfer-encoding",
    "upgrade",
];

pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if !(keep_upgrade && n == header::UPGRADE) {
            headers.remove(n);
        }
    }
    for h in HOP_BY_HOP {
        if keep_upgrade && (*h == "connection" || *h == "upgrade") {
            continue;
        }
        headers.remove(*h);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The protocol a request asks to upgrade to, if it asks.
fn upgrade_to(headers: &HeaderMap) -> Option<String> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if !asks && !headers.contains_key(header::UPGRADE) {
        return None;
    }
    Some(
        headers
            .get(header::UPGRADE)
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default(),
    )
}

fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    headers.remove(&name);
    if let Ok(mut v) = HeaderValue::from_str(value) {
        v.set_sensitive(true);
        headers.insert(name, v);
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `path?query` with parameter `name` set to `value` (any values the sandbox sent removed).
pub fn set_query(pq: &str, name: &str, value: &str) -> String {
    let (path, query) = pq.split_once('?').unwrap_or((pq, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(name))
        .map(str::to_string)
        .collect();
    pairs.push(format!("{name}={value}"));
    format!("{path}?{}", pairs.join("&"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What [`decide`] settled about a request.
struct Decision {
    route: Route,
    path: NormalPath,
    codings: Vec<Coding>,
    websocket: bool,
    model_call: bool,
    git_push: bool,
    /// A form body on a route with method limits: `_method` in it is refused too.
    form_override_check: bool,
}

/// Everything that can be said about a request before any of it goes upstream: `Err` is the
/// answer refusing it.
async fn decide(
    shared: &Shared,
    ctx: &Ctx,
    target: &Target,
    req: &Request<Incoming>,
    started: Instant,
) -> Result<Decision, Answer> {
    let method = req.method();
    let raw_path = req.uri().path();
    let host = target.host.as_str();
    let asked = answer::Asked {
        host,
        method,
        path: raw_path,
        started,
    };
    let refuse =
        |status, decision, why: String| answer::refuse(shared, ctx, &asked, status, decision, &why);
    let (route, path) = ctx
        .routes
        .request(host, method.as_str(), raw_path)
        .map(|(r, p)| (r.clone(), p))
        .map_err(|refusal| answer::refuse_route(shared, ctx, &asked, target.port, refusal))?;
    if !route.methods.is_empty() {
        if let Some(m) = method_override(method.as_str(), req.headers(), req.uri().query()) {
            if !route.allows_method(&m) {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "method",
                    format!(
                        "the request restates its method as {} (a method-override header or \
                         `_method`), which the route does not allow; it allows {}.",
                        m.chars().take(20).collect::<String>(),
                        route.methods.join(", ")
                    ),
                ));
            }
        }
    }
    // hyper undoes `chunked`; any other transfer coding on a request is not accepted.
    let te = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .find(|t| t != "chunked" && !t.is_empty());
    if let Some(te) = te {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "transfer_coding",
            format!(
                "Transfer-Encoding `{}` is not accepted; send the body with Content-Encoding.",
                te.chars().take(40).collect::<String>()
            ),
        ));
    }
    let codings = decode::codings(req.headers()).map_err(|c| {
        refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_coding",
            format!("the body's Content-Encoding `{c}` cannot be checked; send it as gzip, deflate, br, zstd or uncompressed."),
        )
    })?;
    let websocket = match upgrade_to(req.headers()) {
        None => false,
        Some(p) if p == "websocket" && method == Method::GET => true,
        Some(p) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "upgrade",
                format!(
                    "the gateway relays only WebSocket upgrades (GET with `Upgrade: websocket`), not `{}`.",
                    p.chars().take(40).collect::<String>()
                ),
            ))
        }
    };
    let model_call = if websocket {
        meter::is_model_upgrade(&path.path)
    } else {
        meter::is_model_call(method.as_str(), &path.path)
    };
    if model_call {
        if let Some(msg) = shared.budgets.refusal(ctx).await {
            return Err(answer::budget_spent(
                shared, ctx, host, method, raw_path, msg,
            ));
        }
    }
    // The request guard: no stored credential value may leave in the URL or a header.
    let secrets = shared.secrets.current();
    if let Some(guard) = &secrets.guard {
        let in_uri = req
            .uri()
            .path_and_query()
            .and_then(|pq| guard.find(pq.as_str().as_bytes()));
        let in_headers = || {
            req.headers()
                .iter()
                .filter(|(name, _)| *name != header::PROXY_AUTHORIZATION)
                .find_map(|(name, v)| {
                    guard
                        .find(v.as_bytes())
                        .or_else(|| guard.find(name.as_str().as_bytes()))
                })
        };
        if let Some(name) = in_uri.or_else(in_headers) {
            return Err(answer::blocked(
                shared, ctx, host, method, raw_path, &name, started,
            ));
        }
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let form_override_check = !route.methods.is_empty()
        && (content_type.starts_with("application/x-www-form-urlencoded")
            || content_type.starts_with("multipart/form-data"));
    let git_push = *method == Method::POST && path.path.ends_with("/git-receive-pack");
    Ok(Decision {
        route,
        path,
        codings,
        websocket,
        model_call,
        git_push,
        form_override_check,
    })
}

/// The credential of `route` put into the request; returns its name and the scrubber for
/// what comes back. `Err` when the credential cannot be had (not stored, App not installed).
async fn inject(
    shared: &Shared,
    ctx: &Ctx,
    route: &Route,
    headers: &mut HeaderMap,
    pq: &mut String,
) -> Result<Option<String>, Answer> {
    let Some(name) = route.credential.clone() else {
        return Ok(None);
    };
    let secrets = shared.secrets.current();
    let value = secrets.injected(&name, ctx).await.map_err(|why| {
        tracing::warn!(session = ?ctx.session_id, route = route.index, "{why}");
        text(
            StatusCode::BAD_GATEWAY,
            format!(
                "Airlock's gateway: route {} of profile `{}` {why}.\n",
                route.index, ctx.profile
            ),
        )
    })?;
    let raw = String::from_utf8_lossy(trimmed(value.expose())).to_string();
    match &route.inject {
        Some(Inject::Bearer) => {
            set_header(headers, header::AUTHORIZATION, &format!("Bearer {raw}"))
        }
        Some(Inject::Basic { username }) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{raw}"));
            set_header(headers, header::AUTHORIZATION, &format!("Basic {b64}"));
        }
        Some(Inject::Header { name: h, prefix }) => {
            if let Ok(h) = HeaderName::from_bytes(h.as_bytes()) {
                set_header(headers, h, &format!("{prefix}{raw}"));
            }
        }
        Some(Inject::Query { name: q }) => *pq = set_query(pq, q, &percent_encode(&raw)),
        None => {}
    }
    Ok(Some(name))
}

/// A body whose first bytes were read already.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: BoxBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(p) = self.prefix.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(p))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }
}

enum Gate {
    Allowed(BoxBody, PushRequest),
    Refused(BoxBody, PushRequest, Vec<(String, String)>),
    Malformed(BoxBody, String),
}

/// Reads a push's command list and decides on it before any of it goes upstream.
async fn gate_push(mut body: BoxBody, branch: Option<&str>) -> Gate {
    let mut buf = BytesMut::new();
    let push = loop {
        match git::parse_push(&buf) {
            Ok(p) => break p,
            Err(ParseError::Malformed(why)) => return Gate::Malformed(body, why),
            Err(ParseError::Incomplete) if buf.len() > git::MAX_COMMANDS_BYTES + 65_536 => {
                return Gate::Malformed(body, "the command list is longer than 1 MiB".into())
            }
            Err(ParseError::Incomplete) => {}
        }
        match tokio::time::timeout(Duration::from_secs(60), body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
            Ok(Some(Err(e))) => return Gate::Malformed(body, e.to_string()),
            Ok(None) => {
                return Gate::Malformed(body, "the push ended before its command list".into())
            }
            Err(_) => return Gate::Malformed(body, "no command list within 60 s".into()),
        }
    };
    let reasons: Vec<(String, String)> = push
        .commands
        .iter()
        .filter_map(|c| git::refusal(c, branch).map(|why| (c.refname.clone(), why)))
        .collect();
    let body = Prefixed {
        prefix: Some(buf.freeze()),
        rest: body,
    }
    .boxed_unsync();
    if reasons.is_empty() {
        Gate::Allowed(body, push)
    } else {
        Gate::Refused(body, push, reasons)
    }
}

#[tracing::instrument(name = "egress", skip_all, fields(
    session = ctx.session_id.as_deref().unwrap_or("-"),
    human = ctx.human_id.as_deref().unwrap_or("-"),
    sandbox = %ctx.sandbox_id,
    host = %target.host,
    method = %req.method(),
))]
pub async fn forward(
    shared: Arc<Shared>,
    ctx: Arc<Ctx>,
    target: Target,
    mut req: Request<Incoming>,
    started: Instant,
) -> Answer {
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let asked = answer::Asked {
        host: &target.host,
        method: &method,
        path: &raw_path,
        started,
    };
    // Inside a tunnel, every request must be for the tunnel's host.
    if target.tls {
        let asked = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .and_then(|a| split_host_port(&a, 443));
        if asked.as_ref().map(|(h, _)| h.as_str()) != Some(target.host.as_str()) {
            return text(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Airlock's gateway: this connection is for {}; open another for other hosts.\n",
                    target.host
                ),
            );
        }
    }
    let d = match decide(&shared, &ctx, &target, &req, started).await {
        Ok(d) => d,
        Err(answer) => {
            drain_small(req.into_body()).await;
            return answer;
        }
    };
    let route = &d.route;
    // Where it goes.
    let (https, authority, host_for_header, base_path, admin_upstream) =
        match route.upstream.clone() {
            Some(u) => (
                u.https,
                u.authority.clone(),
                u.host.clone(),
                u.base_path,
                true,
            ),
            None => {
                // A credential is only ever sent over TLS: plain http to a route with one is
                // upgraded to https.
                let secure = target.tls || route.credential.is_some();
                let port = if !target.tls && secure && target.port == 80 {
                    443
                } else {
                    target.port
                };
                (
                    secure,
                    format_authority(&target.host, port),
                    target.host.clone(),
                    String::new(),
                    false,
                )
            }
        };
    let default_port = if https { 443 } else { 80 };
    let host_header = match split_host_port(&authority, default_port) {
        Some((_, p)) if p == default_port => host_for_header.clone(),
        _ => authority.clone(),
    };
    // What matched is what goes on: the normalised path, the query as sent.
    let mut pq = match req.uri().query() {
        Some(q) => format!("{base_path}{}?{q}", d.path.path),
        None => format!("{base_path}{}", d.path.path),
    };
    // The connection's place is held by the relay as long as it runs.
    let client_upgrade = d
        .websocket
        .then(|| (hyper::upgrade::on(&mut req), crate::proxy::Held::of(&req)));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, d.websocket);
    parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(&host_header).unwrap_or(HeaderValue::from_static("invalid")),
    );
    // Scrubbing reads the plain body: ask the upstream not to compress it (what it
    // compresses anyway is decoded).
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let credential = match inject(&shared, &ctx, route, &mut parts.headers, &mut pq).await {
        Ok(c) => c,
        Err(answer) => {
            drain_small(body).await;
            return answer;
        }
    };
    let secrets = shared.secrets.current();
    let scrubber = secrets.scrubber(&ctx);
    // The request body: decoded if the sandbox compressed it, a push's commands checked,
    // then the guard as it streams.
    let mut body: BoxBody = if d.codings.is_empty() {
        body.map_err(Into::into).boxed_unsync()
    } else {
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.remove(header::CONTENT_LENGTH);
        decode::decoded(body, &d.codings)
    };
    let mut pushed: Option<Vec<String>> = None;
    if d.git_push {
        match gate_push(body, ctx.branch.as_deref()).await {
            Gate::Allowed(b, push) => {
                pushed = Some(push.commands.iter().map(|c| c.refname.clone()).collect());
                body = b;
            }
            Gate::Refused(rest, push, reasons) => {
                drain(rest, 512 << 20, Duration::from_secs(60)).await;
                return refuse_push(&shared, &ctx, &target, &raw_path, &push, &reasons, started);
            }
            Gate::Malformed(rest, why) => {
                drain(rest, 512 << 20, Duration::from_secs(60)).await;
                return answer::refuse(
                    &shared,
                    &ctx,
                    &asked,
                    StatusCode::BAD_REQUEST,
                    "git_push",
                    &format!("the push could not be checked: {why}."),
                );
            }
        }
    }
    let tripped = Arc::new(Mutex::new(None));
    let guard = if d.form_override_check {
        secrets.form_guard.clone()
    } else {
        secrets.guard.clone()
    };
    let guard_scan = match guard {
        Some(g) => Scan::Guard(StreamScan::new(g), tripped.clone()),
        None => Scan::None,
    };
    let bytes_up = Arc::new(AtomicU64::new(0));
    let body = Observed::new(body, guard_scan, None, bytes_up.clone()).boxed_unsync();
    let uri: Uri =
        match format!("{}://{authority}{pq}", if https { "https" } else { "http" }).parse() {
            Ok(u) => u,
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "the request's URL is not valid\n".into(),
                )
            }
        };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, body);
    let c = &shared.clients;
    let sent = match (admin_upstream, d.websocket) {
        (true, false) => c.any.request(upstream_req).await,
        (false, false) => c.public.request(upstream_req).await,
        (true, true) => c.any_h1.request(upstream_req).await,
        (false, true) => c.public_h1.request(upstream_req).await,
    };
    // A guard that tripped ends the request body with an error; whether hyper then reports
    // that error or an answer the upstream gave before reading the rest is a race, so the
    // flag decides, not the outcome: a refused body is refused either way.
    let refused = |name: String| {
        if name == METHOD_OVERRIDE {
            return answer::refuse(
                &shared,
                &ctx,
                &asked,
                StatusCode::FORBIDDEN,
                "method",
                &format!(
                    "the form restates its method in a `_method` field, which a route \
                     limited to {} does not allow.",
                    route.methods.join(", ")
                ),
            );
        }
        answer::blocked(
            &shared,
            &ctx,
            &target.host,
            &method,
            &raw_path,
            &name,
            started,
        )
    };
    let tripped = tripped.lock().expect("guard flag").clone();
    let resp = match (sent, tripped) {
        (_, Some(name)) => return refused(name),
        (Ok(r), None) => r,
        (Err(e), None) => {
            shared.audit(
                &ctx,
                "egress.request",
                &target.host,
                serde_json::json!({
                    "method": method.as_str(), "path": raw_path, "decision": "allowed",
                    "route": route.index, "credential": credential,
                    "status": 502, "error": error_chain(&e),
                    "duration_ms": started.elapsed().as_millis() as u64,
                }),
            );
            return text(
                StatusCode::BAD_GATEWAY,
                format!(
                    "Airlock's gateway could not reach {authority}: {}\n",
                    error_chain(&e)
                ),
            );
        }
    };
    let status = resp.status();
    let audit_base = serde_json::json!({
        "method": method.as_str(), "path": raw_path, "decision": "allowed",
        "route": route.index, "credential": credential, "status": status.as_u16(),
    });
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return text(
                StatusCode::BAD_GATEWAY,
                "Airlock's gateway: the upstream switched protocols without being asked.\n".into(),
            );
        };
        return upgraded(
            shared.clone(),
            ctx.clone(),
            target.host.clone(),
            resp,
            client_upgrade,
            d.model_call,
            scrubber,
            audit_base,
            started,
        );
    }
    let (mut parts, body) = resp.into_parts();
    // Extensions carry the upstream's reason phrase, which hyper would repeat verbatim.
    parts.extensions = http::Extensions::new();
    let codings = match decode::codings(&parts.headers) {
        Ok(c) => c,
        Err(c) => {
            let mut detail = audit_base.clone();
            detail["status"] = serde_json::json!(502);
            detail["error"] = serde_json::json!(format!("unknown coding {c}"));
            shared.audit(&ctx, "egress.request", &target.host, detail);
            return text(
                StatusCode::BAD_GATEWAY,
                format!("Airlock's gateway cannot check a response with the coding `{c}`, so it is not passed on.\n"),
            );
        }
    };
    let no_body = method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || body.is_end_stream();
    strip_hop_by_hop(&mut parts.headers, false);
    let body: BoxBody = if codings.is_empty() || no_body {
        body.map_err(Into::into).boxed_unsync()
    } else {
        if status == StatusCode::PARTIAL_CONTENT {
            return text(
                StatusCode::BAD_GATEWAY,
                "Airlock's gateway cannot check part of a compressed response; ask without Range.\n".into(),
            );
        }
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.remove(header::CONTENT_LENGTH);
        decode::decoded(body, &codings)
    };
    let body_scan = match &scrubber {
        Some(needles) => {
            scrub_headers(needles, &mut parts.headers);
            // Scrubbing may change the length.
            parts.headers.remove(header::CONTENT_LENGTH);
            Scan::Scrub(StreamScan::new(needles.clone()))
        }
        None => Scan::None,
    };
    let meter = if d.model_call {
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(Meter::for_content_type)
    } else {
        None
    };
    let bytes_down = Arc::new(AtomicU64::new(0));
    let finisher = {
        let (shared, ctx, host) = (shared.clone(), ctx.clone(), target.host.clone());
        let bytes_down = bytes_down.clone();
        let mut detail = audit_base;
        if let Some(refs) = pushed {
            detail["refs"] = serde_json::json!(refs);
        }
        Box::new(move |meter: Option<Meter>| {
            let usage = meter.map(Meter::finish).filter(|u| !u.is_empty());
            detail["bytes_up"] = serde_json::json!(bytes_up.load(Ordering::Relaxed));
            detail["bytes_down"] = serde_json::json!(bytes_down.load(Ordering::Relaxed));
            detail["duration_ms"] = serde_json::json!(started.elapsed().as_millis() as u64);
            if let Some(u) = usage {
                detail["model"] = serde_json::json!(u.model);
                detail["input_tokens"] = serde_json::json!(u.input_tokens);
                detail["output_tokens"] = serde_json::json!(u.output_tokens);
                shared.meter(&ctx, &host, u);
            }
            shared.audit(&ctx, "egress.request", &host, detail);
        })
    };
    let body = Observed::new(body, body_scan, meter, bytes_down)
        .on_end(finisher)
        .boxed_unsync();
    Response::from_parts(parts, body)
}

fn refuse_push(
    shared: &Shared,
    ctx: &Ctx,
    target: &Target,
    path: &str,
    push: &PushRequest,
    reasons: &[(String, String)],
    started: Instant,
) -> Answer {
    shared.audit(
        ctx,
        "egress.refused",
        &target.host,
        serde_json::json!({
            "method": "POST", "path": path, "decision": "git_ref", "status": 200,
            "refs": push.commands.iter().map(|c| c.refname.clone()).collect::<Vec<_>>(),
            "refused": reasons.iter().map(|(r, w)| serde_json::json!({"ref": r, "why": w})).collect::<Vec<_>>(),
            "duration_ms": started.elapsed().as_millis() as u64,
        }),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            "application/x-git-receive-pack-result",
        )
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-airlock-gateway", "refused")
        .body(answer::full(git::refused_answer(push, reasons)))
        .expect("a valid response")
}

/// A WebSocket upgrade the upstream accepted: checked, scrubbed, audited as it opens, then
/// relayed message by message and audited again when it closes.
#[allow(clippy::too_many_arguments)]
fn upgraded(
    shared: Arc<Shared>,
    ctx: Arc<Ctx>,
    host: String,
    mut resp: Response<Incoming>,
    (client_upgrade, held): (hyper::upgrade::OnUpgrade, Option<crate::proxy::Held>),
    metered: bool,
    scrubber: Option<Arc<Needles>>,
    audit_base: serde_json::Value,
    started: Instant,
) -> Answer {
    let is_ws = resp
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !is_ws
        || resp
            .headers()
            .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
    {
        let mut detail = audit_base;
        detail["status"] = serde_json::json!(502);
        detail["error"] = serde_json::json!("the upstream's upgrade cannot be inspected");
        shared.audit(&ctx, "egress.request", &host, detail);
        return text(
            StatusCode::BAD_GATEWAY,
            "Airlock's gateway: the upstream answered the WebSocket upgrade with a protocol or \
             extension the gateway cannot inspect, so the connection is not relayed.\n"
                .into(),
        );
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    parts.extensions = http::Extensions::new();
    strip_hop_by_hop(&mut parts.headers, true);
    if let Some(n) = &scrubber {
        scrub_headers(n, &mut parts.headers);
    }
    let mut opened = audit_base.clone();
    opened["upgrade"] = serde_json::json!("websocket");
    shared.audit(&ctx, "egress.upgrade", &host, opened);
    let guard = shared.secrets.current().guard.clone();
    tokio::spawn(async move {
        let _held = held;
        let (c, u) = match (client_upgrade.await, upstream_upgrade.await) {
            (Ok(c), Ok(u)) => (c, u),
            _ => {
                let mut closed = audit_base;
                closed["error"] = serde_json::json!("the upgrade did not complete");
                shared.audit(&ctx, "egress.upgrade.closed", &host, closed);
                return;
            }
        };
        let checks = websocket::Checks {
            scrub: scrubber,
            guard,
            metered,
        };
        let t = websocket::relay(
            TokioIo::new(c),
            TokioIo::new(u),
            checks,
            shared.clone(),
            ctx.clone(),
            host.clone(),
        )
        .await;
        let mut closed = audit_base;
        closed["upgrade"] = serde_json::json!("websocket");
        closed["bytes_up"] = serde_json::json!(t.bytes_up);
        closed["bytes_down"] = serde_json::json!(t.bytes_down);
        closed["payload_up"] = serde_json::json!(t.payload_up);
        closed["payload_down"] = serde_json::json!(t.payload_down);
        closed["messages_up"] = serde_json::json!(t.messages_up);
        closed["messages_down"] = serde_json::json!(t.messages_down);
        closed["ended"] = serde_json::json!(t.ended);
        closed["duration_ms"] = serde_json::json!(started.elapsed().as_millis() as u64);
        if t.input_tokens + t.output_tokens > 0 {
            closed["input_tokens"] = serde_json::json!(t.input_tokens);
            closed["output_tokens"] = serde_json::json!(t.output_tokens);
        }
        if let Some(label) = &t.blocked {
            closed["blocked_credential"] = serde_json::json!(label);
        }
        if t.budget_refused {
            closed["decision"] = serde_json::json!("budget");
        }
        shared.audit(&ctx, "egress.upgrade.closed", &host, closed);
    });
    Response::from_parts(parts, answer::empty_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_injection_replaces_what_the_sandbox_sent() {
        assert_eq!(set_query("/v1/x", "key", "K"), "/v1/x?key=K");
        assert_eq!(
            set_query("/v1/x?a=1&key=fake&b=2", "key", "K%2B"),
            "/v1/x?a=1&b=2&key=K%2B"
        );
        assert_eq!(percent_encode("a+b/c d"), "a%2Bb%2Fc%20d");
    }

    #[test]
    fn hop_by_hop_headers_and_the_proxy_credentials_never_go_upstream() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic abc"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn upgrades_are_recognised_by_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(upgrade_to(&h), None);
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert_eq!(upgrade_to(&h).as_deref(), Some("websocket"));
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(upgrade_to(&h).as_deref(), Some(""));
    }
}
