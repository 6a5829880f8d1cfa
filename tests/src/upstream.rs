//! A strict local upstream for gateway tests: HTTPS with its own test CA (not Airlock's),
//! and every endpoint but `/public` refuses a request without the right credential, as a real
//! API would. It plays a model API (`/v1/chat/completions` with usage), an echo service that
//! reflects headers and body (to prove the gateway scrubs), a server-sent event stream whose
//! second event waits for the client's acknowledgement of the first (to prove streaming), and
//! a git smart-HTTP server (`git http-backend`) for clone and push.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use base64::Engine as _;
use tokio::sync::Notify;

pub struct Upstream {
    pub port: u16,
    /// The test CA's certificate (PEM), for `gateway.extra_ca_file` and clients that pin it.
    pub ca_pem: String,
    pub ca_file: PathBuf,
    /// Bare repositories served over smart HTTP: `<git_root>/<name>.git`.
    pub git_root: PathBuf,
    _dir: tempfile::TempDir,
}

#[derive(Clone)]
struct Shared {
    bearer: String,
    git_basic: String,
    git_root: PathBuf,
    ack: Arc<Notify>,
}

impl Upstream {
    /// Serves on 127.0.0.1 with a certificate for `localhost` and `127.0.0.1`. `bearer` is
    /// the API key every API endpoint requires; `git_token` the password git needs (user
    /// `x-access-token`).
    pub async fn start(bearer: &str, git_token: &str) -> Upstream {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::tls::TestCa::new("Upstream test CA", dir.path());
        let git_root = dir.path().join("git");
        std::fs::create_dir_all(&git_root).unwrap();

        let shared = Shared {
            bearer: format!("Bearer {bearer}"),
            git_basic: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("x-access-token:{git_token}"))
            ),
            git_root: git_root.clone(),
            ack: Arc::new(Notify::new()),
        };
        let app = Router::new()
            .route("/public", get(|| async { "public ok\n" }))
            .route("/small", get(small))
            .route("/blob", get(blob))
            .route("/echo", any(echo))
            .route("/echo/{*rest}", any(echo))
            .route("/digest/{*rest}", post(digest))
            .route("/sse", get(sse))
            .route("/sse-ack", post(sse_ack))
            .route("/v1/chat/completions", post(chat))
            .route("/{repo}/{*rest}", any(git))
            .with_state(shared);
        let port =
            crate::tls::serve_https(app, ca.server_config(&["localhost", "127.0.0.1"])).await;
        Upstream {
            port,
            ca_pem: ca.pem.clone(),
            ca_file: ca.file.clone(),
            git_root,
            _dir: dir,
        }
    }

    /// `https://localhost:<port>`: what routes name as their upstream.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// A bare repository `<name>.git` with one commit on `main`, pushable over HTTP.
    pub fn create_repo(&self, name: &str) -> PathBuf {
        crate::git::create_bare_repo(&self.git_root, name)
    }
}

fn unauthorized(what: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [("www-authenticate", "Basic realm=\"upstream\"")],
        format!("upstream: missing or wrong {what}\n"),
    )
        .into_response()
}

fn authorized(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == want)
}

/// Reflects the request: method, path, query, every header and the body, as JSON.
async fn echo(State(s): State<Shared>, req: Request) -> Response {
    if !authorized(req.headers(), &s.bearer) {
        return unauthorized("API key");
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    axum::Json(serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
    .into_response()
}

/// The length and SHA-256 of the request body, `<len> <hex>`: what arrived, byte for byte.
async fn digest(State(s): State<Shared>, req: Request) -> Response {
    use sha2::Digest as _;
    if !authorized(req.headers(), &s.bearer) {
        return unauthorized("API key");
    }
    match axum::body::to_bytes(req.into_body(), 256 * 1024 * 1024).await {
        Ok(body) => format!("{} {:x}", body.len(), sha2::Sha256::digest(&body)).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("upstream: body: {e}\n")).into_response(),
    }
}

/// `data: first`, then waits up to 10 s for `POST /sse-ack`, then says whether it came.
async fn sse(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &s.bearer) {
        return unauthorized("API key");
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let ack = s.ack.clone();
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
        // An acknowledgement that came early is kept as a permit by `notify_one`.
        let waiting = ack.notified();
        let second = match tokio::time::timeout(Duration::from_secs(10), waiting).await {
            Ok(()) => "data: second (after ack)\n\n",
            Err(_) => "data: second (no ack within 10 s)\n\n",
        };
        let _ = tx.send(Bytes::from_static(second.as_bytes())).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn sse_ack(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &s.bearer) {
        return unauthorized("API key");
    }
    s.ack.notify_one();
    "ack\n".into_response()
}

/// A tiny authenticated answer (benchmarks).
async fn small(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &s.bearer) {
        return unauthorized("API key");
    }
    "ok".into_response()
}

/// `?size=N` bytes, streamed in 64 KiB chunks (benchmarks).
async fn blob(State(s): State<Shared>, req: Request) -> Response {
    if !authorized(req.headers(), &s.bearer) {
        return unauthorized("API key");
    }
    let size: usize = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("size="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
    let chunks = (0..size.div_ceil(chunk.len())).map(move |i| {
        let n = chunk.len().min(size - i * chunk.len());
        Ok::<_, Infallible>(chunk.slice(..n))
    });
    (
        [("content-type", "application/octet-stream")],
        Body::from_stream(futures_util::stream::iter(chunks)),
    )
        .into_response()
}

/// An OpenAI-style chat completion that reports 11 input and 22 output tokens.
async fn chat(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&headers, &s.bearer) {
        return unauthorized("API key");
    }
    if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return (StatusCode::BAD_REQUEST, "upstream: the body is not JSON\n").into_response();
    }
    axum::Json(serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33},
    }))
    .into_response()
}

/// Git smart HTTP through `git http-backend` (CGI), behind Basic authentication.
async fn git(State(s): State<Shared>, req: Request) -> Response {
    if !authorized(req.headers(), &s.git_basic) {
        return unauthorized("git credentials");
    }
    crate::git::http_backend(&s.git_root, "x-access-token", req).await
}
