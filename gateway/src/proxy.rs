//! The proxy itself: authenticate the sandbox, decide per host (intercept, tunnel, refuse),
//! and for intercepted requests decide per request (route, budget, guard), inject the route's
//! credential, forward with the body streaming both ways, scrub the response, meter, audit.
//!
//! Every refusal is a plain-text answer that says what was refused and how an admin can allow
//! it. No answer, log line or audit record carries a credential value.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use airlock_core::domain::Inject;
use airlock_core::store::NewAudit;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::body::{BoxBody, Observed, Scan};
use crate::context::Ctx;
use crate::meter::{self, Meter};
use crate::routes::{format_authority, split_host_port, HostDecision, Refusal};
use crate::scan::{Needles, StreamScan};
use crate::Shared;

type Answer = Response<BoxBody>;

/// Reads what is left of a request's body (at most 1 MiB, for at most 2 s) before answering
/// it early, so a client still sending is not cut off and sees the answer.
async fn drain(body: Incoming) {
    let limited = http_body_util::Limited::new(body, 1024 * 1024);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), limited.collect()).await;
}

fn text(status: StatusCode, body: String) -> Answer {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-airlock-gateway", "refused")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .expect("a valid response")
}

fn empty(status: StatusCode) -> Answer {
    Response::builder()
        .status(status)
        .body(Empty::new().map_err(|e| match e {}).boxed_unsync())
        .expect("a valid response")
}

/// The egress token from `Proxy-Authorization`: Basic (`airlock:<token>`, or the token as the
/// user name) or Bearer.
pub fn proxy_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::PROXY_AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    let token = if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let pair = String::from_utf8(raw).ok()?;
        match pair.split_once(':') {
            Some((_, pass)) if !pass.is_empty() => pass.to_string(),
            Some((user, _)) => user.to_string(),
            None => pair,
        }
    } else if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().to_string()
    } else {
        return None;
    };
    token.starts_with("alk_egr_").then_some(token)
}

/// Serves one client connection (HTTP/1.1: absolute-form requests and CONNECT).
pub async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: IpAddr) {
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(outer(shared, peer, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await;
}

async fn outer(shared: Arc<Shared>, peer: IpAddr, req: Request<Incoming>) -> Answer {
    let started = Instant::now();
    let ctx = match proxy_token(req.headers()) {
        Some(token) => shared.sessions.authorize(&token, peer).await,
        None => None,
    };
    let Some(ctx) = ctx else {
        tracing::debug!(%peer, "egress request without valid proxy credentials");
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
        return answer;
    };
    if req.method() == Method::CONNECT {
        return connect(shared, ctx, req, started).await;
    }
    let uri = req.uri().clone();
    let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "Airlock's gateway is a proxy: send absolute http:// URLs, or CONNECT for https://.\n"
                .into(),
        );
    };
    let Some((host, port)) = split_host_port(authority.as_str(), 80) else {
        return text(
            StatusCode::BAD_REQUEST,
            "the request's host is not valid\n".into(),
        );
    };
    let target = Target {
        host,
        port,
        tls: false,
    };
    match ctx.routes.host(&target.host) {
        HostDecision::Refuse => refuse_host(&shared, &ctx, &target, req.method(), started),
        decision => {
            forward(
                shared,
                ctx,
                target,
                req,
                started,
                decision == HostDecision::Passthrough,
            )
            .await
        }
    }
}

/// Where a request is going, as the sandbox asked.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    /// Inside a CONNECT tunnel (https).
    tls: bool,
}

impl Target {
    fn authority(&self) -> String {
        format_authority(&self.host, self.port)
    }
}

