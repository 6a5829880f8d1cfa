//! The proxy's connections: authenticate the sandbox, then decide per host: intercept (TLS
//! terminated, every request checked by [`crate::forward`]), tunnel (passthrough: HTTPS on port
//! 443 to a checked public address only), or refuse.
//!
//! No answer, log line or audit record carries a credential value.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_store::store::NewAudit;
use base64::Engine as _;
use http::header::HeaderMap;
use http::{header, Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::addr::resolve_public;
use crate::answer::{self, empty, text, Answer};
use crate::context::Ctx;
use crate::forward::forward;
use crate::meter;
use crate::routes::{format_authority, split_host_port, HostDecision};
use crate::Shared;

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

/// A connection's place among the gateway's open connections, carried in each request's
/// extensions so that what outlives the request (a tunnel, a WebSocket) holds it too.
#[derive(Clone)]
pub(crate) struct Held(#[allow(dead_code)] pub Arc<airlock_serve::Slot>);

impl Held {
    pub fn of<B>(req: &Request<B>) -> Option<Held> {
        req.extensions().get::<Held>().cloned()
    }
}

/// Serves one client connection (HTTP/1.1: absolute-form requests and CONNECT). A request
/// head that does not arrive within the header timeout (a silent or slow connection, or an
/// idle keep-alive one) ends the connection.
pub async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: IpAddr,
    slot: Arc<airlock_serve::Slot>,
) {
    let _ = stream.set_nodelay(true);
    let header_timeout = shared.header_timeout;
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let shared = shared.clone();
        req.extensions_mut().insert(Held(slot.clone()));
        async move { Ok::<_, Infallible>(outer(shared, peer, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await;
}

async fn outer(shared: Arc<Shared>, peer: IpAddr, req: Request<Incoming>) -> Answer {
    let started = Instant::now();
    if let Some(busy) = shared.audit_behind() {
        return busy;
    }
    let ctx = match proxy_token(req.headers()) {
        Some(token) => shared.sessions.authorize(&token, peer).await,
        None => None,
    };
    let Some(ctx) = ctx else {
        tracing::debug!(%peer, "egress request without valid proxy credentials");
        return answer::proxy_auth_required();
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
        HostDecision::Intercept => forward(shared, ctx, target, req, started).await,
        HostDecision::Refuse => {
            answer::refuse_host(&shared, &ctx, &target.host, port, req.method(), started)
        }
        HostDecision::Passthrough => answer::refuse(
            &shared,
            &ctx,
            &answer::Asked {
                host: &target.host,
                method: req.method(),
                path: req.uri().path(),
                started,
            },
            StatusCode::FORBIDDEN,
            "passthrough_plain_http",
            &format!(
                "{} is a passthrough host, which is tunnelled over HTTPS (port 443) only, never \
                 as plain http.",
                target.host
            ),
        ),
    }
}

/// Where a request is going, as the sandbox asked.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Inside a CONNECT tunnel (https).
    pub tls: bool,
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
        HostDecision::Refuse => {
            answer::refuse_host(&shared, &ctx, &target.host, port, req.method(), started)
        }
        HostDecision::Passthrough => passthrough(shared, ctx, target, req, started).await,
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
            let held = Held::of(&req);
            let header_timeout = shared.header_timeout;
            tokio::spawn(async move {
                let Ok(upgraded) = hyper::upgrade::on(req).await else {
                    return;
                };
                let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(TokioIo::new(upgraded));
                let stream = match tokio::time::timeout(header_timeout, handshake).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(host = %target.host, "TLS from the sandbox failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(host = %target.host, "TLS from the sandbox did not finish in time");
                        return;
                    }
                };
                let svc = service_fn(move |mut inner: Request<Incoming>| {
                    if let Some(held) = &held {
                        inner.extensions_mut().insert(held.clone());
                    }
                    let (shared, ctx, target) = (shared.clone(), ctx.clone(), target.clone());
                    async move {
                        let started = Instant::now();
                        if let Some(busy) = shared.audit_behind() {
                            return Ok::<_, Infallible>(busy);
                        }
                        let Some(ctx) = shared.sessions.revalidate(&ctx).await else {
                            return Ok::<_, Infallible>(text(
                                StatusCode::FORBIDDEN,
                                "Airlock's gateway: this sandbox's session has ended.\n".into(),
                            ));
                        };
                        Ok(forward(shared, ctx, target, inner, started).await)
                    }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout);
                builder
                    .http2()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .keep_alive_interval(Some(header_timeout))
                    .keep_alive_timeout(header_timeout);
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
            empty(StatusCode::OK)
        }
    }
}

/// A passthrough tunnel: HTTPS on port 443 only, to an address checked to be public (the one
/// connected to is the one checked), byte for byte, audited when it closes.
async fn passthrough(
    shared: Arc<Shared>,
    ctx: Arc<Ctx>,
    target: Target,
    req: Request<Incoming>,
    started: Instant,
) -> Answer {
    let refuse = |decision: &str, why: String| {
        answer::refuse(
            &shared,
            &ctx,
            &answer::Asked {
                host: &target.host,
                method: &Method::CONNECT,
                path: "",
                started,
            },
            StatusCode::FORBIDDEN,
            decision,
            &why,
        )
    };
    if target.port != 443 {
        return refuse(
            "passthrough_port",
            format!(
                "{} is a passthrough host, tunnelled on port 443 only, not {}.",
                target.host, target.port
            ),
        );
    }
    let addrs = match resolve_public(&target.host, target.port).await {
        Ok(a) => a,
        Err(why) => return refuse("passthrough_address", format!("{why}.")),
    };
    let mut upstream = None;
    let mut last_err = String::new();
    match &shared.upstream_proxy {
        // Checked above for public addresses; the company's proxy makes the connection.
        Some(p) if !p.bypasses(&target.host) => match p.tunnel(&target.host, target.port).await {
            Ok(s) => upstream = Some((s, addrs[0])),
            Err(e) => last_err = e.to_string(),
        },
        _ => {
            for a in &addrs {
                match tokio::time::timeout(Duration::from_secs(15), TcpStream::connect(a)).await {
                    Ok(Ok(s)) => {
                        upstream = Some((s, *a));
                        break;
                    }
                    Ok(Err(e)) => last_err = e.to_string(),
                    Err(_) => last_err = "no answer within 15 s".into(),
                }
            }
        }
    }
    let Some((upstream, addr)) = upstream else {
        return text(
            StatusCode::BAD_GATEWAY,
            format!(
                "Airlock's gateway could not reach {}: {last_err}\n",
                target.authority()
            ),
        );
    };
    let _ = upstream.set_nodelay(true);
    let held = Held::of(&req);
    tokio::spawn(async move {
        let _held = held;
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
                "address": addr.ip().to_string(),
                "decision": "passthrough",
                "bytes_up": up,
                "bytes_down": down,
                "duration_ms": started.elapsed().as_millis() as u64,
            }),
        );
    });
    empty(StatusCode::OK)
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
        self.audit_waiting.fetch_add(1, Ordering::AcqRel);
        let entry = NewAudit {
            actor: ctx.actor(),
            action: action.to_string(),
            target: target.to_string(),
            session_id: ctx.session_id.as_ref().map(|i| i.to_string()),
            detail,
        };
        if let Err(e) = self.audit_tx.send(entry) {
            // Only when the writer has stopped (shutdown): say so rather than lose it quietly.
            self.audit_waiting.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(action = %e.0.action, session = ?e.0.session_id, "an egress audit row was NOT RECORDED: the audit writer has stopped");
        }
    }

    /// A 503 while more audit records wait to be written than the gateway may hold: what
    /// cannot be audited is not done.
    pub(crate) fn audit_behind(&self) -> Option<Answer> {
        let waiting = self.audit_waiting.load(Ordering::Acquire);
        (waiting >= self.audit_limit).then(|| {
            tracing::warn!("refusing egress: {waiting} audit records wait to be written");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "Airlock's gateway is behind on writing its audit log ({waiting} records wait); \
                     nothing goes out unaudited, so try again shortly.\n"
                ),
            )
        })
    }

    pub(crate) fn meter(&self, ctx: &Ctx, host: &str, usage: meter::Usage) {
        self.budgets
            .add(ctx, usage.input_tokens + usage.output_tokens);
        let sent = self.usage_tx.send(airlock_store::store::NewUsage {
            session_id: ctx.session_id.as_ref().map(|i| i.to_string()),
            human_id: ctx.human_id.as_ref().map(|i| i.to_string()),
            sandbox_id: ctx.sandbox_id.to_string(),
            host: host.to_string(),
            model: usage.model,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
        });
        if let Err(e) = sent {
            tracing::error!(session = ?e.0.session_id, "model usage was NOT RECORDED: the usage writer has stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
}