async fn connect(
    shared: Arc<Shared>,
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
    started: Instant,
) -> Answer {
    let Some((host, port)) = req
        .uri()
        .authority()
        .and_then(|a| split_host_port(a.as_str(), 443))
    else {
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port\n".into());
    };
    let target = Target {
        host,
        port,
        tls: true,
    };
    match ctx.routes.host(&target.host) {
        HostDecision::Refuse => refuse_host(&shared, &ctx, &target, req.method(), started),
        HostDecision::Passthrough => {
            let upstream = match TcpStream::connect((target.host.as_str(), target.port)).await {
                Ok(s) => s,
                Err(e) => {
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "Airlock's gateway could not reach {}: {e}\n",
                            target.authority()
                        ),
                    )
                }
            };
            let _ = upstream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(upgraded) = hyper::upgrade::on(req).await else {
                    return;
                };
                let mut client = TokioIo::new(upgraded);
                let mut upstream = upstream;
                let (up, down) = tokio::io::copy_bidirectional(&mut client, &mut upstream)
                    .await
                    .unwrap_or((0, 0));
                shared.audit(
                    &ctx,
                    "egress.tunnel",
                    &target.host,
                    serde_json::json!({
                        "method": "CONNECT",
                        "port": target.port,
                        "decision": "passthrough",
                        "bytes_up": up,
                        "bytes_down": down,
                        "duration_ms": started.elapsed().as_millis() as u64,
                    }),
                );
            });
            empty(StatusCode::OK)
        }
        HostDecision::Intercept => {
            let tls = match shared.authority.server_config(&target.host) {
                Ok(cfg) => cfg,
                Err(e) => {
                    tracing::error!("cannot mint a certificate for {}: {e}", target.host);
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Airlock's gateway could not make a certificate for this host\n".into(),
                    );
                }
            };
            tokio::spawn(async move {
                let Ok(upgraded) = hyper::upgrade::on(req).await else {
                    return;
                };
                let stream = match tokio_rustls::TlsAcceptor::from(tls)
                    .accept(TokioIo::new(upgraded))
                    .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(host = %target.host, "TLS from the sandbox failed: {e}");
                        return;
                    }
                };
                let svc = service_fn(move |inner: Request<Incoming>| {
                    let (shared, ctx, target) = (shared.clone(), ctx.clone(), target.clone());
                    async move {
                        let started = Instant::now();
                        let Some(ctx) = shared.sessions.revalidate(&ctx).await else {
                            return Ok::<_, Infallible>(text(
                                StatusCode::FORBIDDEN,
                                "Airlock's gateway: this sandbox's session has ended.\n".into(),
                            ));
                        };
                        Ok(forward(shared, ctx, target, inner, started, false).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
            empty(StatusCode::OK)
        }
    }
}

fn refuse_host(
    shared: &Shared,
    ctx: &Ctx,
    target: &Target,
    method: &Method,
    started: Instant,
) -> Answer {
    shared.audit(
        ctx,
        "egress.refused",
        &target.host,
        serde_json::json!({
            "method": method.as_str(),
            "port": target.port,
            "decision": "no_route",
            "status": 403,
            "duration_ms": started.elapsed().as_millis() as u64,
        }),
    );
    text(
        StatusCode::FORBIDDEN,
        format!(
            "Airlock's gateway refused this request: {host} is not allowed for this session \
             (profile `{profile}`). An admin can allow it by adding an [[egress]] route for \
             {host} to the profile (or listing it under `passthrough` to tunnel it untouched) \
             and running `airlock profile apply`.\n",
            host = target.host,
            profile = ctx.profile,
        ),
    )
}

/// Hop-by-hop headers, which belong to one connection and are never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
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

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The forms of an injected value that could come back in a response: the value itself, and
/// the header or parameter value as sent (a Basic header is base64 of `user:value`).
fn scrub_forms(value: &[u8], rendered: Option<&[u8]>) -> Vec<Vec<u8>> {
    let mut forms = vec![value.to_vec()];
    if let Some(r) = rendered {
        forms.push(r.to_vec());
    }
    let escaped: Vec<u8> = value
        .iter()
        .flat_map(|&b| {
            if b == b'/' {
                vec![b'\\', b'/']
            } else {
                vec![b]
            }
        })
        .collect();
    forms.push(escaped);
    forms.sort();
    forms.dedup();
    forms
}

async fn forward(
    shared: Arc<Shared>,
    ctx: Arc<Ctx>,
    target: Target,
    mut req: Request<Incoming>,
    started: Instant,
    passthrough: bool,
) -> Answer {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
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
    let route = if passthrough {
        None
    } else {
        match ctx.routes.request(&target.host, method.as_str(), &path) {
            Ok(r) => Some(r.clone()),
            Err(refusal) => {
                drain(req.into_body()).await;
                return refuse_request(&shared, &ctx, &target, &method, &path, refusal, started);
            }
        }
    };
    let model_call = route.is_some() && meter::is_model_call(method.as_str(), &path);
    if model_call {
        if let Some(msg) = shared.budgets.refusal(&ctx).await {
            drain(req.into_body()).await;
            shared.audit(
                &ctx,
                "egress.refused",
                &target.host,
                serde_json::json!({"method": method.as_str(), "path": path, "decision": "budget", "status": 429}),
            );
            let body = serde_json::json!({
                "type": "error",
                "error": {"message": msg, "type": "airlock_budget_exceeded", "code": "budget_exceeded"},
            });
            return Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-airlock-gateway", "refused")
                .body(
                    Full::new(Bytes::from(body.to_string()))
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                )
                .expect("a valid response");
        }
    }
    // The request guard: no stored credential value may leave in the URL or a header.
    let secrets = shared.secrets.current();
    if let Some(guard) = &secrets.guard {
        let in_uri = req
            .uri()
            .path_and_query()
            .and_then(|pq| guard.find(pq.as_str().as_bytes()));
        let in_headers = req
            .headers()
            .iter()
            .filter(|(name, _)| *name != header::PROXY_AUTHORIZATION)
            .find_map(|(_, v)| guard.find(v.as_bytes()));
        if let Some(name) = in_uri.or(in_headers) {
            let name = name.to_string();
            drain(req.into_body()).await;
            return blocked(&shared, &ctx, &target, &method, &path, &name, started);
        }
    }
    // Where it goes.
    let upgrade = is_upgrade(req.headers());
    let (https, authority, host_for_header, base_path) =
        match route.as_ref().and_then(|r| r.upstream.clone()) {
            Some(u) => (u.https, u.authority.clone(), u.host.clone(), u.base_path),
            None => {
                // A credential is only ever sent over TLS: plain http to a route with one is
                // upgraded to https.
                let secure = target.tls || route.as_ref().is_some_and(|r| r.credential.is_some());
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
                )
            }
        };
    let default_port = if https { 443 } else { 80 };
    let host_header = match split_host_port(&authority, default_port) {
        Some((_, p)) if p == default_port => host_for_header.clone(),
        _ => authority.clone(),
    };
    let mut pq = format!(
        "{base_path}{}",
        req.uri().path_and_query().map_or("/", |pq| pq.as_str())
    );
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(&host_header).unwrap_or(HeaderValue::from_static("invalid")),
    );
    // Injection: the header (or parameter) is always overwritten, so placeholder keys work.
    let mut scrub: Option<Arc<Needles>> = None;
    let credential = route.as_ref().and_then(|r| r.credential.clone());
    if let (Some(route), Some(name)) = (&route, &credential) {
        let value = match secrets.injected(name, &ctx).await {
            Ok(v) => v,
            Err(why) => {
                tracing::warn!(session = ?ctx.session_id, route = route.index, "{why}");
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "Airlock's gateway: route {} of profile `{}` {why}.\n",
                        route.index, ctx.profile
                    ),
                );
            }
        };
        let raw = String::from_utf8_lossy(value.expose()).trim().to_string();
        let rendered: Option<Vec<u8>> = match &route.inject {
            Some(Inject::Bearer) => {
                set_header(
                    &mut parts.headers,
                    header::AUTHORIZATION,
                    &format!("Bearer {raw}"),
                );
                None
            }
            Some(Inject::Basic { username }) => {
                let b64 =
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{raw}"));
                set_header(
                    &mut parts.headers,
                    header::AUTHORIZATION,
                    &format!("Basic {b64}"),
                );
                Some(b64.into_bytes())
            }
            Some(Inject::Header { name: h, prefix }) => {
                if let Ok(h) = HeaderName::from_bytes(h.as_bytes()) {
                    set_header(&mut parts.headers, h, &format!("{prefix}{raw}"));
                }
                None
            }
            Some(Inject::Query { name: q }) => {
                let encoded = percent_encode(&raw);
                pq = set_query(&pq, q, &encoded);
                Some(encoded.into_bytes())
            }
            None => None,
        };
        // Scrubbing needs the plain body: ask the upstream not to compress it.
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        scrub = Needles::new(
            scrub_forms(raw.as_bytes(), rendered.as_deref())
                .into_iter()
                .map(|f| (f, name.clone()))
                .collect(),
        )
        .map(Arc::new);
    }
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
    let bytes_up = Arc::new(AtomicU64::new(0));
    let tripped = Arc::new(Mutex::new(None));
    let guard_scan = match &secrets.guard {
        Some(g) => Scan::Guard(StreamScan::new(g.clone()), tripped.clone()),
        None => Scan::None,
    };
    let body = Observed::new(body, guard_scan, None, bytes_up.clone()).boxed_unsync();
    let upstream_req = Request::from_parts(parts, body);
    let mut resp = match shared.client.request(upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(name) = tripped.lock().expect("guard flag").clone() {
                return blocked(&shared, &ctx, &target, &method, &path, &name, started);
            }
            shared.audit(
                &ctx,
                "egress.request",
                &target.host,
                serde_json::json!({
                    "method": method.as_str(), "path": path, "decision": "allowed",
                    "route": route.as_ref().map(|r| r.index), "credential": credential,
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
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let (shared2, ctx2, host) = (shared.clone(), ctx.clone(), target.host.clone());
            let (m, p) = (method.to_string(), path.clone());
            tokio::spawn(async move {
                let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) else {
                    return;
                };
                let (up, down) =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u))
                        .await
                        .unwrap_or((0, 0));
                shared2.audit(
                    &ctx2,
                    "egress.request",
                    &host,
                    serde_json::json!({"method": m, "path": p, "decision": "allowed", "status": 101,
                        "upgrade": true, "bytes_up": up, "bytes_down": down,
                        "duration_ms": started.elapsed().as_millis() as u64}),
                );
            });
        }
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        return Response::from_parts(parts, Empty::new().map_err(|e| match e {}).boxed_unsync());
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let body_scan = match &scrub {
        Some(needles) => {
            for value in parts.headers.values_mut() {
                if let Some(clean) = needles.redact(value.as_bytes()) {
                    *value = HeaderValue::from_bytes(&clean)
                        .unwrap_or(HeaderValue::from_static("[REDACTED]"));
                }
            }
            // Scrubbing may change the length.
            parts.headers.remove(header::CONTENT_LENGTH);
            Scan::Scrub(StreamScan::new(needles.clone()))
        }
        None => Scan::None,
    };
    let meter = if model_call {
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
        let route_index = route.as_ref().map(|r| r.index);
        let method = method.to_string();
        Box::new(move |meter: Option<Meter>| {
            let usage = meter.map(Meter::finish).filter(|u| !u.is_empty());
            let mut detail = serde_json::json!({
                "method": method,
                "path": path,
                "decision": if passthrough { "passthrough" } else { "allowed" },
                "route": route_index,
                "credential": credential,
                "status": status.as_u16(),
                "bytes_up": bytes_up.load(Ordering::Relaxed),
                "bytes_down": bytes_down.load(Ordering::Relaxed),
                "duration_ms": started.elapsed().as_millis() as u64,
            });
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

fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    headers.remove(&name);
    if let Ok(v) = HeaderValue::from_str(value) {
        let mut v = v;
        v.set_sensitive(true);
        headers.insert(name, v);
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(s: &str) -> String {
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
fn set_query(pq: &str, name: &str, value: &str) -> String {
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

fn refuse_request(
    shared: &Shared,
    ctx: &Ctx,
    target: &Target,
    method: &Method,
    path: &str,
    refusal: Refusal,
    started: Instant,
) -> Answer {
    let host = &target.host;
    let (status, why, decision) = match refusal {
        Refusal::Host => {
            return refuse_host(shared, ctx, target, method, started);
        }
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
        Refusal::AmbiguousPath => (
            StatusCode::BAD_REQUEST,
            format!("the path {path} has dot segments or encoded separators; send it normalised."),
            "ambiguous_path",
        ),
    };
    shared.audit(
        ctx,
        "egress.refused",
        host,
        serde_json::json!({
            "method": method.as_str(), "path": path, "decision": decision,
            "status": status.as_u16(), "duration_ms": started.elapsed().as_millis() as u64,
        }),
    );
    text(
        status,
        format!(
            "Airlock's gateway refused this request: {why} An admin can change the routes of \
             profile `{}` and run `airlock profile apply`.\n",
            ctx.profile
        ),
    )
}

fn blocked(
    shared: &Shared,
    ctx: &Ctx,
    target: &Target,
    method: &Method,
    path: &str,
    credential: &str,
    started: Instant,
) -> Answer {
    tracing::warn!(
        sandbox = %ctx.sandbox_id,
        session = ctx.session_id.as_deref().unwrap_or("-"),
        host = %target.host,
        credential,
        "blocked a request that carried a stored credential value"
    );
    shared.audit(
        ctx,
        "egress.blocked",
        &target.host,
        serde_json::json!({
            "method": method.as_str(), "path": path, "decision": "credential_in_request",
            "credential": credential, "status": 403,
            "duration_ms": started.elapsed().as_millis() as u64,
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

impl Shared {
    pub(crate) fn audit(&self, ctx: &Ctx, action: &str, target: &str, detail: serde_json::Value) {
        let mut detail = detail;
        detail["sandbox"] = serde_json::json!(ctx.sandbox_id);
        if let Some(h) = &ctx.human_id {
            detail["human"] = serde_json::json!(h);
        }
        if let Some(r) = &ctx.repo {
            detail["repo"] = serde_json::json!(r);
        }
        let _ = self.audit_tx.send(NewAudit {
            actor: ctx.actor(),
            action: action.to_string(),
            target: target.to_string(),
            session_id: ctx.session_id.clone(),
            detail,
        });
    }

    pub(crate) fn meter(&self, ctx: &Ctx, host: &str, usage: meter::Usage) {
        self.budgets
            .add(ctx, usage.input_tokens + usage.output_tokens);
        let _ = self.usage_tx.send(airlock_core::store::NewUsage {
            session_id: ctx.session_id.clone(),
            human_id: ctx.human_id.clone(),
            sandbox_id: ctx.sandbox_id.clone(),
            host: host.to_string(),
            model: usage.model,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_egress_token_is_read_from_each_proxy_authorization_form() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cases = [
            (
                format!("Basic {}", b64("airlock:alk_egr_abc")),
                Some("alk_egr_abc"),
            ),
            (
                format!("basic {}", b64("alk_egr_abc:")),
                Some("alk_egr_abc"),
            ),
            (format!("Basic {}", b64("alk_egr_abc")), Some("alk_egr_abc")),
            ("Bearer alk_egr_xyz".to_string(), Some("alk_egr_xyz")),
            ("Bearer alk_sbx_xyz".to_string(), None),
            (format!("Basic {}", b64("user:password")), None),
            ("Basic !!!".to_string(), None),
            ("Digest x".to_string(), None),
        ];
        for (value, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(
                header::PROXY_AUTHORIZATION,
                HeaderValue::from_str(&value).unwrap(),
            );
            assert_eq!(proxy_token(&h).as_deref(), want, "{value}");
        }
        assert_eq!(proxy_token(&HeaderMap::new()), None);
    }

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
}
